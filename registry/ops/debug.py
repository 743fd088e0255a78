"""The debug listener (``http.debug.addr``): ``GET /debug/health`` (200 ``{}`` or 503 with the
failing checks, as the reference) and ``GET <http.debug.prometheus.path>`` (default
``/metrics``) when metrics are enabled. A tiny ASGI app of its own, served on its own
sockets by :func:`serve_debug` beside the API."""

from __future__ import annotations

import json
import logging
from typing import Any

import trio

from .health import Health, PeriodicCheck
from .metrics import Metrics

DEBUG_KEEP_ALIVE_S = 30  # scrapers reconnect every interval anyway
DEBUG_READ_TIMEOUT_S = 30


class DebugApp:
    """ASGI app of the debug listener: /debug/health and the metrics path."""

    def __init__(self, health: Health | PeriodicCheck | None, metrics: Metrics | None,
                 metrics_path: str = "/metrics") -> None:
        self.health = health
        self.metrics = metrics
        self.metrics_path = metrics_path

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path = scope["path"]
        if scope["method"] not in ("GET", "HEAD"):
            status, ctype, body = 405, "text/plain", b"method not allowed\n"
        elif path == "/debug/health":
            failing = self.health.status() if self.health is not None else {}
            # 503 only for a gating failure (a Redis outage is listed, not fatal: ops/redis.py)
            status = 503 if failing and self.health is not None and not self.health.healthy else 200
            # compact and sorted, as Go's json.Marshal
            ctype, body = "application/json", json.dumps(
                failing, separators=(",", ":"), sort_keys=True).encode()
        elif self.metrics is not None and path == self.metrics_path:
            body, ctype = self.metrics.exposition()
            status = 200
        else:
            status, ctype, body = 404, "text/plain", b"not found\n"
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-cache")]})
        await send({"type": "http.response.body",
                    "body": b"" if scope["method"] == "HEAD" else body})


async def serve_debug(app: DebugApp, sockets: Any, *,
                      task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the debug app on pre-bound ``sockets`` (hypercorn Sockets) until cancelled."""
    from hypercorn.config import Config as HyperConfig
    from hypercorn.trio.run import worker_serve
    from hypercorn.utils import wrap_app

    hc = HyperConfig()
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    hc.keep_alive_timeout = DEBUG_KEEP_ALIVE_S
    hc.read_timeout = DEBUG_READ_TIMEOUT_S
    hc.graceful_timeout = 1
    hc.include_server_header = False
    never = trio.Event()
    asgi: Any = app
    await worker_serve(wrap_app(asgi, hc.wsgi_max_body_size, "asgi"), hc, sockets=sockets,
                       shutdown_trigger=never.wait, task_status=task_status)
