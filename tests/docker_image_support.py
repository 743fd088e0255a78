"""Helpers for tests/test_docker_image.py: build the image offline, run containers of it,
read their memory from the cgroup, and read the variables of the compose file.

Contracts:
- `build_image(docker)` builds `IMAGE` with docker/build.sh --offline from a base made with
  debootstrap (`BASE_IMAGE`, kept by tag across runs, so only the first run pays for it) and
  returns the tag. It fails under CI=true, and skips elsewhere, when a tool is missing.
- `RegistryContainer` owns one `docker run -d` of the image on the host network, a free
  port and a named volume (or a host directory: an absolute path is bind-mounted), with
  `command` as the container's arguments; `start()` waits (bounded) for GET /v2/ to answer 200 (401 when told auth is on) and fails
  with the container's log when it does not; `remove()` removes the container (the volume
  goes with `remove_volume()`). Container names and volumes carry `PREFIX`.
- `memory(docker, container)` reads the container's cgroup (v1 or v2) once.
- `run_registry_3(root)` runs registry:3's own program (../shared/bin/registry-v3.0.0, as
  root here, as in its image) on filesystem storage under `root`, like e2e.run_reference;
  a missing binary fails under CI=true and skips elsewhere.
- `compose_variables(compose)` lists the ${VAR} references and pass-through variables of a
  parsed compose file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

try:  # tests/ is a plain directory on sys.path, or a package
    from tests import e2e_support as e2e
except ImportError:
    import e2e_support as e2e  # type: ignore[no-redef]

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCKER_DIR = REPO_ROOT / "docker"
BUILD_SCRIPT = DOCKER_DIR / "build.sh"

IMAGE = "registry-py:test"
# Bump the suffix when the base recipe in docker/build.sh changes: the tag is the cache key.
BASE_IMAGE = "registry-test-base:bookworm-py3.11-1"
PREFIX = "registry-image-test"

BUILD_TIMEOUT_S = 900.0  # debootstrap ~2 min, wheels ~1 min, docker build 1-3 min on vfs
START_TIMEOUT_S = 30.0
MiB = 1024 * 1024


def build_image(docker: str) -> str:
    """Build IMAGE from this checkout (see the module docstring); returns its tag."""
    env = {**os.environ, "DOCKER": docker, "PYTHON": sys.executable}
    if e2e.run([docker, "image", "inspect", BASE_IMAGE], check=False).returncode != 0:
        e2e.require_tool("debootstrap", "apt-get install debootstrap")
        if os.geteuid() != 0:
            reason = f"making {BASE_IMAGE} with debootstrap needs root"
            if e2e.in_ci():
                pytest.fail(reason)
            pytest.skip(reason)
    e2e.run(
        [
            "bash",
            str(BUILD_SCRIPT),
            "--offline",
            "--debootstrap-base",
            BASE_IMAGE,
            "--tag",
            IMAGE,
        ],
        env=env,
        timeout=BUILD_TIMEOUT_S,
    )
    return IMAGE


def inspect(docker: str, ref: str) -> dict[str, Any]:
    out = e2e.run([docker, "inspect", ref]).stdout
    result: dict[str, Any] = json.loads(out)[0]
    return result


@dataclasses.dataclass
class RegistryContainer:
    """One container of the image on the host network (see the module docstring)."""

    docker: str
    image: str
    name: str
    volume: str
    port: int
    run_args: tuple[str, ...] = ()
    command: tuple[str, ...] = ()  # the container's arguments (registry:3's: a config path)
    ready_status: int = 200  # what GET /v2/ answers when up: 401 with auth on

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def start(self) -> None:
        e2e.run(
            [
                self.docker,
                "run",
                "-d",
                "--name",
                self.name,
                "--network",
                "host",
                "-e",
                f"REGISTRY_HTTP_ADDR=127.0.0.1:{self.port}",
                "-v",
                f"{self.volume}:/var/lib/registry",
                *self.run_args,
                self.image,
                *self.command,
            ]
        )
        self.wait_ready()

    def restart(self) -> None:
        e2e.run([self.docker, "restart", self.name])
        self.wait_ready()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        last = "no answer yet"
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                state = inspect(self.docker, self.name)["State"]
                if not state["Running"]:
                    pytest.fail(
                        f"container {self.name} exited with {state['ExitCode']}; "
                        f"log:\n{self.logs()}"
                    )
                try:
                    resp = client.get(f"{self.url}/v2/")
                    if resp.status_code == self.ready_status:
                        return
                    last = f"GET /v2/ -> {resp.status_code}"
                except httpx.TransportError as exc:
                    last = repr(exc)
                time.sleep(0.2)
        pytest.fail(f"{self.name} not ready in {START_TIMEOUT_S}s ({last}); log:\n{self.logs()}")

    def wait_healthy(self, timeout_s: float = 20.0) -> None:
        """Wait (bounded) until docker reports the container's health check healthy."""
        deadline = time.monotonic() + timeout_s
        while (health := inspect(self.docker, self.name)["State"]["Health"])["Status"] != "healthy":
            assert time.monotonic() < deadline, f"never healthy: {health}"
            time.sleep(0.5)

    def logs(self) -> str:
        proc = e2e.run([self.docker, "logs", "--tail", "200", self.name], check=False)
        return (proc.stdout + proc.stderr)[-e2e.LOG_TAIL_CHARS :]

    def exec(self, *args: str, check: bool = True) -> Any:
        return e2e.run([self.docker, "exec", self.name, *args], check=check)

    def remove(self) -> None:
        e2e.run([self.docker, "rm", "-f", "-v", self.name], check=False)

    def remove_volume(self) -> None:
        e2e.run([self.docker, "volume", "rm", "-f", self.volume], check=False)


