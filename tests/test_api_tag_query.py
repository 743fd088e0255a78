"""``?tag=`` on a manifest PUT by digest (distribution-spec main, "Pushing Manifests", end-7b;
issue 17, item 4), over a real socket: the manifest is stored once, every tag points at it,
the answer has one ``OCI-Tag`` per tag; a bad tag stores and tags nothing."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import trio
from oci import OCI_MANIFEST, descriptor, digest, error_codes, push_blob
from test_notifications import Receiver, endpoint_env, start, start_registry

TEST_TIMEOUT_S = 30  # each test makes a few dozen local requests


async def image(client: httpx.AsyncClient, name: str, seed: str = "one") -> tuple[str, bytes]:
    """Push a config and a layer to ``name``; the (digest, bytes) of a manifest naming them,
    not pushed."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed}).encode()
    layer = f"layer-{seed}".encode()
    await push_blob(client, name, config)
    await push_blob(client, name, layer)
    body = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": descriptor("application/vnd.oci.image.config.v1+json", config),
        "layers": [descriptor("application/vnd.oci.image.layer.v1.tar+gzip", layer)],
    }).encode()
    return digest(body), body


async def put(client: httpx.AsyncClient, name: str, ref: str, body: bytes,
              tags: list[str]) -> httpx.Response:
    return await client.put(f"/v2/{name}/manifests/{ref}", content=body,
                            params=[("tag", t) for t in tags],
                            headers={"Content-Type": OCI_MANIFEST})


def oci_tags(r: httpx.Response) -> list[str]:
    """Every tag the OCI-Tag headers name (each header may list several, comma-separated)."""
    return [t.strip() for v in r.headers.get_list("oci-tag") for t in v.split(",")]


async def tags_list(client: httpx.AsyncClient, name: str) -> list[str]:
    r = await client.get(f"/v2/{name}/tags/list")
    assert r.status_code == 200, r.text
    tags: list[str] = r.json()["tags"]
    return tags


@pytest.mark.parametrize(("tags", "applied"), [
    (["v1"], ["v1"]),
    (["1.2.3", "1.2", "1", "latest"], ["1.2.3", "1.2", "1", "latest"]),
    (["a", "b", "a", "a"], ["a", "b"]),  # a repeated tag is applied (and answered) once
    ([f"t{i}" for i in range(10)], [f"t{i}" for i in range(10)]),  # the spec's "at least 10"
    (["Upper_and.dots-1", "_x"], ["Upper_and.dots-1", "_x"]),
])
async def test_put_by_digest_applies_every_tag_query_parameter_end_7b(
    client: httpx.AsyncClient, tags: list[str], applied: list[str]
) -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        d, body = await image(client, "team/app")
        r = await put(client, "team/app", d, body, tags)
        assert r.status_code == 201, r.text
        assert oci_tags(r) == applied
        assert r.headers["docker-content-digest"] == d
        assert r.headers["location"].endswith(f"/v2/team/app/manifests/{d}")
        assert await tags_list(client, "team/app") == sorted(applied)
        for tag in applied:
            got = await client.get(f"/v2/team/app/manifests/{tag}")
            assert got.status_code == 200 and got.content == body
            assert got.headers["docker-content-digest"] == d


async def test_put_by_digest_without_tags_answers_no_oci_tag_end_7a(
    client: httpx.AsyncClient,
) -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        d, body = await image(client, "team/app")
        r = await put(client, "team/app", d, body, [])
        assert r.status_code == 201 and "oci-tag" not in r.headers
        assert await tags_list(client, "team/app") == []


async def test_tag_query_moves_an_existing_tag_to_the_new_manifest(
    client: httpx.AsyncClient,
) -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        d1, body1 = await image(client, "team/app", "one")
        d2, body2 = await image(client, "team/app", "two")
        assert (await put(client, "team/app", d1, body1, ["latest", "v1"])).status_code == 201
        assert (await put(client, "team/app", d2, body2, ["latest", "v2"])).status_code == 201
        for tag, want in (("latest", d2), ("v1", d1), ("v2", d2)):
            r = await client.head(f"/v2/team/app/manifests/{tag}")
            assert r.headers["docker-content-digest"] == want, tag


