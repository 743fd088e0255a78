"""A real redis-server for tests (issue 17): started on a free loopback port with no
persistence (``--save "" --appendonly no``), stoppable and restartable on the same port
(Redis down mid-load), always stopped by the fixture.

``running_redis(tmp_path)`` (a context manager for a module's fixture) yields a
:class:`RedisServer`; ``server.cli(...)`` runs one
command through a plain socket (no client of ours: the tests check our client's writes with
an independent reader). Under CI=true a missing redis-server fails the test (require_tool).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from e2e_support import free_port, require_tool

START_TIMEOUT_S = 10.0  # redis-server is up in milliseconds; a loaded CI machine may lag
STOP_TIMEOUT_S = 10.0


def _encode(*args: str | bytes | int) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        data = a if isinstance(a, bytes) else str(a).encode()
        out += [b"$%d\r\n" % len(data), data, b"\r\n"]
    return b"".join(out)


def _read_reply(f) -> object:  # type: ignore[no-untyped-def]
    line = f.readline()
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        return None if n < 0 else f.read(n + 2)[:-2]
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_read_reply(f) for _ in range(n)]
    raise RuntimeError(f"bad reply line {line!r}")


class RedisServer:
    """One redis-server process on ``port``; :meth:`stop` and :meth:`start` it at will."""

    def __init__(
        self, binary: str, workdir: Path, port: int | None = None,
        tls: tuple[Path, Path, Path, ssl.SSLContext] | None = None,
    ) -> None:
        """``tls``: (server certificate, key, CA that client certificates must chain to, a
        client context for :meth:`cli`): serve TLS only, on ``port``, clients verified."""
        self.binary = binary
        self.workdir = workdir
        self.port = port or free_port()
        self.tls = tls
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        assert self.proc is None
        ports = ["--port", str(self.port)]
        if self.tls is not None:
            cert, key, ca, _ = self.tls
            ports = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(cert),
                     "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
                     "--tls-auth-clients", "yes"]
        self.proc = subprocess.Popen(
            [self.binary, *ports, "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                if self.cli("PING") == "PONG":
                    return
            except OSError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise AssertionError(f"redis-server did not start on {self.addr}")
            time.sleep(0.02)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT_S)

    def cli(self, *args: str | bytes | int) -> object:
        """One command's reply, over a new connection (raises RuntimeError on -ERR)."""
        return self.cli_many(args)

    def cli_many(self, *commands: tuple[str | bytes | int, ...]) -> object:
        """Send `commands` on one new connection; the last one's reply."""
        with contextlib.ExitStack() as stack:
            sock = stack.enter_context(socket.create_connection(("127.0.0.1", self.port), 5))
            if self.tls is not None:  # the SSL socket takes the descriptor: close it too
                sock = stack.enter_context(
                    self.tls[3].wrap_socket(sock, server_hostname="127.0.0.1"))
            sock.sendall(b"".join(_encode(*c) for c in commands))
            with sock.makefile("rb") as f:
                replies = [_read_reply(f) for _ in commands]
        return replies[-1]


@contextlib.contextmanager
def running_redis(
    tmp_path: Path, tls: tuple[Path, Path, Path, ssl.SSLContext] | None = None
) -> Iterator[RedisServer]:
    """A started RedisServer (TLS only with ``tls``), stopped on exit whatever happened."""
    binary = require_tool("redis-server", "apt-get install redis-server")
    workdir = tmp_path / "redis"
    workdir.mkdir()
    server = RedisServer(binary, workdir, tls=tls)
    try:
        server.start()
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.stop()
