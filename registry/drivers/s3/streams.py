"""Streamed GET bodies read straight off the socket, with a small keep-alive pool.

Why not httpx for these: a streamed body through httpx/httpcore/h11 is copied four or five
times per piece (h11's receive buffer append, its slice-to-test plus extract, httpcore's
``bytes()``, httpx's re-chunking). Measured against moto on this machine (2 cores), a
256 MiB GET ran at ~185 MB/s through httpx and ~950 MB/s reading the socket directly.
Everything else (small requests, bodies we send) stays on httpx.

Scope, on purpose small: HTTP/1.1, one request per connection at a time, responses framed
by ``Content-Length`` (what S3 and R2 send for GetObject and for their error documents).
A response without one (chunked, or read-to-close) raises :class:`Unframed`; the client
then falls back to httpx for that request and every later one.

Contracts:

- :meth:`StreamPool.send` returns a :class:`RawResponse` once its head has arrived, or
  raises an ``httpx.TransportError`` subclass (``ConnectError`` when no connection could be
  made, ``ReadError``/``RemoteProtocolError``/``ReadTimeout`` otherwise) so the caller's
  retry rules stay the same as for httpx. A pooled connection that turns out closed is
  replaced by a fresh one once, silently (the request never reached a server).
- :meth:`RawResponse.receive` returns the next piece of the body (at most ``READ_BYTES``,
  whatever the socket had), ``b""`` at the end; each read is bounded by the read timeout.
- :meth:`RawResponse.aclose` is idempotent and safe under cancellation: a connection whose
  body was read to the end goes back to the pool, any other is closed.
- At most ``max_connections`` streams are open at once (others wait, up to the pool
  timeout); at most ``MAX_IDLE`` idle connections are kept.
"""

from __future__ import annotations

import ssl
from urllib.parse import urlsplit

import httpx
import trio

KiB = 1024
# Per socket read. Below the process's malloc mmap threshold (cli.MMAP_THRESHOLD, 1 MiB),
# so the receive buffer is warm heap, not a fresh mapping faulted in page by page;
# 256-512 KiB measured fastest (~1 GB/s from moto; 1 MiB reads ~780 MB/s, 64 KiB ~750).
READ_BYTES = 512 * KiB
HEAD_LIMIT = 64 * KiB  # a response head larger than this is refused
MAX_IDLE = 8  # idle keep-alive connections kept for later streams


class Unframed(Exception):
    """The response is not framed by Content-Length: this module does not read it."""


class _StaleConnection(Exception):
    """The connection ended before a single response byte: the request was not answered."""


class _Conn:
    def __init__(self, stream: trio.abc.Stream, host: str) -> None:
        self.stream = stream
        self.host = host  # the Host it was opened for (the pool key)
        self.buffer = b""  # bytes read past the head (the body's first piece)


class RawResponse:
    """One response: status, headers, and its body read on demand. See module contracts."""

    def __init__(
        self,
        pool: StreamPool,
        conn: _Conn,
        status: int,
        headers: httpx.Headers,
        length: int,
        keep_alive: bool,
        token: object,
    ) -> None:
        self._pool = pool
        self._conn: _Conn | None = conn
        self.status_code = status
        self.headers = headers
        self._left = length
        self._keep_alive = keep_alive
        self._token: object | None = token

    async def receive(self) -> bytes:
        """The next piece of the body, ``b""`` once it is all read."""
        conn = self._conn
        if conn is None or self._left == 0:
            return b""
        data: bytes
        if conn.buffer:
            if len(conn.buffer) > self._left:  # bytes past the body: never reuse this one
                self._keep_alive = False
            data, conn.buffer = conn.buffer[: self._left], b""
        else:
            try:
                with trio.fail_after(self._pool.read_timeout):
                    got = await conn.stream.receive_some(min(READ_BYTES, self._left))
                data = got if isinstance(got, bytes) else bytes(got)
            except trio.TooSlowError:
                raise httpx.ReadTimeout("S3 response body stalled") from None
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise httpx.ReadError(f"S3 response body broke: {exc}") from exc
            if not data:
                raise httpx.RemoteProtocolError(
                    f"S3 closed the connection with {self._left} body bytes unread"
                )
        self._left -= len(data)
        return data

    async def aread(self) -> bytes:
        """The rest of the body (used for error documents, which are small)."""
        pieces = []
        while piece := await self.receive():
            pieces.append(piece)
        return b"".join(pieces)

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        token, self._token = self._token, None
        try:
            if conn is not None:
                reusable = self._left == 0 and self._keep_alive
                if not (reusable and self._pool._give_back(conn)):
                    await trio.aclose_forcefully(conn.stream)
        finally:
            if token is not None:
                self._pool._release(token)


def _parse_head(head: bytes) -> tuple[int, httpx.Headers]:
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise httpx.RemoteProtocolError(f"bad S3 status line: {lines[0][:100]!r}")
    headers: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise httpx.RemoteProtocolError(f"bad S3 response header: {line[:100]!r}")
        headers.append((name, value.strip()))
    return int(parts[1]), httpx.Headers(headers)


