"""Hostile HTTP/2 clients, WebSocket/h2c upgrades and killed workers cannot stop the registry
(issue 12, item 1 and the Upgrade half of item 3).

Each attack runs against the real ``registry serve`` (one and two workers, cleartext h2c and
TLS with ALPN h2), and is followed by normal requests over HTTP/1.1 and HTTP/2; the worker
processes must be the same ones as before (no crash, no restart), and the server's log must
hold no traceback and no 500 (run_registry checks that when it stops the server).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h2.errors
import pytest
from h2_support import H2Peer
from hyperframe.frame import PriorityFrame
from oci import OCI_MANIFEST
from test_auth_process import Proc, run_registry
from test_tls import make_certs, tls_config

from registry.config import load_config

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024
EARLY_BODY = 6 * MiB  # declared Content-Length of the early-answer requests (> 4 MiB manifest cap)
PUSH_AFTER_ANSWER = 1 * MiB  # DATA the client keeps sending after the answer (main died at 64 KiB)
RESET_FLOOD = 1000  # streams opened and reset at once on one connection (rapid reset)
PRIORITY_FLOOD = 2000  # PRIORITY frames for streams that never open (tree limit: 1000)
RESTART_WAIT_S = 30.0  # a killed worker's replacement serves within this (backoff cap 10 s)
FD_RELEASE_WAIT_S = 10.0  # a closed connection's socket goes at once; hypercorn held it 75 s


@dataclasses.dataclass
class Target:
    reg: Proc
    tls: ssl.SSLContext | None  # client context (ALPN h2, http/1.1) for a TLS server
    pids: set[int]  # the serving processes when the module's server started

    @property
    def port(self) -> int:
        return self.reg.port

    def peer(self, *, validate: bool = True) -> H2Peer:
        return H2Peer(self.port, self.tls, validate=validate)


def serving_pids(proc: subprocess.Popen[bytes]) -> set[int]:
    """The worker processes (children) of ``proc``, or ``proc`` itself when it has none."""
    assert proc.poll() is None, f"registry exited with {proc.returncode}"
    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == proc.pid:
            children.add(int(stat.parent.name))
    return children or {proc.pid}


def client_tls(ca: Any) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    context.set_alpn_protocols(["h2", "http/1.1"])
    return context


@pytest.fixture(
    scope="module",
    params=[("h2c", 1), ("h2c", 2), ("tls", 1), ("tls", 2)],
    ids=lambda p: f"{p[0]}-{p[1]}w",
)
def target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    transport, workers = request.param
    tmp = tmp_path_factory.mktemp(f"{transport}{workers}")
    config: dict[str, Any] = {"http": {"workers": workers}}
    tls = verify = None
    if transport == "tls":
        ca, cert, key, _ = make_certs(tmp)
        tls, verify = client_tls(ca), client_tls(ca)  # httpx sets its own ALPN on verify's
        config["http"].update(tls_config(cert, key)["http"])
    else:
        config["http"]["h2c"] = {"enabled": True}
    scheme = "https" if tls else "http"
    with run_registry(tmp, config, scheme=scheme, verify=verify or True) as reg:
        yield Target(reg, tls, serving_pids(reg.proc))


def assert_still_serving(target: Target) -> None:
    """The same workers as at start answer HTTP/1.1 and HTTP/2."""
    with target.reg.client() as c:
        assert c.get("/v2/").status_code == 200
    with target.peer() as peer:
        assert peer.get("/v2/")[0] == 200
    assert serving_pids(target.reg.proc) == target.pids, "a worker died and was replaced"


def push_after_answer(
    peer: H2Peer, method: str, path: str, declared: int | None = EARLY_BODY
) -> int:
    """Declare a ``declared``-byte body (None: no Content-Length, as HTTP/2 allows), and keep
    sending DATA after the server has answered, up to PUSH_AFTER_ANSWER bytes past the
    answer or until the server stops the stream."""
    extra = [("content-type", OCI_MANIFEST)]
    if declared is not None:
        extra.append(("content-length", str(declared)))
    sid = peer.request(method, path, extra, end_stream=False)
    sent = after = 0
    limit = declared if declared is not None else EARLY_BODY
    deadline = time.monotonic() + 20
    while after < PUSH_AFTER_ANSWER and not peer.closed and time.monotonic() < deadline:
        if peer.reset_code(sid) is not None:
            break
        window = min(peer.conn.local_flow_control_window(sid), 16384, limit - sent)
        if window > 0:
            try:
                peer.conn.send_data(sid, b"x" * window)
            except h2.exceptions.ProtocolError:  # the stream was reset by the server
                break
            peer.flush()
            sent += window
            if peer.status(sid) is not None:
                after += window
        peer.pump(0 if window > 0 else 0.2)
    peer.wait(lambda: peer.status(sid) is not None)
    return sid


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("PUT", "/v2/h2/app/manifests/v1", 413, "MANIFEST_INVALID"),
        ("PATCH", f"/v2/h2/app/blobs/uploads/{uuid.uuid4()}", 404, "BLOB_UPLOAD_UNKNOWN"),
        ("PUT", "/v2/", 405, "UNSUPPORTED"),
    ],
    ids=["413", "404", "405"],
)
def test_data_after_an_early_answer_closes_only_that_stream(
    target: Target, method: str, path: str, status: int, code: str
) -> None:
    """Issue 12 item 1: on main, hypercorn's h2 KeyError killed the worker at the first
    DATA frame after the answer."""
    with target.peer() as peer:
        sid = push_after_answer(peer, method, path)
        assert peer.status(sid) == status
        peer.wait(lambda: peer.ended(sid))
        assert json.loads(peer.body(sid))["errors"][0]["code"] == code
        assert peer.reset_code(sid) in (None, h2.errors.ErrorCodes.NO_ERROR)
        assert peer.get("/v2/")[0] == 200, "the connection stalls after the early answer"
    assert_still_serving(target)


def open_fds(target: Target) -> int:
    return sum(len(os.listdir(f"/proc/{pid}/fd")) for pid in target.pids)


def test_connections_the_client_closed_release_their_sockets_at_once(target: Target) -> None:
    """On main hypercorn's h2 protocol left the socket of a connection the client had closed
    open (CLOSE-WAIT) until the 75 s keep-alive timer ended; an app that answered a body
    without Content-Length early blocked on its own last send for good."""
    baseline = open_fds(target)
    for _ in range(5):
        with target.peer() as peer:
            sid = push_after_answer(peer, "PUT", "/v2/", declared=None)
            assert peer.status(sid) == 405
            assert peer.get("/v2/")[0] == 200
    deadline = time.monotonic() + FD_RELEASE_WAIT_S
    while open_fds(target) > baseline and time.monotonic() < deadline:
        time.sleep(0.05)
    assert open_fds(target) <= baseline, "sockets of closed connections are still open"
    assert_still_serving(target)


def test_a_reset_flood_is_cut_off_with_goaway(target: Target) -> None:
    with target.peer() as peer:
        for _ in range(RESET_FLOOD):
            if peer.closed or peer.goaway() is not None:
                break
            sid = peer.request("GET", "/v2/")
            peer.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
            peer.flush()
            peer.pump(0)
        peer.wait(lambda: peer.goaway() is not None)
        assert peer.goaway() == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    assert_still_serving(target)


def test_malformed_frames_and_header_floods_close_only_that_connection(target: Target) -> None:
    """Each on its own connection: the server closes it (GOAWAY or EOF) and nothing else.
    On main, h2 buffered a frame whose header claims up to 16 MiB before checking it against
    the 16 KiB limit, so "random bytes" held the connection (and its memory) open; the
    oversized header lists, the CONTINUATION flood and the stream flood were refused already."""
    rng = random.Random(12)
    # Frame header: 24-bit length, type, flags, 31-bit stream id (RFC 9113 section 4.1).
    garbage = {
        "random bytes": bytes(rng.randrange(256) for _ in range(4096)),
        "DATA on stream 0": b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x",
        "WINDOW_UPDATE of 0": b"\x00\x00\x04\x08\x00\x00\x00\x00\x00" + b"\x00" * 4,
        "a frame past the size limit": b"\xff\xff\xff\x00\x00\x00\x00\x00\x01" + b"x" * 1024,
        "SETTINGS of odd length": b"\x00\x00\x05\x04\x00\x00\x00\x00\x00" + b"\x00" * 5,
    }
    for name, data in garbage.items():
        with target.peer() as peer:
            peer.send_raw(data)
            peer.wait(lambda: peer.closed or peer.goaway() is not None)
            assert peer.closed or peer.goaway() is not None, name
    with target.peer() as peer:  # an unknown frame type is ignored (RFC 9113 section 4.1)
        peer.send_raw(b"\x00\x00\x04\xfa\x00\x00\x00\x00\x00abcd")
        assert peer.get("/v2/")[0] == 200
    header_floods = {
        "one 100 KiB header": [("x-big", "y" * 100 * 1024)],
        "3000 headers": [(f"x-h{i}", "y" * 20) for i in range(3000)],
    }
    for name, extra in header_floods.items():
        with target.peer() as peer:
            sid = peer.request("GET", "/v2/", extra)
            peer.wait(lambda: peer.closed or peer.goaway() is not None or peer.ended(sid))  # noqa: B023
            assert peer.status(sid) != 200, name
            assert peer.closed or peer.goaway() is not None or peer.reset_code(sid), name
    with target.peer() as peer:
        peer.continuation_flood(1, frames=2000)
        peer.wait(lambda: peer.closed or peer.goaway() is not None)
        # GOAWAY, unless the close (with our flood unread) reset the socket before we read it
        assert peer.closed or peer.goaway() == h2.errors.ErrorCodes.PROTOCOL_ERROR
    with target.peer() as peer:
        for _ in range(300):  # sent before the server's SETTINGS (100 streams) are read
            peer.conn.send_headers(
                peer.conn.get_next_available_stream_id(),
                [(":method", "GET"), (":scheme", peer.scheme), (":authority", "127.0.0.1"),
                 (":path", "/v2/")],
                end_stream=True,
            )
        peer.flush()
        peer.wait(lambda: peer.closed or peer.goaway() is not None)
        assert peer.goaway() is not None
    assert_still_serving(target)


def test_priority_for_streams_that_never_open_is_ignored(target: Target) -> None:
    """On main, hypercorn put each id into its priority tree until the tree's limit raised
    (TooManyStreamsError) and the worker died."""
    with target.peer() as peer:
        frames = []
        for sid in range(1001, 1001 + 2 * PRIORITY_FLOOD, 2):
            frame = PriorityFrame(sid)
            frame.depends_on, frame.stream_weight = 0, 16
            frames.append(frame)
        peer.send_frames(frames)
        assert peer.get("/v2/")[0] == 200  # stream 1: lower than the PRIORITY ids, still idle
    assert_still_serving(target)


@pytest.mark.parametrize(
    "headers",
    [
        [(b":method", b"CONNECT"), (b":authority", b"127.0.0.1")],
        [(b":method", b"G\xffT"), (b":path", b"/v2/")],
        [(b":method", b"GET"), (b":path", b"/v2/\xff")],
    ],
    ids=["CONNECT without :path", "non-ASCII :method", "non-ASCII :path"],
)
def test_requests_hypercorn_cannot_represent_are_reset(
    target: Target, headers: list[tuple[bytes, bytes]]
) -> None:
    """On main each of these raised in hypercorn (UnboundLocalError, UnicodeDecodeError)
    and killed the worker."""
    with target.peer(validate=False) as peer:
        scheme = [(b":scheme", peer.scheme.encode()), (b":authority", b"127.0.0.1")]
        extra = scheme if headers[0][1] != b"CONNECT" else []
        peer.conn.send_headers(1, headers + extra, end_stream=True)
        peer.flush()
        peer.wait(lambda: peer.ended(1))
        assert peer.reset_code(1) == h2.errors.ErrorCodes.PROTOCOL_ERROR
        assert peer.get("/v2/")[0] == 200, "the connection still serves other streams"
    assert_still_serving(target)


def test_websocket_over_http2_gets_400_json(target: Target) -> None:
    with target.peer() as peer:
        sid = peer.request(
            "CONNECT", "/v2/", [(":protocol", "websocket"), ("sec-websocket-version", "13")]
        )
        peer.wait(lambda: peer.ended(sid))
        assert peer.status(sid) == 400
        assert json.loads(peer.body(sid))["errors"][0]["code"] == "UNSUPPORTED"
    assert_still_serving(target)


# --- h2c off by default, WebSocket over HTTP/1.1 --------------------------------------------


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """The default configuration: no TLS, h2c not enabled, one worker."""
    with run_registry(tmp_path_factory.mktemp("plain")) as reg:
        yield Target(reg, None, serving_pids(reg.proc))


def exchange(port: int, request: bytes) -> bytes:
    """Send ``request`` on a new connection; everything the server sends until it closes
    (or until IO_TIMEOUT_S of silence)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        got = b""
        try:
            while chunk := sock.recv(65536):
                got += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        return got


