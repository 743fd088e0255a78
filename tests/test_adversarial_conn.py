"""Hostile connections (issue 12, items 5 and 7; registry/http/conn.py): slow request heads and
bodies beside normal traffic, a connection flood past the open-file limit of a real
``registry serve`` process, and early answers read by clients that keep sending their body.

The in-process servers run the real app (server.build_app) with the real server settings
(server.hypercorn_config) on 127.0.0.1:0; deadlines are configured short (1 s) and every wait
is bounded (``BOUND``), so a server that never drops a slow client fails instead of hanging.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import ssl
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import trio
from conftest import serve_asgi
from e2e_support import (
    REPO_ROOT,
    RegistryProcess,
    _run_registry,
    clean_env,
    ours_log_problem,
    require_tool,
)
from oci import OCI_MANIFEST, push_blob
from test_auth_htpasswd import write_htpasswd
from test_tls import make_certs

from registry.config import Config, ConfigError, load_config
from registry.http.deadlines import (
    BODY,
    HEAD,
    OTHER,
    READ_TIMEOUT,
    SLOW_BODY,
    SLOW_HEAD,
    SLOW_READER,
    STALLED_BODY,
    ConnLimits,
    ReadTimer,
    default_max_connections,
    write_deadline,
)
from registry.server import build_app, hypercorn_config

BOUND = 20.0  # seconds: any wait here; the configured deadlines are 1-2 s
BIG_MANIFEST = b"{" + b" " * (5 * 1024 * 1024) + b"}"  # past the 4 MiB limit: 413


def registry_config(tmp_path: Path, **env: str) -> Config:
    """The configuration `registry serve` would build from these REGISTRY_* variables."""
    base = {
        "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": str(tmp_path / "root"),
        "REGISTRY_LOG_ACCESSLOG_DISABLED": "true",
    }
    config, warnings = load_config(None, base | env)
    assert not warnings, warnings
    return config


async def serve_registry(nursery: trio.Nursery, config: Config) -> tuple[str, int]:
    url = await serve_asgi(nursery, build_app(config), hypercorn_config(config))
    host, port = url.split("//")[1].rsplit(":", 1)
    return host, int(port)


async def until_closed(stream: trio.SocketStream, marker: bytes | None = None) -> bytes:
    """What the server sends until it closes the connection (EOF or reset), or until what
    was read contains ``marker``."""
    got = b""
    while marker is None or marker not in got:
        try:
            data = await stream.receive_some(65536)
        except trio.BrokenResourceError:
            break
        if not data:
            break
        got += data
    return got


async def dribble(stream: trio.SocketStream, data: bytes, every: float) -> None:
    """Send ``data`` one byte per ``every`` seconds, until done or the server hangs up."""
    for i in range(len(data)):
        try:
            await stream.send_all(data[i : i + 1])
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        await trio.sleep(every)


async def dropped_while_dribbling(host: str, port: int, head: bytes, rest: bytes) -> None:
    """Send ``head`` at once, then ``rest`` byte by byte; return once the server hangs up."""
    async with await trio.open_tcp_stream(host, port) as stream:
        await stream.send_all(head)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(dribble, stream, rest, 0.1)
            await until_closed(stream)
            nursery.cancel_scope.cancel()


async def normal_traffic(base: str, stop: trio.Event, statuses: list[int]) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=BOUND) as client:
        while not stop.is_set():
            statuses.append((await client.get("/v2/")).status_code)
            await trio.sleep(0.05)


# --- the read deadlines, as a table (pure) ---------------------------------------------------

LIMITS = ConnLimits(header_timeout=30.0, body_timeout=60.0, min_body_rate=1000)
EXPIRE = None  # a read that waits until its deadline


@pytest.mark.parametrize(
    ("phase", "reads", "expected"),
    [
        # each read: (seconds waited, bytes got), or EXPIRE
        (HEAD, [EXPIRE], READ_TIMEOUT),  # idle before the first byte: hypercorn's limit
        (HEAD, [(1.0, 5), (10.0, 1), (10.0, 1), (8.0, 1)], None),  # 28 s after the first byte
        (HEAD, [(1.0, 5), (10.0, 1), EXPIRE], SLOW_HEAD),  # trickling restarts no clock
        (BODY, [(59.0, 70_000)], None),  # slow start, enough for the window
        (BODY, [(1.0, 100_000), EXPIRE], None),  # the window ends with enough bytes
        (BODY, [(1.0, 100_000), EXPIRE, EXPIRE], STALLED_BODY),  # then nothing for 60 s
        (BODY, [(20.0, 1000), (20.0, 1000), (20.0, 1000)], SLOW_BODY),  # 3000 B in 60 s
        (BODY, [(20.0, 20_000)] * 4, None),  # 1000 B/s: just enough
        (BODY, [EXPIRE], SLOW_BODY),
        (OTHER, [(119.0, 10)], None),  # between requests: only hypercorn's read timeout
        (OTHER, [EXPIRE], READ_TIMEOUT),
    ],
)
def test_read_timer_table(
    phase: str, reads: list[tuple[float, int] | None], expected: str | None
) -> None:
    timer = ReadTimer(LIMITS, read_timeout=120.0)
    now, why = 0.0, None
    for read in reads:
        deadline = timer.deadline(phase, 1, now)
        waited, nbytes = read if read is not None else (deadline - now, 0)
        now += waited
        why = timer.after_wait(now, waited, nbytes, timed_out=read is None)
        if why is not None:
            break
    assert why == expected


def test_read_timer_deadlines_start_at_the_first_head_byte_and_reset_per_request() -> None:
    timer = ReadTimer(LIMITS, read_timeout=120.0)
    assert timer.deadline(HEAD, 1, 0.0) == 120.0  # no byte yet
    timer.after_wait(5.0, 5.0, 1, timed_out=False)
    assert timer.deadline(HEAD, 1, 5.0) == 35.0
    assert timer.deadline(HEAD, 2, 40.0) == 160.0  # the next request starts over
    assert timer.deadline(HEAD, 3, 50.0, buffered=True) == 80.0  # pipelined bytes count
    assert timer.deadline(BODY, 3, 60.0) == 120.0  # a body read: bodytimeout
    short = ReadTimer(LIMITS, read_timeout=1.0)  # hypercorn's read timeout still binds
    assert short.deadline(BODY, 1, 0.0) == 1.0
    assert short.after_wait(1.0, 1.0, 0, timed_out=True) == READ_TIMEOUT


def test_default_cap_is_below_the_open_file_limit() -> None:
    for limit in (64, 256, 1024, 4096, 1 << 20):
        cap = default_max_connections(limit)
        assert 1 <= cap and (cap * 2 < limit or limit <= 64)
        assert cap <= 4096


# --- slow heads and bodies beside normal traffic ---------------------------------------------


async def test_slow_heads_are_dropped_at_the_header_timeout_while_others_are_served(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    config = registry_config(tmp_path, REGISTRY_HTTP_HEADERTIMEOUT="1s")
    host, port = await serve_registry(nursery, config)
    statuses: list[int] = []
    stop = trio.Event()
    nursery.start_soon(normal_traffic, f"http://{host}:{port}", stop, statuses)
    head = b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Slow: "
    with trio.fail_after(BOUND):  # main: hypercorn's keep-alive timeout (75 s) drops them
        async with trio.open_nursery() as slow:
            for _ in range(20):  # one byte every 0.1 s restarts no clock
                slow.start_soon(dropped_while_dribbling, host, port, head, b"a" * 1000)
    stop.set()
    assert statuses and set(statuses) == {200}, statuses


async def test_stalled_and_trickling_bodies_are_dropped_and_a_moving_upload_succeeds(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    config = registry_config(
        tmp_path, REGISTRY_HTTP_BODYTIMEOUT="1s", REGISTRY_HTTP_MINBODYRATE="2000"
    )
    host, port = await serve_registry(nursery, config)
    base = f"http://{host}:{port}"
    async with httpx.AsyncClient(base_url=base, timeout=BOUND) as client:
        locations = [
            httpx.URL((await client.post("/v2/slow/blobs/uploads/")).headers["Location"]).raw_path
            for _ in range(3)
        ]

    def patch(location: bytes, length: int) -> bytes:
        return (
            b"PATCH %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
            b"Content-Type: application/octet-stream\r\n\r\n" % (location, length)
        )

    async def moving_upload(location: bytes, size: int, piece: int) -> bytes:
        """A slow link: ``piece`` bytes per 0.1 s, far above 2000 B/s, over several windows."""
        async with await trio.open_tcp_stream(host, port) as stream:
            await stream.send_all(patch(location, size))
            for offset in range(0, size, piece):
                await stream.send_all(b"z" * min(piece, size - offset))
                await trio.sleep(0.1)
            return await until_closed(stream, b"\r\n\r\n")

    statuses: list[int] = []
    stop = trio.Event()
    nursery.start_soon(normal_traffic, base, stop, statuses)
    answer: list[bytes] = []

    async def upload() -> None:
        answer.append(await moving_upload(locations[2], 30 * 8192, 8192))

    with trio.fail_after(BOUND):  # main: a stalled body waits 120 s, a trickle forever
        async with trio.open_nursery() as clients:
            clients.start_soon(
                dropped_while_dribbling, host, port, patch(locations[0], 1000) + b"y" * 10, b""
            )
            clients.start_soon(
                dropped_while_dribbling, host, port, patch(locations[1], 100_000), b"t" * 5000
            )
            clients.start_soon(upload)
    stop.set()
    assert answer[0].startswith(b"HTTP/1.1 202"), answer[0]
    assert b"range: 0-245759" in answer[0].lower(), answer[0]
    assert statuses and set(statuses) == {200}, statuses


# --- early answers read by a client that keeps sending -----------------------------------------


def http_client_exchange(
    port: int, method: str, path: str, body: bytes, tls: ssl.SSLContext | None = None,
    **headers: str,
) -> tuple[int, dict[str, str], bytes]:
    """Python's http.client: it writes the whole body before it reads any answer."""
    conn = (
        http.client.HTTPSConnection("127.0.0.1", port, timeout=BOUND, context=tls)
        if tls is not None
        else http.client.HTTPConnection("127.0.0.1", port, timeout=BOUND)
    )
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def error_code(body: bytes) -> str:
    return str(json.loads(body)["errors"][0]["code"])


