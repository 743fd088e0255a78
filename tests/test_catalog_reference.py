"""The catalog's order and pages against registry-v3.0.0 on the same storage (SPEC Discovery
23): clients paginate with ``last``, and a fleet may mix both servers on one storage.

Both servers serve one filesystem root (and, on S3, one moto bucket). What v3.0.0 does, and
what these tests hold us to:

- Order: v3 lists in its driver walk's order, a repository where its ``_manifests`` sorts
  among its children: on the filesystem siblings by name (``a/1`` < ``a`` < ``a/b`` < ``a-b``),
  on S3 by key bytes (``a-b`` < ``a.b`` < ``a/1`` < ``a``). The full listing is equal.
- Pages: on names where that order is also v3.0.0's ``lessPath`` order (no ``-``/``.``
  sibling of a nested name, no digit-led child), every paginated walk is equal, page for
  page. The one deliberate difference: v3 sends ``Link`` after every full page even when
  nothing follows; we send it only when a next page has names (SPEC 22).
- Where the two orders disagree v3.0.0 loses names: after ``last`` it keeps only names
  ``lessPath``-after it (catalog.go; v3 HEAD compares ``repo != last`` instead), so paging
  past ``a/1`` drops ``a`` on the filesystem, and past ``a-b`` drops ``a``, ``a/b``... on S3;
  and a page that ends at ``a/1`` panics (it checks "page full" only on a non-``_`` entry,
  so ``a``'s ``_manifests`` overflows the page). We list every name once, in the walk's
  order: v3.0.0's page after ``last`` is exactly ours without the names it drops.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import trio

from registry.drivers.base import Driver
from registry.drivers.filesystem import FilesystemDriver

try:  # tests/ is a plain directory on sys.path, or a package
    from tests import e2e_support as e2e
    from tests import s3_support
    from tests.docker_image_support import REGISTRY_3, run_registry_3
    from tests.test_catalog_pages import NAMES, seed
except ImportError:
    import e2e_support as e2e  # type: ignore[no-redef]
    import s3_support  # type: ignore[no-redef]
    from docker_image_support import REGISTRY_3, run_registry_3  # type: ignore[no-redef]
    from test_catalog_pages import NAMES, seed  # type: ignore[no-redef]

pytestmark = pytest.mark.e2e

PAGE_SIZES = [1, 2, 3, 4, 5, 11, 100]
LASTS = ["a", "a/1", "a/b", "a-b", "a.b", "a_b", "b", "0x", "b/a-1", "a-", "a/0", "a/bb",
         "a/b/b", "0", "aa", "b/a", "c", "zzz", "-", "a/"]
# Our upload purging off (v3 panics on this override alone; its purge, if it runs, keeps
# the seed's uploads, which started now).
NO_PURGE = {"REGISTRY_STORAGE_MAINTENANCE_UPLOADPURGING_ENABLED": "false"}


CLEAN = ["0x", "a", "a/b", "a/b/c", "a/c", "a_b", "b", "b/c", "bb"]  # the orders agree


def less_path(a: str, b: str) -> bool:
    """v3.0.0's lessPath: component-wise, ``/`` sorting before every other byte."""
    return a.replace("/", "\x00") < b.replace("/", "\x00")


def get(client: httpx.Client, params: dict[str, str | int]) -> httpx.Response:
    r = client.get("/v2/_catalog", params=params)
    assert r.status_code == 200, r.text
    return r


def walk(client: httpx.Client, n: int) -> list[tuple[list[str], str | None]]:
    """Every page of a paginated walk following Link: (names, the next page's last)."""
    pages: list[tuple[list[str], str | None]] = []
    params: dict[str, str | int] = {"n": n}
    for _ in range(len(NAMES) + 3):
        r = get(client, params)
        link = r.headers.get("link")
        names = r.json()["repositories"]
        nxt = httpx.URL(link[1:link.index(">")]).params.get("last") if link else None
        pages.append((names, nxt))
        if nxt is None:
            return pages
        params = {"n": n, "last": nxt}
    raise AssertionError(f"no end after {len(pages)} pages")


def compare_walks(ours: httpx.Client, ref: httpx.Client) -> None:
    """On CLEAN names: every paginated walk equal, page for page, Link for Link."""
    for n in PAGE_SIZES:
        mine, theirs = walk(ours, n), walk(ref, n)
        if theirs[-1][0] == [] and len(theirs) > 1:  # v3's Link after a full last page
            theirs = theirs[:-1]
            theirs[-1] = (theirs[-1][0], None)
        assert mine == theirs, f"n={n}"
    for last in CLEAN:
        for n in (2, 100):
            params: dict[str, str | int] = {"n": n, "last": last}
            assert get(ours, params).json() == get(ref, params).json(), params


