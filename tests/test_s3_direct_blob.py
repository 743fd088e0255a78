"""A blob whose digest is known when its bytes arrive (POST ?digest=, or a PUT ?digest= with
the whole body on a fresh session: containerd's and oras's way) is written on S3 at its own
key and committed only once verified: no server-side copy. A wrong digest, a client that
goes away or a failing S3 leaves nothing visible, no multipart upload, no state object."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator

import pytest
import s3_support
import trio

from registry.digest import Digest
from registry.drivers.base import PathNotFound, Unavailable
from registry.errors import RegistryError, unwrap
from registry.storage import paths
from registry.storage.store import Storage

pytestmark = pytest.mark.s3
REPO = "lib/app"
MiB = 1024 * 1024


def digest_of(body: bytes) -> Digest:
    return Digest("sha256", hashlib.sha256(body).hexdigest())


async def pieces(body: bytes, size: int = 256 * 1024, fail_at: int | None = None) -> AsyncIterator[bytes]:
    for i in range(0, len(body), size):
        if fail_at is not None and i >= fail_at:
            raise ConnectionResetError("client went away")
        yield body[i : i + size]
        await trio.lowlevel.checkpoint()


async def leftovers(driver) -> tuple[list, list]:  # type: ignore[no-untyped-def]
    uploads, _ = await driver.api.list_multipart_uploads("")
    keys = [p async for p in driver.walk("/")]
    return uploads, [k.path for k in keys if k.path.endswith(".s3part")]


async def assert_nothing_visible(driver, d: Digest) -> None:  # type: ignore[no-untyped-def]
    """No blob at ``d``'s address, no open multipart upload, no writer state object."""
    with pytest.raises(PathNotFound):
        await driver.stat(paths.blob_data(d))
    assert await leftovers(driver) == ([], [])


@pytest.mark.parametrize("size", [100_000, 12 * MiB])  # one PutObject; a multipart upload
async def test_a_whole_blob_in_one_request_is_written_in_place_without_a_copy(size):
    async with s3_support.open_proxied_driver(chunksize=5 * MiB) as (driver, proxy):
        storage = Storage(driver)
        body = os.urandom(size)
        d = digest_of(body)
        upload = await storage.uploads.start(REPO)
        proxy.seen.clear()
        got = await storage.uploads.finish(REPO, upload.id, d, pieces(body))
        assert got == size
        assert await driver.get_content(paths.blob_data(d)) == body
        assert await storage.blobs.is_linked(REPO, d)
        copies = [r for r in proxy.seen if "x-amz-copy-source" in r.headers]
        assert copies == []
        # the bytes crossed to S3 once, at the blob's own key
        written = [r for r in proxy.seen if r.method == "PUT" and r.path.endswith("/data")]
        assert sum(r.body_size for r in written) == size
        # (the session's writer lease is the only object written under _uploads)
        uploaded = [r.path for r in proxy.seen if "_uploads" in r.path and r.body_size]
        assert all(p.endswith("/lease") for p in uploaded), uploaded
        assert await leftovers(driver) == ([], [])
        if size > 5 * MiB:
            assert proxy.assert_equal_parts() == 1


async def test_a_wrong_digest_leaves_nothing_behind():
    async with s3_support.open_proxied_driver(chunksize=5 * MiB) as (driver, _):
        storage = Storage(driver)
        body = os.urandom(11 * MiB)
        wrong = digest_of(b"something else")
        upload = await storage.uploads.start(REPO)
        with pytest.raises(RegistryError) as err:
            await storage.uploads.finish(REPO, upload.id, wrong, pieces(body))
        assert err.value.code.name == "DIGEST_INVALID"
        await assert_nothing_visible(driver, wrong)
        assert not await storage.blobs.is_linked(REPO, wrong)


async def test_a_client_going_away_mid_body_leaves_nothing_behind():
    async with s3_support.open_proxied_driver(chunksize=5 * MiB) as (driver, _):
        storage = Storage(driver)
        body = os.urandom(12 * MiB)
        d = digest_of(body)
        upload = await storage.uploads.start(REPO)
        with pytest.raises(BaseException) as err:
            await storage.uploads.finish(REPO, upload.id, d, pieces(body, fail_at=11 * MiB))
        assert isinstance(unwrap(err.value), ConnectionResetError), err.value
        await assert_nothing_visible(driver, d)
        # and the client's retry, in a new session, succeeds
        again = await storage.uploads.start(REPO)
        assert await storage.uploads.finish(REPO, again.id, d, pieces(body)) == len(body)
        assert await driver.get_content(paths.blob_data(d)) == body


async def test_s3_failing_mid_write_gives_a_retryable_error_and_leaves_nothing():
    async with s3_support.open_proxied_driver(chunksize=5 * MiB) as (driver, proxy):
        storage = Storage(driver)
        body = os.urandom(12 * MiB)
        d = digest_of(body)
        upload = await storage.uploads.start(REPO)
        proxy.rules.append(lambda r: "500" if r.method == "PUT" and "partNumber" in r.query else None)
        with pytest.raises(Exception) as err:
            await storage.uploads.finish(REPO, upload.id, d, pieces(body))
        assert isinstance(unwrap(err.value), Unavailable), err.value  # answered as a 503
        proxy.rules.clear()
        await assert_nothing_visible(driver, d)


async def test_sessions_that_already_hold_bytes_take_the_usual_path():
    async with s3_support.open_proxied_driver(chunksize=5 * MiB) as (driver, proxy):
        storage = Storage(driver)
        body = os.urandom(7 * MiB)
        d = digest_of(body)
        upload = await storage.uploads.start(REPO)
        await storage.uploads.append(REPO, upload.id, pieces(body[: 3 * MiB]))
        proxy.seen.clear()
        await storage.uploads.finish(REPO, upload.id, d, pieces(body[3 * MiB :]), start=3 * MiB)
        assert await driver.get_content(paths.blob_data(d)) == body
        assert any("_uploads" in r.path for r in proxy.seen if r.method == "PUT")
        assert await leftovers(driver) == ([], [])


@pytest.mark.usefixtures("resumable_sha256")
async def test_a_replica_finishes_a_streamed_upload_from_the_saved_hash_state_without_reading_it():
    """docker's PATCH then PUT, the PUT on another replica: it resumes the sha256 state the
    PATCH saved (one small GET), instead of downloading the whole upload to re-hash it."""
    async with s3_support.open_proxied_driver(chunksize=5 * MiB) as (driver, proxy):
        first, second = Storage(driver), Storage(driver)  # no shared process memory
        body = os.urandom(11 * MiB + 3)
        d = digest_of(body)
        upload = await first.uploads.start(REPO)
        await first.uploads.append(REPO, upload.id, pieces(body[: 7 * MiB + 1]))
        proxy.seen.clear()
        await second.uploads.finish(REPO, upload.id, d, pieces(body[7 * MiB + 1 :]), start=7 * MiB + 1)
        reads = sorted(
            r.path.rsplit("/_uploads/", 1)[1].split("/", 1)[1]
            for r in proxy.seen
            if r.method == "GET" and "/_uploads/" in r.path
        )
        # the writer's own small multipart state, and the hash state: never "data" itself
        assert reads == ["data.s3part", f"hashstates/sha256/{7 * MiB + 1}"]
        assert await driver.get_content(paths.blob_data(d)) == body
        assert await leftovers(driver) == ([], [])
