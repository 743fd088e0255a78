"""S3Driver: the driver interface (registry/drivers/base.py) over an S3 or R2 bucket.

Keys are ``rootdirectory`` (slashes stripped; "/" means none) + the driver path, exactly as
the reference's s3 driver maps them, so a bucket written by ``registry:3`` is served by us
and back: ``/docker/registry/v2/blobs/...`` under root ``reg`` is ``reg/docker/registry/v2/
blobs/...``.

In-progress upload data is a multipart upload plus a ``<key>.s3part`` state object
(:mod:`.writer`); ``stat``/``list``/``walk`` show such a path as a file with its
persisted size, and ``delete`` aborts its multipart upload.

Construction never contacts S3: with S3 down the registry starts, and calls raise
:class:`~registry.drivers.base.Unavailable` until S3 is back (one log line per outage).

Size: past ~400 lines: the driver interface is about ten calls, each a few S3 requests
with the same error mapping; splitting it would scatter that mapping.
"""

from __future__ import annotations

import builtins
import logging
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import trio

from registry.drivers import base
from registry.drivers.base import FileInfo, check_path
from registry.drivers.s3 import errors
from registry.drivers.s3.api import MAX_DELETE_BATCH, S3Api
from registry.drivers.s3.client import S3Client
from registry.drivers.s3.params import S3Params
from registry.drivers.s3.reader import ObjectStream, Prefetched
from registry.drivers.s3.sigv4 import Signer
from registry.drivers.s3.writer import (
    MAX_PARTS,
    STATE_SUFFIX,
    S3Writer,
    state_key,
    state_size,
)

log = logging.getLogger("registry.drivers.s3")

MiB = 1024 * 1024
GiB = 1024 * MiB
REDIRECT_EXPIRY = 20 * 60  # s, presigned URL lifetime, as the reference's s3 driver
MAX_COPY_OBJECT = 5 * GiB  # CopyObject limit; bigger objects need UploadPartCopy