@pytest.fixture
async def early_port(nursery: trio.Nursery, tmp_path: Path) -> int:
    _, port = await serve_registry(nursery, registry_config(tmp_path))
    return port


async def test_http_client_reads_the_413_for_a_big_manifest_sent_without_expect(
    early_port: int,
) -> None:
    # main: BrokenPipeError while writing; the 413 was sent but the connection was reset
    status, headers, body = await trio.to_thread.run_sync(
        lambda: http_client_exchange(
            early_port, "PUT", "/v2/a/manifests/t", BIG_MANIFEST, **{"Content-Type": OCI_MANIFEST}
        )
    )
    assert status == 413 and error_code(body) == "MANIFEST_INVALID", (status, body)
    assert headers.get("connection") == "close"


async def test_http_client_reads_the_404_for_a_patch_on_an_unknown_upload(early_port: int) -> None:
    status, _, body = await trio.to_thread.run_sync(
        lambda: http_client_exchange(early_port, "PATCH", "/v2/a/blobs/uploads/nope", BIG_MANIFEST)
    )
    assert status == 404 and error_code(body) == "BLOB_UPLOAD_UNKNOWN", (status, body)


async def test_http_client_reads_the_401_for_a_big_body_with_auth_on(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    write_htpasswd(tmp_path / "htpasswd", {"alice": "secret"})
    config = registry_config(
        tmp_path,
        REGISTRY_AUTH="htpasswd",
        REGISTRY_AUTH_HTPASSWD_REALM="early",
        REGISTRY_AUTH_HTPASSWD_PATH=str(tmp_path / "htpasswd"),
    )
    _, port = await serve_registry(nursery, config)
    status, headers, body = await trio.to_thread.run_sync(
        lambda: http_client_exchange(
            port, "PUT", "/v2/a/manifests/t", BIG_MANIFEST, **{"Content-Type": OCI_MANIFEST}
        )
    )
    assert status == 401 and error_code(body) == "UNAUTHORIZED", (status, body)
    assert headers.get("www-authenticate") == 'Basic realm="early"'


async def test_http_client_over_tls_reads_the_413(nursery: trio.Nursery, tmp_path: Path) -> None:
    # TLS has no half-close: the rest of the body is read and dropped all the same.
    ca, cert, key, _ = make_certs(tmp_path)
    config = registry_config(
        tmp_path, REGISTRY_HTTP_TLS_CERTIFICATE=str(cert), REGISTRY_HTTP_TLS_KEY=str(key)
    )
    _, port = await serve_registry(nursery, config)
    context = ssl.create_default_context()
    ca.configure_trust(context)
    status, _, body = await trio.to_thread.run_sync(
        lambda: http_client_exchange(
            port, "PUT", "/v2/a/manifests/t", BIG_MANIFEST, context,
            **{"Content-Type": OCI_MANIFEST},
        )
    )
    assert status == 413 and error_code(body) == "MANIFEST_INVALID", (status, body)


@pytest.mark.parametrize(
    ("method", "path", "size", "expected"),
    [
        ("PUT", "/v2/a/manifests/t", 5 * 1024 * 1024, (413, "MANIFEST_INVALID")),
        ("PATCH", "/v2/a/blobs/uploads/nope", 64 * 1024 * 1024, (404, "BLOB_UPLOAD_UNKNOWN")),
    ],
)
async def test_curl_without_expect_reads_the_early_answer(
    early_port: int, tmp_path: Path, method: str, path: str, size: int, expected: tuple[int, str]
) -> None:
    curl = require_tool("curl", "apt-get install curl")
    data = tmp_path / "body"

    def write_body() -> None:
        with open(data, "wb") as f:
            f.truncate(size)  # zeros

    await trio.to_thread.run_sync(write_body)
    out = tmp_path / "out"
    done = await trio.run_process(
        [curl, "-sS", "-X", method, "-H", "Expect:", "-H", f"Content-Type: {OCI_MANIFEST}",
         "--data-binary", f"@{data}", "-o", str(out), "-w", "%{http_code}",
         "--max-time", str(int(BOUND)), f"http://127.0.0.1:{early_port}{path}"],
        capture_stdout=True, capture_stderr=True, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert (int(done.stdout), error_code(out.read_bytes())) == expected


# --- a flood past the open-file limit of a real `registry serve` -------------------------------


@contextmanager
def serve_with_fd_limit(
    tmp_path: Path, fd_limit: int, hard_limit: int | None = None, **env: str
) -> Iterator[RegistryProcess]:
    """`python -m registry serve` (one worker) whose soft RLIMIT_NOFILE is ``fd_limit`` and hard
    one ``hard_limit`` (default the same, so the server cannot raise it), started, waited for
    and stopped as e2e_support starts ours."""
    hard = hard_limit or fd_limit

    def command(config: Path) -> tuple[list[str], dict[str, str]]:
        # `python -m registry serve` with the limit set first (preexec_fn is unsafe with threads)
        limited = (
            "import resource, runpy, sys;"
            f"resource.setrlimit(resource.RLIMIT_NOFILE, ({fd_limit}, {hard}));"
            f"sys.argv = ['registry', 'serve', {str(config)!r}];"
            "runpy.run_module('registry', run_name='__main__')"
        )
        variables = clean_env() | {
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])
            ),
            "REGISTRY_HTTP_WORKERS": "1",
            "REGISTRY_LOG_ACCESSLOG_DISABLED": "true",
        } | env
        return [sys.executable, "-c", limited], variables

    with _run_registry(
        "ours", tmp_path / "root", command, workdir=tmp_path, check_log=ours_log_problem
    ) as reg:
        yield reg


