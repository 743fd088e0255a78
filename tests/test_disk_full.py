"""A full disk (issue 12, item 6), on a real 4 MiB tmpfs served by the real app.

Every write that finds no space answers 507 with the OCI JSON envelope (the OS reason in
``detail``) and ``Retry-After``, logs one line without a traceback, and leaves nothing in
``_uploads`` the purger would not remove; once space is freed the same process works
again. (The driver-level mapping of each call's OSError: tests/test_filesystem_oserrors.py.)
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest
import trio
from conftest import Served, start_app
from oci import OCI_MANIFEST, descriptor, digest, push_blob, push_image
from tmpfs_support import PAGE, fill, tmpfs_fixture

from registry.drivers.filesystem import FilesystemDriver
from registry.storage import paths
from registry.storage.purge import purge_uploads
from registry.storage.store import Storage

TMPFS_OPTIONS = "size=4m,mode=0755"  # small enough to fill at once, big enough for a push
TEST_TIMEOUT_S = 60  # every test here takes well under a second; a hang fails, not blocks
BLOB = os.urandom(256 * 1024)  # more than a full disk takes; a single write (COALESCE)

Request = Callable[[], Awaitable[httpx.Response]]


small_fs = tmpfs_fixture(TMPFS_OPTIONS)


@pytest.fixture
async def disk_app(nursery: trio.Nursery, small_fs: Path) -> AsyncIterator[Served]:
    root = str(small_fs / "registry")
    url, app = await start_app(nursery, root)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        yield Served(url, client, root, app)


def undated_upload_dirs(root: str) -> list[str]:
    """Upload directories with no ``startedat`` (the reference's purger never removes them)."""
    repos = Path(root, "docker/registry/v2/repositories")
    return sorted(str(d) for d in repos.glob("**/_uploads/*") if not (d / "startedat").exists())


def upload_dirs(root: str) -> list[str]:
    return sorted(str(d) for d in Path(root, "docker/registry/v2/repositories").glob("**/_uploads/*"))


def assert_storage_full(r: httpx.Response) -> None:
    assert r.status_code == 507, r.text
    assert int(r.headers["retry-after"]) > 0
    body = r.json()
    assert [e["code"] for e in body["errors"]] == ["UNAVAILABLE"], body
    assert "storage full" in body["errors"][0]["message"]
    assert "ENOSPC" in body["errors"][0]["detail"]["reason"], body


def assert_one_line_each(caplog: pytest.LogCaptureFixture, failures: int) -> None:
    """One warning per failing request, none with a traceback, nothing logged as an error."""
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    lines = [r.getMessage() for r in caplog.records if r.name == "registry.http"]
    assert len(lines) == failures and all("ENOSPC" in line for line in lines), lines


# Each case: with space, prepare what the request needs; return the request to send
# once the disk is full.


async def post(c: httpx.AsyncClient) -> Request:
    return lambda: c.post("/v2/app/blobs/uploads/")


async def post_with_digest(c: httpx.AsyncClient) -> Request:
    return lambda: c.post("/v2/app/blobs/uploads/", params={"digest": digest(BLOB)}, content=BLOB)


async def session(c: httpx.AsyncClient) -> str:
    r = await c.post("/v2/app/blobs/uploads/")
    assert r.status_code == 202, r.text
    return r.headers["location"]


async def monolithic_put(c: httpx.AsyncClient) -> Request:
    loc = await session(c)
    return lambda: c.put(loc, params={"digest": digest(BLOB)}, content=BLOB)


async def streamed_patch(c: httpx.AsyncClient) -> Request:
    loc = await session(c)

    async def pieces() -> AsyncIterator[bytes]:  # no length: chunked, as docker pushes
        for i in range(0, len(BLOB), 64 * 1024):
            yield BLOB[i : i + 64 * 1024]

    return lambda: c.patch(loc, content=pieces())


async def chunked_patch(c: httpx.AsyncClient) -> Request:
    loc = await session(c)
    return lambda: c.patch(loc, content=BLOB, headers={"Content-Range": f"0-{len(BLOB) - 1}"})


async def manifest_put(c: httpx.AsyncClient) -> Request:
    config, layer = b'{"architecture":"amd64","os":"linux"}', b"a layer"
    await push_blob(c, "app", config)
    await push_blob(c, "app", layer)
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor("application/vnd.oci.image.config.v1+json", config),
        "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", layer)],
    }
    body = json.dumps(doc).encode()
    return lambda: c.put(
        "/v2/app/manifests/v1", content=body, headers={"Content-Type": OCI_MANIFEST}
    )


@pytest.mark.parametrize(
    "prepare",
    [post, post_with_digest, monolithic_put, streamed_patch, chunked_patch, manifest_put],
)
async def test_a_write_on_a_full_disk_answers_507_with_retry_after_and_leaves_nothing_unpurgeable(
    disk_app: Served,
    small_fs: Path,
    caplog: pytest.LogCaptureFixture,
    prepare: Callable[[httpx.AsyncClient], Awaitable[Request]],
) -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        request = await prepare(disk_app.client)
        fill(small_fs)
        caplog.clear()
        caplog.set_level(logging.INFO)
        assert_storage_full(await request())
        assert_one_line_each(caplog, failures=1)
        # Nothing the purger would not remove: no directory without startedat, and a
        # purge (everything counts as old) empties _uploads, on the still-full disk.
        assert undated_upload_dirs(disk_app.root) == []
        st = disk_app.app.storage
        report = await purge_uploads(st.driver, st.uploads, time.time() + 3600)
        assert report.errors == []
        assert upload_dirs(disk_app.root) == []


