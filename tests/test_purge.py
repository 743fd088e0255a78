"""Upload purging (issue 5, What users get 3): sessions older than the age go, on the
reference's schedule. (On S3 the multipart upload is aborted too:
tests/test_s3_driver.py::test_upload_purge_through_the_storage_layer_aborts_multipart_uploads.)
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator

import trio

from registry.drivers.memory import MemoryDriver
from registry.storage import paths
from registry.storage.purge import JITTER_MINUTES, UploadPurger, purge_uploads
from registry.storage.store import Storage

DAY = 86400.0
WEEK = 7 * DAY


async def body(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def session(storage: Storage, name: str, *, age: float | None, data: bytes = b"x") -> str:
    """An upload session with some data; ``age`` None removes its startedat. (No append:
    it hashes in a worker thread, and the autojump clock would jump meanwhile.)"""
    up = await storage.uploads.start(name)
    await storage.driver.put_content(paths.upload_data(name, up.id), data)
    path = paths.upload_startedat(name, up.id)
    if age is None:
        await storage.driver.delete(path)
    else:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - age))
        await storage.driver.put_content(path, stamp.encode())
    return up.id


async def sessions(storage: Storage, name: str) -> set[str]:
    return {i for i, _ in await storage.uploads.list_sessions(name)}


async def test_sessions_older_than_the_age_are_removed():
    storage = Storage(MemoryDriver())
    old = await session(storage, "app", age=WEEK + DAY)
    old_nested = await session(storage, "team/app", age=30 * DAY)
    young = await session(storage, "app", age=DAY)
    undated = await session(storage, "app", age=None)  # the reference never purges these
    await storage.driver.put_content(paths.upload_startedat("app", young[:8] + "-0"), b"junk")
    report = await purge_uploads(storage.driver, storage.uploads, time.time() - WEEK)
    assert sorted(report.purged) == sorted([("app", old), ("team/app", old_nested)])
    assert report.errors == []
    assert await sessions(storage, "app") == {young, undated, young[:8] + "-0"}
    assert await sessions(storage, "team/app") == set()
    assert not any(k.startswith(paths.upload_dir("app", old)) for k in storage.driver._files)
    # the others still work
    await storage.uploads.append("app", young, body(b"more"))


async def test_dry_run_only_reports():
    storage = Storage(MemoryDriver())
    old = await session(storage, "app", age=WEEK + DAY)
    before = dict(storage.driver._files)
    report = await purge_uploads(storage.driver, storage.uploads, time.time() - WEEK, dry_run=True)
    assert report.purged == [("app", old)]
    assert storage.driver._files == before


async def test_a_session_finished_meanwhile_is_not_an_error():
    storage = Storage(MemoryDriver())
    old = await session(storage, "app", age=WEEK + DAY)

    class Racing:
        """Uploads whose session vanishes between listing and cancelling."""

        async def list_sessions(self, name: str) -> list[tuple[str, float]]:
            found = await storage.uploads.list_sessions(name)
            await storage.uploads.cancel(name, old)
            return found

        async def cancel(self, name: str, upload_id: str) -> None:
            await storage.uploads.cancel(name, upload_id)

    report = await purge_uploads(storage.driver, Racing(), time.time())  # type: ignore[arg-type]
    assert report.purged == [] and report.errors == []


async def test_schedule_is_random_minutes_then_every_interval(autojump_clock):
    storage = Storage(MemoryDriver())
    rng = random.Random(3)
    jitter = 60.0 * random.Random(3).randrange(JITTER_MINUTES)
    purger = UploadPurger(
        storage.driver,
        storage.uploads,
        age=WEEK,
        interval=DAY,
        rng=rng,
        clock=lambda: time.time() + trio.current_time(),
    )
    first = await session(storage, "app", age=WEEK + 60)
    async with trio.open_nursery() as nursery:
        await nursery.start(purger.serve)
        await trio.sleep(max(0.0, jitter - 1))
        assert purger.runs == 0 and first in await sessions(storage, "app")
        await trio.sleep(2)
        assert purger.runs == 1 and first not in await sessions(storage, "app")
        # a session that turns a week old during the next day goes at the next run
        second = await session(storage, "app", age=WEEK - DAY / 2)
        await trio.sleep(DAY - 2)
        assert purger.runs == 1 and second in await sessions(storage, "app")
        await trio.sleep(2)
        assert purger.runs == 2 and second not in await sessions(storage, "app")
        nursery.cancel_scope.cancel()
    assert 0 <= jitter < 3600 and jitter % 60 == 0


async def test_a_failing_purge_does_not_stop_the_loop(autojump_clock):
    storage = Storage(MemoryDriver())

    class Broken:
        async def list_sessions(self, name: str) -> list[tuple[str, float]]:
            raise RuntimeError("boom")

    await session(storage, "app", age=WEEK + DAY)
    purger = UploadPurger(storage.driver, Broken(), age=WEEK, interval=DAY)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(purger.serve)
        await trio.sleep(3600 + 3 * DAY)
        nursery.cancel_scope.cancel()
    assert purger.runs == 4
