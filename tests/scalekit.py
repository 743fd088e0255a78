"""Several registry replicas on one storage behind haproxy, optionally with redis-server:
the deployment the scale-out tests (tests/scaleout_support.py) and the replica bench
(bench/replicas.py) both run. No pytest here, so the bench can import it.

Contracts:
- :func:`open_deployment` starts, in order, redis-server (optional), N replicas (real
  processes, each in its own session so that SIGKILL reaches its workers too) and haproxy,
  waits (bounded) until each answers, and stops everything it started on exit, in reverse,
  whatever happened (SIGTERM, then SIGKILL after ``STOP_TIMEOUT_S``).
- haproxy balances round-robin per REQUEST: ``option http-server-close`` and ``http-reuse
  never`` give each request its own server connection and its own balancing decision, so
  successive requests on one client connection reach different replicas. Health checks are
  TCP connects (no access-log lines); ``retries`` + ``option redispatch`` send a request
  whose connection was refused to the next replica (a killed one is marked down within
  ``CHECK_INTERVAL_MS`` x ``CHECK_FALL``).
- Every replica gets the same config: the one storage, the same ``http.secret``, the same
  ``extra`` YAML; only ``http.addr`` differs. Replica ``i`` can be killed (SIGKILL) and
  restarted on its port; redis can be stopped and started on its port.
- Logs: one file per process under the deployment's directory; :meth:`Replica.access`
  reads a replica's access lines (registry:3's text format, as tests/e2e_support does).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
REFERENCE_V3 = REPO_ROOT.parent / "shared" / "bin" / "registry-v3.0.0"

START_TIMEOUT_S = 30.0  # ours is Python: import + config + bind takes a second or two
STOP_TIMEOUT_S = 15.0  # graceful shutdown finishes in-flight requests first
CHECK_INTERVAL_MS = 300  # haproxy's health check period: a killed replica is down in <1 s
CHECK_FALL = 2  # failed checks before haproxy takes a replica out
LB_HEADER = "X-Scale-Out-LB"
LOG_QUIET_S = 0.3  # a log unchanged this long has its last access line (written after the answer)
LOG_SETTLE_BOUND_S = 10.0  # bound on that wait: a replica under load may log continuously
HTTP_SECRET = "scale-out-shared-secret"  # every replica must share it (upload state tokens)

_ACCESS = re.compile(
    r'(http\.request\.method|http\.request\.uri|http\.response\.status)=("[^"]*"|\S+)'
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ours_command(config: Path) -> tuple[list[str], dict[str, str]]:
    """``python -m registry serve CONFIG`` importing this checkout."""
    env = _clean_env()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return [sys.executable, "-m", "registry", "serve", str(config)], env


def reference_command(config: Path) -> tuple[list[str], dict[str, str]]:
    """registry-v3.0.0 from ../shared/bin (Go's S3 client panics on AWS_CA_BUNDLE)."""
    env = _clean_env()
    env.pop("AWS_CA_BUNDLE", None)
    return [str(REFERENCE_V3), "serve", str(config)], env


def _clean_env() -> dict[str, str]:
    # REGISTRY_* variables would reconfigure the replicas under test.
    return {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}


Command = Callable[[Path], tuple[list[str], dict[str, str]]]


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Signal the process group, wait, SIGKILL after STOP_TIMEOUT_S; safe to call twice."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):  # workers that outlived their parent
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=STOP_TIMEOUT_S)


def _spawn(argv: Sequence[str], env: dict[str, str] | None, log: Path, cwd: Path) -> Any:
    with open(log, "ab") as out:
        return subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            env=env, cwd=cwd, start_new_session=True,
        )  # fmt: skip


def _wait_http(
    url: str, proc: subprocess.Popen[bytes], what: str, log: Path, header: str | None = None
) -> None:
    """Until ``url`` answers 200 (with ``header`` set, when given: the port is ours, not a
    process that took it between our probe and our bind)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200 and (header is None or resp.headers.get(header)):
                    return
                last = f"HTTP {resp.status} without {header}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except OSError as exc:
            last = repr(exc)
        time.sleep(0.1)
    raise RuntimeError(f"{what} not ready in {START_TIMEOUT_S}s ({last}):\n{_tail(log)}")


def _tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError as exc:
        return f"<{exc}>"


@dataclass
class Replica:
    """One registry process of the deployment, on ``port``."""

    index: int
    port: int
    config: Path
    log_path: Path
    command: Command
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        argv, env = self.command(self.config)
        self.proc = _spawn(argv, env, self.log_path, self.config.parent)
        _wait_http(f"{self.url}/v2/", self.proc, f"replica {self.index}", self.log_path)

    def kill(self) -> None:
        """SIGKILL the replica's whole process group (no drain, no cleanup)."""
        if self.proc is not None:
            _stop(self.proc, signal.SIGKILL)

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def access(self, method: str | None = None, uri_prefix: str = "") -> list[tuple[str, str, int]]:
        """(method, uri, status) of each access line of this replica, filtered."""
        found = []
        for line in self.log().splitlines():
            fields = {k: v.strip('"') for k, v in _ACCESS.findall(line)}
            if len(fields) != 3:
                continue
            verb, uri = fields["http.request.method"], fields["http.request.uri"]
            if (method is None or verb == method) and uri.startswith(uri_prefix):
                found.append((verb, uri, int(fields["http.response.status"])))
        return found


