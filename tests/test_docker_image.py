"""The container image, the compose file and the Dokploy template (issue 7).

The image is built offline from a debootstrapped Debian base (docker/build.sh --offline
--debootstrap-base) and exercised as users run registry:3: `docker run` with the shipped
config, docker push/pull through it, a restart on the same volume, `registry
garbage-collect` with docker exec, and the 0.25 CPU / 256 MB budget under 16 concurrent
pushes. The compose file is validated by docker compose and cross-checked with the
template; the shipped config and the health check script are checked without docker.
"""

from __future__ import annotations

import contextlib
import http.server
import importlib.util
import io
import os
import secrets
import subprocess
import tarfile
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import bcrypt
import httpx
import pytest
import yaml

from registry.config import load_config

try:  # tests/ is a plain directory on sys.path, or a package
    from tests import docker_image_support as support
    from tests import e2e_support as e2e
except ImportError:
    import docker_image_support as support  # type: ignore[no-redef]
    import e2e_support as e2e  # type: ignore[no-redef]

docker_cli = e2e.docker_cli

COMPOSE_FILE = support.DOCKER_DIR / "docker-compose.yml"
TEMPLATE_FILE = support.DOCKER_DIR / "template.toml"
CONFIG_FILE = support.DOCKER_DIR / "config.yml"
HEALTHCHECK_FILE = support.DOCKER_DIR / "healthcheck.py"

MAX_IMAGE_BYTES = 150 * 10**6  # issue 7: aim under 150 MB
MEMORY_LIMIT = "256m"  # the deployment budget, as in docker-compose.yml
CPU_LIMIT = "0.25"
MEMORY_BUDGET = 256 * support.MiB
IDLE_BUDGET = 80 * support.MiB
CONCURRENT_PUSHES = 16
PUSH_LAYER_BYTES = 16 * support.MiB  # random, so gzip cannot shrink what the server sees
PUSH_DEADLINE_S = 300.0
SAMPLE_EVERY_S = 0.1
SETTLE_S = 3.0  # let start-up garbage go before the idle reading
R2_ENV = {
    "REGISTRY_STORAGE": "s3",
    "REGISTRY_STORAGE_S3_BUCKET": "images",
    "REGISTRY_STORAGE_S3_REGION": "auto",
    "REGISTRY_STORAGE_S3_REGIONENDPOINT": "https://0123456789abcdef.r2.cloudflarestorage.com",
    "REGISTRY_STORAGE_S3_ACCESSKEY": "AKIDEXAMPLE",
    "REGISTRY_STORAGE_S3_SECRETKEY": "secret",
}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def image(docker_cli: str) -> str:
    return support.build_image(docker_cli)


@pytest.fixture
def make_container(docker_cli: str, image: str) -> Iterator[Any]:
    """A factory of RegistryContainers; all are removed, with their volumes, afterwards."""
    made: list[support.RegistryContainer] = []

    def make(*run_args: str, ready_status: int = 200) -> support.RegistryContainer:
        suffix = secrets.token_hex(4)
        container = support.RegistryContainer(
            docker=docker_cli,
            image=image,
            name=f"{support.PREFIX}-{suffix}",
            volume=f"{support.PREFIX}-{suffix}",
            port=e2e.free_port(),
            run_args=run_args,
            ready_status=ready_status,
        )
        made.append(container)
        return container

    yield make
    for container in made:
        container.remove()
        container.remove_volume()


@pytest.fixture
def local_refs(docker_cli: str) -> Iterator[list[str]]:
    """Image references to remove from the docker host after the test."""
    refs: list[str] = []
    yield refs
    e2e.docker_remove_images(docker_cli, *refs)


def build_app_image(docker: str, context: Path, ref: str) -> str:
    """Build `ref`: the offline busybox base plus one COPY layer of random bytes and a
    nonce; returns the text `cat /data/nonce.txt` prints in it."""
    nonce = secrets.token_hex(8)
    context.mkdir(parents=True)
    (context / "nonce.txt").write_text(f"{nonce}\n")
    (context / "random.bin").write_bytes(os.urandom(2 * support.MiB))
    (context / "Dockerfile").write_text(
        f"FROM {e2e.ensure_base_image(docker)}\nCOPY nonce.txt random.bin /data/\n"
    )
    e2e.run([docker, "build", "--network", "host", "-t", ref, str(context)], env=e2e.docker_env())
    return f"{nonce}\n"


