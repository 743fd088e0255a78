"""How the filesystem driver fails: OSErrors become driver errors, failed writes undo
themselves.

Storage and HTTP code only understand :class:`~registry.drivers.base.DriverError`; an
``OSError`` escaping a driver would reach the client as 500 UNKNOWN with a traceback in
the log. So every call of the filesystem driver runs its OS work inside :func:`os_errors`,
which turns what is left after the driver's own not-found handling into a driver error:

- ENOSPC, EDQUOT -> :class:`StorageFull` (the disk or the quota is full: free space and
  retry; no restart needed, nothing is remembered here).
- ENAMETOOLONG -> :class:`InvalidPath` (a key the filesystem cannot hold: the client's
  name, not our storage, is at fault).
- anything else -> :class:`StorageIOError` carrying the OS text (EACCES, EIO, EROFS, ...).

The reason text names the error, never a server path, so it may be shown to clients.

The blocking helpers below (run in the driver's worker threads) make a failed write
leave nothing it could avoid: the directories it made, a partial copy at a move's target.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from .base import DriverError, InvalidPath, StorageFull, StorageIOError

# Both mean "no room for this write": ENOSPC for the filesystem, EDQUOT for the user's
# quota on it (XFS/ext4 project quotas are a common way to cap a registry's volume).
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def os_error_reason(exc: OSError) -> str:
    """``"No space left on device (ENOSPC)"``: the OS text and the errno's name, without
    the file names an OSError also carries (they would tell clients our paths)."""
    name = errno.errorcode.get(exc.errno or 0)
    text = exc.strerror or type(exc).__name__
    return f"{text} ({name})" if name else text


def driver_error(path: str, exc: OSError) -> DriverError:
    """The driver error for ``exc``, raised while working on the key ``path``."""
    if exc.errno in FULL_ERRNOS:
        return StorageFull(path, os_error_reason(exc))
    if exc.errno == errno.ENAMETOOLONG:
        return InvalidPath(f"path too long for the filesystem: {path[:200]!r}")
    return StorageIOError(path, os_error_reason(exc))


@contextmanager
def os_errors(path: str) -> Iterator[None]:
    """Re-raise any ``OSError`` from the body as :func:`driver_error` (chained to it).

    Put it outside the driver's own ``except FileNotFoundError`` handling: what that
    raises is already a driver error and passes through. Never wrap a ``yield`` that
    hands control to the caller: the caller's own OSErrors (a client socket) are not
    storage errors.
    """
    try:
        yield
    except OSError as exc:
        raise driver_error(path, exc) from exc


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
