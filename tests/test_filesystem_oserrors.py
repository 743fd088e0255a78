"""Every filesystem driver call turns an OSError into a driver error (issue 12, item 6).

The OS conditions are real, not injected: a tmpfs with no page and no inode left (ENOSPC
-> StorageFull), the same tmpfs remounted read-only (EROFS), a symlink that points at
itself (ELOOP), a writer's file replaced by a directory (EISDIR). (As root, chmod cannot
make EACCES: root ignores permissions.) Not covered by a real condition here: fsync
failing at ``commit`` and EIO from a read, which tmpfs cannot produce.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
import trio
from tmpfs_support import PAGE, fill, mounted_tmpfs, tmpfs_fixture, use_up_inodes

from registry.drivers.base import DriverError, PathNotFound, StorageFull, StorageIOError
from registry.drivers.filesystem import FilesystemDriver

# Room for the few files a test makes before it fills the rest; few inodes, so using them
# all up takes milliseconds.
TMPFS_OPTIONS = "size=1m,nr_inodes=64,mode=0755"
TEST_TIMEOUT_S = 30


async def drain(driver: FilesystemDriver, path: str) -> None:
    async with driver.reader(path) as chunks:
        async for _ in chunks:
            pass


async def walk_all(driver: FilesystemDriver, path: str) -> None:
    async for _ in driver.walk(path):
        pass


async def open_writer(driver: FilesystemDriver, path: str) -> None:
    async with driver.writer(path, append=True):
        pass


async def check(
    calls: dict[str, Callable[[], Awaitable[Any]]], expected: type[DriverError], errno_name: str
) -> None:
    """Each call raises ``expected`` whose reason names ``errno_name``; list every miss."""
    wrong = {}
    for what, call in calls.items():
        try:
            await call()
        except expected as exc:
            if errno_name not in getattr(exc, "reason", errno_name):
                wrong[what] = f"{type(exc).__name__}: {exc}"
            continue
        except Exception as exc:  # noqa: BLE001 - reported below, with the call's name
            wrong[what] = f"{type(exc).__name__}: {exc}"
            continue
        wrong[what] = "no error"
    assert wrong == {}, f"expected {expected.__name__} ({errno_name})"


small_fs = tmpfs_fixture(TMPFS_OPTIONS)


async def test_every_write_call_on_a_full_filesystem_raises_storage_full(small_fs: Path) -> None:
    driver = FilesystemDriver(str(small_fs / "r"))
    with trio.fail_after(TEST_TIMEOUT_S):
        await driver.put_content("/src/a", b"moved nowhere")
        async with AsyncExitStack() as stack:
            w = await stack.enter_async_context(driver.writer("/up/data"))
            await w.write(b"x")
            fill(small_fs)
            use_up_inodes(small_fs)
            await check(
                {
                    "put_content": lambda: driver.put_content("/new/key", b"x"),
                    "writer": lambda: open_writer(driver, "/other/data"),
                    "write": lambda: w.write(b"y" * 2 * PAGE),
                    "move": lambda: driver.move("/src/a", "/dst/a"),
                },
                StorageFull,
                "ENOSPC",
            )
            assert w.size == 1  # the failed write is not counted...
        assert (await driver.stat("/up/data")).size == 1  # ...nor kept
        assert await driver.get_content("/src/a") == b"moved nowhere"
        assert sorted(os.listdir(small_fs / "r")) == ["src", "up"]  # no directory left


async def test_every_write_call_on_a_read_only_filesystem_raises_a_storage_io_error(
    small_fs: Path,
) -> None:
    driver = FilesystemDriver(str(small_fs / "r"))
    with trio.fail_after(TEST_TIMEOUT_S):
        await driver.put_content("/src/a", b"kept")
        done = await trio.run_process(
            ["mount", "-o", "remount,ro", str(small_fs)], check=False, capture_stderr=True
        )
        assert done.returncode == 0, done.stderr
        await check(
            {
                "put_content": lambda: driver.put_content("/new/key", b"x"),
                "put_content (replace)": lambda: driver.put_content("/src/a", b"x"),
                "writer": lambda: open_writer(driver, "/src/data"),
                "move": lambda: driver.move("/src/a", "/dst/a"),
                "delete": lambda: driver.delete("/src/a"),
                "delete (tree)": lambda: driver.delete("/src"),
            },
            StorageIOError,
            "EROFS",
        )
        assert await driver.get_content("/src/a") == b"kept"  # reads still work


async def test_every_call_through_a_symlink_loop_raises_a_storage_io_error(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    os.symlink("loop", root / "loop")  # resolving it fails with ELOOP
    driver = FilesystemDriver(str(root))
    await driver.put_content("/src/a", b"data")
    with trio.fail_after(TEST_TIMEOUT_S):
        await check(
            {
                "get_content": lambda: driver.get_content("/loop"),
                "get_content (under)": lambda: driver.get_content("/loop/x"),
                "reader": lambda: drain(driver, "/loop"),
                "stat": lambda: driver.stat("/loop/x"),
                "list": lambda: driver.list("/loop"),
                "walk": lambda: walk_all(driver, "/loop"),
                "put_content": lambda: driver.put_content("/loop/x", b"x"),
                "writer": lambda: open_writer(driver, "/loop/x"),
                "move": lambda: driver.move("/src/a", "/loop/a"),
                "delete": lambda: driver.delete("/loop/x"),
            },
            StorageIOError,
            "ELOOP",
        )


async def test_odd_objects_under_the_root_raise_driver_errors(tmp_path: Path) -> None:
    """A directory where a file should be: reading it is "not found" (as get_content
    says), cancelling a writer whose file became a directory an I/O error."""
    driver = FilesystemDriver(str(tmp_path))
    await driver.put_content("/dir/file", b"x")
    with trio.fail_after(TEST_TIMEOUT_S):
        with pytest.raises(PathNotFound):
            await drain(driver, "/dir")
        async with driver.writer("/up/data") as w:
            await w.write(b"x")
            os.unlink(tmp_path / "up" / "data")
            os.makedirs(tmp_path / "up" / "data" / "child")
            with pytest.raises(StorageIOError, match="EISDIR"):
                await w.cancel()


async def test_a_move_across_filesystems_that_runs_out_of_space_leaves_no_partial_file(
    tmp_path: Path,
) -> None:
    """Part of the root on another mount (a separate volume for blobs): ``move`` copies;
    a copy that finds no space must not leave a partial file at the blob's address."""
    root = tmp_path / "r"
    blobs = root / "blobs"
    blobs.mkdir(parents=True)
    driver = FilesystemDriver(str(root))
    data = os.urandom(64 * PAGE)
    with mounted_tmpfs(blobs, TMPFS_OPTIONS), trio.fail_after(TEST_TIMEOUT_S):
        await driver.put_content("/up/data", data)
        filler = fill(blobs, leave=16 * PAGE)  # room for a quarter of it
        with pytest.raises(StorageFull):
            await driver.move("/up/data", "/blobs/ab/data")
        assert sorted(p.name for p in blobs.iterdir()) == [filler.name]  # nothing partial
        assert await driver.get_content("/up/data") == data
        filler.unlink()
        await driver.move("/up/data", "/blobs/ab/data")
        assert await driver.get_content("/blobs/ab/data") == data
        with pytest.raises(PathNotFound):
            await driver.stat("/up/data")