def import_data_image(docker: str, ref: str, size: int) -> None:
    """`docker import` one layer holding `size` random bytes as /data/blob."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("data/blob")
        info.size = size
        tar.addfile(info, io.BytesIO(os.urandom(size)))
    e2e.run([docker, "import", "-", ref], input=buf.getvalue())


def pull_and_read(docker: str, ref: str) -> str:
    """Remove `ref` locally, pull it, and return `cat /data/nonce.txt` from it."""
    e2e.docker_remove_images(docker, ref)
    e2e.run([docker, "pull", ref])
    return e2e.run(
        [docker, "run", "--rm", "--network", "none", ref, "cat", "/data/nonce.txt"]
    ).stdout


def mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / support.MiB:.1f} MiB"


# --------------------------------------------------------------------------- the image


@pytest.mark.e2e
def test_image_is_small_non_root_and_used_like_registry_3(docker_cli: str, image: str) -> None:
    info = support.inspect(docker_cli, image)
    config = info["Config"]
    print(f"\nimage {image}: {info['Size'] / 1e6:.1f} MB")
    assert info["Size"] < MAX_IMAGE_BYTES, f"image is {info['Size'] / 1e6:.1f} MB"
    assert config["User"] == "1000:1000"
    assert config["Entrypoint"] == ["registry"]
    assert config["Cmd"] == ["serve", "/etc/distribution/config.yml"]
    assert "5000/tcp" in config["ExposedPorts"]
    assert "/var/lib/registry" in config["Volumes"]
    assert config["Healthcheck"]["Test"] == ["CMD", "registry-healthcheck"]

    def run(*args: str) -> str:
        return e2e.run([docker_cli, "run", "--rm", "--network", "none", *args]).stdout

    assert run(image, "--version").startswith("registry ")
    # The process runs unprivileged, and the shipped config is the one documented.
    uid = run("--entrypoint", "python3", image, "-c", "import os; print(os.getuid())")
    assert uid.strip() == "1000"
    shipped = run(
        "--entrypoint", "python3", image, "-c", "print(open('/etc/distribution/config.yml').read())"
    )
    assert yaml.safe_load(shipped) == yaml.safe_load(CONFIG_FILE.read_text())


@pytest.mark.e2e
def test_push_pull_restart_and_garbage_collect(
    docker_cli: str, make_container: Any, local_refs: list[str], tmp_path: Path
) -> None:
    """docker push/pull through the container, again after a restart on the same volume,
    then `registry garbage-collect` (docker exec, as with registry:3) drops only the blobs
    of a deleted manifest. The health check (faster interval) turns healthy."""
    reg = make_container("--health-interval", "1s")
    reg.start()
    docker = docker_cli
    ref_a = f"{reg.host}/smoke/app:a"
    ref_b = f"{reg.host}/smoke/app:b"
    local_refs.extend([ref_a, ref_b])
    text_a = build_app_image(docker, tmp_path / "a", ref_a)
    build_app_image(docker, tmp_path / "b", ref_b)
    digest_a, _ = e2e.docker_push(docker, ref_a)
    digest_b, _ = e2e.docker_push(docker, ref_b)
    assert pull_and_read(docker, ref_a) == text_a

    reg.restart()
    assert pull_and_read(docker, ref_a) == text_a, "pull after restart from the same volume"

    reg.wait_healthy()

    accept = {"Accept": e2e.ACCEPT_ALL_MANIFESTS}
    with httpx.Client(base_url=reg.url, timeout=30.0) as client:
        manifest_a = client.get(f"/v2/smoke/app/manifests/{digest_a}", headers=accept).json()
        manifest_b = client.get(f"/v2/smoke/app/manifests/{digest_b}", headers=accept).json()
        layers_a = {layer["digest"] for layer in manifest_a["layers"]}
        only_b = {layer["digest"] for layer in manifest_b["layers"]} - layers_a
        assert only_b, "image b should have a layer of its own"
        deleted = client.delete(f"/v2/smoke/app/manifests/{digest_b}")
        assert deleted.status_code == 202, deleted.text

        gc = reg.exec("registry", "garbage-collect", "/etc/distribution/config.yml", check=False)
        assert gc.returncode == 0, (
            "`registry garbage-collect /etc/distribution/config.yml` failed in the container "
            f"(exit {gc.returncode}):\nstdout:\n{gc.stdout}\nstderr:\n{gc.stderr}"
        )
        for digest in only_b:
            resp = client.head(f"/v2/smoke/app/blobs/{digest}")
            assert resp.status_code == 404, f"{digest} of the deleted manifest survived GC"
        for digest in layers_a | {manifest_a["config"]["digest"]}:
            resp = client.head(f"/v2/smoke/app/blobs/{digest}")
            assert resp.status_code == 200, f"{digest} of a tagged image was collected"
    assert pull_and_read(docker, ref_a) == text_a, "pull after garbage collection"


@pytest.mark.e2e
def test_htpasswd_auth_with_the_templates_mounted_file(
    docker_cli: str, make_container: Any, local_refs: list[str], tmp_path: Path
) -> None:
    """The template's htpasswd mount (its comment lines plus a user line) at the path the
    compose file mounts, with the variables the README gives: /v2/ answers 401, docker
    login and push work, and the health check still says healthy (401 is alive)."""
    docker = docker_cli
    (mount,) = tomllib.loads(TEMPLATE_FILE.read_text())["config"]["mounts"]
    password = secrets.token_hex(12)
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"{mount['content']}pusher:{hashed}\n")
    htpasswd.chmod(0o644)
    reg = make_container(
        "--health-interval",
        "1s",
        "-v",
        f"{htpasswd}:/etc/distribution/htpasswd:ro",
        "-e",
        "REGISTRY_AUTH=htpasswd",
        "-e",
        "REGISTRY_AUTH_HTPASSWD_REALM=Registry",
        "-e",
        "REGISTRY_AUTH_HTPASSWD_PATH=/etc/distribution/htpasswd",
        ready_status=401,
    )
    reg.start()
    reg.wait_healthy()

    config_dir = tmp_path / "docker-config"  # keep the login out of the host's config
    ref = f"{reg.host}/private/app:1"
    local_refs.append(ref)
    build_app_image(docker, tmp_path / "app", ref)
    denied = e2e.run([docker, "--config", str(config_dir), "push", ref], check=False)
    assert denied.returncode != 0, "push without login must fail"
    e2e.run(
        [
            docker,
            "--config",
            str(config_dir),
            "login",
            "-u",
            "pusher",
            "--password-stdin",
            reg.host,
        ],
        input=password.encode(),
    )
    e2e.run([docker, "--config", str(config_dir), "push", ref])


@pytest.mark.e2e
def test_memory_stays_in_budget_under_16_concurrent_pushes(
    docker_cli: str, make_container: Any, local_refs: list[str]
) -> None:
    """In the deployment's budget (--memory 256m --cpus 0.25) the container idles under
    80 MiB and stays under 256 MiB (working set: usage less inactive page cache) while 16
    docker clients push 16 MiB layers at once; nothing is OOM-killed."""
    docker = docker_cli
    reg = make_container(
        "--memory", MEMORY_LIMIT, "--memory-swap", MEMORY_LIMIT, "--cpus", CPU_LIMIT
    )
    reg.start()
    time.sleep(SETTLE_S)
    idle = support.memory(docker, reg.name)

    refs = [f"{reg.host}/load/img{i}:latest" for i in range(CONCURRENT_PUSHES)]
    local_refs.extend(refs)
    for ref in refs:
        import_data_image(docker, ref, PUSH_LAYER_BYTES)

    peak_ws = peak_anon = 0
    started = time.monotonic()
    procs = [
        subprocess.Popen(
            [docker, "push", ref], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for ref in refs
    ]
    try:
        while any(p.poll() is None for p in procs):
            assert time.monotonic() - started < PUSH_DEADLINE_S, "pushes did not finish in time"
            reading = support.memory(docker, reg.name)
            peak_ws = max(peak_ws, reading.working_set)
            peak_anon = max(peak_anon, reading.anon)
            time.sleep(SAMPLE_EVERY_S)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        outputs = [p.communicate()[0] for p in procs]
    elapsed = time.monotonic() - started
    after = support.memory(docker, reg.name)
    state = support.inspect(docker, reg.name)["State"]
    print(
        f"\nidle: working set {mib(idle.working_set)}, anon {mib(idle.anon)}"
        f"\n{CONCURRENT_PUSHES} pushes of {mib(PUSH_LAYER_BYTES)} in {elapsed:.1f}s:"
        f" peak working set {mib(peak_ws)}, peak anon {mib(peak_anon)},"
        f" cgroup peak incl. page cache {mib(after.peak)}"
        f"\nafter: working set {mib(after.working_set)}, anon {mib(after.anon)}"
    )
    failed = [(ref, out) for ref, p, out in zip(refs, procs, outputs) if p.returncode != 0]
    assert not failed, f"{len(failed)} pushes failed; first:\n{failed[0][1]}\n{reg.logs()}"
    assert not state["OOMKilled"] and state["Running"], f"container state: {state}"
    assert idle.working_set < IDLE_BUDGET, f"idle working set {mib(idle.working_set)}"
    assert peak_ws < MEMORY_BUDGET, f"peak working set {mib(peak_ws)}"


# --------------------------------------------------------------------------- compose


def compose_command(docker: str) -> list[str]:
    """`docker compose` (v2 plugin) when present, else Debian's `docker-compose`."""
    if e2e.run([docker, "compose", "version"], check=False).returncode == 0:
        return [docker, "compose"]
    return [e2e.require_tool("docker-compose", "apt-get install docker-compose")]


