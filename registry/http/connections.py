"""One connection's failure stays that connection's.

Hypercorn's trio worker runs each connection as a task in the nursery that also owns the
accept loop (``trio.serve_listeners(..., handler_nursery=...)``): an exception that escapes
one connection (a protocol bug a client can trigger, e.g. hypercorn's h2 KeyError) cancels
every other connection and ends the worker process. :func:`install` wraps hypercorn's
per-connection task so that such an exception is logged as one line (no traceback: a client
can trigger it at will) and closes only that connection. Cancellation (shutdown) passes
through untouched.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import hypercorn.trio.run
import trio

log = logging.getLogger("registry.http")

CLOSE_TIMEOUT_S = 1.0  # closing a broken connection: a TLS close_notify must not hang us


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def describe(exc: BaseException) -> str:
    """One line: each exception's type, message and the place it was raised."""
    parts = []
    for leaf in _leaves(exc):
        frames = traceback.extract_tb(leaf.__traceback__)
        where = ""
        if frames:  # the last two path parts say which library: hypercorn/protocol/h2.py
            where = f" at {'/'.join(frames[-1].filename.split('/')[-2:])}:{frames[-1].lineno}"
        parts.append(f"{type(leaf).__name__}: {str(leaf)[:200]}{where}")
    return "; ".join(parts)


async def serve_guarded(server: Any, stream: trio.abc.Stream) -> None:
    """Run one connection (``server`` is awaitable); an exception other than cancellation
    is logged and closes ``stream``, and does not propagate."""
    try:
        await server
    except BaseException as exc:
        cancelled: BaseException | None
        rest: BaseException | None
        if isinstance(exc, BaseExceptionGroup):
            cancelled, rest = exc.split(trio.Cancelled)
        elif isinstance(exc, (trio.Cancelled, KeyboardInterrupt, SystemExit)):
            raise
        else:
            cancelled, rest = None, exc
        if rest is None:
            raise
        log.warning("connection closed after an internal error: %s", describe(rest))
        with trio.move_on_after(CLOSE_TIMEOUT_S) as scope:
            scope.shield = True
            await trio.aclose_forcefully(stream)
        if cancelled is not None:
            raise cancelled from None


def guarded(factory: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """Wrap a hypercorn connection class (called as ``factory(app, config, context, state,
    stream)``, its instance awaitable) so that each connection runs under serve_guarded."""

    def connection(*args: Any) -> Awaitable[None]:
        return serve_guarded(factory(*args), args[-1])

    connection.registry_guarded = True  # type: ignore[attr-defined]
    return connection


def install() -> None:
    """Guard the connection class hypercorn's trio worker uses (idempotent). Install it after
    anything else that replaces that class, so the guard is the outermost layer."""
    current = getattr(hypercorn.trio.run, "TCPServer", None)
    if current is None:
        raise RuntimeError("unsupported hypercorn version: no hypercorn.trio.run.TCPServer")
    if not getattr(current, "registry_guarded", False):
        hypercorn.trio.run.TCPServer = guarded(current)  # type: ignore[assignment,misc]
