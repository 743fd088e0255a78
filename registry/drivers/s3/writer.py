"""Upload data as one S3 multipart upload that survives across requests and replicas.

R2 rules (SPEC.md, Cloudflare R2): every part but the last has the same size, the last is
no larger, 5 MiB <= part <= 5 GiB, at most 10,000 parts; a violation only shows at
CompleteMultipartUpload. So one upload has ONE part size, fixed when it starts, and a
short part is only ever sent as the final one, by ``commit()``.

Between requests (the writer context exits without commit), the writer persists its state
in ONE object next to the data key, ``<key>.s3part``, written atomically by PutObject::

    b"S3PART1\\n" + JSON header + b"\\n" + tail bytes
    header = {"upload_id": str|null, "part_size": int, "parts": [etag of part 1, 2, ...],
              "size": int}

``parts`` are the completed parts 1..k (each exactly part_size); the tail holds the bytes
after them (``size - k*part_size``, usually less than one part). The object also carries
``x-amz-meta-size`` and ``x-amz-meta-upload-id`` so ``stat`` and ``delete`` need a HEAD,
not a download. Whoever opens the path with ``append=True`` -- this process or another
replica -- loads it and continues. Parts uploaded by a writer that never persisted are
simply overwritten (same part number) by the next one: the persisted ETag list is the
only truth, so a crash at any point leaves a consistent state.

Known cost: every request that ends without commit rewrites ``<key>.s3part`` with the
whole tail (up to one part). A client that sends many small chunked PATCHes therefore
re-uploads up to ``part_size`` per PATCH, and on R2 (one write per second per key) such
PATCHes are paced to about one per second by 429 retries. Docker and containerd push a
layer in one PATCH, so they write the state once.

Concurrency: full parts upload in the background, in the nursery owned by the writer's
context, at most ``parallel`` at a time (a CapacityLimiter taken by ``write``: a full
window makes ``write`` wait), and at most ``shared_slots`` across all writers of a driver.
Memory per writer is bounded by about ``part_size * (parallel + 2)``, and per process by
``part_size * (writers + shared slots)``.

Size: past ~400 lines on purpose: the writer is one state machine (parts in flight, the
carried tail, the persisted state) whose invariants must be read together.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

import trio

from registry.drivers import base
from registry.drivers.s3 import errors
from registry.drivers.s3.api import ObjectInfo, S3Api

log = logging.getLogger("registry.drivers.s3")

MiB = 1024 * 1024
MIN_PART_SIZE = 5 * MiB  # S3 and R2 minimum for every part but the last
MAX_PART_SIZE = 5 * 1024 * MiB
MAX_PARTS = 10_000  # S3 and R2 limit per multipart upload
STATE_SUFFIX = ".s3part"  # the state object sits next to the data key
STATE_MAGIC = b"S3PART1\n"
CLEANUP_TIMEOUT = 60.0  # s, shielded persist/abort work when a writer closes or is cancelled


class CorruptState(base.DriverError):
    pass


@dataclass
class PartState:
    """What ``<key>.s3part`` holds."""

    upload_id: str | None
    part_size: int
    parts: list[str] = field(default_factory=list)  # etags of parts 1..k
    tail: bytes = b""

    @property
    def size(self) -> int:
        return len(self.parts) * self.part_size + len(self.tail)

    def encode(self) -> bytes:
        header = {
            "upload_id": self.upload_id,
            "part_size": self.part_size,
            "parts": self.parts,
            "size": self.size,
        }
        return STATE_MAGIC + json.dumps(header, separators=(",", ":")).encode() + b"\n" + self.tail

    def metadata(self) -> dict[str, str]:
        meta = {"size": str(self.size)}
        if self.upload_id:
            meta["upload-id"] = self.upload_id
        return meta

    @classmethod
    def decode(cls, blob: bytes) -> PartState:
        if not blob.startswith(STATE_MAGIC):
            raise CorruptState("multipart state object has an unknown format")
        header_end = blob.index(b"\n", len(STATE_MAGIC))
        try:
            header = json.loads(blob[len(STATE_MAGIC) : header_end])
            state = cls(
                upload_id=header["upload_id"],
                part_size=int(header["part_size"]),
                parts=[str(etag) for etag in header["parts"]],
                tail=blob[header_end + 1 :],
            )
            declared = int(header["size"])
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptState(f"multipart state object is corrupt: {exc}") from None
        if declared != state.size or (state.parts and not state.upload_id):
            raise CorruptState("multipart state object is inconsistent")
        return state


def state_key(key: str) -> str:
    return key + STATE_SUFFIX


def state_size(info: ObjectInfo) -> int:
    """The upload size a state object's metadata declares (see PartState.metadata)."""
    return int(info.metadata.get("size", "0"))


