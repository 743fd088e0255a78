"""Test support for the pull-through cache: an upstream (our real app) behind an ASGI
wrapper that can count requests, demand basic or bearer auth, and misbehave; and a proxy
app in front of it. Everything runs in the test's nursery on 127.0.0.1."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from registry.config.model import DEFAULT_PROXY_TTL, RemoteConfig
from registry.drivers.base import Driver
from registry.drivers.filesystem import FilesystemDriver
from registry.http.app import AppOptions, RegistryApp
from registry.proxy import ProxyCache
from registry.storage.store import Storage

try:
    from tests.conftest import serve_asgi
except ImportError:
    from conftest import serve_asgi  # type: ignore[no-redef]

Scope = dict[str, Any]


async def respond(send: Any, status: int, body: bytes = b"",
                  headers: list[tuple[bytes, bytes]] | None = None) -> None:
    hs = [(b"content-length", str(len(body)).encode()), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": hs})
    await send({"type": "http.response.body", "body": body})


@dataclass
class Upstream:
    """An ASGI wrapper around a real registry app (see the module doc).

    ``auth``: None, "basic" (user/password) or "bearer" (a token from ``/token``, which
    itself wants basic credentials when ``token_needs_login``). ``fault(scope)`` may return
    an ASGI callable answering that request instead of the app."""

    app: Any
    auth: str | None = None
    user: str = "puller"
    password: str = "s3cret"
    token_needs_login: bool = True
    token_expires_in: int = 60
    requests: list[tuple[str, str]] = field(default_factory=list)
    token_requests: list[dict[str, str]] = field(default_factory=list)
    tokens_issued: int = 0
    fault: Callable[[Scope], Any] | None = None
    url: str = ""

    def count(self, method: str, path_part: str) -> int:
        return sum(1 for m, p in self.requests if m == method and path_part in p)

    def _basic_ok(self, headers: dict[bytes, bytes]) -> bool:
        want = base64.b64encode(f"{self.user}:{self.password}".encode())
        return headers.get(b"authorization", b"") == b"Basic " + want

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        path = scope["path"]
        if path == "/token":
            query = dict(p.split("=", 1) for p in scope["query_string"].decode().split("&") if p)
            self.token_requests.append(query)
            if self.token_needs_login and not self._basic_ok(headers):
                return await respond(send, 401)
            self.tokens_issued += 1
            doc = {"token": f"tok{self.tokens_issued}", "expires_in": self.token_expires_in}
            return await respond(send, 200, json.dumps(doc).encode())
        self.requests.append((scope["method"], path))
        if self.auth == "basic" and not self._basic_ok(headers):
            return await respond(send, 401, b"{}", [(b"www-authenticate", b'Basic realm="up"')])
        if self.auth == "bearer":
            good = headers.get(b"authorization", b"") == f"Bearer tok{self.tokens_issued}".encode()
            if not self.tokens_issued or not good:
                challenge = (f'Bearer realm="{self.url}/token",service="up",'
                             f'scope="repository:x:pull"').encode()
                return await respond(send, 401, b"{}", [(b"www-authenticate", challenge)])
        if self.fault is not None:
            answer = self.fault(scope)
            if answer is not None:
                return await answer(scope, receive, send)
        await self.app(scope, receive, send)


async def start_upstream(nursery: trio.Nursery, root: str, **kw: Any) -> tuple[Upstream, trio.CancelScope]:
    """Our app on ``root`` behind an :class:`Upstream`, served until the scope is cancelled."""
    app = RegistryApp(Storage(FilesystemDriver(root)), AppOptions(delete_enabled=True))
    up = Upstream(app, **kw)
    cs = trio.CancelScope()

    async def run(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        with cs:
            async with trio.open_nursery() as inner:
                task_status.started(await serve_asgi(inner, up))

    up.url = await nursery.start(run)
    return up, cs


def remote(url: str, prefix: str = "", ttl: float | None = DEFAULT_PROXY_TTL,
           username: str | None = None, password: str | None = None) -> RemoteConfig:
    return RemoteConfig(prefix, url, username, password, ttl, "proxies")


async def start_proxy(nursery: trio.Nursery, root: str | None, remotes: list[RemoteConfig], *,
                      driver: Driver | None = None, **kw: Any) -> tuple[str, RegistryApp, ProxyCache]:
    """A proxy app (our app with a ProxyCache) on ``root`` (or ``driver``); its URL."""
    storage = Storage(driver if driver is not None else FilesystemDriver(root or ""))
    cache = ProxyCache(storage, remotes, **kw)
    app = RegistryApp(storage, AppOptions(delete_enabled=True), proxy=cache)
    return await serve_asgi(nursery, app), app, cache
