"""Garbage collection after a crash (issue 12, item 4).

A collection killed with SIGKILL leaves its lock and, online, blobs in the trash and a
plan. The next lock taker (the offline command, the server at start-up) takes over a
lock whose holder is dead on this host at once and undoes the trash; a live holder, or
one on another host, still blocks until ``--force``; ``POST /admin/gc`` answers 409 with
the holder instead of a 202 for a run that never starts.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from registry.drivers.filesystem import FilesystemDriver
from registry.drivers.memory import MemoryDriver
from registry.storage import paths
from registry.storage.blobs import link_content
from registry.storage.gc_lock import Identity, LockBusy, open_gc_lock, process_stat
from registry.storage.store import Storage

try:
    from tests import gc_support as s
    from tests.e2e_support import clean_env, free_port
    from tests.test_cli_process import _Serving
    from tests.test_gc_service import AUTH, admin_app
except ImportError:
    import gc_support as s  # type: ignore[no-redef]
    from e2e_support import clean_env, free_port  # type: ignore[no-redef]
    from test_cli_process import _Serving  # type: ignore[no-redef]
    from test_gc_service import AUTH, admin_app  # type: ignore[no-redef]

REPO_ROOT = Path(__file__).resolve().parent.parent
WAIT_S = 60.0  # bound on every wait for a process or for storage to reach a state
AGE_S = 2 * s.HOUR  # older than the default 1h grace period: online GC may collect it
ORPHANS = 200  # unreferenced blobs: enough that trashing them takes a moment to watch


# --- helpers ---------------------------------------------------------------------------------


def wait_for(what: str, ready: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    """Poll ``ready()`` until it returns something truthy (returned); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        got = ready()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.002)


def on_disk(root: Path, key: str) -> Path:
    return root / key.lstrip("/")