def test_h2c_prior_knowledge_is_refused_by_default(plain: Target) -> None:
    reply = exchange(plain.port, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 505"), reply[:200]
    assert json.loads(body)["errors"][0]["code"] == "UNSUPPORTED"
    assert_still_serving_http1(plain)


def test_upgrade_h2c_is_ignored_by_default(plain: Target) -> None:
    reply = exchange(
        plain.port,
        b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nConnection: close\r\n\r\n",
    )
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
    assert reply.endswith(b"\r\n\r\n{}")
    assert_still_serving_http1(plain)


@pytest.mark.parametrize("path", ["/v2/", "/v2/h2/app/manifests/latest", "/"])
def test_websocket_upgrade_gets_400_json(plain: Target, path: str) -> None:
    reply = exchange(
        plain.port,
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode(),
    )
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), reply[:200]
    assert json.loads(body)["errors"][0]["code"] == "UNSUPPORTED"
    assert_still_serving_http1(plain)


def assert_still_serving_http1(target: Target) -> None:
    with target.reg.client() as c:
        assert c.get("/v2/").status_code == 200
    assert serving_pids(target.reg.proc) == target.pids


def test_http2_disabled_offers_only_http11_over_tls(tmp_path: Path) -> None:
    ca, cert, key, _ = make_certs(tmp_path)
    config = tls_config(cert, key)
    config["http"]["http2"] = {"disabled": True}
    context = client_tls(ca)
    with run_registry(tmp_path, config, scheme="https", verify=client_tls(ca)) as reg:
        raw = socket.create_connection(("127.0.0.1", reg.port), timeout=10)
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            assert sock.selected_alpn_protocol() == "http/1.1"
            sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")  # HTTP/2 by prior knowledge
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 505"), reply[:200]


