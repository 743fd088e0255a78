"""`registry serve` (a real process, two workers) with Redis stopped and started while
clients push and pull (issue 17 item 1: "Redis down: requests still succeed from storage,
one log line per outage"): every request succeeds, each worker logs the outage once and the
return once, no traceback, no 500."""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import e2e_support as e2e
import httpx
import pytest
from redis_support import RedisServer, running_redis

LOAD_SECONDS = 1.5  # per phase (up, down, back): a few hundred requests on 2 cores
TEST_TIMEOUT_S = 120.0


@pytest.fixture
def redis_server(tmp_path) -> Iterator[RedisServer]:
    with running_redis(tmp_path) as server:
        yield server


@contextlib.contextmanager
def ours_with_redis(root: Path, server: RedisServer) -> Iterator[e2e.RegistryProcess]:
    def command(config: Path) -> tuple[list[str], dict[str, str]]:
        cmd, env = e2e._ours_command(config)
        env.update({
            "REGISTRY_REDIS_ADDRS": f"[{server.addr}]",
            "REGISTRY_REDIS_DIALTIMEOUT": "500ms",
            "REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR": "redis",
            "REGISTRY_HTTP_WORKERS": "2",
        })
        return cmd, env

    with e2e._run_registry("ours-redis", root, command, check_log=e2e.ours_log_problem) as reg:
        yield reg


def push(http: httpx.Client, data: bytes) -> str:
    d = "sha256:" + hashlib.sha256(data).hexdigest()
    r = http.post("/v2/repo/blobs/uploads/", params={"digest": d}, content=data)
    assert r.status_code == 201, r.text
    return d


def load(reg: e2e.RegistryProcess, tag: str, seconds: float, errors: list[str]) -> int:
    """Push one blob and pull it and the earlier ones, again and again; the count."""
    done, pushed = 0, []
    deadline = time.monotonic() + seconds
    with reg.client() as http:
        while time.monotonic() < deadline:
            pushed.append(push(http, f"{tag} {done}".encode()))
            for d in pushed[-5:]:
                for method in ("HEAD", "GET"):
                    r = http.request(method, f"/v2/repo/blobs/{d}")
                    if r.status_code != 200:
                        errors.append(f"{method} {d}: {r.status_code}")
            done += 1
    return done


def run_clients(reg: e2e.RegistryProcess, phase: str, errors: list[str]) -> list[int]:
    """Two clients loading at once (so both workers take requests); their counts."""
    counts: list[int] = []

    def one(tag: str) -> None:
        counts.append(load(reg, tag, LOAD_SECONDS, errors))

    threads = [threading.Thread(target=one, args=(f"{phase}{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TEST_TIMEOUT_S)
    return counts


def test_redis_stopped_and_started_under_load(tmp_path, redis_server):
    errors: list[str] = []
    with ours_with_redis(tmp_path / "storage", redis_server) as reg:
        started = time.monotonic()
        for phase in ("up", "down", "back"):
            if phase == "down":
                redis_server.stop()
            elif phase == "back":
                redis_server.start()
                time.sleep(1.5)  # the back-off (1 s) passes; each worker's next use probes
            counts = run_clients(reg, phase, errors)
            assert len(counts) == 2 and min(counts) > 0, (phase, counts)
        assert time.monotonic() - started < TEST_TIMEOUT_S
        log = reg.log_path.read_text(errors="replace")
    assert errors == []
    down = log.count("serving from storage until it is back")
    back = log.count(" is back after ")
    # Once per worker that saw it go, never per request; a worker logs the return only if a
    # request reached it after the back-off (the kernel picks which worker a connection
    # lands on), so at least one return line and never more than outages.
    assert 1 <= down <= 2 and 1 <= back <= down, log[-3000:]
    assert int(redis_server.cli("DBSIZE")) > 0  # the cache filled again after the restart
