"""Blob upload sessions: the push state machine (SPEC.md Push 9-16).

A session is ``_uploads/<uuid>/`` in storage (``startedat`` + ``data``), never process
memory, so a restart or another replica continues it. Every byte is hashed once, as it
arrives: each process keeps the live sha256 of its sessions, and each append also saves
the hash state at ``hashstates/sha256/<size>`` (the reference's format and place, see
sha256state), so another worker or replica resumes it, and so do we the reference's. Only
without a usable state (none saved at that size, libcrypto without the functions, a
sha512 digest) does ``finish`` re-hash the stored data before trusting it.

States: started (size 0) -> receiving (size n, any number of appends) -> finished (blob
verified, moved to its content address, linked into the repo, session removed) or
cancelled (session removed). A digest mismatch cancels the session, as the reference does.

One writer at a time: every append, finish and cancel holds the session's writer lease
(upload_lease: in storage, so it spans workers and replicas; this process's trio.Lock
answers first, without a storage call). A second request on a session being written gets
RANGE_INVALID (416, BLOB_UPLOAD_INVALID on the wire) with the current ``Range``, as the
reference's offset check answers, instead of appending beside the first.

Publishing checks that the bytes it moves are the bytes it hashed: the stored size must
equal the hashed length (and a loaded hash state's offset its own); otherwise the stored
data is re-hashed and published only if that matches the digest (issue 12: mixed bytes
under a digest they do not have would poison every repository, blobs being global).

Cancellation: a client that disconnects mid-append leaves the session at a consistent size
(the bytes the driver persisted) and nothing visible; ``finish`` runs its publishing steps
(move, link, cleanup) shielded, so a blob is either fully published or not at all.

Size: one module past ~400 lines on purpose: it is the one upload state machine (start,
append, finish, cancel and their races); the lease and the hash state format live apart
(upload_lease.py, sha256state.py).
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Union

import trio

from ..digest import Digest
from ..drivers.base import Driver, DriverError, FileWriter, PathNotFound, StorageFull
from ..errors import ErrorCode, RegistryError
from . import paths, sha256state
from .blobs import BlobStore
from .upload_lease import Lease, LeasedWriter, SessionBusy, open_lease

log = logging.getLogger("registry.storage")

COALESCE = 512 * 1024  # hash+write unit for small pieces; 2 buffers per upload (DESIGN.md
# says ~1 MiB: half that measured as fast here and keeps 64 concurrent pushes inside the
# memory budget)
DIRECT_MIN = COALESCE * 3 // 4  # a piece this big is hashed and written as it is, not
# copied. Smaller ones are copied: a thread hop per 256 KiB piece cost more CPU than copying
# it into a 512 KiB unit (1.44 vs 1.20 CPU-s/GB, bench/upload_profile.py). The HTTP/1.1
# server's body pieces are 496-512 KiB (http/h1server.py PIECE, PIECE_SLACK): all direct.
HASHER_CACHE_ENTRIES = 4096  # live hashers kept per process (~200 bytes each)
PUBLISH_TIMEOUT = 300.0  # seconds a shielded move+link may take (a multi-GB S3 copy)
ABANDON_TIMEOUT = 120.0  # seconds removing a failed single-request upload may take (S3 abort)


Hasher = Union["hashlib._Hash", sha256state.Sha256]  # hashlib._Hash exists for typing only


def new_sha256() -> Hasher:
    """A sha256 whose state can be saved (sha256state), or hashlib's if it cannot."""
    return sha256state.Sha256() if sha256state.available() else hashlib.sha256()


@dataclass(frozen=True)
class Upload:
    name: str
    id: str
    size: int


def new_upload_id() -> str:
    return str(uuid.uuid4())


