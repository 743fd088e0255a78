"""Start and stop the two registries under test.

The reference is ``registry-v3.0.0`` (the ``registry:3`` binary) from ``../shared/bin``
beside the project when present, else Debian's ``docker-registry`` (distribution 2.8);
``--reference PATH`` picks another. Go programs run with ``env -u AWS_CA_BUNDLE`` (Go's S3
client panics on this machine's bundle). A spec with ``limits`` runs in its own cgroup
(cgroups.py).

Each ``open_server`` gets a fresh temp storage directory, a free 127.0.0.1 port and a
config file in the reference registry's schema (ours reads the same schema), waits until
``GET /v2/`` answers, samples the process tree's RSS while it runs, and on exit stops the
whole process group (SIGTERM, then SIGKILL after a grace period) and deletes the storage.
"""

from __future__ import annotations

import itertools
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from .cgroups import Cgroup, Limits, open_cgroup
from .http1 import Connection, HTTPError
from .procmem import RssSampler, tree_cpu_seconds

REPO_ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 30.0  # seconds for a server to answer GET /v2/
STOP_GRACE = 10.0  # seconds between SIGTERM and SIGKILL

# Log quietly so logging does not dominate the figures; the same file goes to both servers.
CONFIG_TEMPLATE = """\
version: 0.1
log:
  level: {log_level}
  accesslog:
    disabled: true
storage:
{storage}
http:
  addr: {host}:{port}
"""

FILESYSTEM_STORAGE = """\
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true"""

# Before the reference was registry:3 this was the only reference command; results that
# recorded it (and no ``ref_path``) were measured against Debian's distribution 2.8.
DEFAULT_REF_CMD = "env -u AWS_CA_BUNDLE docker-registry serve {config}"
V3_REFERENCE = REPO_ROOT.parent / "shared" / "bin" / "registry-v3.0.0"
DEBIAN_REFERENCE = "/usr/bin/docker-registry"


def default_reference() -> str:
    """registry:3's binary from ../shared/bin when present, else Debian's docker-registry."""
    if V3_REFERENCE.is_file():
        return str(V3_REFERENCE)
    return shutil.which("docker-registry") or DEBIAN_REFERENCE


def reference_cmd(path: str) -> str:
    """The command line that serves a config with the reference binary at ``path``."""
    return f"env -u AWS_CA_BUNDLE {shlex.quote(path)} serve {{config}}"


def reference_version(path: str) -> str | None:
    """The version the binary prints (``v3.0.0`` -> ``3.0.0``, ``2.8.2+ds1``), or None."""
    try:
        out = subprocess.run(
            ["env", "-u", "AWS_CA_BUNDLE", path, "--version"],
            check=False, capture_output=True, text=True, timeout=10,
        ).stdout  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    for word in out.split():
        if word[:1].isdigit() or (word[:1] == "v" and word[1:2].isdigit()):
            return word.removeprefix("v")
    return None


def config_text(log_level: str, storage: str, port: int, host: str = "127.0.0.1") -> str:
    """A config in the reference's schema: quiet logs, ``storage`` (the YAML lines under
    ``storage:``, indented two spaces) and ``http.addr`` ``host:port``."""
    return CONFIG_TEMPLATE.format(log_level=log_level, storage=storage, host=host, port=port)


def default_ours_cmd() -> str:
    return f"{shlex.quote(sys.executable)} -m registry serve {{config}}"


class ServerStartError(Exception):
    """The server exited or never answered GET /v2/; the message carries its log tail."""


@dataclass(frozen=True)
class ServerSpec:
    side: str  # "ours" or "ref"
    command: str  # shell-like words; "{config}" is replaced by the config path
    log_level: str = "error"
    limits: Limits | None = None  # run inside a fresh cgroup with these limits

    def argv(self, config: Path) -> list[str]:
        words = shlex.split(self.command)
        if not any("{config}" in w for w in words):
            words.append("{config}")
        return [w.replace("{config}", str(config)) for w in words]


