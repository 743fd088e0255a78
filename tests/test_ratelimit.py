"""Rate limiting per client address: TOOMANYREQUESTS + Retry-After, off by default
(issue 6, item 7; SPEC.md General 2)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from conftest import serve_asgi
from test_auth_htpasswd import basic, write_htpasswd

from registry.config import ConfigError, load_config
from registry.http.ratelimit import RateLimitConfig, RateLimiter, build_ratelimiter, parse_ratelimit
from registry.server import build_app


def test_off_by_default() -> None:
    config, _ = load_config(None, {})
    assert build_ratelimiter(config.raw) is None
    config, _ = load_config(None, {"REGISTRY_POLICY_RATELIMIT_RATE": "5"})
    assert build_ratelimiter(config.raw) is None  # not enabled


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        (None, None),
        ({"enabled": False, "rate": 5}, None),
        ({"enabled": True}, RateLimitConfig(20.0, 200)),
        ({"enabled": True, "rate": 0.5, "burst": 3}, RateLimitConfig(0.5, 3)),
        ({"enabled": True, "rate": 2, "trustedproxies": "10.0.0.0/8"},
         RateLimitConfig(2.0, 20, (ipaddress.ip_network("10.0.0.0/8"),))),
    ],
)
def test_parse(section: Any, expected: RateLimitConfig | None) -> None:
    assert parse_ratelimit(section) == expected


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"enabled": "yes"}, "enabled"),
        ({"enabled": True, "rate": 0}, "rate"),
        ({"enabled": True, "rate": "fast"}, "rate"),
        ({"enabled": True, "burst": 0}, "burst"),
        ({"enabled": True, "trustedproxies": ["traefik"]}, "trustedproxies"),
    ],
)
def test_bad_config_names_the_key(section: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"^policy\.ratelimit\.{key}: "):
        parse_ratelimit(section)


def test_token_bucket() -> None:
    limiter = RateLimiter(RateLimitConfig(rate=2.0, burst=3))
    assert [limiter.take("a", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a", 0.0) == pytest.approx(0.5)  # empty: one token back in 0.5 s
    assert limiter.take("b", 0.0) == 0.0  # buckets are per client
    assert limiter.take("a", 0.5) == 0.0
    assert limiter.take("a", 0.5) > 0
    assert [limiter.take("a", 100.0) for _ in range(3)] == [0.0] * 3  # refills up to burst only
    assert limiter.take("a", 100.0) > 0


@pytest.mark.parametrize(
    ("peer", "xff", "key"),
    [
        ("203.0.113.9", None, "203.0.113.9"),
        ("203.0.113.9", "1.2.3.4", "203.0.113.9"),  # untrusted peer: its XFF is ignored
        ("10.0.0.2", None, "10.0.0.2"),
        ("10.0.0.2", "198.51.100.7", "198.51.100.7"),
        ("10.0.0.2", "6.6.6.6, 198.51.100.7", "198.51.100.7"),  # left part is client-chosen
        ("10.0.0.2", "198.51.100.7, 10.0.0.9", "198.51.100.7"),  # skip trusted hops
        ("10.0.0.2", "10.0.0.3, 10.0.0.9", "10.0.0.2"),
        ("10.0.0.2", "2001:db8::1", "2001:db8::1"),
        ("10.0.0.2", " , ", "10.0.0.2"),
    ],
)
def test_client_key_behind_trusted_proxies(peer: str, xff: str | None, key: str) -> None:
    limiter = RateLimiter(RateLimitConfig(1, 1, (ipaddress.ip_network("10.0.0.0/8"),)))
    assert limiter.client_key(peer, xff) == key


async def serve_config(nursery: trio.Nursery, env: dict[str, str]) -> str:
    config, _ = load_config(None, {"REGISTRY_STORAGE": "inmemory", **env})
    app = build_app(config)
    return await serve_asgi(nursery, app)


async def test_429_with_retry_after_then_allowed_again(nursery: trio.Nursery) -> None:
    url = await serve_config(nursery, {
        "REGISTRY_POLICY_RATELIMIT_ENABLED": "true",
        "REGISTRY_POLICY_RATELIMIT_RATE": "2",
        "REGISTRY_POLICY_RATELIMIT_BURST": "3",
    })
    async with httpx.AsyncClient(base_url=url) as c:
        for _ in range(3):
            assert (await c.get("/v2/")).status_code == 200
        r = await c.get("/v2/")
        assert r.status_code == 429
        assert r.headers["Retry-After"] == "1"
        assert r.json()["errors"][0]["code"] == "TOOMANYREQUESTS"
        assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"
        head = await c.head("/v2/x/manifests/latest")
        assert head.status_code == 429 and head.content == b""
        await trio.sleep(0.6)
        assert (await c.get("/v2/")).status_code == 200


async def test_password_guessing_is_limited_before_bcrypt(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    path = tmp_path / "htpasswd"
    write_htpasswd(path, {"alice": "wonderland"})
    url = await serve_config(nursery, {
        "REGISTRY_AUTH": "htpasswd",
        "REGISTRY_AUTH_HTPASSWD_PATH": str(path),
        "REGISTRY_POLICY_RATELIMIT_ENABLED": "true",
        "REGISTRY_POLICY_RATELIMIT_RATE": "1",
        "REGISTRY_POLICY_RATELIMIT_BURST": "5",
    })
    statuses = []
    async with httpx.AsyncClient(base_url=url) as c:
        for i in range(8):
            statuses.append((await c.get("/v2/", headers=basic("alice", f"guess{i}"))).status_code)
    assert statuses == [401] * 5 + [429] * 3