@dataclass
class Redis:
    """A redis-server on ``port`` without persistence; stoppable and restartable."""

    port: int
    log_path: Path
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        exe = shutil.which("redis-server") or "redis-server"
        argv = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.workdir)]  # fmt: skip
        self.proc = _spawn(argv, None, self.log_path, self.workdir)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited:\n{_tail(self.log_path)}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock,
            ):
                sock.sendall(b"PING\r\n")
                if sock.recv(64).startswith(b"+PONG"):
                    return
            time.sleep(0.05)
        raise RuntimeError(f"redis-server not ready:\n{_tail(self.log_path)}")

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)

    def dbsize(self) -> int:
        """How many keys Redis holds now (DBSIZE)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(b"DBSIZE\r\n")
            reply = sock.recv(64)
        if not reply.startswith(b":"):
            raise RuntimeError(f"DBSIZE answered {reply!r}")
        return int(reply[1:].split(b"\r\n")[0])


def haproxy_config(port: int, backends: Sequence[int], *, max_conn: int = 2048) -> str:
    """haproxy in http mode on 127.0.0.1:``port``, round-robin per request over ``backends``."""
    servers = "\n".join(
        f"  server r{i} 127.0.0.1:{p} check inter {CHECK_INTERVAL_MS} fall {CHECK_FALL} rise 1"
        for i, p in enumerate(backends)
    )
    return f"""\
global
  maxconn {max_conn * 2}
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout http-request 60s
  # One server connection per request, so every request is balanced on its own.
  option http-server-close
  http-reuse never
  # A refused connection (a killed replica) is retried on another one.
  retries 3
  option redispatch 1
  # Large blob bodies stream through; no request buffering.
  option forwardfor
frontend registry
  bind 127.0.0.1:{port}
  maxconn {max_conn}
  default_backend replicas
  # Marks haproxy's answers (how the tests know the port is this haproxy's).
  http-response set-header {LB_HEADER} 1
