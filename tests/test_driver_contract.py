"""The shared driver contract suite (DESIGN.md, Layers): every driver passes the same tests.

Parametrized over filesystem, the in-memory fake, and S3 (a moto server with signature
checking on, from tests/s3_support.py). Every promise of ``registry/drivers/base.py`` that
holds for all drivers is tested here; test_s3_driver.py keeps only what is S3's own (request
counts, part sizes, multipart state, presigned URLs, TLS, purge, the memory budget).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from registry.drivers.base import (
    AlreadyExists,
    Driver,
    DriverError,
    InvalidOffset,
    InvalidPath,
    PathNotFound,
)
from registry.drivers.filesystem import FilesystemDriver
from registry.drivers.memory import MemoryDriver
from registry.storage import sha256state


@asynccontextmanager
async def _filesystem(tmp_path: Any) -> AsyncIterator[Driver]:
    d = FilesystemDriver(str(tmp_path / "fs"))
    yield d
    await d.aclose()


@asynccontextmanager
async def _memory(tmp_path: Any) -> AsyncIterator[Driver]:
    yield MemoryDriver()


@asynccontextmanager
async def _s3(tmp_path: Any) -> AsyncIterator[Driver]:
    from s3_support import open_s3_driver  # the S3 hook: a fresh bucket on moto

    async with open_s3_driver(chunksize=5 * 1024 * 1024) as d:
        yield d


FACTORIES = {"filesystem": _filesystem, "memory": _memory, "s3": _s3}
MiB = 1024 * 1024
# A bound per test so that a driver that hangs fails its test instead of the run; generous
# because S3 runs on moto, on a shared 2-core machine.
TEST_TIMEOUT_S = 120


@pytest.fixture(params=sorted(FACTORIES))
async def driver(request: Any, tmp_path: Any, nursery: trio.Nursery) -> AsyncIterator[Driver]:
    """Each driver in turn, with a watchdog: a test still running after TEST_TIMEOUT_S fails
    (pytest-trio cancels a test when a task in its fixture's ``nursery`` crashes)."""

    async def watchdog() -> None:
        await trio.sleep(TEST_TIMEOUT_S)
        raise TimeoutError(f"test still running after {TEST_TIMEOUT_S} s")

    nursery.start_soon(watchdog)
    async with FACTORIES[request.param](tmp_path) as d:
        yield d


async def _read(driver: Driver, path: str, offset: int = 0, length: int | None = None) -> bytes:
    out = bytearray()
    async with driver.reader(path, offset, length) as chunks:
        async for c in chunks:
            out += c
    return bytes(out)


async def test_put_get_stat_roundtrip(driver):
    await driver.put_content("/a/b/c", b"hello")
    assert await driver.get_content("/a/b/c") == b"hello"
    info = await driver.stat("/a/b/c")
    assert info.size == 5 and not info.is_dir and info.path == "/a/b/c"
    assert info.mtime > 0
    assert (await driver.stat("/a/b")).is_dir
    with pytest.raises(PathNotFound):
        await driver.get_content("/a/b/missing")
    with pytest.raises(PathNotFound):
        await driver.stat("/a/b/missing")
    await driver.put_content("/a/b/c", b"replaced")
    assert await driver.get_content("/a/b/c") == b"replaced"


async def test_missing_paths_raise_path_not_found(driver):
    with pytest.raises(PathNotFound):
        await driver.get_content("/nope/x")
    with pytest.raises(PathNotFound):
        await driver.stat("/nope/x")
    with pytest.raises(PathNotFound):
        await driver.list("/nope")
    with pytest.raises(PathNotFound):
        await driver.delete("/nope")
    with pytest.raises(PathNotFound):
        await driver.move("/nope/a", "/nope/b")
    with pytest.raises(PathNotFound):
        async with driver.reader("/nope/x"):
            pass


@pytest.mark.parametrize(
    "bad", ["relative", "/a/../b", "/a//b", "/a/./b", "/a/b/", "", "/a\x00b", "/ü", "/a b"]
)
async def test_invalid_paths_are_refused(driver, bad):
    with pytest.raises(InvalidPath):
        await driver.put_content(bad, b"x")
    with pytest.raises(InvalidPath):
        await driver.get_content(bad)
    for call in (driver.stat, driver.list, driver.delete):
        with pytest.raises(InvalidPath):
            await call(bad)
    with pytest.raises(InvalidPath):
        await driver.move(bad, "/ok/dst")
    with pytest.raises(InvalidPath):
        await driver.move("/ok/src", bad)
    with pytest.raises(InvalidPath):
        async with driver.reader(bad):
            pass
    with pytest.raises(InvalidPath):
        async with driver.writer(bad):
            pass
    with pytest.raises(InvalidPath):
        _ = [info async for info in driver.walk(bad)]


async def test_list_returns_immediate_children_sorted(driver):
    for p in ("/l/b/1", "/l/a", "/l/c/d/e", "/other/x"):
        await driver.put_content(p, b"x")
    assert await driver.list("/l") == ["/l/a", "/l/b", "/l/c"]
    assert await driver.list("/l/c") == ["/l/c/d"]


async def test_walk_yields_every_file_sorted(driver):
    paths = ["/w/a/1", "/w/a/2", "/w/b", "/w/c/d/e"]
    for p in reversed(paths):
        await driver.put_content(p, p.encode())
    got = [(i.path, i.size) async for i in driver.walk("/w")]
    assert got == [(p, len(p)) for p in paths]
    assert not any([i.is_dir async for i in driver.walk("/w")])
    with pytest.raises(PathNotFound):
        _ = [info async for info in driver.walk("/nothing")]


async def test_move_replaces_destination_and_removes_source(driver):
    await driver.put_content("/m/src", b"new")
    await driver.put_content("/m2/dst", b"old")
    await driver.move("/m/src", "/m2/dst")
    assert await driver.get_content("/m2/dst") == b"new"
    with pytest.raises(PathNotFound):
        await driver.stat("/m/src")
    with pytest.raises(PathNotFound):
        await driver.move("/m/src", "/m2/dst")
    await driver.move("/m2/dst", "/m3/new/folder/dst")  # the destination's folder is new
    assert await driver.get_content("/m3/new/folder/dst") == b"new"


async def test_delete_removes_trees(driver):
    for p in ("/d/x/1", "/d/x/2/3", "/d/y"):
        await driver.put_content(p, b"x")
    await driver.put_content("/d/x-sibling", b"s")  # shares the prefix "/d/x"
    await driver.delete("/d/x")
    with pytest.raises(PathNotFound):
        await driver.stat("/d/x/1")
    assert await driver.get_content("/d/y") == b"x"
    assert await driver.list("/d") == ["/d/x-sibling", "/d/y"]
    await driver.delete("/d/y")
    with pytest.raises(PathNotFound):
        await driver.get_content("/d/y")
    with pytest.raises(PathNotFound):
        await driver.delete("/d/y")
    assert await driver.get_content("/d/x-sibling") == b"s"


async def test_reader_offsets_and_lengths(driver):
    data = os.urandom(3 * 1024 * 1024 + 11)
    await driver.put_content("/r/blob", data)
    assert await _read(driver, "/r/blob") == data
    assert await _read(driver, "/r/blob", 1000) == data[1000:]
    assert await _read(driver, "/r/blob", 1000, 5000) == data[1000:6000]
    assert await _read(driver, "/r/blob", len(data) - 3, 100) == data[-3:]  # clamps at the end
    assert await _read(driver, "/r/blob", len(data)) == b""  # offset == size: empty, no error
    assert await _read(driver, "/r/blob", 7, 0) == b""
    with pytest.raises(InvalidOffset):
        await _read(driver, "/r/blob", len(data) + 1)
    with pytest.raises(PathNotFound):
        await _read(driver, "/r/blobx")


async def test_writer_appends_across_sessions_and_commits(driver):
    part = 5 * 1024 * 1024  # S3: at least one full part
    data = os.urandom(2 * part + 12345)
    async with driver.writer("/u/1/data") as w:
        await w.write(data[:7])
        await w.write(data[7 : part + 3])
        assert w.size == part + 3
    assert (await driver.stat("/u/1/data")).size == part + 3
    async with driver.writer("/u/1/data", append=True) as w:
        assert w.size == part + 3
        await w.write(data[part + 3 :])
        assert w.size == len(data)
        await w.commit()
    assert await _read(driver, "/u/1/data") == data


@pytest.mark.parametrize("make_hasher", ["hashlib", "sha256state"])
async def test_write_feeds_its_hasher_exactly_the_bytes_it_appends(driver, make_hasher):
    """base.FileWriter.write(data, hasher): the hasher sees exactly the appended bytes, in
    order, whatever the piece's type (bytes, bytearray, a read-only memoryview slice), also
    across parts on S3 and beside writes without a hasher (the upload path hashes so)."""
    if make_hasher == "sha256state" and not sha256state.available():
        pytest.skip("libcrypto lacks SHA256_Init/Update/Final")
    h: Any = hashlib.sha256() if make_hasher == "hashlib" else sha256state.Sha256()
    part = 5 * 1024 * 1024
    data = os.urandom(part + 777)
    pieces = [data[:1], bytearray(data[1 : part + 5]), memoryview(data)[part + 5 :]]
    async with driver.writer("/u/13/data") as w:
        await w.write(b"unhashed ")
        for piece in pieces:
            await w.write(piece, h)
        assert w.size == len(data) + 9
        await w.commit()
    assert h.hexdigest() == hashlib.sha256(data).hexdigest()
    assert await _read(driver, "/u/13/data") == b"unhashed " + data


async def test_commit_is_idempotent_and_refuses_more_writes(driver):
    async with driver.writer("/u/12/data") as w:
        await w.write(b"done")
        await w.commit()
        await w.commit()  # idempotent
        with pytest.raises(DriverError):
            await w.write(b"more")
        assert w.size == 4
    assert await _read(driver, "/u/12/data") == b"done"


async def test_writer_without_append_starts_over(driver):
    async with driver.writer("/u/2/data") as w:
        await w.write(b"old content")
    async with driver.writer("/u/2/data") as w:
        assert w.size == 0
        await w.write(b"new")
        await w.commit()
    assert await _read(driver, "/u/2/data") == b"new"


async def test_writer_cancel_removes_content(driver):
    async with driver.writer("/u/3/data") as w:
        await w.write(b"gone soon")
        await w.cancel()
    with pytest.raises(PathNotFound):
        await driver.get_content("/u/3/data")


async def test_empty_writer_commit_gives_empty_object(driver):
    async with driver.writer("/u/4/data") as w:
        await w.commit()
    assert await _read(driver, "/u/4/data") == b""


async def test_cancelled_write_leaves_a_consistent_resumable_size(driver):
    chunk = os.urandom(1024 * 1024)
    with trio.move_on_after(0.05):
        async with driver.writer("/u/5/data") as w:
            while True:
                await w.write(chunk)
    size = (await driver.stat("/u/5/data")).size if await _exists(driver, "/u/5/data") else 0
    assert size % len(chunk) == 0
    async with driver.writer("/u/5/data", append=True) as w:
        assert w.size == size
        await w.write(b"tail")
        await w.commit()
    assert await _read(driver, "/u/5/data") == chunk * (size // len(chunk)) + b"tail"


async def _exists(driver: Driver, path: str) -> bool:
    try:
        await driver.stat(path)
    except PathNotFound:
        return False
    return True


async def test_create_exclusive_creates_once_and_refuses_a_second_creator(driver):
    await driver.create_exclusive("/x/lease", b"mine")
    assert await driver.get_content("/x/lease") == b"mine"
    await driver.create_exclusive("/x/lease", b"mine")  # a retry of our own create
    with pytest.raises(AlreadyExists):
        await driver.create_exclusive("/x/lease", b"theirs")
    assert await driver.get_content("/x/lease") == b"mine"
    assert await driver.list("/x") == ["/x/lease"]  # no temp files left behind
    await driver.delete("/x/lease")
    await driver.create_exclusive("/x/lease", b"next")
    assert await driver.get_content("/x/lease") == b"next"


async def test_create_exclusive_has_one_winner_among_concurrent_creators(driver):
    winners: list[int] = []

    async def create(i: int) -> None:
        try:
            await driver.create_exclusive("/y/lease", b"creator %d" % i)
            winners.append(i)
        except AlreadyExists:
            pass

    async with trio.open_nursery() as nursery:
        for i in range(8):
            nursery.start_soon(create, i)
    assert len(winners) == 1
    assert await driver.get_content("/y/lease") == b"creator %d" % winners[0]


# --- promises first tested for S3 alone (moved from test_s3_driver.py, in its order) ------


async def test_stat_does_not_confuse_siblings_sharing_a_prefix(driver):
    await driver.put_content("/repo/library/x", b"1")
    with pytest.raises(PathNotFound):
        await driver.stat("/repo/lib")
    with pytest.raises(PathNotFound):
        await driver.list("/repo/lib")
    with pytest.raises(PathNotFound):
        await driver.delete("/repo/lib")
    assert await driver.get_content("/repo/library/x") == b"1"


async def test_empty_object(driver):
    await driver.put_content("/e/blob", b"")
    assert await _read(driver, "/e/blob") == b""
    assert (await driver.stat("/e/blob")).size == 0


async def test_cancel_of_a_resumed_writer_removes_everything_and_refuses_writes(driver):
    """base.FileWriter: cancel() removes every byte, also those of earlier writers; it is
    idempotent, and the writer refuses writes after it."""
    async with driver.writer("/u/6/data") as w:
        await w.write(os.urandom(12 * MiB))  # S3: parts of an open multipart upload
    async with driver.writer("/u/6/data", append=True) as w:
        await w.cancel()
        await w.cancel()  # idempotent
        with pytest.raises(DriverError):
            await w.write(b"more")
    with pytest.raises(PathNotFound):
        await driver.stat("/u/6/data")


async def test_empty_writer_persists_size_zero(driver):
    async with driver.writer("/u/7/data"):
        pass
    assert (await driver.stat("/u/7/data")).size == 0
    async with driver.writer("/u/7/data", append=True) as w:
        await w.commit()
    assert await driver.get_content("/u/7/data") == b""


async def test_append_to_a_committed_object_continues_after_it(driver):
    small, big = os.urandom(1000), os.urandom(11 * MiB + 9)
    for first in (small, big):
        await driver.put_content("/u/8/data", first)
        async with driver.writer("/u/8/data", append=True) as w:
            assert w.size == len(first)
            await w.write(b"tail")
            await w.commit()
        assert await _read(driver, "/u/8/data") == first + b"tail"


async def test_cancelled_write_then_deleted_session_leaves_nothing(driver):
    chunk = os.urandom(MiB)
    with trio.move_on_after(0.5):
        async with driver.writer("/u/9/data") as w:
            while True:
                await w.write(chunk)
    await driver.delete("/u/9")
    with pytest.raises(PathNotFound):
        await driver.stat("/u/9/data")
    with pytest.raises(PathNotFound):
        _ = [info async for info in driver.walk("/u/9")]


async def test_walk_and_list_show_an_in_progress_upload_with_its_size(driver):
    async with driver.writer("/u/10/data") as w:
        await w.write(b"12345")
    await driver.put_content("/u/10/startedat", b"now")
    assert await driver.list("/u/10") == ["/u/10/data", "/u/10/startedat"]
    infos = {i.path: i.size async for i in driver.walk("/u/10")}
    assert infos == {"/u/10/data": 5, "/u/10/startedat": 3}


async def test_writer_copies_data_so_callers_may_reuse_their_buffer(driver):
    """base.FileWriter.write: the writer must not keep a reference to ``data``."""
    expected = bytearray()
    buffer = bytearray(3 * MiB)
    async with driver.writer("/u/11/data") as w:
        for _ in range(5):  # 15 MiB through one reused buffer (S3: parts in flight meanwhile)
            buffer[:] = os.urandom(3 * MiB)
            expected += buffer
            await w.write(memoryview(buffer))
        await w.commit()
    assert await _read(driver, "/u/11/data") == bytes(expected)


async def test_walk_order_is_the_sorted_order_of_full_paths(driver):
    """base.Driver.walk: "in sorted order" means of the paths yielded, also when a sibling's
    name sorts before "/" ("-" and "." do): "/w/a-x" comes before "/w/a/1"."""
    paths = ["/w/a/1", "/w/a-x", "/w/a.y/2", "/w/a_z", "/w/b"]
    for p in paths:
        await driver.put_content(p, b"x")
    assert [i.path async for i in driver.walk("/w")] == sorted(paths)


# --- drivers.tree.walk_tree: the ordered, pruned walk the catalog pages with -------------

TREE_FILES = ["/t/a/x", "/t/a-b/x", "/t/a/1/x", "/t/a/_skip/deep/x", "/t/a.b/x", "/t/a_b/x",
              "/t/b/c/x"]


def _tree_order(driver: Driver) -> list[str]:
    """What walk_tree must yield under /t with ``_`` directories pruned: depth first, an
    entry before its subtree, siblings by name (filesystem, memory) or by their keys' byte
    order, ``name/`` (S3), as distribution v3's walks on each."""
    if getattr(driver, "lists_in_key_order", False):
        return ["/t/a-b", "/t/a-b/x", "/t/a.b", "/t/a.b/x", "/t/a", "/t/a/1", "/t/a/1/x",
                "/t/a/_skip", "/t/a/x", "/t/a_b", "/t/a_b/x", "/t/b", "/t/b/c", "/t/b/c/x"]
    return ["/t/a", "/t/a/1", "/t/a/1/x", "/t/a/_skip", "/t/a/x", "/t/a-b", "/t/a-b/x",
            "/t/a.b", "/t/a.b/x", "/t/a_b", "/t/a_b/x", "/t/b", "/t/b/c", "/t/b/c/x"]


def _no_underscore(key: str) -> bool:
    return not key.rsplit("/", 1)[1].startswith("_")


async def _tree(driver: Driver, start_after: str = "") -> list[str]:
    from registry.drivers.tree import walk_tree

    return [k async for k in walk_tree(driver, "/t", descend=_no_underscore,
                                       start_after=start_after)]


async def test_walk_tree_is_depth_first_sorted_and_pruned(driver):
    for f in TREE_FILES:
        await driver.put_content(f, b"x")
    assert await _tree(driver) == _tree_order(driver)


@pytest.mark.parametrize("start_after", ["/t/a", "/t/a/1", "/t/a/1/x", "/t/a-", "/t/a-b",
                                         "/t/a/zz", "/t/a/0", "/t/0", "/t/b/c/x", "/t/c",
                                         "/s", "/u", "/t"])
async def test_walk_tree_start_after_yields_exactly_the_later_entries(driver, start_after):
    """start_after need not exist; what follows it is the same suffix of the full order,
    whether it is before, inside, between or past the entries (the catalog's ``last``)."""
    for f in TREE_FILES:
        await driver.put_content(f, b"x")
    full = _tree_order(driver)
    key_order = getattr(driver, "lists_in_key_order", False)

    def parts(k: str) -> list[str]:
        return [p + "/" if key_order else p for p in k.split("/")[1:]]

    expected = [k for k in full if parts(k) > parts(start_after)]
    assert await _tree(driver, start_after) == expected


async def test_walk_tree_of_a_missing_directory_is_empty(driver):
    assert await _tree(driver) == []
