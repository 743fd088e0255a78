"""The storage health check: the reference's ``health.storagedriver``.

A loop run by the app's lifespan nursery: every ``interval`` it stats the storage root
(bounded by a deadline); after ``threshold`` failures in a row it is unhealthy until one
check passes. Health only changes what ``/debug/health`` answers (``ops/debug.py``): the API
keeps serving (reads from a driver that works keep working), unlike the reference, which
answers 503 everywhere.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import trio

from ..config import ConfigError, duration_setting
from ..drivers.base import PathNotFound
from ..storage import paths
from .metrics import Metrics

log = logging.getLogger("registry.debug")

HEALTH_CHECK_TIMEOUT_S = 10.0  # one storage stat; a slower answer counts as a failure
DEFAULT_HEALTH_INTERVAL_S = 10.0  # the reference's default


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
    """(enabled, interval seconds, threshold) from ``health.storagedriver``. Raises
    ConfigError naming the key."""
    sd = section.get("storagedriver") if hasattr(section, "get") else None
    if not sd:
        return False, DEFAULT_HEALTH_INTERVAL_S, 1
    if not hasattr(sd, "get"):
        raise ConfigError("health.storagedriver: expected a mapping")
    enabled = sd.get("enabled", False)
    if not isinstance(enabled, bool):
        raise ConfigError("health.storagedriver.enabled: expected a boolean")
    interval = duration_setting(sd.get("interval"), "health.storagedriver.interval",
                                DEFAULT_HEALTH_INTERVAL_S, positive=True)
    threshold = sd.get("threshold", 1) or 1
    if not isinstance(threshold, int) or isinstance(threshold, bool) or threshold < 1:
        raise ConfigError("health.storagedriver.threshold: expected a positive integer")
    return enabled, interval, threshold
