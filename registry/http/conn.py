"""Hypercorn's per-connection TCP server with limits for slow, many and early-answered clients.

Hypercorn (0.18, trio worker) gives each read a fresh ``read_timeout``, so a client that sends
one header byte a second holds its connection forever, and it accepts connections until the
process runs out of file descriptors. :class:`RegistryTCPServer` replaces its ``TCPServer``
and adds, for HTTP/1.1:

- a deadline for the request head: ``headertimeout`` from its first byte;
- a deadline and a minimum rate for request bodies: a body that delivers nothing for
  ``bodytimeout``, or less than ``minbodyrate`` bytes/s over a window of ``bodytimeout`` spent
  waiting for the client, is dropped. Only time spent waiting for the client counts: while the
  app is busy (backpressure) a slow storage never makes a client look slow;
- a cap on open connections per worker (:class:`ConnectionGate`): past it a new connection
  gets a canned 503 and is closed at once, and one log line per interval says so;
- a deadline on each write (:func:`write_deadline`): a client that stops reading a response
  is dropped, as one that stops sending a body;
- lingering after an early answer: when the app answered before reading the whole body (a
  413, 401 or 404) the connection is half-closed and what the client still sends is read and
  dropped, bounded in bytes and time, so that a client that writes its whole body before
  reading (Python's http.client) reads the answer instead of a connection reset.

HTTP/1.1 connections (plain TCP when h2c is off; TLS with ALPN ``http/1.1``) are served by
our own loop, :class:`.h1server.H1Connection`, in the connection's task: it applies the same
limits from :mod:`.deadlines` and lingers the same way. The rest of this class serves the
connections hypercorn keeps (HTTP/2, and cleartext when h2c is enabled).

HTTP/2 connections keep hypercorn's read behaviour; the cap and the write deadline apply. :class:`AcceptErrorFilter`
turns trio's accept-loop error (a traceback every 0.1 s while ``accept`` fails with EMFILE)
into one line per interval. ``install()`` puts both in place; it checks the hypercorn hooks it
relies on, so a hypercorn release that moves them fails at start-up, not per connection.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import ssl
import time
from typing import Any

import h11
import hypercorn.trio.run
import trio
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.config import Config as HyperConfig
from hypercorn.events import Closed, RawData
from hypercorn.protocol.h2 import H2Protocol
from hypercorn.trio import tcp_server
from hypercorn.trio.tcp_server import TCPServer

from ..errors import ErrorCode, RegistryError
from .deadlines import (
    BODY,
    HEAD,
    OTHER,
    READ_TIMEOUT,
    SLOW_READER,
    ConnLimits,
    ReadTimer,
    write_deadline,
)
from .h1server import LINGER_IDLE_SECONDS, LINGER_SECONDS, H1Connection, drain
from .listen import socket_addr
from .responses import error_answer
from .tls import TLSSettings, build_context

log = logging.getLogger("registry.conn")

LOG_INTERVAL = 10.0  # seconds between two log lines about refused or dropped connections
REFUSE_SEND_SECONDS = 1.0  # the canned 503 fits the socket buffer; never wait on a flooder

class LogThrottle:
    """At most one log line per kind per LOG_INTERVAL; the next says how many it stands for."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}  # occurrences since the last line, per kind
        self._logged: dict[str, float] = {}  # time.monotonic() of the last line, per kind

    def due(self, kind: str) -> str | None:
        """Count one ``kind``: None to hold its line back, else the line's suffix ("" for the
        first line, else " (N times in the last Ts)")."""
        self._counts[kind] = self._counts.get(kind, 0) + 1
        now = time.monotonic()
        last = self._logged.get(kind)
        if last is not None and now - last < LOG_INTERVAL:
            return None
        self._logged[kind] = now
        count = self._counts.pop(kind)
        return "" if last is None else f" ({count} times in the last {now - last:.0f}s)"


