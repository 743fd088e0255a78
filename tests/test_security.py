"""Security with auth on (issue 6, Security tests; SPEC.md Auth 27).

- Without credentials nothing is readable or writable: every route and method, the catalog,
  referrers, and the upload URL of someone else's session.
- Credentials never reach a log record (access log included).
- An Authorization header of any shape answers 401, never 500 (hypothesis, through the whole
  ASGI app).
- A slow client cannot hold a connection forever: an unfinished header block is dropped after
  the keep-alive timeout, a stalled body after the read timeout.
"""

from __future__ import annotations

import base64
import logging
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from conftest import start_app
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from oci import digest, push_blob, push_image
from test_auth_htpasswd import basic, write_htpasswd

from registry import logs
from registry.auth import HtpasswdAuth
from registry.auth.htpasswd import HtpasswdFile
from registry.auth.policy import REFERENCE_POLICY
from registry.config import Config
from registry.drivers.memory import MemoryDriver
from registry.http.app import AppOptions, RegistryApp
from registry.server import hypercorn_config
from registry.storage.store import Storage

REALM = "Security"
PASSWORD = "correct-horse-battery"
LINE = logs.LogrusFormatter()  # the access line as written, searched for secrets too


def snapshot(root: str) -> dict[str, bytes]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = fh.read()
    return out


@pytest.fixture
async def secured(nursery: trio.Nursery, tmp_path: Path) -> dict[str, Any]:
    """A registry with auth on holding an image, a tag, a referrer and an open upload."""
    path = tmp_path / "htpasswd"
    write_htpasswd(path, {"alice": PASSWORD})
    auth = HtpasswdAuth(REALM, HtpasswdFile(str(path)), REFERENCE_POLICY)
    root = str(tmp_path / "storage")
    url, _ = await start_app(nursery, root, AppOptions(delete_enabled=True), authenticate=auth,
                             can_pull=auth.can_pull)
    async with httpx.AsyncClient(base_url=url, auth=("alice", PASSWORD)) as c:
        mdigest, _ = await push_image(c, "private/app", "v1")
        layer = await push_blob(c, "private/app", b"secret layer")
        start = await c.post("/v2/private/app/blobs/uploads/")
        assert start.status_code == 202
        upload = httpx.URL(start.headers["Location"]).raw_path.decode()
        await c.patch(upload, content=b"partial", headers={"Content-Type": "application/octet-stream"})
    return {"url": url, "root": root, "manifest": mdigest, "layer": layer, "upload": upload}


