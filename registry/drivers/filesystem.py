"""Filesystem driver: keys map to files under ``rootdirectory`` (the reference's layout).

Every blocking call runs in a worker thread under one CapacityLimiter (``maxthreads``), in
large chunks, so the event loop never stalls on disk. ``put_content`` is atomic (temp file
in the same directory, fsync, rename); ``writer(...).commit()`` fsyncs; ``move`` is a rename,
which is what makes a verified upload appear as a blob in one step.

Errors: every ``OSError`` becomes a driver error here (:mod:`.oserrors`; a plain ``except``
clause on the hot read paths, where a context manager's cost shows): a full disk is
``StorageFull``, anything else unexpected ``StorageIOError``. A call that fails leaves no
trace it could have avoided: directories it created for the write are removed again (an
empty ``_uploads/<id>/`` would otherwise outlive a failed POST), a failed append is cut
back to the writer's size, a failed ``put_content`` or cross-device ``move`` leaves no
partial file at the destination.
"""

from __future__ import annotations

import builtins
import errno
import os
import stat as stat_mod
import tempfile
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import aclosing, asynccontextmanager
from functools import partial
from typing import Any, BinaryIO, TypeVar

import trio

from . import fsio, tree
from .base import (
    AlreadyExists,
    FileInfo,
    Hasher,
    InvalidOffset,
    InvalidPath,
    PathNotFound,
    check_path,
)
from .oserrors import driver_error, os_errors

T = TypeVar("T")

# Blob reads: 512 KiB measured fastest for pulls (2.6-2.9 GB/s vs ~2.0 at 1 MiB, 1.7 at
# 256 KiB): big enough that per-chunk Python is small, small enough to stay in cache and
# under the malloc mmap threshold (cli.MMAP_THRESHOLD), so buffers are reused, not faulted in.
CHUNK = 512 * 1024
SMALL_READ = 64 * 1024  # link files and manifests: read on the event loop if cached
_RWF_NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None)  # Linux >= 4.14, Python >= 3.7
DEFAULT_MAX_THREADS = 100  # the reference's filesystem.maxthreads default
CREATE_ATTEMPTS = 3  # create_exclusive: tries when its directory is removed meanwhile
# Small reads and stats done on the event loop (from the page cache) let other tasks run at
# most this often, and otherwise only check for cancellation: a full checkpoint costs ~4 us
# of CPU, as much as the read itself, and a manifest GET or blob HEAD makes two of them.
# 1 ms bounds how long a loop of such calls (the tags of a big repository) holds the loop.
INLINE_YIELD_INTERVAL_S = 0.001


