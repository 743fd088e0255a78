"""API tests: SPEC.md Discovery (22-24) and Management (25-26)."""

from __future__ import annotations

import json

import httpx
import pytest
from conftest import start_app
from oci import OCI_INDEX, OCI_MANIFEST, digest, error_codes, push_blob, push_image

from registry.http.app import AppOptions


async def test_tags_list_sorted_with_n_last_and_link_discovery_22(client):
    for tag in ("b", "a", "c", "10", "1"):
        await push_image(client, "tl", tag)
    r = await client.get("/v2/tl/tags/list")
    assert r.json() == {"name": "tl", "tags": ["1", "10", "a", "b", "c"]}
    assert "link" not in r.headers
    r = await client.get("/v2/tl/tags/list", params={"n": 2})
    assert r.json()["tags"] == ["1", "10"]
    assert r.headers["link"] == '</v2/tl/tags/list?last=10&n=2>; rel="next"'
    r = await client.get("/v2/tl/tags/list", params={"n": 2, "last": "10"})
    assert r.json()["tags"] == ["a", "b"]
    r = await client.get("/v2/tl/tags/list", params={"n": 2, "last": "b"})
    assert r.json()["tags"] == ["c"] and "link" not in r.headers
    # `last` need not exist
    r = await client.get("/v2/tl/tags/list", params={"last": "aa"})
    assert r.json()["tags"] == ["b", "c"]
    r = await client.get("/v2/tl/tags/list", params={"n": 0})
    assert r.json()["tags"] == []


async def test_tags_list_unknown_repo_is_name_unknown_discovery_22(client):
    r = await client.get("/v2/nothing/here/tags/list")
    assert r.status_code == 404 and error_codes(r) == ["NAME_UNKNOWN"]


@pytest.mark.parametrize("n", ["-1", "abc", "1.5", "99999999999", "10001"])
async def test_bad_n_is_pagination_number_invalid_discovery_22_23(client, n):
    await push_image(client, "bn", "v1")
    for path in ("/v2/bn/tags/list", "/v2/_catalog"):
        r = await client.get(path, params={"n": n})
        assert r.status_code == 400
        assert r.json()["errors"][0]["code"] == "PAGINATION_NUMBER_INVALID"


async def test_catalog_sorted_with_n_last_link_discovery_23(client):
    for name in ("zeta", "alpha/one", "alpha", "mid/a/b"):
        await push_image(client, name, "v1")
    await push_blob(client, "layers-only", b"x")  # no manifests: not listed, as the reference
    r = await client.get("/v2/_catalog")
    assert r.json() == {"repositories": ["alpha", "alpha/one", "mid/a/b", "zeta"]}
    r = await client.get("/v2/_catalog", params={"n": 2})
    assert r.json()["repositories"] == ["alpha", "alpha/one"]
    assert r.headers["link"] == '</v2/_catalog?last=alpha%2Fone&n=2>; rel="next"'
    r = await client.get("/v2/_catalog", params={"n": 2, "last": "alpha/one"})
    assert r.json()["repositories"] == ["mid/a/b", "zeta"]


async def test_referrers_list_and_filter_discovery_24(client):
    subject_digest, subject_body = await push_image(client, "ref", "v1")
    await push_blob(client, "ref", b"{}")
    made = {}
    for at in ("application/vnd.example.sbom", "application/vnd.example.sig"):
        doc = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": at,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": digest(b"{}"), "size": 2},
            "layers": [],
            "subject": {"mediaType": OCI_MANIFEST, "digest": subject_digest, "size": len(subject_body)},
            "annotations": {"org.example": at},
        }
        body = json.dumps(doc).encode()
        r = await client.put(f"/v2/ref/manifests/{digest(body)}", content=body, headers={"Content-Type": OCI_MANIFEST})
        assert r.status_code == 201
        made[at] = (digest(body), len(body))
    r = await client.get(f"/v2/ref/referrers/{subject_digest}")
    assert r.status_code == 200
    assert r.headers["content-type"] == OCI_INDEX
    idx = r.json()
    assert idx["schemaVersion"] == 2 and idx["mediaType"] == OCI_INDEX
    got = {m["artifactType"]: m for m in idx["manifests"]}
    assert set(got) == set(made)
    for at, (d, size) in made.items():
        assert got[at]["digest"] == d and got[at]["size"] == size
        assert got[at]["mediaType"] == OCI_MANIFEST
        assert got[at]["annotations"] == {"org.example": at}
    r = await client.get(f"/v2/ref/referrers/{subject_digest}", params={"artifactType": "application/vnd.example.sig"})
    assert [m["digest"] for m in r.json()["manifests"]] == [made["application/vnd.example.sig"][0]]
    assert r.headers["oci-filters-applied"] == "artifactType"
    # none: an empty index, never 404
    r = await client.get(f"/v2/ref/referrers/{digest(b'nothing refers to me')}")
    assert r.status_code == 200 and r.json()["manifests"] == []
    r = await client.get(f"/v2/no-such-repo/referrers/{subject_digest}")
    assert r.status_code == 200 and r.json()["manifests"] == []


