"""Online garbage collection: the protocol that is safe while clients push (issue 5).

:class:`OnlineCollector` is the engine of ``gc.py`` plus a grace period, a trash and a
second look, with no read-only window:

1. Leftover trash of an interrupted run goes back where it came from, and the layer links
   that run deleted come back where a manifest references a restored blob
   (:meth:`OnlineCollector.recover`, run by whoever takes the lock next).
2. Mark as offline. Untagged manifests whose revision link is younger than the grace
   period are kept (their referrers and children too). Blob candidates: unmarked,
   ``data`` older than the grace period, and every link to them older too.
3. Re-verify, then unlink: an untagged manifest that got a tag meanwhile is kept; a
   candidate with a link written meanwhile is spared. Then delete the planned revisions,
   record the candidates in ``_gc/plan`` (for step 1 of whoever comes next, should this
   process die) and delete the layer links of the candidates. From now on a manifest PUT that references a
   candidate fails its check (MANIFEST_BLOB_UNKNOWN) and the client uploads the blob again.
4. Trash: move each candidate's ``data`` to ``_gc/trash``. From now on an upload of the
   blob moves fresh bytes into place, and mounts and manifest checks find nothing.
5. Settle: wait ``settle`` seconds, longer than any push spends between checking that a
   blob exists and writing what references it (a manifest PUT's check -> revision link,
   an upload's exists? -> link, a mount's check -> link). Every push that checked before
   step 3/4 has now written.
6. Rescan every repository. A revision present now keeps its blobs; a revision we deleted
   comes back if a tag or a kept index now points at it; a layer link we deleted comes
   back if a kept manifest of its repository references it; a candidate that is marked
   now, or was linked again, is rescued: its bytes come back from the trash.
7. Purge the trash of the rest.

The one assumption is the bound in step 5 (a push's check-to-write window shorter than
``settle``); everything else is ordering. Nothing is cached across runs or processes:
replicas and worker processes share only storage, and one collection runs at a time
through the lock in ``gc_service.py``. On the filesystem an emptied ``<hex>`` directory
stays (removing it could race an upload moving fresh bytes into it); the reference and we
skip directories without ``data``. Cancellation puts trashed blobs back (shielded,
bounded); for a process that died, whoever takes the lock next does (the offline
command, the server at start-up, the next run).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

import trio

from ..digest import HEX_RE, canonical, from_canonical
from ..drivers.base import Driver, FileInfo, PathNotFound
from . import paths
from .blobs import link_content
from .gc import Collector, Hook, RepoScan, plan_restore, select_kept
from .gc_report import GCOptions, GCReport, Progress
from .walk import (
    basename,
    delete_path,
    digests_in,
    enumerate_repositories,
    for_each,
    list_children,
    stat_file,
)

log = logging.getLogger("registry.gc")

RESTORE_TIMEOUT = 60.0  # seconds a cancelled run spends putting trashed blobs back


async def read_plan(driver: Driver) -> list[str] | None:
    """The candidates ``_gc/plan`` names (a run wrote it before unlinking them and had not
    finished), None if there is no plan. Unreadable entries are skipped."""
    try:
        doc = json.loads(await driver.get_content(paths.GC_PLAN))
    except PathNotFound:
        return None
    except ValueError:
        return []
    raw = doc.get("candidates") if isinstance(doc, dict) else None
    return [d for d in raw if canonical(d)] if isinstance(raw, list) else []


class OnlineCollector(Collector):
    """One online collection (``options.online``); see the module docstring."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self._trashed: set[str] = set()

    async def _run(self) -> None:
        o, rep = self.options, self.report
        try:
            await self._step("start")
            await self.recover()
            repos = await self._mark_all()
            await self._step("marked")
            cutoff = self._clock() - o.grace_period
            deleted_revs = await self._delete_untagged(repos, cutoff)
            await self._step("manifests")
            rep.blobs, garbage = await self._unmarked_blobs()
            rep.marked = len(self.marked)
            await self._step("enumerated")
            links: dict[str, list[str]] = {}
            for r in repos:
                for d in r.layers:
                    if d not in self.marked:
                        links.setdefault(d, []).append(r.name)
            candidates, unlink = await self._pick_candidates(garbage, links, cutoff)
            await self._step("picked")
            if o.dry_run:
                rep.blobs_deleted = sorted((d, garbage[d].size) for d in candidates)
                rep.links_deleted = sorted(unlink)
                return
            await self._lock_ok()
            if candidates:  # what recover() must relink if this process dies from here on
                plan = json.dumps({"candidates": sorted(candidates)}).encode()
                await self.driver.put_content(paths.GC_PLAN, plan)
            unlinked = await self._unlink(unlink)
            await self._step("unlinked")
            await self._lock_ok()
            await self._trash(candidates)
            await self._step("trashed")
            await self._step("settle")
            if candidates or deleted_revs or unlinked:
                await trio.sleep(o.settle)
            await self._lock_ok()
            rescued = await self._rescan(candidates, deleted_revs, unlinked)
            await self._step("rescanned")
            await self._lock_ok()
            await self._finish(candidates, rescued, garbage)
            await delete_path(self.driver, paths.GC_PLAN)
            await self._step("done")
        except BaseException:
            if self._trashed:
                with trio.move_on_after(RESTORE_TIMEOUT) as cs:
                    cs.shield = True
                    for d in sorted(self._trashed):
                        await self._untrash(d)
            # The plan stays: the next lock taker's recover() relinks what needs it.
            raise

    async def recover(self) -> int:
        """Undo what an interrupted run left (step 1; also run by the offline command and
        the server's start-up whenever they take the lock). Call only while holding the
        lock: the trash is then nobody's. Returns how many blobs came back.

        Every blob in the trash goes back home (unless fresh bytes got there meanwhile).
        Then every repository is scanned and a layer link the run had deleted (the run's
        candidates, from ``_gc/plan``, and what was in the trash) is written again where a
        present manifest of the repository references that blob and its bytes exist (as
        step 6 would have: a push may have raced the unlink). Deleting them is
        left to the next run, which plans afresh: purging now could cut a push inside the
        settle window the dead run never waited out. Safe to repeat (the trash is empty).
        Not undone: an untagged revision the dead run deleted just as a tag was pushed
        onto it (nothing records which revisions it deleted).
        """
        trashed = await self._leftover_trash()
        plan = await read_plan(self.driver)
        if not trashed and plan is None:
            return 0
        if self.options.dry_run:
            self._warn(
                f"the trash holds {len(trashed)} blobs of an interrupted collection;"
                " a real run puts them back first"
            )
            return 0
        self.progress.phase("restore", len(trashed))

        async def back(d: str) -> None:
            await self._untrash(d)
            self.progress.advance()

        await for_each(trashed, back, self.n)
        restored = set(trashed) | set(plan or ())
        relinked = 0

        async def relink(name: str) -> None:
            nonlocal relinked
            repo = await self._scan_repo(name, tags=False)
            linked = set(repo.layers)
            for rev in repo.revisions:
                r = self._refs.get(rev)
                for d in r.blobs if r is not None else ():
                    if d in restored and d not in linked and await stat_file(
                        self.driver, paths.blob_data(from_canonical(d))
                    ):
                        link = paths.layer_link(name, from_canonical(d))
                        await self.driver.put_content(link, link_content(from_canonical(d)))
                        linked.add(d)
                        relinked += 1

        if restored:
            names = await enumerate_repositories(self.driver, concurrency=self.n)
            await for_each(names, relink, self.n)
        await delete_path(self.driver, paths.GC_PLAN)
        self._refs.clear()  # the run that follows reads everything afresh
        if trashed or relinked:
            self._warn(
                f"restored {len(trashed)} blobs and {relinked} layer links an interrupted"
                " collection left"
            )
        return len(trashed)

    async def _leftover_trash(self) -> list[str]:
        found: list[str] = []
        for alg_dir in await list_children(self.driver, paths.GC_TRASH):
            alg = basename(alg_dir)
            if alg in HEX_RE:
                found += await digests_in(self.driver, alg, alg_dir)
        return sorted(found)

    async def _delete_untagged(self, repos: list[RepoScan], cutoff: float) -> dict[str, set[str]]:
        """Online step 3a: re-verify and delete the planned untagged manifests."""
        deleted: dict[str, set[str]] = {}
        if not self.options.delete_untagged:
            return deleted
        planned = [r for r in repos if r.delete]
        if planned and not self.options.dry_run:
            await self._lock_ok()

        async def per_repo(repo: RepoScan) -> None:
            tags = await self._read_tags(repo.name)
            tagged = set(tags.values())
            protected = set(repo.kept)
            for d in repo.delete:
                link = paths.revision_link(repo.name, from_canonical(d))
                if d in tagged or not await self._older(link, cutoff):
                    protected.add(d)
            kept = select_kept(
                repo.revisions, tagged, self._refs, delete_untagged=True, protected=protected
            )
            for d in kept - repo.kept:  # changed meanwhile: keep them and what they need
                self._mark(d)
            repo.kept = kept
            repo.delete = [d for d in repo.delete if d not in kept]
            if self.options.dry_run:
                self.report.manifests_deleted.extend((repo.name, d) for d in repo.delete)
                return
            for d in repo.delete:
                await self._remove_manifest(repo.name, d)
                deleted.setdefault(repo.name, set()).add(d)
                self.report.manifests_deleted.append((repo.name, d))

        await for_each(planned, per_repo, self.n)
        self.report.manifests_deleted.sort()
        return deleted

    async def _pick_candidates(
        self, garbage: dict[str, FileInfo], links: dict[str, list[str]], cutoff: float
    ) -> tuple[set[str], list[tuple[str, str]]]:
        """Online step 2: blobs old enough, whose links are all old enough; and the links
        to unlink (those of the candidates, and old links to digests with no blob)."""
        candidates: set[str] = set()
        unlink: list[tuple[str, str]] = []

        async def consider(d: str) -> None:
            info = garbage.get(d)
            if info is not None and info.mtime >= cutoff:
                self.report.spared_young += 1
                return
            repos = links.get(d, [])
            for name in repos:
                if not await self._older(paths.layer_link(name, from_canonical(d)), cutoff):
                    if info is not None:
                        self.report.spared_young += 1
                    return
            if info is not None:
                candidates.add(d)
            unlink.extend((name, d) for name in repos)

        await for_each(sorted(set(garbage) | set(links)), consider, self.n)
        return candidates, unlink

    async def _unlink(self, unlink: list[tuple[str, str]]) -> set[tuple[str, str]]:
        """Online step 3b: delete the layer links to the candidates."""
        done: set[tuple[str, str]] = set()

        async def remove(item: tuple[str, str]) -> None:
            if await delete_path(self.driver, paths.layer_dir(item[0], from_canonical(item[1]))):
                done.add(item)

        await for_each(unlink, remove, self.n)
        self.report.links_deleted = sorted(done)
        return done

    async def _trash(self, candidates: set[str]) -> None:
        """Online step 4: move each candidate's data to the trash."""
        self.progress.phase("trash", len(candidates))

        async def move(d: str) -> None:
            digest = from_canonical(d)
            try:
                await self.driver.move(paths.blob_data(digest), paths.gc_trash_data(digest))
            except PathNotFound:
                return
            self._trashed.add(d)
            self.progress.advance()

        await for_each(sorted(candidates), move, self.n)

    async def _untrash(self, d: str) -> None:
        """Bring ``d`` back: move it home unless fresh bytes got there meanwhile."""
        digest = from_canonical(d)
        if await stat_file(self.driver, paths.blob_data(digest)) is None:
            try:
                await self.driver.move(paths.gc_trash_data(digest), paths.blob_data(digest))
            except PathNotFound:
                pass
        await delete_path(self.driver, paths.gc_trash_dir(digest))
        self._trashed.discard(d)

    async def _rescan(
        self,
        candidates: set[str],
        deleted_revs: dict[str, set[str]],
        unlinked: set[tuple[str, str]],
    ) -> set[str]:
        """Online step 6: what changed while we deleted. Restores revisions and links, and
        returns the candidates that must come back."""
        self.progress.phase("rescan")
        names = await enumerate_repositories(self.driver, concurrency=self.n)
        marked2: set[str] = set()
        relinked: set[str] = set()
        restore_revs: set[tuple[str, str]] = set()
        restore_links: set[tuple[str, str]] = set()
        unlinked_by_repo: dict[str, set[str]] = {}
        for name, d in unlinked:
            unlinked_by_repo.setdefault(name, set()).add(d)

        async def scan(name: str) -> None:
            deleted = deleted_revs.get(name, set())
            repo = await self._scan_repo(name, tags=bool(deleted), trash_too=True)
            relinked.update(d for d in repo.layers if d in candidates)
            for d in deleted:
                await self._read_manifest(d, trash_too=True)
            back = plan_restore(repo.revisions, deleted, set(repo.tags.values()), self._refs)
            restore_revs.update((name, d) for d in back)
            gone = unlinked_by_repo.get(name, set())
            for d in set(repo.revisions) | back:
                marked2.add(d)
                r = self._refs.get(d)
                if r is None:
                    continue
                marked2.update(r.blobs)
                marked2.update(r.children)
                restore_links.update((name, x) for x in r.blobs if x in gone)
            await self._step(f"rescan:{name}")

        await for_each(names, scan, self.n)
        rescued = candidates & (marked2 | relinked)
        # Bytes first, then the links that make them reachable.
        for d in sorted(rescued):
            if d in self._trashed:
                await self._untrash(d)
        for name, d in sorted(restore_revs):
            link = paths.revision_link(name, from_canonical(d))
            await self.driver.put_content(link, link_content(from_canonical(d)))
        for name, d in sorted(restore_links):
            link = paths.layer_link(name, from_canonical(d))
            await self.driver.put_content(link, link_content(from_canonical(d)))
        rep = self.report
        rep.rescued = sorted(rescued)
        rep.restored_revisions = sorted(restore_revs)
        rep.restored_links = sorted(restore_links)
        rep.manifests_deleted = [x for x in rep.manifests_deleted if x not in restore_revs]
        rep.links_deleted = [x for x in rep.links_deleted if x not in restore_links]
        if rescued or restore_revs or restore_links:
            log.info(
                "gc: %d blobs, %d revisions and %d links were referenced again during the run",
                len(rescued),
                len(restore_revs),
                len(restore_links),
            )
        return rescued

    async def _finish(
        self, candidates: set[str], rescued: set[str], garbage: dict[str, FileInfo]
    ) -> None:
        """Online step 7: purge the trash of what nobody wanted back."""
        gone = sorted(candidates - rescued)
        self.progress.phase("sweep", len(gone))

        async def purge(d: str) -> None:
            if d in self._trashed:
                await delete_path(self.driver, paths.gc_trash_dir(from_canonical(d)))
                self._trashed.discard(d)
            self.progress.advance()

        await for_each(gone, purge, self.n)
        self.report.blobs_deleted = [(d, garbage[d].size) for d in gone]


async def collect(
    driver: Driver,
    options: GCOptions = GCOptions(),
    *,
    progress: Progress | None = None,
    hook: Hook | None = None,
    check_lock: Callable[[], Awaitable[None]] | None = None,
) -> GCReport:
    """Run one collection: the offline :class:`~.gc.Collector`, or with ``options.online``
    the protocol that is safe while clients push (:class:`OnlineCollector`). It lives here,
    above both, so that ``gc`` never imports ``gc_online``."""
    cls: type[Collector] = OnlineCollector if options.online else Collector
    return await cls(driver, options, progress=progress, hook=hook, check_lock=check_lock).run()
