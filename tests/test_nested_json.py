"""JSON a client controls is parsed with depth limits: deep nesting is a 400 or 401 with the
spec's JSON error, never a 500 with a traceback (issue 12, item 3)."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import pytest
from oci import OCI_MANIFEST, descriptor, digest, error_codes, push_blob
from test_auth_token import ISSUER, SERVICE, Issuer, bearer, issuer, repo, token_registry

from registry import safejson
from registry.auth.token import TokenError, TokenVerifier
from registry.storage.manifests import parse_references, sniff_media_type, summarize

_ = issuer, token_registry  # fixtures, used below

DEPTHS = (safejson.MAX_DEPTH + 1, 1_000, 100_000)


def nested(depth: int, leaf: str = "0") -> str:
    """``depth`` levels of alternating arrays and objects around ``leaf``, as text."""
    opens = "".join('{"k":' if i % 2 else "[" for i in range(depth - 1)) + "["
    closes = "]" + "".join("}" if i % 2 else "]" for i in reversed(range(depth - 1)))
    return opens + leaf + closes


def test_nested_text_has_the_depth_it_says() -> None:
    for depth in (1, 2, 7, safejson.MAX_DEPTH):
        doc = json.loads(nested(depth))
        assert not safejson.depth_exceeds(doc, depth)
        assert safejson.depth_exceeds(doc, depth - 1)


@pytest.mark.parametrize("depth", DEPTHS)
def test_loads_refuses_deep_documents_as_value_errors(depth: int) -> None:
    with pytest.raises(safejson.JSONLimitError):
        safejson.loads(nested(depth))
    assert safejson.loads(nested(safejson.MAX_DEPTH)) is not None


def test_loads_refuses_documents_over_the_size_limit() -> None:
    with pytest.raises(safejson.JSONLimitError):
        safejson.loads(b'"' + b"a" * 100 + b'"', max_bytes=50)
    assert safejson.loads(b'"aa"', max_bytes=50) == "aa"


def test_stored_documents_are_read_at_top_level_however_deep() -> None:
    """Readers of stored manifests (which the reference may have accepted with nesting up to
    10,000) see their top level, and never raise on what they cannot parse."""
    cfg = {"mediaType": "x", "digest": digest(b"c"), "size": 1}
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cfg,
                       "layers": [], "x-extension": json.loads(nested(200))}).encode()
    assert sniff_media_type(body) == OCI_MANIFEST
    refs = parse_references(body)
    assert refs.ok and refs.blobs == (cfg["digest"],)
    for depth in DEPTHS[1:]:
        too_deep = nested(depth).encode()
        assert sniff_media_type(too_deep) == OCI_MANIFEST
        assert parse_references(too_deep).ok is False
        assert summarize(too_deep).subject is None


def _manifest(where: str, depth: int) -> bytes:
    """An otherwise valid OCI manifest with a ``depth``-deep value at ``where``."""
    deep = nested(depth)
    layer = json.dumps(descriptor("application/vnd.oci.image.layer.v1.tar", b"layer"))
    cfg = json.dumps(descriptor("application/vnd.oci.image.config.v1+json", b"{}"))
    parts = {
        "schemaVersion": "2", "mediaType": json.dumps(OCI_MANIFEST), "config": cfg,
        "layers": f"[{layer}]",
    }
    if where == "top":
        return deep.encode()
    if where == "annotations":
        parts["annotations"] = '{"a": ' + deep + "}"
    elif where == "layers":
        parts["layers"] = f"[{layer}, {deep}]"
    elif where == "config":
        parts["config"] = cfg[:-1] + ', "platform": ' + deep + "}"
    elif where == "extension":
        parts["x-vendor"] = deep
    return ("{" + ", ".join(f'"{k}": {v}' for k, v in parts.items()) + "}").encode()


@pytest.mark.parametrize("where", ["top", "annotations", "layers", "config", "extension"])
@pytest.mark.parametrize("depth", DEPTHS)
async def test_deeply_nested_manifest_is_manifest_invalid_push_17(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, where: str, depth: int
) -> None:
    await push_blob(client, "deep", b"layer")
    await push_blob(client, "deep", b"{}")
    body = _manifest(where, depth)
    with caplog.at_level(logging.ERROR):
        for ref in ("v1", digest(body)):
            r = await client.put(f"/v2/deep/manifests/{ref}", content=body,
                                 headers={"Content-Type": OCI_MANIFEST})
            assert r.status_code == 400, r.text
            assert error_codes(r) == ["MANIFEST_INVALID"]
    assert not [rec for rec in caplog.records if rec.exc_info], "a traceback was logged"
    r = await client.get("/v2/deep/manifests/v1")
    assert r.status_code == 404


async def test_moderately_nested_manifest_is_still_accepted(client: httpx.AsyncClient) -> None:
    await push_blob(client, "deep", b"layer")
    await push_blob(client, "deep", b"{}")
    body = _manifest("extension", safejson.MAX_DEPTH - 1)
    r = await client.put("/v2/deep/manifests/v1", content=body,
                         headers={"Content-Type": OCI_MANIFEST})
    assert r.status_code == 201, r.text
    r = await client.get("/v2/deep/manifests/v1")
    assert r.status_code == 200 and r.content == body


def _unsigned(header: str, payload: str) -> str:
    from registry.auth.token import b64url_encode

    return ".".join([b64url_encode(header.encode()), b64url_encode(payload.encode()), "c2ln"])


@pytest.mark.parametrize("depth", DEPTHS[:2])  # 100,000 levels exceed the token size limit
def test_deeply_nested_token_is_a_token_error(depth: int) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    v = TokenVerifier(ISSUER, SERVICE, {"k": key}, ())
    for token in (_unsigned(nested(depth), "{}"), _unsigned('{"alg":"ES256","kid":"k"}', nested(depth))):
        with pytest.raises(TokenError):
            v.verify(token)


async def test_deeply_nested_signed_claims_are_refused(issuer: Issuer) -> None:
    """A correctly signed token whose claims nest deeply is refused too (its access list is
    read after the signature is checked)."""
    from test_auth_token import NOW, verifier_for

    deep: Any = json.loads(nested(200))
    good = issuer.token([repo("a", "pull")], now=NOW)
    assert verifier_for(issuer).verify(good).subject == "alice"
    with pytest.raises(TokenError):
        verifier_for(issuer).verify(issuer.token([repo("a", "pull")], now=NOW, x=deep))


@pytest.mark.parametrize("depth", DEPTHS[:2])
async def test_deeply_nested_bearer_token_is_401_before_authentication(
    token_registry: str, caplog: pytest.LogCaptureFixture, depth: int
) -> None:
    async with httpx.AsyncClient(base_url=token_registry) as c:
        with caplog.at_level(logging.ERROR):
            for token in (_unsigned(nested(depth), "{}"),
                          _unsigned('{"alg":"ES256","kid":"k"}', nested(depth))):
                r = await c.get("/v2/", headers=bearer(token))
                assert r.status_code == 401, r.text
                assert error_codes(r) == ["UNAUTHORIZED"]
                assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]
        assert not [rec for rec in caplog.records if rec.exc_info], "a traceback was logged"