# --- the supervisor -------------------------------------------------------------------------


def wait_for_replacement(reg: Proc, old: set[int], killed: int) -> set[int]:
    """The serving pids once ``killed`` has been replaced and its replacement serves (the
    supervisor's worker logs "worker <pid> serving" once it does)."""
    deadline = time.monotonic() + RESTART_WAIT_S
    while time.monotonic() < deadline:
        pids = serving_pids(reg.proc)
        fresh = pids - old
        if killed not in pids and len(pids) == len(old) and fresh:
            log = reg.log()
            if all(f"worker {pid} serving" in log for pid in fresh):
                return pids
        time.sleep(0.05)
    raise AssertionError(f"worker {killed} was not replaced by a serving one")


@pytest.mark.parametrize(("workers", "kills"), [(1, 3), (2, 8)])
def test_workers_killed_again_and_again_are_restarted(
    tmp_path: Path, workers: int, kills: int
) -> None:
    """On main one worker was not supervised (kill -9 ended the registry), and with two the
    supervisor gave up after six quick deaths ("workers keep crashing; stopping")."""
    with run_registry(tmp_path, {"http": {"workers": workers}}) as reg:
        pids = serving_pids(reg.proc)
        assert reg.proc.pid not in pids, "the workers are not children of a supervisor"
        for i in range(kills):
            victim = min(pids)  # the oldest: the two slots take turns
            os.kill(victim, signal.SIGKILL)
            pids = wait_for_replacement(reg, pids, victim)
            with reg.client() as c:
                assert c.get("/v2/").status_code == 200, f"after kill {i + 1}"
        assert reg.proc.poll() is None
        assert reg.stop() == 0
    assert "keep crashing" not in reg.log()


def test_h2c_and_http2_keys_follow_the_reference_in_yaml_and_env(tmp_path: Path) -> None:
    assert not load_config(None, {})[0].http.h2c_enabled
    config = tmp_path / "config.yml"
    config.write_text("version: 0.1\nhttp:\n  h2c:\n    enabled: true\n  http2:\n    disabled: true\n")
    http = load_config(str(config), {})[0].http
    assert http.h2c_enabled and http.http2_disabled
    env = {"REGISTRY_HTTP_H2C_ENABLED": "false", "REGISTRY_HTTP_HTTP2_DISABLED": "false"}
    http = load_config(str(config), env)[0].http
    assert not http.h2c_enabled and not http.http2_disabled
