"""The debug listener: /debug/health with a periodic storage check, and Prometheus metrics
(issue 6, item 5)."""

from __future__ import annotations

import os
import re
import signal
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from conftest import serve_asgi
from oci import push_image

from registry.config import ConfigError, load_config
from registry.drivers.base import PathNotFound, Unavailable
from registry.drivers.instrumented import InstrumentedDriver
from registry.drivers.memory import MemoryDriver
from registry.http.app import AppOptions, RegistryApp
from registry.ops import Operations
from registry.ops.debug import DebugApp
from registry.ops.health import HealthChecker, parse_health
from registry.ops.metrics import Metrics
from registry.storage.store import Storage

try:  # tests/ is a plain directory on sys.path, or a package
    from tests import e2e_support as e2e
except ImportError:
    import e2e_support as e2e  # type: ignore[no-redef]


class FlakyDriver:
    """Stat fails while ``down``; otherwise the storage root does not exist yet."""

    name = "flaky"

    def __init__(self) -> None:
        self.down = False
        self.calls = 0

    async def stat(self, path: str) -> Any:
        self.calls += 1
        if self.down:
            raise Unavailable("backend unreachable")
        raise PathNotFound(path)


async def test_health_turns_503_after_threshold_failures_and_recovers(
    autojump_clock: trio.abc.Clock, nursery: trio.Nursery
) -> None:
    driver = FlakyDriver()
    checker = HealthChecker(driver, interval=10, threshold=3)
    await nursery.start(checker.serve)
    assert checker.healthy and checker.status() == {}
    driver.down = True
    await trio.sleep(10.5)
    await trio.sleep(10)
    assert checker.failures == 2 and checker.healthy  # two failures: still under threshold
    await trio.sleep(10)
    assert not checker.healthy
    assert checker.status() == {"storagedriver_flaky": "Unavailable: backend unreachable"}
    driver.down = False
    await trio.sleep(10)
    assert checker.healthy and checker.failures == 0


async def test_slow_storage_counts_as_a_failure(autojump_clock: trio.abc.Clock) -> None:
    class Hanging:
        name = "hanging"

        async def stat(self, path: str) -> None:
            await trio.sleep_forever()

    checker = HealthChecker(Hanging(), interval=5, threshold=1)
    await checker.check_once()
    assert not checker.healthy and "TooSlowError" in checker.status()["storagedriver_hanging"]


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({}, (False, 10.0, 1)),
        ({"storagedriver": {"enabled": True}}, (True, 10.0, 1)),
        ({"storagedriver": {"enabled": True, "interval": "2s", "threshold": 3}}, (True, 2.0, 3)),
    ],
)
def test_parse_health(section: dict, expected: tuple) -> None:
    assert parse_health(section) == expected