backend replicas
  balance roundrobin
{servers}
"""


@dataclass
class Deployment:
    """N replicas on one storage behind haproxy (see the module docstring)."""

    directory: Path
    replicas: list[Replica]
    lb_port: int
    storage: str  # "s3" or "fs"
    redis: Redis | None = None
    haproxy: subprocess.Popen[bytes] | None = None
    haproxy_log: Path | None = None
    root: Path | None = None  # the shared directory ("fs")
    s3: dict[str, Any] = field(default_factory=dict)  # the storage.s3 params ("s3")

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.lb_port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def quiet_logs(self) -> None:
        """Wait (at most LOG_SETTLE_BOUND_S) until no replica's log has grown for
        LOG_QUIET_S: a replica writes a request's access line just after sending its
        answer, so a client that got the answer may read the log a moment too early."""
        deadline = time.monotonic() + LOG_SETTLE_BOUND_S
        sizes: list[int] = []
        while time.monotonic() < deadline:
            now = [r.log_path.stat().st_size if r.log_path.exists() else 0 for r in self.replicas]
            if now == sizes:
                return
            sizes = now
            time.sleep(LOG_QUIET_S)

    def replica_of(self, uri_prefix: str, method: str | None = None) -> dict[int, int]:
        """Replica index -> how many access lines match ``method``/``uri_prefix`` (after
        :meth:`quiet_logs`)."""
        self.quiet_logs()
        counts = {r.index: len(r.access(method, uri_prefix)) for r in self.replicas}
        return {i: n for i, n in counts.items() if n}

    def logs(self) -> str:
        parts = [f"--- replica {r.index} ---\n{_tail(r.log_path)}" for r in self.replicas]
        if self.haproxy_log is not None:
            parts.append(f"--- haproxy ---\n{_tail(self.haproxy_log)}")
        return "\n".join(parts)


def storage_yaml(deploy: Deployment) -> str:
    if deploy.storage == "fs":
        return f"  filesystem:\n    rootdirectory: {deploy.root}\n"
    params = "".join(f"    {k}: {_yaml_scalar(v)}\n" for k, v in deploy.s3.items())
    # Blob GETs are served through the replicas: moto answers presigned URLs with a 500
    # while its IAM auth is on (tests/s3_support.py), and the bench measures the replicas.
    return f"  s3:\n{params}  redirect:\n    disable: true\n"


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def replica_config(deploy: Deployment, port: int, *, workers: int | None, log_level: str,
                   access_log: bool, extra: str, redis_cache: bool) -> str:  # fmt: skip
    """The config every replica gets (``http.addr`` aside); ``extra`` is appended YAML."""
    cache = "  cache:\n    blobdescriptor: redis\n" if deploy.redis and redis_cache else ""
    text = (
        "version: 0.1\n"
        f"log:\n  level: {log_level}\n"
        f"  accesslog:\n    disabled: {'false' if access_log else 'true'}\n"
        f"storage:\n{storage_yaml(deploy)}{cache}  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n  secret: {HTTP_SECRET}\n"
    )
    if workers is not None:  # ours only: registry:3 has no http.workers
        text += f"  workers: {workers}\n"
    if deploy.redis is not None:
        text += f"redis:\n  addrs: [{deploy.redis.addr}]\n"
    return text + extra


@contextlib.contextmanager
def open_deployment(
    directory: Path,
    *,
    replicas: int = 3,
    storage: str = "fs",
    s3_params: dict[str, Any] | None = None,
    redis: bool = False,
    workers: int | None = 1,
    log_level: str = "info",
    access_log: bool = True,
    extra: str = "",
    command: Command = ours_command,
    redis_cache: bool = True,
    free_port: Callable[[], int] = _free_port,
) -> Iterator[Deployment]:
    """Start the deployment under ``directory``; stop everything on exit.

    ``storage="s3"`` needs ``s3_params`` (a ``storage.s3`` section for one bucket);
    ``"fs"`` shares ``directory/storage``. ``redis=True`` starts a redis-server and gives
    every replica its ``redis:`` section (and ``storage.cache.blobdescriptor: redis`` with
    ``redis_cache``). ``command`` builds a replica's argv + env from its config path;
    ``free_port`` gives each process its port. ``workers``: our ``http.workers`` (None for
    a reference binary, which has no such key).
    """
    directory.mkdir(parents=True, exist_ok=True)
    deploy = Deployment(directory=directory, replicas=[], lb_port=0, storage=storage)
    if storage == "fs":
        deploy.root = directory / "storage"
        deploy.root.mkdir(exist_ok=True)
    elif storage == "s3":
        if not s3_params:
            raise ValueError("storage='s3' needs s3_params")
        deploy.s3 = dict(s3_params)
    else:
        raise ValueError(f"storage must be 'fs' or 's3', not {storage!r}")
    started: list[Callable[[], None]] = []
    try:
        if redis:
            deploy.redis = Redis(free_port(), directory / "redis.log", directory)
            started.append(deploy.redis.stop)  # first: a start that fails still gets stopped
            deploy.redis.start()
        for i in range(replicas):
            port = free_port()
            config = directory / f"replica-{i}.yml"
            config.write_text(replica_config(
                deploy, port, workers=workers, log_level=log_level, access_log=access_log,
                extra=extra, redis_cache=redis_cache))  # fmt: skip
            replica = Replica(i, port, config, directory / f"replica-{i}.log", command)
            deploy.replicas.append(replica)
            started.append(replica.stop)
            replica.start()
        deploy.lb_port = free_port()  # late: the shorter the probe-to-bind window the better
        cfg = directory / "haproxy.cfg"
        cfg.write_text(haproxy_config(deploy.lb_port, [r.port for r in deploy.replicas]))
        deploy.haproxy_log = directory / "haproxy.log"
        exe = shutil.which("haproxy") or "haproxy"
        deploy.haproxy = _spawn([exe, "-db", "-f", str(cfg)], None, deploy.haproxy_log, directory)
        started.append(lambda: _stop(deploy.haproxy))  # type: ignore[arg-type]
        _wait_http(
            f"{deploy.url}/v2/", deploy.haproxy, "haproxy", deploy.haproxy_log, header=LB_HEADER
        )
        yield deploy
    finally:
        for stop in reversed(started):
            stop()
