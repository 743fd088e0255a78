"""The blob descriptor cache (``storage.cache.blobdescriptor``): what :class:`BlobStore`
asks before storage when a client HEADs or GETs a blob. Two implementations of one small
interface, chosen by config:

- ``inmemory`` (:class:`InMemoryDescriptors`): per worker process, digest -> size, bounded
  LRU. It never vouches for repository membership (a link in one process's memory cannot see
  a delete served by another process), so the link check always reads storage.
- ``redis`` (:class:`RedisDescriptors`): registry:3's Redis cache, key for key
  (registry/storage/cache/redis/redis.go), so a v3 replica and ours can share one Redis:

  ==========================================  ===============================================
  ``blobs::<digest>``                         hash: ``digest``, ``size``, ``mediatype``
  ``repository::<name>::blobs``               set of the digests linked into ``<name>``
  ``repository::<name>::blobs::<digest>``     hash: ``mediatype`` (the per-repository override)
  ==========================================  ===============================================

  A hit needs membership *and* the global hash with ``digest`` and ``size``: registry:3's
  blob delete clears the global hash and leaves the membership, so membership alone proves
  nothing. Shared by replicas, so membership may be trusted: every unlink (blob delete,
  manifest delete, GC) removes it first (:meth:`forget_link`), and GC's sweep deletes the
  global hash of every blob it deletes (:meth:`forget_blob`).

Redis failing is a miss, never an error (RedisUnavailable: the client logs the outage once).
An invalidation that fails while Redis is down is remembered (bounded) and replayed before
the next lookup once Redis answers again, so a delete served during an outage cannot leave
a stale membership behind in this process's view. Keys are written without expiry, as
registry:3 does: configure Redis with ``maxmemory-policy allkeys-lru``.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from typing import Protocol

from ..digest import Digest, from_canonical
from ..drivers.redis import RedisClient, RedisUnavailable, ReplyError
from ..drivers.redis.protocol import Arg
from .gc_report import GCReport

log = logging.getLogger("registry.cache")

BLOB_MEDIA_TYPE = "application/octet-stream"  # what registry:3 caches for any blob
PENDING_MAX = 10_000  # invalidations kept for replay after an outage; beyond, oldest dropped


class DescriptorCache(Protocol):
    """What BlobStore asks. ``lookup`` answers ``(linked, size)``: ``linked`` True only if
    the cache vouches that ``d`` is linked into ``name``; ``size`` None if unknown."""

    async def lookup(self, name: str, d: Digest) -> tuple[bool, int | None]: ...

    async def remember(self, name: str, d: Digest, size: int) -> None: ...

    async def forget_link(self, name: str, d: Digest) -> None: ...

    async def forget_blob(self, d: Digest) -> None: ...


class InMemoryDescriptors:
    """digest -> size in this process; ``max_entries`` 0 = no bound (least recently used
    go first)."""

    def __init__(self, max_entries: int = 0) -> None:
        self._sizes: OrderedDict[Digest, int] = OrderedDict()
        self._max = max_entries

    async def lookup(self, name: str, d: Digest) -> tuple[bool, int | None]:
        size = self._sizes.get(d)
        if size is not None:
            self._sizes.move_to_end(d)
        return False, size

    async def remember(self, name: str, d: Digest, size: int) -> None:
        self._sizes[d] = size
        self._sizes.move_to_end(d)
        if self._max and len(self._sizes) > self._max:
            self._sizes.popitem(last=False)

    async def forget_link(self, name: str, d: Digest) -> None:
        pass  # membership is never cached here

    async def forget_blob(self, d: Digest) -> None:
        self._sizes.pop(d, None)


def blob_key(d: Digest | str) -> str:
    return f"blobs::{d}"


def repo_set_key(name: str) -> str:
    return f"repository::{name}::blobs"


def repo_blob_key(name: str, d: Digest | str) -> str:
    return f"repository::{name}::blobs::{d}"


class RedisDescriptors:
    """registry:3's Redis descriptor cache over ``client`` (module docstring)."""

    def __init__(self, client: RedisClient) -> None:
        self.client = client
        self._pending: deque[tuple[Arg, ...]] = deque(maxlen=PENDING_MAX)
        self.hits = 0
        self.misses = 0

    async def _replay(self) -> None:
        """Send the invalidations an outage held back; raises RedisUnavailable."""
        while self._pending:
            batch = [self._pending[i] for i in range(min(len(self._pending), 100))]
            await self.client.pipeline(batch)
            for _ in batch:
                self._pending.popleft()

    async def lookup(self, name: str, d: Digest) -> tuple[bool, int | None]:
        try:
            if self._pending:
                await self._replay()
            member, fields = await self.client.pipeline([
                ("SISMEMBER", repo_set_key(name), str(d)),
                ("HMGET", blob_key(d), "digest", "size"),
            ])
        except RedisUnavailable:
            self.misses += 1
            return False, None
        size = None
        if isinstance(fields, list) and len(fields) == 2 and fields[0] == str(d).encode():
            raw = fields[1]
            if isinstance(raw, bytes) and raw.isdigit():
                size = int(raw)
        linked = member == 1 and size is not None
        if linked:
            self.hits += 1
        else:
            self.misses += 1
        return linked, size

    async def remember(self, name: str, d: Digest, size: int) -> None:
        # registry:3's repository-scoped SetDescriptor: membership, the global hash (its
        # mediatype only if absent), the per-repository mediatype.
        commands: list[tuple[Arg, ...]] = [
            ("SADD", repo_set_key(name), str(d)),
            ("HSET", blob_key(d), "digest", str(d), "size", size),
            ("HSETNX", blob_key(d), "mediatype", BLOB_MEDIA_TYPE),
            ("HSET", repo_blob_key(name, d), "mediatype", BLOB_MEDIA_TYPE),
        ]
        try:
            replies = await self.client.pipeline(commands)
        except RedisUnavailable:
            return
        for r in replies:
            if isinstance(r, ReplyError):  # e.g. WRONGTYPE: someone else's key; not fatal
                log.warning("redis: cannot cache %s: %s", d, r)
                return

    async def _invalidate(self, commands: list[tuple[Arg, ...]]) -> None:
        try:
            if self._pending:
                await self._replay()
            await self.client.pipeline(commands)
        except RedisUnavailable:
            self._pending.extend(commands)

    async def forget_link(self, name: str, d: Digest) -> None:
        await self._invalidate([
            ("SREM", repo_set_key(name), str(d)),
            ("DEL", repo_blob_key(name, d)),
        ])

    async def forget_blob(self, d: Digest) -> None:
        await self._invalidate([("DEL", blob_key(d))])


async def forget_collected(cache: DescriptorCache, report: GCReport) -> None:
    """After a garbage collection: forget every link and blob ``report`` says it deleted
    (revisions and layer links leave their repository's set; deleted blobs lose their
    global hash). A dry run deleted nothing and changes nothing here."""
    if report.dry_run:
        return
    for name, d in (*report.manifests_deleted, *report.links_deleted):
        await cache.forget_link(name, from_canonical(d))
    for d, _size in report.blobs_deleted:
        await cache.forget_blob(from_canonical(d))
