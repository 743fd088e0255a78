"""Garbage collection: mark every blob some manifest needs, sweep the rest (issue 5).

This module is the plan and the collector (the engine and its offline mode). Around it:
``gc_report.py`` (a run's options, progress and report), ``gc_online.py`` (the protocol
that is safe while clients push, and ``collect()``, the entry point for both kinds),
``gc_lock.py`` (the storage lock), ``gc_service.py`` (the server's schedule),
``walk.py`` (listing repositories and digests), ``manifests.py`` (what a manifest
references). The arrows point one way: gc_service -> gc_online -> gc -> walk/manifests.

Offline (``registry garbage-collect``, the reference's semantics, distribution 2.8
``registry/storage/garbagecollect.go``). Mark: every manifest revision of every repository
(a revision is a ``link`` file naming it; one whose manifest blob is gone is skipped, as
the reference's enumerator does) marks itself and what it references (config, layers,
index children; a ``subject`` is not a reference). With ``delete_untagged``, a manifest
no tag points at is deleted -- its revision and its tag index entries, exactly the
reference's ``Vacuum.RemoveManifest`` -- unless an index in the same repository or a
referrer relationship keeps it: children of a kept index and referrers (``subject``) of a
kept manifest are kept, transitively. (The reference 2.8 deletes index children and so
breaks every multi-arch image; we do not.) Sweep: every ``blobs/<alg>/<xx>/<hex>``
directory holding a ``data`` nobody marked, then every per-repository ``_layers`` link to
a digest nobody marked (its blob is gone: the reference 2.8 keeps such links; registry:3
removes them). Blob prefix directories stay, as the reference leaves them. Nothing takes a
grace period: run it on a registry nobody pushes to (read-only mode), as the reference
documents.

The pure parts (:func:`select_kept`, :func:`plan_restore`, and
``manifests.parse_references``) do no I/O and are tested with tables. Digests are handled as canonical strings
(``"sha256:<hex>"``) inside the engine.

Size: past ~400 lines on purpose: the collector is one state machine (scan, mark, plan,
sweep) whose steps share its marks and caches; everything around it lives apart.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field

import trio

from ..digest import ALGORITHMS, HEX_RE, from_canonical
from ..drivers.base import Driver, FileInfo, PathNotFound
from . import paths
from .blobs import read_link
from .gc_report import GCOptions, GCReport, Progress
from .manifests import Refs, parse_references
from .walk import (
    CONCURRENCY,
    LOCAL_CONCURRENCY,
    basename,
    delete_path,
    digests_in,
    enumerate_repositories,
    for_each,
    list_children,
    stat_file,
)

log = logging.getLogger("registry.gc")

PER_REPO_READS = 8  # manifests of one repository read at once (a repo with 10k revisions)
READS_IN_FLIGHT = 128  # manifest reads in flight overall
EMPTY: frozenset[str] = frozenset()

Hook = Callable[[str], Awaitable[None]]


# --- pure logic ------------------------------------------------------------------------


def select_kept(
    revisions: Collection[str],
    tagged: Collection[str],
    refs: Mapping[str, Refs],
    *,
    delete_untagged: bool,
    protected: Collection[str] = EMPTY,
) -> set[str]:
    """The revisions of one repository that stay.

    Without ``delete_untagged`` all of them. With it: the tagged and ``protected`` ones,
    plus (transitively) children of a kept index and referrers of a kept manifest, within
    this repository.
    """
    present = set(revisions)
    if not delete_untagged:
        return present
    referrers: dict[str, list[str]] = {}
    for d in present:
        r = refs.get(d)
        if r is not None and r.subject is not None:
            referrers.setdefault(r.subject, []).append(d)
    kept = {d for d in present if d in tagged or d in protected}
    todo = list(kept)
    while todo:
        d = todo.pop()
        r = refs.get(d)
        nxt = list(referrers.get(d, ()))
        if r is not None:
            nxt.extend(c for c in r.children if c in present)
        for n in nxt:
            if n not in kept:
                kept.add(n)
                todo.append(n)
    return kept


def plan_restore(
    present: Collection[str],
    deleted: Collection[str],
    tagged: Collection[str],
    refs: Mapping[str, Refs],
) -> set[str]:
    """Online step 6 for one repository: which revisions we ``deleted`` must come back
    because a tag points at them or a kept index (present or restored) lists them."""
    deleted = set(deleted)
    restore = {d for d in deleted if d in tagged}
    todo = list(set(present) | restore)
    seen = set(todo)
    while todo:
        r = refs.get(todo.pop())
        if r is None:
            continue
        for c in r.children:
            if c in deleted:
                restore.add(c)
                if c not in seen:
                    seen.add(c)
                    todo.append(c)
    return restore


# --- options, report, progress ---------------------------------------------------------


_MARKED = Refs()  # stands for "read and marked already" (offline, everything kept)


def _blob_data(d: str) -> str:
    return paths.blob_data(from_canonical(d))


# --- the collector ---------------------------------------------------------------------


@dataclass
class RepoScan:
    """What a scan saw in one repository."""

    name: str
    revisions: list[str]  # revision links whose manifest blob is readable
    layers: list[str]  # layer links
    tags: dict[str, str]  # tag -> current (read only when needed)
    kept: set[str] = field(default_factory=set)
    delete: list[str] = field(default_factory=list)  # untagged, not kept (planned)


class Collector:
    """One offline collection over ``driver``. Owns nothing beyond the run; not reusable.

    ``hook(step)`` is awaited at every step boundary (tests interleave pushes there);
    ``check_lock()`` before every destructive step raises :class:`LockLost` to stop.
    """

    def __init__(
        self,
        driver: Driver,
        options: GCOptions = GCOptions(),
        *,
        progress: Progress | None = None,
        hook: Hook | None = None,
        check_lock: Callable[[], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if options.online and type(self) is Collector:
            raise ValueError("an online collection is gc_online.OnlineCollector (or collect())")
        self.driver = driver
        self.options = options
        self.n = options.concurrency or (
            LOCAL_CONCURRENCY if getattr(driver, "name", "") == "filesystem" else CONCURRENCY
        )
        self.progress = progress or Progress()
        self._hook = hook
        self._check_lock = check_lock
        self._clock = clock
        self.report = GCReport(dry_run=options.dry_run, online=options.online)
        self._refs: dict[str, Refs] = {}  # manifest digest -> refs (content never changes)
        self._reading: dict[str, trio.Event] = {}
        self._strings: dict[str, str] = {}
        # Offline without --delete-untagged every readable revision is kept: mark its
        # references as they are read and keep nothing per manifest (memory at 10^5).
        self._mark_on_read = not (options.online or options.delete_untagged)
        self.marked: set[str] = set()
        self._reads = trio.CapacityLimiter(READS_IN_FLIGHT)

    # --- helpers -----------------------------------------------------------------------

    async def _step(self, name: str) -> None:
        if self._hook is not None:
            await self._hook(name)

    async def _lock_ok(self) -> None:
        if self._check_lock is not None:
            await self._check_lock()

    def _intern(self, d: str) -> str:
        if self._mark_on_read:
            return d  # the mark set holds the one copy that matters
        return self._strings.setdefault(d, d)

    def _warn(self, message: str) -> None:
        log.warning("gc: %s", message)
        self.report.warnings.append(message)

    async def _read_manifest(self, d: str, *, trash_too: bool = False) -> Refs | None:
        """Refs of manifest ``d``, or None if its blob is gone. Bytes found are read once
        per run; a missing blob is looked for again next time (it may have been pushed)."""
        cached = self._refs.get(d)
        if cached is not None:
            return cached
        ev = self._reading.get(d)
        if ev is not None:
            await ev.wait()
            if d in self._refs or not trash_too:
                return self._refs.get(d)
        ev = self._reading[d] = trio.Event()
        try:
            body: bytes | None = None
            digest = from_canonical(d)
            where = [paths.blob_data(digest)]
            if trash_too:
                where.append(paths.gc_trash_data(digest))
            for path in where:
                try:
                    async with self._reads:
                        body = await self.driver.get_content(path)
                    break
                except PathNotFound:
                    continue
            if body is None:
                return None
            refs = parse_references(body)
            if not refs.ok:
                self._warn(f"manifest {d} is not JSON; keeping it, marking nothing else")
            if self._mark_on_read:
                self.marked.update(refs.blobs)
                self.marked.update(refs.children)
                self._refs[d] = _MARKED
                return _MARKED
            intern = self._intern
            refs = Refs(
                tuple(map(intern, refs.blobs)),
                tuple(map(intern, refs.children)),
                refs.subject,
                refs.ok,
            )
            self._refs[d] = refs
            return refs
        finally:
            del self._reading[d]
            ev.set()

    async def _read_tags(self, name: str) -> dict[str, str]:
        tags: dict[str, str] = {}
        for child in await list_children(self.driver, paths.tags_dir(name)):
            tag = basename(child)
            try:
                link = paths.tag_current_link(name, tag)
            except ValueError:
                continue
            d = await read_link(self.driver, link)
            if d is not None:
                tags[tag] = self._intern(str(d))
        return tags

    async def _scan_repo(self, name: str, *, tags: bool, trash_too: bool = False) -> RepoScan:
        revs: list[str] = []
        layers: list[str] = []
        for alg in ALGORITHMS:
            revs += await digests_in(self.driver, alg, paths.revisions_dir(name, alg))
            layers += await digests_in(self.driver, alg, paths.layers_dir(name, alg))
        readable: list[str] = []

        async def read(d: str) -> None:
            # As the reference's linkedBlobStore.Enumerate: a revision is a ``link`` file
            # naming it (a manifest deleted through the reference's API leaves the empty
            # directory), and one whose blob is gone is skipped.
            named = await read_link(self.driver, paths.revision_link(name, from_canonical(d)))
            if named is None or str(named) != d:
                return
            if await self._read_manifest(d, trash_too=trash_too) is not None:
                readable.append(d)

        await for_each([self._intern(d) for d in revs], read, min(PER_REPO_READS, self.n))
        readable.sort()
        tag_map = await self._read_tags(name) if tags else {}
        return RepoScan(name, readable, [self._intern(x) for x in layers], tag_map)

    def _mark(self, d: str) -> None:
        self.marked.add(d)
        r = self._refs.get(d)
        if r is not None:
            self.marked.update(r.blobs)
            self.marked.update(r.children)

    # --- phases ------------------------------------------------------------------------

    async def _mark_all(self) -> list[RepoScan]:
        """Scan every repository; plan untagged deletions; mark what stays."""
        o = self.options
        self.progress.phase("repositories")
        names = await enumerate_repositories(self.driver, concurrency=self.n)
        self.report.repositories = len(names)
        self.progress.count("repositories", len(names))
        self.progress.phase("mark", len(names))
        repos: list[RepoScan] = []
        cutoff = self._clock() - o.grace_period

        async def scan(name: str) -> None:
            repo = await self._scan_repo(name, tags=o.delete_untagged)
            protected: set[str] = set()
            tagged = set(repo.tags.values())
            if o.online and o.delete_untagged:
                for d in repo.revisions:  # young untagged revisions stay (grace period)
                    if d not in tagged and not await self._older(
                        paths.revision_link(name, from_canonical(d)), cutoff
                    ):
                        protected.add(d)
            repo.kept = select_kept(
                repo.revisions,
                tagged,
                self._refs,
                delete_untagged=o.delete_untagged,
                protected=protected,
            )
            repo.delete = sorted(d for d in repo.revisions if d not in repo.kept)
            for d in repo.kept:
                self._mark(d)
            repo.tags = {}  # only needed while planning
            # Only links to digests nobody marked yet can be stale: keep just those.
            repo.layers = [x for x in repo.layers if x not in self.marked]
            repos.append(repo)
            self.report.manifests += len(repo.revisions)
            self.progress.count("manifests", self.report.manifests)
            self.progress.count("marked", len(self.marked))
            self.progress.advance()
            await self._step(f"mark:{name}")

        await for_each(names, scan, self.n)
        repos.sort(key=lambda r: r.name)
        return repos

    async def _older(self, path: str, cutoff: float) -> bool:
        """Does ``path`` exist with an mtime before ``cutoff``? (Missing counts as old.)"""
        info = await stat_file(self.driver, path)
        return info is None or info.mtime < cutoff

    async def _unmarked_blobs(self) -> tuple[int, dict[str, FileInfo]]:
        """Walk ``blobs/<alg>/<xx>/<hex>``: (how many blobs hold data, the unmarked ones
        with their ``data`` stat). Marked blobs are only counted, never kept in memory."""
        self.progress.phase("blobs")
        prefixes: list[tuple[str, str]] = []
        for alg_dir in await list_children(self.driver, paths.BLOBS):
            alg = basename(alg_dir)
            if alg in HEX_RE:
                prefixes.extend((alg, p) for p in await list_children(self.driver, alg_dir))
        marked = self.marked
        seen = 0
        unmarked: list[str] = []

        async def visit(item: tuple[str, str]) -> None:
            nonlocal seen
            alg, prefix = item
            two, skip = basename(prefix), len(alg) + 1
            for d in await digests_in(self.driver, alg, prefix):
                if d[skip : skip + 2] != two:
                    continue
                seen += 1
                if d not in marked:
                    unmarked.append(d)
            self.progress.count("blobs", seen)

        await for_each(prefixes, visit, self.n)
        out: dict[str, FileInfo] = {}

        async def check(d: str) -> None:
            info = await stat_file(self.driver, _blob_data(d))
            if info is not None:
                out[d] = info

        await for_each(unmarked, check, self.n)
        # Marked blob directories are counted as blobs without a stat of their data.
        return seen - len(unmarked) + len(out), out

    async def run(self) -> GCReport:
        started = time.monotonic()
        try:
            await self._run()
        finally:
            self.report.seconds = time.monotonic() - started
        return self.report

    # --- offline: the reference's semantics --------------------------------------------

    async def _run(self) -> None:
        o, rep = self.options, self.report
        await self._step("start")
        repos = await self._mark_all()
        rep.marked = len(self.marked)
        await self._step("marked")
        rep.blobs, garbage = await self._unmarked_blobs()
        rep.manifests_deleted = [(r.name, d) for r in repos for d in r.delete]
        rep.blobs_deleted = sorted((d, i.size) for d, i in garbage.items())
        rep.links_deleted = [
            (r.name, d) for r in repos for d in sorted(r.layers) if d not in self.marked
        ]
        await self._step("planned")
        if o.dry_run:
            return
        await self._lock_ok()
        self.progress.phase(
            "sweep", len(rep.manifests_deleted) + len(garbage) + len(rep.links_deleted)
        )

        async def remove_manifest(item: tuple[str, str]) -> None:
            await self._remove_manifest(*item)
            self.progress.advance()

        async def remove_blob(item: tuple[str, int]) -> None:
            await delete_path(self.driver, paths.blob_dir(from_canonical(item[0])))
            self.progress.advance()

        async def remove_link(item: tuple[str, str]) -> None:
            await delete_path(self.driver, paths.layer_dir(item[0], from_canonical(item[1])))
            self.progress.advance()

        # The reference's order: manifests, then blobs (then, as registry:3, layer links).
        await for_each(rep.manifests_deleted, remove_manifest, self.n)
        await for_each(rep.blobs_deleted, remove_blob, self.n)
        await for_each(rep.links_deleted, remove_link, self.n)
        await self._step("swept")

    async def _remove_manifest(self, name: str, d: str) -> None:
        """The reference's Vacuum.RemoveManifest: the tag index entry of ``d`` under every
        tag, then the revision directory."""
        digest = from_canonical(d)
        for t in await list_children(self.driver, paths.tags_dir(name)):
            try:
                entry = paths.tag_index_dir(name, basename(t), digest)
            except ValueError:
                continue
            await delete_path(self.driver, entry)
        await delete_path(self.driver, paths.revision_dir(name, digest))
