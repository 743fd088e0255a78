"""The upload path in-process: CPU per GB pushed and per small blob, without a server.

The registry's ASGI app is called directly with a ``receive()`` that hands out the body in
pieces of a fixed size (bytes objects cut once from a preallocated random buffer, as a
server would hand them over), so what is measured is everything from the app's
``receive()`` down: the handler, the upload state machine, hashing, the lease and the
filesystem driver. No socket, no HTTP parser.

Scenarios (each repeated ``--rounds`` times; medians are printed):

- ``mono``: ``POST`` then ``PUT ?digest=`` with the whole body (SPEC Push 11).
- ``stream``: ``POST``, one ``PATCH`` without Content-Range (chunked transfer encoding,
  how docker pushes, SPEC Push 12), then an empty ``PUT ?digest=``.
- ``small``: ``--small-count`` blobs of ``--small-size`` bytes, each ``POST`` + ``PUT``
  with the body, ``--concurrency`` at a time: CPU per blob, storage calls per blob (by
  kind) and worker-thread hops per blob.

CPU is the process's user+system time (``getrusage``: every thread, so hashing and
writing in worker threads count), per GB (10^9 bytes) pushed or per blob. Run it from a
worktree with ``PYTHONPATH`` set to it; to compare two trees, run it twice in alternation.

    python -m bench.upload_profile                       # everything, 512 MiB bodies
    python -m bench.upload_profile --only small --small-count 2000
    python -m bench.upload_profile --only mono --pieces 1024 --cprofile
    strace -f -c -o /tmp/sc.txt python -m bench.upload_profile --only small  # syscalls

``--root`` picks the storage directory (default: a temp directory under /tmp, which is
a disk here; /dev/shm takes the disk out).
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import io
import os
import pstats
import resource
import shutil
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Self

import trio

from bench.app_profile import scope as app_scope
from registry.drivers.filesystem import FilesystemDriver
from registry.drivers.instrumented import InstrumentedDriver
from registry.http.app import AppOptions, RegistryApp
from registry.storage.store import Storage

MiB = 1024 * 1024
SOURCE_SIZE = 8 * MiB  # random bytes the pieces are cut from (distinct pieces, cheap setup)
REPO = "bench/upload"


class CallCounter:
    """A CallRecorder (drivers/instrumented.py) that counts storage calls by kind."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def record_call(self, driver: str, action: str, seconds: float, error: str | None) -> None:
        self.calls[action] += 1


class HopCounter:
    """Counts trio.to_thread.run_sync calls (worker-thread hops) while installed."""

    def __init__(self) -> None:
        self.hops = 0
        self._orig = trio.to_thread.run_sync

    def __enter__(self) -> Self:
        orig = self._orig

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.hops += 1
            return await orig(*args, **kwargs)

        trio.to_thread.run_sync = counted  # type: ignore[assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        trio.to_thread.run_sync = self._orig  # type: ignore[assignment]


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def make_pieces(total: int, piece: int, source: bytes) -> tuple[list[bytes], str]:
    """``total`` bytes as a list of ``piece``-sized bytes objects, and their sha256 digest.
    Pieces repeat with a period of SOURCE_SIZE (memory stays bounded for big bodies)."""
    distinct = [source[i : i + piece] for i in range(0, len(source) - piece + 1, piece)]
    out: list[bytes] = []
    h = hashlib.sha256()
    left = total
    i = 0
    while left > 0:
        p = distinct[i % len(distinct)]
        if len(p) > left:
            p = p[:left]
        out.append(p)
        h.update(p)
        left -= len(p)
        i += 1
    return out, "sha256:" + h.hexdigest()


async def call(
    app: RegistryApp,
    method: str,
    path: str,
    query: str = "",
    headers: list[tuple[bytes, bytes]] | None = None,
    body: list[bytes] | None = None,
) -> tuple[int, dict[bytes, bytes]]:
    """One exchange with the app; (status, response headers). ``body`` pieces are handed
    out one per receive() call."""
    pieces = body or []
    n = len(pieces)
    i = 0

    async def receive() -> dict[str, Any]:
        nonlocal i
        if i < n:
            i += 1
            return {"type": "http.request", "body": pieces[i - 1], "more_body": i < n}
        if i == n:
            i += 1
            return {"type": "http.request", "body": b"", "more_body": False}
        return {"type": "http.disconnect"}

    result: dict[str, Any] = {}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            result["status"] = message["status"]
            result["headers"] = dict(message.get("headers", ()))

    target = f"{path}?{query}" if query else path
    await app(app_scope(method, target, headers or []), receive, send)
    return result["status"], result["headers"]


def _session_path(headers: dict[bytes, bytes]) -> str:
    """The path of a Location header (absolute URL or path)."""
    loc = headers[b"location"].decode()
    if "://" in loc:
        loc = "/" + loc.split("://", 1)[1].split("/", 1)[1]
    return loc


