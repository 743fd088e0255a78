"""Redis in the app `registry serve` builds (issue 17 items 1, 5, 7): the config wires the
Redis cache, the storage calls the cache saves are readable on /metrics (what the bench
counts per request), and a Redis outage is listed by /debug/health without gating the API
(registry:3 has no Redis health check at all)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import s3_support
import trio
from conftest import serve_asgi
from oci import digest, push_blob, push_image
from redis_support import RedisServer, running_redis

from registry.config import Config, load_config
from registry.drivers.redis import RedisClient, RedisOptions
from registry.http.app import AppOptions, RegistryApp
from registry.ops.debug import DebugApp
from registry.ops.health import Health
from registry.ops.redis import RedisCheck
from registry.server import build_app, hypercorn_config
from registry.storage.descriptor_cache import RedisDescriptors
from registry.storage.store import Storage

TEST_TIMEOUT_S = 60  # seconds; each test body is bounded by this
STORAGE_CALLS = re.compile(rb'^registry_storage_action_seconds_count\{[^}]*\} ([0-9.e+]+)$',
                           re.MULTILINE)


@pytest.fixture
def redis_server(tmp_path) -> Iterator[RedisServer]:
    with running_redis(tmp_path) as server:
        yield server


def registry_config(tmp_path: Path, **env: str) -> Config:
    base = {
        "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": str(tmp_path / "root"),
        "REGISTRY_LOG_ACCESSLOG_DISABLED": "true",
        "REGISTRY_HTTP_DEBUG_PROMETHEUS_ENABLED": "true",
        "REGISTRY_STORAGE_MAINTENANCE_UPLOADPURGING_ENABLED": "false",
    }
    config, warnings = load_config(None, base | env)
    assert not warnings, warnings
    return config


def storage_calls(app) -> int:
    """Every storage driver call so far, as /metrics shows it (the bench's counter)."""
    body, _ = app.ops.metrics.exposition()
    return int(sum(float(n) for n in STORAGE_CALLS.findall(body)))


async def calls_per_request(nursery, config: Config) -> dict[str, float]:
    app = build_app(config)
    url = await serve_asgi(nursery, app, hypercorn_config(config))
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        m, _ = await push_image(http, "repo", "v1", layers=(b"a layer",))
        layer = await push_blob(http, "repo", b"a layer")
        out = {}
        for what, method, path in (
            ("blob HEAD", "HEAD", f"/v2/repo/blobs/{layer}"),
            ("blob GET", "GET", f"/v2/repo/blobs/{layer}"),
            ("manifest GET", "GET", f"/v2/repo/manifests/{m}"),
            ("manifest GET by tag", "GET", "/v2/repo/manifests/v1"),
        ):
            assert (await http.request(method, path)).status_code == 200  # warm the caches
            before = storage_calls(app)
            for _ in range(10):
                assert (await http.request(method, path)).status_code == 200
            out[what] = (storage_calls(app) - before) / 10
    return out


async def test_redis_cache_saves_storage_calls_counted_on_metrics(nursery, tmp_path,
                                                                   redis_server):
    with trio.fail_after(TEST_TIMEOUT_S):
        without = await calls_per_request(nursery, registry_config(tmp_path / "a"))
        config = registry_config(
            tmp_path / "b", REGISTRY_REDIS_ADDRS=f"[{redis_server.addr}]",
            REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR="redis")
        with_redis = await calls_per_request(nursery, config)
    print("storage calls per request without / with Redis:", without, with_redis)
    assert without["blob HEAD"] >= 2  # the layer link (and revision link) and the stat
    assert with_redis["blob HEAD"] == 0
    assert with_redis["blob GET"] == without["blob GET"] - without["blob HEAD"] + 0
    # The revision link of a manifest whose bytes this process holds: from Redis too.
    assert with_redis["manifest GET"] == 0 < without["manifest GET"]
    assert with_redis["manifest GET by tag"] == without["manifest GET by tag"] - 1
    assert redis_server.cli("EXISTS", "repository::repo::blobs") == 1


async def test_build_app_wires_redis_health_and_locks(tmp_path, redis_server):
    config = registry_config(tmp_path, REGISTRY_REDIS_OPTIONS_ADDRS=f"[{redis_server.addr}]",
                             REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR="redis")
    app = build_app(config)
    assert isinstance(app.storage.blobs.descriptors, RedisDescriptors)
    assert any(isinstance(c, RedisCheck) for c in app.ops.health.checks)
    assert app.gc.redis is app.storage.blobs.descriptors.client
    # Redis without the cache still gives the locks and the health check, as v3 connects it.
    plain = build_app(registry_config(tmp_path, REGISTRY_REDIS_ADDRS=f"[{redis_server.addr}]"))
    assert plain.storage.blobs.descriptors is None and plain.gc.redis is not None


async def test_debug_health_lists_redis_down_without_gating(nursery, redis_server):
    client = RedisClient(RedisOptions("127.0.0.1", redis_server.port, down_backoff=0))
    check = RedisCheck(client, interval=0.1, timeout=1.0)
    health = Health((check,))
    try:
        with trio.fail_after(TEST_TIMEOUT_S):
            nursery.start_soon(health.serve)
            url = await serve_asgi(nursery, DebugApp(health, None, "/metrics"))
            async with httpx.AsyncClient(base_url=url, timeout=10) as http:
                r = await http.get("/debug/health")
                assert (r.status_code, r.json()) == (200, {})
                redis_server.stop()
                while check.healthy:
                    await trio.sleep(0.05)
                r = await http.get("/debug/health")
                assert r.status_code == 200  # listed, not fatal: storage still serves
                assert "redis" in r.json() and health.healthy
                redis_server.start()
                while not check.healthy:
                    await trio.sleep(0.05)
                r = await http.get("/debug/health")
                assert (r.status_code, r.json()) == (200, {})
    finally:
        await client.aclose()


# --- on S3: requests per request, counted at the wire ----------------------------------------


async def s3_requests_per_request(nursery, redis: RedisClient | None) -> dict[str, float]:
    """S3 requests (seen by a proxy in front of moto) per request, after a warm-up one."""
    async with s3_support.open_proxied_driver() as (driver, proxy):
        descriptors = RedisDescriptors(redis) if redis is not None else None
        app = RegistryApp(Storage(driver, descriptors=descriptors), AppOptions())
        url = await serve_asgi(nursery, app)
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            m, _ = await push_image(http, "repo", "v1", layers=(b"a layer",))
            layer = digest(b"a layer")
            out = {}
            for what, method, path in (
                ("blob HEAD", "HEAD", f"/v2/repo/blobs/{layer}"),
                ("manifest GET", "GET", f"/v2/repo/manifests/{m}"),
                ("manifest GET by tag", "GET", "/v2/repo/manifests/v1"),
            ):
                for _ in range(2):  # warm the caches
                    assert (await http.request(method, path)).status_code == 200
                before = len(proxy.seen)
                for _ in range(5):
                    assert (await http.request(method, path)).status_code == 200
                out[what] = (len(proxy.seen) - before) / 5
    return out


@pytest.mark.s3
async def test_s3_requests_saved_by_the_redis_cache(nursery, redis_server):
    client = RedisClient(RedisOptions("127.0.0.1", redis_server.port))
    try:
        with trio.fail_after(TEST_TIMEOUT_S):
            without = await s3_requests_per_request(nursery, None)
            with_redis = await s3_requests_per_request(nursery, client)
    finally:
        await client.aclose()
    print("S3 requests per request without / with Redis:", without, with_redis)
    assert without["blob HEAD"] >= 2 and with_redis["blob HEAD"] == 0
    assert without["manifest GET"] >= 1 and with_redis["manifest GET"] == 0
    assert with_redis["manifest GET by tag"] == without["manifest GET by tag"] - 1
