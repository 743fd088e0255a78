"""/v2/_catalog pages (SPEC Discovery 23): the reference's order, ``last`` anywhere, ``n``
edges, and work proportional to the page (storage.walk.repositories_after, drivers.tree).

The order is distribution v3's (registry/storage/catalog.go over the driver's walk): depth
first, siblings by name on the filesystem (so ``a/1`` < ``a`` < ``a/b`` < ``a-b``: a
repository sits where its ``_manifests`` sorts among its children) and by their keys' byte
order on S3 (``a-b`` < ``a.b`` < ``a/1`` < ``a``). test_catalog_reference.py proves these
tables against registry-v3.0.0 itself.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio

from registry.drivers import tree
from registry.drivers.base import Driver
from registry.drivers.filesystem import FilesystemDriver
from registry.drivers.memory import MemoryDriver
from registry.http.request import AppOptions
from registry.storage import paths
from registry.storage.store import Storage

try:
    from tests.conftest import start_app
except ImportError:
    from conftest import start_app  # type: ignore[no-redef]

TEST_TIMEOUT_S = 120  # moto on a shared 2-core machine

NAMES = ["a", "a-b", "a/b", "a.b", "a_b", "a/1", "a/b/c", "b", "0x", "a/c", "b/a-1"]
NAME_ORDER = ["0x", "a/1", "a", "a/b", "a/b/c", "a/c", "a-b", "a.b", "a_b", "b", "b/a-1"]
KEY_ORDER = ["0x", "a-b", "a.b", "a/1", "a", "a/b", "a/b/c", "a/c", "a_b", "b", "b/a-1"]


STARTED = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()).encode()  # uploads: not stale


async def seed(driver: Driver, names: list[str], invalid: bool = True) -> None:
    """Repositories as the reference lays them out (a tag link, a layer link, an upload),
    plus things the catalog must not list: a repository with layers only, a directory that
    is no repository, and (``invalid``) an invalid name, which v3 would list."""
    for name in names:
        root = f"{paths.REPOSITORIES}/{name}"
        await driver.put_content(f"{root}/_manifests/tags/latest/current/link", b"sha256:0")
        await driver.put_content(f"{root}/_layers/sha256/00/link", b"sha256:0")
        await driver.put_content(f"{root}/_uploads/u/startedat", STARTED)
    await driver.put_content(f"{paths.REPOSITORIES}/layersonly/_layers/sha256/0/link", b"x")
    await driver.put_content(f"{paths.REPOSITORIES}/empty/dir/file", b"x")
    if invalid:
        await driver.put_content(f"{paths.REPOSITORIES}/Upper/_manifests/tags/x/link", b"x")


@asynccontextmanager
async def _filesystem(tmp_path: Any) -> AsyncIterator[Driver]:
    yield FilesystemDriver(str(tmp_path / "fs"))


@asynccontextmanager
async def _memory(tmp_path: Any) -> AsyncIterator[Driver]:
    yield MemoryDriver()


@asynccontextmanager
async def _s3(tmp_path: Any) -> AsyncIterator[Driver]:
    from s3_support import open_s3_driver  # a fresh bucket on moto

    async with open_s3_driver() as d:
        yield d


FACTORIES = {"filesystem": _filesystem, "memory": _memory, "s3": _s3}


@pytest.fixture(params=sorted(FACTORIES))
async def seeded(request: Any, tmp_path: Any, nursery: trio.Nursery) -> AsyncIterator[Storage]:
    async def watchdog() -> None:
        await trio.sleep(TEST_TIMEOUT_S)
        raise TimeoutError(f"test still running after {TEST_TIMEOUT_S} s")

    nursery.start_soon(watchdog)
    async with FACTORIES[request.param](tmp_path) as driver:
        await seed(driver, NAMES)
        yield Storage(driver)


def order_of(storage: Storage) -> list[str]:
    return KEY_ORDER if getattr(storage.driver, "lists_in_key_order", False) else NAME_ORDER


def _after(order: list[str], last: str, key_order: bool) -> list[str]:
    """The table's rule for a ``last`` that is not a name: what sorts after its place (empty
    components dropped: v3 joins ``last`` into a path, which cleans them)."""
    def place(name: str) -> list[str]:
        parts = [p for p in (name + "/_manifests").split("/") if p]
        return [p + "/" for p in parts] if key_order else parts
    return [n for n in order if place(n) > place(last)]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 10, 11, 12, 1000])
async def test_paginated_walk_lists_every_repository_once_in_the_reference_order(seeded, n):
    expected = order_of(seeded)
    got: list[str] = []
    last = None
    for _ in range(len(expected) + 2):
        page, more = await seeded.catalog_page(n, last)
        assert len(page) <= n
        got += page
        if not more:
            break
        assert len(page) == n  # a next page is announced only after a full one
        last = page[-1]
    assert got == expected
    # "more" means more: a page that ends exactly at the end announces nothing
    if len(expected) % n == 0:
        assert await seeded.catalog_page(n, expected[-1]) == ([], False)


@pytest.mark.parametrize("last", ["a", "a/1", "a/b", "a-b", "a.b", "a_b", "b", "0x", "b/a-1",
                                  # not names: between, before and past them
                                  "a-", "a/0", "a/bb", "a/b/b", "0", "aa", "b/a", "c", "zzz",
                                  "a/", "-", "~"])
async def test_last_between_and_past_names_continues_at_its_place(seeded, last):
    order = order_of(seeded)
    key_order = order is KEY_ORDER
    expected = order[order.index(last) + 1:] if last in order else _after(order, last, key_order)
    page, more = await seeded.catalog_page(1000, last)
    assert (page, more) == (expected, False)
    page, more = await seeded.catalog_page(2, last)
    assert (page, more) == (expected[:2], len(expected) > 2)


async def test_n_zero_is_an_empty_page_without_more(seeded):
    assert await seeded.catalog_page(0, None) == ([], False)


async def test_the_orders_of_the_two_walks_differ_where_v3s_do():
    # The tables' premise, spelled out: the filesystem's order is not the S3 keys' one.
    assert NAME_ORDER != KEY_ORDER and sorted(NAME_ORDER) == sorted(KEY_ORDER) == sorted(NAMES)


# --- bounded work ---------------------------------------------------------------------

REPOS = 1000
PAGE = 10


class CountingDriver:
    """A driver seen through ``list`` only (so drivers.tree walks it one directory per
    call, as it walks S3), counting the calls."""

    def __init__(self, inner: Driver) -> None:
        self.inner = inner
        self.lists = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def list(self, path: str) -> list[str]:
        self.lists += 1
        return await self.inner.list(path)


async def test_a_page_lists_directories_in_proportion_to_the_page_not_the_registry():
    inner = MemoryDriver()
    await seed(inner, [f"ns/repo-{i:04d}" for i in range(REPOS)])
    counting = CountingDriver(inner)
    storage = Storage(counting)  # type: ignore[arg-type]
    page, more = await storage.catalog_page(PAGE, "ns/repo-0500")
    assert page == [f"ns/repo-{i:04d}" for i in range(501, 501 + PAGE)] and more
    # root, ns, and each repository read (PAGE + 1: the one that says "more")
    assert counting.lists <= PAGE + 4, counting.lists
    counting.lists = 0
    assert len(await storage.catalog()) == REPOS
    assert counting.lists > REPOS  # the full walk does read them all: the count is real


async def test_a_filesystem_page_reads_few_directories_in_one_thread_call(tmp_path, monkeypatch):
    driver = FilesystemDriver(str(tmp_path / "fs"))
    await seed(driver, [f"ns/repo-{i:04d}" for i in range(REPOS)])
    scans: list[str] = []
    hops = 0
    real_scan, real_run = tree.scan_sorted, driver._run

    def scan(full: str) -> tree.DirListing:
        scans.append(full)
        return real_scan(full)

    async def run(fn: Any, *args: Any) -> Any:
        nonlocal hops
        hops += 1
        return await real_run(fn, *args)

    monkeypatch.setattr(tree, "scan_sorted", scan)
    monkeypatch.setattr(driver, "_run", run)
    page, more = await Storage(driver).catalog_page(PAGE, "ns/repo-0500")
    assert page == [f"ns/repo-{i:04d}" for i in range(501, 501 + PAGE)] and more
    # one thread call of tree.FIRST_BATCH keys: ~4 keys a repository, and root, ns
    assert len(scans) <= tree.FIRST_BATCH // 4 + 3, len(scans)
    assert hops == 1
    scans.clear()
    hops = 0
    assert len(await Storage(driver).catalog()) == REPOS
    assert len(scans) > REPOS  # every repository directory, once
    assert hops <= 10  # in batches (64, 128, ... 4096 keys), not a hop each


# --- over HTTP --------------------------------------------------------------------------


async def test_catalog_pages_over_http_with_link_until_the_last_page(nursery, tmp_path):
    root = tmp_path / "s"
    await seed(FilesystemDriver(str(root)), NAMES)
    url, _ = await start_app(nursery, str(root), AppOptions(catalog_max_entries=4))
    got: list[str] = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        r = await client.get("/v2/_catalog")  # no n: the cap (catalog.maxentries)
        assert r.json()["repositories"] == NAME_ORDER[:4]
        path = "/v2/_catalog?n=3"
        while path:
            r = await client.get(path)
            assert r.status_code == 200
            got += r.json()["repositories"]
            link = r.headers.get("link")
            path = link[1:link.index(">")] if link else ""
        assert got == NAME_ORDER
        r = await client.get("/v2/_catalog", params={"n": 2, "last": "a/b"})
        assert r.json() == {"repositories": ["a/b/c", "a/c"]}
        assert r.headers["link"] == '</v2/_catalog?last=a%2Fc&n=2>; rel="next"'
        r = await client.get("/v2/_catalog", params={"n": 5})
        assert r.status_code == 400 and r.json()["errors"][0]["code"] == "PAGINATION_NUMBER_INVALID"


@pytest.mark.s3
async def test_an_s3_page_costs_list_requests_in_proportion_to_the_page():
    """Counted at a proxy in front of moto (test_s3_requests.py's way): a page of 10 after
    ``last`` is a delimiter listing of the root and one per repository read, not one per
    repository stored. (One flat listing from ``last``, v3's way, reads every key of every
    repository on the page: ~1 request per 1,000 keys, but a repository with many tags is
    many pages; the delimiter listings stay one request per repository.)"""
    import s3_support

    repos = 150
    async with s3_support.open_proxied_driver() as (driver, proxy):
        await seed(driver, [f"ns/repo-{i:04d}" for i in range(repos)])
        storage = Storage(driver)
        proxy.seen.clear()
        page, more = await storage.catalog_page(PAGE, "ns/repo-0100")
        assert page == [f"ns/repo-{i:04d}" for i in range(101, 101 + PAGE)] and more
        lists = sum(1 for r in proxy.seen if "list-type" in r.query)
        assert lists == len(proxy.seen)  # listings only: no object is read
        assert lists <= PAGE + 4, lists
        proxy.seen.clear()
        assert len(await storage.catalog()) == repos
        assert sum(1 for r in proxy.seen if "list-type" in r.query) > repos  # counts are real
