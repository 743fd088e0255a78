"""docker/docker-compose.scale.yml (issue 17, item 2): N registry replicas on one storage,
Redis, traefik's labels (Dokploy's traefik, or the bundled one with --profile standalone),
checked by `docker compose config` as docker-compose.yml is (tests/test_docker_image.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from test_docker_image import compose_command, compose_env

try:  # tests/ is a plain directory on sys.path, or a package
    from tests import docker_image_support as support
    from tests import e2e_support as e2e
except ImportError:
    import docker_image_support as support  # type: ignore[no-redef]
    import e2e_support as e2e  # type: ignore[no-redef]

from registry.config import load_config

SCALE_FILE = support.DOCKER_DIR / "docker-compose.scale.yml"
docker_cli = e2e.docker_cli


def project(tmp_path: Path, dotenv: dict[str, str]) -> Path:
    """The scale file in a copy of Dokploy's layout (docker/ beside files/) with .env."""
    compose_dir = tmp_path / "docker"
    compose_dir.mkdir()
    target = compose_dir / SCALE_FILE.name
    target.write_text(SCALE_FILE.read_text())
    (compose_dir / ".env").write_text("".join(f"{k}={v}\n" for k, v in dotenv.items()))
    return target


def resolved(docker: str, path: Path, *args: str, **env: str) -> dict:
    out = e2e.run([*compose_command(docker), "-f", str(path), *args, "config"],
                  env=compose_env(**env)).stdout  # fmt: skip
    return yaml.safe_load(out)


@pytest.mark.e2e
def test_scale_compose_runs_replicas_with_redis_one_secret_and_one_storage(
    docker_cli: str, tmp_path: Path
) -> None:
    dotenv = {"DOMAIN": "registry.example.com", "REGISTRY_HTTP_SECRET": "one-secret",
              "REPLICAS": "4", "REGISTRY_STORAGE": "s3",
              "REGISTRY_STORAGE_S3_BUCKET": "images"}  # fmt: skip
    config = resolved(docker_cli, project(tmp_path, dotenv))
    services = config["services"]
    registry = services["registry"]
    assert registry["deploy"]["replicas"] == 4
    env = registry["environment"]
    assert env["REGISTRY_HTTP_SECRET"] == "one-secret"
    assert env["REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR"] == "redis"
    assert env["REGISTRY_REDIS_ADDRS"] == "[redis:6379]"
    assert "redis" in services
    # Dokploy brings its traefik: the bundled one is behind a profile (compose v2 leaves it
    # out of `config`; Debian's docker-compose 1.29 lists it with its profile).
    assert services.get("traefik", {"profiles": ["standalone"]})["profiles"] == ["standalone"]
    assert "internal" in services["redis"]["networks"]
    labels = registry["labels"]
    if isinstance(labels, list):
        labels = dict(label.split("=", 1) for label in labels)
    assert labels["traefik.http.routers.ociregistry.rule"] == (
        "Host(`registry.example.com`) && PathPrefix(`/v2`)"
    )
    assert not any("sticky" in key for key in labels), "no sticky sessions (README)"
    targets = {
        (v["target"] if isinstance(v, dict) else v.split(":")[1]) for v in registry["volumes"]
    }
    assert "/var/lib/registry" in targets  # the shared volume when storage is a directory
    # What the replicas get loads as a config with Redis on (the fixed settings of the file).
    fixed = {k: v for k, v in env.items() if k.startswith("REGISTRY_")}
    loaded, warnings = load_config(str(support.DOCKER_DIR / "config.yml"), fixed)
    assert loaded.storage.blobdescriptor == "redis"
    assert warnings == []


@pytest.mark.e2e
def test_scale_compose_bundles_traefik_only_in_the_standalone_profile(
    docker_cli: str, tmp_path: Path
) -> None:
    dotenv = {"DOMAIN": "r.example.com", "REGISTRY_HTTP_SECRET": "s"}
    config = resolved(docker_cli, project(tmp_path, dotenv), "--profile", "standalone")
    assert "traefik" in config["services"]
    assert config["services"]["registry"]["deploy"]["replicas"] == 3


@pytest.mark.e2e
@pytest.mark.parametrize("missing", ["DOMAIN", "REGISTRY_HTTP_SECRET"])
def test_scale_compose_refuses_to_start_without_a_domain_or_a_shared_secret(
    docker_cli: str, tmp_path: Path, missing: str
) -> None:
    dotenv = {"DOMAIN": "r.example.com", "REGISTRY_HTTP_SECRET": "s"}
    del dotenv[missing]
    path = project(tmp_path, dotenv)
    proc = e2e.run([*compose_command(docker_cli), "-f", str(path), "config", "-q"],
                   env=compose_env(), check=False)  # fmt: skip
    assert proc.returncode != 0
    assert missing in proc.stdout + proc.stderr
