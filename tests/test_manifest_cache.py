"""Manifest reads stay right with the per-worker cache (issue 14, item 4; SPEC Pull 7, Management 25).

Each worker keeps manifest bytes by digest (content-addressed, so never stale) but reads
what can change from storage on every request: the tag's link and the repository's
revision link. Two app instances on one storage root stand for two workers or replicas,
each over a real socket: what one deletes or moves, the other answers at once, even right
after it served (and cached) the old answer.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio
from conftest import start_app
from oci import DOCKER_LIST, DOCKER_MANIFEST, OCI_MANIFEST, error_codes, push_image

from registry.digest import Digest
from registry.drivers.base import Unavailable
from registry.drivers.memory import MemoryDriver
from registry.storage.manifest_store import MANIFEST_CACHE_BYTES, _LRUBytes
from registry.storage.store import Storage

BOUND = 30  # seconds: a whole test; each does a few dozen loopback requests


class Pair:
    """Two app instances (``a``, ``b``) on the same storage root, and a client for each."""

    def __init__(self, a: httpx.AsyncClient, b: httpx.AsyncClient, root: Path) -> None:
        self.a, self.b, self.root = a, b, root


@pytest.fixture
async def pair(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Pair]:
    root = tmp_path / "storage"
    url_a, _ = await start_app(nursery, str(root))
    url_b, _ = await start_app(nursery, str(root))
    async with httpx.AsyncClient(base_url=url_a, timeout=BOUND) as a, \
            httpx.AsyncClient(base_url=url_b, timeout=BOUND) as b:
        yield Pair(a, b, root)


async def _get_ok(client: httpx.AsyncClient, name: str, ref: str, body: bytes, d: str) -> None:
    r = await client.get(f"/v2/{name}/manifests/{ref}")
    assert r.status_code == 200, r.text
    assert r.content == body
    assert r.headers["docker-content-digest"] == d


async def test_a_manifest_deleted_by_another_worker_is_404_at_once_end_25(pair: Pair) -> None:
    with trio.fail_after(BOUND):
        d, body = await push_image(pair.a, "cache/del", "latest")
        await _get_ok(pair.b, "cache/del", d, body, d)  # b now holds the bytes in its cache
        await _get_ok(pair.b, "cache/del", "latest", body, d)
        assert (await pair.a.delete(f"/v2/cache/del/manifests/{d}")).status_code == 202
        for ref in (d, "latest"):
            r = await pair.b.get(f"/v2/cache/del/manifests/{ref}")
            assert r.status_code == 404 and error_codes(r) == ["MANIFEST_UNKNOWN"], r.text
            assert (await pair.b.head(f"/v2/cache/del/manifests/{ref}")).status_code == 404


async def test_a_tag_deleted_by_another_worker_is_404_while_its_digest_stays_end_25(
    pair: Pair,
) -> None:
    with trio.fail_after(BOUND):
        d, body = await push_image(pair.a, "cache/untag", "v1")
        await _get_ok(pair.b, "cache/untag", "v1", body, d)
        assert (await pair.a.delete("/v2/cache/untag/manifests/v1")).status_code == 202
        r = await pair.b.get("/v2/cache/untag/manifests/v1")
        assert r.status_code == 404 and error_codes(r) == ["MANIFEST_UNKNOWN"], r.text
        await _get_ok(pair.b, "cache/untag", d, body, d)


async def test_a_tag_moved_by_another_worker_answers_the_new_digest_at_once_pull_7(
    pair: Pair,
) -> None:
    with trio.fail_after(BOUND):
        d1, body1 = await push_image(pair.a, "cache/move", "latest", layers=(b"one",))
        await _get_ok(pair.b, "cache/move", "latest", body1, d1)
        d2, body2 = await push_image(pair.a, "cache/move", "latest", layers=(b"two",))
        assert d2 != d1
        await _get_ok(pair.b, "cache/move", "latest", body2, d2)
        r = await pair.b.head("/v2/cache/move/manifests/latest")
        assert r.headers["docker-content-digest"] == d2
        # and back: the first digest (still in b's cache) is named by the tag again
        await push_image(pair.a, "cache/move", "latest", layers=(b"one",))
        await _get_ok(pair.b, "cache/move", "latest", body1, d1)


async def test_head_and_get_agree_by_tag_and_by_digest_pull_7(pair: Pair) -> None:
    with trio.fail_after(BOUND):
        d, body = await push_image(pair.a, "cache/head", "t", media_type=DOCKER_MANIFEST)
        for client in (pair.a, pair.b):  # a cached it at push, b reads it from storage
            for ref in ("t", d):
                head = await client.head(f"/v2/cache/head/manifests/{ref}")
                get = await client.get(f"/v2/cache/head/manifests/{ref}")
                assert head.status_code == get.status_code == 200
                assert get.content == body and head.content == b""
                for h in ("content-type", "docker-content-digest", "etag", "content-length"):
                    assert head.headers[h] == get.headers[h], h
                assert int(head.headers["content-length"]) == len(body)
                assert get.headers["content-type"] == DOCKER_MANIFEST


async def test_a_manifest_whose_stored_bytes_miss_its_digest_is_never_served(
    pair: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    """A damaged manifest file answers MANIFEST_UNKNOWN (never other bytes under the digest,
    from storage or from a cache), and once the file is right again it is served."""
    with trio.fail_after(BOUND):
        d, body = await push_image(pair.a, "cache/bad", "latest", media_type=OCI_MANIFEST)
        data = pair.root / "docker/registry/v2/blobs/sha256" / d[7:9] / d[7:] / "data"
        forged = json.dumps({**json.loads(body), "annotations": {"x": "forged"}}).encode()
        data.write_bytes(forged)
        with caplog.at_level(logging.ERROR, logger="registry.storage"):
            for _ in range(2):  # the second read must not come from a cache either
                for ref in ("latest", d):
                    r = await pair.b.get(f"/v2/cache/bad/manifests/{ref}")
                    assert r.status_code == 404, r.text
                    assert error_codes(r) == ["MANIFEST_UNKNOWN"]
                    assert forged not in r.content
        assert any("do not match" in m for m in caplog.messages)
        data.write_bytes(body)
        await _get_ok(pair.b, "cache/bad", "latest", body, d)


def test_the_manifest_cache_is_bounded_in_bytes() -> None:
    """Least recently used entries go first; the total never passes the budget; one entry
    larger than a quarter of it is not kept (it would evict everything else)."""
    cache = _LRUBytes(1000)
    digests = [Digest("sha256", hashlib.sha256(b"%d" % i).hexdigest()) for i in range(40)]
    for i, d in enumerate(digests):
        cache.put(d, (b"x" * (100 + i), "t"))
        assert cache.used <= 1000
        assert cache.used == sum(len(v[0]) for v in cache.items.values())
        cache.get(digests[0])  # the first one, used all along, stays
    assert digests[0] in cache.items
    assert digests[1] not in cache.items
    assert cache.get(digests[-1]) == (b"x" * 139, "t")
    cache.put(digests[1], (b"y" * 251, "t"))  # past a quarter of the budget: not kept
    assert digests[1] not in cache.items
    assert Storage(MemoryDriver()).manifests._manifest_bytes.budget == MANIFEST_CACHE_BYTES
    assert MANIFEST_CACHE_BYTES <= 64 * 1024 * 1024  # per worker, in a 256 MiB container


class _Down(MemoryDriver):
    """Storage that fails every read (a backend gone away)."""

    async def get_content(self, path: str) -> bytes:
        await trio.lowlevel.checkpoint()
        raise Unavailable("backend down")


async def test_an_uncached_read_whose_storage_fails_raises_the_drivers_error_as_itself() -> None:
    """The revision check and the bytes are read at once: both failing is still one
    Unavailable (503 for the client), not an exception group (a 500)."""
    storage = Storage(_Down())
    d = Digest("sha256", hashlib.sha256(b"{}").hexdigest())
    with trio.fail_after(BOUND), pytest.raises(Unavailable):
        await storage.manifests.get("cache/down", d)


async def test_the_pushing_worker_serves_the_media_type_any_other_worker_serves(pair: Pair) -> None:
    # A body without mediaType, pushed as a docker manifest list: its type comes from its
    # bytes (as storage gives them to every worker), not from the pusher's Content-Type.
    with trio.fail_after(BOUND):
        child, child_body = await push_image(pair.a, "cache/mt", "child")
        index = json.dumps({"schemaVersion": 2, "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": child, "size": len(child_body)},
        ]}).encode()
        r = await pair.a.put("/v2/cache/mt/manifests/list", content=index,
                             headers={"content-type": DOCKER_LIST})
        assert r.status_code == 201, r.text
        types = []
        for client in (pair.a, pair.b):
            r = await client.get("/v2/cache/mt/manifests/list")
            assert r.status_code == 200 and r.content == index, r.text
            types.append(r.headers["content-type"])
        assert types[0] == types[1], types
