"""S3 faults through a real proxy in front of moto: retries, give-ups, outages, cleanup.

The proxy (tests/s3_support.py FaultProxy) answers 503/SlowDown/429/500/403 itself, drops
connections before or after forwarding, truncates answers or stalls. Retries back off in
milliseconds here (RetryPolicy(base=5 ms)).
"""

from __future__ import annotations

import logging

import pytest
import s3_support
import trio
from s3_support import SeenRequest
from test_s3_driver import BLOB, UPLOAD, MiB, bucket_keys, open_uploads, payload, read, write_all

from registry.drivers import base
from registry.drivers.s3.client import RetryPolicy
from registry.drivers.s3.driver import S3Driver

pytestmark = pytest.mark.s3
LOGGER = "registry.drivers.s3"


def is_get(r: SeenRequest) -> bool:
    return r.method == "GET" and "list-type" not in r.query


def is_part(r: SeenRequest) -> bool:
    return r.method == "PUT" and "partNumber" in r.query


def is_complete(r: SeenRequest) -> bool:
    return r.method == "POST" and "uploadId" in r.query


@pytest.mark.parametrize("fault", ["503", "slowdown", "429", "500", "drop"])
async def test_idempotent_calls_retry_through_transient_faults(fault: str) -> None:
    async with s3_support.open_proxied_driver() as (driver, proxy):
        proxy.fail(fault, 2, lambda r: r.method == "PUT")
        proxy.fail(fault, 2, is_get)
        proxy.fail(fault, 2, lambda r: r.method == "HEAD")
        await driver.put_content(BLOB, b"payload")
        assert await driver.get_content(BLOB) == b"payload"
        assert (await driver.stat(BLOB)).size == 7
        faulted = [r for r in proxy.seen if r.fault == fault]
        assert len(faulted) == 6


async def test_retries_give_up_with_unavailable() -> None:
    async with s3_support.open_proxied_driver() as (driver, proxy):
        proxy.fail("503", -1, is_get)
        with pytest.raises(base.Unavailable):
            await driver.get_content(BLOB)
        assert len([r for r in proxy.seen if is_get(r)]) == driver.client.retry.max_attempts


async def test_backoff_is_exponential_with_jitter() -> None:
    policy = RetryPolicy(base=0.1, cap=5.0)
    for attempt in range(8):
        delays = [policy.delay(attempt) for _ in range(200)]
        assert max(delays) <= min(5.0, 0.1 * 2**attempt)
        assert len(set(delays)) > 100  # jittered, not a fixed schedule
    assert max(policy.delay(10) for _ in range(200)) > 2.5  # grows to the cap


async def test_a_429_waits_for_r2s_one_write_per_second_per_key() -> None:
    from registry.drivers.s3 import errors
    from registry.drivers.s3.client import S3Client

    policy = RetryPolicy(base=0.1, cap=5.0)
    client = S3Client.__new__(S3Client)  # only the delay arithmetic, no connections
    client.retry = policy
    throttled = errors.make_error(429, "TooManyRequests")
    slowdown = errors.make_error(503, "SlowDown")
    assert all(1.0 <= client._sleep_for(0, throttled) <= 1.5 for _ in range(100))
    assert all(client._sleep_for(0, slowdown) <= 0.1 for _ in range(100))
    slowdown.retry_after = 3.0
    assert client._sleep_for(0, slowdown) == 3.0


async def test_multipart_write_survives_faults_on_parts_and_complete() -> None:
    data = payload(16 * MiB + 3)
    async with s3_support.open_proxied_driver() as (driver, proxy):
        proxy.fail("slowdown", 2, is_part)
        proxy.fail("drop", 1, is_part)
        proxy.fail("500", 1, lambda r: r.method == "POST" and "uploads" in r.query)
        # The first Complete takes effect but its answer is lost: the retry finds the upload
        # gone (NoSuchUpload) and the driver checks the object instead of failing.
        proxy.fail("drop_after", 1, is_complete)
        async with driver.writer(UPLOAD) as w:
            await write_all(w, data)
            await w.commit()
        assert await read(driver, UPLOAD) == data
        assert proxy.assert_equal_parts() == 1
        assert await trio.to_thread.run_sync(open_uploads, driver) == []


async def test_state_persist_survives_a_throttled_state_key() -> None:
    """R2 allows one write per second per key (429): the state PUT is retried."""
    async with s3_support.open_proxied_driver() as (driver, proxy):
        proxy.fail("429", 2, lambda r: r.method == "PUT" and r.path.endswith(".s3part"))
        async with driver.writer(UPLOAD) as w:
            await w.write(b"abc")
        assert (await driver.stat(UPLOAD)).size == 3


