"""API tests over a real socket: SPEC.md General, Pull and Push items."""

from __future__ import annotations

import json
import os

import httpx
import pytest
from oci import (
    EMPTY_DIGEST,
    digest,
    error_codes,
    push_blob,
    push_image,
)


async def test_base_endpoint_answers_empty_json_with_api_version_header_general_1(client):
    r = await client.get("/v2/")
    assert r.status_code == 200
    assert r.json() == {}
    assert r.headers["docker-distribution-api-version"] == "registry/2.0"


async def test_errors_carry_api_version_header_and_json_envelope_general_2(client):
    r = await client.get(f"/v2/nope/blobs/{EMPTY_DIGEST}")
    assert r.status_code == 404
    assert r.headers["docker-distribution-api-version"] == "registry/2.0"
    assert error_codes(r) == ["BLOB_UNKNOWN"]
    assert set(r.json()["errors"][0]) == {"code", "message", "detail"}


async def test_head_error_has_no_body_general_2(client):
    r = await client.head(f"/v2/nope/blobs/{EMPTY_DIGEST}")
    assert r.status_code == 404
    assert r.content == b""


async def test_single_request_push_then_get_and_head_pull_5_push_10(client):
    data = os.urandom(100_000)
    d = digest(data)
    r = await client.post("/v2/a/b/blobs/uploads/", params={"digest": d}, content=data)
    assert r.status_code == 201
    assert r.headers["location"].endswith(f"/v2/a/b/blobs/{d}")
    r = await client.head(f"/v2/a/b/blobs/{d}")
    assert r.status_code == 200
    assert r.headers["content-length"] == str(len(data))
    assert r.headers["docker-content-digest"] == d
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["accept-ranges"] == "bytes"
    assert r.headers["etag"] == f'"{d}"'
    r = await client.get(f"/v2/a/b/blobs/{d}")
    assert r.status_code == 200 and r.content == data


async def test_single_request_push_with_wrong_digest_is_digest_invalid_push_10(client):
    r = await client.post(
        "/v2/a/blobs/uploads/", params={"digest": digest(b"other")}, content=b"data"
    )
    assert r.status_code == 400
    assert error_codes(r) == ["DIGEST_INVALID"]
    r = await client.get(f"/v2/a/blobs/{digest(b'other')}")
    assert r.status_code == 404


async def test_range_requests_pull_5(client):
    data = bytes(range(256)) * 40
    d = await push_blob(client, "r", data)
    r = await client.get(f"/v2/r/blobs/{d}", headers={"Range": "bytes=10-19"})
    assert r.status_code == 206
    assert r.content == data[10:20]
    assert r.headers["content-range"] == f"bytes 10-19/{len(data)}"
    r = await client.get(f"/v2/r/blobs/{d}", headers={"Range": "bytes=-5"})
    assert r.status_code == 206 and r.content == data[-5:]
    r = await client.get(f"/v2/r/blobs/{d}", headers={"Range": "bytes=10000-"})
    assert r.status_code == 206 and r.content == data[10000:]
    r = await client.get(f"/v2/r/blobs/{d}", headers={"Range": f"bytes={len(data)}-"})
    assert r.status_code == 416
    assert r.headers["content-range"] == f"bytes */{len(data)}"


async def test_blobs_are_repo_scoped_pull_6(client):
    d = await push_blob(client, "repo-a", b"scoped")
    assert (await client.head(f"/v2/repo-a/blobs/{d}")).status_code == 200
    r = await client.get(f"/v2/repo-b/blobs/{d}")
    assert r.status_code == 404
    assert error_codes(r) == ["BLOB_UNKNOWN"]


async def test_post_starts_session_with_location_uuid_and_range_push_9(client):
    r = await client.post("/v2/s/blobs/uploads/")
    assert r.status_code == 202
    assert r.headers["range"] == "0-0"
    uuid = r.headers["docker-upload-uuid"]
    assert uuid in r.headers["location"]
    r2 = await client.post("/v2/s/blobs/uploads/")
    assert r2.headers["location"] != r.headers["location"]


