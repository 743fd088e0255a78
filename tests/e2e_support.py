"""Helpers and fixtures for the end-to-end and storage-compatibility tests.

These tests drive real programs: dockerd and the docker CLI, skopeo, Debian's
`docker-registry` (distribution 2.8, "the reference") and our own server started as
`python -m registry serve CONFIG`. Everything runs on loopback; nothing is fetched.

Contracts:
- `require_tool` fails the test under CI=true (CI must install every tool) and skips it
  elsewhere, with a reason that says how to install the tool.
- `run_ours(root)` / `run_reference(root)` are context managers that start one registry
  process on a free 127.0.0.1 port serving the reference's filesystem layout under `root`,
  wait (bounded) until `GET /v2/` answers 200, and stop it on exit with SIGTERM, then
  SIGKILL after `STOP_TIMEOUT_S`. They own the process and its log file. When the body
  raises, the process's log tail is attached to the exception as a note (so use them in
  the test body: a fixture's teardown never sees the test's exception). Two of them may
  run one after the other on the same `root`. `run_ours` also fails on exit when its log
  shows a traceback or a 500 answer (DESIGN, Errors: a 500 in a test is a bug).
- `docker_cli` (session fixture) returns the path of a docker CLI talking to a live daemon,
  starting dockerd only when `docker info` fails; the daemon it started is stopped at the
  end of the session.
- `ensure_base_image(docker)` imports a busybox rootfs made offline with `docker import`
  under `BASE_IMAGE`, unless that tag already exists (tests may remove it to force pulls).

Set E2E_OURS=reference to run "ours" as the reference too (to check a test against the
reference's behaviour).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

START_TIMEOUT_S = 30.0  # ours is Python: import + config + bind takes a second or two
STOP_TIMEOUT_S = 15.0  # graceful shutdown finishes in-flight requests first
DOCKERD_START_TIMEOUT_S = 60.0
COMMAND_TIMEOUT_S = 180.0  # one docker build/push/pull or skopeo copy of a few MiB
LOG_TAIL_CHARS = 6000

BASE_IMAGE = "e2e-base:busybox"
BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static
BUSYBOX_APPLETS = ("sh", "cat", "echo", "ls", "mkdir", "printf", "true", "env", "sha256sum")

MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_OCI_EMPTY = "application/vnd.oci.empty.v1+json"
MEDIA_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
ACCEPT_ALL_MANIFESTS = (
    f"{MEDIA_OCI_INDEX}, {MEDIA_OCI_MANIFEST}, {MEDIA_DOCKER_LIST}, {MEDIA_DOCKER_MANIFEST}"
)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_tool(name: str, how_to_get: str) -> str:
    """Return the path of executable `name`; fail under CI=true, else skip, if it is missing."""
    path = shutil.which(name)
    if path is None:
        reason = f"{name} is not installed; install it with: {how_to_get}"
        if in_ci():
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    return path


# --------------------------------------------------------------------------- processes


def run(
    cmd: Sequence[str],
    *,
    timeout: float = COMMAND_TIMEOUT_S,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    input: bytes | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion (bounded); with `check`, a non-zero exit fails the test
    with the command, its exit code, stdout and stderr."""
    try:
        proc = subprocess.run(
            list(cmd),
            check=False,
            capture_output=True,
            timeout=timeout,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            input=input,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(
            f"command timed out after {timeout}s: {' '.join(cmd)}\n"
            f"stdout:\n{_text(exc.stdout)}\nstderr:\n{_text(exc.stderr)}"
        ) from None
    result = subprocess.CompletedProcess(
        proc.args, proc.returncode, _text(proc.stdout), _text(proc.stderr)
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"command failed with exit code {result.returncode}: {' '.join(cmd)}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return result


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    if isinstance(data, bytes):
        return data.decode("utf-8", "replace")
    return data


_handed_out: set[int] = set()


_ACCESS_FIELD = re.compile(r'(http\.request\.method|http\.request\.uri|http\.response\.status)=("[^"]*"|\S+)')


def access_lines(log: str, method: str, uri_prefix: str) -> list[tuple[str, int]]:
    """(uri, status) of each access line (registry:3's text format, logs.py) in ``log`` for
    ``method`` requests whose URI starts with ``uri_prefix``."""
    found = []
    for line in log.splitlines():
        fields = {k: v.strip('"') for k, v in _ACCESS_FIELD.findall(line)}
        if len(fields) == 3 and fields["http.request.method"] == method:
            uri = fields["http.request.uri"]
            if uri.startswith(uri_prefix):
                found.append((uri, int(fields["http.response.status"])))
    return found


def free_port() -> int:
    """A free loopback port, never one this process handed out before: the kernel may give
    the same ephemeral port to two back-to-back probes (an API and a debug listener)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def clean_env(*, drop: Sequence[str] = ()) -> dict[str, str]:
    """The current environment without REGISTRY_* overrides (they would reconfigure the
    servers under test) and without the names in `drop`."""
    return {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_") and k not in drop}


# --------------------------------------------------------------------------- registries


def write_registry_config(path: Path, root: Path, port: int) -> None:
    """Write a reference-format config: filesystem storage under `root`, deletes enabled."""
    path.write_text(
        "version: 0.1\n"
        "log:\n"
        "  level: info\n"
        "storage:\n"
        "  filesystem:\n"
        f"    rootdirectory: {root}\n"
        "  delete:\n"
        "    enabled: true\n"
        "http:\n"
        f"  addr: 127.0.0.1:{port}\n"
    )


@dataclasses.dataclass
class RegistryProcess:
    """A running registry: `host` is "127.0.0.1:<port>", `url` its http:// base."""

    name: str
    root: Path
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def log_tail(self) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"<log unreadable: {exc}>"
        return text[-LOG_TAIL_CHARS:]

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30.0, **kwargs)


def _ours_command(config: Path) -> tuple[list[str], dict[str, str]]:
    if os.environ.get("E2E_OURS") == "reference":
        return _reference_command(config)
    env = clean_env()
    # Make `python -m registry` import this checkout even without an editable install.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return [sys.executable, "-m", "registry", "serve", str(config)], env


def _reference_command(config: Path) -> tuple[list[str], dict[str, str]]:
    exe = require_tool(
        "docker-registry", "apt-get install docker-registry (Debian's distribution 2.8)"
    )
    # AWS_CA_BUNDLE makes the Go S3 client in docker-registry panic at startup.
    return [exe, "serve", str(config)], clean_env(drop=["AWS_CA_BUNDLE"])


@contextlib.contextmanager
def _run_registry(
    name: str,
    root: Path,
    command: Any,
    *,
    workdir: Path | None = None,
    check_log: Callable[[str], str | None] | None = None,
    ready_status: int = 200,
) -> Iterator[RegistryProcess]:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    workdir = workdir or root.parent
    port = free_port()
    stamp = f"{name}-{port}-{time.monotonic_ns()}"
    config = workdir / f"{stamp}.yml"
    log_path = workdir / f"{stamp}.log"
    write_registry_config(config, root, port)
    cmd, env = command(config)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=workdir,
        )
    reg = RegistryProcess(name=name, root=root, port=port, proc=proc, log_path=log_path)
    try:
        _wait_ready(reg, ready_status)
        try:
            yield reg
        except BaseException as exc:
            exc.add_note(f"--- {name} registry log ({log_path}) ---\n{reg.log_tail()}")
            raise
    finally:
        killed = _stop(proc)
    if killed:
        raise AssertionError(
            f"{name} registry did not exit within {STOP_TIMEOUT_S}s of SIGTERM; "
            f"log:\n{reg.log_tail()}"
        )
    if check_log is not None:
        problem = check_log(reg.log_path.read_text(errors="replace"))
        if problem:
            raise AssertionError(f"{name} registry log shows {problem}; log:\n{reg.log_tail()}")


