"""The container image, the compose file and the Dokploy template (issues 7 and 15).

The image is built offline from a debootstrapped Debian base (docker/build.sh --offline
--debootstrap-base) and exercised as users run registry:3: `docker run` with the shipped
config, docker push/pull through it, a restart on the same volume, `registry
garbage-collect` with docker exec, and the 0.25 CPU / 256 MB budget under 16 concurrent
pushes. Issue 15 (swapping it in for registry:3): registry:3's own program writes the data,
root-owned, that ours then serves with the seed's settings (config path argument,
REGISTRY_* verbatim, htpasswd at /auth/htpasswd) and collects; the entrypoint's argument
rules and ownership fix are also checked without docker. The compose file is validated by
docker compose (every REGISTRY_* of .env reaches the container) and cross-checked with the
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
ENTRYPOINT_FILE = support.DOCKER_DIR / "entrypoint.py"

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
IMAGE_UID = IMAGE_GID = 1000  # the image's "registry" user
SEED_CONFIG = "/etc/docker/registry/config.yml"  # the seed's GC command names this path
# The seed's REGISTRY_* set, verbatim: htpasswd at /auth/htpasswd, as the Dokploy template.
SEED_ENV = {
    "REGISTRY_AUTH": "htpasswd",
    "REGISTRY_AUTH_HTPASSWD_REALM": "Registry Realm",
    "REGISTRY_AUTH_HTPASSWD_PATH": "/auth/htpasswd",
    "REGISTRY_HTTP_RELATIVEURLS": "true",
    "REGISTRY_HTTP_SECRET": "a-shared-secret-of-thirty-chars",
}
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

    def make(
        *run_args: str,
        ready_status: int = 200,
        volume: str | None = None,
        command: tuple[str, ...] = (),
    ) -> support.RegistryContainer:
        suffix = secrets.token_hex(4)
        container = support.RegistryContainer(
            docker=docker_cli,
            image=image,
            name=f"{support.PREFIX}-{suffix}",
            volume=volume or f"{support.PREFIX}-{suffix}",
            port=e2e.free_port(),
            run_args=run_args,
            command=command,
            ready_status=ready_status,
        )
        made.append(container)
        return container

    yield make
    for container in made:
        container.remove()
        if not container.volume.startswith("/"):  # a host directory is the test's own
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
def test_image_is_small_runs_as_uid_1000_and_takes_registry_3s_arguments(
    docker_cli: str, image: str
) -> None:
    """registry:3's ENTRYPOINT/CMD shape (the argument is the config path), its two config
    paths, its argument rules (a .yml path, a subcommand, `registry ...`, any command), and
    every process the entrypoint starts runs as uid/gid 1000 with no other groups."""
    info = support.inspect(docker_cli, image)
    config = info["Config"]
    print(f"\nimage {image}: {info['Size'] / 1e6:.1f} MB")
    assert info["Size"] < MAX_IMAGE_BYTES, f"image is {info['Size'] / 1e6:.1f} MB"
    assert not config["User"], "starts as root: the entrypoint fixes the volume, then drops"
    assert config["Entrypoint"] == ["registry"]
    assert config["Cmd"] == ["/etc/distribution/config.yml"]
    assert "5000/tcp" in config["ExposedPorts"]
    assert "/var/lib/registry" in config["Volumes"]
    assert config["Healthcheck"]["Test"] == ["CMD", "registry-healthcheck"]

    def run(*args: str) -> str:
        return e2e.run([docker_cli, "run", "--rm", "--network", "none", *args]).stdout

    assert run(image, "--version").startswith("registry ")
    assert run(image, "registry", "--version").startswith("registry ")
    assert run("--user", "1000:1000", image, "--version").startswith("registry ")
    ids = "import os; print(os.getuid(), os.getgid(), os.getgroups())"
    assert run(image, "python3", "-c", ids).strip() == "1000 1000 []"
    read = "import sys; print(open(sys.argv[1]).read())"
    for path in ("/etc/distribution/config.yml", "/etc/docker/registry/config.yml"):
        shipped = run(image, "python3", "-c", read, path)
        assert yaml.safe_load(shipped) == yaml.safe_load(CONFIG_FILE.read_text()), path
    # A subcommand runs as `registry <subcommand>` (a bare config path serves: see
    # test_replaces_registry_3_on_its_root_owned_volume).
    dry = run(image, "garbage-collect", "--dry-run", "/etc/docker/registry/config.yml")
    assert "garbage-collect summary" in dry, dry


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


def owners(root: Path) -> dict[tuple[int, int], int]:
    """How many entries under `root` (itself included) each (uid, gid) owns."""
    found: dict[tuple[int, int], int] = {}
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        found[(st.st_uid, st.st_gid)] = found.get((st.st_uid, st.st_gid), 0) + 1
    return found


def chown_tree(root: Path, uid: int, gid: int) -> None:
    for path in [root, *root.rglob("*")]:
        os.lchown(path, uid, gid)


def process_ids(reg: support.RegistryContainer) -> set[tuple[int, int]]:
    """(uid, gid) of every process in the container but the reader itself (docker exec)
    and docker's health check (it runs as the image's user, root, by docker's choice)."""
    script = (
        "import os\n"
        "for pid in os.listdir('/proc'):\n"
        "    if pid.isdigit() and int(pid) != os.getpid():\n"
        "        try:\n"
        "            lines = open(f'/proc/{pid}/status').read().splitlines()\n"
        "            cmd = open(f'/proc/{pid}/cmdline', 'rb').read()\n"
        "        except OSError: continue\n"
        "        if b'registry-healthcheck' in cmd: continue\n"
        "        f = dict(l.split(':', 1) for l in lines if ':' in l)\n"
        "        print(f['Uid'].split()[1], f['Gid'].split()[1])\n"
    )
    out = reg.exec("python3", "-c", script).stdout
    return {(int(u), int(g)) for u, g in (line.split() for line in out.splitlines())}


