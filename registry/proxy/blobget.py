"""The upstream blob GET without h11: one HTTP/1.1 exchange per blob on a connection of its
own, the body read straight from the socket into large buffers (issue 16, "Speed").

Why: through httpx -> httpcore -> h11 every body byte is copied three times (h11's receive
buffer grows, is sliced, and shrinks) and a cold 256 MiB pull cost about 2.5x the CPU of
registry:3's. Here the response head is parsed by httptools (already the server's parser,
``http/h1server.py``) and a ``Content-Length`` body is read with ``recv_into`` into
BODY_PIECE-sized buffers: one copy, from the kernel. A body without a length (chunked, or
until close) goes through the parser, which decodes it (one copy more; upstreams rarely send
blobs so).

Contract of :func:`open_get`:

- one fresh connection per call, closed when the block ends (a connection is never reused,
  so one whose body was not read whole can never serve another request); the caller bounds
  how many are open at once;
- redirects (Docker Hub and ghcr send blobs from a CDN with 307) are followed at most
  MAX_REDIRECTS times by :func:`redirect`, whose rules are pure (table-tested): only http
  and https, and the ``Authorization`` header never goes to another origin;
- https is verified with the context given (the Upstream's: httpx's own, so the system CA
  bundle / ``SSL_CERT_FILE`` rules are the same as for every other upstream request);
- every connect and every read has a deadline; any transport failure, deadline or
  malformed answer raises :class:`TransportError`.

Auth is not here: the caller (``upstream.Upstream``) adds the header and runs the flow on a
401, as it does for its other requests.
"""

from __future__ import annotations

import ssl
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

import httptools
import trio

MAX_REDIRECTS = 5  # hops followed (Docker Hub: 1, to its CDN); more is a loop
REDIRECTS = frozenset({301, 302, 303, 307, 308})
BODY_PIECE = 1024 * 1024  # bytes per body piece: the storage writer's unit (uploads._pump)
# buffers a body's pool keeps: the pieces a fetch has in flight (cache.py: the held-back
# one, two in each channel, one being sent, one being written) and the one being received
POOL_BUFFERS = 8
HEAD_READ = 64 * 1024  # bytes per read until the head is complete
MAX_HEAD = 64 * 1024  # a response head larger than this is not an upstream's answer


class TransportError(Exception):
    """The exchange failed: unreachable, deadline, closed early, or not HTTP."""


@dataclass(frozen=True)
class Hop:
    """Where a redirect leads: the URL and the headers to send there."""

    url: str
    headers: dict[str, str]


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or {"http": 80, "https": 443}.get(scheme)
    return scheme, (parts.hostname or "").lower(), port


def redirect(url: str, location: str | None, headers: Mapping[str, str]) -> Hop:
    """The next hop from ``url`` answered with ``Location: location``. Relative locations
    resolve against ``url``; the ``authorization`` header (keys lower-case) is dropped when
    the origin (scheme, host, port) changes, as browsers, curl and httpx do. Raises
    TransportError for a missing location or a scheme other than http/https."""
    if not location:
        raise TransportError("redirect without a Location")
    target = urljoin(url, location.strip())
    if urlsplit(target).scheme.lower() not in ("http", "https") or not urlsplit(target).hostname:
        raise TransportError(f"redirect to an unusable URL: {target[:200]!r}")
    kept = dict(headers)
    if _origin(target) != _origin(url):
        kept.pop("authorization", None)
    return Hop(target, kept)


@dataclass
class Head:
    """A parsed response head: status and headers (names lower-case, last one wins)."""

    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)