async def test_monolithic_post_then_put_push_11(client):
    data = os.urandom(3 * 1024 * 1024 + 7)
    r = await client.post("/v2/m/blobs/uploads/")
    loc = r.headers["location"]
    r = await client.put(loc, params={"digest": digest(data)}, content=data)
    assert r.status_code == 201, r.text
    assert r.headers["docker-content-digest"] == digest(data)
    assert (await client.get(f"/v2/m/blobs/{digest(data)}")).content == data


async def test_streamed_patch_with_chunked_encoding_then_empty_put_push_12(client):
    data = os.urandom(2 * 1024 * 1024 + 3)

    async def gen():
        for i in range(0, len(data), 70_000):
            yield data[i : i + 70_000]

    loc = (await client.post("/v2/st/blobs/uploads/")).headers["location"]
    r = await client.patch(loc, content=gen())
    assert r.status_code == 202, r.text
    assert r.headers["range"] == f"0-{len(data) - 1}"
    r = await client.put(r.headers["location"], params={"digest": digest(data)})
    assert r.status_code == 201, r.text
    assert (await client.get(f"/v2/st/blobs/{digest(data)}")).content == data


async def test_chunked_upload_with_content_range_and_final_chunk_in_put_push_13(client):
    data = os.urandom(300_000)
    loc = (await client.post("/v2/ch/blobs/uploads/")).headers["location"]
    r = await client.patch(
        loc, content=data[:100_000], headers={"Content-Range": "0-99999"}
    )
    assert r.status_code == 202 and r.headers["range"] == "0-99999"
    loc = r.headers["location"]
    r = await client.patch(
        loc, content=data[100_000:200_000], headers={"Content-Range": "100000-199999"}
    )
    assert r.status_code == 202 and r.headers["range"] == "0-199999"
    r = await client.put(
        r.headers["location"],
        params={"digest": digest(data)},
        content=data[200_000:],
        headers={"Content-Range": "200000-299999"},
    )
    assert r.status_code == 201, r.text
    assert (await client.get(f"/v2/ch/blobs/{digest(data)}")).content == data


async def test_out_of_order_chunk_is_416_with_current_range_push_13(client):
    loc = (await client.post("/v2/o/blobs/uploads/")).headers["location"]
    r = await client.patch(loc, content=b"abc", headers={"Content-Range": "0-2"})
    assert r.status_code == 202
    r = await client.patch(loc, content=b"xyz", headers={"Content-Range": "10-12"})
    assert r.status_code == 416
    assert r.headers["range"] == "0-2"
    r = await client.patch(loc, content=b"abc", headers={"Content-Range": "0-2"})
    assert r.status_code == 416
    status = await client.get(loc)
    assert status.status_code == 204 and status.headers["range"] == "0-2"


async def test_content_range_length_mismatch_is_size_invalid_push_13(client):
    loc = (await client.post("/v2/o/blobs/uploads/")).headers["location"]
    r = await client.patch(loc, content=b"abcd", headers={"Content-Range": "0-9"})
    assert r.status_code in (400, 416)
    if r.status_code == 400:
        assert error_codes(r) == ["SIZE_INVALID"]
    assert (await client.get(loc)).headers["range"] == "0-0"


async def test_upload_status_and_cancel_and_unknown_session_push_14(client):
    loc = (await client.post("/v2/c/blobs/uploads/")).headers["location"]
    await client.patch(loc, content=b"12345")
    r = await client.get(loc)
    assert r.status_code == 204
    assert r.headers["range"] == "0-4"
    r = await client.delete(loc)
    assert r.status_code == 204
    for method in ("GET", "PATCH", "DELETE"):
        r = await client.request(method, loc)
        assert r.status_code == 404
        assert error_codes(r) == ["BLOB_UPLOAD_UNKNOWN"]
    r = await client.put(loc, params={"digest": EMPTY_DIGEST})
    assert r.status_code == 404


