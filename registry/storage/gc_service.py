"""Online garbage collection in the server: the storage lock and the schedule (issue 5).

:class:`OnlineGC` runs the online collection (``gc_online.py``: safe while clients push)
from the app's lifespan nursery: on a schedule when ``gc.online.enabled``, and whenever
:meth:`OnlineGC.request` asks (``POST /admin/gc``).

One collection at a time across every process and replica sharing the storage:
``_gc/lock`` holds ``{"owner", "host", "pid", "expires"}``. A collector takes it when it
is absent or expired, writes it, waits ``LOCK_CONFIRM`` and reads it back (two takers
that raced both wrote; only the later write survives, and only its owner proceeds),
renews it every ``LOCK_TTL / 3`` and checks it before every destructive step; a lost lock
stops the run (trashed blobs go back). ``_gc/lastrun`` records when a run finished, so a
restart keeps the schedule and two workers do not both run it: a scheduled run skips when
another finished less than half an interval ago.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from ..drivers.base import Driver, DriverError, PathNotFound
from . import paths
from .gc import SETTLE_SECONDS, GCOptions, GCReport, LockLost, collect

log = logging.getLogger("registry.gc")

LOCK_TTL = 15 * 60.0  # seconds a lock lives without renewal (a crashed holder blocks this long)
LOCK_CONFIRM = 2.0  # seconds between writing the lock and reading it back (racing takers)
FIRST_RUN_JITTER = 3600.0  # at most this long before the first run ever (spread replicas)
BUSY_RETRY = 600.0  # seconds before a scheduled run retries when another holds the lock


class LockBusy(Exception):
    """Another collection holds the lock."""

    def __init__(self, holder: dict[str, Any] | None) -> None:
        self.holder = holder or {}
        who = f"{self.holder.get('host', '?')} pid {self.holder.get('pid', '?')}"
        super().__init__(f"another garbage collection holds the lock ({who})")


async def _read_json(driver: Driver, path: str) -> dict[str, Any] | None:
    try:
        raw = await driver.get_content(path)
    except PathNotFound:
        return None
    try:
        doc = json.loads(raw)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


@dataclass
class GCLock:
    """A held lock: :meth:`check` raises LockLost once it is not ours any more."""

    driver: Driver
    token: str
    ttl: float
    clock: Callable[[], float]
    expires: float
    lost: bool = False

    def _record(self) -> bytes:
        return json.dumps(
            {
                "owner": self.token,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "expires": self.expires,
            }
        ).encode()

    async def write(self) -> None:
        self.expires = self.clock() + self.ttl
        await self.driver.put_content(paths.GC_LOCK, self._record())

    async def check(self) -> None:
        if self.lost or self.clock() >= self.expires:
            self.lost = True
            raise LockLost("the garbage collection lock expired")
        doc = await _read_json(self.driver, paths.GC_LOCK)
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
        doc = await _read_json(self.driver, paths.GC_LOCK)
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
) -> AsyncIterator[GCLock]:
    """Hold the collection lock for the body; raises LockBusy if someone else has it.

    Renewed in the background while held; released (shielded, bounded) on exit.
    """
    holder = await _read_json(driver, paths.GC_LOCK)
    if holder and float(holder.get("expires", 0) or 0) > clock():
        raise LockBusy(holder)
    lock = GCLock(driver, uuid.uuid4().hex, ttl, clock, 0.0)
    await lock.write()
    if confirm > 0:
        await trio.sleep(confirm)
    now = await _read_json(driver, paths.GC_LOCK)
    if not now or now.get("owner") != lock.token:
        raise LockBusy(now)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lock.renew_forever)
            try:
                yield lock
            finally:
                nursery.cancel_scope.cancel()
    finally:
        with trio.move_on_after(30) as cs:
            cs.shield = True
            await lock.release()


class OnlineGC:
    """The server's collector: scheduled and on-demand runs, one at a time.

    Owns one task, :meth:`serve`, started in the lifespan nursery. Runs happen in that
    task, so shutting the server down cancels a run (which puts trashed blobs back).
    """

    def __init__(
        self,
        driver: Driver,
        *,
        scheduled: bool,
        interval: float,
        grace_period: float,
        delete_untagged: bool,
        settle: float = SETTLE_SECONDS,
        lock_confirm: float = LOCK_CONFIRM,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.driver = driver
        self.scheduled = scheduled
        self.interval = interval
        self.options = GCOptions(
            online=True, grace_period=grace_period, delete_untagged=delete_untagged, settle=settle
        )
        self.lock_confirm = lock_confirm
        self.clock = clock
        self.rng = rng or random.Random()
        self._wake = trio.Event()
        self._requested = False
        self.running = False
        self.last: dict[str, Any] | None = None  # outcome of the last attempt
        self.runs = 0

    async def start(self, nursery: trio.Nursery) -> None:
        """A ``RegistryApp`` background callable."""
        await nursery.start(self.serve)

    def request(self) -> bool:
        """Ask for a run now; False if one is running in this process already."""
        if self.running:
            return False
        self._requested = True
        self._wake.set()
        return True

    def status(self) -> dict[str, Any]:
        return {
            "running": self.running,
            "scheduled": self.scheduled,
            "interval_seconds": self.interval,
            "grace_period_seconds": self.options.grace_period,
            "delete_untagged": self.options.delete_untagged,
            "last": self.last,
        }

    async def describe(self) -> dict[str, Any]:
        """:meth:`status` of this process, plus what storage says about every process: when
        a collection last finished, and who holds the lock now (None if nobody)."""
        out = self.status()
        try:
            last = await _read_json(self.driver, paths.GC_LAST_RUN)
            lock = await _read_json(self.driver, paths.GC_LOCK)
        except DriverError as exc:
            out["storage_error"] = str(exc)
            return out
        out["last_finished"] = (last or {}).get("finished")
        holder = lock if lock and float(lock.get("expires", 0) or 0) > self.clock() else None
        out["lock_holder"] = (
            {k: holder.get(k) for k in ("host", "pid", "expires")} if holder else None
        )
        return out

    async def _next_delay(self) -> float:
        try:
            doc = await _read_json(self.driver, paths.GC_LAST_RUN)
        except DriverError as exc:
            log.warning("gc: cannot read the last run time: %s", exc)
            return BUSY_RETRY
        if doc and isinstance(doc.get("finished"), (int, float)):
            return max(0.0, float(doc["finished"]) + self.interval - self.clock())
        return self.rng.uniform(0, min(self.interval, FIRST_RUN_JITTER))

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Never returns: wait for the schedule or a request, run, repeat."""
        task_status.started()
        retry: float | None = None
        while True:
            delay = (
                retry
                if retry is not None
                else (await self._next_delay() if self.scheduled else float("inf"))
            )
            with trio.move_on_after(delay):
                await self._wake.wait()
            self._wake = trio.Event()
            manual, self._requested = self._requested, False
            retry = None
            try:
                await self.run_once(scheduled=not manual)
            except LockBusy:
                retry = BUSY_RETRY if self.scheduled else None
            except Exception:
                log.exception("gc: collection failed")
                retry = BUSY_RETRY if self.scheduled else None

    async def run_once(self, *, scheduled: bool = False) -> GCReport | None:
        """One collection under the lock. A scheduled run skips (returns None) when another
        process finished one less than half an interval ago. Raises LockBusy."""
        self.running = True
        started = self.clock()
        try:
            async with open_gc_lock(
                self.driver, confirm=self.lock_confirm, clock=self.clock
            ) as lock:
                if scheduled:
                    doc = await _read_json(self.driver, paths.GC_LAST_RUN)
                    finished = (doc or {}).get("finished")
                    if (
                        isinstance(finished, (int, float))
                        and self.clock() - finished < self.interval / 2
                    ):
                        self.last = {"outcome": "skipped", "reason": "ran recently", "at": started}
                        return None
                log.info("gc: online collection starting")
                report = await collect(self.driver, self.options, check_lock=lock.check)
                await self.driver.put_content(
                    paths.GC_LAST_RUN, json.dumps({"finished": self.clock()}).encode()
                )
        except LockBusy as exc:
            self.last = {"outcome": "busy", "reason": str(exc), "at": started}
            log.info("gc: %s; not collecting", exc)
            raise
        except LockLost as exc:
            self.last = {"outcome": "failed", "reason": str(exc), "at": started}
            log.error("gc: %s; the run stopped", exc)
            return None
        except Exception as exc:
            self.last = {"outcome": "failed", "reason": repr(exc)[:300], "at": started}
            raise
        finally:
            self.running = False
        self.runs += 1
        self.last = {"outcome": "done", "at": started, **report.summary()}
        log.info(
            "gc: done in %.1fs: %d blobs deleted (%d bytes), %d manifests deleted, %d kept young,"
            " %d rescued",
            report.seconds,
            len(report.blobs_deleted),
            report.bytes_freed,
            len(report.manifests_deleted),
            report.spared_young,
            len(report.rescued),
        )
        return report