def lock_record(root: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(on_disk(root, paths.GC_LOCK).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def trash_count(root: Path) -> int:
    trash = on_disk(root, paths.GC_TRASH) / "sha256"
    try:
        return sum(1 for _ in trash.iterdir())
    except OSError:
        return 0


def age_tree(root: Path, seconds: float) -> None:
    for p in [root, *root.rglob("*")]:
        st = p.stat()
        os.utime(p, (st.st_atime - seconds, st.st_mtime - seconds))


def children_of(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def gc_command(config: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    env = clean_env()
    env["PYTHONPATH"] = str(REPO_ROOT)
    return subprocess.run(
        [sys.executable, "-m", "registry", "garbage-collect", *flags, str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=WAIT_S,
        check=False,
    )


@pytest.fixture
def registry_dir(tmp_path: Path) -> Iterator[tuple[Path, Path, dict[str, Any]]]:
    """A filesystem registry: ``app:v1`` (one layer), ``ORPHANS`` unreferenced blobs and a
    ``racer`` blob (linked in ``app``, unreferenced), all older than the grace period."""
    root = tmp_path / "storage"
    facts: dict[str, Any] = {}

    async def seed() -> None:
        storage = Storage(FilesystemDriver(str(root)))
        facts["v1"], facts["v1_body"] = await s.push_image(storage, "app", "v1", [b"kept"])
        facts["racer"] = await s.push_blob(storage, "app", b"racer")
        facts["orphans"] = [
            await s.push_blob(storage, "app", b"orphan %d" % i) for i in range(ORPHANS)
        ]

    trio.run(seed)
    age_tree(root, AGE_S)
    config = tmp_path / "config.yml"
    config.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {root}\n")
    yield root, config, facts


def pull_problems(root: Path) -> list[str]:
    return trio.run(s.problems, Storage(FilesystemDriver(str(root))))


async def push_racing_manifest(root: Path, blob: Any) -> Any:
    """What a push that checked ``blob`` was linked just before the collector unlinked it
    writes afterwards: a manifest referencing it, its revision link and a tag. (Written
    below the API, which would now refuse it: the race the settle step exists for.)"""
    storage = Storage(FilesystemDriver(str(root)))
    config = b'{"racing":true}'
    await s.push_blob(storage, "app", config)
    body = s.image_manifest(config, [b"racer"])
    d = s.dg(body)
    await storage.driver.put_content(paths.blob_data(d), body)
    await storage.driver.put_content(paths.revision_link("app", d), link_content(d))
    await storage.tags.tag("app", "v2", d)
    return d


def blob_linked(root: Path, d: Any) -> bool:
    return on_disk(root, paths.layer_link("app", d)).exists()


# --- the offline command -----------------------------------------------------------------------


def test_offline_gc_killed_mid_run_then_gc_again_at_once(registry_dir):
    """kill -9 of ``registry garbage-collect`` mid-run; the next one takes over at once."""
    root, config, facts = registry_dir
    # Deterministically mid-run: v1's manifest bytes are a FIFO, so marking blocks on
    # opening it (no writer) until the process is killed.
    data = on_disk(root, paths.blob_data(facts["v1"]))
    data.unlink()
    os.mkfifo(data)
    env = clean_env()
    env["PYTHONPATH"] = str(REPO_ROOT)
    proc = subprocess.Popen(
        [sys.executable, "-m", "registry", "garbage-collect", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        held = wait_for("the collection to take the lock", lambda: lock_record(root))
        assert held["pid"] == proc.pid and proc.poll() is None
    finally:
        proc.kill()
        proc.wait(timeout=WAIT_S)
    data.unlink()
    data.write_bytes(facts["v1_body"])

    again = gc_command(config)

    assert again.returncode == 0, again.stderr
    assert "taking over the garbage collection lock from" in again.stderr
    assert f"pid {proc.pid} (dead on this host)" in again.stderr
    assert f"deleted blob {facts['orphans'][0]}" in again.stdout
    assert lock_record(root) is None
    assert pull_problems(root) == []


# --- the lock: who may take it -------------------------------------------------------------------


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A live process on this host that is not a registry (its cmdline says ``sleep``)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "sleep"])
    yield proc
    proc.kill()
    proc.wait(timeout=WAIT_S)


def holder_record(**fields: Any) -> bytes:
    return json.dumps(
        {"owner": "theirs", "expires": time.time() + 3600, **Identity.current().record(), **fields}
    ).encode()


def started(proc: subprocess.Popen[bytes]) -> int:
    stat = process_stat(proc.pid)
    assert stat is not None
    return stat[1]


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=WAIT_S)
    return proc.pid


def zombie(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    proc.kill()  # killed, not yet reaped (the fixture reaps it)
    wait_for("a zombie", lambda: (process_stat(proc.pid) or ("?",))[0] == "Z")
    return {"pid": proc.pid}


DEAD_HOLDERS = {
    "pid gone": lambda p: {"pid": dead_pid(), "start": None},
    "pid reused (start time differs)": lambda p: {"pid": p.pid, "start": started(p) + 1},
    "killed, not reaped yet": zombie,
    "no start time, not a registry": lambda p: {"pid": p.pid, "start": None},
}


@pytest.mark.parametrize("case", DEAD_HOLDERS)
async def test_lock_of_a_dead_holder_on_this_host_is_taken_over_at_once(case, sleeper, caplog):
    driver = MemoryDriver()
    fields = DEAD_HOLDERS[case](sleeper)
    await driver.put_content(paths.GC_LOCK, holder_record(**fields))
    with caplog.at_level(logging.WARNING, logger="registry.gc"):
        async with open_gc_lock(driver, confirm=0) as lock:
            doc = json.loads(await driver.get_content(paths.GC_LOCK))
            assert doc["owner"] == lock.token and doc["pid"] == os.getpid()
    assert f"pid {fields['pid']} (dead on this host)" in caplog.text


LIVE_HOLDERS = {
    "alive on this host": lambda p: {"pid": p.pid, "start": started(p)},
    "this very process": lambda p: {},
    "another host": lambda p: {"host": "elsewhere", "pid": p.pid, "start": started(p) + 1},
    "this host before a reboot": lambda p: {"boot_id": "another-boot", "pid": dead_pid()},
    "another pid namespace": lambda p: {"pidns": "pid:[1]", "pid": dead_pid()},
}


@pytest.mark.parametrize("case", LIVE_HOLDERS)
async def test_a_live_or_unknowable_holder_blocks_until_forced(case, sleeper, caplog):
    driver = MemoryDriver()
    fields = LIVE_HOLDERS[case](sleeper)
    await driver.put_content(paths.GC_LOCK, holder_record(**fields))
    with pytest.raises(LockBusy):
        async with open_gc_lock(driver, confirm=0):
            pass
    with caplog.at_level(logging.WARNING, logger="registry.gc"):
        async with open_gc_lock(driver, confirm=0, force=True) as lock:
            doc = json.loads(await driver.get_content(paths.GC_LOCK))
            assert doc["owner"] == lock.token
    assert "forcibly taking the garbage collection lock from" in caplog.text


def test_garbage_collect_force_takes_a_live_holders_lock(registry_dir, sleeper):
    root, config, facts = registry_dir
    lock = on_disk(root, paths.GC_LOCK)
    lock.parent.mkdir(parents=True)
    lock.write_bytes(holder_record(pid=sleeper.pid, start=started(sleeper)))

    refused = gc_command(config)
    assert refused.returncode == 1
    assert f"holds the lock ({os.uname().nodename} pid {sleeper.pid})" in refused.stderr

    forced = gc_command(config, "--force")
    assert forced.returncode == 0, forced.stderr
    assert "WARNING: --force: taking the lock from the collection of" in forced.stderr
    assert f"pid {sleeper.pid}" in forced.stderr
    assert f"deleted blob {facts['orphans'][0]}" in forced.stdout
    assert lock_record(root) is None


# --- /admin/gc -----------------------------------------------------------------------------------


async def test_admin_gc_is_409_with_the_holder_while_another_holds_the_lock(nursery, tmp_path):
    url, app = await admin_app(nursery, str(tmp_path / "storage"))
    driver = app.storage.driver
    await s.push_blob(app.storage, "app", b"orphan")
    await driver.put_content(paths.GC_LOCK, holder_record(host="elsewhere", pid=4242))
    async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=30) as c:
        r = await c.post("/admin/gc")
        assert r.status_code == 409
        body = r.json()
        assert body["status"] == "busy"
        assert body["holder"]["host"] == "elsewhere" and body["holder"]["pid"] == 4242
        assert "owner" not in body["holder"]
        assert app.gc.runs == 0 and app.gc.last is None  # nothing was started
        assert (await c.get("/admin/gc")).json()["lock_holder"]["host"] == "elsewhere"

        # The holder dies on this host: its lock is taken over, the run starts and ends.
        await driver.put_content(paths.GC_LOCK, holder_record(pid=dead_pid(), start=None))
        r = await c.post("/admin/gc")
        assert r.status_code == 202 and r.json() == {"status": "started"}
        with trio.fail_after(WAIT_S):
            while not (app.gc.last and not app.gc.running):
                await trio.sleep(0.02)
        assert app.gc.last["outcome"] == "done" and app.gc.last["blobs_deleted"] == 1


# --- the online collector in `registry serve`, killed mid-collection ---------------------------


def test_online_gc_killed_mid_collection_in_a_served_registry(registry_dir, tmp_path):
    """kill -9 of the worker collecting while it moves blobs to the trash, just after a
    racing push; the restarted worker puts the trash and the racer's link back at
    start-up; a new run starts (202, then 409 with the holder while it runs); kill -9 of
    the whole server mid-collection; ``registry garbage-collect`` at once succeeds."""
    root, _, facts = registry_dir
    port = free_port()
    config = tmp_path / "serve.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: info\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n  workers: 2\n"
    )
    racer = facts["racer"]
    with _Serving(tmp_path, str(config), port=port) as srv:
        master = srv.proc.pid
        with httpx.Client(base_url=srv.url, timeout=WAIT_S) as c:
            assert c.post("/admin/gc").status_code == 202
            wait_for("the first blob in the trash", lambda: trash_count(root))
            collector = lock_record(root)["pid"]
            os.kill(collector, signal.SIGSTOP)  # mid-move, most likely: see the count
            in_trash = trash_count(root)
            assert not blob_linked(root, racer)  # unlinked before anything is trashed
            racing = trio.run(push_racing_manifest, root, racer)
            os.kill(collector, signal.SIGKILL)

            # The supervisor restarts the worker; at start-up it takes over the dead
            # worker's lock and undoes the trash, the plan and the racer's link.
            wait_for(
                "the restarted worker to empty the trash",
                lambda: trash_count(root) == 0 and lock_record(root) is None,
            )
            assert collector not in children_of(master)
            assert blob_linked(root, racer), f"{in_trash} blobs were in the trash"
            assert c.get(f"/v2/app/blobs/{racer}").status_code == 200
            assert c.get(f"/v2/app/manifests/{racing}").status_code == 200
            assert c.get(f"/v2/app/blobs/{facts['orphans'][-1]}").status_code == 404
            assert on_disk(root, paths.blob_data(facts["orphans"][-1])).exists()
            assert pull_problems(root) == []

            # A new collection starts at once (the lock is free), then holds it while it
            # waits out the settle step: another request is refused with the holder.
            assert c.post("/admin/gc").status_code == 202
            busy = c.post("/admin/gc")
            assert busy.status_code == 409, busy.text
            holder = busy.json()["holder"]
            assert holder["pid"] in children_of(master)
            wait_for("the orphans in the trash", lambda: trash_count(root) == ORPHANS)
        workers = children_of(master)
        os.kill(master, signal.SIGKILL)
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
    assert "Traceback" not in srv.log, srv.log

    again = gc_command(tmp_path / "config.yml")

    assert again.returncode == 0, again.stderr
    assert "(dead on this host)" in again.stderr
    assert f"deleted blob {facts['orphans'][-1]}" in again.stdout
    assert trash_count(root) == 0 and lock_record(root) is None
    assert not on_disk(root, paths.GC_PLAN).exists()
    for d in facts["orphans"]:
        assert not on_disk(root, paths.blob_data(d)).exists()
    assert pull_problems(root) == []
