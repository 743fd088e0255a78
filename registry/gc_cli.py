"""``registry garbage-collect [--dry-run] [--delete-untagged] [--quiet] [--force] CONFIG``.

The reference's offline command with its semantics (see ``storage/gc.py``), so the
documented maintenance step -- ``docker compose exec registry registry garbage-collect
/etc/distribution/config.yml`` -- works unchanged. Run it while nobody pushes (the
reference says: in read-only mode); the server's online GC is the safe alternative.

Output: progress on stderr while it walks (counts; a bar only when stderr is a terminal;
otherwise a line per phase and every few seconds), then on stdout every deletion ("would
delete ..." with ``--dry-run``, which deletes nothing) and a summary: repositories,
manifests, blobs kept, blobs deleted, bytes freed, time taken. ``--quiet`` prints only the
summary. Exit status 0 on success, 1 when the collection failed or another collection
holds the lock.

The lock (``storage/gc_lock.py``) of a collection that died on this host is taken over at
once; ``--force`` takes it whatever holds it, with a warning naming the holder (a live
holder stops at its next check). Holding the lock, a real run first puts back what an
interrupted online collection left in the trash (``OnlineCollector.recover``); the
collection that follows then deletes what nothing references.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

import trio

from .config import Config
from .drivers import make_driver
from .drivers.base import Driver
from .drivers.redis import RedisClient
from .ops.redis import redis_client
from .storage.descriptor_cache import RedisDescriptors, forget_collected
from .storage.gc_lock import LockBusy, describe, live_holder, open_gc_lock
from .storage.gc_online import OnlineCollector, collect
from .storage.gc_report import GCOptions, GCReport, Progress

TTY_REFRESH = 0.1  # seconds between redraws of the progress line on a terminal
LOG_REFRESH = 5.0  # seconds between progress lines when stderr is not a terminal
BAR_WIDTH = 24


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


class TerminalProgress(Progress):
    """Counts on ``stream``: one redrawn line with a bar on a terminal, else plain lines."""

    def __init__(self, stream: TextIO, *, tty: bool | None = None) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.name = ""
        self.total: int | None = None
        self.done = 0
        self.counts: dict[str, int] = {}
        self._last = 0.0
        self._width = 0

    def phase(self, name: str, total: int | None = None) -> None:
        if self.name:
            self._render(force=True, end=True)
        self.name, self.total, self.done = name, total, 0
        self._render(force=True)

    def advance(self, n: int = 1) -> None:
        self.done += n
        self._render()

    def count(self, name: str, value: int) -> None:
        self.counts[name] = value
        self._render()

    def close(self) -> None:
        if self.name:
            self._render(force=True, end=True)
            self.name = ""

    def line(self) -> str:
        parts = [f"{self.name:<12}"]
        if self.total is not None:
            if self.tty:
                filled = BAR_WIDTH * self.done // max(1, self.total)
                parts.append("[" + "#" * filled + "-" * (BAR_WIDTH - filled) + "]")
            parts.append(f"{self.done}/{self.total}")
        parts.extend(f"{k} {v}" for k, v in self.counts.items())
        return "  ".join(parts)

    def _render(self, *, force: bool = False, end: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < (TTY_REFRESH if self.tty else LOG_REFRESH):
            return
        self._last = now
        text = self.line()
        if self.tty:
            pad = " " * max(0, self._width - len(text))
            self.stream.write("\r" + text + pad + ("\n" if end else ""))
            self._width = 0 if end else len(text)
        elif end or not force:
            self.stream.write(text + "\n")
        self.stream.flush()


def print_report(report: GCReport, out: TextIO, *, quiet: bool) -> None:
    verb = "would delete" if report.dry_run else "deleted"
    past = "to delete" if report.dry_run else "deleted"
    if not quiet:
        out.writelines(f"{verb} manifest {name}@{d}\n" for name, d in report.manifests_deleted)
        out.writelines(f"{verb} blob {d} ({size} bytes)\n" for d, size in report.blobs_deleted)
        out.writelines(f"{verb} layer link {name} {d}\n" for name, d in report.links_deleted)
        out.writelines(f"warning: {w}\n" for w in report.warnings)
    title = "garbage-collect summary" + (
        " (dry run: nothing was deleted)" if report.dry_run else ""
    )
    rows = [
        ("repositories", str(report.repositories)),
        ("manifests", f"{report.manifests} ({len(report.manifests_deleted)} {past})"),
        ("blobs kept", str(report.blobs_kept)),
        (f"blobs {past}", str(len(report.blobs_deleted))),
        (
            "bytes freed" if not report.dry_run else "bytes to free",
            f"{human_bytes(report.bytes_freed)} ({report.bytes_freed} bytes)",
        ),
        (f"layer links {past}", str(len(report.links_deleted))),
        ("time taken", f"{report.seconds:.2f}s"),
    ]
    out.write(title + "\n")
    out.writelines(f"  {label + ':':<24}{value}\n" for label, value in rows)
    out.flush()


async def _collect(
    driver: Driver, options: GCOptions, progress: Progress, force: bool = False,
    redis: RedisClient | None = None,
) -> GCReport:
    """One offline collection; with ``redis`` (the config's Redis descriptor cache), what it
    deleted is forgotten there too, so no replica answers a HEAD for it from Redis."""
    try:
        if force:
            holder = await live_holder(driver)
            if holder is not None:
                print(
                    f"registry garbage-collect: WARNING: --force: taking the lock from the"
                    f" collection of {describe(holder)}, which may still be running",
                    file=sys.stderr,
                    flush=True,
                )
        # Offline: confirm=0, nobody else should be collecting; the lock still keeps the
        # server's online GC (and a second CLI run) away while we work.
        async with open_gc_lock(driver, confirm=0, force=force) as lock:
            recovery = OnlineCollector(driver, GCOptions(online=True, dry_run=options.dry_run))
            await recovery.recover()
            report = await collect(driver, options, progress=progress, check_lock=lock.check)
            report.warnings[:0] = recovery.report.warnings
        if redis is not None:
            await forget_collected(RedisDescriptors(redis), report)
            if redis.down:
                report.warnings.append(
                    "Redis was unreachable: its blob descriptor cache may still list what"
                    " was deleted; flush it (redis-cli FLUSHDB) before serving again"
                )
        return report
    finally:
        with trio.CancelScope(shield=True):
            await driver.aclose()
            if redis is not None:
                await redis.aclose()


def run_gc(
    config: Config, *, dry_run: bool, delete_untagged: bool, quiet: bool, force: bool = False
) -> int:
    """The command: returns the exit status."""
    s = config.storage
    driver = make_driver(s.driver, s.params, redirect_disable=True)
    options = GCOptions(dry_run=dry_run, delete_untagged=delete_untagged)
    progress: Progress = Progress() if quiet else TerminalProgress(sys.stderr)
    redis = redis_client(config.redis) if s.blobdescriptor == "redis" else None
    try:
        report = trio.run(_collect, driver, options, progress, force, redis)
    except LockBusy as exc:
        print(f"registry garbage-collect: {exc}; try again later", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nregistry garbage-collect: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - one line, not a traceback, for a CLI user
        if isinstance(progress, TerminalProgress):
            progress.close()
        print(f"registry garbage-collect: failed: {exc!r}", file=sys.stderr)
        return 1
    if isinstance(progress, TerminalProgress):
        progress.close()
    print_report(report, sys.stdout, quiet=quiet)
    return 0
