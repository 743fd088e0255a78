"""The filesystem driver's blocking operations, each run in a worker thread by the driver
(never on the event loop): atomic writes, exclusive creates, appends with early writeback,
listing, moves and deletes. They raise OSError; the driver maps it (:mod:`.oserrors`).
A failed write leaves nothing it could avoid: the directories it made, a partial copy at a
move's target.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from collections.abc import Callable

from .base import Hasher


def make_dirs(d: str) -> list[str]:
    """``os.makedirs(d, exist_ok=True)`` that returns the directories it created itself,
    outermost first (for :func:`remove_made_dirs`); one made meanwhile by someone else is
    not in the list."""
    missing = []
    p = d
    while not os.path.isdir(p) and os.path.dirname(p) != p:
        missing.append(p)
        p = os.path.dirname(p)
    made = []
    for p in reversed(missing):
        try:
            os.mkdir(p)
        except FileExistsError:
            continue  # made meanwhile by a concurrent write: not ours to remove
        made.append(p)
    return made


def remove_made_dirs(made: list[str]) -> None:
    """Undo :func:`make_dirs` after a failed write: remove what it made, innermost first,
    stopping at the first that is no longer empty (a concurrent write uses it)."""
    for p in reversed(made):
        try:
            os.rmdir(p)
        except OSError:
            return


def copy_move(fsrc: str, fdst: str) -> None:
    """Move across filesystems (part of the root on another mount): copy to a temp file
    beside ``fdst``, fsync, rename, then remove ``fsrc``, so a copy that fails half-way
    (ENOSPC) never leaves a partial file at ``fdst`` (a blob's address)."""
    if os.path.isdir(fsrc):
        shutil.move(fsrc, fdst)  # not used for directories today; kept working
        return
    tmp = f"{os.path.dirname(fdst)}/.tmp-{uuid.uuid4().hex}"
    try:
        shutil.copyfile(fsrc, tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, fdst)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.unlink(fsrc)


def read_file(full: str) -> bytes:
    with open(full, "rb") as f:
        return f.read()


def _fsync_dir(d: str) -> None:
    try:
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(full: str, content: bytes, durable: bool = True) -> None:
    d = os.path.dirname(full)
    made = make_dirs(d)
    tmp = f"{d}/.tmp-{uuid.uuid4().hex}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        try:
            fd = os.open(tmp, flags, 0o644)
        except FileNotFoundError:
            # A concurrent write that failed removed the directory it made, just after we
            # found it there (remove_made_dirs): make it again, once.
            made += make_dirs(d)
            fd = os.open(tmp, flags, 0o644)
        try:
            _write_all(fd, content)
            if durable:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        os.close(fd)
        os.replace(tmp, full)
    except BaseException:
        remove_made_dirs(made)
        raise


def create_exclusive(full: str, content: bytes) -> None:
    d = os.path.dirname(full)
    os.makedirs(d, exist_ok=True)
    tmp = f"{d}/.tmp-{uuid.uuid4().hex}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        try:
            _write_all(fd, content)
        finally:
            os.close(fd)
        os.link(tmp, full)
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:  # removed with its directory meanwhile
            pass


WRITEBACK_EVERY = 16 * 1024 * 1024  # start disk writeback early so commit's fsync is short
_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>: start writeback of dirty pages, do not wait


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.sync_file_range
        fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
        fn.restype = ctypes.c_int
        return fn  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


_sync_file_range = _load_sync_file_range()


def _write_all(fd: int, data: bytes | bytearray | memoryview, start: int = -1) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
    end = start + len(data)
    if start >= 0 and _sync_file_range is not None and end // WRITEBACK_EVERY != start // WRITEBACK_EVERY:
        # Kick off writeback of the window behind us without waiting for it (Linux
        # sync_file_range(SYNC_FILE_RANGE_WRITE)), so the fsync at commit has little left
        # to flush and a large push does not end with seconds of disk wait. The pages stay
        # cached, so a pull right after the push is served from memory.
        upto = (end // WRITEBACK_EVERY) * WRITEBACK_EVERY
        _sync_file_range(fd, upto - WRITEBACK_EVERY, WRITEBACK_EVERY, _SYNC_FILE_RANGE_WRITE)


def append(
    fd: int, data: bytes | bytearray | memoryview, start: int, hasher: Hasher | None = None
) -> None:
    """Append ``data`` to a file of ``start`` bytes, or leave it at ``start`` bytes: a write
    that fails part-way (ENOSPC) is cut back, so the upload stays at the size its client
    was last told and the same chunk can be sent again once there is space. Then feed
    ``data`` to ``hasher`` (only once it is stored: after the write, the bytes are still
    in the CPU's cache)."""
    try:
        _write_all(fd, data, start)
    except OSError:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, start)
        raise
    if hasher is not None:
        hasher.update(data)


def open_writer(full: str, append: bool) -> tuple[int, int]:
    """(fd, size) of the file opened for appending (truncated unless ``append``)."""
    made = make_dirs(os.path.dirname(full))
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
    try:
        fd = os.open(full, flags, 0o644)
    except BaseException:
        remove_made_dirs(made)
        raise
    return fd, os.fstat(fd).st_size


def list_dir(full: str) -> list[str]:
    with os.scandir(full) as it:
        return sorted(e.name for e in it if not e.name.startswith(".tmp-"))


def scan(full: str) -> list[tuple[str, bool, int, float]]:
    out = []
    with os.scandir(full) as it:
        for e in it:
            if e.name.startswith(".tmp-"):
                continue
            try:
                st = e.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            is_dir = e.is_dir(follow_symlinks=False)
            out.append((e.name, is_dir, 0 if is_dir else st.st_size, st.st_mtime))
    # A directory's files all start with "name/": sorting it as that makes the depth-first
    # walk yield full paths in sorted order ("a-x" before "a/1"), as S3 lists keys.
    out.sort(key=lambda entry: entry[0] + "/" if entry[1] else entry[0])
    return out


def move(fsrc: str, fdst: str) -> None:
    if not os.path.exists(fsrc):
        raise FileNotFoundError(fsrc)
    made = make_dirs(os.path.dirname(fdst))
    try:
        try:
            os.replace(fsrc, fdst)
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
            copy_move(fsrc, fdst)
        _fsync_dir(os.path.dirname(fdst))
    except BaseException:
        remove_made_dirs(made)  # only empty ones: a moved file keeps its directory
        raise


def delete(full: str) -> None:
    if os.path.isdir(full) and not os.path.islink(full):
        shutil.rmtree(full)
    else:
        os.unlink(full)
