"""The shared driver contract suite (DESIGN.md, Layers): every driver passes the same tests.

Parametrized over filesystem, the in-memory fake, and S3 (a moto server with signature
checking on, from tests/s3_support.py).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from registry.drivers.base import (
    AlreadyExists,
    Driver,
    InvalidOffset,
    InvalidPath,
    PathNotFound,
)
from registry.drivers.filesystem import FilesystemDriver
from registry.drivers.memory import MemoryDriver


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


@pytest.fixture(params=sorted(FACTORIES))
async def driver(request: Any, tmp_path: Any) -> AsyncIterator[Driver]:
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
    assert (await driver.stat("/a/b")).is_dir
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


@pytest.mark.parametrize("bad", ["relative", "/a/../b", "/a//b", "/a/./b", "/a/b/", "", "/a\x00b", "/ü"])
async def test_invalid_paths_are_refused(driver, bad):
    with pytest.raises(InvalidPath):
        await driver.put_content(bad, b"x")
    with pytest.raises(InvalidPath):
        await driver.get_content(bad)


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


async def test_move_replaces_destination_and_removes_source(driver):
    await driver.put_content("/m/src", b"new")
    await driver.put_content("/m2/dst", b"old")
    await driver.move("/m/src", "/m2/dst")
    assert await driver.get_content("/m2/dst") == b"new"
    with pytest.raises(PathNotFound):
        await driver.stat("/m/src")


async def test_delete_removes_trees(driver):
    for p in ("/d/x/1", "/d/x/2/3", "/d/y"):
        await driver.put_content(p, b"x")
    await driver.delete("/d/x")
    with pytest.raises(PathNotFound):
        await driver.stat("/d/x/1")
    assert await driver.get_content("/d/y") == b"x"
    await driver.delete("/d/y")
    with pytest.raises(PathNotFound):
        await driver.get_content("/d/y")


async def test_reader_offsets_and_lengths(driver):
    data = os.urandom(3 * 1024 * 1024 + 11)
    await driver.put_content("/r/blob", data)
    assert await _read(driver, "/r/blob") == data
    assert await _read(driver, "/r/blob", 1000) == data[1000:]
    assert await _read(driver, "/r/blob", 1000, 5000) == data[1000:6000]
    assert await _read(driver, "/r/blob", len(data)) == b""
    with pytest.raises(InvalidOffset):
        await _read(driver, "/r/blob", len(data) + 1)


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
