"""Walking the storage tree: repositories, digest directories, bounded fan-out.

Used by garbage collection, the upload purger and the catalog. Every walk is a ``list``
per directory (a delimiter listing on S3), never a recursive walk of every object, with a
bounded number of listings in flight.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Iterable
from typing import Any

import trio

from ..digest import HEX_RE
from ..drivers.base import Driver, FileInfo, PathNotFound
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


async def enumerate_repositories(
    driver: Driver,
    markers: Collection[str] = (paths.LAYERS, paths.MANIFESTS),
    concurrency: int = CONCURRENCY,
) -> list[str]:
    """Every repository with one of ``markers`` below it, sorted. One ``list`` per
    directory, ``concurrency`` at a time. (The reference 2.8 goes by ``_layers``; a repo
    with manifests always has layer links, so ``_manifests`` only adds safety.)"""
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
