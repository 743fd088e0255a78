"""Locks replicas agree on through Redis: ``SET key value NX PX ttl`` to take, a renewal
every ``ttl / 3`` that extends the expiry only while the value is still ours, and a release
that deletes the key only while it is still ours (both one Lua ``EVAL``: compare and act
atomically). The value is a JSON record ``{"owner": <random token>, ...holder}``, so a busy
lock can name its holder.

Guarantees: at most one holder at a time while Redis keeps the key (Redis runs commands one
at a time); a holder that crashes loses the lock when its key expires (``ttl`` after the
last renewal); a holder that cannot renew (Redis unreachable, or the key gone or taken)
treats the lock as lost once its own expiry passes or at once when the key is not its own.
Used by ``gc_lock.py`` (online GC, with the storage lock inside it) and ``purge.py``.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from ..drivers.redis import RedisClient, RedisUnavailable, ReplyError
from .gc_report import LockLost

log = logging.getLogger("registry.lock")

GC_LOCK_KEY = "registry::lock::gc"  # ours; registry:3 keeps no lock in Redis
PURGE_LOCK_KEY = "registry::lock::purge"
RELEASE_TIMEOUT = 5.0  # seconds a release may take (shielded: it runs on cancellation)

# KEYS[1] the lock, ARGV[1] our value: delete it only if it is still ours.
RELEASE_SCRIPT = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) "
    "else return 0 end"
)
# ARGV[2] the new time to live in ms: extend it only if it is still ours.
RENEW_SCRIPT = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then "
    "return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end"
)


class RedisLockHeld(Exception):
    """Someone else holds the lock; ``holder`` is their record (may be empty)."""

    def __init__(self, holder: dict[str, Any]) -> None:
        super().__init__("held")
        self.holder = holder


def _record(raw: object) -> dict[str, Any]:
    if not isinstance(raw, bytes):
        return {}
    try:
        doc = json.loads(raw)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


async def read_holder(client: RedisClient, key: str) -> dict[str, Any] | None:
    """The current holder's record, None if the lock is free. Raises RedisUnavailable."""
    raw = await client.execute("GET", key)
    return None if raw is None else _record(raw)


@dataclass
class RedisLock:
    """A held lock; :meth:`check` raises LockLost once it is not ours any more."""

    client: RedisClient
    key: str
    value: str
    ttl: float
    expires: float  # trio.current_time() by which the key is gone unless renewed
    lost: bool = False

    async def check(self) -> None:
        if self.lost or trio.current_time() >= self.expires:
            self.lost = True
            raise LockLost(f"the lock {self.key} expired or was taken")

    async def renew(self) -> bool:
        """Extend the key's expiry if it is still ours; False (and lost) if it is not.
        Raises RedisUnavailable."""
        started = trio.current_time()
        reply = await self.client.execute(
            "EVAL", RENEW_SCRIPT, 1, self.key, self.value, int(self.ttl * 1000)
        )
        if reply != 1:
            self.lost = True
            return False
        self.expires = started + self.ttl
        return True

    async def renew_forever(self) -> None:
        while not self.lost:
            await trio.sleep(self.ttl / 3)
            try:
                if not await self.renew():
                    log.error("lock %s: taken by another holder or expired", self.key)
                    return
            except (RedisUnavailable, ReplyError) as exc:  # retry until our expiry passes
                log.warning("lock %s: cannot renew: %s", self.key, exc)
                if trio.current_time() >= self.expires:
                    self.lost = True
                    return

    async def release(self) -> None:
        """Delete the key if it is still ours; never raises for Redis's failures (the key
        then expires by itself)."""
        try:
            await self.client.execute("EVAL", RELEASE_SCRIPT, 1, self.key, self.value)
        except (RedisUnavailable, ReplyError) as exc:
            log.warning("lock %s: cannot release (it expires by itself): %s", self.key, exc)


@asynccontextmanager
async def open_redis_lock(
    client: RedisClient,
    key: str,
    ttl: float,
    holder: dict[str, Any],
    *,
    force: bool = False,
    token: Callable[[], str] = lambda: uuid.uuid4().hex,
) -> AsyncIterator[RedisLock]:
    """Hold ``key`` for the body, renewed in the background, released (shielded, bounded)
    on exit, and on a cancel while taking it (the SET may have run). Raises RedisLockHeld when another holds it (``force``: take it anyway),
    RedisUnavailable when Redis cannot be asked."""
    value = json.dumps({"owner": token(), **holder}, sort_keys=True)
    started = trio.current_time()
    lock = RedisLock(client, key, value, ttl, started + ttl)
    args: tuple[str | int, ...] = ("SET", key, value, "PX", int(ttl * 1000))
    try:
        reply = await client.execute(*(args if force else (*args, "NX")))
        if reply != "OK":
            # A retried SET (a connection lost after Redis ran it) answers nil to its owner.
            current = await client.execute("GET", key)
            if current != value.encode():
                raise RedisLockHeld(_record(current))
    except RedisLockHeld:
        raise
    except BaseException:
        # Cancelled (or failed) once the SET may have reached Redis: the key may be ours,
        # and left there it would block every taker for a whole ttl. The release deletes
        # it only if it is ours, so it is safe whatever happened.
        with trio.move_on_after(RELEASE_TIMEOUT) as cs:
            cs.shield = True
            await lock.release()
        raise
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lock.renew_forever)
            try:
                yield lock
            finally:
                nursery.cancel_scope.cancel()
    finally:
        with trio.move_on_after(RELEASE_TIMEOUT) as cs:
            cs.shield = True
            await lock.release()
