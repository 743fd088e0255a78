"""S3Driver against a real S3-speaking server (moto, signature checking on). No mocks of S3.

What is S3's own: the key layout under rootdirectory, request counts, multipart parts and
their state across requests and replicas, server-side moves, paged listings, redirects,
TLS, the multipart purge sweep and the part memory budget. The promises every driver makes
are in test_driver_contract.py (which runs them on S3 too); faults and retries are in
test_s3_faults.py.
"""

from __future__ import annotations

import hashlib
import logging
import time
import tracemalloc
from collections.abc import AsyncIterator

import httpx
import pytest
import s3_support  # tests/ is on sys.path under pytest (rootdir conftest)
import trio

from registry.drivers import base
from registry.drivers.s3.driver import S3Driver
from registry.drivers.s3.writer import STATE_SUFFIX

pytestmark = pytest.mark.s3
open_s3_driver = s3_support.open_s3_driver
MiB = 1024 * 1024
PART = 5 * MiB  # chunksize used by s3_support (the S3/R2 minimum)
BLOB = "/docker/registry/v2/blobs/sha256/ab/abcdef/data"
UPLOAD = "/docker/registry/v2/repositories/lib/app/_uploads/0123-4567/data"


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic, incompressible-enough bytes."""
    block = hashlib.sha256(str(seed).encode()).digest() * 2048  # 64 KiB
    return (block * (size // len(block) + 1))[:size]


def bucket_keys(driver: S3Driver) -> list[str]:
    client = s3_support.moto_server().boto3()
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=driver.params.bucket)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def open_uploads(driver: S3Driver) -> list[str]:
    client = s3_support.moto_server().boto3()
    answer = client.list_multipart_uploads(Bucket=driver.params.bucket)
    return [upload["Key"] for upload in answer.get("Uploads", [])]


async def write_all(w: base.FileWriter, data: bytes, piece: int = MiB) -> None:
    for start in range(0, len(data), piece):
        await w.write(data[start : start + piece])


# --- keys and small objects ---------------------------------------------------------------


async def test_keys_follow_the_reference_layout_under_rootdirectory() -> None:
    async with open_s3_driver(rootdirectory="/reg/") as driver:
        await driver.put_content(BLOB, b"x")
        keys = await trio.to_thread.run_sync(bucket_keys, driver)
        assert keys == ["reg" + BLOB]


async def test_rootdirectory_slash_means_the_bucket_root() -> None:
    async with open_s3_driver(rootdirectory="/") as driver:
        await driver.put_content(BLOB, b"x")
        assert await trio.to_thread.run_sync(bucket_keys, driver) == [BLOB[1:]]
        assert await driver.list("/") == ["/docker"]




async def test_stat_miss_costs_one_listing_after_the_head() -> None:
    async with s3_support.open_proxied_driver() as (driver, proxy):
        await driver.put_content(BLOB, b"x")
        proxy.seen.clear()
        with pytest.raises(base.PathNotFound):
            await driver.stat(BLOB.replace("abcdef", "abcdee"))
        assert [(r.method, "list-type" in r.query) for r in proxy.seen] == [
            ("HEAD", False),
            ("GET", True),
        ]
        proxy.seen.clear()
        assert (await driver.stat(BLOB)).size == 1
        assert [r.method for r in proxy.seen] == ["HEAD"]


async def test_stat_finds_state_and_directory_past_pages_of_siblings() -> None:
    async with open_s3_driver() as driver:
        driver.list_page_size = 1  # every sibling is a page of its own
        base_path = "/r/data"
        for sibling in ("-1", "-2/x", "_z", ".a", ".s3parta", "0"):
            await driver.put_content(base_path + sibling, b"s")
        with pytest.raises(base.PathNotFound):
            await driver.stat(base_path)
        await driver.put_content(base_path + "/child", b"c")
        assert (await driver.stat(base_path)).is_dir
        async with driver.writer(base_path) as w:
            await w.write(b"123")
        info = await driver.stat(base_path)
        assert (info.size, info.is_dir) == (3, False)
        await driver.delete(base_path + "/child")
        assert (await driver.stat(base_path)).size == 3



# --- reading ------------------------------------------------------------------------------


async def read(driver: S3Driver, path: str, offset: int = 0, length: int | None = None) -> bytes:
    async with driver.reader(path, offset, length) as chunks:
        return b"".join([chunk async for chunk in chunks])



async def test_reader_streams_in_large_chunks_not_the_whole_object() -> None:
    data = payload(6 * MiB)
    async with open_s3_driver() as driver:
        await driver.put_content(BLOB, data)
        async with driver.reader(BLOB) as chunks:
            sizes = [len(chunk) async for chunk in chunks]
        assert sum(sizes) == len(data)
        assert len(sizes) >= 6 and max(sizes) <= MiB



# --- writing ------------------------------------------------------------------------------


async def test_small_write_commits_as_one_object_and_leaves_no_state() -> None:
    async with open_s3_driver() as driver:
        async with driver.writer(UPLOAD) as w:
            await w.write(b"abc")
            await w.write(b"def")
            assert w.size == 6
            await w.commit()
        assert await driver.get_content(UPLOAD) == b"abcdef"
        keys = await trio.to_thread.run_sync(bucket_keys, driver)
        assert not [k for k in keys if k.endswith(STATE_SUFFIX)]
        assert await trio.to_thread.run_sync(open_uploads, driver) == []


async def test_multipart_write_across_requests_and_replicas() -> None:
    """Three 'PATCH' writers on two drivers (replicas), odd piece sizes, then commit."""
    data = payload(17 * MiB + 123)
    cuts = [0, 3 * MiB + 1, 11 * MiB + 7, len(data)]
    async with open_s3_driver() as first:
        second = S3Driver.from_params(
            s3_support.moto_server().params(first.params.bucket), redirect_disable=True
        )
        try:
            replicas = [first, second, first]
            for n, driver in enumerate(replicas):
                async with driver.writer(UPLOAD, append=n > 0) as w:
                    assert w.size == cuts[n]
                    await write_all(w, data[cuts[n] : cuts[n + 1]], piece=700_000)
                info = await second.stat(UPLOAD)
                assert (info.size, info.is_dir) == (cuts[n + 1], False)
                with pytest.raises(base.PathNotFound):  # nothing visible before commit
                    await first.get_content(UPLOAD)
                assert await first.list(UPLOAD.rsplit("/", 1)[0]) == [UPLOAD]
            async with second.writer(UPLOAD, append=True) as w:
                assert w.size == len(data)
                await w.commit()
        finally:
            await second.aclose()
        assert await read(first, UPLOAD) == data
        assert await trio.to_thread.run_sync(open_uploads, first) == []


async def test_all_non_final_parts_are_equal() -> None:
    """R2: equal parts, last no larger -- checked on the wire through the proxy."""
    data = payload(23 * MiB + 5)
    async with s3_support.open_proxied_driver() as (driver, proxy):
        cuts = [0, 1, 2 * MiB, 9 * MiB + 3, 15 * MiB, len(data)]
        for n in range(len(cuts) - 1):
            async with driver.writer(UPLOAD, append=n > 0) as w:
                await write_all(w, data[cuts[n] : cuts[n + 1]], piece=1_234_567)
        async with driver.writer(UPLOAD, append=True) as w:
            await w.commit()
        assert await read(driver, UPLOAD) == data
        assert proxy.assert_equal_parts() == 1
        sizes = next(iter(proxy.part_sizes().values()))
        assert max(sizes.values()) == PART
        assert len(sizes) == 5  # 4 full parts + the 3 MiB remainder


async def test_parts_upload_concurrently_with_bounded_window() -> None:
    data = payload(30 * MiB)
    async with s3_support.open_proxied_driver(parallelparts=3) as (driver, proxy):
        in_flight = 0
        peak = 0
        gate = trio.Event()

        def count(request: s3_support.SeenRequest) -> str | None:
            nonlocal in_flight, peak
            if request.method == "PUT" and "partNumber" in request.query:
                in_flight += 1
                peak = max(peak, in_flight)
            return None

        proxy.rules.append(count)
        async with driver.writer(UPLOAD) as w:
            await write_all(w, data, piece=4 * MiB)
            await w.commit()
        gate.set()
        assert await driver.get_content(UPLOAD) == data
        # The proxy counts arrivals; every part arrived while at most 3 could be pending.
        assert peak >= 2
        assert len(w._limiter.statistics().borrowers) == 0  # type: ignore[attr-defined]


async def test_append_false_drops_an_earlier_uncommitted_upload() -> None:
    async with open_s3_driver() as driver:
        async with driver.writer(UPLOAD) as w:
            await write_all(w, payload(6 * MiB))
        assert await trio.to_thread.run_sync(open_uploads, driver) != []
        async with driver.writer(UPLOAD, append=False) as w:
            assert w.size == 0
            await w.write(b"fresh")
            await w.commit()
        assert await driver.get_content(UPLOAD) == b"fresh"
        assert await trio.to_thread.run_sync(open_uploads, driver) == []


async def test_cancel_aborts_the_multipart_upload_and_removes_everything() -> None:
    """The driver-level promises of cancel() are in the contract suite; here: on S3."""
    async with open_s3_driver() as driver:
        async with driver.writer(UPLOAD) as w:
            await write_all(w, payload(12 * MiB))
        async with driver.writer(UPLOAD, append=True) as w:
            await w.cancel()
            await w.cancel()  # idempotent
        assert await trio.to_thread.run_sync(open_uploads, driver) == []
        assert await trio.to_thread.run_sync(bucket_keys, driver) == []




async def test_writer_cancelled_mid_part_leaves_a_resumable_consistent_state() -> None:
    """A client disconnect while a part is on the wire: the state is consistent, resumable,
    and the final content is exactly what was accepted."""
    data = payload(14 * MiB)
    async with s3_support.open_proxied_driver() as (driver, proxy):
        proxy.fail("stall", 1, lambda r: r.method == "PUT" and r.query.get("partNumber") == "2")
        accepted = 0
        with trio.move_on_after(3):
            async with driver.writer(UPLOAD) as w:
                for start in range(0, len(data), MiB):
                    await w.write(data[start : start + MiB])
                    accepted = w.size
                await w.commit()  # never reached: part 2 stalls, write waits for it
        assert accepted > 2 * PART  # part 2 was on the wire when the scope was cancelled
        size = (await driver.stat(UPLOAD)).size
        assert size <= accepted
        with pytest.raises(base.PathNotFound):
            await driver.get_content(UPLOAD)
        async with driver.writer(UPLOAD, append=True) as w:
            assert w.size == size
            await write_all(w, data[size:])
            await w.commit()
        assert await read(driver, UPLOAD) == data
        assert proxy.assert_equal_parts() == 1


async def test_writer_cancelled_then_session_deleted_leaves_no_upload() -> None:
    async with open_s3_driver() as driver:
        with trio.move_on_after(0.5):
            async with driver.writer(UPLOAD) as w:
                while True:
                    await w.write(payload(MiB))
        await driver.delete(UPLOAD.rsplit("/", 1)[0])
        assert await trio.to_thread.run_sync(open_uploads, driver) == []
        assert await trio.to_thread.run_sync(bucket_keys, driver) == []


# --- listing, walking, deleting, moving ---------------------------------------------------


async def test_list_pages_with_a_delimiter_and_never_walks_the_tree() -> None:
    async with s3_support.open_proxied_driver() as (driver, proxy):
        driver.list_page_size = 2
        repos = [f"/docker/registry/v2/repositories/r{i}" for i in range(5)]
        for repo in repos:
            for tag in ("a", "b", "c"):
                await driver.put_content(f"{repo}/_manifests/tags/{tag}/current/link", b"x")
        await driver.put_content("/docker/registry/v2/repositories/file", b"f")
        before = len(proxy.seen)
        children = await driver.list("/docker/registry/v2/repositories")
        assert children == sorted([*repos, "/docker/registry/v2/repositories/file"])
        listing = [r for r in proxy.seen[before:] if r.query.get("list-type") == "2"]
        assert len(listing) == 3  # 6 children, 2 per page
        assert all(r.query.get("delimiter") == "/" for r in listing)
        with pytest.raises(base.PathNotFound):
            await driver.list("/docker/registry/v2/nothing")


async def test_walk_is_recursive_sorted_and_paged() -> None:
    async with open_s3_driver() as driver:
        driver.list_page_size = 3
        paths = sorted(f"/w/{a}/{b}" for a in "xyz" for b in ("1", "2", "3/deep"))
        for p in paths:
            await driver.put_content(p, p.encode())
        infos = [info async for info in driver.walk("/w")]
        assert [i.path for i in infos] == paths
        assert all(not i.is_dir and i.size == len(i.path) for i in infos)
        with pytest.raises(base.PathNotFound):
            _ = [info async for info in driver.walk("/nothing")]



async def test_delete_tree_in_batches_and_single_objects() -> None:
    async with open_s3_driver() as driver:
        driver.delete_batch = 4
        driver.list_page_size = 5
        for i in range(11):
            await driver.put_content(f"/t/d/{i:02}", b"x")
        await driver.put_content("/t/keep", b"k")
        await driver.put_content("/t/d-sibling", b"s")
        await driver.delete("/t/d")
        assert await driver.list("/t") == ["/t/d-sibling", "/t/keep"]
        await driver.delete("/t/keep")
        with pytest.raises(base.PathNotFound):
            await driver.delete("/t/keep")
        assert await driver.get_content("/t/d-sibling") == b"s"


async def test_move_small_is_a_server_side_copy() -> None:
    async with s3_support.open_proxied_driver() as (driver, proxy):
        await driver.put_content(UPLOAD, b"content")
        before = len(proxy.seen)
        await driver.move(UPLOAD, BLOB)
        assert await driver.get_content(BLOB) == b"content"
        with pytest.raises(base.PathNotFound):
            await driver.stat(UPLOAD)
        moved = proxy.seen[before:]
        assert sum(r.body_size for r in moved) == 0  # no byte passed through us
        assert any("x-amz-copy-source" in r.headers for r in moved)
        with pytest.raises(base.PathNotFound):
            await driver.move(UPLOAD, BLOB)


async def test_move_large_uses_equal_upload_part_copies() -> None:
    data = payload(17 * MiB + 1)
    async with s3_support.open_proxied_driver(
        multipartcopythresholdsize=8 * MiB,
        multipartcopychunksize=5 * MiB,
        multipartcopymaxconcurrency=3,
    ) as (driver, proxy):
        await driver.put_content(UPLOAD, data)
        before = len(proxy.seen)
        await driver.move(UPLOAD, BLOB)
        assert await read(driver, BLOB) == data
        copies = [r for r in proxy.seen[before:] if "x-amz-copy-source-range" in r.headers]
        assert len(copies) == 4
        assert sum(r.body_size for r in proxy.seen[before:]) < 4096  # XML only
        assert proxy.assert_equal_parts() == 1
        assert await trio.to_thread.run_sync(open_uploads, driver) == []


# --- redirects ----------------------------------------------------------------------------


async def test_redirect_url_is_a_working_presigned_get() -> None:
    # moto answers 500 to every presigned URL while IAM auth is on (botocore's too), so
    # this runs on the auth-less server; the signature itself is checked against
    # botocore's presigner in test_sigv4.py.
    async with open_s3_driver(auth=False) as driver:
        await driver.put_content(BLOB, b"0123456789")
        url = await driver.redirect_url(BLOB)
        assert url is not None and "X-Amz-Expires=1200" in url
        async with httpx.AsyncClient() as client:
            full = await client.get(url)
            ranged = await client.get(url, headers={"Range": "bytes=2-4"})
        assert (full.status_code, full.content) == (200, b"0123456789")
        assert (ranged.status_code, ranged.content) == (206, b"234")


async def test_redirect_disable_and_redirectendpoint() -> None:
    async with open_s3_driver(redirect_disable=True) as driver:
        assert await driver.redirect_url(BLOB) is None
    async with open_s3_driver(redirectendpoint="https://cdn.example.com") as driver:
        url = await driver.redirect_url(BLOB)
        assert url is not None
        assert url.startswith(f"https://cdn.example.com/{driver.params.bucket}/registry-root/")


# --- maintenance --------------------------------------------------------------------------


async def test_purge_aborts_only_old_multipart_uploads_under_the_root() -> None:
    async with open_s3_driver() as driver:
        for i in range(3):
            async with driver.writer(f"/up/{i}/data") as w:
                await w.write(payload(6 * MiB))
        client = s3_support.moto_server().boto3()
        other = await trio.to_thread.run_sync(
            lambda: client.create_multipart_upload(Bucket=driver.params.bucket, Key="other/x")
        )
        # moto reports every upload as initiated on 2010-11-10, so "young" is 100 years here.
        assert await driver.purge_multipart_uploads(100 * 365 * 86400) == 0
        assert await driver.purge_multipart_uploads(3600) == 3
        assert await trio.to_thread.run_sync(open_uploads, driver) == ["other/x"]
        await trio.to_thread.run_sync(
            lambda: client.abort_multipart_upload(
                Bucket=driver.params.bucket, Key="other/x", UploadId=other["UploadId"]
            )
        )


async def test_construction_never_contacts_s3() -> None:
    port = s3_support.free_port()  # nothing listens there
    driver = S3Driver.from_params(
        {
            "accesskey": "a",
            "secretkey": "b",
            "region": "auto",
            "bucket": "b",
            "regionendpoint": f"http://127.0.0.1:{port}",
        }
    )
    await driver.aclose()
    await driver.aclose()  # idempotent


# --- with the storage layer on top ----------------------------------------------------------


async def test_upload_purge_through_the_storage_layer_aborts_multipart_uploads() -> None:
    """storage/purge.py cancels stale sessions via writer(append=True).cancel(): on S3 that
    must abort the multipart upload and leave nothing behind."""
    from registry.storage.purge import purge_uploads
    from registry.storage.store import Storage

    async def body(data: bytes) -> AsyncIterator[bytes]:
        for start in range(0, len(data), 64 * 1024):
            yield data[start : start + 64 * 1024]

    async with open_s3_driver() as driver:
        storage = Storage(driver)
        upload = await storage.uploads.start("lib/app")
        grown = await storage.uploads.append("lib/app", upload.id, body(payload(7 * MiB)))
        assert grown.size == 7 * MiB
        assert await trio.to_thread.run_sync(open_uploads, driver) != []
        report = await purge_uploads(driver, storage.uploads, older_than=time.time() + 60)
        assert report.purged == [("lib/app", upload.id)] and not report.errors
        assert await trio.to_thread.run_sync(open_uploads, driver) == []
        assert await trio.to_thread.run_sync(bucket_keys, driver) == []


async def test_many_writers_share_a_bounded_number_of_parts_in_flight() -> None:
    """16 uploads at once: part uploads in flight never exceed the driver-wide slots."""
    data = [payload(11 * MiB, seed) for seed in range(16)]
    async with open_s3_driver(maxconcurrency=8, parallelparts=4) as driver:
        slots = driver._part_slots
        assert slots.total_tokens == 6
        peak = 0

        async def sample() -> None:
            nonlocal peak
            while True:
                peak = max(peak, slots.borrowed_tokens)
                await trio.sleep(0.001)

        async def push(n: int) -> None:
            async with driver.writer(f"/many/{n}/data") as w:
                await write_all(w, data[n])
                await w.commit()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sample)
            async with trio.open_nursery() as pushers:
                for n in range(16):
                    pushers.start_soon(push, n)
            nursery.cancel_scope.cancel()
        assert peak == slots.total_tokens  # saturated, never above
        for n in range(16):
            assert await driver.get_content(f"/many/{n}/data") == data[n]
        assert slots.borrowed_tokens == 0


async def test_memory_of_many_writers_stays_within_the_part_budget() -> None:
    """maxbuffermemory bounds the bytes of parts alive (buffered, in flight, or sent and
    not yet freed), not just the part uploads running: 8 writers, a 2-part budget."""
    data = payload(3 * PART)
    async with open_s3_driver(maxbuffermemory=2 * PART, parallelparts=4) as driver:
        assert driver._part_slots.total_tokens == 2

        async def push(n: int) -> None:
            async with driver.writer(f"/budget/{n}/data") as w:
                await write_all(w, memoryview(data), piece=3 * MiB)  # spans parts
                await w.commit()

        tracemalloc.start()
        try:
            async with trio.open_nursery() as pushers:
                for n in range(8):
                    pushers.start_soon(push, n)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        # each slot: one part, handed to its upload without a copy and sent in small
        # copies (a full copy per part would make this 4 parts)
        assert peak < 2 * PART + 4 * MiB, f"peak {peak / MiB:.1f} MiB"
        assert await driver.get_content("/budget/7/data") == data



# --- TLS, skipverify, UNSIGNED-PAYLOAD --------------------------------------------------------


async def test_tls_endpoint_with_skipverify_and_unsigned_payload() -> None:
    """secure endpoint + skipverify (a self-signed certificate); over TLS the driver sends
    UNSIGNED-PAYLOAD instead of hashing every part."""
    server = await trio.to_thread.run_sync(s3_support.moto_tls_server)
    bucket = await trio.to_thread.run_sync(server.new_bucket)
    params = server.params(bucket, secure=True, skipverify=True)
    assert params["regionendpoint"].startswith("https://")
    driver = S3Driver.from_params(params)
    try:
        assert not driver.client.sign_payload
        data = payload(6 * MiB)
        async with driver.writer(UPLOAD) as w:
            await write_all(w, data)
            await w.commit()
        assert await read(driver, UPLOAD) == data
    finally:
        await driver.aclose()


async def test_tls_endpoint_without_skipverify_refuses_the_certificate(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = await trio.to_thread.run_sync(s3_support.moto_tls_server)
    driver = S3Driver.from_params(server.params("any", secure=True))
    driver.client.retry.max_attempts = 2
    caplog.set_level(logging.INFO, logger="registry.drivers.s3")
    try:
        for _ in range(3):
            with pytest.raises(base.Unavailable):
                await driver.get_content(BLOB)
        lines = [r.getMessage() for r in caplog.records if r.name == "registry.drivers.s3"]
        assert len(lines) == 1 and "CERTIFICATE_VERIFY_FAILED" in lines[0], lines
    finally:
        await driver.aclose()


async def test_unsigned_payload_is_accepted_by_a_signature_checking_server() -> None:
    async with open_s3_driver() as driver:
        driver.client.sign_payload = False  # as over TLS; moto (auth on) checks the rest
        async with driver.writer(UPLOAD) as w:
            await write_all(w, payload(6 * MiB))
            await w.commit()
        assert (await driver.stat(UPLOAD)).size == 6 * MiB



async def test_a_write_cancelled_before_its_part_is_submitted_loses_no_bytes() -> None:
    """A full part leaves the buffer only once it is submitted: a write cancelled while the
    multipart upload is still being created (S3 slow to answer) keeps the part buffered,
    so the saved state holds every accepted byte and the upload finishes with all of them."""
    data = payload(PART + MiB)
    async with s3_support.open_proxied_driver() as (driver, proxy):
        proxy.fail("stall", 1, lambda r: r.method == "POST" and "uploads" in r.query)
        async with driver.writer(UPLOAD) as w:
            with trio.move_on_after(1) as cancelled:
                await w.write(data[:PART])  # a full part: creates the multipart upload
            assert cancelled.cancelled_caught and w.size == PART
        proxy.rules.clear()
        async with driver.writer(UPLOAD, append=True) as w:
            assert w.size == PART
            await w.write(data[PART:])
            await w.commit()
        assert await read(driver, UPLOAD) == data
