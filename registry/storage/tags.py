"""Tags and the catalog (SPEC.md Discovery 22-23, Management 25)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import trio

from ..digest import Digest
from ..drivers.base import Driver, PathNotFound
from ..errors import ErrorCode, RegistryError
from . import paths
from .blobs import link_content, read_link


class TagStore:
    """``watchers``: called with the repository name after this process moved, added or
    removed one of its tags (the web UI's index drops what it knew; other processes'
    changes are not seen here)."""

    def __init__(self, driver: Driver, concurrency: int = 100) -> None:
        self.driver = driver
        self.concurrency = max(1, concurrency)
        self.watchers: list[Callable[[str], None]] = []

    def _changed(self, name: str) -> None:
        for watch in self.watchers:
            watch(name)

    async def resolve(self, name: str, tag: str) -> Digest:
        """Digest a tag points at; MANIFEST_UNKNOWN if there is no such tag."""
        d = await read_link(self.driver, paths.tag_current_link(name, tag))
        if d is None:
            raise RegistryError(ErrorCode.MANIFEST_UNKNOWN, detail={"tag": tag})
        return d

    async def tag(self, name: str, tag: str, d: Digest) -> None:
        """Point ``tag`` at ``d``: index link first, then current (the reference's order)."""
        await self.driver.put_content(paths.tag_index_link(name, tag, d), link_content(d))
        await self.driver.put_content(paths.tag_current_link(name, tag), link_content(d))
        self._changed(name)

    async def untag(self, name: str, tag: str) -> None:
        try:
            await self.driver.delete(paths.tag_dir(name, tag))
        except PathNotFound:
            raise RegistryError(ErrorCode.MANIFEST_UNKNOWN, detail={"tag": tag}) from None
        self._changed(name)

    async def list(self, name: str) -> list[str]:
        """Sorted tags; NAME_UNKNOWN if the repository does not exist."""
        try:
            children = await self.driver.list(paths.tags_dir(name))
        except PathNotFound:
            try:
                await self.driver.stat(paths.repo_root(name))
            except PathNotFound:
                raise RegistryError(ErrorCode.NAME_UNKNOWN, detail={"name": name}) from None
            return []
        return sorted(c.rsplit("/", 1)[1] for c in children)

    async def tags_pointing_at(self, name: str, d: Digest) -> Sequence[str]:
        """Every tag whose current link is ``d``: one pass over the tags, reads in parallel."""
        tags = await self.list(name)
        found: list[str] = []
        limiter = trio.CapacityLimiter(self.concurrency)

        async def check(tag: str) -> None:
            async with limiter:
                current = await read_link(self.driver, paths.tag_current_link(name, tag))
            if current == d:
                found.append(tag)

        async with trio.open_nursery() as nursery:
            for t in tags:
                nursery.start_soon(check, t)
        return sorted(found)

    async def untag_all(self, name: str, tags: Iterable[str]) -> None:
        for t in tags:
            try:
                await self.driver.delete(paths.tag_dir(name, t))
            except PathNotFound:
                pass
        self._changed(name)


def paginate(items: list[str], n: int | None, last: str | None) -> tuple[list[str], bool]:
    """Items strictly after ``last`` (even if ``last`` is absent), at most ``n``.

    Returns (page, more) where ``more`` says a further page exists.
    """
    if last:
        items = [i for i in items if i > last]
    if n is None:
        return items, False
    return items[:n], len(items) > n
