"""The web UI's server-side index with many repositories: how fast the JSON API answers a
catalog page (issue 18: 10,000 repositories must open in under a second). The browser's
view of the same (page open time, first-page bytes) is bench/ui_catalog.py.

``python -m bench.ui_index [--repos 10000] [--rounds 20] [--workers 1]`` writes the
repositories straight into a filesystem root in the reference's layout (each with its own
image: a shared config, its own layer and manifest, tagged ``latest``), then, on a fresh
server each time:

- ours: times the first UI request after start-up (it waits for the start-up catalog walk;
  a filter that matches nothing, so no summaries), then ``GET /ui/api/v1/repositories?n=100``
  first (100 repository summaries computed) and warm (median of ``--rounds``), a filter
  (``q=``) first and warm, and a page deep in the list (``last=``) first and warm;
- both ours and the reference (registry-v3.0.0 when present, ``--reference PATH``):
  ``GET /v2/_catalog?n=100`` first and warm, and the page after ``bench/repo-05000``
  (both walk the tree on every request, stopping after the page);
- ``--baseline CMD``: another build of ours (e.g. ``env PYTHONPATH=../main python -m
  registry serve {config}``) measured like ours, in the same run, as two more columns.

Prints one table (milliseconds). Timings are wall-clock client-side over loopback.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from .servers import (
    FILESYSTEM_STORAGE,
    ServerSpec,
    config_text,
    default_ours_cmd,
    default_reference,
    reference_cmd,
    run_server,
    server_env,
)

PAGE = 100  # the UI's default page size
CONFIG = b'{"architecture":"amd64","os":"linux","created":"2024-01-01T00:00:00Z"}'
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _blob(root: Path, data: bytes) -> str:
    h = hashlib.sha256(data).hexdigest()
    _write(root / "docker/registry/v2/blobs/sha256" / h[:2] / h / "data", data)
    return h


def populate(root: Path, repos: int) -> None:
    """``repos`` repositories ``bench/repo-00000`` ... in the reference's layout."""
    cfg = _blob(root, CONFIG)
    for i in range(repos):
        layer = f"layer of repository {i}".encode()
        lh = _blob(root, layer)
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": f"sha256:{cfg}", "size": len(CONFIG)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": f"sha256:{lh}", "size": len(layer)}],
        }).encode()
        mh = _blob(root, manifest)
        repo = root / f"docker/registry/v2/repositories/bench/repo-{i:05d}"
        for h in (cfg, lh):
            _write(repo / "_layers/sha256" / h / "link", f"sha256:{h}".encode())
        _write(repo / "_manifests/revisions/sha256" / mh / "link", f"sha256:{mh}".encode())
        tag = repo / "_manifests/tags/latest"
        _write(tag / "index/sha256" / mh / "link", f"sha256:{mh}".encode())
        _write(tag / "current/link", f"sha256:{mh}".encode())


def timed(client: httpx.Client, path: str, check: Callable[[httpx.Response], None]) -> float:
    started = time.perf_counter()
    r = client.get(path)
    seconds = time.perf_counter() - started
    if r.status_code != 200:
        raise SystemExit(f"GET {path}: {r.status_code} {r.text[:300]}")
    check(r)
    return seconds * 1000


def first_and_warm(client: httpx.Client, path: str, rounds: int,
                   check: Callable[[httpx.Response], None]) -> tuple[float, float]:
    first = timed(client, path, check)
    warm = statistics.median(timed(client, path, check) for _ in range(rounds))
    return first, warm


def _page_of(n: int) -> Callable[[httpx.Response], None]:
    def check(r: httpx.Response) -> None:
        body = r.json()
        rows = body.get("repositories")
        if len(rows) != n:
            raise SystemExit(f"expected {n} repositories, got {len(rows)}")
        if "tags" in rows[0] and (rows[0]["tags"] != 1 or rows[0]["size"] <= 0):
            raise SystemExit(f"bad summary {rows[0]}")
    return check


def measure(spec: ServerSpec, root: Path, workdir: Path, rounds: int, workers: int,
            ui: bool) -> dict[str, tuple[float, float]]:
    base = Path(tempfile.mkdtemp(prefix=f"{spec.side}-", dir=workdir))
    extra = f"  workers: {workers}\n" if spec.side == "ours" else ""

    def config(port: int) -> str:
        return config_text("error", FILESYSTEM_STORAGE.format(root=root), port) + extra

    out: dict[str, tuple[float, float]] = {}
    with run_server(spec, base, root, config, server_env()) as server, \
            httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=120) as c:
        if ui:
            # Right after start-up: waits for the start-up catalog walk (no summaries).
            walk = timed(c, "/ui/api/v1/repositories?q=matches-nothing", lambda r: None)
            out["ui first request (the walk)"] = (walk, timed(
                c, "/ui/api/v1/repositories?q=matches-nothing", lambda r: None))
            out["ui page 1"] = first_and_warm(
                c, f"/ui/api/v1/repositories?n={PAGE}", rounds, _page_of(PAGE))
            out["ui filter q=repo-07"] = first_and_warm(
                c, f"/ui/api/v1/repositories?n={PAGE}&q=repo-07", rounds, _page_of(PAGE))
            out["ui page after repo-05000"] = first_and_warm(
                c, f"/ui/api/v1/repositories?n={PAGE}&last=bench/repo-05000", rounds,
                _page_of(PAGE))
        out["/v2/_catalog?n=100"] = first_and_warm(
            c, f"/v2/_catalog?n={PAGE}", rounds, _catalog_page(None))
        out["/v2/_catalog after repo-05000"] = first_and_warm(
            c, f"/v2/_catalog?n={PAGE}&last=bench/repo-05000", rounds,
            _catalog_page("bench/repo-05001"))
    return out


def _catalog_page(first: str | None) -> Callable[[httpx.Response], None]:
    def check(r: httpx.Response) -> None:
        names = r.json()["repositories"]
        if len(names) != PAGE or (first and names[0] != first):
            raise SystemExit(f"bad catalog page: {names[:2]}... ({len(names)})")
    return check


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repos", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--workers", type=int, default=1, help="our http.workers")
    ap.add_argument("--reference", default=default_reference())
    ap.add_argument("--ours", default=default_ours_cmd())
    ap.add_argument("--baseline", default=None, help="another build of ours, same run")
    args = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="ui-catalog-"))
    try:
        root = workdir / "storage"
        started = time.perf_counter()
        populate(root, args.repos)
        print(f"{args.repos} repositories written in {time.perf_counter() - started:.1f} s")
        ours = measure(ServerSpec("ours", args.ours), root, workdir, args.rounds,
                       args.workers, ui=True)
        base = measure(ServerSpec("ours", args.baseline), root, workdir, args.rounds,
                       args.workers, ui=True) if args.baseline else {}
        ref = measure(ServerSpec("ref", reference_cmd(args.reference)), root, workdir,
                      args.rounds, args.workers, ui=False)
        print(f"\n{'request':32} {'ours first':>11} {'ours warm':>10} {'ref first':>10}"
              f" {'ref warm':>9}" + (f" {'base first':>11} {'base warm':>10}" if base else "")
              + f"   (ms; warm = median of {args.rounds})")
        for key, (first, warm) in ours.items():
            r = ref.get(key)
            rs = f"{r[0]:10.1f} {r[1]:9.1f}" if r else f"{'-':>10} {'-':>9}"
            b = base.get(key)
            bs = f" {b[0]:11.1f} {b[1]:10.1f}" if b else ""
            print(f"{key:32} {first:11.1f} {warm:10.1f} {rs}{bs}")
        print(f"\nreference: {args.reference}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
