"""The web UI's server side (issue 18, registry/ui/API.md): the JSON API's answers as tables
against pushed content, access filtering (htpasswd + policy.access, token auth), the
cross-site rules of the actions, ``ui.enabled``, the ``/`` redirect, and static serving.

Every app here is built by ``server.build_app`` from a real Config and served by hypercorn
over a real socket; content is pushed through the v2 API.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import httpx
import pytest
import trio
from conftest import serve_asgi
from gc_support import push_image as storage_push_image
from hypercorn.config import Config as HyperConfig
from oci import OCI_EMPTY, OCI_INDEX, OCI_MANIFEST, descriptor, digest, push_blob, push_image
from s3_support import registry_env as s3_registry_env
from test_auth_htpasswd import write_htpasswd
from test_auth_token import ISSUER, REALM, SERVICE, Issuer, bearer, repo
from test_notifications import Receiver, endpoint_env, start

from registry.config import load_config
from registry.drivers.base import Unavailable
from registry.drivers.memory import MemoryDriver
from registry.server import build_app
from registry.storage.store import Storage
from registry.ui.headers import CSP
from registry.ui.index import CATALOG_TTL, RepoIndex
from registry.ui.model import rfc3339
from registry.ui.static import hashed_name, rewrite_references

UI = "/ui/api/v1"
ACTION = {"X-Registry-UI": "1"}
HOSTILE = '<script>alert("x")</script> \' " & \u00e9\u4e2d\U0001f600'
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z$")
CONFIG_CREATED = '{"architecture":"amd64","os":"linux","created":"2024-05-06T07:08:09.123456789Z",' \
    '"history":[{"created":"2024-05-06T07:08:09Z","created_by":"/bin/sh -c #(nop) ADD <x>"},' \
    '{"created_by":"CMD [\\"sh\\"]","empty_layer":true,"comment":"' + HOSTILE.replace('"', '\\"') \
    + '"}]}'


async def serve_registry(
    nursery: trio.Nursery, tmp_path: Path, env: dict[str, str] | None = None,
    yaml: str | None = None, static: Path | None = None,
) -> str:
    """build_app from a Config (env overrides + optional YAML) served on 127.0.0.1:0."""
    cfg = None
    if yaml is not None:
        cfg = tmp_path / "config.yml"
        cfg.write_text(yaml)
    env = env or {}
    storage = {} if "REGISTRY_STORAGE" in env else {
        "REGISTRY_STORAGE": "filesystem",
        "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": str(tmp_path / "storage"),
    }
    environ = {
        **storage,
        "REGISTRY_STORAGE_DELETE_ENABLED": "true",
        "REGISTRY_LOG_ACCESSLOG_DISABLED": "true",
        **env,
    }
    config, _ = load_config(str(cfg) if cfg else None, environ)
    return await serve_asgi(nursery, build_app(config, ui_static=static))


def write_static(tmp_path: Path) -> Path:
    static = tmp_path / "static"
    static.mkdir()
    (static / "index.html").write_text(
        '<!doctype html><html><head><link rel="stylesheet" href="/ui/assets/app.css">'
        '<script type="module" src="/ui/assets/app.js"></script></head><body></body></html>'
    )
    (static / "app.js").write_text('import {x} from "./util.js"; console.log(x);\n')
    (static / "util.js").write_text("export const x = 1;\n")
    (static / "app.css").write_text("body { color: black }\n")
    return static


async def push_artifact(c: httpx.AsyncClient, name: str, subject: tuple[str, bytes],
                        annotations: dict[str, str]) -> str:
    """An OCI 1.1 artifact (empty config, one blob) whose subject is ``subject``."""
    await push_blob(c, name, b"{}")
    await push_blob(c, name, b"signature bytes")
    body = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.signature",
        "config": descriptor(OCI_EMPTY, b"{}"),
        "layers": [descriptor("application/octet-stream", b"signature bytes")],
        "subject": descriptor(OCI_MANIFEST, subject[1]),
        "annotations": annotations,
    }).encode()
    r = await c.put(f"/v2/{name}/manifests/{digest(body)}", content=body,
                    headers={"Content-Type": OCI_MANIFEST})
    assert r.status_code == 201, r.text
    return digest(body)


async def push_two_platforms(c: httpx.AsyncClient, name: str, tag: str) -> tuple[str, list[str]]:
    children = []
    for arch in ("amd64", "arm64"):
        d, body = await push_image(
            c, name, None, layers=(f"{arch} layer".encode(),),
            config=json.dumps({"architecture": arch, "os": "linux"}).encode())
        children.append((d, body, arch))
    index = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [descriptor(OCI_MANIFEST, body, platform={
            "os": "linux", "architecture": arch, **({"variant": "v8"} if arch == "arm64" else {})
        }) for _, body, arch in children],
    }).encode()
    r = await c.put(f"/v2/{name}/manifests/{tag}", content=index,
                    headers={"Content-Type": OCI_INDEX})
    assert r.status_code == 201, r.text
    return digest(index), [d for d, _, _ in children]


class Pushed:
    """What the ``content`` fixture pushed, for the tables to compare against."""

    url: str
    v1: tuple[str, bytes]
    v2: tuple[str, bytes]
    index: str
    children: list[str]
    artifact: str


SHARED = b"shared base layer " * 100
ONLY_V1 = b"v1 only layer"
ONLY_V2 = b"v2 only layer, longer"
# Distinct blobs the fixture stores: v1 (config, 2 layers, manifest) 4, v2 (config, its own
# layer, manifest) 3, the artifact (empty config, blob, manifest) 3, the index (2 x config,
# layer, manifest, and the index) 7.
BLOBS_PUSHED = 17


@pytest.fixture
async def content(nursery: trio.Nursery, tmp_path: Path) -> Pushed:
    p = Pushed()
    p.url = await serve_registry(nursery, tmp_path)
    async with httpx.AsyncClient(base_url=p.url, timeout=30) as c:
        p.v1 = await push_image(c, "team/app", "v1", layers=(SHARED, ONLY_V1),
                                config=CONFIG_CREATED.encode(),
                                extra={"annotations": {"org.example.note": HOSTILE}})
        p.v2 = await push_image(c, "team/app", "v2", layers=(SHARED, ONLY_V2))
        p.index, p.children = await push_two_platforms(c, "multi", "latest")
        p.artifact = await push_artifact(c, "team/app", p.v1, {"note": HOSTILE})
    return p


def manifest_size(body: bytes) -> int:
    doc = json.loads(body)
    return len(body) + doc["config"]["size"] + sum(x["size"] for x in doc["layers"])


# --- the JSON answers, as tables -------------------------------------------------------------


async def test_repositories_list_counts_tags_sizes_and_last_push(content: Pushed) -> None:
    async with httpx.AsyncClient(base_url=content.url) as c:
        r = await c.get(f"{UI}/repositories")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.headers["cache-control"] == "no-store"
    body = r.json()
    rows = {x["name"]: x for x in body["repositories"]}
    assert list(rows) == ["multi", "team/app"]
    assert body["next"] is None
    app = rows["team/app"]
    assert app["tags"] == 2
    # Each blob once: both manifests and configs, the shared layer once, two own layers
    # (the artifact is untagged: not in the total).
    v1, v2 = json.loads(content.v1[1]), json.loads(content.v2[1])
    assert app["size"] == (len(content.v1[1]) + len(content.v2[1]) + v1["config"]["size"]
                           + v2["config"]["size"] + len(SHARED) + len(ONLY_V1) + len(ONLY_V2))
    assert RFC3339_UTC.match(app["last_push"]), app
    assert rows["multi"]["tags"] == 1


async def test_repositories_paginate_and_filter(content: Pushed) -> None:
    async with httpx.AsyncClient(base_url=content.url) as c:
        first = (await c.get(f"{UI}/repositories", params={"n": "1"})).json()
        second = (await c.get(f"{UI}/repositories",
                              params={"n": "1", "last": first["next"]})).json()
        filtered = (await c.get(f"{UI}/repositories", params={"q": "APP"})).json()
        none = (await c.get(f"{UI}/repositories", params={"q": "zzz"})).json()
        bad = await c.get(f"{UI}/repositories", params={"n": "-1"})
    assert [x["name"] for x in first["repositories"]] == ["multi"]
    assert first["next"] == "multi"
    assert [x["name"] for x in second["repositories"]] == ["team/app"]
    assert second["next"] is None
    assert [x["name"] for x in filtered["repositories"]] == ["team/app"]
    assert none == {"repositories": [], "next": None}
    assert bad.status_code == 400
    assert bad.json()["errors"][0]["code"] == "PAGINATION_NUMBER_INVALID"


async def test_repository_tags_with_sizes_shared_layers_created_and_platforms(
    content: Pushed,
) -> None:
    async with httpx.AsyncClient(base_url=content.url) as c:
        app = (await c.get(f"{UI}/repositories/team/app")).json()
        multi = (await c.get(f"{UI}/repositories/multi")).json()
    assert app["name"] == "team/app" and app["can_delete"] is True
    rows = {t["tag"]: t for t in app["tags"]}
    assert list(rows) == ["v1", "v2"]
    expected = {
        "v1": (content.v1, len(SHARED), "2024-05-06T07:08:09.123456Z"),
        "v2": (content.v2, len(SHARED), None),
    }
    for tag, ((d, body), shared, created) in expected.items():
        row = rows[tag]
        assert row["digest"] == d
        assert row["media_type"] == OCI_MANIFEST
        assert row["artifact_type"] is None
        assert row["size"] == manifest_size(body)
        assert row["shared_size"] == shared
        assert row["created"] == created
        assert row["platforms"] == []
    (latest,) = multi["tags"]
    assert latest["digest"] == content.index and latest["media_type"] == OCI_INDEX
    assert latest["platforms"] == [
        {"os": "linux", "architecture": "amd64", "variant": None, "digest": content.children[0]},
        {"os": "linux", "architecture": "arm64", "variant": "v8", "digest": content.children[1]},
    ]
    assert latest["shared_size"] == 0
    assert latest["size"] > sum(len(f"{a} layer") for a in ("amd64", "arm64"))


async def test_manifest_detail_layers_history_referrers_and_delete_preview(
    content: Pushed,
) -> None:
    d, body = content.v1
    async with httpx.AsyncClient(base_url=content.url) as c:
        r = await c.get(f"{UI}/repositories/team/app/manifests/{d}")
        art = (await c.get(f"{UI}/repositories/team/app/manifests/{content.artifact}")).json()
        idx = (await c.get(f"{UI}/repositories/multi/manifests/{content.index}")).json()
    assert r.status_code == 200, r.text
    m = r.json()
    doc = json.loads(body)
    assert (m["digest"], m["media_type"], m["size"]) == (d, OCI_MANIFEST, len(body))
    assert m["tags"] == ["v1"]
    assert m["config"] == {"digest": doc["config"]["digest"], "size": doc["config"]["size"],
                           "media_type": "application/vnd.oci.image.config.v1+json"}
    assert [x["digest"] for x in m["layers"]] == [digest(SHARED), digest(ONLY_V1)]
    assert [x["size"] for x in m["layers"]] == [len(SHARED), len(ONLY_V1)]
    assert m["manifests"] == [] and m["subject"] is None
    assert (m["os"], m["architecture"]) == ("linux", "amd64")
    assert m["created"] == "2024-05-06T07:08:09.123456Z"
    assert m["history"] == [
        {"created": "2024-05-06T07:08:09Z", "created_by": "/bin/sh -c #(nop) ADD <x>",
         "empty_layer": False, "comment": None},
        {"created": None, "created_by": 'CMD ["sh"]', "empty_layer": True, "comment": HOSTILE},
    ]
    assert m["referrers"] == [{
        "digest": content.artifact, "artifact_type": "application/vnd.example.signature",
        "media_type": OCI_MANIFEST, "size": m["referrers"][0]["size"],
        "annotations": {"note": HOSTILE},
    }]
    assert m["delete_preview"] == {"tags": ["v1"], "referrers": [content.artifact],
                                   "children": []}
    assert art["subject"] == {"digest": d, "media_type": OCI_MANIFEST}
    assert art["artifact_type"] == "application/vnd.example.signature"
    assert art["tags"] == [] and art["history"] == [] and art["created"] is None
    assert [x["digest"] for x in idx["manifests"]] == content.children
    assert idx["manifests"][1]["platform"] == {"os": "linux", "architecture": "arm64",
                                               "variant": "v8"}
    assert idx["delete_preview"] == {"tags": ["latest"], "referrers": [],
                                     "children": content.children}


async def test_hostile_strings_come_back_verbatim_as_json_strings(content: Pushed) -> None:
    d, _ = content.v1
    async with httpx.AsyncClient(base_url=content.url) as c:
        r = await c.get(f"{UI}/repositories/team/app/manifests/{d}")
    assert r.json()["annotations"] == {"org.example.note": HOSTILE}
    # On the wire: a JSON string (no raw markup outside a string can break a parser).
    assert r.headers["content-type"] == "application/json"
    assert "<script>" in r.text and json.loads(r.text)["annotations"]["org.example.note"] == HOSTILE


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        (f"{UI}/repositories/nope", 404, "NAME_UNKNOWN"),
        (f"{UI}/repositories/team/app/manifests/sha256:{'0' * 64}", 404, "MANIFEST_UNKNOWN"),
        (f"{UI}/repositories/nope/manifests/sha256:{'0' * 64}", 404, "NAME_UNKNOWN"),
        (f"{UI}/repositories/team/app/manifests/sha256:zz", 400, "DIGEST_INVALID"),
        (f"{UI}/repositories/Bad..Name", 400, "NAME_INVALID"),
        (f"{UI}/nothing-here", 404, "UNSUPPORTED"),
    ],
)
async def test_bad_input_gets_the_oci_error(content: Pushed, path: str, status: int,
                                            code: str) -> None:
    async with httpx.AsyncClient(base_url=content.url) as c:
        r = await c.get(path)
    assert r.status_code == status, r.text
    assert r.json()["errors"][0]["code"] == code
    assert r.headers["content-security-policy"] == CSP


async def test_info_reports_storage_gc_and_the_user(content: Pushed) -> None:
    async with httpx.AsyncClient(base_url=content.url) as c:
        first = (await c.get(f"{UI}/info")).json()
        # Nothing walked the store yet, and this request did not either: it asked for a walk.
        assert first["storage"] == {"driver": "filesystem", "bytes": None, "blobs": None,
                                    "computed_at": None, "computing": True}
        assert first["uploads_in_progress"] is None
        with trio.fail_after(30):
            while True:  # the totals are computed in the background, never on a request:
                info = (await c.get(f"{UI}/info")).json()  # this asks for fresh ones
                if not info["storage"]["computing"]:
                    break
                await trio.sleep(0.1)
        r = await c.post(f"{UI}/gc", headers=ACTION)
        assert r.status_code == 202, r.text
        assert r.json() == {"started": True}
        with trio.fail_after(60):
            while not (info2 := (await c.get(f"{UI}/info")).json())["gc"]["last_runs"]:
                await trio.sleep(0.05)
    assert info["version"] and info["auth"] == "none" and info["delete_enabled"] is True
    storage = info["storage"]
    assert storage["driver"] == "filesystem"
    assert RFC3339_UTC.match(storage["computed_at"])
    assert storage["blobs"] == BLOBS_PUSHED
    assert storage["bytes"] > len(SHARED)
    assert info["uploads_in_progress"] == 0
    assert info["user"] == {"name": None, "can_delete": True, "can_gc": True}
    (run,) = info2["gc"]["last_runs"]
    assert RFC3339_UTC.match(run["started"]) and RFC3339_UTC.match(run["finished"])
    assert run["error"] is None and run["blobs_deleted"] >= 0


# --- actions and their cross-site rules ------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 403),  # no X-Registry-UI
        ({**ACTION, "Origin": "https://evil.example"}, 403),
        ({**ACTION, "Sec-Fetch-Site": "cross-site"}, 403),
        ({**ACTION, "Origin": "null"}, 403),
        ({**ACTION, "Sec-Fetch-Site": "same-origin"}, 202),
        (ACTION, 202),  # no Origin (older clients, curl): the custom header is enough
    ],
)
async def test_delete_tag_cross_site_rules(content: Pushed, headers: dict[str, str],
                                           status: int) -> None:
    async with httpx.AsyncClient(base_url=content.url) as c:
        r = await c.delete(f"{UI}/repositories/team/app/tags/v2", headers=headers)
        after = await c.get("/v2/team/app/manifests/v2")
        by_digest = await c.get(f"/v2/team/app/manifests/{content.v2[0]}")
    assert r.status_code == status, r.text
    assert by_digest.status_code == 200  # only ever the tag goes
    if status == 403:
        assert r.json()["errors"][0]["code"] == "DENIED"
        assert after.status_code == 200
    else:
        assert after.status_code == 404


async def test_same_origin_with_origin_header_deletes_a_manifest(content: Pushed) -> None:
    d = content.v1[0]
    async with httpx.AsyncClient(base_url=content.url) as c:
        origin = content.url.rstrip("/")
        r = await c.delete(f"{UI}/repositories/team/app/manifests/{d}",
                           headers={**ACTION, "Origin": origin, "Sec-Fetch-Site": "same-origin"})
        assert r.status_code == 202, r.text
        assert (await c.get(f"/v2/team/app/manifests/{d}")).status_code == 404
        assert (await c.get("/v2/team/app/manifests/v1")).status_code == 404
        listing = (await c.get(f"{UI}/repositories/team/app")).json()
        summary = (await c.get(f"{UI}/repositories")).json()
    assert [t["tag"] for t in listing["tags"]] == ["v2"]
    # this worker's own delete is seen by the catalog's index at once
    assert {x["name"]: x["tags"] for x in summary["repositories"]}["team/app"] == 1


async def test_delete_disabled_is_405(nursery: trio.Nursery, tmp_path: Path) -> None:
    url = await serve_registry(nursery, tmp_path, {"REGISTRY_STORAGE_DELETE_ENABLED": "false"})
    async with httpx.AsyncClient(base_url=url) as c:
        await push_image(c, "a", "v1")
        r = await c.delete(f"{UI}/repositories/a/tags/v1", headers=ACTION)
        info = (await c.get(f"{UI}/info")).json()
        tags = (await c.get(f"{UI}/repositories/a")).json()
        still = await c.get("/v2/a/manifests/v1")
    assert r.status_code == 405 and r.json()["errors"][0]["code"] == "UNSUPPORTED"
    assert info["delete_enabled"] is False and info["user"]["can_delete"] is False
    assert tags["can_delete"] is False
    assert still.status_code == 200


async def test_proxied_repositories_cannot_be_deleted_as_in_the_v2_api(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A pull-through cache's repository: the UI's deletes answer what the v2 API answers
    (405 UNSUPPORTED), its can_delete is false, and nothing leaves storage; a local
    repository beside it stays deletable."""
    from proxy_support import start_upstream

    up, _ = await start_upstream(nursery, str(tmp_path / "upstream"))
    async with httpx.AsyncClient(base_url=up.url) as c:
        d_up, _ = await push_image(c, "lib/app", "v1", layers=(b"upstream layer",))
    yaml = f"version: 0.1\nproxies:\n  - {{prefix: hub, remoteurl: '{up.url}', ttl: 0}}\n"
    url = await serve_registry(nursery, tmp_path, yaml=yaml)
    async with httpx.AsyncClient(base_url=url) as c:
        assert (await c.get("/v2/hub/lib/app/manifests/v1")).status_code == 200  # now cached
        await push_image(c, "local", "v1")
        v2 = await c.delete(f"/v2/hub/lib/app/manifests/{d_up}")
        cached = (await c.get(f"{UI}/repositories/hub/lib/app")).json()
        r_tag = await c.delete(f"{UI}/repositories/hub/lib/app/tags/v1", headers=ACTION)
        r_man = await c.delete(f"{UI}/repositories/hub/lib/app/manifests/{d_up}", headers=ACTION)
        local = (await c.get(f"{UI}/repositories/local")).json()
        r_local = await c.delete(f"{UI}/repositories/local/tags/v1", headers=ACTION)
    assert v2.status_code == 405 and v2.json()["errors"][0]["code"] == "UNSUPPORTED"
    assert [t["tag"] for t in cached["tags"]] == ["v1"] and cached["can_delete"] is False
    for r in (r_tag, r_man):
        assert r.status_code == 405 and r.json()["errors"][0]["code"] == "UNSUPPORTED"
    assert local["can_delete"] is True and r_local.status_code == 202
    # Nothing of the cached repository left storage (the proxy's own link files).
    repo = tmp_path / "storage/docker/registry/v2/repositories/hub/lib/app/_manifests"
    assert (repo / "tags/v1/current/link").exists()
    assert (repo / f"revisions/sha256/{d_up.split(':')[1]}/link").exists()


