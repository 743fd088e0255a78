"""The reference's ``health.file``, ``health.http`` and ``health.tcp`` checks (its
``health/checks`` package), and their configuration.

- file: unhealthy while the file exists (an operator's "drain" switch); no threshold.
- http: a HEAD to ``uri`` with ``headers``; unhealthy unless the answer has ``statuscode``
  (default 200), after ``threshold`` failures in a row.
- tcp: a TCP connection to ``addr`` (host:port); unhealthy when it cannot be opened.

Each is a :class:`~.health.PeriodicCheck`, named in /debug/health as the reference names it:
the file path, the URI, the address.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import trio

from ..config import ConfigError, duration_setting
from .health import (
    DEFAULT_HEALTH_INTERVAL_S,
    HEALTH_CHECK_TIMEOUT_S,
    CheckFailed,
    PeriodicCheck,
)


@dataclass
class FileCheck(PeriodicCheck):
    path: str
    interval: float = DEFAULT_HEALTH_INTERVAL_S
    threshold: int = 1  # the reference's file check has no threshold: first failure counts
    timeout: float = HEALTH_CHECK_TIMEOUT_S
    failures: int = 0
    last_error: str | None = None

    @property
    def key(self) -> str:
        return self.path

    async def probe(self) -> None:
        try:
            await trio.Path(self.path).stat()  # a thread: the file may sit on a slow mount
        except FileNotFoundError:
            return
        raise CheckFailed("file exists")


@dataclass
class HTTPCheck(PeriodicCheck):
    uri: str
    headers: tuple[tuple[str, str], ...] = ()
    statuscode: int = 200
    interval: float = DEFAULT_HEALTH_INTERVAL_S
    threshold: int = 1
    timeout: float = HEALTH_CHECK_TIMEOUT_S
    failures: int = 0
    last_error: str | None = None

    @property
    def key(self) -> str:
        return self.uri

    async def probe(self) -> None:
        # One client per probe: a check every few seconds does not need a pool, and a
        # fresh connection is what tells a dead peer from a kept-alive socket.
        try:
            async with httpx.AsyncClient(follow_redirects=True,
                                         timeout=self.timeout) as client:
                answer = await client.head(self.uri, headers=list(self.headers))
        except httpx.HTTPError as e:
            raise CheckFailed(
                f"{self.uri}: error while checking: {e or type(e).__name__}") from None
        if answer.status_code != self.statuscode:
            raise CheckFailed(f"{self.uri}: downstream service returned unexpected status:"
                              f" {answer.status_code}")


@dataclass
class TCPCheck(PeriodicCheck):
    addr: str
    interval: float = DEFAULT_HEALTH_INTERVAL_S
    threshold: int = 1
    timeout: float = HEALTH_CHECK_TIMEOUT_S
    failures: int = 0
    last_error: str | None = None

    @property
    def key(self) -> str:
        return self.addr

    async def probe(self) -> None:
        host, _, port = self.addr.rpartition(":")
        try:
            stream = await trio.open_tcp_stream(host.strip("[]"), int(port))
        except OSError as e:
            # trio says "all attempts to connect ... failed"; the first attempt's error
            # (connection refused, no route) is the one worth reading.
            group = e.__cause__
            first = group.exceptions[0] if isinstance(group, BaseExceptionGroup) else e
            raise CheckFailed(f"{self.addr}: connection failed: {first}") from None
        await stream.aclose()


# --- configuration ------------------------------------------------------------------------


def _entries(section: Mapping[str, Any], kind: str) -> list[Mapping[str, Any]]:
    entries = section.get(kind) or []
    if not isinstance(entries, (list, tuple)) or not all(hasattr(e, "get") for e in entries):
        raise ConfigError(f"health.{kind}: expected a list of mappings")
    return list(entries)


def _common(entry: Mapping[str, Any], where: str) -> dict[str, Any]:
    interval = duration_setting(entry.get("interval"), f"{where}.interval",
                                DEFAULT_HEALTH_INTERVAL_S, positive=True)
    timeout = duration_setting(entry.get("timeout"), f"{where}.timeout", 0.0)
    threshold = entry.get("threshold", 0) or 0
    if not isinstance(threshold, int) or isinstance(threshold, bool) or threshold < 0:
        raise ConfigError(f"{where}.threshold: expected an integer, zero or more")
    # timeout 0 is "none" in the reference; here every probe has a deadline
    return {"interval": interval, "threshold": threshold,
            "timeout": timeout or HEALTH_CHECK_TIMEOUT_S}


def _text(entry: Mapping[str, Any], key: str, where: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}.{key}: required")
    return value.strip()


def _headers(value: Any, where: str) -> tuple[tuple[str, str], ...]:
    if not value:
        return ()
    if not hasattr(value, "items"):
        raise ConfigError(f"{where}.headers: expected a mapping of name: [values]")
    out = []
    for name, values in value.items():
        for v in values if isinstance(values, (list, tuple)) else [values]:
            out.append((str(name), str(v)))
    return tuple(out)


def parse_checks(section: Mapping[str, Any]) -> list[PeriodicCheck]:
    """The ``health.file``, ``health.http`` and ``health.tcp`` checks of the ``health``
    section. Raises ConfigError naming the key (``health.http[0].uri: required``)."""
    if not hasattr(section, "get"):
        return []
    found: list[PeriodicCheck] = []
    for i, entry in enumerate(_entries(section, "file")):
        where = f"health.file[{i}]"
        interval = duration_setting(entry.get("interval"), f"{where}.interval",
                                    DEFAULT_HEALTH_INTERVAL_S, positive=True)
        found.append(FileCheck(_text(entry, "file", where), interval=interval))
    for i, entry in enumerate(_entries(section, "http")):
        where = f"health.http[{i}]"
        uri = _text(entry, "uri", where)
        if not uri.startswith(("http://", "https://")):
            raise ConfigError(f"{where}.uri: expected an http:// or https:// URL, got {uri!r}")
        code = entry.get("statuscode", 0) or 200
        if not isinstance(code, int) or isinstance(code, bool) or not 100 <= code <= 599:
            raise ConfigError(f"{where}.statuscode: expected an HTTP status code")
        found.append(HTTPCheck(uri, _headers(entry.get("headers"), where), code,
                               **_common(entry, where)))
    for i, entry in enumerate(_entries(section, "tcp")):
        where = f"health.tcp[{i}]"
        addr = _text(entry, "addr", where)
        host, _, port = addr.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"{where}.addr: expected host:port, got {addr!r}")
        found.append(TCPCheck(addr, **_common(entry, where)))
    return found