async def read_state(api: S3Api, key: str) -> PartState | None:
    try:
        blob = await api.get_object(state_key(key))
    except errors.NoSuchKey:
        return None
    return PartState.decode(blob)


class S3Writer:
    """A :class:`~registry.drivers.base.FileWriter` over one multipart upload.

    Built by :meth:`open`; background part uploads run in ``nursery`` (set by the driver's
    context before the first write); :meth:`close` persists or rolls back when the context
    exits without ``commit()``/``cancel()``.
    """

    def __init__(
        self,
        api: S3Api,
        key: str,
        part_size: int,
        parallel: int,
        shared_slots: trio.CapacityLimiter | None = None,
    ) -> None:
        self._api = api
        self._key = key
        self._part_size = part_size
        self._limiter = trio.CapacityLimiter(max(1, parallel))
        # Parts in flight across every writer of the driver: with many uploads at once,
        # parts wait here (bounded memory) instead of in the connection pool (timeouts).
        self._shared = shared_slots
        # The shared slot held for the part being filled in _buffer (None: not yet taken).
        # Buffering a part counts against the driver's budget, not just uploading it, so
        # 16 clients pushing at once hold at most `shared slots` parts in memory.
        self._slot: object | None = None
        self._nursery: trio.Nursery | None = None
        self._upload_id: str | None = None
        self._created_upload = False  # this writer started the multipart upload
        self._done: dict[int, str] = {}  # part number -> etag
        self._in_flight: dict[int, bytes | bytearray] = {}  # part number -> bytes, until uploaded
        self._scopes: dict[int, trio.CancelScope] = {}
        self._next_part = 1
        self._buffer = bytearray()
        self._size = 0
        self._persisted: PartState | None = None  # the state object as we last saw it
        self._dirty = False
        self._failure: BaseException | None = None
        self._running = 0
        self._idle = trio.Event()
        self._idle.set()
        self._finished = False  # committed or cancelled

    # -- opening -----------------------------------------------------------------------------

    async def open(self, append: bool) -> None:
        """Load the persisted state (append) or drop any earlier uncommitted one."""
        if not append:
            await self._drop_previous()
            self._dirty = True  # an empty writer still persists (stat then says 0)
            return
        state = await read_state(self._api, self._key)
        if state is None:
            await self._adopt_committed_object()
            return
        self._persisted = state
        self._part_size = state.part_size
        self._upload_id = state.upload_id
        self._done = {n + 1: etag for n, etag in enumerate(state.parts)}
        self._next_part = len(state.parts) + 1
        self._buffer = bytearray(state.tail)
        self._size = state.size

    async def _drop_previous(self) -> None:
        try:
            info = await self._api.head_object(state_key(self._key))
        except errors.NoSuchKey:
            return
        upload_id = info.metadata.get("upload-id")
        if upload_id:
            await self._api.abort_multipart(self._key, upload_id)
        await self._api.delete_object(state_key(self._key))
        self._persisted = None

    async def _adopt_committed_object(self) -> None:
        """append=True on a committed object: continue after its bytes, server-side."""
        try:
            info = await self._api.head_object(self._key)
        except errors.NoSuchKey:
            self._dirty = True
            return
        full_parts = info.size // self._part_size
        if full_parts:
            self._upload_id = await self._api.create_multipart(self._key)
            self._created_upload = True
            for n in range(1, full_parts + 1):
                first = (n - 1) * self._part_size
                self._done[n] = await self._api.upload_part_copy(
                    self._key, self._upload_id, n, self._key, first, first + self._part_size - 1
                )
            self._next_part = full_parts + 1
        rest_from = full_parts * self._part_size
        if rest_from < info.size:  # less than one part: read it back (retried, bounded)
            response = await self._api.client.request(
                "GET",
                self._key,
                headers={"range": f"bytes={rest_from}-{info.size - 1}"},
                ok=(206,),
            )
            self._buffer = bytearray(response.body)
        self._size = info.size
        self._dirty = True

    def attach(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    # -- FileWriter --------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return self._size

    def _check_usable(self) -> None:
        if self._finished:
            raise base.InvalidPath("writer already committed or cancelled")
        if self._failure is not None:
            raise self._as_driver_error(self._failure)

    @staticmethod
    def _as_driver_error(exc: BaseException) -> base.DriverError:
        if isinstance(exc, base.Unavailable):
            return exc
        error = base.Unavailable(f"S3 part upload failed: {exc}")
        error.__cause__ = exc
        return error

    async def write(
        self, data: bytes | bytearray | memoryview, hasher: base.Hasher | None = None
    ) -> None:
        """Accept bytes (copied: the caller may reuse ``data``); full parts go to S3 in the
        background (may wait for a free slot). ``hasher`` is fed ``data`` first, in a
        worker thread: parts already in flight keep uploading meanwhile, so when S3 is the
        bottleneck the hashing is hidden behind it (and no nursery wraps our errors)."""
        self._check_usable()
        if hasher is not None:
            await trio.to_thread.run_sync(hasher.update, data)
        view = memoryview(data).cast("B")  # bytes, whatever the view's item size
        while view:
            if self._slot is None and self._shared is not None:
                token = object()
                await self._shared.acquire_on_behalf_of(token)
                self._slot = token
            room = max(0, self._part_size - len(self._buffer))
            take = view[:room]
            self._buffer += take
            view = view[len(take) :]
            self._size += len(take)
            self._dirty = True
            while len(self._buffer) >= self._part_size:
                await self._submit()

    def _cut_part(self) -> bytes | bytearray:
        """Remove the next part (at most one part size) from the buffer and return it.

        A buffer holding at most one part is handed over as it is (the usual case: write
        fills up to the part size; the final part), so a part never exists twice in
        memory; the upload owns it from then on and nothing writes to it again. A longer
        buffer (a resumed tail) is cut with one copy.
        """
        if len(self._buffer) <= self._part_size:
            part, self._buffer = self._buffer, bytearray()
            return part
        with memoryview(self._buffer) as buffered:
            cut = bytes(buffered[: self._part_size])
        del self._buffer[: self._part_size]
        return cut

    def _release_slot(self) -> None:
        if self._slot is not None and self._shared is not None:
            self._shared.release_on_behalf_of(self._slot)
        self._slot = None

    async def _submit(self) -> None:
        """Upload the next part of the buffer in the background, once a slot is free."""
        if self._nursery is None:
            raise RuntimeError("S3Writer used outside its driver context")
        number = self._next_part
        if number > MAX_PARTS:
            raise base.DriverError(
                f"upload exceeds {MAX_PARTS} parts of {self._part_size} bytes; "
                "raise storage.s3.chunksize"
            )
        if self._upload_id is None:
            self._upload_id = await self._api.create_multipart(self._key)
            self._created_upload = True
        await self._limiter.acquire_on_behalf_of(number)
        token: object | None = None
        if self._shared is not None:
            if self._slot is not None:  # the slot that held this part while it filled
                token, self._slot = self._slot, None
            else:
                token = object()
                try:
                    await self._shared.acquire_on_behalf_of(token)
                except BaseException:
                    self._limiter.release_on_behalf_of(number)
                    raise
        # The part leaves the buffer only now, after every wait, with no checkpoint until
        # it is in _in_flight: a cancelled write or commit leaves it in one place, never
        # in both or neither (and a writer waiting for a slot holds no extra copy).
        part = self._cut_part()
        self._next_part += 1
        self._in_flight[number] = part
        self._running += 1
        self._idle = trio.Event()
        scope = self._scopes[number] = trio.CancelScope()
        self._nursery.start_soon(self._upload_part, number, part, self._upload_id, scope, token)

    async def _upload_part(
        self,
        number: int,
        part: bytes | bytearray,
        upload_id: str,
        scope: trio.CancelScope,
        token: object | None = None,
    ) -> None:
        try:
            with scope:
                etag = await self._api.upload_part(self._key, upload_id, number, part)
                self._done[number] = etag
                del self._in_flight[number]
        except Exception as exc:  # noqa: BLE001 -- recorded, raised by the next write/commit
            if self._failure is None:
                self._failure = exc
                log.warning("S3 part %d of %s failed: %s", number, self._key, exc)
        finally:
            self._scopes.pop(number, None)
            self._limiter.release_on_behalf_of(number)
            if self._shared is not None and token is not None:
                self._shared.release_on_behalf_of(token)
            self._running -= 1
            if self._running == 0:
                self._idle.set()

    async def _wait_parts(self) -> None:
        while self._running:
            await self._idle.wait()

    async def commit(self) -> None:
        """Make the whole content readable at the key.

        Small content (no part ever filled) is one PutObject; otherwise the remainder is
        the final part and CompleteMultipartUpload lists every part in order. On failure
        it raises (Unavailable, ...) after aborting the upload and removing its state, as
        ``cancel()`` would: a failed commit never leaves a multipart upload open.
        """
        if self._finished:
            return
        try:
            await self._commit()
        except base.DriverError:
            # A failed commit kills the upload (issue 4): abort it, drop the state, so no
            # multipart upload stays open and nothing half-written is ever visible.
            await self._discard(quiet=True)
            raise
        self._finished = True
        self._buffer = bytearray()
        self._release_slot()
        await self._delete_state()

    async def _commit(self) -> None:
        self._check_usable()
        await self._wait_parts()
        self._check_usable()
        if self._upload_id is not None and not self._done and len(self._buffer) < self._part_size:
            # An upload that never got a part (cancelled early): one PutObject is simpler.
            await self._api.abort_multipart(self._key, self._upload_id)
            self._upload_id = None
        if self._upload_id is None:
            await self._api.put_object(self._key, bytes(self._buffer))
        else:
            await self._complete()

    async def _complete(self) -> None:
        assert self._upload_id is not None
        upload_id = self._upload_id
        while self._buffer:  # a resumed tail may hold full parts; the last may be short
            await self._submit()
        await self._wait_parts()
        self._check_usable()
        numbers = sorted(self._done)
        if numbers != list(range(1, len(numbers) + 1)):
            raise CorruptState(f"parts are not contiguous: {numbers[:5]}...")
        parts = [(n, self._done[n]) for n in numbers]
        try:
            await self._api.complete_multipart(self._key, upload_id, parts)
        except errors.NoSuchUpload:
            # A retried Complete whose first attempt succeeded finds the upload gone.
            info = await self._api.head_object(self._key)
            if info.size != self._size:
                raise
        self._upload_id = None

    async def cancel(self) -> None:
        """Abort the multipart upload and remove the state (shielded, bounded, idempotent).

        Raises the driver error if the abort failed (the state object, which names the
        upload, is then kept so a later cancel or delete can still abort it).
        """
        await self._discard(quiet=False)

    async def _discard(self, *, quiet: bool) -> None:
        if self._finished:
            return
        self._finished = True
        for scope in list(self._scopes.values()):
            scope.cancel()
        problem: base.DriverError | None = None
        with trio.move_on_after(CLEANUP_TIMEOUT) as cs:
            cs.shield = True
            await self._wait_parts()
            if self._upload_id:
                try:
                    await self._api.abort_multipart(self._key, self._upload_id)
                    self._upload_id = None
                except base.DriverError as exc:
                    problem = exc
                    log.warning("could not abort multipart upload of %s: %s", self._key, exc)
            if problem is None:
                await self._delete_state()
        self._buffer = bytearray()
        self._release_slot()
        self._in_flight.clear()
        if problem is not None and not quiet:
            raise problem

    async def _delete_state(self) -> None:
        if self._persisted is None:
            return
        with trio.move_on_after(CLEANUP_TIMEOUT) as cs:
            cs.shield = True
            try:
                await self._api.delete_object(state_key(self._key))
            except base.DriverError as exc:  # a leftover state object is harmless
                log.warning("could not delete %s: %s", state_key(self._key), exc)
        self._persisted = None

    # -- closing without commit --------------------------------------------------------------

    def _consistent_state(self) -> PartState:
        """The longest prefix we can vouch for: completed parts 1..k, then the bytes after.

        After a cancelled or failed part, completed parts beyond the gap are dropped (their
        bytes are gone from memory) and will be re-uploaded under the same numbers.
        """
        k = 0
        while (k + 1) in self._done:
            k += 1
        tail = bytearray()
        n = k + 1
        while n in self._in_flight:
            tail += self._in_flight[n]
            n += 1
        if n == self._next_part:  # contiguous up to the buffer
            tail += self._buffer
        return PartState(
            upload_id=self._upload_id,
            part_size=self._part_size,
            parts=[self._done[i] for i in range(1, k + 1)],
            tail=bytes(tail),
        )

    async def close(self, *, clean: bool) -> None:
        """Settle a writer whose context exits without commit()/cancel().

        Runs shielded and bounded. Normal exit or cancellation: persist the consistent state
        so a later ``append=True`` continues at its size. A failed part upload (S3 kept
        failing): roll back instead -- the previous state object stays the truth and a
        multipart upload this writer started is aborted, so nothing is left open.
        ``clean`` (the body finished normally): a failure raises Unavailable; otherwise it
        is logged and the body's own exception propagates.
        """
        if self._finished:
            return
        self._finished = True
        problem: base.DriverError | None = None
        with trio.move_on_after(CLEANUP_TIMEOUT) as cs:
            cs.shield = True
            await self._wait_parts()
            if self._failure is not None:
                problem = self._as_driver_error(self._failure)
                await self._roll_back()
            elif self._dirty:
                state = self._consistent_state()
                try:
                    await self._api.put_object(
                        state_key(self._key), state.encode(), metadata=state.metadata()
                    )
                    self._persisted = state
                except base.DriverError as exc:
                    problem = exc
                    await self._roll_back()
        self._release_slot()
        if cs.cancelled_caught and problem is None:
            problem = base.DriverTimeout(
                f"settling the upload of {self._key} took over {CLEANUP_TIMEOUT:.0f} s"
            )
        if problem is not None:
            log.warning("upload state of %s not saved: %s", self._key, problem)
            if clean:
                raise problem

    async def _roll_back(self) -> None:
        """Forget this writer's progress: the previous state object stays the truth."""
        for scope in list(self._scopes.values()):
            scope.cancel()
        await self._wait_parts()
        if self._created_upload and self._upload_id:
            try:
                await self._api.abort_multipart(self._key, self._upload_id)
            except base.DriverError as exc:
                log.warning("could not abort multipart upload of %s: %s", self._key, exc)
            self._upload_id = None
