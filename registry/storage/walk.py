"""Walking the storage tree: repositories, digest directories, bounded fan-out.

Used by garbage collection, the upload purger, the UI index and the catalog. No walk reads
every object: repositories are found by an ordered walk that never enters ``_``-directories
(``drivers.tree``; the filesystem reads many directories per worker-thread call), or on
other drivers by a ``list`` per directory (a delimiter listing on S3) with a bounded
number of listings in flight.

:func:`repositories_after` is the catalog's walk: the reference's order (v3's filesystem
catalog: depth first, siblings by name, a repository at the place of its ``_manifests``
among its children, so ``a/1`` < ``a`` < ``a/b`` < ``a-b`` < ``a.b`` < ``a_b``), starting
after ``last`` and stopping when the caller has enough, so a page costs work in proportion
to the page, not to the registry.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Collection, Iterable
from contextlib import aclosing
from typing import Any

import trio

from ..digest import HEX_RE
from ..drivers.base import Driver, FileInfo, PathNotFound
from ..drivers.tree import walk_tree
from ..reference import is_valid_name
from . import paths

CONCURRENCY = 64  # repositories / blob prefixes scanned at once on a remote store (latency)
LOCAL_CONCURRENCY = 8  # ... on the filesystem: more threads only contend for the GIL


def basename(path: str) -> str:
    return path.rsplit("/", 1)[1]


async def list_children(driver: Driver, path: str) -> list[str]:
    try:
        return await driver.list(path)
    except PathNotFound:
        return []


def _descend(key: str) -> bool:
    """Enter every directory but the layout's own (``_layers``...) and hidden ones: a
    repository name's components never start with ``_`` or ``.``."""
    return not basename(key).startswith(("_", "."))


async def repositories_after(
    driver: Driver, last: str | None = None, markers: Collection[str] = (paths.MANIFESTS,)
) -> AsyncGenerator[str, None]:
    """Repositories (valid names with one of ``markers`` below them) in the catalog's order
    (module docstring), each once, those after ``last`` only (``last`` need not exist).
    Reads only as far as the caller iterates: close it (``aclosing``) to stop early."""
    root = paths.REPOSITORIES
    # As v3: start after last's _manifests, the place last itself holds in the order.
    start = f"{root}/{last}/{paths.MANIFESTS}" if last else ""
    prev = None
    async with aclosing(walk_tree(driver, root, descend=_descend, start_after=start)) as keys:
        async for key in keys:
            parent, base = key.rsplit("/", 1)
            if base not in markers or parent == prev:
                continue
            prev = parent
            name = paths.repo_name_from_path(parent)
            if name and is_valid_name(name) and name != last:
                yield name


async def enumerate_repositories(
    driver: Driver,
    markers: Collection[str] = (paths.LAYERS, paths.MANIFESTS),
    concurrency: int = CONCURRENCY,
) -> list[str]:
    """Every repository with one of ``markers`` below it, sorted. (The reference 2.8 goes
    by ``_layers``; a repo with manifests always has layer links, so ``_manifests`` only
    adds safety.) On the filesystem: one ordered walk, many directories per thread call;
    elsewhere one ``list`` per directory, ``concurrency`` at a time."""
    if getattr(driver, "walk_batch", None) is not None:
        async with aclosing(repositories_after(driver, None, markers)) as names:
            return sorted({name async for name in names})
    found: list[str] = []
    limiter = trio.CapacityLimiter(concurrency)

    async def visit(path: str, nursery: trio.Nursery) -> None:
        async with limiter:
            children = await list_children(driver, path)
        bases = [basename(c) for c in children]
        if any(b in markers for b in bases):
            name = paths.repo_name_from_path(path)
            if name and is_valid_name(name):
                found.append(name)
        for child, b in zip(children, bases):
            if not b.startswith(("_", ".")):
                nursery.start_soon(visit, child, nursery)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(visit, paths.REPOSITORIES, nursery)
    return sorted(found)


async def digests_in(driver: Driver, alg: str, directory: str) -> list[str]:
    """Digests named by the child directories of ``directory`` (``<alg>/<hex>/...``)."""
    pattern = HEX_RE[alg]
    out = []
    for child in await list_children(driver, directory):
        hexpart = basename(child)
        if pattern.fullmatch(hexpart):
            out.append(f"{alg}:{hexpart}")
    return out


async def for_each(items: Iterable[Any], fn: Callable[[Any], Awaitable[None]], n: int) -> None:
    """Run ``fn`` over ``items`` with at most ``n`` workers (bounded tasks and memory)."""
    if isinstance(items, (list, tuple, set, dict)):
        if not items:
            return
        if len(items) == 1 or n <= 1:
            for item in items:
                await fn(item)
            return
        n = min(n, len(items))
    it = iter(items)

    async def worker() -> None:
        for item in it:  # trio is single-threaded: next() never races
            await fn(item)

    async with trio.open_nursery() as nursery:
        for _ in range(max(1, n)):
            nursery.start_soon(worker)


async def stat_file(driver: Driver, path: str) -> FileInfo | None:
    try:
        info = await driver.stat(path)
    except PathNotFound:
        return None
    return None if info.is_dir else info


async def delete_path(driver: Driver, path: str) -> bool:
    try:
        await driver.delete(path)
    except PathNotFound:
        return False
    return True
