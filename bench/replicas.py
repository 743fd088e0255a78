"""Scenario ``replicas``: 1, 2 and 3 replicas on one storage behind haproxy (issue 17, Speed).

Each side (ours, one worker per replica; the reference binary) runs the same deployment,
tests/scalekit.py's (the one the scale-out tests use): N replica processes on ONE shared
filesystem directory behind haproxy balancing every request round-robin (``option
http-server-close``: one server connection per request, for both sides alike). The point:
nothing serialises across replicas, so aggregate throughput must not drop as replicas are
added (2 cores here: it need not rise much either).

Per round, side and replica count (a fresh deployment each):

1. ``push``: ``CONC_PUSHES`` clients push distinct windows of the data file (monolithic,
   ``conc_blob`` bytes each) at once through haproxy: aggregate MB/s. Blobs are read back
   and hashed afterwards (a fast wrong answer never counts).
2. ``pull``: the same number of clients GET those blobs at once, bytes compared as they
   arrive: aggregate MB/s.
3. ``mget``: manifest GETs by tag at 32 connections for ``small_duration`` seconds (hload,
   bench/hload.c, checking status and Docker-Content-Digest of every answer): req/s.

Then, per side, on S3 (moto without IAM auth, behind tests/s3kit.py's counting proxy), 3
replicas: the S3 requests per manifest GET by tag and per blob HEAD (``S3_COUNT`` of each
through haproxy after a warm-up per replica), without a descriptor cache and with
``storage.cache.blobdescriptor: redis`` on one redis-server shared by the replicas. Skipped
(those figures only) without moto or redis-server.
"""

from __future__ import annotations

import shlex
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests import scalekit
from tests.s3kit import CountingProxy, MotoServer

from . import oci
from .core import Env, Figure, Profile, RoundResult, Skip, Target
from .http1 import Connection
from .procmem import tree_cpu_seconds
from .servers import REPO_ROOT, ServerSpec, free_port, server_env
from .small import build_hload, run_hload
from .transfer import ConcurrentPushes

REPLICA_COUNTS = (1, 2, 3)
CONC_PUSHES = 8  # concurrent pushes (and pulls) per phase, as issue 17 suggests
MGET_CONNS = 32  # manifest GETs at 32 connections (bench/hload.c)
S3_COUNT = 60  # manifest GETs (and blob HEADs) counted at the S3 proxy: 20 per replica
S3_REPLICAS = 3
PHASE_DEADLINE = 600.0  # seconds: bound on one concurrent push or pull phase
REPO = "bench/replicas"


def _command(spec: ServerSpec) -> scalekit.Command:
    """A replica's argv + env from the side's command line (``{config}`` substituted)."""

    def command(config: Path) -> tuple[list[str], dict[str, str]]:
        # No AWS_* either: the config names the bucket's keys (as bench/s3.py does).
        env = {k: v for k, v in server_env().items() if not k.startswith("AWS_")}
        if spec.side == "ours":  # import this checkout, wherever the bench runs from
            env["PYTHONPATH"] = ":".join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        return spec.argv(config), env

    return command


def _ours(spec: ServerSpec) -> bool:
    words = shlex.split(spec.command)
    return spec.side == "ours" and "registry" in words


@contextmanager
def _deployment(env: Env, spec: ServerSpec, replicas: int, **options: Any) -> Iterator[Any]:
    directory = Path(tempfile.mkdtemp(prefix=f"{spec.side}-r{replicas}-", dir=env.workdir))
    try:
        with scalekit.open_deployment(
            directory, replicas=replicas, command=_command(spec), log_level=spec.log_level,
            access_log=False, workers=1 if _ours(spec) else None, free_port=free_port,
            **options,
        ) as deploy:  # fmt: skip
            yield deploy
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _cpu(deploy: Any) -> float:
    return sum(tree_cpu_seconds(r.proc.pid) for r in deploy.replicas if r.proc is not None)


