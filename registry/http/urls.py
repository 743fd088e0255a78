"""Building ``Location`` URLs (SPEC.md General 4). Pure."""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import urlsplit

_FORWARDED_PAIR = re.compile(r'(?i)\b(proto|host)=("?)([^";,]+)\2')
_HOST_OK = re.compile(r"^[A-Za-z0-9.\-_:\[\]]{1,255}$")


def base_url(
    headers: Mapping[str, str],
    *,
    scheme: str = "http",
    configured_host: str | None = None,
    relative: bool = False,
    server: tuple[str, int] | None = None,
) -> str:
    """The scheme://host prefix for Location headers ('' when relative).

    Precedence: ``http.host`` from config; then the first ``Forwarded`` element's
    proto/host; then ``X-Forwarded-Proto`` / ``X-Forwarded-Host`` (first value of a list);
    then the request's Host header and scheme. Hosts that are not plausible host names are
    ignored, so a client cannot inject text into our headers.
    """
    if relative:
        return ""
    if configured_host:
        return configured_host.rstrip("/")
    proto: str | None = None
    host: str | None = None
    fwd = headers.get("forwarded")
    if fwd:
        first = fwd.split(",", 1)[0]
        for key, _, val in _FORWARDED_PAIR.findall(first):
            if key.lower() == "proto" and proto is None:
                proto = val.strip().lower()
            elif key.lower() == "host" and host is None:
                host = val.strip()
    if proto is None and headers.get("x-forwarded-proto"):
        proto = headers["x-forwarded-proto"].split(",", 1)[0].strip().lower()
    if host is None and headers.get("x-forwarded-host"):
        host = headers["x-forwarded-host"].split(",", 1)[0].strip()
    if proto not in ("http", "https"):
        proto = scheme
    if not host or not _HOST_OK.match(host):
        host = headers.get("host", "")
        if not _HOST_OK.match(host):
            host = f"{server[0]}:{server[1]}" if server else "localhost"
    return f"{proto}://{host}"


def route_root(configured_host: str | None, prefix: str) -> str:
    """The path our URLs put before a route's path: ``http.prefix`` ('' or '/a/b'), unless
    ``http.host`` carries a path of its own, which then stands for it (registry:3 resolves
    its routes against http.host's URL; with a bare host it drops the prefix, which sends
    clients of a proxied prefix outside it: we keep it)."""
    if configured_host and urlsplit(configured_host).path.strip("/"):
        return ""
    return prefix
