"""Our own HTTP/1.1 connection loop: one task per connection, no task, channel or timer per
request.

Hypercorn (0.18) runs each request in a task of its own and passes every body piece and
response part through memory channels, events, a send lock and a keep-alive timer task: on
these machines that floor is ~2,000 trivial requests/s per worker. :class:`H1Connection`
serves a plain-TCP or TLS (ALPN ``http/1.1``) connection in the connection's own task:

- it reads into one buffer shared by the worker's connections (plain TCP), parses with httptools
  (llhttp, strict: Content-Length with Transfer-Encoding, differing Content-Lengths, bad chunk
  sizes, obs-fold and invalid header bytes are errors), builds the ASGI scope (the fields
  hypercorn's ``HTTPStream`` sets) and calls the raw ASGI app in the same task, with
  ``receive``/``send`` callables that read the body from the socket and write the response;
- request bodies reach the app in pieces of up to :data:`PIECE` bytes (chunked bodies are
  decoded and joined); ``Expect: 100-continue`` is answered when the app first receives;
- responses, and the ``http.response.zerocopysend`` extension it offers, are written by
  :class:`.h1send.ResponseWriter`;
- deadlines are cancel scopes computed by :mod:`.deadlines`' rules (head, body idle, body
  rate, writes); an idle keep-alive connection closes after ``keep_alive_timeout`` or at once
  when the worker shuts down (a request in progress finishes, bounded by hypercorn's
  ``graceful_timeout`` on the server nursery);
- bad requests get the JSON error envelope (400, 431 for a head past :data:`MAX_HEAD`) and
  the connection closes; ``Upgrade: websocket`` gets 400 UNSUPPORTED; ``Upgrade: h2c`` is
  ignored (answered over HTTP/1.1); an HTTP/2 preface gets 505 (h2c is not enabled here:
  conn.py hands such connections to hypercorn when it is);
- after an early answer (the app did not read the whole body) the connection is half-closed
  and what the client still sends is read and dropped (bounded), then closed.
"""

from __future__ import annotations

import logging
import math
import os
from collections import deque
from typing import Any
from urllib.parse import unquote

import httptools
import trio

from ..errors import ErrorCode
from .deadlines import BODY, HEAD, READ_TIMEOUT, ConnLimits, ReadTimer
from .h1send import ResponseWriter, error_bytes
from .request import ClientDisconnected
from .responses import ZEROCOPY

log = logging.getLogger("registry.http")

# One read at most, into one buffer per worker (shared_buffer), and the body bytes of one
# ASGI message at most: a 512 MiB push is ~1,000 messages. Measured (64 concurrent 16 MiB
# pushes, one worker): 512 KiB peaks at 156 MiB RSS and 4.0 CPU-s, 1 MiB at 198 MiB and
# 4.1 s (each upload holds a piece while storage/uploads.py copies it into its buffers).
BUFFER_SIZE = 512 * 1024
PIECE = 512 * 1024
# A body message waits for more bytes until it holds at least PIECE - PIECE_SLACK of them (or
# the body ends): pieces that reach storage/uploads.py that big are hashed and written as they
# are, where smaller ones are copied into its buffers first, with a thread hop per piece
# either way. Reads are bounded to what the piece lacks, so a message never exceeds PIECE; the
# slack lets a chunked body's framing bytes fit (a 32 KiB chunk costs ~10 bytes of framing).
PIECE_SLACK = 16 * 1024
MAX_HEAD = 64 * 1024  # a request head past this gets 431 (hypercorn's h11_max_incomplete_size)
# Bytes fed to the parser per call, but a Content-Length body's (fed whole): parsing stops
# after the call that completed a request head nobody has taken yet, and the rest of the
# read stays unparsed bytes. A parsed head costs ~17x its wire bytes (objects per header):
# 512 KiB of pipelined tiny requests parsed at once held ~9 MB per connection until served;
# now at most a slice's worth, ~1 MB (as a head read of MAX_HEAD bytes always could).
FEED_SLICE = 64 * 1024
KEEP_ALIVE_S = 75.0  # idle keep-alive, when the config has none (docker reuses connections)
# Lingering after an early answer (nginx: lingering_time 30 s, lingering_timeout 5 s). The byte
# bound lets a manifest past the 4 MiB limit arrive whole; a client past it gets a reset.
LINGER_SECONDS = 10.0
LINGER_IDLE_SECONDS = 2.0
LINGER_BYTES = 64 * 1024 * 1024

