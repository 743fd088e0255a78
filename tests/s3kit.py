"""The S3 test kit shared by the tests and the bench: a moto server, and what a proxy in
front of it needs (request heads, S3 operation names, a counting relay).

- :func:`start_moto` runs ``python -m moto.server`` on a loopback port and returns a
  :class:`MotoServer` (endpoint, keys, bucket creation, reset, stop). Signature checking
  (IAM auth) is switched on by tests/s3_support.py, which needs boto3's IAM client for it.
- :func:`parse_head` and :func:`classify`: a request head's method, target and headers, and
  the S3 operation of a path-style request.
- :class:`CountingProxy`: a streaming relay (threads, keep-alive kept, bodies never
  buffered) that counts requests by S3 operation: the bench's "S3 requests" figures.
  tests/s3_support.py's ``FaultProxy`` is the other proxy of the kit: it holds each answer
  whole so that it can drop, cut or replace it, which would distort the bench's figures.

No pytest here: the bench imports this module as ``tests.s3kit`` (``python -m bench`` runs
from the repository root), the tests through s3_support.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self
from urllib.parse import parse_qsl

import httpx

HOST = "127.0.0.1"
MOTO_REGION = "us-east-1"
MOTO_START_TIMEOUT = 60.0  # s; importing moto takes a few seconds, more on a busy machine
MOTO_STOP_GRACE = 10.0  # s between SIGTERM and SIGKILL
RELAY_BUF = 1024 * 1024  # bytes per relay read: large enough that a 512 MiB push is cheap
HEAD_LIMIT = 64 * 1024  # bytes; a longer request head or chunk line is a parse error


# --- moto -------------------------------------------------------------------------------


def _parent_death_signal() -> Callable[[], Any] | None:
    """preexec_fn: SIGTERM the child when its parent dies (Linux PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


def start_moto_process(
    port: int,
    *,
    tls: bool = False,
    log: Path | None = None,
    own_session: bool = False,
    die_with_parent: bool = False,
) -> subprocess.Popen[bytes]:
    """``python -m moto.server`` on 127.0.0.1:port (no auth until reset-auth), not waited
    for. ``tls``: HTTPS with a self-signed certificate made at startup; ``log``: append its
    output there (else discarded); ``own_session``: its own process group, so that
    :meth:`MotoServer.stop` ends the whole group; ``die_with_parent``: only from the main
    thread -- PR_SET_PDEATHSIG fires when the *thread* that spawned the child ends, and
    trio's worker threads retire after ~10 s idle (moto died mid-suite)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    out = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)]
            + (["--ssl"] if tls else []),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT if log is not None else subprocess.DEVNULL,
            env=env,
            start_new_session=own_session,
            preexec_fn=_parent_death_signal() if die_with_parent else None,  # noqa: PLW1509
        )
    finally:
        if log is not None:
            out.close()  # type: ignore[union-attr]


def wait_for_moto(
    endpoint: str, process: subprocess.Popen[bytes], timeout: float = MOTO_START_TIMEOUT
) -> None:
    """Return once moto answers at ``endpoint``; RuntimeError if it exits or stays silent."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"moto server exited with {process.returncode}")
        try:
            answer = httpx.get(f"{endpoint}/moto-api/data.json", timeout=2, verify=False)
            if answer.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"moto server did not come up in {timeout:.0f} s")
        time.sleep(0.1)


def signed_headers(
    method: str, host: str, target: str, access_key: str, secret_key: str
) -> dict[str, str]:
    """SigV4 headers (UNSIGNED-PAYLOAD) for a raw request to moto at ``host`` (with its
    port). Moto without IAM auth does not check them, but it answers anonymous requests to
    a private bucket with 403."""
    from registry.drivers.s3.sigv4 import Signer

    path, _, query = target.partition("?")
    signer = Signer(access_key, secret_key, MOTO_REGION)
    return signer.sign_headers(
        method,
        host,
        path,
        parse_qsl(query, keep_blank_values=True),
        {},
        "UNSIGNED-PAYLOAD",
        datetime.now(UTC),
    )


