"""registry/http/h11proto.py: hypercorn's HTTP/1.1 protocol with body pieces joined and the
response head sent with the body. Raw sockets against hypercorn serving a recording app,
so framing, pipelining, 100-continue and protocol errors are seen byte for byte."""

from __future__ import annotations

import socket
from functools import partial
from typing import Any

import hypercorn.protocol
import pytest
import trio
from conftest import recv_until

from registry.config import Config
from registry.http.h1server import PIECE
from registry.http.h11proto import RegistryH11Protocol
from registry.server import hypercorn_config


class Recorder:
    """Echoes the request body's length and sha of pieces; records piece sizes."""

    def __init__(self) -> None:
        self.pieces: list[int] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            if message.get("body"):
                self.pieces.append(len(message["body"]))
                body += message["body"]
            if not message.get("more_body", False):
                break
        out = b"%s %d %s" % (scope["method"].encode(), len(body), bytes(body[:16]))
        headers = [(b"content-length", b"%d" % len(out))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": out})


@pytest.fixture
async def server(nursery: trio.Nursery) -> tuple[int, Recorder]:
    from hypercorn.trio import serve

    app = Recorder()
    hc = hypercorn_config(Config())
    hc.bind = ["127.0.0.1:0"]
    hc.graceful_timeout = 0.2
    binds = await nursery.start(partial(serve, app, hc, mode="asgi"))  # type: ignore[arg-type]
    return int(binds[0].rsplit(":", 1)[1]), app


def _exchange(port: int, payload: bytes, until: bytes, after: bytes = b"") -> bytes:
    """Send payload, read until ``until`` has appeared (after ``after`` if given) or EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(payload)
        got = b""
        while until not in got.split(after, 1)[-1] if after else until not in got:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        return got


def test_hypercorn_builds_our_protocol() -> None:
    hypercorn_config(Config())
    assert hypercorn.protocol.H11Protocol is RegistryH11Protocol


async def test_small_chunks_reach_the_app_joined_and_exact(server: tuple[int, Recorder]) -> None:
    port, app = server
    data = bytes(range(256)) * 4 * 600  # 600 KiB in 1 KiB chunks
    chunks = b"".join(b"400\r\n" + data[i : i + 1024] + b"\r\n" for i in range(0, len(data), 1024))
    req = b"PUT /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
    got = await trio.to_thread.run_sync(_exchange, port, req, b"PUT %d" % len(data))
    assert got.startswith(b"HTTP/1.1 200"), got[:200]
    assert (b"PUT %d " % len(data)) + data[:16] in got
    assert sum(app.pieces) == len(data)
    assert max(app.pieces) > 1024  # joined: hypercorn alone gives one message per chunk
    assert max(app.pieces) <= PIECE  # HTTP/1.1 is served by h1server.py's loop
    assert len(app.pieces) < len(data) // 1024


async def test_head_and_body_leave_in_one_write(server: tuple[int, Recorder]) -> None:
    port, _ = server

    def first_read() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
            return s.recv(65536)

    for _ in range(20):  # two writes would show up as a head-only first read, sooner or later
        got = await trio.to_thread.run_sync(first_read)
        head, _, body = got.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), got
        assert body == b"GET 0 ", got


async def test_pipelined_requests_are_answered_in_order(server: tuple[int, Recorder]) -> None:
    port, _ = server
    reqs = (
        b"PUT /a HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc"
        b"PUT /b HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nxy\r\n1\r\nz\r\n0\r\n\r\n"
        b"GET /c HTTP/1.1\r\nHost: t\r\n\r\n"
    )
    got = await trio.to_thread.run_sync(_exchange, port, reqs, b"GET 0 ")
    assert got.count(b"HTTP/1.1 200") == 3, got
    assert got.index(b"PUT 3 abc") < got.index(b"PUT 3 xyz") < got.index(b"GET 0 ")


async def test_expect_100_continue_is_answered_before_the_body(server: tuple[int, Recorder]) -> None:
    port, _ = server

    def exchange() -> tuple[bytes, bytes]:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"PUT /x HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
            interim = s.recv(65536)
            s.sendall(b"abcd")
            return interim, recv_until(s, b"PUT 4 abcd")

    interim, final = await trio.to_thread.run_sync(exchange)
    assert interim.startswith(b"HTTP/1.1 100"), interim
    assert final.startswith(b"HTTP/1.1 200") and final.endswith(b"PUT 4 abcd"), final


@pytest.mark.parametrize(
    "bad",
    [
        b"PUT /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\nzz\r\n",
        b"GARBAGE\x00\x01\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: t\r\nContent-Length: nope\r\n\r\n",
    ],
)
async def test_protocol_errors_close_cleanly_and_the_server_keeps_serving(
    server: tuple[int, Recorder], bad: bytes
) -> None:
    port, _ = server
    got = await trio.to_thread.run_sync(_exchange, port, bad, b"\x00never")
    assert got == b"" or got.startswith(b"HTTP/1.1 400"), got
    ok = await trio.to_thread.run_sync(_exchange, port, b"GET /y HTTP/1.1\r\nHost: t\r\n\r\n", b"GET 0 ")
    assert ok.startswith(b"HTTP/1.1 200"), ok
