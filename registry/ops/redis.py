"""Redis for the running registry: the client built from the ``redis`` section, its
lifetime in the lifespan nursery, and its health check.

Health: registry:3 registers no Redis health check and never gates the API on Redis; a
Redis outage only makes requests slower (storage answers). So :class:`RedisCheck` does not
gate (``gates = False``): while it fails, ``/debug/health`` lists ``redis`` with the error
but keeps answering 200 unless a gating check fails too, and the API keeps serving. An
operator who wants Redis to gate adds the reference's ``health.tcp`` check on its address.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import trio

from ..config import ConfigError
from ..config.model import RedisConfig
from ..drivers.redis import RedisClient, RedisOptions
from .health import DEFAULT_HEALTH_INTERVAL_S, HEALTH_CHECK_TIMEOUT_S, PeriodicCheck

CLOSE_TIMEOUT_S = 5.0  # closing idle connections at shutdown; bounded, it runs shielded


def tls_context(rc: RedisConfig) -> ssl.SSLContext | None:
    """The client TLS context for ``redis.tls``: on when certificate and key are set (as
    registry:3), presenting them; the server verified against ``clientcas`` if given (what
    v3.1 fixed them to mean), else the system's CAs. Raises ConfigError for unreadable files."""
    if not (rc.tls_certificate and rc.tls_key):
        return None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    try:
        ctx.load_cert_chain(rc.tls_certificate, rc.tls_key)
        for ca in rc.tls_clientcas:
            ctx.load_verify_locations(cafile=ca)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"redis.tls: cannot load the certificate, key or CAs: {e}") from None
    return ctx


def redis_client(rc: RedisConfig | None) -> RedisClient | None:
    """The client for the ``redis`` section (None when not configured). Opens nothing."""
    if rc is None:
        return None
    pool = rc.poolsize if not rc.maxactiveconns else min(rc.poolsize, rc.maxactiveconns)
    return RedisClient(RedisOptions(
        host=rc.host, port=rc.port, username=rc.username, password=rc.password, db=rc.db,
        clientname=rc.clientname, dial_timeout=rc.dialtimeout, read_timeout=rc.readtimeout,
        write_timeout=rc.writetimeout, pool_timeout=rc.pooltimeout, pool_size=pool,
        max_idle=rc.maxidleconns, max_idle_time=rc.connmaxidletime,
        max_lifetime=rc.connmaxlifetime, max_retries=rc.maxretries,
        min_backoff=rc.minretrybackoff, max_backoff=rc.maxretrybackoff, fifo=rc.poolfifo,
        ssl_context=tls_context(rc),
    ))


async def serve_redis(
    client: RedisClient, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Own ``client`` for the app's lifetime: close its idle connections when cancelled."""
    task_status.started()
    try:
        await trio.sleep_forever()
    finally:
        with trio.move_on_after(CLOSE_TIMEOUT_S) as cs:
            cs.shield = True
            await client.aclose()


async def start_redis(client: RedisClient, nursery: trio.Nursery) -> None:
    """A ``RegistryApp`` background callable for :func:`serve_redis`."""
    await nursery.start(serve_redis, client)


@dataclass
class RedisCheck(PeriodicCheck):
    """PING every ``interval``; reported as ``redis`` in /debug/health, never gating."""

    client: RedisClient
    interval: float = DEFAULT_HEALTH_INTERVAL_S
    threshold: int = 1
    timeout: float = HEALTH_CHECK_TIMEOUT_S
    failures: int = 0
    last_error: str | None = None
    gates = False  # module docstring: Redis down slows requests, it does not fail them

    @property
    def key(self) -> str:
        return "redis"

    async def probe(self) -> None:
        await self.client.ping()