_END = object()  # the end of a request body in the event queue
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_DISCONNECT = {"type": "http.disconnect"}
_ASGI = {"spec_version": "2.1", "version": "3.0"}
_PREFACE = b"PRI * HTTP/2.0"


_BUFFER: trio.lowlevel.RunVar[memoryview] = trio.lowlevel.RunVar("h1server_read_buffer")


def shared_buffer() -> memoryview:
    """The read buffer all plain-TCP connections of this trio run (one worker) share: no
    connection holds a MiB of its own, however many upload at once."""
    try:
        return _BUFFER.get()
    except LookupError:
        view = memoryview(bytearray(BUFFER_SIZE))
        _BUFFER.set(view)
        return view


class BadRequest(Exception):
    """The client broke HTTP/1.1; answered with ``status`` and the JSON envelope, then closed."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class _Head:
    """One parsed request head (what the ASGI scope and the framing need)."""

    __slots__ = ("expect", "headers", "keep_alive", "method", "target", "upgrade", "version")

    def __init__(
        self, method: str, target: bytes, headers: list[tuple[bytes, bytes]], version: str,
        keep_alive: bool,
    ) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.version = version
        self.keep_alive = keep_alive
        self.upgrade = b""  # the Upgrade header's value when llhttp treated it as an upgrade
        self.expect = False  # Expect: 100-continue


class H1Connection(ResponseWriter):
    """Serve one HTTP/1.1 connection until it closes; see the module docstring.

    ``stream`` is a connected trio SocketStream or an SSLStream whose handshake is done;
    ``app`` is the raw ASGI app; ``context`` hypercorn's WorkerContext (its ``terminated``
    event starts a graceful shutdown). :meth:`serve` closes the stream and never raises but
    for cancellation (and bugs, which the connection guard turns into one log line)."""

    def __init__(
        self, app: Any, stream: Any, *, context: Any, limits: ConnLimits, gate: Any,
        ssl: bool, client: Any, server: Any, keep_alive_timeout: float = KEEP_ALIVE_S,
        read_timeout: float = math.inf, root_path: str = "", state: Any = None,
    ) -> None:
        self.app = app
        self.stream = stream
        self.context = context
        self.limits = limits
        self.gate = gate
        self.client = client
        self.server = server
        self.scheme = "https" if ssl else "http"
        self.keep_alive_timeout = keep_alive_timeout
        self.root_path = root_path
        self.state = state
        self._sock = None if ssl else stream.socket
        self._fd = -1 if ssl else stream.socket.fileno()
        self._timer = ReadTimer(limits, read_timeout)
        self._parser = httptools.HttpRequestParser(self)
        self._events: deque[Any] = deque()  # _Head, body bytes, _END, in wire order
        self._heads = 0  # _Head events in _events
        self._unfed = b""  # bytes read but not parsed yet (see FEED_SLICE)
        self._wire_left = 0  # bytes of the Content-Length body being parsed still to come
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._cycle = 0  # requests started on this connection
        self._stop_reading = False  # what follows an upgrade head is not HTTP/1.1
        self._idle: trio.CancelScope | None = None  # the wait for a next head, while idle
        self._bad: BadRequest | None = None  # a parse error to answer once events are used
        # the current request and its response
        self._req: _Head | None = None
        self._body_done = True

    # --- httptools callbacks (synchronous, inside feed_data) -------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value.strip(b" \t")))

    def on_headers_complete(self) -> None:
        p = self._parser
        head = _Head(p.get_method().decode("ascii"), self._url, self._headers,
                     p.get_http_version(), p.should_keep_alive())
        for name, value in head.headers:
            if name == b"expect" and value.lower() == b"100-continue":
                head.expect = True
            elif name == b"upgrade" and p.should_upgrade():
                head.upgrade = value.lower()
            elif name == b"content-length":
                self._wire_left = int(value)  # llhttp checked it: digits, one value
        self._events.append(head)
        self._heads += 1

    def on_body(self, body: bytes) -> None:
        self._events.append(body)
        if self._wire_left:
            self._wire_left -= len(body)

    def on_message_complete(self) -> None:
        self._events.append(_END)
        self._wire_left = 0

    # --- reading --------------------------------------------------------------------------

    def _feed(self, data: Any) -> None:
        """Parse ``data`` up to the first request head not taken yet (see FEED_SLICE); what
        follows it is kept in ``_unfed`` (copied: ``data`` may be the shared buffer)."""
        view = memoryview(data)
        while view:
            if self._heads:
                self._unfed = bytes(view)
                return
            part = view[: max(self._wire_left, FEED_SLICE)]
            try:
                self._parser.feed_data(part)
                view = view[len(part) :]
            except httptools.HttpParserUpgrade as up:
                self._wire_left = 0  # llhttp does not parse an upgrade request's body
                last = next((e for e in reversed(self._events) if type(e) is _Head), None)
                if last is None or b"websocket" in last.upgrade or last.method == "CONNECT":
                    self._stop_reading = True  # answered with 400, then closed
                    return
                # Upgrade: h2c (or another) is ignored: the request is answered over
                # HTTP/1.1 and what follows its head is parsed as HTTP/1.1 again (a loop,
                # not a call per request: one read can hold thousands of such requests).
                view = view[int(up.args[0]) :]
            except httptools.HttpParserError as e:
                if bytes(data[: len(_PREFACE)]) == _PREFACE and self._cycle <= 1:
                    raise BadRequest("cleartext HTTP/2 (h2c) is not enabled; use HTTP/1.1,"
                                     " or HTTP/2 over TLS", 505) from None
                raise BadRequest(f"malformed HTTP/1.1 request: {e}") from None

    async def _read(self, limit: int, deadline: float) -> int | None:
        """Read at most ``limit`` bytes and feed them to the parser: how many (0 at EOF), or
        None when ``deadline`` passed first. Raises BadRequest for a malformed request.

        Plain TCP reads into the worker's one shared buffer (:func:`shared_buffer`): the
        read(2) and the parse run with no checkpoint between them, and the parser copies
        what it keeps, so no other connection can see or overwrite those bytes."""
        if self._eof or self._stop_reading:
            return 0
        if self._unfed:  # parse what an earlier read left (``limit`` of it) before reading more
            first, rest = self._unfed[:limit], self._unfed[limit:]
            self._unfed = b""
            self._feed(first)
            n = len(first) - len(self._unfed)
            self._unfed += rest
            await trio.lowlevel.checkpoint()
            return n
        with trio.CancelScope(deadline=deadline):
            data: Any
            if self._fd >= 0:
                view = shared_buffer()
                waited = False
                while True:
                    try:
                        n = os.readv(self._fd, [view[:limit]])
                        break
                    except BlockingIOError:
                        waited = True
                        try:
                            await trio.lowlevel.wait_readable(self._fd)
                        except trio.ClosedResourceError:  # closed by our other task
                            n = 0
                            break
                    except OSError:
                        n = 0
                        break
                data = view[:n]
            else:
                waited = True
                try:
                    data = await self.stream.receive_some(limit)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    data = b""
                n = len(data)
            if n == 0:
                self._eof = True
                return 0
            try:
                self._feed(data)
            finally:
                del data  # the shared buffer's view must not outlive this read
            if not waited:  # a client that always has bytes ready must not starve the others
                await trio.lowlevel.checkpoint()
            return n
        return None

    async def _next_head(self) -> _Head | None:
        """The next request's head, or None: the client closed, went idle past the keep-alive
        time, the worker is shutting down, or it was too slow (dropped)."""
        self._cycle += 1
        timer = self._timer
        fed = 0
        while not self._events:
            if self._bad is not None:
                raise self._bad
            if fed > MAX_HEAD:
                raise BadRequest("request head too large", 431)
            if self._terminating and not fed:
                return None
            now = trio.current_time()
            deadline = timer.deadline(HEAD, self._cycle, now, buffered=fed > 0)
            idle = not fed and timer.head_started is None
            if idle:
                deadline = min(deadline, now + self.keep_alive_timeout)
                self._idle = trio.CancelScope()
            got: int | None = None  # stays None when a shutdown cancels the idle wait
            try:
                with self._idle or trio.CancelScope():
                    got = await self._read(MAX_HEAD + 1, deadline)
            finally:
                self._idle = None
            if got == 0:
                return None
            if got is None:
                if idle:
                    return None  # keep-alive ended, or shutdown
                why = timer.after_wait(trio.current_time(), trio.current_time() - now, 0, True)
                self._dropped(why)
                return None
            timer.after_wait(trio.current_time(), trio.current_time() - now, got, False)
            fed += got
        event = self._events.popleft()
        self._heads -= 1  # (when it is not a head, the connection ends here)
        if type(event) is not _Head:  # bytes before a head: impossible from llhttp
            raise BadRequest("request body without a request")
        return event

    def _dropped(self, why: str | None) -> None:
        self._eof = True
        if why is not None and why != READ_TIMEOUT and self.gate is not None:
            self.gate.dropped(why)

    async def receive(self) -> dict[str, Any]:
        """The ASGI receive callable: the next body piece, or a disconnect."""
        if self._body_done:
            if not self._done and not self._eof:
                if self._response_done is None:
                    self._response_done = trio.Event()
                await self._response_done.wait()
            return _DISCONNECT
        req = self._req
        if req is not None and req.expect and not self._started:
            req.expect = False
            await self._write(_CONTINUE)
        events = self._events
        timer = self._timer
        pieces: list[bytes] = []
        size = 0
        while True:
            end = False
            while events and size < PIECE:
                event = events[0]
                if event is _END:
                    events.popleft()
                    end = True
                    break
                if type(event) is not bytes:
                    break
                events.popleft()
                pieces.append(event)
                size += len(event)
            stopped = self._bad is not None or self._eof or self._stop_reading
            if end or size >= PIECE - PIECE_SLACK or (pieces and (stopped or events)):
                self._body_done = end
                body = pieces[0] if len(pieces) == 1 else b"".join(pieces)
                return {"type": "http.request", "body": body, "more_body": not end}
            if stopped:
                return await self._body_broken()
            now = trio.current_time()
            deadline = timer.deadline(BODY, self._cycle, now)
            try:
                got = await self._read(min(BUFFER_SIZE, PIECE - size), deadline)
            except BadRequest as bad:
                self._bad = bad
                continue
            later = trio.current_time()
            why = timer.after_wait(later, later - now, got or 0, got is None)
            if why is not None:
                self._dropped(why)
                self._broken = True
                await trio.aclose_forcefully(self.stream)
            elif got is None:
                continue

    async def _body_broken(self) -> dict[str, Any]:
        """The body cannot go on (a malformed chunk, EOF, a slow client): answer a malformed
        one with 400 while no response has started; the app sees a disconnect."""
        self._body_done = True
        self._close_after = True
        bad = self._bad
        if bad is not None and not self._started:
            self._started = self._done = True
            self._bad = None
            try:
                await self._write(error_bytes(bad.status, str(bad)))
            except ClientDisconnected:
                pass
        return _DISCONNECT

    # --- one request, the connection ------------------------------------------------------

    def _scope(self, req: _Head) -> dict[str, Any]:
        target = req.target
        path, _, query = target.partition(b"?")
        try:
            text = unquote(path.decode("ascii"))
        except UnicodeDecodeError:
            raise BadRequest("request target is not ASCII") from None
        return {
            "type": "http",
            "asgi": _ASGI,
            "http_version": req.version,
            "method": req.method,
            "scheme": self.scheme,
            "path": text,
            "raw_path": path,
            "query_string": query,
            "root_path": self.root_path,
            "headers": req.headers,
            "client": self.client,
            "server": self.server,
            "state": dict(self.state) if self.state else {},
            "extensions": {ZEROCOPY: {}},
        }

    def _check(self, req: _Head) -> None:
        if b"websocket" in req.upgrade:
            raise BadRequest("WebSocket is not supported")
        hosts = sum(1 for name, _ in req.headers if name == b"host")
        if hosts > 1 or (hosts == 0 and req.version == "1.1"):
            raise BadRequest("exactly one Host header is required")

    async def _one(self, req: _Head) -> bool:
        """Serve one request; True to keep the connection for the next one."""
        self._check(req)
        scope = self._scope(req)
        self._req = req
        self._body_done = False
        self._begin(req.method, req.version, req.keep_alive)
        if (req.upgrade or req.method == "CONNECT") and any(
            name == b"transfer-encoding" or (name == b"content-length" and value != b"0")
            for name, value in req.headers
        ):
            self._close_after = True  # llhttp did not parse this body: the stream is lost
        await self.context.mark_request()
        try:
            await self.app(scope, self.receive, self.send)
        except ClientDisconnected:
            return False
        except Exception:
            log.exception("unhandled error in the app on %s %s", req.method, scope["path"][:300])
            if not self._started:
                await self._write(error_bytes(500, "internal error", ErrorCode.UNKNOWN))
            return False
        if not self._started:
            await self._write(error_bytes(500, "no response", ErrorCode.UNKNOWN))
            return False
        if not self._done:
            return False  # a response cut short: only a close tells the client
        if not self._body_done and not self._skip_buffered_body():
            await self._linger()
            return False
        return not self._close_after and not self._eof

    def _skip_buffered_body(self) -> bool:
        """Drop the unread body when its end is already parsed; False when it is not."""
        if _END not in self._events:
            return False
        while self._events.popleft() is not _END:
            pass
        self._body_done = True
        return True

    async def _linger(self) -> None:
        """After an early answer: half-close (not on TLS), then read and drop what the
        client still sends, for at most LINGER_BYTES and LINGER_SECONDS."""
        if self._eof:
            return
        if self._sock is not None:
            try:
                await self.stream.send_eof()
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
                return
        await drain(self.stream)

    async def _watch_shutdown(self) -> None:
        await self.context.terminated.wait()
        self._terminating = True
        if self._idle is not None:
            self._idle.cancel()

    async def serve(self) -> None:
        """Serve requests until the connection ends; then close it."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_shutdown)
                try:
                    await self._serve_requests()
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            self._events.clear()
            await trio.aclose_forcefully(self.stream)

    async def _serve_requests(self) -> None:
        while True:
            try:
                req = await self._next_head()
                if req is None:
                    return
                if not await self._one(req):
                    return
            except BadRequest as bad:
                if not self._started or self._req is None:
                    try:
                        await self._write(error_bytes(bad.status, str(bad)))
                    except ClientDisconnected:
                        return
                    self._started = True
                    await self._linger()
                return
            except ClientDisconnected:
                return
            if self._terminating:
                return
            self._req = None


async def drain(stream: Any) -> None:
    """Read and drop what the client still sends after our answer: until its EOF, for at
    most LINGER_BYTES and LINGER_SECONDS, stopping after LINGER_IDLE_SECONDS of silence."""
    left = LINGER_BYTES
    with trio.move_on_after(LINGER_SECONDS):
        while left > 0:
            with trio.move_on_after(LINGER_IDLE_SECONDS) as idle:
                try:
                    data = await stream.receive_some(min(left, 256 * 1024))
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    return
            if idle.cancelled_caught or not data:
                return
            left -= len(data)
