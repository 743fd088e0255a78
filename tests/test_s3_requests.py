"""S3 requests per registry operation, counted at a proxy in front of moto.

The reference registry (distribution 2.8) answers a manifest PUT with 9 S3 requests;
these budgets keep us below it.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import pytest
import s3_support

from registry.digest import Digest
from registry.storage import paths
from registry.storage.blobs import link_content
from registry.storage.manifests import DOCKER_MANIFEST
from registry.storage.store import Storage

pytestmark = pytest.mark.s3
REPO = "lib/app"


def digest_of(body: bytes) -> Digest:
    return Digest("sha256", hashlib.sha256(body).hexdigest())


def operations(proxy: s3_support.FaultProxy) -> Counter[str]:
    return Counter(
        f"{r.method} {'list' if 'list-type' in r.query else 'object'}" for r in proxy.seen
    )


async def test_manifest_put_of_a_two_blob_image_stays_under_the_reference() -> None:
    async with s3_support.open_proxied_driver() as (driver, proxy):
        storage = Storage(driver)
        config, layer = b'{"os":"linux"}', b"layer bytes"
        descriptors = []
        for body, media_type in (
            (config, "application/vnd.docker.container.image.v1+json"),
            (layer, "application/vnd.docker.image.rootfs.diff.tar.gzip"),
        ):
            d = digest_of(body)
            await driver.put_content(paths.blob_data(d), body)
            await driver.put_content(paths.layer_link(REPO, d), link_content(d))
            descriptors.append({"mediaType": media_type, "size": len(body), "digest": str(d)})
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": DOCKER_MANIFEST,
                "config": descriptors[0],
                "layers": descriptors[1:],
            }
        ).encode()
        for _ in range(2):  # a new manifest, then the same one again
            proxy.seen.clear()
            d, _ = await storage.manifests.put(REPO, "latest", DOCKER_MANIFEST, manifest)
            ops = operations(proxy)
            # 2 link GETs + 2 blob HEADs, then the manifest blob, its revision link and
            # the two tag links: 8 requests, no listing.
            assert ops == Counter({"GET object": 2, "HEAD object": 2, "PUT object": 4})
            assert sum(ops.values()) < 9
        assert await driver.get_content(paths.blob_data(d)) == manifest
        fetched = await Storage(driver).manifests.get(REPO, "latest")
        assert fetched.body == manifest