class StreamPool:
    """Connections for streamed GETs to one S3 endpoint (scheme + host[:port])."""

    def __init__(
        self,
        scheme: str,
        ssl_context: ssl.SSLContext | None,
        *,
        max_connections: int,
        connect_timeout: float,
        read_timeout: float,
        pool_timeout: float,
    ) -> None:
        self.scheme = scheme
        self.ssl_context = ssl_context
        self.read_timeout = read_timeout
        self.connect_timeout = connect_timeout
        self.pool_timeout = pool_timeout
        self._limit = trio.CapacityLimiter(max(1, max_connections))
        self._idle: dict[str, list[_Conn]] = {}
        self._closed = False

    # -- connections -------------------------------------------------------------------------

    async def _connect(self, host: str) -> _Conn:
        split = urlsplit(f"{self.scheme}://{host}")
        hostname = split.hostname or host
        port = split.port or (443 if self.scheme == "https" else 80)
        try:
            with trio.fail_after(self.connect_timeout):
                tcp = await trio.open_tcp_stream(hostname, port)
                stream: trio.abc.Stream = tcp
                if self.scheme == "https":
                    assert self.ssl_context is not None
                    tls = trio.SSLStream(
                        tcp, self.ssl_context, server_hostname=hostname, https_compatible=True
                    )
                    try:
                        await tls.do_handshake()
                    except BaseException:
                        await trio.aclose_forcefully(tcp)
                        raise
                    stream = tls
        except trio.TooSlowError:
            raise httpx.ConnectTimeout(f"connecting to {host} timed out") from None
        except (OSError, trio.BrokenResourceError, ssl.SSLError) as exc:
            raise httpx.ConnectError(f"{type(exc).__name__}: {exc}") from exc
        return _Conn(stream, host)

    def _give_back(self, conn: _Conn) -> bool:
        """Keep an idle connection for later; False: the caller closes it instead."""
        idle = self._idle.setdefault(conn.host, [])
        if self._closed or len(idle) >= MAX_IDLE:
            return False
        idle.append(conn)
        return True

    def _release(self, token: object) -> None:
        self._limit.release_on_behalf_of(token)

    # -- requests ----------------------------------------------------------------------------

    async def send(self, request: httpx.Request) -> RawResponse:
        """Send a bodyless request and return once the response head is in. See contracts."""
        host = request.headers["host"]
        target = request.url.raw_path
        head = [request.method.encode(), b" ", target, b" HTTP/1.1\r\n"]
        for name, value in request.headers.raw:
            head += [name, b": ", value, b"\r\n"]
        head.append(b"\r\n")
        wire = b"".join(head)
        token = object()
        try:
            with trio.fail_after(self.pool_timeout):
                await self._limit.acquire_on_behalf_of(token)
        except trio.TooSlowError:
            raise httpx.PoolTimeout("no S3 connection free for a streamed GET") from None
        try:
            return await self._exchange(host, wire, token)
        except BaseException:
            self._limit.release_on_behalf_of(token)
            raise

    async def _exchange(self, host: str, wire: bytes, token: object) -> RawResponse:
        idle = self._idle.get(host, [])
        while True:
            reused = bool(idle)
            conn = idle.pop() if reused else await self._connect(host)
            try:
                return await self._start(conn, wire, token)
            except _StaleConnection:
                await trio.aclose_forcefully(conn.stream)
                if reused:
                    continue  # a kept-alive connection the server had closed: try afresh
                raise httpx.RemoteProtocolError("S3 closed the connection without answering")
            except BaseException:
                await trio.aclose_forcefully(conn.stream)
                raise

    async def _start(self, conn: _Conn, wire: bytes, token: object) -> RawResponse:
        buffered = b""
        try:
            with trio.fail_after(self.read_timeout):
                await conn.stream.send_all(wire)
                while (end := buffered.find(b"\r\n\r\n")) < 0:
                    if len(buffered) > HEAD_LIMIT:
                        raise httpx.RemoteProtocolError("S3 response head too large")
                    data = await conn.stream.receive_some(READ_BYTES)
                    if not data:
                        if not buffered:
                            raise _StaleConnection
                        raise httpx.RemoteProtocolError("S3 closed the connection mid-head")
                    buffered += data
        except trio.TooSlowError:
            raise httpx.ReadTimeout("S3 did not answer in time") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            if not buffered:
                raise _StaleConnection from exc
            raise httpx.ReadError(f"S3 connection broke: {exc}") from exc
        status, headers = _parse_head(buffered[:end])
        conn.buffer = buffered[end + 4 :]
        if "transfer-encoding" in headers or not headers.get("content-length", "").isdigit():
            raise Unframed(f"S3 answered {status} without a Content-Length")
        keep_alive = "close" not in headers.get("connection", "").lower()
        return RawResponse(
            self, conn, status, headers, int(headers["content-length"]), keep_alive, token
        )

    async def aclose(self) -> None:
        """Close every idle connection; later returns are closed instead of kept."""
        self._closed = True
        idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                await trio.aclose_forcefully(conn.stream)