async def test_delete_manifest_by_digest_removes_it_and_its_tags_management_25(client):
    d, _ = await push_image(client, "del", "one")
    r = await client.put(
        "/v2/del/manifests/two",
        content=(await client.get(f"/v2/del/manifests/{d}")).content,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert r.status_code == 201
    await push_image(client, "del", "keep", layers=(b"other",))
    r = await client.delete(f"/v2/del/manifests/{d}")
    assert r.status_code == 202
    for ref in (d, "one", "two"):
        r = await client.get(f"/v2/del/manifests/{ref}")
        assert r.status_code == 404 and error_codes(r) == ["MANIFEST_UNKNOWN"]
    assert (await client.get("/v2/del/tags/list")).json()["tags"] == ["keep"]
    r = await client.delete(f"/v2/del/manifests/{d}")
    assert r.status_code == 404


async def test_delete_tag_removes_only_the_tag_management_25(client):
    d, _ = await push_image(client, "dt", "a")
    r = await client.put("/v2/dt/manifests/b", content=(await client.get("/v2/dt/manifests/a")).content, headers={"Content-Type": OCI_MANIFEST})
    r = await client.delete("/v2/dt/manifests/a")
    assert r.status_code == 202
    assert (await client.get("/v2/dt/manifests/a")).status_code == 404
    assert (await client.get("/v2/dt/manifests/b")).status_code == 200
    assert (await client.get(f"/v2/dt/manifests/{d}")).status_code == 200
    assert (await client.delete("/v2/dt/manifests/a")).status_code == 404


async def test_delete_blob_unlinks_from_repo_management_25(client):
    d = await push_blob(client, "db", b"bye")
    await push_blob(client, "db2", b"bye")
    r = await client.delete(f"/v2/db/blobs/{d}")
    assert r.status_code == 202
    assert (await client.head(f"/v2/db/blobs/{d}")).status_code == 404
    assert (await client.get(f"/v2/db2/blobs/{d}")).content == b"bye"
    r = await client.delete(f"/v2/db/blobs/{d}")
    assert r.status_code == 404 and error_codes(r) == ["BLOB_UNKNOWN"]


async def test_deletion_disabled_answers_405_unsupported_management_25(nursery, tmp_path):
    url, _ = await start_app(nursery, str(tmp_path), AppOptions(delete_enabled=False))
    async with httpx.AsyncClient(base_url=url) as client:
        d, _ = await push_image(client, "nd", "v1")
        for path in (f"/v2/nd/manifests/{d}", "/v2/nd/manifests/v1", f"/v2/nd/blobs/{digest(b'layer-one')}"):
            r = await client.delete(path)
            assert r.status_code == 405
            assert error_codes(r) == ["UNSUPPORTED"]
        assert (await client.get("/v2/nd/manifests/v1")).status_code == 200


async def test_read_only_mode_refuses_writes_keeps_reads_management_26(nursery, tmp_path):
    root = str(tmp_path)
    url, _ = await start_app(nursery, root)
    async with httpx.AsyncClient(base_url=url) as client:
        d, _ = await push_image(client, "ro", "v1")
    url_ro, _ = await start_app(nursery, root, AppOptions(readonly=True, delete_enabled=True))
    async with httpx.AsyncClient(base_url=url_ro) as client:
        assert (await client.get("/v2/ro/manifests/v1")).status_code == 200
        assert (await client.get(f"/v2/ro/blobs/{digest(b'layer-one')}")).status_code == 200
        for method, path in (
            ("POST", "/v2/ro/blobs/uploads/"),
            ("PUT", "/v2/ro/manifests/v2"),
            ("DELETE", f"/v2/ro/manifests/{d}"),
            ("PATCH", "/v2/ro/blobs/uploads/00000000-0000-4000-8000-000000000000"),
        ):
            r = await client.request(method, path, content=b"{}")
            assert r.status_code == 405, (method, path)
            assert error_codes(r) == ["UNSUPPORTED"]
