"""How fast the web UI's catalog page opens in a browser with many repositories (issue 18),
and what the first page weighs. The JSON API alone is timed by bench/ui_index.py.

    python -m bench.ui_catalog                 # 10,000 repositories, 5 rounds
    python -m bench.ui_catalog --repos 1000 --rounds 3

Writes ``--repos`` repositories straight into a filesystem root in the reference's layout
(bench/ui_index.py's ``populate``), starts our registry on it, then:

- first page: the bytes of index.html + the assets it names (app.js, app.css, as served);
- the catalog API's first call after start (it waits for the start-up catalog walk);
- the browser: Debian's chromium (headless, through Selenium and Debian's chromedriver, as
  the tests run it) opens ``/ui/`` as a new document; the figure is the page's own clock
  (``performance.now()``, from the start of navigation) when the first catalog row is in
  the DOM. The first open (cold browser cache) is reported apart from the median of the
  next ``--rounds``.

Prints one table. Needs chromium, chromium-driver and selenium.
"""

from __future__ import annotations

import argparse
import re
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
    run_server,
    server_env,
)
from bench.ui_index import populate

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
    args = parser.parse_args(argv)
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="ui-bench-") as tmp:
        root = Path(tmp) / "storage"
        start = time.perf_counter()
        populate(root, args.repos)
        rows.append(("repositories written", f"{args.repos} in {time.perf_counter() - start:.1f} s"))
        storage = FILESYSTEM_STORAGE.format(root=root)

        def config(port: int) -> str:
            return config_text("error", storage, port)

        base = Path(tmp) / "ours"
        base.mkdir()
        with run_server(ServerSpec("ours", default_ours_cmd()), base, root, config,
                        server_env()) as srv, \
                httpx.Client(base_url=f"http://127.0.0.1:{srv.port}", timeout=120) as client:
            api = f"/ui/api/v1/repositories?n={PAGE}"
            rows.append(("catalog API, first call after start (ms)",
                         f"{_timed_get(client, api):.1f}"))
            sizes = first_page_bytes(client)
            rows.append(("first page bytes", " + ".join(f"{k} {v}" for k, v in sizes.items())
                         + f" = {sum(sizes.values())}"))
            first, later = browser_rounds(f"http://127.0.0.1:{srv.port}", args.rounds)
            rows.append(("browser: first catalog row, 1st open (ms)", f"{first:.0f}"))
            rows.append(("browser: first catalog row, median (ms)",
                         (f"{statistics.median(later):.0f} (of {len(later)}: "
                          f"{', '.join(f'{t:.0f}' for t in later)})")))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
