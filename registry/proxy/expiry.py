"""The pull-through cache's ttl: every fetched manifest and blob expires, and is then removed
(registry:3's registry/proxy/scheduler, and what its proxyregistry.go does on expiry).

State, one empty storage key per entry and expiry (``paths.proxy_expiry_entry``: kind,
repository, digest, expiry in unix seconds): adding an entry is one write of its own key,
so several workers and replicas never lose each other's entries (no read-modify-write of
one file), and one listing reads the whole state (no read per entry: a mirror holds tens
of thousands). Fetching the same thing again adds a key with the later expiry, as
registry:3's ``add`` replaces the timer; the latest expiry of an entry is the one that
counts, and the sweeper deletes the older keys.

registry:3 keeps all entries in one file, ``/scheduler-state.json`` (a map of
``<name>@<digest>`` to ``{"Key", "ExpiryData", "EntryType"}``, 0 blob, 1 manifest). The
two coexist: at start every entry of that file without a key of ours is imported, and the
sweeper, after each change it made, writes the file again from our keys, so a registry:3
started on the same storage later finds every entry (and our re-import of it is a no-op).

Removal, by one worker or replica at a time (the storage's collection lock,
``storage/gc_lock.py``, which also keeps it apart from an online garbage collection):
- a manifest: its revision link and every tag on it (registry:3: ``manifests.Delete``);
- a blob: the repository's layer link, then, in a pure mirror (a catch-all remote: every
  name is proxied, nobody pushes), the blob's data when no other repository links it
  (registry:3 removes the data whatever links it; a blob another repository still uses
  must not vanish under it). Beside local repositories (prefixed remotes only) the data is
  left to the garbage collector: a local push or mount may link the same digest between
  the sweeper's link check and its delete, and only the collector's trash-settle-rescan
  protocol (storage/gc_online.py) closes that window, so an unlinked blob's space comes
  back at the next online (``gc.online``) or offline collection.
Due entries are listed again under the lock: one fetched again meanwhile has a later key
and stays. The file is rewritten at most every EXPORT_INTERVAL unless entries were removed.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import trio

from ..digest import Digest, DigestError
from ..drivers.base import DriverError, PathNotFound
from ..errors import RegistryError
from ..storage import paths
from ..storage.gc_lock import LockBusy, open_gc_lock
from ..storage.store import Storage
from ..storage.walk import enumerate_repositories

log = logging.getLogger("registry.proxy")

SWEEP_INTERVAL = 60.0  # seconds between looks for due entries (ttls are hours to days)
EXPORT_INTERVAL = 300.0  # seconds between rewrites of registry:3's file while entries are
# only added (it holds every entry: megabytes for a big mirror, not worth a write a minute)
LINK_CHECKS = 32  # repositories checked at once for a link to an expired blob
LOCK_CONFIRM = 2.0  # seconds: the collection lock's race check (gc_lock.LOCK_CONFIRM)
V3_TYPES = {0: "blob", 1: "manifest"}  # registry:3's entryTypeBlob, entryTypeManifest
_FRACTION = re.compile(r"(\.\d{6})\d+")  # Go writes nanoseconds; Python reads microseconds


@dataclass(frozen=True)
class Entry:
    kind: str  # blob | manifest
    name: str
    digest: Digest
    expires: float  # unix seconds (the latest of its keys)
    keys: tuple[str, ...] = ()  # its keys in storage, the latest last


def _go_time(value: str) -> float:
    """A Go time.Time as JSON writes it (RFC 3339, nanoseconds) -> unix seconds."""
    text = _FRACTION.sub(r"\1", value.strip()).replace("Z", "+00:00")
    return datetime.fromisoformat(text).timestamp()


def _go_text(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Expiry:
    """The entries and the sweeper (see the module doc). ``clock``: unix seconds."""

    def __init__(self, storage: Storage, *, clock: Callable[[], float] = time.time,
                 interval: float = SWEEP_INTERVAL, lock_confirm: float = LOCK_CONFIRM,
                 delete_data: bool = True) -> None:
        """``delete_data``: remove an expired blob's data when nothing else links it; only
        safe when no local push can link it meanwhile (see the module doc)."""
        self.storage = storage
        self.delete_data = delete_data
        self.driver = storage.driver
        self.clock = clock
        self.interval = interval
        self.lock_confirm = lock_confirm
        self._exported: bytes | None = None
        self._exported_at = -EXPORT_INTERVAL  # trio.current_time() of the last write
        self._repos: list[str] | None = None  # the repositories, listed once per sweep

    async def add_blob(self, name: str, d: Digest, ttl: float) -> None:
        await self._add("blob", name, d, ttl)

    async def add_manifest(self, name: str, d: Digest, ttl: float) -> None:
        await self._add("manifest", name, d, ttl)

    async def _add(self, kind: str, name: str, d: Digest, ttl: float,
                   expires: float | None = None) -> None:
        at = self.clock() + ttl if expires is None else expires
        key = paths.proxy_expiry_entry(kind, name, d, max(0, int(at)))
        try:
            await self.driver.put_content(key, b"", durable=False)
        except DriverError as e:  # the content stays cached; only its expiry is lost
            log.warning("proxy: could not record the expiry of %s %s@%s: %s", kind, name, d, e)

    async def entries(self) -> list[Entry]:
        """Every entry in storage (one listing), with the latest of its expiries."""
        try:
            keys = await self.driver.list(paths.PROXY_EXPIRY)
        except PathNotFound:
            return []
        found: dict[tuple[str, str, Digest], list[tuple[int, str]]] = {}
        for key in keys:
            parsed = paths.parse_proxy_expiry_entry(key)
            if parsed is not None:
                kind, name, d, expires = parsed
                found.setdefault((kind, name, d), []).append((expires, key))
        out = []
        for (kind, name, d), stamps in found.items():
            stamps.sort()
            out.append(Entry(kind, name, d, float(stamps[-1][0]), tuple(k for _, k in stamps)))
        return out

    async def import_v3(self) -> int:
        """Import registry:3's ``/scheduler-state.json`` entries we have no key for; how many."""
        try:
            doc = json.loads(await self.driver.get_content(paths.SCHEDULER_STATE))
        except PathNotFound:
            return 0
        except ValueError:
            log.warning("proxy: %s is not JSON; ignored", paths.SCHEDULER_STATE)
            return 0
        count = 0
        have = {(e.kind, e.name, e.digest) for e in await self.entries()}
        for item in (doc.values() if isinstance(doc, dict) else ()):
            try:
                name, _, digest = str(item["Key"]).partition("@")
                d = Digest.parse(digest)
                kind = V3_TYPES[int(item["EntryType"])]
                expires = _go_time(str(item["ExpiryData"]))
                paths.proxy_expiry_entry(kind, name, d, 0)  # a name we can keep
            except (KeyError, ValueError, TypeError, DigestError):
                log.warning("proxy: skipping an unreadable %s entry", paths.SCHEDULER_STATE)
                continue
            if (kind, name, d) not in have:
                await self._add(kind, name, d, 0.0, expires)
                count += 1
        return count

    def _v3_state(self, entries: list[Entry]) -> bytes:
        state: dict[str, Any] = {}
        for e in sorted(entries, key=lambda e: (e.name, str(e.digest), e.kind)):
            key = f"{e.name}@{e.digest}"
            state[key] = {"Key": key, "ExpiryData": _go_text(e.expires),
                          "EntryType": 0 if e.kind == "blob" else 1}
        return json.dumps(state).encode()

    async def serve(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Import registry:3's state, then sweep every ``interval`` seconds, forever."""
        try:
            imported = await self.import_v3()
            if imported:
                log.info("proxy: imported %d expiry entries from %s", imported,
                         paths.SCHEDULER_STATE)
        except DriverError as e:
            log.warning("proxy: could not read %s: %s", paths.SCHEDULER_STATE, e)
        task_status.started()
        while True:
            try:
                await self.sweep()
            except (DriverError, RegistryError) as e:
                log.warning("proxy: expiry sweep failed: %s", e)
            await trio.sleep(self.interval)

    async def sweep(self) -> int:
        """Remove what is due (under the collection lock; skipped while another process
        holds it) and mirror the state into registry:3's file; how many entries expired.

        The file is written from our keys whenever it would change. Without removals that
        needs no lock: it is a snapshot of the keys, never read back and modified, so two
        writers can only leave a snapshot the next sweep rewrites."""
        entries = await self.entries()
        now = self.clock()
        due = [e for e in entries if e.expires <= now]
        if not due:
            if trio.current_time() - self._exported_at >= EXPORT_INTERVAL:
                await self._export(entries)
            return 0
        try:
            async with open_gc_lock(self.driver, confirm=self.lock_confirm):
                removed = 0
                self._repos = None
                # Listed again under the lock: an entry fetched again meanwhile has a later
                # key now, and stays.
                now = self.clock()
                for e in await self.entries():
                    if e.expires <= now:
                        await self._remove(e)
                        removed += 1
                    elif len(e.keys) > 1:
                        await self._delete_keys(e.keys[:-1])  # superseded expiries
                await self._export(await self.entries())
                return removed
        except LockBusy:
            return 0

    async def _export(self, entries: list[Entry]) -> None:
        state = self._v3_state(entries)
        if state != self._exported:
            await self.driver.put_content(paths.SCHEDULER_STATE, state)
            self._exported = state
            self._exported_at = trio.current_time()

    async def _remove(self, e: Entry) -> None:
        st = self.storage
        log.info("proxy: %s %s@%s expired; removing it", e.kind, e.name, e.digest)
        if e.kind == "manifest":
            if await st.blobs.has_revision(e.name, e.digest):
                await st.manifests.delete(e.name, e.digest)
        else:
            try:
                await st.blobs.unlink(e.name, e.digest)
            except RegistryError:
                pass  # not linked any more
            if self.delete_data and not await self._linked_elsewhere(e.digest):
                try:
                    await self.driver.delete(paths.blob_dir(e.digest))
                except PathNotFound:
                    pass
        await self._delete_keys(e.keys)

    async def _delete_keys(self, keys: tuple[str, ...]) -> None:
        for key in keys:
            try:
                await self.driver.delete(key)
            except PathNotFound:
                pass

    async def _linked_elsewhere(self, d: Digest) -> bool:
        """Does any repository link blob ``d`` (as a layer or a manifest revision)? The
        repositories are listed once per sweep, checked LINK_CHECKS at a time."""
        if self._repos is None:
            self._repos = await enumerate_repositories(self.driver)
        found = False
        limiter = trio.CapacityLimiter(LINK_CHECKS)

        async def check(repo: str, cancel: trio.CancelScope) -> None:
            nonlocal found
            async with limiter:
                if await self.storage.blobs.is_linked(repo, d):
                    found = True
                    cancel.cancel()

        async with trio.open_nursery() as nursery:
            for repo in self._repos:
                nursery.start_soon(check, repo, nursery.cancel_scope)
        return found
