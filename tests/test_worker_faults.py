"""A fault in one connection, or in one worker, is not the registry's end (issue 12, item 1).

- http/connections.py: an exception escaping a connection is one log line and closes that
  connection; cancellation passes through.
- supervisor.py, with real forked children: a worker that dies after it served is restarted
  again and again (the supervisor never gives up on those), one that dies before it serves
  is a start-up error the supervisor gives up on (exit 1).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from registry import supervisor
from registry.http.connections import serve_guarded

WAIT_S = 30.0  # bound on every wait below; the expected runs take a few seconds


async def test_an_exception_in_a_connection_is_one_line_and_closes_only_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="registry.http")
    ours, theirs = trio.testing.memory_stream_pair()

    async def broken_connection() -> None:
        async with trio.open_nursery() as nursery:  # hypercorn's task group: a group escapes
            nursery.start_soon(trio.sleep_forever)
            raise KeyError(1)

    await serve_guarded(broken_connection(), ours)  # does not raise
    records = [r for r in caplog.records if r.name == "registry.http"]
    assert len(records) == 1 and records[0].levelno == logging.WARNING
    assert records[0].exc_info is None  # one line, no traceback (a client can repeat it)
    assert "KeyError: 1" in records[0].getMessage()
    with trio.fail_after(WAIT_S):
        assert await theirs.receive_some() == b""  # closed


async def test_cancellation_passes_through_the_connection_guard() -> None:
    ours, _ = trio.testing.memory_stream_pair()
    with trio.CancelScope() as scope:
        scope.cancel()
        await serve_guarded(trio.sleep_forever(), ours)  # noqa: ASYNC105 (awaited inside)
    assert scope.cancelled_caught


class _Terminator:
    """A thread that sends SIGTERM to this process (the supervisor) once ``done()`` or
    after ``timeout`` seconds, unless ``stop()`` was called first."""

    def __init__(self, done: Callable[[], bool], timeout: float = WAIT_S) -> None:
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, args=(done, timeout), daemon=True)
        self._thread.start()

    def _watch(self, done: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            if self._stopped.wait(0.02):
                return
        if not self._stopped.is_set():
            os.kill(os.getpid(), signal.SIGTERM)

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(WAIT_S)


def _record_start(path: Path) -> None:
    with open(path, "a") as f:  # a few bytes from a worker that exits at once: no thread
        f.write(f"{os.getpid()}\n")


def _starts(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_workers_that_crash_after_serving_are_restarted_without_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On main the supervisor gave up after six quick deaths; a client that can crash a
    worker could so stop the registry. Here: ten deaths, ten restarts, and exit 0 on SIGTERM."""
    monkeypatch.setattr(supervisor, "MAX_RESTART_DELAY_S", 0.2)  # keep the test short
    log = tmp_path / "starts"

    async def serve_then_crash(ready: Callable[[], None]) -> None:
        ready()
        _record_start(log)
        os._exit(3)  # a crash, as a client-triggered bug or an OOM kill would end it

    terminator = _Terminator(lambda: _starts(log) >= 10)
    try:
        assert supervisor.supervise(1, serve_then_crash) == 0
    finally:
        terminator.stop()
    assert _starts(log) >= 10
    assert len(set(log.read_text().split())) == _starts(log)  # a new process each time


def test_workers_that_die_before_serving_make_the_supervisor_give_up(tmp_path: Path) -> None:
    log = tmp_path / "starts"

    async def fail_at_start(ready: Callable[[], None]) -> None:
        _record_start(log)
        raise RuntimeError("storage unreachable")

    terminator = _Terminator(lambda: False)  # a bound, should it never give up
    try:
        assert supervisor.supervise(1, fail_at_start) == 1
    finally:
        terminator.stop()
    assert _starts(log) == supervisor.MAX_STARTUP_FAILURES