def flood(port: int, count: int) -> list[bytes]:
    """Open ``count`` connections that each send a third of a request head and no more; wait
    (at most BOUND) until the server has closed every one; what each received."""
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=BOUND)
        sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")
        sock.setblocking(False)
        socks.append(sock)
    got = {sock: b"" for sock in socks}
    deadline = time.monotonic() + BOUND
    try:
        while any(sock.fileno() >= 0 for sock in socks):
            assert time.monotonic() < deadline, f"{sum(s.fileno() >= 0 for s in socks)} still open"
            for sock in socks:
                if sock.fileno() < 0:
                    continue
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    continue
                except ConnectionError:
                    data = b""
                got[sock] += data
                if not data:
                    sock.close()
            time.sleep(0.05)
    finally:
        for sock in socks:
            sock.close()
    return list(got.values())


@pytest.mark.parametrize(
    ("fd_limit", "env", "log_line"),
    [
        # the default cap, (256 - 64) / 2 = 96, is reached first: 503 and one line per 10 s
        (256, {}, "connection limit reached"),
        # a cap set above what the limit allows: accept() fails with EMFILE (main: a
        # traceback every 0.1 s); one line per 10 s, and the server recovers
        (128, {"REGISTRY_HTTP_MAXCONNECTIONS": "1000"}, "cannot accept connections: EMFILE"),
    ],
)
def test_a_flood_past_the_open_file_limit_is_refused_and_dropped_and_logged_once_per_interval(
    tmp_path: Path, fd_limit: int, env: dict[str, str], log_line: str
) -> None:
    started = time.monotonic()
    with serve_with_fd_limit(tmp_path, fd_limit, REGISTRY_HTTP_HEADERTIMEOUT="2s", **env) as reg:
        port, log_path = reg.port, reg.log_path
        answers = flood(port, 300)  # main: held open until the keep-alive timeout, 75 s
        # The server dropped every flood connection and answers the next client at once.
        assert httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=BOUND).status_code == 200
        refused = [a for a in answers if a.startswith(b"HTTP/1.1 503")]
        if "MAXCONNECTIONS" not in str(env):
            assert refused, "nothing refused past the cap"
            assert error_code(refused[0].partition(b"\r\n\r\n")[2]) == "UNAVAILABLE"
        assert all(a in (b"", *refused) for a in answers)
    log = log_path.read_text()
    assert "Traceback" not in log, log[-3000:]
    intervals = 1 + int((time.monotonic() - started) / 10)
    lines = [line for line in log.splitlines() if log_line in line]
    assert 1 <= len(lines) <= intervals, log[-3000:]
    dropped = [line for line in log.splitlines() if "dropped a slow client" in line]
    assert 1 <= len(dropped) <= intervals, log[-3000:]