async def test_failure_mid_multipart_leaves_no_upload_and_nothing_visible() -> None:
    """S3 failing mid-upload: the caller gets Unavailable (a retryable 5xx for the client),
    no multipart upload stays open, nothing half-written is visible."""
    async with s3_support.open_proxied_driver() as (driver, proxy):
        proxy.fail("500", -1, lambda r: is_part(r) and r.query["partNumber"] == "2")
        with pytest.raises(base.Unavailable):
            async with driver.writer(UPLOAD) as w:
                await write_all(w, payload(30 * MiB))
                await w.commit()
        assert await trio.to_thread.run_sync(open_uploads, driver) == []
        assert await trio.to_thread.run_sync(bucket_keys, driver) == []
        with pytest.raises(base.PathNotFound):
            await driver.stat(UPLOAD)


async def test_failed_commit_aborts_a_resumed_upload() -> None:
    data = payload(12 * MiB)
    async with s3_support.open_proxied_driver() as (driver, proxy):
        async with driver.writer(UPLOAD) as w:
            await write_all(w, data)
        assert await trio.to_thread.run_sync(open_uploads, driver) != []
        proxy.fail("500", -1, is_complete)
        with pytest.raises(base.Unavailable):
            async with driver.writer(UPLOAD, append=True) as w:
                await w.commit()
        assert await trio.to_thread.run_sync(open_uploads, driver) == []
        assert await trio.to_thread.run_sync(bucket_keys, driver) == []


async def test_failure_in_a_later_request_keeps_the_earlier_state() -> None:
    """A failing PATCH rolls back to what the previous PATCH persisted, nothing else."""
    data = payload(13 * MiB)
    async with s3_support.open_proxied_driver() as (driver, proxy):
        async with driver.writer(UPLOAD) as w:
            await write_all(w, data[: 6 * MiB])
        proxy.fail("503", -1, is_part)
        with pytest.raises(base.Unavailable):
            async with driver.writer(UPLOAD, append=True) as w:
                await write_all(w, data[6 * MiB : 12 * MiB])
        assert (await driver.stat(UPLOAD)).size == 6 * MiB
        proxy.rules.clear()
        async with driver.writer(UPLOAD, append=True) as w:
            await write_all(w, data[6 * MiB :])
            await w.commit()
        assert await read(driver, UPLOAD) == data
        assert await trio.to_thread.run_sync(open_uploads, driver) == []


async def test_reader_resumes_a_broken_stream_at_the_right_byte() -> None:
    data = payload(3 * MiB + 11)
    async with s3_support.open_proxied_driver() as (driver, proxy):
        await driver.put_content(BLOB, data)
        proxy.fail("truncate", 2, is_get)
        assert await read(driver, BLOB) == data
        assert await read(driver, BLOB, 100, 2 * MiB) == data[100 : 100 + 2 * MiB]
        ranges = [r.headers.get("range", "") for r in proxy.seen if is_get(r)]
        assert any(rng.startswith("bytes=") and rng != "bytes=100-2097251" for rng in ranges)


async def test_reader_refuses_an_object_replaced_mid_read() -> None:
    data = payload(2 * MiB)
    async with s3_support.open_proxied_driver() as (driver, proxy):
        await driver.put_content(BLOB, data)
        proxy.fail("truncate", 1, is_get)
        async with driver.reader(BLOB) as chunks:
            await driver.put_content(BLOB, payload(2 * MiB, seed=9))  # If-Match now fails
            with pytest.raises(base.Unavailable):
                _ = [chunk async for chunk in chunks]


async def test_wrong_secret_key_is_unavailable_at_once_with_one_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = s3_support.moto_server()
    bucket = await trio.to_thread.run_sync(server.new_bucket)
    driver = S3Driver.from_params(server.params(bucket, secretkey="not-the-secret"))
    caplog.set_level(logging.INFO, logger=LOGGER)
    try:
        start = trio.current_time()
        for _ in range(5):
            with pytest.raises(base.Unavailable):
                await driver.get_content(BLOB)
            with pytest.raises(base.Unavailable):
                await driver.stat(BLOB)
        assert trio.current_time() - start < 5  # no retry loop on a signature error
        lines = [r for r in caplog.records if r.name == LOGGER]
        assert len(lines) == 1, [r.getMessage() for r in lines]
        assert lines[0].levelno == logging.ERROR
        assert "SignatureDoesNotMatch" in lines[0].getMessage()
        assert driver.client.outage is not None
    finally:
        await driver.aclose()


async def test_missing_bucket_is_unavailable(caplog: pytest.LogCaptureFixture) -> None:
    server = s3_support.moto_server()
    driver = S3Driver.from_params(server.params("no-such-bucket-here"))
    caplog.set_level(logging.INFO, logger=LOGGER)
    try:
        with pytest.raises(base.Unavailable):
            await driver.put_content(BLOB, b"x")
        with pytest.raises(base.Unavailable):
            await driver.check_health()
        with pytest.raises(base.Unavailable):
            await driver.list("/")
        with pytest.raises(base.Unavailable):  # HEAD says 404; the listing says why
            await driver.stat(BLOB)
        lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
        assert len(lines) == 1 and "NoSuchBucket" in lines[0], lines
    finally:
        await driver.aclose()


