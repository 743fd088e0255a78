"""The ASGI application: decoding, dispatch through the route table, the error envelope,
the access log, and the exchange record operations observe.

One :class:`RegistryApp` per worker process, built in one step from everything it uses
(storage, options, background loops, the authenticate hook, the pull check, the online
collector, operations) and not changed after. It owns a lifespan nursery for the
``background`` callables (upload purging, online GC, the health check, notification
delivery). Per request it decodes a :class:`~.request.Request` once, matches it against
the table (``router.py``, ``routes.py``), authenticates, and calls the route's handler for
the method with the app's :class:`~.request.Services`. With operations observing (metrics,
listeners) it also fills one :class:`~registry.ops.exchange.Exchange` per request and hands
it over after the response; otherwise a request pays nothing for them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qs

import trio

from .. import logs
from ..errors import ErrorCode, RegistryError, unwrap
from ..ops import Operations
from ..ops.exchange import Exchange, metric_method
from ..proxy import ProxyCache
from ..reference import is_valid_name
from ..storage.gc_service import OnlineGC
from ..storage.store import Storage, as_registry_error
from ..ui.headers import SECURITY_HEADERS
from . import proxied, router
from .request import AppOptions, ClientDisconnected, Request, Services, decode_headers
from .responses import API_VERSION_HEADER, ZEROCOPY, FileBody, Response, error_response
from .routes import CORE_ROUTES, ROUTES, UI_PAGE_ROUTES, UI_ROUTES

__all__ = ["AppOptions", "RegistryApp"]

log = logging.getLogger("registry.http")

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# The reference's answer while a health check fails (its health.Handler), word for word.
_UNHEALTHY = RegistryError(ErrorCode.UNAVAILABLE,
                           detail="health check failed: please see /debug/health")

Background = Callable[[trio.Nursery], Awaitable[None]]
Authenticate = Callable[[Request], Awaitable[None]]


class RegistryApp:
    """The API as an ASGI app (see the module doc).

    ``authenticate(req)`` runs before name validation and the handler: it sets ``req.user``
    or raises RegistryError (401/403/429). ``can_pull(req, repo)`` and ``gc`` go to the
    handlers (:class:`Services`). ``ops``: metrics and exchange listeners to feed, and the
    health check and debug app server.py serves beside the API.
    """

    def __init__(
        self,
        storage: Storage,
        options: AppOptions | None = None,
        *,
        background: Iterable[Background] = (),
        authenticate: Authenticate | None = None,
        can_pull: Callable[[Request, str], Awaitable[bool]] | None = None,
        gc: OnlineGC | None = None,
        ops: Operations | None = None,
        ui: Any = None,
        proxy: ProxyCache | None = None,
    ) -> None:
        self.services = Services(storage, options or AppOptions(), gc, can_pull, ui, proxy)
        # The web UI (registry/ui/service.UIService) or None (ui.enabled false): then its
        # routes are not in the table the router reads, and /ui is an unknown path.
        self._routes = ROUTES if ui is not None else CORE_ROUTES
        self._ui_routes = frozenset(UI_ROUTES) if ui is not None else frozenset()
        # Served without authentication (token auth: the page asks for the token itself).
        self._public = frozenset(UI_PAGE_ROUTES) if ui is not None and ui.pages_public \
            else frozenset()
        self.ops = ops or Operations()
        # The pull-through cache's fetches and expiry run in the lifespan nursery too.
        self._background = tuple(background) + ((proxy.start,) if proxy is not None else ())
        self._authenticate = authenticate
        self._observing = self.ops.observing
        # http.headers from the config win over our defaults (no header sent twice).
        configured = {k for k, _ in self.options.extra_headers}
        defaults = (API_VERSION_HEADER, (b"x-content-type-options", b"nosniff"))
        self._common: tuple[tuple[bytes, bytes], ...] = tuple(
            h for h in defaults if h[0] not in configured
        ) + tuple(self.options.extra_headers)

    @property
    def storage(self) -> Storage:
        return self.services.storage

    @property
    def options(self) -> AppOptions:
        return self.services.options

    @property
    def gc(self) -> OnlineGC | None:
        return self.services.gc

    # --- ASGI entry point ----------------------------------------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        message = await receive()
        if message["type"] != "lifespan.startup":
            return
        try:
            async with trio.open_nursery() as nursery:
                for start in self._background:
                    await start(nursery)
                await send({"type": "lifespan.startup.complete"})
                message = await receive()  # lifespan.shutdown
                nursery.cancel_scope.cancel()
        except Exception:
            log.exception("lifespan failed")
            raise
        finally:
            with trio.CancelScope(shield=True):
                await self.storage.driver.aclose()
        await send({"type": "lifespan.shutdown.complete"})

    async def _http(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        started = time.perf_counter()
        raw_path = scope.get("raw_path") or scope["path"].encode()
        qs = scope.get("query_string", b"")
        client = scope.get("client")
        req = Request(
            method=scope["method"],
            path=raw_path.decode("latin-1").split("?", 1)[0],
            query=parse_qs(qs.decode("latin-1"), keep_blank_values=True) if qs else {},
            headers=decode_headers(scope["headers"]),
            scheme=scope.get("scheme", "http"),
            client=client[0] if client else "-",
            server=scope.get("server"),
            receive=receive,
            zerocopy=ZEROCOPY in scope.get("extensions", ()),
            root_path=scope.get("root_path") or "",
        )
        rl = logs.begin_request(req, scope)  # every line of this request carries its fields
        routed = _under_root(req.path, req.root_path)
        try:
            await self._route(req, m=router.match(routed, req.method, self._routes)
                              if routed else None,
                              send=send, started=started)
        finally:
            logs.end_request(rl)

    async def _route(self, req: Request, m: router.Match | None, send: Any, started: float) -> None:
        if m is not None:
            req.params = m.params
            if m.method_ok:
                req.route = m.route
        if not self._observing:
            await self._answer(req, m, send, started, None)
            return
        ex = Exchange(
            method=metric_method(req.method), label=req.route.label, event=req.route.event,
            params=req.params, path=req.path, client=req.client, query=req.query,
            request_headers=req.headers if self.ops.listeners else {},
        )
        gauges = self.ops.metrics.gauges_for(ex) if self.ops.metrics is not None else ()
        for g in gauges:
            g.inc()
        try:
            await self._answer(req, m, send, started, ex)
        finally:
            ex.seconds = time.perf_counter() - started
            ex.user = req.user
            ex.bytes_in = req.bytes_in
            for g in gauges:
                g.dec()
        if ex.status:  # else no response started (cancelled): nothing happened on the wire
            self._observed(ex)

    async def _answer(
        self, req: Request, m: router.Match | None, send: Any, started: float,
        ex: Exchange | None,
    ) -> None:
        head = req.method == "HEAD"
        sent = 0
        try:
            resp = await self._dispatch(req, m)
        except BaseException as exc:
            maybe = self._error(exc, req, head)
            if maybe is None:
                raise
            resp = maybe
        if req.route in self._ui_routes:  # every /ui answer, errors too (API.md)
            resp.headers = [*resp.headers, *SECURITY_HEADERS]
        try:
            if req.unread_body:
                sent = await self._send_unread(send, resp, head or resp.head, req, ex)
            else:
                sent = await self._send(send, resp, head or resp.head, ex)
        except ClientDisconnected:
            pass
        finally:
            if self.options.access_log:
                self._log_access(resp, sent, time.perf_counter() - started)

    def _observed(self, ex: Exchange) -> None:
        """Hand a finished exchange to the metrics and the listeners. Listeners must not
        block (the notifier only enqueues); one that raises is logged and ignored."""
        if self.ops.metrics is not None:
            self.ops.metrics.observe(ex)
        for listener in self.ops.listeners:
            try:
                listener(ex)
            except Exception:
                log.exception("exchange listener failed")

    def _error(self, exc: BaseException, req: Request, head: bool) -> Response | None:
        if _only_cancellation(exc):
            return None  # not an error: our scope is being cancelled (shutdown, disconnect)
        exc = unwrap(exc)
        if isinstance(exc, ClientDisconnected):
            return Response(400, [], b"", length=0, head=True)
        err = as_registry_error(exc)
        if err is None:
            log.error("unhandled error on %s %s", req.method, req.path, exc_info=exc)
            err = RegistryError(ErrorCode.UNKNOWN)
        elif err.status >= 500:
            log.warning("%s %s: %s", req.method, req.path, exc)
        rl = logs.current_request()
        if rl is not None:  # the access line names the error, as v3's
            rl.error = err
        return error_response(err, head)

    async def _dispatch(self, req: Request, m: router.Match | None) -> Response:
        health = self.ops.health
        if health is not None and not health.healthy:  # every path, as the reference
            # Returned, not raised: the failing check logs once, not every request.
            return error_response(_UNHEALTHY, req.method == "HEAD")
        if req.path == "/":
            if self._ui_routes and req.method == "GET" and "text/html" in req.headers.get(
                "accept", ""
            ):  # a browser opening the registry's URL: the UI (API.md "Pages")
                return Response(302, [(b"location", f"{req.root_path}/ui/".encode()),
                                      (b"cache-control", b"no-cache")], b"")
            # v3's alive("/"): 200, empty, for any method, whatever http.prefix, before
            # authentication (the image's health check: wget --spider http://localhost:5000/),
            # but after the health gate, as v3 wraps it in health.Handler.
            return Response(200, [(b"cache-control", b"no-cache")], b"")
        if m is None:  # also every path outside http.prefix (v3: 404 as well)
            raise RegistryError(ErrorCode.UNSUPPORTED, "no such endpoint", status=404)
        if not m.method_ok:
            raise RegistryError(
                ErrorCode.UNSUPPORTED,
                f"method {req.method[:10]} not allowed here",
                headers={"Allow": m.route.allow_header},
            )
        if self._authenticate is not None and req.route not in self._public:
            await self._authenticate(req)
        name = req.params.get("name")
        if name is not None and not is_valid_name(name):
            raise RegistryError(ErrorCode.NAME_INVALID, detail={"name": name[:300]})
        if self.options.readonly and req.method in WRITE_METHODS:
            raise RegistryError(ErrorCode.UNSUPPORTED, "registry is in read-only mode")
        if self.services.proxy is not None:  # names under a remote's prefix (proxied.py)
            answer = await proxied.handle(self.services, req, self.services.proxy)
            if answer is not None:
                return answer
        return await req.route.handlers[req.method](self.services, req)

    async def _send_unread(
        self, send: Any, resp: Response, head: bool, req: Request, ex: Exchange | None
    ) -> int:
        """Answer a request whose body was not read (an early error): drop the rest of the
        body while the response goes out, and close the connection after it.

        Hypercorn queues body pieces for the app and, when the response ends, queues one
        more message (a disconnect) in the same bounded queue; nobody receiving would
        block that forever and hang the connection. Closing it spares reading the rest of
        a large body just to keep the connection alive."""
        resp = replace(resp, headers=[*resp.headers, (b"connection", b"close")])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(req.discard_body)
            sent = await self._send(send, resp, head, ex)
            nursery.cancel_scope.cancel()
        return sent

    async def _send(self, send: Any, resp: Response, head: bool, ex: Exchange | None) -> int:
        """Send ``resp``; the body bytes sent. ``ex`` (when observing) gets the status as
        the response starts, the response headers (for listeners), and the bytes sent."""
        headers = list(self._common)
        rl = logs.current_request()
        if rl is not None:  # the request id, for a client's report to match our line
            headers.append((logs.REQUEST_ID_HEADER, rl.id.encode()))
        headers.extend(resp.headers)
        body = resp.body
        if isinstance(body, (bytes, bytearray)):
            length = resp.length if resp.length is not None else len(body)
            headers.append((b"content-length", str(length).encode()))
            if ex is not None:
                self._started(ex, resp.status, headers)
            await send({"type": "http.response.start", "status": resp.status, "headers": headers})
            if head or not body:
                await send({"type": "http.response.body", "body": b""})
                return 0
            if ex is not None:
                ex.bytes_out = len(body)
            await send({"type": "http.response.body", "body": bytes(body)})
            return len(body)
        if resp.length is not None:
            headers.append((b"content-length", str(resp.length).encode()))
        if ex is not None:
            self._started(ex, resp.status, headers)
        if isinstance(body, FileBody):
            try:
                await send({"type": "http.response.start", "status": resp.status,
                            "headers": headers})
                if head:
                    await send({"type": "http.response.body", "body": b""})
                    return 0
                if ex is not None:
                    ex.bytes_out = body.count
                await send({"type": ZEROCOPY, "file": body.file, "offset": body.offset,
                            "count": body.count, "more_body": False})
                return body.count
            finally:
                await body.aclose()
        await send({"type": "http.response.start", "status": resp.status, "headers": headers})
        sent = 0
        if not head:
            try:
                async for chunk in body:
                    sent += len(chunk)
                    if ex is not None:
                        ex.bytes_out = sent
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            finally:  # a send that raised (client gone) must not leave the blob open
                aclose = getattr(body, "aclose", None)
                if aclose is not None:
                    await aclose()
        await send({"type": "http.response.body", "body": b""})
        return sent

    def _started(self, ex: Exchange, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        ex.status = status
        if self.ops.listeners:  # only listeners read headers: decode for them
            ex.response_headers = decode_headers(headers)

    def _log_access(self, resp: Response, sent: int, seconds: float) -> None:
        rl = logs.current_request()
        if rl is None:
            return
        ctype = None
        for name, value in resp.headers:
            if name == b"content-type":
                ctype = value.decode("latin-1")
        logs.access(rl, resp.status, sent, seconds, ctype)


def _only_cancellation(exc: BaseException) -> bool:
    """True for trio.Cancelled, or a nursery's group made only of Cancelled."""
    if isinstance(exc, trio.Cancelled):
        return True
    if isinstance(exc, BaseExceptionGroup):
        _, rest = exc.split(trio.Cancelled)
        return rest is None
    return False


def _under_root(path: str, root: str) -> str:
    """``path`` (raw) with the ASGI root_path (http.prefix) taken off, the path the route
    table matches; '' for a path outside the prefix."""
    if not root:
        return path
    if path.startswith(root) and path[len(root) : len(root) + 1] == "/":
        return path[len(root) :]
    return ""
