"""A small Redis client on trio: a bounded connection pool, per-command deadlines, AUTH,
SELECT, CLIENT SETNAME, TLS (trio.SSLStream), pipelines, and an outage policy.

Why our own (issue 17): redis-py's async client is asyncio-only; coredis 6.9 runs on trio
through anyio, but measured here it costs ~300 us per GET against ~75 us for a bare trio
stream, and brings four more dependencies. The registry needs a dozen commands.

Contracts:

- A connection goes back to the pool only after every reply of its command or pipeline has
  been read whole. Any exception -- a timeout, a broken stream, a trio cancellation
  mid-command -- closes it instead, so no half-read connection is ever reused.
- :class:`RedisUnavailable` is every "Redis did not answer" (refused, reset, timeout, a
  broken stream, an AUTH/SELECT refusal); callers treat it as a cache miss. An error reply
  to a command is :class:`ReplyError` (raised by :meth:`RedisClient.execute`, returned as a
  value by :meth:`RedisClient.pipeline`).
- Outages: the first failure logs one line and marks Redis down; for ``down_backoff``
  seconds every call fails at once (no connect timeout paid per request); then one call at a
  time probes. The first success logs one line that Redis is back.
- A failure on a *reused* idle connection (Redis restarted, an idle timeout) is retried on a
  new one up to ``max_retries`` times with go-redis's backoff; a fresh connection's failure
  is not retried (Redis is down).
"""

from __future__ import annotations

import logging
import math
import ssl
from collections import deque
from dataclasses import dataclass

import trio

from .protocol import (
    Arg,
    ProtocolError,
    Reply,
    ReplyError,
    ReplyParser,
    encode_command,
    encode_pipeline,
)

log = logging.getLogger("registry.redis")

RECEIVE_SIZE = 64 * 1024  # bytes per read: replies here are small (hashes, integers)
DOWN_BACKOFF = 1.0  # seconds Redis is skipped after a failure: short, so a restarted Redis
# is used again within a second, yet a dead one costs one connect attempt per second, not one
# per request


class RedisUnavailable(Exception):
    """Redis could not be used for this call (module docstring)."""


class PoolTimeout(RedisUnavailable):
    """Every pooled connection stayed busy for ``pool_timeout``; Redis is not marked down."""


