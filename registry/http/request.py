"""What a handler is given: the request (decoded once), the route it matched, the services.

A handler is ``async def handler(svc: Services, req: Request) -> Response`` and may raise
RegistryError. The app (``app.py``) builds the :class:`Request` from the ASGI scope once,
matches it against the route table (``routes.py``), sets ``route`` and ``params``, lets the
authenticate hook set ``user``, and calls the handler the matched :class:`Route` names for
the request's method. Handlers never import the app: what they use besides the request is in
:class:`Services`, built once with the app; URLs of other routes they are handed by the
table (``functools.partial``), their own is ``req.route``.

Decoding rules (one place, for the handlers, the access log, metrics and notifications):
header names lower-case, values latin-1, a repeated header joined with ``", "`` (RFC 9110
5.3); the path is the raw (percent-encoded) path without the query; the query is parsed
with blank values kept.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import aclosing, suppress
from dataclasses import dataclass, field
from typing import Any

from ..errors import ErrorCode, RegistryError
from ..ops.exchange import UNMATCHED_LABEL, EventKind
from ..proxy import ProxyCache
from ..storage.gc_service import OnlineGC
from ..storage.store import Storage
from .responses import Response
from .urls import base_url, route_root


class ClientDisconnected(Exception):
    """The client went away while we were reading its body."""


@dataclass
class AppOptions:
    """What the HTTP layer needs from the configuration (built by server.build_app)."""

    host: str | None = None  # http.host: absolute base URL for Location headers
    relative_urls: bool = False  # http.relativeurls
    delete_enabled: bool = False  # storage.delete.enabled
    readonly: bool = False  # storage.maintenance.readonly.enabled
    extra_headers: tuple[tuple[bytes, bytes], ...] = ()  # http.headers
    chunk_min_length: int | None = None  # OCI-Chunk-Min-Length hint (S3 part size)
    access_log: bool = True
    catalog_max_entries: int = 1000  # catalog.maxentries: the largest catalog page (n)


Handler = Callable[["Services", "Request"], Awaitable[Response]]

_PARAM = re.compile(r"\{(\w+)\}")
_MULTI = frozenset({"name", "path"})  # parameters that may contain "/"


@dataclass(frozen=True, eq=False, repr=False)
class Route:
    """One record of the route table: everything the registry knows about one route.

    - ``label``: its one name, used as the metric label (``handler``) and in logs.
    - ``template``: its path, e.g. ``/v2/{name}/blobs/{digest}``. The router matches it from
      the right end (``{name}`` takes any number of components, every other parameter one;
      a trailing ``/`` is optional), and :meth:`path` builds the route's URLs from it.
    - ``handlers``: one handler per method it answers (HEAD only where listed).
    - ``access``: per method, the access action auth checks (``auth/policy.py``'s PULL,
      PUSH, DELETE, CATALOG, ADMIN; None: any authenticated caller).
    - ``event``: the notification event kind of its exchanges (``ops/exchange.py``).

    Construction raises ValueError when ``access`` does not cover exactly the methods of
    ``handlers``.
    """

    label: str
    template: str
    handlers: Mapping[str, Handler]
    access: Mapping[str, str | None]
    event: EventKind | None = None
    pattern: re.Pattern[str] = field(init=False, repr=False)
    # A literal part of the template every matching path contains: the router tries the
    # pattern only on paths that contain it (a substring test costs a tenth of a match).
    marker: str = field(init=False, repr=False)
    allowed: frozenset[str] = field(init=False, repr=False)
    allow_header: str = field(init=False, repr=False)  # the 405 answer's Allow

    def __post_init__(self) -> None:
        if set(self.access) != set(self.handlers):
            raise ValueError(f"route {self.label}: access must name exactly its methods")
        set_ = object.__setattr__
        set_(self, "pattern", _compile(self.template))
        set_(self, "marker", _marker(self.template))
        set_(self, "allowed", frozenset(self.handlers))
        # Allow lists HEAD wherever GET is (what the 405 has always said).
        allow = self.allowed | ({"HEAD"} if "GET" in self.allowed else set())
        set_(self, "allow_header", ", ".join(sorted(allow)))

    def __repr__(self) -> str:
        return f"Route({self.label!r}, {self.template!r})"

    def path(self, **params: str) -> str:
        """This route's path for ``params`` (raw values, as the router hands them out)."""
        return self.template.format(**params)


def _compile(template: str) -> re.Pattern[str]:
    parts = []
    last = 0
    for m in _PARAM.finditer(template):
        parts.append(re.escape(template[last : m.start()]))
        key = m.group(1)
        # {name} and {path} take any number of components, every other parameter one.
        parts.append(f"(?P<{key}>.+)" if key in _MULTI else f"(?P<{key}>[^/]+)")
        last = m.end()
    tail = template[last:]
    optional_slash = tail.endswith("/")
    parts.append(re.escape(tail[:-1] if optional_slash else tail))
    return re.compile("^" + "".join(parts) + ("/?" if optional_slash else "") + "$")


