"""registry/http/h1server.py: our own HTTP/1.1 loop, byte for byte over real sockets.

The real registry app (built as `registry serve` builds it) or a small ASGI app served by
hypercorn's trio worker with our TCP server (conn.py), on 127.0.0.1:0: keep-alive, framing,
the smuggling table, HTTP/1.0, HEAD, chunked responses, the zerocopysend extension and the
blob GETs that use it (sendfile on plain TCP, read+send over TLS)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import ssl
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, Self

import httpx
import pytest
import trio
from conftest import recv_until
from oci import push_blob
from test_adversarial_conn import registry_config, serve_registry
from test_tls import make_certs

from registry.config import Config
from registry.http.deadlines import ConnLimits
from registry.http.h1server import FEED_SLICE, MAX_HEAD, PIECE, H1Connection, _Head
from registry.server import hypercorn_config

BOUND = 20  # seconds any one socket operation of a test may take
MiB = 1024 * 1024


class Wire:
    """A blocking client socket and the bytes read past the last response (pipelining)."""

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.buf = b""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def close(self) -> None:
        self.sock.close()

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def setsockopt(self, *args: Any) -> None:
        self.sock.setsockopt(*args)

    def recv(self, n: int) -> bytes:
        if self.buf:
            data, self.buf = self.buf[:n], self.buf[n:]
            return data
        return bytes(self.sock.recv(n))

    def _fill(self, n: int) -> bool:
        """Buffer at least ``n`` bytes; False at EOF."""
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                return False
            self.buf += chunk
        return True

    def _until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                data, self.buf = self.buf, b""
                return data
            self.buf += chunk
        data, _, self.buf = self.buf.partition(marker)
        return data + marker

    def response(self, head_only: bool = False) -> tuple[bytes, dict[bytes, bytes], bytes]:
        """(status line, headers, body by Content-Length, chunked or close); ``head_only``
        for HEAD answers."""
        head = self._until(b"\r\n\r\n")[:-4]
        lines = head.split(b"\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if head_only:
            return lines[0], headers, b""
        if b"content-length" in headers:
            n = int(headers[b"content-length"])
            self._fill(n)
            body, self.buf = self.buf[:n], self.buf[n:]
            return lines[0], headers, body
        if headers.get(b"transfer-encoding") == b"chunked":
            body = b""
            while True:
                size = int(self._until(b"\r\n")[:-2].split(b";")[0], 16)
                self._fill(size + 2)
                body += self.buf[:size]
                self.buf = self.buf[size + 2 :]
                if size == 0:
                    return lines[0], headers, body
        while chunk := self.sock.recv(65536):  # close-delimited
            self.buf += chunk
        body, self.buf = self.buf, b""
        return lines[0], headers, body


def _read_response(wire: Wire, head_only: bool = False) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """One response from ``wire`` (see Wire.response)."""
    return wire.response(head_only)


def _connect(port: int, tls: ssl.SSLContext | None = None) -> Wire:
    sock = socket.create_connection(("127.0.0.1", port), timeout=BOUND)
    if tls is not None:
        return Wire(tls.wrap_socket(sock, server_hostname="127.0.0.1"))
    return Wire(sock)


def _closed(sock: Wire) -> bool:
    """The server closed the connection (EOF or reset) within BOUND."""
    try:
        return sock.recv(65536) == b""
    except (ConnectionResetError, ssl.SSLError):
        return True


async def _in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    return await trio.to_thread.run_sync(partial(fn, *args))


@pytest.fixture
async def registry(nursery: trio.Nursery, tmp_path: Path) -> int:
    _, port = await serve_registry(nursery, registry_config(tmp_path))
    return port


# --- keep-alive, HTTP/1.0, HEAD, the response head -----------------------------------------


async def test_one_connection_serves_many_requests_in_turn(registry: int) -> None:
    def run() -> list[bytes]:
        with _connect(registry) as s:
            statuses = []
            for _ in range(200):
                s.sendall(b"GET /v2/ HTTP/1.1\r\nHost: t\r\n\r\n")
                status, _, body = _read_response(s)
                assert body == b"{}"
                statuses.append(status)
            return statuses

    assert set(await _in_thread(run)) == {b"HTTP/1.1 200 OK"}


async def test_response_head_has_reason_date_and_no_server(registry: int) -> None:
    def run() -> tuple[bytes, dict[bytes, bytes]]:
        with _connect(registry) as s:
            s.sendall(b"GET /v2/nope/manifests/x HTTP/1.1\r\nHost: t\r\n\r\n")
            status, headers, _ = _read_response(s)
            return status, headers

    status, headers = await _in_thread(run)
    assert status == b"HTTP/1.1 404 Not Found"
    assert headers[b"date"].endswith(b" GMT") and b"server" not in headers


async def test_http10_and_connection_close_end_the_connection_after_the_answer(
    registry: int,
) -> None:
    def run(request: bytes) -> tuple[bytes, bytes, bool]:
        with _connect(registry) as s:
            s.sendall(request)
            status, _, body = _read_response(s)
            return status, body, _closed(s)

    for request in (
        b"GET /v2/ HTTP/1.0\r\n\r\n",
        b"GET /v2/ HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    ):
        status, body, closed = await _in_thread(run, request)
        assert status.endswith(b" 200 OK") and body == b"{}" and closed, request


async def test_head_answers_carry_no_body_and_keep_the_connection(
    registry: int, tmp_path: Path
) -> None:
    data = os.urandom(300_000)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{registry}") as c:
        d = await push_blob(c, "h1/head", data)

    def run() -> tuple[dict[bytes, bytes], bytes, bytes]:
        with _connect(registry) as s:
            s.sendall(b"HEAD /v2/h1/head/blobs/%s HTTP/1.1\r\nHost: t\r\n\r\n" % d.encode())
            _, headers, extra = _read_response(s, head_only=True)
            s.sendall(b"GET /v2/ HTTP/1.1\r\nHost: t\r\n\r\n")  # the same connection goes on
            status, _, body = _read_response(s)
            return headers, extra + status, body

    headers, after, body = await _in_thread(run)
    assert headers[b"content-length"] == b"300000"
    assert after == b"HTTP/1.1 200 OK" and body == b"{}"  # nothing between the two answers


# --- bodies: chunked, trailers, the smuggling table ---------------------------------------


async def test_chunked_bodies_with_extensions_and_trailers_reach_the_app_exact(
    registry: int,
) -> None:
    data = os.urandom(3 * MiB + 17)
    d = "sha256:" + hashlib.sha256(data).hexdigest()
    sizes = [1, 4096, 32 * 1024, MiB + 3]
    parts, at = [], 0
    while at < len(data):
        n = sizes[len(parts) % len(sizes)]
        piece = data[at : at + n]
        parts.append(b"%x;name=value\r\n%s\r\n" % (len(piece), piece))
        at += n
    body = b"".join(parts) + b"0\r\nX-Trailer: yes\r\n\r\n"

    def run() -> tuple[bytes, bytes]:
        with _connect(registry) as s:
            s.sendall(
                b"POST /v2/h1/chunked/blobs/uploads/?digest=%s HTTP/1.1\r\nHost: t\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n%s" % (d.encode(), body)
            )
            status, _, _ = _read_response(s)
            s.sendall(b"GET /v2/h1/chunked/blobs/%s HTTP/1.1\r\nHost: t\r\n\r\n" % d.encode())
            _, _, got = _read_response(s)
            return status, got

    status, got = await _in_thread(run)
    assert status == b"HTTP/1.1 201 Created"
    assert got == data


HOSTILE = [
    # (what, raw request, expected status)
    ("content-length with transfer-encoding",
     (b"POST /v2/ HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"0\r\n\r\n"), 400),
    ("two differing content-lengths",
     b"POST /v2/ HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde", 400),
    ("content-length not a number",
     b"POST /v2/ HTTP/1.1\r\nHost: t\r\nContent-Length: nope\r\n\r\n", 400),
    ("bad chunk size",
     (b"PATCH /v2/a/blobs/uploads/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"zz\r\nabc\r\n0\r\n\r\n"), 400),
    ("chunk longer than its size",
     (b"PATCH /v2/a/blobs/uploads/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"2\r\nabcdef\r\n0\r\n\r\n"), 400),
    ("obs-fold",
     b"GET /v2/ HTTP/1.1\r\nHost: t\r\nX-A: one\r\n two\r\n\r\n", 400),
    ("header name with a space",
     b"GET /v2/ HTTP/1.1\r\nHost: t\r\nX A: one\r\n\r\n", 400),
    ("header value with a NUL",
     b"GET /v2/ HTTP/1.1\r\nHost: t\r\nX-A: o\x00ne\r\n\r\n", 400),
    ("transfer-encoding that is not chunked",
     b"POST /v2/ HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\nabc", 400),
    ("no Host",
     b"GET /v2/ HTTP/1.1\r\n\r\n", 400),
    ("two Hosts",
     b"GET /v2/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("garbage",
     b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),
    ("head past the limit",
     b"GET /v2/ HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * (MAX_HEAD + 10) + b"\r\n\r\n", 431),
    ("websocket upgrade",
     (b"GET /v2/ HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
     b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"), 400),
]


@pytest.mark.parametrize(("what", "request_bytes", "status"), HOSTILE, ids=[h[0] for h in HOSTILE])
async def test_hostile_requests_get_a_json_error_and_a_close(
    registry: int, what: str, request_bytes: bytes, status: int
) -> None:
    def run() -> tuple[bytes, bytes, bool]:
        with _connect(registry) as s:
            s.sendall(request_bytes)
            line, _, body = _read_response(s)
            return line, body, _closed(s)

    line, body, closed = await _in_thread(run)
    assert line.startswith(b"HTTP/1.1 %d " % status), (what, line)
    assert json.loads(body)["errors"][0]["code"], what
    assert closed, what

    def still_serving() -> bytes:
        with _connect(registry) as s:
            s.sendall(b"GET /v2/ HTTP/1.1\r\nHost: t\r\n\r\n")
            return _read_response(s)[0]

    assert await _in_thread(still_serving) == b"HTTP/1.1 200 OK"


async def test_upgrade_h2c_with_keep_alive_is_answered_as_http11_and_the_connection_goes_on(
    registry: int,
) -> None:
    def run() -> tuple[bytes, bytes]:
        with _connect(registry) as s:
            s.sendall(
                b"GET /v2/ HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
                b"GET /v2/ HTTP/1.1\r\nHost: t\r\n\r\n"
            )
            return _read_response(s)[0], _read_response(s)[0]

    assert await _in_thread(run) == (b"HTTP/1.1 200 OK", b"HTTP/1.1 200 OK")


# --- responses without Content-Length; the zerocopysend extension --------------------------


class FileApp:
    """Answers GET /chunked with three pieces and no Content-Length, GET /file?a-b with
    bytes [a, b) of ``path`` through http.response.zerocopysend (with a Content-Length
    unless the query ends in ``-c``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.extensions: dict[str, Any] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        self.extensions = scope["extensions"]
        if scope["path"] == "/chunked":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for piece in (b"one", b"", b"two" * 1000):
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            await send({"type": "http.response.body", "body": b"!"})
            return
        query = scope["query_string"].decode()
        chunked = query.endswith("-c")
        start, end = (int(x) for x in query.removesuffix("-c").split("-"))
        headers = [] if chunked else [(b"content-length", b"%d" % (end - start))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        with open(self.path, "rb") as f:  # noqa: ASYNC230  # a local file: opening does not block
            await send({"type": "http.response.zerocopysend", "file": f, "offset": start,
                        "count": end - start, "more_body": False})


@pytest.fixture
async def file_app(nursery: trio.Nursery, tmp_path: Path) -> tuple[int, FileApp, bytes]:
    from hypercorn.trio import serve

    data = os.urandom(9 * MiB + 5)
    path = tmp_path / "data"
    path.write_bytes(data)
    app = FileApp(path)
    hc = hypercorn_config(Config())
    hc.bind = ["127.0.0.1:0"]
    hc.graceful_timeout = 0.2
    binds = await nursery.start(partial(serve, app, hc, mode="asgi"))  # type: ignore[arg-type]
    return int(binds[0].rsplit(":", 1)[1]), app, data


async def test_a_response_without_content_length_is_chunked(file_app: tuple[int, FileApp, bytes]) -> None:
    port, _, _ = file_app

    def run() -> tuple[dict[bytes, bytes], bytes, bytes]:
        with _connect(port) as s:
            s.sendall(b"GET /chunked HTTP/1.1\r\nHost: t\r\n\r\nGET /chunked HTTP/1.0\r\n\r\n")
            _, headers, body = _read_response(s)
            _, _, body10 = _read_response(s)  # HTTP/1.0: close-delimited
            return headers, body, body10

    headers, body, body10 = await _in_thread(run)
    assert headers[b"transfer-encoding"] == b"chunked"
    assert body == body10 == b"one" + b"two" * 1000 + b"!"


@pytest.mark.parametrize("span", ["0-9437189", "5-1048581", "1048576-1048577", "7-9437189-c"])
async def test_zerocopysend_sends_the_files_bytes_on_a_kept_connection(
    file_app: tuple[int, FileApp, bytes], span: str
) -> None:
    port, app, data = file_app
    start, end = (int(x) for x in span.removesuffix("-c").split("-"))

    def run() -> tuple[bytes, bytes]:
        with _connect(port) as s:
            s.sendall(b"GET /file?%s HTTP/1.1\r\nHost: t\r\n\r\n" % span.encode())
            _, _, body = _read_response(s)
            s.sendall(b"GET /chunked HTTP/1.1\r\nHost: t\r\n\r\n")
            return body, _read_response(s)[0]

    body, next_status = await _in_thread(run)
    assert "http.response.zerocopysend" in app.extensions
    assert body == data[start:end]
    assert next_status == b"HTTP/1.1 200 OK"


# --- blob GETs through sendfile, and their failure modes ----------------------------------


async def _push(port: int, name: str, data: bytes, tls: ssl.SSLContext | None = None) -> str:
    scheme = "https" if tls else "http"
    async with httpx.AsyncClient(base_url=f"{scheme}://127.0.0.1:{port}", verify=tls or True) as c:
        return await push_blob(c, name, data)


@pytest.mark.parametrize("tls", [False, True], ids=["sendfile", "tls-fallback"])
async def test_blob_get_full_range_and_head(nursery: trio.Nursery, tmp_path: Path, tls: bool) -> None:
    context = None
    env = {}
    if tls:
        ca, cert, key, _ = make_certs(tmp_path)
        env = {"REGISTRY_HTTP_TLS_CERTIFICATE": str(cert), "REGISTRY_HTTP_TLS_KEY": str(key)}
        context = ssl.create_default_context()
        ca.configure_trust(context)
        context.set_alpn_protocols(["http/1.1"])  # our loop (h2 goes to hypercorn)
    _, port = await serve_registry(nursery, registry_config(tmp_path, **env))
    data = os.urandom(5 * MiB + 123)
    d = (await _push(port, "h1/get", data, context)).encode()

    def run() -> list[tuple[bytes, dict[bytes, bytes], bytes]]:
        out = []
        with _connect(port, context) as s:
            for extra, head in [(b"", False), (b"Range: bytes=1000-2099999\r\n", False),
                                (b"Range: bytes=-10\r\n", False), (b"", True)]:
                method = b"HEAD" if head else b"GET"
                s.sendall(b"%s /v2/h1/get/blobs/%s HTTP/1.1\r\nHost: t\r\n%s\r\n" % (method, d, extra))
                out.append(_read_response(s, head_only=head))
        return out

    full, ranged, suffix, head = await _in_thread(run)
    assert full[0] == b"HTTP/1.1 200 OK" and full[2] == data
    assert ranged[0] == b"HTTP/1.1 206 Partial Content" and ranged[2] == data[1000:2100000]
    assert ranged[1][b"content-range"] == b"bytes 1000-2099999/%d" % len(data)
    assert suffix[2] == data[-10:]
    assert head[1][b"content-length"] == b"%d" % len(data) and head[2] == b""


def _open_fds_to(path_part: str) -> list[str]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if path_part in target:
            found.append(target)
    return found


async def test_a_client_gone_mid_blob_ends_the_send_and_closes_the_file(
    registry: int, tmp_path: Path
) -> None:
    data = os.urandom(48 * MiB)
    d = await _push(registry, "h1/gone", data)

    def run() -> None:
        s = _connect(registry)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        s.sendall(b"GET /v2/h1/gone/blobs/%s HTTP/1.1\r\nHost: t\r\n\r\n" % d.encode())
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()  # a reset: the server's next sendfile fails

    await _in_thread(run)
    blob_dir = str(tmp_path / "root")
    with trio.fail_after(BOUND):
        while _open_fds_to(blob_dir + "/docker/registry/v2/blobs"):
            await trio.sleep(0.05)

    def still_serving() -> bytes:
        with _connect(registry) as s:
            s.sendall(b"GET /v2/ HTTP/1.1\r\nHost: t\r\n\r\n")
            return _read_response(s)[0]

    assert await _in_thread(still_serving) == b"HTTP/1.1 200 OK"


async def test_a_blob_truncated_during_the_send_ends_the_connection_short(
    registry: int, tmp_path: Path
) -> None:
    data = os.urandom(64 * MiB)
    d = await _push(registry, "h1/short", data)
    hexd = d.split(":", 1)[1]
    blob = tmp_path / "root" / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"
    assert blob.stat().st_size == len(data)

    def run() -> tuple[int, int, bool]:
        with _connect(registry) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            s.sendall(b"GET /v2/h1/short/blobs/%s HTTP/1.1\r\nHost: t\r\n\r\n" % d.encode())
            got = recv_until(s, b"\r\n\r\n")
            head, _, body = got.partition(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            os.truncate(blob, 8 * MiB)  # the server has sent far less than this so far
            received = len(body)
            while True:
                try:
                    chunk = s.recv(MiB)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                received += len(chunk)
            return length, received, True

    length, received, closed = await _in_thread(run)
    assert length == len(data)
    assert received < length and closed  # never fewer bytes on a connection kept alive


# --- graceful shutdown --------------------------------------------------------------------


async def test_shutdown_closes_idle_connections_at_once_and_finishes_a_request_in_flight(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from hypercorn.trio import serve

    from registry.server import build_app

    config = registry_config(tmp_path)
    hc = hypercorn_config(config)
    hc.bind = ["127.0.0.1:0"]
    hc.graceful_timeout = 30  # the request in flight has time; idle ones must not wait for it
    stop = trio.Event()
    served = trio.Event()

    async def run_server(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        await serve(build_app(config), hc, shutdown_trigger=stop.wait, task_status=task_status)
        served.set()

    binds = await nursery.start(run_server)
    port = int(binds[0].rsplit(":", 1)[1])
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
        r = await c.post("/v2/h1/drain/blobs/uploads/")
        location = httpx.URL(r.headers["location"]).raw_path  # path and query
    body = os.urandom(2 * MiB)
    busy = await trio.open_tcp_stream("127.0.0.1", port)
    idle = await trio.open_tcp_stream("127.0.0.1", port)
    async with busy, idle:
        await idle.send_all(b"GET /v2/ HTTP/1.1\r\nHost: t\r\n\r\n")
        assert (await idle.receive_some(65536)).startswith(b"HTTP/1.1 200 OK")
        await busy.send_all(
            b"PATCH %s HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s"
            % (location, len(body), body[: MiB])
        )
        await trio.sleep(0.2)  # the app is reading the body
        with trio.fail_after(BOUND):
            stop.set()
            assert await idle.receive_some(65536) == b""  # closed now, not after 30 s
            await busy.send_all(body[MiB:])
            reply = b""
            while chunk := await busy.receive_some(65536):  # the answer, then the close
                reply += chunk
            await served.wait()
    assert reply.startswith(b"HTTP/1.1 202 Accepted"), reply[:200]
    assert b"range: 0-%d" % (len(body) - 1) in reply.lower()
    assert b"connection: close" in reply.lower()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


async def test_open_local_gives_the_blob_file_only_where_the_driver_keeps_files(
    tmp_path: Path,
) -> None:
    from registry.digest import Digest
    from registry.drivers.base import PathNotFound
    from registry.drivers.filesystem import FilesystemDriver
    from registry.drivers.memory import MemoryDriver
    from registry.errors import RegistryError
    from registry.storage.blobs import BlobStore
    from registry.storage.paths import blob_data

    data = b"local bytes"
    d = Digest.parse("sha256:" + hashlib.sha256(data).hexdigest())
    fs = FilesystemDriver(str(tmp_path))
    await fs.put_content(blob_data(d), data)
    f = await BlobStore(fs).open_local(d)
    assert f is not None
    with f:
        assert f.read() == data
    with pytest.raises(PathNotFound):
        await fs.open_local("/docker")  # a directory is no blob
    missing = Digest.parse("sha256:" + "0" * 64)
    with pytest.raises(RegistryError, match="BLOB_UNKNOWN"):
        await BlobStore(fs).open_local(missing)
    assert await BlobStore(MemoryDriver()).open_local(d) is None  # no local files: streamed


async def test_a_blob_out_of_the_page_cache_is_sent_whole(registry: int, tmp_path: Path) -> None:
    from registry.http.h1send import resident

    data = os.urandom(12 * MiB + 7)
    d = await _push(registry, "h1/cold", data)
    hexd = d.split(":", 1)[1]
    blob = tmp_path / "root" / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"
    fd = os.open(blob, os.O_RDONLY)
    try:
        os.fsync(fd)  # clean pages can be dropped
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        cold = not resident(fd, 0, len(data))
    finally:
        os.close(fd)

    def run() -> bytes:
        with _connect(registry) as s:
            s.sendall(b"GET /v2/h1/cold/blobs/%s HTTP/1.1\r\nHost: t\r\n\r\n" % d.encode())
            return _read_response(s)[2]

    assert await _in_thread(run) == data  # sent from a worker thread: the pages were cold
    assert cold or not hasattr(os, "RWF_NOWAIT") or _on_tmpfs(tmp_path), "no cold pages seen"


def _on_tmpfs(path: Path) -> bool:
    """``path`` is on tmpfs (no RWF_NOWAIT there: the probe cannot tell, and need not)."""
    best, fstype = "", ""
    with open("/proc/mounts") as mounts:
        for line in mounts:
            _, mnt, kind, *_ = line.split()
            if str(path).startswith(mnt) and len(mnt) > len(best):
                best, fstype = mnt, kind
    return fstype == "tmpfs"


async def test_header_names_go_out_in_gos_canonical_case(registry: int) -> None:
    """registry:3 (Go's net/http) writes `Docker-Content-Digest`, and users grep `curl -I`
    output for it case-sensitively (issue 15): the names on the wire are canonical, on
    answers from the app and on errors the loop writes itself."""
    digest = await _push(registry, "h1/case", b"case" * 100)

    def head_of(request: bytes) -> list[bytes]:
        with socket.create_connection(("127.0.0.1", registry), timeout=BOUND) as s:
            s.sendall(request)
            raw = b""
            while b"\r\n\r\n" not in raw:
                chunk = s.recv(65536)
                assert chunk, raw
                raw += chunk
        return [line.split(b":")[0] for line in raw.split(b"\r\n\r\n")[0].split(b"\r\n")[1:]]

    names = await _in_thread(
        head_of, b"HEAD /v2/h1/case/blobs/%s HTTP/1.1\r\nHost: t\r\n\r\n" % digest.encode()
    )
    for name in (b"Docker-Content-Digest", b"Content-Length", b"Docker-Distribution-Api-Version", b"Date"):
        assert name in names, names
    assert all(n == b"-".join(w.capitalize() for w in n.split(b"-")) for n in names), names
    names = await _in_thread(head_of, b"GET /v2/ HTTP/1.1\r\nHost: t\r\nContent-Length: x\r\n\r\n")
    assert b"Content-Type" in names and b"Connection" in names, names


async def test_many_pipelined_upgrade_h2c_requests_are_all_answered(registry: int) -> None:
    # Each ignored Upgrade makes llhttp stop mid-read; what follows must be parsed without
    # one Python frame (and one copy of the rest of the read) per request in the read.
    count = 3000
    one = (b"GET /v2/ HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")

    def run() -> list[bytes]:
        with _connect(registry) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * MiB)
            s.sendall(one * count)
            return [_read_response(s)[0] for _ in range(count)]

    assert set(await _in_thread(run)) == {b"HTTP/1.1 200 OK"}


def test_parsing_stops_at_the_first_head_not_taken_so_pipelined_requests_cost_their_bytes() -> None:
    # 512 KiB of pipelined tiny requests parsed at once held ~17x that in objects per
    # connection; parsing stops after the slice with the first head not taken and keeps
    # the rest as bytes.
    conn = H1Connection(None, object(), context=None, limits=ConnLimits(), gate=None,
                        ssl=True, client=None, server=None)
    one = b"GET /v2/ HTTP/1.1\r\nHost: t\r\n\r\n"
    data = one * (PIECE // len(one))
    conn._feed(data)
    assert 1 <= sum(type(e) is _Head for e in conn._events) <= FEED_SLICE // len(one) + 1
    assert len(conn._unfed) >= len(data) - FEED_SLICE


async def test_pipelined_uploads_with_bodies_are_each_stored_whole(registry: int) -> None:
    blobs = [os.urandom(n) for n in (1, 300 * 1024, 3 * MiB + 5, 0, 70 * 1024)]

    def run() -> list[bytes]:
        with _connect(registry) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 * MiB)
            out = b""
            for data in blobs:
                d = "sha256:" + hashlib.sha256(data).hexdigest()
                out += (b"POST /v2/pipe/blobs/uploads/?digest=%s HTTP/1.1\r\nHost: t\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (d.encode(), len(data), data))
            s.sendall(out)
            return [_read_response(s)[0] for _ in blobs]

    assert set(await _in_thread(run)) == {b"HTTP/1.1 201 Created"}
    for data in blobs:
        d = "sha256:" + hashlib.sha256(data).hexdigest()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{registry}") as c:
            r = await c.get(f"/v2/pipe/blobs/{d}")
        assert r.status_code == 200 and r.content == data
