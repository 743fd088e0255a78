"""docker/wget.py: the image's wget for health checks written for registry:3's image
(`wget -q --spider http://localhost:5000/`), run against a real registry over a socket."""

from __future__ import annotations

import importlib.util
import io
import socket
from pathlib import Path
from types import ModuleType

import pytest
import trio
from test_adversarial_conn import registry_config, serve_registry

WGET_FILE = Path(__file__).resolve().parent.parent / "docker" / "wget.py"


def load_wget() -> ModuleType:
    spec = importlib.util.spec_from_file_location("image_wget", WGET_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
async def port(nursery: trio.Nursery, tmp_path: Path) -> int:
    _, p = await serve_registry(nursery, registry_config(tmp_path))
    return p


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_exit_status_as_busybox_for_answers_errors_and_no_server(port: int) -> None:
    wget = load_wget()
    base = f"http://127.0.0.1:{port}"
    cases = [
        (["-q", "--spider", f"{base}/v2/"], 0),
        (["--spider", "-T", "3", f"{base}/v2/"], 0),
        (["-q", "--spider", f"{base}/v2/nope/manifests/x"], 1),
        (["-q", "--spider", "--tries=2", "--timeout=2", f"http://127.0.0.1:{closed_port()}/"], 1),
        (["-q", "--spider", "--mirror", f"{base}/v2/"], 2),
        (["-q", "--spider"], 2),
        (["-q", "-T", "soon", f"{base}/v2/"], 2),
        (["-q", "ftp://127.0.0.1/"], 2),
    ]
    for argv, status in cases:
        got = await trio.to_thread.run_sync(wget.main, argv)
        assert got == status, (argv, got)


async def test_output_goes_to_stdout_or_a_file(port: int, tmp_path: Path) -> None:
    wget = load_wget()
    url = f"http://127.0.0.1:{port}/v2/"
    out = io.BytesIO()
    opts, parsed = wget.parse(["-q", "-O", "-", url])
    assert parsed == url
    assert await trio.to_thread.run_sync(wget.fetch, opts, url, out) == 0
    assert out.getvalue() == b"{}"
    target = tmp_path / "body"
    assert await trio.to_thread.run_sync(wget.main, ["-q", f"-O{target}", url]) == 0
    assert target.read_bytes() == b"{}"
    spider = io.BytesIO()
    opts, _ = wget.parse(["--spider", url])
    assert await trio.to_thread.run_sync(wget.fetch, opts, url, spider) == 0
    assert spider.getvalue() == b""
