"""Byte-heavy scenarios: pushes (monolithic, streamed, chunked), pulls, concurrent pushes.

Throughput is body bytes / wall time from the POST to the final 201 (pushes) or of the GET
(pulls), in MB/s with MB = 10^6 bytes. Every pushed blob is read back and hashed after the
timed part, and pulled bytes are compared with the pushed file as they arrive; a mismatch
fails the round, so a fast wrong answer never counts.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from . import oci
from .core import Env, Figure, Profile, RoundResult, Target
from .http1 import Connection, FileSlice
from .servers import ServerSpec, open_server

REPO = "bench/blob"
CONCURRENT_DEADLINE = 600.0  # seconds: bound on one concurrent phase

PushFn = Callable[[Connection, str, FileSlice, str, Profile], object]


class ConcurrentPushes:
    """One thread per blob, each pushing it monolithically once :meth:`go` releases them
    all at once; ``outcome[i]`` is None for a push that succeeded, else its error."""

    def __init__(self, connect: Callable[[], Connection], repo: str, bodies: list[FileSlice],
                 digests: list[str]) -> None:  # fmt: skip
        n = len(bodies)
        self.outcome: list[str | None] = ["did not finish"] * n
        self._barrier = threading.Barrier(n + 1)

        def client(i: int) -> None:
            try:
                self._barrier.wait(timeout=30)
                with connect() as conn:
                    oci.push_monolithic(conn, repo, bodies[i], digests[i])
                self.outcome[i] = None
            except Exception as exc:  # noqa: BLE001 - every failure is one error
                self.outcome[i] = f"{type(exc).__name__}: {exc}"

        self._threads = [threading.Thread(target=client, args=(i,), daemon=True)
                         for i in range(n)]  # fmt: skip
        for t in self._threads:
            t.start()

    def go(self, deadline: float) -> float:
        """Release every client and wait for them, at most ``deadline`` seconds; return the
        seconds from the release until the last one finished (or the deadline)."""
        self._barrier.wait(timeout=30)
        t0 = time.perf_counter()
        for t in self._threads:
            t.join(timeout=max(0.0, t0 + deadline - time.perf_counter()))
        return time.perf_counter() - t0

    @property
    def ok(self) -> list[int]:
        return [i for i, e in enumerate(self.outcome) if e is None]

    @property
    def errors(self) -> list[str]:
        return [e for e in self.outcome if e is not None]


@dataclass
class PushScenario:
    name: str
    title: str
    push: PushFn
    default: bool = True

    def figures(self, profile: Profile) -> list[Figure]:
        mib = profile.blob_size // (1024 * 1024)
        return [
            Figure("mbps", f"{self.title} {mib} MiB", "MB/s", target=Target("ratio", 1.0)),
            Figure("cpu", "server CPU time", "s", better="lower"),
            Figure("rss", "peak memory (PSS)", "MB", better="lower"),
        ]

    def prepare(self, env: Env) -> None:
        env.data.digest(0, env.profile.blob_size)

    def run(self, env: Env, spec: ServerSpec) -> RoundResult:
        p = env.profile
        body = env.data.slice(0, p.blob_size)
        digest = env.data.digest(0, p.blob_size)
        with open_server(spec, env.workdir) as srv, srv.connect(p.request_timeout) as conn:
            os.sync()  # neither side pays for the other's writeback
            srv.rss.reset()
            cpu0 = srv.cpu_seconds()
            t0 = time.perf_counter()
            self.push(conn, REPO, body, digest, p)
            elapsed = time.perf_counter() - t0
            cpu = srv.cpu_seconds() - cpu0
            peak = srv.rss.peak_mb
            oci.verify_blob(conn, REPO, digest, p.blob_size)
        values = {"mbps": p.blob_size / elapsed / 1e6, "cpu": cpu, "rss": peak}
        return RoundResult(values, {"seconds": elapsed})


def _monolithic(conn: Connection, repo: str, body: FileSlice, digest: str, p: Profile) -> object:
    return oci.push_monolithic(conn, repo, body, digest)


def _streamed(conn: Connection, repo: str, body: FileSlice, digest: str, p: Profile) -> object:
    return oci.push_streamed(conn, repo, body, digest, p.stream_chunk)


def _chunked(conn: Connection, repo: str, body: FileSlice, digest: str, p: Profile) -> object:
    return oci.push_chunked(conn, repo, body, digest, p.patch_chunk)


PUSH_MONOLITHIC = PushScenario("push_monolithic", "monolithic push", _monolithic)
PUSH_STREAMED = PushScenario("push_streamed", "streamed push", _streamed)
PUSH_CHUNKED = PushScenario("push_chunked", "chunked push", _chunked)


class PullScenario:
    name = "pull"
    title = "pull"
    default = True

    def figures(self, profile: Profile) -> list[Figure]:
        mib = profile.blob_size // (1024 * 1024)
        rmib = profile.range_size // (1024 * 1024)
        return [
            Figure("mbps", f"pull {mib} MiB", "MB/s", target=Target("ratio", 1.3)),  # issue 14
            # zero_ok: CPU time is read in clock ticks (10 ms), and a sendfile'd 64 MiB pull
            # (--quick) can cost less than one: 0.0 is a measurement there, not a failure.
            Figure("cpu", "server CPU time of the pull", "s", "lower", zero_ok=True),
            Figure("range_rps", f"ranged GET {rmib} MiB, 1 conn", "req/s"),
            Figure("rss", "peak memory (PSS)", "MB", better="lower"),
        ]

    def prepare(self, env: Env) -> None:
        p = env.profile
        env.data.digest(0, p.blob_size)
        rng = random.Random(7)  # the same ranges for both servers and every round
        self.offsets = [rng.randrange(0, p.blob_size - p.range_size) for _ in range(p.range_count)]

    def run(self, env: Env, spec: ServerSpec) -> RoundResult:
        p = env.profile
        digest = env.data.digest(0, p.blob_size)
        path = f"/v2/{REPO}/blobs/{digest}"
        with open_server(spec, env.workdir) as srv, srv.connect(p.request_timeout) as conn:
            oci.push_monolithic(conn, REPO, env.data.slice(0, p.blob_size), digest)
            srv.rss.reset()
            cpu0 = srv.cpu_seconds()
            t0 = time.perf_counter()
            body = env.data.slice(0, p.blob_size)
            resp = conn.request("GET", path, sink="compare", expect=body)
            elapsed = time.perf_counter() - t0
            cpu = srv.cpu_seconds() - cpu0
            oci.expect(resp, 200, what="GET blob")
            if not resp.matches:
                raise oci.ProtocolError(f"pull: {resp.length} bytes, not the blob pushed")
            t0 = time.perf_counter()
            for off in self.offsets:
                end = off + p.range_size - 1
                want = env.data.slice(off, p.range_size)
                r = conn.request(
                    "GET", path, {"Range": f"bytes={off}-{end}"}, sink="compare", expect=want
                )
                oci.expect(r, 206, what="ranged GET")
                if not r.matches:
                    raise oci.ProtocolError(f"ranged GET {off}-{end}: wrong bytes")
                if not r.header("content-range").startswith(f"bytes {off}-{end}/"):
                    raise oci.ProtocolError(f"Content-Range {r.header('content-range')!r}")
            range_elapsed = time.perf_counter() - t0
            peak = srv.rss.peak_mb
        return RoundResult(
            {
                "mbps": p.blob_size / elapsed / 1e6,
                "cpu": cpu,
                "range_rps": len(self.offsets) / range_elapsed,
                "rss": peak,
            },
            {"seconds": elapsed, "range_seconds": range_elapsed},
        )


class ConcurrentPushScenario:
    name = "concurrent_push"
    title = "concurrent push"
    default = True

    def figures(self, profile: Profile) -> list[Figure]:
        mib = profile.conc_blob // (1024 * 1024)
        rss_limit = {16: 150.0, 64: 256.0}
        out = []
        for n in profile.conc_clients:
            target = Target("max", rss_limit[n]) if n in rss_limit else None
            out += [
                Figure(
                    f"c{n}_mbps", f"{n} clients x {mib} MiB", "MB/s", target=Target("ratio", 1.0)
                ),
                Figure(f"c{n}_errors", f"{n} clients errors", "count", "lower", zero_ok=True),
                Figure(f"c{n}_cpu", f"{n} clients server CPU time", "s", "lower"),
                Figure(f"c{n}_rss", f"{n} clients peak memory (PSS)", "MB", "lower", target=target),
            ]
        return out

    def _window(self, p: Profile, i: int) -> tuple[int, int]:
        return i * p.conc_step, p.conc_blob

    def prepare(self, env: Env) -> None:
        p = env.profile
        for i in range(max(p.conc_clients)):
            env.data.digest(*self._window(p, i))

    def run(self, env: Env, spec: ServerSpec) -> RoundResult:
        result = RoundResult()
        for n in env.profile.conc_clients:
            self._phase(env, spec, n, result)
        return result

    def _phase(self, env: Env, spec: ServerSpec, n: int, result: RoundResult) -> None:
        p = env.profile
        windows = [self._window(p, i) for i in range(n)]
        digests = [env.data.digest(*w) for w in windows]
        with open_server(spec, env.workdir) as srv:
            os.sync()  # neither side pays for the other's writeback
            pushes = ConcurrentPushes(
                lambda: srv.connect(p.request_timeout),
                REPO,
                [env.data.slice(*w) for w in windows],
                digests,
            )
            srv.rss.reset()
            cpu0 = srv.cpu_seconds()
            elapsed = pushes.go(CONCURRENT_DEADLINE)
            cpu = srv.cpu_seconds() - cpu0
            peak = srv.rss.peak_mb
            ok, errors = pushes.ok, pushes.errors

            def verify(i: int) -> None:
                with srv.connect(p.request_timeout) as conn:
                    oci.verify_blob(conn, REPO, digests[i], windows[i][1])

            with ThreadPoolExecutor(4) as pool:
                list(pool.map(verify, ok))  # raises on the first wrong blob
        if not ok:
            raise oci.ProtocolError(f"{n} clients: every push failed, e.g. {errors[0]}")
        result.values[f"c{n}_mbps"] = len(ok) * p.conc_blob / elapsed / 1e6
        result.values[f"c{n}_errors"] = float(len(errors))
        result.values[f"c{n}_cpu"] = cpu
        result.values[f"c{n}_rss"] = peak
        result.notes[f"c{n}_seconds"] = elapsed
        if errors:
            result.notes[f"c{n}_error_samples"] = sorted(set(errors))[:5]
