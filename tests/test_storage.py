"""Storage-layer behaviour checked directly against a driver (no HTTP)."""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any

import pytest
import trio
from oci import OCI_MANIFEST, descriptor, digest

from registry.digest import Digest
from registry.drivers.filesystem import FilesystemDriver
from registry.drivers.memory import MemoryDriver
from registry.errors import ErrorCode, RegistryError
from registry.storage import paths, sha256state
from registry.storage.store import Storage


class CountingDriver(MemoryDriver):
    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[tuple[str, str]] = Counter()

    async def list(self, path: str) -> list[str]:
        self.calls[("list", path)] += 1
        return await super().list(path)

    async def get_content(self, path: str) -> bytes:
        self.calls[("get", path)] += 1
        return await super().get_content(path)


async def _body(chunks: list[bytes]) -> Any:
    for c in chunks:
        yield c


async def _push(st: Storage, name: str, data: bytes) -> Digest:
    up = await st.uploads.start(name)
    d = Digest.parse(digest(data))
    await st.uploads.finish(name, up.id, d, _body([data]))
    return d


async def test_delete_by_digest_scans_the_tags_once_management_25():
    drv = CountingDriver()
    st = Storage(drv)
    cfg = b"{}"
    await _push(st, "r", cfg)
    body = json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": descriptor("application/vnd.oci.image.config.v1+json", cfg), "layers": []}
    ).encode()
    d = None
    for i in range(50):
        d, _ = await st.manifests.put("r", f"t{i}", OCI_MANIFEST, body)
    other = body.replace(b"[]", b"[ ]")
    await st.manifests.put("r", "other", OCI_MANIFEST, other)
    assert d is not None
    drv.calls.clear()
    await st.manifests.delete("r", d)
    tag_lists = [k for k in drv.calls if k[0] == "list" and k[1] == paths.tags_dir("r")]
    assert tag_lists and all(drv.calls[k] == 1 for k in tag_lists)
    reads = [k for k in drv.calls if k[0] == "get" and "/_manifests/tags/" in k[1]]
    assert all(drv.calls[k] == 1 for k in reads) and len(reads) == 51
    assert await st.tags.list("r") == ["other"]


async def test_a_blob_is_invisible_until_verified():
    drv = MemoryDriver()
    st = Storage(drv)
    data = b"x" * 1000
    d = Digest.parse(digest(data))
    up = await st.uploads.start("v")
    await st.uploads.append("v", up.id, _body([data[:500]]))
    assert await st.blobs.size(d) is None
    assert not await st.blobs.is_linked("v", d)
    await st.uploads.finish("v", up.id, d, _body([data[500:]]))
    assert await st.blobs.size(d) == 1000 and await st.blobs.is_linked("v", d)
    # the session is gone
    assert not any(k.startswith(paths.uploads_dir("v") + "/") for k in drv._files)


async def test_finish_without_a_cached_hasher_rehashes_from_storage():
    drv = MemoryDriver()
    a, b = Storage(drv), Storage(drv)  # two processes on one storage
    data = b"abc" * 100_000
    d = Digest.parse(digest(data))
    up = await a.uploads.start("h")
    await a.uploads.append("h", up.id, _body([data[:1000]]))
    await b.uploads.append("h", up.id, _body([data[1000:2000]]), start=1000)
    await a.uploads.append("h", up.id, _body([data[2000:]]), start=2000)
    await a.uploads.finish("h", up.id, d, None)
    assert await drv.get_content(paths.blob_data(d)) == data


