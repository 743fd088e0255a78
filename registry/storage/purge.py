"""Upload purging: remove upload sessions older than ``storage.maintenance.uploadpurging.age``.

The reference's behaviour (distribution 2.8 ``storage/purgeuploads.go`` and
``handlers/app.go startUploadPurger``): the first purge runs after a random whole number of
minutes below an hour (so replicas started together spread out), then one every
``interval``; a session's age is its ``startedat`` (RFC 3339), and a session whose
``startedat`` is unreadable is never purged. ``dryrun`` only logs.

Unlike the reference, an upload directory with no ``startedat`` at all is removed once the
newest modification time of it and its files is older than the age: no session was ever
started there (a crash between making the directory and writing ``startedat``, or a
removal cut short), so nothing else would ever remove it.

With Redis configured, a purge runs under the Redis lock ``registry::lock::purge``
(redis_lock.py): while one replica purges, the others skip their turn instead of walking
the same sessions. Redis unreachable: purge anyway, as without Redis (idempotent).

Sessions go through :meth:`Uploads.cancel`, so an S3 session's multipart upload is aborted
(R2 would otherwise keep its parts for 7 days), not just its keys deleted. Every worker
process runs its own purger (as every reference replica does): cancelling a session twice
is harmless.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from ..drivers.base import Driver, DriverError, PathNotFound
from ..drivers.redis import RedisClient, RedisUnavailable
from ..errors import RegistryError, unwrap
from . import paths
from .redis_lock import PURGE_LOCK_KEY, RedisLockHeld, open_redis_lock
from .uploads import Uploads
from .walk import enumerate_repositories

log = logging.getLogger("registry.purge")

JITTER_MINUTES = 60  # first purge after 0..59 whole minutes, as the reference
PURGE_LOCK_TTL = 600.0  # seconds the Redis purge lock outlives a holder that died mid-purge
CANCEL_TIMEOUT = 120.0  # seconds one session's cancel may take (an S3 abort with retries)


@dataclass
class PurgeReport:
    purged: list[tuple[str, str]] = field(default_factory=list)  # (repository, upload id)
    kept: int = 0
    backend_aborted: int = 0  # multipart uploads the driver aborted by age
    errors: list[str] = field(default_factory=list)


async def purge_uploads(
    driver: Driver, uploads: Uploads, older_than: float, *, dry_run: bool = False
) -> PurgeReport:
    """Cancel every session started before ``older_than`` (epoch seconds)."""
    report = PurgeReport()
    for name in await enumerate_repositories(driver, markers=(paths.UPLOADS,)):
        for upload_id, started in await uploads.list_sessions(name):
            if started is None:  # no startedat: judge the directory by its mtime
                if await _undated_before(driver, name, upload_id, older_than):
                    await _remove_undated(driver, name, upload_id, report, dry_run)
                else:
                    report.kept += 1
                continue
            if started >= older_than:
                report.kept += 1
                continue
            if dry_run:
                log.info("purge (dry run): would remove upload %s/%s", name, upload_id)
                report.purged.append((name, upload_id))
                continue
            try:
                with trio.fail_after(CANCEL_TIMEOUT):
                    await uploads.cancel(name, upload_id)
            except RegistryError:
                continue  # finished or cancelled meanwhile (or by another worker)
            except (DriverError, trio.TooSlowError) as exc:
                report.errors.append(f"{name}/{upload_id}: {exc!r}")
                log.warning("purge: cannot remove upload %s/%s: %r", name, upload_id, exc)
                continue
            report.purged.append((name, upload_id))
    # Multipart uploads no session names any more (a crash between create and persist, a
    # retried create): drivers that keep such backend state sweep it by age (S3 aborts them).
    sweep = getattr(driver, "purge_multipart_uploads", None)
    if sweep is not None and not dry_run:
        try:
            with trio.fail_after(CANCEL_TIMEOUT * 10):
                report.backend_aborted = await sweep(max(0.0, time.time() - older_than))  # an age
        except (DriverError, trio.TooSlowError) as exc:
            report.errors.append(f"multipart sweep: {exc!r}")
    return report


async def _undated_before(driver: Driver, name: str, upload_id: str, older_than: float) -> bool:
    """Is the newest modification time of ``_uploads/<upload_id>/`` (listed without a
    ``startedat``), its own and that of every file in it, before ``older_than``? A
    ``startedat`` written since the listing makes it new."""
    upload_dir = paths.upload_dir(name, upload_id)
    try:
        newest = (await driver.stat(upload_dir)).mtime
        async for info in driver.walk(upload_dir):
            newest = max(newest, info.mtime)
    except PathNotFound:
        return False  # removed meanwhile
    return newest < older_than


async def _remove_undated(
    driver: Driver, name: str, upload_id: str, report: PurgeReport, dry_run: bool
) -> None:
    """Delete an upload directory that never held a session (see the module docstring).
    No backend state to abort: S3 multipart uploads are swept by age below."""
    if dry_run:
        log.info("purge (dry run): would remove undated upload directory %s/%s", name, upload_id)
        report.purged.append((name, upload_id))
        return
    try:
        with trio.fail_after(CANCEL_TIMEOUT):
            await driver.delete(paths.upload_dir(name, upload_id))
    except PathNotFound:
        return  # removed meanwhile (another worker's purger)
    except (DriverError, trio.TooSlowError) as exc:
        report.errors.append(f"{name}/{upload_id}: {exc!r}")
        log.warning("purge: cannot remove upload directory %s/%s: %r", name, upload_id, exc)
        return
    log.info("purge: removed undated upload directory %s/%s", name, upload_id)
    report.purged.append((name, upload_id))


class UploadPurger:
    """The scheduled purge loop (one task, :meth:`serve`, in the lifespan nursery)."""

    def __init__(
        self,
        driver: Driver,
        uploads: Uploads,
        *,
        age: float,
        interval: float,
        dry_run: bool = False,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        redis: RedisClient | None = None,
    ) -> None:
        self.driver = driver
        self.uploads = uploads
        self.redis = redis
        self.skipped = 0  # turns left to another replica holding the Redis lock
        self.age = age
        self.interval = interval
        self.dry_run = dry_run
        self.clock = clock
        self.rng = rng or random.Random()
        self.runs = 0

    def first_delay(self) -> float:
        return 60.0 * self.rng.randrange(JITTER_MINUTES)

    async def start(self, nursery: trio.Nursery) -> None:
        """A ``RegistryApp`` background callable."""
        await nursery.start(self.serve)

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Never returns: sleep the jitter, then purge every ``interval``."""
        delay = self.first_delay()
        log.info("upload purge starts in %.0fs, then every %.0fs", delay, self.interval)
        task_status.started()
        await trio.sleep(delay)
        while True:
            try:
                await self.purge_once()
            except Exception as exc:
                cause = unwrap(exc)
                if isinstance(cause, DriverError):  # storage down: one line, try next time
                    log.warning("upload purge skipped: %s", cause)
                else:
                    log.error("upload purge failed", exc_info=cause)
            self.runs += 1
            await trio.sleep(self.interval)

    async def purge_once(self) -> PurgeReport | None:
        """One purge, under the Redis lock when there is one; None if another replica holds
        it. Raises what purge_uploads raises."""
        if self.redis is None:
            return await self._purge()
        try:
            async with open_redis_lock(self.redis, PURGE_LOCK_KEY, PURGE_LOCK_TTL,
                                       {"host": socket.gethostname(), "pid": os.getpid()}):
                return await self._purge()
        except RedisLockHeld as exc:
            self.skipped += 1
            log.info("upload purge skipped: another replica is purging (%s)",
                     exc.holder.get("host", "?"))
            return None
        except RedisUnavailable as exc:
            log.warning("upload purge: Redis unavailable (%s); purging without its lock", exc)
            return await self._purge()

    async def _purge(self) -> PurgeReport:
        report = await purge_uploads(
            self.driver, self.uploads, self.clock() - self.age, dry_run=self.dry_run
        )
        log.info(
            "upload purge done: %d removed, %d kept, %d errors",
            len(report.purged),
            report.kept,
            len(report.errors),
        )
        return report
