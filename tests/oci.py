"""Helpers for API tests: build and push blobs and manifests over HTTP."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import httpx

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
EMPTY_DIGEST = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def push_blob(client: httpx.AsyncClient, name: str, data: bytes) -> str:
    d = digest(data)
    r = await client.post(f"/v2/{name}/blobs/uploads/", params={"digest": d}, content=data)
    assert r.status_code == 201, r.text
    assert r.headers["docker-content-digest"] == d
    return d


def descriptor(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest(data), "size": len(data), **extra}


async def push_image(
    client: httpx.AsyncClient,
    name: str,
    tag: str | None = "latest",
    *,
    layers: tuple[bytes, ...] = (b"layer-one",),
    media_type: str = OCI_MANIFEST,
    config: bytes = b'{"architecture":"amd64","os":"linux"}',
    extra: dict[str, Any] | None = None,
) -> tuple[str, bytes]:
    """Push config + layers + a manifest; return (manifest digest, manifest bytes)."""
    await push_blob(client, name, config)
    for layer in layers:
        await push_blob(client, name, layer)
    layer_type = (
        "application/vnd.oci.image.layer.v1.tar+gzip"
        if media_type == OCI_MANIFEST
        else "application/vnd.docker.image.rootfs.diff.tar.gzip"
    )
    config_type = (
        "application/vnd.oci.image.config.v1+json"
        if media_type == OCI_MANIFEST
        else "application/vnd.docker.container.image.v1+json"
    )
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": descriptor(config_type, config),
        "layers": [descriptor(layer_type, lyr) for lyr in layers],
    }
    doc.update(extra or {})
    body = json.dumps(doc, indent=3).encode()
    ref = tag or digest(body)
    r = await client.put(
        f"/v2/{name}/manifests/{ref}", content=body, headers={"Content-Type": media_type}
    )
    assert r.status_code == 201, r.text
    assert r.headers["docker-content-digest"] == digest(body)
    return digest(body), body


def error_codes(r: httpx.Response) -> list[str]:
    body = r.json()
    assert isinstance(body, dict) and "errors" in body, body
    return [e["code"] for e in body["errors"]]