class ReadCountingDriver(MemoryDriver):
    """Counts streamed reads per path (a re-hash reads the upload's data this way)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: Counter[str] = Counter()

    def reader(self, path: str, offset: int = 0, length: int | None = None) -> Any:
        self.reads[path] += 1
        return super().reader(path, offset, length)


@pytest.mark.usefixtures("resumable_sha256")
async def test_another_process_resumes_the_saved_hash_state_without_reading_the_data():
    drv = ReadCountingDriver()
    a, b = Storage(drv), Storage(drv)  # two worker processes on one storage
    data = bytes(range(256)) * 4000 + b"tail"  # not a multiple of the 64-byte block
    d = Digest.parse(digest(data))
    up = await a.uploads.start("w")
    await a.uploads.append("w", up.id, _body([data[:300_001]]))
    state = await drv.get_content(paths.upload_hashstate("w", up.id, "sha256", 300_001))
    assert sha256state.Sha256.unmarshal(state).length == 300_001
    await b.uploads.append("w", up.id, _body([data[300_001:700_000]]), start=300_001)
    await a.uploads.finish("w", up.id, d, _body([data[700_000:]]), start=700_000)
    assert drv.reads[paths.upload_data("w", up.id)] == 0  # every byte hashed once, on arrival
    assert await drv.get_content(paths.blob_data(d)) == data
    assert not any(k.startswith(paths.upload_dir("w", up.id)) for k in drv._files)


@pytest.mark.usefixtures("resumable_sha256")
async def test_a_missing_corrupt_or_mismatched_hash_state_falls_back_to_rehashing():
    data = b"0123456789" * 50_000
    d = Digest.parse(digest(data))
    for damage in ("missing", "garbage", "wrong-length", "other-bytes"):
        drv = ReadCountingDriver()
        a, b = Storage(drv), Storage(drv)
        up = await a.uploads.start("f")
        await a.uploads.append("f", up.id, _body([data[:200_000]]))
        key = paths.upload_hashstate("f", up.id, "sha256", 200_000)
        h = sha256state.Sha256()
        if damage == "missing":
            await drv.delete(key)
        elif damage == "garbage":
            await drv.put_content(key, b"sha\x03" + b"\xff" * 10)
        elif damage == "wrong-length":  # a valid state, but of 64 bytes, not 200,000
            h.update(data[:64])
            await drv.put_content(key, h.marshal())
        else:  # a valid state of the right length over other bytes: a wrong digest, refused
            h.update(b"x" * 200_000)
            await drv.put_content(key, h.marshal())
        if damage == "other-bytes":
            with pytest.raises(RegistryError) as err:
                await b.uploads.finish("f", up.id, d, _body([data[200_000:]]), start=200_000)
            assert err.value.code is ErrorCode.DIGEST_INVALID
            assert await b.blobs.size(d) is None  # nothing published
            continue
        await b.uploads.finish("f", up.id, d, _body([data[200_000:]]), start=200_000)
        assert drv.reads[paths.upload_data("f", up.id)] == 1, damage  # re-hashed once
        assert await drv.get_content(paths.blob_data(d)) == data


async def test_cancel_mid_append_keeps_a_consistent_session():
    drv = MemoryDriver()
    st = Storage(drv)
    up = await st.uploads.start("c")

    async def endless() -> Any:
        while True:
            await trio.sleep(0.01)
            yield b"y" * 70_000

    with trio.move_on_after(0.5):
        await st.uploads.append("c", up.id, endless())
    status = await st.uploads.status("c", up.id)
    stored = await drv.get_content(paths.upload_data("c", up.id))
    assert stored == b"y" * status.size  # a prefix of what was sent, and the size says so


@pytest.mark.usefixtures("resumable_sha256")
async def test_filesystem_hash_states_skip_the_fsync_that_put_content_keeps(tmp_path, monkeypatch):
    """A hash state lost in a crash costs a re-hash, so it is written without fsync (an fsync
    per PATCH cost chunked pushes ~10%); everything put_content writes is still synced."""
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    drv = FilesystemDriver(str(tmp_path))
    st = Storage(drv)
    data = b"z" * 100_000
    up = await st.uploads.start("fs")
    await st.uploads.append("fs", up.id, _body([data]))
    saved = await drv.get_content(paths.upload_hashstate("fs", up.id, "sha256", len(data)))
    h = sha256state.Sha256()
    h.update(data)
    assert saved == h.marshal()
    assert synced and not any("/hashstates/" in p for p in synced)  # startedat was synced
    synced.clear()
    await drv.put_content("/docker/registry/v2/some/link", b"x")
    assert [p for p in synced if "/docker/registry/v2/some/" in p]
