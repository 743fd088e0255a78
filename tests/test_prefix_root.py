"""``http.prefix`` (the API under a path, as registry:3's RouterWithPrefix) and ``GET /``
(registry:3's ``alive("/")``): issue 15, items 1 and 4.

The real app with the listener settings `registry serve` builds (server.hypercorn_config:
the prefix travels as the ASGI root_path) on 127.0.0.1:0.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import yaml
from conftest import serve_asgi
from oci import OCI_MANIFEST, digest, error_codes, push_image
from test_auth_process import htpasswd_config, htpasswd_file
from test_tls import make_certs, tls_config

from registry.config import Config, ConfigError, load_config
from registry.http.urls import route_root
from registry.notifications import build_notifier
from registry.ops.exchange import EventKind, Exchange
from registry.server import build_app, hypercorn_config

BOUND = 20.0  # seconds: any one test's requests, all on loopback
PREFIX = "/registry"


def registry_config(tmp_path: Path, extra: dict[str, Any] | None = None) -> Config:
    data: dict[str, Any] = {
        "version": "0.1",
        "log": {"accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(tmp_path / "root")},
                    "delete": {"enabled": True}},
        "http": {"prefix": PREFIX + "/"},  # as v3's documentation writes it
    }
    for section, values in (extra or {}).items():
        data[section] = {**data.get(section, {}), **values}
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(data))
    config, warnings = load_config(str(path), {})
    assert not warnings, warnings
    return config


async def serve(nursery: trio.Nursery, config: Config) -> str:
    return await serve_asgi(nursery, build_app(config), hypercorn_config(config))


async def test_push_and_pull_under_the_prefix(tmp_path: Path, nursery: trio.Nursery) -> None:
    with trio.fail_after(BOUND):
        url = await serve(nursery, registry_config(tmp_path))
        async with httpx.AsyncClient(base_url=url + PREFIX, timeout=BOUND) as c:
            assert (await c.get("/v2/")).json() == {}
            manifest_digest, body = await push_image(c, "pre/app", "v1")
            got = await c.get("/v2/pre/app/manifests/v1", headers={"Accept": OCI_MANIFEST})
            assert got.status_code == 200 and got.content == body

            # A chunked push follows the Location headers: each must stay under the prefix.
            start = await c.post("/v2/pre/app/blobs/uploads/")
            assert start.status_code == 202
            assert start.headers["location"].startswith(f"{url}{PREFIX}/v2/pre/app/blobs/uploads/")
            data = b"chunk under a prefix"
            patch = await c.patch(start.headers["location"], content=data)
            assert patch.status_code == 202, patch.text
            assert patch.headers["location"].startswith(f"{url}{PREFIX}/v2/")
            done = await c.put(patch.headers["location"], params={"digest": digest(data)})
            assert done.status_code == 201, done.text
            assert done.headers["location"] == f"{url}{PREFIX}/v2/pre/app/blobs/{digest(data)}"
            assert (await c.get(done.headers["location"])).content == data

            put = await c.put(
                "/v2/pre/app/manifests/v2", content=body,
                headers={"Content-Type": OCI_MANIFEST},
            )
            assert put.headers["location"] == (
                f"{url}{PREFIX}/v2/pre/app/manifests/{manifest_digest}"
            )
            tags = await c.get("/v2/pre/app/tags/list", params={"n": "1"})
            assert tags.json()["tags"] == ["v1"]
            assert tags.headers["link"] == f'<{PREFIX}/v2/pre/app/tags/list?last=v1&n=1>; rel="next"'


@pytest.mark.parametrize("path", ["/v2/", "/v2/_catalog", PREFIX, PREFIX + "x/v2/", "/x" + PREFIX + "/v2/"])
async def test_paths_outside_the_prefix_are_404(
    tmp_path: Path, nursery: trio.Nursery, path: str
) -> None:
    """registry:3 answers them 404 too (its text "404 page not found"; ours the JSON error)."""
    with trio.fail_after(BOUND):
        url = await serve(nursery, registry_config(tmp_path))
        async with httpx.AsyncClient(timeout=BOUND) as c:
            r = await c.get(url + path)
    assert r.status_code == 404
    assert error_codes(r) == ["UNSUPPORTED"]


async def test_prefix_over_http2(tmp_path: Path, nursery: trio.Nursery) -> None:
    """HTTP/2 connections are hypercorn's: the prefix reaches the app the same way."""
    ca, cert, key, _ = make_certs(tmp_path)
    config = registry_config(tmp_path, tls_config(cert, key))
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    with trio.fail_after(BOUND):
        url = await serve(nursery, config)
        async with httpx.AsyncClient(verify=ctx, http1=False, http2=True, timeout=BOUND) as c:
            inside = await c.post(f"{url}{PREFIX}/v2/h2/app/blobs/uploads/")
            outside = await c.get(f"{url}/v2/")
    assert inside.http_version == "HTTP/2"
    assert inside.status_code == 202
    assert inside.headers["location"].startswith(f"{url}{PREFIX}/v2/h2/app/blobs/uploads/")
    assert outside.status_code == 404