@pytest.mark.parametrize(
    "section",
    [{"storagedriver": {"enabled": "yes"}}, {"storagedriver": {"interval": "soon"}},
     {"storagedriver": {"threshold": -1}}],
)
def test_bad_health_config_is_a_config_error(section: dict) -> None:
    with pytest.raises(ConfigError, match=r"^health\.storagedriver\."):
        parse_health(section)


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0.0 when absent)."""
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            return float(m.group(4))
    return 0.0


async def test_metrics_count_requests_bytes_uploads_and_storage_calls(
    nursery: trio.Nursery,
) -> None:
    metrics = Metrics()
    driver = InstrumentedDriver(MemoryDriver(), metrics)
    app = RegistryApp(Storage(driver), AppOptions(access_log=False), ops=Operations(metrics))
    url = await serve_asgi(nursery, app)
    debug_url = await serve_asgi(nursery, DebugApp(None, metrics))
    async with httpx.AsyncClient(base_url=url) as c:
        for _ in range(3):
            assert (await c.get("/v2/")).status_code == 200
        assert (await c.get("/v2/nope/manifests/latest")).status_code == 404
        await push_image(c, "m/app", "v1", layers=(b"x" * 5000,))
        start_ = await c.post("/v2/m/app/blobs/uploads/")
        await c.delete(httpx.URL(start_.headers["Location"]).raw_path.decode())
    async with httpx.AsyncClient(base_url=debug_url) as d:
        r = await d.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        text = r.text
        assert (await d.get("/debug/health")).json() == {}  # no checker: healthy
        assert (await d.get("/nothing")).status_code == 404
    total = "registry_http_requests_total"
    assert sample(text, total, handler="base", method="GET", code="200") == 3
    assert sample(text, total, handler="manifest", method="GET", code="404") == 1
    assert sample(text, total, handler="manifest", method="PUT", code="201") == 1
    assert sample(text, "registry_http_request_size_bytes_sum", handler="uploads") >= 5000
    assert sample(text, "registry_http_response_size_bytes_sum", handler="base") == 6  # "{}" x3
    assert sample(text, "registry_http_request_duration_seconds_count",
                  handler="base", method="GET") == 3
    assert sample(text, "registry_blob_uploads_total", result="completed") == 2  # config, layer
    assert sample(text, "registry_blob_uploads_total", result="started") == 1
    assert sample(text, "registry_blob_uploads_total", result="cancelled") == 1
    assert sample(text, "registry_uploads_in_progress") == 0
    assert sample(text, "registry_http_in_flight_requests", handler="base") == 0
    assert sample(text, "registry_storage_action_seconds_count", action="put_content") > 0
    assert "registry_storage_healthy" not in text  # no health check configured


async def test_storage_errors_are_counted_but_not_found_is_not(nursery: trio.Nursery) -> None:
    metrics = Metrics()
    flaky = FlakyDriver()
    driver = InstrumentedDriver(flaky, metrics)
    with pytest.raises(PathNotFound):
        await driver.stat("/a")
    flaky.down = True
    with pytest.raises(Unavailable):
        await driver.stat("/a")
    text, _ = metrics.exposition()
    out = text.decode()
    assert sample(out, "registry_storage_action_seconds_count", driver="flaky", action="stat") == 2
    assert sample(out, "registry_storage_errors_total", driver="flaky", action="stat",
                  error="Unavailable") == 1


async def test_in_flight_gauges_while_an_upload_streams(nursery: trio.Nursery) -> None:
    metrics = Metrics()
    app = RegistryApp(Storage(MemoryDriver()), AppOptions(access_log=False),
                      ops=Operations(metrics))
    url = await serve_asgi(nursery, app)
    send, receive = trio.open_memory_channel[bytes](0)

    async def body() -> Any:
        async for chunk in receive:
            yield chunk

    async with httpx.AsyncClient(base_url=url) as c:
        start_ = await c.post("/v2/g/blobs/uploads/")
        location = httpx.URL(start_.headers["Location"]).raw_path.decode()
        async with trio.open_nursery() as n:
            n.start_soon(partial(c.patch, location, content=body()))
            await send.send(b"a" * 1000)
            await trio.sleep(0.2)
            text = metrics.exposition()[0].decode()
            assert sample(text, "registry_uploads_in_progress") == 1
            assert sample(text, "registry_http_in_flight_requests", handler="upload") == 1
            await send.aclose()
    with trio.fail_after(5):  # the app returns just after the client has its answer
        while sample(metrics.exposition()[0].decode(), "registry_uploads_in_progress") != 0:
            await trio.sleep(0.01)


async def test_debug_app_answers_503_with_the_failing_check(nursery: trio.Nursery) -> None:
    driver = FlakyDriver()
    driver.down = True
    checker = HealthChecker(driver, interval=60, threshold=1)
    await checker.check_once()
    url = await serve_asgi(nursery, DebugApp(checker, None))
    async with httpx.AsyncClient(base_url=url) as d:
        r = await d.get("/debug/health")
        assert r.status_code == 503
        assert r.json() == {"storagedriver_flaky": "Unavailable: backend unreachable"}
        assert (await d.get("/metrics")).status_code == 404  # prometheus not enabled


@pytest.mark.e2e
def test_process_with_two_workers_one_scrape_target(tmp_path: Path) -> None:
    from test_auth_process import run_registry

    debug_port = e2e.free_port()
    config = {
        "http": {"workers": 2, "debug": {"addr": f"127.0.0.1:{debug_port}",
                                         "prometheus": {"enabled": True}}},
        "health": {"storagedriver": {"enabled": True, "interval": "1s", "threshold": 2}},
    }
    with run_registry(tmp_path, config) as reg:
        n = 200
        with httpx.Client(base_url=reg.url) as c:  # new connections: both workers answer
            for _ in range(n):
                assert c.get("/v2/", headers={"Connection": "close"}).status_code == 200
        debug = f"http://127.0.0.1:{debug_port}"
        assert httpx.get(f"{debug}/debug/health").json() == {}
        # Every scrape, whichever worker answers it, sees the sum over both workers.
        for _ in range(5):
            text = httpx.get(f"{debug}/metrics", headers={"Connection": "close"}).text
            got = sample(text, "registry_http_requests_total", handler="base", method="GET",
                         code="200")
            assert got >= n, text[:2000]
        assert sample(text, "registry_storage_healthy") == 1
        # process_*: the sum over both workers (issue 15 item 2). CPU seconds only grow, so
        # a scrape after reading both workers' counters is at least their sum; one worker's
        # own figure (what a plain ProcessCollector reports) is less.
        workers = worker_pids(reg.proc.pid)
        assert len(workers) == 2, workers
        before = sum(cpu_seconds(pid) for pid in workers)
        text = httpx.get(f"{debug}/metrics", headers={"Connection": "close"}).text
        # Both sides are whole clock ticks summed as floats in different orders, so they may
        # differ in the last bits (0.30999999999999994 vs 0.31000000000000005): allow half a
        # tick. A missing worker still fails: ``before > max(...)`` makes each worker's
        # share at least one whole tick, twice the allowance.
        half_tick = 0.5 / os.sysconf("SC_CLK_TCK")
        assert sample(text, "process_cpu_seconds_total") >= before - half_tick
        assert before > max(map(cpu_seconds, workers))
        assert sample(text, "process_resident_memory_bytes") > 0
        assert sample(text, "process_open_fds") >= 2 * 3  # each: stdin, stdout, stderr at least
        assert sample(text, "process_max_fds") > 0 and sample(text, "process_start_time_seconds") > 0
        assert text.count("# TYPE process_resident_memory_bytes") == 1
        reg.proc.send_signal(signal.SIGTERM)
        assert reg.proc.wait(timeout=20) == 0


def worker_pids(parent: int) -> list[int]:
    """The live children of ``parent`` (Linux /proc)."""
    with open(f"/proc/{parent}/task/{parent}/children") as f:
        return [int(p) for p in f.read().split()]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def test_one_worker_exposes_its_process_metrics(nursery: trio.Nursery) -> None:
    """process_* (memory, CPU, fds, start time) on the metrics endpoint (issue 15 item 2)."""
    metrics = Metrics()
    debug_url = await serve_asgi(nursery, DebugApp(None, metrics))
    async with httpx.AsyncClient(base_url=debug_url) as d:
        text = (await d.get("/metrics")).text
    for name in ("process_resident_memory_bytes", "process_virtual_memory_bytes",
                 "process_cpu_seconds_total", "process_open_fds", "process_max_fds",
                 "process_start_time_seconds"):
        assert sample(text, name) > 0, name


def test_prometheus_path_is_configurable() -> None:
    config, _ = load_config(None, {"REGISTRY_HTTP_DEBUG_PROMETHEUS_PATH": "/m"})
    assert config.http.debug_prometheus_path == "/m"
