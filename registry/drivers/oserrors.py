"""How the filesystem driver fails: OSErrors become driver errors.

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
(That a failed write leaves nothing behind is the blocking helpers' job: :mod:`.fsio`.)
"""

from __future__ import annotations

import errno
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
