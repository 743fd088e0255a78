"""Server CPU per small request inside the app: no socket, no HTTP server.

``python -m bench.app_profile`` builds the app the way ``registry serve`` does
(``server.build_app`` from a Config made of ``REGISTRY_*`` variables), pushes a small image
through it (a config blob, a layer, a schema2 manifest tagged ``latest``), then calls
``app(scope, receive, send)`` directly in one trio loop with a scope shaped like the one
hypercorn builds, for each profiled request, and prints the process CPU time per call in
microseconds (``time.process_time``: user + system of this process, so threads the app
hands work to count too). Variants of the app: ``plain`` (the bench's server config: no
auth, no metrics, access log off), ``auth`` (htpasswd with one bcrypt user, every request
carrying its Basic credentials), ``metrics`` (Prometheus metrics on) and ``accesslog``
(the access log on, as by default, in the text format, written to /dev/null) and
``accessjson`` (the same with ``log.formatter: json``).

``--profile NAME`` (e.g. ``plain:manifest_get_tag``) runs that one case under cProfile and
prints the top of the profile by internal time. Every answer's status (and, for manifest
requests, its Docker-Content-Digest) is checked; a wrong one stops the run.

What this leaves out on purpose: the HTTP/1.1 server (hypercorn or ours), which parses the
request and builds the scope; ``small_requests`` in ``python -m bench`` measures the whole.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import cProfile
import hashlib
import io
import json
import os
import pstats
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import bcrypt
import trio

from registry import logs
from registry.config import load_config
from registry.server import build_app

USER, PASSWORD = "bench", "bench-password"
BCRYPT_COST = 10  # htpasswd -B's default: what a deployment has
REPO = "bench/small"
WARMUP = 200  # calls before timing: caches, lazily built metric children, code paths
VARIANTS = ("plain", "auth", "metrics", "accesslog", "accessjson")

DEVNULL = open(os.devnull, "w")  # noqa: SIM115  where the access log goes, for the whole run

Headers = list[tuple[bytes, bytes]]


def scope(method: str, target: str, headers: Headers) -> dict[str, Any]:
    """An HTTP scope as the HTTP/1.1 loop (registry/http/h1server.py) builds it."""
    path, _, query = target.partition("?")
    return {
        "type": "http",
        "asgi": {"spec_version": "2.1", "version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1:5000"), (b"user-agent", b"bench"), *headers],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 5000),
        "extensions": {},
    }


class Call:
    """One request to the app: ``await call()`` answers (status, headers, body)."""

    def __init__(self, app: Any, method: str, target: str, headers: Headers, body: bytes = b""):
        self.app = app
        self.scope = scope(method, target, headers)
        self.body = body

    async def __call__(self) -> tuple[int, dict[bytes, bytes], bytes]:
        sent: list[dict[str, Any]] = []
        body_sent = False

        async def receive() -> dict[str, Any]:
            nonlocal body_sent
            if body_sent:
                await trio.sleep_forever()
            body_sent = True
            return {"type": "http.request", "body": self.body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await self.app(dict(self.scope), receive, send)
        start = sent[0]
        return start["status"], dict(start["headers"]), b"".join(m.get("body", b"") for m in sent[1:])


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def build(variant: str, root: Path) -> tuple[Any, Headers]:
    """The app for ``variant`` and the headers every request carries."""
    env = {
        "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": str(root / "storage"),
        "REGISTRY_STORAGE_DELETE_ENABLED": "true",
        "REGISTRY_LOG_ACCESSLOG_DISABLED": "true",
        "REGISTRY_LOG_LEVEL": "error",
    }
    level, formatter = "error", "text"
    headers: Headers = []
    if variant == "auth":
        htpasswd = root / "htpasswd"
        hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=BCRYPT_COST))
        htpasswd.write_bytes(USER.encode() + b":" + hashed + b"\n")
        env |= {"REGISTRY_AUTH": "htpasswd", "REGISTRY_AUTH_HTPASSWD_PATH": str(htpasswd),
                "REGISTRY_AUTH_HTPASSWD_REALM": "bench"}
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode())
        headers.append((b"authorization", b"Basic " + token))
    elif variant == "metrics":
        env["REGISTRY_HTTP_DEBUG_PROMETHEUS_ENABLED"] = "true"
    elif variant in ("accesslog", "accessjson"):
        env |= {"REGISTRY_LOG_ACCESSLOG_DISABLED": "false", "REGISTRY_LOG_LEVEL": "info"}
        level, formatter = "info", "json" if variant == "accessjson" else "text"
    config, warnings = load_config(None, env)
    assert not warnings, warnings
    with contextlib.redirect_stderr(DEVNULL):
        logs.setup(level, formatter)  # the handler keeps the stream it finds there
    return build_app(config), headers


async def push_image(app: Any, headers: Headers) -> dict[str, str]:
    """Push config + layer + manifest (tag ``latest``); the digests."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {
        "type": "layers", "diff_ids": []}}).encode()
    layer = b"\x1f\x8b" + bytes(range(256)) * 64
    for blob in (config, layer):
        status, _, _ = await Call(
            app, "POST", f"/v2/{REPO}/blobs/uploads/?digest={sha256(blob)}",
            [*headers, (b"content-length", str(len(blob)).encode())], blob)()
        assert status == 201, status
    mt = "application/vnd.docker.distribution.manifest.v2+json"
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": mt,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "size": len(config), "digest": sha256(config)},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    "size": len(layer), "digest": sha256(layer)}],
    }, indent=3).encode()
    status, _, _ = await Call(
        app, "PUT", f"/v2/{REPO}/manifests/latest",
        [*headers, (b"content-type", mt.encode()),
         (b"content-length", str(len(manifest)).encode())], manifest)()
    assert status == 201, status
    return {"manifest": sha256(manifest), "layer": sha256(layer)}


