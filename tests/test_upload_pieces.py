"""Upload bodies in pieces of any size (issue 14 item 3): every byte stored and hashed once.

The server hands a request body to the app in pieces whose sizes it chooses (64-256 KiB
from hypercorn, up to ~1 MiB from our own HTTP/1.1 loop, 1 byte from a slow client).
``uploads._pump`` writes big pieces as they are and gathers small ones into its two
buffers; these tests drive ``Storage`` directly with chosen piece sizes (a socket cannot
choose them) over the filesystem and in-memory drivers and check what storage holds.
"""

from __future__ import annotations

import hashlib
import os
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from registry.digest import Digest
from registry.drivers.base import Driver, PathNotFound
from registry.drivers.filesystem import FilesystemDriver
from registry.drivers.memory import MemoryDriver
from registry.errors import ErrorCode, RegistryError, unwrap
from registry.http.request import ClientDisconnected
from registry.storage import paths, uploads
from registry.storage.store import Storage

REPO = "pieces/app"
KiB = 1024
MiB = 1024 * KiB
TEST_TIMEOUT = 60  # s, a bound so that no test can hang the suite
SMALL = uploads.DIRECT_MIN - 1  # the biggest piece that is still copied

PIECE_PLANS = {
    "one byte": [1],
    "bytes one by one": [1] * 7,
    "empty pieces between": [0, 5, 0, 0, 3, 0],
    "one big piece": [uploads.DIRECT_MIN],
    "server pieces of 64 KiB": [64 * KiB] * 20,
    "small, big, small": [1, 2 * MiB + 3, 1, 300 * KiB, 300 * KiB, 700 * KiB, 1],
    "small pieces that straddle buffers": [SMALL, SMALL, 2, SMALL, uploads.COALESCE + 1, 7],
}


def digest_of(data: bytes) -> Digest:
    return Digest.parse("sha256:" + hashlib.sha256(data).hexdigest())


def cut(data: bytes, sizes: list[int]) -> list[bytes]:
    out, pos = [], 0
    for n in sizes:
        out.append(data[pos : pos + n])
        pos += n
    assert pos == len(data)
    return out


async def body_of(pieces: list[bytes], *, then: BaseException | None = None) -> AsyncIterator[bytes]:
    """A request body: ``pieces`` as the server hands them over, then ``then`` (if any)."""
    for piece in pieces:
        await trio.lowlevel.checkpoint()
        yield piece
    if then is not None:
        raise then


async def read_all(driver: Driver, path: str) -> bytes:
    out = bytearray()
    async with driver.reader(path) as chunks:
        async for chunk in chunks:
            out += chunk
    return bytes(out)


@pytest.fixture(params=["filesystem", "memory"])
def driver(request: Any, tmp_path: Any) -> Driver:
    if request.param == "filesystem":
        return FilesystemDriver(str(tmp_path / "storage"))
    return MemoryDriver()


class RecordingWriters:
    """A driver whose writers record every unit handed to ``write`` (the object itself)."""

    def __init__(self, inner: Driver) -> None:
        self._inner = inner
        self.units: list[Any] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def writer(self, path: str, append: bool = False) -> Any:
        inner, units = self._inner, self.units
        from contextlib import asynccontextmanager

        class Recording:
            def __init__(self, w: Any) -> None:
                self._w = w

            def __getattr__(self, name: str) -> Any:
                return getattr(self._w, name)

            async def write(self, data: Any, hasher: Any = None) -> None:
                units.append(data)
                await self._w.write(data, hasher)

        @asynccontextmanager
        async def opened() -> AsyncIterator[Any]:
            async with inner.writer(path, append) as w:
                yield Recording(w)

        return opened()


@pytest.mark.parametrize("plan", sorted(PIECE_PLANS))
async def test_pieces_of_any_size_give_the_blob_and_its_digest_push_11(driver, plan):
    """PUT with the whole body, cut as the plan says: the blob holds exactly the bytes."""
    sizes = PIECE_PLANS[plan]
    data = os.urandom(sum(sizes))
    st = Storage(driver)
    with trio.fail_after(TEST_TIMEOUT):
        up = await st.uploads.start(REPO)
        size = await st.uploads.finish(REPO, up.id, digest_of(data), body_of(cut(data, sizes)))
        assert size == len(data)
        assert await read_all(driver, paths.blob_data(digest_of(data))) == data