def test_serve_raises_the_soft_open_file_limit_to_the_hard_one(tmp_path: Path) -> None:
    with serve_with_fd_limit(tmp_path, 256, 1024) as reg:
        limits = Path(f"/proc/{reg.proc.pid}/limits").read_text()
    assert re.search(r"Max open files\s+1024\s+1024", limits), limits


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("REGISTRY_HTTP_HEADERTIMEOUT", "0", "http.headertimeout"),
        ("REGISTRY_HTTP_BODYTIMEOUT", "soon", "http.bodytimeout"),
        ("REGISTRY_HTTP_MINBODYRATE", "-1", "http.minbodyrate"),
        ("REGISTRY_HTTP_MAXCONNECTIONS", "many", "http.maxconnections"),
    ],
)
def test_bad_limits_are_configuration_errors_naming_the_key(
    tmp_path: Path, variable: str, value: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        registry_config(tmp_path, **{variable: value})


def test_limits_reach_the_server_config(tmp_path: Path) -> None:
    config = registry_config(
        tmp_path, REGISTRY_HTTP_HEADERTIMEOUT="5s", REGISTRY_HTTP_BODYTIMEOUT="2m",
        REGISTRY_HTTP_MINBODYRATE="10", REGISTRY_HTTP_MAXCONNECTIONS="7",
    )
    assert hypercorn_config(config).limits == ConnLimits(5.0, 120.0, 10, 7)  # type: ignore[attr-defined]


# --- a client that stops reading -------------------------------------------------------------


def test_write_deadline_grows_with_the_write() -> None:
    limits = ConnLimits(body_timeout=60.0, min_body_rate=1024)
    assert write_deadline(limits, 0) == 60.0
    assert write_deadline(limits, 512 * 1024) == 60.0 + 512
    assert write_deadline(ConnLimits(body_timeout=1.0, min_body_rate=0), 1024) == 2.0


async def test_a_client_that_stops_reading_a_blob_is_dropped_while_others_are_served(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A pull whose client never reads: hypercorn's shielded write waited forever, holding the
    connection and an open blob; now the write deadline (1 s + size at 1 MB/s) closes it."""
    config = registry_config(
        tmp_path, REGISTRY_HTTP_BODYTIMEOUT="1s", REGISTRY_HTTP_MINBODYRATE="1000000"
    )
    host, port = await serve_registry(nursery, config)
    url = f"http://{host}:{port}"
    blob = os.urandom(32 * 1024 * 1024)  # far more than loopback's socket buffers hold
    async with httpx.AsyncClient(base_url=url, timeout=BOUND) as client:
        digest = await push_blob(client, "stuck/reader", blob)
    statuses: list[int] = []
    stop = trio.Event()
    nursery.start_soon(normal_traffic, url, stop, statuses)
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    await sock.connect((host, port))
    request = b"GET /v2/stuck/reader/blobs/%s HTTP/1.1\r\nHost: x\r\n\r\n" % digest.encode()
    async with trio.SocketStream(sock) as stream:
        await stream.send_all(request)
        with trio.fail_after(BOUND):  # main: the server waits on this client for ever
            while not any(SLOW_READER in r.getMessage() for r in caplog.records):
                await trio.sleep(0.1)
            got = await until_closed(stream)
    stop.set()
    assert len(got) < len(blob), "the whole blob was sent: the server waited for the reader"
    assert statuses and set(statuses) == {200}, statuses