@pytest.mark.e2e
def test_replaces_registry_3_on_its_root_owned_volume(
    docker_cli: str, make_container: Any, local_refs: list[str], tmp_path: Path
) -> None:
    """Issue 15 item 3. registry:3's own program (as root, as in its image) stores two
    images; that root-owned directory becomes the volume of ours, started as the seed starts
    registry:3: the config path as the only argument (/etc/docker/registry/config.yml), the
    seed's REGISTRY_* verbatim, htpasswd at /auth/htpasswd. The server comes up (as uid
    1000, the data now 1000's), docker login + pull get registry:3's image, and `docker exec
    <c> registry garbage-collect /etc/docker/registry/config.yml` collects the deleted one's
    blobs and leaves nothing root-owned behind."""
    docker = docker_cli
    data = tmp_path / "data"
    with support.run_registry_3(data) as v3:
        refs_v3 = [f"{v3.host}/seed/app:a", f"{v3.host}/seed/app:b"]
        local_refs.extend(refs_v3)
        text_a = build_app_image(docker, tmp_path / "a", refs_v3[0])
        build_app_image(docker, tmp_path / "b", refs_v3[1])
        digest_a, _ = e2e.docker_push(docker, refs_v3[0])
        digest_b, _ = e2e.docker_push(docker, refs_v3[1])
    chown_tree(data, 0, 0)  # as registry:3's container leaves it (it runs as root)
    assert set(owners(data)) == {(0, 0)}

    password = secrets.token_hex(12)
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"seeduser:{hashed}\n")
    htpasswd.chmod(0o644)
    env_args = [arg for name, value in SEED_ENV.items() for arg in ("-e", f"{name}={value}")]
    reg = make_container(
        "-v",
        f"{htpasswd}:/auth/htpasswd:ro",
        *env_args,
        volume=str(data),
        command=(SEED_CONFIG,),
        ready_status=401,
    )
    reg.start()
    assert set(owners(data)) == {(IMAGE_UID, IMAGE_GID)}, "the volume was not given to 1000"
    assert process_ids(reg) == {(IMAGE_UID, IMAGE_GID)}, "a container process runs as root"

    config_dir = tmp_path / "docker-config"  # keep the login out of the host's config
    login = [docker, "--config", str(config_dir)]
    e2e.run([*login, "login", "-u", "seeduser", "--password-stdin", reg.host],
            input=password.encode())  # fmt: skip
    ref_a = f"{reg.host}/seed/app:a"
    local_refs.append(ref_a)
    e2e.docker_remove_images(docker, *refs_v3)  # the pull must fetch every layer from ours
    e2e.run([*login, "pull", ref_a])
    cat = [docker, "run", "--rm", "--network", "none", ref_a, "cat", "/data/nonce.txt"]
    assert e2e.run(cat).stdout == text_a, "registry:3's image read back through ours"
    # registry:3's health check (busybox wget on `/`) runs unchanged, with auth on; the
    # image's wget fails on an error status as busybox's does (`/v2/` needs credentials).
    root = reg.url.rstrip("/")
    spider = reg.exec("wget", "-q", "--spider", f"{root}/", check=False)
    assert spider.returncode == 0, (spider.stdout, spider.stderr)
    assert reg.exec("wget", "-q", "--spider", f"{root}/v2/", check=False).returncode == 1

    auth = httpx.BasicAuth("seeduser", password)
    accept = {"Accept": e2e.ACCEPT_ALL_MANIFESTS}
    with httpx.Client(base_url=reg.url, timeout=30.0, auth=auth) as client:
        manifest_a = client.get(f"/v2/seed/app/manifests/{digest_a}", headers=accept).json()
        manifest_b = client.get(f"/v2/seed/app/manifests/{digest_b}", headers=accept).json()
        layers_a = {layer["digest"] for layer in manifest_a["layers"]}
        only_b = {layer["digest"] for layer in manifest_b["layers"]} - layers_a
        assert only_b, "image b should have a layer of its own"
        deleted = client.delete(f"/v2/seed/app/manifests/{digest_b}")
        assert deleted.status_code == 202, deleted.text

        gc = reg.exec("registry", "garbage-collect", SEED_CONFIG, check=False)
        assert gc.returncode == 0, (
            f"`registry garbage-collect {SEED_CONFIG}` failed in the container "
            f"(exit {gc.returncode}):\nstdout:\n{gc.stdout}\nstderr:\n{gc.stderr}"
        )
        for digest in only_b:
            resp = client.head(f"/v2/seed/app/blobs/{digest}")
            assert resp.status_code == 404, f"{digest} of the deleted manifest survived GC"
        for digest in layers_a:
            assert client.head(f"/v2/seed/app/blobs/{digest}").status_code == 200, digest
    assert set(owners(data)) == {(IMAGE_UID, IMAGE_GID)}, "GC (docker exec) wrote as root"


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
        f"{htpasswd}:/auth/htpasswd:ro",
        "-e",
        "REGISTRY_AUTH=htpasswd",
        "-e",
        "REGISTRY_AUTH_HTPASSWD_REALM=Registry",
        "-e",
        "REGISTRY_AUTH_HTPASSWD_PATH=/auth/htpasswd",
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
    names = {"DOMAIN", "IMAGE", "BUILD_CONTEXT", "HTPASSWD_FILE"}
    return {**e2e.clean_env(drop=sorted(names)), **extra}


