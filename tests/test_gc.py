"""Garbage collection: the pure mark logic (tables) and the engine on the in-memory driver.

Offline semantics follow the reference (issue 5); online runs add the grace period, the
trash and the lock. Interleavings with pushes are in test_gc_races.py, the comparison
with the reference's own garbage-collect in test_gc_reference.py.
"""

from __future__ import annotations

import json

import pytest
import trio

from registry.drivers.base import PathNotFound
from registry.drivers.memory import MemoryDriver
from registry.storage import paths
from registry.storage.gc import plan_restore, select_kept
from registry.storage.gc_lock import LockBusy, open_gc_lock
from registry.storage.gc_online import OnlineCollector, collect
from registry.storage.gc_report import GCOptions, LockLost
from registry.storage.manifests import Refs, parse_references
from registry.storage.store import Storage

try:
    from tests import gc_support as s
except ImportError:  # tests/ on sys.path
    import gc_support as s  # type: ignore[no-redef]

D = [f"sha256:{i:064x}" for i in range(20)]
ONLINE = GCOptions(online=True, grace_period=s.HOUR, settle=300)


# --- pure logic: tables -------------------------------------------------------------------


@pytest.mark.parametrize(
    "doc, expected",
    [
        pytest.param(
            {
                "mediaType": s.OCI_MANIFEST,
                "config": {"digest": D[0]},
                "layers": [{"digest": D[1]}, {"digest": D[2], "urls": ["http://x"]}],
            },
            Refs((D[0], D[1], D[2])),
            id="oci-manifest-config-and-layers-incl-foreign",
        ),
        pytest.param(
            {
                "mediaType": s.OCI_INDEX,
                "manifests": [{"digest": D[3]}, {"digest": D[4]}],
                "subject": {"digest": D[5]},
            },
            Refs((), (D[3], D[4]), D[5]),
            id="index-children-and-subject",
        ),
        pytest.param(
            {"schemaVersion": 1, "fsLayers": [{"blobSum": D[6]}, {"blobSum": D[6]}]},
            Refs((D[6], D[6])),
            id="schema1-fslayers",
        ),
        pytest.param(
            {"config": {"digest": "sha256:nothex"}, "layers": [{"digest": D[7]}, "junk"]},
            Refs((D[7],)),
            id="bad-descriptors-skipped",
        ),
        pytest.param([1, 2], Refs(ok=False), id="not-an-object"),
    ],
)
def test_parse_references(doc, expected):
    assert parse_references(json.dumps(doc).encode()) == expected


def test_parse_references_of_non_json():
    assert parse_references(b"\xff not json") == Refs(ok=False)


IDX, A, B, C, SIG, SIG2, OLD, LONE = D[10:18]
REFS = {
    IDX: Refs((), (A, B)),  # multi-arch index over A and B
    A: Refs((D[0],)),
    B: Refs((D[1],)),
    C: Refs((D[2],)),
    SIG: Refs((D[3],), subject=IDX),  # signature of the index
    SIG2: Refs((D[4],), subject=SIG),  # signature of the signature
    OLD: Refs((D[5],)),
    LONE: Refs((D[6],), subject=OLD),  # referrer of an untagged manifest
}
ALL = set(REFS)


@pytest.mark.parametrize(
    "tagged, protected, delete_untagged, kept",
    [
        pytest.param(set(), set(), False, ALL, id="without-delete-untagged-everything-stays"),
        pytest.param({C}, set(), True, {C}, id="only-the-tagged"),
        pytest.param({IDX}, set(), True, {IDX, A, B, SIG, SIG2}, id="index-children-and-referrers"),
        pytest.param({A}, set(), True, {A}, id="child-tagged-alone-keeps-not-its-index"),
        pytest.param({C}, {OLD}, True, {C, OLD, LONE}, id="protected-keeps-its-referrers"),
        pytest.param(set(), set(), True, set(), id="nothing-tagged"),
    ],
)
def test_select_kept(tagged, protected, delete_untagged, kept):
    got = select_kept(ALL, tagged, REFS, delete_untagged=delete_untagged, protected=protected)
    assert got == kept


def test_select_kept_only_within_the_repository():
    # IDX's child B is not a revision here: it cannot be kept (nor made up).
    got = select_kept({IDX, A}, {IDX}, REFS, delete_untagged=True)
    assert got == {IDX, A}