@dataclass
class MotoServer:
    """A moto server subprocess and the credentials it accepts."""

    process: subprocess.Popen[bytes]
    port: int
    tls: bool = False
    access_key: str = ""
    secret_key: str = ""
    buckets: list[str] = field(default_factory=list)
    log_path: Path | None = None
    own_session: bool = False

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://{HOST}:{self.port}"

    def boto3(self, secret_key: str | None = None) -> Any:
        """A boto3 S3 client (botocore signs; test-only) with our key."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            verify=not self.tls,  # the TLS server has a throwaway self-signed certificate
            region_name=MOTO_REGION,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )

    def create_bucket(self, name: str) -> None:
        """Create bucket ``name`` (RuntimeError unless moto answers 200)."""
        target = f"/{name}"
        headers = signed_headers(
            "PUT", f"{HOST}:{self.port}", target, self.access_key, self.secret_key
        )
        with warnings.catch_warnings():  # urllib3-style warnings on the TLS server
            warnings.simplefilter("ignore")
            answer = httpx.put(
                f"{self.endpoint}{target}", headers=headers, timeout=30, verify=False
            )
        if answer.status_code != 200:
            raise RuntimeError(f"moto: create bucket {name}: {answer.status_code}")
        self.buckets.append(name)

    def new_bucket(self) -> str:
        name = f"t-{uuid.uuid4().hex[:16]}"
        self.create_bucket(name)
        return name

    def params(self, bucket: str, **overrides: Any) -> dict[str, Any]:
        """The ``storage.s3`` section (keys lower-cased) the tests use for a bucket here."""
        params: dict[str, Any] = {
            "accesskey": self.access_key,
            "secretkey": self.secret_key,
            "region": MOTO_REGION,
            "regionendpoint": self.endpoint,
            "bucket": bucket,
            "forcepathstyle": True,
            "secure": False,
            "chunksize": 5 * 1024 * 1024,
            "rootdirectory": "/registry-root",
        }
        params.update(overrides)
        return params

    def reset(self) -> None:
        """Drop every bucket and object (moto keeps them in memory and temp files)."""
        httpx.post(f"{self.endpoint}/moto-api/reset", timeout=120, verify=False).raise_for_status()
        self.buckets.clear()

    def log_tail(self, lines: int = 5) -> str:
        if self.log_path is None:
            return ""
        try:
            return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM (the whole group with ``own_session``), SIGKILL after a grace. Idempotent."""
        if self.process.poll() is not None:
            return

        def send(sig: int) -> None:
            try:
                if self.own_session:
                    os.killpg(self.process.pid, sig)
                else:
                    self.process.send_signal(sig)
            except ProcessLookupError:
                pass

        send(signal.SIGTERM)
        try:
            self.process.wait(MOTO_STOP_GRACE)
        except subprocess.TimeoutExpired:
            send(signal.SIGKILL)
            self.process.wait(5)


def start_moto(
    port: int, *, tls: bool = False, log: Path | None = None, own_session: bool = False,
    die_with_parent: bool = False, access_key: str = "", secret_key: str = "",
) -> MotoServer:  # fmt: skip
    """Start moto (see :func:`start_moto_process`), wait until it answers, and stop it at
    exit. RuntimeError (with the log's tail) if it does not come up."""
    process = start_moto_process(
        port, tls=tls, log=log, own_session=own_session, die_with_parent=die_with_parent
    )
    server = MotoServer(process, port, tls, access_key, secret_key, log_path=log,
                        own_session=own_session)  # fmt: skip
    atexit.register(server.stop)
    try:
        wait_for_moto(server.endpoint, process)
    except RuntimeError as exc:
        server.stop()
        tail = server.log_tail()
        raise RuntimeError(f"{exc}: {tail}" if tail else str(exc)) from None
    return server


# --- request heads and S3 operations ------------------------------------------------------


def parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    """(method, target, headers with lower-cased names) of an HTTP/1.1 request head, the
    bytes before its blank line. ValueError if the request line is malformed."""
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return method, target, headers


def classify(method: str, target: str, headers: dict[str, str]) -> str:
    """The S3 operation of a path-style request."""
    path, _, query = target.partition("?")
    params = {k for k, _ in parse_qsl(query, keep_blank_values=True)}
    bucket_and_key = path.lstrip("/").split("/", 1)
    on_object = len(bucket_and_key) == 2 and bucket_and_key[1] != ""
    copy = "x-amz-copy-source" in headers
    if method == "PUT":
        if "partNumber" in params:
            return "UploadPartCopy" if copy else "UploadPart"
        if copy:
            return "CopyObject"
        return "PutObject" if on_object else "CreateBucket"
    if method == "POST":
        if "uploads" in params:
            return "CreateMultipartUpload"
        if "uploadId" in params:
            return "CompleteMultipartUpload"
        return "DeleteObjects" if "delete" in params else "POST"
    if method == "DELETE":
        if "uploadId" in params:
            return "AbortMultipartUpload"
        return "DeleteObject" if on_object else "DeleteBucket"
    if method == "GET":
        if not on_object:
            return "ListMultipartUploads" if "uploads" in params else "ListObjects"
        return "ListParts" if "uploadId" in params else "GetObject"
    if method == "HEAD":
        return "HeadObject" if on_object else "HeadBucket"
    return method


