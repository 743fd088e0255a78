"""End to end with skopeo: a two-platform OCI image index copied in and out with --all,
digest unchanged; then an artifact whose subject is that index, found through referrers."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import httpx
import pytest

try:  # tests/ is a plain directory on sys.path, or a package
    from tests import e2e_support as e2e
except ImportError:
    import e2e_support as e2e  # type: ignore[no-redef]

pytestmark = pytest.mark.e2e

SBOM_TYPE = "application/vnd.example.sbom"
SIGNATURE_TYPE = "application/vnd.example.signature"
PLATFORMS = ("amd64", "arm64")


def make_multiplatform(directory: Path) -> tuple[bytes, list[e2e.OciImage]]:
    """Write an OCI layout with ref v1 = an index of linux/amd64 and linux/arm64 images,
    each with its own config and layer; returns (index bytes, images)."""
    nonce = secrets.token_hex(8)
    images = [
        e2e.make_image([{f"etc/{arch}.txt": f"{arch} {nonce}\n".encode()}], arch=arch)
        for arch in PLATFORMS
    ]
    index = e2e.make_index(images)
    e2e.write_oci_layout(directory, {"v1": (e2e.MEDIA_OCI_INDEX, index)}, e2e.index_blobs(images))
    return index, images


def push_index_with_skopeo(
    reg: e2e.RegistryProcess, tmp_path: Path
) -> tuple[str, bytes, list[e2e.OciImage]]:
    src = tmp_path / "src-layout"
    index, images = make_multiplatform(src)
    e2e.skopeo(
        "copy",
        "--all",
        "--dest-tls-verify=false",
        f"oci:{src}:v1",
        f"docker://{reg.host}/multi/app:v1",
    )
    return e2e.sha256_digest(index), index, images


def artifact_manifest(
    subject: bytes, artifact_type: str, layer: bytes, annotations: dict[str, str]
) -> bytes:
    return e2e.canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": e2e.MEDIA_OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": e2e.descriptor(e2e.MEDIA_OCI_EMPTY, b"{}"),
            "layers": [e2e.descriptor("application/json", layer)],
            "subject": e2e.descriptor(e2e.MEDIA_OCI_INDEX, subject),
            "annotations": annotations,
        }
    )


def push_artifact(
    http: httpx.Client, repo: str, manifest: bytes, blobs: list[bytes]
) -> httpx.Response:
    for blob in blobs:
        e2e.push_blob(http, repo, blob)
    digest = e2e.sha256_digest(manifest)
    return http.put(
        f"/v2/{repo}/manifests/{digest}",
        content=manifest,
        headers={"Content-Type": e2e.MEDIA_OCI_MANIFEST},
    )


def test_skopeo_copy_all_of_two_platform_index_in_and_out_keeps_its_digest(tmp_path: Path) -> None:
    """SPEC 17 (OCI index and manifests stored as exact bytes), 7 (served unchanged), 18."""
    with e2e.run_ours(tmp_path / "storage") as ours:
        digest, index, images = push_index_with_skopeo(ours, tmp_path)

        raw = e2e.skopeo(
            "inspect", "--raw", "--tls-verify=false", f"docker://{ours.host}/multi/app:v1"
        ).stdout
        assert e2e.sha256_digest(raw.encode()) == digest
        assert json.loads(raw) == json.loads(index)
        with ours.client() as http:
            resp = e2e.get_manifest(http, "multi/app", "v1")
            assert resp.status_code == 200
            assert resp.content == index
            assert resp.headers["Docker-Content-Digest"] == digest
            assert resp.headers["Content-Type"] == e2e.MEDIA_OCI_INDEX
            for img in images:
                child = e2e.get_manifest(http, "multi/app", img.digest)
                assert child.status_code == 200
                assert child.content == img.manifest

        dst = tmp_path / "dst-layout"
        e2e.skopeo(
            "copy",
            "--all",
            "--src-tls-verify=false",
            f"docker://{ours.host}/multi/app:v1",
            f"oci:{dst}:v1",
        )
        desc = e2e.read_oci_layout_ref(dst, "v1")
        assert desc["digest"] == digest
        assert e2e.read_oci_blob(dst, digest) == index
        for img in images:
            assert e2e.read_oci_blob(dst, img.digest) == img.manifest
            for blob_digest, data in img.blobs.items():
                assert e2e.read_oci_blob(dst, blob_digest) == data


def test_artifact_with_index_subject_is_listed_by_referrers_api_spec_21_24(tmp_path: Path) -> None:
    with e2e.run_ours(tmp_path / "storage") as ours:
        digest, index, _ = push_index_with_skopeo(ours, tmp_path)
        sbom_layer = json.dumps({"sbom": secrets.token_hex(8)}).encode()
        sig_layer = json.dumps({"signature": secrets.token_hex(8)}).encode()
        sbom = artifact_manifest(index, SBOM_TYPE, sbom_layer, {"org.example.kind": "sbom"})
        sig = artifact_manifest(index, SIGNATURE_TYPE, sig_layer, {"org.example.kind": "sig"})

        with ours.client() as http:
            # Nothing refers to the index yet: an empty index, never 404 (SPEC 24).
            empty = http.get(f"/v2/multi/app/referrers/{digest}")
            assert empty.status_code == 200, empty.text
            assert empty.json()["manifests"] == []

            for manifest, layer in ((sbom, sbom_layer), (sig, sig_layer)):
                put = push_artifact(http, "multi/app", manifest, [b"{}", layer])
                assert put.status_code == 201, put.text
                assert put.headers["Docker-Content-Digest"] == e2e.sha256_digest(manifest)
                assert put.headers.get("OCI-Subject") == digest  # SPEC 21

            resp = http.get(f"/v2/multi/app/referrers/{digest}")
            assert resp.status_code == 200, resp.text
            assert resp.headers["Content-Type"].split(";")[0] == e2e.MEDIA_OCI_INDEX
            body = resp.json()
            assert body["schemaVersion"] == 2
            assert body.get("mediaType", e2e.MEDIA_OCI_INDEX) == e2e.MEDIA_OCI_INDEX
            found = {d["digest"]: d for d in body["manifests"]}
            assert set(found) == {e2e.sha256_digest(sbom), e2e.sha256_digest(sig)}
            listed = found[e2e.sha256_digest(sbom)]
            assert listed["mediaType"] == e2e.MEDIA_OCI_MANIFEST
            assert listed["size"] == len(sbom)
            assert listed["artifactType"] == SBOM_TYPE
            assert listed["annotations"] == {"org.example.kind": "sbom"}

            filtered = http.get(
                f"/v2/multi/app/referrers/{digest}", params={"artifactType": SBOM_TYPE}
            )
            assert filtered.status_code == 200
            assert filtered.headers.get("OCI-Filters-Applied") == "artifactType"
            assert [d["digest"] for d in filtered.json()["manifests"]] == [e2e.sha256_digest(sbom)]

            none = http.get(
                f"/v2/multi/app/referrers/{digest}",
                params={"artifactType": "application/vnd.example.none"},
            )
            assert none.status_code == 200
            assert none.json()["manifests"] == []

            # The index itself is unchanged by being referred to.
            again = e2e.get_manifest(http, "multi/app", "v1")
            assert again.headers["Docker-Content-Digest"] == digest
