"""The registry's Prometheus metrics.

Names follow the reference's ``registry_http_*`` / ``registry_storage_*`` where it has one,
so dashboards carry over. The ``handler`` label is the route table's metric label
(``http/routes.py``); requests no route matched are ``unknown``.

Worker processes: with ``http.workers`` > 1 each worker has its own counters, and the debug
socket is bound once by the parent and shared, so a scrape lands on any worker. We therefore
use prometheus-client's multiprocess mode: the parent points ``PROMETHEUS_MULTIPROC_DIR`` at
a fresh private directory before any worker imports prometheus_client, each worker writes its
values to files there, and whichever worker answers a scrape aggregates all of them
(counters and histograms summed, in-flight gauges summed over live workers: ``livesum``).
With one worker, metrics live in process memory. Either way one scrape target.

``process_*`` (memory, CPU, open files, start time; prometheus-client's ProcessCollector):
with one worker, that worker's. With several, the values are not in the multiprocess files
(a collector reads /proc at scrape time), so the worker answering a scrape reads every live
worker's /proc entry (the workers with live gauge files in the directory) and reports the
sums (memory, CPU seconds, open files), the earliest start time and the file limit: the
registry's process metrics, whichever worker answers, under the usual names.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from functools import partial
from typing import Any

from .exchange import UPLOAD_EVENTS, Exchange

SIZE_BUCKETS = tuple(float(4**i * 256) for i in range(12))  # 256 B .. 1 GiB
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
STORAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60)
RECEIVING = frozenset({"POST", "PATCH", "PUT"})  # upload requests that carry blob data


class Metrics:
    """The registry's Prometheus metrics, in their own CollectorRegistry (one per app).

    Also the driver's call recorder (``drivers/instrumented.py``: :meth:`record_call`)."""

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
        if multiprocess_dir is None:
            from prometheus_client import ProcessCollector

            ProcessCollector(registry=r)  # process_*: this (the only) worker
        self._healthy: Any = None  # created by the first health check (none: no gauge)
        self._proxy_counters: dict[str, Any] | None = None  # the pull-through cache's
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

    def gauges_for(self, ex: Exchange) -> tuple[Any, ...]:
        """The gauges an exchange holds up while it runs: its route's in-flight gauge, and
        the uploads-in-progress gauge for an upload request that carries data."""
        in_flight = self.child(self.in_flight, ex.label)
        if ex.event in UPLOAD_EVENTS and ex.method in RECEIVING:
            return (in_flight, self.uploads_in_progress)
        return (in_flight,)

    def observe(self, ex: Exchange) -> None:
        """Count a finished exchange (one with a status)."""
        key = (ex.label, ex.method, ex.status)
        children = self._exchange_children.get(key)
        if children is None:
            children = self._exchange_children[key] = (
                self.requests.labels(ex.label, ex.method, str(ex.status)),
                self.duration.labels(ex.label, ex.method),
                self.request_size.labels(ex.label),
                self.response_size.labels(ex.label),
            )
        requests, duration, request_size, response_size = children
        requests.inc()
        duration.observe(ex.seconds)
        request_size.observe(ex.bytes_in)
        response_size.observe(ex.bytes_out)
        if ex.event in UPLOAD_EVENTS:
            if ex.method == "POST" and ex.status == 202:
                self.child(self.uploads, "started").inc()
            elif ex.status == 201:
                self.child(self.uploads, "completed").inc()
            elif ex.method == "DELETE" and ex.status == 204:
                self.child(self.uploads, "cancelled").inc()

    def record_call(self, driver: str, action: str, seconds: float, error: str | None) -> None:
        """One storage driver call: its latency, and ``error`` (a type name) if it failed."""
        self.child(self.storage_seconds, driver, action).observe(seconds)
        if error is not None:
            self.child(self.storage_errors, driver, action, error).inc()

    def set_healthy(self, healthy: bool) -> None:
        if self._healthy is None:
            from prometheus_client import Gauge

            self._healthy = Gauge(
                "registry_storage_healthy", "1 while the storage health check passes",
                multiprocess_mode="min", registry=self.registry)
        self._healthy.set(1 if healthy else 0)

    def _proxy(self) -> dict[str, Any]:
        """The pull-through cache's counters, made on first use (a registry without
        remotes shows none). registry:3's five (registry/proxy/proxymetrics.go, same names
        and ``type`` label: blob, manifest) and ours by remote."""
        if self._proxy_counters is None:
            from prometheus_client import Counter

            r = self.registry
            v3 = {name: Counter(f"registry_proxy_{name}", text, ("type",), registry=r)
                  for name, text in (
                      ("requests", "The number of total incoming proxy request received"),
                      ("hits", "The number of total proxy request hits"),
                      ("misses", "The number of total proxy request misses"),
                      ("pulled_bytes", "The size of total bytes pulled from the upstream"),
                      ("pushed_bytes", "The size of total bytes pushed to the client"))}
            self._proxy_counters = {
                **v3,
                "fetches": Counter(
                    "registry_proxy_upstream_fetches", "Fetches from an upstream by remote, "
                    "type and outcome (ok or the error kind)", ("remote", "type", "outcome"),
                    registry=r),
                "fetched_bytes": Counter(
                    "registry_proxy_upstream_bytes", "Bytes received from an upstream by "
                    "remote and type", ("remote", "type"), registry=r),
            }
        return self._proxy_counters

    def proxy_served(self, kind: str, hit: bool, size: int) -> None:
        """A proxied ``kind`` (blob, manifest) served: from the cache (``hit``) or not."""
        c = self._proxy()
        self.child(c["requests"], kind).inc()
        self.child(c["hits" if hit else "misses"], kind).inc()
        self.child(c["pushed_bytes"], kind).inc(size)

    def proxy_fetched(self, remote: str, kind: str, size: int, outcome: str) -> None:
        """One upstream fetch of a ``kind`` ended with ``outcome``, ``size`` bytes received."""
        c = self._proxy()
        self.child(c["fetches"], remote, kind, outcome).inc()
        self.child(c["fetched_bytes"], remote, kind).inc(size)
        if outcome == "ok":
            self.child(c["pulled_bytes"], kind).inc(size)

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
            merged.register(WorkerProcesses(self.multiprocess_dir))
            return generate_latest(merged), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