REGISTRY_3 = REPO_ROOT.parent / "shared" / "bin" / "registry-v3.0.0"  # see its README


@contextlib.contextmanager
def run_registry_3(root: Path) -> Iterator[e2e.RegistryProcess]:
    """registry:3's program serving filesystem storage under `root` (see the module docstring)."""
    if not REGISTRY_3.exists():
        reason = f"{REGISTRY_3} is missing (distribution v3.0.0's registry; see shared/bin)"
        if e2e.in_ci():
            pytest.fail(reason)
        pytest.skip(reason)

    def command(config: Path) -> tuple[list[str], dict[str, str]]:
        # AWS_CA_BUNDLE makes Go's S3 client panic at startup, even with filesystem storage.
        return [str(REGISTRY_3), "serve", str(config)], e2e.clean_env(drop=["AWS_CA_BUNDLE"])

    with e2e._run_registry("registry-v3", root, command) as reg:
        yield reg


@dataclasses.dataclass(frozen=True)
class Memory:
    """One reading of a container's memory cgroup, in bytes.

    `working_set` is usage less inactive file cache (what `docker stats` and the kernel's
    OOM decisions care about: inactive cache is reclaimed before anything is killed);
    `anon` is process memory (RSS); `peak` is the cgroup's high-water mark of raw usage,
    page cache included (memory.max_usage_in_bytes or memory.peak; None if absent).
    """

    usage: int
    working_set: int
    anon: int
    peak: int | None


def _cgroup_dir(pid: int) -> tuple[Path, int]:
    """The memory cgroup directory of `pid` and the cgroup version (1 or 2)."""
    lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return Path("/sys/fs/cgroup/memory") / path.lstrip("/"), 1
    for line in lines:
        if line.startswith("0::"):
            return Path("/sys/fs/cgroup") / line[3:].lstrip("/"), 2
    raise AssertionError(f"no memory cgroup for pid {pid}: {lines}")


def _stat(path: Path) -> dict[str, int]:
    return {k: int(v) for k, v in (line.split() for line in path.read_text().splitlines() if line)}


def memory(docker: str, container: str) -> Memory:
    pid = inspect(docker, container)["State"]["Pid"]
    cgroup, version = _cgroup_dir(pid)
    stat = _stat(cgroup / "memory.stat")
    if version == 1:
        usage = int((cgroup / "memory.usage_in_bytes").read_text())
        inactive = stat.get("total_inactive_file", stat.get("inactive_file", 0))
        anon = stat.get("total_rss", stat.get("rss", 0))
        peak_file = cgroup / "memory.max_usage_in_bytes"
    else:
        usage = int((cgroup / "memory.current").read_text())
        inactive = stat.get("inactive_file", 0)
        anon = stat.get("anon", 0)
        peak_file = cgroup / "memory.peak"
    peak = int(peak_file.read_text()) if peak_file.exists() else None
    return Memory(usage=usage, working_set=max(0, usage - inactive), anon=anon, peak=peak)


# --------------------------------------------------------------------------- compose

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}
_INTERPOLATION = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


@dataclasses.dataclass(frozen=True)
class ComposeVariables:
    defaults: Mapping[str, str]  # referenced with a default: name -> default
    required: frozenset[str]  # referenced with :? (compose refuses to start without it)
    plain: frozenset[str]  # referenced as ${VAR} only
    passthrough: frozenset[str]  # `environment:` keys with no value: copied when set

    @property
    def referenced(self) -> frozenset[str]:
        return frozenset(self.defaults) | self.required | self.plain


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, Mapping):
        for key, value in node.items():
            yield str(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)


def compose_variables(compose: Mapping[str, Any]) -> ComposeVariables:
    defaults: dict[str, str] = {}
    required: set[str] = set()
    plain: set[str] = set()
    for text in _strings(compose):
        for match in _INTERPOLATION.finditer(text):
            name, op, arg = match.groups()
            if op is None:
                plain.add(name)
            elif op.endswith("?"):
                required.add(name)
            else:
                defaults[name] = arg
    passthrough: set[str] = set()
    for service in compose.get("services", {}).values():
        env = service.get("environment") or {}
        if isinstance(env, list):
            passthrough.update(item for item in env if "=" not in item)
        else:
            passthrough.update(k for k, v in env.items() if v is None)
    return ComposeVariables(
        defaults=defaults,
        required=frozenset(required),
        plain=frozenset(plain - required - set(defaults)),
        passthrough=frozenset(passthrough),
    )