@pytest.mark.parametrize("tags", [
    ["ok", "bad tag"],
    [""],
    ["-leading-dash"],
    [".leading-dot"],
    ["x" * 129],  # longer than 128 characters
    ["ok", "caf\u00e9"],
])
async def test_an_invalid_tag_is_400_tag_invalid_and_nothing_is_stored_or_tagged(
    client: httpx.AsyncClient, tags: list[str]
) -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        d, body = await image(client, "team/app")
        r = await put(client, "team/app", d, body, tags)
        assert r.status_code == 400, r.text
        assert error_codes(r) == ["TAG_INVALID"]
        assert "oci-tag" not in r.headers
        assert (await client.get(f"/v2/team/app/manifests/{d}")).status_code == 404
        assert await tags_list(client, "team/app") == []


async def test_tag_query_on_a_put_by_tag_is_400_and_nothing_is_stored(
    client: httpx.AsyncClient,
) -> None:
    """The spec defines ``?tag=`` for a PUT by digest only; on a PUT by tag we refuse it
    rather than guess which tags the client meant."""
    with trio.fail_after(TEST_TIMEOUT_S):
        d, body = await image(client, "team/app")
        r = await put(client, "team/app", "main", body, ["other"])
        assert r.status_code == 400, r.text
        assert error_codes(r) == ["TAG_INVALID"]
        assert (await client.get(f"/v2/team/app/manifests/{d}")).status_code == 404
        assert (await client.get("/v2/team/app/manifests/main")).status_code == 404
        assert await tags_list(client, "team/app") == []


async def test_more_tags_than_the_limit_is_414_and_nothing_is_stored(
    client: httpx.AsyncClient,
) -> None:
    from registry.http.manifests import MAX_TAGS_PER_PUT

    with trio.fail_after(TEST_TIMEOUT_S):
        d, body = await image(client, "team/app")
        r = await put(client, "team/app", d, body, [f"t{i}" for i in range(MAX_TAGS_PER_PUT + 1)])
        assert r.status_code == 414, r.text
        assert error_codes(r) == ["TAG_INVALID"]
        assert (await client.get(f"/v2/team/app/manifests/{d}")).status_code == 404
        r = await put(client, "team/app", d, body, [f"t{i}" for i in range(MAX_TAGS_PER_PUT)])
        assert r.status_code == 201 and len(oci_tags(r)) == MAX_TAGS_PER_PUT


async def test_a_put_with_tags_sends_one_push_event_per_tag_as_a_tag_push(
    nursery: trio.Nursery,
) -> None:
    receiver = Receiver()
    url = await start_registry(nursery, endpoint_env(await start(nursery, receiver)))
    with trio.fail_after(TEST_TIMEOUT_S):
        async with httpx.AsyncClient(base_url=url, timeout=TEST_TIMEOUT_S) as c:
            d, body = await image(c, "team/app")
            assert (await put(c, "team/app", d, body, ["v1", "latest"])).status_code == 201
            events = await receiver.wait_for(4)  # two blob pushes, then the manifest's
        await trio.sleep(0.2)  # a wrong implementation's extra events arrive by now
    pushes: list[dict[str, Any]] = [e for e in receiver.events
                                    if e["target"].get("mediaType") == OCI_MANIFEST]
    assert [(e["action"], e["target"].get("tag")) for e in pushes] == [
        ("push", "v1"), ("push", "latest")]
    for e in pushes:
        assert e["target"]["digest"] == d
        assert e["target"]["size"] == len(body)
        assert e["target"]["url"].endswith(f"/v2/team/app/manifests/{d}")
    assert len({e["id"] for e in events}) == len(events)