class S3Driver:
    """The S3/R2 storage driver. Owns one :class:`S3Client` (connection pool)."""

    name = "s3"
    hidden_until_commit = True
    # drivers.tree walks S3 in its keys' byte order, as v3's flat S3 walk (the catalog's order)
    lists_in_key_order = True

    def __init__(self, params: S3Params, *, redirect_disable: bool = False) -> None:
        self.params = params
        self.redirect_disable = redirect_disable
        self.client = S3Client(
            params.endpoint,
            Signer(params.accesskey, params.secretkey, params.region, params.sessiontoken),
            verify=not params.skipverify,
            max_connections=params.max_concurrency,
        )
        self.api = S3Api(self.client, params.write_headers())
        self._root = params.root
        # Part uploads in flight across all writers: 3/4 of the connections, so metadata
        # calls always find one, and memory stays bounded however many clients push.
        # Each slot is one part buffered or in flight, in any writer: a byte budget per
        # process (storage.s3.maxbuffermemory), at least 2 parts, and at most 3/4 of the
        # connections so metadata calls always find one.
        slots = max(2, params.max_buffer_memory // params.chunksize)
        self._part_slots = trio.CapacityLimiter(min(slots, max(2, params.max_concurrency * 3 // 4)))
        self.list_page_size = 1000  # keys per ListObjectsV2 page (S3's maximum)
        self.delete_batch = MAX_DELETE_BATCH  # keys per DeleteObjects call

    @classmethod
    def from_params(cls, params: Mapping[str, Any], *, redirect_disable: bool = False) -> S3Driver:
        """Build from the ``storage.s3`` section (keys lower-cased). Never contacts S3.

        Raises :class:`~registry.drivers.s3.params.S3ConfigError` (a ValueError) naming
        the bad option.
        """
        return cls(S3Params.parse(params), redirect_disable=redirect_disable)

    # -- key mapping -------------------------------------------------------------------------

    def _key(self, path: str) -> str:
        """Driver path -> bucket key (the reference: TrimLeft(root + path, "/"))."""
        if path == "/":
            return self._root
        check_path(path)
        return f"{self._root}{path}" if self._root else path[1:]

    def _dir_prefix(self, path: str) -> str:
        key = self._key(path)
        return key + "/" if key else ""

    def _path(self, key: str) -> str:
        """Bucket key -> driver path."""
        if self._root:
            return key[len(self._root) :]
        return "/" + key

    # -- small objects -----------------------------------------------------------------------

    async def get_content(self, path: str) -> bytes:
        try:
            return await self.api.get_object(self._key(path))
        except errors.NoSuchKey:
            raise base.PathNotFound(path) from None

    async def put_content(self, path: str, content: bytes, *, durable: bool = True) -> None:
        await self.api.put_object(self._key(path), bytes(content))

    async def create_exclusive(self, path: str, content: bytes) -> None:
        """A conditional PutObject (If-None-Match: *). The client retries a PUT whose
        answer was lost, and the retry finds our own object (412): so a refusal reads the
        object back and succeeds if it holds exactly ``content``."""
        key = self._key(path)
        try:
            await self.api.put_object(key, bytes(content), if_absent=True)
            return
        except errors.PreconditionFailed:
            pass
        except errors.S3Error as exc:
            if exc.status != 409:  # 409: another conditional write to the key won the race
                raise
        try:
            if await self.api.get_object(key) == content:
                return
        except errors.NoSuchKey:
            pass  # created and deleted meanwhile: still someone else's
        raise base.AlreadyExists(path)

    # -- reading -----------------------------------------------------------------------------

    @asynccontextmanager
    async def reader(
        self, path: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """Ranged GET, streamed as the socket delivers it (pieces that piled up are joined: about
        reader.JOIN_BYTES plus one socket read at most); a broken
        stream resumes where it broke."""
        key = self._key(path)
        if offset < 0 or (length is not None and length < 0):
            raise base.InvalidOffset(path, offset)
        stream = ObjectStream(self.api, key, path, offset, length)
        body_error: BaseException | None = None
        try:
            await stream.start()
            async with trio.open_nursery() as nursery:
                try:
                    yield Prefetched(stream, nursery)
                except BaseException as exc:  # noqa: BLE001 -- re-raised below, unwrapped
                    body_error = exc
                finally:
                    nursery.cancel_scope.cancel()  # stop reading ahead
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()
        if body_error is not None:
            raise body_error

    # -- writing -----------------------------------------------------------------------------

    @asynccontextmanager
    async def writer(self, path: str, append: bool = False) -> AsyncIterator[S3Writer]:
        """A multipart writer; see :mod:`.writer` for what persists between requests.

        Part uploads run in a nursery owned by this context. An exception from the body is
        re-raised as itself (not wrapped in an exception group).
        """
        key = self._key(path)
        w = S3Writer(
            self.api, key, self.params.chunksize, self.params.parallel_parts, self._part_slots
        )
        await w.open(append)
        body_error: BaseException | None = None
        try:
            async with trio.open_nursery() as nursery:
                w.attach(nursery)
                try:
                    yield w
                except BaseException as exc:  # noqa: BLE001 -- re-raised below, unwrapped
                    body_error = exc
        except BaseException:
            await w.close(clean=False)
            raise
        await w.close(clean=body_error is None)
        if body_error is not None:
            raise body_error

    # -- metadata ----------------------------------------------------------------------------

    async def stat(self, path: str) -> FileInfo:
        """HeadObject; else an in-progress writer's state; else a prefix (a directory).

        A hit is one HEAD. A miss is one more request: a delimiter listing of the key as
        a prefix shows both ``<key>.s3part`` (an object) and ``<key>/`` (a common prefix);
        only a found state object costs a HEAD for its recorded size. A directory has no
        mtime (0), as in the reference's s3 driver.
        """
        key = self._key(path)
        if not key or path == "/":
            page = await self.api.list_objects(self._dir_prefix(path), max_keys=1)
            if page.objects or page.prefixes:
                return FileInfo(path, 0, 0.0, True)
            raise base.PathNotFound(path)
        found = await self._head_file(path, key)
        if found is not None:
            return found
        state_name, dir_name = state_key(key), key + "/"
        has_state = is_dir = False
        token: str | None = None
        while True:
            page = await self.api.list_objects(
                key, delimiter="/", token=token, max_keys=self.list_page_size
            )
            has_state = has_state or any(obj.key == state_name for obj in page.objects)
            is_dir = is_dir or dir_name in page.prefixes
            # Keys come in order: once past "<key>/" nothing later can matter.
            last = max([o.key for o in page.objects] + page.prefixes, default="")
            token = page.next_token
            if token is None or last >= dir_name:
                break
        if has_state:
            try:
                state = await self.api.head_object(state_name)
                return FileInfo(path, state_size(state), state.mtime, False)
            except errors.NoSuchKey:  # committed (or cancelled) since the HEAD above
                found = await self._head_file(path, key)
                if found is not None:
                    return found
        if is_dir:
            return FileInfo(path, 0, 0.0, True)
        raise base.PathNotFound(path)

    async def _head_file(self, path: str, key: str) -> FileInfo | None:
        """The committed object at ``key`` as a file, or None if there is none."""
        try:
            info = await self.api.head_object(key)
        except errors.NoSuchKey:
            return None
        return FileInfo(path, info.size, info.mtime, False)

    async def list(self, path: str) -> builtins.list[str]:
        """Immediate children, paged with a delimiter: never walks the whole tree."""
        prefix = self._dir_prefix(path)
        children: set[str] = set()
        token: str | None = None
        while True:
            page = await self.api.list_objects(
                prefix, delimiter="/", token=token, max_keys=self.list_page_size
            )
            for obj in page.objects:
                key = obj.key
                if key == prefix:  # a "directory marker" object some tools create
                    continue
                key = key.removesuffix(STATE_SUFFIX)
                children.add(self._path(key))
            for sub in page.prefixes:
                children.add(self._path(sub.rstrip("/")))
            token = page.next_token
            if token is None:
                break
        if not children:
            raise base.PathNotFound(path)
        return sorted(children)

    async def walk(self, path: str) -> AsyncIterator[FileInfo]:
        """Every object under path (ListObjectsV2 without delimiter, paged), sorted."""
        prefix = self._dir_prefix(path)
        token: str | None = None
        seen_any = False
        last_path = ""
        while True:
            page = await self.api.list_objects(prefix, token=token, max_keys=self.list_page_size)
            infos: builtins.list[FileInfo] = []
            for obj in page.objects:
                if obj.key == prefix:
                    continue
                if obj.key.endswith(STATE_SUFFIX):
                    data_key = obj.key[: -len(STATE_SUFFIX)]
                    try:
                        head = await self.api.head_object(obj.key)
                    except errors.NoSuchKey:
                        continue
                    infos.append(FileInfo(self._path(data_key), state_size(head), obj.mtime, False))
                else:
                    infos.append(FileInfo(self._path(obj.key), obj.size, obj.mtime, False))
            infos.sort(key=lambda info: info.path)
            for info in infos:
                if info.path == last_path:  # a committed object and a leftover state
                    continue
                seen_any = True
                last_path = info.path
                yield info
            token = page.next_token
            if token is None:
                break
        if not seen_any and path != "/":
            raise base.PathNotFound(path)

    # -- moving and deleting -----------------------------------------------------------------

    async def move(self, src: str, dst: str) -> None:
        """Server-side copy, then delete src: no byte passes through the registry.

        Objects up to ``multipartcopythresholdsize`` use CopyObject; bigger ones
        UploadPartCopy in equal parts of ``multipartcopychunksize``, concurrently.
        """
        src_key, dst_key = self._key(src), self._key(dst)
        try:
            info = await self.api.head_object(src_key)
        except errors.NoSuchKey:
            raise base.PathNotFound(src) from None
        try:
            if info.size <= min(self.params.copy_threshold, MAX_COPY_OBJECT):
                await self.api.copy_object(src_key, dst_key)
            else:
                await self._multipart_copy(src_key, dst_key, info.size)
        except errors.NoSuchKey:
            raise base.PathNotFound(src) from None
        await self.api.delete_object(src_key)

    async def _multipart_copy(self, src_key: str, dst_key: str, size: int) -> None:
        part = self.params.copy_chunksize
        if -(-size // part) > MAX_PARTS:  # keep parts equal (R2): grow them instead
            part = -(-size // MAX_PARTS)
            part = -(-part // MiB) * MiB
        upload_id = await self.api.create_multipart(dst_key)
        etags: dict[int, str] = {}
        limiter = trio.CapacityLimiter(self.params.copy_concurrency)

        async def copy_part(number: int, first: int, last: int) -> None:
            async with limiter:
                etags[number] = await self.api.upload_part_copy(
                    dst_key, upload_id, number, src_key, first, last
                )

        completed = False
        try:
            async with trio.open_nursery() as nursery:
                for index, first in enumerate(range(0, size, part)):
                    nursery.start_soon(copy_part, index + 1, first, min(size, first + part) - 1)
            await self.api.complete_multipart(dst_key, upload_id, sorted(etags.items()))
            completed = True
        except BaseExceptionGroup as group:
            raise _first_error(group) from None
        finally:
            if not completed:
                with trio.move_on_after(30) as cs:
                    cs.shield = True
                    await self.api.abort_multipart(dst_key, upload_id)

    async def delete(self, path: str) -> None:
        """Delete an object or a whole tree (DeleteObjects in batches of 1000).

        Multipart uploads recorded by in-progress writers under path are aborted first.
        """
        key = self._key(path)
        keys: builtins.list[str] = []
        token: str | None = None
        prefix = self._dir_prefix(path)
        while True:  # a directory first: the registry deletes trees far more than files
            page = await self.api.list_objects(prefix, token=token, max_keys=self.list_page_size)
            keys.extend(obj.key for obj in page.objects)
            token = page.next_token
            if token is None:
                break
        if keys and key:
            keys.append(key)  # an object at the directory's own key too (DeleteObjects
            # ignores keys that do not exist, so no HEAD is needed)
        elif key and path != "/":
            for candidate in (key, state_key(key)):
                try:
                    await self.api.head_object(candidate)
                    keys.append(candidate)
                except errors.NoSuchKey:
                    pass
        if not keys:
            raise base.PathNotFound(path)
        states = [k for k in keys if k.endswith(STATE_SUFFIX)]
        for k in states:
            await self._abort_recorded_upload(k)
        for start in range(0, len(keys), self.delete_batch):
            await self.api.delete_objects(keys[start : start + self.delete_batch])

    async def _abort_recorded_upload(self, state_object: str) -> None:
        try:
            info = await self.api.head_object(state_object)
        except errors.NoSuchKey:
            return
        upload_id = info.metadata.get("upload-id")
        if upload_id:
            await self.api.abort_multipart(state_object[: -len(STATE_SUFFIX)], upload_id)

    # -- redirects, maintenance, lifecycle ---------------------------------------------------

    async def redirect_url(self, path: str, method: str = "GET") -> str | None:
        """A presigned URL (20 minutes) on ``redirectendpoint`` or the endpoint; None when
        ``storage.redirect.disable`` is set."""
        if self.redirect_disable:
            return None
        key = self._key(path)
        return self.client.presign(
            method.upper(), key, REDIRECT_EXPIRY, endpoint=self.params.redirect_endpoint
        )

    async def purge_multipart_uploads(self, older_than: float) -> int:
        """Abort multipart uploads under the root started more than ``older_than`` s ago.

        Returns how many were aborted. Pages through ListMultipartUploads.
        """
        cutoff = time.time() - older_than
        prefix = self._root + "/" if self._root else ""
        aborted = 0
        markers: tuple[str, str] | None = ("", "")
        while markers is not None:
            uploads, markers = await self.api.list_multipart_uploads(prefix, *markers)
            for upload in uploads:
                if upload.initiated and upload.initiated < cutoff:
                    await self.api.abort_multipart(upload.key, upload.upload_id)
                    aborted += 1
        if aborted:
            log.info("aborted %d stale multipart uploads older than %.0f s", aborted, older_than)
        return aborted

    async def check_health(self) -> None:
        """HeadBucket: raises Unavailable while the bucket cannot be used."""
        await self.api.head_bucket()

    async def aclose(self) -> None:
        await self.client.aclose()


def _first_error(group: BaseExceptionGroup[Any]) -> BaseException:
    """The first real error inside a nursery's exception group, so callers see the
    DriverError they expect, not a group. A group of only Cancelled stays a group (trio
    needs it to reach its cancel scope)."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            inner = _first_error(exc)
            if inner is not exc:
                return inner
        elif not isinstance(exc, trio.Cancelled):
            return exc
    return group
