"""The response half of our HTTP/1.1 loop (h1server.py): ASGI ``send`` to bytes on the socket.

:class:`ResponseWriter` turns ``http.response.start``/``.body`` messages into one write per
body message (the head leaves with the first body bytes), with a status line that has its
reason phrase, a Date header formatted once per second, no Server header, chunked framing
when the app gives no Content-Length (close-delimited for HTTP/1.0) and no body for HEAD,
204 and 304. ``http.response.zerocopysend`` sends a file: sendfile(2) on plain TCP, read
and sent over TLS. Every write has :func:`.deadlines.write_deadline`; a client that does not
take it, has gone, or a file that shrank while it was sent ends the connection, and ``send``
raises :class:`~.request.ClientDisconnected` (the app's handler ends there).
"""

from __future__ import annotations

import email.utils
import logging
import os
import time
from http import HTTPStatus
from typing import Any, NoReturn

import trio

from ..errors import ErrorCode, RegistryError
from .deadlines import SLOW_READER, ConnLimits, write_deadline
from .request import ClientDisconnected
from .responses import ZEROCOPY, error_answer

log = logging.getLogger("registry.http")

SENDFILE_PIECE = 4 * 1024 * 1024  # bytes of a file per write deadline and per checkpoint
COPY_PIECE = 512 * 1024  # bytes of a file per read when sendfile cannot apply (TLS)
_NO_BODY_STATUS = frozenset({204, 304})
_STATUS_LINES = {
    s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode("latin-1")) for s in HTTPStatus
}

# Header names as Go's net/http writes them (CanonicalMIMEHeaderKey: each word capitalised,
# "docker-content-digest" -> "Docker-Content-Digest"). Names are case-insensitive, but
# registry:3 users grep for `Docker-Content-Digest` in `curl -I` output. The app's names
# are a small fixed set; the cache bound keeps a config's odd extra headers from growing it.
CANONICAL_CACHE_ENTRIES = 256
_canonical: dict[bytes, bytes] = {}


def canonical(name: bytes) -> bytes:
    """``name`` with each hyphen-separated word capitalised (Go's canonical form)."""
    out = _canonical.get(name)
    if out is None:
        out = b"-".join(w[:1].upper() + w[1:].lower() for w in name.split(b"-"))
        if len(_canonical) < CANONICAL_CACHE_ENTRIES:
            _canonical[name] = out
    return out


class _Date:
    """The Date header line, formatted at most once per second (it costs ~5 us)."""

    second = -1
    line = b""

    @classmethod
    def header(cls) -> bytes:
        now = int(time.time())
        if now != cls.second:
            cls.line = b"Date: %s\r\n" % email.utils.formatdate(now, usegmt=True).encode()
            cls.second = now
        return cls.line


def status_line(status: int) -> bytes:
    """``HTTP/1.1 <status> <reason>\\r\\n`` (an unknown status gets no reason)."""
    return _STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status


def error_bytes(status: int, message: str, code: ErrorCode = ErrorCode.UNSUPPORTED) -> bytes:
    """A whole closing answer with the OCI error envelope, for errors outside the app."""
    headers, body = error_answer(RegistryError(code, message, status=status))
    head = b"".join(b"%s: %s\r\n" % (canonical(name), value) for name, value in headers)
    return b"%s%s%sConnection: close\r\n\r\n%s" % (status_line(status), head, _Date.header(), body)



_RWF_NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None)  # Linux >= 4.14


def resident(fd: int, offset: int, count: int) -> bool:
    """Are the first and last byte of ``count`` bytes at ``offset`` in the page cache? (A
    probe, not a guarantee: two one-byte preadv(RWF_NOWAIT) reads.) True where the probe
    cannot tell (no RWF_NOWAIT, tmpfs' EOPNOTSUPP: memory-backed anyway)."""
    if _RWF_NOWAIT is None:
        return True
    probe = bytearray(1)
    try:
        for pos in (offset, offset + max(0, count - 1)):
            os.preadv(fd, [probe], pos, _RWF_NOWAIT)
    except BlockingIOError:
        return False
    except OSError:
        return True  # sendfile will meet the same error and say so
    return True


