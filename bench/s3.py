"""Scenario 8, ``s3``: both registries on ONE moto S3 endpoint, each behind a counting proxy.

One moto server (``python -m moto.server``, no IAM auth: distribution 2.8 and the presigned
URLs of the redirect case both work with it, and neither side pays for signature checks)
runs for the whole scenario. Every round, each side gets its own fresh bucket on it and
talks to it through a :class:`CountingProxy` of its own: a streaming HTTP/1.1 relay in this
process that counts the S3 requests (by operation) without buffering bodies or changing
keep-alive. After the side's round the moto state is reset, so both start from the same
empty server. The moto server and the counting proxy come from tests/s3kit.py, the S3
kit the tests use too. The storage config is the same for both (``storage.s3`` with region,
regionendpoint = the proxy, bucket, keys, rootdirectory, forcepathstyle, v4auth, chunksize
10 MiB = both defaults; delete enabled; upload purging off).

Per round and side (three server processes, the same bucket):

1. ``storage.redirect.disable: true``: a monolithic push (POST, PUT with the body) of the
   blob, a streamed push (one chunked PATCH, docker's way) of another window of the data
   file, a monolithic push of a 64 MiB window, a small image (config + layer, then the
   manifest PUT), and a GET of the first blob streamed through the registry. Each timed
   part records MB/s, the server's CPU time and peak memory (PSS), moto's CPU time (moto is one
   Python process under the GIL: its CPU seconds per push bound the push rate) and the S3
   requests the registry sent (the notes add moto's cores = CPU s per wall s, this
   process's CPU, the requests by operation, and the streamed push's final PUT alone).
   Blobs are read back and hashed after the timed parts.
2. Redirects on (the default): GET of the first blob answers 307 to a presigned URL on the
   proxy; the client follows it. MB/s of the whole exchange; the registry's own S3
   requests for the 307 go to the notes.
3. 16 clients push distinct blobs at once (fresh server): aggregate MB/s, errors, peak memory (PSS).

``prepare`` also calibrates moto itself (once per run, printed and kept in every round's
notes): one PutObject and one GetObject of the blob straight from this client, then the
same through the proxy, and our S3 driver alone writing the blob as a multipart upload
(8 MiB writes, 4 parts in flight), which is what the registry's push can hope to reach.
"""

from __future__ import annotations

import os
import resource
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.s3kit import (
    HOST,
    MOTO_REGION,
    CountingProxy,
    MotoServer,
    signed_headers,
    start_moto,
)

from . import oci
from .core import Env, Figure, Profile, RoundResult, Skip, Target
from .http1 import Chunked, Connection
from .procmem import tree_cpu_seconds
from .servers import (
    REPO_ROOT,
    RunningServer,
    ServerSpec,
    config_text,
    free_port,
    run_server,
    server_env,
)
from .transfer import ConcurrentPushes

MiB = 1024 * 1024
REGION = MOTO_REGION
ACCESS_KEY = "AKIDREGISTRYBENCH"
SECRET_KEY = "registry-bench-secret"  # moto runs without IAM auth: any key is accepted
CHUNK_SIZE = 10 * MiB  # storage.s3.chunksize: the default of both registries
COUNT_BLOB = 64 * MiB  # "S3 requests per push of one 64 MiB blob"
CONC_CLIENTS = 16
CONC_DEADLINE = 600.0  # s, bound on the concurrent phase
PULL_REPEATS = 3  # pulls per round; the round keeps the median one (a single 0.7 s pull was noisy)
REPO = "bench/s3"

S3_STORAGE = """\
  s3:
    region: {region}
    regionendpoint: {endpoint}
    bucket: {bucket}
    accesskey: {access_key}
    secretkey: {secret_key}
    rootdirectory: /registry
    secure: false
    v4auth: true
    forcepathstyle: true
    chunksize: {chunk_size}
  delete:
    enabled: true
  redirect:
    disable: {redirect_disable}
  maintenance:
    uploadpurging:
      enabled: false
      age: 168h
      interval: 24h
      dryrun: false"""


def our_s3_driver() -> Path | None:
    for candidate in (REPO_ROOT / "registry/drivers/s3", REPO_ROOT / "registry/drivers/s3.py"):
        if candidate.exists():
            return candidate
    return None


