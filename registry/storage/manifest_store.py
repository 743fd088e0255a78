"""Manifests in a repository: reading, validating and storing them, and the referrers API.

A manifest is a blob (``blobs/.../data``) plus a revision link in the repository; a tag
points at a revision (TagStore). Manifest bytes never change for a digest, so this process
keeps the bytes of recently used manifests and what the referrers API reports of them, once
they hash to their digest (bytes that do not are never kept nor served). What can change is
never cached: whether a repository still links a digest, and which digest a tag names, are
read from storage on every request, so a delete or a tag moved by another worker or replica
is seen at once.

Raises RegistryError for what a client should see: MANIFEST_UNKNOWN, MANIFEST_INVALID,
DIGEST_INVALID, MANIFEST_BLOB_UNKNOWN (one entry per missing reference).
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio

from ..digest import ALGORITHMS, Digest, from_canonical
from ..drivers.base import Driver, PathNotFound
from ..errors import ErrorCode, RegistryError
from . import paths
from .blobs import BlobStore, link_content
from .manifest_urls import NO_URL_LISTS, URLRules
from .manifests import ManifestSummary, ParsedManifest, parse_manifest, sniff_media_type, summarize
from .tags import TagStore
from .walk import digests_in

log = logging.getLogger("registry.storage")

# Immutable manifest bytes by digest, per worker process: typical manifests are 0.5-10 KiB,
# so this holds thousands of them in a 256 MiB container's budget with room to spare.
MANIFEST_CACHE_BYTES = 32 * 1024 * 1024
SUMMARY_CACHE_ENTRIES = 100_000  # referrers summaries kept per process (~300 bytes each)
REFERENCE_CHECK_CONCURRENCY = 32  # parallel existence checks when validating a manifest


@dataclass(frozen=True)
class Manifest:
    digest: Digest
    media_type: str
    body: bytes


class _LRUBytes:
    """(bytes, media type) by digest, bounded by total bytes."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.used = 0
        self.items: OrderedDict[Digest, tuple[bytes, str]] = OrderedDict()

    def get(self, d: Digest) -> tuple[bytes, str] | None:
        v = self.items.get(d)
        if v is not None:
            self.items.move_to_end(d)
        return v

    def put(self, d: Digest, v: tuple[bytes, str]) -> None:
        if len(v[0]) > self.budget // 4 or d in self.items:
            return
        self.items[d] = v
        self.used += len(v[0])
        while self.used > self.budget:
            _, old = self.items.popitem(last=False)
            self.used -= len(old[0])