def compose_env(**extra: str) -> dict[str, str]:
    # No REGISTRY_*/template variables from the caller's environment leak into the check.
    names = {
        "REGISTRY_DOMAIN",
        "REGISTRY_IMAGE",
        "DELETE_ENABLED",
        "LOG_LEVEL",
        "LOG_FORMATTER",
        "HTPASSWD_FILE",
    }
    return {**e2e.clean_env(drop=sorted(names)), **extra}


@pytest.mark.e2e
def test_compose_file_is_valid_and_resolves_the_template_variables(docker_cli: str) -> None:
    compose = compose_command(docker_cli)
    env = compose_env(REGISTRY_DOMAIN="registry.example.com", **R2_ENV)
    e2e.run([*compose, "-f", str(COMPOSE_FILE), "config", "-q"], env=env)
    resolved = yaml.safe_load(
        e2e.run([*compose, "-f", str(COMPOSE_FILE), "config"], env=env).stdout
    )
    service = resolved["services"]["registry"]
    labels = service["labels"]
    if isinstance(labels, list):
        labels = dict(label.split("=", 1) for label in labels)
    assert labels["traefik.http.routers.ociregistry.rule"] == (
        "Host(`registry.example.com`) && PathPrefix(`/v2`)"
    )
    assert labels["traefik.http.routers.ociregistry.tls.certresolver"] == "letsencrypt"
    environment = service["environment"]
    assert environment["REGISTRY_STORAGE_DELETE_ENABLED"] == "true"
    assert environment["REGISTRY_LOG_LEVEL"] == "info"
    assert environment["REGISTRY_STORAGE"] == "s3", "R2 variables pass through when set"
    assert environment["REGISTRY_STORAGE_S3_BUCKET"] == "images"
    assert resolved["networks"]["dokploy-network"]["external"] is True


