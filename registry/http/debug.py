"""Operations: the debug listener (``http.debug.addr``), health, and Prometheus metrics.

What it owns:

- :class:`Metrics`: the Prometheus metrics (names follow the reference's
  ``registry_http_*`` / ``registry_storage_*`` where it has one, so dashboards carry over).
- :class:`Observed`: an ASGI middleware around RegistryApp that records every exchange
  (route, method, status, bytes in and out, latency, user) and hands it to the metrics and to
  listeners such as webhook notifications. It touches nothing in the request.
- :class:`InstrumentedDriver`: wraps the storage driver to time each call and count errors.
- :class:`HealthChecker`: the reference's ``health.storagedriver`` check, a loop run by the
  app's lifespan nursery: every ``interval`` it stats the storage root (bounded by a
  deadline); after ``threshold`` failures in a row it is unhealthy until one check passes.
  Health only changes what ``/debug/health`` answers: the API keeps serving (reads from a
  driver that works keep working), unlike the reference, which answers 503 everywhere.
- :class:`DebugApp`: ``GET /debug/health`` (200 ``{}`` or 503 with the failing checks, as the
  reference) and ``GET <http.debug.prometheus.path>`` (default ``/metrics``) when enabled.

Worker processes: with ``http.workers`` > 1 each worker has its own counters, and the debug
socket is bound once by the parent and shared, so a scrape lands on any worker. We therefore
use prometheus-client's multiprocess mode: the parent points ``PROMETHEUS_MULTIPROC_DIR`` at
a fresh private directory before any worker imports prometheus_client, each worker writes its
values to files there, and whichever worker answers a scrape aggregates all of them
(counters and histograms summed, in-flight gauges summed over live workers: ``livesum``).
With one worker, metrics live in process memory. Either way one scrape target.
"""

from __future__ import annotations

import contextvars
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import trio

from ..drivers.base import PathNotFound
from ..storage import paths
from . import router

log = logging.getLogger("registry.debug")

# The authenticated user of the current request: set by the app's authenticate gate, read by
# Observed after the response (same task, so the same context).
REQUEST_USER: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "registry_request_user", default=None
)

