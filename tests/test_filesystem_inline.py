"""Small reads and stats the filesystem driver serves on the event loop (link files and
manifests from the page cache; ``stat`` always) skip most full checkpoints, which cost as
much as the read (issue 14, item 4). They stay checkpoints all the same: a cancelled caller
is always cancelled there, and a loop of them lets other tasks run at least every
``INLINE_YIELD_INTERVAL_S``."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from registry.drivers import filesystem
from registry.drivers.filesystem import FilesystemDriver

LINK = b"sha256:" + b"a" * 64  # a link file's content
CALLS = 20_000  # inline calls in a row: tens of ms at least, far past the yield interval
BOUND = 60  # seconds: any test here


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
