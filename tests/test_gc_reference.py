"""Offline GC against the reference's own: Debian's ``docker-registry garbage-collect``
(distribution 2.8) on a copy of the same directory, written by that registry itself over
HTTP (issue 5, Tests).

The deletions must be the same file for file, with two documented differences:

- we also remove the ``_layers`` link of every blob we delete (registry:3 does; 2.8
  leaves dangling links);
- with ``--delete-untagged`` we keep the children of a kept index and the referrers of a
  kept manifest; 2.8 deletes them (and with them the layers only those children use, which
  breaks every multi-arch image it collects).

After our collection every tag still pulls completely from our server.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

try:
    from tests import e2e_support as e2e
except ImportError:
    import e2e_support as e2e  # type: ignore[no-redef]

pytestmark = pytest.mark.e2e

V2 = Path("docker/registry/v2")
EMPTY_CONFIG = b"{}"


@dataclass
class Pushed:
    """What went in: every (repo, tag), and the digests the comparisons single out."""

    tags: list[tuple[str, str]] = field(default_factory=list)
    children: list[tuple[str, str]] = field(default_factory=list)  # (repo, digest) untagged
    child_layers: list[str] = field(default_factory=list)  # used only by those children
    referrers: list[tuple[str, str]] = field(default_factory=list)  # (repo, digest)
    referrer_blobs: list[str] = field(default_factory=list)


def put_manifest(c: httpx.Client, repo: str, ref: str, body: bytes, media_type: str) -> str:
    r = c.put(f"/v2/{repo}/manifests/{ref}", content=body, headers={"Content-Type": media_type})
    assert r.status_code == 201, (r.status_code, r.text)
    return e2e.sha256_digest(body)


def image(
    c: httpx.Client, repo: str, ref: str | None, layers: list[bytes], cfg: bytes, **extra: object
) -> tuple[str, bytes]:
    for blob in [cfg, *layers]:
        e2e.push_blob(c, repo, blob)
    body = e2e.canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": e2e.MEDIA_OCI_MANIFEST,
            "config": e2e.descriptor(e2e.MEDIA_OCI_CONFIG, cfg),
            "layers": [e2e.descriptor(e2e.MEDIA_OCI_LAYER_GZIP, x) for x in layers],
            **extra,
        }
    )
    return put_manifest(c, repo, ref or e2e.sha256_digest(body), body, e2e.MEDIA_OCI_MANIFEST), body


def push_everything(c: httpx.Client, *, with_index: bool) -> Pushed:
    p = Pushed()
    # a tag moved from one image to the next: the first becomes untagged
    image(c, "compat/app", "v1", [b"L1 shared", b"L2 only in first"], b'{"cfg":1}')
    _, second_body = image(c, "compat/app", "v1", [b"L1 shared", b"L3"], b'{"cfg":2}')
    put_manifest(c, "compat/app", "latest", second_body, e2e.MEDIA_OCI_MANIFEST)
    p.tags += [("compat/app", "v1"), ("compat/app", "latest")]
    # an upload nobody used, and one left unfinished
    e2e.push_blob(c, "compat/app", b"orphan upload")
    assert c.post("/v2/compat/app/blobs/uploads/").status_code == 202
    # a blob mounted into another repository, referenced by no manifest there
    d = e2e.sha256_digest(b"L2 only in first")
    r = c.post(f"/v2/compat/other/blobs/uploads/?mount={d}&from=compat/app")
    assert r.status_code == 201, r.text
    e2e.push_blob(c, "compat/other", b"other orphan")
    # an image deleted through the API
    gone, _ = image(c, "compat/gone", "x", [b"L4 deleted image"], b'{"cfg":4}')
    image(c, "compat/gone", "keep", [b"L5 kept"], b'{"cfg":5}')
    p.tags.append(("compat/gone", "keep"))
    assert c.delete(f"/v2/compat/gone/manifests/{gone}").status_code == 202
    # a blob deleted through the API while a manifest still references it is not our
    # business: skip. A nested repository name:
    image(c, "compat/team/svc", "1.0", [b"L1 shared", b"svc"], b'{"cfg":6}')
    p.tags.append(("compat/team/svc", "1.0"))
    if with_index:
        kids = []
        for arch in ("amd64", "arm64"):
            layer = f"{arch} only".encode()
            digest, body = image(c, "compat/multi", None, [layer], f'{{"arch":"{arch}"}}'.encode())
            kids.append((digest, body))
            p.children.append(("compat/multi", digest))
            p.child_layers += [
                e2e.sha256_digest(layer),
                e2e.sha256_digest(f'{{"arch":"{arch}"}}'.encode()),
            ]
        index = e2e.canonical_json(
            {
                "schemaVersion": 2,
                "mediaType": e2e.MEDIA_OCI_INDEX,
                "manifests": [e2e.descriptor(e2e.MEDIA_OCI_MANIFEST, b) for _, b in kids],
            }
        )
        put_manifest(c, "compat/multi", "v1", index, e2e.MEDIA_OCI_INDEX)
        p.tags.append(("compat/multi", "v1"))
        sig, _ = image(
            c,
            "compat/app",
            None,
            [b"signature payload"],
            EMPTY_CONFIG,
            subject=e2e.descriptor(e2e.MEDIA_OCI_MANIFEST, second_body),
            artifactType="application/vnd.example.signature",
        )
        p.referrers.append(("compat/app", sig))
        p.referrer_blobs.append(e2e.sha256_digest(b"signature payload"))
    return p


def tree(root: Path) -> set[str]:
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        out.update(str(rel / n) for n in dirnames + filenames)
    return out


def blob_entries(digest: str) -> set[str]:
    h = digest.split(":", 1)[1]
    d = V2 / "blobs" / "sha256" / h[:2] / h
    return {str(d), str(d / "data")}


def revision_entries(repo: str, digest: str) -> set[str]:
    d = V2 / "repositories" / repo / "_manifests" / "revisions" / "sha256" / digest.split(":")[1]
    return {str(d), str(d / "link")}


def is_link_of_deleted_blob(entry: str, deleted_blobs: set[str]) -> bool:
    parts = Path(entry).parts
    if "_layers" not in parts:
        return False
    i = parts.index("_layers")
    return len(parts) >= i + 3 and parts[i + 1] == "sha256" and parts[i + 2] in deleted_blobs


def deleted_blob_hexes(deleted: set[str]) -> set[str]:
    out = set()
    for entry in deleted:
        parts = Path(entry).parts
        if len(parts) == 7 and parts[3] == "blobs":  # docker/registry/v2/blobs/sha256/xx/hex
            out.add(parts[6])
    return out


def ours_gc(config: Path, *flags: str) -> str:
    env = e2e.clean_env()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(e2e.REPO_ROOT), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "registry", "garbage-collect", *flags, str(config)]
    return e2e.run(cmd, env=env).stdout


def reference_gc(config: Path, *flags: str) -> str:
    exe = e2e.require_tool("docker-registry", "apt-get install docker-registry")
    return e2e.run(
        [exe, "garbage-collect", *flags, str(config)], env=e2e.clean_env(drop=["AWS_CA_BUNDLE"])
    ).stdout


@dataclass
class Collected:
    before: set[str]
    ours: set[str]  # deleted by ours
    reference: set[str]  # deleted by the reference
    ours_root: Path
    pushed: Pushed
    ours_stdout: str


def collect_both(tmp_path: Path, flags: tuple[str, ...], *, with_index: bool) -> Collected:
    e2e.require_tool("docker-registry", "apt-get install docker-registry")
    ref_root, ours_root = tmp_path / "reference", tmp_path / "ours"
    with e2e.run_reference(ref_root) as reg, reg.client() as c:
        pushed = push_everything(c, with_index=with_index)
    shutil.copytree(ref_root, ours_root, symlinks=True)
    before = tree(ref_root)
    assert before == tree(ours_root)
    cfgs = {}
    for name, root in (("reference", ref_root), ("ours", ours_root)):
        cfgs[name] = tmp_path / f"gc-{name}.yml"
        e2e.write_registry_config(cfgs[name], root, e2e.free_port())
    reference_gc(cfgs["reference"], *flags)
    out = ours_gc(cfgs["ours"], *flags)
    after_ref, after_ours = tree(ref_root), tree(ours_root)
    assert after_ours <= before, f"ours created {sorted(after_ours - before)[:5]}"
    return Collected(before, before - after_ours, before - after_ref, ours_root, pushed, out)


def assert_same_but_links(c: Collected, expected_reference_only: set[str] = frozenset()) -> None:
    assert c.reference, "the reference deleted nothing: the data exercises nothing"
    only_ref = c.reference - c.ours
    assert only_ref == set(expected_reference_only), sorted(only_ref)[:10]
    both_blobs = deleted_blob_hexes(c.ours)
    extra = c.ours - c.reference
    unexplained = sorted(e for e in extra if not is_link_of_deleted_blob(e, both_blobs))
    assert unexplained == []
    assert extra, "expected the stale layer links of the deleted blobs to go too"


def assert_everything_pulls(root: Path, pushed: Pushed) -> None:
    with e2e.run_ours(root) as reg, reg.client() as c:
        for repo, tag in pushed.tags:
            pull(c, repo, tag)


def pull(c: httpx.Client, repo: str, ref: str) -> None:
    r = c.get(
        f"/v2/{repo}/manifests/{ref}", headers={"Accept": ", ".join(e2e.ACCEPT_ALL_MANIFESTS)}
    )
    assert r.status_code == 200, (repo, ref, r.status_code, r.text)
    doc = json.loads(r.content)
    for child in doc.get("manifests", []):
        pull(c, repo, child["digest"])
    for desc in [doc["config"], *doc["layers"]] if "config" in doc else []:
        b = c.get(f"/v2/{repo}/blobs/{desc['digest']}")
        assert b.status_code == 200, (repo, desc["digest"], b.status_code)
        assert e2e.sha256_digest(b.content) == desc["digest"]


def test_offline_gc_deletes_what_the_reference_deletes(tmp_path):
    c = collect_both(tmp_path, (), with_index=True)
    assert_same_but_links(c)
    assert "garbage-collect summary" in c.ours_stdout
    assert_everything_pulls(c.ours_root, c.pushed)


def test_delete_untagged_deletes_what_the_reference_deletes(tmp_path):
    c = collect_both(tmp_path, ("--delete-untagged",), with_index=False)
    assert_same_but_links(c)
    assert_everything_pulls(c.ours_root, c.pushed)


def test_delete_untagged_keeps_index_children_and_referrers_the_reference_deletes(tmp_path):
    c = collect_both(tmp_path, ("--delete-untagged",), with_index=True)
    p = c.pushed
    expected: set[str] = set()
    for repo, digest in p.children + p.referrers:
        expected |= revision_entries(repo, digest) | blob_entries(digest)
    for digest in p.child_layers + p.referrer_blobs:
        expected |= blob_entries(digest)
    # the referrer's empty config is shared with nothing else here
    expected |= blob_entries(e2e.sha256_digest(EMPTY_CONFIG))
    # 2.8 keeps an index child's manifest bytes (the index marks them) but not its revision
    for _, digest in p.children:
        expected -= blob_entries(digest)
    assert_same_but_links(c, expected)
    assert_everything_pulls(c.ours_root, p)