METHODS = frozenset({"GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "OPTIONS"})
UPLOAD_ROUTES = frozenset({"uploads", "upload"})
HEALTH_CHECK_TIMEOUT_S = 10.0  # one storage stat; a slower answer counts as a failure
DEFAULT_HEALTH_INTERVAL_S = 10.0  # the reference's default
SIZE_BUCKETS = tuple(float(4**i * 256) for i in range(12))  # 256 B .. 1 GiB
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
STORAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60)


# --- metrics ---------------------------------------------------------------------------------


class Metrics:
    """The registry's Prometheus metrics, in their own CollectorRegistry (one per app)."""

    def __init__(self, multiprocess_dir: str | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.multiprocess_dir = multiprocess_dir
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "registry_http_requests", "HTTP requests answered, by route (handler), method and "
            "status code", ("handler", "method", "code"), registry=r)
        self.duration = Histogram(
            "registry_http_request_duration_seconds", "Time from request to the end of the "
            "response", ("handler", "method"), buckets=LATENCY_BUCKETS, registry=r)
        self.request_size = Histogram(
            "registry_http_request_size_bytes", "Request body bytes received (bytes in)",
            ("handler",), buckets=SIZE_BUCKETS, registry=r)
        self.response_size = Histogram(
            "registry_http_response_size_bytes", "Response body bytes sent (bytes out)",
            ("handler",), buckets=SIZE_BUCKETS, registry=r)
        self.in_flight = Gauge(
            "registry_http_in_flight_requests", "Requests being handled", ("handler",),
            multiprocess_mode="livesum", registry=r)
        self.uploads_in_progress = Gauge(
            "registry_uploads_in_progress", "Blob upload requests (POST, PATCH, PUT) receiving "
            "data right now", multiprocess_mode="livesum", registry=r)
        self.uploads = Counter(
            "registry_blob_uploads", "Upload sessions by outcome: started, completed, "
            "cancelled", ("result",), registry=r)
        self.storage_seconds = Histogram(
            "registry_storage_action_seconds", "Storage driver call latency",
            ("driver", "action"), buckets=STORAGE_BUCKETS, registry=r)
        self.storage_errors = Counter(
            "registry_storage_errors", "Storage driver calls that failed (not-found excluded)",
            ("driver", "action", "error"), registry=r)
        self.gc_runs = Counter(
            "registry_gc_runs", "Garbage collection runs by result", ("result",), registry=r)
        self.gc_seconds = Histogram(
            "registry_gc_duration_seconds", "Garbage collection run time",
            buckets=(1, 10, 60, 300, 1800, 3600, 4 * 3600), registry=r)
        self._healthy: Any = None  # created by the first health check (none: no gauge)
        # labels() takes a lock and builds a key: children are looked up once (child()),
        # and the four an exchange updates once per (route, method, status) together.
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        self._exchange_children: dict[tuple[str, str, int], tuple[Any, Any, Any, Any]] = {}

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up on first use only."""
        key = (metric, labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def in_flight_for(self, route: str) -> Any:
        """The in-flight gauge child of ``route``."""
        return self.child(self.in_flight, route)

    def observe(self, ex: Exchange) -> None:
        key = (ex.route, ex.method, ex.status)
        children = self._exchange_children.get(key)
        if children is None:
            children = self._exchange_children[key] = (
                self.requests.labels(ex.route, ex.method, str(ex.status)),
                self.duration.labels(ex.route, ex.method),
                self.request_size.labels(ex.route),
                self.response_size.labels(ex.route),
            )
        requests, duration, request_size, response_size = children
        requests.inc()
        duration.observe(ex.seconds)
        request_size.observe(ex.bytes_in)
        response_size.observe(ex.bytes_out)
        if ex.route in UPLOAD_ROUTES:
            if ex.method == "POST" and ex.status == 202:
                self.child(self.uploads, "started").inc()
            elif ex.status == 201:
                self.child(self.uploads, "completed").inc()
            elif ex.method == "DELETE" and ex.status == 204:
                self.child(self.uploads, "cancelled").inc()

    def set_healthy(self, healthy: bool) -> None:
        if self._healthy is None:
            from prometheus_client import Gauge

            self._healthy = Gauge(
                "registry_storage_healthy", "1 while the storage health check passes",
                multiprocess_mode="min", registry=self.registry)
        self._healthy.set(1 if healthy else 0)

    def gc_run(self, result: str, seconds: float) -> None:
        """Record one garbage collection run (for the GC loop: result ok or error)."""
        self.gc_runs.labels(result).inc()
        self.gc_seconds.observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        """The text format of every metric (all workers' in multiprocess mode)."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        if self.multiprocess_dir:
            from prometheus_client.multiprocess import MultiProcessCollector

            merged = CollectorRegistry()
            MultiProcessCollector(merged, path=self.multiprocess_dir)
            return generate_latest(merged), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


# --- the storage driver, timed -----------------------------------------------------------------


class InstrumentedDriver:
    """A driver that times every call into ``metrics`` and counts failures; otherwise the
    wrapped driver exactly (attributes it does not override pass through)."""

    _TIMED = ("get_content", "put_content", "stat", "list", "move", "delete", "redirect_url")

    def __init__(self, driver: Any, metrics: Metrics) -> None:
        self._driver = driver
        self._metrics = metrics
        self.name = getattr(driver, "name", type(driver).__name__)
        for action in self._TIMED:
            if hasattr(driver, action):
                setattr(self, action, self._timed(action, getattr(driver, action)))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._driver, name)

    def _record(self, action: str, started: float, exc: BaseException | None) -> None:
        m = self._metrics
        m.child(m.storage_seconds, self.name, action).observe(time.perf_counter() - started)
        if exc is not None and not isinstance(exc, (PathNotFound, trio.Cancelled)):
            m.child(m.storage_errors, self.name, action, type(exc).__name__).inc()

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


# --- health ----------------------------------------------------------------------------------


@dataclass
class HealthChecker:
    """The periodic storage check (see the module doc): stats the registry's root key.
    ``failures`` counts failures in a row."""

    driver: Any
    interval: float = DEFAULT_HEALTH_INTERVAL_S
    threshold: int = 1
    metrics: Metrics | None = None
    failures: int = 0
    last_error: str | None = None

    @property
    def key(self) -> str:
        return f"storagedriver_{getattr(self.driver, 'name', 'storage')}"

    @property
    def healthy(self) -> bool:
        return self.failures < self.threshold

    async def check_once(self) -> None:
        try:
            with trio.fail_after(min(self.interval, HEALTH_CHECK_TIMEOUT_S)):
                await self.driver.stat(paths.ROOT)
        except PathNotFound:
            pass  # an empty registry is healthy (the reference accepts not-found too)
        except (Exception, trio.TooSlowError) as exc:  # noqa: BLE001 - any failure counts
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"[:300]
            if self.failures == self.threshold:
                log.warning("storage health check failing (%d in a row): %s",
                            self.failures, self.last_error)
            self._publish()
            return
        if not self.healthy:
            log.info("storage health check passes again")
        self.failures = 0
        self.last_error = None
        self._publish()

    def _publish(self) -> None:
        if self.metrics is not None:
            self.metrics.set_healthy(self.healthy)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Check now, report started, then every ``interval`` forever."""
        await self.check_once()
        task_status.started()
        while True:
            await trio.sleep(self.interval)
            await self.check_once()

    def status(self) -> dict[str, str]:
        """Failing checks as the reference's /debug/health body; empty when healthy."""
        if self.healthy:
            return {}
        return {self.key: self.last_error or "failing"}


def parse_health(section: Mapping[str, Any]) -> tuple[bool, float, int]:
    """(enabled, interval seconds, threshold) from ``health.storagedriver``."""
    from ..config import ConfigError, parse_duration

    sd = section.get("storagedriver") if hasattr(section, "get") else None
    if not sd:
        return False, DEFAULT_HEALTH_INTERVAL_S, 1
    if not hasattr(sd, "get"):
        raise ConfigError("health.storagedriver: expected a mapping")
    enabled = sd.get("enabled", False)
    if not isinstance(enabled, bool):
        raise ConfigError("health.storagedriver.enabled: expected a boolean")
    try:
        interval = parse_duration(sd.get("interval", "10s"))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"health.storagedriver.interval: {exc}") from None
    threshold = sd.get("threshold", 1) or 1
    if not isinstance(threshold, int) or isinstance(threshold, bool) or threshold < 1:
        raise ConfigError("health.storagedriver.threshold: expected a positive integer")
    if interval <= 0:
        raise ConfigError("health.storagedriver.interval: must be greater than zero")
    return enabled, interval, threshold