class ConnectionGate:
    """One worker's open-connection count against its cap, and rate-limited log lines about
    refused and dropped connections (at most one per kind per LOG_INTERVAL)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap  # 0: no cap
        self.open = 0
        self._throttle = LogThrottle()

    def admit(self) -> bool:
        """Count a new connection in, or return False (and log) when the cap is reached."""
        if self.cap and self.open >= self.cap:
            self._note("refused", f"connection limit reached: {self.open} open"
                       " (http.maxconnections); refusing new connections")
            return False
        self.open += 1
        return True

    def release(self) -> None:
        self.open -= 1

    def dropped(self, reason: str) -> None:
        self._note(reason, f"dropped a slow client: {reason}")

    def _note(self, kind: str, text: str) -> None:
        suffix = self._throttle.due(kind)
        if suffix is not None:
            log.warning("%s%s", text, suffix)


class ServerConfig(HyperConfig):
    """Hypercorn's Config plus what RegistryTCPServer enforces and the switch our protocol
    classes read (h2proto.H2cGate). ``gate`` counts this process's connections: a forked
    worker starts from its own copy (the parent serves none).

    ``ssl_context``: the listener's TLS context, built once by :meth:`use_tls` from
    ``http.tls`` (tls.py) instead of hypercorn's (which knows one CA file and verify mode,
    no minimum version but 1.2 and OpenSSL's cipher names only); workers inherit it."""

    h2c_enabled: bool = False  # http.h2c.enabled
    ssl_context: ssl.SSLContext | None = None

    def __init__(self, limits: ConnLimits | None = None) -> None:
        super().__init__()
        self.limits = limits or ConnLimits()
        self.gate = ConnectionGate(self.limits.max_connections)

    def use_tls(self, settings: TLSSettings) -> None:
        """Serve TLS as ``settings`` say, with ALPN from ``alpn_protocols`` (set it first).
        Raises tls.TLSConfigError for files or suites that cannot be used."""
        self.ssl_context = build_context(settings, list(self.alpn_protocols))
        self.certfile, self.keyfile = settings.certificate, settings.key  # ssl_enabled

    def create_ssl_context(self) -> ssl.SSLContext | None:
        if self.ssl_context is not None:
            return self.ssl_context
        return super().create_ssl_context()


def _refusal() -> bytes:
    err = RegistryError(ErrorCode.UNAVAILABLE, "too many open connections; retry later")
    headers, body = error_answer(err)
    headers += [(b"retry-after", b"1"), (b"connection", b"close")]
    head = b"".join(b"%s: %s\r\n" % pair for pair in headers)
    return b"HTTP/1.1 503 Service Unavailable\r\n%s\r\n%s" % (head, body)


REFUSAL = _refusal()  # the whole answer to a connection past the cap, built once