class ReplicasScenario:
    name = "replicas"
    title = "replicas behind haproxy (one shared directory)"
    default = True

    def __init__(self) -> None:
        self.moto: MotoServer | None = None
        self.s3_skip: str | None = None

    def figures(self, profile: Profile) -> list[Figure]:
        mib = profile.conc_blob // (1024 * 1024)
        out: list[Figure] = []
        for n in REPLICA_COUNTS:
            out += [
                Figure(f"push_r{n}_mbps", f"{CONC_PUSHES} x {mib} MiB push, {n} replica(s)",
                       "MB/s", target=Target("ratio", 1.0)),
                Figure(f"pull_r{n}_mbps", f"{CONC_PUSHES} x {mib} MiB pull, {n} replica(s)",
                       "MB/s", target=Target("ratio", 1.0)),
                Figure(f"mget_r{n}_rps", f"manifest GET c={MGET_CONNS}, {n} replica(s)",
                       "req/s", target=Target("ratio", 0.8)),
                Figure(f"cpu_r{n}", f"replicas' CPU time, {n} replica(s)", "s", "lower"),
            ]  # fmt: skip
        out += [
            Figure("s3_per_mget", f"S3 requests per manifest GET, {S3_REPLICAS} replicas",
                   "count", "lower", zero_ok=True),
            Figure("s3_per_mget_redis", "S3 requests per manifest GET, Redis cache", "count",
                   "lower", zero_ok=True),
            Figure("s3_per_bhead", f"S3 requests per blob HEAD, {S3_REPLICAS} replicas",
                   "count", "lower", zero_ok=True),
            Figure("s3_per_bhead_redis", "S3 requests per blob HEAD, Redis cache", "count",
                   "lower", zero_ok=True),
        ]  # fmt: skip
        return out

    def prepare(self, env: Env) -> None:
        if shutil.which("haproxy") is None:
            raise Skip("haproxy is not installed (apt-get install -y haproxy)")
        self.hload = build_hload(env.cache_dir)
        for i in range(CONC_PUSHES):
            env.data.digest(*self._window(env.profile, i))
        self.s3_skip = self._start_moto(env)

    def _start_moto(self, env: Env) -> str | None:
        if shutil.which("redis-server") is None:
            return "redis-server is not installed"
        try:
            import moto.server  # noqa: F401
        except ImportError:
            return "moto is not installed"
        if self.moto is None or self.moto.process.poll() is not None:
            from .s3 import start_bench_moto

            try:
                self.moto = start_bench_moto(env.workdir / "replicas-moto.log")
            except (OSError, RuntimeError) as exc:
                return f"moto did not start: {exc}"
        return None

    @staticmethod
    def _window(p: Profile, i: int) -> tuple[int, int]:
        return i * p.conc_step, p.conc_blob

    def run(self, env: Env, spec: ServerSpec) -> RoundResult:
        result = RoundResult()
        for n in REPLICA_COUNTS:
            self._phase(env, spec, n, result)
        if self.s3_skip is None:
            for redis in (False, True):
                counts = self._s3_requests(env, spec, redis)
                for key, value in counts.items():
                    result.values[f"s3_per_{key}{'_redis' if redis else ''}"] = value
        else:
            result.notes["s3_skipped"] = self.s3_skip
        return result

    def _phase(self, env: Env, spec: ServerSpec, n: int, result: RoundResult) -> None:
        p = env.profile
        windows = [self._window(p, i) for i in range(CONC_PUSHES)]
        digests = [env.data.digest(*w) for w in windows]
        with _deployment(env, spec, n) as deploy:
            lb = deploy.lb_port

            def connect() -> Connection:
                return Connection("127.0.0.1", lb, timeout=p.request_timeout)

            pushes = ConcurrentPushes(connect, REPO, [env.data.slice(*w) for w in windows],
                                      digests)  # fmt: skip
            cpu0 = _cpu(deploy)
            push_s = pushes.go(PHASE_DEADLINE)
            if pushes.errors:
                raise oci.ProtocolError(f"{n} replicas: push failed: {pushes.errors[0]}")

            wrong: list[str] = []
            barrier = threading.Barrier(CONC_PUSHES + 1)

            def pull(i: int) -> None:
                with connect() as conn:
                    barrier.wait(timeout=30)
                    want = env.data.slice(*windows[i])
                    r = conn.request("GET", f"/v2/{REPO}/blobs/{digests[i]}", sink="compare",
                                     expect=want)  # fmt: skip
                    if r.status != 200 or not r.matches:
                        wrong.append(f"GET {digests[i]}: {r.status}, bytes match: {r.matches}")

            with ThreadPoolExecutor(CONC_PUSHES) as pool:
                futures = [pool.submit(pull, i) for i in range(CONC_PUSHES)]
                barrier.wait(timeout=30)
                t0 = time.perf_counter()
                for f in futures:
                    f.result(timeout=PHASE_DEADLINE)
                pull_s = time.perf_counter() - t0
            if wrong:
                raise oci.ProtocolError(f"{n} replicas: {wrong[0]}")

            with connect() as conn:
                image = oci.push_small_image(conn, REPO, "latest", env.data.read(0, 4096))
            r = run_hload(self.hload, lb, "GET", f"/v2/{REPO}/manifests/latest",
                          image["manifest"], MGET_CONNS, p.small_duration)  # fmt: skip
            errors = r["errors"]
            if errors["status"] or errors["header"] or not r["requests"]:
                raise oci.ProtocolError(f"{n} replicas: manifest GET answers wrong: {errors}")
            cpu = _cpu(deploy) - cpu0
        total = CONC_PUSHES * p.conc_blob
        result.values[f"push_r{n}_mbps"] = total / push_s / 1e6
        result.values[f"pull_r{n}_mbps"] = total / pull_s / 1e6
        result.values[f"mget_r{n}_rps"] = r["rps"]
        result.values[f"cpu_r{n}"] = cpu
        result.notes[f"r{n}"] = {"push_s": push_s, "pull_s": pull_s, "mget": r}

    def _s3_requests(self, env: Env, spec: ServerSpec, redis: bool) -> dict[str, float]:
        """S3 requests per manifest GET by tag and per blob HEAD, through haproxy, after one
        warm-up of each per replica."""
        assert self.moto is not None
        moto = self.moto
        bucket = moto.new_bucket()
        accept = {"Accept": "application/vnd.oci.image.manifest.v1+json, "
                  "application/vnd.docker.distribution.manifest.v2+json"}  # fmt: skip
        out: dict[str, float] = {}
        with CountingProxy(moto.port) as proxy:
            params = moto.params(bucket, regionendpoint=proxy.endpoint)
            with (
                _deployment(env, spec, S3_REPLICAS, storage="s3", s3_params=params,
                            redis=redis) as deploy,
                Connection("127.0.0.1", deploy.lb_port, timeout=60) as conn,
            ):  # fmt: skip
                image = oci.push_small_image(conn, REPO, "latest", env.data.read(0, 4096))
                checks = {
                    "mget": ("GET", f"/v2/{REPO}/manifests/latest", image["manifest"]),
                    "bhead": ("HEAD", f"/v2/{REPO}/blobs/{image['layer']}", image["layer"]),
                }
                for key, (method, path, digest) in checks.items():

                    def ask(method: str = method, path: str = path, digest: str = digest) -> None:
                        resp = conn.request(method, path, accept)
                        oci.expect(resp, 200, what=f"{method} {path}")
                        if resp.header("docker-content-digest") != digest:
                            raise oci.ProtocolError(f"{method} {path}: wrong digest")

                    for _ in range(S3_REPLICAS):  # one warm-up per replica
                        ask()
                    before = proxy.snapshot()
                    for _ in range(S3_COUNT):
                        ask()
                    out[key] = sum((proxy.snapshot() - before).values()) / S3_COUNT
        return out
