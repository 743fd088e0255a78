"""End to end with the real docker client: build, push, pull, run, mount, delete.

The base image is made offline (`docker import` of a busybox rootfs); a Dockerfile adds a
RUN layer and a COPY layer. Every test pushes to a fresh instance of our registry.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

try:  # tests/ is a plain directory on sys.path, or a package
    from tests import e2e_support as e2e
except ImportError:
    import e2e_support as e2e  # type: ignore[no-redef]

pytestmark = pytest.mark.e2e

docker_cli = e2e.docker_cli

APP_LAYERS = 3  # the imported base, the RUN, the COPY


class LocalImages:
    """Remembers image references to remove from the docker host after the test."""

    def __init__(self, docker: str) -> None:
        self.docker = docker
        self.refs: list[str] = []

    def add(self, ref: str) -> str:
        self.refs.append(ref)
        return ref

    def forget_all(self) -> None:
        """Remove every remembered image and the base, so the next pull really fetches."""
        e2e.docker_remove_images(self.docker, *self.refs, e2e.BASE_IMAGE)
        for ref in self.refs:
            gone = e2e.run([self.docker, "image", "inspect", ref], check=False)
            assert gone.returncode != 0, f"{ref} is still present locally"


@pytest.fixture
def local_images(docker_cli: str) -> Iterator[LocalImages]:
    images = LocalImages(docker_cli)
    yield images
    e2e.docker_remove_images(docker_cli, *images.refs)


# Shared with test_gc_docker.py and test_s3_e2e.py (which imports them from here).
build_app, docker_push, run_cat = e2e.build_app, e2e.docker_push, e2e.run_cat


def test_docker_push_pull_run_roundtrip_of_image_with_run_and_copy_layers(
    docker_cli: str, local_images: LocalImages, tmp_path: Path
) -> None:
    """Streamed blob pushes (SPEC 12), schema2 manifest put (17) and pulls (5, 7)."""
    with e2e.run_ours(tmp_path / "storage") as ours:
        ref = local_images.add(f"{ours.host}/e2e/app:1")
        expected = build_app(docker_cli, tmp_path / "ctx", ref)
        digest, _ = docker_push(docker_cli, ref)

        with ours.client() as http:
            resp = e2e.get_manifest(http, "e2e/app", "1")
            assert resp.status_code == 200, resp.text
            assert resp.headers["Docker-Content-Digest"] == digest
            assert e2e.sha256_digest(resp.content) == digest
            manifest = resp.json()
            assert (
                resp.headers["Content-Type"] == manifest["mediaType"] == e2e.MEDIA_DOCKER_MANIFEST
            )
            assert len(manifest["layers"]) == APP_LAYERS
            for blob in [manifest["config"], *manifest["layers"]]:
                head = http.head(f"/v2/e2e/app/blobs/{blob['digest']}")
                assert head.status_code == 200
                assert int(head.headers["Content-Length"]) == blob["size"]

        local_images.forget_all()
        pulled = e2e.run([docker_cli, "pull", ref]).stdout
        assert digest in pulled
        assert run_cat(docker_cli, ref) == expected


def test_docker_push_to_second_repo_mounts_every_layer_from_first_spec_16(
    docker_cli: str, local_images: LocalImages, tmp_path: Path
) -> None:
    with e2e.run_ours(tmp_path / "storage") as ours:
        first = local_images.add(f"{ours.host}/e2e/app:1")
        second = local_images.add(f"{ours.host}/e2e/other:2")
        expected = build_app(docker_cli, tmp_path / "ctx", first)
        digest, _ = docker_push(docker_cli, first)
        e2e.run([docker_cli, "tag", first, second])
        second_digest, out = docker_push(docker_cli, second)

        assert second_digest == digest
        # docker asks for POST ?mount=<layer>&from=e2e/app for each layer it pushed there; a 201
        # prints "Mounted from", a 202 (no mount) would upload the layer again ("Pushed").
        assert out.count("Mounted from e2e/app") == APP_LAYERS, out
        with ours.client() as http:
            manifest = e2e.get_manifest(http, "e2e/other", "2")
            assert manifest.status_code == 200
            assert manifest.headers["Docker-Content-Digest"] == digest
            for layer in manifest.json()["layers"]:
                assert http.head(f"/v2/e2e/other/blobs/{layer['digest']}").status_code == 200

        local_images.forget_all()
        e2e.run([docker_cli, "pull", second])
        assert run_cat(docker_cli, second) == expected


def test_delete_manifest_by_digest_over_http_makes_docker_pull_fail_spec_25(
    docker_cli: str, local_images: LocalImages, tmp_path: Path
) -> None:
    with e2e.run_ours(tmp_path / "storage") as ours:
        ref = local_images.add(f"{ours.host}/e2e/app:1")
        kept = local_images.add(f"{ours.host}/e2e/kept:1")
        expected = build_app(docker_cli, tmp_path / "ctx", ref)
        digest, _ = docker_push(docker_cli, ref)
        e2e.run([docker_cli, "tag", ref, kept])
        docker_push(docker_cli, kept)

        with ours.client() as http:
            deleted = http.delete(f"/v2/e2e/app/manifests/{digest}")
            assert deleted.status_code == 202, deleted.text
            for reference in (digest, "1"):
                gone = e2e.get_manifest(http, "e2e/app", reference)
                assert gone.status_code == 404, (reference, gone.status_code, gone.text)
                assert gone.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
            # Deletion is scoped to the repository (SPEC 6/25): the other repo still serves it.
            still = e2e.get_manifest(http, "e2e/kept", digest)
            assert still.status_code == 200
            assert still.headers["Docker-Content-Digest"] == digest

        local_images.forget_all()
        for pull_ref in (ref, f"{ours.host}/e2e/app@{digest}"):
            failed = e2e.run([docker_cli, "pull", pull_ref], check=False)
            assert failed.returncode != 0, failed.stdout
            assert "manifest unknown" in failed.stderr.lower(), failed.stderr
        e2e.run([docker_cli, "pull", kept])
        assert run_cat(docker_cli, kept) == expected