@pytest.mark.parametrize(
    "present, deleted, tagged, restore",
    [
        pytest.param({C}, {OLD}, set(), set(), id="nothing-points-back"),
        pytest.param({C}, {OLD}, {OLD}, {OLD}, id="tagged-again"),
        pytest.param({IDX}, {A, B, OLD}, set(), {A, B}, id="children-of-a-present-index"),
        pytest.param(set(), {IDX, A, B}, {IDX}, {IDX, A, B}, id="restored-index-brings-children"),
    ],
)
def test_plan_restore(present, deleted, tagged, restore):
    assert plan_restore(present, deleted, tagged, REFS) == restore


# --- the engine, offline (the reference's semantics) ----------------------------------------


@pytest.fixture
def storage() -> Storage:
    return Storage(MemoryDriver())


async def seed(storage: Storage) -> dict[str, object]:
    """A small registry: shared base layer, a re-tagged image, a multi-arch index, a
    signature pushed by digest, an orphan blob and a blob linked only in another repo."""
    base = b"base layer"
    app_v1, _ = await s.push_image(storage, "app", "latest", [base, b"app v1"])
    app_v2, _ = await s.push_image(storage, "app", "latest", [base, b"app v2"])  # moves the tag
    _, amd = await s.push_image(storage, "multi", None, [b"amd64 layer"], b'{"arch":"amd64"}')
    _, arm = await s.push_image(storage, "multi", None, [b"arm64 layer"], b'{"arch":"arm64"}')
    index, index_body = await s.push_index(storage, "multi", "v1", [amd, arm])
    sig, _ = await s.push_image(
        storage,
        "multi",
        None,
        [b"signature"],
        b"{}",
        subject=s.desc(s.OCI_INDEX, index_body),
        artifactType="application/x-sig",
    )
    orphan = await s.push_blob(storage, "app", b"orphan upload")
    other = await s.push_blob(storage, "other", b"only linked in other")
    return {
        "app_v1": app_v1,
        "app_v2": app_v2,
        "index": index,
        "amd": s.dg(amd),
        "arm": s.dg(arm),
        "sig": sig,
        "orphan": orphan,
        "other": other,
    }


async def test_offline_gc_deletes_unreferenced_blobs_and_their_links(storage):
    ids = await seed(storage)
    driver = storage.driver
    assert isinstance(driver, MemoryDriver)
    before = s.blob_keys(driver)
    report = await collect(driver)
    after = s.blob_keys(driver)
    assert before - after == {ids["orphan"], ids["other"]}
    assert {d for d, _ in report.blobs_deleted} == {str(ids["orphan"]), str(ids["other"])}
    assert report.bytes_freed == len(b"orphan upload") + len(b"only linked in other")
    assert report.links_deleted == [("app", str(ids["orphan"])), ("other", str(ids["other"]))]
    assert report.manifests_deleted == []
    assert report.repositories == 3
    assert report.manifests == 6  # app: 2, multi: amd, arm, index, sig
    assert report.blobs_kept == len(after)
    assert not await _exists(driver, paths.layer_dir("other", ids["other"]))
    # app_v1 is untagged but stays (no --delete-untagged): still pullable by digest
    assert (await storage.manifests.get("app", ids["app_v1"])).digest == ids["app_v1"]
    assert await s.problems(storage) == []


async def _exists(driver, path):
    try:
        await driver.stat(path)
    except PathNotFound:
        return False
    return True


async def test_dry_run_changes_nothing_and_reports_what_a_run_deletes(storage):
    await seed(storage)
    driver = storage.driver
    before = s.snapshot(driver)
    dry = await collect(driver, GCOptions(dry_run=True, delete_untagged=True))
    assert s.snapshot(driver) == before
    real = await collect(driver, GCOptions(delete_untagged=True))
    assert dry.dry_run and not real.dry_run
    assert dry.blobs_deleted == real.blobs_deleted
    assert dry.manifests_deleted == real.manifests_deleted
    assert dry.links_deleted == real.links_deleted
    assert dry.blobs_deleted  # it did find something