@pytest.mark.parametrize("plan", sorted(PIECE_PLANS))
async def test_patches_in_pieces_then_an_empty_put_push_12(driver, plan, resumable_sha256):
    """Two PATCHes cut as the plan says, then an empty PUT in a fresh Storage (another
    worker: it resumes the hash state the PATCH saved, not this process's hasher)."""
    sizes = PIECE_PLANS[plan]
    data = os.urandom(sum(sizes))
    first = data[: len(data) // 2]
    with trio.fail_after(TEST_TIMEOUT):
        up = await Storage(driver).uploads.start(REPO)
        st = Storage(driver)
        got = await st.uploads.append(REPO, up.id, body_of(cut(first, [len(first)])))
        assert got.size == len(first)
        rest = data[len(first) :]
        got = await st.uploads.append(REPO, up.id, body_of(cut(rest, _resize(sizes, len(rest)))))
        assert got.size == len(data)
        other = Storage(driver)
        await other.uploads.finish(REPO, up.id, digest_of(data), None)
        assert await read_all(driver, paths.blob_data(digest_of(data))) == data


def _resize(sizes: list[int], total: int) -> list[int]:
    """The plan's sizes cut down to ``total`` bytes (the last one shortened)."""
    out, left = [], total
    for n in sizes:
        take = min(n, left)
        out.append(take)
        left -= take
    out[-1] += left
    return out


async def test_a_wrong_digest_is_refused_whatever_the_pieces_push_10(driver):
    """The digest is checked over every piece: one byte changed in a small piece after a
    big one -> DIGEST_INVALID, nothing published, the session gone."""
    sizes = [1, 2 * MiB, 3, 100 * KiB, 1]
    data = os.urandom(sum(sizes))
    sent = bytearray(data)
    sent[2 * MiB + 2] ^= 1
    st = Storage(driver)
    with trio.fail_after(TEST_TIMEOUT):
        up = await st.uploads.start(REPO)
        with pytest.raises(RegistryError) as e:
            await st.uploads.finish(REPO, up.id, digest_of(data), body_of(cut(bytes(sent), sizes)))
        assert e.value.code is ErrorCode.DIGEST_INVALID
        assert await st.blobs.size(digest_of(data)) is None
        assert await st.blobs.size(digest_of(bytes(sent))) is None
        with pytest.raises(RegistryError):
            await st.uploads.status(REPO, up.id)


async def test_big_pieces_are_written_as_they_are_and_small_ones_gathered(tmp_path):
    """No copy of a piece of DIRECT_MIN bytes or more (the unit written is the piece
    itself); small pieces go to storage in units of COALESCE bytes, except the last; a
    body of one small piece is written as it is, with no buffer."""
    rec = RecordingWriters(FilesystemDriver(str(tmp_path / "storage")))
    st = Storage(rec)  # type: ignore[arg-type]
    big = os.urandom(uploads.DIRECT_MIN + 5)
    small = [os.urandom(64 * KiB) for _ in range(9)]
    data = b"".join([big, *small, big])
    with trio.fail_after(TEST_TIMEOUT):
        up = await st.uploads.start(REPO)
        await st.uploads.finish(REPO, up.id, digest_of(data), body_of([big, *small, big]))
        assert rec.units[0] is big and rec.units[-1] is big
        sizes = [len(u) for u in rec.units[1:-1]]
        assert sizes == [uploads.COALESCE, 64 * KiB]  # 8 x 64 KiB fill one buffer
        one = os.urandom(100)
        rec.units.clear()
        up = await st.uploads.start(REPO)
        await st.uploads.finish(REPO, up.id, digest_of(one), body_of([one]))
        assert len(rec.units) == 1 and rec.units[0] is one


@pytest.mark.parametrize("piece", [1 * KiB, 64 * KiB, 1 * MiB])
async def test_memory_per_upload_stays_bounded_whatever_the_body_size(tmp_path, piece):
    """A 48 MiB body in pieces made as they arrive: what the upload path holds at its peak
    is a few buffers and pieces (at most 2 COALESCE buffers + 2 pieces, plus slack), not
    a share of the body."""
    driver = FilesystemDriver(str(tmp_path / "storage"))
    st = Storage(driver)
    total = 48 * MiB
    source = os.urandom(2 * MiB)
    h = hashlib.sha256()
    for pos in range(0, total, piece):
        h.update(source[pos % MiB : pos % MiB + piece])
    d = Digest.parse("sha256:" + h.hexdigest())

    async def made_as_they_arrive() -> AsyncIterator[bytes]:
        for pos in range(0, total, piece):
            await trio.lowlevel.checkpoint()
            yield source[pos % MiB : pos % MiB + piece]

    with trio.fail_after(TEST_TIMEOUT):
        up = await st.uploads.start(REPO)
        tracemalloc.start()
        try:
            await st.uploads.finish(REPO, up.id, d, made_as_they_arrive())
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 2 * uploads.COALESCE + 2 * piece + 1 * MiB, peak


async def test_a_disconnect_mid_body_leaves_a_session_that_continues(driver, resumable_sha256):
    """The client goes away after some pieces (big and small, some still in a buffer): the
    session keeps exactly the bytes storage persisted, nothing is published, and a PATCH
    from the reported size plus an empty PUT give the right blob."""
    sizes = [uploads.DIRECT_MIN + 1, 1, 64 * KiB, uploads.DIRECT_MIN, 3, 70 * KiB]
    data = os.urandom(sum(sizes) + 5 * MiB)
    sent = sum(sizes)
    st = Storage(driver)
    with trio.fail_after(TEST_TIMEOUT):
        up = await st.uploads.start(REPO)
        with pytest.raises(BaseException) as e:  # a group (the pump's nursery): unwrapped below
            await st.uploads.append(
                REPO, up.id, body_of(cut(data[:sent], sizes), then=ClientDisconnected())
            )
        assert isinstance(unwrap(e.value), ClientDisconnected)  # as the app unwraps it
        size = (await st.uploads.status(REPO, up.id)).size
        assert 0 <= size <= sent
        try:
            stored = await read_all(driver, paths.upload_data(REPO, up.id))
        except PathNotFound:
            stored = b""
        assert stored == data[:size]  # a prefix of the body: nothing mixed, nothing lost
        assert await st.blobs.size(digest_of(data)) is None
        await st.uploads.append(REPO, up.id, body_of([data[size:]]), start=size)
        await st.uploads.finish(REPO, up.id, digest_of(data), None)
        assert await read_all(driver, paths.blob_data(digest_of(data))) == data


async def _chunked_patch(url: str, path: str, chunks: list[bytes]) -> bytes:
    """A raw HTTP/1.1 PATCH whose body is sent in exactly these chunks (chunked transfer
    encoding, each chunk its own send): the status line and headers of the answer."""
    host, port = url.split("//")[1].split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(
            f"PATCH {path} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n"
            "Content-Type: application/octet-stream\r\nConnection: close\r\n\r\n".encode()
        )
        for chunk in chunks:
            await stream.send_all(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            await trio.sleep(0.01)  # let the server take it as its own piece
        await stream.send_all(b"0\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer:
            got = await stream.receive_some(65536)
            if not got:
                break
            answer += got
    return answer


@pytest.mark.parametrize("wrong", [False, True], ids=["right digest", "wrong digest"])
async def test_streamed_patch_in_chunks_of_any_size_over_a_socket_push_12(served, wrong):
    """Over a real socket, docker's way (chunked PATCH, empty PUT) with chunks of 1 byte to
    over 2 MiB: the blob holds the bytes; a digest that does not match -> 400
    DIGEST_INVALID with the JSON envelope, nothing published."""
    sizes = [1, 2 * MiB + 3, 1, 300 * KiB, 64 * KiB, 700 * KiB, 1]
    data = os.urandom(sum(sizes))
    d = digest_of(data)
    with trio.fail_after(TEST_TIMEOUT):
        r = await served.client.post("/v2/pieces/sock/blobs/uploads/")
        loc = r.headers["location"]
        path = loc.split(served.url, 1)[1] if loc.startswith("http") else loc
        head = await _chunked_patch(served.url, path, cut(data, sizes))
        assert head.startswith(b"HTTP/1.1 202"), head[:200]
        asked = digest_of(data + b"x") if wrong else d
        r = await served.client.put(loc, params={"digest": str(asked)})
        if wrong:
            assert r.status_code == 400
            assert r.json()["errors"][0]["code"] == "DIGEST_INVALID"
            assert (await served.client.head(f"/v2/pieces/sock/blobs/{asked}")).status_code == 404
            assert (await served.client.head(f"/v2/pieces/sock/blobs/{d}")).status_code == 404
        else:
            assert r.status_code == 201, r.text
            assert (await served.client.get(f"/v2/pieces/sock/blobs/{d}")).content == data
