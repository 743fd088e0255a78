"""storage.cache.blobdescriptor: redis (issue 17 item 1) against a real redis-server: the
keys are registry:3's (so a v3 replica and ours share one Redis), a cached blob HEAD costs
no storage call, deletes and GC invalidate, and a Redis outage mid-load only makes requests
go to storage (one log line down, one back)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass

import e2e_support as e2e
import httpx
import pytest
import trio
from conftest import serve_asgi
from docker_image_support import REGISTRY_3
from oci import digest, error_codes, push_blob, push_image
from redis_support import RedisServer, running_redis

from registry.drivers.base import FileInfo
from registry.drivers.filesystem import FilesystemDriver
from registry.drivers.redis import RedisClient, RedisOptions
from registry.http.app import AppOptions, RegistryApp
from registry.storage.descriptor_cache import RedisDescriptors
from registry.storage.gc_service import OnlineGC
from registry.storage.store import Storage

TEST_TIMEOUT_S = 60  # seconds; each test body is bounded by this


@pytest.fixture
def redis_server(tmp_path) -> Iterator[RedisServer]:
    with running_redis(tmp_path) as server:
        yield server


class CountingDriver(FilesystemDriver):
    """The filesystem driver counting reads (stat and get_content): what the cache saves."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.reads = 0

    async def stat(self, path: str) -> FileInfo:
        self.reads += 1
        return await super().stat(path)

    async def get_content(self, path: str) -> bytes:
        self.reads += 1
        return await super().get_content(path)


@dataclass
class Setup:
    http: httpx.AsyncClient
    driver: CountingDriver
    redis: RedisClient
    storage: Storage


@asynccontextmanager
async def serving(nursery, tmp_path, server: RedisServer, **redis_kw) -> AsyncIterator[Setup]:
    """Our app on a counting filesystem driver with the Redis descriptor cache."""
    redis = RedisClient(RedisOptions("127.0.0.1", server.port, **redis_kw))
    driver = CountingDriver(str(tmp_path / "storage"))
    storage = Storage(driver, descriptors=RedisDescriptors(redis))
    url = await serve_asgi(nursery, RegistryApp(storage, AppOptions(delete_enabled=True)))
    try:
        with trio.fail_after(TEST_TIMEOUT_S):
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                yield Setup(http, driver, redis, storage)
    finally:
        await redis.aclose()


def hash_of(server: RedisServer, key: str) -> dict[bytes, bytes]:
    flat = server.cli("HGETALL", key)
    assert isinstance(flat, list)
    return dict(zip(flat[::2], flat[1::2], strict=True))


async def test_keys_and_fields_are_registry3s(nursery, tmp_path, redis_server):
    async with serving(nursery, tmp_path, redis_server) as s:
        d = await push_blob(s.http, "team/app", b"layer bytes")
        assert (await s.http.head(f"/v2/team/app/blobs/{d}")).status_code == 200
    # registry/storage/cache/redis/redis.go: the global hash, the repository set, the
    # per-repository media type hash -- and nothing else.
    assert sorted(redis_server.cli("KEYS", "*")) == sorted([
        f"blobs::{d}".encode(), b"repository::team/app::blobs",
        f"repository::team/app::blobs::{d}".encode(),
    ])
    assert hash_of(redis_server, f"blobs::{d}") == {
        b"digest": d.encode(), b"size": b"11", b"mediatype": b"application/octet-stream"}
    assert redis_server.cli("SMEMBERS", "repository::team/app::blobs") == [d.encode()]
    assert hash_of(redis_server, f"repository::team/app::blobs::{d}") == {
        b"mediatype": b"application/octet-stream"}


@pytest.mark.parametrize("repeat", [3])
async def test_a_cached_blob_head_costs_no_storage_call(nursery, tmp_path, redis_server, repeat):
    async with serving(nursery, tmp_path, redis_server) as s:
        d = await push_blob(s.http, "repo", b"some layer")
        s.driver.reads = 0
        assert (await s.http.head(f"/v2/repo/blobs/{d}")).status_code == 200
        first = s.driver.reads  # the miss: the link(s) and the blob's stat
        for _ in range(repeat):
            r = await s.http.head(f"/v2/repo/blobs/{d}")
            assert r.status_code == 200 and r.headers["content-length"] == "10"
        assert first >= 2 and s.driver.reads == first
        # Another repository's membership is its own: a HEAD there checks storage.
        r = await s.http.head(f"/v2/other/blobs/{d}")
        assert r.status_code == 404 and s.driver.reads > first


