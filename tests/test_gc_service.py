"""Online GC in the server: the schedule, one run at a time across processes, and the
``/admin/gc`` endpoint behind the app's authenticate hook (issue 5, What users get 2)."""

from __future__ import annotations

import random
from typing import Any

import httpx
import pytest
import trio

from registry.config import load_config
from registry.drivers.filesystem import FilesystemDriver
from registry.drivers.memory import MemoryDriver
from registry.errors import ErrorCode, RegistryError
from registry.http.app import AppOptions, RegistryApp
from registry.storage import paths
from registry.storage.gc_lock import open_gc_lock
from registry.storage.gc_service import BUSY_RETRY, FIRST_RUN_JITTER, OnlineGC
from registry.storage.store import Storage

try:
    from tests import gc_support as s
    from tests.conftest import serve_asgi
except ImportError:
    import gc_support as s  # type: ignore[no-redef]
    from conftest import serve_asgi  # type: ignore[no-redef]

INTERVAL = 24 * 3600.0


def service(driver: MemoryDriver, **kw: Any) -> OnlineGC:
    base: dict[str, Any] = {
        "scheduled": True,
        "interval": INTERVAL,
        "grace_period": 3600.0,
        "delete_untagged": False,
        "settle": 10.0,
        "lock_confirm": 2.0,
        "clock": lambda: 1e9 + trio.current_time(),
        "rng": random.Random(7),
    }
    base.update(kw)
    return OnlineGC(driver, **base)


async def test_scheduled_runs_after_jitter_then_every_interval(autojump_clock):
    driver = MemoryDriver()
    gc = service(driver)
    async with trio.open_nursery() as nursery:
        await nursery.start(gc.serve)
        await trio.sleep(FIRST_RUN_JITTER + 60)
        assert gc.runs == 1 and gc.last and gc.last["outcome"] == "done"
        first = gc.last["at"] - 1e9  # virtual time of the first run
        assert 0 <= first <= FIRST_RUN_JITTER
        await trio.sleep(3 * INTERVAL)
        assert gc.runs == 4
        nursery.cancel_scope.cancel()


async def test_restart_keeps_the_schedule(autojump_clock):
    driver = MemoryDriver()
    async with trio.open_nursery() as nursery:
        gc = service(driver)
        await nursery.start(gc.serve)
        await trio.sleep(FIRST_RUN_JITTER + 60)
        assert gc.runs == 1
        nursery.cancel_scope.cancel()
    restarted = service(driver)  # a new process: no jitter, next run one interval later
    async with trio.open_nursery() as nursery:
        await nursery.start(restarted.serve)
        await trio.sleep(INTERVAL - 2 * (FIRST_RUN_JITTER + 60))
        assert restarted.runs == 0
        await trio.sleep(2 * (FIRST_RUN_JITTER + 60) + 60)
        assert restarted.runs == 1
        nursery.cancel_scope.cancel()


async def test_two_workers_on_one_storage_collect_once_per_interval(autojump_clock):
    driver = MemoryDriver()
    a = service(driver, rng=random.Random(1))
    b = service(driver, rng=random.Random(1))  # same jitter: they race for the lock
    async with trio.open_nursery() as nursery:
        await nursery.start(a.serve)
        await nursery.start(b.serve)
        await trio.sleep(3 * INTERVAL)
        nursery.cancel_scope.cancel()
    assert a.runs + b.runs in (3, 4)  # once per interval, never twice
    outcomes = {a.last["outcome"], b.last["outcome"]} if a.last and b.last else set()
    assert "failed" not in outcomes


async def test_request_runs_now_and_only_once_at_a_time(autojump_clock):
    driver = MemoryDriver()
    storage = Storage(driver)
    orphan = await s.push_blob(storage, "app", b"orphan")
    s.age_everything(driver, 2 * s.HOUR)
    gc = service(driver, scheduled=False, clock=lambda: 1e9)
    async with trio.open_nursery() as nursery:
        await nursery.start(gc.serve)
        await trio.sleep(INTERVAL)
        assert gc.runs == 0  # not scheduled: only on request
        assert gc.request()
        await trio.sleep(1)  # inside the run now (lock confirm)
        assert gc.running and not gc.request()
        await trio.sleep(60)
        assert gc.runs == 1 and not gc.running
        assert gc.last and gc.last["blobs_deleted"] == 1
        nursery.cancel_scope.cancel()
    assert orphan not in s.blob_keys(driver)


