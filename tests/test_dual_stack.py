"""``http.addr: ":5000"`` listens on IPv4 and IPv6 as registry:3's Go listener does (issue 15,
item 4; registry/http/listen.py). The real `registry serve` process on a free port."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest
from test_auth_process import run_registry

from registry.http.listen import socket_addr, split_addr

try:  # tests/ is a plain directory on sys.path, or a package
    from tests import e2e_support as e2e
except ImportError:
    import e2e_support as e2e  # type: ignore[no-redef]

REQUEST_TIMEOUT_S = 10.0


def host_has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.parametrize("host", ["", "0.0.0.0"])  # Go: both are wildcards, both dual-stack
def test_wildcard_addr_answers_on_ipv4_and_ipv6(tmp_path: Path, host: str) -> None:
    port = e2e.free_port()
    with run_registry(tmp_path, {"http": {"addr": f"{host}:{port}"}}, port=port) as reg:
        v4 = httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=REQUEST_TIMEOUT_S)
        assert v4.status_code == 200
        if not host_has_ipv6():
            pytest.skip("this host has no IPv6 (::1 cannot be bound): only IPv4 checked")
        v6 = httpx.get(f"http://[::1]:{port}/v2/", timeout=REQUEST_TIMEOUT_S)
        assert v6.status_code == 200
    log = reg.log()  # after the stop: the access lines follow the responses
    # An IPv4 client of the dual-stack socket is logged as IPv4, not ::ffff:127.0.0.1.
    assert 'http.request.remoteaddr="127.0.0.1:' in log
    assert 'http.request.remoteaddr="[::1]:' in log
    assert "::ffff:" not in log
    assert f"registry listening on http://[::]:{port}" in log


def test_a_specific_address_listens_there_only(tmp_path: Path) -> None:
    if not host_has_ipv6():
        pytest.skip("this host has no IPv6 (::1 cannot be bound)")
    port = e2e.free_port()
    with (
        run_registry(tmp_path, {"http": {"addr": f"127.0.0.1:{port}"}}, port=port),
        pytest.raises(httpx.ConnectError),
    ):
        httpx.get(f"http://[::1]:{port}/v2/", timeout=REQUEST_TIMEOUT_S)


@pytest.mark.parametrize(
    "family, address, expected",
    [
        (socket.AF_INET6, ("::ffff:10.1.2.3", 5000, 0, 0), ("10.1.2.3", 5000)),
        (socket.AF_INET6, ("::1", 5000, 0, 0), ("::1", 5000)),
        (socket.AF_INET6, ("::ffff:1:0:1", 80, 0, 0), ("::ffff:1:0:1", 80)),  # not IPv4-mapped
        (socket.AF_INET, ("127.0.0.1", 80), ("127.0.0.1", 80)),
        (socket.AF_UNIX, "/run/x.sock", None),
    ],
)
def test_socket_addr_unmaps_ipv4(family: int, address: object, expected: object) -> None:
    assert socket_addr(family, address) == expected


@pytest.mark.parametrize(
    "addr, expected",
    [(":5000", ("", 5000)), ("0.0.0.0:80", ("0.0.0.0", 80)), ("[::]:80", ("[::]", 80)),
     ("localhost:", ("localhost", 5000))],
)
def test_split_addr(addr: str, expected: tuple[str, int]) -> None:
    assert split_addr(addr) == expected


@pytest.mark.parametrize(("addr", "prefix", "shown"), [
    (":{port}", None, "http://localhost:{port}/ui/"),  # a wildcard: a URL a browser can open
    ("127.0.0.1:{port}", "/reg/", "http://127.0.0.1:{port}/reg/ui/"),
])
def test_start_up_prints_the_web_ui_url_and_it_opens(tmp_path: Path, addr: str,
                                                     prefix: str | None, shown: str) -> None:
    """issue 18: the README's first command prints a URL that opens the web UI."""
    port = e2e.free_port()
    http: dict[str, object] = {"addr": addr.format(port=port)}
    if prefix:
        http["prefix"] = prefix
    url = shown.format(port=port)
    any_answer = lambda r: r.status_code < 500  # below a prefix, /v2/ is 404
    with run_registry(tmp_path, {"http": http}, port=port, ready=any_answer) as reg:
        page = httpx.get(url.replace("localhost", "127.0.0.1"), timeout=REQUEST_TIMEOUT_S)
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert f"web UI: {url}" in reg.log()