class Fewer(Target):
    """Ours strictly below the reference (request counts: "fewer S3 requests per push")."""

    def __init__(self) -> None:
        super().__init__("fewer", 1.0)

    def describe(self) -> str:
        return "<ref"

    def met(self, ours: float | None, ref: float | None) -> bool | None:
        if ours is None or ref is None:
            return None
        return ours < ref


# --- moto, from the S3 kit the tests use too (tests/s3kit.py) ------------------------------


def start_bench_moto(log_path: Path) -> MotoServer:
    """One moto server for the scenario, without IAM auth, in its own process group, that
    dies with the bench (so no moto outlives a killed run)."""
    return start_moto(free_port(), log=log_path, own_session=True, die_with_parent=True,
                      access_key=ACCESS_KEY, secret_key=SECRET_KEY)  # fmt: skip


def moto_cpu_seconds(moto: MotoServer) -> float:
    return tree_cpu_seconds(moto.process.pid)


# --- our registry processes on S3 -----------------------------------------------------------


@dataclass
class Side:
    """One side's round: its bucket on moto, behind its proxy."""

    moto: MotoServer
    proxy: CountingProxy
    bucket: str
    values: dict[str, float] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)


@contextmanager
def open_s3_server(
    spec: ServerSpec, workdir: Path, side: Side, *, redirect: bool
) -> Iterator[RunningServer]:
    """Like ``servers.open_server``, with ``storage.s3`` on ``side``'s bucket instead of a
    filesystem directory. Stops the process group on exit."""
    base = Path(tempfile.mkdtemp(prefix=f"{spec.side}-s3-", dir=workdir))
    env = {k: v for k, v in server_env().items() if not k.startswith("AWS_")}

    storage = S3_STORAGE.format(
        region=REGION,
        endpoint=side.proxy.endpoint,
        bucket=side.bucket,
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        chunk_size=CHUNK_SIZE,
        redirect_disable=str(not redirect).lower(),
    )

    def config(port: int) -> str:
        return config_text(spec.log_level, storage, port, HOST)

    with run_server(spec, base, base, config, env) as server:
        yield server


