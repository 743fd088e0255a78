"""Graceful shutdown on SIGTERM with a real process (issue 6, item 6).

On SIGTERM the server stops accepting, lets in-flight requests finish for up to
``http.draintimeout``, then cancels what is left; an upload cut off that way stays resumable
(its session lives in storage, DESIGN "Data path")."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest
from test_auth_process import run_registry

pytestmark = pytest.mark.e2e

CHUNK = 64 * 1024


def start_upload(base: str) -> str:
    with httpx.Client(base_url=base, timeout=10) as c:
        r = c.post("/v2/drain/blobs/uploads/")
        assert r.status_code == 202, r.text
        return httpx.URL(r.headers["Location"]).raw_path.decode()


def open_patch(port: int, path: str, length: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(
        f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {length}\r\n"
        "Content-Type: application/octet-stream\r\n\r\n".encode()
    )
    return sock


def read_reply(sock: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            data = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            return out
        if not data:
            return out
        out += data
        if b"\r\n\r\n" in out:
            return out


def test_in_flight_request_finishes_after_sigterm(tmp_path: Path) -> None:
    blob = os.urandom(10 * CHUNK)
    with run_registry(tmp_path, {"http": {"draintimeout": "10s"}}) as reg:
        path = start_upload(reg.url)
        sock = open_patch(reg.port, path, len(blob))
        sock.sendall(blob[:CHUNK])
        time.sleep(0.3)
        reg.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        # Stop accepting: a new connection gets no answer from this process any more.
        with pytest.raises(OSError):
            late = socket.create_connection(("127.0.0.1", reg.port), timeout=2)
            late.settimeout(2)
            late.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
            if not late.recv(100):
                raise ConnectionResetError("closed without an answer")
        for i in range(1, 10):  # the in-flight body keeps arriving slowly...
            sock.sendall(blob[i * CHUNK:(i + 1) * CHUNK])
            time.sleep(0.1)
        reply = read_reply(sock)  # ... and gets its answer
        assert reply.startswith(b"HTTP/1.1 202"), reply
        assert f"Range: 0-{len(blob) - 1}".lower().encode() in reply.lower()
        sock.close()
        assert reg.proc.wait(timeout=15) == 0


def test_request_past_the_drain_timeout_is_cancelled_and_the_upload_resumes(
    tmp_path: Path,
) -> None:
    blob = os.urandom(40 * CHUNK)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    drain = 2.0
    with run_registry(tmp_path, {"http": {"draintimeout": f"{drain}s"}}) as reg:
        path = start_upload(reg.url)
        sock = open_patch(reg.port, path, len(blob))
        sent = 0
        for i in range(5):
            sock.sendall(blob[i * CHUNK:(i + 1) * CHUNK])
            sent += CHUNK
        time.sleep(0.5)
        t0 = time.monotonic()
        reg.proc.send_signal(signal.SIGTERM)
        # Trickle slower than the drain allows; the server cuts the request at the deadline.
        try:
            for i in range(5, 40):
                sock.sendall(blob[i * CHUNK:(i + 1) * CHUNK])
                time.sleep(0.25)
        except OSError:
            pass
        code = reg.proc.wait(timeout=drain + 10)
        took = time.monotonic() - t0
        sock.close()
        assert code == 0
        assert drain - 0.5 < took < drain + 5, took
    # A new process on the same storage continues the session from what was kept.
    with run_registry(tmp_path, {}) as reg, reg.client() as c:
        status = c.get(path)
        assert status.status_code == 204, status.text
        have = int(status.headers["Range"].split("-")[1]) + 1 if status.headers["Range"] != "0-0" \
            else 0
        assert 0 <= have <= len(blob)
        rest = blob[have:]
        r = c.patch(path, content=rest, headers={
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{have}-{len(blob) - 1}",
        })
        assert r.status_code == 202, r.text
        done = c.put(f"{httpx.URL(r.headers['Location']).raw_path.decode()}&digest={digest}"
                     if "?" in r.headers["Location"] else f"{path}?digest={digest}")
        assert done.status_code == 201, done.text
        assert c.get(f"/v2/drain/blobs/{digest}").content == blob


def test_idle_keep_alive_connections_do_not_delay_shutdown(tmp_path: Path) -> None:
    with run_registry(tmp_path, {"http": {"draintimeout": "30s", "workers": 2}}) as reg:
        idle = [socket.create_connection(("127.0.0.1", reg.port)) for _ in range(4)]
        for s in idle:
            s.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_reply(s).startswith(b"HTTP/1.1 200")
        t0 = time.monotonic()
        reg.proc.send_signal(signal.SIGTERM)
        assert reg.proc.wait(timeout=20) == 0
        assert time.monotonic() - t0 < 10
        for s in idle:
            s.close()
