"""A raw HTTP/2 client for adversarial tests: the ``h2`` library frames, ``hyperframe`` and
``hpack`` forge what ``h2`` would refuse to send, over a plain or TLS (ALPN h2) socket.

Contracts: every read has a timeout (IO_TIMEOUT_S) and every wait a deadline, so a peer that
never answers ends a test with a failed assertion, not a hang. A connection the server
closed (EOF, reset, broken pipe, TLS error) sets ``closed`` instead of raising.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable, Iterable
from typing import Any, Self

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import hpack
from hyperframe.frame import ContinuationFrame, Frame, HeadersFrame

IO_TIMEOUT_S = 10.0  # one exchange with a healthy server takes milliseconds


class H2Peer:
    """One HTTP/2 connection to ``127.0.0.1:port`` (TLS with ``tls``, else h2c prior
    knowledge). ``validate=False`` lets h2 send headers a conforming client would not."""

    def __init__(self, port: int, tls: ssl.SSLContext | None = None, *, validate: bool = True):
        sock = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT_S)
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname="127.0.0.1")
            assert sock.selected_alpn_protocol() == "h2", sock.selected_alpn_protocol()
        self.sock = sock
        self.scheme = "https" if tls is not None else "http"
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(
                client_side=True, header_encoding=None, validate_outbound_headers=validate,
                normalize_outbound_headers=validate, validate_inbound_headers=False,
            )
        )
        self.conn.initiate_connection()
        self.events: list[h2.events.Event] = []
        self.closed = False
        self.raw_encoder = hpack.Encoder()  # for forged frames (their own HPACK context)
        self.flush()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def flush(self) -> None:
        self.send_raw(self.conn.data_to_send())

    def send_raw(self, data: bytes) -> None:
        if data and not self.closed:
            try:
                self.sock.sendall(data)
            except (OSError, ssl.SSLError):
                self.closed = True

    def send_frames(self, frames: Iterable[Frame]) -> None:
        self.send_raw(b"".join(f.serialize() for f in frames))

    def continuation_flood(self, stream_id: int, frames: int) -> None:
        """HEADERS without END_HEADERS, then ``frames`` CONTINUATION frames of one header
        each, built by hand (h2 would send one header block): use on a fresh connection."""
        first = HeadersFrame(stream_id)
        first.data = self.raw_encoder.encode([(b":method", b"GET"), (b":path", b"/v2/")])
        rest = []
        for i in range(frames):
            frame = ContinuationFrame(stream_id)
            frame.data = self.raw_encoder.encode([(b"x-flood-%d" % i, b"y" * 64)])
            rest.append(frame)
        self.send_frames([first, *rest])

    def pump(self, timeout: float) -> None:
        """Read what arrives within ``timeout`` seconds and record its events."""
        self.sock.settimeout(timeout)  # 0: non-blocking
        try:
            data = self.sock.recv(65536)
        except (TimeoutError, BlockingIOError, ssl.SSLWantReadError):
            return
        except (OSError, ssl.SSLError):
            self.closed = True
            return
        if not data:
            self.closed = True
            return
        try:
            self.events.extend(self.conn.receive_data(data))
        except h2.exceptions.ProtocolError:
            self.closed = True
            return
        self.flush()

    def wait(self, done: Callable[[], bool], timeout: float = IO_TIMEOUT_S) -> bool:
        deadline = time.monotonic() + timeout
        while not done() and not self.closed:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.pump(min(left, 0.5))
        return done()

    def request(
        self, method: str, path: str, extra: Iterable[tuple[str, str]] = (), *,
        end_stream: bool = True,
    ) -> int:
        stream_id: int = self.conn.get_next_available_stream_id()
        headers = [(":method", method), (":scheme", self.scheme), (":authority", "127.0.0.1"),
                   (":path", path), *extra]
        self.conn.send_headers(stream_id, headers, end_stream=end_stream)
        self.flush()
        return stream_id

    # --- what the server said -----------------------------------------------------------

    def of(self, stream_id: int, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind) and e.stream_id == stream_id]

    def status(self, stream_id: int) -> int | None:
        for event in self.of(stream_id, h2.events.ResponseReceived):
            return int(dict(event.headers)[b":status"])
        return None

    def ended(self, stream_id: int) -> bool:
        return bool(
            self.of(stream_id, h2.events.StreamEnded) or self.of(stream_id, h2.events.StreamReset)
        )

    def body(self, stream_id: int) -> bytes:
        return b"".join(e.data for e in self.of(stream_id, h2.events.DataReceived))

    def reset_code(self, stream_id: int) -> int | None:
        resets = self.of(stream_id, h2.events.StreamReset)
        return int(resets[0].error_code) if resets else None

    def goaway(self) -> int | None:
        for event in self.events:
            if isinstance(event, h2.events.ConnectionTerminated):
                return int(event.error_code)
        return None

    def get(self, path: str) -> tuple[int | None, bytes]:
        """A GET on this connection: (status, body), status None if it got no answer."""
        stream_id = self.request("GET", path)
        self.wait(lambda: self.ended(stream_id))
        return self.status(stream_id), self.body(stream_id)