async def test_tampered_upload_url_cannot_reach_another_session_push_14(client):
    loc = (await client.post("/v2/t1/blobs/uploads/")).headers["location"]
    uuid = loc.rsplit("/", 1)[1]
    # same id under another repository, and forged ids, are unknown sessions
    r = await client.get(f"/v2/t2/blobs/uploads/{uuid}")
    assert r.status_code == 404 and error_codes(r) == ["BLOB_UPLOAD_UNKNOWN"]
    for forged in ("..", "..%2f..%2fx", "00000000-0000-0000-0000-000000000000", "x" * 300):
        r = await client.get(f"/v2/t1/blobs/uploads/{forged}")
        assert r.status_code in (400, 404)
        assert r.json()["errors"]


async def test_zero_length_blob_and_repeat_push_push_15(client):
    r = await client.post("/v2/z/blobs/uploads/", params={"digest": EMPTY_DIGEST})
    assert r.status_code == 201
    r = await client.get(f"/v2/z/blobs/{EMPTY_DIGEST}")
    assert r.status_code == 200 and r.content == b""
    loc = (await client.post("/v2/z/blobs/uploads/")).headers["location"]
    r = await client.put(loc, params={"digest": EMPTY_DIGEST})
    assert r.status_code == 201
    await push_blob(client, "z", b"again")
    await push_blob(client, "z", b"again")


async def test_concurrent_pushes_of_same_digest_all_succeed_push_15(client, nursery):
    import trio

    data = os.urandom(1024 * 1024)
    d = digest(data)
    results: list[int] = []

    async def push(repo: str) -> None:
        loc = (await client.post(f"/v2/{repo}/blobs/uploads/")).headers["location"]
        r = await client.put(loc, params={"digest": d}, content=data)
        results.append(r.status_code)

    async with trio.open_nursery() as n:
        for i in range(12):
            n.start_soon(push, f"same/r{i % 3}")
    assert results == [201] * 12
    for i in range(3):
        assert (await client.get(f"/v2/same/r{i}/blobs/{d}")).content == data


async def test_cross_repo_mount_push_16(client):
    d = await push_blob(client, "src", b"mount me")
    r = await client.post("/v2/dst/blobs/uploads/", params={"mount": d, "from": "src"})
    assert r.status_code == 201
    assert r.headers["docker-content-digest"] == d
    assert (await client.get(f"/v2/dst/blobs/{d}")).content == b"mount me"
    # not in `from`: a normal session
    other = digest(b"absent")
    r = await client.post("/v2/dst/blobs/uploads/", params={"mount": other, "from": "src"})
    assert r.status_code == 202
    assert "docker-upload-uuid" in r.headers


async def test_manifest_put_get_exact_bytes_by_tag_and_digest_pull_7_push_17(client):
    for mt in (
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
    ):
        d, body = await push_image(client, "img", "v1", media_type=mt)
        for ref in ("v1", d):
            r = await client.get(f"/v2/img/manifests/{ref}", headers={"Accept": mt})
            assert r.status_code == 200
            assert r.content == body
            assert r.headers["content-type"] == mt
            assert r.headers["docker-content-digest"] == d
            assert r.headers["etag"] == f'"{d}"'
            h = await client.head(f"/v2/img/manifests/{ref}")
            assert h.status_code == 200
            assert h.headers["content-length"] == str(len(body))
        r = await client.get(f"/v2/img/manifests/{d}", headers={"If-None-Match": f'"{d}"'})
        assert r.status_code == 304


async def test_unknown_manifest_is_404_manifest_unknown_pull_7(client):
    r = await client.get("/v2/img/manifests/nope")
    assert r.status_code == 404 and error_codes(r) == ["MANIFEST_UNKNOWN"]
    r = await client.get(f"/v2/img/manifests/{EMPTY_DIGEST}")
    assert r.status_code == 404 and error_codes(r) == ["MANIFEST_UNKNOWN"]


async def test_stored_type_is_served_whatever_accept_says_pull_8(client):
    _, body = await push_image(client, "acc", "v1", media_type="application/vnd.oci.image.manifest.v1+json")
    r = await client.get(
        "/v2/acc/manifests/v1",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
    )
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/vnd.oci.image.manifest.v1+json"
    assert r.content == body


