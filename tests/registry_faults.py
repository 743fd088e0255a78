"""A fault-injecting HTTP/1.1 reverse proxy for registry traffic (the pull-through cache tests).

It sits between a registry in proxy mode and its upstream, on 127.0.0.1, and runs its own
trio loop in a thread, so synchronous tests (subprocesses, httpx.Client, dockerd, skopeo)
can drive it. The pattern is tests/s3_support.FaultProxy's; unlike that one it streams
answers (blobs of many MiB pass through in constant memory) and speaks the registry's
errors (JSON envelopes) instead of S3's XML.

Contract:
- Every request is forwarded with ``Connection: close`` (one request per connection: the
  upstream's answer ends at EOF, so relaying needs no framing) and its ``Host`` unchanged
  (absolute URLs the upstream builds point back through this proxy).
- Every request is recorded in ``seen`` (method, path, status relayed, fault applied).
- ``fail(fault, ...)`` arms a rule for the next ``times`` requests that match; the first
  armed rule that matches applies. Faults: ``"drop_mid"`` relays the answer's head and
  half of its body, then closes; ``"wrong_bytes"`` relays an answer of the same length
  whose body bytes are all flipped; ``"swap"`` answers with what the upstream says for
  ``to_path`` instead (valid content, but not what was asked for); ``"delay"`` waits ``delay_s`` before forwarding;
  ``"stall"`` never answers (``delay_s`` > 0: closes the
  connection after that long; else holds it until the proxy stops); ``"401"``, ``"429"``, ``"500"``,
  ``"503"`` answer that status with a registry JSON error without forwarding.
- ``set_down(True)`` closes the listening socket (new connections are refused: the
  upstream is "down") and ends open connections; ``set_down(False)`` listens again on the
  same port.
- ``open_fault_proxy`` stops the loop and joins the thread on exit (bounded).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import threading
from collections.abc import Callable, Iterator
from typing import Any

import trio

try:  # tests/ is a plain directory on sys.path, or a package
    from tests.e2e_support import free_port
except ImportError:
    from e2e_support import free_port  # type: ignore[no-redef]

HEAD_LIMIT_BYTES = 64 * 1024  # a request/answer head longer than this is not a registry's
RELAY_CHUNK_BYTES = 256 * 1024  # big enough that relaying a blob costs little CPU
THREAD_START_TIMEOUT_S = 10.0
THREAD_STOP_TIMEOUT_S = 10.0

_STATUS_FAULTS = {
    "401": (401, "UNAUTHORIZED", "authentication required"),
    "429": (429, "TOOMANYREQUESTS", "too many requests"),
    "500": (500, "UNKNOWN", "injected internal error"),
    "503": (503, "UNAVAILABLE", "injected unavailability"),
}
FAULTS = frozenset({"drop_mid", "wrong_bytes", "swap", "delay", "stall", *_STATUS_FAULTS})

_FLIP = bytes(b ^ 0xFF for b in range(256))  # wrong_bytes: every byte differs, same length
_BLOB_PATH = re.compile(r"^/v2/(?P<name>.+)/blobs/(?P<digest>[a-z0-9]+:[a-f0-9]+)$")
_MANIFEST_PATH = re.compile(r"^/v2/(?P<name>.+)/manifests/(?P<ref>[^/]+)$")


@dataclasses.dataclass
class Seen:
    """One request the proxy received. ``status`` 0: no answer head was relayed."""

    method: str
    path: str  # without the query string
    status: int = 0
    fault: str = ""


Match = Callable[[Seen], bool]


def blob_path(digest: str) -> Match:
    """Requests for the blob ``digest`` (any repository)."""
    return lambda s: (m := _BLOB_PATH.match(s.path)) is not None and m["digest"] == digest


def any_blob() -> Match:
    return lambda s: _BLOB_PATH.match(s.path) is not None


def any_manifest() -> Match:
    return lambda s: _MANIFEST_PATH.match(s.path) is not None


def any_v2() -> Match:
    return _ANY_V2


def _any_v2(s: Seen) -> bool:
    return s.path.startswith("/v2/")


_ANY_V2: Match = _any_v2


@dataclasses.dataclass
class _Rule:
    fault: str
    left: int  # -1: forever
    when: Match
    method: str | None
    delay_s: float
    to_path: str


class RegistryFaultProxy:
    """See the module docstring. Build it with :func:`open_fault_proxy`."""

    def __init__(self, upstream_host: str, port: int) -> None:
        host, _, port_text = upstream_host.rpartition(":")
        self.upstream = (host, int(port_text))
        self.port = port
        self.seen: list[Seen] = []
        self._rules: list[_Rule] = []
        self._lock = threading.Lock()
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._serving: trio.CancelScope | None = None
        self._serving_done: trio.Event | None = None
        self._stop: trio.Event | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    # -- commands (from the test's thread) ----------------------------------------------------

    def fail(self, fault: str, *, when: Match = _ANY_V2, times: int = 1,
             method: str | None = None, delay_s: float = 0.0, to_path: str = "") -> None:
        """Apply ``fault`` to the next ``times`` requests (-1: all) matching ``when``/``method``
        (``delay_s``: for delay and stall; ``to_path``: for swap)."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; one of {sorted(FAULTS)}")
        if (fault == "swap") != bool(to_path):
            raise ValueError("to_path goes with the swap fault, and only with it")
        with self._lock:
            self._rules.append(_Rule(fault, times, when, method, delay_s, to_path))

    def clear(self) -> None:
        """Disarm every rule (the fault "clears")."""
        with self._lock:
            self._rules.clear()

    def set_down(self, down: bool) -> None:
        """Stop listening (refuse connections) or listen again on the same port."""
        assert self._token is not None
        trio.from_thread.run(self._set_down, down, trio_token=self._token)

    def requests(self, method: str | None = None, when: Match = _ANY_V2) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if (method is None or s.method == method) and when(s)]

    def blob_gets(self, digest: str) -> int:
        """How many GETs of blob ``digest`` reached the upstream (faulted ones excluded)."""
        return sum(1 for s in self.requests("GET", blob_path(digest)) if not s.fault)

    def reset_counts(self) -> None:
        with self._lock:
            self.seen.clear()

    # -- the trio side ------------------------------------------------------------------------

    def _pick(self, seen: Seen) -> _Rule | None:
        with self._lock:
            for rule in self._rules:
                if rule.left != 0 and (rule.method in (None, seen.method)) and rule.when(seen):
                    if rule.left > 0:
                        rule.left -= 1
                    return rule
        return None

    async def _main(self, ready: threading.Event) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self._serve)
            ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    async def _serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        done = self._serving_done = trio.Event()
        try:
            with trio.CancelScope() as scope:
                self._serving = scope
                listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
                task_status.started()
                await trio.serve_listeners(self._handle, listeners)
        finally:
            done.set()

    async def _set_down(self, down: bool) -> None:
        if down and self._serving is not None:
            self._serving.cancel()
            assert self._serving_done is not None
            await self._serving_done.wait()
            self._serving = None
        elif not down and self._serving is None:
            assert self._nursery is not None
            await self._nursery.start(self._serve)

    async def _handle(self, client: trio.SocketStream) -> None:
        async with client:
            try:
                head, rest = await _read_head(client, b"")
            except (trio.BrokenResourceError, trio.ClosedResourceError, ValueError):
                return
            lines = head.split(b"\r\n")
            method, target, _ = lines[0].decode("latin-1").split(" ", 2)
            seen = Seen(method, target.split("?", 1)[0])
            with self._lock:
                self.seen.append(seen)
            rule = self._pick(seen)
            fault = rule.fault if rule else ""
            seen.fault = fault
            try:
                await self._answer(client, lines, rest, seen, rule)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass  # the client or the upstream went away: nothing to relay to

    async def _answer(self, client: trio.SocketStream, lines: list[bytes], rest: bytes,
                      seen: Seen, rule: _Rule | None) -> None:
        fault = rule.fault if rule else ""
        if fault == "stall":
            if rule is not None and rule.delay_s > 0:
                await trio.sleep(rule.delay_s)
                return  # closed without a word, as a dead middlebox ends a connection
            await trio.sleep_forever()
        if fault in _STATUS_FAULTS:
            await client.send_all(_error_answer(fault, seen.method))
            seen.status = _STATUS_FAULTS[fault][0]
            return
        if fault == "delay" and rule is not None:
            await trio.sleep(rule.delay_s)
        headers = [h for h in lines[1:] if h and not h.lower().startswith(b"connection:")]
        length = _content_length(headers)
        body = rest
        while len(body) < length:
            data = await client.receive_some(RELAY_CHUNK_BYTES)
            if not data:
                return
            body += data
        request_line = lines[0]
        if fault == "swap" and rule is not None:
            verb, _, version = request_line.split(b" ")
            request_line = b" ".join([verb, rule.to_path.encode("latin-1"), version])
        request = b"\r\n".join([request_line, *headers, b"Connection: close", b"", b""]) + body
        upstream = await trio.open_tcp_stream(*self.upstream)
        async with upstream:
            await upstream.send_all(request)
            head, first = await _read_head(upstream, b"")
            match = re.match(rb"HTTP/1\.[01] (\d{3})", head)
            seen.status = int(match.group(1)) if match else 0
            await client.send_all(head + b"\r\n\r\n")
            if seen.method == "HEAD":
                return
            answer_length = _content_length(head.split(b"\r\n")[1:])
            budget = answer_length // 2 if fault == "drop_mid" else -1
            data = first
            while True:
                if budget >= 0:
                    data = data[:budget]
                    budget -= len(data)
                if fault == "wrong_bytes":
                    data = data.translate(_FLIP)
                if data:
                    await client.send_all(data)
                if budget == 0:
                    return  # drop_mid: half the body sent; closing now cuts the answer short
                data = await upstream.receive_some(RELAY_CHUNK_BYTES)
                if not data:
                    return