# --- access ----------------------------------------------------------------------------------

POLICY_YAML = """
version: 0.1
auth:
  htpasswd: {realm: UI, path: %s}
policy:
  access:
    users:
      alice:
        - {actions: [pull, push, delete], repositories: [alice]}
      bob:
        - {actions: [pull, push], repositories: [bob]}
      admin: [pull, push, delete]
"""


async def test_htpasswd_user_never_sees_another_users_repository(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    pw = tmp_path / "htpasswd"
    write_htpasswd(pw, {"alice": "a", "bob": "b", "admin": "x"})
    url = await serve_registry(nursery, tmp_path, yaml=POLICY_YAML % pw,
                               static=write_static(tmp_path))
    async with httpx.AsyncClient(base_url=url, auth=("admin", "x")) as c:
        d_alice, _ = await push_image(c, "alice/app", "v1", layers=(b"a",))
        d_bob, _ = await push_image(c, "bob/app", "v1", layers=(b"b",))
    async with httpx.AsyncClient(base_url=url) as anon:
        for path in (f"{UI}/repositories", "/ui/", f"{UI}/info", "/ui/assets/app.js"):
            r = await anon.get(path)
            assert r.status_code == 401, path
            assert r.headers["www-authenticate"] == 'Basic realm="UI"'
            assert r.headers["content-security-policy"] == CSP
    async with httpx.AsyncClient(base_url=url, auth=("alice", "a")) as c:
        listing = (await c.get(f"{UI}/repositories")).json()
        assert [x["name"] for x in listing["repositories"]] == ["alice/app"]
        assert (await c.get(f"{UI}/repositories", params={"q": "bob"})).json()[
            "repositories"] == []
        for path in (f"{UI}/repositories/bob/app", f"{UI}/repositories/bob/app/manifests/{d_bob}"):
            r = await c.get(path)
            assert r.status_code == 404, path
            assert r.json()["errors"][0]["code"] == "NAME_UNKNOWN"
        r = await c.delete(f"{UI}/repositories/bob/app/tags/v1", headers=ACTION)
        assert r.status_code == 404 and r.json()["errors"][0]["code"] == "NAME_UNKNOWN"
        mine = (await c.get(f"{UI}/repositories/alice/app")).json()
        assert mine["can_delete"] is True
        info = (await c.get(f"{UI}/info")).json()
        assert info["user"] == {"name": "alice", "can_delete": False, "can_gc": False}
        assert info["auth"] == "htpasswd"
        assert (await c.post(f"{UI}/gc", headers=ACTION)).status_code == 403
        assert (await c.get("/ui/repositories/alice/app")).status_code == 200
    async with httpx.AsyncClient(base_url=url, auth=("bob", "b")) as c:
        mine = (await c.get(f"{UI}/repositories/bob/app")).json()
        assert mine["can_delete"] is False  # pull and push, no delete
        r = await c.delete(f"{UI}/repositories/bob/app/tags/v1", headers=ACTION)
        assert r.status_code == 403 and r.json()["errors"][0]["code"] == "DENIED"
        r = await c.get(f"{UI}/repositories/alice/app/manifests/{d_alice}")
        assert r.status_code == 404


PUBLIC_YAML = """
version: 0.1
auth:
  htpasswd: {realm: UI, path: %s}
policy:
  access:
    anonymous:
      - {actions: [pull], repositories: [public]}
    users:
      alice: [pull, push, delete]
"""


async def test_public_registry_anonymous_browses_what_anonymous_may_pull(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """htpasswd + ``policy.access.anonymous: [pull]``: the UI follows the v2 API's policy,
    and /ui/login asks for credentials, then sends the browser back to the page."""
    pw = tmp_path / "htpasswd"
    write_htpasswd(pw, {"alice": "a"})
    url = await serve_registry(nursery, tmp_path, yaml=PUBLIC_YAML % pw,
                               static=write_static(tmp_path))
    async with httpx.AsyncClient(base_url=url, auth=("alice", "a")) as c:
        d_pub, _ = await push_image(c, "public/app", "v1", layers=(b"p",))
        await push_image(c, "private/app", "v1", layers=(b"q",))
    async with httpx.AsyncClient(base_url=url) as anon:
        assert (await anon.get(f"/v2/public/app/manifests/{d_pub}")).status_code == 200
        for path in ("/ui/", "/ui/repositories/public/app", "/ui/assets/app.js"):
            assert (await anon.get(path)).status_code == 200, path
        listing = (await anon.get(f"{UI}/repositories")).json()
        assert [x["name"] for x in listing["repositories"]] == ["public/app"]
        repo = (await anon.get(f"{UI}/repositories/public/app")).json()
        assert [t["tag"] for t in repo["tags"]] == ["v1"] and repo["can_delete"] is False
        r = await anon.get(f"{UI}/repositories/public/app/manifests/{d_pub}")
        assert r.status_code == 200
        r = await anon.get(f"{UI}/repositories/private/app")
        assert r.status_code == 404 and r.json()["errors"][0]["code"] == "NAME_UNKNOWN"
        info = (await anon.get(f"{UI}/info")).json()
        assert info["user"] == {"name": None, "can_delete": False, "can_gc": False}
        assert info["auth"] == "htpasswd"
        r = await anon.delete(f"{UI}/repositories/public/app/tags/v1", headers=ACTION)
        assert r.status_code == 403 and r.json()["errors"][0]["code"] == "DENIED"
        assert (await anon.post(f"{UI}/gc", headers=ACTION)).status_code == 403
        # Wrong credentials are refused even where anonymous may look (as the v2 API).
        assert (await anon.get(f"{UI}/info", auth=("alice", "bad"))).status_code == 401
        # The sign-in link: 401 with the challenge, so the browser asks...
        login = await anon.get("/ui/login", params={"next": "/ui/repositories/public/app"})
        assert login.status_code == 401
        assert login.headers["www-authenticate"] == 'Basic realm="UI"'
        # ... then back to the page, and only to a page of this UI.
        for target, back in [
            ("/ui/repositories/public/app?x=1", "/ui/repositories/public/app?x=1"),
            (None, "/ui/"), ("https://evil.example/ui/", "/ui/"), ("//evil.example/ui/", "/ui/"),
            ("/ui/\\evil", "/ui/"), ("/ui/login", "/ui/"), ("/ui/api/v1/info", "/ui/"),
            ("/v2/_catalog", "/ui/"),
        ]:
            r = await anon.get("/ui/login", params={"next": target} if target else None,
                               auth=("alice", "a"))
            assert (r.status_code, r.headers["location"]) == (302, back), target
    async with httpx.AsyncClient(base_url=url, auth=("alice", "a")) as c:
        listing = (await c.get(f"{UI}/repositories")).json()
        assert [x["name"] for x in listing["repositories"]] == ["private/app", "public/app"]
        assert (await c.get(f"{UI}/info")).json()["user"]["name"] == "alice"


async def test_token_auth_filters_by_the_tokens_access_claim(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    issuer = Issuer(tmp_path)
    url = await serve_registry(nursery, tmp_path, {
        "REGISTRY_AUTH": "token", "REGISTRY_AUTH_TOKEN_REALM": REALM,
        "REGISTRY_AUTH_TOKEN_SERVICE": SERVICE, "REGISTRY_AUTH_TOKEN_ISSUER": ISSUER,
        "REGISTRY_AUTH_TOKEN_ROOTCERTBUNDLE": str(issuer.bundle),
    }, static=write_static(tmp_path))
    pusher = issuer.token([repo("a", "pull", "push"), repo("b", "pull", "push")])
    async with httpx.AsyncClient(base_url=url, headers=bearer(pusher)) as c:
        await push_image(c, "a", "v1", layers=(b"a",))
        d_b, _ = await push_image(c, "b", "v1", layers=(b"b",))
    only_a = issuer.token([repo("a", "pull")], sub="reader")
    async with httpx.AsyncClient(base_url=url) as anon:
        r = await anon.get(f"{UI}/repositories")
        assert r.status_code == 401 and r.json()["errors"][0]["code"] == "UNAUTHORIZED"
        # The page and its files need no token: the page asks the user for one.
        assert (await anon.get("/ui/")).status_code == 200
        assert (await anon.get("/ui/assets/app.js")).status_code == 200
    async with httpx.AsyncClient(base_url=url, headers=bearer(only_a)) as c:
        listing = (await c.get(f"{UI}/repositories")).json()
        assert [x["name"] for x in listing["repositories"]] == ["a"]
        for path in (f"{UI}/repositories/b", f"{UI}/repositories/b/manifests/{d_b}"):
            r = await c.get(path)
            assert r.status_code == 404 and r.json()["errors"][0]["code"] == "NAME_UNKNOWN"
        info = (await c.get(f"{UI}/info")).json()
        assert info["auth"] == "token"
        assert info["user"] == {"name": "reader", "can_delete": False, "can_gc": False}
        assert (await c.get(f"{UI}/repositories/a")).json()["can_delete"] is False


# --- ui.enabled, the / redirect, static serving ----------------------------------------------


async def test_ui_disabled_answers_404_as_an_unknown_path(nursery: trio.Nursery,
                                                          tmp_path: Path) -> None:
    url = await serve_registry(nursery, tmp_path, {"REGISTRY_UI_ENABLED": "false"},
                               static=write_static(tmp_path))
    async with httpx.AsyncClient(base_url=url) as c:
        for path in ("/ui/", f"{UI}/info", f"{UI}/repositories", "/ui/assets/app.js"):
            r = await c.get(path)
            assert r.status_code == 404, path
            assert "content-security-policy" not in r.headers
        r = await c.get("/", headers={"Accept": "text/html"})
        assert r.status_code == 200 and r.content == b""


@pytest.mark.parametrize(
    ("accept", "status"),
    [("text/html,application/xhtml+xml,*/*;q=0.8", 302), ("*/*", 200), (None, 200),
     ("application/json", 200)],
)
async def test_root_redirects_only_browsers(nursery: trio.Nursery, tmp_path: Path,
                                            accept: str | None, status: int) -> None:
    url = await serve_registry(nursery, tmp_path)
    headers = {"Accept": accept} if accept else {}
    async with httpx.AsyncClient(base_url=url) as c:
        r = await c.get("/", headers=headers)
    assert r.status_code == status
    if status == 302:
        assert r.headers["location"] == "/ui/"


async def test_static_serving_headers(nursery: trio.Nursery, tmp_path: Path) -> None:
    static = write_static(tmp_path)
    url = await serve_registry(nursery, tmp_path, static=static)
    app_js = (static / "app.js").read_bytes()
    hashed = f"app.{hashlib.sha256(app_js).hexdigest()[:12]}.js"
    async with httpx.AsyncClient(base_url=url) as c:
        pages = [await c.get(p) for p in ("/ui/", "/ui/registry", "/ui/repositories/a/b/c",
                                          f"/ui/repositories/a/manifests/sha256:{'0' * 64}",
                                          "/ui/no/such/page")]
        hashed_r = await c.get(f"/ui/assets/{hashed}")
        plain = await c.get("/ui/assets/app.js")
        module = await c.get("/ui/assets/util.js")
        head = await c.head(f"/ui/assets/{hashed}")
        again = await c.get(f"/ui/assets/{hashed}",
                            headers={"If-None-Match": hashed_r.headers["etag"]})
        missing = await c.get("/ui/assets/nope.js")
        post = await c.post("/ui/")
    for r in pages:
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/html; charset=utf-8"
        assert r.headers["cache-control"] == "no-cache"
        assert r.headers["content-security-policy"] == CSP
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "same-origin"
        assert f'src="/ui/assets/{hashed}"' in r.text
        assert "/ui/assets/app.js" not in r.text
        assert re.search(r'href="/ui/assets/app\.[0-9a-f]{12}\.css"', r.text)
    assert pages[0].content == pages[1].content
    assert hashed_r.status_code == 200 and hashed_r.content == app_js
    assert hashed_r.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert hashed_r.headers["content-type"] == "text/javascript; charset=utf-8"
    assert hashed_r.headers["content-security-policy"] == CSP
    assert hashed_r.headers["x-content-type-options"] == "nosniff"
    assert plain.status_code == 200 and plain.headers["cache-control"] == "no-cache"
    assert module.status_code == 200 and module.content == (static / "util.js").read_bytes()
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(app_js))
    assert again.status_code == 304 and again.content == b""
    assert missing.status_code == 404 and missing.json()["errors"][0]["code"] == "UNSUPPORTED"
    assert post.status_code == 405


async def test_without_front_end_files_pages_are_404(nursery: trio.Nursery,
                                                     tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    url = await serve_registry(nursery, tmp_path, static=empty)
    async with httpx.AsyncClient(base_url=url) as c:
        r = await c.get("/ui/")
        info = await c.get(f"{UI}/info")
    assert r.status_code == 404 and r.json()["errors"][0]["code"] == "UNSUPPORTED"
    assert info.status_code == 200


async def test_ui_deletes_send_the_v2_delete_events_and_ui_reads_send_none(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    receiver = Receiver()
    rurl = await start(nursery, receiver)
    url = await serve_registry(nursery, tmp_path, endpoint_env(rurl))
    async with httpx.AsyncClient(base_url=url) as c:
        d, _ = await push_image(c, "team/app", "v1", layers=(b"layer",))
        await push_image(c, "team/app", "v2", layers=(b"layer",))
        pushes = 6  # each push_image: config, layer, manifest
        assert len(await receiver.wait_for(pushes)) == pushes
        assert (await c.get(f"{UI}/repositories/team/app/manifests/{d}")).status_code == 200
        assert (await c.get(f"{UI}/repositories/team/app")).status_code == 200
        assert (await c.delete(f"{UI}/repositories/team/app/tags/v2",
                               headers=ACTION)).status_code == 202
        assert (await c.delete(f"{UI}/repositories/team/app/manifests/{d}",
                               headers=ACTION)).status_code == 202
    events = (await receiver.wait_for(pushes + 2))[pushes:]
    assert [(e["action"], e["target"].get("tag"), e["target"].get("digest")) for e in events] \
        == [("delete", "v2", None), ("delete", None, d)]
    assert events[1]["target"]["url"].endswith(f"/v2/team/app/manifests/{d}")
    assert events[1]["request"]["method"] == "DELETE"


# --- pure parts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-05-06T07:08:09.123456789Z", "2024-05-06T07:08:09.123456Z"),
        ("2024-05-06T09:08:09+02:00", "2024-05-06T07:08:09Z"),
        ("2024-05-06T07:08:09", "2024-05-06T07:08:09Z"),
        ("1970-01-01T00:00:00Z", None),  # reproducible builds: unknown
        ("0001-01-01T00:00:00Z", None),  # Go's zero time
        ("yesterday", None),
        ("", None),
        (None, None),
        (True, None),
        (1_700_000_000, "2023-11-14T22:13:20Z"),
        (1_700_000_000.5, "2023-11-14T22:13:20.500000Z"),
    ],
)
def test_times_are_rfc3339_utc(value: object, expected: str | None) -> None:
    assert rfc3339(value) == expected


def test_index_references_are_hashed_and_prefixed() -> None:
    page = ('<link href="/ui/assets/app.css"><script src="/ui/assets/app.js"></script>'
            '<img src="/ui/assets/missing.svg"><a href="/ui/">home</a>')
    hashed = {"app.css": "app.aaaaaaaaaaaa.css", "app.js": "app.bbbbbbbbbbbb.js"}
    assert rewrite_references(page, hashed, "/r") == (
        '<link href="/r/ui/assets/app.aaaaaaaaaaaa.css">'
        '<script src="/r/ui/assets/app.bbbbbbbbbbbb.js"></script>'
        '<img src="/r/ui/assets/missing.svg"><a href="/ui/">home</a>'
    )
    assert hashed_name("app.js", b"x") == f"app.{hashlib.sha256(b'x').hexdigest()[:12]}.js"


async def test_under_http_prefix(nursery: trio.Nursery, tmp_path: Path) -> None:
    """Everything moves below http.prefix (the ASGI root_path, as `registry serve` sets it)."""
    config, _ = load_config(None, {
        "REGISTRY_STORAGE": "filesystem",
        "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": str(tmp_path / "storage"),
        "REGISTRY_HTTP_PREFIX": "/r",
    })
    hc = HyperConfig()
    hc.accesslog = None
    hc.root_path = config.http.prefix
    url = await serve_asgi(nursery, build_app(config, ui_static=write_static(tmp_path)), hc)
    async with httpx.AsyncClient(base_url=url.rstrip("/") + "/r") as c:
        await push_image(c, "r/a", "v1")
        page = await c.get("/ui/repositories/a")
        listing = await c.get(f"{UI}/repositories")
    async with httpx.AsyncClient(base_url=url) as c:
        root = await c.get("/", headers={"Accept": "text/html"})
        outside = await c.get(f"{UI}/repositories")
    assert root.status_code == 302 and root.headers["location"] == "/r/ui/"
    assert page.status_code == 200
    assert re.search(r'src="/r/ui/assets/app\.[0-9a-f]{12}\.js"', page.text)
    assert [x["name"] for x in listing.json()["repositories"]] == ["r/a"]
    assert outside.status_code == 404


async def test_a_failing_background_catalog_refresh_keeps_the_old_list(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The index's refresh runs in the app's lifespan nursery: a storage error there is
    logged and the last list served, never raised into the nursery (it would stop the app)."""
    storage = Storage(MemoryDriver())
    now = [0.0]
    index = RepoIndex(storage, clock=lambda: now[0])
    await storage_push_image(storage, "a", "v1", [b"layer"])
    await nursery.start(index.serve)
    assert await index.names() == ["a"]

    async def broken() -> list[str]:
        raise Unavailable("backend unreachable")

    monkeypatch.setattr(storage, "catalog", broken)
    now[0] += CATALOG_TTL + 1
    assert await index.names() == ["a"]  # stale at once; the refresh runs behind it
    with trio.fail_after(10):
        while "cannot list the repositories" not in caplog.text:
            await trio.sleep(0.01)
    assert await index.names() == ["a"]


@pytest.mark.s3
async def test_on_s3_push_times_sizes_and_totals(nursery: trio.Nursery, tmp_path: Path) -> None:
    """The same answers from the S3 driver (moto with signature checks): push times from
    LastModified, totals from a listing of blobs/."""
    env = await trio.to_thread.run_sync(s3_registry_env)
    url = await serve_registry(nursery, tmp_path, env)
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        _, v1 = await push_image(c, "team/app", "v1", layers=(SHARED, ONLY_V1))
        _, v2 = await push_image(c, "team/app", "v2", layers=(SHARED, ONLY_V2))
        listing = (await c.get(f"{UI}/repositories")).json()
        tags = (await c.get(f"{UI}/repositories/team/app")).json()
        with trio.fail_after(60):
            while not (info := (await c.get(f"{UI}/info")).json())["storage"]["blobs"]:
                await trio.sleep(0.1)
    (row,) = listing["repositories"]
    assert row["tags"] == 2 and RFC3339_UTC.match(row["last_push"])
    config = json.loads(v1)["config"]["size"]  # the same config in both
    assert row["size"] == len(v1) + len(v2) + config + len(SHARED) + len(ONLY_V1) + len(ONLY_V2)
    assert [(t["tag"], t["shared_size"]) for t in tags["tags"]] == [
        ("v1", len(SHARED)), ("v2", len(SHARED))]
    assert info["storage"]["driver"] == "s3"
    assert info["storage"]["blobs"] == 6  # one config, three layers, two manifests