ACCEPT = (b"accept", (b"application/vnd.docker.distribution.manifest.v2+json, "
                      b"application/vnd.oci.image.manifest.v1+json"))


def cases(app: Any, headers: Headers, d: dict[str, str]) -> dict[str, tuple[Call, int, str | None]]:
    """name -> (call, expected status, expected Docker-Content-Digest)."""
    m = d["manifest"]
    return {
        "manifest_get_tag": (Call(app, "GET", f"/v2/{REPO}/manifests/latest", [*headers, ACCEPT]), 200, m),
        "manifest_get_digest": (Call(app, "GET", f"/v2/{REPO}/manifests/{m}", [*headers, ACCEPT]), 200, m),
        "manifest_head_tag": (Call(app, "HEAD", f"/v2/{REPO}/manifests/latest", [*headers, ACCEPT]), 200, m),
        "blob_head": (Call(app, "HEAD", f"/v2/{REPO}/blobs/{d['layer']}", headers), 200, d["layer"]),
        "base": (Call(app, "GET", "/v2/", headers), 200, None),
        "tags_list": (Call(app, "GET", f"/v2/{REPO}/tags/list", headers), 200, None),
        "manifest_get_unknown": (Call(app, "GET", f"/v2/{REPO}/manifests/nope", headers), 404, None),
    }


async def run_case(call: Call, status: int, digest: str | None, n: int) -> float:
    """CPU microseconds per call over ``n`` calls (after WARMUP), answers checked."""
    async def once() -> None:
        got, hdrs, _ = await call()
        if got != status or (digest is not None and hdrs.get(b"docker-content-digest") != digest.encode()):
            raise SystemExit(f"{call.scope['method']} {call.scope['path']}: {got} {hdrs}")

    for _ in range(WARMUP):
        await once()
    t0 = time.process_time()
    for _ in range(n):
        await once()
    return (time.process_time() - t0) / n * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.app_profile", description=__doc__.split("\n")[0])
    p.add_argument("-n", type=int, default=3000, help="timed calls per case and repeat")
    p.add_argument("--repeat", type=int, default=5, help="repeats; the median is reported")
    p.add_argument("--variants", default=",".join(VARIANTS), help="plain,auth,metrics")
    p.add_argument("--only", default="", help="comma-separated case names")
    p.add_argument("--profile", default="", help="VARIANT:CASE to run under cProfile")
    p.add_argument("--top", type=int, default=30, help="profile lines to print")
    p.add_argument("--json", default="", help="also write the figures here")
    args = p.parse_args(argv)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="app-profile-") as tmp:
        for variant in args.variants.split(","):
            root = Path(tmp) / variant
            root.mkdir()
            app, headers = build(variant, root)

            async def run(variant: str = variant, app: Any = app, headers: Headers = headers) -> None:
                digests = await push_image(app, headers)
                todo = cases(app, headers, digests)
                if args.profile:
                    want_variant, _, want_case = args.profile.partition(":")
                    if want_variant != variant:
                        return
                    call, status, digest = todo[want_case]
                    await run_case(call, status, digest, WARMUP)
                    prof = cProfile.Profile()
                    prof.enable()
                    await run_case(call, status, digest, args.n)
                    prof.disable()
                    out = io.StringIO()
                    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(args.top)
                    print(out.getvalue())
                    return
                for name, (call, status, digest) in todo.items():
                    if args.only and name not in args.only.split(","):
                        continue
                    runs = [await run_case(call, status, digest, args.n) for _ in range(args.repeat)]
                    med = statistics.median(runs)
                    results.setdefault(variant, {})[name] = round(med, 1)
                    print(f"{variant:8} {name:22} {med:8.1f} us CPU/call  "
                          f"(min {min(runs):.1f}, max {max(runs):.1f})", flush=True)

            trio.run(run)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
