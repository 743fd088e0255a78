"""A small real filesystem to fill up: a tmpfs mounted for one test.

Contracts:
- ``mounted_tmpfs(dir, options)`` mounts a tmpfs on ``dir`` (which must exist) for the
  ``with`` body and unmounts it after (lazily if something still holds it). Mounting
  needs root: when it cannot mount, the test fails under CI=true and is skipped elsewhere,
  with the reason.
- ``tmpfs_fixture(options)`` makes the fixture ``small_fs``: such a tmpfs, fresh for each
  test (under its tmp_path); the fixture's value is its root.
- ``fill(root, leave)`` writes filler files under ``root`` until only ``leave`` bytes
  (a multiple of the page size) are free, or until the filesystem refuses a byte more
  (``leave=0``), and returns the filler file; deleting it frees the space again.
- ``use_up_inodes(root)`` creates empty files until the filesystem has no inode left.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

try:  # tests/ is a plain directory on sys.path, or a package
    from tests.e2e_support import in_ci
except ImportError:
    from e2e_support import in_ci  # type: ignore[no-redef]

PAGE = os.sysconf("SC_PAGE_SIZE")  # tmpfs accounts space in pages
MOUNT_TIMEOUT_S = 30.0  # mount/umount of a tmpfs takes milliseconds; a hang is a bug
FILL_PIECE = 64 * 1024  # bytes per filler write: a few MiB fill in well under a second


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, check=False, capture_output=True, text=True, timeout=MOUNT_TIMEOUT_S
    )


@contextlib.contextmanager
def mounted_tmpfs(directory: Path, options: str) -> Iterator[Path]:
    """Mount ``tmpfs -o options`` on ``directory`` for the body (see the module docstring)."""
    why = None
    if os.geteuid() != 0:
        why = "mounting a tmpfs needs root"
    else:
        try:
            done = _run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(directory)])
            if done.returncode != 0:
                why = f"mount -t tmpfs failed: {done.stderr.strip()}"
        except (OSError, subprocess.TimeoutExpired) as exc:
            why = f"cannot run mount: {exc}"
    if why is not None:
        if in_ci():
            pytest.fail(f"CI=true but {why}")
        pytest.skip(why)
    try:
        yield directory
    finally:
        if _run(["umount", str(directory)]).returncode != 0:
            _run(["umount", "-l", str(directory)])  # a server thread may still hold a file


def tmpfs_fixture(options: str) -> Any:
    """The fixture ``small_fs`` for a module: ``small_fs = tmpfs_fixture(OPTIONS)``."""

    @pytest.fixture
    def small_fs(tmp_path: Path) -> Iterator[Path]:
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        with mounted_tmpfs(mnt, options) as root:
            yield root

    return small_fs


def free_bytes(root: Path) -> int:
    st = os.statvfs(root)
    return st.f_bavail * st.f_frsize


def fill(root: Path, leave: int = 0) -> Path:
    """Fill the filesystem of ``root`` until ``leave`` bytes are free; the filler file."""
    assert leave % PAGE == 0, "tmpfs frees and takes whole pages"
    path = root / f"filler-{len(list(root.glob('filler-*')))}"
    piece = b"\xa5" * FILL_PIECE
    with open(path, "wb", buffering=0) as f:
        while (want := free_bytes(root) - leave) > 0:
            try:
                f.write(piece[: min(want, FILL_PIECE)])
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
    if leave == 0:  # the last partial write may have left a page: take it too
        with contextlib.suppress(OSError), open(path, "ab", buffering=0) as f:
            while True:
                f.write(b"\xa5" * PAGE)
    assert free_bytes(root) == leave, (free_bytes(root), leave)
    return path


def use_up_inodes(root: Path) -> list[Path]:
    """Create empty files under ``root`` until creating one more fails with ENOSPC."""
    made: list[Path] = []
    while True:
        path = root / f"inode-{len(made)}"
        try:
            path.touch()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
            return made
        made.append(path)