# --- observing exchanges ---------------------------------------------------------------------


@dataclass
class Exchange:
    """One request and its answer, as seen on the wire. The header dicts are filled only
    for listeners (Observed with none, e.g. metrics only, leaves them empty)."""

    method: str
    route: str  # router's route name, or "unknown"
    params: dict[str, str]
    path: str
    client: str
    request_headers: dict[str, str]
    query: str = ""
    status: int = 0
    response_headers: dict[str, str] = field(default_factory=dict)
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0
    user: str | None = None

    def query_param(self, key: str) -> str | None:
        values = parse_qs(self.query).get(key)
        return values[-1] if values else None


Listener = Callable[[Exchange], None]


def _decoded(headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """ASGI headers as a dict with lower-case names (a repeated header: its last value)."""
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in headers}


class Observed:
    """ASGI middleware: records each HTTP exchange for ``metrics`` and ``listeners``.

    Listeners run after the response is sent and must not block (the notifier only enqueues).
    A listener that raises is logged and ignored: observation never breaks a request.
    """

    def __init__(self, app: Any, metrics: Metrics | None, listeners: tuple[Listener, ...] = ()):
        self.app = app
        self.metrics = metrics
        self.listeners = listeners

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw_path = scope.get("raw_path") or scope["path"].encode()
        path = raw_path.decode("latin-1").split("?", 1)[0]
        method = scope["method"] if scope["method"] in METHODS else "OTHER"
        m = router.match(path, method)
        if method == scope["method"]:  # the app reuses the match: route once per request
            scope["registry.route"] = m
        route = m.route if m is not None and m.method_ok else "unknown"
        client = scope.get("client")
        keep_headers = bool(self.listeners)  # only listeners read headers: decode for them
        ex = Exchange(
            method=method, route=route, params=dict(m.params) if m else {}, path=path,
            client=client[0] if client else "-",
            query=scope.get("query_string", b"").decode("latin-1"),
            request_headers=_decoded(scope.get("headers", ())) if keep_headers else {},
        )
        uploading = route in UPLOAD_ROUTES and method in ("POST", "PATCH", "PUT")

        async def counting_receive() -> dict[str, Any]:
            message = await receive()
            if message["type"] == "http.request":
                ex.bytes_in += len(message.get("body", b""))
            return message

        async def counting_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                ex.status = message["status"]
                if keep_headers:
                    ex.response_headers = _decoded(message.get("headers", ()))
            elif message["type"] == "http.response.body":
                ex.bytes_out += len(message.get("body", b""))
            await send(message)

        gauges = []
        if self.metrics is not None:
            gauges.append(self.metrics.in_flight_for(route))
            if uploading:
                gauges.append(self.metrics.uploads_in_progress)
        for g in gauges:
            g.inc()
        token = REQUEST_USER.set(None)
        started = time.perf_counter()
        try:
            await self.app(scope, counting_receive, counting_send)
        finally:
            ex.seconds = time.perf_counter() - started
            ex.user = REQUEST_USER.get()
            REQUEST_USER.reset(token)
            for g in gauges:
                g.dec()
        if not ex.status:
            return  # no response (cancelled): nothing happened on the wire
        if self.metrics is not None:
            self.metrics.observe(ex)
        for listener in self.listeners:
            try:
                listener(ex)
            except Exception:
                log.exception("exchange listener failed")


