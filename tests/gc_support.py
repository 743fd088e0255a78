"""Helpers for the GC and purge tests: push through the storage layer (the code path the
HTTP handlers use, minus HTTP), age what is stored, and check what a client could pull."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

from registry.digest import Digest
from registry.digest import from_canonical as as_digest
from registry.drivers.base import PathNotFound
from registry.drivers.memory import MemoryDriver
from registry.storage import paths
from registry.storage.manifests import parse_references
from registry.storage.store import Storage
from registry.storage.walk import enumerate_repositories

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
HOUR = 3600.0


def dg(data: bytes) -> Digest:
    return Digest("sha256", hashlib.sha256(data).hexdigest())


def desc(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": str(dg(data)), "size": len(data), **extra}


async def _body(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def push_blob(storage: Storage, name: str, data: bytes) -> Digest:
    """A monolithic upload: start, then finish with the whole body."""
    up = await storage.uploads.start(name)
    await storage.uploads.finish(name, up.id, dg(data), _body(data))
    return dg(data)


def image_manifest(config: bytes, layers: list[bytes], **extra: Any) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": desc(OCI_CONFIG, config),
        "layers": [desc(OCI_LAYER, x) for x in layers],
        **extra,
    }
    return json.dumps(doc).encode()


def index_manifest(children: list[bytes], **extra: Any) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            desc(OCI_MANIFEST, c, platform={"architecture": f"arch{i}", "os": "linux"})
            for i, c in enumerate(children)
        ],
        **extra,
    }
    return json.dumps(doc).encode()


async def push_image(
    storage: Storage,
    name: str,
    tag: str | None,
    layers: list[bytes],
    config: bytes | None = None,
    **extra: Any,
) -> tuple[Digest, bytes]:
    """Config + layers + manifest (by tag, or by digest when ``tag`` is None)."""
    config = config if config is not None else b'{"os":"linux","n":"%s"}' % name.encode()
    for blob in [config, *layers]:
        await push_blob(storage, name, blob)
    body = image_manifest(config, layers, **extra)
    d, _ = await storage.manifests.put(name, tag if tag else dg(body), OCI_MANIFEST, body)
    return d, body


async def push_index(
    storage: Storage, name: str, tag: str | None, children: list[bytes], **extra: Any
) -> tuple[Digest, bytes]:
    body = index_manifest(children, **extra)
    d, _ = await storage.manifests.put(name, tag if tag else dg(body), OCI_INDEX, body)
    return d, body


def age_everything(driver: MemoryDriver, seconds: float) -> None:
    """Make every stored object ``seconds`` older (the memory driver keeps wall mtimes)."""
    for key, (data, mtime) in list(driver._files.items()):
        driver._files[key] = (data, mtime - seconds)


def snapshot(driver: MemoryDriver) -> dict[str, bytes]:
    return {k: v[0] for k, v in driver._files.items()}


async def problems(storage: Storage) -> list[str]:
    """What a client could not pull: for every repository, every tag must resolve to a
    revision, every revision's bytes must exist, and everything a revision references must
    exist and be linked in the repository (a layer link, or a revision for a child)."""
    driver = storage.driver
    out: list[str] = []
    for name in await enumerate_repositories(driver):
        for tag in await _tags(storage, name):
            try:
                d = await storage.tags.resolve(name, tag)
            except Exception as exc:  # noqa: BLE001
                out.append(f"{name}:{tag} does not resolve: {exc!r}")
                continue
            if not await storage.blobs.has_revision(name, d):
                out.append(f"{name}:{tag} points at {d}, which is not a revision")
        for d in await storage.manifests.revisions(name):
            try:
                body = await driver.get_content(paths.blob_data(d))
            except PathNotFound:
                out.append(f"{name}@{d}: manifest bytes are gone")
                continue
            refs = parse_references(body)
            for b in map(as_digest, refs.blobs):
                if await storage.blobs.size(b) is None:
                    out.append(f"{name}@{d}: blob {b} is gone")
                elif not await storage.blobs.is_linked(name, b):
                    out.append(f"{name}@{d}: blob {b} is not linked in {name}")
            for c in map(as_digest, refs.children):
                if not await storage.blobs.has_revision(name, c):
                    out.append(f"{name}@{d}: child {c} is not a revision of {name}")
                elif await storage.blobs.size(c) is None:
                    out.append(f"{name}@{d}: child {c} bytes are gone")
    return out


async def _tags(storage: Storage, name: str) -> list[str]:
    try:
        return await storage.tags.list(name)
    except Exception:  # noqa: BLE001 - no tags directory
        return []


def blob_keys(driver: MemoryDriver) -> set[Digest]:
    """Digests whose ``blobs/.../data`` exists."""
    out = set()
    for key in driver._files:
        if key.startswith(paths.BLOBS + "/") and key.endswith("/data"):
            d = paths.digest_from_blob_dir(key.rsplit("/", 1)[0])
            if d is not None:
                out.add(d)
    return out
