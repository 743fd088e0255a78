"""Hypercorn's HTTP/1.1 protocol with two costs per request taken out.

Hypercorn turns every h11 event into a separate step: each chunk of a chunked request body
becomes its own ASGI message (docker streams layers in 32 KiB chunks: ~16,000 messages per
512 MiB), and a response head is written to the socket on its own before the body. Here

- consecutive body events that are already buffered are joined into one piece (stopping
  once it reaches MAX_PIECE bytes, so at most one h11 event more) before they go to the app, and
- a final response head is held back and written together with the first body bytes (or
  the end of the message), one send instead of two.

Nothing else changes: parsing, limits, keep-alive and errors stay hypercorn's and h11's.
``install()`` makes hypercorn use this class; it checks the hooks it relies on exist, so a
hypercorn release that moves them fails loudly at start-up, not per request.
"""

from __future__ import annotations

from typing import Any

import h11
import hypercorn.protocol
from hypercorn.events import Closed, RawData, Updated
from hypercorn.protocol.events import Body, EndBody
from hypercorn.protocol.h11 import STREAM_ID, H11Protocol

from .h2proto import H2cGate

MAX_PIECE = 256 * 1024  # joining stops once an ASGI message holds this many body bytes


class RegistryH11Protocol(H2cGate, H11Protocol):  # H2cGate: h2c only when configured
    _held: bytes | None = None  # a final response head waiting for its first body bytes

    async def _send_h11_event(self, event: Any) -> None:
        try:
            data = self.connection.send(event)
        except h11.LocalProtocolError:
            if self.connection.their_state != h11.ERROR:
                raise
            return
        if type(event) is h11.Response:
            self._held = data
            return
        if self._held is not None:
            data = self._held + data
            self._held = None
        if data:
            await self.send(RawData(data=data))

    async def _handle_events(self) -> None:
        conn = self.connection
        if type(conn) is not h11.Connection:  # a WebSocket took over: hypercorn's own loop
            await super()._handle_events()
            return
        ahead: Any = None  # an event (or error) read while joining body pieces
        while True:
            if ahead is not None:
                event, ahead = ahead, None
            else:
                if conn.they_are_waiting_for_100_continue:
                    await self._send_h11_event(
                        h11.InformationalResponse(
                            status_code=100, headers=self.config.response_headers("h11")
                        )
                    )
                try:
                    event = conn.next_event()
                except h11.RemoteProtocolError as error:
                    event = error
            if isinstance(event, h11.RemoteProtocolError):
                if conn.our_state in {h11.IDLE, h11.SEND_RESPONSE}:
                    await self._send_error_response(event.error_status_hint)
                await self.send(Closed())
                return
            if type(event) is h11.Data and self.stream is not None:
                pieces = [event.data]
                size = len(event.data)
                while size < MAX_PIECE:
                    try:
                        ahead = conn.next_event()
                    except h11.RemoteProtocolError as error:
                        ahead = error
                        break
                    if type(ahead) is not h11.Data:
                        break
                    pieces.append(ahead.data)
                    size += len(ahead.data)
                    ahead = None
                data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
                await self.stream.handle(Body(stream_id=STREAM_ID, data=data))
                continue
            if not await self._dispatch(event):
                return

    async def _dispatch(self, event: Any) -> bool:
        """One event other than body data, as hypercorn's loop handles it; False ends it."""
        if type(event) is h11.Request:
            await self.send(Updated(idle=False))
            await self._check_protocol(event)
            await self._create_stream(event)
            return True
        if event is h11.PAUSED:
            await self.can_read.clear()
            await self.can_read.wait()
            return True
        if event is h11.NEED_DATA or type(event) is h11.ConnectionClosed or self.stream is None:
            return False
        if type(event) is h11.EndOfMessage:
            await self.stream.handle(EndBody(stream_id=STREAM_ID))
        return True


def install() -> None:
    """Make hypercorn's connection wrapper build RegistryH11Protocol for HTTP/1.1."""
    hooks = ("_send_h11_event", "_handle_events", "_check_protocol", "_create_stream")
    missing = [name for name in hooks if not hasattr(H11Protocol, name)]
    if getattr(hypercorn.protocol, "H11Protocol", None) not in (H11Protocol, RegistryH11Protocol):
        missing.append("hypercorn.protocol.H11Protocol")
    if missing:
        raise RuntimeError(f"unsupported hypercorn version: no {', '.join(missing)}")
    hypercorn.protocol.H11Protocol = RegistryH11Protocol  # type: ignore[misc]