async def _read_head(stream: trio.SocketStream, buf: bytes) -> tuple[bytes, bytes]:
    """(head without its blank line, bytes after it); ValueError past HEAD_LIMIT_BYTES."""
    while b"\r\n\r\n" not in buf:
        if len(buf) > HEAD_LIMIT_BYTES:
            raise ValueError("head too long")
        data = await stream.receive_some(RELAY_CHUNK_BYTES)
        if not data:
            raise ValueError("connection closed before the end of the head")
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def _content_length(headers: list[bytes]) -> int:
    for h in headers:
        name, _, value = h.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


def _error_answer(fault: str, method: str) -> bytes:
    status, code, message = _STATUS_FAULTS[fault]
    body = json.dumps({"errors": [{"code": code, "message": message, "detail": None}]}).encode()
    extra = 'WWW-Authenticate: Basic realm="fault proxy"\r\n' if status == 401 else ""
    extra += "Retry-After: 1\r\n" if status in (429, 503) else ""
    head = (
        f"HTTP/1.1 {status} Fault\r\nContent-Type: application/json\r\n"
        f"Docker-Distribution-API-Version: registry/2.0\r\n{extra}"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    return head if method == "HEAD" else head + body


@contextlib.contextmanager
def open_fault_proxy(upstream_host: str) -> Iterator[RegistryFaultProxy]:
    """A :class:`RegistryFaultProxy` in front of ``upstream_host`` ("127.0.0.1:PORT"),
    listening on a free loopback port; stopped (thread joined, bounded) on exit."""
    proxy = RegistryFaultProxy(upstream_host, free_port())
    ready = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            trio.run(proxy._main, ready)
        except BaseException as exc:  # noqa: BLE001 - reported to the test below
            errors.append(exc)
            ready.set()

    thread = threading.Thread(target=run, name=f"fault-proxy-{proxy.port}", daemon=True)
    thread.start()
    assert ready.wait(THREAD_START_TIMEOUT_S), "fault proxy did not start"
    if errors:
        raise errors[0]
    try:
        yield proxy
    finally:
        if proxy._token is not None and proxy._stop is not None:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(proxy._stop.set, trio_token=proxy._token)
        thread.join(THREAD_STOP_TIMEOUT_S)
        assert not thread.is_alive(), "fault proxy thread did not stop"
    if errors:
        raise errors[0]