async def test_entries_written_by_registry3_are_hits(nursery, tmp_path, redis_server):
    # What a v3 replica's SetDescriptor leaves (redis.go), for a blob we have in storage.
    async with serving(nursery, tmp_path, redis_server) as s:
        d = await push_blob(s.http, "repo", b"pushed through a v3 replica")
        redis_server.cli("SADD", "repository::repo::blobs", d)
        redis_server.cli("HSET", f"blobs::{d}", "digest", d, "size", "27")
        redis_server.cli("HSETNX", f"blobs::{d}", "mediatype", "application/octet-stream")
        redis_server.cli("HSET", f"repository::repo::blobs::{d}", "mediatype",
                         "application/octet-stream")
        s.driver.reads = 0
        r = await s.http.head(f"/v2/repo/blobs/{d}")
        assert r.status_code == 200 and r.headers["content-length"] == "27"
        assert s.driver.reads == 0
        # registry:3's blob delete clears the global hash and keeps the membership: a miss.
        redis_server.cli("HDEL", f"blobs::{d}", "digest", "size", "mediatype")
        assert (await s.http.head(f"/v2/repo/blobs/{d}")).status_code == 200
        assert s.driver.reads > 0


async def test_blob_and_manifest_deletes_leave_the_repository_set(nursery, tmp_path, redis_server):
    async with serving(nursery, tmp_path, redis_server) as s:
        d = await push_blob(s.http, "repo", b"to be unlinked")
        m, _ = await push_image(s.http, "repo", "v1", layers=(b"kept layer",))
        for x in (d, m):
            assert (await s.http.head(f"/v2/repo/blobs/{x}")).status_code == 200
        for _ in range(2):  # the second GET answers the revision check from Redis
            assert (await s.http.get(f"/v2/repo/manifests/{m}")).status_code == 200
        assert redis_server.cli("SISMEMBER", "repository::repo::blobs", d) == 1
        assert redis_server.cli("SISMEMBER", "repository::repo::blobs", m) == 1
        assert (await s.http.delete(f"/v2/repo/blobs/{d}")).status_code == 202
        assert (await s.http.delete(f"/v2/repo/manifests/{m}")).status_code == 202
        for x in (d, m):
            assert redis_server.cli("SISMEMBER", "repository::repo::blobs", x) == 0
            assert redis_server.cli("EXISTS", f"repository::repo::blobs::{x}") == 0
            r = await s.http.get(f"/v2/repo/blobs/{x}")
            assert r.status_code == 404 and error_codes(r) == ["BLOB_UNKNOWN"]
        r = await s.http.get(f"/v2/repo/manifests/{m}")  # its bytes are still held here
        assert r.status_code == 404 and error_codes(r) == ["MANIFEST_UNKNOWN"]


async def test_online_gc_forgets_what_it_deleted(nursery, tmp_path, redis_server):
    async with serving(nursery, tmp_path, redis_server) as s:
        kept, _ = await push_image(s.http, "repo", "v1", layers=(b"referenced",))
        orphan = await push_blob(s.http, "repo", b"referenced by nothing")
        assert (await s.http.head(f"/v2/repo/blobs/{orphan}")).status_code == 200
        assert redis_server.cli("EXISTS", f"blobs::{orphan}") == 1
        gc = OnlineGC(s.storage.driver, scheduled=False, interval=3600.0, grace_period=0.0,
                      delete_untagged=False, settle=0.0, lock_confirm=0.0,
                      descriptors=s.storage.blobs.descriptors)
        report = await gc.run_once()
        assert report is not None and orphan in [d for d, _ in report.blobs_deleted]
        assert redis_server.cli("EXISTS", f"blobs::{orphan}") == 0
        assert redis_server.cli("SISMEMBER", "repository::repo::blobs", orphan) == 0
        r = await s.http.head(f"/v2/repo/blobs/{orphan}")
        assert r.status_code == 404
        assert (await s.http.get(f"/v2/repo/manifests/{kept}")).status_code == 200


async def test_redis_stopped_and_started_mid_load(nursery, tmp_path, redis_server, caplog):
    caplog.set_level(logging.INFO, "registry.redis")
    async with serving(nursery, tmp_path, redis_server, down_backoff=0.2) as s:
        digests = [await push_blob(s.http, "repo", b"before %d" % i) for i in range(3)]

        async def load(tag: str, rounds: int) -> None:
            for i in range(rounds):
                d = await push_blob(s.http, "repo", f"{tag} {i}".encode())
                for x in (d, *digests):
                    r = await s.http.get(f"/v2/repo/blobs/{x}")
                    assert r.status_code == 200, (x, r.status_code)

        await load("up", 3)
        redis_server.stop()
        await load("down", 10)
        d = await push_blob(s.http, "repo", b"deleted while redis is down")
        assert (await s.http.head(f"/v2/repo/blobs/{d}")).status_code == 200
        assert (await s.http.delete(f"/v2/repo/blobs/{d}")).status_code == 202
        redis_server.start()
        await trio.sleep(0.3)  # past the back-off
        await load("back", 3)
        # Redis restarted empty here, so replay is moot for its contents; what matters is
        # that the outage's invalidation did not stay queued.
        assert not s.redis.down and not s.storage.blobs.descriptors._pending
        assert (await s.http.head(f"/v2/repo/blobs/{d}")).status_code == 404
    lines = [r.getMessage() for r in caplog.records if r.name == "registry.redis"]
    assert len(lines) == 2, lines
    assert "unavailable" in lines[0] and "is back" in lines[1]