class RegistryTCPServer(TCPServer):
    """Hypercorn's TCPServer with the limits of the module docstring. Reads happen in
    ``_read_data`` (the connection's own task, "the reader"); ``_close`` is also called from
    the app's task when a response that must close the connection has been sent."""

    def __init__(
        self, app: Any, config: HyperConfig, context: Any, state: Any, stream: Any
    ) -> None:
        super().__init__(app, config, context, state, stream)
        self.limits: ConnLimits = getattr(config, "limits", None) or ConnLimits()
        self.gate: ConnectionGate | None = getattr(config, "gate", None)
        self._reader: trio.lowlevel.Task | None = None
        self._wake: trio.CancelScope | None = None  # the reader's current read
        self._drained = trio.Event()  # the reader has finished
        self._lingering = False  # the reader should drain and stop
        self._lingered = False
        self._dropped = False

    async def run(self) -> None:
        gate = self.gate
        if gate is not None and not gate.admit():
            await self._refuse()
            return
        try:
            if not await self._serve_h1():
                await super().run()
        finally:
            if gate is not None:
                gate.release()

    async def _serve_h1(self) -> bool:
        """Serve an HTTP/1.1 connection with our own loop (h1server.py); False leaves the
        connection to hypercorn: HTTP/2 by ALPN or by prior knowledge over TLS, any
        cleartext connection when h2c is enabled (a preface or an Upgrade may switch it),
        and apps hypercorn wraps in something other than its ASGI wrapper."""
        stream, config = self.stream, self.config
        if type(self.app) is not ASGIWrapper:
            return False
        if isinstance(stream, trio.SSLStream):
            try:
                with trio.fail_after(config.ssl_handshake_timeout):
                    await stream.do_handshake()
            except (trio.BrokenResourceError, trio.TooSlowError):
                await trio.aclose_forcefully(stream)
                return True  # as hypercorn: a failed handshake ends the connection
            alpn = stream.selected_alpn_protocol()
            if alpn == "h2" or (alpn is None and "h2" in config.alpn_protocols):
                return False
            sock = stream.transport_stream.socket
        elif getattr(config, "h2c_enabled", False):
            return False
        else:
            sock = stream.socket
        try:
            client = socket_addr(sock.family, sock.getpeername())
            server = socket_addr(sock.family, sock.getsockname())
        except OSError:  # reset before we looked
            await trio.aclose_forcefully(stream)
            return True
        await H1Connection(
            self.app.app, stream, context=self.context, limits=self.limits, gate=self.gate,
            ssl=isinstance(stream, trio.SSLStream),
            client=client, server=server, keep_alive_timeout=config.keep_alive_timeout,
            read_timeout=config.read_timeout or math.inf, root_path=config.root_path,
            state=self.state,
        ).serve()
        return True

    async def _refuse(self) -> None:
        """Past the cap: the canned 503 (not over TLS: no handshake for a flooder), then close."""
        with trio.move_on_after(REFUSE_SEND_SECONDS):
            if not isinstance(self.stream, trio.SSLStream):
                try:
                    await self.stream.send_all(REFUSAL)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass
        await trio.aclose_forcefully(self.stream)

    def _h11(self) -> h11.Connection | None:
        """The HTTP/1.1 state machine, or None for HTTP/2 and WebSocket connections."""
        conn = getattr(getattr(self, "protocol", None), "protocol", None)
        state = getattr(conn, "connection", None)
        return state if type(state) is h11.Connection else None

    def _phase(self) -> tuple[str, int]:
        """(phase, request number on this connection) for the next read."""
        conn = self._h11()
        if conn is None:
            return OTHER, 0
        cycle = getattr(self.protocol.protocol, "keep_alive_requests", 0)
        if conn.their_state is h11.IDLE:
            return HEAD, cycle
        if conn.their_state is h11.SEND_BODY:
            return BODY, cycle
        return OTHER, cycle

    def _head_buffered(self) -> bool:
        """Bytes of a next request head already sit in h11's buffer (pipelining)."""
        conn = self._h11()
        return conn is not None and bool(conn.trailing_data[0])  # a copy: call it rarely

    async def _read_data(self) -> None:
        self._reader = trio.lowlevel.current_task()
        timer = ReadTimer(self.limits, self.config.read_timeout or math.inf)
        try:
            while not self._lingering:
                phase, cycle = self._phase()
                buffered = phase == HEAD and timer.is_new(phase, cycle) and self._head_buffered()
                started = trio.current_time()
                data: bytes | None = None
                deadline = timer.deadline(phase, cycle, started, buffered)
                with trio.CancelScope(deadline=deadline) as self._wake:
                    try:
                        data = bytes(await self.stream.receive_some(tcp_server.MAX_RECV))
                    except (trio.ClosedResourceError, trio.BrokenResourceError):
                        break
                    finally:
                        self._wake = None
                if self._lingering:
                    break
                if data == b"":  # EOF: hypercorn's protocol learns it from empty data
                    await self.protocol.handle(RawData(data))
                    break
                now = trio.current_time()
                why = timer.after_wait(now, now - started, len(data or b""), data is None)
                if why is not None:
                    await self._drop(why)
                    break
                if data is not None:
                    await self.protocol.handle(RawData(data))
            if self._lingering:
                await self._drain()
        finally:
            self._drained.set()
        await self.protocol.handle(Closed())

    async def protocol_send(self, event: Any) -> None:
        """Hypercorn's, with a deadline on writes: its own waits forever (shielded) for a
        client that stops reading, holding the connection, its buffers and an open blob.
        A write past :func:`write_deadline` closes the connection, as a dead client would."""
        if type(event) is not RawData:
            await super().protocol_send(event)
            return
        async with self.send_lock:
            deadline = trio.current_time() + write_deadline(self.limits, len(event.data))
            try:
                # Shielded as hypercorn's (a cancelled write would break a TLS stream for
                # the rest of the response), but with a deadline of its own.
                with trio.CancelScope(deadline=deadline, shield=True) as scope:
                    await self.stream.send_all(event.data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                await self.protocol.handle(Closed())
                return
            if scope.cancelled_caught:
                self._dropped = True
                if self.gate is not None:
                    self.gate.dropped(SLOW_READER)
                await self.idle_task.stop()  # else the closed connection lingers 75 s
                await trio.aclose_forcefully(self.stream)
                await self.protocol.handle(Closed())

    async def _drop(self, why: str) -> None:
        """Stop reading. A slow client's connection is closed at once (the keep-alive task
        would hold it open); on hypercorn's read timeout a response in progress goes on."""
        self._dropped = True
        if why == READ_TIMEOUT:
            return
        if self.gate is not None:
            self.gate.dropped(why)
        await self.idle_task.stop()
        await self.stream.aclose()

    async def _close(self) -> None:
        conn = self._h11()
        if conn is not None:
            unread = conn.their_state in (h11.SEND_BODY, h11.ERROR)
        else:
            # HTTP/2: a close is ours (a GOAWAY) unless the client's EOF came first, and the
            # client may still be sending frames: closing over unread bytes resets the
            # connection, and the client loses the GOAWAY that says why.
            unread = isinstance(getattr(self.protocol, "protocol", None), H2Protocol)
        if unread and not (self._lingered or self._dropped or self._drained.is_set()):
            self._lingered = True
            if not isinstance(self.stream, trio.SSLStream):  # TLS has no half-close
                try:
                    await self.stream.send_eof()  # our answer is out: FIN follows it
                except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
                    pass
            if trio.lowlevel.current_task() is self._reader:
                await self._drain()
            else:  # the app's task: the reader drains, so that nothing reads twice at once
                self._lingering = True
                if self._wake is not None:
                    self._wake.cancel()
                with trio.move_on_after(LINGER_SECONDS + LINGER_IDLE_SECONDS):
                    await self._drained.wait()
        await super()._close()

    async def _drain(self) -> None:
        """h1server.drain: read and drop what the client still sends after our answer."""
        await drain(self.stream)


ACCEPT_ERRNOS = {
    errno.EMFILE: "EMFILE", errno.ENFILE: "ENFILE", errno.ENOMEM: "ENOMEM", errno.ENOBUFS: "ENOBUFS"
}


class AcceptErrorFilter(logging.Filter):
    """For trio's ``trio.serve_listeners`` logger, which logs each failed ``accept`` (out of
    file descriptors or memory) with a traceback before retrying 0.1 s later: one line per
    LOG_INTERVAL, without the traceback, with how many it held back."""

    def __init__(self) -> None:
        super().__init__()
        self._throttle = LogThrottle()

    def filter(self, record: logging.LogRecord) -> bool:
        since = self._throttle.due("accept")
        if since is None:
            return False
        exc = record.exc_info[1] if record.exc_info else None
        code = getattr(exc, "errno", None) or 0
        name = ACCEPT_ERRNOS.get(code, str(code))
        record.msg = (
            "cannot accept connections: %s (%s);"
            " lower http.maxconnections or raise the open-file limit%s"
        )
        record.args = (name, os.strerror(code) if code else "?", since)
        record.exc_info = record.exc_text = None
        return True


def install() -> None:
    """Make hypercorn's trio worker use RegistryTCPServer, and quiet trio's accept errors."""
    if not hasattr(hypercorn.trio.run, "TCPServer") or not all(
        hasattr(TCPServer, name) for name in ("run", "_read_data", "_close", "protocol_send")
    ) or not hasattr(tcp_server, "parse_socket_addr"):
        raise RuntimeError("unsupported hypercorn version: no trio TCPServer hooks")
    hypercorn.trio.run.TCPServer = RegistryTCPServer  # type: ignore[attr-defined,misc]
    # IPv4 clients of a dual-stack socket (listen.py) as plain IPv4, on HTTP/2 too.
    tcp_server.parse_socket_addr = socket_addr  # type: ignore[attr-defined]
    accept_log = logging.getLogger("trio.serve_listeners")
    if not any(isinstance(f, AcceptErrorFilter) for f in accept_log.filters):
        accept_log.addFilter(AcceptErrorFilter())