@pytest.mark.parametrize(
    "http, location",
    [
        ({"relativeurls": True}, PREFIX + "/v2/loc/app/blobs/uploads/"),
        ({"host": "https://reg.example"}, "https://reg.example" + PREFIX + "/v2/loc/app/blobs/uploads/"),
        # http.host with a path of its own: that path stands for the prefix (as v3).
        ({"host": "https://reg.example/custom/"}, "https://reg.example/custom/v2/loc/app/blobs/uploads/"),
        ({"prefix": ""}, "{url}/v2/loc/app/blobs/uploads/"),
    ],
)
async def test_location_carries_the_prefix(
    tmp_path: Path, nursery: trio.Nursery, http: dict[str, Any], location: str
) -> None:
    config = registry_config(tmp_path, {"http": {"prefix": PREFIX, **http}})
    prefix = config.http.prefix
    with trio.fail_after(BOUND):
        url = await serve(nursery, config)
        async with httpx.AsyncClient(timeout=BOUND) as c:
            r = await c.post(f"{url}{prefix}/v2/loc/app/blobs/uploads/")
    assert r.status_code == 202
    assert r.headers["location"].startswith(location.format(url=url))


@pytest.mark.parametrize(
    "host, prefix, root",
    [
        (None, "", ""),
        (None, "/a/b", "/a/b"),
        ("https://h", "/a", "/a"),
        ("https://h/", "/a", "/a"),
        ("https://h/x", "/a", ""),
    ],
)
def test_route_root(host: str | None, prefix: str, root: str) -> None:
    assert route_root(host, prefix) == root


@pytest.mark.parametrize(
    "prefix, expected",
    [("/registry/", "/registry"), ("registry", "/registry"), ("/a/b.c/", "/a/b.c"), ("/", "")],
)
def test_prefix_is_normalised(tmp_path: Path, prefix: str, expected: str) -> None:
    assert registry_config(tmp_path, {"http": {"prefix": prefix}}).http.prefix == expected


@pytest.mark.parametrize("prefix", ["/a b/", "/%2e%2e/", "/a/../b", "/a//b", "/a?x"])
def test_prefix_that_is_not_a_plain_path_is_refused(tmp_path: Path, prefix: str) -> None:
    with pytest.raises(ConfigError, match=r"^http\.prefix: .* is not a plain URL path"):
        registry_config(tmp_path, {"http": {"prefix": prefix}})


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST"])
async def test_root_answers_200_empty_even_with_auth_on(
    tmp_path: Path, nursery: trio.Nursery, method: str
) -> None:
    """v3's alive("/"), checked with the v3 binary and curl: 200, no body, Cache-Control:
    no-cache, for any method, before authentication, whatever the prefix."""
    users = htpasswd_file(tmp_path / "htpasswd", {"alice": "wonderland"})
    config = registry_config(tmp_path, htpasswd_config(users))
    with trio.fail_after(BOUND):
        url = await serve(nursery, config)
        async with httpx.AsyncClient(timeout=BOUND) as c:
            root = await c.request(method, url + "/")
            api = await c.get(f"{url}{PREFIX}/v2/")
            under_prefix = await c.get(f"{url}{PREFIX}/")
    assert (root.status_code, root.content) == (200, b"")
    assert root.headers["cache-control"] == "no-cache"
    assert root.headers["content-length"] == "0" or method == "HEAD"
    assert api.status_code == 401  # auth is on
    assert under_prefix.status_code == 404  # not the root: v3 answers 404 too


async def test_root_answers_503_while_a_health_check_fails(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """v3 wraps alive("/") in health.Handler: the image's health check sees the failure."""
    down = tmp_path / "down"
    down.write_text("maintenance")
    config = registry_config(tmp_path, {"health": {"file": [{"file": str(down), "interval": "1s"}]}})
    with trio.fail_after(BOUND):
        url = await serve(nursery, config)
        async with httpx.AsyncClient(timeout=BOUND) as c:
            r = await c.get(url + "/")
    assert r.status_code == 503
    assert error_codes(r) == ["UNAVAILABLE"]


def test_event_urls_carry_the_prefix(tmp_path: Path) -> None:
    """Webhook targets name the URL a client would use, as Location does."""
    endpoint = {"name": "e", "url": "http://receiver.invalid/events"}
    config = registry_config(tmp_path, {"notifications": {"endpoints": [endpoint]}})
    notifier = build_notifier(config)
    assert notifier is not None
    d = "sha256:" + "a" * 64
    notifier.observe(Exchange(
        method="DELETE", label="manifest", event=EventKind.MANIFEST,
        params={"name": "r", "reference": d}, path=f"{PREFIX}/v2/r/manifests/{d}",
        client="127.0.0.1", request_headers={"host": "reg:5000"}, status=202,
    ))
    event = notifier.sinks[0].receive.receive_nowait()
    assert event["target"]["url"] == f"http://reg:5000{PREFIX}/v2/r/manifests/{d}"
