"""Operations: what operators watch while the API serves (metrics, health, the debug listener)
and the record of each exchange that metrics and webhook notifications consume.

Why a top-level package beside ``http/`` and not inside it: none of this knows HTTP routing.
``http/`` imports it (the app fills an :class:`~registry.ops.exchange.Exchange` per request
and hands it to :class:`Operations`), ``notifications.py`` imports it (events are made from
exchanges), ``server.py`` builds it; it imports neither ``http/`` nor ``notifications``
(tests/test_layers.py checks). The instrumented driver it installs lives with the drivers
(``drivers/instrumented.py``, as distribution's ``driver/base``), which never import this.

- ``exchange.py``: :class:`Exchange` (one request and its answer) and :class:`EventKind`
  (what a route's exchanges are about; the route table gives each route one).
- ``metrics.py``: the Prometheus metrics (multiprocess mode with several workers).
- ``health.py``: the checks' polling and threshold rules, the storage check, :class:`Health`.
- ``checks.py``: the file, HTTP and TCP checks and their configuration.
- ``debug.py``: the debug listener (``/debug/health``, ``/metrics``).
- ``redis.py``: the Redis client from the ``redis`` section, its lifetime, its health check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..drivers.instrumented import InstrumentedDriver
from ..drivers.redis import RedisClient
from .checks import parse_checks
from .debug import DebugApp
from .exchange import Listener
from .health import Health, HealthChecker, PeriodicCheck, parse_health
from .metrics import Metrics
from .redis import RedisCheck


@dataclass(frozen=True)
class Operations:
    """What build_app adds around the API for operators: metrics, health, exchange listeners.

    The app observes exchanges only when ``observing`` (metrics or a listener): without
    them a request pays nothing for operations."""

    metrics: Metrics | None = None
    health: Health | None = None  # None: no check configured (always healthy)
    listeners: tuple[Listener, ...] = ()
    metrics_path: str = "/metrics"

    @property
    def observing(self) -> bool:
        return self.metrics is not None or bool(self.listeners)

    def debug_app(self) -> DebugApp:
        return DebugApp(self.health, self.metrics, self.metrics_path)


def build_operations(config: Any, driver: Any, multiprocess_dir: str | None = None,
                     listeners: tuple[Listener, ...] = (),
                     redis: RedisClient | None = None) -> tuple[Operations, Any]:
    """Operations for ``config`` and the driver to give Storage (timed when metrics are on).
    With ``redis``, its (non-gating) health check too. Raises ConfigError for a bad
    ``health`` section."""
    metrics = Metrics(multiprocess_dir) if config.http.debug_prometheus_enabled else None
    if metrics is not None:
        driver = InstrumentedDriver(driver, metrics)
    enabled, interval, threshold = parse_health(config.health, config.storage.driver)
    checks: list[PeriodicCheck] = (
        [HealthChecker(driver, interval, threshold, metrics)] if enabled else []
    )
    checks.extend(parse_checks(config.health))
    if redis is not None:
        checks.append(RedisCheck(redis))
    health = Health(tuple(checks)) if checks else None
    ops = Operations(metrics, health, listeners, config.http.debug_prometheus_path)
    return ops, driver
