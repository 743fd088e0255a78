"""A driver wrapped to time every call and count failures (as distribution's ``driver/base``
wraps each driver). Otherwise it is the wrapped driver exactly: attributes it does not
override pass through.

It reports to a :class:`CallRecorder` (the operations' metrics, ``ops/metrics.py``) and knows
nothing else about it. A not-found answer, a refused exclusive create (a busy upload
lease) and a cancellation are normal outcomes, not failures: they are timed but not
counted as errors.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol

import trio

from .base import AlreadyExists, PathNotFound


class CallRecorder(Protocol):
    def record_call(self, driver: str, action: str, seconds: float, error: str | None) -> None:
        """One call of ``action`` on ``driver`` took ``seconds``; ``error`` names the
        exception type of a failure, None otherwise."""


class InstrumentedDriver:
    """``driver`` with every call timed into ``recorder`` (see the module doc)."""

    _TIMED = (
        "get_content",
        "put_content",
        "create_exclusive",
        "stat",
        "list",
        "move",
        "delete",
        "redirect_url",
    )
    _NORMAL = (PathNotFound, AlreadyExists, trio.Cancelled)  # outcomes, not failures

    def __init__(self, driver: Any, recorder: CallRecorder) -> None:
        self._driver = driver
        self._recorder = recorder
        self.name = getattr(driver, "name", type(driver).__name__)
        for action in self._TIMED:
            if hasattr(driver, action):
                setattr(self, action, self._timed(action, getattr(driver, action)))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._driver, name)

    def _record(self, action: str, started: float, exc: BaseException | None) -> None:
        failed = exc is not None and not isinstance(exc, self._NORMAL)
        self._recorder.record_call(self.name, action, time.perf_counter() - started,
                                   type(exc).__name__ if failed else None)

    def _timed(self, action: str, call: Callable[..., Any]) -> Callable[..., Any]:
        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                result = await call(*args, **kwargs)
            except BaseException as exc:
                self._record(action, started, exc)
                raise
            self._record(action, started, None)
            return result

        return timed

    @asynccontextmanager
    async def _opened(self, action: str, cm: Any) -> AsyncIterator[Any]:
        started = time.perf_counter()
        try:
            entered = await cm.__aenter__()
        except BaseException as exc:
            self._record(action, started, exc)
            raise
        self._record(action, started, None)
        exc_info: tuple[Any, Any, Any] = (None, None, None)
        try:
            yield entered
        except BaseException as exc:
            exc_info = (type(exc), exc, exc.__traceback__)
            if not await cm.__aexit__(*exc_info):
                raise
        else:
            await cm.__aexit__(*exc_info)

    def reader(self, path: str, offset: int = 0, length: int | None = None) -> Any:
        return self._opened("reader", self._driver.reader(path, offset, length))

    def writer(self, path: str, append: bool = False) -> Any:
        return self._opened("writer", self._driver.writer(path, append))

    def walk(self, path: str) -> Any:
        return self._driver.walk(path)

    async def aclose(self) -> None:
        await self._driver.aclose()
