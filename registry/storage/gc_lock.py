"""The garbage-collection lock: one collection at a time over one storage (issues 5, 12).

``_gc/lock`` holds the holder's record::

    {"owner": <token>, "expires": <unix seconds>,
     "host": <hostname>, "boot_id": <kernel boot id>, "pidns": <pid namespace>,
     "pid": <pid>, "start": <the pid's start time, clock ticks since boot>}

A taker may take the lock when it is absent, unreadable, expired, or held by a process
that is dead *on this host*: same host name, boot id and pid namespace (so the pid means
the same process here), and that pid is gone, a zombie, or now a different process (its
start time differs from the recorded one: pids are reused; a record without a start time
falls back to ``/proc/<pid>/cmdline`` naming the registry). A lock of another host, or
one this process cannot judge (no ``/proc``, an older record without a boot id), is only
taken once it expires: another host's process cannot be checked from here, and a replica
on another host may well be collecting right now.

The taker writes its record, waits ``confirm`` seconds and reads it back: two takers that
raced both wrote; only the later write survives, and only its owner proceeds. The holder
renews the record every ``ttl / 3`` and checks it before every destructive step (a lost
lock stops the run). ``force`` takes the lock whatever holds it, with a warning naming
the holder; a live holder then finds the lock taken at its next check and stops.

With Redis configured (``redis``), the taker first takes the Redis lock ``registry::lock::gc``
(redis_lock.py: SET NX PX, atomic, renewed, released only by its owner), then the storage
lock as above inside it: replicas agree through Redis without racing on the storage record,
and an offline ``registry garbage-collect`` (which may not use Redis) still sees the storage
lock. Redis unreachable: :class:`LockUnavailable` (a LockBusy: the run is retried later),
never a fall back to the storage lock alone, which a replica that reached Redis would not see.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from ..drivers.base import Driver, DriverError, PathNotFound
from ..drivers.redis import RedisClient, RedisUnavailable
from . import paths
from .gc_report import LockLost
from .redis_lock import GC_LOCK_KEY, RedisLock, RedisLockHeld, open_redis_lock

log = logging.getLogger("registry.gc")

LOCK_TTL = 15 * 60.0  # seconds a lock lives without renewal (how long a dead holder on
# another host blocks: it cannot be checked from here)
LOCK_CONFIRM = 2.0  # seconds between writing the lock and reading it back (racing takers)
RELEASE_TIMEOUT = 30.0  # seconds a release may take (shielded: it runs on cancellation)
PROC = "/proc"  # Linux procfs: where boot id, pid namespace and process start times live
REGISTRY_PROGRAM = b"registry"  # `registry ...` (the console script) or `python -m registry`

# The record keys that describe the holder to a human (LockBusy, GET /admin/gc, 409).
PUBLIC_KEYS = ("host", "pid", "expires")


class LockBusy(Exception):
    """Another collection holds the lock; ``holder`` is its record (may be empty)."""

    def __init__(self, holder: dict[str, Any] | None) -> None:
        self.holder = holder or {}
        super().__init__(f"another garbage collection holds the lock ({describe(self.holder)})")


class LockUnavailable(LockBusy):
    """Redis (configured for the lock) cannot be reached: nobody may collect from here now."""

    def __init__(self, reason: str) -> None:
        self.holder = {}
        Exception.__init__(self, f"cannot take the garbage collection lock in Redis ({reason})")


def describe(holder: dict[str, Any]) -> str:
    return f"{holder.get('host', '?')} pid {holder.get('pid', '?')}"


def public(holder: dict[str, Any]) -> dict[str, Any]:
    """What a client may see of a holder's record (not its owner token)."""
    return {k: holder.get(k) for k in PUBLIC_KEYS}


# --- who holds it ----------------------------------------------------------------------------


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def _pidns() -> str | None:
    try:
        return os.readlink(f"{PROC}/self/ns/pid")
    except OSError:
        return None


