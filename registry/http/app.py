"""The ASGI application: request parsing, dispatch, the error envelope, the access log.

One :class:`RegistryApp` per worker process. It owns a lifespan nursery for background
loops (upload purging, online GC) started by ``background`` callables. Handlers live in
``blobs.py`` and ``manifests.py``; they receive a :class:`Request` and return a
:class:`Response` or raise RegistryError.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import aclosing, suppress
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qs

import trio

from .. import __version__
from ..errors import ErrorCode, RegistryError, unwrap
from ..reference import is_valid_name
from ..storage.gc_service import OnlineGC
from ..storage.store import Storage, as_registry_error
from . import router
from .responses import Response, error_response
from .urls import base_url

log = logging.getLogger("registry.http")
access_log = logging.getLogger("registry.access")

API_VERSION_HEADER = (b"docker-distribution-api-version", b"registry/2.0")
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class ClientDisconnected(Exception):
    """The client went away while we were reading its body."""


@dataclass
class AppOptions:
    """What the HTTP layer needs from the configuration (built by the CLI)."""

    host: str | None = None  # http.host: absolute base URL for Location headers
    relative_urls: bool = False  # http.relativeurls
    delete_enabled: bool = False  # storage.delete.enabled
    readonly: bool = False  # storage.maintenance.readonly.enabled
    extra_headers: tuple[tuple[bytes, bytes], ...] = ()  # http.headers
    chunk_min_length: int | None = None  # OCI-Chunk-Min-Length hint (S3 part size)
    access_log: bool = True


Background = Callable[[trio.Nursery], Awaitable[None]]


@dataclass
class Request:
    method: str
    path: str  # raw (percent-encoded) path
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    scheme: str
    client: str
    server: tuple[str, int] | None
    receive: Callable[[], Awaitable[dict[str, Any]]]
    params: dict[str, str] = field(default_factory=dict)
    user: str | None = None
    body_done: bool = False  # the last body message (or a disconnect) has been received

    def q(self, key: str) -> str | None:
        v = self.query.get(key)
        return v[-1] if v else None

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


Handler = Callable[["RegistryApp", Request], Awaitable[Response]]


class RegistryApp:
    def __init__(
        self,
        storage: Storage,
        options: AppOptions | None = None,
        *,
        background: Iterable[Background] = (),
        authenticate: Callable[[Request, str, dict[str, str]], Awaitable[None]] | None = None,
    ) -> None:
        self.storage = storage
        self.options = options or AppOptions()
        self._background = tuple(background)
        self.authenticate = authenticate
        from . import admin, blobs, manifests  # handlers register themselves in HANDLERS

        self.handlers: dict[str, Handler] = {
            **blobs.HANDLERS, **manifests.HANDLERS, **admin.HANDLERS
        }
        # The online collector (storage/gc_service.py) behind /admin/gc (http/admin.py);
        # build_app sets it, None answers 404 there.
        self.gc: OnlineGC | None = None
        # May the caller pull another repository (cross-repo mounts)? Set by build_app from
        # the access policy; None allows it, as the reference does.
        self.can_pull: Callable[[Request, str], Awaitable[bool]] | None = None
        # Metrics, health check and debug listener (http/debug.py), set by build_app.
        self.ops: Any = None
        # http.headers from the config win over our defaults (no header sent twice).
        configured = {k for k, _ in self.options.extra_headers}
        defaults = (API_VERSION_HEADER, (b"x-content-type-options", b"nosniff"))
        self._common: tuple[tuple[bytes, bytes], ...] = tuple(
            h for h in defaults if h[0] not in configured
        ) + tuple(self.options.extra_headers)

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
        raw_headers = scope["headers"]
        headers: dict[str, str] = {}
        for k, v in raw_headers:
            name = k.decode("latin-1").lower()
            value = v.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        raw_path = scope.get("raw_path") or scope["path"].encode()
        path = raw_path.decode("latin-1").split("?", 1)[0]
        qs = scope.get("query_string", b"")
        client = scope.get("client")
        req = Request(
            method=scope["method"],
            path=path,
            query=parse_qs(qs.decode("latin-1"), keep_blank_values=True) if qs else {},
            headers=headers,
            scheme=scope.get("scheme", "http"),
            client=client[0] if client else "-",
            server=scope.get("server"),
            receive=receive,
        )
        head = req.method == "HEAD"
        sent = 0
        status = 500
        try:
            resp = await self._dispatch(req, scope)
        except BaseException as exc:
            maybe = self._error(exc, req, head)
            if maybe is None:
                raise
            resp = maybe
        status = resp.status
        try:
            if req.unread_body:
                sent = await self._send_unread(send, resp, head or resp.head, req)
            else:
                sent = await self._send(send, resp, head or resp.head)
        except ClientDisconnected:
            pass
        finally:
            if self.options.access_log:
                self._log_access(req, status, sent, time.perf_counter() - started)

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
        return error_response(err, head)

    async def _dispatch(self, req: Request, scope: dict[str, Any]) -> Response:
        # A wrapper that already routed this request (http/debug.py's metrics) leaves its
        # match in the scope; routing is pure, so it is the same answer.
        if "registry.route" in scope:
            m = scope["registry.route"]
        else:
            m = router.match(req.path, req.method)
        if m is None:
            raise RegistryError(ErrorCode.UNSUPPORTED, "no such endpoint", status=404)
        if not m.method_ok:
            raise RegistryError(
                ErrorCode.UNSUPPORTED,
                f"method {req.method[:10]} not allowed here",
                headers={"Allow": ", ".join(sorted(m.allowed | ({"HEAD"} if "GET" in m.allowed else set())))},
            )
        req.params = m.params
        name = m.params.get("name")
        if self.authenticate is not None:
            await self.authenticate(req, m.route, m.params)
        if name is not None and not is_valid_name(name):
            raise RegistryError(ErrorCode.NAME_INVALID, detail={"name": name[:300]})
        if self.options.readonly and req.method in WRITE_METHODS:
            raise RegistryError(ErrorCode.UNSUPPORTED, "registry is in read-only mode")
        return await self.handlers[m.route](self, req)

    async def _send_unread(self, send: Any, resp: Response, head: bool, req: Request) -> int:
        """Answer a request whose body was not read (an early error): drop the rest of the
        body while the response goes out, and close the connection after it.

        Hypercorn queues body pieces for the app and, when the response ends, queues one
        more message (a disconnect) in the same bounded queue; nobody receiving would
        block that forever and hang the connection. Closing it spares reading the rest of
        a large body just to keep the connection alive."""
        resp = replace(resp, headers=[*resp.headers, (b"connection", b"close")])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(req.discard_body)
            sent = await self._send(send, resp, head)
            nursery.cancel_scope.cancel()
        return sent

    async def _send(self, send: Any, resp: Response, head: bool) -> int:
        headers = list(self._common)
        headers.extend(resp.headers)
        body = resp.body
        if isinstance(body, (bytes, bytearray)):
            length = resp.length if resp.length is not None else len(body)
            headers.append((b"content-length", str(length).encode()))
            await send({"type": "http.response.start", "status": resp.status, "headers": headers})
            if head or not body:
                await send({"type": "http.response.body", "body": b""})
                return 0
            await send({"type": "http.response.body", "body": bytes(body)})
            return len(body)
        if resp.length is not None:
            headers.append((b"content-length", str(resp.length).encode()))
        await send({"type": "http.response.start", "status": resp.status, "headers": headers})
        sent = 0
        if not head:
            async for chunk in body:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                sent += len(chunk)
        await send({"type": "http.response.body", "body": b""})
        return sent

    def _log_access(self, req: Request, status: int, sent: int, seconds: float) -> None:
        if not access_log.isEnabledFor(logging.INFO):
            return
        access_log.info(
            '%s "%s %s" %d %d %.1fms "%s"',
            req.client,
            req.method,
            req.path[:300],
            status,
            sent,
            seconds * 1000,
            req.headers.get("user-agent", "-")[:200],
            extra={
                "http": {
                    "remote": req.client,
                    "method": req.method,
                    "path": req.path[:300],
                    "status": status,
                    "bytes": sent,
                    "duration_ms": round(seconds * 1000, 2),
                    "user": req.user,
                    "user_agent": req.headers.get("user-agent", "")[:200],
                }
            },
        )

    # --- helpers for handlers ------------------------------------------------------------

    def url(self, req: Request, path: str) -> str:
        return (
            base_url(
                req.headers,
                scheme=req.scheme,
                configured_host=self.options.host,
                relative=self.options.relative_urls,
                server=req.server,
            )
            + path
        )

    def version(self) -> str:
        return __version__


def _only_cancellation(exc: BaseException) -> bool:
    """True for trio.Cancelled, or a nursery's group made only of Cancelled."""
    if isinstance(exc, trio.Cancelled):
        return True
    if isinstance(exc, BaseExceptionGroup):
        _, rest = exc.split(trio.Cancelled)
        return rest is None
    return False