# The gauge files of a live worker: prometheus-client names them <kind>_<mode>_<pid>.db, and
# mark_process_dead (server.py, when a worker exits) deletes the live* ones.
_LIVE_FILE = re.compile(r"gauge_live\w+?_(\d+)\.db\Z")
_SUMMED = {"process_virtual_memory_bytes", "process_resident_memory_bytes",
           "process_cpu_seconds", "process_open_fds"}


class WorkerProcesses:
    """A collector of ``process_*`` over every live worker (see the module doc)."""

    def __init__(self, multiprocess_dir: str) -> None:
        self.multiprocess_dir = multiprocess_dir

    def pids(self) -> list[int]:
        found = {int(m.group(1)) for name in os.listdir(self.multiprocess_dir)
                 if (m := _LIVE_FILE.match(name))}
        found.add(os.getpid())  # this worker, even before its first live gauge file
        return sorted(found)

    def collect(self) -> Iterable[Any]:
        from prometheus_client import ProcessCollector

        families: dict[str, Any] = {}
        values: dict[str, list[float]] = {}
        for pid in self.pids():
            # A worker that exited since the listing has no /proc entry: it adds nothing.
            for family in ProcessCollector(pid=partial(str, pid), registry=None).collect():
                families.setdefault(family.name, family)
                values.setdefault(family.name, []).extend(s.value for s in family.samples)
        for name, family in families.items():
            got = values[name]
            if name in _SUMMED:
                value = sum(got)
            elif name == "process_start_time_seconds":
                value = min(got)
            else:  # process_max_fds: the same limit in every worker
                value = max(got)
            family.samples = [family.samples[0]._replace(value=value)]
            yield family