def every_request(s: dict[str, Any]) -> list[tuple[str, str, bytes]]:
    m, layer, up = s["manifest"], s["layer"], s["upload"]
    repo = "private/app"
    body = b'{"schemaVersion":2}'
    return [
        ("GET", "/v2/", b""),
        ("HEAD", "/v2/", b""),
        ("GET", "/v2/_catalog", b""),
        ("GET", f"/v2/{repo}/tags/list", b""),
        ("GET", f"/v2/{repo}/manifests/v1", b""),
        ("HEAD", f"/v2/{repo}/manifests/v1", b""),
        ("GET", f"/v2/{repo}/manifests/{m}", b""),
        ("PUT", f"/v2/{repo}/manifests/v2", body),
        ("DELETE", f"/v2/{repo}/manifests/v1", b""),
        ("DELETE", f"/v2/{repo}/manifests/{m}", b""),
        ("GET", f"/v2/{repo}/blobs/{layer}", b""),
        ("HEAD", f"/v2/{repo}/blobs/{layer}", b""),
        ("DELETE", f"/v2/{repo}/blobs/{layer}", b""),
        ("POST", f"/v2/{repo}/blobs/uploads/", b""),
        ("POST", f"/v2/{repo}/blobs/uploads/?digest={digest(b'x')}", b"x"),
        ("POST", f"/v2/other/blobs/uploads/?mount={layer}&from={repo}", b""),
        ("GET", up, b""),
        ("PATCH", up, b"more"),
        ("PUT", f"{up}?digest={digest(b'partialmore')}", b""),
        ("DELETE", up, b""),
        ("GET", f"/v2/{repo}/referrers/{m}", b""),
        ("GET", "/v2/UPPER/case/tags/list", b""),  # even bad names: 401 before 400
        ("GET", "/v2/nonexistent/manifests/latest", b""),
    ]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        basic("alice", "wrong"),
        basic("mallory", PASSWORD),
        {"Authorization": "Bearer abc"},
        {"Authorization": "Basic"},
    ],
    ids=["none", "wrong-password", "unknown-user", "bearer", "empty-basic"],
)
async def test_nothing_readable_or_writable_without_credentials_spec_27(
    secured: dict[str, Any], headers: dict[str, str]
) -> None:
    before = snapshot(secured["root"])
    async with httpx.AsyncClient(base_url=secured["url"]) as c:
        for method, path, body in every_request(secured):
            r = await c.request(method, path, content=body, headers=headers)
            assert r.status_code == 401, (method, path, r.status_code, r.text)
            assert r.headers["WWW-Authenticate"] == f'Basic realm="{REALM}"'
            if method != "HEAD":
                assert r.json()["errors"][0]["code"] == "UNAUTHORIZED"
                assert b"secret layer" not in r.content
    assert snapshot(secured["root"]) == before
    # ... and the session is still alice's to finish.
    async with httpx.AsyncClient(base_url=secured["url"], auth=("alice", PASSWORD)) as c:
        status = await c.get(secured["upload"])
        assert status.status_code == 204 and status.headers["Range"] == "0-6"


async def test_credentials_never_reach_the_logs(
    secured: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "hunter2-wrong"
    secrets_ = [PASSWORD, wrong]
    for user, pw in (("alice", PASSWORD), ("alice", wrong), ("bob", wrong)):
        secrets_.append(basic(user, pw)["Authorization"].split()[1])
    caplog.set_level(logging.DEBUG)
    async with httpx.AsyncClient(base_url=secured["url"]) as c:
        for headers in (basic("alice", PASSWORD), basic("alice", wrong), basic("bob", wrong)):
            await c.get("/v2/", headers=headers)
            await c.get("/v2/private/app/tags/list", headers=headers)
            await c.post("/v2/private/app/blobs/uploads/?digest=sha256:bad", headers=headers)
    assert caplog.records, "expected access log records"
    users = set()
    for record in caplog.records:
        text = record.getMessage() + repr(record.__dict__) + LINE.format(record)
        for secret in secrets_:
            assert secret not in text, (secret, text)
        request = getattr(record, "request", None)
        if request is not None and record.name == "registry.access":
            users.add(request.fields().get("auth.user.name"))
    assert users == {"alice", None}  # the user name is logged, only once verified


# --- any Authorization header: 401, never 500 ------------------------------------------------

HEADER_CHARS = st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_characters="\x7f")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


AUTH_HEADERS = st.one_of(
    st.text(HEADER_CHARS, max_size=200),
    st.binary(max_size=100).map(lambda b: "Basic " + _b64(b)),
    st.tuples(st.text(HEADER_CHARS, max_size=30), st.binary(max_size=100)).map(
        lambda t: f"{t[0]} {_b64(t[1])}"
    ),
    st.tuples(st.text(max_size=20), st.text(max_size=80)).map(
        lambda t: "Basic " + _b64(f"{t[0]}:{t[1]}".encode("utf-8", "surrogatepass"))
    ),
    st.sampled_from(["alice", "ALICE", "alice "]).map(
        lambda u: "Basic " + _b64(f"{u}:{PASSWORD}x".encode())
    ),
)