@dataclass(frozen=True)
class RedisOptions:
    """How to reach one standalone Redis. Timeouts in seconds, None = no limit."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None
    db: int = 0
    clientname: str | None = None
    dial_timeout: float | None = 5.0
    read_timeout: float | None = 3.0
    write_timeout: float | None = 3.0
    pool_timeout: float | None = 4.0
    pool_size: int = 10  # connections open at once, at most
    max_idle: int = 0  # idle connections kept; 0 = up to pool_size
    max_idle_time: float | None = 1800.0  # an idle connection older than this is closed
    max_lifetime: float | None = None  # a connection older than this is closed
    max_retries: int = 3
    min_backoff: float = 0.008
    max_backoff: float = 0.512
    fifo: bool = False  # take the oldest idle connection (go-redis's PoolFIFO)
    ssl_context: ssl.SSLContext | None = None
    down_backoff: float = DOWN_BACKOFF

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def _limit(seconds: float | None) -> float:
    return math.inf if seconds is None else seconds


class _Conn:
    """One open connection and its reply parser."""

    def __init__(self, stream: trio.abc.Stream, now: float) -> None:
        self.stream = stream
        self.parser = ReplyParser()
        self.created = now
        self.used = now

    async def call(self, payload: bytes, n: int, options: RedisOptions) -> list[Reply]:
        """Send ``payload`` and read ``n`` replies. Raises RedisUnavailable, trio.Cancelled."""
        replies: list[Reply] = []
        try:
            # One cancel scope for both deadlines (a scope costs more than the command's
            # own work here): the write's, then moved to the read's.
            with trio.CancelScope(
                deadline=trio.current_time() + _limit(options.write_timeout)
            ) as scope:
                await self.stream.send_all(payload)
                scope.deadline = trio.current_time() + _limit(options.read_timeout)
                while len(replies) < n:
                    replies.extend(self.parser.replies())
                    if len(replies) >= n:
                        break
                    data = await self.stream.receive_some(RECEIVE_SIZE)
                    if not data:
                        raise RedisUnavailable("connection closed by Redis")
                    self.parser.feed(data)
            if scope.cancelled_caught:
                raise RedisUnavailable("timed out")
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError) as e:
            raise RedisUnavailable(f"connection broken: {e}") from None
        except ProtocolError as e:
            raise RedisUnavailable(f"protocol error: {e}") from None
        if len(replies) != n or self.parser.pending:
            raise RedisUnavailable("more replies than commands")
        return replies

    async def close(self) -> None:
        await trio.aclose_forcefully(self.stream)


class RedisClient:
    """A pool of connections to one Redis, per process (module docstring). Nothing is
    opened before the first call; :meth:`aclose` closes the idle connections."""

    def __init__(self, options: RedisOptions) -> None:
        self.options = options
        self._idle: deque[_Conn] = deque()
        self._slots: trio.Semaphore | None = None  # made on first use, inside trio.run
        self._down = False
        self._down_since = 0.0
        self._retry_at = 0.0
        self._probing = False
        self.calls = 0  # commands sent (a pipeline counts its commands)
        self.failures = 0  # calls that raised RedisUnavailable

    # --- state -------------------------------------------------------------------------------

    @property
    def down(self) -> bool:
        """Did the last attempt fail (and no call has succeeded since)?"""
        return self._down

    def _mark_down(self, reason: str) -> None:
        self.failures += 1
        now = trio.current_time()
        self._retry_at = now + self.options.down_backoff
        if not self._down:
            self._down, self._down_since = True, now
            log.error(
                "redis: %s unavailable (%s); serving from storage until it is back",
                self.options.address, reason,
            )

    def _mark_up(self) -> None:
        if self._down:
            self._down = False
            log.warning(
                "redis: %s is back after %.1fs", self.options.address,
                trio.current_time() - self._down_since,
            )

    # --- connections -------------------------------------------------------------------------

    async def _dial(self) -> _Conn:
        o = self.options
        stream: trio.abc.Stream | None = None
        try:
            with trio.fail_after(_limit(o.dial_timeout)):
                stream = await trio.open_tcp_stream(o.host, o.port)
                if o.ssl_context is not None:
                    stream = trio.SSLStream(stream, o.ssl_context, server_hostname=o.host)
                    await stream.do_handshake()
        except BaseException as e:
            if stream is not None:  # a failed or cancelled handshake: close the socket
                await trio.aclose_forcefully(stream)
            if isinstance(e, trio.TooSlowError):
                raise RedisUnavailable(f"connect timed out after {o.dial_timeout}s") from None
            if isinstance(e, (OSError, trio.BrokenResourceError, ssl.SSLError)):
                raise RedisUnavailable(f"cannot connect: {e}") from None
            raise
        conn = _Conn(stream, trio.current_time())
        setup: list[tuple[Arg, ...]] = []
        if o.password is not None:
            setup.append(("AUTH", o.username, o.password) if o.username else ("AUTH", o.password))
        if o.db:
            setup.append(("SELECT", o.db))
        if o.clientname:
            setup.append(("CLIENT", "SETNAME", o.clientname))
        setup.append(("PING",))  # registry:3's OnConnect
        try:
            replies = await conn.call(encode_pipeline(setup), len(setup), o)
            for r in replies:
                if isinstance(r, ReplyError):
                    raise RedisUnavailable(f"connection set-up refused: {r}")
        except BaseException:
            await conn.close()
            raise
        return conn

    def _fresh(self, conn: _Conn, now: float) -> bool:
        o = self.options
        return not (
            (o.max_idle_time is not None and now - conn.used > o.max_idle_time)
            or (o.max_lifetime is not None and now - conn.created > o.max_lifetime)
        )

    async def _take_idle(self) -> _Conn | None:
        now = trio.current_time()
        while self._idle:
            conn = self._idle.popleft() if self.options.fifo else self._idle.pop()
            if self._fresh(conn, now):
                return conn
            await conn.close()
        return None

    async def _give_back(self, conn: _Conn) -> None:
        o = self.options
        conn.used = trio.current_time()
        if (o.max_idle and len(self._idle) >= o.max_idle) or not self._fresh(conn, conn.used):
            await conn.close()
        else:
            self._idle.append(conn)

    # --- calls -------------------------------------------------------------------------------

    async def _run(self, payload: bytes, n: int) -> list[Reply]:
        o = self.options
        if self._slots is None:
            self._slots = trio.Semaphore(max(1, o.pool_size))
        try:
            self._slots.acquire_nowait()  # the common case: no cancel scope to pay for
        except trio.WouldBlock:
            with trio.move_on_after(_limit(o.pool_timeout)) as waited:
                await self._slots.acquire()
            if waited.cancelled_caught:
                raise PoolTimeout(f"no free connection within {o.pool_timeout}s") from None
        try:
            attempt = 0
            while True:
                conn = await self._take_idle()
                reused = conn is not None
                if conn is None:
                    conn = await self._dial()
                try:
                    replies = await conn.call(payload, n, o)
                except RedisUnavailable:
                    await conn.close()
                    if not reused or attempt >= o.max_retries:
                        raise
                    await trio.sleep(min(o.max_backoff, o.min_backoff * (2**attempt)))
                    attempt += 1
                    continue
                except BaseException:  # cancelled mid-command: never pool a half-read stream
                    await conn.close()
                    raise
                await self._give_back(conn)
                return replies
        finally:
            self._slots.release()

    async def pipeline(self, commands: list[tuple[Arg, ...]]) -> list[Reply]:
        """Send ``commands`` in one write and return their replies in order (error replies
        as ReplyError values). Raises RedisUnavailable (at once while Redis is down)."""
        if not commands:
            return []
        if self._down and (self._probing or trio.current_time() < self._retry_at):
            raise RedisUnavailable("down (retrying shortly)")
        probe = self._down
        self._probing = self._probing or probe
        try:
            self.calls += len(commands)
            replies = await self._run(encode_pipeline(commands), len(commands))
        except PoolTimeout:
            raise
        except RedisUnavailable as e:
            self._mark_down(str(e))
            raise
        finally:
            if probe:
                self._probing = False
        self._mark_up()
        return replies

    async def execute(self, *args: Arg) -> Reply:
        """One command's reply. Raises ReplyError for an error reply, RedisUnavailable."""
        (reply,) = await self.pipeline([args])
        if isinstance(reply, ReplyError):
            raise reply
        return reply

    async def ping(self) -> None:
        """Raise RedisUnavailable unless Redis answers PING now; ignores the outage
        back-off (the health check asks on its own schedule) but records the outcome."""
        self._retry_at = 0.0
        await self.execute("PING")

    async def aclose(self) -> None:
        while self._idle:
            await self._idle.pop().close()


__all__ = ["RedisClient", "RedisOptions", "RedisUnavailable", "ReplyError", "encode_command"]
