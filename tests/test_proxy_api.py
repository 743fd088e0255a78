"""The pull-through cache over real sockets (issue 16 items 1-5): an upstream that is our
own app (tests/proxy_support.py), a proxy app in front of it, httpx as the client."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import httpx
import pytest
import trio
from oci import OCI_INDEX, OCI_MANIFEST, digest, error_codes, push_blob, push_image
from prometheus_client.parser import text_string_to_metric_families
from proxy_support import remote, respond, start_proxy, start_upstream

from registry.ops.metrics import Metrics

TIMEOUT = 30  # seconds any one test may take (none may hang)
BIG = os.urandom(3 * 1024 * 1024 + 17)  # several upstream pieces and storage units


def blob_file(root: Path, d: str) -> Path:
    hexd = d.split(":", 1)[1]
    return root / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"


@pytest.fixture
def roots(tmp_path: Path) -> tuple[str, Path]:
    return str(tmp_path / "upstream"), tmp_path / "proxy"


async def test_manifest_and_blobs_pulled_through_then_served_with_upstream_down(nursery, roots):
    up_root, px_root = roots
    with trio.fail_after(TIMEOUT):
        up, up_scope = await start_upstream(nursery, up_root)
        async with httpx.AsyncClient(base_url=up.url) as upc:
            md, body = await push_image(upc, "library/alpine", "3.20", layers=(BIG,))
        url, _, _ = await start_proxy(nursery, str(px_root), [remote(up.url)])
        async with httpx.AsyncClient(base_url=url, timeout=20) as c:
            r = await c.get("/v2/library/alpine/manifests/3.20", headers={"accept": OCI_MANIFEST})
            assert r.status_code == 200 and r.content == body
            assert r.headers["docker-content-digest"] == md
            assert r.headers["content-type"] == OCI_MANIFEST
            assert up.count("HEAD", "/manifests/3.20") == 1  # resolved by HEAD, as registry:3
            r = await c.get(f"/v2/library/alpine/blobs/{digest(BIG)}")
            assert r.status_code == 200 and r.content == BIG
            assert blob_file(px_root, digest(BIG)).read_bytes() == BIG
            up_scope.cancel()  # the upstream goes away
            await trio.sleep(0.1)
            r = await c.get("/v2/library/alpine/manifests/3.20")
            assert r.status_code == 200 and r.content == body
            assert "warning" in r.headers  # the cached tag, stale
            r = await c.get(f"/v2/library/alpine/manifests/{md}")
            assert r.status_code == 200 and r.content == body
            r = await c.get(f"/v2/library/alpine/blobs/{digest(BIG)}")
            assert r.status_code == 200 and r.content == BIG
            r = await c.get("/v2/library/alpine/manifests/other")
            assert r.status_code == 503 and error_codes(r) == ["UNAVAILABLE"]
            r = await c.get(f"/v2/library/alpine/blobs/{digest(b'never fetched')}")
            assert r.status_code == 503 and error_codes(r) == ["UNAVAILABLE"]


async def test_tag_moved_upstream_is_followed_and_404s_are_unknown(nursery, roots):
    up_root, px_root = roots
    with trio.fail_after(TIMEOUT):
        up, _ = await start_upstream(nursery, up_root)
        url, _, _ = await start_proxy(nursery, str(px_root), [remote(up.url)])
        async with httpx.AsyncClient(base_url=up.url) as upc, \
                httpx.AsyncClient(base_url=url, timeout=20) as c:
            d1, _ = await push_image(upc, "app", "v1", layers=(b"one",))
            assert (await c.get("/v2/app/manifests/v1")).headers["docker-content-digest"] == d1
            d2, body2 = await push_image(upc, "app", "v1", layers=(b"two",))
            r = await c.get("/v2/app/manifests/v1")
            assert r.headers["docker-content-digest"] == d2 and r.content == body2
            r = await c.get("/v2/app/manifests/missing")
            assert r.status_code == 404 and error_codes(r) == ["MANIFEST_UNKNOWN"]
            r = await c.head("/v2/app/manifests/missing")
            assert r.status_code == 404
            r = await c.get(f"/v2/app/blobs/{digest(b'nope')}")
            assert r.status_code == 404 and error_codes(r) == ["BLOB_UNKNOWN"]
            r = await c.head(f"/v2/app/blobs/{digest(b'one')}")  # HEAD asks the upstream
            assert r.status_code == 200 and r.headers["content-length"] == "3"
            r = await c.get("/v2/app/tags/list")
            assert r.json() == {"name": "app", "tags": ["v1"]}


async def test_prefixed_remote_beside_local_repositories(nursery, roots):
    up_root, px_root = roots
    with trio.fail_after(TIMEOUT):
        up, _ = await start_upstream(nursery, up_root)
        async with httpx.AsyncClient(base_url=up.url) as upc:
            md, body = await push_image(upc, "library/alpine", "latest")
        url, _, _ = await start_proxy(nursery, str(px_root), [remote(up.url, prefix="hub")])
        async with httpx.AsyncClient(base_url=url, timeout=20) as c:
            r = await c.get("/v2/hub/library/alpine/manifests/latest")
            assert r.status_code == 200 and r.content == body
            # a local name: pushes work there, and it is not asked upstream
            await push_image(c, "mine/app", "1")
            assert (await c.get("/v2/mine/app/manifests/1")).status_code == 200
            assert not any("mine/app" in p for _, p in up.requests)
            cat = (await c.get("/v2/_catalog")).json()["repositories"]
            assert cat == ["hub/library/alpine", "mine/app"]
            # every write under the prefix: 405 UNSUPPORTED, as registry:3's proxy mode
            for method, path in [
                ("POST", "/v2/hub/library/alpine/blobs/uploads/"),
                ("PATCH", "/v2/hub/library/alpine/blobs/uploads/abc"),
                ("PUT", "/v2/hub/library/alpine/manifests/latest"),
                ("DELETE", f"/v2/hub/library/alpine/manifests/{md}"),
                ("DELETE", f"/v2/hub/library/alpine/blobs/{md}"),
            ]:
                r = await c.request(method, path, content=b"")
                assert r.status_code == 405 and error_codes(r) == ["UNSUPPORTED"], (method, path)
            r = await c.get("/v2/hub/manifests/latest")  # the prefix alone names nothing
            assert r.status_code == 404


async def test_concurrent_cold_pulls_fetch_each_blob_once(nursery, roots):
    up_root, px_root = roots
    metrics = Metrics()
    with trio.fail_after(TIMEOUT):
        up, _ = await start_upstream(nursery, up_root)
        async with httpx.AsyncClient(base_url=up.url) as upc:
            d = await push_blob(upc, "big", BIG)
        url, _, _ = await start_proxy(nursery, str(px_root), [remote(up.url)], metrics=metrics)
        got: list[bytes] = []
        async with httpx.AsyncClient(base_url=url, timeout=20) as c:
            async def pull() -> None:
                r = await c.get(f"/v2/big/blobs/{d}")
                assert r.status_code == 200
                got.append(r.content)

            async with trio.open_nursery() as n:
                for _ in range(8):
                    n.start_soon(pull)
        assert got == [BIG] * 8
        assert up.count("GET", f"/blobs/{d}") == 1
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for f in text_string_to_metric_families(metrics.exposition()[0].decode())
                   for s in f.samples}
        # registry:3's proxy metrics, and ours by remote
        blob = (("type", "blob"),)
        assert samples[("registry_proxy_misses_total", blob)] == 1
        assert samples[("registry_proxy_requests_total", blob)] == 1  # the leader's
        assert samples[("registry_proxy_pulled_bytes_total", blob)] == len(BIG)
        assert samples[("registry_proxy_upstream_fetches_total",
                        (("outcome", "ok"), ("remote", up.url), ("type", "blob")))] == 1


def _wrong_bytes(d: str):  # type: ignore[no-untyped-def]
    def fault(scope):  # type: ignore[no-untyped-def]
        if scope["method"] == "GET" and scope["path"].endswith(d):
            async def answer(scope, receive, send):  # type: ignore[no-untyped-def]
                await respond(send, 200, bytes(len(BIG)))  # right length, wrong bytes
            return answer
        return None
    return fault


def _dropped(d: str):  # type: ignore[no-untyped-def]
    def fault(scope):  # type: ignore[no-untyped-def]
        if scope["method"] == "GET" and scope["path"].endswith(d):
            async def answer(scope, receive, send):  # type: ignore[no-untyped-def]
                await send({"type": "http.response.start", "status": 200,
                            "headers": [(b"content-length", str(len(BIG)).encode())]})
                await send({"type": "http.response.body", "body": BIG[: len(BIG) // 2],
                            "more_body": True})
                raise RuntimeError("upstream dies mid-blob")
            return answer
        return None
    return fault


@pytest.mark.parametrize("fault", [_wrong_bytes, _dropped], ids=["wrong-bytes", "dropped"])
async def test_bad_upstream_blob_aborts_the_response_and_stores_nothing(nursery, roots, fault):
    up_root, px_root = roots
    d = digest(BIG)
    with trio.fail_after(TIMEOUT):
        up, _ = await start_upstream(nursery, up_root, fault=fault(d))
        async with httpx.AsyncClient(base_url=up.url) as upc:
            await push_blob(upc, "big", BIG)
        url, _, _ = await start_proxy(nursery, str(px_root), [remote(up.url)])
        async with httpx.AsyncClient(base_url=url, timeout=20) as c:
            got = b""
            with pytest.raises(httpx.RemoteProtocolError):  # cut short: never a whole body
                async with c.stream("GET", f"/v2/big/blobs/{d}") as r:
                    assert r.status_code == 200
                    async for chunk in r.aiter_raw():
                        got += chunk
            assert len(got) < len(BIG)
            assert not blob_file(px_root, d).exists()
            with pytest.raises(httpx.RemoteProtocolError):  # the next try fetches again
                await c.get(f"/v2/big/blobs/{d}")
            r = await c.get(f"/v2/big/blobs/{d}", headers={"range": "bytes=0-9"})
            assert r.status_code == 503 and error_codes(r) == ["UNAVAILABLE"]  # waited: clean
            assert not blob_file(px_root, d).exists()
            assert not list((px_root / "docker/registry/v2/repositories/big").rglob("data"))


async def test_client_gone_mid_blob_the_fetch_completes(nursery, roots):
    up_root, px_root = roots
    with trio.fail_after(TIMEOUT):
        up, _ = await start_upstream(nursery, up_root)
        async with httpx.AsyncClient(base_url=up.url) as upc:
            d = await push_blob(upc, "big", BIG)
        url, _, _ = await start_proxy(nursery, str(px_root), [remote(up.url)])
        host, port = url.removeprefix("http://").rsplit(":", 1)
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:  # a client that leaves after the first piece of the body
            await stream.send_all(f"GET /v2/big/blobs/{d} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            got = b""
            while b"\r\n\r\n" not in got:
                got += await stream.receive_some(65536)
            assert got.startswith(b"HTTP/1.1 200")
        while not blob_file(px_root, d).exists():
            await trio.sleep(0.05)
        data = blob_file(px_root, d).read_bytes()
        assert hashlib.sha256(data).hexdigest() == d.split(":")[1]
        assert up.count("GET", f"/blobs/{d}") == 1


@pytest.mark.parametrize("auth", ["basic", "bearer"])
async def test_upstream_auth(nursery, roots, auth):
    up_root, px_root = roots
    with trio.fail_after(TIMEOUT):
        up, _ = await start_upstream(nursery, up_root, auth=auth)
        up.auth = None
        async with httpx.AsyncClient(base_url=up.url) as upc:
            _, body = await push_image(upc, "org/app", "1", layers=(b"layer",))
        up.auth = auth
        url, _, _ = await start_proxy(nursery, str(px_root), [
            remote(up.url, prefix="p", username="puller", password="s3cret")])
        async with httpx.AsyncClient(base_url=url, timeout=20) as c:
            r = await c.get("/v2/p/org/app/manifests/1")
            assert r.status_code == 200 and r.content == body
            r = await c.get(f"/v2/p/org/app/blobs/{digest(b'layer')}")
            assert r.status_code == 200 and r.content == b"layer"
            r = await c.get("/v2/p/org/app/manifests/1")
            assert r.status_code == 200
        if auth == "bearer":
            assert up.tokens_issued == 1  # cached for its expires_in
            assert up.token_requests[0] == {"scope": "repository%3Aorg%2Fapp%3Apull",
                                            "service": "up"}


async def test_bearer_token_refreshed_on_401_and_wrong_credentials_are_503(nursery, roots):
    up_root, px_root = roots
    with trio.fail_after(TIMEOUT):
        up, _ = await start_upstream(nursery, up_root)
        async with httpx.AsyncClient(base_url=up.url) as upc:
            await push_image(upc, "app", "1")
            await push_image(upc, "app", "2", layers=(b"second",))
        up.auth = "bearer"
        url, _, _ = await start_proxy(nursery, str(px_root), [
            remote(up.url, username="puller", password="s3cret")])
        async with httpx.AsyncClient(base_url=url, timeout=20) as c:
            assert (await c.get("/v2/app/manifests/1")).status_code == 200
            up.tokens_issued += 1  # the upstream revokes the token it gave
            assert (await c.get("/v2/app/manifests/2")).status_code == 200
            assert up.tokens_issued == 3  # a new one was fetched after the 401
            up.password = "changed"  # our credentials stop working
            up.tokens_issued += 1
            r = await c.get("/v2/app/manifests/latest")
            assert r.status_code == 503 and error_codes(r) == ["UNAVAILABLE"]


async def test_index_children_on_demand_and_catch_all_beside_a_prefix(nursery, roots):
    up_root, px_root = roots
    with trio.fail_after(TIMEOUT):
        up, _ = await start_upstream(nursery, up_root)
        other, _ = await start_upstream(nursery, up_root + "-other")
        async with httpx.AsyncClient(base_url=up.url) as upc:
            amd, amd_body = await push_image(upc, "multi", None, layers=(b"amd64 layer",))
            arm, _ = await push_image(upc, "multi", None, layers=(b"arm64 layer",),
                                      config=b'{"architecture":"arm64","os":"linux"}')
            index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": amd, "size": len(amd_body),
                 "platform": {"architecture": "amd64", "os": "linux"}},
                {"mediaType": OCI_MANIFEST, "digest": arm, "size": 1,
                 "platform": {"architecture": "arm64", "os": "linux"}}]}).encode()
            r = await upc.put("/v2/multi/manifests/1", content=index,
                              headers={"content-type": OCI_INDEX})
            assert r.status_code == 201
        async with httpx.AsyncClient(base_url=other.url) as oc:
            _, other_body = await push_image(oc, "tool", "1")
        url, _, _ = await start_proxy(nursery, str(px_root), [
            remote(other.url, prefix="other"), remote(up.url)])  # longest prefix first
        async with httpx.AsyncClient(base_url=url, timeout=20) as c:
            r = await c.get("/v2/multi/manifests/1")  # the catch-all's
            assert r.content == index and r.headers["docker-content-digest"] == digest(index)
            assert r.headers["content-type"] == OCI_INDEX
            assert up.count("GET", f"/manifests/{amd}") == 0  # children: when asked for
            r = await c.get(f"/v2/multi/manifests/{amd}")
            assert r.status_code == 200 and r.content == amd_body
            assert up.count("GET", f"/manifests/{amd}") == 1
            assert up.count("GET", f"/manifests/{arm}") == 0
            r = await c.get("/v2/other/tool/manifests/1")  # the prefixed remote's
            assert r.status_code == 200 and r.content == other_body
            r = await c.post("/v2/anything/blobs/uploads/")  # a catch-all: no local names
            assert r.status_code == 405 and error_codes(r) == ["UNSUPPORTED"]


def _answer_every_request(status: int, headers: list[tuple[bytes, bytes]]):  # type: ignore[no-untyped-def]
    def fault(scope):  # type: ignore[no-untyped-def]
        async def answer(scope, receive, send):  # type: ignore[no-untyped-def]
            await respond(send, status, b'{"errors":[]}', headers)
        return answer
    return fault


@pytest.mark.parametrize(("status", "code", "client_status"), [
    (429, "TOOMANYREQUESTS", 429), (500, "UNAVAILABLE", 503), (503, "UNAVAILABLE", 503)])
async def test_upstream_429_and_5xx_serve_the_cache_and_fail_cleanly_without_it(
        nursery, roots, status, code, client_status):
    up_root, px_root = roots
    with trio.fail_after(TIMEOUT):
        up, _ = await start_upstream(nursery, up_root)
        async with httpx.AsyncClient(base_url=up.url) as upc:
            _, body = await push_image(upc, "app", "1", layers=(b"cached layer",))
        url, _, _ = await start_proxy(nursery, str(px_root), [remote(up.url)])
        async with httpx.AsyncClient(base_url=url, timeout=20) as c:
            assert (await c.get("/v2/app/manifests/1")).status_code == 200
            assert (await c.get(f"/v2/app/blobs/{digest(b'cached layer')}")).status_code == 200
            up.fault = _answer_every_request(status, [(b"retry-after", b"7")])
            r = await c.get("/v2/app/manifests/1")
            assert r.status_code == 200 and r.content == body and "warning" in r.headers
            r = await c.get(f"/v2/app/blobs/{digest(b'cached layer')}")
            assert r.status_code == 200 and r.content == b"cached layer"
            r = await c.get("/v2/app/manifests/2")
            assert r.status_code == client_status and error_codes(r) == [code]
            if status == 429:
                assert r.headers["retry-after"] == "7"
            r = await c.get(f"/v2/app/blobs/{digest(b'not cached')}")
            assert r.status_code == client_status and error_codes(r) == [code]
            r = await c.head("/v2/app/manifests/2")
            assert r.status_code == client_status and r.content == b""