class _Parser:
    """httptools callbacks: the head, then (without a length) the decoded body pieces."""

    def __init__(self) -> None:
        self.head = Head()
        self.complete = False  # the head is parsed
        self.finished = False  # the whole message is parsed (chunked / until close)
        self.body: list[bytes] = []
        self._name = b""
        self.parser = httptools.HttpResponseParser(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head.headers[name.decode("latin-1").lower()] = value.decode("latin-1").strip()

    def on_headers_complete(self) -> None:
        self.complete = True
        self.head.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.finished = True


class Pool:
    """Body buffers used again: a fresh 1 MiB buffer per piece costs page faults and
    allocator work per piece. A buffer is handed out again only when nothing but the pool
    refers to it (CPython's reference count): whoever still holds a piece (a channel, the
    held-back last piece, a memoryview, a worker thread writing it) keeps it from being
    overwritten. At most POOL_BUFFERS are kept; past them a piece gets a fresh buffer, so
    the pool never makes anyone wait."""

    FREE_REFS = 3  # the pool's list, the loop variable, getrefcount's argument

    def __init__(self) -> None:
        self._buffers: list[bytearray] = []

    def take(self, left: int) -> bytearray:
        """A buffer for the next piece: BODY_PIECE bytes, or exactly ``left`` if fewer."""
        if left < BODY_PIECE:
            return bytearray(left)
        for b in self._buffers:
            if sys.getrefcount(b) == self.FREE_REFS:
                return b
        b = bytearray(BODY_PIECE)
        if len(self._buffers) < POOL_BUFFERS:
            self._buffers.append(b)
        return b


class Response:
    """An upstream answer: ``status``, ``headers``, ``length`` (Content-Length or None) and
    :meth:`pieces`, the body in pieces of up to BODY_PIECE bytes. A piece is the
    receiver's while it refers to it; once dropped, its buffer may be reused (:class:`Pool`):
    keep the piece object, never a raw pointer into it."""

    def __init__(self, stream: trio.abc.Stream, sock: trio.socket.SocketType | None,
                 p: _Parser, read_timeout: float) -> None:
        self._stream = stream
        self._sock = sock  # the plain socket (recv_into); None under TLS
        self._p = p
        self._timeout = read_timeout
        self.status = p.head.status
        self.headers = p.head.headers
        length = self.headers.get("content-length")
        chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        self.length = int(length) if length and length.isdigit() and not chunked else None

    async def _recv_into(self, view: memoryview) -> int:
        with trio.move_on_after(self._timeout):
            if self._sock is not None:
                return await self._sock.recv_into(view)
            data = await self._stream.receive_some(len(view))
            view[: len(data)] = data
            return len(data)
        raise TransportError(f"no body bytes in {self._timeout:.0f}s")

    async def pieces(self) -> AsyncIterator[bytearray]:
        """The body; TransportError if it ends before its length (or its last chunk)."""
        try:
            if self.length is None:
                async for piece in self._parsed():
                    yield piece
                return
            early = b"".join(self._p.body)
            self._p.body.clear()
            if len(early) > self.length:
                raise TransportError("more body bytes than the Content-Length")
            left = self.length
            pool = Pool()
            buf = pool.take(left)
            filled = len(early)
            buf[:filled] = early
            left -= filled
            while True:
                while filled < len(buf):
                    n = await self._recv_into(memoryview(buf)[filled:])
                    if n == 0:
                        raise TransportError(f"closed {left} bytes before the end")
                    filled += n
                    left -= n
                if buf:
                    yield buf
                if not left:
                    return
                buf, filled = pool.take(left), 0
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError,
                ssl.SSLError) as e:
            raise TransportError(f"reading the body: {type(e).__name__}") from None

    async def _parsed(self) -> AsyncIterator[bytearray]:
        buf = bytearray()
        chunk = bytearray(HEAD_READ)
        while True:
            for b in self._p.body:
                buf += b
            self._p.body.clear()
            while len(buf) >= BODY_PIECE:  # a read adds at most HEAD_READ: bounded
                yield buf[:BODY_PIECE]
                del buf[:BODY_PIECE]
            if self._p.finished:
                if buf:
                    yield buf
                return
            n = await self._recv_into(memoryview(chunk))
            if n == 0:
                if "content-length" in self.headers or "chunked" in self.headers.get(
                        "transfer-encoding", "").lower():
                    raise TransportError("closed before the end of the body")
                self._p.finished = True  # a body until close ends here
                continue
            try:
                self._p.parser.feed_data(bytes(chunk[:n]))
            except httptools.HttpParserError as e:
                raise TransportError(f"malformed body: {e}") from None


async def _connect(url: str, ssl_context: ssl.SSLContext | None,
                   connect_timeout: float) -> tuple[trio.abc.Stream, trio.socket.SocketType | None]:
    scheme, host, port = _origin(url)
    if port is None:
        raise TransportError(f"not an http(s) URL: {url[:200]!r}")
    with trio.move_on_after(connect_timeout):
        tcp = await trio.open_tcp_stream(host, port)
        if scheme != "https":
            return tcp, tcp.socket
        tls = trio.SSLStream(tcp, ssl_context or ssl.create_default_context(),
                             server_hostname=host, https_compatible=True)
        try:
            await tls.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(tls)
            raise
        return tls, None
    raise TransportError(f"connect to {host}:{port}: no answer in {connect_timeout:.0f}s")


def _request(url: str, headers: Mapping[str, str]) -> bytes:
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host = parts.netloc.rpartition("@")[2]
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items() if k.lower() not in ("host", "connection")]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _exchange(url: str, headers: Mapping[str, str], ssl_context: ssl.SSLContext | None,
                    connect_timeout: float, read_timeout: float) -> Response:
    stream, sock = await _connect(url, ssl_context, connect_timeout)
    try:
        with trio.move_on_after(read_timeout) as cs:
            await stream.send_all(_request(url, headers))
            p = _Parser()
            seen = 0
            while not p.complete:
                data = await stream.receive_some(HEAD_READ)
                if not data:
                    raise TransportError("closed before the response head")
                seen += len(data)
                if seen > MAX_HEAD + HEAD_READ:
                    raise TransportError("response head too large")
                try:
                    p.parser.feed_data(data)
                except httptools.HttpParserUpgrade:
                    raise TransportError("upstream switched protocols") from None
                except httptools.HttpParserError as e:
                    raise TransportError(f"malformed response: {e}") from None
        if cs.cancelled_caught:
            raise TransportError(f"no response in {read_timeout:.0f}s")
        return Response(stream, sock, p, read_timeout)
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise


@asynccontextmanager
async def open_get(url: str, headers: Mapping[str, str], *,
                   ssl_context: ssl.SSLContext | None, connect_timeout: float,
                   read_timeout: float) -> AsyncIterator[Response]:
    """GET ``url`` (following redirects, see the module doc); the final answer, whatever its
    status, on a connection closed when the block ends. Raises TransportError."""
    hop = Hop(url, {k.lower(): v for k, v in headers.items()})
    for _ in range(MAX_REDIRECTS + 1):
        try:
            resp = await _exchange(hop.url, hop.headers, ssl_context, connect_timeout,
                                   read_timeout)
        except (OSError, trio.BrokenResourceError, ssl.SSLError) as e:
            raise TransportError(f"GET {urlsplit(hop.url).hostname}: {type(e).__name__}") from None
        if resp.status not in REDIRECTS:
            try:
                yield resp
            finally:
                with trio.CancelScope(shield=True):
                    await trio.aclose_forcefully(resp._stream)
            return
        await trio.aclose_forcefully(resp._stream)
        hop = redirect(hop.url, resp.headers.get("location"), hop.headers)
    raise TransportError(f"more than {MAX_REDIRECTS} redirects")
