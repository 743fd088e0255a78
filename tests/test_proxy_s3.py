"""The pull-through cache on S3 storage (issue 16 item 8): blobs fetched into a moto bucket
(the driver writes them at their address and commits only verified bytes), wrong upstream
bytes leave nothing behind, and the ttl removes what it must."""

from __future__ import annotations

import hashlib
import os

import httpx
import pytest
import trio
from oci import digest, push_blob, push_image
from proxy_support import remote, respond, start_proxy, start_upstream
from s3_support import open_s3_driver

from registry.digest import Digest
from registry.drivers.base import PathNotFound
from registry.storage import paths

pytestmark = pytest.mark.s3
BIG = os.urandom(6 * 1024 * 1024 + 5)  # more than one multipart part (5 MiB minimum)
TIMEOUT = 60


async def test_pull_through_into_s3_and_served_from_it(nursery, tmp_path):
    with trio.fail_after(TIMEOUT):
        up, up_scope = await start_upstream(nursery, str(tmp_path / "up"))
        async with httpx.AsyncClient(base_url=up.url) as upc:
            _, body = await push_image(upc, "lib/app", "1", layers=(BIG,))
        async with open_s3_driver(redirect_disable=True) as driver:
            url, _, cache = await start_proxy(nursery, None, [remote(up.url, ttl=3600)],
                                              driver=driver)
            async with httpx.AsyncClient(base_url=url, timeout=30) as c:
                r = await c.get("/v2/lib/app/manifests/1")
                assert r.status_code == 200 and r.content == body
                got: list[bytes] = []

                async def pull() -> None:
                    r = await c.get(f"/v2/lib/app/blobs/{digest(BIG)}")
                    assert r.status_code == 200
                    got.append(r.content)

                async with trio.open_nursery() as n:
                    for _ in range(4):
                        n.start_soon(pull)
                assert got == [BIG] * 4
                assert up.count("GET", f"/blobs/{digest(BIG)}") == 1
                d = Digest.parse(digest(BIG))
                assert await driver.get_content(paths.blob_data(d)) == BIG
                assert {e.kind for e in await cache.expiry.entries()} == {"blob", "manifest"}
                up_scope.cancel()
                await trio.sleep(0.1)
                r = await c.get(f"/v2/lib/app/blobs/{digest(BIG)}")
                assert r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == d.hex


async def test_wrong_upstream_bytes_leave_nothing_in_s3(nursery, tmp_path):
    d = digest(BIG)

    def fault(scope):  # type: ignore[no-untyped-def]
        if scope["method"] == "GET" and scope["path"].endswith(d):
            async def answer(scope, receive, send):  # type: ignore[no-untyped-def]
                await respond(send, 200, bytes(len(BIG)))
            return answer
        return None

    with trio.fail_after(TIMEOUT):
        up, _ = await start_upstream(nursery, str(tmp_path / "up"), fault=fault)
        async with httpx.AsyncClient(base_url=up.url) as upc:
            await push_blob(upc, "big", BIG)
        async with open_s3_driver(redirect_disable=True) as driver:
            url, _, _ = await start_proxy(nursery, None, [remote(up.url)], driver=driver)
            async with httpx.AsyncClient(base_url=url, timeout=30) as c:
                with pytest.raises(httpx.RemoteProtocolError):
                    await c.get(f"/v2/big/blobs/{d}")
            blob = Digest.parse(d)
            with pytest.raises(PathNotFound):
                await driver.stat(paths.blob_data(blob))
            with pytest.raises(PathNotFound):  # no session left either
                await driver.list(paths.uploads_dir("big"))
