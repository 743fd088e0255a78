"""Streamed GETs read straight off the socket (registry/drivers/s3/streams.py).

Against a scripted HTTP/1.1 server (real sockets on 127.0.0.1) for the framing and
keep-alive rules, and against moto for the reads the driver makes.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx
import pytest
import s3_support
import trio

from registry.drivers import base
from registry.drivers.s3 import streams
from registry.drivers.s3.client import Endpoint, S3Client
from registry.drivers.s3.sigv4 import Signer

pytestmark = pytest.mark.s3
MiB = 1024 * 1024
BLOB = "/docker/registry/v2/blobs/sha256/cd/cdef/data"

Answer = Callable[[bytes], bytes]  # request head -> the whole response on the wire


def framed(body: bytes, *extra: str, status: str = "200 OK") -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n"
    return (head + "".join(f"{h}\r\n" for h in extra) + "\r\n").encode() + body


def chunked(body: bytes) -> bytes:
    half = len(body) // 2
    pieces = b"".join(
        f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in (body[:half], body[half:]) if p
    )
    return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + pieces + b"0\r\n\r\n"


@dataclass
class Scripted:
    """Answers each request with ``answer(head)``; ``close_after`` requests per connection."""

    answer: Answer
    close_after: int = 1000
    port: int = 0
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)

    async def handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        buffered = b""
        served = 0
        async with stream:
            while served < self.close_after:
                while b"\r\n\r\n" not in buffered:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buffered += data
                head, _, buffered = buffered.partition(b"\r\n\r\n")
                self.requests.append(head)
                try:
                    await stream.send_all(self.answer(head))
                except trio.BrokenResourceError:
                    return
                served += 1


@asynccontextmanager
async def open_scripted(
    answer: Answer, close_after: int = 1000
) -> AsyncIterator[tuple[Scripted, S3Client]]:
    server = Scripted(answer, close_after)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, server.handle, 0, host="127.0.0.1")
        )
        server.port = listeners[0].socket.getsockname()[1]
        client = S3Client(
            Endpoint("http", f"127.0.0.1:{server.port}", "bucket", True),
            Signer("AKID", "secret", "us-east-1"),
        )
        try:
            yield server, client
        finally:
            await client.aclose()
            nursery.cancel_scope.cancel()


async def read_all(client: S3Client, key: str = "k") -> bytes:
    async with client.stream("GET", key) as response:
        pieces = []
        while piece := await response.receive():
            pieces.append(piece)
    return b"".join(pieces)


async def test_a_connection_read_to_the_end_is_kept_alive_and_reused() -> None:
    body = bytes(range(256)) * 4096  # 1 MiB
    async with open_scripted(lambda head: framed(body)) as (server, client):
        for _ in range(3):
            assert await read_all(client) == body
        assert server.connections == 1
        assert len(server.requests) == 3


async def test_a_body_left_unread_closes_its_connection() -> None:
    body = b"x" * (3 * MiB)
    async with open_scripted(lambda head: framed(body)) as (server, client):
        async with client.stream("GET", "k") as response:
            assert await response.receive()  # one piece, then walk away
        assert await read_all(client) == body
        assert server.connections == 2


async def test_connection_close_is_honoured() -> None:
    async with open_scripted(lambda head: framed(b"abc", "Connection: close")) as (server, client):
        assert await read_all(client) == b"abc"
        assert await read_all(client) == b"abc"
        assert server.connections == 2


async def test_an_idle_connection_the_server_closed_is_replaced_silently() -> None:
    async with open_scripted(lambda head: framed(b"hello"), close_after=1) as (server, client):
        for _ in range(3):
            assert await read_all(client) == b"hello"
        assert server.connections == 3
        assert len(server.requests) == 3


async def test_a_body_cut_short_is_a_transport_error() -> None:
    def short(head: bytes) -> bytes:
        return b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"y" * 10

    async with (
        open_scripted(short, close_after=1) as (_, client),
        client.stream("GET", "k") as response,
    ):
        assert await response.receive() == b"y" * 10
        with pytest.raises(httpx.TransportError):
            await response.receive()


async def test_a_response_without_content_length_falls_back_to_httpx() -> None:
    body = b"z" * 300_000
    async with open_scripted(lambda head: chunked(body)) as (server, client):
        assert await read_all(client) == body
        assert await read_all(client) == body  # straight through httpx now
        assert len(server.requests) == 3  # the refused raw try, then two through httpx


async def test_an_s3_error_document_is_read_and_typed() -> None:
    doc = b"<Error><Code>NoSuchKey</Code><Message>gone</Message></Error>"
    answer = lambda head: framed(doc, status="404 Not Found")
    async with open_scripted(answer) as (server, client):
        with pytest.raises(base.DriverError):
            await read_all(client)
        assert server.connections == 1


async def test_streams_bound_their_connections() -> None:
    async with open_scripted(lambda head: framed(b"abc")) as (_, client):
        pool = client._streams
        assert pool is not None
        pool._limit.total_tokens = 1
        async with client.stream("GET", "k") as first:
            with trio.move_on_after(0.2) as waited:  # the only slot is held
                await client.open_stream("GET", "k")
            assert waited.cancelled_caught
            assert await first.receive() == b"abc"


async def test_driver_reads_ranges_through_the_pool_in_bounded_pieces() -> None:
    data = bytes(range(251)) * 20_000  # ~5 MB, not a multiple of a socket read
    async with s3_support.open_s3_driver() as driver:
        await driver.put_content(BLOB, data)
        for offset, length in ((0, None), (7, 1_000_003), (len(data) - 5, None)):
            async with driver.reader(BLOB, offset, length) as chunks:
                pieces = [chunk async for chunk in chunks]
            want = data[offset:] if length is None else data[offset : offset + length]
            assert b"".join(pieces) == want
            assert max(map(len, pieces)) <= streams.READ_BYTES
        # moto answers "Connection: close": nothing may be kept for reuse
        pool = driver.client._streams
        assert pool is not None
        assert not any(pool._idle.values())


async def test_the_reader_reads_ahead_a_bounded_number_of_pieces() -> None:
    from registry.drivers.s3.reader import PREFETCH_PIECES

    data = bytes(range(256)) * (40 * 4096)  # 40 MiB
    async with s3_support.open_s3_driver() as driver:
        await driver.put_content(BLOB, data)
        async with driver.reader(BLOB) as chunks:
            first = await chunks.__anext__()
            await trio.sleep(0.3)  # the read-ahead fills up and waits
            ahead = chunks._stream._pos - len(first)  # type: ignore[attr-defined]
            assert 0 < ahead <= (PREFETCH_PIECES + 1) * streams.READ_BYTES
            rest = b"".join([chunk async for chunk in chunks])
        assert first + rest == data


async def test_an_error_in_the_readers_body_comes_out_as_itself() -> None:
    async with s3_support.open_s3_driver() as driver:
        await driver.put_content(BLOB, b"x" * (3 * MiB))
        with pytest.raises(KeyError):
            async with driver.reader(BLOB) as chunks:
                await chunks.__anext__()
                raise KeyError("consumer failed")
        with trio.move_on_after(5) as scope:  # walking away early stops the read-ahead
            async with driver.reader(BLOB) as chunks:
                await chunks.__anext__()
        assert not scope.cancelled_caught
