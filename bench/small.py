"""small_requests: manifest GET, manifest HEAD and blob HEAD at 1, 32 and 128 connections.

A Python client would be the bottleneck here, so the load comes from ``hload`` (hload.c in
this directory, compiled on first use with the system C compiler): a closed loop of
keep-alive connections for a fixed duration, checking the status and the
Docker-Content-Digest of every response. Latency is per request, send to last byte.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

from . import oci
from .core import Env, Figure, Profile, RoundResult, Skip, Target
from .servers import ServerSpec, open_server

HERE = Path(__file__).resolve().parent
REPO = "bench/small"
ACCEPT = (
    "Accept: application/vnd.docker.distribution.manifest.v2+json, "
    "application/vnd.oci.image.manifest.v1+json"
)

# (key, label, method, which digest the answer must carry)
ENDPOINTS = [
    ("manifest_get", "manifest GET", "GET", "manifest"),
    ("manifest_head", "manifest HEAD", "HEAD", "manifest"),
    ("blob_head", "blob HEAD", "HEAD", "layer"),
]


def build_hload(cache_dir: Path) -> Path:
    """Compile hload.c into cache_dir when missing or older than the source. Raises Skip."""
    src = HERE / "hload.c"
    exe = cache_dir / "hload"
    if exe.exists() and exe.stat().st_mtime >= src.stat().st_mtime:
        return exe
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        raise Skip("no C compiler to build bench/hload.c (apt-get install -y gcc)")
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = exe.with_suffix(".tmp")
    proc = subprocess.run(
        [cc, "-O2", "-o", str(tmp), str(src)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode != 0:
        raise Skip(f"building hload failed: {proc.stderr.strip()[-500:]}")
    tmp.replace(exe)
    return exe


def run_hload(
    exe: Path, port: int, method: str, path: str, digest: str, conns: int, seconds: float
) -> dict:  # type: ignore[type-arg]
    """One closed-loop run of hload on 127.0.0.1:port; its JSON report (rps, p50_ms, p99_ms,
    requests, errors{status,header,connect,read,write,timeout}). Raises RuntimeError."""
    argv = [
        str(exe), "-c", str(conns), "-d", str(seconds), "-m", method,
        "-H", ACCEPT, "-x", f"docker-content-digest: {digest}",
        "127.0.0.1", str(port), path,
    ]  # fmt: skip
    proc = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=seconds + 30)
    if proc.returncode != 0:
        raise RuntimeError(f"hload failed ({proc.returncode}): {proc.stderr.strip()}")
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


class SmallRequestsScenario:
    name = "small_requests"
    title = "small requests"
    default = True

    def figures(self, profile: Profile) -> list[Figure]:
        out = []
        for key, label, _, _ in ENDPOINTS:
            for c in profile.small_conns:
                # issue 14 (against registry:3): manifest GET at 32 connections >= 0.8x;
                # issue 3 asked small-request rates at least equal everywhere
                ratio = 0.8 if (key, c) == ("manifest_get", 32) else 1.0
                out += [
                    Figure(
                        f"{key}_c{c}_rps", f"{label} c={c}", "req/s", target=Target("ratio", ratio)
                    ),
                    Figure(f"{key}_c{c}_p50", f"{label} c={c} p50", "ms", "lower"),
                    Figure(f"{key}_c{c}_p99", f"{label} c={c} p99", "ms", "lower"),
                ]
        out.append(Figure("cpu_us", "server CPU per request", "us", "lower"))
        out.append(Figure("errors", "socket errors + timeouts", "count", "lower", zero_ok=True))
        out.append(Figure("rss", "peak memory (PSS)", "MB", "lower"))
        return out

    def prepare(self, env: Env) -> None:
        self.hload = build_hload(env.cache_dir)

    def run(self, env: Env, spec: ServerSpec) -> RoundResult:
        p = env.profile
        result = RoundResult()
        socket_errors = 0
        with open_server(spec, env.workdir) as srv:
            with srv.connect(30) as conn:
                digests = oci.push_small_image(conn, REPO, "latest", env.data.read(0, 4096))
                self.precheck(conn, digests)
            srv.rss.reset()
            cpu0 = srv.cpu_seconds()
            requests = 0
            for key, _, method, which in ENDPOINTS:
                path = (
                    f"/v2/{REPO}/manifests/latest"
                    if which == "manifest"
                    else f"/v2/{REPO}/blobs/{digests['layer']}"
                )
                for c in p.small_conns:
                    r = run_hload(
                        self.hload, srv.port, method, path, digests[which], c, p.small_duration
                    )
                    err = r["errors"]
                    if err["status"] or err["header"]:
                        raise oci.ProtocolError(
                            f"{method} {path} c={c}: {err['status']} wrong statuses, "
                            f"{err['header']} wrong Docker-Content-Digest"
                        )
                    if r["requests"] == 0:
                        raise oci.ProtocolError(f"{method} {path} c={c}: no request completed")
                    requests += r["requests"]
                    socket_errors += err["connect"] + err["read"] + err["write"] + err["timeout"]
                    result.values[f"{key}_c{c}_rps"] = r["rps"]
                    result.values[f"{key}_c{c}_p50"] = r["p50_ms"]
                    result.values[f"{key}_c{c}_p99"] = r["p99_ms"]
                    result.notes[f"{key}_c{c}"] = r
            result.values["cpu_us"] = (srv.cpu_seconds() - cpu0) / requests * 1e6
            result.values["errors"] = float(socket_errors)
            result.values["rss"] = srv.rss.peak_mb
        return result

    @staticmethod
    def precheck(conn, digests: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
        """The answers must be right before their rate means anything."""
        accept = {"Accept": ACCEPT.split(": ", 1)[1]}
        for method in ("GET", "HEAD"):
            r = conn.request(method, f"/v2/{REPO}/manifests/latest", accept)
            oci.expect(r, 200, what=f"{method} manifest")
            if r.header("docker-content-digest") != digests["manifest"]:
                raise oci.ProtocolError(f"{method} manifest: wrong Docker-Content-Digest")
            if method == "GET" and (
                "sha256:" + hashlib.sha256(r.body).hexdigest() != digests["manifest"]
            ):
                raise oci.ProtocolError("GET manifest: body does not hash to its digest")
        r = conn.request("HEAD", f"/v2/{REPO}/blobs/{digests['layer']}")
        oci.expect(r, 200, what="HEAD blob")
        if r.header("docker-content-digest") != digests["layer"]:
            raise oci.ProtocolError("HEAD blob: wrong Docker-Content-Digest")