async def test_forbidden_is_not_retried() -> None:
    async with s3_support.open_proxied_driver() as (driver, proxy):
        proxy.fail("403", -1, is_get)
        with pytest.raises(base.Unavailable):
            await driver.get_content(BLOB)
        assert len([r for r in proxy.seen if is_get(r)]) == 1


async def test_s3_down_at_startup_then_back(caplog: pytest.LogCaptureFixture) -> None:
    """The driver is built while nothing listens; calls fail fast with Unavailable and one
    log line; once S3 is reachable the same driver works and says so once."""
    server = await trio.to_thread.run_sync(s3_support.moto_server)
    bucket = await trio.to_thread.run_sync(server.new_bucket)
    port = s3_support.free_port()
    driver = S3Driver.from_params(server.params(bucket, regionendpoint=f"http://127.0.0.1:{port}"))
    driver.client.retry = RetryPolicy(base=0.005, cap=0.02)
    caplog.set_level(logging.INFO, logger=LOGGER)
    try:
        for _ in range(3):
            with pytest.raises(base.Unavailable):
                await driver.stat(BLOB)
        down = [r for r in caplog.records if r.name == LOGGER]
        assert len(down) == 1 and down[0].levelno == logging.ERROR
        async with trio.open_nursery() as nursery:
            await nursery.start(s3_support.FaultProxy(server.port, port).serve)
            await driver.put_content(BLOB, b"back")
            assert await driver.get_content(BLOB) == b"back"
            await driver.check_health()
            nursery.cancel_scope.cancel()
        lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
        assert len(lines) == 2 and "works again" in lines[1]
    finally:
        await driver.aclose()


async def test_deadline_on_a_stalled_request() -> None:
    async with s3_support.open_proxied_driver() as (driver, proxy):
        driver.client.call_timeout = 0.3
        driver.client.retry = RetryPolicy(max_attempts=2, base=0.005, cap=0.01)
        proxy.fail("stall", -1, lambda r: r.method == "HEAD")
        start = trio.current_time()
        with pytest.raises(base.DriverTimeout):
            await driver.stat(BLOB)
        assert trio.current_time() - start < 3


async def test_no_rejected_headers_are_ever_sent() -> None:
    """R2 rejects ACL, SSE, checksum and aws-chunked headers, and Expect: 100-continue."""
    async with s3_support.open_proxied_driver(storageclass="NONE") as (driver, proxy):
        async with driver.writer(UPLOAD) as w:
            await write_all(w, payload(11 * MiB))
        async with driver.writer(UPLOAD, append=True) as w:
            await w.commit()
        await driver.move(UPLOAD, BLOB)
        await read(driver, BLOB)
        await driver.delete("/docker")
        assert proxy.seen
        for request in proxy.seen:
            for name in request.headers:
                assert not name.startswith(
                    (
                        "x-amz-acl",
                        "x-amz-server-side-encryption",
                        "x-amz-checksum",
                        "x-amz-sdk-checksum",
                        "x-amz-trailer",
                        "x-amz-decoded-content-length",
                        "x-amz-storage-class",
                    )
                ), name
                assert name not in ("expect", "transfer-encoding"), name
            assert "aws-chunked" not in request.headers.get("content-encoding", "")
            assert "STREAMING" not in request.headers.get("x-amz-content-sha256", "")


async def test_storage_class_header_is_sent_unless_none() -> None:
    async with s3_support.open_proxied_driver(storageclass="REDUCED_REDUNDANCY") as (d, proxy):
        await d.put_content(BLOB, b"x")
        puts = [r for r in proxy.seen if r.method == "PUT"]
        assert puts[0].headers["x-amz-storage-class"] == "REDUCED_REDUNDANCY"


async def test_cancel_that_cannot_abort_keeps_the_state_for_a_later_try() -> None:
    async with s3_support.open_proxied_driver() as (driver, proxy):
        async with driver.writer(UPLOAD) as w:
            await write_all(w, payload(6 * MiB))
        proxy.fail("503", -1, lambda r: r.method == "DELETE" and "uploadId" in r.query)
        with pytest.raises(base.Unavailable):
            async with driver.writer(UPLOAD, append=True) as w:
                await w.cancel()
        assert (await driver.stat(UPLOAD)).size == 6 * MiB  # still there, still named
        proxy.rules.clear()
        await driver.delete(UPLOAD.rsplit("/", 1)[0])  # the session's removal aborts it
        assert await trio.to_thread.run_sync(open_uploads, driver) == []
        assert await trio.to_thread.run_sync(bucket_keys, driver) == []
