"""A minimal blocking HTTP/1.1 client built for throughput, not generality.

Why not httpx or http.client: on a 2-core machine the load generator competes with the
server for CPU, so the byte-heavy scenarios must cost the client next to nothing. This
client sends request bodies straight from a file with ``sendfile(2)`` (zero copy), frames
chunked bodies from 1 MiB reads, and hashes response bodies from one reusable buffer. One
``Connection`` is one keep-alive TCP connection; it is not thread-safe (use one per thread).

Contract: ``request`` returns a ``Response`` or raises ``HTTPError`` (protocol violation,
connection closed, timeout). Response bodies are read completely, so the connection can be
reused, into memory (``sink="buffer"``, bounded by ``max_body``), into a sha256
(``sink="hash"``), compared byte for byte with a file slice (``sink="compare"`` with
``expect``: exact, and ~10x cheaper than sha256 in Python, which matters when the client
shares 2 cores with the server) or nowhere (``sink="discard"``).
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from dataclasses import dataclass, field
from typing import BinaryIO, Self

MiB = 1024 * 1024
RECV_SIZE = 1 * MiB  # one recv_into per MiB keeps Python overhead per byte negligible
HEAD_LIMIT = 64 * 1024  # response heads larger than this are a protocol error here


class HTTPError(Exception):
    """The exchange failed below HTTP semantics: connect, timeout, framing, early close."""


@dataclass(frozen=True)
class FileSlice:
    """``length`` bytes of an open file from ``offset``: a body sent with Content-Length."""

    file: BinaryIO
    offset: int
    length: int


@dataclass(frozen=True)
class Chunked:
    """A body sent with ``Transfer-Encoding: chunked`` in chunks of ``chunk_size`` bytes."""

    source: FileSlice
    chunk_size: int


Body = bytes | FileSlice | Chunked | None


@dataclass
class Response:
    status: int
    reason: str
    headers: dict[str, str]  # lower-cased names; repeated headers joined with ", "
    body: bytes = b""
    length: int = 0  # body bytes received
    sha256: str | None = None  # "sha256:<hex>" when sink="hash"
    matches: bool | None = None  # sink="compare": body == the expected slice, length included
    elapsed: float = 0.0
    raw_headers: list[tuple[str, str]] = field(default_factory=list)

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)


class Connection:
    def __init__(self, host: str, port: int, timeout: float = 60.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buf = bytearray()  # bytes received but not consumed yet
        self._scratch = bytearray(RECV_SIZE)

    # -- connection management -------------------------------------------------------
    def _connect(self) -> socket.socket:
        if self._sock is None:
            try:
                sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            except OSError as exc:
                raise HTTPError(f"connect {self.host}:{self.port}: {exc}") from exc
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sock = sock
            self._buf.clear()
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None
                self._buf.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- request -----------------------------------------------------------------------
    def request(
        self,
        method: str,
        target: str,
        headers: dict[str, str] | None = None,
        body: Body = None,
        *,
        sink: str = "buffer",
        max_body: int = 16 * MiB,
        expect: FileSlice | None = None,
    ) -> Response:
        sock = self._connect()
        head = [f"{method} {target} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        hdrs = dict(headers or {})
        if isinstance(body, bytes):
            hdrs.setdefault("Content-Length", str(len(body)))
        elif isinstance(body, FileSlice):
            hdrs.setdefault("Content-Length", str(body.length))
        elif isinstance(body, Chunked):
            hdrs["Transfer-Encoding"] = "chunked"
        elif method in ("POST", "PUT", "PATCH"):
            hdrs.setdefault("Content-Length", "0")
        head.extend(f"{k}: {v}" for k, v in hdrs.items())
        head_bytes = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        started = time.perf_counter()
        try:
            if isinstance(body, bytes):
                sock.sendall(head_bytes + body)
            else:
                sock.sendall(head_bytes)
                if isinstance(body, FileSlice):
                    self._send_file(sock, body)
                elif isinstance(body, Chunked):
                    self._send_chunked(sock, body)
            resp = self._read_response(method, sink, max_body, expect)
        except (OSError, HTTPError) as exc:
            self.close()
            if isinstance(exc, HTTPError):
                raise
            raise HTTPError(f"{method} {target}: {exc!r}") from exc
        resp.elapsed = time.perf_counter() - started
        if resp.header("connection").lower() == "close":
            self.close()
        return resp

    @staticmethod
    def _send_file(sock: socket.socket, fs: FileSlice) -> None:
        sent = sock.sendfile(fs.file, fs.offset, fs.length)
        if sent != fs.length:
            raise HTTPError(f"sendfile sent {sent} of {fs.length} bytes")

    @staticmethod
    def _send_chunked(sock: socket.socket, ch: Chunked) -> None:
        fd = ch.source.file.fileno()
        pos, end = ch.source.offset, ch.source.offset + ch.source.length
        read_size = max(ch.chunk_size, MiB)
        while pos < end:
            data = os.pread(fd, min(read_size, end - pos), pos)
            if not data:
                raise HTTPError("source file shorter than the slice")
            pos += len(data)
            frames = bytearray()
            view = memoryview(data)
            for i in range(0, len(data), ch.chunk_size):
                piece = view[i : i + ch.chunk_size]
                frames += b"%x\r\n" % len(piece)
                frames += piece
                frames += b"\r\n"
            sock.sendall(frames)
        sock.sendall(b"0\r\n\r\n")

    # -- response parsing ----------------------------------------------------------------
    def _recv_more(self) -> int:
        assert self._sock is not None
        n = self._sock.recv_into(self._scratch)
        if n:
            self._buf += memoryview(self._scratch)[:n]
        return n

    def _read_line_block(self) -> bytes:
        while True:
            idx = self._buf.find(b"\r\n\r\n")
            if idx >= 0:
                block = bytes(self._buf[:idx])
                del self._buf[: idx + 4]
                return block
            if len(self._buf) > HEAD_LIMIT:
                raise HTTPError("response head too large")
            if not self._recv_more():
                raise HTTPError("connection closed before the response head")

    def _read_response(
        self, method: str, sink: str, max_body: int, expect: FileSlice | None
    ) -> Response:
        while True:
            block = self._read_line_block()
            lines = block.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
                raise HTTPError(f"bad status line {lines[0]!r}")
            status = int(parts[1])
            if status != 100:  # skip interim 100 Continue heads
                break
        raw: list[tuple[str, str]] = []
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name, value = name.strip().lower(), value.strip()
            raw.append((name, value))
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        resp = Response(status, parts[2] if len(parts) > 2 else "", headers, raw_headers=raw)
        hasher = hashlib.sha256() if sink == "hash" else None
        out = bytearray() if sink == "buffer" else None
        if sink == "compare":
            if expect is None:
                raise ValueError('sink="compare" needs expect=FileSlice')
            resp.matches = True
            fd = expect.file.fileno()

        def take(view: memoryview) -> None:
            if sink == "compare" and resp.matches:
                assert expect is not None
                if resp.length + len(view) > expect.length:
                    resp.matches = False
                else:
                    want = os.pread(fd, len(view), expect.offset + resp.length)
                    resp.matches = bytes(view) == want  # bytes == bytes is a memcmp
            resp.length += len(view)
            if hasher is not None:
                hasher.update(view)
            elif out is not None:
                if len(out) + len(view) > max_body:
                    raise HTTPError(f"response body larger than {max_body} bytes")
                out.extend(view)

        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            pass
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            self._read_chunked(take)
        elif "content-length" in headers:
            self._read_exact(int(headers["content-length"]), take)
        else:
            self._read_to_close(take)
        if hasher is not None:
            resp.sha256 = "sha256:" + hasher.hexdigest()
        if resp.matches and expect is not None and resp.length != expect.length:
            resp.matches = False
        if out is not None:
            resp.body = bytes(out)
        return resp

    def _read_exact(self, n: int, take) -> None:  # type: ignore[no-untyped-def]
        if self._buf:
            k = min(n, len(self._buf))
            head = bytes(self._buf[:k])  # a copy: a live view would pin the bytearray
            del self._buf[:k]
            take(memoryview(head))
            n -= k
        assert self._sock is not None
        scratch = memoryview(self._scratch)
        while n > 0:
            got = self._sock.recv_into(scratch, min(n, RECV_SIZE))
            if not got:
                raise HTTPError(f"connection closed with {n} body bytes missing")
            take(scratch[:got])
            n -= got

    def _read_chunked(self, take) -> None:  # type: ignore[no-untyped-def]
        while True:
            while (idx := self._buf.find(b"\r\n")) < 0:
                if not self._recv_more():
                    raise HTTPError("connection closed inside chunked body")
            size_line = bytes(self._buf[:idx]).split(b";")[0].strip()
            del self._buf[: idx + 2]
            try:
                size = int(size_line, 16)
            except ValueError as exc:
                raise HTTPError(f"bad chunk size {size_line!r}") from exc
            if size == 0:
                # trailers (if any) end with an empty line
                while True:
                    while (idx := self._buf.find(b"\r\n")) < 0:
                        if not self._recv_more():
                            raise HTTPError("connection closed inside chunked trailer")
                    line = bytes(self._buf[:idx])
                    del self._buf[: idx + 2]
                    if not line:
                        return
            self._read_exact(size, take)
            self._read_exact(2, lambda v: None)

    def _read_to_close(self, take) -> None:  # type: ignore[no-untyped-def]
        if self._buf:
            head = bytes(self._buf)
            self._buf.clear()
            take(memoryview(head))
        assert self._sock is not None
        scratch = memoryview(self._scratch)
        while got := self._sock.recv_into(scratch):
            take(scratch[:got])
        self.close()