async def asgi_status(app: RegistryApp, method: str, path: str, header: bytes) -> int:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "method": method, "path": path, "raw_path": path.encode(),
        "query_string": b"", "headers": [(b"authorization", header)], "scheme": "http",
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 5000),
    }
    await app(scope, receive, send)
    return int(sent[0]["status"])


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory: pytest.TempPathFactory) -> RegistryApp:
    path = tmp_path_factory.mktemp("fuzz") / "htpasswd"
    write_htpasswd(path, {"alice": PASSWORD})
    auth = HtpasswdAuth(REALM, HtpasswdFile(str(path)), REFERENCE_POLICY)
    return RegistryApp(Storage(MemoryDriver()), AppOptions(access_log=False), authenticate=auth)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=AUTH_HEADERS, route=st.sampled_from([
    ("GET", "/v2/"), ("GET", "/v2/_catalog"), ("POST", "/v2/a/blobs/uploads/"),
    ("GET", "/v2/a/manifests/latest"), ("DELETE", "/v2/a/blobs/sha256:00"),
]))
def test_any_authorization_header_is_401_never_500(
    fuzz_app: RegistryApp, header: str, route: tuple[str, str]
) -> None:
    raw = header.encode("latin-1", "replace")
    status = trio.run(asgi_status, fuzz_app, route[0], route[1], raw)
    assert status == 401, (header, route, status)


# --- slow clients ----------------------------------------------------------------------------


def test_default_timeouts_are_bounded() -> None:
    hc = hypercorn_config(Config())
    assert hc.read_timeout is not None and 0 < hc.read_timeout <= 300
    assert 0 < hc.keep_alive_timeout <= 120
    assert hc.h11_max_incomplete_size <= 64 * 1024


async def serve_with_timeouts(nursery: trio.Nursery, tmp_path: Path, seconds: float) -> tuple[str, int]:
    from functools import partial

    from hypercorn.trio import serve

    app = RegistryApp(Storage(MemoryDriver()), AppOptions(access_log=False))
    hc = hypercorn_config(Config())
    hc.bind = ["127.0.0.1:0"]
    hc.keep_alive_timeout = seconds  # the header timeout: the connection is idle until then
    hc.read_timeout = int(seconds)  # the body timeout: longest silence mid-request
    hc.graceful_timeout = 0.5
    urls = await nursery.start(partial(serve, app, hc))
    host, port = urls[0].split("//")[1].rsplit(":", 1)
    return host, int(port)


async def closed_within(stream: trio.SocketStream, seconds: float) -> bytes:
    """Read until the server closes; fail if it takes longer than ``seconds``."""
    from test_adversarial_conn import until_closed

    with trio.fail_after(seconds):
        return await until_closed(stream)


async def test_half_a_header_block_is_dropped_after_the_timeout(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    host, port = await serve_with_timeouts(nursery, tmp_path, 1)
    stream = await trio.open_tcp_stream(host, port)
    start = trio.current_time()
    await stream.send_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nUser-Agent: slow")
    for _ in range(3):  # trickling more header bytes does not restart the clock
        await trio.sleep(0.3)
        await stream.send_all(b"w")
    await closed_within(stream, 3)
    assert trio.current_time() - start < 3
    await stream.aclose()


async def test_a_stalled_body_is_dropped_after_the_read_timeout(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    host, port = await serve_with_timeouts(nursery, tmp_path, 1)
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as c:
        start = await c.post("/v2/slow/blobs/uploads/")
        location = httpx.URL(start.headers["Location"]).raw_path.decode()
    stream = await trio.open_tcp_stream(host, port)
    await stream.send_all(
        f"PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
        "Content-Type: application/octet-stream\r\n\r\n".encode() + b"y" * 10
    )
    t0 = trio.current_time()
    await closed_within(stream, 4)
    assert trio.current_time() - t0 < 4
    await stream.aclose()


async def test_idle_keep_alive_connection_is_closed(nursery: trio.Nursery, tmp_path: Path) -> None:
    host, port = await serve_with_timeouts(nursery, tmp_path, 1)
    stream = await trio.open_tcp_stream(host, port)
    await stream.send_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
    reply = await closed_within(stream, 4)
    assert reply.startswith(b"HTTP/1.1 200")
    await stream.aclose()

