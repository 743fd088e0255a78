"""HTTP/2 that a hostile client cannot turn into a crash, and h2c only when configured.

Hypercorn's H2Protocol (0.18) trusts its peer in places where a wrong guess raises out of the
connection task (and, under the trio worker, out of the accept loop: the worker dies):

- DATA for a stream whose answer has already gone out (an early 413, 401, 404) looks the
  stream up in a dict it has left (KeyError);
- a request without ``:path`` (a plain CONNECT) or with a ``:method`` or ``:path`` that is not
  ASCII is turned into a scope with ``str`` operations that raise;
- PRIORITY frames for streams that never open grow its priority tree until the tree's limit
  raises;
- it hands body and, when a response ends, a disconnect message to the app through the
  request's bounded queue, waiting for room; if the app answered without reading a body that
  keeps coming (an early answer to a request without Content-Length, which HTTP/2 allows),
  the queue stays full: the app's own last send, or the connection's reader, waits forever
  (the connection stalls, its task and socket leak);
- when the peer closes the connection, it leaves the socket open (CLOSE-WAIT) until the
  keep-alive timer (75 s here) ends;
- and h2 itself buffers a frame whole before it checks the frame's length against the limit,
  so one frame header claiming 16 MiB makes the connection hold up to 16 MiB.

:class:`RegistryH2Protocol` looks at each h2 event before hypercorn's handler does, and:

- drops DATA for a stream hypercorn has finished with, hands its flow-control credit back
  (else the whole connection stalls) and, once our END_STREAM is out, resets the stream with
  NO_ERROR so the client stops sending (RFC 9113 section 8.1);
- resets with PROTOCOL_ERROR a request hypercorn cannot represent (see :func:`representable`);
- ignores PRIORITY for streams that are not open;
- once a response has ended, offers the disconnect without waiting, and stops the reader's
  wait to hand that stream more body (the app, done with the request, may never read again);
- closes the socket as soon as the peer has gone (hypercorn kept it for the keep-alive time);
- closes the connection (GOAWAY FRAME_SIZE_ERROR) as soon as a frame header claims more than
  the frame size limit, before its payload is buffered;
- answers a flood of client resets (the "rapid reset" attack: every stream opened has cost an
  app task) with GOAWAY ENHANCE_YOUR_CALM and closes the connection.

Anything else that still escapes is the connection guard's (http/connections.py): it closes
that connection, never the worker.

:class:`H2cGate` is mixed into the HTTP/1.1 protocol: cleartext HTTP/2 (the prior-knowledge
preface ``PRI * HTTP/2.0`` and ``Upgrade: h2c``) only when ``http.h2c.enabled`` (the
reference's key, off by default). When off, ``Upgrade: h2c`` is ignored (RFC 9110 section
7.8 lets a server do so; the request is answered over HTTP/1.1) and a preface gets one
HTTP/1.1 505 with the JSON error envelope, then the connection closes. Over TLS, HTTP/2 is
chosen by ALPN (``http.http2.disabled`` turns it off), and a preface is allowed there unless
HTTP/2 is off.
"""

from __future__ import annotations

import logging
import re
import time
from contextlib import suppress
from typing import Any

import h2.events
import h2.exceptions
import h11
import hypercorn.protocol
import priority
import trio
from h2.errors import ErrorCodes
from h2.frame_buffer import FrameBuffer
from h2.stream import StreamState
from hypercorn.config import Config as HyperConfig
from hypercorn.events import Closed, Event, RawData
from hypercorn.protocol.events import Body
from hypercorn.protocol.h2 import H2Protocol
from hypercorn.protocol.http_stream import ASGIHTTPState, HTTPStream

from ..errors import ErrorCode, RegistryError
from .responses import error_answer

log = logging.getLogger("registry.http")

# Client resets (RST_STREAM) a connection may send within RESET_WINDOW_S before it is closed.
# Browsers and registry clients reset a stream when a pull is cancelled: a few per second at
# most; the rapid-reset attack sends thousands. 200 per 10 s leaves room for the first.
MAX_CLIENT_RESETS = 200
RESET_WINDOW_S = 10.0
# RFC 9110 section 5.6.2: a method is a token.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# A request target hypercorn can decode as ASCII: visible characters, no spaces.
_TARGET = re.compile(rb"[\x21-\x7e]+")


