"""The narrow async driver seam every backend implements (DESIGN.md, Layers).

Paths are absolute, slash-separated keys such as ``/docker/registry/v2/blobs/...``;
a driver maps them under its own root (a directory, or ``rootdirectory`` in a bucket).
Paths are built only by ``registry.storage.paths`` and are validated there; drivers still
refuse anything that is not a clean absolute path (:func:`check_path`).

Errors: drivers raise only the :class:`DriverError` subclasses below; the storage layer
translates them at its boundary. Every call may be cancelled; a cancelled ``write``
leaves the writer in a state where ``cancel()`` or leaving its context still works.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager as AsyncContextManager
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


class DriverError(Exception):
    """Base of every error a driver raises."""


class PathNotFound(DriverError):
    def __init__(self, path: str) -> None:
        super().__init__(f"path not found: {path}")
        self.path = path


class InvalidPath(DriverError):
    pass


class AlreadyExists(DriverError):
    """``create_exclusive`` found an object at the path (someone else created it first)."""

    def __init__(self, path: str) -> None:
        super().__init__(f"already exists: {path}")
        self.path = path


class InvalidOffset(DriverError):
    def __init__(self, path: str, offset: int) -> None:
        super().__init__(f"invalid offset {offset} for {path}")
        self.path = path
        self.offset = offset


class Unavailable(DriverError):
    """The backend cannot be reached or refuses us (credentials, bucket, 5xx after retries)."""


class DriverTimeout(Unavailable):
    """A backend call ran past its deadline."""


class StorageIOError(DriverError):
    """The backend failed an operation for a reason the caller cannot fix by asking
    differently (a local filesystem's EACCES, EIO, EROFS...). ``reason`` is the backend's
    own text (e.g. ``"Permission denied (EACCES)"``), safe to show a client: it names no
    server path. ``path`` is the key the call was about."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{reason}: {path}")
        self.path = path
        self.reason = reason


class StorageFull(StorageIOError):
    """No space or quota left for a write (ENOSPC, EDQUOT). Nothing is wrong with the
    request: the same call may succeed once space is freed, without a restart."""


_PATH_RE = re.compile(r"^(/[A-Za-z0-9._-]+)+$")


def check_path(path: str) -> str:
    """Return ``path`` if it is a clean absolute key (no ``..``, no empty parts), else raise."""
    if not _PATH_RE.match(path) or "/../" in path + "/" or "/./" in path + "/":
        raise InvalidPath(f"invalid path: {path[:200]!r}")
    return path


@dataclass(frozen=True, slots=True)
class FileInfo:
    path: str
    size: int
    mtime: float  # seconds since the epoch
    is_dir: bool


class Hasher(Protocol):
    """What ``FileWriter.write`` can feed the bytes it appends to (hashlib's objects,
    storage.sha256state.Sha256)."""

    def update(self, data: bytes | bytearray | memoryview, /) -> None: ...


@runtime_checkable
class FileWriter(Protocol):
    """An append-only writer for one path (an upload's data), see ``Driver.writer``.

    ``size`` counts every byte accepted by ``write``, including those from earlier writers
    of the same path (``append=True``). ``commit()`` makes the whole content readable at
    path; ``cancel()`` removes everything (and aborts backend state such as a multipart
    upload). After either, the writer refuses further writes. Both are idempotent.
    """

    @property
    def size(self) -> int: ...

    async def write(
        self, data: bytes | bytearray | memoryview, hasher: Hasher | None = None
    ) -> None:
        """Append data. Must not keep a reference to ``data`` after returning.

        ``hasher``: fed exactly ``data`` (``hasher.update``) before this returns, so that
        one call both stores and hashes a piece; a driver does it where it costs least
        (the filesystem in the worker thread that writes: one thread hop for both, off
        the event loop). If the write fails or is cancelled, whether the hasher saw the
        bytes is undefined: the caller must not use that hasher again.
        """
        ...

    async def commit(self) -> None: ...

    async def cancel(self) -> None: ...


@runtime_checkable
class Driver(Protocol):
    """The driver interface (about ten calls)."""

    name: str
    # True when a writer's bytes are unreadable at its path until commit() (an S3
    # multipart upload): a blob whose digest is known up front can then be written at
    # its final path and committed once verified, with no copy. False for files.
    hidden_until_commit: bool

    async def get_content(self, path: str) -> bytes:
        """Whole (small) object. Raises PathNotFound."""
        ...

    async def put_content(self, path: str, content: bytes, *, durable: bool = True) -> None:
        """Atomically replace the object at path (readers see old or new, never partial).
        ``durable=False``: a cache whose loss in a crash costs only time; a driver may skip
        flushing it to disk (it may then be missing or empty after a crash, never mixed)."""
        ...

    async def create_exclusive(self, path: str, content: bytes) -> None:
        """Create the small object at path only if nothing is there, atomically across
        processes and hosts sharing the storage: of two concurrent creators exactly one
        succeeds and the other gets AlreadyExists. Readers see the whole content or nothing.
        Not flushed to disk (the only user, a writer lease, may be lost in a crash).
        A retried call whose first attempt did create the object succeeds (the content
        is compared), so callers should make ``content`` unique."""
        ...

    def reader(
        self, path: str, offset: int = 0, length: int | None = None
    ) -> AsyncContextManager[AsyncIterator[bytes]]:
        """Stream bytes [offset, offset+length) in large chunks.

        Entering raises PathNotFound, or InvalidOffset if offset > size.
        """
        ...

    def writer(self, path: str, append: bool = False) -> AsyncContextManager[FileWriter]:
        """Open an append-only writer for path (used for upload data only).

        With append=False any earlier uncommitted content at path is dropped first.
        Leaving the context without commit()/cancel() closes the writer: what was written
        is persisted (shielded, bounded cleanup, also on cancellation or error) so that a
        later ``writer(path, append=True)`` -- in this process or another -- continues at
        ``size``. ``stat(path)`` reports the persisted size of such an in-progress writer.
        ``reader(path)`` is only guaranteed after ``commit()``.
        A driver may run work in the background (parallel part uploads) inside this
        context; it owns those tasks and finishes or cancels them before exiting.
        """
        ...

    async def stat(self, path: str) -> FileInfo:
        """Raises PathNotFound. A path that is a prefix of other keys is a directory."""
        ...

    async def list(self, path: str) -> list[str]:
        """Immediate children (full paths, sorted) of a directory. Raises PathNotFound."""
        ...

    async def move(self, src: str, dst: str) -> None:
        """Move an object, replacing dst. Raises PathNotFound if src is missing."""
        ...

    async def delete(self, path: str) -> None:
        """Delete an object or a whole directory tree. Raises PathNotFound if nothing is there."""
        ...

    def walk(self, path: str) -> AsyncIterator[FileInfo]:
        """Every object (files only) under path, recursively, in sorted order."""
        ...

    async def redirect_url(self, path: str, method: str = "GET") -> str | None:
        """A URL the client may fetch the object from directly, or None (serve through us)."""
        ...

    async def aclose(self) -> None:
        """Release connections/threads. Idempotent."""
        ...
