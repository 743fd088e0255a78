"""Health checks as the reference's ``health`` section: ``storagedriver`` here, ``file``,
``http`` and ``tcp`` in ``checks.py``, all run by :class:`Health`.

Each check is a loop run by the app's lifespan nursery: it probes once at start-up (the
reference waits one interval first; here a bucket that does not exist must not look
healthy for a while), then every ``interval`` (each probe bounded by a deadline); after
``threshold`` failures in a row it is unhealthy until one probe passes (threshold 0 or 1:
the first failure counts), and a check whose very first probe fails is unhealthy at once.
While any check is unhealthy, ``/debug/health`` (``ops/debug.py``) answers 503 with the
failing checks, and the API answers every request 503 UNAVAILABLE (``http/app.py``), as the
reference's ``health.Handler`` does around its whole app.

Ours: with the ``s3`` driver and no ``health.storagedriver`` section, the storage check
runs anyway (IMPLICIT_S3_*), so a wrong bucket or key shows as unhealthy.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from ..config import ConfigError, duration_setting
from ..drivers.base import PathNotFound
from ..storage import paths
from .metrics import Metrics

log = logging.getLogger("registry.debug")

HEALTH_CHECK_TIMEOUT_S = 10.0  # one probe; a slower answer counts as a failure
DEFAULT_HEALTH_INTERVAL_S = 10.0  # the reference's default (handlers/app.go)
# Ours: each implicit S3 probe is a ListObjectsV2, a paid "class A" operation on R2; every
# 60 s from 2 workers stays far inside R2's free monthly million.
IMPLICIT_S3_INTERVAL_S = 60.0
IMPLICIT_S3_THRESHOLD = 3  # failed probes in a row (after a first that passed)
# Ours: an unhealthy check re-probes at least this often, so a bucket created (or S3 back)
# answers within seconds rather than one implicit 60 s interval later.
RECOVERY_INTERVAL_S = 5.0
MAX_ERROR_CHARS = 300  # of a failing check's message in /debug/health


class CheckFailed(Exception):
    """A probe's own verdict (the file exists, an unexpected status): /debug/health shows
    its message alone, as the reference words it."""


class PeriodicCheck:
    """The polling and threshold rules every check shares; subclasses give ``key`` (its
    name in /debug/health), ``interval``, ``threshold``, ``timeout`` and :meth:`probe`."""

    interval: float
    threshold: int
    timeout: float
    failures: int
    last_error: str | None
    gates = True  # does a failure make the registry unhealthy (503)? ops/redis.py: no

    @property
    def key(self) -> str:
        """The check's name in /debug/health."""
        raise NotImplementedError

    async def probe(self) -> None:
        """Return when healthy; raise anything when not."""
        raise NotImplementedError

    def _publish(self) -> None:
        """Called after every probe (the storage check feeds a metric)."""

    @property
    def healthy(self) -> bool:
        # failures < max(1, threshold), without the call: the API reads this per request
        return self.failures == 0 or self.failures < self.threshold

    async def check_once(self) -> None:
        """Probe once under the deadline and update the state; never raises but Cancelled."""
        try:
            with trio.fail_after(self.timeout):
                await self.probe()
        except (Exception, trio.TooSlowError) as exc:  # noqa: BLE001 - any failure counts
            self.failures += 1
            text = str(exc) if isinstance(exc, CheckFailed) else f"{type(exc).__name__}: {exc}"
            self.last_error = text[:MAX_ERROR_CHARS]
            if self.failures == max(1, self.threshold):
                log.warning("health check %s failing (%d in a row): %s",
                            self.key, self.failures, self.last_error)
            self._publish()
            return
        if not self.healthy:
            log.info("health check %s passes again", self.key)
        self.failures = 0
        self.last_error = None
        self._publish()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Check now, report started, then every ``interval`` forever (every
        RECOVERY_INTERVAL_S at most while unhealthy). A check whose first probe fails is
        unhealthy at once: the threshold forgives blips in a check that worked, not a
        bucket that never existed."""
        await self.check_once()
        if self.failures:
            self.failures = max(self.failures, self.threshold)
            self._publish()
        task_status.started()
        while True:
            await trio.sleep(self.interval if self.healthy
                             else min(self.interval, RECOVERY_INTERVAL_S))
            await self.check_once()

    def status(self) -> dict[str, str]:
        """This check in the reference's /debug/health body: empty when healthy."""
        if self.healthy:
            return {}
        return {self.key: self.last_error or "failing"}


@dataclass
class HealthChecker(PeriodicCheck):
    """``health.storagedriver``: stats the registry's root key (not found is healthy, as the
    reference: the backend answered). ``failures`` counts failures in a row."""

    driver: Any
    interval: float = DEFAULT_HEALTH_INTERVAL_S
    threshold: int = 1
    metrics: Metrics | None = None
    failures: int = 0
    last_error: str | None = None
    timeout: float = HEALTH_CHECK_TIMEOUT_S

    def __post_init__(self) -> None:
        self.timeout = min(self.interval, self.timeout)  # a probe never outlives its interval

    @property
    def key(self) -> str:
        return f"storagedriver_{getattr(self.driver, 'name', 'storage')}"

    async def probe(self) -> None:
        try:
            await self.driver.stat(paths.ROOT)
        except PathNotFound:
            pass  # an empty registry is healthy

    def _publish(self) -> None:
        if self.metrics is not None:
            self.metrics.set_healthy(self.healthy)


@dataclass(frozen=True)
class Health:
    """Every configured check; healthy while all are. Owns nothing until :meth:`serve`."""

    checks: Sequence[PeriodicCheck]

    @property
    def healthy(self) -> bool:
        for check in self.checks:  # a loop, not all(genexpr): read on every API request
            if check.gates and not check.healthy:
                return False
        return True

    def status(self) -> dict[str, str]:
        """The failing checks, the reference's /debug/health body (``{}``: healthy; a
        non-gating check may be listed while :attr:`healthy` holds)."""
        failing: dict[str, str] = {}
        for check in self.checks:
            failing.update(check.status())
        return failing

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run every check's loop; started once each has probed once. Runs until cancelled."""
        async with trio.open_nursery() as nursery:
            async with trio.open_nursery() as first:  # the first probes run side by side
                for check in self.checks:
                    first.start_soon(nursery.start, check.serve)
            task_status.started()


def parse_health(section: Mapping[str, Any], driver: str = "") -> tuple[bool, float, int]:
    """(enabled, interval seconds, threshold) from ``health.storagedriver``; without that
    section, on for the ``s3`` driver (IMPLICIT_S3_*), off otherwise. Raises ConfigError
    naming the key."""
    sd = section.get("storagedriver") if hasattr(section, "get") else None
    if sd is None and driver == "s3":
        return True, IMPLICIT_S3_INTERVAL_S, IMPLICIT_S3_THRESHOLD
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
