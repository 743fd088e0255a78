"""validation.manifests.urls: layer URLs in pushed manifests, as the reference enforces them
(distribution's handlers/app.go, storage/ocimanifesthandler.go, schema2manifesthandler.go
and their tests). Pure tables first, then pushes over HTTP to the app build_app makes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from registry.config import ConfigError, load_config
from registry.errors import ErrorCode, RegistryError
from registry.server import build_app
from registry.storage.manifest_urls import NO_URL_LISTS, URLRules
from registry.storage.manifests import parse_manifest

try:
    from tests.conftest import serve_asgi
    from tests.oci import DOCKER_MANIFEST, OCI_MANIFEST, descriptor, digest, push_blob
except ImportError:
    from conftest import serve_asgi  # type: ignore[no-redef]
    from oci import (  # type: ignore[no-redef]
        DOCKER_MANIFEST,
        OCI_MANIFEST,
        descriptor,
        digest,
        push_blob,
    )

TEST_TIMEOUT = 60  # seconds for one HTTP test: a hung server fails instead of hanging CI

DOCKER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_NONDIST_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"

# The reference's own test rules: allow ^https?://foo, deny ^https?://foo/nope.
FOO = URLRules.compile([r"^https?://foo"], [r"^https?://foo/nope"], enabled=True)
CLOSED = URLRules.compile([], [], enabled=True)  # validation enabled, no lists: refuse all


# --- the URL rules ---------------------------------------------------------------------------

URL_CASES = [
    # (id, rules, url, refused) -- the first block is the reference's test table
    ("ref-file-scheme", FOO, "file:///local/file", True),
    ("ref-fragment", FOO, "http://foo/bar#baz", True),
    ("ref-empty", FOO, "", True),
    ("ref-not-allowed", FOO, "http://nope/bar", True),
    ("ref-denied", FOO, "http://foo/nope", True),
    ("ref-http-allowed", FOO, "http://foo/bar", False),
    ("ref-https-allowed", FOO, "https://foo/bar", False),
    ("unset-refuses-all", CLOSED, "https://foo/bar", True),
    ("deny-only-allows-the-rest", URLRules.compile([], ["nope"], enabled=True), "http://x/", False),
    ("deny-only-denies", URLRules.compile([], ["nope"], enabled=True), "http://x/nope", True),
    (
        "allow-is-searched-not-anchored",
        URLRules.compile(["foo"], [], enabled=True),
        "http://a/foo",
        False,
    ),
    (
        "allow-list-any-matches",
        URLRules.compile(["^http://a/", "^http://b/"], [], enabled=True),
        "http://b/x",
        False,
    ),
    (
        "inline-flag-per-pattern",
        URLRules.compile(["(?i)^HTTP://FOO", "^x"], [], enabled=True),
        "http://foo/",
        False,
    ),
    (
        "disabled-ignores-lists",
        URLRules.compile(["^x"], ["."], enabled=False),
        "http://foo/",
        False,
    ),
    ("disabled-still-needs-http", URLRules.compile([], [], enabled=False), "ftp://foo/", True),
    ("empty-fragment-is-none", NO_URL_LISTS, "http://foo/bar#", False),
    ("scheme-case-as-go", NO_URL_LISTS, "HTTPS://foo/bar", False),
    # Go's url.Parse refuses these (ours approximates it)
    ("control-character", NO_URL_LISTS, "http://foo/b\nar", True),
    ("bad-escape-in-path", NO_URL_LISTS, "http://foo/%zz", True),
    ("bad-escape-in-query-is-fine", NO_URL_LISTS, "http://foo/?q=%zz", False),
    ("bad-port", NO_URL_LISTS, "http://foo:bar/", True),
    ("space-in-host", NO_URL_LISTS, "http://fo o/", True),
    ("unclosed-ipv6", NO_URL_LISTS, "http://[::1/", True),
    ("ipv6-with-port", NO_URL_LISTS, "http://[::1]:8080/x", False),
]


@pytest.mark.parametrize(
    ("rules", "url", "refused"), [c[1:] for c in URL_CASES], ids=[c[0] for c in URL_CASES]
)
def test_url_rules(rules: URLRules, url: str, refused: bool) -> None:
    assert (rules.problem(url) is not None) == refused


def test_unset_lists_refuse_every_url_as_the_reference() -> None:
    # app.go: "If Allow and Deny are empty, allow nothing" (the allow regexp ^$).
    assert CLOSED.allow == () and CLOSED.deny is None
    assert "accepts no URLs" in (CLOSED.problem("https://example.com/") or "")


# --- which references the rules touch, and which must exist ----------------------------------

CONFIG = {
    "mediaType": "application/vnd.oci.image.config.v1+json",
    "digest": "sha256:" + "a" * 64,
    "size": 2,
}
LAYER_DIGEST = "sha256:" + "b" * 64


def _manifest(media_type: str, layer_type: str, urls: Any) -> bytes:
    layer: dict[str, Any] = {"mediaType": layer_type, "digest": LAYER_DIGEST, "size": 5}
    if urls is not None:
        layer["urls"] = urls
    doc = {"schemaVersion": 2, "mediaType": media_type, "config": CONFIG, "layers": [layer]}
    return json.dumps(doc).encode()


GOOD = ["https://foo/layer"]
BAD = ["file:///etc/passwd"]
LAYER_CASES = [
    # (id, manifest type, layer type, urls, rules, refused, layer must exist)
    ("docker-foreign-without-urls", DOCKER_MANIFEST, DOCKER_FOREIGN, None, FOO, True, None),
    ("docker-foreign-good-url", DOCKER_MANIFEST, DOCKER_FOREIGN, GOOD, FOO, False, False),
    ("docker-foreign-bad-url", DOCKER_MANIFEST, DOCKER_FOREIGN, BAD, FOO, True, None),
    ("docker-foreign-closed", DOCKER_MANIFEST, DOCKER_FOREIGN, GOOD, CLOSED, True, None),
    ("docker-layer-urls-ignored", DOCKER_MANIFEST, DOCKER_LAYER, BAD, CLOSED, False, True),
    ("oci-nondist-without-urls", OCI_MANIFEST, OCI_NONDIST_GZIP, None, FOO, False, True),
    ("oci-nondist-good-url", OCI_MANIFEST, OCI_NONDIST_GZIP, GOOD, FOO, False, False),
    ("oci-nondist-bad-url", OCI_MANIFEST, OCI_NONDIST_GZIP, BAD, FOO, True, None),
    ("oci-nondist-closed", OCI_MANIFEST, OCI_NONDIST_GZIP, GOOD, CLOSED, True, None),
    ("oci-layer-good-url-still-exists", OCI_MANIFEST, OCI_LAYER_GZIP, GOOD, FOO, False, True),
    ("oci-layer-bad-url", OCI_MANIFEST, OCI_LAYER_GZIP, BAD, FOO, True, None),
    ("oci-layer-closed", OCI_MANIFEST, OCI_LAYER_GZIP, GOOD, CLOSED, True, None),
    ("oci-zstd-urls-ignored", OCI_MANIFEST, OCI_LAYER_ZSTD, BAD, CLOSED, False, True),
    ("oci-docker-foreign-good-url", OCI_MANIFEST, DOCKER_FOREIGN, GOOD, FOO, False, False),
    ("oci-docker-foreign-without-urls", OCI_MANIFEST, DOCKER_FOREIGN, None, FOO, False, True),
    ("empty-urls-list", OCI_MANIFEST, OCI_NONDIST_GZIP, [], CLOSED, False, True),
]


@pytest.mark.parametrize(
    ("manifest_type", "layer_type", "urls", "rules", "refused", "exists"),
    [c[1:] for c in LAYER_CASES],
    ids=[c[0] for c in LAYER_CASES],
)
def test_layer_urls(
    manifest_type: str, layer_type: str, urls: Any, rules: URLRules, refused: bool, exists: Any
) -> None:
    body = _manifest(manifest_type, layer_type, urls)
    if refused:
        with pytest.raises(RegistryError) as e:
            parse_manifest(manifest_type, body, rules)
        codes = [code for code, _, _ in e.value.entries]
        # 400 MANIFEST_INVALID where the reference answers 500 UNKNOWN, then its BLOB_UNKNOWN
        assert codes == [ErrorCode.MANIFEST_INVALID, ErrorCode.MANIFEST_BLOB_UNKNOWN]
        assert e.value.status == 400
        assert e.value.entries[0][2]["digest"] == LAYER_DIGEST
        if urls:
            assert e.value.entries[0][2]["url"] == urls[0]
        return
    parsed = parse_manifest(manifest_type, body, rules)
    assert (LAYER_DIGEST in {str(d.digest) for d in parsed.blobs}) == exists
    assert CONFIG["digest"] in {str(d.digest) for d in parsed.blobs}


@pytest.mark.parametrize("urls", ["https://foo/x", [1], {"a": "b"}])
def test_urls_must_be_a_list_of_strings(urls: Any) -> None:
    with pytest.raises(RegistryError) as e:
        parse_manifest(OCI_MANIFEST, _manifest(OCI_MANIFEST, OCI_LAYER_GZIP, urls))
    assert e.value.code is ErrorCode.MANIFEST_INVALID


def test_every_refused_layer_is_reported_with_a_bounded_detail() -> None:
    long_url = "ftp://" + "x" * 10_000
    layers = [
        {"mediaType": OCI_NONDIST_GZIP, "digest": f"sha256:{i:064x}", "size": 1, "urls": [url]}
        for i, url in enumerate(["https://ok/", long_url, "file:///x"])
    ]
    body = json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": CONFIG, "layers": layers}
    ).encode()
    with pytest.raises(RegistryError) as e:
        parse_manifest(OCI_MANIFEST, body, NO_URL_LISTS)
    invalid = [d for code, _, d in e.value.entries if code is ErrorCode.MANIFEST_INVALID]
    assert [d["digest"] for d in invalid] == [f"sha256:{1:064x}", f"sha256:{2:064x}"]
    assert len(invalid[0]["url"]) == 512


# --- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["allow", "deny"])
def test_invalid_pattern_is_a_config_error_naming_the_key(tmp_path: Path, key: str) -> None:
    path = tmp_path / "config.yml"
    path.write_text(
        f"version: 0.1\nvalidation:\n  manifests:\n    urls:\n      {key}: ['(unclosed']\n"
    )
    with pytest.raises(ConfigError, match=rf"^validation\.manifests\.urls\.{key}: invalid regular"):
        load_config(str(path), {})


# --- over HTTP, through build_app ------------------------------------------------------------


async def _serve(
    nursery: trio.Nursery, tmp_path: Path, validation: str, environ: dict[str, str]
) -> str:
    path = tmp_path / "config.yml"
    path.write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path / 'data'}\n"
        + validation
    )
    config, _ = load_config(str(path), environ)
    return await serve_asgi(nursery, build_app(config))


async def _push_with_url(client: httpx.AsyncClient, url: str) -> httpx.Response:
    """Push an OCI manifest whose only layer is non-distributable at `url` (its bytes are
    never pushed: clients fetch them from the URL)."""
    config = b'{"architecture":"amd64","os":"linux"}'
    await push_blob(client, "app", config)
    layer = descriptor(OCI_NONDIST_GZIP, b"windows base layer", urls=[url])
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor("application/vnd.oci.image.config.v1+json", config),
            "layers": [layer],
        }
    ).encode()
    return await client.put(
        "/v2/app/manifests/v1", content=body, headers={"Content-Type": OCI_MANIFEST}
    )


ALLOW_DENY = (
    "validation:\n  manifests:\n    urls:\n"
    "      allow: ['^https://mirror\\.example/']\n"
    "      deny: ['^https://mirror\\.example/private/']\n"
)
HTTP_CASES = [
    # (id, validation section, environment, url, expected status)
    ("unset-refuses", "", {}, "https://mirror.example/l", 400),
    ("allow-accepts", ALLOW_DENY, {}, "https://mirror.example/l", 201),
    ("allow-refuses-others", ALLOW_DENY, {}, "https://elsewhere.example/l", 400),
    ("deny-refuses", ALLOW_DENY, {}, "https://mirror.example/private/l", 400),
    (
        "allow-from-environment",
        "",
        {"REGISTRY_VALIDATION_MANIFESTS_URLS_ALLOW": "['^https://mirror']"},
        "https://mirror.example/l",
        201,
    ),
    ("disabled-accepts", "validation:\n  disabled: true\n", {}, "https://anywhere.example/l", 201),
    (
        "disabled-still-refuses-fragments",
        "validation:\n  disabled: true\n",
        {},
        "https://a/l#x",
        400,
    ),
]


@pytest.mark.parametrize(
    ("validation", "environ", "url", "status"),
    [c[1:] for c in HTTP_CASES],
    ids=[c[0] for c in HTTP_CASES],
)
async def test_push_with_layer_url(
    nursery: trio.Nursery,
    tmp_path: Path,
    validation: str,
    environ: dict[str, str],
    url: str,
    status: int,
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        base = await _serve(nursery, tmp_path, validation, environ)
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            r = await _push_with_url(client, url)
            assert r.status_code == status, r.text
            if status == 201:
                got = await client.get("/v2/app/manifests/v1", headers={"Accept": OCI_MANIFEST})
                assert (
                    got.status_code == 200
                    and digest(got.content) == r.headers["docker-content-digest"]
                )
                return
            errors = r.json()["errors"]
            assert [e["code"] for e in errors] == ["MANIFEST_INVALID", "MANIFEST_BLOB_UNKNOWN"]
            assert errors[0]["detail"]["url"] == url
            missing = await client.get("/v2/app/manifests/v1", headers={"Accept": OCI_MANIFEST})
            assert missing.status_code == 404