def _marker(template: str) -> str:
    """The template's last literal part: every path its pattern matches contains it
    (without the trailing ``/``, which the pattern makes optional)."""
    literals = [p for p in _PARAM.split(template)[::2] if p]  # [::2]: not the names
    if not literals:
        return ""
    return literals[-1][:-1] if template.endswith("/") else literals[-1]


# The route of a request the table has no route (or no method) for. Not in the table.
NO_ROUTE = Route(UNMATCHED_LABEL, "", {}, {})


def decode_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """ASGI header pairs as a dict: lower-case names, a repeated header joined by ", "."""
    headers: dict[str, str] = {}
    for k, v in raw:
        name = k.decode("latin-1").lower()
        value = v.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


@dataclass
class Request:
    """One request, decoded once (see the module doc). The app sets ``route`` and
    ``params`` when the route table matches, ``user`` when authentication succeeds."""

    method: str
    path: str  # raw (percent-encoded) path
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    scheme: str
    client: str
    server: tuple[str, int] | None
    receive: Callable[[], Awaitable[dict[str, Any]]]
    route: Route = NO_ROUTE
    params: dict[str, str] = field(default_factory=dict)
    user: str | None = None
    body_done: bool = False  # the last body message (or a disconnect) has been received
    zerocopy: bool = False  # the server takes file bodies (responses.FileBody, ZEROCOPY)
    bytes_in: int = 0  # body bytes received so far (read or discarded)
    root_path: str = ""  # http.prefix ('' or '/a/b'): ``path`` starts with it when routed

    def q(self, key: str) -> str | None:
        v = self.query.get(key)
        return v[-1] if v else None

    @property
    def access(self) -> str | None:
        """The access action this request needs: its route's for its method."""
        return self.route.access.get(self.method)

    async def body(self) -> AsyncIterator[bytes]:
        """The request body as it arrives (pieces of about 256 KiB or less). Raises ClientDisconnected."""
        while True:
            message = await self.receive()
            kind = message["type"]
            if kind == "http.request":
                more = message.get("more_body", False)
                self.body_done = not more
                chunk = message.get("body", b"")
                if chunk:
                    self.bytes_in += len(chunk)
                    yield chunk
                if not more:
                    return
            elif kind == "http.disconnect":
                self.body_done = True
                raise ClientDisconnected()

    @property
    def unread_body(self) -> bool:
        """The client sent (or is sending) a body that the handler did not read to the end."""
        if self.body_done:
            return False
        return self.headers.get("content-length", "0") not in ("0", "") or (
            "transfer-encoding" in self.headers
        )

    async def discard_body(self) -> None:
        """Receive and drop what is left of the body, until its end or a disconnect."""
        with suppress(ClientDisconnected):
            async for _ in self.body():
                pass

    async def read(self, limit: int) -> bytes:
        """The whole body, at most ``limit`` bytes; MANIFEST_TOO_BIG (413) past it."""
        parts: list[bytes] = []
        have = 0
        async with aclosing(self.body()) as body:  # type: ignore[type-var]
            async for chunk in body:
                have += len(chunk)
                if have > limit:
                    raise RegistryError(ErrorCode.MANIFEST_TOO_BIG, f"body exceeds {limit} bytes")
                parts.append(chunk)
        return b"".join(parts)


@dataclass(frozen=True)
class Services:
    """What handlers use besides the request, built once with the app and never changed.

    ``gc``: the online collector behind ``/admin/gc`` (None answers 404 there).
    ``ui``: the web UI's state for its handlers (None: the UI is off).
    ``can_pull``: may the caller read another repository (cross-repository mounts)? From
    the access policy; None allows it, as the reference does."""

    storage: Storage
    options: AppOptions
    gc: OnlineGC | None = None
    can_pull: Callable[[Request, str], Awaitable[bool]] | None = None
    # The web UI's shared state (registry/ui/service.py's UIService; typed Any because the
    # UI imports this module); None: ui.enabled is false.
    ui: Any = None
    proxy: ProxyCache | None = None  # the pull-through cache (http/proxied.py), if configured

    def url(self, req: Request, path: str) -> str:
        """``path`` (a route's) as a Location URL (SPEC General 4: http.host, forwarded
        headers, or relative with http.relativeurls), under http.prefix (urls.route_root)."""
        host = self.options.host
        return base_url(
            req.headers,
            scheme=req.scheme,
            configured_host=host,
            relative=self.options.relative_urls,
            server=req.server,
        ) + route_root(host, req.root_path) + path
