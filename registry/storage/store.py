"""The storage facade the HTTP layer talks to: manifests, referrers, and the parts
(blobs, uploads, tags) composed into one object per app.

Every public method raises RegistryError for conditions a client should see; driver
errors are translated by :func:`as_registry_error` at this boundary.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import trio

from .. import safejson
from ..digest import Digest
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
from .blobs import BlobStore, link_content
from .gc import ALGORITHMS, as_digest, digests_in, enumerate_repositories
from .manifests import (
    INDEX_TYPES,
    ParsedManifest,
    parse_manifest,
    sniff_media_type,
)
from .tags import TagStore
from .uploads import Uploads

log = logging.getLogger("registry.storage")

MANIFEST_CACHE_BYTES = 32 * 1024 * 1024  # immutable manifest bytes by digest, per process
REFERENCE_CHECK_CONCURRENCY = 32  # parallel existence checks when validating a manifest
# Retry-After on a full storage (seconds): space comes back when someone or a GC frees it,
# in minutes; one try a minute costs a full disk little and notices the space soon.
STORAGE_FULL_RETRY_AFTER = 60


@dataclass(frozen=True)
class Manifest:
    digest: Digest
    media_type: str
    body: bytes


@dataclass(frozen=True)
class ManifestSummary:
    """What the referrers API reports about a manifest (cached by digest: immutable)."""

    media_type: str
    size: int
    subject: Digest | None
    artifact_type: str | None
    annotations: dict[str, str] | None


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


class Storage:
    def __init__(self, driver: Driver, *, tag_concurrency: int = 100) -> None:
        self.driver = driver
        self.blobs = BlobStore(driver)
        self.uploads = Uploads(driver, self.blobs)
        self.tags = TagStore(driver, tag_concurrency)
        # Content by digest never changes, so caching bytes is safe; whether a repo still
        # links the digest is always checked in storage, never cached.
        self._manifest_bytes = _LRUBytes(MANIFEST_CACHE_BYTES)
        self._summaries: OrderedDict[Digest, ManifestSummary] = OrderedDict()

    # --- manifests ---------------------------------------------------------------------

    async def _manifest_of(self, d: Digest) -> tuple[bytes, str] | None:
        """(bytes, media type) of manifest blob ``d``, from the cache or storage."""
        cached = self._manifest_bytes.get(d)
        if cached is not None:
            return cached
        try:
            body = await self.driver.get_content(paths.blob_data(d))
        except PathNotFound:
            return None
        entry = (body, sniff_media_type(body))
        self._manifest_bytes.put(d, entry)
        return entry

    async def get_manifest(self, name: str, reference: str | Digest) -> Manifest:
        """By tag or digest; MANIFEST_UNKNOWN if the repo does not hold it."""
        d = reference if isinstance(reference, Digest) else await self.tags.resolve(name, reference)
        if not await self.blobs.has_revision(name, d):
            raise RegistryError(ErrorCode.MANIFEST_UNKNOWN, detail={"digest": str(d)})
        found = await self._manifest_of(d)
        if found is None:
            raise RegistryError(ErrorCode.MANIFEST_UNKNOWN, detail={"digest": str(d)})
        return Manifest(d, found[1], found[0])

    async def put_manifest(
        self, name: str, reference: str | Digest, content_type: str | None, body: bytes
    ) -> tuple[Digest, ParsedManifest]:
        """Validate, check references, store bytes, link the revision, move the tag.

        Raises MANIFEST_INVALID, DIGEST_INVALID (bytes do not hash to the reference), or
        MANIFEST_BLOB_UNKNOWN with one entry per missing blob or child manifest.
        """
        parsed = parse_manifest(content_type, body)
        algorithm = reference.algorithm if isinstance(reference, Digest) else "sha256"
        d = Digest(algorithm, hashlib.new(algorithm, body).hexdigest())
        if isinstance(reference, Digest) and d != reference:
            raise RegistryError(
                ErrorCode.DIGEST_INVALID,
                "manifest digest does not match its content",
                {"expected": str(reference), "actual": str(d)},
            )
        await self._check_references(name, parsed)
        # Written unconditionally: the bytes are content-addressed, so rewriting them is
        # harmless, and one PUT is cheaper than the existence check it replaces (on S3 a
        # missing key costs a HEAD and a listing before the PUT).
        await self.driver.put_content(paths.blob_data(d), body)
        await self.driver.put_content(paths.revision_link(name, d), link_content(d))
        if isinstance(reference, str):
            await self.tags.tag(name, reference, d)
        self._manifest_bytes.put(d, (body, parsed.media_type))
        return d, parsed

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
            for desc in dict.fromkeys(x.digest for x in parsed.manifests):
                nursery.start_soon(check_manifest, desc)
        if missing:
            missing.sort(key=str)
            err = RegistryError(ErrorCode.MANIFEST_BLOB_UNKNOWN, detail={"digest": str(missing[0])})
            for m in missing[1:]:
                err.add(ErrorCode.MANIFEST_BLOB_UNKNOWN, detail={"digest": str(m)})
            raise err

    async def delete_manifest(self, name: str, d: Digest) -> None:
        """Remove the revision and every tag pointing at it (one pass over the tags)."""
        if not await self.blobs.has_revision(name, d):
            raise RegistryError(ErrorCode.MANIFEST_UNKNOWN, detail={"digest": str(d)})
        tags = await self.tags.tags_pointing_at(name, d)
        await self.tags.untag_all(name, tags)
        try:
            await self.driver.delete(paths.revision_dir(name, d))
        except PathNotFound:
            pass

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
        while len(self._summaries) > 100_000:
            self._summaries.popitem(last=False)
        return s

    async def revisions(self, name: str) -> list[Digest]:
        """Digests of the revision directories of ``name`` (sha256 first)."""
        return [
            as_digest(d)
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

    # --- catalog -------------------------------------------------------------------------

    async def catalog(self) -> list[str]:
        """Repositories with manifests, sorted, as the reference lists them. One ``list``
        per directory (delimiter listing on S3), never a walk of every object."""
        return await enumerate_repositories(self.driver, markers=(paths.MANIFESTS,))


def summarize(body: bytes) -> ManifestSummary:
    media_type = sniff_media_type(body)
    subject = artifact_type = annotations = None
    try:
        doc = safejson.loads(body)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        sub = doc.get("subject")
        if isinstance(sub, dict) and isinstance(sub.get("digest"), str):
            try:
                subject = Digest.parse(sub["digest"])
            except ValueError:
                subject = None
        at = doc.get("artifactType")
        if isinstance(at, str):
            artifact_type = at
        elif media_type not in INDEX_TYPES:
            cfg = doc.get("config")
            # OCI 1.1: without artifactType, a referrer's type is its config's mediaType.
            if isinstance(cfg, dict) and isinstance(cfg.get("mediaType"), str):
                artifact_type = cfg["mediaType"]
        ann = doc.get("annotations")
        if isinstance(ann, dict):
            annotations = {str(k): str(v) for k, v in ann.items()}
    return ManifestSummary(media_type, len(body), subject, artifact_type, annotations)
