"""After ``registry garbage-collect``, every remaining image pulls with docker and runs,
and the deleted one is gone from disk (issue 5, Tests)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

try:
    from tests import e2e_support as e2e
except ImportError:
    import e2e_support as e2e  # type: ignore[no-redef]

pytestmark = pytest.mark.e2e

docker_cli = e2e.docker_cli
V2 = Path("docker/registry/v2")


@pytest.fixture
def refs(docker_cli: str) -> Iterator[list[str]]:
    made: list[str] = []
    yield made
    e2e.docker_remove_images(docker_cli, *made)


def blob_on_disk(root: Path, digest: str) -> bool:
    h = digest.split(":", 1)[1]
    return (root / V2 / "blobs" / "sha256" / h[:2] / h / "data").exists()


def test_after_offline_gc_every_remaining_image_pulls_and_runs(
    docker_cli: str, refs: list[str], tmp_path: Path
) -> None:
    root = tmp_path / "storage"
    with e2e.run_ours(root) as reg:
        keep = f"{reg.host}/gc/app:1"
        also = f"{reg.host}/gc/other:1"
        gone = f"{reg.host}/gc/gone:1"
        refs.extend([keep, also, gone])
        expected_keep = e2e.build_app(docker_cli, tmp_path / "keep", keep)
        expected_also = e2e.build_app(docker_cli, tmp_path / "also", also)
        e2e.build_app(docker_cli, tmp_path / "gone", gone)
        e2e.docker_push(docker_cli, keep)
        e2e.docker_push(docker_cli, also)
        gone_digest, _ = e2e.docker_push(docker_cli, gone)
        with reg.client() as http:
            manifest = e2e.get_manifest(http, "gc/gone", "1").json()
            assert http.delete(f"/v2/gc/gone/manifests/{gone_digest}").status_code == 202
            keep_manifest = e2e.get_manifest(http, "gc/app", "1").json()
    gone_own = [d["digest"] for d in manifest["layers"][1:]] + [manifest["config"]["digest"]]
    shared_base = manifest["layers"][0]["digest"]
    assert shared_base == keep_manifest["layers"][0]["digest"]
    assert all(blob_on_disk(root, d) for d in [*gone_own, gone_digest])

    config = tmp_path / "gc.yml"
    e2e.write_registry_config(config, root, e2e.free_port())
    env = e2e.clean_env()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(e2e.REPO_ROOT), env.get("PYTHONPATH")]))
    out = e2e.run([sys.executable, "-m", "registry", "garbage-collect", str(config)], env=env)
    assert "blobs deleted:" in out.stdout

    assert not any(blob_on_disk(root, d) for d in [*gone_own, gone_digest])
    assert blob_on_disk(root, shared_base)
    with e2e.run_ours(root) as reg:  # a new port: use the new host name
        # Pushing the collected image again uploads its layers: nothing claims they exist
        # (the reference's blob descriptor cache does, "layer already exists" after GC).
        again = f"{reg.host}/gc/gone:1"
        refs.append(again)
        e2e.run([docker_cli, "tag", gone, again])
        out = e2e.run([docker_cli, "push", again]).stdout
        assert out.count("Pushed") >= 2, out  # its RUN and COPY layers
        digest, _ = e2e.docker_push(docker_cli, again)
        with reg.client() as http:
            assert http.delete(f"/v2/gc/gone/manifests/{digest}").status_code == 202
    e2e.docker_remove_images(docker_cli, *refs, e2e.BASE_IMAGE)
    with e2e.run_ours(root) as reg:
        for ref, expected in ((keep, expected_keep), (also, expected_also)):
            again = ref.replace(ref.split("/", 1)[0], reg.host, 1)
            refs.append(again)
            e2e.run([docker_cli, "pull", again])
            assert e2e.run_cat(docker_cli, again) == expected
        failed = e2e.run([docker_cli, "pull", f"{reg.host}/gc/gone:1"], check=False)
        assert failed.returncode != 0
