"""Small reads and stats the filesystem driver serves on the event loop (link files and
manifests from the page cache; ``stat`` always) skip most full checkpoints, which cost as
much as the read (issue 14, item 4). They stay checkpoints all the same: a cancelled caller
is always cancelled there, and a loop of them lets other tasks run at least every
``INLINE_YIELD_INTERVAL_S``."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import trio
from test_filesystem_reads import _flaky_preadv

from registry.drivers import filesystem
from registry.drivers.filesystem import SMALL_READ, FilesystemDriver

LINK = b"sha256:" + b"a" * 64  # a link file's content
CALLS = 20_000  # inline calls in a row: tens of ms at least, far past the yield interval
BOUND = 60  # seconds: any test here
PAGE = 4096
SIZES = [0, 1, 71, PAGE - 1, PAGE, PAGE + 1, 3 * PAGE + 5, SMALL_READ,
         SMALL_READ + 1, 3 * SMALL_READ]


async def _driver(tmp_path: Path) -> FilesystemDriver:
    d = FilesystemDriver(str(tmp_path))
    await d.put_content("/link", LINK)
    return d


@pytest.mark.parametrize("call", ["stat", "get_content"])
async def test_a_cancelled_caller_is_cancelled_by_an_inline_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, call: str
) -> None:
    d = await _driver(tmp_path)
    # Every call after the first skips the yield: only the cancellation check remains.
    monkeypatch.setattr(filesystem, "INLINE_YIELD_INTERVAL_S", 3600.0)
    await getattr(d, call)("/link")
    reached = False
    with trio.fail_after(BOUND):
        with trio.CancelScope() as scope:
            scope.cancel()
            await getattr(d, call)("/link")
            reached = True
    assert not reached


@pytest.mark.parametrize("call", ["stat", "get_content"])
async def test_a_loop_of_inline_calls_lets_other_tasks_run(tmp_path: Path, call: str) -> None:
    d = await _driver(tmp_path)
    if call == "get_content" and d._read_small_nowait(str(tmp_path) + "/link") is None:
        pytest.skip("this filesystem has no RWF_NOWAIT: get_content always uses a thread here")
    fn = getattr(d, call)
    ran = 0
    done = False

    async def other() -> None:
        nonlocal ran
        while not done:
            await trio.lowlevel.checkpoint()
            ran += 1

    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(other)
            await trio.lowlevel.checkpoint()
            before = ran
            for _ in range(CALLS):
                await fn("/link")
            during = ran - before
            done = True
    assert during >= 1
    assert await d.get_content("/link") == LINK


# Not "short": that fake slices the buffer, a copy for get_content's bytearray (the kernel
# writes into the buffer itself), so a 1-byte file would read as a zero byte.
@pytest.mark.parametrize("mode", ["cached", "eagain", "unsupported"])
async def test_small_reads_are_exact_whichever_path_they_take(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """get_content's read on the loop and its thread fallback give the whole file for
    every size around a page and the small-read limit."""
    d = FilesystemDriver(str(tmp_path))
    rng = random.Random(5)
    files = {f"/f{size}": rng.randbytes(size) for size in SIZES}
    for path, data in files.items():
        await d.put_content(path, data)
    if mode != "cached":
        monkeypatch.setattr(filesystem.os, "preadv", _flaky_preadv(os.preadv, mode))
    with trio.fail_after(BOUND):
        for _ in range(2):
            for path, data in files.items():
                assert await d.get_content(path) == data, path
