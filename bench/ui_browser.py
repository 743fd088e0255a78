"""How fast the web UI's catalog opens with many repositories (issue 18), and what the first
page weighs.

    python -m bench.ui_catalog                 # 10,000 repositories, 5 rounds
    python -m bench.ui_catalog --repos 1000 --rounds 3

Makes ``--repos`` repositories directly in a filesystem root in the reference's layout (one
small image, tagged ``latest`` in each: links only, the blobs are shared), then:

- first page: the bytes of index.html + app.js + app.css as the server sends them;
- ours: ``GET /ui/api/v1/repositories?n=100`` (the catalog page's one call) the first time
  after start and warm, and the same with a filter (``q``), next to the reference
  (registry-v3.0.0, else Debian's docker-registry) answering ``GET /v2/_catalog?n=100`` on
  the same root: the nearest thing it has;
- the browser: Debian's chromium (headless, through Selenium and Debian's chromedriver)
  opens ``/ui/`` as a new document; the figure is the page's own clock
  (``performance.now()``, from the start of navigation) when the first catalog row is in
  the DOM. The first open after start is reported apart (it pays for the server's index).

Prints one table of medians. Needs chromium, chromium-driver and selenium.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.servers import (
    FILESYSTEM_STORAGE,
    ServerSpec,
    config_text,
    default_ours_cmd,
    default_reference,
    reference_cmd,
    run_server,
    server_env,
)

ROUNDS = 5
REPOS = 10_000
PAGE = 100  # the catalog page's own page size
FIRST_ROW_TIMEOUT_S = 60.0  # the browser's wait for the first row; past it the round fails
FIRST_ROW_SCRIPT = """
const done = arguments[arguments.length - 1];
const found = () => document.querySelector('#main table.catalog tbody tr');
if (found()) { done(performance.now()); return; }
new MutationObserver((_, obs) => {
  if (found()) { obs.disconnect(); done(performance.now()); }
}).observe(document.documentElement, {childList: true, subtree: true});
"""


def _link(path: Path, digest: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "link").write_text(digest)


def make_root(root: Path, repos: int) -> None:
    """``repos`` repositories ``bench/r-00000``..., each with one image tagged latest."""
    v2 = root / "docker" / "registry" / "v2"
    config = json.dumps({"architecture": "amd64", "os": "linux", "created": "2026-01-01T00:00:00Z",
                         "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    layer = b"\x1f\x8b" + b"bench layer" * 100
    blobs = {}
    for data in (config, layer):
        blobs[hashlib.sha256(data).hexdigest()] = data
    cfg_hex, layer_hex = list(blobs)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": f"sha256:{cfg_hex}", "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": f"sha256:{layer_hex}", "size": len(layer)}],
    }).encode()
    man_hex = hashlib.sha256(manifest).hexdigest()
    blobs[man_hex] = manifest
    for hexd, data in blobs.items():
        d = v2 / "blobs" / "sha256" / hexd[:2] / hexd
        d.mkdir(parents=True, exist_ok=True)
        (d / "data").write_bytes(data)
    for i in range(repos):
        repo = v2 / "repositories" / "bench" / f"r-{i:05d}"
        for hexd in (cfg_hex, layer_hex):
            _link(repo / "_layers" / "sha256" / hexd, f"sha256:{hexd}")
        _link(repo / "_manifests" / "revisions" / "sha256" / man_hex, f"sha256:{man_hex}")
        _link(repo / "_manifests" / "tags" / "latest" / "current", f"sha256:{man_hex}")
        _link(repo / "_manifests" / "tags" / "latest" / "index" / "sha256" / man_hex,
              f"sha256:{man_hex}")


def _timed_get(client: httpx.Client, path: str) -> float:
    start = time.perf_counter()
    r = client.get(path)
    took = time.perf_counter() - start
    r.raise_for_status()
    return took * 1000


def first_page_bytes(client: httpx.Client) -> dict[str, int]:
    """index.html and the assets it names (hashed or not), as the server sends them."""
    index = client.get("/ui/")
    index.raise_for_status()
    sizes = {"index.html": len(index.content)}
    import re

    for ref in re.findall(r'(?:src|href)="([^"]*/ui/assets/[^"]+\.(?:js|css))"', index.text):
        r = client.get(ref)
        r.raise_for_status()
        sizes[ref.rsplit("/", 1)[1]] = len(r.content)
    return sizes


def browser_rounds(url: str, rounds: int) -> tuple[float, list[float]]:
    """(first open, later opens) in ms until the first catalog row exists."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from ui_support import open_browser  # the tests' browser: same flags, same driver

    with open_browser() as page:
        page.driver.set_script_timeout(FIRST_ROW_TIMEOUT_S)
        times = []
        for i in range(rounds + 1):
            page.driver.get(f"{url}/ui/")
            times.append(float(page.driver.execute_async_script(FIRST_ROW_SCRIPT)))
            if i == 0:  # where the first open's time went
                for name, start, took in page.js(
                        "return performance.getEntriesByType('resource').map("
                        "(e) => [e.name, e.startTime, e.duration])"):
                    print(f"  first open: {name.split('/ui/', 1)[-1]:<40} "
                          f"at {start:6.0f} ms, took {took:6.0f} ms", file=sys.stderr)
        return times[0], times[1:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repos", type=int, default=REPOS)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--reference", default=default_reference())
    args = parser.parse_args(argv)
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="ui-bench-") as tmp:
        root = Path(tmp) / "storage"
        start = time.perf_counter()
        make_root(root, args.repos)
        rows.append(("repositories made", f"{args.repos} in {time.perf_counter() - start:.1f} s"))
        storage = FILESYSTEM_STORAGE.format(root=root)

        def config(port: int) -> str:
            return config_text("error", storage, port)

        ours = ServerSpec("ours", default_ours_cmd())
        base = Path(tmp) / "ours"
        base.mkdir()
        with run_server(ours, base, root, config, server_env()) as srv, \
                httpx.Client(base_url=f"http://127.0.0.1:{srv.port}", timeout=120) as client:
            api = f"/ui/api/v1/repositories?n={PAGE}"
            rows.append(("ours: catalog API, first call (ms)", f"{_timed_get(client, api):.1f}"))
            warm = [_timed_get(client, api) for _ in range(args.rounds)]
            rows.append(("ours: catalog API, warm, median (ms)", f"{statistics.median(warm):.1f}"))
            q = [_timed_get(client, f"{api}&q=r-099") for _ in range(args.rounds)]
            rows.append(("ours: catalog API with q, median (ms)", f"{statistics.median(q):.1f}"))
            sizes = first_page_bytes(client)
            rows.append(("first page bytes", " + ".join(f"{k} {v}" for k, v in sizes.items())
                         + f" = {sum(sizes.values())}"))
            first, later = browser_rounds(f"http://127.0.0.1:{srv.port}", args.rounds)
            rows.append(("browser: first catalog row, 1st open (ms)", f"{first:.0f}"))
            rows.append(("browser: first catalog row, median (ms)",
                         (f"{statistics.median(later):.0f} (of {len(later)}: "
                          f"{', '.join(f'{t:.0f}' for t in later)})")))
        ref = ServerSpec("ref", reference_cmd(args.reference))
        base = Path(tmp) / "ref"
        base.mkdir()
        with run_server(ref, base, root, config, server_env()) as srv, \
                httpx.Client(base_url=f"http://127.0.0.1:{srv.port}", timeout=120) as client:
            api = f"/v2/_catalog?n={PAGE}"
            rows.append(("reference: /v2/_catalog?n=100, first (ms)",
                         f"{_timed_get(client, api):.1f}"))
            warm = [_timed_get(client, api) for _ in range(args.rounds)]
            rows.append(("reference: /v2/_catalog?n=100, median (ms)",
                         f"{statistics.median(warm):.1f}"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
