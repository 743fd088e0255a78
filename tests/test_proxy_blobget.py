"""The upstream blob GET of the pull-through cache without h11 (registry/proxy/blobget.py):
its redirect rules as a table; its parsing of real answers over a real socket (lengths,
chunked, until close, cut short, malformed, redirect loops); and a proxy whose upstream
sends blobs from a "CDN" on another origin with 307, as Docker Hub does."""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from typing import Any

import httpx
import pytest
import trio
from oci import digest, push_image
from proxy_support import remote, respond, start_proxy, start_upstream

from registry.proxy import blobget

TIMEOUT = 30  # seconds any one test may take (none may hang)
BODY = os.urandom(blobget.BODY_PIECE * 2 + 1234)  # three pieces, the last one short


@pytest.mark.parametrize(("url", "location", "want_url", "keeps_auth"), [
    ("http://up:5000/v2/a/blobs/x", "http://up:5000/cdn/x", "http://up:5000/cdn/x", True),
    ("http://up:5000/v2/a/blobs/x", "/cdn/x?sig=1", "http://up:5000/cdn/x?sig=1", True),
    ("http://up:5000/v2/a/blobs/x", "cdn/x", "http://up:5000/v2/a/blobs/cdn/x", True),
    ("http://UP:5000/v2/a", "http://up:5000/b", "http://up:5000/b", True),  # host: no case
    ("http://up/v2/a", "http://up:80/b", "http://up:80/b", True),  # the default port
    ("https://up/v2/a", "https://up:443/b", "https://up:443/b", True),
    ("http://up:5000/v2/a", "http://cdn:5000/b", "http://cdn:5000/b", False),  # host
    ("http://up:5000/v2/a", "http://up:5001/b", "http://up:5001/b", False),  # port
    ("https://up/v2/a", "http://up/b", "http://up/b", False),  # scheme (a downgrade)
    ("https://registry-1.docker.io/v2/library/x/blobs/sha256:1",
     "https://production.cloudflare.docker.com/registry-v2/x?verify=1",
     "https://production.cloudflare.docker.com/registry-v2/x?verify=1", False),
])
def test_redirect_keeps_authorization_on_its_origin_only(url, location, want_url, keeps_auth):
    hop = blobget.redirect(url, location, {"authorization": "Bearer t", "user-agent": "u"})
    assert hop.url == want_url
    assert ("authorization" in hop.headers) is keeps_auth
    assert hop.headers["user-agent"] == "u"


@pytest.mark.parametrize("location", [None, "", "ftp://up/x", "file:///etc/passwd",
                                      "javascript:alert(1)", "https:///nohost"])
def test_redirect_to_nowhere_usable_is_a_transport_error(location):
    with pytest.raises(blobget.TransportError):
        blobget.redirect("http://up:5000/v2/a", location, {})


Answer = Callable[[trio.SocketStream, bytes], Any]


async def serve_raw(nursery: trio.Nursery, answer: Answer,
                    seen: list[bytes] | None = None) -> str:
    """A raw HTTP server on 127.0.0.1: reads one request head, records it in ``seen``,
    lets ``answer(stream, head)`` write whatever bytes it likes, then closes."""

    async def handler(stream: trio.SocketStream) -> None:
        head = b""
        async with stream:
            while b"\r\n\r\n" not in head:
                data = await stream.receive_some(65536)
                if not data:
                    return
                head += data
            if seen is not None:
                seen.append(head)
            await answer(stream, head)

    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"


def sender(*parts: bytes) -> Answer:
    async def answer(stream: trio.SocketStream, head: bytes) -> None:
        for part in parts:
            await stream.send_all(part)
            await trio.sleep(0.001)  # separate reads on the client's side
    return answer


def chunked(body: bytes, size: int) -> bytes:
    out = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size])
                   for i in range(0, len(body), size))
    return out + b"0\r\n\r\n"


OK = b"HTTP/1.1 200 OK\r\n"
GOOD = [
    ("content-length, one send", [OK + b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY], len(BODY)),
    ("content-length, head and body apart",
     [OK + b"Content-Length: %d\r\n\r\n" % len(BODY), BODY[:1000], BODY[1000:]], len(BODY)),
    ("content-length 0", [OK + b"Content-Length: 0\r\n\r\n"], 0),
    ("chunked", [OK + b"Transfer-Encoding: chunked\r\n\r\n", chunked(BODY, 300_000)], None),
    ("until close", [OK + b"\r\n", BODY], None),
]


@pytest.mark.parametrize(("case", "parts", "length"), GOOD, ids=[g[0] for g in GOOD])
async def test_bodies_arrive_whole_in_bounded_pieces(nursery, case, parts, length):
    with trio.fail_after(TIMEOUT):
        url = await serve_raw(nursery, sender(*parts))
        async with blobget.open_get(url + "/b", {}, ssl_context=None, connect_timeout=5,
                                    read_timeout=5) as resp:
            assert resp.status == 200 and resp.length == length
            pieces = [bytes(p) async for p in resp.pieces()]
    want = b"" if length == 0 else BODY
    assert b"".join(pieces) == want
    assert all(0 < len(p) <= blobget.BODY_PIECE for p in pieces)


