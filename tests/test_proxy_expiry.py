"""The pull-through cache's ttl (issue 16 item 6): entries in storage, the sweeper's removal
rules, registry:3's ``/scheduler-state.json`` read and written, and expiry across a real
restart of the proxy app."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import httpx
import pytest
import trio
from oci import digest, push_blob, push_image
from proxy_support import remote, start_proxy, start_upstream

from registry.config.model import RemoteConfig
from registry.digest import Digest
from registry.drivers.memory import MemoryDriver
from registry.errors import RegistryError
from registry.proxy.cache import ProxyCache
from registry.proxy.expiry import Expiry
from registry.storage import paths
from registry.storage.store import Storage

BASE = 1_800_000_000.0  # unix seconds the fake clock starts at
HOUR = 3600.0


def _d(data: bytes) -> Digest:
    return Digest("sha256", hashlib.sha256(data).hexdigest())


async def _blob(st: Storage, name: str, data: bytes) -> Digest:
    d = _d(data)
    await st.driver.put_content(paths.blob_data(d), data)
    await st.blobs.link(name, d)
    return d


async def _manifest(st: Storage, name: str, tag: str) -> Digest:
    body = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                                  "digest": str(_d(b"{}")), "size": 2}, "layers": []}).encode()
    d, _ = await st.manifests.put(name, tag, "application/vnd.oci.image.manifest.v1+json", body,
                                  check_references=False)
    return d


async def test_due_entries_are_removed_once_and_shared_blobs_keep_their_data(autojump_clock):
    st = Storage(MemoryDriver())
    expiry = Expiry(st, clock=lambda: BASE + trio.current_time(), lock_confirm=0)
    only_a = await _blob(st, "a", b"only in a")
    shared = await _blob(st, "a", b"shared")
    await st.blobs.link("b", shared)  # another repository links it too
    m = await _manifest(st, "a", "latest")
    await expiry.add_blob("a", only_a, HOUR)
    await expiry.add_blob("a", shared, HOUR)
    await expiry.add_manifest("a", m, 2 * HOUR)
    async with trio.open_nursery() as nursery:
        await nursery.start(expiry.serve)
        await trio.sleep(HOUR - 120)
        assert await st.blobs.is_linked("a", only_a)  # not due yet
        await trio.sleep(240)
        assert not await st.blobs.is_linked("a", only_a)
        assert await st.blobs.size(only_a) is None  # nobody else links it: data gone
        assert not await st.blobs.is_linked("a", shared)
        assert await st.blobs.size(shared) is not None  # "b" still links it
        assert await st.blobs.has_revision("a", m)
        await trio.sleep(HOUR)
        assert not await st.blobs.has_revision("a", m)
        with pytest.raises(RegistryError):  # the tag went with it
            await st.tags.resolve("a", "latest")
        assert await expiry.entries() == []
        state = json.loads(await st.driver.get_content(paths.SCHEDULER_STATE))
        assert state == {}
        nursery.cancel_scope.cancel()


async def test_an_entry_fetched_again_is_not_removed(autojump_clock):
    st = Storage(MemoryDriver())
    expiry = Expiry(st, clock=lambda: BASE + trio.current_time(), lock_confirm=0)
    d = await _blob(st, "a", b"data")
    await expiry.add_blob("a", d, HOUR)
    await trio.sleep(HOUR / 2)
    await expiry.add_blob("a", d, HOUR)  # fetched again: a new expiry, as registry:3's add
    await trio.sleep(HOUR * 0.75)
    assert await expiry.sweep() == 0
    assert await st.blobs.is_linked("a", d)
    await trio.sleep(HOUR)
    assert await expiry.sweep() == 1
    assert not await st.blobs.is_linked("a", d)


async def test_registry3_state_is_imported_and_written_in_its_format(autojump_clock):
    st = Storage(MemoryDriver())
    expiry = Expiry(st, clock=lambda: BASE + trio.current_time(), lock_confirm=0)
    gone = await _blob(st, "library/alpine", b"expired under registry:3")
    kept = await _manifest(st, "library/alpine", "3")
    v3 = {  # as registry:3's scheduler writes it (Go time with nanoseconds)
        f"library/alpine@{gone}": {"Key": f"library/alpine@{gone}",
                                   "ExpiryData": "2020-01-01T00:00:00.123456789Z", "EntryType": 0},
        f"library/alpine@{kept}": {"Key": f"library/alpine@{kept}",
                                   "ExpiryData": "2099-01-01T00:00:00.5+01:00", "EntryType": 1},
    }
    await st.driver.put_content(paths.SCHEDULER_STATE, json.dumps(v3).encode())
    async with trio.open_nursery() as nursery:
        await nursery.start(expiry.serve)
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert not await st.blobs.is_linked("library/alpine", gone)
    assert await st.blobs.has_revision("library/alpine", kept)
    [entry] = await expiry.entries()
    assert (entry.kind, entry.name, entry.digest) == ("manifest", "library/alpine", kept)
    state = json.loads(await st.driver.get_content(paths.SCHEDULER_STATE))
    assert list(state) == [f"library/alpine@{kept}"]
    item = state[f"library/alpine@{kept}"]
    assert item["EntryType"] == 1 and item["Key"] == f"library/alpine@{kept}"
    assert item["ExpiryData"].startswith("2098-12-31T23:00:00.")  # whole seconds kept


async def test_expiry_survives_a_restart_of_the_proxy(nursery, tmp_path: Path):
    with trio.fail_after(60):
        up, _ = await start_upstream(nursery, str(tmp_path / "up"))
        async with httpx.AsyncClient(base_url=up.url) as upc:
            await push_image(upc, "app", "1")
            d = await push_blob(upc, "app", b"layer data")
        root = str(tmp_path / "proxy")
        first = trio.CancelScope()

        async def run_first(task_status=trio.TASK_STATUS_IGNORED):  # type: ignore[no-untyped-def]
            with first:
                async with trio.open_nursery() as inner:
                    task_status.started(await start_proxy(inner, root, [remote(up.url, ttl=HOUR)]))

        url, _, _ = await nursery.start(run_first)
        async with httpx.AsyncClient(base_url=url) as c:
            assert (await c.get(f"/v2/app/blobs/{d}")).status_code == 200
            assert (await c.get("/v2/app/manifests/1")).status_code == 200
        first.cancel()  # the proxy stops; its entries stay in storage
        blob_link = tmp_path / "proxy/docker/registry/v2/repositories/app/_layers/sha256" / d[7:]
        assert blob_link.exists()
        # Restarted two hours later: the entries it left are due and removed at start.
        _, _, cache = await start_proxy(nursery, root, [remote(up.url, ttl=HOUR)],
                                           clock=lambda: time.time() + 2 * HOUR)
        tag = tmp_path / "proxy/docker/registry/v2/repositories/app/_manifests/tags/1"
        # both go, and their entries (the test's deadline bounds the wait)
        while blob_link.exists() or tag.exists() or await cache.expiry.entries():
            await trio.sleep(0.05)
        assert digest(b"layer data") == d


async def test_beside_local_repositories_an_expired_blob_is_unlinked_and_its_data_left_to_gc(
        autojump_clock):
    """Prefixed remotes only: a local push may link the digest during the sweep, so the
    sweeper never deletes blob data there (the collector's protocol does it safely)."""
    st = Storage(MemoryDriver())
    expiry = Expiry(st, clock=lambda: BASE + trio.current_time(), lock_confirm=0,
                    delete_data=False)
    d = await _blob(st, "hub/library/alpine", b"cached layer")
    await expiry.add_blob("hub/library/alpine", d, HOUR)
    await trio.sleep(2 * HOUR)
    assert await expiry.sweep() == 1
    assert not await st.blobs.is_linked("hub/library/alpine", d)
    assert await st.blobs.size(d) is not None  # data kept: only the GC deletes it here


@pytest.mark.parametrize(("prefixes", "deletes"), [
    ([""], True),  # registry:3's proxy.remoteurl: a pure mirror, nobody pushes
    (["hub", ""], True),  # a catch-all beside a prefix: still every name proxied
    (["hub"], False),  # local repositories beside the remote: leave data to the GC
    (["hub", "ghcr"], False),
])
def test_blob_data_is_deleted_on_expiry_only_in_a_pure_mirror(prefixes, deletes) -> None:
    remotes = [RemoteConfig(prefix=p, remoteurl="http://127.0.0.1:9") for p in prefixes]
    cache = ProxyCache(Storage(MemoryDriver()), remotes)
    assert cache.expiry.delete_data is deletes