def process_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks since boot) of ``pid``, None if no such
    process (proc(5): fields 3 and 22 of ``/proc/<pid>/stat``; the command name, field 2,
    may hold spaces and parentheses, so split after its last ``)``)."""
    text = _read_text(f"{PROC}/{pid}/stat")
    if not text or ")" not in text:
        return None
    fields = text.rsplit(")", 1)[1].split()
    try:
        return fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None


def is_registry(pid: int) -> bool:
    """Does ``/proc/<pid>/cmdline`` run this program (an argument named ``registry``,
    possibly with a directory, or ``-m registry``)? Hypercorn workers are forked, so they
    show their master's command line."""
    try:
        with open(f"{PROC}/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except OSError:
        return False
    return any(a.rsplit(b"/", 1)[-1] == REGISTRY_PROGRAM for a in args[:3])


@dataclass(frozen=True)
class Identity:
    """This process as a lock record names it."""

    host: str
    boot_id: str | None
    pidns: str | None
    pid: int
    start: int | None

    @classmethod
    def current(cls) -> Identity:
        pid = os.getpid()
        stat = process_stat(pid)
        return cls(
            host=socket.gethostname(),
            boot_id=_read_text(f"{PROC}/sys/kernel/random/boot_id"),
            pidns=_pidns(),
            pid=pid,
            start=stat[1] if stat else None,
        )

    def record(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "boot_id": self.boot_id,
            "pidns": self.pidns,
            "pid": self.pid,
            "start": self.start,
        }

    def holder_is_dead(self, holder: dict[str, Any]) -> bool:
        """True only when ``holder`` is certainly a dead process on this host (module
        docstring); False when it is alive or cannot be judged from here."""
        if not (self.boot_id and self.pidns) or holder.get("host") != self.host:
            return False
        if holder.get("boot_id") != self.boot_id or holder.get("pidns") != self.pidns:
            return False
        pid = holder.get("pid")
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
            return False
        stat = process_stat(pid)
        if stat is None or stat[0] in ("Z", "X"):  # gone, or dead and not yet reaped
            return True
        start = holder.get("start")
        if isinstance(start, int):
            return stat[1] != start  # the pid now names another process
        return not is_registry(pid)


def holder_state(holder: dict[str, Any] | None, now: float, me: Identity) -> str:
    """``"free"`` (absent, unreadable or expired), ``"dead"`` (its holder died on this
    host), or ``"held"``."""
    if not holder:
        return "free"
    try:
        expires = float(holder.get("expires", 0) or 0)
    except (TypeError, ValueError):
        expires = 0.0
    if expires <= now:
        return "free"
    return "dead" if me.holder_is_dead(holder) else "held"


async def read_json(driver: Driver, path: str) -> dict[str, Any] | None:
    """The JSON object at ``path``; None if there is none, ``{}`` if it is not one."""
    try:
        raw = await driver.get_content(path)
    except PathNotFound:
        return None
    try:
        doc = json.loads(raw)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


async def read_lock(driver: Driver) -> dict[str, Any] | None:
    """The lock record (as :func:`read_json`)."""
    return await read_json(driver, paths.GC_LOCK)


async def live_holder(
    driver: Driver, clock: Callable[[], float] = time.time
) -> dict[str, Any] | None:
    """The record of whoever holds the lock now, None if a taker would get it at once.
    Raises DriverError."""
    holder = await read_lock(driver)
    if holder_state(holder, clock(), Identity.current()) == "held":
        return holder
    return None


# --- holding it ------------------------------------------------------------------------------


@dataclass
class GCLock:
    """A held lock: :meth:`check` raises LockLost once it is not ours any more."""

    driver: Driver
    token: str
    ttl: float
    clock: Callable[[], float]
    expires: float
    me: Identity
    lost: bool = False
    redis_lock: RedisLock | None = None  # held around this one when Redis is configured

    def _record(self) -> bytes:
        return json.dumps({"owner": self.token, **self.me.record(), "expires": self.expires}).encode()

    async def write(self) -> None:
        self.expires = self.clock() + self.ttl
        await self.driver.put_content(paths.GC_LOCK, self._record())

    async def check(self) -> None:
        if self.redis_lock is not None:
            try:
                await self.redis_lock.check()
            except LockLost:
                self.lost = True
                raise
        if self.lost or self.clock() >= self.expires:
            self.lost = True
            raise LockLost("the garbage collection lock expired")
        doc = await read_lock(self.driver)
        if not doc or doc.get("owner") != self.token:
            self.lost = True
            raise LockLost("another process took the garbage collection lock")

    async def renew_forever(self) -> None:
        while not self.lost:
            await trio.sleep(self.ttl / 3)
            try:
                await self.check()
                await self.write()
            except LockLost as exc:
                log.error("gc: %s", exc)
                return
            except DriverError as exc:  # keep trying until the lock expires
                log.warning("gc: cannot renew the lock: %s", exc)

    async def release(self) -> None:
        doc = await read_lock(self.driver)
        if doc is not None and doc.get("owner") == self.token:
            try:
                await self.driver.delete(paths.GC_LOCK)
                # Leave no trace where there was none (the filesystem keeps the directory):
                # an offline run must change nothing but what it deletes.
                if not await self.driver.list(paths.GC):
                    await self.driver.delete(paths.GC)
            except PathNotFound:
                pass


@asynccontextmanager
async def open_gc_lock(
    driver: Driver,
    *,
    ttl: float = LOCK_TTL,
    confirm: float = LOCK_CONFIRM,
    clock: Callable[[], float] = time.time,
    force: bool = False,
    redis: RedisClient | None = None,
) -> AsyncIterator[GCLock]:
    """Hold the collection lock for the body (module docstring).

    Raises LockBusy if a live holder has it (or won the race to take it); with ``force``
    only when another taker wins that race. Renewed in the background while held;
    released (shielded, bounded) on exit, unless someone took it meanwhile; a cancel
    while taking it (during the write or the confirm wait) removes our record too. With ``redis``,
    the Redis lock is taken first and held around it (LockUnavailable if Redis is down).
    """
    if redis is None:
        async with _open_storage_lock(driver, ttl, confirm, clock, force) as lock:
            yield lock
        return
    async with AsyncExitStack() as stack:
        holder = Identity.current().record()
        try:
            rl = await stack.enter_async_context(
                open_redis_lock(redis, GC_LOCK_KEY, ttl, holder, force=force)
            )
        except RedisLockHeld as exc:
            raise LockBusy(exc.holder) from None
        except RedisUnavailable as exc:
            raise LockUnavailable(str(exc)) from None
        lock = await stack.enter_async_context(
            _open_storage_lock(driver, ttl, confirm, clock, force)
        )
        lock.redis_lock = rl
        yield lock


@asynccontextmanager
async def _open_storage_lock(
    driver: Driver, ttl: float, confirm: float, clock: Callable[[], float], force: bool
) -> AsyncIterator[GCLock]:
    """The storage lock alone (module docstring)."""
    me = Identity.current()
    holder = await read_lock(driver)
    state = holder_state(holder, clock(), me)
    if state == "held" and not force:
        raise LockBusy(holder)
    if holder and state != "free":
        how = "forcibly taking" if state == "held" else "taking over"
        log.warning(
            "gc: %s the garbage collection lock from %s (%s)",
            how,
            describe(holder),
            "alive, or on another host" if state == "held" else "dead on this host",
        )
    lock = GCLock(driver, uuid.uuid4().hex, ttl, clock, 0.0, me)
    # The release covers the write and the confirm too: a taker cancelled there (a request
    # gone, a shutdown) must not leave its record behind, or a taker in this same live
    # process would see it held for a whole ttl. release() deletes only our own record,
    # so a race lost to another taker deletes nothing of theirs.
    try:
        await lock.write()
        if confirm > 0:
            await trio.sleep(confirm)
        now = await read_lock(driver)
        if not now or now.get("owner") != lock.token:
            raise LockBusy(now)
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
