"""Pure protocol logic as tables (DESIGN.md: Content-Range, paths, routing, URLs, manifests)."""

from __future__ import annotations

import json

import pytest

from registry.digest import Digest, DigestError
from registry.errors import ErrorCode, RegistryError
from registry.http import router
from registry.http.ranges import Unsatisfiable, check_chunk, parse_content_range, parse_range
from registry.http.urls import base_url
from registry.reference import is_valid_name, is_valid_tag
from registry.storage import paths
from registry.storage.manifests import parse_manifest

H = "a" * 64
D = Digest("sha256", H)


@pytest.mark.parametrize(
    "value, expected",
    [
        ("0-0", (0, 0)),
        ("0-99", (0, 99)),
        ("100-199", (100, 199)),
        ("bytes=5-9", (5, 9)),
        ("bytes 5-9/100", (5, 9)),
        ("bytes 5-9/*", (5, 9)),
        (" 1-2 ", (1, 2)),
    ],
)
def test_content_range_parses(value, expected):
    assert parse_content_range(value) == expected


@pytest.mark.parametrize("value", ["", "-", "5-", "-5", "9-5", "a-b", "1-2-3", "bytes=1", "0-" + "9" * 25])
def test_content_range_rejects_with_416(value):
    with pytest.raises(RegistryError) as e:
        parse_content_range(value)
    assert e.value.status == 416


@pytest.mark.parametrize(
    "content_range, length, result",
    [(None, None, None), (None, 10, None), ("0-9", 10, 0), ("10-19", None, 10)],
)
def test_check_chunk(content_range, length, result):
    assert check_chunk(content_range, length) == result


def test_check_chunk_length_mismatch_is_size_invalid():
    with pytest.raises(RegistryError) as e:
        check_chunk("0-9", 5)
    assert e.value.code is ErrorCode.SIZE_INVALID


@pytest.mark.parametrize(
    "header, size, expected",
    [
        (None, 10, None),
        ("bytes=0-4", 10, (0, 4)),
        ("bytes=5-", 10, (5, 9)),
        ("bytes=-3", 10, (7, 9)),
        ("bytes=-30", 10, (0, 9)),
        ("bytes=2-100", 10, (2, 9)),
        ("bytes=0-0", 1, (0, 0)),
        ("items=0-1", 10, None),
        ("bytes=1-2,4-5", 10, None),
        ("bytes=5-2", 10, None),
        ("bytes=-", 10, None),
    ],
)
def test_range_header(header, size, expected):
    assert parse_range(header, size) == expected


@pytest.mark.parametrize("header, size", [("bytes=10-", 10), ("bytes=10-20", 10), ("bytes=-0", 10), ("bytes=0-", 0)])
def test_range_unsatisfiable(header, size):
    with pytest.raises(Unsatisfiable):
        parse_range(header, size)


@pytest.mark.parametrize(
    "path, method, route, params, ok",
    [
        ("/v2/", "GET", "base", {}, True),
        ("/v2", "HEAD", "base", {}, True),
        ("/v2/_catalog", "GET", "catalog", {}, True),
        ("/v2/a/b/tags/list", "GET", "tags", {"name": "a/b"}, True),
        ("/v2/a/manifests/v1", "PUT", "manifest", {"name": "a", "reference": "v1"}, True),
        ("/v2/blobs/manifests/blobs/uploads/", "POST", "uploads", {"name": "blobs/manifests"}, True),
        ("/v2/x/blobs/uploads/abc", "PATCH", "upload", {"name": "x", "uuid": "abc"}, True),
        ("/v2/x/blobs/uploads/abc", "HEAD", "upload", {"name": "x", "uuid": "abc"}, False),
        ("/v2/a/manifests/blobs/sha256:1", "GET", "blob", {"name": "a/manifests", "digest": "sha256:1"}, True),
        ("/v2/tags/list/tags/list", "GET", "tags", {"name": "tags/list"}, True),
        ("/v2/r/referrers/sha256:1", "GET", "referrers", {"name": "r", "digest": "sha256:1"}, True),
        ("/v2/a/blobs/sha256:1", "POST", "blob", {"name": "a", "digest": "sha256:1"}, False),
    ],
)
def test_router_matches_from_the_right(path, method, route, params, ok):
    m = router.match(path, method)
    assert m is not None
    assert (m.route.label, m.params, m.method_ok) == (route, params, ok)


@pytest.mark.parametrize("path", ["/v1/", "/v2/x", "/", "/v2/a/unknown/x"])
def test_router_unknown_paths(path):
    assert router.match(path, "GET") is None