class ManifestStore:
    """Manifests of every repository on ``driver``; one per app (it owns the caches).
    Layer URLs of pushed manifests are held to `url_rules` (validation.manifests.urls).

    Which child manifests of a pushed index must exist (validation.manifests.indexes, the
    reference's rules): `index_children` "all" (every one), "none" (none: the reference's
    experimental option), or "list" (only children whose platform's (architecture, os) is
    in `index_platforms`; every child when that list is empty)."""

    def __init__(
        self, driver: Driver, blobs: BlobStore, tags: TagStore, url_rules: URLRules = NO_URL_LISTS,
        *, index_children: str = "all", index_platforms: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.driver = driver
        self.blobs = blobs
        self.tags = tags
        self.url_rules = url_rules
        self.index_children = index_children
        self.index_platforms = frozenset(index_platforms)
        self._manifest_bytes = _LRUBytes(MANIFEST_CACHE_BYTES)
        self._summaries: OrderedDict[Digest, ManifestSummary] = OrderedDict()

    async def _manifest_of(self, d: Digest) -> tuple[bytes, str] | None:
        """(bytes, media type) of manifest blob ``d``, from the cache or storage; None when
        storage has no such blob, or bytes that do not hash to ``d`` (logged: a damaged or
        tampered file is never served nor cached, and is read again next time)."""
        cached = self._manifest_bytes.get(d)
        if cached is not None:
            return cached
        try:
            body = await self.driver.get_content(paths.blob_data(d))
        except PathNotFound:
            return None
        if hashlib.new(d.algorithm, body).hexdigest() != d.hex:
            log.error("manifest blob %s: stored bytes do not match the digest; not served", d)
            return None
        entry = (body, sniff_media_type(body))
        self._manifest_bytes.put(d, entry)
        return entry

    async def get(self, name: str, reference: str | Digest) -> Manifest:
        """By tag or digest; MANIFEST_UNKNOWN if the repo does not hold it. The tag is read
        from storage every time; the bytes may be cached here, and once they are, the
        revision check may be answered by the Redis descriptor cache (blobs.py)."""
        d = reference if isinstance(reference, Digest) else await self.tags.resolve(name, reference)
        found = self._manifest_bytes.get(d)
        if found is not None:
            linked = await self.blobs.has_revision_cached(name, d, len(found[0]))
        else:
            linked, found = await self._revision_and_bytes(name, d)
        if not linked or found is None:
            raise RegistryError(ErrorCode.MANIFEST_UNKNOWN, detail={"digest": str(d)})
        return Manifest(d, found[1], found[0])

    async def _revision_and_bytes(
        self, name: str, d: Digest
    ) -> tuple[bool, tuple[bytes, str] | None]:
        """The revision check and the bytes of an uncached manifest, read at once (on S3:
        one round trip instead of two). The bytes are never served without the check; an
        error of either read is raised as itself (the first, the link's, if both fail)."""
        results: list[bool | tuple[bytes, str] | None] = [False, None]
        errors: list[Exception | None] = [None, None]

        async def read(i: int, call: Any) -> None:
            try:
                results[i] = await call()
            except Exception as exc:  # noqa: BLE001  raised below as itself, not in a group
                errors[i] = exc

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read, 0, partial(self.blobs.has_revision, name, d))
            nursery.start_soon(read, 1, partial(self._manifest_of, d))
        for exc in errors:
            if exc is not None:
                raise exc
        linked, found = results
        assert isinstance(linked, bool) and not isinstance(found, bool)
        return linked, found

    async def put(
        self, name: str, reference: str | Digest, content_type: str | None, body: bytes,
        *, check_references: bool = True,
    ) -> tuple[Digest, ParsedManifest]:
        """Validate, check references, store bytes, link the revision, move the tag.
        ``check_references`` False: the referenced blobs need not be here (a pull-through
        cache stores a manifest before its layers, as registry:3's SkipLayerVerification).

        Raises MANIFEST_INVALID (also for a layer URL the rules refuse), DIGEST_INVALID
        (bytes do not hash to the reference), or MANIFEST_BLOB_UNKNOWN with one entry per
        missing blob or child manifest.
        """
        parsed = parse_manifest(content_type, body, self.url_rules)
        algorithm = reference.algorithm if isinstance(reference, Digest) else "sha256"
        d = Digest(algorithm, hashlib.new(algorithm, body).hexdigest())
        if isinstance(reference, Digest) and d != reference:
            raise RegistryError(
                ErrorCode.DIGEST_INVALID,
                "manifest digest does not match its content",
                {"expected": str(reference), "actual": str(d)},
            )
        if check_references:
            await self._check_references(name, parsed)
        # Written unconditionally: the bytes are content-addressed, so rewriting them is
        # harmless, and one PUT is cheaper than the existence check it replaces (on S3 a
        # missing key costs a HEAD and a listing before the PUT).
        await self.driver.put_content(paths.blob_data(d), body)
        await self.driver.put_content(paths.revision_link(name, d), link_content(d))
        if isinstance(reference, str):
            await self.tags.tag(name, reference, d)
        # The type storage's bytes give every worker (sniffed), not the pusher's
        # Content-Type: a cached answer must be the answer without the cache.
        self._manifest_bytes.put(d, (body, sniff_media_type(body)))
        return d, parsed

    def _must_exist(self, platform: Mapping[str, Any] | None) -> bool:
        """Must an index child with this ``platform`` exist in the repository?"""
        if self.index_children == "none":
            return False
        if self.index_children == "all" or not self.index_platforms:
            return True
        p = platform or {}
        return (p.get("architecture"), p.get("os")) in self.index_platforms

    async def _check_references(self, name: str, parsed: ParsedManifest) -> None:
        missing: list[Digest] = []
        limiter = trio.CapacityLimiter(REFERENCE_CHECK_CONCURRENCY)

        async def check_blob(d: Digest) -> None:
            async with limiter:
                if not await self.blobs.is_linked(name, d) or await self.blobs.size(d) is None:
                    missing.append(d)

        async def check_manifest(d: Digest) -> None:
            async with limiter:
                if not await self.blobs.has_revision(name, d):
                    missing.append(d)

        async with trio.open_nursery() as nursery:
            for desc in dict.fromkeys(x.digest for x in parsed.blobs):
                nursery.start_soon(check_blob, desc)
            children = [x for x in parsed.manifests if self._must_exist(x.platform)]
            for desc in dict.fromkeys(x.digest for x in children):
                nursery.start_soon(check_manifest, desc)
        if missing:
            missing.sort(key=str)
            err = RegistryError(ErrorCode.MANIFEST_BLOB_UNKNOWN, detail={"digest": str(missing[0])})
            for m in missing[1:]:
                err.add(ErrorCode.MANIFEST_BLOB_UNKNOWN, detail={"digest": str(m)})
            raise err

    async def delete(self, name: str, d: Digest) -> None:
        """Remove the revision and every tag pointing at it (one pass over the tags)."""
        if not await self.blobs.has_revision(name, d):
            raise RegistryError(ErrorCode.MANIFEST_UNKNOWN, detail={"digest": str(d)})
        tags = await self.tags.tags_pointing_at(name, d)
        await self.tags.untag_all(name, tags)
        try:
            await self.driver.delete(paths.revision_dir(name, d))
        except PathNotFound:
            pass
        await self.blobs.forget_link(name, d)  # blob HEAD answers for revisions too

    # --- referrers ---------------------------------------------------------------------

    async def _summary(self, d: Digest) -> ManifestSummary | None:
        s = self._summaries.get(d)
        if s is not None:
            return s
        found = await self._manifest_of(d)
        if found is None:
            return None
        s = summarize(found[0])
        self._summaries[d] = s
        while len(self._summaries) > SUMMARY_CACHE_ENTRIES:
            self._summaries.popitem(last=False)
        return s

    async def revisions(self, name: str) -> list[Digest]:
        """Digests of the revision directories of ``name`` (sha256 first)."""
        return [
            from_canonical(d)
            for alg in ALGORITHMS
            for d in await digests_in(self.driver, alg, paths.revisions_dir(name, alg))
        ]

    async def referrers(
        self, name: str, subject: Digest, artifact_type: str | None = None
    ) -> list[dict[str, Any]]:
        """Descriptors of every manifest in ``name`` whose subject is ``subject``."""
        result: list[tuple[str, dict[str, Any]]] = []
        limiter = trio.CapacityLimiter(REFERENCE_CHECK_CONCURRENCY)

        async def visit(d: Digest) -> None:
            async with limiter:
                s = await self._summary(d)
            if s is None or s.subject != subject:
                return
            if artifact_type is not None and s.artifact_type != artifact_type:
                return
            desc: dict[str, Any] = {"mediaType": s.media_type, "digest": str(d), "size": s.size}
            if s.artifact_type:
                desc["artifactType"] = s.artifact_type
            if s.annotations:
                desc["annotations"] = s.annotations
            result.append((str(d), desc))

        async with trio.open_nursery() as nursery:
            for d in await self.revisions(name):
                nursery.start_soon(visit, d)
        result.sort(key=lambda x: x[0])
        return [desc for _, desc in result]