# An access-log line of ours answering 500: `"PATCH /v2/..." 500 0 12.3ms "ua"`.
_SERVER_ERROR_LINE = re.compile(r'^.*"[A-Z]+ [^"]*" 500 .*$', re.MULTILINE)


def ours_log_problem(log: str) -> str | None:
    """DESIGN, Errors: a 500 (and so an unhandled-error traceback) in a test is a bug."""
    if "Traceback" in log:
        return "a traceback"
    found = _SERVER_ERROR_LINE.search(log)
    if found:
        return f"a 500 answer: {found.group(0)}"
    return None


def _wait_ready(reg: RegistryProcess, ready_status: int = 200) -> None:
    """Until ``GET /v2/`` answers ``ready_status`` (503: up, but a health check fails)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    last = "no answer yet"
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            code = reg.proc.poll()
            if code is not None:
                pytest.fail(
                    f"{reg.name} registry exited with code {code} during startup; "
                    f"log:\n{reg.log_tail()}"
                )
            try:
                resp = client.get(f"{reg.url}/v2/")
                if resp.status_code == ready_status:
                    return
                last = f"GET /v2/ -> {resp.status_code} {resp.text[:200]}"
            except httpx.TransportError as exc:
                last = repr(exc)
            time.sleep(0.1)
    pytest.fail(
        f"{reg.name} registry not ready within {START_TIMEOUT_S}s ({last}); log:\n{reg.log_tail()}"
    )


def _stop(proc: subprocess.Popen[bytes]) -> bool:
    """SIGTERM, wait, SIGKILL after STOP_TIMEOUT_S. Returns True when SIGKILL was needed."""
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
        return False
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=STOP_TIMEOUT_S)
        return True


@contextlib.contextmanager
def run_ours(root: Path, *, workdir: Path | None = None) -> Iterator[RegistryProcess]:
    """Our server, `python -m registry serve CONFIG`, on filesystem storage under `root`."""
    check = None if os.environ.get("E2E_OURS") == "reference" else ours_log_problem
    with _run_registry("ours", root, _ours_command, workdir=workdir, check_log=check) as reg:
        yield reg


@contextlib.contextmanager
def run_reference(root: Path, *, workdir: Path | None = None) -> Iterator[RegistryProcess]:
    """Debian's docker-registry (distribution 2.8) on filesystem storage under `root`."""
    with _run_registry("reference", root, _reference_command, workdir=workdir) as reg:
        yield reg


