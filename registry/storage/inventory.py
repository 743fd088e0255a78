"""What is stored, for browsing: tag heads with their push times, small verified blobs,
blob totals and upload sessions (the web UI's indexes, ``registry/ui/``).

Read-only. Every function here is bounded: one ``list`` per directory, ``stat``/``get`` per
key, at most ``concurrency`` calls in flight; none walks a repository's blobs. Raises
DriverError subclasses as the driver does (callers translate with ``as_registry_error``),
except that a missing directory is an empty answer.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ..digest import Digest
from ..drivers.base import Driver, PathNotFound
from . import paths
from .blobs import parse_link
from .walk import basename, enumerate_repositories, for_each, list_children

# Stats/reads in flight per call: a repository page asks for ~100 repositories at once, and
# each asks for its tags; on S3 each is one round trip (latency-bound), on the filesystem a
# thread hop.
CONCURRENCY = 16


@dataclass(frozen=True, slots=True)
class TagHead:
    """A tag, the digest its ``current/link`` names (None: unreadable) and when that link was
    last written (the push or tag move; seconds since the epoch)."""

    tag: str
    digest: Digest | None
    pushed: float


async def tag_heads(driver: Driver, name: str, concurrency: int = CONCURRENCY) -> list[TagHead]:
    """Every tag of repository ``name`` (valid name), sorted; [] if it has none. A tag
    whose link vanishes while we read is left out."""
    children = await list_children(driver, paths.tags_dir(name))
    tags = sorted(basename(c) for c in children)
    found: list[TagHead] = []

    async def head(tag: str) -> None:
        try:
            link = paths.tag_current_link(name, tag)
        except ValueError:  # a directory that is not a valid tag name: not a tag
            return
        try:
            info = await driver.stat(link)
            digest = parse_link(await driver.get_content(link))
        except PathNotFound:
            return
        found.append(TagHead(tag, digest, info.mtime))

    await for_each(tags, head, concurrency)
    found.sort(key=lambda h: h.tag)
    return found


async def read_small_blob(driver: Driver, d: Digest, limit: int) -> bytes | None:
    """The bytes of blob ``d`` when it exists, is at most ``limit`` bytes and hashes to
    ``d``; else None (a damaged blob is never returned). The caller checks the repository
    links it (this reads the global blob store)."""
    try:
        info = await driver.stat(paths.blob_data(d))
        if info.is_dir or info.size > limit:
            return None
        body = await driver.get_content(paths.blob_data(d))
    except PathNotFound:
        return None
    if hashlib.new(d.algorithm, body).hexdigest() != d.hex:
        return None
    return body


@dataclass(frozen=True, slots=True)
class BlobTotals:
    blobs: int
    bytes: int


async def blob_totals(driver: Driver) -> BlobTotals:
    """How many blobs the store holds and their bytes: one walk of ``blobs/`` (on S3 a
    paginated listing; on the filesystem a directory scan per directory). Slow on a big
    store: run it in the background, never on a request."""
    count = total = 0
    try:
        async for info in driver.walk(paths.BLOBS):
            if not info.is_dir and info.path.endswith("/data"):
                count += 1
                total += info.size
    except PathNotFound:
        pass
    return BlobTotals(count, total)


async def upload_sessions(driver: Driver, concurrency: int = CONCURRENCY) -> int:
    """Upload sessions in progress in every repository: the repositories holding an
    ``_uploads`` directory (one ``list`` per directory of the tree), then one ``list`` each.
    A walk of the repositories: run it in the background, never on a request."""
    names = await enumerate_repositories(driver, markers=(paths.UPLOADS,))
    count = 0

    async def visit(name: str) -> None:
        nonlocal count
        try:
            where = paths.uploads_dir(name)
        except ValueError:
            return
        count += len(await list_children(driver, where))

    await for_each(names, visit, concurrency)
    return count
