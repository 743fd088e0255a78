"""The UI's per-worker index of what is stored, so no request walks the whole store.

:class:`RepoIndex` keeps, in this worker's memory:

- the repository names (the catalog walk, ``Storage.catalog``): reused for ``CATALOG_TTL``
  seconds; after that a request still gets the old list at once while one refresh runs in
  the background (in the index's own task, :meth:`serve`). A name this worker tags is
  added at once;
- per repository, its summary (tag count, last push, total size): computed when first
  asked (one tag listing, a stat and a read per tag, the manifests from the manifest cache)
  and kept for ``REPO_TTL`` seconds, dropped at once when this worker moves, adds or
  removes one of its tags (``TagStore.watchers``). Changes made through another worker or
  replica are seen within the TTL;
- manifests and image configs read, by digest (immutable, bounded LRUs);
- the storage totals for ``/info`` (bytes, blobs, upload sessions): computed only by
  :meth:`serve` in the background, when an ``/info`` request asks (:meth:`want_totals`):
  the first time, then when they are ``STATS_IDLE_AGE`` old, or ``STATS_MIN_AGE`` old and
  this worker changed tags since. Never on a request, and never while nobody looks (a
  walk of ``blobs/`` is the one cost here that grows with the store).

Correctness never depends on it: access checks and the data of one repository's page
(tags, manifests) are read from storage per request; only the catalog's counts and sizes
may lag by a TTL.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

import trio

from ..digest import Digest
from ..errors import RegistryError
from ..storage.inventory import blob_totals, read_small_blob, tag_heads, upload_sessions
from ..storage.store import Storage, as_registry_error
from .model import NO_CONFIG, ConfigInfo, ManifestInfo, read_config, read_manifest

log = logging.getLogger("registry.ui")

CATALOG_TTL = 30.0  # seconds a repository list is served before a background refresh
REPO_TTL = 60.0  # seconds a repository summary lives (other workers' pushes show by then)
REPO_ENTRIES = 20_000  # summaries kept (~200 bytes each): a 10,000-repository catalog fits
MANIFEST_ENTRIES = 4_096  # parsed manifests kept by digest
CONFIG_ENTRIES = 4_096  # parsed image configs kept by digest
MAX_CONFIG_BYTES = 1024 * 1024  # an image config past this is not read (history is shown)
# After this worker changed a tag, an /info request wakes the totals this long after the
# last walk at the earliest: a page open during pushes walks blobs/ at most this often.
STATS_MIN_AGE = 5.0
# While someone has the registry page open, totals older than this are walked again even
# without a tag change of ours (upload sessions, other workers' pushes, GC).
STATS_IDLE_AGE = 60.0
SUMMARY_CONCURRENCY = 16  # repositories summarised at once for one catalog page

K = TypeVar("K")
V = TypeVar("V")


class LRU(Generic[K, V]):
    """A bounded mapping that forgets the least recently used entry."""

    def __init__(self, entries: int) -> None:
        self.entries = entries
        self.items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        v = self.items.get(key)
        if v is not None:
            self.items.move_to_end(key)
        return v

    def put(self, key: K, value: V) -> None:
        self.items[key] = value
        self.items.move_to_end(key)
        while len(self.items) > self.entries:
            self.items.popitem(last=False)

    def pop(self, key: K) -> None:
        self.items.pop(key, None)


@dataclass(frozen=True, slots=True)
class RepoSummary:
    name: str
    tags: int
    last_push: float | None  # newest tag link write, epoch seconds
    size: int  # manifests + configs + layers of its tags, each blob counted once


@dataclass
class StorageTotals:
    bytes: int | None = None
    blobs: int | None = None
    uploads: int | None = None
    computed_at: float | None = None  # epoch seconds


class RepoIndex:
    """See the module doc. One per worker (built with the app); :meth:`serve` runs in the
    app's lifespan nursery."""

    def __init__(
        self,
        storage: Storage,
        *,
        catalog_ttl: float = CATALOG_TTL,
        repo_ttl: float = REPO_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.storage = storage
        self.catalog_ttl = catalog_ttl
        self.repo_ttl = repo_ttl
        self.clock = clock
        self._names: list[str] | None = None
        self._names_at = 0.0
        self._refreshing: trio.Event | None = None
        self._nursery: trio.Nursery | None = None
        self._summaries: LRU[str, tuple[float, RepoSummary]] = LRU(REPO_ENTRIES)
        self._manifests: LRU[Digest, ManifestInfo] = LRU(MANIFEST_ENTRIES)
        self._configs: LRU[Digest, ConfigInfo] = LRU(CONFIG_ENTRIES)
        self.totals = StorageTotals()
        self._totals_at: float | None = None  # clock() of the last walk's start
        self._dirty = True  # this worker changed tags since the last walk started
        self._walking = False  # serve() is computing the totals right now
        self._wake = trio.Event()

    # --- invalidation ---------------------------------------------------------------------

    def changed(self, name: str) -> None:
        """A ``TagStore`` watcher: this worker changed a tag of ``name``."""
        self._summaries.pop(name)
        self._dirty = True
        names = self._names
        if names is not None:
            i = bisect.bisect_left(names, name)
            if i == len(names) or names[i] != name:
                names.insert(i, name)

    # --- the catalog ----------------------------------------------------------------------

    async def names(self) -> list[str]:
        """Every repository name, sorted (see the module doc for how fresh)."""
        if self._names is None:
            await self._refresh()
        elif self.clock() - self._names_at > self.catalog_ttl:
            if self._nursery is not None and self._refreshing is None:
                self._nursery.start_soon(self._warm)  # never raises into the nursery
            elif self._nursery is None:
                await self._refresh()
        assert self._names is not None
        return self._names

    async def _refresh(self) -> None:
        """One catalog walk at a time; concurrent callers wait for the one running."""
        if self._refreshing is not None:
            await self._refreshing.wait()
            if self._names is not None:
                return
        done = self._refreshing = trio.Event()
        try:
            started = self.clock()
            names = await self.storage.catalog()
            self._names, self._names_at = names, started
        finally:
            self._refreshing = None
            done.set()

    # --- summaries ------------------------------------------------------------------------

    async def summaries(self, names: Iterable[str]) -> list[RepoSummary]:
        """The summary of each of ``names`` (in order), from the index or computed."""
        names = list(names)
        out: dict[str, RepoSummary] = {}
        limiter = trio.CapacityLimiter(SUMMARY_CONCURRENCY)

        async def one(name: str) -> None:
            async with limiter:
                out[name] = await self.summary(name)

        async with trio.open_nursery() as nursery:
            for n in names:
                nursery.start_soon(one, n)
        return [out[n] for n in names]

    async def summary(self, name: str) -> RepoSummary:
        now = self.clock()
        cached = self._summaries.get(name)
        if cached is not None and now - cached[0] <= self.repo_ttl:
            return cached[1]
        heads = await tag_heads(self.storage.driver, name)
        sizes: dict[str, int] = {}
        for d in dict.fromkeys(h.digest for h in heads if h.digest is not None):
            assert d is not None
            await self.collect_sizes(name, d, sizes)
        s = RepoSummary(
            name, len(heads), max((h.pushed for h in heads), default=None), sum(sizes.values())
        )
        self._summaries.put(name, (now, s))
        return s

    async def collect_sizes(self, name: str, d: Digest, sizes: dict[str, int],
                            depth: int = 0) -> None:
        """Add manifest ``d`` of ``name``, its config and layers (and for an index, its
        children's) to ``sizes`` (digest -> bytes). A manifest the repository does not
        hold is left out."""
        m = await self.manifest(name, d)
        if m is None:
            return
        sizes[m.digest] = m.size
        if m.config is not None:
            sizes[m.config.digest] = m.config.size
        for layer in m.layers:
            sizes[layer.digest] = layer.size
        if depth == 0:  # an index of indexes goes one level down, no further
            for child in m.children:
                try:
                    cd = Digest.parse(child.digest)
                except ValueError:
                    continue
                await self.collect_sizes(name, cd, sizes, depth + 1)

    # --- manifests and configs (immutable by digest) --------------------------------------

    async def manifest(self, name: str, d: Digest) -> ManifestInfo | None:
        """Manifest ``d`` if repository ``name`` holds it (checked every time), else None."""
        try:
            m = await self.storage.manifests.get(name, d)
        except RegistryError:
            return None
        info = self._manifests.get(d)
        if info is None:
            info = read_manifest(d, m.body)
            self._manifests.put(d, info)
        return info

    async def config(self, name: str, m: ManifestInfo) -> ConfigInfo:
        """The image config of ``m`` (read from repository ``name``'s store), or NO_CONFIG
        for artifacts, indexes and configs that are missing, damaged or too big."""
        if m.config is None or m.is_index or m.artifact_type is not None:
            return NO_CONFIG
        try:
            d = Digest.parse(m.config.digest)
        except ValueError:
            return NO_CONFIG
        info = self._configs.get(d)
        if info is not None:
            return info
        if not await self.storage.blobs.is_linked(name, d):
            return NO_CONFIG
        body = await read_small_blob(self.storage.driver, d, MAX_CONFIG_BYTES)
        info = NO_CONFIG if body is None else read_config(body)
        self._configs.put(d, info)
        return info

    # --- background -----------------------------------------------------------------------

    async def start(self, nursery: trio.Nursery) -> None:
        """A ``RegistryApp`` background callable."""
        await nursery.start(self.serve)

    def want_totals(self) -> None:
        """Ask :meth:`serve` for fresh totals if the last walk is ``STATS_IDLE_AGE`` old, or
        ``STATS_MIN_AGE`` old and this worker changed tags since. Never waits."""
        at = self._totals_at
        age = float("inf") if at is None else self.clock() - at
        if age >= STATS_IDLE_AGE or (self._dirty and age >= STATS_MIN_AGE):
            self._wake.set()

    @property
    def computing(self) -> bool:
        """Fresher totals are coming: a walk was asked for (:meth:`want_totals`) or runs.
        The page polls ``/info`` while this is true rather than show unknown as 0."""
        return self._wake.is_set() or self._walking

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Never returns: owns the background catalog refreshes and computes the storage
        totals (module doc; a failure is logged and retried next time)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            nursery.start_soon(self._warm)
            while True:
                await self._wake.wait()
                self._walking = True
                self._wake = trio.Event()
                try:
                    await self.compute_totals()
                finally:
                    self._walking = False

    async def _warm(self) -> None:
        """A catalog walk in the background: at start-up, so the first page does not pay
        for it alone (a request that comes first waits for this same walk), and when the
        list is older than ``catalog_ttl``. A failure is logged; the old list stays."""
        try:
            await self._refresh()
        except Exception as exc:  # noqa: BLE001  a request will try again
            log.warning("ui: cannot list the repositories: %s", exc)

    async def compute_totals(self) -> None:
        self._totals_at, self._dirty = self.clock(), False
        try:
            blobs = await blob_totals(self.storage.driver)
            uploads = await upload_sessions(self.storage.driver)
        except Exception as exc:  # a background loop must outlive any failure
            if as_registry_error(exc) is None:
                log.exception("ui: computing the storage totals failed")
            else:
                log.warning("ui: cannot compute the storage totals: %s", exc)
            return
        self.totals = StorageTotals(blobs.bytes, blobs.blobs, uploads, time.time())