class RequestStream:
    """Follows the client->S3 byte stream of one keep-alive connection and reports each
    request head. Bodies (Content-Length or chunked) are skipped by counting, not copied."""

    def __init__(self, on_request: Callable[[str, str, dict[str, str]], None]) -> None:
        self.on_request = on_request
        self.state = "head"  # head | body | size | chunk | crlf | trailer
        self.pending = bytearray()  # a partial head or line
        self.left = 0  # body or chunk bytes (or CRLF bytes) still to skip

    def feed(self, data: memoryview) -> None:
        i, n = 0, len(data)
        while i < n:
            if self.state in ("body", "chunk", "crlf"):
                take = min(self.left, n - i)
                self.left -= take
                i += take
                if self.left == 0:
                    self.state = {"body": "head", "chunk": "crlf", "crlf": "size"}[self.state]
                    if self.state == "crlf":
                        self.left = 2
                continue
            sep = b"\r\n\r\n" if self.state == "head" else b"\r\n"
            piece = bytes(data[i : i + HEAD_LIMIT])
            joined = self.pending + piece
            idx = joined.find(sep, max(0, len(self.pending) - len(sep) + 1))
            if idx < 0:
                if len(joined) > HEAD_LIMIT:
                    raise ValueError("request head or chunk line too long")
                self.pending = joined
                i += len(piece)
                continue
            end = idx + len(sep)
            i += end - len(self.pending)
            text = bytes(joined[:idx])
            self.pending = bytearray()
            if self.state == "head":
                self._head(text)
            elif self.state == "size":
                size = int(text.split(b";")[0].strip(), 16)
                self.state, self.left = ("trailer", 0) if size == 0 else ("chunk", size)
            elif not text:  # trailer: an empty line ends the request
                self.state = "head"

    def _head(self, text: bytes) -> None:
        method, target, headers = parse_head(text)
        self.on_request(method, target, headers)
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self.state = "size"
        else:
            length = int(headers.get("content-length", "0") or 0)
            self.state, self.left = ("body", length) if length else ("head", 0)


class CountingProxy:
    """A loopback relay in front of moto (threads, blocking sockets, 1 MiB buffers).

    Responses are relayed untouched; requests are parsed just enough to count them by
    operation (:func:`classify`). ``snapshot()`` returns the counts so far.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._listener = socket.create_server((HOST, 0), backlog=256)
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._ops: Counter[str] = Counter()
        self._sockets: set[socket.socket] = set()
        self.parse_errors = 0
        self.connections = 0
        self._accept = threading.Thread(target=self._accept_loop, name="s3proxy", daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    def __enter__(self) -> Self:
        self._accept.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self._ops)

    def _count(self, method: str, target: str, headers: dict[str, str]) -> None:
        op = classify(method, target, headers)
        with self._lock:
            self._ops[op] += 1

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection((HOST, self.upstream_port), timeout=10)
            except OSError:
                client.close()
                continue
            pair = [client, upstream]
            for s in pair:
                s.settimeout(None)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sockets.update(pair)
                self.connections += 1
            done = [0]
            for src, dst, parse in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(
                    target=self._relay, args=(src, dst, parse, pair, done), daemon=True
                ).start()

    def _relay(
        self,
        src: socket.socket,
        dst: socket.socket,
        parse: bool,
        pair: list[socket.socket],
        done: list[int],
    ) -> None:
        stream = RequestStream(self._count) if parse else None
        buf = bytearray(RELAY_BUF)
        view = memoryview(buf)
        try:
            while True:
                n = src.recv_into(buf)
                if not n:
                    break
                if stream is not None:  # count before forwarding: never after the answer
                    try:
                        stream.feed(view[:n])
                    except (ValueError, IndexError):
                        stream = None
                        with self._lock:
                            self.parse_errors += 1
                dst.sendall(view[:n])
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            with self._lock:
                done[0] += 1
                last = done[0] == 2
                if last:
                    self._sockets.difference_update(pair)
            if last:
                for s in pair:
                    s.close()

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