@dataclass
class RunningServer:
    spec: ServerSpec
    proc: subprocess.Popen[bytes]
    port: int
    root: Path
    log_path: Path
    rss: RssSampler
    host: str = "127.0.0.1"
    cgroup: Cgroup | None = None  # the server's cgroup in limits mode

    def connect(self, timeout: float = 60.0) -> Connection:
        return Connection(self.host, self.port, timeout=timeout)

    def cpu_seconds(self) -> float:
        """CPU time the server's process tree has used so far (user + system)."""
        return tree_cpu_seconds(self.proc.pid)

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_env() -> dict[str, str]:
    # REGISTRY_* variables override config keys in both servers: never let the caller's
    # environment change what is measured.
    return {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}


def _wait_ready(server: RunningServer, deadline: float) -> None:
    last = "no answer"
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise ServerStartError(
                f"{server.spec.side} server exited with code {server.proc.returncode}: "
                f"{' '.join(server.proc.args)}\n{server.log_tail()}"  # type: ignore[arg-type]
            )
        try:
            with Connection(server.host, server.port, timeout=1.0) as conn:
                resp = conn.request("GET", "/v2/")
            if resp.status in (200, 401):
                return
            last = f"HTTP {resp.status}"
        except HTTPError as exc:
            last = str(exc)
        time.sleep(0.05)
    raise ServerStartError(
        f"{server.spec.side} server did not answer GET /v2/ within {READY_TIMEOUT:.0f}s "
        f"({last})\n{server.log_tail()}"
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=STOP_GRACE)
    except subprocess.TimeoutExpired:
        pass
    try:  # also reaps workers that outlived their parent
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


@contextmanager
def open_server(spec: ServerSpec, workdir: Path) -> Iterator[RunningServer]:
    """Run one fresh server for the duration of the block. Raises ServerStartError."""
    base = Path(tempfile.mkdtemp(prefix=f"{spec.side}-", dir=workdir))
    root = base / "storage"
    root.mkdir()

    def config(port: int) -> str:
        return config_text(spec.log_level, FILESYSTEM_STORAGE.format(root=root), port)

    with run_server(spec, base, root, config, server_env()) as server:
        yield server


@contextmanager
def run_server(
    spec: ServerSpec,
    base: Path,
    root: Path,
    config_text: Callable[[int], str],
    env: dict[str, str],
) -> Iterator[RunningServer]:
    """Start ``spec`` with the config ``config_text(port)`` written under ``base``, wait
    until it answers, and on exit stop its process group and delete ``base``. With
    ``spec.limits`` the server runs in a fresh cgroup, removed after it stopped (raises
    cgroups.CgroupUnavailable when none can be made)."""
    with ExitStack() as stack:
        group = None
        if spec.limits is not None:
            name = f"registry-bench-{os.getpid()}-{spec.side}-{next(_CGROUP_SERIAL)}"
            group = stack.enter_context(open_cgroup(spec.limits, name))
        server = stack.enter_context(_run_server(spec, base, root, config_text, env, group))
        yield server


_CGROUP_SERIAL = itertools.count()


@contextmanager
def _run_server(
    spec: ServerSpec,
    base: Path,
    root: Path,
    config_text: Callable[[int], str],
    env: dict[str, str],
    group: Cgroup | None,
) -> Iterator[RunningServer]:
    log_path = base / "server.log"
    proc = None
    sampler = None
    try:
        for attempt in range(3):  # the free port may be taken between probe and bind
            port = free_port()
            config = base / "config.yml"
            config.write_text(config_text(port))
            try:
                with open(log_path, "ab") as log:
                    argv = spec.argv(config)
                    proc = subprocess.Popen(
                        group.wrap(argv) if group is not None else argv,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        cwd=REPO_ROOT,
                        env=env,
                        start_new_session=True,  # own process group: stop the whole tree
                    )
            except OSError as exc:
                raise ServerStartError(f"{spec.side} server command failed: {exc}") from exc
            sampler = RssSampler(proc.pid).start()
            server = RunningServer(spec, proc, port, root, log_path, sampler, cgroup=group)
            try:
                _wait_ready(server, time.monotonic() + READY_TIMEOUT)
                break
            except ServerStartError as exc:
                sampler.stop()
                _stop(proc)
                if attempt == 2 or "address already in use" not in str(exc).lower():
                    raise
        yield server
    finally:
        if sampler is not None:
            sampler.stop()
        if proc is not None:
            _stop(proc)
        shutil.rmtree(base, ignore_errors=True)