@pytest.mark.e2e
def test_compose_refuses_to_start_without_a_domain(docker_cli: str) -> None:
    compose = compose_command(docker_cli)
    proc = e2e.run(
        [*compose, "-f", str(COMPOSE_FILE), "config", "-q"], env=compose_env(), check=False
    )
    assert proc.returncode != 0
    assert "REGISTRY_DOMAIN" in proc.stdout + proc.stderr


def test_template_and_compose_agree() -> None:
    """Every template variable is one the compose file reads, with the same default, every
    required compose variable is set by the template, and the domain, port, service and
    mounts line up."""
    template = tomllib.loads(TEMPLATE_FILE.read_text())
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    variables = support.compose_variables(compose)
    env = template["config"]["env"]

    assert template["variables"]["main_domain"] == "${domain}"
    assert variables.required == {"REGISTRY_DOMAIN"}
    assert env["REGISTRY_DOMAIN"] == "${main_domain}"
    known = variables.referenced | variables.passthrough
    assert set(env) <= known, f"template sets variables compose ignores: {set(env) - known}"
    assert variables.required <= set(env)
    for name, value in env.items():
        if name in variables.defaults:
            assert value == variables.defaults[name], f"{name}: template {value!r} vs compose"
    assert variables.plain <= variables.required | set(variables.defaults), variables.plain
    assert env.keys() >= {"DELETE_ENABLED", "LOG_LEVEL", "LOG_FORMATTER"}

    (domain,) = template["config"]["domains"]
    service = compose["services"][domain["serviceName"]]
    assert domain["host"] == "${main_domain}"
    assert str(domain["port"]) in service["expose"]
    labels = dict(label.split("=", 1) for label in service["labels"])
    assert labels["traefik.http.services.ociregistry.loadbalancer.server.port"] == str(
        domain["port"]
    )
    assert "dokploy-network" in service["networks"]
    assert compose["networks"]["dokploy-network"] == {"external": True}

    volumes = [v.replace("${HTPASSWD_FILE:-", "").replace("}", "") for v in service["volumes"]]
    for mount in template["config"]["mounts"]:
        # Dokploy writes a template's mounts to ../files/<filePath> beside the compose file.
        assert any(v.startswith(f"../files/{mount['filePath']}:") for v in volumes), mount

    limits = service["deploy"]["resources"]["limits"]
    assert float(limits["cpus"]) == float(service["cpus"]) == float(CPU_LIMIT)
    assert limits["memory"].lower().rstrip("b") == service["mem_limit"].lower() == MEMORY_LIMIT
    mapped = {k: v for k, v in service["environment"].items() if v is not None}
    assert mapped == {
        "REGISTRY_STORAGE_DELETE_ENABLED": "${DELETE_ENABLED:-true}",
        "REGISTRY_LOG_LEVEL": "${LOG_LEVEL:-info}",
        "REGISTRY_LOG_FORMATTER": "${LOG_FORMATTER:-text}",
    }
    assert {
        "REGISTRY_STORAGE",
        "REGISTRY_AUTH",
        "REGISTRY_AUTH_HTPASSWD_PATH",
    } <= variables.passthrough


