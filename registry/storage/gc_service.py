"""Online garbage collection in the server: the schedule and ``/admin/gc`` (issues 5, 12).

:class:`OnlineGC` runs the online collection (``gc_online.py``: safe while clients push)
from the app's lifespan nursery: on a schedule when ``gc.online.enabled``, and whenever
:meth:`OnlineGC.start_now` asks (``POST /admin/gc``).

One collection at a time across every process and replica sharing the storage, through
the lock in ``gc_lock.py`` (a dead holder on this host is taken over at once). At
start-up, if an interrupted run left blobs in the trash, the collector takes the lock
(when nobody live holds it) and puts them back (``OnlineCollector.recover``), so no blob
stays missing until the next scheduled run. ``_gc/lastrun`` records when a run finished,
so a restart keeps the schedule and two workers do not both run it: a scheduled run skips
when another finished less than half an interval ago.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import trio

from ..drivers.base import Driver, DriverError
from ..drivers.redis import RedisClient
from . import paths
from .descriptor_cache import DescriptorCache, forget_collected
from .gc_lock import LOCK_CONFIRM, LockBusy, live_holder, open_gc_lock, public, read_json
from .gc_online import OnlineCollector, collect, read_plan
from .gc_report import SETTLE_SECONDS, GCOptions, GCReport, LockLost
from .walk import list_children

log = logging.getLogger("registry.gc")

FIRST_RUN_JITTER = 3600.0  # at most this long before the first run ever (spread replicas)
BUSY_RETRY = 600.0  # seconds before a scheduled run retries when another holds the lock
HISTORY_RUNS = 10  # finished runs this process remembers (the web UI lists them)
START_WAIT = 60.0  # seconds start_now waits for the run to take the lock (storage calls
# have their own deadlines; this only bounds a request against a wedged collector task)


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
        descriptors: DescriptorCache | None = None,
        redis: RedisClient | None = None,
    ) -> None:
        """``descriptors``: the blob descriptor cache a finished run invalidates (what it
        deleted), if any. ``redis``: the lock is taken in Redis too (gc_lock.py)."""
        self.driver = driver
        self.descriptors = descriptors
        self.redis = redis
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
        # start_now's waiter: set by the run once it holds the lock, or cannot take it.
        self._starting: trio.Event | None = None
        self._start_refused: dict[str, Any] | None = None
        self.running = False
        self.last: dict[str, Any] | None = None  # outcome of the last attempt
        self.runs = 0
        # Runs that collected or failed, oldest first: {started, finished (epoch seconds),
        # blobs_deleted, bytes_freed, manifests_deleted, error (None or why it failed)}.
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY_RUNS)

    def _record(self, started: float, report: GCReport | None, error: str | None) -> None:
        self.history.append({
            "started": started,
            "finished": self.clock(),
            "blobs_deleted": len(report.blobs_deleted) if report else 0,
            "bytes_freed": report.bytes_freed if report else 0,
            "manifests_deleted": len(report.manifests_deleted) if report else 0,
            "error": error,
        })

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
            last = await read_json(self.driver, paths.GC_LAST_RUN)
            holder = await live_holder(self.driver, self.clock)
        except DriverError as exc:
            out["storage_error"] = str(exc)
            return out
        out["last_finished"] = (last or {}).get("finished")
        out["lock_holder"] = public(holder) if holder else None
        return out

    async def start_now(self) -> dict[str, Any] | None:
        """Start a collection now and wait (bounded) until it holds the lock.

        Returns None once the run holds the lock, else why not: ``{"status": "running",
        "holder": ...}`` when this process is collecting or starting already, ``{"status":
        "busy", "holder": {host, pid, expires}}`` when a live process holds the lock,
        ``{"status": "failed", "reason": ...}`` when storage failed or the run did not
        take the lock within ``START_WAIT``. Cancelling the wait does not cancel the run.
        """
        try:
            holder = await live_holder(self.driver, self.clock)
        except DriverError as exc:
            return {"status": "failed", "reason": f"cannot read the lock: {exc}"}
        if self.running or self._starting is not None:
            return {"status": "running", "holder": public(holder) if holder else None}
        if holder is not None:
            return {"status": "busy", "holder": public(holder)}
        started = self._starting = trio.Event()
        self._start_refused = None
        self._requested = True
        self._wake.set()
        with trio.move_on_after(self.lock_confirm + START_WAIT):
            await started.wait()
        if not started.is_set():
            return {"status": "failed", "reason": "the collection did not start in time"}
        return self._start_refused

    def _report_start(self, refused: dict[str, Any] | None) -> None:
        if self._starting is not None:
            self._start_refused = refused
            self._starting.set()
            self._starting = None

    async def _next_delay(self) -> float:
        try:
            doc = await read_json(self.driver, paths.GC_LAST_RUN)
        except DriverError as exc:
            log.warning("gc: cannot read the last run time: %s", exc)
            return BUSY_RETRY
        if doc and isinstance(doc.get("finished"), (int, float)):
            return max(0.0, float(doc["finished"]) + self.interval - self.clock())
        return self.rng.uniform(0, min(self.interval, FIRST_RUN_JITTER))

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Never returns: put back what a dead run left in the trash (:meth:`recover`),
        then wait for the schedule or a request, run, repeat."""
        task_status.started()
        await self.recover()
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
            except LockBusy as exc:
                self._report_start({"status": "busy", "holder": public(exc.holder)})
                retry = BUSY_RETRY if self.scheduled else None
            except Exception as exc:
                self._report_start({"status": "failed", "reason": repr(exc)[:300]})
                log.exception("gc: collection failed")
                retry = BUSY_RETRY if self.scheduled else None
            self._report_start({"status": "failed", "reason": "the collection ended"})

    async def recover(self) -> int:
        """At start-up: if the trash holds blobs or a plan is left (a run died or was
        cancelled mid-way), take the lock unless a live process holds it (then they are its
        own) and undo them (``OnlineCollector.recover``). Returns how many blobs came back;
        never raises for storage errors or a busy lock (logged)."""
        try:
            trash = await list_children(self.driver, paths.GC_TRASH)
            if not trash and await read_plan(self.driver) is None:
                return 0
            async with open_gc_lock(
                self.driver, confirm=self.lock_confirm, clock=self.clock, redis=self.redis
            ):
                return await OnlineCollector(self.driver, self.options).recover()
        except LockBusy as exc:
            log.info("gc: the trash is not empty, but %s; leaving it to that run", exc)
        except (DriverError, LockLost) as exc:
            log.warning("gc: cannot restore the trash of an interrupted collection: %s", exc)
        return 0

    async def run_once(self, *, scheduled: bool = False) -> GCReport | None:
        """One collection under the lock. A scheduled run skips (returns None) when another
        process finished one less than half an interval ago. Raises LockBusy."""
        self.running = True
        started = self.clock()
        try:
            async with open_gc_lock(
                self.driver, confirm=self.lock_confirm, clock=self.clock, redis=self.redis
            ) as lock:
                self._report_start(None)
                if scheduled:
                    doc = await read_json(self.driver, paths.GC_LAST_RUN)
                    finished = (doc or {}).get("finished")
                    if (
                        isinstance(finished, (int, float))
                        and self.clock() - finished < self.interval / 2
                    ):
                        self.last = {"outcome": "skipped", "reason": "ran recently", "at": started}
                        return None
                log.info("gc: online collection starting")
                report = await collect(self.driver, self.options, check_lock=lock.check)
                if self.descriptors is not None:
                    await forget_collected(self.descriptors, report)
                await self.driver.put_content(
                    paths.GC_LAST_RUN, json.dumps({"finished": self.clock()}).encode()
                )
        except LockBusy as exc:
            self.last = {"outcome": "busy", "reason": str(exc), "at": started}
            log.info("gc: %s; not collecting", exc)
            raise
        except LockLost as exc:
            self.last = {"outcome": "failed", "reason": str(exc), "at": started}
            self._record(started, None, str(exc))
            log.error("gc: %s; the run stopped", exc)
            return None
        except Exception as exc:
            self.last = {"outcome": "failed", "reason": repr(exc)[:300], "at": started}
            self._record(started, None, repr(exc)[:300])
            raise
        finally:
            self.running = False
        self.runs += 1
        self.last = {"outcome": "done", "at": started, **report.summary()}
        self._record(started, report, None)
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