async def test_index_and_manifest_list_require_children_push_17_18(client):
    child1, b1 = await push_image(client, "multi", None, layers=(b"amd",))
    child2, b2 = await push_image(client, "multi", None, layers=(b"arm",))
    for mt, child_mt in (
        ("application/vnd.oci.image.index.v1+json", "application/vnd.oci.image.manifest.v1+json"),
        (
            "application/vnd.docker.distribution.manifest.list.v2+json",
            "application/vnd.oci.image.manifest.v1+json",
        ),
    ):
        index = {
            "schemaVersion": 2,
            "mediaType": mt,
            "manifests": [
                {"mediaType": child_mt, "digest": child1, "size": len(b1), "platform": {"architecture": "amd64", "os": "linux"}},
                {"mediaType": child_mt, "digest": child2, "size": len(b2), "platform": {"architecture": "arm64", "os": "linux"}},
            ],
        }
        body = json.dumps(index).encode()
        r = await client.put("/v2/multi/manifests/all", content=body, headers={"Content-Type": mt})
        assert r.status_code == 201, r.text
        r = await client.get("/v2/multi/manifests/all")
        assert r.content == body and r.headers["content-type"] == mt
    missing = dict(index)
    missing["manifests"] = [
        {"mediaType": child_mt, "digest": digest(b"nope"), "size": 4},
    ]
    r = await client.put(
        "/v2/multi/manifests/bad",
        content=json.dumps(missing).encode(),
        headers={"Content-Type": mt},
    )
    assert r.status_code == 400 and error_codes(r) == ["MANIFEST_BLOB_UNKNOWN"]