# --------------------------------------------------------------------------- config, health


def test_shipped_config_is_filesystem_with_deletes_on_port_5000_one_worker() -> None:
    config, warnings = load_config(str(CONFIG_FILE), {})
    assert warnings == []
    assert config.storage.driver == "filesystem"
    assert config.storage.params["rootdirectory"] == "/var/lib/registry"
    assert config.storage.delete_enabled
    assert config.http.addr == ":5000"
    assert config.http.workers == 1


def test_shipped_config_switches_to_r2_with_the_compose_variables() -> None:
    """REGISTRY_STORAGE=s3 replaces the filesystem driver, keeps delete.enabled, and warns
    about nothing (as the compose file passes it through)."""
    env = {"REGISTRY_STORAGE_DELETE_ENABLED": "true", "REGISTRY_LOG_LEVEL": "info", **R2_ENV}
    config, warnings = load_config(str(CONFIG_FILE), env)
    assert warnings == []
    assert config.storage.driver == "s3"
    assert config.storage.params["bucket"] == "images"
    assert "rootdirectory" not in config.storage.params
    assert config.storage.delete_enabled


def load_healthcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("registry_healthcheck", HEALTHCHECK_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("env", "url"),
    [
        ({}, "http://127.0.0.1:5000/v2/"),
        ({"REGISTRY_HTTP_ADDR": ":5001"}, "http://127.0.0.1:5001/v2/"),
        ({"REGISTRY_HTTP_ADDR": "0.0.0.0:6000"}, "http://127.0.0.1:6000/v2/"),
        ({"REGISTRY_HTTP_PREFIX": "/reg/"}, "http://127.0.0.1:5000/reg/v2/"),
        ({"REGISTRY_HTTP_TLS_CERTIFICATE": "/c.pem"}, "https://127.0.0.1:5000/v2/"),
    ],
)
def test_healthcheck_url_follows_the_environment(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], url: str
) -> None:
    for name in ("REGISTRY_HTTP_ADDR", "REGISTRY_HTTP_PREFIX", "REGISTRY_HTTP_TLS_CERTIFICATE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert load_healthcheck().url() == url


@contextlib.contextmanager
def answering(status: int) -> Iterator[int]:
    """A local HTTP server answering every GET with `status`; yields its port."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.parametrize(("status", "code"), [(200, 0), (401, 0), (404, 1), (503, 1)])
def test_healthcheck_accepts_200_and_401_only(
    monkeypatch: pytest.MonkeyPatch, status: int, code: int
) -> None:
    """401 means htpasswd auth is on and the server is up: healthy, like 200."""
    with answering(status) as port:
        monkeypatch.setenv("REGISTRY_HTTP_ADDR", f":{port}")
        assert load_healthcheck().main() == code


def test_healthcheck_fails_when_nothing_listens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGISTRY_HTTP_ADDR", f":{e2e.free_port()}")
    assert load_healthcheck().main() == 1
