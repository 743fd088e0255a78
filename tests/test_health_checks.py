"""Health checks as registry:3 (issue 15, items 1 and 5): ``health.file``, ``health.http``,
``health.tcp`` beside ``health.storagedriver``; /debug/health reports each failing check by
the reference's name; while any check fails, the API answers every path 503 UNAVAILABLE
(the reference's ``health.Handler``); a bucket that does not exist or a wrong key is
unhealthy from start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import s3_support  # tests/ is on sys.path under pytest (rootdir conftest)
import trio
from conftest import serve_asgi
from test_debug import FlakyDriver

from registry.config import ConfigError, load_config
from registry.drivers.memory import MemoryDriver
from registry.http.app import AppOptions, RegistryApp
from registry.ops import Operations, build_operations
from registry.ops.checks import FileCheck, HTTPCheck, TCPCheck, parse_checks
from registry.ops.debug import DebugApp
from registry.ops.health import Health, HealthChecker, parse_health
from registry.storage.store import Storage

TEST_TIMEOUT_S = 60  # each test; none may hang the suite


# --- configuration (tables) ----------------------------------------------------------------


def test_parse_checks_reads_the_references_keys() -> None:
    checks = parse_checks({
        "file": [{"file": "/tmp/down", "interval": "5s"}],
        "http": [{"uri": "http://127.0.0.1:9/ok", "headers": {"Authorization": ["Basic x"]},
                  "statuscode": 204, "timeout": "2s", "interval": "3s", "threshold": 2}],
        "tcp": [{"addr": "127.0.0.1:6379", "timeout": "1s", "threshold": 3}],
    })
    assert checks == [
        FileCheck("/tmp/down", interval=5.0),
        HTTPCheck("http://127.0.0.1:9/ok", (("Authorization", "Basic x"),), 204,
                  interval=3.0, threshold=2, timeout=2.0),
        TCPCheck("127.0.0.1:6379", interval=10.0, threshold=3, timeout=1.0),
    ]
    assert [c.key for c in checks] == ["/tmp/down", "http://127.0.0.1:9/ok", "127.0.0.1:6379"]
    assert parse_checks({}) == []
    assert parse_checks({"http": [{"uri": "https://x"}]})[0].statuscode == 200  # default


@pytest.mark.parametrize(
    "section,message",
    [
        ({"file": {"file": "/x"}}, r"^health\.file: expected a list"),
        ({"file": [{"interval": "1s"}]}, r"^health\.file\[0\]\.file: required"),
        ({"http": [{"uri": "ftp://x"}]}, r"^health\.http\[0\]\.uri: expected an http"),
        ({"http": [{"uri": "http://x", "statuscode": "ok"}]}, r"^health\.http\[0\]\.statuscode"),
        ({"http": [{"uri": "http://x", "timeout": "soon"}]}, r"^health\.http\[0\]\.timeout"),
        ({"tcp": [{"addr": "nohost"}]}, r"^health\.tcp\[0\]\.addr: expected host:port"),
        ({"tcp": [{"addr": "h:1", "threshold": -1}]}, r"^health\.tcp\[0\]\.threshold"),
    ],
)
def test_bad_check_config_names_the_key(section: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_checks(section)


def test_storage_check_is_on_by_default_for_s3_only() -> None:
    assert parse_health({}, "s3") == (True, 60.0, 3)
    assert parse_health({}, "filesystem")[0] is False
    assert parse_health({"storagedriver": {"enabled": False}}, "s3")[0] is False


# --- checks flipping ----------------------------------------------------------------------


async def test_file_check_fails_while_the_file_exists(tmp_path: Path) -> None:
    path = tmp_path / "maintenance"
    check = FileCheck(str(path))
    with trio.fail_after(TEST_TIMEOUT_S):
        await check.check_once()
        assert check.healthy and check.status() == {}
        path.write_text("")
        await check.check_once()
        assert check.status() == {str(path): "file exists"}  # the reference's message
        path.unlink()
        await check.check_once()
        assert check.healthy


class Target:
    """An HTTP target on 127.0.0.1 whose status the test sets; it records request heads."""

    def __init__(self) -> None:
        self.status = 200
        self.seen: list[tuple[str, dict[str, str]]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        self.seen.append((scope["method"], {k.decode(): v.decode()
                                            for k, v in scope["headers"]}))
        await send({"type": "http.response.start", "status": self.status,
                    "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})


async def test_http_check_flips_after_threshold_and_recovers(nursery: trio.Nursery) -> None:
    """Probes driven one by one (real sockets: no autojump clock, which would jump past the
    probe's deadline while the loopback answer is in flight)."""
    target = Target()
    url = await serve_asgi(nursery, target)
    check = HTTPCheck(f"{url}/ping", (("X-Probe", "yes"),), threshold=2, timeout=30)
    with trio.fail_after(TEST_TIMEOUT_S):
        await check.check_once()
        assert check.healthy
        assert target.seen[-1][0] == "HEAD" and target.seen[-1][1]["x-probe"] == "yes"
        target.status = 500
        await check.check_once()
        assert check.healthy and check.failures == 1  # under the threshold
        await check.check_once()
        assert check.status() == {
            f"{url}/ping": f"{url}/ping: downstream service returned unexpected status: 500"
        }
        target.status = 200
        await check.check_once()
        assert check.healthy


async def test_tcp_check_fails_once_the_port_is_closed() -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        check = TCPCheck(f"127.0.0.1:{port}", timeout=5)
        await check.check_once()
        assert check.healthy
        for listener in listeners:
            await listener.aclose()
        await check.check_once()
        assert not check.healthy
        message = check.status()[f"127.0.0.1:{port}"]
        assert message.startswith(f"127.0.0.1:{port}: connection failed: ")
        assert "refused" in message  # the reason, not trio's "all attempts ... failed"


async def test_a_check_failing_its_first_probe_is_unhealthy_at_once(
    nursery: trio.Nursery,
) -> None:
    driver = FlakyDriver()
    driver.down = True
    checker = HealthChecker(driver, interval=60, threshold=3)
    with trio.fail_after(TEST_TIMEOUT_S):
        await nursery.start(checker.serve)
    assert not checker.healthy


async def test_an_unhealthy_check_recovers_within_seconds_not_an_interval(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    driver = FlakyDriver()  # no I/O: the autojump clock is safe here
    driver.down = True
    checker = HealthChecker(driver, interval=60, threshold=3)
    await nursery.start(checker.serve)
    driver.down = False
    await trio.sleep(5.5)  # RECOVERY_INTERVAL_S, not the 60 s interval
    assert checker.healthy
    await trio.sleep(30)  # healthy again: back to the configured interval
    assert driver.calls == 2


# --- the API gate and /debug/health ---------------------------------------------------------


async def test_api_answers_503_on_every_path_while_a_check_fails(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    driver = FlakyDriver()
    drain = tmp_path / "drain"
    health = Health((HealthChecker(driver, interval=60, threshold=1), FileCheck(str(drain))))
    app = RegistryApp(Storage(MemoryDriver()), AppOptions(), ops=Operations(health=health))
    url = await serve_asgi(nursery, app)
    debug = await serve_asgi(nursery, DebugApp(health, None))
    paths = ("/v2/", "/v2/a/tags/list", "/v2/a/manifests/latest", "/v2/_catalog", "/nothing")
    with trio.fail_after(TEST_TIMEOUT_S):
        async with httpx.AsyncClient(base_url=url) as c, httpx.AsyncClient() as d:
            await nursery.start(health.serve)
            assert (await c.get("/v2/")).status_code == 200
            assert (await d.get(f"{debug}/debug/health")).json() == {}
            driver.down = True
            await health.checks[0].check_once()
            for path in paths:
                r = await c.get(path)
                assert r.status_code == 503, path
                assert r.json()["errors"][0]["code"] == "UNAVAILABLE"
                assert r.json()["errors"][0]["detail"] == (
                    "health check failed: please see /debug/health")
            head = await c.head("/v2/")
            assert head.status_code == 503 and head.content == b""
            assert (await c.post("/v2/a/blobs/uploads/")).status_code == 503
            r = await d.get(f"{debug}/debug/health")
            assert r.status_code == 503  # byte for byte as registry:3 (Go's compact JSON)
            assert r.content == b'{"storagedriver_flaky":"Unavailable: backend unreachable"}'
            gated = [rec for rec in caplog.records if rec.name == "registry.http"]
            assert gated == []  # the check logs its failure; requests add no line each
            driver.down = False
            await health.checks[0].check_once()
            assert (await c.get("/v2/")).status_code == 200
            drain.write_text("")  # the other kind of check gates the API the same way
            await health.checks[1].check_once()
            assert (await c.get("/v2/")).status_code == 503
            assert (await d.get(f"{debug}/debug/health")).json() == {str(drain): "file exists"}


async def test_operations_build_every_configured_check(tmp_path: Path) -> None:
    config, _ = load_config(None, {
        "REGISTRY_HEALTH_STORAGEDRIVER_ENABLED": "true",
        "REGISTRY_HEALTH_FILE": f"[{{file: {tmp_path / 'x'}}}]",
        "REGISTRY_HEALTH_TCP": "[{addr: '127.0.0.1:1'}]",
    })
    ops, _ = build_operations(config, MemoryDriver())
    assert ops.health is not None
    assert [type(c).__name__ for c in ops.health.checks] == [
        "HealthChecker", "FileCheck", "TCPCheck"]


# --- S3 at start-up -------------------------------------------------------------------------


@pytest.mark.s3
@pytest.mark.parametrize("fault", ["missing bucket", "wrong secret"])
async def test_s3_storage_unusable_at_start_up_is_unhealthy(fault: str) -> None:
    """The S3 default: no health section, yet a bucket that does not exist or a wrong key
    is unhealthy from the first probe (the container's health check reads /v2/: 503)."""
    from registry.drivers.s3.driver import S3Driver

    def params() -> dict[str, Any]:
        server = s3_support.moto_server()
        if fault == "missing bucket":
            return server.params("no-such-bucket-here")
        return server.params(server.new_bucket(), secretkey="wrong")

    with trio.fail_after(TEST_TIMEOUT_S):
        driver = S3Driver.from_params(await trio.to_thread.run_sync(params))
        try:
            _enabled, interval, threshold = parse_health({}, "s3")
            health = Health((HealthChecker(driver, interval, threshold),))
            async with trio.open_nursery() as nursery:
                await nursery.start(health.serve)
                assert not health.healthy
                assert list(health.status()) == ["storagedriver_s3"]
                nursery.cancel_scope.cancel()
        finally:
            await driver.aclose()