@pytest.mark.parametrize(
    "headers, kwargs, expected",
    [
        ({"host": "h:5000"}, {}, "http://h:5000"),
        ({"host": "h"}, {"scheme": "https"}, "https://h"),
        ({"host": "h", "x-forwarded-proto": "https"}, {}, "https://h"),
        ({"host": "h", "x-forwarded-proto": "https, http", "x-forwarded-host": "a.b, c.d"}, {}, "https://a.b"),
        ({"host": "h", "forwarded": 'for=1.1.1.1;proto=https;host="x.y"'}, {}, "https://x.y"),
        ({"host": "h", "forwarded": "proto=https", "x-forwarded-host": "z"}, {}, "https://z"),
        ({"host": "h"}, {"configured_host": "https://reg.example/"}, "https://reg.example"),
        ({"host": "h"}, {"relative": True}, ""),
        ({"host": "evil\r\nx: y"}, {"server": ("127.0.0.1", 80)}, "http://127.0.0.1:80"),
        ({"host": "h", "x-forwarded-proto": "javascript"}, {}, "http://h"),
        ({"host": "h", "x-forwarded-host": "bad host<>"}, {}, "http://h"),
    ],
)
def test_location_base_url(headers, kwargs, expected):
    assert base_url(headers, **kwargs) == expected


def test_paths_match_the_reference_layout():
    assert paths.blob_data(D) == f"/docker/registry/v2/blobs/sha256/aa/{H}/data"
    assert paths.layer_link("a/b", D) == f"/docker/registry/v2/repositories/a/b/_layers/sha256/{H}/link"
    assert paths.revision_link("a", D) == f"/docker/registry/v2/repositories/a/_manifests/revisions/sha256/{H}/link"
    assert paths.tag_current_link("a", "v1") == "/docker/registry/v2/repositories/a/_manifests/tags/v1/current/link"
    assert paths.tag_index_link("a", "v1", D) == f"/docker/registry/v2/repositories/a/_manifests/tags/v1/index/sha256/{H}/link"
    assert paths.upload_data("a", "0-1") == "/docker/registry/v2/repositories/a/_uploads/0-1/data"
    assert paths.upload_startedat("a", "0-1") == "/docker/registry/v2/repositories/a/_uploads/0-1/startedat"
    assert paths.digest_from_blob_dir(paths.blob_dir(D)) == D


@pytest.mark.parametrize("name", ["..", "a/../b", "A", "", "a//b", "a/"])
def test_paths_refuse_what_could_escape(name):
    with pytest.raises(ValueError):
        paths.layer_link(name, D)
    with pytest.raises(ValueError):
        paths.upload_dir("a", "../../x")


@pytest.mark.parametrize(
    "name, ok",
    [("a", True), ("a/b-c.d_e__f", True), ("a--b", True), ("a" * 255, True), ("a" * 256, False),
     ("A", False), ("a_", False), ("a/", False), ("a..b", False), ("_a", False), ("a___b", False)],
)
def test_name_grammar(name, ok):
    assert is_valid_name(name) is ok


@pytest.mark.parametrize(
    "tag, ok",
    [("latest", True), ("_x", True), ("v1.2-3_4", True), ("t" * 128, True), ("t" * 129, False), (".x", False), ("-x", False), ("a/b", False)],
)
def test_tag_grammar(tag, ok):
    assert is_valid_tag(tag) is ok


@pytest.mark.parametrize(
    "value, ok",
    [(f"sha256:{H}", True), ("sha512:" + "b" * 128, True), (f"sha256:{H.upper()}", False),
     ("sha256:abc", False), (f"md5:{H}", False), (H, False)],
)
def test_digest_grammar(value, ok):
    if ok:
        assert str(Digest.parse(value)) == value
    else:
        with pytest.raises(DigestError):
            Digest.parse(value)


def _m(**kw):
    doc = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": f"sha256:{H}", "size": 1},
           "layers": []}
    doc.update(kw)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    "content_type, body, ok",
    [
        ("application/vnd.oci.image.manifest.v1+json", _m(), True),
        ("application/vnd.oci.image.manifest.v1+json; charset=utf-8", _m(), True),
        ("", _m(), True),
        ("application/vnd.docker.distribution.manifest.v2+json", _m(), False),
        ("application/vnd.oci.image.manifest.v1+json", _m(schemaVersion=1), False),
        ("application/vnd.oci.image.manifest.v1+json", _m(layers="x"), False),
        ("application/vnd.oci.image.manifest.v1+json", _m(subject={"mediaType": "x", "digest": "bad", "size": 1}), False),
        ("text/plain", _m(), False),
        ("application/vnd.oci.image.index.v1+json", json.dumps({"schemaVersion": 2, "manifests": []}).encode(), True),
        ("application/vnd.oci.image.index.v1+json", json.dumps({"schemaVersion": 2, "manifests": {}}).encode(), False),
    ],
)
def test_manifest_validation(content_type, body, ok):
    if ok:
        parse_manifest(content_type, body)
    else:
        with pytest.raises(RegistryError) as e:
            parse_manifest(content_type, body)
        assert e.value.code in (ErrorCode.MANIFEST_INVALID, ErrorCode.DIGEST_INVALID)


def test_manifest_references_skip_foreign_layers():
    foreign = {"mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
               "digest": "sha256:" + "c" * 64, "size": 5, "urls": ["https://example.com/l"]}
    p = parse_manifest("application/vnd.oci.image.manifest.v1+json", _m(layers=[foreign]))
    assert [d.digest for d in p.blobs] == [D]
