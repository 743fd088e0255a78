"""Streaming reads for S3Driver.reader: one ranged GET, resumed after a broken connection.

Contract: ``start()`` raises PathNotFound, or InvalidOffset when offset > size (offset ==
size is an empty read); iteration yields the pieces the socket gives (each at
most streams.READ_BYTES; :class:`Prefetched` may join waiting ones) and never holds the object; a body
that breaks mid-way is re-requested from the byte it broke at, ``If-Match`` the first
answer's ETag (a replaced object raises Unavailable instead of mixing two versions), at most
MAX_RESUMES times. ``aclose()`` is idempotent.
"""

from __future__ import annotations

import logging

import httpx
import trio

from registry.drivers import base
from registry.drivers.s3 import errors
from registry.drivers.s3.api import ObjectInfo, S3Api
from registry.drivers.s3.client import StreamedResponse

log = logging.getLogger("registry.drivers.s3")

JOIN_BYTES = 256 * 1024  # waiting pieces are joined up to this size (below mmap threshold)
PREFETCH_PIECES = 4  # pieces read ahead of the consumer: at most 4 x streams.READ_BYTES
MAX_RESUMES = 3  # a GET stream broken mid-body is resumed from where it broke this often


class ObjectStream:
    """The reader's async iterator: one ranged GET, resumed after a broken connection.

    Not an async generator, so closing it is explicit and cancellation-safe.
    """

    def __init__(self, api: S3Api, key: str, path: str, offset: int, length: int | None) -> None:
        self._api = api
        self._key = key
        self._path = path
        self._pos = offset
        self._end: int | None = None if length is None else offset + length  # exclusive
        self._etag = ""
        self._response: StreamedResponse | None = None
        self._resumes = 0
        self._offset = offset

    async def start(self) -> None:
        if self._end is not None and self._end == self._pos:
            await self._check_offset_only()
            return
        await self._open()

    async def _check_offset_only(self) -> None:
        try:
            info: ObjectInfo = await self._api.head_object(self._key)
        except errors.NoSuchKey:
            raise base.PathNotFound(self._path) from None
        if self._pos > info.size:
            raise base.InvalidOffset(self._path, self._offset)
        self._end = self._pos  # nothing to read

    async def _open(self) -> None:
        headers: dict[str, str] = {}
        if self._pos or self._end is not None:
            last = "" if self._end is None else str(self._end - 1)
            headers["range"] = f"bytes={self._pos}-{last}"
        if self._etag:
            headers["if-match"] = self._etag
        try:
            response = await self._api.client.open_stream("GET", self._key, headers=headers)
        except errors.NoSuchKey:
            raise base.PathNotFound(self._path) from None
        except errors.InvalidRange:
            # offset == size is a valid empty read; offset > size is not.
            await self._check_offset_only()
            return
        self._response = response
        self._etag = self._etag or response.headers.get("etag", "")
        # Clamp the end to the object: a length past the end reads to the end.
        total: int | None = None
        if response.status_code == 206:
            content_range = response.headers.get("content-range", "")
            tail = content_range.rsplit("/", 1)[-1]
            total = int(tail) if tail.isdigit() else None
        elif response.headers.get("content-length", "").isdigit():
            total = self._pos + int(response.headers["content-length"])
        if total is not None:
            self._end = total if self._end is None else min(self._end, total)

    def __aiter__(self) -> ObjectStream:
        return self

    async def __anext__(self) -> bytes:
        while True:
            if self._response is None:
                raise StopAsyncIteration
            try:
                chunk = await self._response.receive()
            except httpx.TransportError as exc:
                await self.aclose()
                self._resumes += 1
                if self._resumes > MAX_RESUMES:
                    raise base.Unavailable(f"S3 GET {self._key} kept breaking: {exc}") from exc
                log.info("S3 GET %s broke at byte %d (%s); resuming", self._key, self._pos, exc)
                try:
                    await self._open()
                except errors.PreconditionFailed:
                    raise base.Unavailable(f"S3 object {self._key} changed while read") from None
                continue
            if not chunk:
                await self.aclose()
                if self._end is not None and self._pos < self._end:
                    raise base.Unavailable(f"S3 object {self._key} ended early")
                raise StopAsyncIteration
            self._pos += len(chunk)
            return chunk

    async def aclose(self) -> None:
        response, self._response = self._response, None
        if response is not None:
            await response.aclose()


class Prefetched:
    """Reads an :class:`ObjectStream` ahead of its consumer, in a task of ``nursery``.

    Reading from S3 then overlaps the consumer's own waits (sending to a client): a pull
    through the registry alternated between the two sockets and ran at ~2/3 of what
    either side could do. At most ``PREFETCH_PIECES`` pieces wait in memory. An error of
    the stream is raised to the consumer at the point it happened; cancelling the
    nursery stops the reading.
    """

    def __init__(self, stream: ObjectStream, nursery: trio.Nursery) -> None:
        self._stream = stream
        send, self._receive = trio.open_memory_channel[bytes | Exception](PREFETCH_PIECES)
        self._error: Exception | None = None  # met while joining pieces; raised next
        nursery.start_soon(self._pump, send)

    async def _pump(self, send: trio.MemorySendChannel[bytes | Exception]) -> None:
        async with send:
            try:
                async for piece in self._stream:
                    await send.send(piece)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return  # the consumer is gone
            except Exception as exc:  # noqa: BLE001 -- handed to the consumer, raised there
                try:
                    await send.send(exc)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass

    def __aiter__(self) -> Prefetched:
        return self

    async def __anext__(self) -> bytes:
        if self._error is not None:
            raise self._error
        try:
            item = await self._receive.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
        if isinstance(item, Exception):
            raise item
        # Pieces that piled up while the consumer was busy go out as one: S3 endpoints
        # often send small pieces, and each piece costs the consumer a send of its own.
        pieces = [item]
        size = len(item)
        while size < JOIN_BYTES:
            try:
                more = self._receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            if isinstance(more, Exception):
                self._error = more
                break
            pieces.append(more)
            size += len(more)
        return item if len(pieces) == 1 else b"".join(pieces)