# --- the debug listener ----------------------------------------------------------------------


class DebugApp:
    """ASGI app of the debug listener: /debug/health and the metrics path."""

    def __init__(self, health: HealthChecker | None, metrics: Metrics | None,
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
            status = 503 if failing else 200
            ctype, body = "application/json", json.dumps(failing).encode()
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
    hc.keep_alive_timeout = 30
    hc.read_timeout = 30
    hc.graceful_timeout = 1
    hc.include_server_header = False
    never = trio.Event()
    asgi: Any = app
    await worker_serve(wrap_app(asgi, hc.wsgi_max_body_size, "asgi"), hc, sockets=sockets,
                       shutdown_trigger=never.wait, task_status=task_status)


@dataclass
class Operations:
    """What build_app adds around the API for operators: metrics, health, listeners."""

    metrics: Metrics | None = None
    health: HealthChecker | None = None
    listeners: tuple[Listener, ...] = ()
    metrics_path: str = "/metrics"

    def wrap(self, app: Any) -> Any:
        """The ASGI app to serve: ``app`` observed, or ``app`` itself when nobody listens."""
        if self.metrics is None and not self.listeners:
            return app
        return Observed(app, self.metrics, self.listeners)

    def debug_app(self) -> DebugApp:
        return DebugApp(self.health, self.metrics, self.metrics_path)


def build_operations(config: Any, driver: Any, multiprocess_dir: str | None = None,
                     listeners: tuple[Listener, ...] = ()) -> tuple[Operations, Any]:
    """Operations for ``config`` and the driver to give Storage (timed when metrics are on).
    Raises ConfigError for a bad ``health`` section."""
    metrics = Metrics(multiprocess_dir) if config.http.debug_prometheus_enabled else None
    if metrics is not None:
        driver = InstrumentedDriver(driver, metrics)
    enabled, interval, threshold = parse_health(config.health)
    health = HealthChecker(driver, interval, threshold, metrics) if enabled else None
    ops = Operations(metrics, health, listeners, config.http.debug_prometheus_path)
    return ops, driver