async def push_mono(app: RegistryApp, pieces: list[bytes], digest: str) -> None:
    status, h = await call(app, "POST", f"/v2/{REPO}/blobs/uploads/")
    assert status == 202, status
    size = sum(map(len, pieces))
    status, h = await call(
        app, "PUT", _session_path(h), f"digest={digest}",
        [(b"content-length", str(size).encode()), (b"content-type", b"application/octet-stream")],
        pieces,
    )
    assert status == 201, status


async def push_stream(app: RegistryApp, pieces: list[bytes], digest: str) -> None:
    status, h = await call(app, "POST", f"/v2/{REPO}/blobs/uploads/")
    assert status == 202, status
    status, h = await call(
        app, "PATCH", _session_path(h), "", [(b"transfer-encoding", b"chunked")], pieces
    )
    assert status == 202, status
    status, h = await call(
        app, "PUT", _session_path(h), f"digest={digest}", [(b"content-length", b"0")]
    )
    assert status == 201, status


def new_app(root: str, counter: CallCounter | None = None) -> RegistryApp:
    driver: Any = FilesystemDriver(root)
    if counter is not None:
        driver = InstrumentedDriver(driver, counter)
    return RegistryApp(Storage(driver), AppOptions(delete_enabled=True, access_log=False))


LOOP_SHARE: list[float] = []  # event-loop thread's share of the CPU, per measure() call


def measure(fn: Callable[[], Awaitable[None]], profile: cProfile.Profile | None) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of running ``fn`` in a fresh trio run; appends the
    event-loop thread's share of that CPU to LOOP_SHARE (the rest is worker threads)."""
    c0, t0, w0 = cpu_seconds(), time.thread_time(), time.perf_counter()
    if profile is not None:
        profile.enable()
    trio.run(fn)
    if profile is not None:
        profile.disable()
    cpu = cpu_seconds() - c0
    LOOP_SHARE.append((time.thread_time() - t0) / cpu if cpu else 0.0)
    return cpu, time.perf_counter() - w0


def run_big(args: argparse.Namespace, kind: str, source: bytes, piece_kib: int) -> dict[str, float]:
    total = args.size_mib * MiB
    pieces, digest = make_pieces(total, piece_kib * 1024, source)
    push = push_mono if kind == "mono" else push_stream
    cpus, walls = [], []
    profile = cProfile.Profile() if args.cprofile else None
    for _ in range(args.rounds):
        root = tempfile.mkdtemp(prefix="upload-profile-", dir=args.root)
        try:
            app = new_app(root)
            os.sync()  # nobody else's writeback in our timed part
            cpu, wall = measure(partial(push, app, pieces, digest), profile)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        cpus.append(cpu)
        walls.append(wall)
    cpu, wall = statistics.median(cpus), statistics.median(walls)
    loop = statistics.median(LOOP_SHARE[-args.rounds :])
    if profile is not None:
        show_profile(profile, f"{kind} {piece_kib} KiB pieces")
    return {"cpu_s_per_gb": cpu / (total / 1e9), "mb_s": total / 1e6 / wall,
            "cpu_min": min(cpus) / (total / 1e9), "cpu_max": max(cpus) / (total / 1e9),
            "loop_share": loop}