class Uploads:
    def __init__(self, driver: Driver, blobs: BlobStore) -> None:
        self.driver = driver
        self.blobs = blobs
        self._hashers: OrderedDict[tuple[str, str], tuple[int, Hasher]] = OrderedDict()
        self._locks: dict[tuple[str, str], trio.Lock] = {}

    # --- per-process helpers -------------------------------------------------------------

    async def _take_hasher(self, name: str, upload_id: str, offset: int) -> Hasher | None:
        """The session's sha256 after ``offset`` bytes: this process's own, else the state
        saved in storage at that offset; None if neither (the caller re-hashes)."""
        entry = self._hashers.pop((name, upload_id), None)
        if entry is not None and entry[0] == offset:
            return entry[1]
        if offset == 0:
            return new_sha256()
        if not sha256state.available():
            return None
        try:
            state = await self.driver.get_content(
                paths.upload_hashstate(name, upload_id, "sha256", offset)
            )
            h = sha256state.Sha256.unmarshal(state)
        except PathNotFound:
            return None
        except (sha256state.InvalidState, DriverError) as e:
            log.warning("upload %s: hash state at %d unusable (%s); re-hashing", upload_id, offset, e)
            return None
        return h if h.length == offset else None

    async def _save_hasher(self, name: str, upload_id: str, offset: int, h: Hasher) -> None:
        """Keep ``h`` for this process and save its state for any other (best effort: a
        missing state only costs a re-hash)."""
        self._hashers[(name, upload_id)] = (offset, h)
        while len(self._hashers) > HASHER_CACHE_ENTRIES:
            self._hashers.popitem(last=False)
        if not isinstance(h, sha256state.Sha256):
            return
        # Not durable: a state lost in a crash costs a re-hash, and an fsync per PATCH cost
        # chunked pushes ~10% of their throughput on the filesystem.
        key = paths.upload_hashstate(name, upload_id, "sha256", offset)
        try:
            await self.driver.put_content(key, h.marshal(), durable=False)
        except DriverError as e:
            log.warning("upload %s: could not save hash state at %d: %s", upload_id, offset, e)

    @asynccontextmanager
    async def _writing(self, name: str, upload_id: str) -> AsyncIterator[Lease]:
        """Be the session's one writer for the body: this process's lock (no storage call
        when another task here has it), then the storage lease (other workers/replicas).
        Raises BLOB_UPLOAD_UNKNOWN for no such session, RANGE_INVALID (416) with the
        current Range while another request writes it."""
        try:
            paths.upload_dir(name, upload_id)
        except ValueError:
            raise RegistryError(ErrorCode.BLOB_UPLOAD_UNKNOWN) from None
        key = (name, upload_id)
        lock = self._locks.setdefault(key, trio.Lock())
        try:
            lock.acquire_nowait()
        except trio.WouldBlock:
            raise await self._busy(name, upload_id) from None
        try:
            try:
                async with open_lease(self.driver, name, upload_id) as lease:
                    await self._check_after_lease(name, upload_id, lease)
                    yield lease
            except SessionBusy:
                raise await self._busy(name, upload_id) from None
            except PathNotFound:  # its directory vanished as we took the lease: removed
                await self._check(name, upload_id)
                raise
        finally:
            lock.release()
            if lock.statistics().tasks_waiting == 0:
                self._locks.pop(key, None)

    async def _check_after_lease(self, name: str, upload_id: str, lease: Lease) -> None:
        """The session still exists now that we hold its lease (it may have been finished
        or cancelled just before): else remove what taking the lease created, and 404."""
        try:
            await self._check(name, upload_id)
        except RegistryError:
            lease.gone = True
            await self._remove(name, upload_id)  # only our lease is there: no startedat
            raise

    async def _busy(self, name: str, upload_id: str) -> RegistryError:
        """The 416 for a session another request is writing (or its 404 if it is gone)."""
        try:
            size = (await self.status(name, upload_id)).size
        except RegistryError as e:
            return e
        return RegistryError(
            ErrorCode.RANGE_INVALID,
            "another request is writing this upload",
            headers={"Range": f"0-{size - 1}" if size else "0-0"},
        )

    # --- the state machine ---------------------------------------------------------------

    async def start(self, name: str) -> Upload:
        upload_id = new_upload_id()
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ").encode()
        await self.driver.put_content(paths.upload_startedat(name, upload_id), stamp)
        return Upload(name, upload_id, 0)

    async def upload_whole(
        self, name: str, digest: Digest, body: AsyncIterator[bytes] | None
    ) -> None:
        """A blob in one request (``POST ?digest=``, SPEC Push 10): a session of its own,
        finished at once. The client never learns the session's id, so nobody could resume
        or cancel it: whatever ends the request early (a full disk, a disconnect, a wrong
        digest) removes it here, shielded, instead of leaving it for the purger's 7 days.
        Raises what ``finish`` raises."""
        up = await self.start(name)
        try:
            await self.finish(name, up.id, digest, body)
        except BaseException:
            with trio.move_on_after(ABANDON_TIMEOUT) as cs:
                cs.shield = True
                try:
                    await self.cancel(name, up.id)
                except RegistryError:
                    pass  # already removed (finish rejects a wrong digest by cancelling)
                except DriverError as e:
                    log.warning("upload %s: could not remove it: %s", up.id, e)
            raise

    async def _check(self, name: str, upload_id: str) -> None:
        try:
            paths.upload_dir(name, upload_id)
        except ValueError:
            raise RegistryError(ErrorCode.BLOB_UPLOAD_UNKNOWN) from None
        try:
            await self.driver.stat(paths.upload_startedat(name, upload_id))
        except PathNotFound:
            raise RegistryError(
                ErrorCode.BLOB_UPLOAD_UNKNOWN, detail={"uuid": upload_id}
            ) from None

    async def status(self, name: str, upload_id: str) -> Upload:
        """Current size of a session; BLOB_UPLOAD_UNKNOWN if there is none."""
        await self._check(name, upload_id)
        try:
            size = (await self.driver.stat(paths.upload_data(name, upload_id))).size
        except PathNotFound:
            size = 0
        return Upload(name, upload_id, size)

    async def append(
        self,
        name: str,
        upload_id: str,
        body: AsyncIterator[bytes],
        *,
        start: int | None = None,
    ) -> Upload:
        """Append a request body. ``start`` (from Content-Range) must equal the current size,
        else RANGE_INVALID (416) with the current ``Range``. Returns the new size."""
        async with self._writing(name, upload_id) as lease:
            async with self.driver.writer(paths.upload_data(name, upload_id), append=True) as w:
                self._check_start(w, start)
                opened = w.size
                h = await self._take_hasher(name, upload_id, opened)
                pumped = await _pump(body, LeasedWriter(w, lease), h)
                size = w.size
            if h is not None and size == opened + pumped:  # once the writer stored the bytes
                lease.check()
                await self._save_hasher(name, upload_id, size, h)
            return Upload(name, upload_id, size)

    @staticmethod
    def _check_start(w: FileWriter, start: int | None) -> None:
        if start is not None and start != w.size:
            raise RegistryError(
                ErrorCode.RANGE_INVALID,
                f"chunk starts at {start}, upload is at {w.size}",
                headers={"Range": f"0-{w.size - 1}" if w.size else "0-0"},
            )

    async def finish(
        self,
        name: str,
        upload_id: str,
        digest: Digest,
        body: AsyncIterator[bytes] | None,
        *,
        start: int | None = None,
    ) -> int:
        """Append the last body (if any), verify ``digest``, publish the blob, link it into
        the repo and remove the session. DIGEST_INVALID (session cancelled) on mismatch."""
        data_path = paths.upload_data(name, upload_id)
        async with self._writing(name, upload_id) as lease:
            if await self._can_write_direct(data_path, digest, body, start):
                assert body is not None
                return await self._finish_direct(name, upload_id, digest, body, lease)
            async with self.driver.writer(data_path, append=True) as w:
                self._check_start(w, start)
                opened = w.size
                h = None
                if digest.algorithm == "sha256":
                    h = await self._take_hasher(name, upload_id, opened)
                pumped = 0
                if body is not None:
                    pumped = await _pump(body, LeasedWriter(w, lease), h)
                lease.check()
                await w.commit()
            h, size = await self._verified(upload_id, data_path, digest, h, opened + pumped)
            if h.hexdigest() != digest.hex:
                lease.gone = True
                raise await self._reject(name, upload_id, digest)
            lease.check()
            await self._publish(name, upload_id, digest, data_path)
            lease.gone = True
            return size

    async def _verified(
        self, upload_id: str, data_path: str, digest: Digest, h: Hasher | None, hashed: int
    ) -> tuple[Hasher, int]:
        """The hash of exactly the stored data and its size: ``h`` (which hashed ``hashed``
        bytes) if the committed data has that size, else a re-hash of what storage holds."""
        stored = (await self.driver.stat(data_path)).size
        if h is not None and stored == hashed and getattr(h, "length", hashed) == hashed:
            return h, stored
        if h is not None:
            log.warning(
                "upload %s: %d bytes stored but %d hashed; re-hashing the stored data",
                upload_id, stored, hashed,
            )
        return await self._rehash(data_path, digest.algorithm)

    async def _can_write_direct(
        self, data_path: str, digest: Digest, body: AsyncIterator[bytes] | None, start: int | None
    ) -> bool:
        """A whole blob in this one request (the session holds no bytes yet), on a driver
        that hides a writer's bytes until commit, and not stored already."""
        if body is None or not self.driver.hidden_until_commit or start not in (None, 0):
            return False
        if digest.algorithm != "sha256":
            return False
        try:
            if (await self.driver.stat(data_path)).size:
                return False
        except PathNotFound:
            pass
        return await self.blobs.size(digest) is None

    async def _finish_direct(
        self, name: str, upload_id: str, digest: Digest, body: AsyncIterator[bytes], lease: Lease
    ) -> int:
        """Write the body at the blob's own path and commit it only once its digest is
        verified: no server-side copy afterwards (a 512 MiB copy is most of a push on
        some S3 servers). Anything but a verified commit aborts the write, so nothing
        half-written becomes visible and no multipart upload or state is left behind."""
        h = hashlib.sha256()
        async with self.driver.writer(paths.blob_data(digest)) as w:
            try:
                pumped = await _pump(body, LeasedWriter(w, lease), h)
                size = w.size
                # This writer is private (a fresh multipart upload at the blob's key that no
                # other request can address), so what it commits is what it was given: the
                # bytes hashed, if their count is the writer's size.
                verified = h.hexdigest() == digest.hex and size == pumped
                if verified:
                    await w.commit()
            except BaseException:
                await _abandon(w)
                raise
            if not verified:
                await _abandon(w)
                lease.gone = True
                raise await self._reject(name, upload_id, digest)
        await self._publish(name, upload_id, digest, None)
        lease.gone = True
        return size

    async def _publish(
        self, name: str, upload_id: str, digest: Digest, data_path: str | None
    ) -> None:
        """Shielded, at most PUBLISH_TIMEOUT (else UNAVAILABLE): move the verified session
        bytes at ``data_path`` to the blob's address unless it holds them already (None:
        they were written there), link the blob into the repo, remove the session."""
        with trio.move_on_after(PUBLISH_TIMEOUT) as cs:
            cs.shield = True
            if data_path is not None and await self.blobs.size(digest) is None:
                await self.driver.move(data_path, paths.blob_data(digest))
            await self.blobs.link(name, digest)
            await self._remove(name, upload_id)
        if cs.cancelled_caught:
            step = "linking" if data_path is None else "publishing"
            raise RegistryError(ErrorCode.UNAVAILABLE, f"storage too slow {step} blob")

    async def _reject(self, name: str, upload_id: str, digest: Digest) -> RegistryError:
        """A digest mismatch cancels the session (as the reference does): remove it and
        return the DIGEST_INVALID to raise."""
        await self._remove(name, upload_id)
        return RegistryError(ErrorCode.DIGEST_INVALID, detail={"digest": str(digest)})

    async def _rehash(self, path: str, algorithm: str) -> tuple[Hasher, int]:
        """The hash of the bytes at ``path`` and how many there were."""
        h = hashlib.new(algorithm)
        n = 0
        async with self.driver.reader(path) as chunks:
            async for chunk in chunks:
                await trio.to_thread.run_sync(h.update, chunk)
                n += len(chunk)
        return h, n

    async def _remove(self, name: str, upload_id: str) -> None:
        """Remove the session (shielded, bounded). ``startedat`` goes first: from then on
        the session is gone for everyone, and a request that takes the lease meanwhile
        (creating it inside the directory being removed) removes the directory itself
        (_check_after_lease), so a failure to remove it here is only logged."""
        self._hashers.pop((name, upload_id), None)
        with trio.move_on_after(30) as cs:
            cs.shield = True
            for path in (paths.upload_startedat(name, upload_id), paths.upload_dir(name, upload_id)):
                for _ in range(3):
                    try:
                        await self.driver.delete(path)
                        break
                    except PathNotFound:
                        break
                    # e.g. a filesystem directory that gained a file while removed
                    # (ENOTEMPTY, a StorageIOError from the driver): try again.
                    except DriverError as e:
                        log.warning("upload %s: could not remove %s: %s", upload_id, path, e)

    async def cancel(self, name: str, upload_id: str) -> None:
        """Remove a session and its data; BLOB_UPLOAD_UNKNOWN if there is none.

        On a full storage, where even the lease cannot be written, the session is removed
        without it: the full storage refuses a concurrent writer's bytes too, so nothing can
        be mixed, and removing sessions (DELETE, the purger) is how space comes back.
        """
        leased = False
        try:
            async with self._writing(name, upload_id) as lease:
                leased = True
                await self._discard(name, upload_id)
                lease.gone = True
                await self._remove(name, upload_id)
        except StorageFull:
            if leased:
                raise
            await self._check(name, upload_id)
            log.warning("upload %s: storage full; removing it without its lease", upload_id)
            await self._discard(name, upload_id)
            await self._remove(name, upload_id)

    async def _discard(self, name: str, upload_id: str) -> None:
        async with self.driver.writer(paths.upload_data(name, upload_id), append=True) as w:
            await w.cancel()  # aborts backend state (an S3 multipart upload)

    async def mount(self, name: str, digest: Digest, from_name: str) -> bool:
        """Link ``digest`` from ``from_name`` into ``name`` if it is there (SPEC Push 16)."""
        if not await self.blobs.is_linked(from_name, digest):
            return False
        if await self.blobs.size(digest) is None:
            return False
        await self.blobs.link(name, digest)
        return True

    async def list_sessions(self, name: str) -> list[tuple[str, float | None]]:
        """(upload id, started-at epoch seconds) of every session in repo ``name``: None
        when the directory has no ``startedat``, now when it is unreadable (or the name is
        not an upload id), so that such a session never looks old."""
        out: list[tuple[str, float | None]] = []
        try:
            children = await self.driver.list(paths.uploads_dir(name))
        except PathNotFound:
            return []
        for child in children:
            upload_id = child.rsplit("/", 1)[1]
            try:
                raw = await self.driver.get_content(paths.upload_startedat(name, upload_id))
                started = datetime.strptime(raw.decode().strip(), "%Y-%m-%dT%H:%M:%SZ")
                out.append((upload_id, started.replace(tzinfo=UTC).timestamp()))
            except PathNotFound:
                out.append((upload_id, None))
            except (ValueError, UnicodeDecodeError):
                out.append((upload_id, time.time()))
        return out


