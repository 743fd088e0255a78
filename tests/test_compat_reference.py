"""Storage compatibility with Debian's docker-registry (distribution 2.8), "the reference".

Both servers use the same directory one after the other (SPEC, Storage layout): what one
wrote, the other must serve byte for byte, with the same digests, tags and catalog, and a
real client (skopeo) must pull it completely.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from registry.storage import sha256state

try:  # tests/ is a plain directory on sys.path, or a package
    from tests import e2e_support as e2e
except ImportError:
    import e2e_support as e2e  # type: ignore[no-redef]

pytestmark = pytest.mark.e2e

Runner = Callable[..., contextlib.AbstractContextManager[e2e.RegistryProcess]]
RUNNERS: dict[str, Runner] = {"ours": e2e.run_ours, "reference": e2e.run_reference}
DIRECTIONS = [
    pytest.param("reference", "ours", id="reference-to-ours"),
    pytest.param("ours", "reference", id="ours-to-reference"),
]

INDEX_MEDIA_TYPES = (e2e.MEDIA_OCI_INDEX, e2e.MEDIA_DOCKER_LIST)


@dataclasses.dataclass
class Sample:
    """What was pushed: (repo, tag) pairs and the OCI layout they came from."""

    layout: Path
    refs: list[tuple[str, str]]
    index_digest: str


def write_sample_layout(directory: Path) -> str:
    """An OCI layout with `app` (a three-layer image) and `multi` (a two-platform index).
    Returns the index digest."""
    nonce = secrets.token_hex(8)
    app = e2e.make_image(
        [{f"layer{i}/file.txt": f"layer {i} {nonce}\n".encode()} for i in range(3)]
    )
    children = [
        e2e.make_image([{f"etc/{arch}": f"{arch} {nonce}\n".encode()}], arch=arch)
        for arch in ("amd64", "arm64")
    ]
    index = e2e.make_index(children)
    e2e.write_oci_layout(
        directory,
        {"app": (e2e.MEDIA_OCI_MANIFEST, app.manifest), "multi": (e2e.MEDIA_OCI_INDEX, index)},
        app.blobs | e2e.index_blobs(children),
    )
    return e2e.sha256_digest(index)


def push_sample(reg: e2e.RegistryProcess, tmp_path: Path) -> Sample:
    """Push OCI and Docker schema2 images, an OCI index and several tags with skopeo."""
    layout = tmp_path / "sample-layout"
    index_digest = write_sample_layout(layout)
    dest = f"docker://{reg.host}"
    copies = [
        ([], "app", "compat/app", "1"),
        ([], "app", "compat/app", "latest"),
        (["--format", "v2s2"], "app", "compat/app", "docker"),
        (["--all"], "multi", "compat/multi", "v1"),
        ([], "app", "compat/nested/deeper/app", "x"),
    ]
    for extra, src_ref, repo, tag in copies:
        e2e.skopeo(
            "copy", *extra, "--dest-tls-verify=false", f"oci:{layout}:{src_ref}",
            f"{dest}/{repo}:{tag}",
        )  # fmt: skip
    return Sample(layout, [(repo, tag) for _, _, repo, tag in copies], index_digest)


def snapshot(reg: e2e.RegistryProcess, refs: list[tuple[str, str]]) -> dict[str, Any]:
    """Everything a client can read about `refs` through `reg`: catalog, tag lists, every
    manifest reachable from the tags (bytes, digest header, media type) and, for every
    blob they reference, its size and digest as served."""
    snap: dict[str, Any] = {"manifests": {}, "blobs": {}, "tags": {}}
    with reg.client() as http:
        catalog = http.get("/v2/_catalog")
        assert catalog.status_code == 200, catalog.text
        snap["catalog"] = catalog.json()
        for repo in sorted({repo for repo, _ in refs}):
            tags = http.get(f"/v2/{repo}/tags/list")
            assert tags.status_code == 200, tags.text
            listing = tags.json()
            # distribution 2.8 lists tags in directory order; SPEC 22 sorts: compare as sets.
            snap["tags"][repo] = {"name": listing["name"], "tags": sorted(listing["tags"])}
        pending = list(refs)
        while pending:
            repo, ref = pending.pop()
            resp = e2e.get_manifest(http, repo, ref)
            assert resp.status_code == 200, (reg.name, repo, ref, resp.status_code, resp.text)
            digest = resp.headers["Docker-Content-Digest"]
            assert e2e.sha256_digest(resp.content) == digest
            snap["manifests"][f"{repo}:{ref}"] = {
                "digest": digest,
                "content_type": resp.headers["Content-Type"].split(";")[0].strip(),
                "bytes": resp.content,
            }
            manifest = json.loads(resp.content)
            if manifest.get("mediaType") in INDEX_MEDIA_TYPES:
                pending.extend((repo, child["digest"]) for child in manifest["manifests"])
                continue
            for desc in [manifest["config"], *manifest["layers"]]:
                snap["blobs"][f"{repo}@{desc['digest']}"] = served_blob(http, repo, desc)
    return snap


def served_blob(http: httpx.Client, repo: str, desc: dict[str, Any]) -> dict[str, Any]:
    resp = http.get(f"/v2/{repo}/blobs/{desc['digest']}", follow_redirects=True)
    assert resp.status_code == 200, (repo, desc, resp.status_code, resp.text)
    assert e2e.sha256_digest(resp.content) == desc["digest"]
    assert len(resp.content) == desc["size"]
    return {"size": len(resp.content), "digest": e2e.sha256_digest(resp.content)}


def pull_index_with_skopeo(reg: e2e.RegistryProcess, dst: Path) -> str:
    e2e.skopeo(
        "copy", "--all", "--src-tls-verify=false", f"docker://{reg.host}/compat/multi:v1",
        f"oci:{dst}:v1",
    )  # fmt: skip
    return str(e2e.read_oci_layout_ref(dst, "v1")["digest"])


@contextlib.contextmanager
def served_by(name: str, root: Path, workdir: Path) -> Iterator[e2e.RegistryProcess]:
    with RUNNERS[name](root, workdir=workdir) as reg:
        yield reg


@pytest.mark.parametrize(("writer", "reader"), DIRECTIONS)
def test_content_pushed_through_one_registry_is_served_identically_by_the_other(
    writer: str, reader: str, tmp_path: Path
) -> None:
    """Same manifests (bytes, digests, media types), blobs, tag lists and catalog."""
    root = tmp_path / "shared-storage"
    with served_by(writer, root, tmp_path) as reg:
        sample = push_sample(reg, tmp_path)
        written = snapshot(reg, sample.refs)
    assert written["tags"]["compat/app"]["tags"] == ["1", "docker", "latest"]
    assert written["manifests"]["compat/multi:v1"]["digest"] == sample.index_digest
    assert len(written["manifests"]) == len(sample.refs) + 2  # + the index's two children

    with served_by(reader, root, tmp_path) as reg:
        read = snapshot(reg, sample.refs)
        assert read["catalog"] == written["catalog"]
        assert read["tags"] == written["tags"]
        assert read["manifests"].keys() == written["manifests"].keys()
        for key, manifest in written["manifests"].items():
            assert read["manifests"][key] == manifest, key
        assert read["blobs"] == written["blobs"]
        # A real client pulls everything through the reader, digest unchanged.
        assert pull_index_with_skopeo(reg, tmp_path / "pulled") == sample.index_digest


@pytest.mark.parametrize(("writer", "reader"), DIRECTIONS)
def test_manifest_deleted_by_digest_through_one_registry_is_gone_for_the_other(
    writer: str, reader: str, tmp_path: Path
) -> None:
    """SPEC 25 on the shared layout: the revision and its tags disappear; other tags stay."""
    root = tmp_path / "shared-storage"
    with served_by(reader, root, tmp_path) as reg:
        sample = push_sample(reg, tmp_path)
        before = snapshot(reg, sample.refs)
    oci_digest = before["manifests"]["compat/app:1"]["digest"]
    docker_digest = before["manifests"]["compat/app:docker"]["digest"]
    assert oci_digest != docker_digest

    with served_by(writer, root, tmp_path) as reg, reg.client() as http:
        deleted = http.delete(f"/v2/compat/app/manifests/{oci_digest}")
        assert deleted.status_code == 202, deleted.text

    with served_by(reader, root, tmp_path) as reg, reg.client() as http:
        for ref in (oci_digest, "1", "latest"):
            gone = e2e.get_manifest(http, "compat/app", ref)
            assert gone.status_code == 404, (ref, gone.status_code, gone.text)
        kept = e2e.get_manifest(http, "compat/app", "docker")
        assert kept.status_code == 200
        assert kept.content == before["manifests"]["compat/app:docker"]["bytes"]
        tags = http.get("/v2/compat/app/tags/list")
        assert tags.status_code == 200
        assert tags.json()["tags"] == ["docker"]
        # The same digest in another repository is untouched.
        other = e2e.get_manifest(http, "compat/nested/deeper/app", oci_digest)
        assert other.status_code == 200


@pytest.mark.usefixtures("resumable_sha256")
def test_an_upload_the_reference_started_is_finished_by_ours_from_its_hash_state(
    tmp_path: Path,
) -> None:
    """The reference saves its sha256 state after each PATCH (Go's MarshalBinary); ours
    writes the same bytes for the same data (so either resumes the other's state) and
    finishes the reference's upload on the shared directory."""
    root = tmp_path / "shared-storage"
    data = secrets.token_bytes(300_007)  # not a multiple of the 64-byte block
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with served_by("reference", root, tmp_path) as reg, httpx.Client(base_url=reg.url) as http:
        started = http.post("/v2/compat/resume/blobs/uploads/")
        assert started.status_code == 202, started.text
        patched = http.patch(
            started.headers["location"],
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert patched.status_code == 202, patched.text
        location = httpx.URL(patched.headers["location"])
    uuid = patched.headers["docker-upload-uuid"]
    states = root / f"docker/registry/v2/repositories/compat/resume/_uploads/{uuid}/hashstates"
    ours = sha256state.Sha256()
    ours.update(data)
    assert (states / "sha256" / str(len(data))).read_bytes() == ours.marshal()

    with served_by("ours", root, tmp_path) as reg, httpx.Client(base_url=reg.url) as http:
        done = http.put(location.raw_path.decode(), params={"digest": digest})
        assert done.status_code == 201, done.text
        got = http.get(f"/v2/compat/resume/blobs/{digest}")
        assert got.status_code == 200 and got.content == data
