"""Our server as a process with auth on: docker login, then push and pull (issue 6, item 1).

Also home of :func:`run_registry`, which the TLS, shutdown, debug and token tests import: it
starts ``python -m registry serve CONFIG`` with any configuration (e2e_support's runner
writes a fixed one and waits for an anonymous 200, which auth forbids).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest
import yaml

try:  # tests/ is a plain directory on sys.path, or a package
    from tests import e2e_support as e2e
except ImportError:
    import e2e_support as e2e  # type: ignore[no-redef]

docker_cli = e2e.docker_cli

REPO_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0


@dataclasses.dataclass
class Proc:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    scheme: str = "http"
    verify: Any = True

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30.0, verify=self.verify, **kwargs)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, wait; returns the exit code (SIGKILL and fail past ``timeout``)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"registry ignored SIGTERM for {timeout}s; log:\n{self.log()}")


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


@contextlib.contextmanager
def run_registry(
    tmp_path: Path,
    config: dict[str, Any] | None = None,
    *,
    port: int | None = None,
    scheme: str = "http",
    verify: Any = True,
    ready: Callable[[httpx.Response], bool] = lambda r: r.status_code in (200, 401),
    check_log: bool = True,
) -> Iterator[Proc]:
    """Start our registry with ``config`` merged over a base config (filesystem storage under
    tmp_path/storage, deletes on, one worker, 127.0.0.1:<free port>), wait until ``GET /v2/``
    satisfies ``ready``, and stop it with SIGTERM at the end. With ``check_log``, a traceback
    or a 5xx in its log fails the test."""
    port = port or e2e.free_port()
    base = {
        "version": "0.1",
        "log": {"level": "info"},
        "storage": {
            "filesystem": {"rootdirectory": str(tmp_path / "storage")},
            "delete": {"enabled": True},
        },
        "http": {"addr": f"127.0.0.1:{port}", "workers": 1},
    }
    cfg = tmp_path / f"config-{port}.yml"
    cfg.write_text(yaml.safe_dump(_merge(base, config or {})))
    log_path = tmp_path / f"registry-{port}.log"
    env = e2e.clean_env()
    env["PYTHONPATH"] = str(REPO_ROOT)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "registry", "serve", str(cfg)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
        )
    reg = Proc(proc, port, log_path, scheme, verify)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        with httpx.Client(timeout=2.0, verify=verify) as probe:
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"registry exited with {proc.returncode}; log:\n{reg.log()}")
                try:
                    if ready(probe.get(f"{reg.url}/v2/")):
                        break
                except (httpx.TransportError, ssl.SSLError):
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"registry not ready in {START_TIMEOUT_S}s; log:\n{reg.log()}")
                time.sleep(0.1)
        try:
            yield reg
        except BaseException as exc:
            exc.add_note(f"--- registry log ---\n{reg.log()[-6000:]}")
            raise
    finally:
        if proc.poll() is None:
            reg.stop()
    if check_log:
        problem = e2e.ours_log_problem(reg.log())
        assert problem is None, f"registry log shows {problem}:\n{reg.log()[-6000:]}"


def htpasswd_file(path: Path, users: dict[str, str], cost: int = 5) -> Path:
    path.write_text("".join(
        f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=cost)).decode()}\n"
        for u, p in users.items()
    ))
    return path


def htpasswd_config(path: Path, realm: str = "Registry Realm") -> dict[str, Any]:
    return {"auth": {"htpasswd": {"realm": realm, "path": str(path)}}}


# --- tests -----------------------------------------------------------------------------------


def test_process_answers_401_until_credentials_then_200(tmp_path: Path) -> None:
    users = htpasswd_file(tmp_path / "htpasswd", {"alice": "wonderland"})
    config = {**htpasswd_config(users), "log": {"formatter": "json"}}
    with run_registry(tmp_path, config) as reg, reg.client() as http:
        r = http.get("/v2/")
        assert r.status_code == 401
        assert r.headers["WWW-Authenticate"] == 'Basic realm="Registry Realm"'
        assert http.get("/v2/", auth=("alice", "wonderland")).status_code == 200
        assert http.get("/v2/", auth=("alice", "nope")).status_code == 401
        log = reg.log()
    assert "wonderland" not in log and "nope" not in log
    assert '"auth.user.name":"alice"' in log  # the access log names the user let in (v3's key)


@pytest.mark.e2e
def test_docker_login_push_pull_with_htpasswd(tmp_path: Path, docker_cli: str) -> None:
    users = htpasswd_file(tmp_path / "htpasswd", {"pusher": "s3cret-pw"}, cost=10)
    docker_config = tmp_path / "docker-config"
    docker_config.mkdir()
    docker = [docker_cli, "--config", str(docker_config)]
    base = e2e.ensure_base_image(docker_cli)
    with run_registry(tmp_path, htpasswd_config(users)) as reg:
        ref = f"{reg.host}/auth/busybox:v1"
        e2e.run([docker_cli, "tag", base, ref])
        try:
            denied = e2e.run([*docker, "push", ref], check=False)
            assert denied.returncode != 0
            assert "no basic auth credentials" in denied.stderr + denied.stdout or \
                "unauthorized" in (denied.stderr + denied.stdout).lower()
            bad = e2e.run([*docker, "login", reg.host, "-u", "pusher", "--password-stdin"],
                          input=b"wrong", check=False)
            assert bad.returncode != 0
            e2e.run([*docker, "login", reg.host, "-u", "pusher", "--password-stdin"],
                    input=b"s3cret-pw")
            e2e.run([*docker, "push", ref])
            e2e.docker_remove_images(docker_cli, ref)
            e2e.run([*docker, "pull", ref])
            e2e.run([*docker, "logout", reg.host])
            e2e.docker_remove_images(docker_cli, ref)
            anonymous = e2e.run([*docker, "pull", ref], check=False)
            assert anonymous.returncode != 0
        finally:
            e2e.docker_remove_images(docker_cli, ref)
        log = reg.log()
    assert "s3cret-pw" not in log
    assert os.path.exists(tmp_path / "storage" / "docker" / "registry" / "v2" / "repositories"
                          / "auth" / "busybox")
