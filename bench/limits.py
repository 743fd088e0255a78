"""limits: the template's container box (0.25 CPU, 256 MiB by default) for each side.

Every phase starts a fresh server in a fresh cgroup (cgroups.py) with ``env.limits``; the
load generator (this process, hload) stays outside. There, throughput is bounded by CPU
time, so next to each rate the figure that matters is the server's CPU per unit of work:
CPU seconds per GB pushed or pulled (GB = 10^9 bytes), CPU seconds per 1,000 manifest GETs.

Phases, per side and round:

1. monolithic push of the profile's blob (POST + PUT), read back; then a timed pull of it
   on the same server (compared with the file as it arrives);
2. streamed push (one chunked PATCH in ``stream_chunk`` pieces, docker's way), read back;
3. manifest GET of a small image at 32 connections for ``small_duration`` seconds (hload);
4. 16 clients each pushing a distinct ``conc_blob`` at once, every blob read back.

Each write phase starts after ``sync`` so neither side pays for the other's writeback.
Peak memory is PSS summed over the server's processes (procmem.py), not the cgroup's usage,
which includes page cache. OOM kills are the cgroup's counter summed over the phases.
Failed requests (hload's wrong statuses and socket errors, concurrent pushes that failed)
are counted, not fatal; a wrong digest or wrong bytes fails the round.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from . import oci
from .cgroups import CgroupUnavailable, open_cgroup
from .core import Env, Figure, Profile, RoundResult, Skip, Target
from .servers import RunningServer, ServerSpec, open_server
from .small import REPO as SMALL_REPO
from .small import SmallRequestsScenario, build_hload, run_hload
from .transfer import CONCURRENT_DEADLINE, ConcurrentPushes

REPO = "bench/limited"
MANIFEST_CONNS = 32  # the manifest GET figure
CONCURRENT_CLIENTS = 16  # the concurrent push figure
GB = 1e9


# A pull is repeated until this much was sent: a sendfile'd 64 MiB pull (--quick) can cost
# less than one clock tick of CPU (10 ms), which would read as 0 s/GB.
PULL_MIN_BYTES = 512 * 1024 * 1024


def _per_gb(cpu: float, nbytes: int) -> float:
    return cpu / (nbytes / GB)


class LimitsScenario:
    name = "limits"
    title = "each side in its own cgroup (CPU quota, memory limit)"
    default = True

    def figures(self, profile: Profile) -> list[Figure]:
        mib = profile.blob_size // (1024 * 1024)
        cmib = profile.conc_blob // (1024 * 1024)
        c = CONCURRENT_CLIENTS
        out = []
        for key, label, target in (
            ("push", f"monolithic push {mib} MiB", 1.0),
            ("stream", f"streamed push {mib} MiB", 1.0),
            ("pull", f"pull {mib} MiB", 1.0),
            ("c16", f"{c} clients x {cmib} MiB push", 1.0),
        ):
            out += [
                Figure(f"{key}_mbps", label, "MB/s", target=Target("ratio", target)),
                Figure(f"{key}_cpu_gb", f"{label}: server CPU per GB", "s/GB", "lower"),
                Figure(f"{key}_rss", f"{label}: peak memory (PSS)", "MB", "lower"),
            ]
        out += [
            Figure(
                "mget_rps", f"manifest GET c={MANIFEST_CONNS}", "req/s", target=Target("ratio", 0.7)
            ),
            Figure("mget_cpu_1k", "manifest GET: server CPU per 1,000", "s", "lower"),
            Figure("mget_rss", "manifest GET: peak memory (PSS)", "MB", "lower"),
            Figure("oom_kills", "OOM kills", "count", "lower", Target("max", 0), zero_ok=True),
            Figure("failed", "failed requests", "count", "lower", Target("max", 0), zero_ok=True),
        ]
        return out

    def prepare(self, env: Env) -> None:
        try:  # can this machine make (and remove) a cgroup at all?
            with open_cgroup(env.limits, f"registry-bench-{os.getpid()}-probe"):
                pass
        except (CgroupUnavailable, OSError) as exc:
            raise Skip(f"cgroups cannot be written here ({exc}); run as root with cgroup "
                       "v1 cpu+memory or v2") from None  # fmt: skip
        self.hload = build_hload(env.cache_dir)
        p = env.profile
        env.data.digest(0, p.blob_size)
        for i in range(CONCURRENT_CLIENTS):
            env.data.digest(i * p.conc_step, p.conc_blob)

    def run(self, env: Env, spec: ServerSpec) -> RoundResult:
        spec = replace(spec, limits=env.limits)
        res = RoundResult(notes={"limits": env.limits.describe()})
        res.values["oom_kills"] = 0.0
        res.values["failed"] = 0.0
        self._push_then_pull(env, spec, res)
        self._streamed(env, spec, res)
        self._manifest_get(env, spec, res)
        self._concurrent(env, spec, res)
        return res

    @staticmethod
    def _done(srv: RunningServer, res: RoundResult) -> None:
        """End of a phase, the server still running: count OOM kills, record the cgroup."""
        if srv.cgroup is None:
            raise RuntimeError("limits: the server runs outside a cgroup")
        res.values["oom_kills"] += srv.cgroup.oom_kills()
        pids = srv.cgroup.pids()
        res.notes.setdefault("cgroups", []).append({
            "dirs": [str(d) for d in srv.cgroup.dirs],
            "server_in_cgroup": srv.proc.pid in pids,
            "processes": len(pids),
        })  # fmt: skip

    def _push_then_pull(self, env: Env, spec: ServerSpec, res: RoundResult) -> None:
        p = env.profile
        digest = env.data.digest(0, p.blob_size)
        with open_server(spec, env.workdir) as srv, srv.connect(p.request_timeout) as conn:
            os.sync()
            srv.rss.reset()
            cpu0, t0 = srv.cpu_seconds(), time.perf_counter()
            oci.push_monolithic(conn, REPO, env.data.slice(0, p.blob_size), digest)
            elapsed, cpu = time.perf_counter() - t0, srv.cpu_seconds() - cpu0
            res.values.update(push_mbps=p.blob_size / elapsed / 1e6,
                              push_cpu_gb=_per_gb(cpu, p.blob_size), push_rss=srv.rss.peak_mb)  # fmt: skip
            oci.verify_blob(conn, REPO, digest, p.blob_size)

            srv.rss.reset()
            body = env.data.slice(0, p.blob_size)
            pulls = max(1, -(-PULL_MIN_BYTES // p.blob_size))
            cpu0, t0 = srv.cpu_seconds(), time.perf_counter()
            for _ in range(pulls):
                resp = conn.request("GET", f"/v2/{REPO}/blobs/{digest}", sink="compare",
                                    expect=body)
                oci.expect(resp, 200, what="GET blob")
                if not resp.matches:
                    raise oci.ProtocolError(f"pull: {resp.length} bytes, not the blob pushed")
            elapsed, cpu = time.perf_counter() - t0, srv.cpu_seconds() - cpu0
            pulled = pulls * p.blob_size
            res.values.update(pull_mbps=pulled / elapsed / 1e6,
                              pull_cpu_gb=_per_gb(cpu, pulled), pull_rss=srv.rss.peak_mb)  # fmt: skip
            self._done(srv, res)

    def _streamed(self, env: Env, spec: ServerSpec, res: RoundResult) -> None:
        p = env.profile
        digest = env.data.digest(0, p.blob_size)
        with open_server(spec, env.workdir) as srv, srv.connect(p.request_timeout) as conn:
            os.sync()
            srv.rss.reset()
            cpu0, t0 = srv.cpu_seconds(), time.perf_counter()
            body = env.data.slice(0, p.blob_size)
            oci.push_streamed(conn, REPO, body, digest, p.stream_chunk)
            elapsed, cpu = time.perf_counter() - t0, srv.cpu_seconds() - cpu0
            res.values.update(stream_mbps=p.blob_size / elapsed / 1e6,
                              stream_cpu_gb=_per_gb(cpu, p.blob_size), stream_rss=srv.rss.peak_mb)  # fmt: skip
            oci.verify_blob(conn, REPO, digest, p.blob_size)
            self._done(srv, res)

    def _manifest_get(self, env: Env, spec: ServerSpec, res: RoundResult) -> None:
        p = env.profile
        with open_server(spec, env.workdir) as srv:
            with srv.connect(30) as conn:
                digests = oci.push_small_image(conn, SMALL_REPO, "latest", env.data.read(0, 4096))
                SmallRequestsScenario.precheck(conn, digests)
            srv.rss.reset()
            cpu0 = srv.cpu_seconds()
            r = run_hload(self.hload, srv.port, "GET", f"/v2/{SMALL_REPO}/manifests/latest",
                          digests["manifest"], MANIFEST_CONNS, p.small_duration)  # fmt: skip
            cpu = srv.cpu_seconds() - cpu0
            err = r["errors"]
            if err["header"]:
                raise oci.ProtocolError(f"manifest GET: {err['header']} wrong Docker-Content-Digest")
            if r["requests"] == 0:
                raise oci.ProtocolError("manifest GET: no request completed")
            failed = err["status"] + err["connect"] + err["read"] + err["write"] + err["timeout"]
            res.values["failed"] += failed
            res.values.update(mget_rps=r["rps"], mget_cpu_1k=cpu / r["requests"] * 1000,
                              mget_rss=srv.rss.peak_mb)  # fmt: skip
            res.notes["manifest_get"] = r
            self._done(srv, res)

    def _concurrent(self, env: Env, spec: ServerSpec, res: RoundResult) -> None:
        p = env.profile
        windows = [(i * p.conc_step, p.conc_blob) for i in range(CONCURRENT_CLIENTS)]
        digests = [env.data.digest(*w) for w in windows]
        with open_server(spec, env.workdir) as srv:
            os.sync()
            pushes = ConcurrentPushes(lambda: srv.connect(p.request_timeout), REPO,
                                      [env.data.slice(*w) for w in windows], digests)  # fmt: skip
            srv.rss.reset()
            cpu0 = srv.cpu_seconds()
            elapsed = pushes.go(CONCURRENT_DEADLINE)
            cpu = srv.cpu_seconds() - cpu0
            ok, errors = pushes.ok, pushes.errors
            nbytes = len(ok) * p.conc_blob
            if not ok:
                raise oci.ProtocolError(f"concurrent push: every push failed, e.g. {errors[0]}")
            res.values.update(c16_mbps=nbytes / elapsed / 1e6, c16_cpu_gb=_per_gb(cpu, nbytes),
                              c16_rss=srv.rss.peak_mb)  # fmt: skip
            res.values["failed"] += len(errors)
            if errors:
                res.notes["c16_error_samples"] = sorted(set(errors))[:5]

            def verify(i: int) -> None:
                with srv.connect(p.request_timeout) as conn:
                    oci.verify_blob(conn, REPO, digests[i], windows[i][1])

            with ThreadPoolExecutor(4) as pool:
                list(pool.map(verify, ok))  # raises on the first wrong blob
            self._done(srv, res)