def bench_cpu_seconds() -> float:
    """CPU time of this process (client threads and the proxy), user + system."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Timed:
    """Wall time, CPU of server / moto / this process, peak memory (PSS) and S3 requests of a block."""

    elapsed: float = 0.0
    server_cpu: float = 0.0
    moto_cpu: float = 0.0
    bench_cpu: float = 0.0
    rss: float = 0.0
    requests: Counter[str] = field(default_factory=Counter)
    sub: dict[str, Timed] = field(default_factory=dict)  # timed sub-parts

    def note(self) -> dict[str, Any]:
        return {name: part.note() for name, part in self.sub.items()} | {
            "seconds": round(self.elapsed, 3),
            "server_cpu_s": round(self.server_cpu, 3),
            "moto_cpu_s": round(self.moto_cpu, 3),
            "bench_cpu_s": round(self.bench_cpu, 3),
            "s3_requests": sum(self.requests.values()),
            "s3_ops": dict(sorted(self.requests.items())),
            "moto_cores": round(self.moto_cpu / self.elapsed, 2) if self.elapsed else None,
        }


def median_run(runs: list[Timed]) -> Timed:
    """The run with the median elapsed time (the upper middle one of an even count)."""
    return sorted(runs, key=lambda t: t.elapsed)[len(runs) // 2]


@contextmanager
def timed(srv: RunningServer | None, side: Side) -> Iterator[Timed]:
    t = Timed()
    if srv is not None:
        srv.rss.reset()
    cpu0 = srv.cpu_seconds() if srv is not None else 0.0
    moto0, bench0 = moto_cpu_seconds(side.moto), bench_cpu_seconds()
    ops0 = side.proxy.snapshot()
    t0 = time.perf_counter()
    yield t
    t.elapsed = time.perf_counter() - t0
    t.server_cpu = srv.cpu_seconds() - cpu0 if srv is not None else 0.0
    t.moto_cpu = moto_cpu_seconds(side.moto) - moto0
    t.bench_cpu = bench_cpu_seconds() - bench0
    t.rss = srv.rss.peak_mb if srv is not None else 0.0
    t.requests = side.proxy.snapshot() - ops0


def ops_line(requests: Counter[str]) -> str:
    return ", ".join(f"{op} {n}" for op, n in requests.most_common())


# --- the scenario ---------------------------------------------------------------------------


class S3Scenario:
    name = "s3"
    title = "S3 push/pull on one moto endpoint"
    default = True

    def __init__(self) -> None:
        self.moto: MotoServer | None = None
        self.calibration: dict[str, Any] = {}
        self.runs = 0

    def figures(self, profile: Profile) -> list[Figure]:
        mib = profile.blob_size // MiB
        cmib = profile.conc_blob // MiB
        n = CONC_CLIENTS
        out: list[Figure] = []
        for key, what in (("mono", "monolithic push"), ("stream", "streamed push")):
            out += [
                Figure(f"{key}_mbps", f"{what} {mib} MiB", "MB/s", target=Target("ratio", 1.5)),
                Figure(f"{key}_cpu", f"{what} server CPU time", "s", "lower"),
                Figure(f"{key}_rss", f"{what} peak memory (PSS)", "MB", "lower"),
                Figure(f"{key}_moto", f"{what} moto CPU time", "s", "lower"),
                Figure(f"{key}_req", f"{what} S3 requests", "count", "lower"),
            ]
        out += [
            Figure("stream_upload_mbps", "streamed push without its final PUT", "MB/s"),
            Figure("stream_commit_s", "streamed push: final PUT (complete + copy)", "s",
                   "lower"),
        ]  # fmt: skip
        out += [
            Figure("req64", f"S3 requests per {COUNT_BLOB // MiB} MiB push", "count", "lower",
                   target=Fewer()),
            Figure("req_manifest", "S3 requests per manifest PUT", "count", "lower",
                   target=Fewer()),
            Figure("pull_mbps", f"pull {mib} MiB, redirect off", "MB/s",
                   target=Target("ratio", 1.0)),
            Figure("pull_cpu", "pull server CPU time", "s", "lower"),
            Figure("pull_rss", "pull peak memory (PSS)", "MB", "lower"),
            Figure("pull_moto", "pull moto CPU time", "s", "lower"),
            Figure("redirect_mbps", f"pull {mib} MiB via 307 + GET from moto", "MB/s"),
            Figure(f"c{n}_mbps", f"{n} clients x {cmib} MiB push", "MB/s",
                   target=Target("ratio", 1.0)),
            Figure(f"c{n}_errors", f"{n} clients errors", "count", "lower", zero_ok=True),
            Figure(f"c{n}_rss", f"{n} clients peak memory (PSS)", "MB", "lower",
                   target=Target("max", 150.0)),
        ]  # fmt: skip
        return out

    # -- windows of the data file: distinct content, so distinct digests ----------------------

    @staticmethod
    def _windows(env: Env) -> dict[str, tuple[int, int]]:
        p, size = env.profile, env.data.size
        count = min(COUNT_BLOB, size)
        wins = {
            "mono": (0, p.blob_size),
            "stream": (size - p.blob_size, p.blob_size),
            "count": ((size - count) // 2, count),
        }
        if len(set(wins.values())) != len(wins):
            raise Skip(f"data file of {size} bytes too small for three distinct blobs")
        for i in range(CONC_CLIENTS):
            wins[f"c{i}"] = (i * p.conc_step, p.conc_blob)
        return wins

    def prepare(self, env: Env) -> None:
        if our_s3_driver() is None:
            raise Skip("our S3 driver does not exist yet")
        try:
            import moto.server  # noqa: F401
        except ImportError:
            raise Skip("moto is not installed (pip install 'moto[server]')") from None
        for offset, length in self._windows(env).values():
            env.data.digest(offset, length)
        if self.moto is None or self.moto.process.poll() is not None:
            try:
                self.moto = start_bench_moto(env.workdir / "moto.log")
            except (OSError, RuntimeError) as exc:
                raise Skip(f"moto server did not start: {exc}") from None
        self.calibration = self._calibrate(env)

    # -- moto alone: what any registry can hope for -------------------------------------------

    def _calibrate(self, env: Env) -> dict[str, Any]:
        assert self.moto is not None
        moto = self.moto
        off, length = self._windows(env)["mono"]
        body = env.data.slice(off, length)
        bucket = "bench-calibrate"
        out: dict[str, Any] = {}
        moto.create_bucket(bucket)
        try:
            with CountingProxy(moto.port) as proxy:
                for via, port in (("direct", moto.port), ("proxy", proxy.port)):
                    target = f"/{bucket}/{via}"
                    for op in ("put", "get"):
                        m0, t0 = moto_cpu_seconds(moto), time.perf_counter()
                        with Connection(HOST, port, timeout=600) as conn:
                            headers = signed_headers(op.upper(), f"{HOST}:{port}", target,
                                                     ACCESS_KEY, SECRET_KEY)  # fmt: skip
                            if op == "put":
                                resp = conn.request("PUT", target, headers, body)
                                ok = resp.status == 200
                            else:
                                resp = conn.request("GET", target, headers, sink="compare",
                                                    expect=body)  # fmt: skip
                                ok = resp.status == 200 and bool(resp.matches)
                        took = time.perf_counter() - t0
                        if not ok:
                            raise oci.ProtocolError(f"moto calibration {op} {via}: {resp.status}")
                        out[f"{op}_{via}_mbps"] = round(length / took / 1e6, 1)
                        out[f"{op}_{via}_moto_cores"] = round(
                            (moto_cpu_seconds(moto) - m0) / took, 2
                        )
            out.update(self._driver_write(env, bucket, off, length))
        finally:
            moto.reset()
        c = out
        env.log(
            f"moto alone, {length // MiB} MiB from this client: PutObject {c['put_direct_mbps']:.0f}"
            f" MB/s (moto {c['put_direct_moto_cores']:.2f} cores), GetObject "
            f"{c['get_direct_mbps']:.0f} MB/s ({c['get_direct_moto_cores']:.2f} cores); through "
            f"the counting proxy: {c['put_proxy_mbps']:.0f} / {c['get_proxy_mbps']:.0f} MB/s"
        )
        if "driver_write_mbps" in c:
            env.log(
                f"our S3 driver alone (multipart, {CHUNK_SIZE // MiB} MiB parts, 4 in flight): "
                f"{c['driver_write_mbps']:.0f} MB/s (moto {c['driver_write_moto_cores']:.2f} "
                "cores)"
            )
        return out

    def _driver_write(self, env: Env, bucket: str, off: int, length: int) -> dict[str, Any]:
        """Our S3 driver writing ``length`` bytes as one multipart upload, 8 MiB per write,
        straight into moto (no registry, no proxy): the ceiling of our push path."""
        assert self.moto is not None
        moto = self.moto
        try:
            import trio

            from registry.drivers.s3.driver import S3Driver
        except ImportError as exc:  # pragma: no cover - the driver exists (checked above)
            return {"driver_write_error": str(exc)}
        params = moto.params(bucket, chunksize=CHUNK_SIZE, parallelparts=4,
                             rootdirectory="/driver")  # fmt: skip
        fd = env.data.file.fileno()

        async def write() -> float:
            driver = S3Driver.from_params(params)
            try:
                start = time.perf_counter()
                async with driver.writer("/calibrate/data") as w:
                    pos = off
                    while pos < off + length:
                        piece = os.pread(fd, min(8 * MiB, off + length - pos), pos)
                        await w.write(piece)
                        pos += len(piece)
                    await w.commit()
                took = time.perf_counter() - start
                info = await driver.stat("/calibrate/data")
                if info.size != length:
                    raise oci.ProtocolError(f"driver write: {info.size} bytes, wanted {length}")
                return took
            finally:
                await driver.aclose()

        m0 = moto_cpu_seconds(moto)
        took = trio.run(write)
        return {
            "driver_write_mbps": round(length / took / 1e6, 1),
            "driver_write_moto_cores": round((moto_cpu_seconds(moto) - m0) / took, 2),
        }

    # -- one round of one side ----------------------------------------------------------------

    def run(self, env: Env, spec: ServerSpec) -> RoundResult:
        if self.moto is None:
            raise Skip("prepare did not run")
        self.runs += 1
        bucket = f"bench-{spec.side}-{self.runs}-{uuid.uuid4().hex[:8]}"
        try:
            self.moto.create_bucket(bucket)
            with CountingProxy(self.moto.port) as proxy:
                side = Side(self.moto, proxy, bucket)
                self._through_registry(env, spec, side)
                self._redirected(env, spec, side)
                self._concurrent(env, spec, side)
                side.notes["proxy"] = {
                    "connections": proxy.connections,
                    "parse_errors": proxy.parse_errors,
                }
                if proxy.parse_errors:
                    raise oci.ProtocolError(f"counting proxy: {proxy.parse_errors} parse errors")
        finally:
            self.moto.reset()
        side.notes["calibration"] = self.calibration
        return RoundResult(side.values, side.notes)

    def _push_timed(
        self, env: Env, srv: RunningServer, conn: Connection, side: Side, key: str, kind: str
    ) -> Timed:
        p = env.profile
        off, length = self._windows(env)[key]
        body, digest = env.data.slice(off, length), env.data.digest(off, length)
        with timed(srv, side) as t:
            if kind == "streamed":  # oci.push_streamed, with the final PUT timed apart
                target = oci.start_upload(conn, REPO)
                resp = conn.request("PATCH", target, oci.OCTET, Chunked(body, p.stream_chunk))
                oci.expect(resp, 202, what="PATCH streamed")
                if resp.header("location"):
                    target = oci.location_target(resp.header("location"))
                with timed(None, side) as commit:
                    resp = conn.request(
                        "PUT", oci.with_query(target, digest=digest), {"Content-Length": "0"}
                    )
                oci.check_pushed(resp, digest, "PUT after streamed PATCH")
            else:
                oci.push_monolithic(conn, REPO, body, digest)
        if kind == "streamed":
            # the commit: where both registries complete the multipart upload and copy it
            # to its content address, server-side (moto reads the whole source per part)
            t.sub["commit"] = commit
        return t

    def _through_registry(self, env: Env, spec: ServerSpec, side: Side) -> None:
        p = env.profile
        wins = self._windows(env)
        v, notes = side.values, side.notes
        with (
            open_s3_server(spec, env.workdir, side, redirect=False) as srv,
            srv.connect(p.request_timeout) as conn,
        ):
            for key, kind in (("mono", "monolithic"), ("stream", "streamed")):
                t = self._push_timed(env, srv, conn, side, key, kind)
                v[f"{key}_mbps"] = p.blob_size / t.elapsed / 1e6
                v[f"{key}_cpu"] = t.server_cpu
                v[f"{key}_rss"] = t.rss
                v[f"{key}_moto"] = t.moto_cpu
                v[f"{key}_req"] = float(sum(t.requests.values()))
                notes[f"{key}_push"] = t.note()
                if "commit" in t.sub:
                    commit = t.sub["commit"].elapsed
                    v[f"{key}_upload_mbps"] = p.blob_size / (t.elapsed - commit) / 1e6
                    v[f"{key}_commit_s"] = commit
            t = self._push_timed(env, srv, conn, side, "count", "monolithic")
            v["req64"] = float(sum(t.requests.values()))
            notes["push64"] = t.note()
            # a small image: blobs first (not counted), then the manifest PUT alone
            layer = env.data.read(p.conc_step // 2, 4096)
            manifest, _ = oci.push_image_blobs(conn, REPO, layer)
            with timed(None, side) as t:
                oci.push_manifest(conn, REPO, "latest", manifest)
            v["req_manifest"] = float(sum(t.requests.values()))
            notes["manifest_put"] = t.note()
            got = conn.request("GET", f"/v2/{REPO}/manifests/latest",
                               {"Accept": oci.SCHEMA2})  # fmt: skip
            oci.expect(got, 200, what="GET manifest")
            if got.body != manifest:
                raise oci.ProtocolError("GET manifest: not the manifest pushed")
            # the pull, streamed through the registry (redirect disabled)
            off, length = wins["mono"]
            want = env.data.slice(off, length)
            digest = env.data.digest(off, length)
            pulls = []
            for _ in range(PULL_REPEATS):
                with timed(srv, side) as t:
                    resp = conn.request("GET", f"/v2/{REPO}/blobs/{digest}", sink="compare",
                                        expect=want)  # fmt: skip
                oci.expect(resp, 200, what="GET blob")
                if not resp.matches:
                    raise oci.ProtocolError(f"pull: {resp.length} bytes, not the blob pushed")
                pulls.append(t)
            t = median_run(pulls)
            v["pull_mbps"] = length / t.elapsed / 1e6
            v["pull_cpu"] = t.server_cpu
            v["pull_rss"] = t.rss
            v["pull_moto"] = t.moto_cpu
            notes["pull"] = t.note()
            # correctness of the other pushes, outside the timed parts
            for key in ("stream", "count"):
                off, length = wins[key]
                oci.verify_blob(conn, REPO, env.data.digest(off, length), length)
        if env.verbose:
            env.log(f"{spec.side}: S3 requests per {p.blob_size // MiB} MiB monolithic push: "
                    f"{ops_line(Counter(notes['mono_push']['s3_ops']))}")  # fmt: skip
        env.log(
            f"{spec.side}: S3 requests per {COUNT_BLOB // MiB} MiB push: "
            f"{ops_line(Counter(notes['push64']['s3_ops']))}; per manifest PUT: "
            f"{ops_line(Counter(notes['manifest_put']['s3_ops']))}"
        )

    def _redirected(self, env: Env, spec: ServerSpec, side: Side) -> None:
        """GET -> 307 to a presigned URL on the proxy -> GET from moto, compared."""
        p = env.profile
        off, length = self._windows(env)["mono"]
        want, digest = env.data.slice(off, length), env.data.digest(off, length)
        with (
            open_s3_server(spec, env.workdir, side, redirect=True) as srv,
            srv.connect(p.request_timeout) as conn,
        ):
            pulls = []
            for _ in range(PULL_REPEATS):
                ops0 = side.proxy.snapshot()
                with timed(srv, side) as t:
                    resp = conn.request("GET", f"/v2/{REPO}/blobs/{digest}")
                    oci.expect(resp, 307, what="GET blob with redirects on")
                    registry_ops = side.proxy.snapshot() - ops0
                    url = urlsplit(resp.header("location"))
                    if (url.hostname, url.port) != (HOST, side.proxy.port):
                        raise oci.ProtocolError(f"redirect to {url.netloc}, not the S3 endpoint")
                    target = url.path + (f"?{url.query}" if url.query else "")
                    with Connection(HOST, side.proxy.port, timeout=p.request_timeout) as s3:
                        got = s3.request("GET", target, sink="compare", expect=want)
                oci.expect(got, 200, what="GET presigned URL")
                if not got.matches:
                    raise oci.ProtocolError(f"redirected pull: {got.length} bytes, not the blob")
                pulls.append(t)
            t = median_run(pulls)
        side.values["redirect_mbps"] = length / t.elapsed / 1e6
        note = t.note()
        note["registry_s3_ops"] = dict(sorted(registry_ops.items()))
        side.notes["redirect_pull"] = note

    def _concurrent(self, env: Env, spec: ServerSpec, side: Side) -> None:
        p = env.profile
        n = CONC_CLIENTS
        wins = self._windows(env)
        windows = [wins[f"c{i}"] for i in range(n)]
        digests = [env.data.digest(*w) for w in windows]
        with open_s3_server(spec, env.workdir, side, redirect=False) as srv:
            pushes = ConcurrentPushes(
                lambda: srv.connect(p.request_timeout),
                REPO,
                [env.data.slice(*w) for w in windows],
                digests,
            )
            with timed(srv, side) as t:
                pushes.go(CONC_DEADLINE)
            ok, errors = pushes.ok, pushes.errors
            with srv.connect(p.request_timeout) as conn:
                for i in ok:
                    oci.verify_blob(conn, REPO, digests[i], windows[i][1])
        if not ok:
            raise oci.ProtocolError(f"{n} clients: every push failed, e.g. {errors[0]}")
        side.values[f"c{n}_mbps"] = len(ok) * p.conc_blob / t.elapsed / 1e6
        side.values[f"c{n}_errors"] = float(len(errors))
        side.values[f"c{n}_rss"] = t.rss
        note = t.note()
        if errors:
            note["error_samples"] = sorted(set(errors))[:5]
        side.notes[f"c{n}_push"] = note