def compare_order(ours: httpx.Client, ref: httpx.Client, names: list[str]) -> list[str]:
    """The same full listing; after any ``last``, v3.0.0's rest is ours less the names its
    lessPath filter drops (module docstring). Returns the full listing."""
    full = get(ours, {"n": 100}).json()["repositories"]
    assert full == get(ref, {"n": 100}).json()["repositories"]
    assert sorted(full) == sorted(names)
    for last in LASTS + names:
        mine = get(ours, {"n": 100, "last": last}).json()["repositories"]
        theirs = get(ref, {"n": 100, "last": last}).json()["repositories"]
        assert theirs == [r for r in mine if less_path(last, r)], last
        # and ours is the walk's order: the rest of the full listing after last's place
        if last in full:
            assert mine == full[full.index(last) + 1:], last
    return full


def check_both(tmp_path: Path, seed_into: Callable[[list[str]], None],
               servers: Callable[[Path], contextlib.AbstractContextManager[
                   tuple[httpx.Client, httpx.Client]]]) -> list[str]:
    seed_into(CLEAN)
    with servers(tmp_path / "clean") as (ours, ref):
        compare_walks(ours, ref)
        compare_order(ours, ref, CLEAN)
    seed_into(NAMES)
    with servers(tmp_path / "names") as (ours, ref):
        return compare_order(ours, ref, NAMES)


def test_filesystem_catalog_order_and_pages_against_the_reference(tmp_path: Path) -> None:
    roots = {"clean": tmp_path / "clean-root", "names": tmp_path / "names-root"}

    def seed_into(names: list[str]) -> None:
        root = roots["clean" if names is CLEAN else "names"]
        trio.run(seed, FilesystemDriver(str(root)), names, False)

    @contextlib.contextmanager
    def servers(workdir: Path) -> Iterator[tuple[httpx.Client, httpx.Client]]:
        root = roots[workdir.name]
        with run_registry_3(root) as ref, e2e.run_ours(root) as ours, \
                ours.client() as oc, ref.client() as rc:
            yield oc, rc

    full = check_both(tmp_path, seed_into, servers)
    assert full.index("a/1") < full.index("a") < full.index("a/b") < full.index("a-b")


def test_s3_catalog_order_and_pages_against_the_reference(tmp_path: Path) -> None:
    if not REGISTRY_3.exists():
        reason = f"{REGISTRY_3} is missing (distribution v3.0.0's registry; see shared/bin)"
        if e2e.in_ci():
            pytest.fail(reason)
        pytest.skip(reason)
    from registry.drivers.s3.driver import S3Driver

    server = s3_support.moto_server()
    buckets = {"clean": server.new_bucket(), "names": server.new_bucket()}

    def seed_into(names: list[str]) -> None:
        bucket = buckets["clean" if names is CLEAN else "names"]

        async def run() -> None:
            driver: Driver = S3Driver.from_params(server.params(bucket))
            try:
                await seed(driver, names, False)
            finally:
                await driver.aclose()

        trio.run(run)

    @contextlib.contextmanager
    def servers(workdir: Path) -> Iterator[tuple[httpx.Client, httpx.Client]]:
        workdir.mkdir()
        env = s3_support.registry_env(buckets[workdir.name])
        with on_s3(workdir, env, True) as ref, on_s3(workdir, env, False) as ours, \
                ours.client() as oc, ref.client() as rc:
            yield oc, rc

    full = check_both(tmp_path, seed_into, servers)
    assert full.index("a-b") < full.index("a.b") < full.index("a/1") < full.index("a")


@contextlib.contextmanager
def on_s3(tmp_path: Path, env: dict[str, str], reference: bool) -> Iterator[e2e.RegistryProcess]:
    """v3 or ours on the bucket that ``env`` names (the config file's storage is replaced by
    ``REGISTRY_STORAGE=s3``)."""

    def command(config: Path) -> tuple[list[str], dict[str, str]]:
        if reference:
            cmd = [str(REGISTRY_3), "serve", str(config)]
            run_env = e2e.clean_env(drop=["AWS_CA_BUNDLE"])  # Go's S3 client panics on it
        else:
            cmd, run_env = e2e._ours_command(config)
            run_env |= NO_PURGE
        return cmd, run_env | env

    label = "registry-v3-s3" if reference else "ours-s3"
    workdir = tmp_path / label
    workdir.mkdir()
    with e2e._run_registry(label, workdir / "unused-root", command, workdir=workdir) as reg:
        yield reg