# --------------------------------------------------------------------------- docker

_started_dockerd: list[subprocess.Popen[bytes]] = []


def _docker_ok(docker: str) -> bool:
    try:
        proc = subprocess.run([docker, "info"], check=False, capture_output=True, timeout=20)
        return proc.returncode == 0
    except subprocess.TimeoutExpired:
        return False


@pytest.fixture(scope="session")
def docker_cli() -> Iterator[str]:
    """Path of a docker CLI with a live daemon; starts dockerd only if none answers."""
    docker = require_tool("docker", "apt-get install docker.io")
    owned: subprocess.Popen[bytes] | None = None
    if not _docker_ok(docker):
        dockerd = require_tool("dockerd", "apt-get install docker.io")
        if not _started_dockerd:
            with open("/tmp/dockerd.log", "ab") as log:
                owned = subprocess.Popen(
                    [dockerd, "--storage-driver=vfs", "--iptables=false", "--bridge=none"],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            _started_dockerd.append(owned)
        deadline = time.monotonic() + DOCKERD_START_TIMEOUT_S
        while not _docker_ok(docker):
            if owned is not None and owned.poll() is not None:
                pytest.fail(f"dockerd exited with {owned.returncode}; see /tmp/dockerd.log")
            if time.monotonic() > deadline:
                pytest.fail(
                    f"dockerd not ready in {DOCKERD_START_TIMEOUT_S}s; see /tmp/dockerd.log"
                )
            time.sleep(0.5)
    yield docker
    if owned is not None:
        _stop(owned)
        _started_dockerd.remove(owned)


def docker_env() -> dict[str, str]:
    # The legacy builder needs no buildkit daemon and works with --network host.
    return {**os.environ, "DOCKER_BUILDKIT": "0"}


def busybox_rootfs_tar() -> bytes:
    """A minimal root filesystem: a static busybox and a few applet symlinks."""
    if not BUSYBOX.exists():
        msg = f"{BUSYBOX} is missing; install it with: apt-get install busybox-static"
        if in_ci():
            pytest.fail(msg)
        pytest.skip(msg)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in ("bin", "tmp", "etc"):
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        data = BUSYBOX.read_bytes()
        info = tarfile.TarInfo("bin/busybox")
        info.size = len(data)
        info.mode = 0o755
        tar.addfile(info, io.BytesIO(data))
        for applet in BUSYBOX_APPLETS:
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type = tarfile.SYMTYPE
            info.linkname = "busybox"
            tar.addfile(info)
    return buf.getvalue()


def ensure_base_image(docker: str, tag: str = BASE_IMAGE) -> str:
    """Make sure `tag` exists locally (made offline by `docker import`); returns the tag."""
    if run([docker, "image", "inspect", tag], check=False).returncode != 0:
        run(
            [docker, "import", "--change", 'CMD ["/bin/sh"]', "-", tag],
            input=busybox_rootfs_tar(),
        )
    return tag


def docker_remove_images(docker: str, *refs: str) -> None:
    """`docker rmi -f` each reference that exists locally."""
    for ref in refs:
        if run([docker, "image", "inspect", ref], check=False).returncode == 0:
            run([docker, "rmi", "-f", ref])


def build_app(docker: str, context: Path, ref: str) -> str:
    """Build `ref` FROM the offline base with a RUN and a COPY layer; returns what
    `cat /data/run.txt /data/copied.txt` prints inside it (see :func:`run_cat`)."""
    nonce = secrets.token_hex(8)
    context.mkdir(parents=True, exist_ok=True)
    (context / "copied.txt").write_text(f"copied {nonce}\n")
    (context / "Dockerfile").write_text(
        f"FROM {ensure_base_image(docker)}\n"
        f"RUN mkdir -p /data && echo 'ran {nonce}' > /data/run.txt\n"
        "COPY copied.txt /data/copied.txt\n"
    )
    run([docker, "build", "--network", "host", "-t", ref, str(context)], env=docker_env())
    return f"ran {nonce}\ncopied {nonce}\n"


def docker_push(docker: str, ref: str) -> tuple[str, str]:
    """`docker push ref`; returns (manifest digest it reports, its full output)."""
    out = run([docker, "push", ref]).stdout
    match = re.search(r"digest: (sha256:[0-9a-f]{64}) size: \d+", out)
    assert match, f"no digest in docker push output:\n{out}"
    return match.group(1), out


def run_cat(docker: str, ref: str) -> str:
    """What `cat /data/run.txt /data/copied.txt` prints in a container of `ref`."""
    cmd = [docker, "run", "--rm", "--network", "host", ref, "cat", "/data/run.txt",
           "/data/copied.txt"]
    return run(cmd).stdout


# --------------------------------------------------------------------------- skopeo


def skopeo(*args: str, timeout: float = COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    exe = require_tool("skopeo", "apt-get install skopeo")
    # --insecure-policy: no dependence on /etc/containers/policy.json being present.
    return run([exe, "--insecure-policy", *args], timeout=timeout)


# --------------------------------------------------------------------------- OCI content


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def descriptor(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": sha256_digest(data), "size": len(data), **extra}


def make_layer(files: Mapping[str, bytes]) -> tuple[bytes, str]:
    """A gzipped tar layer holding `files`; returns (compressed bytes, diff_id)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    return gzip.compress(raw, mtime=0), sha256_digest(raw)


@dataclasses.dataclass
class OciImage:
    """One image of a layout: its manifest bytes plus every blob it references."""

    manifest: bytes
    blobs: dict[str, bytes]  # digest -> bytes, config and layers
    platform: dict[str, str] | None = None

    @property
    def digest(self) -> str:
        return sha256_digest(self.manifest)


def make_image(
    layer_files: Sequence[Mapping[str, bytes]], *, arch: str = "amd64", os_: str = "linux"
) -> OciImage:
    """An OCI image manifest with one gzipped layer per entry of `layer_files`."""
    layers = [make_layer(files) for files in layer_files]
    config = canonical_json(
        {
            "architecture": arch,
            "os": os_,
            "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id for _, diff_id in layers]},
        }
    )
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_OCI_MANIFEST,
            "config": descriptor(MEDIA_OCI_CONFIG, config),
            "layers": [descriptor(MEDIA_OCI_LAYER_GZIP, blob) for blob, _ in layers],
        }
    )
    blobs = {sha256_digest(config): config}
    blobs.update({sha256_digest(blob): blob for blob, _ in layers})
    return OciImage(manifest, blobs, {"architecture": arch, "os": os_})


def make_index(images: Sequence[OciImage]) -> bytes:
    return canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_OCI_INDEX,
            "manifests": [
                descriptor(MEDIA_OCI_MANIFEST, img.manifest, platform=img.platform)
                for img in images
            ],
        }
    )


def index_blobs(images: Sequence[OciImage]) -> dict[str, bytes]:
    """Every blob below an index of `images`: the child manifests, their configs and layers."""
    blobs: dict[str, bytes] = {}
    for img in images:
        blobs[img.digest] = img.manifest
        blobs.update(img.blobs)
    return blobs


def write_oci_layout(
    directory: Path, refs: Mapping[str, tuple[str, bytes]], blobs: Mapping[str, bytes]
) -> None:
    """Write an OCI image layout: `refs` maps a ref name to (media type, manifest bytes);
    `blobs` holds every other blob (child manifests, configs, layers)."""
    blob_dir = directory / "blobs" / "sha256"
    blob_dir.mkdir(parents=True, exist_ok=True)
    (directory / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    entries = []
    everything = dict(blobs)
    for ref, (media_type, data) in refs.items():
        everything[sha256_digest(data)] = data
        entries.append(
            descriptor(media_type, data, annotations={"org.opencontainers.image.ref.name": ref})
        )
    for digest, data in everything.items():
        assert sha256_digest(data) == digest
        (blob_dir / digest.removeprefix("sha256:")).write_bytes(data)
    (directory / "index.json").write_bytes(
        canonical_json({"schemaVersion": 2, "manifests": entries})
    )


def read_oci_layout_ref(directory: Path, ref: str) -> dict[str, Any]:
    """The descriptor of `ref` in an OCI layout's index.json (fails if absent)."""
    index = json.loads((directory / "index.json").read_text())
    for desc in index.get("manifests", []):
        if desc.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref:
            return dict(desc)
    raise AssertionError(f"ref {ref!r} not in {directory}/index.json: {index}")


def read_oci_blob(directory: Path, digest: str) -> bytes:
    algo, _, hexpart = digest.partition(":")
    return (directory / "blobs" / algo / hexpart).read_bytes()


# --------------------------------------------------------------------------- HTTP helpers


def push_blob(client: httpx.Client, repo: str, data: bytes) -> str:
    """Monolithic upload (POST, then PUT ?digest= with the body: SPEC 11); returns digest."""
    digest = sha256_digest(data)
    start = client.post(f"/v2/{repo}/blobs/uploads/")
    assert start.status_code == 202, (start.status_code, start.text)
    location = start.headers["Location"]
    sep = "&" if "?" in location else "?"
    done = client.put(
        f"{location}{sep}digest={digest}",
        content=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert done.status_code == 201, (done.status_code, done.text)
    assert done.headers.get("Docker-Content-Digest") == digest
    return digest


def get_manifest(client: httpx.Client, repo: str, ref: str) -> httpx.Response:
    return client.get(f"/v2/{repo}/manifests/{ref}", headers={"Accept": ACCEPT_ALL_MANIFESTS})