async def _abandon(w: FileWriter) -> None:
    """Cancel a writer (shielded); a failure to clean up is logged, not raised over the
    error that got us here."""
    with trio.CancelScope(shield=True):
        try:
            await w.cancel()
        except DriverError as exc:
            log.warning("could not abandon a blob write: %s", exc)


async def _pump(body: AsyncIterator[bytes], w: FileWriter, h: Hasher | None) -> int:
    """Stream ``body`` into ``w``, hashing every byte into ``h`` in the same driver call
    that writes it (one worker-thread hop per unit on the filesystem) while the next piece
    is received. Returns the number of bytes written (each of them hashed into ``h``).

    A piece of at least DIRECT_MIN bytes is written as it is: no copy. Smaller pieces are
    gathered into one of two COALESCE buffers (double buffering: one fills while the
    other is written), made only when a second small piece arrives, so a small body of one
    piece costs neither a buffer nor a copy. Memory per upload is therefore bounded
    whatever the body size: two buffers plus the piece being written and the one
    received meanwhile. The rendezvous channel guarantees a buffer is refilled only after
    the consumer finished with it; ``w.write`` must not keep a reference to the view it is
    given (drivers copy what they buffer). Pieces are bytes (ASGI), never reused.
    """
    send, recv = trio.open_memory_channel[bytes | memoryview](0)

    async def consume() -> None:
        async with recv:
            async for unit in recv:
                await w.write(unit, h)

    buffers: list[bytearray] = []
    current = 0
    filled = 0  # bytes in buffers[current]
    pending: bytes | None = None  # one small piece not copied yet
    total = 0

    async def flush() -> None:
        nonlocal pending, filled, current
        if pending is not None:
            unit, pending = pending, None
            await send.send(unit)
        elif filled:
            unit_view, filled = memoryview(buffers[current])[:filled], 0
            current ^= 1
            await send.send(unit_view)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        async with send, aclosing(body) as pieces:  # type: ignore[type-var]
            async for piece in pieces:
                n = len(piece)
                total += n
                if n >= DIRECT_MIN:
                    await flush()  # what came before goes first
                    await send.send(piece)
                    continue
                if not n:
                    continue
                if pending is None and not filled:
                    pending = piece
                    continue
                if not buffers:
                    buffers = [bytearray(COALESCE), bytearray(COALESCE)]
                if pending is not None:
                    first, pending = pending, None
                    buffers[current][:len(first)] = first
                    filled = len(first)
                view = memoryview(piece)
                while view:
                    take = min(len(view), COALESCE - filled)
                    buffers[current][filled : filled + take] = view[:take]
                    filled += take
                    view = view[take:]
                    if filled == COALESCE:
                        await flush()
            await flush()
    return total
