"""Bad input always gets the right OCI error with a JSON body: never a 500, a hang, or a
write outside the storage root (issue: Bad input)."""

from __future__ import annotations

import json
import os

import pytest
import trio
from conftest import recv_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from oci import DOCKER_MANIFEST, OCI_MANIFEST, digest, error_codes, push_blob, push_image

GOOD = digest(b"x")


@pytest.mark.parametrize(
    "name",
    [
        "UPPER/case",
        "a/../b",
        "..",
        "a/%2e%2e/b",
        "a%2fb",
        "%2e%2e%2f%2e%2e%2fetc",
        "a//b",
        "-lead",
        "trail-",
        "a" * 256,
        "a/" * 127 + "bb",
        "sp%20ace",
    ],
)
async def test_invalid_names_are_name_invalid_general_3(served, name):
    # raw requests: httpx would normalise "..", which is exactly what we want to send
    for method, path in (
        ("GET", f"/v2/{name}/tags/list"),
        ("GET", f"/v2/{name}/manifests/latest"),
        ("POST", f"/v2/{name}/blobs/uploads/"),
        ("HEAD", f"/v2/{name}/blobs/{GOOD}"),
    ):
        status, body = await raw_request(served.url, method, path)
        assert status == 400, (method, path, status, body)
        if method != "HEAD":
            assert [e["code"] for e in json.loads(body)["errors"]] == ["NAME_INVALID"]
    assert not os.path.exists(os.path.join(served.root, "docker/registry/v2/repositories/b"))


async def raw_request(url: str, method: str, path: str) -> tuple[int, bytes]:
    import h11

    host, port = url.split("//")[1].split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    conn = h11.Connection(h11.CLIENT)
    req = h11.Request(method=method, target=path, headers=[("Host", host), ("Content-Length", "0")])
    await stream.send_all(conn.send(req) + conn.send(h11.EndOfMessage()))
    status, body = 0, b""
    with trio.fail_after(10):
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                break
    await stream.aclose()
    return status, body


async def test_name_at_255_chars_is_accepted_general_3(client):
    name = "/".join(["a" * 63] * 4)  # 255 characters
    assert len(name) == 255
    await push_blob(client, name, b"ok")


@pytest.mark.parametrize(
    "bad",
    [
        "sha256:abc",
        "sha256:" + "G" * 64,
        "sha256:" + "A" * 64,
        "md5:" + "0" * 32,
        "sha384:" + "0" * 96,
        "nocolon",
        "sha256:" + "0" * 65,
        ":" + "0" * 64,
    ],
)
async def test_invalid_digests_are_digest_invalid_general_3(client, bad):
    r = await client.get(f"/v2/repo/blobs/{bad}")
    assert r.status_code == 400 and error_codes(r) == ["DIGEST_INVALID"]
    r = await client.post("/v2/repo/blobs/uploads/", params={"digest": bad}, content=b"x")
    assert r.status_code == 400 and error_codes(r) == ["DIGEST_INVALID"]
    if ":" in bad:  # no manifest has that name: 404 for reads (registry:3 answers 500)
        r = await client.get(f"/v2/repo/manifests/{bad}")
        assert r.status_code == 404 and error_codes(r) == ["MANIFEST_UNKNOWN"]
        r = await client.put(
            f"/v2/repo/manifests/{bad}", content=b"{}", headers={"Content-Type": OCI_MANIFEST}
        )
        assert r.status_code == 400 and error_codes(r) == ["DIGEST_INVALID"]


async def test_sha512_digests_are_accepted(client):
    import hashlib

    data = b"sha512 content"
    d = "sha512:" + hashlib.sha512(data).hexdigest()
    r = await client.post("/v2/s5/blobs/uploads/", params={"digest": d}, content=data)
    assert r.status_code == 201, r.text
    assert (await client.get(f"/v2/s5/blobs/{d}")).content == data