async def test_invalidation_during_an_outage_is_replayed(nursery, tmp_path, redis_server):
    async with serving(nursery, tmp_path, redis_server, down_backoff=0.1) as s:
        d = await push_blob(s.http, "repo", b"cached, then deleted in an outage")
        assert (await s.http.head(f"/v2/repo/blobs/{d}")).status_code == 200
        # Redis unreachable for us (a firewall, a full pool) but it keeps its data: pause it.
        redis_server.cli("CLIENT", "PAUSE", 1500, "ALL")
        s.redis.options = RedisOptions(**{**s.redis.options.__dict__, "read_timeout": 0.2})
        assert (await s.http.delete(f"/v2/repo/blobs/{d}")).status_code == 202
        await trio.sleep(1.6)  # the pause ends; the membership is still in Redis
        assert redis_server.cli("SISMEMBER", "repository::repo::blobs", d) == 1
        r = await s.http.head(f"/v2/repo/blobs/{d}")  # replays before it looks up
        assert r.status_code == 404
        assert redis_server.cli("SISMEMBER", "repository::repo::blobs", d) == 0


# --- one Redis shared with registry:3 ---------------------------------------------------------


@contextmanager
def registry_3_on(root, server: RedisServer) -> Iterator[e2e.RegistryProcess]:
    """registry:3's program on filesystem storage under ``root`` with the Redis descriptor
    cache on ``server`` (v3.0.0 reads the address from REGISTRY_REDIS_OPTIONS_ADDRS)."""
    if not REGISTRY_3.exists():
        reason = f"{REGISTRY_3} is missing (distribution v3.0.0's registry; see shared/bin)"
        if e2e.in_ci():
            pytest.fail(reason)
        pytest.skip(reason)

    def command(config) -> tuple[list[str], dict[str, str]]:
        env = e2e.clean_env(drop=["AWS_CA_BUNDLE"])  # Go's S3 client panics on it
        env["REGISTRY_REDIS_OPTIONS_ADDRS"] = f"[{server.addr}]"
        env["REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR"] = "redis"
        return [str(REGISTRY_3), "serve", str(config)], env

    with e2e._run_registry("registry-v3-redis", root, command) as reg:
        yield reg


def shape(server: RedisServer, d: str) -> dict[str, object]:
    """Every key naming ``d``, with ``d`` written as ``D`` and the hashes' fields (size
    left out: the blobs differ)."""
    out: dict[str, object] = {}
    for key in server.cli("KEYS", f"*{d}*"):
        fields = hash_of(server, key.decode())
        fields.pop(b"size", None)
        out[key.decode().replace(d, "D")] = {
            k: v.replace(d.encode(), b"D") for k, v in fields.items()}
    members = {m.decode().replace(d, "D") for m in server.cli("SMEMBERS",
                                                               "repository::repo::blobs")}
    out["members"] = "D" in members
    return out


async def test_registry3_and_ours_share_one_redis(nursery, tmp_path, redis_server):
    root = tmp_path / "storage"
    with registry_3_on(root, redis_server) as v3, v3.client() as v3http:
        async with serving(nursery, tmp_path, redis_server) as s:
            ours_d = await push_blob(s.http, "repo", b"pushed to ours")
            assert (await s.http.head(f"/v2/repo/blobs/{ours_d}")).status_code == 200
            v3_data = b"pushed to registry:3"
            v3_d = digest(v3_data)
            r = v3http.post("/v2/repo/blobs/uploads/")  # v3 has no single-request push
            location = r.headers["location"]
            r = v3http.put(f"{location}&digest={v3_d}", content=v3_data)
            assert r.status_code == 201, r.text
            assert v3http.head(f"/v2/repo/blobs/{v3_d}").status_code == 200
            # The same keys, the same fields, the same values, whoever wrote them.
            assert shape(redis_server, ours_d) == shape(redis_server, v3_d)
            assert shape(redis_server, v3_d)["members"] is True
            assert len(shape(redis_server, v3_d)) == 3  # two keys name it, plus membership
            # Ours reads v3's entry without touching storage; v3 reads ours.
            s.driver.reads = 0
            r = await s.http.head(f"/v2/repo/blobs/{v3_d}")
            assert r.status_code == 200 and r.headers["content-length"] == str(len(v3_data))
            assert s.driver.reads == 0
            assert v3http.head(f"/v2/repo/blobs/{ours_d}").status_code == 200
            # A delete on either side is seen by the other (through Redis or past it).
            assert v3http.delete(f"/v2/repo/blobs/{ours_d}").status_code == 202
            assert (await s.http.head(f"/v2/repo/blobs/{ours_d}")).status_code == 404
            assert (await s.http.delete(f"/v2/repo/blobs/{v3_d}")).status_code == 202
            assert v3http.head(f"/v2/repo/blobs/{v3_d}").status_code == 404