async def test_freed_space_works_again_and_a_failed_chunk_can_be_sent_again(
    disk_app: Served, small_fs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    c = disk_app.client
    with trio.fail_after(TEST_TIMEOUT_S):
        first, rest = BLOB[:100_000], BLOB[100_000:]
        pulled = await push_blob(c, "app", b"pushed before the disk filled up")
        loc = await session(c)
        r = await c.patch(loc, content=first, headers={"Content-Range": "0-99999"})
        assert r.status_code == 202, r.text
        loc = r.headers["location"]
        # Room for part of the next chunk only: the failed append must not keep it.
        filler = fill(small_fs, leave=16 * PAGE)
        chunk_range = {"Content-Range": f"100000-{len(BLOB) - 1}"}
        assert_storage_full(await c.patch(loc, content=rest, headers=chunk_range))
        r = await c.get(loc)
        assert r.status_code == 204 and r.headers["range"] == "0-99999"
        r = await c.get(f"/v2/app/blobs/{pulled}")  # pulls need no space
        assert r.status_code == 200 and digest(r.content) == pulled
        # The cut-back append freed its pages; with none left a POST fails too. Then
        # space comes back, with no restart.
        more = fill(small_fs)
        assert_storage_full(await c.post("/v2/app/blobs/uploads/"))
        filler.unlink()
        more.unlink()
        r = await c.patch(loc, content=rest, headers=chunk_range)
        assert r.status_code == 202, r.text
        r = await c.put(r.headers["location"], params={"digest": digest(BLOB)})
        assert r.status_code == 201, r.text
        r = await c.get(f"/v2/app/blobs/{digest(BLOB)}")
        assert r.status_code == 200 and digest(r.content) == digest(BLOB)
        manifest_digest, body = await push_image(c, "app", "v1", layers=(BLOB,))
        r = await c.get("/v2/app/manifests/v1", headers={"Accept": OCI_MANIFEST})
        assert r.status_code == 200 and r.content == body
        assert r.headers["docker-content-digest"] == manifest_digest
        assert not [rec for rec in caplog.records if rec.exc_info or rec.levelno >= logging.ERROR]


async def test_a_read_only_volume_answers_503_with_the_os_reason_and_one_line(
    disk_app: Served, small_fs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    c = disk_app.client
    with trio.fail_after(TEST_TIMEOUT_S):
        await push_blob(c, "app", b"before")  # the storage tree exists
        done = await trio.run_process(
            ["mount", "-o", "remount,ro", str(small_fs)], check=False, capture_stderr=True
        )
        assert done.returncode == 0, done.stderr
        caplog.set_level(logging.INFO)
        r = await c.post("/v2/app/blobs/uploads/")
        assert r.status_code == 503, r.text
        error = r.json()["errors"][0]
        assert error["code"] == "UNAVAILABLE" and "EROFS" in error["detail"]["reason"], error
        assert not [rec for rec in caplog.records if rec.exc_info or rec.levelno >= logging.ERROR]
        lines = [rec.getMessage() for rec in caplog.records if rec.name == "registry.http"]
        assert len(lines) == 1 and "EROFS" in lines[0], lines


@pytest.mark.usefixtures("resumable_sha256")
async def test_a_patch_whose_bytes_fit_but_whose_hash_state_does_not_is_accepted(
    disk_app: Served, small_fs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The bytes are stored; only the saved hash state (an optimisation) has no room."""
    c = disk_app.client
    chunk = BLOB[: 32 * PAGE]
    with trio.fail_after(TEST_TIMEOUT_S):
        loc = await session(c)
        # exactly the chunk's pages, and one for the writer lease (upload_lease.py)
        filler = fill(small_fs, leave=len(chunk) + PAGE)
        caplog.set_level(logging.INFO)
        r = await c.patch(loc, content=chunk, headers={"Content-Range": f"0-{len(chunk) - 1}"})
        assert r.status_code == 202, r.text
        assert r.headers["range"] == f"0-{len(chunk) - 1}"
        assert not [rec for rec in caplog.records if rec.exc_info or rec.levelno >= logging.ERROR]
        assert any("hash state" in rec.getMessage() for rec in caplog.records)
        filler.unlink()
        r = await c.put(r.headers["location"], params={"digest": digest(chunk)})
        assert r.status_code == 201, r.text
        r = await c.get(f"/v2/app/blobs/{digest(chunk)}")
        assert digest(r.content) == digest(chunk)


async def test_the_purger_removes_old_upload_directories_without_startedat(tmp_path: Path) -> None:
    """A crash between making ``_uploads/<id>/`` and writing its startedat leaves a
    directory no session owns: gone once its newest mtime (its own or a file's) is older
    than the purge age; younger ones stay (a POST may be writing startedat right now)."""
    storage = Storage(FilesystemDriver(str(tmp_path)))
    week = 7 * 86400.0
    now = time.time()
    old, empty_old, young, old_dir_new_file = (f"{c * 8}-0000-4000-8000-{'0' * 12}" for c in "abcd")
    for upload_id in (old, young, old_dir_new_file):
        await storage.driver.put_content(paths.upload_data("app", upload_id), b"partial")
    os.makedirs(tmp_path / paths.upload_dir("app", empty_old).lstrip("/"))
    for upload_id in (old, empty_old, old_dir_new_file):
        d = tmp_path / paths.upload_dir("app", upload_id).lstrip("/")
        for p in [*d.iterdir(), d] if upload_id != old_dir_new_file else [d]:
            os.utime(p, (now - 2 * week, now - 2 * week))
    live = (await storage.uploads.start("app")).id
    with trio.fail_after(TEST_TIMEOUT_S):
        report = await purge_uploads(storage.driver, storage.uploads, now - week)
    assert report.errors == []
    assert sorted(report.purged) == [("app", old), ("app", empty_old)]
    left = {i for i, _ in await storage.uploads.list_sessions("app")}
    assert left == {young, old_dir_new_file, live}
