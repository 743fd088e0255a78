"""GC on the S3 driver (moto with signature checking): the same engine, keys and results
as on the filesystem (issue 5: "make it work on the S3 driver too")."""

from __future__ import annotations

import pytest
import trio

from registry.storage import paths
from registry.storage.gc_online import collect
from registry.storage.gc_report import GCOptions
from registry.storage.gc_service import OnlineGC
from registry.storage.store import Storage

try:
    from tests import gc_support as s
    from tests import s3_support
except ImportError:
    import gc_support as s  # type: ignore[no-redef]
    import s3_support  # type: ignore[no-redef]

pytestmark = pytest.mark.s3


@pytest.fixture(autouse=True)
def _moto() -> None:
    s3_support.require("moto")


async def seed(storage: Storage) -> dict[str, object]:
    v1, _ = await s.push_image(storage, "lib/app", "v1", [b"base", b"one"])
    v2, _ = await s.push_image(storage, "lib/app", "v1", [b"base", b"two"])  # v1 untagged now
    _, amd = await s.push_image(storage, "lib/multi", None, [b"amd"], b'{"a":1}')
    index, _ = await s.push_index(storage, "lib/multi", "v1", [amd])
    orphan = await s.push_blob(storage, "lib/app", b"orphan")
    return {"v1": v1, "v2": v2, "index": index, "orphan": orphan}


async def keys(driver) -> list[str]:  # type: ignore[no-untyped-def]
    return [info.path async for info in driver.walk("/")]


async def test_offline_gc_on_s3() -> None:
    async with s3_support.open_s3_driver() as driver:
        storage = Storage(driver)
        ids = await seed(storage)
        dry = await collect(driver, GCOptions(dry_run=True, delete_untagged=True))
        before = await keys(driver)
        report = await collect(driver, GCOptions(delete_untagged=True))
        assert report.blobs_deleted == dry.blobs_deleted
        assert report.manifests_deleted == [("lib/app", str(ids["v1"]))]
        gone = {d for d, _ in report.blobs_deleted}
        assert {str(ids["orphan"]), str(ids["v1"]), str(s.dg(b"one"))} <= gone
        assert str(s.dg(b"base")) not in gone
        after = await keys(driver)
        assert set(after) < set(before)
        assert not any(k.startswith(paths.GC) for k in after)
        assert await s.problems(storage) == []
        assert (await storage.manifests.get("lib/multi", "v1")).digest == ids["index"]


async def test_online_gc_on_s3() -> None:
    async with s3_support.open_s3_driver() as driver:
        storage = Storage(driver)
        ids = await seed(storage)
        await trio.sleep(1.1)  # S3 mtimes have one-second resolution
        gc = OnlineGC(
            driver,
            scheduled=False,
            interval=3600,
            grace_period=1.0,
            delete_untagged=True,
            settle=0.1,
            lock_confirm=0.1,
        )
        report = await gc.run_once()
        assert report is not None
        gone = {d for d, _ in report.blobs_deleted}
        assert str(ids["orphan"]) in gone and str(s.dg(b"base")) not in gone
        assert report.manifests_deleted == [("lib/app", str(ids["v1"]))]
        remaining = await keys(driver)
        assert not any(k.startswith(paths.GC_TRASH) or k == paths.GC_LOCK for k in remaining)
        assert paths.GC_LAST_RUN in remaining
        assert await s.problems(storage) == []