def run_concurrent(args: argparse.Namespace, source: bytes, piece_kib: int) -> dict[str, float]:
    """``--concurrent`` distinct blobs of ``--concurrent-mib`` each, pushed (POST + PUT) all
    at once: CPU per GB, wall MB/s and the peak RSS the pushes added (VmHWM, reset first)."""
    size = args.concurrent_mib * MiB
    blobs = []
    for i in range(args.concurrent):
        seed = i.to_bytes(8, "big")  # distinct blobs: the first piece differs
        pieces, _ = make_pieces(size, piece_kib * 1024, source)
        pieces = [seed + pieces[0][8:], *pieces[1:]]
        h = hashlib.sha256()
        for p in pieces:
            h.update(p)
        blobs.append((pieces, "sha256:" + h.hexdigest()))
    cpus, walls, rss = [], [], []
    for _ in range(args.rounds):
        root = tempfile.mkdtemp(prefix="upload-profile-", dir=args.root)
        try:
            app = new_app(root)

            async def pushes(app: RegistryApp = app) -> None:
                async with trio.open_nursery() as nursery:
                    for b in blobs:
                        nursery.start_soon(push_mono, app, *b)

            os.sync()
            base = reset_peak_rss()
            cpu, wall = measure(pushes, None)
            rss.append(peak_rss() - base)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        cpus.append(cpu)
        walls.append(wall)
    total = size * args.concurrent
    return {"cpu_s_per_gb": statistics.median(cpus) / (total / 1e9),
            "mb_s": total / 1e6 / statistics.median(walls),
            "loop_share": statistics.median(LOOP_SHARE[-args.rounds :]),
            "added_peak_rss_mib": statistics.median(rss) / MiB}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def reset_peak_rss() -> int:
    """Reset VmHWM to the current RSS (Linux clear_refs 5); the current RSS, bytes."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_kib("VmRSS") * 1024


def peak_rss() -> int:
    return _status_kib("VmHWM") * 1024


def run_small(args: argparse.Namespace, source: bytes) -> dict[str, float]:
    blobs = []
    for i in range(args.small_count):
        data = source[i * 7 % 4096 :][: args.small_size - 8] + i.to_bytes(8, "big")
        blobs.append(([data], "sha256:" + hashlib.sha256(data).hexdigest()))
    cpus, walls, calls, hops = [], [], Counter[str](), 0
    profile = cProfile.Profile() if args.cprofile else None
    for _ in range(args.rounds):
        root = tempfile.mkdtemp(prefix="upload-profile-", dir=args.root)
        counter = CallCounter()
        try:
            app = new_app(root, counter)

            async def pushes(app: RegistryApp = app) -> None:
                limit = trio.CapacityLimiter(args.concurrency)

                async def one(b: tuple[list[bytes], str]) -> None:
                    async with limit:
                        await push_mono(app, *b)

                async with trio.open_nursery() as nursery:
                    for b in blobs:
                        nursery.start_soon(one, b)

            os.sync()
            with HopCounter() as hc:
                cpu, wall = measure(pushes, profile)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        cpus.append(cpu)
        walls.append(wall)
        calls, hops = counter.calls, hc.hops
    n = args.small_count
    if profile is not None:
        show_profile(profile, "small blobs")
    out = {"cpu_ms_per_blob": statistics.median(cpus) / n * 1e3,
           "blobs_per_s": n / statistics.median(walls),
           "loop_share": statistics.median(LOOP_SHARE[-args.rounds :]),
           "thread_hops_per_blob": hops / n}
    out.update({f"calls.{k}": v / n for k, v in sorted(calls.items())})
    return out


def show_profile(profile: cProfile.Profile, title: str) -> None:
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(25)
    print(f"--- cProfile (event-loop thread only), {title}, by own time ---")
    print(out.getvalue())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.upload_profile", description=__doc__.split("\n")[0])
    p.add_argument("--only", default="mono,stream,concurrent,small",
                   help="scenarios: mono,stream,concurrent,small")
    p.add_argument("--size-mib", type=int, default=512, help="body size of mono/stream")
    p.add_argument("--pieces", default="64,256,1024", help="receive() piece sizes, KiB")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--small-count", type=int, default=500)
    p.add_argument("--small-size", type=int, default=4096, help="bytes per small blob")
    p.add_argument("--concurrency", type=int, default=16, help="small pushes at once")
    p.add_argument("--concurrent", type=int, default=16, help="blobs pushed at once")
    p.add_argument("--concurrent-mib", type=int, default=32, help="MiB per concurrent blob")
    p.add_argument("--root", default=None, help="where the temp storage goes")
    p.add_argument("--cprofile", action="store_true", help="print the loop thread's profile")
    args = p.parse_args(argv)
    only = set(args.only.split(","))
    source = os.urandom(SOURCE_SIZE)
    import registry

    print(f"registry from {os.path.dirname(registry.__file__)}; {args.rounds} rounds, medians")
    for kind in ("mono", "stream"):
        if kind not in only:
            continue
        for piece in (int(x) for x in args.pieces.split(",")):
            r = run_big(args, kind, source, piece)
            print(
                f"{kind:6} {args.size_mib} MiB in {piece:5} KiB pieces: "
                f"{r['cpu_s_per_gb']:.3f} CPU-s/GB ({r['cpu_min']:.3f}..{r['cpu_max']:.3f}), "
                f"{r['mb_s']:.0f} MB/s wall, event loop {r['loop_share']:.0%} of the CPU"
            )
    if "concurrent" in only:
        for piece in (int(x) for x in args.pieces.split(",")):
            r = run_concurrent(args, source, piece)
            print(
                f"{args.concurrent} x {args.concurrent_mib} MiB at once, {piece} KiB pieces: "
                f"{r['cpu_s_per_gb']:.3f} CPU-s/GB, {r['mb_s']:.0f} MB/s wall, event loop "
                f"{r['loop_share']:.0%} of the CPU, peak RSS +{r['added_peak_rss_mib']:.0f} MiB"
            )
    if "small" in only:
        r = run_small(args, source)
        print(f"small  {args.small_count} x {args.small_size} B, {args.concurrency} at once: "
              + ", ".join(f"{k} {v:.2f}" for k, v in r.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