class ResponseWriter:
    """The response state of one connection and the ASGI ``send`` callable. The connection
    class (h1server.H1Connection) sets ``stream``, ``limits``, ``gate`` and ``_sock`` and
    calls :meth:`_begin` before each request."""

    stream: Any
    limits: ConnLimits
    gate: Any  # conn.ConnectionGate or None
    _sock: Any  # the trio socket on plain TCP, else None (TLS)
    _eof = False  # the client closed its side, or the connection broke
    _broken = False  # nothing more can be written
    _terminating = False  # the worker is shutting down: this response closes the connection
    _version = "1.1"  # the request's HTTP version
    _keep_alive = True  # the request allows keep-alive
    _started = False
    _done = False
    _head_out: bytes | None = None
    _chunked = False
    _left: int | None = None  # Content-Length bytes still to send
    _close_after = False
    _is_head = False
    _response_done: trio.Event | None = None

    def _begin(self, method: str, version: str, keep_alive: bool) -> None:
        """Forget the last response: a new request starts."""
        self._version, self._keep_alive = version, keep_alive
        self._started = self._done = self._chunked = self._close_after = False
        self._head_out = None
        self._left = None
        self._is_head = method == "HEAD"
        self._response_done = None

    async def _write(self, data: bytes) -> None:
        """Send ``data`` within :func:`write_deadline`; a client that does not take it (or
        has gone) ends the connection and raises ClientDisconnected.

        No MSG_MORE before a sendfile: the kernel then held the response's last partial
        segment back (up to its 200 ms cork timeout), and ranged GETs of 1 MiB at unaligned
        offsets took ~150 ms each instead of ~1 ms (the bench's ranged GET figure)."""
        if self._broken:
            raise ClientDisconnected()
        with trio.move_on_after(write_deadline(self.limits, len(data))) as scope:
            try:
                await self.stream.send_all(data)
                return
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
        if scope.cancelled_caught and self.gate is not None:
            self.gate.dropped(SLOW_READER)
        await self._abort()

    def _start(self, message: dict[str, Any]) -> None:
        """Build the head of ``http.response.start`` (held: it leaves with the first body
        bytes) and decide the framing: Content-Length, chunked, or the connection's end."""
        status = int(message["status"])
        parts = [status_line(status)]
        length: int | None = None
        date = close = False
        for name, value in message.get("headers", ()):
            lname = name.lower()
            if lname == b"content-length":
                length = int(value)
            elif lname == b"connection" and b"close" in value.lower():
                close = True
            elif lname == b"date":
                date = True
            parts.append(b"%s: %s\r\n" % (canonical(name), value))
        if not date:
            parts.append(_Date.header())
        no_body = self._is_head or status in _NO_BODY_STATUS or status < 200
        if length is None and not no_body:
            if self._version == "1.1":
                self._chunked = True
                parts.append(b"Transfer-Encoding: chunked\r\n")
            else:
                self._close_after = True  # HTTP/1.0: the body ends with the connection
        self._left = None if no_body else length
        if self._close_after or not self._keep_alive or self._terminating:
            self._close_after = True
            if not close:
                parts.append(b"Connection: close\r\n")
        elif close:
            self._close_after = True
        parts.append(b"\r\n")
        self._head_out = b"".join(parts)
        self._started = True

    async def send(self, message: dict[str, Any]) -> None:
        """The ASGI send callable: ``http.response.start``, ``.body`` and ``.zerocopysend``
        (a file: sendfile(2) on plain TCP, read and sent over TLS)."""
        kind = message["type"]
        if kind == "http.response.start":
            if self._started:
                raise RuntimeError("response already started")
            self._start(message)
            return
        if kind != "http.response.body" and kind != ZEROCOPY:
            raise RuntimeError(f"unexpected ASGI message {kind!r}")
        if self._done:
            if self._broken:
                raise ClientDisconnected()
            return
        if not self._started:
            raise RuntimeError("response body before its start")
        out = self._head_out or b""
        self._head_out = None
        if kind == ZEROCOPY:
            out = await self._send_file(message, out)
        else:
            body = message.get("body", b"")
            if body and not (self._is_head or self._left == 0 and not self._chunked):
                if self._chunked:
                    out += b"%x\r\n%s\r\n" % (len(body), body)
                else:
                    if self._left is not None:
                        if len(body) > self._left:
                            body = body[: self._left]
                        self._left -= len(body)
                    out = out + body if out else body
        if not message.get("more_body", False):
            if self._chunked:
                out += b"0\r\n\r\n"
            elif self._left:  # fewer bytes than Content-Length: only a close can tell
                self._close_after = True
            self._done = True
        if out:
            await self._write(out)
        if self._done and self._response_done is not None:
            self._response_done.set()

    async def _send_file(self, message: dict[str, Any], head: bytes) -> bytes:
        """Send ``count`` bytes of ``file`` from ``offset`` after ``head``; what is left to
        write (a chunk's end). A file shorter than promised ends the connection."""
        fd = message["file"].fileno()
        offset = message.get("offset") or 0
        count = message.get("count")
        if count is None:
            count = max(0, os.fstat(fd).st_size - offset)
        if self._is_head or (self._left is not None and not self._chunked):
            count = min(count, self._left or 0)
        if not count:
            return head
        if self._chunked:
            head += b"%x\r\n" % count
        if self._sock is not None:
            if head:
                await self._write(head)
            sent = await self._sendfile(fd, offset, count)
        else:
            sent = await self._copy_file(fd, offset, count, head)
        if sent < count:  # truncated under us: never keep a connection that owes bytes
            log.warning("a file shrank while it was sent (%d of %d bytes); closing", sent, count)
            await self._abort()
        if self._left is not None:
            self._left -= count
        return b"\r\n" if self._chunked else b""

    async def _sendfile(self, fd: int, offset: int, count: int) -> int:
        """sendfile(2) ``count`` bytes from ``offset`` to the socket, each SENDFILE_PIECE
        within its :func:`write_deadline`; the bytes sent (fewer: the file ended)."""
        assert self._sock is not None
        sock = self._sock.fileno()
        sent = 0
        while sent < count:
            piece = min(SENDFILE_PIECE, count - sent)
            # sendfile(2) reads the file side blocking: pages not in the page cache would
            # stall every connection of the worker while the disk reads them, so a piece
            # that is not resident is sent from a worker thread (the socket stays
            # non-blocking there: a full socket buffer is EAGAIN, waited for here).
            cold = not resident(fd, offset + sent, piece)
            with trio.move_on_after(write_deadline(self.limits, piece)) as scope:
                while piece:
                    try:
                        if cold:
                            n = await trio.to_thread.run_sync(
                                os.sendfile, sock, fd, offset + sent, piece
                            )
                        else:
                            n = os.sendfile(sock, fd, offset + sent, piece)
                    except BlockingIOError:
                        await trio.lowlevel.wait_writable(sock)
                        continue
                    except OSError:
                        await self._abort()
                    if n == 0:
                        return sent
                    sent += n
                    piece -= n
                await trio.lowlevel.checkpoint()
            if scope.cancelled_caught:
                if self.gate is not None:
                    self.gate.dropped(SLOW_READER)
                await self._abort()
        return sent

    async def _copy_file(self, fd: int, offset: int, count: int, head: bytes) -> int:
        """The zerocopysend fallback (TLS): read PIECE bytes at a time in a thread and send
        them; the bytes sent (fewer: the file ended)."""
        sent = 0
        while sent < count:
            data = await trio.to_thread.run_sync(
                os.pread, fd, min(COPY_PIECE, count - sent), offset + sent
            )
            if not data:
                break
            await self._write(head + data if head else data)
            head = b""
            sent += len(data)
        if head:
            await self._write(head)
        return sent

    async def _abort(self) -> NoReturn:
        """End the connection now (the response cannot be completed) and tell the app."""
        self._eof = self._broken = self._close_after = True
        if self._response_done is not None:  # a receive waiting for the response's end
            self._response_done.set()
        await trio.aclose_forcefully(self.stream)
        raise ClientDisconnected()