async def test_missing_blobs_give_one_error_per_digest_push_18(client):
    await push_blob(client, "mb", b"cfg")
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(b"cfg"), "size": 3},
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest(b"l1"), "size": 2},
                {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest(b"l2"), "size": 2},
            ],
        }
    ).encode()
    r = await client.put(
        "/v2/mb/manifests/x", content=body,
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert r.status_code == 400
    assert error_codes(r) == ["MANIFEST_BLOB_UNKNOWN", "MANIFEST_BLOB_UNKNOWN"]
    details = sorted(e["detail"]["digest"] for e in r.json()["errors"])
    assert details == sorted([digest(b"l1"), digest(b"l2")])


async def test_artifact_with_empty_config_zero_layers_and_absent_subject_push_19_21(client):
    await push_blob(client, "art", b"{}")
    subject = digest(b"not pushed")
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "artifactType": "application/vnd.example.sig",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": digest(b"{}"), "size": 2},
            "layers": [],
            "subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": subject, "size": 10},
        }
    ).encode()
    r = await client.put(
        f"/v2/art/manifests/{digest(body)}", content=body,
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert r.status_code == 201, r.text
    assert r.headers["oci-subject"] == subject


@pytest.mark.filterwarnings(
    # httpx's own request-body generator is left unfinished when we answer 413 early
    "ignore:Exception ignored in. <async_generator object ByteStream:pytest.PytestUnraisableExceptionWarning"
)
async def test_manifest_over_4mib_is_413_push_20(client):
    body = b'{"schemaVersion":2,"pad":"' + b"x" * (4 * 1024 * 1024) + b'"}'
    r = await client.put(
        "/v2/big/manifests/v1", content=body,
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert r.status_code == 413
    assert r.json()["errors"]

    async def chunked():
        yield body

    r = await client.put(
        "/v2/big/manifests/v1", content=chunked(),
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert r.status_code == 413


async def test_put_by_digest_with_other_bytes_is_digest_invalid_push_17(client):
    _, body = await push_image(client, "pd", "v1")
    r = await client.put(
        f"/v2/pd/manifests/{digest(b'something else')}", content=body,
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert r.status_code == 400 and error_codes(r) == ["DIGEST_INVALID"]


async def test_location_honours_forwarded_headers_general_4(client):
    r = await client.post(
        "/v2/loc/blobs/uploads/",
        headers={"X-Forwarded-Proto": "https", "X-Forwarded-Host": "reg.example.com"},
    )
    assert r.headers["location"].startswith("https://reg.example.com/v2/loc/blobs/uploads/")
    r = await client.post(
        "/v2/loc/blobs/uploads/",
        headers={"Forwarded": 'for=1.2.3.4;proto=https;host="r.example.org"'},
    )
    assert r.headers["location"].startswith("https://r.example.org/v2/loc/blobs/uploads/")


async def test_client_dropping_patch_midway_leaves_storage_consistent(served):
    """A client that disconnects mid-PATCH leaves nothing visible and the upload usable."""
    import trio

    data = os.urandom(4 * 1024 * 1024)
    client = served.client
    loc = (await client.post("/v2/drop/blobs/uploads/")).headers["location"]
    host, port = served.url.split("//")[1].split(":")
    path = loc.split(served.url, 1)[1] if loc.startswith("http") else loc
    stream = await trio.open_tcp_stream(host, int(port))
    head = (
        f"PATCH {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(data)}\r\n"
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    await stream.send_all(head + data[: len(data) // 2])
    await trio.sleep(0.3)
    await stream.aclose()
    await trio.sleep(0.3)
    assert (await client.get(f"/v2/drop/blobs/{digest(data)}")).status_code == 404
    r = await client.get(loc)
    assert r.status_code == 204
    got = int(r.headers["range"].split("-")[1]) + 1 if r.headers["range"] != "0-0" else 0
    assert 0 <= got <= len(data) // 2
    # restart the upload from scratch and finish it
    loc2 = (await client.post("/v2/drop/blobs/uploads/")).headers["location"]
    r = await client.put(loc2, params={"digest": digest(data)}, content=data)
    assert r.status_code == 201
    # and the dropped session can also be resumed from where storage says it is
    r = await client.patch(loc, content=data[got:], headers={"Content-Range": f"{got}-{len(data) - 1}"})
    assert r.status_code == 202, r.text
    r = await client.put(loc, params={"digest": digest(data)})
    assert r.status_code == 201, r.text
    assert (await client.get(f"/v2/drop/blobs/{digest(data)}")).content == data


async def test_upload_continues_in_a_second_app_on_the_same_directory(served, nursery):
    """Sessions live in storage: another server process on the same root continues them."""
    from conftest import start_app

    data = os.urandom(500_000)
    loc = (await served.client.post("/v2/two/blobs/uploads/")).headers["location"]
    r = await served.client.patch(loc, content=data[:200_000], headers={"Content-Range": "0-199999"})
    assert r.status_code == 202
    url2, _ = await start_app(nursery, served.root)
    path = loc.split("/v2/", 1)[1]
    async with httpx.AsyncClient(base_url=url2) as c2:
        r = await c2.patch(f"/v2/{path}", content=data[200_000:], headers={"Content-Range": f"200000-{len(data) - 1}"})
        assert r.status_code == 202
        r = await c2.put(f"/v2/{path}", params={"digest": digest(data)})
        assert r.status_code == 201, r.text
    assert (await served.client.get(f"/v2/two/blobs/{digest(data)}")).content == data


async def test_single_request_push_leaves_no_session_when_it_fails_push_10(served):
    """POST ?digest= makes a session the client never learns of: a body cut short by a
    disconnect, or one whose digest does not match, must not leave it for the purger."""
    import pathlib

    import trio

    uploads = pathlib.Path(served.root, "docker/registry/v2/repositories/single/_uploads")
    data = os.urandom(4 * 1024 * 1024)
    r = await served.client.post(
        "/v2/single/blobs/uploads/", params={"digest": digest(b"other")}, content=data
    )
    assert r.status_code == 400, r.text
    assert list(uploads.glob("*")) == []
    host, port = served.url.split("//")[1].split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    head = (
        f"POST /v2/single/blobs/uploads/?digest={digest(data)} HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Length: {len(data)}\r\nContent-Type: application/octet-stream\r\n\r\n"
    ).encode()
    await stream.send_all(head + data[: len(data) // 2])
    with trio.fail_after(10):  # the server has the session once startedat exists
        while not list(uploads.glob("*/startedat")):
            await trio.sleep(0.05)
    await stream.aclose()
    with trio.fail_after(10):  # main: the session stays until the purger's age (7 days)
        while list(uploads.glob("*")):
            await trio.sleep(0.05)
    assert (await served.client.get(f"/v2/single/blobs/{digest(data)}")).status_code == 404