async def test_delete_untagged_keeps_index_children_and_referrers(storage):
    ids = await seed(storage)
    driver = storage.driver
    report = await collect(driver, GCOptions(delete_untagged=True))
    assert report.manifests_deleted == [("app", str(ids["app_v1"]))]  # the tag moved on
    gone = {d for d, _ in report.blobs_deleted}
    assert str(ids["app_v1"]) in gone and str(s.dg(b"app v1")) in gone
    assert str(s.dg(b"base layer")) not in gone  # still used by app_v2
    for key in ("index", "amd", "arm", "sig"):
        assert (await storage.manifests.get("multi", ids[key])).digest == ids[key]
    refs = await storage.manifests.referrers("multi", ids["index"])
    assert [r["digest"] for r in refs] == [str(ids["sig"])]
    # the tag's history entry for the deleted manifest went with it, as in the reference
    assert not await _exists(driver, paths.tag_index_dir("app", "latest", ids["app_v1"]))
    assert await _exists(driver, paths.tag_index_dir("app", "latest", ids["app_v2"]))
    assert await s.problems(storage) == []


async def test_delete_untagged_drops_referrers_of_a_deleted_subject(storage):
    old, old_body = await s.push_image(storage, "app", None, [b"old"])
    sig, _ = await s.push_image(
        storage, "app", None, [b"old sig"], b"{}", subject=s.desc(s.OCI_MANIFEST, old_body)
    )
    keep, _ = await s.push_image(storage, "app", "v1", [b"new"])
    report = await collect(storage.driver, GCOptions(delete_untagged=True))
    assert report.manifests_deleted == sorted([("app", str(old)), ("app", str(sig))])
    assert await storage.manifests.revisions("app") == [keep]


async def test_revision_whose_manifest_blob_is_gone_is_skipped_like_the_reference(storage):
    d, _ = await s.push_image(storage, "app", "v1", [b"layer"])
    await storage.driver.delete(paths.blob_dir(d))
    report = await collect(storage.driver)
    assert report.manifests == 0
    # its layers are no longer referenced by anything readable: collected, links too
    assert str(s.dg(b"layer")) in {x for x, _ in report.blobs_deleted}
    # the dangling revision link is left alone (the reference leaves it too)
    assert await _exists(storage.driver, paths.revision_link("app", d))


async def test_manifest_bytes_that_are_not_json_are_kept_with_a_warning(storage):
    blob = await s.push_blob(storage, "app", b"not a manifest")
    await storage.driver.put_content(paths.revision_link("app", blob), str(blob).encode())
    report = await collect(storage.driver)
    assert report.blobs_deleted == []
    assert any("not JSON" in w for w in report.warnings)


async def test_nested_repositories_and_blobs_shared_across_repositories(storage):
    shared = b"shared"
    await s.push_image(storage, "org/team/app", "v1", [shared])
    await s.push_image(storage, "org/team", "v1", [shared, b"mine"])
    await s.push_blob(storage, "org/lonely", shared)  # linked, unreferenced here: link stays
    report = await collect(storage.driver)
    assert report.repositories == 3
    assert report.blobs_deleted == [] and report.links_deleted == []


# --- online: grace period, trash, lock ------------------------------------------------------


async def test_online_grace_period_spares_young_blobs(storage, autojump_clock):
    driver = storage.driver
    old = await s.push_blob(storage, "app", b"old orphan")
    s.age_everything(driver, 2 * s.HOUR)
    young = await s.push_blob(storage, "app", b"young orphan")
    report = await collect(driver, ONLINE)
    assert [d for d, _ in report.blobs_deleted] == [str(old)]
    assert report.spared_young == 1
    assert s.blob_keys(driver) == {young}
    assert not await _exists(driver, paths.GC_TRASH)
    assert await storage.blobs.is_linked("app", young)
    assert not await storage.blobs.is_linked("app", old)


async def test_online_young_link_spares_an_old_blob(storage, autojump_clock):
    """Pushing an old blob again (upload or mount) writes a fresh link: it is in use."""
    driver = storage.driver
    old = await s.push_blob(storage, "app", b"old orphan")
    s.age_everything(driver, 2 * s.HOUR)
    assert await storage.uploads.mount("b", old, "app")
    report = await collect(driver, ONLINE)
    assert report.blobs_deleted == [] and report.spared_young == 1


async def test_online_delete_untagged_spares_young_untagged_manifests(storage, autojump_clock):
    driver = storage.driver
    old, _ = await s.push_image(storage, "app", None, [b"old"])
    s.age_everything(driver, 2 * s.HOUR)
    young, _ = await s.push_image(storage, "app", None, [b"young"])
    options = GCOptions(online=True, grace_period=s.HOUR, delete_untagged=True, settle=1)
    report = await collect(driver, options)
    assert report.manifests_deleted == [("app", str(old))]
    assert await storage.manifests.revisions("app") == [young]
    assert await s.problems(storage) == []