async def test_busy_lock_is_retried_later(autojump_clock):
    driver = MemoryDriver()
    gc = service(driver, clock=trio.current_time)
    async with trio.open_nursery() as nursery:
        async with open_gc_lock(driver, confirm=0, clock=trio.current_time):
            await nursery.start(gc.serve)
            await trio.sleep(FIRST_RUN_JITTER + 60)
            assert gc.runs == 0 and gc.last and gc.last["outcome"] == "busy"
        await trio.sleep(BUSY_RETRY + 60)
        assert gc.runs == 1
        nursery.cancel_scope.cancel()


# --- /admin/gc over HTTP ---------------------------------------------------------------------


async def admin_app(nursery: trio.Nursery, root: str, **kw: Any) -> tuple[str, Any]:
    seen: list[str] = []

    async def authenticate(req: Any) -> None:
        seen.append(req.route.label)
        if req.headers.get("authorization") != "Bearer admin":
            raise RegistryError(ErrorCode.UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"})

    storage = Storage(FilesystemDriver(root))
    gc = OnlineGC(
        storage.driver,
        scheduled=False,
        interval=INTERVAL,
        grace_period=0.0,
        delete_untagged=False,
        settle=0.05,
        lock_confirm=0.0,
    )
    options = kw.pop("options", None) or AppOptions(delete_enabled=True)
    app = RegistryApp(storage, options, authenticate=authenticate, gc=gc)
    url = await serve_asgi(nursery, app)
    nursery.start_soon(gc.serve)
    app.seen = seen
    return url, app


AUTH = {"authorization": "Bearer admin"}


async def test_admin_gc_collects_on_request(nursery, tmp_path):
    root = str(tmp_path / "storage")
    url, app = await admin_app(nursery, root)
    storage = app.storage
    await s.push_image(storage, "app", "v1", [b"layer"])
    orphan = await s.push_blob(storage, "app", b"orphan")
    async with httpx.AsyncClient(base_url=url, headers=AUTH) as c:
        r = await c.post("/admin/gc")
        assert r.status_code == 202 and r.json() == {"status": "started"}
        with trio.fail_after(30):
            while True:
                status = (await c.get("/admin/gc")).json()
                if status["last"] and not status["running"]:
                    break
                await trio.sleep(0.05)
        assert status["last"]["outcome"] == "done"
        assert status["last"]["blobs_deleted"] == 1
        assert status["last_finished"] > 0 and status["lock_holder"] is None
        assert (await c.get(f"/v2/app/blobs/{orphan}")).status_code == 404
        assert (await c.get("/v2/app/manifests/v1")).status_code == 200
    assert "admin_gc" in app.seen


async def test_admin_gc_goes_through_the_authenticate_hook(nursery, tmp_path):
    url, app = await admin_app(nursery, str(tmp_path / "storage"))
    async with httpx.AsyncClient(base_url=url) as c:
        for method in ("GET", "POST"):
            r = await c.request(method, "/admin/gc")
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert app.gc.runs == 0 and app.seen == ["admin_gc", "admin_gc"]


async def test_admin_gc_refuses_a_second_run_and_read_only_mode(nursery, tmp_path):
    url, app = await admin_app(nursery, str(tmp_path / "a"))
    app.gc.running = True  # as if a run were in progress in this process
    async with httpx.AsyncClient(base_url=url, headers=AUTH) as c:
        r = await c.post("/admin/gc")
        assert r.status_code == 409 and r.json()["status"] == "running"
    app.gc.running = False
    url2, _ = await admin_app(nursery, str(tmp_path / "b"), options=AppOptions(readonly=True))
    async with httpx.AsyncClient(base_url=url2, headers=AUTH) as c:
        assert (await c.post("/admin/gc")).status_code == 405
        assert (await c.get("/admin/gc")).status_code == 200


async def test_admin_gc_without_a_collector_is_404(client):
    assert (await client.post("/admin/gc")).status_code == 404


def test_build_app_wires_purging_and_online_gc(tmp_path):
    from registry.server import build_app

    cfg = tmp_path / "config.yml"
    cfg.write_text(
        "version: 0.1\n"
        f"storage:\n  filesystem:\n    rootdirectory: {tmp_path}\n"
        "gc:\n  online:\n    enabled: true\n  interval: 12h\n  graceperiod: 2h\n"
    )
    config, _ = load_config(str(cfg), {})
    app = build_app(config)
    assert isinstance(app.gc, OnlineGC)
    assert app.gc.scheduled and app.gc.interval == 12 * 3600
    assert app.gc.options.grace_period == 2 * 3600 and app.gc.options.online
    assert app.gc.start in app._background


@pytest.mark.parametrize("path", [paths.GC_LOCK, paths.GC_LAST_RUN, paths.GC_TRASH])
def test_gc_keys_are_outside_what_the_reference_walks(path):
    assert not path.startswith((paths.BLOBS + "/", paths.REPOSITORIES + "/"))
    assert path.startswith(paths.ROOT + "/_gc/")
