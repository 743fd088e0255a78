"""Blobs: content-addressed bytes under ``blobs/`` plus per-repository links (SPEC Pull 5-6).

The blob descriptor cache (``storage.cache.blobdescriptor``, the reference's key;
descriptor_cache.py): ``inmemory`` is a per-process map digest -> size, bounded to
``blobdescriptorsize`` entries; ``redis`` is registry:3's shared cache, which also vouches
for repository membership. A digest's size never changes (content addressing), so an entry
can only go stale by the blob being deleted, and only garbage collection deletes blobs,
after or together with every repository link to them; every unlink here tells the cache.
The cache answers only :meth:`BlobStore.stat_in_repo` (blob HEAD and GET); existence checks
that create references (mounts, manifest pushes, upload commits) always ask storage.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import BinaryIO

from ..digest import Digest, DigestError
from ..drivers.base import Driver, InvalidOffset, PathNotFound
from ..errors import ErrorCode, RegistryError
from . import paths
from .descriptor_cache import DescriptorCache, InMemoryDescriptors


def link_content(d: Digest) -> bytes:
    return str(d).encode()


def parse_link(content: bytes) -> Digest | None:
    try:
        return Digest.parse(content.decode("ascii").strip())
    except (UnicodeDecodeError, DigestError):
        return None


async def read_link(driver: Driver, path: str) -> Digest | None:
    """The digest the ``link`` file at ``path`` names; None if it is missing or unreadable."""
    try:
        content = await driver.get_content(path)
    except PathNotFound:
        return None
    return parse_link(content)


class BlobStore:
    """Blob existence, linking and reading. Owns the driver reference and the blob
    descriptor cache: ``descriptors`` if given, else from ``descriptor_cache``: None = no
    cache, 0 = in memory unbounded, n = in memory, n entries."""

    def __init__(
        self,
        driver: Driver,
        descriptor_cache: int | None = None,
        *,
        descriptors: DescriptorCache | None = None,
    ) -> None:
        self.driver = driver
        if descriptors is None and descriptor_cache is not None:
            descriptors = InMemoryDescriptors(descriptor_cache)
        self.descriptors = descriptors

    async def size(self, d: Digest) -> int | None:
        """Size of the global blob, or None if absent."""
        try:
            info = await self.driver.stat(paths.blob_data(d))
        except PathNotFound:
            return None
        return None if info.is_dir else info.size

    async def is_linked(self, name: str, d: Digest) -> bool:
        """Is the blob linked into repo ``name`` (as a layer or as a manifest revision)?"""
        for link in (paths.layer_link(name, d), paths.revision_link(name, d)):
            if await read_link(self.driver, link) == d:
                return True
        return False

    async def has_revision(self, name: str, d: Digest) -> bool:
        """Is manifest ``d`` a revision of repo ``name`` (its revision link names it)?"""
        return await read_link(self.driver, paths.revision_link(name, d)) == d

    async def has_revision_cached(self, name: str, d: Digest, size: int) -> bool:
        """:meth:`has_revision`, answered by the descriptor cache when it vouches for the
        repository's membership (redis; as registry:3, one membership set covers layers and
        revisions); a yes from storage is written back. ``size``: the manifest's length."""
        cache = self.descriptors
        if cache is not None:
            linked, _ = await cache.lookup(name, d)
            if linked:
                return True
        if not await self.has_revision(name, d):
            return False
        if cache is not None:
            await cache.remember(name, d, size)
        return True

    async def stat_in_repo(self, name: str, d: Digest) -> int:
        """Size of blob ``d`` as seen from repo ``name``; BLOB_UNKNOWN if not linked or gone.
        Asks the descriptor cache first; what storage answers is written back to it."""
        cache = self.descriptors
        linked, size = (False, None) if cache is None else await cache.lookup(name, d)
        if linked and size is not None:
            return size
        if not await self.is_linked(name, d):
            raise RegistryError(ErrorCode.BLOB_UNKNOWN, detail={"digest": str(d)})
        if size is None:
            size = await self.size(d)
            if size is None:
                raise RegistryError(ErrorCode.BLOB_UNKNOWN, detail={"digest": str(d)})
        if cache is not None:
            await cache.remember(name, d, size)
        return size

    async def forget_link(self, name: str, d: Digest) -> None:
        """Tell the descriptor cache ``d`` is no longer linked into ``name`` (never raises
        for the cache's own failures: descriptor_cache.py)."""
        if self.descriptors is not None:
            await self.descriptors.forget_link(name, d)

    async def forget_blob(self, d: Digest) -> None:
        """Tell the descriptor cache blob ``d`` is gone from storage."""
        if self.descriptors is not None:
            await self.descriptors.forget_blob(d)

    async def link(self, name: str, d: Digest) -> None:
        await self.driver.put_content(paths.layer_link(name, d), link_content(d))

    async def unlink(self, name: str, d: Digest) -> None:
        """Remove the repo's layer link; BLOB_UNKNOWN if it was not there."""
        try:
            await self.driver.delete(paths.layer_dir(name, d))
        except PathNotFound:
            raise RegistryError(ErrorCode.BLOB_UNKNOWN, detail={"digest": str(d)}) from None
        finally:
            await self.forget_link(name, d)

    async def open_local(self, d: Digest) -> BinaryIO | None:
        """Blob ``d``'s data as an open local file (the caller closes it), or None when the
        driver keeps no local files (S3): the zero-copy path of blob GETs. BLOB_UNKNOWN if gone."""
        opener = getattr(self.driver, "open_local", None)
        if opener is None:
            return None
        try:
            f: BinaryIO = await opener(paths.blob_data(d))
        except PathNotFound:
            raise RegistryError(ErrorCode.BLOB_UNKNOWN, detail={"digest": str(d)}) from None
        return f

    @asynccontextmanager
    async def open(
        self, d: Digest, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        try:
            async with self.driver.reader(paths.blob_data(d), offset, length) as chunks:
                yield chunks
        except PathNotFound:
            raise RegistryError(ErrorCode.BLOB_UNKNOWN, detail={"digest": str(d)}) from None
        except InvalidOffset:
            raise RegistryError(ErrorCode.RANGE_INVALID) from None

    async def redirect_url(self, d: Digest, method: str) -> str | None:
        return await self.driver.redirect_url(paths.blob_data(d), method)