async def test_online_run_leaves_no_trash_and_puts_back_leftovers(storage, autojump_clock):
    driver = storage.driver
    await s.push_image(storage, "app", "v1", [b"layer"])
    s.age_everything(driver, 2 * s.HOUR)
    # an interrupted run left a referenced blob in the trash
    layer = s.dg(b"layer")
    await driver.move(paths.blob_data(layer), paths.gc_trash_data(layer))
    report = await collect(driver, ONLINE)
    assert any("interrupted" in w for w in report.warnings)
    assert report.blobs_deleted == []
    assert await s.problems(storage) == []
    assert not await _exists(driver, paths.GC_TRASH + "/sha256/" + layer.hex)


async def test_cancelled_online_run_puts_trashed_blobs_back(storage, autojump_clock):
    driver = storage.driver
    orphan = await s.push_blob(storage, "app", b"orphan")
    s.age_everything(driver, 2 * s.HOUR)
    reached = trio.Event()

    async def hook(step: str) -> None:
        if step == "settle":
            reached.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(OnlineCollector(driver, ONLINE, hook=hook).run)
        await reached.wait()
        assert orphan not in s.blob_keys(driver)  # in the trash now
        nursery.cancel_scope.cancel()
    assert orphan in s.blob_keys(driver)
    assert not await _exists(driver, paths.gc_trash_dir(orphan))


async def test_lost_lock_stops_the_run_and_restores_the_trash(storage, autojump_clock):
    driver = storage.driver
    orphan = await s.push_blob(storage, "app", b"orphan")
    s.age_everything(driver, 2 * s.HOUR)
    async with open_gc_lock(driver, confirm=0) as lock:

        async def hook(step: str) -> None:
            if step == "settle":  # someone else took the lock while we waited
                await driver.put_content(paths.GC_LOCK, json.dumps({"owner": "x"}).encode())

        with pytest.raises(LockLost):
            await OnlineCollector(driver, ONLINE, hook=hook, check_lock=lock.check).run()
    assert orphan in s.blob_keys(driver)
    # the lock is theirs: we must not have released it
    assert json.loads(await driver.get_content(paths.GC_LOCK))["owner"] == "x"


async def test_lock_is_exclusive_until_it_expires(autojump_clock):
    driver = MemoryDriver()
    now = [1000.0]
    clock = lambda: now[0]
    async with open_gc_lock(driver, confirm=0, clock=clock, ttl=60):
        with pytest.raises(LockBusy):
            async with open_gc_lock(driver, confirm=0, clock=clock):
                pass
        now[0] += 61  # the holder died without renewing
        async with open_gc_lock(driver, confirm=0, clock=clock) as taker:
            assert json.loads(await driver.get_content(paths.GC_LOCK))["owner"] == taker.token
    assert not await _exists(driver, paths.GC_LOCK)


async def test_lock_taker_cancelled_while_confirming_leaves_no_record(autojump_clock):
    # A taker cancelled in its confirm wait (a request gone, a shutdown) must remove its
    # record: a later taker in this same live process would otherwise see it held.
    driver = MemoryDriver()
    with trio.move_on_after(1.0) as scope:  # inside the 2 s confirm wait
        async with open_gc_lock(driver, confirm=2.0):
            pytest.fail("the lock was taken before its confirm wait ended")
    assert scope.cancelled_caught
    assert not await _exists(driver, paths.GC_LOCK)
    with trio.fail_after(10):
        async with open_gc_lock(driver, confirm=0) as taker:
            assert json.loads(await driver.get_content(paths.GC_LOCK))["owner"] == taker.token


async def test_racing_lock_takers_only_one_proceeds(autojump_clock):
    driver = MemoryDriver()
    got: list[str] = []

    async def take(who: str) -> None:
        try:
            async with open_gc_lock(driver, confirm=2.0):
                got.append(who)
                await trio.sleep(10)
        except LockBusy:
            pass

    async with trio.open_nursery() as nursery:
        nursery.start_soon(take, "a")
        nursery.start_soon(take, "b")
    assert len(got) == 1


async def test_lock_is_renewed_while_held(autojump_clock):
    driver = MemoryDriver()
    async with open_gc_lock(driver, confirm=0, ttl=60, clock=trio.current_time) as lock:
        for _ in range(10):  # 10 minutes of work, far past the TTL
            await trio.sleep(60)
            await lock.check()
