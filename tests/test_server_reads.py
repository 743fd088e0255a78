"""Hypercorn is tuned to hand request bodies to the app in pieces up to RECV_SIZE (its own
default is 64 KiB), and to queue only a few of them per request (memory per upload)."""

from __future__ import annotations

import socket
from functools import partial
from typing import Any

import trio

from registry.config import Config
from registry.http.h1server import PIECE
from registry.http.h11proto import MAX_PIECE
from registry.server import RECV_SIZE, hypercorn_config

BODY = 8 * 1024 * 1024


def test_queued_body_per_request_is_bounded() -> None:
    hc = hypercorn_config(Config())
    assert hc.max_app_queue_size * max(RECV_SIZE, MAX_PIECE) <= 1024 * 1024
    assert hc.max_app_queue_size >= 2  # see hypercorn_config: 1 hangs keep-alive connections


async def test_the_app_receives_body_pieces_bigger_than_hypercorns_default() -> None:
    from hypercorn.trio import serve

    pieces: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        while True:
            message = await receive()
            pieces.append(len(message.get("body", b"")))
            if not message.get("more_body", False):
                break
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    hc = hypercorn_config(Config())
    hc.bind = ["127.0.0.1:0"]
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(partial(serve, app, hc, mode="asgi"))  # type: ignore[arg-type]
        port = int(binds[0].rsplit(":", 1)[1])

        def client() -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
                s.sendall(b"PUT /x HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % BODY)
                s.sendall(bytes(BODY))
                return s.recv(100)

        head = await trio.to_thread.run_sync(client)
        nursery.cancel_scope.cancel()
    assert head.startswith(b"HTTP/1.1 204"), head
    assert sum(pieces) == BODY
    assert max(pieces) > 64 * 1024, pieces[:20]
    assert max(pieces) <= PIECE  # HTTP/1.1 is served by h1server.py's loop
