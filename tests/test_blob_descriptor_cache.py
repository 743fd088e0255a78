"""storage.cache.blobdescriptor: inmemory (issue 15, item 1): blob HEAD/GET reuse the size
of a blob they stat-ed before, bounded by blobdescriptorsize; the repository link is still
checked every time, so an unlinked or collected blob is 404 whatever the cache holds."""

from __future__ import annotations

import os

import httpx
import pytest
from conftest import serve_asgi
from oci import error_codes, push_blob

from registry.digest import Digest
from registry.drivers.base import FileInfo
from registry.drivers.filesystem import FilesystemDriver
from registry.http.app import AppOptions, RegistryApp
from registry.storage import paths
from registry.storage.store import Storage

BLOBS = paths.blob_data(Digest.parse("sha256:" + "0" * 64)).split("/sha256/")[0]


class CountingDriver(FilesystemDriver):
    """The filesystem driver, counting stat calls on blob data (the calls the cache saves)."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.data_stats = 0

    async def stat(self, path: str) -> FileInfo:
        if path.startswith(BLOBS) and path.endswith("/data"):
            self.data_stats += 1
        return await super().stat(path)


async def _serve(nursery, root: str, cache: int | None) -> tuple[httpx.AsyncClient, CountingDriver]:
    driver = CountingDriver(root)
    app = RegistryApp(Storage(driver, blob_descriptor_cache=cache), AppOptions(delete_enabled=True))
    url = await serve_asgi(nursery, app)
    return httpx.AsyncClient(base_url=url, timeout=30), driver


@pytest.mark.parametrize(("cache", "stats"), [(None, 3), (10, 1), (0, 1)],
                         ids=["no-cache", "bounded", "unbounded"])
async def test_repeated_blob_heads_stat_storage_once_with_the_cache(nursery, tmp_path, cache, stats):
    client, driver = await _serve(nursery, str(tmp_path / "s"), cache)
    async with client:
        d = await push_blob(client, "repo", b"layer bytes")
        driver.data_stats = 0
        for _ in range(3):
            r = await client.head(f"/v2/repo/blobs/{d}")
            assert r.status_code == 200 and r.headers["content-length"] == "11"
        assert driver.data_stats == stats


async def test_the_cache_keeps_at_most_blobdescriptorsize_entries(nursery, tmp_path):
    client, driver = await _serve(nursery, str(tmp_path / "s"), 2)
    async with client:
        digests = [await push_blob(client, "repo", bytes([i]) * 10) for i in range(3)]
        for d in digests:  # the third evicts the first (least recently used)
            assert (await client.head(f"/v2/repo/blobs/{d}")).status_code == 200
        driver.data_stats = 0
        assert (await client.head(f"/v2/repo/blobs/{digests[2]}")).status_code == 200
        assert driver.data_stats == 0
        assert (await client.head(f"/v2/repo/blobs/{digests[0]}")).status_code == 200
        assert driver.data_stats == 1


async def test_unlinked_and_collected_blobs_are_404_despite_the_cache(nursery, tmp_path):
    root = str(tmp_path / "s")
    client, _ = await _serve(nursery, root, 10)
    async with client:
        a = await push_blob(client, "a", b"unlinked later")
        b = await push_blob(client, "b", b"collected later")
        for name, d in (("a", a), ("b", b)):
            assert (await client.get(f"/v2/{name}/blobs/{d}")).status_code == 200
        assert (await client.delete(f"/v2/a/blobs/{a}")).status_code == 202
        r = await client.get(f"/v2/a/blobs/{a}")
        assert r.status_code == 404 and error_codes(r) == ["BLOB_UNKNOWN"]
        # What garbage collection leaves: the blob and the repository's link to it gone.
        hexd = b.split(":")[1]
        for rel in (f"blobs/sha256/{hexd[:2]}/{hexd}/data",
                    f"repositories/b/_layers/sha256/{hexd}/link"):
            os.remove(os.path.join(root, "docker/registry/v2", rel))
        r = await client.head(f"/v2/b/blobs/{b}")
        assert r.status_code == 404