BAD = [
    ("cut short", [OK + b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY[:-1]]),
    ("chunked cut short", [OK + b"Transfer-Encoding: chunked\r\n\r\n", chunked(BODY, 300_000)[:-7]]),
    ("not http", [b"SSH-2.0-OpenSSH_9.2\r\n\r\n"]),
    ("closed before the head", [b"HTTP/1.1 200 OK\r\nContent-Le"]),
    ("bad chunk size", [OK + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n"]),
]


@pytest.mark.parametrize(("case", "parts"), BAD, ids=[b[0] for b in BAD])
async def test_broken_answers_are_transport_errors(nursery, case, parts):
    with trio.fail_after(TIMEOUT):
        url = await serve_raw(nursery, sender(*parts))
        with pytest.raises(blobget.TransportError):
            async with blobget.open_get(url + "/b", {}, ssl_context=None, connect_timeout=5,
                                        read_timeout=5) as resp:
                async for _ in resp.pieces():
                    pass


async def test_a_stalled_upstream_hits_the_read_deadline(nursery):
    async def stall(stream: trio.SocketStream, head: bytes) -> None:
        await stream.send_all(OK + b"Content-Length: 10\r\n\r\nabc")
        await trio.sleep_forever()

    with trio.fail_after(TIMEOUT):
        url = await serve_raw(nursery, stall)
        with pytest.raises(blobget.TransportError):
            async with blobget.open_get(url + "/b", {}, ssl_context=None, connect_timeout=5,
                                        read_timeout=0.5) as resp:
                async for _ in resp.pieces():
                    pass


async def test_redirects_followed_to_another_origin_without_authorization(nursery):
    cdn_seen: list[bytes] = []
    up_seen: list[bytes] = []
    with trio.fail_after(TIMEOUT):
        cdn = await serve_raw(nursery, sender(OK + b"Content-Length: %d\r\n\r\n" % len(BODY)
                                              + BODY), cdn_seen)
        up = await serve_raw(nursery, sender(
            b"HTTP/1.1 307 Temporary Redirect\r\nLocation: %s/data?sig=1\r\n"
            b"Content-Length: 0\r\n\r\n" % cdn.encode()), up_seen)
        async with blobget.open_get(up + "/v2/a/blobs/x", {"Authorization": "Bearer secret"},
                                    ssl_context=None, connect_timeout=5, read_timeout=5) as resp:
            got = b"".join([bytes(p) async for p in resp.pieces()])
    assert got == BODY
    assert b"authorization: bearer secret" in up_seen[0].lower()
    assert cdn_seen[0].startswith(b"GET /data?sig=1 HTTP/1.1\r\n")
    assert b"authorization" not in cdn_seen[0].lower()


async def test_a_redirect_loop_ends(nursery):
    with trio.fail_after(TIMEOUT):
        url = await serve_raw(nursery, sender(
            b"HTTP/1.1 302 Found\r\nLocation: /again\r\nContent-Length: 0\r\n\r\n"))
        with pytest.raises(blobget.TransportError, match="redirects"):
            async with blobget.open_get(url + "/b", {}, ssl_context=None, connect_timeout=5,
                                        read_timeout=5):
                pass


async def test_proxy_pulls_a_blob_an_authenticated_upstream_sends_from_a_cdn(nursery, tmp_path):
    """Docker Hub's shape: the blob GET (with credentials) answers 307 to a CDN on another
    origin; the proxy follows it without the credentials and stores the verified blob."""
    layer = os.urandom(3 * 1024 * 1024 + 5)
    d = digest(layer)
    cdn_seen: list[bytes] = []
    with trio.fail_after(TIMEOUT):
        cdn = await serve_raw(nursery, sender(OK + b"Content-Length: %d\r\n\r\n" % len(layer)
                                              + layer), cdn_seen)
        up, _ = await start_upstream(nursery, str(tmp_path / "up"))
        async with httpx.AsyncClient(base_url=up.url) as upc:
            await push_image(upc, "app", "1", layers=(b"small",))

        def to_cdn(scope: dict[str, Any]) -> Any:
            if scope["method"] != "GET" or not scope["path"].endswith(f"/blobs/{d}"):
                return None

            async def answer(scope: Any, receive: Any, send: Any) -> None:
                await respond(send, 307, b"", [(b"location", f"{cdn}/blob/{d}".encode())])
            return answer

        up.fault = to_cdn
        up.auth = "basic"
        url, _, _ = await start_proxy(nursery, str(tmp_path / "px"), [
            remote(up.url, username="puller", password="s3cret")])
        async with httpx.AsyncClient(base_url=url, timeout=20) as c:
            r = await c.get(f"/v2/app/blobs/{d}")
            assert r.status_code == 200 and r.content == layer
            up.fault = None
            cdn_seen_before = len(cdn_seen)
            r = await c.get(f"/v2/app/blobs/{d}")  # from the proxy's storage now
            assert r.status_code == 200 and r.content == layer
    assert len(cdn_seen) == cdn_seen_before == 1
    assert b"authorization" not in cdn_seen[0].lower()
    assert up.count("GET", f"/blobs/{d}") == 2  # the 401, then the authorized GET


def test_a_pool_buffer_is_reused_only_once_nobody_holds_it():
    pool = blobget.Pool()
    first = pool.take(10 * blobget.BODY_PIECE)
    first_id = id(first)
    view = memoryview(first)[5:]  # a consumer's view keeps it too
    second = pool.take(10 * blobget.BODY_PIECE)
    assert second is not first and len(second) == blobget.BODY_PIECE
    del first
    assert pool.take(10 * blobget.BODY_PIECE) is not view.obj  # the view still holds it
    view.release()
    del view
    reused = pool.take(10 * blobget.BODY_PIECE)
    assert id(reused) == first_id  # free again: handed out again, no new buffer
    assert len(pool.take(5)) == 5  # a short last piece: exactly its size, never pooled
    held = [pool.take(10 * blobget.BODY_PIECE) for _ in range(2 * blobget.POOL_BUFFERS)]
    assert len({id(b) for b in held}) == len(held)  # all held: never the same buffer twice
