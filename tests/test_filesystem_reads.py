"""Blob reads of the filesystem driver: page-cache reads on the loop (preadv RWF_NOWAIT) and
the thread fallback give the same bytes for every offset and length, whichever path a chunk
takes (a cached page, a page that would wait for the disk, a filesystem without RWF_NOWAIT,
a short read)."""

from __future__ import annotations

import errno
import os
import random
from typing import Any

import pytest

from registry.drivers import filesystem
from registry.drivers.filesystem import CHUNK, FilesystemDriver

SIZE = 3 * CHUNK + 12345
DATA = random.Random(3).randbytes(SIZE)
CASES = [(0, None), (1, None), (CHUNK - 1, CHUNK + 2), (SIZE - 5, None), (SIZE, None), (7, 0)]


async def _read(d: FilesystemDriver, offset: int, length: int | None) -> tuple[bytes, int]:
    out, pieces = bytearray(), 0
    async with d.reader("/blob", offset, length) as chunks:
        async for c in chunks:
            assert 0 < len(c) <= CHUNK
            out += c
            pieces += 1
    return bytes(out), pieces


def _expected(offset: int, length: int | None) -> bytes:
    return DATA[offset:] if length is None else DATA[offset : offset + length]


def _flaky_preadv(real: Any, mode: str) -> Any:
    calls = [0]

    def preadv(fd: int, buffers: list[memoryview], pos: int, flags: int = 0) -> int:
        calls[0] += 1
        if mode == "eagain" and calls[0] % 2:
            raise BlockingIOError(errno.EAGAIN, "would block")
        if mode == "unsupported":
            raise OSError(errno.EOPNOTSUPP, "not supported")
        if mode == "short":
            return int(real(fd, [buffers[0][: max(1, len(buffers[0]) // 3)]], pos, flags))
        return int(real(fd, buffers, pos, flags))

    return preadv


@pytest.mark.parametrize("mode", ["cached", "eagain", "unsupported", "short"])
async def test_reads_are_exact_whichever_path_each_chunk_takes(tmp_path, monkeypatch, mode):
    d = FilesystemDriver(str(tmp_path))
    await d.put_content("/blob", DATA)
    if mode != "cached":
        monkeypatch.setattr(filesystem.os, "preadv", _flaky_preadv(os.preadv, mode))
    for offset, length in CASES:
        got, pieces = await _read(d, offset, length)
        assert got == _expected(offset, length), (mode, offset, length)
        if mode == "short" and len(got) > 3:
            assert pieces > -(-len(got) // CHUNK)  # short reads really were taken
    await d.aclose()


async def test_a_filesystem_without_rwf_nowait_is_asked_once(tmp_path, monkeypatch):
    """tmpfs answers EOPNOTSUPP: the driver learns it once, not on every read."""
    d = FilesystemDriver(str(tmp_path))
    await d.put_content("/blob", DATA)
    await d.put_content("/link", b"sha256:abc")
    calls = [0]

    def unsupported(fd: int, buffers: list[memoryview], pos: int, flags: int = 0) -> int:
        calls[0] += 1
        raise OSError(errno.EOPNOTSUPP, "not supported")

    monkeypatch.setattr(filesystem.os, "preadv", unsupported)
    for _ in range(3):
        assert await d.get_content("/link") == b"sha256:abc"
        assert (await _read(d, 0, None))[0] == DATA
    assert calls[0] == 1
    await d.aclose()


async def test_a_file_shrinking_under_the_reader_ends_the_stream(tmp_path):
    d = FilesystemDriver(str(tmp_path))
    await d.put_content("/blob", DATA)
    got = bytearray()
    async with d.reader("/blob") as chunks:
        async for c in chunks:
            if not got:
                os.truncate(tmp_path / "blob", CHUNK + 10)
            got += c
    assert bytes(got) == DATA[: CHUNK + 10]
    await d.aclose()