def representable(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether hypercorn can turn these request headers into an ASGI scope without raising:
    a ``:method`` that is a token and a ``:path`` of visible ASCII (a plain CONNECT has none)."""
    method = path = None
    for name, value in headers:
        if name == b":method":
            method = value
        elif name == b":path":
            path = value
    return (
        method is not None and path is not None
        and _TOKEN.fullmatch(method) is not None and _TARGET.fullmatch(path) is not None
    )


class RegistryH2Protocol(H2Protocol):
    """Hypercorn's HTTP/2 protocol with each event screened first (see the module doc)."""

    _resets = 0  # client resets in the current window
    _reset_window_start = 0.0  # time.monotonic() at the start of that window

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # stream id -> the scope of the reader's wait for room in that stream's app queue
        self._body_waits: dict[int, trio.CancelScope] = {}

    async def initiate(
        self, headers: list[tuple[bytes, bytes]] | None = None, settings: bytes | None = None
    ) -> None:
        """As hypercorn's; an ``Upgrade: h2c`` whose HTTP2-Settings do not decode closes
        the connection instead of raising."""
        try:
            await super().initiate(headers, settings)
        except (ValueError, h2.exceptions.ProtocolError) as exc:
            log.info("h2c upgrade refused: bad HTTP2-Settings (%s)", type(exc).__name__)
            await self.send(Closed())

    async def handle(self, event: Event) -> None:
        first_close = isinstance(event, Closed) and not self.closed
        await super().handle(event)
        if first_close:
            # The peer went away (EOF): hypercorn's h2 protocol, unlike its h11 one, does not
            # ask the server to close the socket, which then waits in CLOSE-WAIT for the
            # keep-alive timer (75 s). Closing here re-enters handle(), as a second close.
            await self.send(Closed())
            return
        if isinstance(event, RawData) and not self.closed and self._oversized_frame_pending():
            self.connection.close_connection(error_code=ErrorCodes.FRAME_SIZE_ERROR)
            await self._flush()
            await self.send(Closed())

    def _oversized_frame_pending(self) -> bool:
        """Whether the partial frame h2 is buffering declares a length past the limit (h2
        would only refuse it once the whole payload had arrived)."""
        buffer = self.connection.incoming_buffer
        pending = getattr(buffer, "_data", b"")
        return len(pending) >= 9 and int.from_bytes(pending[:3], "big") > buffer.max_frame_size

    async def _handle_events(self, events: list[h2.events.Event]) -> None:
        # One event at a time: an app task may end a stream while hypercorn's handler awaits,
        # so each event is screened against the state just before it is handled.
        for event in events:
            if self.closed:
                return
            if await self._screen(event):
                await super()._handle_events([event])
        await self._flush()

    async def _screen(self, event: h2.events.Event) -> bool:
        """False when the event has been dealt with here and hypercorn must not see it."""
        if isinstance(event, h2.events.DataReceived):
            if event.stream_id in self.streams:
                await self._deliver_data(event)
            else:
                self._drop_data(event)
            return False
        if isinstance(event, h2.events.RequestReceived) and not representable(
            list(event.headers or [])
        ):
            self._reset(event.stream_id, ErrorCodes.PROTOCOL_ERROR)
            return False
        if isinstance(event, h2.events.PriorityUpdated):
            if event.stream_id not in self.stream_buffers:
                return False  # no stream to order; a later HEADERS gets the default priority
            try:
                await super()._priority_updated(event)
            except priority.PriorityError:
                pass  # a dependency on a stream that is gone: keep the current order
            return False
        if isinstance(event, h2.events.StreamReset) and event.remote_reset:
            return not await self._count_reset()
        return True

    async def _deliver_data(self, event: h2.events.DataReceived) -> None:
        """As hypercorn: the data to the stream, then its flow-control credit back; but the
        wait for room in the app's queue ends when the stream's response does (an app that
        answered without reading would never make room, and this wait blocks the reader)."""
        stream_id = event.stream_id
        with trio.CancelScope() as scope:
            self._body_waits[stream_id] = scope
            try:
                await self.streams[stream_id].handle(Body(stream_id=stream_id, data=event.data))
            finally:
                self._body_waits.pop(stream_id, None)
        self.connection.acknowledge_received_data(event.flow_controlled_length, stream_id)

    async def _close_stream(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if not isinstance(stream, HTTPStream) or stream.state != ASGIHTTPState.CLOSED:
            await super()._close_stream(stream_id)  # the app may still be reading: wait
            return
        # The response has ended, so the app needs nothing more of the request: offer the
        # disconnect without waiting for room in its queue (see the module doc).
        del self.streams[stream_id]
        stream.closed = True
        waiting = self._body_waits.get(stream_id)
        if waiting is not None:
            waiting.cancel()  # the reader stops waiting to hand this stream more body
        channel = getattr(getattr(stream, "app_put", None), "__self__", None)
        if isinstance(channel, trio.MemorySendChannel):
            with suppress(trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                channel.send_nowait({"type": "http.disconnect"})
        await self.has_data.set()

    def _drop_data(self, event: h2.events.DataReceived) -> None:
        """DATA for a stream whose answer is out: give the credit back, and once our side
        of the stream is closed, ask the client to stop (RST_STREAM NO_ERROR)."""
        stream_id = event.stream_id
        if event.flow_controlled_length:
            self.connection.acknowledge_received_data(event.flow_controlled_length, stream_id)
        stream = self.connection.streams.get(stream_id)
        if stream is not None and stream.state_machine.state == StreamState.HALF_CLOSED_LOCAL:
            self._reset(stream_id, ErrorCodes.NO_ERROR)

    def _reset(self, stream_id: int, code: ErrorCodes) -> None:
        try:
            self.connection.reset_stream(stream_id, code)
        except h2.exceptions.ProtocolError:
            pass  # already closed: nothing to stop

    async def _count_reset(self) -> bool:
        """Count a client reset; True (and the connection is closing) past the limit."""
        now = time.monotonic()
        if now - self._reset_window_start > RESET_WINDOW_S:
            self._reset_window_start, self._resets = now, 0
        self._resets += 1
        if self._resets <= MAX_CLIENT_RESETS:
            return False
        log.warning(
            "HTTP/2 connection from %s closed: more than %d stream resets in %.0f s",
            _peer(self.client), MAX_CLIENT_RESETS, RESET_WINDOW_S,
        )
        self.connection.close_connection(error_code=ErrorCodes.ENHANCE_YOUR_CALM)
        await self._flush()
        await self.send(Closed())
        return True


class H2cGate:
    """Mixed into the HTTP/1.1 protocol (before hypercorn's H11Protocol): decides whether a
    request may switch the connection to HTTP/2 (see the module doc)."""

    config: HyperConfig
    connection: Any
    ssl: bool
    send: Any
    _refused = False  # a prior-knowledge preface was answered with 505: make no stream

    async def _check_protocol(self, event: h11.Request) -> None:
        if getattr(self.config, "h2c_enabled", False) and not self.ssl:  # h2c is cleartext
            await super()._check_protocol(event)  # type: ignore[misc]
            return
        preface = event.method == b"PRI" and event.target == b"*"
        if preface and self.ssl and "h2" in self.config.alpn_protocols:
            # HTTP/2 over TLS by prior knowledge (no ALPN): h2, not h2c
            await super()._check_protocol(event)  # type: ignore[misc]
        elif preface:
            await self._refuse_preface()
        # else: an Upgrade: h2c is ignored and the request is answered over HTTP/1.1

    async def _create_stream(self, request: h11.Request) -> None:
        if not self._refused:
            await super()._create_stream(request)  # type: ignore[misc]

    async def _refuse_preface(self) -> None:
        self._refused = True
        why = (
            "HTTP/2 is disabled here (http.http2.disabled); use HTTP/1.1" if self.ssl
            else "cleartext HTTP/2 (h2c) is not enabled; use HTTP/1.1, or HTTP/2 over TLS"
        )
        err = RegistryError(ErrorCode.UNSUPPORTED, why, status=505)
        headers, body = error_answer(err)
        headers += [*self.config.response_headers("h11"), (b"connection", b"close")]
        try:
            data = self.connection.send(h11.Response(status_code=505, headers=headers))
            data += self.connection.send(h11.Data(data=body))
            data += self.connection.send(h11.EndOfMessage())
        except h11.LocalProtocolError:
            data = b""
        if data:
            await self.send(RawData(data=data))
        await self.send(Closed())


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "-"


def install() -> None:
    """Make hypercorn's connection wrapper build RegistryH2Protocol for HTTP/2; checks the
    hooks it relies on exist (a hypercorn release that moves them fails at start-up)."""
    hooks = ("_handle_events", "_priority_updated", "initiate", "_flush", "_close_stream")
    missing = [name for name in hooks if not hasattr(H2Protocol, name)]
    if not hasattr(FrameBuffer(server=True), "_data"):
        missing.append("h2.frame_buffer.FrameBuffer._data")
    if not hasattr(StreamState, "HALF_CLOSED_LOCAL"):
        missing.append("h2.stream.StreamState.HALF_CLOSED_LOCAL")
    if getattr(hypercorn.protocol, "H2Protocol", None) not in (H2Protocol, RegistryH2Protocol):
        missing.append("hypercorn.protocol.H2Protocol")
    if missing:
        raise RuntimeError(f"unsupported hypercorn version: no {', '.join(missing)}")
    hypercorn.protocol.H2Protocol = RegistryH2Protocol  # type: ignore[misc]
