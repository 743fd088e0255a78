"""The storage facade the HTTP layer talks to: the parts (blobs, uploads, manifests, tags)
composed into one object per app, and the catalog.

Every public method of the parts raises RegistryError for conditions a client should see;
driver errors are translated by :func:`as_registry_error` at this boundary.
"""

from __future__ import annotations

from contextlib import aclosing

from ..drivers.base import (
    Driver,
    DriverError,
    InvalidPath,
    PathNotFound,
    StorageFull,
    StorageIOError,
    Unavailable,
)
from ..errors import ErrorCode, RegistryError
from . import paths
from .blobs import BlobStore
from .descriptor_cache import DescriptorCache
from .manifest_store import ManifestStore
from .manifest_urls import NO_URL_LISTS, URLRules
from .tags import TagStore
from .uploads import Uploads
from .walk import enumerate_repositories, repositories_after

# Retry-After on a full storage (seconds): space comes back when someone or a GC frees it,
# in minutes; one try a minute costs a full disk little and notices the space soon.
STORAGE_FULL_RETRY_AFTER = 60


def as_registry_error(exc: BaseException) -> RegistryError | None:
    """Translate a driver error into what the client sees, or None if it is not one."""
    if isinstance(exc, RegistryError):
        return exc
    if isinstance(exc, Unavailable):
        return RegistryError(ErrorCode.UNAVAILABLE, "storage backend unavailable")
    if isinstance(exc, InvalidPath):
        return RegistryError(ErrorCode.NAME_INVALID)
    if isinstance(exc, PathNotFound):
        return RegistryError(ErrorCode.UNKNOWN, "storage object vanished")
    if isinstance(exc, StorageFull):
        return RegistryError(
            ErrorCode.STORAGE_FULL,
            detail={"reason": exc.reason},
            headers={"Retry-After": str(STORAGE_FULL_RETRY_AFTER)},
        )
    if isinstance(exc, StorageIOError):
        return RegistryError(ErrorCode.UNAVAILABLE, "storage error", {"reason": exc.reason})
    if isinstance(exc, DriverError):
        return RegistryError(ErrorCode.UNAVAILABLE, "storage error")
    return None


class Storage:
    """One per app: the parts over one driver. Owns the parts' per-process caches."""

    def __init__(
        self,
        driver: Driver,
        *,
        tag_concurrency: int = 100,
        manifest_urls: URLRules = NO_URL_LISTS,
        blob_descriptor_cache: int | None = None,
        descriptors: DescriptorCache | None = None,
        index_children: str = "all",
        index_platforms: tuple[tuple[str, str], ...] = (),
    ) -> None:
        """``blob_descriptor_cache``: None = no blob descriptor cache, 0 = unbounded,
        n = at most n entries (storage.cache, see blobs.py); ``descriptors``, if given, is
        the cache instead (descriptor_cache.py: redis). ``index_children`` and
        ``index_platforms``: which children of a pushed index must exist (ManifestStore)."""
        self.driver = driver
        self.blobs = BlobStore(driver, blob_descriptor_cache, descriptors=descriptors)
        self.uploads = Uploads(driver, self.blobs)
        self.tags = TagStore(driver, tag_concurrency)
        self.manifests = ManifestStore(
            driver, self.blobs, self.tags, manifest_urls,
            index_children=index_children, index_platforms=index_platforms,
        )

    async def catalog(self) -> list[str]:
        """Repositories with manifests, sorted, as the reference lists them. One ``list``
        per directory (delimiter listing on S3), never a walk of every object."""
        return await enumerate_repositories(self.driver, markers=(paths.MANIFESTS,))

    async def catalog_page(self, n: int, last: str | None) -> tuple[list[str], bool]:
        """At most ``n`` repositories with manifests after ``last`` (which need not exist),
        in the reference's catalog order (``walk.repositories_after``), and whether more
        follow. Reads about ``n + 1`` repositories' worth of directories, not the registry."""
        page: list[str] = []
        if n <= 0:
            return page, False
        async with aclosing(repositories_after(self.driver, last)) as names:
            async for name in names:
                if len(page) == n:
                    return page, True
                page.append(name)
        return page, False
