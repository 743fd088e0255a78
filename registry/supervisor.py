"""The parent process: fork the workers, restart the ones that die, forward SIGTERM/SIGINT.

A worker reports once that it serves (``ready()``, written to a pipe the parent reads when
the worker exits). That tells two kinds of death apart:

- a worker that dies after it was ready died of something a client did (or the kernel's OOM
  killer, or an operator's kill -9): it is restarted, after a delay that doubles with each
  such death in a row (RESTART_DELAY_S up to MAX_RESTART_DELAY_S) so that a crash loop costs
  little CPU, and the supervisor never gives up on these: the other workers keep serving;
- a worker that dies before it was ready has a start-up problem (storage unreachable, a bad
  certificate) that restarting will not fix: after MAX_STARTUP_FAILURES of those in a row
  the supervisor stops the others and returns 1.

The parent sleeps in ``select`` on a wakeup pipe (``signal.set_wakeup_fd``) that SIGCHLD,
SIGTERM and SIGINT write to, with a timeout for the next pending restart: no polling, and a
signal is never lost between two waits.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio

from .logs import go_duration

log = logging.getLogger("registry")

RESTART_DELAY_S = 0.1  # first restart after a crash: quick, the worker was healthy before
MAX_RESTART_DELAY_S = 10.0  # a crash loop costs at most one fork + start-up per 10 s
STABLE_AFTER_S = 60.0  # a worker that lived this long resets the crash streak of its slot
MAX_STARTUP_FAILURES = 5  # workers in a row that die before ready: a start-up error, stop


@dataclass
class _Worker:
    slot: int
    ready_fd: int  # read end of the pipe the worker writes b"r" to once it serves
    started: float  # time.monotonic() at fork


def _was_ready(fd: int) -> bool:
    try:
        return os.read(fd, 1) == b"r"
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def describe_status(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        return f"was killed by signal {-code} ({signal.Signals(-code).name})"
    return f"exited with status {code}"


def supervise(
    n: int,
    target: Callable[..., Any],
    on_exit: Callable[[int], None] | None = None,
    on_stop: Callable[[], None] | None = None,
    drain_s: float | None = None,
) -> int:
    """Run ``n`` workers, each ``trio.run(partial(target, ready=notify))`` in a forked child
    (``notify()`` must be called once the worker serves), until SIGTERM/SIGINT, which is
    forwarded to them. ``on_exit(pid)`` runs for each worker that ends; ``on_stop()`` once
    when stopping begins (close the parent's copies of the listening sockets there: the
    kernel must refuse new connections once the workers stop accepting, not queue them).
    On SIGTERM/SIGINT the parent logs v3's line, ``stopping server gracefully. Draining
    connections for <drain_s>`` (when ``drain_s`` is given), once, outside the handler.
    Returns 0 after a signal once every worker has ended, 1 after giving up on start-up
    failures."""
    children: dict[int, _Worker] = {}
    pending: dict[int, float] = {}  # slot -> time.monotonic() at which to start it
    streak = [0] * n  # crashes in a row per slot, after it had been ready
    startup_failures = 0
    stopping = False
    announced = False  # the stop line is logged from the loop, not the signal handler
    result = 0
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)

    def spawn(slot: int) -> None:
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(ready_r)
            for fd in (wake_r, wake_w, *(w.ready_fd for w in children.values())):
                os.close(fd)
            _run_child(target, ready_w)
        os.close(ready_w)
        os.set_blocking(ready_r, False)
        children[pid] = _Worker(slot, ready_r, time.monotonic())

    def forward(signum: int, frame: Any) -> None:
        nonlocal stopping
        if not stopping and on_stop is not None:
            on_stop()
        stopping = True
        pending.clear()
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)}
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # only to wake the select
    old_wakeup = signal.set_wakeup_fd(wake_w)
    try:
        for slot in range(n):
            spawn(slot)
        while children or pending:
            now = time.monotonic()
            for slot, due in sorted(pending.items()):
                if due <= now:
                    del pending[slot]
                    spawn(slot)
            timeout = max(0.0, min(pending.values()) - now) if pending else None
            select.select([wake_r], [], [], timeout)
            try:
                while os.read(wake_r, 512):
                    pass
            except BlockingIOError:
                pass
            if stopping and not announced and drain_s is not None and result == 0:
                announced = True
                log.info("stopping server gracefully. Draining connections for %s",
                         go_duration(drain_s))
            while children:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    children.clear()
                    break
                if pid == 0:
                    break
                worker = children.pop(pid, None)
                if worker is None:
                    continue
                if on_exit is not None:
                    on_exit(pid)
                ready = _was_ready(worker.ready_fd)
                if stopping:
                    continue
                now = time.monotonic()
                if ready:
                    startup_failures = 0
                    if now - worker.started > STABLE_AFTER_S:
                        streak[worker.slot] = 0
                    delay = min(MAX_RESTART_DELAY_S, RESTART_DELAY_S * 2 ** streak[worker.slot])
                    streak[worker.slot] += 1
                else:
                    startup_failures += 1
                    if startup_failures >= MAX_STARTUP_FAILURES:
                        log.error(
                            "worker %d %s before it started serving, %d times in a row;"
                            " stopping", pid, describe_status(status), startup_failures,
                        )
                        result = 1
                        forward(signal.SIGTERM, None)
                        continue
                    delay = 1.0  # a start-up error: do not spin
                log.error(
                    "worker %d %s%s; restarting in %.1fs", pid, describe_status(status),
                    "" if ready else " before it started serving", delay,
                )
                pending[worker.slot] = now + delay
    finally:
        signal.set_wakeup_fd(old_wakeup)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        os.close(wake_r)
        os.close(wake_w)
    return result


def _run_child(target: Callable[..., Any], ready_w: int) -> None:
    """The forked worker: never returns."""
    # Until trio installs its own receiver, a SIGTERM must end this worker, not run the
    # parent's forwarding handler (which would ignore it and orphan the worker). trio sets
    # its own wakeup fd and warns if one is already set.
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)

    def notify() -> None:
        log.info("worker %d serving", os.getpid())
        try:
            os.write(ready_w, b"r")
        except OSError:
            pass

    code = 0
    try:
        trio.run(partial(target, ready=notify))
    except BaseException:
        log.exception("worker crashed")
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
