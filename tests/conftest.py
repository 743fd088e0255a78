"""Shared fixtures: the real app served by hypercorn on 127.0.0.1:0 over a real socket."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import httpx
import pytest
import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.trio import serve

from registry.drivers.filesystem import FilesystemDriver
from registry.http.app import AppOptions, RegistryApp
from registry.server import tune_hypercorn
from registry.storage import sha256state
from registry.storage.store import Storage

try:  # tests/ is a plain directory on sys.path, or a package
    from tests.e2e_support import in_ci
except ImportError:
    from e2e_support import in_ci  # type: ignore[no-redef]

tune_hypercorn()  # in-process servers run hypercorn exactly as `registry serve` does


@pytest.fixture
def resumable_sha256() -> None:
    """Tests of saved upload hash states need libcrypto's SHA256_* functions: without them
    skip locally, fail under CI=true (every Debian 12 OpenSSL 3 has them)."""
    if not sha256state.available():
        reason = "libcrypto lacks SHA256_Init/Update/Final"
        if in_ci():
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)


class Served:
    """A running app: its base URL, an HTTP client, its storage root and driver."""

    def __init__(self, url: str, client: httpx.AsyncClient, root: str, app: RegistryApp) -> None:
        self.url = url
        self.client = client
        self.root = root
        self.app = app


async def start_app(
    nursery: trio.Nursery, root: str, options: AppOptions | None = None, **app_kwargs: object
) -> tuple[str, RegistryApp]:
    app = RegistryApp(
        Storage(FilesystemDriver(root)),
        options or AppOptions(delete_enabled=True),
        **app_kwargs,  # type: ignore[arg-type]
    )
    return await serve_asgi(nursery, app), app


async def serve_asgi(nursery: trio.Nursery, app: Any, hc: HyperConfig | None = None) -> str:
    """Serve the ASGI ``app`` with hypercorn on 127.0.0.1:0 in ``nursery``; its base URL.
    ``hc``: the server's settings (e.g. registry.server.hypercorn_config), else hypercorn's."""
    if hc is None:
        hc = HyperConfig()
        hc.accesslog = None
    hc.bind = ["127.0.0.1:0"]
    hc.graceful_timeout = 0.5
    urls = await nursery.start(partial(serve, app, hc))
    return str(urls[0])


def recv_until(sock: socket.socket, marker: bytes) -> bytes:
    """Read ``sock`` until what was read contains ``marker``, or to EOF; all of it."""
    got = b""
    while marker not in got:
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


@pytest.fixture
async def served(nursery: trio.Nursery, tmp_path) -> AsyncIterator[Served]:  # type: ignore[no-untyped-def]
    root = str(tmp_path / "storage")
    url, app = await start_app(nursery, root)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        yield Served(url, client, root, app)


@pytest.fixture
async def client(served: Served) -> httpx.AsyncClient:
    return served.client
