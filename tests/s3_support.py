"""Test support for the S3 driver: a real S3-speaking server and a fault-injecting proxy.

The moto server itself (:class:`MotoServer`, :func:`start_moto_process`) and the request
parsing are in tests/s3kit.py, the kit the bench uses too; this module adds what is pytest's.

- :func:`moto_server` starts ONE moto server per test session (``python -m moto.server``
  on 127.0.0.1, a free port) with IAM authentication switched on: the first few actions
  (creating an IAM user, its policy and access key) run unauthenticated, then every
  request must carry a valid SigV4 signature from that key. A wrong signature fails.
- :func:`open_s3_driver` yields an :class:`S3Driver` on a fresh bucket.
- :func:`registry_env` gives the ``REGISTRY_STORAGE=s3`` + ``REGISTRY_STORAGE_S3_*``
  variables for a registry process on a (fresh) bucket.
- :class:`FaultProxy` sits between the driver and moto (trio, loopback), records every
  request and injects 503s, SlowDown errors and dropped connections by rule.

When ``CI=true`` a missing moto is a failure, not a skip.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import trio
from e2e_support import free_port, in_ci

# The kit, as one module object whether tests/ is reached as a package or as a plain
# directory on sys.path.
try:
    from tests import s3kit
except ImportError:
    import s3kit  # type: ignore[no-redef]

# The kit's moto server, as tests have always reached it: through this module.
MOTO_REGION = s3kit.MOTO_REGION
MotoServer = s3kit.MotoServer
start_moto_process = s3kit.start_moto_process
wait_for_moto = s3kit.wait_for_moto

IN_CI = in_ci()  # the same rule as every other e2e check
# The first actions after reset-auth run without authentication: create_user,
# put_user_policy, create_access_key. From the 4th on, signatures are checked.
_SETUP_ACTIONS = 3
_POLICY = (
    '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["s3:*"],"Resource":"*"}]}'
)


def require(module: str) -> None:
    """Skip (locally) or fail (CI=true) when a test tool is missing."""
    try:
        __import__(module)
    except ImportError:
        if IN_CI:
            pytest.fail(f"{module} is required in CI (pip install -e .[test])")
        pytest.skip(f"{module} not installed")


_servers: dict[tuple[bool, bool], MotoServer] = {}


def _start_moto(auth: bool, tls: bool = False) -> MotoServer:
    require("moto")
    require("boto3")
    import boto3

    server = s3kit.start_moto(free_port(), tls=tls)
    import httpx

    if not auth:
        server.access_key, server.secret_key = "AKIDNOAUTH", "no-auth-secret"
        return server
    # Switch signature checking on: moto counts actions; the first _SETUP_ACTIONS pass.
    httpx.post(
        f"{server.endpoint}/moto-api/reset-auth", content=str(_SETUP_ACTIONS)
    ).raise_for_status()
    iam = boto3.client(
        "iam",
        endpoint_url=server.endpoint,
        region_name=MOTO_REGION,
        aws_access_key_id="AKIDSETUP",
        aws_secret_access_key="setup",
    )
    iam.create_user(UserName="registry")
    iam.put_user_policy(UserName="registry", PolicyName="s3-all", PolicyDocument=_POLICY)
    key = iam.create_access_key(UserName="registry")["AccessKey"]
    server.access_key = key["AccessKeyId"]
    server.secret_key = key["SecretAccessKey"]
    return server


def moto_server(*, auth: bool = True) -> MotoServer:
    """The session's moto server (started on first use, stopped at exit).

    ``auth=False``: a second server without IAM auth. Needed for presigned URLs, which
    moto answers with a 500 whenever IAM auth is on (botocore's own presigned URLs too:
    moto's auth check reads an Authorization header that query-signed requests lack).
    """
    server = _servers.get((auth, False))
    if server is None or server.process.poll() is not None:
        server = _servers[auth, False] = _start_moto(auth)
    return server


def moto_tls_server() -> MotoServer:
    """A moto server over HTTPS with a self-signed certificate (no IAM auth)."""
    server = _servers.get((False, True))
    if server is None or server.process.poll() is not None:
        server = _servers[False, True] = _start_moto(False, tls=True)
    return server


@asynccontextmanager
async def open_s3_driver(*, auth: bool = True, **param_overrides: Any) -> AsyncIterator[Any]:
    """An S3Driver on a fresh bucket of the session's moto server; closed on exit.

    ``redirect_disable`` may be passed among the overrides; ``auth=False`` uses the moto
    server without signature checking (see :func:`moto_server`).
    """
    from registry.drivers.s3.driver import S3Driver

    redirect_disable = bool(param_overrides.pop("redirect_disable", False))

    def params_for_fresh_bucket() -> dict[str, Any]:
        server = moto_server(auth=auth)
        return server.params(server.new_bucket(), **param_overrides)

    params = await trio.to_thread.run_sync(params_for_fresh_bucket)
    driver = S3Driver.from_params(params, redirect_disable=redirect_disable)
    try:
        yield driver
    finally:
        await driver.aclose()


def registry_env(
    bucket: str | None = None, *, auth: bool = True, **overrides: Any
) -> dict[str, str]:
    """Environment for ``python -m registry serve`` on S3 (a fresh bucket by default).

    An override of None leaves that option out.
    """
    server = moto_server(auth=auth)
    params = server.params(bucket or server.new_bucket(), **overrides)
    env = {"REGISTRY_STORAGE": "s3"}
    for key, value in params.items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        env[f"REGISTRY_STORAGE_S3_{key.upper()}"] = str(value)
    return env


# --- a fault-injecting HTTP proxy -------------------------------------------------------


@dataclass
class SeenRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body_size: int
    status: int = 0  # 0: no answer was relayed (fault or drop)
    fault: str = ""
    body: bytes = b""  # kept for small bodies (XML) only


Rule = Callable[[SeenRequest], str | None]

_FAULT_BODIES = {
    "503": (503, "ServiceUnavailable", "Please reduce your request rate."),
    "slowdown": (503, "SlowDown", "Please reduce your request rate."),
    "429": (429, "TooManyRequests", "Reduce your concurrent request rate for the same object."),
    "500": (500, "InternalError", "We encountered an internal error. Please try again."),
    "403": (403, "AccessDenied", "Access Denied"),
}


class FaultProxy:
    """A loopback HTTP/1.1 proxy in front of moto, one request per connection.

    ``rules`` are consulted for every request, in order; the first that returns a fault
    name applies: ``"503"``, ``"slowdown"``, ``"429"``, ``"500"``, ``"403"`` answer with an
    S3 XML error without forwarding; ``"drop"`` closes the connection without answering;
    ``"drop_after"`` forwards the request (it takes effect) and drops the answer;
    ``"truncate"`` forwards and relays only the first half of the answer; ``"stall"``
    never answers. Every request is recorded in ``seen``.
    """

    def __init__(self, upstream_port: int, port: int = 0) -> None:
        self.upstream_port = upstream_port
        self.port = port
        self.rules: list[Rule] = []
        self.seen: list[SeenRequest] = []

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail(self, fault: str, times: int, when: Callable[[SeenRequest], bool]) -> None:
        """Inject ``fault`` into the next ``times`` requests matching ``when`` (-1: forever)."""
        left = [times]

        def rule(request: SeenRequest) -> str | None:
            if left[0] != 0 and when(request):
                left[0] -= 1
                return fault
            return None

        self.rules.append(rule)

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client: trio.SocketStream) -> None:
        async with client:
            try:
                raw, request, body = await _read_request(client)
            except (trio.BrokenResourceError, trio.ClosedResourceError, ValueError):
                return
            self.seen.append(request)
            fault = next((f for rule in self.rules if (f := rule(request))), None)
            request.fault = fault or ""
            if fault == "drop":
                return
            if fault == "stall":
                await trio.sleep_forever()
            if fault in _FAULT_BODIES:
                status, code, message = _FAULT_BODIES[fault]
                xml = (
                    f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                    f"<Message>{message}</Message><RequestId>proxy</RequestId></Error>"
                ).encode()
                head = (
                    f"HTTP/1.1 {status} Fault\r\nContent-Type: application/xml\r\n"
                    f"Content-Length: {len(xml) if request.method != 'HEAD' else 0}\r\n"
                    "Connection: close\r\n\r\n"
                ).encode()
                await client.send_all(head + (xml if request.method != "HEAD" else b""))
                return
            upstream = await trio.open_tcp_stream("127.0.0.1", self.upstream_port)
            async with upstream:
                await upstream.send_all(raw + body)
                answer = bytearray()
                while True:
                    data = await upstream.receive_some(1 << 20)
                    if not data:
                        break
                    answer += data
            if fault == "drop_after":
                return
            if fault == "truncate":
                head_end = answer.find(b"\r\n\r\n") + 4
                answer = answer[: head_end + (len(answer) - head_end) // 2]
            match = re.match(rb"HTTP/1\.[01] (\d{3})", answer)
            request.status = int(match.group(1)) if match else 0
            try:
                await client.send_all(bytes(answer))
            except trio.BrokenResourceError:
                pass

    # -- what the proxy saw ----------------------------------------------------------------

    def part_sizes(self) -> dict[str, dict[int, int]]:
        """uploadId -> {part number: bytes} of every UploadPart answered 200."""
        out: dict[str, dict[int, int]] = {}
        for r in self.seen:
            if r.method == "PUT" and "uploadId" in r.query and r.status == 200:
                size = r.body_size
                if "x-amz-copy-source-range" in r.headers:
                    first, last = r.headers["x-amz-copy-source-range"][6:].split("-")
                    size = int(last) - int(first) + 1
                out.setdefault(r.query["uploadId"], {})[int(r.query["partNumber"])] = size
        return out

    def completed_uploads(self) -> list[tuple[str, list[int]]]:
        """(uploadId, part numbers listed) of every CompleteMultipartUpload answered 200."""
        out = []
        for r in self.seen:
            if r.method == "POST" and "uploadId" in r.query and r.status == 200:
                numbers = [int(n) for n in re.findall(rb"<PartNumber>(\d+)</PartNumber>", r.body)]
                out.append((r.query["uploadId"], numbers))
        return out

    def assert_equal_parts(self) -> int:
        """Every completed multipart upload: all non-final parts equal, the last no larger.

        Returns how many completed uploads were checked.
        """
        sizes = self.part_sizes()
        completed = self.completed_uploads()
        for upload_id, numbers in completed:
            assert numbers == list(range(1, len(numbers) + 1)), numbers
            parts = [sizes[upload_id][n] for n in numbers]
            if len(parts) > 1:
                assert len(set(parts[:-1])) == 1, f"unequal non-final parts: {parts}"
                assert parts[-1] <= parts[0], f"last part larger than the others: {parts}"
        return len(completed)


async def _read_request(stream: trio.SocketStream) -> tuple[bytes, SeenRequest, bytes]:
    buf = bytearray()
    while b"\r\n\r\n" not in buf:
        data = await stream.receive_some(65536)
        if not data:
            raise ValueError("connection closed before a request")
        buf += data
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    method, target, headers = s3kit.parse_head(head)
    lines = head.decode("latin-1").split("\r\n")
    kept = [line for line in lines if line.partition(":")[0].strip().lower() != "connection"]
    kept.append("Connection: close")
    length = int(headers.get("content-length", "0"))
    body = bytearray(rest)
    while len(body) < length:
        data = await stream.receive_some(1 << 20)
        if not data:
            raise ValueError("connection closed inside a body")
        body += data
    split = urlsplit(target)
    request = SeenRequest(
        method=method,
        path=split.path,
        query=dict(parse_qsl(split.query, keep_blank_values=True)),
        headers=headers,
        body_size=length,
        body=bytes(body) if length <= 1 << 16 else b"",
    )
    return ("\r\n".join(kept) + "\r\n\r\n").encode("latin-1"), request, bytes(body)


@asynccontextmanager
async def open_proxied_driver(**param_overrides: Any) -> AsyncIterator[tuple[Any, FaultProxy]]:
    """An S3Driver on a fresh bucket, talking to moto through a :class:`FaultProxy`.

    Retries back off in milliseconds here so fault tests stay fast.
    """
    from registry.drivers.s3.client import RetryPolicy
    from registry.drivers.s3.driver import S3Driver

    server = await trio.to_thread.run_sync(moto_server)
    bucket = await trio.to_thread.run_sync(server.new_bucket)
    async with trio.open_nursery() as nursery:
        proxy: FaultProxy = await nursery.start(FaultProxy(server.port).serve)
        params = server.params(bucket, regionendpoint=proxy.endpoint, **param_overrides)
        driver = S3Driver.from_params(params)
        driver.client.retry = RetryPolicy(base=0.005, cap=0.05, same_key_floor=0.01)
        try:
            yield driver, proxy
        finally:
            await driver.aclose()
            nursery.cancel_scope.cancel()


@contextmanager
def proxy_in_thread(upstream_port: int) -> Iterator[FaultProxy]:
    """A :class:`FaultProxy` served by trio in a background thread, for synchronous tests
    (a registry process talks to S3 through it). Stopped on exit."""
    import threading

    proxy = FaultProxy(upstream_port)
    ready = threading.Event()
    handle: dict[str, Any] = {}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            handle["token"] = trio.lowlevel.current_trio_token()
            handle["scope"] = nursery.cancel_scope
            await nursery.start(proxy.serve)
            ready.set()

    thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
    thread.start()
    if not ready.wait(30):
        raise RuntimeError("fault proxy did not start")
    try:
        yield proxy
    finally:
        trio.from_thread.run_sync(handle["scope"].cancel, trio_token=handle["token"])
        thread.join(30)