def compose_project(tmp_path: Path, dotenv: dict[str, str]) -> Path:
    """The compose file in a copy of the layout Dokploy makes (docker/ beside files/), with
    `dotenv` as the .env next to it (Dokploy's Environment tab); returns the file."""
    compose_dir = tmp_path / "docker"
    compose_dir.mkdir()
    target = compose_dir / COMPOSE_FILE.name
    target.write_text(COMPOSE_FILE.read_text())
    (compose_dir / ".env").write_text("".join(f"{k}={v}\n" for k, v in dotenv.items()))
    return target


# REGISTRY_* settings no fixed list in the compose file names: they must arrive all the same.
UNLISTED_ENV = {
    "REGISTRY_HTTP_SECRET": "a-shared-secret",
    "REGISTRY_STORAGE_S3_ROOTDIRECTORY": "/registry",
    "REGISTRY_NOTIFICATIONS_EVENTS_INCLUDEREFERENCES": "true",
}


@pytest.mark.e2e
def test_compose_passes_every_registry_variable_of_dotenv_through(
    docker_cli: str, tmp_path: Path
) -> None:
    """Issue 15: every REGISTRY_* of .env reaches the container (R2's and ones no list in
    the compose file names), with the traefik labels and the seed's /auth/htpasswd mount."""
    compose = compose_command(docker_cli)
    dotenv = {"DOMAIN": "registry.example.com", **R2_ENV, **UNLISTED_ENV}
    path = compose_project(tmp_path, dotenv)
    e2e.run([*compose, "-f", str(path), "config", "-q"], env=compose_env())
    resolved = yaml.safe_load(
        e2e.run([*compose, "-f", str(path), "config"], env=compose_env()).stdout
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
    for name, value in {**R2_ENV, **UNLISTED_ENV}.items():
        assert environment.get(name) == value, f"{name} did not reach the container"
    targets = {
        (v["target"] if isinstance(v, dict) else v.split(":")[1]) for v in service["volumes"]
    }
    assert {"/var/lib/registry", "/auth/htpasswd"} <= targets, targets
    assert resolved["networks"]["dokploy-network"]["external"] is True
    assert service["build"]["context"] == str(tmp_path), "default: the checkout above docker/"


@pytest.mark.e2e
def test_compose_builds_from_a_git_url_when_told(docker_cli: str, tmp_path: Path) -> None:
    """BUILD_CONTEXT (the template sets it) makes `--build` fetch the source by git URL, so
    the template alone is enough on a Dokploy server (not built here: no network)."""
    compose = compose_command(docker_cli)
    url = "https://github.com/OWNER/REPO.git#main"
    path = compose_project(tmp_path, {"DOMAIN": "r.example.com", "BUILD_CONTEXT": url})
    resolved = yaml.safe_load(
        e2e.run([*compose, "-f", str(path), "config"], env=compose_env()).stdout
    )
    build = resolved["services"]["registry"]["build"]
    assert build == {"context": url, "dockerfile": "docker/Dockerfile"}


@pytest.mark.e2e
def test_compose_refuses_to_start_without_a_domain(docker_cli: str, tmp_path: Path) -> None:
    compose = compose_command(docker_cli)
    path = compose_project(tmp_path, {"REGISTRY_LOG_LEVEL": "info"})
    proc = e2e.run([*compose, "-f", str(path), "config", "-q"], env=compose_env(), check=False)
    assert proc.returncode != 0
    assert "DOMAIN" in proc.stdout + proc.stderr


def test_template_and_compose_agree() -> None:
    """Every template variable the compose file does not read is a REGISTRY_* setting for
    the container (which gets all of .env) and loads without a warning; the required compose
    variable is set by the template; nothing in `environment:` overrides .env; the domain,
    port, service and mounts line up."""
    template = tomllib.loads(TEMPLATE_FILE.read_text())
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    variables = support.compose_variables(compose)
    env = template["config"]["env"]

    assert template["variables"]["main_domain"] == "${domain}"
    assert variables.required == {"DOMAIN"}
    assert env["DOMAIN"] == "${main_domain}"
    for_compose = {k for k in env if not k.startswith("REGISTRY_")}
    assert for_compose <= variables.referenced, for_compose - variables.referenced
    assert variables.plain <= variables.required | set(variables.defaults), variables.plain
    for name in for_compose & set(variables.defaults):
        if name != "BUILD_CONTEXT":  # the template names the git URL; compose: the checkout
            assert env[name] == variables.defaults[name], f"{name}: template vs compose"
    for_registry = {k: v for k, v in env.items() if k.startswith("REGISTRY_")}
    assert for_registry, "the template shows where REGISTRY_* settings go"
    config, warnings = load_config(str(CONFIG_FILE), for_registry)
    assert warnings == []
    assert config.storage.delete_enabled

    (domain,) = template["config"]["domains"]
    service = compose["services"][domain["serviceName"]]
    assert service["env_file"] in (".env", [".env"])
    assert "environment" not in service, "a value there would override the same name in .env"
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
        assert f"../files/{mount['filePath']}:/auth/htpasswd:ro" in volumes, mount

    limits = service["deploy"]["resources"]["limits"]
    assert float(limits["cpus"]) == float(service["cpus"]) == float(CPU_LIMIT)
    assert limits["memory"].lower().rstrip("b") == service["mem_limit"].lower() == MEMORY_LIMIT


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


# --------------------------------------------------------------------------- entrypoint


def load_entrypoint() -> ModuleType:
    spec = importlib.util.spec_from_file_location("registry_entrypoint", ENTRYPOINT_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REAL = "/opt/registry/bin/registry"


@pytest.mark.parametrize(
    ("args", "command"),
    [
        ([], [REAL, "serve", "/etc/distribution/config.yml"]),
        (["/etc/distribution/config.yml"], [REAL, "serve", "/etc/distribution/config.yml"]),
        (["/etc/docker/registry/config.yml"], [REAL, "serve", "/etc/docker/registry/config.yml"]),
        (["/srv/registry.yaml"], [REAL, "serve", "/srv/registry.yaml"]),
        (["serve", "/c.yml"], [REAL, "serve", "/c.yml"]),
        (["garbage-collect", "-m", "/c.yml"], [REAL, "garbage-collect", "-m", "/c.yml"]),
        (["--version"], [REAL, "--version"]),
        (["help"], [REAL, "--help"]),
        (["registry", "garbage-collect", "/c.yml"], [REAL, "garbage-collect", "/c.yml"]),
        (["registry", "/c.yml"], [REAL, "serve", "/c.yml"]),
        (["registry"], [REAL, "--help"]),
        (["python3", "-c", "pass"], ["python3", "-c", "pass"]),
        (["registry-healthcheck"], ["registry-healthcheck"]),
    ],
)
def test_entrypoint_takes_registry_3s_arguments(args: list[str], command: list[str]) -> None:
    """registry:3's entrypoint rules: a .yml/.yaml path serves it, a subcommand or option
    goes to `registry`, anything else runs as given; `registry ...` (docker exec) too."""
    assert load_entrypoint().command_for(args) == command


def test_entrypoint_finds_the_filesystem_root_of_the_named_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The directory to give to uid 1000 is the one the command's config (plus REGISTRY_*
    overrides) stores into; none for S3, for a config that does not load, or for commands
    that do not write the storage."""
    entry = load_entrypoint()
    for name in list(os.environ):
        if name.startswith("REGISTRY_"):
            monkeypatch.delenv(name)
    config = tmp_path / "config.yml"
    config.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path}/d\n")
    assert entry.storage_root([REAL, "serve", str(config)]) == f"{tmp_path}/d"
    assert entry.storage_root([REAL, "garbage-collect", "-d", str(config)]) == f"{tmp_path}/d"
    assert entry.storage_root([REAL, "--version"]) is None
    assert entry.storage_root(["python3", str(config)]) is None
    monkeypatch.setenv("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", "/elsewhere")
    assert entry.storage_root([REAL, "serve", str(config)]) == "/elsewhere"
    monkeypatch.setenv("REGISTRY_STORAGE", "s3")
    monkeypatch.setenv("REGISTRY_STORAGE_S3_BUCKET", "b")
    monkeypatch.setenv("REGISTRY_STORAGE_S3_REGION", "auto")
    assert entry.storage_root([REAL, "serve", str(config)]) is None
    monkeypatch.delenv("REGISTRY_STORAGE")
    config.write_text("storage: [not, a, mapping\n")
    assert entry.storage_root([REAL, "serve", str(config)]) is None


def test_entrypoint_gives_root_owned_files_to_the_image_user(tmp_path: Path) -> None:
    """What registry:3 (root) wrote becomes 1000:1000, every level deep; a second run
    changes nothing; a symlink is changed itself, never the file it points to."""
    if os.geteuid() != 0:
        reason = "chown to another user needs root"
        if e2e.in_ci():
            pytest.fail(reason)
        pytest.skip(reason)
    entry = load_entrypoint()
    root = tmp_path / "data"
    blob = root / "docker/registry/v2/blobs/sha256/ab/ab12/data"
    blob.parent.mkdir(parents=True)
    blob.write_bytes(b"x")
    outside = tmp_path / "outside"
    outside.write_text("not ours")
    (root / "link").symlink_to(outside)
    chown_tree(tmp_path, 0, 0)
    entries = len([root, *root.rglob("*")])

    assert entry.give_to(str(root), IMAGE_UID, IMAGE_GID) == entries
    assert owners(root) == {(IMAGE_UID, IMAGE_GID): entries}
    assert (outside.stat().st_uid, outside.stat().st_gid) == (0, 0)
    assert entry.give_to(str(root), IMAGE_UID, IMAGE_GID) == 0


MIRROR_COMPOSE_FILE = COMPOSE_FILE.parent / "docker-compose.mirror.yml"


@pytest.mark.e2e
def test_mirror_compose_is_a_docker_hub_pull_through_cache(docker_cli: str) -> None:
    """Issue 16: the Docker Hub mirror's compose file is valid and sets registry:3's proxy
    variables (credentials only when given), the port and the data volume."""
    compose = compose_command(docker_cli)
    env = compose_env(REGISTRY_PROXY_USERNAME="hubuser", REGISTRY_PROXY_PASSWORD="hubtoken")
    resolved = yaml.safe_load(
        e2e.run([*compose, "-f", str(MIRROR_COMPOSE_FILE), "config"], env=env).stdout
    )
    service = resolved["services"]["mirror"]
    environment = service["environment"]
    assert environment["REGISTRY_PROXY_REMOTEURL"] == "https://registry-1.docker.io"
    assert environment["REGISTRY_PROXY_USERNAME"] == "hubuser"
    assert environment["REGISTRY_PROXY_TTL"] == "168h"
    ports = service["ports"]
    assert any("5000" in str(p) for p in ports), ports
    targets = {(v["target"] if isinstance(v, dict) else v.split(":")[1]) for v in service["volumes"]}
    assert "/var/lib/registry" in targets