@pytest.mark.parametrize("tag", ["t" * 129, ".INVALID_MANIFEST_NAME", "-x", "bad!tag"])
async def test_invalid_tag_is_manifest_unknown_404_general_3(client, tag):
    # As registry:3 (no route matches) and the OCI conformance suite (v1.1.1, pull 404 specs)
    for method in ("GET", "DELETE", "PUT"):
        r = await client.request(
            method, f"/v2/repo/manifests/{tag}", content=b"{}" if method == "PUT" else None,
            headers={"Content-Type": OCI_MANIFEST} if method == "PUT" else None,
        )
        assert r.status_code == 404 and error_codes(r) == ["MANIFEST_UNKNOWN"], method
    r = await client.head(f"/v2/repo/manifests/{tag}")
    assert r.status_code == 404 and r.content == b""


@pytest.mark.parametrize(
    "content_range", ["garbage", "5-1", "-", "a-b", "1-2-3", "bytes=x", "0-" + "9" * 30]
)
async def test_garbage_content_range_is_416(client, content_range):
    loc = (await client.post("/v2/cr/blobs/uploads/")).headers["location"]
    r = await client.patch(loc, content=b"abc", headers={"Content-Range": content_range})
    assert r.status_code == 416
    assert r.json()["errors"]
    assert (await client.get(loc)).headers["range"] == "0-0"


async def test_put_without_digest_is_digest_invalid_push_11(client):
    loc = (await client.post("/v2/nd/blobs/uploads/")).headers["location"]
    r = await client.put(loc, content=b"abc")
    assert r.status_code == 400 and error_codes(r) == ["DIGEST_INVALID"]


@pytest.mark.parametrize(
    "content_type, body",
    [
        (OCI_MANIFEST, b"not json"),
        (OCI_MANIFEST, b"[1,2,3]"),
        (OCI_MANIFEST, b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []}'),
        ("application/vnd.example.unknown", b'{"schemaVersion": 2}'),
        ("application/vnd.docker.distribution.manifest.v1+prettyjws", b'{"schemaVersion": 1, "name": "x", "tag": "y", "fsLayers": []}'),
        (DOCKER_MANIFEST, b'{"schemaVersion": 1}'),
        (OCI_MANIFEST, b'{"schemaVersion": 2, "config": {"mediaType": "x", "digest": "nope", "size": 1}, "layers": []}'),
        (OCI_MANIFEST, b'{"schemaVersion": 2, "config": "string", "layers": []}'),
        (OCI_MANIFEST, b'{"schemaVersion": 2, "config": {"mediaType": "x", "digest": "sha256:' + b"0" * 64 + b'", "size": -1}, "layers": []}'),
        (OCI_MANIFEST, b'\xff\xfe{'),
    ],
)
async def test_bad_manifests_are_manifest_invalid_push_17(client, content_type, body):
    r = await client.put("/v2/bm/manifests/v1", content=body, headers={"Content-Type": content_type})
    assert r.status_code == 400, r.text
    assert error_codes(r)[0] in ("MANIFEST_INVALID", "DIGEST_INVALID")


async def test_unknown_route_and_method_give_json_errors(client):
    r = await client.get("/v2/x/unknown/thing")
    assert r.status_code == 404 and r.json()["errors"]
    r = await client.post(f"/v2/x/blobs/{GOOD}")
    assert r.status_code == 405 and error_codes(r) == ["UNSUPPORTED"]
    assert "allow" in r.headers
    r = await client.get("/nothing")
    assert r.status_code == 404 and r.json()["errors"]


async def test_garbage_bytes_on_socket_do_not_take_the_server_down(served):
    host, port = served.url.split("//")[1].split(":")
    for junk in (
        b"\x00\x01\x02garbage\r\n\r\n",
        b"GET /v2/ HTTP/9.9\r\n\r\n",
        b"PATCH /v2/a/blobs/uploads/x HTTP/1.1\r\nHost: a\r\nContent-Length: zz\r\n\r\n",
        b"PATCH /v2/a/blobs/uploads/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\n",
        b"GET /v2/ HTTP/1.1\r\n" + b"X-Long: " + b"a" * 200_000 + b"\r\n\r\n",
    ):
        stream = await trio.open_tcp_stream(host, int(port))
        with trio.move_on_after(2):
            try:
                await stream.send_all(junk)
                await stream.receive_some(65536)
            except trio.BrokenResourceError:
                pass
        await stream.aclose()
    r = await served.client.get("/v2/")
    assert r.status_code == 200


