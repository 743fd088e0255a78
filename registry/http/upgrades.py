"""WebSocket requests get a 4xx with the OCI error envelope, never a 500.

Hypercorn turns a WebSocket handshake (``Upgrade: websocket`` over HTTP/1.1, an extended
CONNECT over HTTP/2) into an ASGI ``websocket`` scope; an app that does not answer it makes
hypercorn send 500. The registry speaks no WebSocket, so :func:`refuse_websockets` answers
every such scope with 400 UNSUPPORTED through the ASGI WebSocket Denial Response extension
(``websocket.http.response.*``, which hypercorn offers), and passes every other scope on.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ..errors import ErrorCode, RegistryError
from .responses import error_answer

log = logging.getLogger("registry.http")

ASGIApp = Callable[..., Awaitable[None]]


def refuse_websockets(app: ASGIApp) -> ASGIApp:
    """``app`` for HTTP and lifespan scopes; 400 UNSUPPORTED JSON for WebSocket scopes."""

    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            await app(scope, receive, send)
            return
        await receive()  # websocket.connect
        path = scope.get("raw_path") or b""
        log.info("WebSocket request refused: %s", path[:300].decode("latin-1"))
        err = RegistryError(ErrorCode.UNSUPPORTED, "WebSocket is not supported", status=400)
        headers, body = error_answer(err)
        await send({"type": "websocket.http.response.start", "status": err.status,
                    "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})

    return wrapped