class FilesystemDriver:
    name = "filesystem"
    hidden_until_commit = False

    def __init__(self, rootdirectory: str, max_threads: int = DEFAULT_MAX_THREADS) -> None:
        self.root = os.path.abspath(rootdirectory)
        self._limiter = trio.CapacityLimiter(max_threads)
        # Page-cache reads on the loop (preadv RWF_NOWAIT); off for good once the
        # filesystem says it has no RWF_NOWAIT (tmpfs: EOPNOTSUPP), so no request pays a
        # failed attempt before its thread read.
        self._nowait = _RWF_NOWAIT is not None
        self._yielded = 0.0  # perf_counter() when an inline call last let others run

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> FilesystemDriver:
        root = str(params.get("rootdirectory") or "/var/lib/registry")
        max_threads = int(params.get("maxthreads") or DEFAULT_MAX_THREADS)
        return cls(root, max(25, max_threads))  # the reference's minimum is 25

    def _full(self, path: str) -> str:
        check_path(path)
        return self.root + path

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(partial(fn, *args), limiter=self._limiter)

    async def get_content(self, path: str) -> bytes:
        full = self._full(path)
        try:
            data = self._read_small_nowait(full) if self._nowait else None
            if data is None:
                data = await self._run(fsio.read_file, full)
            else:
                await self._inline_checkpoint()
            return data
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise PathNotFound(path) from None
        except OSError as exc:
            raise driver_error(path, exc) from exc

    async def put_content(self, path: str, content: bytes, *, durable: bool = True) -> None:
        full = self._full(path)
        with os_errors(path):
            await self._run(fsio.atomic_write, full, content, durable)

    async def create_exclusive(self, path: str, content: bytes) -> None:
        """A temp file hard-linked to the name: link(2) fails if the name exists (also
        on NFS), and the content is complete before the name appears."""
        full = self._full(path)
        with os_errors(path):
            await self._create_exclusive(path, full, content)

    async def _create_exclusive(self, path: str, full: str, content: bytes) -> None:
        try:
            for attempt in range(CREATE_ATTEMPTS):
                try:
                    await self._run(fsio.create_exclusive, full, content)
                    return
                except FileNotFoundError:  # the directory was removed as we created in it
                    if attempt == CREATE_ATTEMPTS - 1:
                        raise PathNotFound(path) from None
        except FileExistsError:
            try:
                if await self._run(fsio.read_file, full) == content:
                    return  # the contract's retry of our own create
            except FileNotFoundError:
                pass
            raise AlreadyExists(path) from None

    @asynccontextmanager
    async def reader(
        self, path: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        full = self._full(path)
        try:
            fd = await self._run(os.open, full, os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise PathNotFound(path) from None
        except OSError as exc:
            raise driver_error(path, exc) from exc
        try:
            try:
                st = os.fstat(fd)
            except OSError as exc:  # not around the yield: the caller's errors are its own
                raise driver_error(path, exc) from exc
            if stat_mod.S_ISDIR(st.st_mode):  # opens fine, reads fail EISDIR: as get_content
                raise PathNotFound(path)
            size = st.st_size
            if offset < 0 or offset > size:
                raise InvalidOffset(path, offset)
            end = size if length is None else min(size, offset + length)
            # Closed here, before the fd: a caller that stops early (a client gone) leaves
            # no suspended generator behind. The caller's body: not os_errors.
            async with aclosing(self._chunks(path, fd, offset, end)) as chunks:
                yield chunks
        finally:
            os.close(fd)  # close(2) on a regular file does not block: safe under cancel

    async def open_local(self, path: str) -> BinaryIO:
        """``path`` opened for reading as a local file (unbuffered), for a server that sends
        it with sendfile(2); the caller closes it. PathNotFound if it is not a regular file."""
        full = self._full(path)
        try:
            f: BinaryIO = await self._run(open, full, "rb", 0)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise PathNotFound(path) from None
        except OSError as exc:
            raise driver_error(path, exc) from exc
        if not stat_mod.S_ISREG(os.fstat(f.fileno()).st_mode):
            f.close()
            raise PathNotFound(path)
        return f

    async def _chunks(self, path: str, fd: int, offset: int, end: int) -> AsyncGenerator[bytes]:
        """Read [offset, end) in CHUNK pieces. Cached pages are copied right here with
        preadv(RWF_NOWAIT) (a thread hop per chunk cost more than the copy and halved pull
        throughput); anything that would wait for the disk is read in a thread."""
        pos = offset
        buf = memoryview(bytearray(min(CHUNK, end - offset)))
        while pos < end:
            want = min(CHUNK, end - pos)
            n = self._pread_cached(fd, buf[:want], pos)
            if n is None:
                try:
                    data = await self._run(os.pread, fd, want, pos)
                except OSError as exc:  # EIO from a failing disk (not the caller's error)
                    raise driver_error(path, exc) from exc
            else:
                data = buf[:n].tobytes()
                await trio.lowlevel.checkpoint()
            if not data:
                return
            pos += len(data)
            yield data

    def _pread_cached(self, fd: int, buf: bytearray | memoryview, pos: int) -> int | None:
        """Copy bytes at ``pos`` into ``buf`` if they are in the page cache, without
        blocking (``preadv(RWF_NOWAIT)``); None: read them in a thread instead."""
        if not self._nowait:
            return None
        try:
            return os.preadv(fd, [buf], pos, _RWF_NOWAIT or 0)
        except BlockingIOError:
            return None  # not cached: the read would wait for the disk
        except OSError as exc:
            if exc.errno == errno.EOPNOTSUPP:
                self._nowait = False  # this filesystem has no RWF_NOWAIT
            return None

    async def _inline_checkpoint(self) -> None:
        """The checkpoint after a call served on the event loop: a cancellation is always
        raised here; other tasks get to run if none did for INLINE_YIELD_INTERVAL_S."""
        now = time.perf_counter()
        if now - self._yielded >= INLINE_YIELD_INTERVAL_S:
            self._yielded = now
            await trio.lowlevel.checkpoint()
        else:
            await trio.lowlevel.checkpoint_if_cancelled()

    def _read_small_nowait(self, full: str) -> bytes | None:
        """Read a small file without blocking, or return None to say "use a thread".

        Link files (~71 bytes) and manifests are read on every pull request. Handing each
        to a worker thread costs ~50-300 us of wake-ups, 10-20x the read itself, so when
        the data is in the page cache we read it right here (:meth:`_pread_cached`). (Path
        lookup and open still touch metadata, which is cached for hot paths.)
        """
        fd = os.open(full, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            if size > SMALL_READ:
                return None
            buf = bytearray(size)
            return bytes(buf) if self._pread_cached(fd, buf, 0) == size else None
        finally:
            os.close(fd)

    @asynccontextmanager
    async def writer(self, path: str, append: bool = False) -> AsyncIterator[FileWriter]:
        full = self._full(path)
        with os_errors(path):
            fd, size = await self._run(fsio.open_writer, full, append)
        w = FileWriter(fd, path, full, size, self._run)
        try:
            yield w
        finally:
            w._close()  # synchronous, so cancellation cannot interrupt it

    async def stat(self, path: str) -> FileInfo:
        full = self._full(path)
        try:
            # Metadata of hot paths is in the inode cache; a thread hop costs 10-20x more
            # than the stat itself (see _read_small_nowait).
            st = os.stat(full)
            await self._inline_checkpoint()
        except (FileNotFoundError, NotADirectoryError):
            raise PathNotFound(path) from None
        except OSError as exc:
            raise driver_error(path, exc) from exc
        is_dir = stat_mod.S_ISDIR(st.st_mode)
        return FileInfo(path, 0 if is_dir else st.st_size, st.st_mtime, is_dir)

    async def list(self, path: str) -> list[str]:
        full = self._full(path) if path != "/" else self.root
        try:
            names = await self._run(fsio.list_dir, full)
        except (FileNotFoundError, NotADirectoryError):
            raise PathNotFound(path) from None
        except OSError as exc:
            raise driver_error(path, exc) from exc
        base = "" if path == "/" else path
        return [f"{base}/{n}" for n in names]

    async def move(self, src: str, dst: str) -> None:
        fsrc, fdst = self._full(src), self._full(dst)
        try:
            await self._run(fsio.move, fsrc, fdst)
        except FileNotFoundError:
            raise PathNotFound(src) from None
        except OSError as exc:
            raise driver_error(dst, exc) from exc

    async def delete(self, path: str) -> None:
        full = self._full(path)
        try:
            await self._run(fsio.delete, full)
        except (FileNotFoundError, NotADirectoryError):
            raise PathNotFound(path) from None
        except OSError as exc:
            raise driver_error(path, exc) from exc

    async def walk(self, path: str) -> AsyncIterator[FileInfo]:
        full = self._full(path) if path != "/" else self.root
        try:
            entries = await self._run(fsio.scan, full)
        except (FileNotFoundError, NotADirectoryError):
            raise PathNotFound(path) from None
        except OSError as exc:
            raise driver_error(path, exc) from exc
        async for info in self._walk("" if path == "/" else path, entries):
            yield info

    async def _walk(
        self, prefix: str, entries: Sequence[tuple[str, bool, int, float]]
    ) -> AsyncIterator[FileInfo]:
        for name, is_dir, size, mtime in entries:
            child = f"{prefix}/{name}"
            if not is_dir:
                yield FileInfo(child, size, mtime, False)
                continue
            try:
                sub = await self._run(fsio.scan, self.root + child)
            except FileNotFoundError:
                continue  # removed while we walked
            except OSError as exc:
                raise driver_error(child, exc) from exc
            async for info in self._walk(child, sub):
                yield info

    async def walk_batch(self, cursor: tree.TreeCursor, limit: int) -> builtins.list[str]:
        """Advance a :func:`tree.walk_tree` cursor by up to ``limit`` keys in ONE worker
        thread call (scandir of each directory it enters, dirents only, no stat): a
        directory per thread hop costs more than reading it."""
        root = self.root
        if cursor.root:
            check_path(cursor.root)  # a clean key, as every call checks

        def list_dir(key: str) -> tree.DirListing:
            return tree.scan_sorted(root + key)

        with os_errors(cursor.root):
            return await self._run(cursor.step, list_dir, limit)

    async def redirect_url(self, path: str, method: str = "GET") -> str | None:
        return None

    async def aclose(self) -> None:
        return None


def check_writable(rootdirectory: str) -> str | None:
    """None if the server can write under ``rootdirectory``, else one line saying why.

    Run once at startup so that a volume owned by another user (e.g. written by a root
    registry:3) is a clear message, not a 500 on the first push.
    """
    root = os.path.abspath(rootdirectory)
    try:
        os.makedirs(root, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".tmp-probe-", dir=root)
        os.close(fd)
        os.unlink(probe)
        top = os.path.join(root, "docker", "registry", "v2")
        if os.path.isdir(top):
            for sub in ("blobs", "repositories"):
                d = os.path.join(top, sub)
                if os.path.isdir(d) and not os.access(d, os.W_OK | os.X_OK):
                    return f"storage directory {d} is not writable by uid {os.getuid()}"
    except OSError as e:
        return f"storage directory {root} is not usable: {e.strerror or e}"
    return None


class FileWriter:
    """Appends to one file; see base.FileWriter. Not safe for concurrent use."""

    def __init__(
        self, fd: int, path: str, full: str, size: int, run: Callable[..., Awaitable[Any]]
    ) -> None:
        self._fd: int | None = fd
        self._path = path  # the key, for errors
        self._full = full
        self._size = size
        self._done = False
        self._run = run  # the driver's thread runner (its CapacityLimiter)

    @property
    def size(self) -> int:
        return self._size

    async def write(
        self, data: bytes | bytearray | memoryview, hasher: Hasher | None = None
    ) -> None:
        """Append ``data`` and feed it to ``hasher`` in the same worker-thread call (one
        hop per piece: a hop costs more than copying 64 KiB, see base.FileWriter)."""
        if self._done or self._fd is None:
            raise InvalidPath("writer already committed or cancelled")
        fd = self._fd
        start = self._size
        with os_errors(self._path):
            await self._run(fsio.append, fd, data, start, hasher)
        self._size += len(data)

    async def commit(self) -> None:
        if self._done:
            return
        self._done = True
        fd = self._fd
        if fd is not None:
            with trio.CancelScope(shield=True), os_errors(self._path):
                await self._run(os.fsync, fd)

    async def cancel(self) -> None:
        self._done = True
        self._close()
        with trio.CancelScope(shield=True), os_errors(self._path):
            try:
                await self._run(os.unlink, self._full)
            except FileNotFoundError:
                pass

    def _close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with os_errors(self._path):  # NFS may report a deferred write error here
                os.close(fd)