_segment = st.sampled_from(
    ["a", "..", ".", "%2e%2e", "%2F", "blobs", "uploads", "manifests", "tags", "list",
     "referrers", "_catalog", GOOD, "sha256:zz", "v1", "UP", "x" * 300, "%00", "~", "a b"]
)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    method=st.sampled_from(["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "OPTIONS"]),
    segments=st.lists(_segment, min_size=0, max_size=6),
    query=st.sampled_from(["", "?n=-1", "?digest=bad", "?mount=x&from=..", "?last=%ff&n=2", "?digest=" + GOOD]),
    headers=st.sampled_from([{}, {"Content-Range": "zz"}, {"Content-Type": "text/plain"}, {"Range": "bytes=9-1"}]),
)
def test_fuzzed_requests_never_500_and_never_write_outside_root(tmp_path_factory, method, segments, query, headers):
    import httpx
    from conftest import start_app

    root = str(tmp_path_factory.mktemp("fuzzroot"))
    outside = os.path.dirname(root)
    before = set(os.listdir(outside))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            url, _ = await start_app(nursery, root)
            async with httpx.AsyncClient(base_url=url) as c:
                path = "/v2/" + "/".join(segments)
                r = await c.request(method, path + query, headers=headers, content=b'{"schemaVersion":2}')
                assert r.status_code < 500, (method, path, query, r.status_code, r.text)
                if method != "HEAD" and r.status_code >= 400:
                    assert "errors" in json.loads(r.content)
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert set(os.listdir(outside)) == before


async def test_wrong_media_type_against_body_is_manifest_invalid_push_17(client):
    _, body = await push_image(client, "mt", "v1")
    r = await client.put("/v2/mt/manifests/v2", content=body, headers={"Content-Type": DOCKER_MANIFEST})
    assert r.status_code == 400 and error_codes(r) == ["MANIFEST_INVALID"]
    doc = json.loads(body)
    assert doc["mediaType"] == OCI_MANIFEST


# --- a body the handler never reads ------------------------------------------------------


def _early_reject_then_reuse(host: str, port: int, body: bytes, chunked: bool) -> tuple[bytes, bytes]:
    """PATCH an unknown upload (rejected before its body is read), then reuse the socket."""
    import socket

    framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % len(body)
    payload = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if chunked else body
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(
            b"PATCH /v2/a/b/blobs/uploads/00000000-0000-0000-0000-000000000000 HTTP/1.1\r\n"
            b"Host: t\r\n" + framing + b"\r\n\r\n"
        )
        try:
            s.sendall(payload)
        except OSError:
            pass  # the server may close before the whole body is in
        first = recv_until(s, b"\r\n\r\n")
        try:
            s.sendall(b"GET /v2/ HTTP/1.1\r\nHost: t\r\n\r\n")
            second = s.recv(65536)  # a hang raises TimeoutError
        except (ConnectionResetError, BrokenPipeError):
            second = b""
        return first, second


@pytest.mark.parametrize("size", [10, 300_000, 4_000_000])
@pytest.mark.parametrize("chunked", [False, True])
async def test_an_unread_body_never_hangs_the_connection(served, size, chunked):
    """Early errors (unknown upload, auth, bad name) answer before reading the body. The
    connection must then be closed or keep serving; it used to wait forever."""
    from urllib.parse import urlsplit

    u = urlsplit(served.url)
    first, second = await trio.to_thread.run_sync(
        _early_reject_then_reuse, u.hostname, u.port, b"x" * size, chunked
    )
    assert first.startswith(b"HTTP/1.1 404"), first[:100]
    assert b"connection: close" in first.lower()
    assert second == b"" or second.startswith(b"HTTP/1.1 200"), second[:100]
    r = await served.client.get("/v2/")  # and the server still serves
    assert r.status_code == 200
