"""Token auth as the reference's ``auth.token`` (issue 6, item 3), against a small token
issuer of our own (``Issuer`` below: signs ES256 JWTs with cryptography)."""

from __future__ import annotations

import base64
import json
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import trio
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypercorn.config import Config as HyperConfig
from hypercorn.trio import serve
from hypothesis import given, settings
from hypothesis import strategies as st
from oci import push_blob, push_image
from test_auth_htpasswd import serve_with_auth
from test_auth_process import docker_cli, run_registry

from registry.auth import build_authenticator
from registry.auth.token import (
    TokenAuth,
    TokenError,
    TokenVerifier,
    b64url_encode,
    jwk_thumbprint,
    libtrust_key_id,
    needed_access,
)
from registry.config import ConfigError, load_config
from registry.http.routes import ROUTES

try:  # tests/ is a plain directory on sys.path, or a package
    from tests import e2e_support as e2e
except ImportError:
    import e2e_support as e2e  # type: ignore[no-redef]

_ = docker_cli  # the session fixture, used by the docker test below

ISSUER = "test-issuer"
SERVICE = "test-registry"
REALM = "https://auth.example/token"
NOW = 1_800_000_000.0


def jws(header: dict[str, Any], payload: dict[str, Any], key: Any) -> str:
    """A JWS compact token signed with ``key`` by ``header['alg']`` (our issuer's signer)."""
    signing_input = (b64url_encode(json.dumps(header).encode()) + "." +
                     b64url_encode(json.dumps(payload).encode()))
    data, alg = signing_input.encode(), header["alg"]
    if alg.startswith("ES"):
        h = {"256": hashes.SHA256(), "384": hashes.SHA384(), "512": hashes.SHA512()}[alg[2:]]
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(h)))
        size = (key.curve.key_size + 7) // 8
        sig = r.to_bytes(size, "big") + s.to_bytes(size, "big")
    elif alg.startswith("RS"):
        sig = key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    elif alg.startswith("PS"):
        sig = key.sign(data, padding.PSS(mgf=padding.MGF1(hashes.SHA256()),
                                         salt_length=32), hashes.SHA256())
    elif alg == "EdDSA":
        sig = key.sign(data)
    else:
        sig = b"forged"
    return signing_input + "." + b64url_encode(sig)


class Issuer:
    """Our token issuer: one ES256 key, its self-signed certificate as the root bundle."""

    def __init__(self, tmp_path: Path) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "token signer")])
        import datetime

        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .sign(self.key, hashes.SHA256())
        )
        self.bundle = tmp_path / "token-root.pem"
        self.bundle.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self.kid = libtrust_key_id(self.key.public_key())

    def token(self, access: list[dict[str, Any]], *, sub: str = "alice", now: float | None = None,
              ttl: float = 300, **claims: Any) -> str:
        now = time.time() if now is None else now
        payload = {"iss": ISSUER, "sub": sub, "aud": SERVICE, "exp": now + ttl, "nbf": now - 1,
                   "iat": now, "jti": str(now), "access": access, **claims}
        return jws({"typ": "JWT", "alg": "ES256", "kid": self.kid}, payload, self.key)

    def scopes_to_access(self, scopes: list[str]) -> list[dict[str, Any]]:
        access = []
        for scope in scopes:
            typ, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": typ, "name": name, "actions": actions.split(",")})
        return access


def repo(name: str, *actions: str) -> dict[str, Any]:
    return {"type": "repository", "name": name, "actions": list(actions)}


@pytest.fixture
def issuer(tmp_path: Path) -> Issuer:
    return Issuer(tmp_path)


def verifier_for(issuer: Issuer, clock: float = NOW, **kw: Any) -> TokenVerifier:
    key = issuer.key.public_key()
    return TokenVerifier(ISSUER, SERVICE, {issuer.kid: key, jwk_thumbprint(key): key},
                         (issuer.cert,), clock=lambda: clock, **kw)


# --- verification: a table of tokens ---------------------------------------------------------


def test_a_good_token_gives_subject_and_access(issuer: Issuer) -> None:
    claims = verifier_for(issuer).verify(issuer.token([repo("a/b", "pull", "push")], now=NOW))
    assert claims.subject == "alice"
    assert claims.allows("repository", "a/b", "push")
    assert not claims.allows("repository", "a/b", "delete")
    assert not claims.allows("repository", "a/bc", "pull")


def test_kid_may_be_the_jwk_thumbprint(issuer: Issuer) -> None:
    payload = {"iss": ISSUER, "aud": [SERVICE, "other"], "exp": NOW + 10, "access": []}
    tok = jws({"alg": "ES256", "kid": jwk_thumbprint(issuer.key.public_key())}, payload,
              issuer.key)
    assert verifier_for(issuer).verify(tok).subject is None


def test_libtrust_key_id_shape(issuer: Issuer) -> None:
    kid = issuer.kid
    assert len(kid) == 59 and kid.count(":") == 11
    assert all(len(g) == 4 and g.isupper() or g.isdigit() for g in kid.split(":"))


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"iss": "someone-else"}, "wrong issuer"),
        ({"aud": "other-registry"}, "wrong audience"),
        ({"aud": ["a", "b"]}, "wrong audience"),
        ({"exp": NOW - 61}, "token expired"),
        ({"exp": "tomorrow"}, "token expired"),
        ({"nbf": NOW + 61}, "token not yet valid"),
    ],
)
def test_bad_claims_are_rejected(issuer: Issuer, change: dict[str, Any], reason: str) -> None:
    payload = {"iss": ISSUER, "aud": SERVICE, "exp": NOW + 60, "nbf": NOW, "access": []}
    payload.update(change)
    tok = jws({"alg": "ES256", "kid": issuer.kid}, payload, issuer.key)
    with pytest.raises(TokenError, match=reason):
        verifier_for(issuer).verify(tok)


def test_clock_skew_within_leeway_is_accepted(issuer: Issuer) -> None:
    v = verifier_for(issuer)
    assert v.verify(issuer.token([], now=NOW - 300 - 30, ttl=300))  # expired 30 s ago
    assert v.verify(issuer.token([], now=NOW + 30))  # nbf 29 s ahead


def test_signature_and_key_attacks_are_rejected(issuer: Issuer) -> None:
    v = verifier_for(issuer)
    good = issuer.token([repo("a", "pull")], now=NOW)
    h, p, s = good.split(".")
    forged_payload = b64url_encode(json.dumps(
        {"iss": ISSUER, "aud": SERVICE, "exp": NOW + 60, "access": [repo("a", "push")]}).encode())
    other = ec.generate_private_key(ec.SECP256R1())
    claims = {"iss": ISSUER, "aud": SERVICE, "exp": NOW + 60}
    cases = {
        "tampered payload": f"{h}.{forged_payload}.{s}",
        "alg none": jws({"alg": "none", "kid": issuer.kid}, claims, None),
        "HS256 with the public key": jws({"alg": "HS256", "kid": issuer.kid}, claims, None),
        "unknown kid": jws({"alg": "ES256", "kid": "nope"}, claims, issuer.key),
        "no kid": jws({"alg": "ES256"}, claims, issuer.key),
        "other key, trusted kid": jws({"alg": "ES256", "kid": issuer.kid}, claims, other),
        "embedded jwk only": jws({"alg": "ES256", "jwk": {"kty": "EC"}}, claims, other),
        "alg/key mismatch": jws({"alg": "RS256", "kid": issuer.kid}, claims,
                                rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        "two parts": f"{h}.{p}",
        "padding": f"{h}=.{p}.{s}",
        "garbage": "not a token at all",
        "huge": "a" * 20000,
    }
    for what, token in cases.items():
        with pytest.raises(TokenError):
            v.verify(token)
            pytest.fail(what)


def test_x5c_chain_to_the_root_bundle() -> None:
    ca = trustme.CA()
    intermediate = ca.create_child_ca()
    leaf = intermediate.issue_cert("token-signer")
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
    chain = [x509.load_pem_x509_certificate(b.bytes()) for b in leaf.cert_chain_pems]
    x5c = [base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode()
           for c in chain[:2]]  # leaf, intermediate (the root is in the bundle)
    root = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    now = time.time()
    claims = {"iss": ISSUER, "aud": SERVICE, "exp": now + 60, "sub": "ci", "access": []}
    v = TokenVerifier(ISSUER, SERVICE, {}, (root,))
    assert v.verify(jws({"alg": "ES256", "x5c": x5c}, claims, key)).subject == "ci"
    with pytest.raises(TokenError, match="trusted root"):  # the intermediate left out
        v.verify(jws({"alg": "ES256", "x5c": x5c[:1]}, claims, key))
    stranger = trustme.CA()
    with pytest.raises(TokenError, match="trusted root"):
        TokenVerifier(ISSUER, SERVICE, {}, (x509.load_pem_x509_certificate(
            stranger.cert_pem.bytes()),)).verify(jws({"alg": "ES256", "x5c": x5c}, claims, key))
    with pytest.raises(TokenError):  # right chain, wrong signing key
        v.verify(jws({"alg": "ES256", "x5c": x5c}, claims, ec.generate_private_key(ec.SECP256R1())))


@pytest.mark.parametrize("alg", ["RS256", "PS256", "EdDSA", "ES384"])
def test_other_algorithms_via_jwks(tmp_path: Path, alg: str) -> None:
    if alg.startswith(("RS", "PS")):
        key: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        nums = key.public_key().public_numbers()
        jwk = {"kty": "RSA", "kid": "k1", "n": b64url_encode(nums.n.to_bytes(256, "big")),
               "e": b64url_encode(nums.e.to_bytes(3, "big"))}
    elif alg == "EdDSA":
        key = ed25519.Ed25519PrivateKey.generate()
        raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                            serialization.PublicFormat.Raw)
        jwk = {"kty": "OKP", "crv": "Ed25519", "kid": "k1", "x": b64url_encode(raw)}
    else:
        key = ec.generate_private_key(ec.SECP384R1())
        nums = key.public_key().public_numbers()
        jwk = {"kty": "EC", "crv": "P-384", "kid": "k1", "x": b64url_encode(nums.x.to_bytes(48, "big")),
               "y": b64url_encode(nums.y.to_bytes(48, "big"))}
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    config, _ = load_config(None, {
        "REGISTRY_AUTH": "token", "REGISTRY_AUTH_TOKEN_REALM": REALM,
        "REGISTRY_AUTH_TOKEN_SERVICE": SERVICE, "REGISTRY_AUTH_TOKEN_ISSUER": ISSUER,
        "REGISTRY_AUTH_TOKEN_JWKS": str(tmp_path / "jwks.json"),
    })
    auth = build_authenticator(config)
    assert isinstance(auth, TokenAuth)
    tok = jws({"alg": alg, "kid": "k1"},
              {"iss": ISSUER, "aud": SERVICE, "exp": time.time() + 60, "sub": "u"}, key)
    assert auth.verifier.verify(tok).subject == "u"


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.text(max_size=300),
    st.lists(st.binary(max_size=80).map(b64url_encode), min_size=3, max_size=3).map(".".join),
    st.tuples(st.dictionaries(st.sampled_from(["alg", "kid", "x5c", "typ"]),
                              st.one_of(st.text(max_size=10), st.integers(), st.lists(st.text(max_size=5)),
                                        st.sampled_from(["ES256", "none", "HS256"]))),
              st.dictionaries(st.sampled_from(["iss", "aud", "exp", "nbf", "access", "sub"]),
                              st.one_of(st.text(max_size=10), st.integers(), st.none(),
                                        st.lists(st.integers())))).map(
        lambda hp: ".".join([b64url_encode(json.dumps(hp[0]).encode()),
                             b64url_encode(json.dumps(hp[1]).encode()), "c2ln"])),
))
def test_any_token_shape_is_token_error_or_claims(token: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    v = TokenVerifier(ISSUER, SERVICE, {"k": key}, ())
    with pytest.raises(TokenError):
        v.verify(token)


# --- what each request needs -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "method", "name", "needed"),
    [
        ("base", "GET", None, []),
        ("catalog", "GET", None, [("registry", "catalog", "*")]),
        ("manifest", "GET", "a", [("repository", "a", "pull")]),
        ("manifest", "PUT", "a", [("repository", "a", "pull"), ("repository", "a", "push")]),
        ("upload", "PATCH", "a", [("repository", "a", "pull"), ("repository", "a", "push")]),
        ("blob", "DELETE", "a", [("repository", "a", "delete")]),
        ("admin_gc", "POST", None, [("registry", "admin", "*")]),
    ],
)
def test_needed_access(route: str, method: str, name: str | None, needed: list) -> None:
    action = {r.label: r for r in ROUTES}[route].access[method]  # the route table's
    assert needed_access(action, name) == needed


def test_missing_settings_are_config_errors(tmp_path: Path) -> None:
    base = {"REGISTRY_AUTH": "token", "REGISTRY_AUTH_TOKEN_REALM": REALM,
            "REGISTRY_AUTH_TOKEN_SERVICE": SERVICE, "REGISTRY_AUTH_TOKEN_ISSUER": ISSUER}
    for env, message in (
        (base, "auth.token.rootcertbundle: required"),
        ({**base, "REGISTRY_AUTH_TOKEN_ROOTCERTBUNDLE": str(tmp_path / "none.pem")},
         "auth.token.rootcertbundle: .*cannot read"),
        ({**base, "REGISTRY_AUTH_TOKEN_REALM": ""}, "auth.token.realm: required"),
        ({**base, "REGISTRY_AUTH_TOKEN_JWKS": str(tmp_path / "bad.json")}, "auth.token.jwks"),
    ):
        (tmp_path / "bad.json").write_text("[1]")
        config, _ = load_config(None, env)
        with pytest.raises(ConfigError, match=message):
            build_authenticator(config)


# --- over HTTP -------------------------------------------------------------------------------


@pytest.fixture
async def token_registry(nursery: trio.Nursery, tmp_path: Path, issuer: Issuer) -> str:
    config, _ = load_config(None, {
        "REGISTRY_AUTH": "token", "REGISTRY_AUTH_TOKEN_REALM": REALM,
        "REGISTRY_AUTH_TOKEN_SERVICE": SERVICE, "REGISTRY_AUTH_TOKEN_ISSUER": ISSUER,
        "REGISTRY_AUTH_TOKEN_ROOTCERTBUNDLE": str(issuer.bundle),
    })
    auth = build_authenticator(config)
    return await serve_with_auth(nursery, tmp_path, auth)  # type: ignore[arg-type]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_challenges_name_the_scope_each_request_needs(token_registry: str) -> None:
    prefix = f'Bearer realm="{REALM}",service="{SERVICE}"'
    async with httpx.AsyncClient(base_url=token_registry) as c:
        for method, path, scope in (
            ("GET", "/v2/", None),
            ("GET", "/v2/_catalog", "registry:catalog:*"),
            ("GET", "/v2/team/app/manifests/v1", "repository:team/app:pull"),
            ("POST", "/v2/team/app/blobs/uploads/", "repository:team/app:pull,push"),
            ("DELETE", "/v2/team/app/manifests/v1", "repository:team/app:delete"),
        ):
            r = await c.request(method, path)
            assert r.status_code == 401
            assert r.json()["errors"][0]["code"] == "UNAUTHORIZED"
            expected = prefix + (f',scope="{scope}"' if scope else "")
            assert r.headers["WWW-Authenticate"] == expected
        r = await c.get("/v2/", headers=bearer("garbage"))
        assert r.status_code == 401 and 'error="invalid_token"' in r.headers["WWW-Authenticate"]
        r = await c.get("/v2/", auth=("alice", "pw"))  # Basic is not a token
        assert r.status_code == 401


async def test_tokens_grant_exactly_their_access(token_registry: str, issuer: Issuer) -> None:
    push = issuer.token([repo("team/app", "pull", "push"), repo("base/img", "pull")])
    pull_only = issuer.token([repo("team/app", "pull")])
    async with httpx.AsyncClient(base_url=token_registry) as c:
        assert (await c.get("/v2/", headers=bearer(pull_only))).status_code == 200
        c.headers.update(bearer(push))
        digest, _ = await push_image(c, "team/app", "v1")
        r = await c.get("/v2/other/manifests/v1")
        assert r.status_code == 401
        assert r.headers["WWW-Authenticate"].endswith(
            'scope="repository:other:pull",error="insufficient_scope"')
        assert (await c.get("/v2/_catalog")).status_code == 401
        assert (await c.delete(f"/v2/team/app/manifests/{digest}")).status_code == 401
    async with httpx.AsyncClient(base_url=token_registry, headers=bearer(pull_only)) as c:
        assert (await c.get("/v2/team/app/manifests/v1")).status_code == 200
        assert (await c.post("/v2/team/app/blobs/uploads/")).status_code == 401
    catalog = issuer.token([{"type": "registry", "name": "catalog", "actions": ["*"]}])
    async with httpx.AsyncClient(base_url=token_registry, headers=bearer(catalog)) as c:
        assert (await c.get("/v2/_catalog")).status_code == 200


async def test_mount_needs_pull_on_the_source(token_registry: str, issuer: Issuer) -> None:
    async with httpx.AsyncClient(base_url=token_registry) as c:
        c.headers.update(bearer(issuer.token([repo("src", "pull", "push")])))
        layer = await push_blob(c, "src", b"shared layer")
        c.headers.update(bearer(issuer.token([repo("dst", "pull", "push")])))
        r = await c.post(f"/v2/dst/blobs/uploads/?mount={layer}&from=src")
        assert r.status_code == 202
        c.headers.update(bearer(issuer.token([repo("dst", "pull", "push"), repo("src", "pull")])))
        r = await c.post(f"/v2/dst/blobs/uploads/?mount={layer}&from=src")
        assert r.status_code == 201


# --- docker login/push/pull through our issuer ---------------------------------------------


class TokenServer:
    """Docker's token endpoint: GET ?service=&scope=...&account= with Basic credentials."""

    def __init__(self, issuer: Issuer, users: dict[str, str]) -> None:
        self.issuer = issuer
        self.users = users
        self.requests: list[dict[str, list[str]]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                await send({"type": msg["type"] + ".complete"})
                if msg["type"] == "lifespan.shutdown":
                    return
        query = parse_qs(scope["query_string"].decode())
        self.requests.append(query)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        user = None
        auth = headers.get("authorization", "")
        if auth.lower().startswith("basic "):
            name, _, pw = base64.b64decode(auth[6:]).decode().partition(":")
            if self.users.get(name) == pw:
                user = name
        if user is None and auth:
            status, body = 401, {"errors": [{"code": "UNAUTHORIZED"}]}
        else:
            scopes = [s for item in query.get("scope", []) for s in item.split(" ")]
            access = self.issuer.scopes_to_access(scopes)
            if user is None:  # anonymous: pull only
                access = [{**a, "actions": [x for x in a["actions"] if x == "pull"]}
                          for a in access if a["type"] == "repository"]
            token = self.issuer.token(access, sub=user or "")
            status, body = 200, {"token": token, "access_token": token, "expires_in": 300}
        data = json.dumps(body).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": data})


def serve_in_thread(app: Any) -> tuple[str, Any]:
    """Serve an ASGI app on 127.0.0.1 in a thread; returns (url, stop)."""
    started: dict[str, Any] = {}
    ready = threading.Event()

    async def main() -> None:
        hc = HyperConfig()
        hc.bind = ["127.0.0.1:0"]
        hc.accesslog = None
        hc.graceful_timeout = 0.2
        stop = trio.Event()
        started["stop"] = (trio.lowlevel.current_trio_token(), stop)
        async with trio.open_nursery() as n:
            urls = await n.start(partial(serve, app, hc, shutdown_trigger=stop.wait))
            started["url"] = urls[0]
            ready.set()

    thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
    thread.start()
    assert ready.wait(10)

    def stop() -> None:
        token, event = started["stop"]
        trio.from_thread.run_sync(event.set, trio_token=token)
        thread.join(10)

    return started["url"], stop


@pytest.mark.e2e
def test_docker_login_push_pull_with_token_auth(
    tmp_path: Path, issuer: Issuer, docker_cli: str
) -> None:
    docker = docker_cli
    server = TokenServer(issuer, {"alice": "wonderland"})
    realm, stop = serve_in_thread(server)
    config = {"auth": {"token": {"realm": f"{realm}/token", "service": SERVICE,
                                 "issuer": ISSUER, "rootcertbundle": str(issuer.bundle)}}}
    conf_dir = tmp_path / "docker-config"
    conf_dir.mkdir()
    cli = [docker, "--config", str(conf_dir)]
    try:
        with run_registry(tmp_path, config) as reg:
            ref = f"{reg.host}/token/busybox:v1"
            e2e.run([docker, "tag", e2e.ensure_base_image(docker), ref])
            try:
                e2e.run([*cli, "login", reg.host, "-u", "alice", "--password-stdin"],
                        input=b"wonderland")
                e2e.run([*cli, "push", ref])
                e2e.docker_remove_images(docker, ref)
                e2e.run([*cli, "pull", ref])
                e2e.run([*cli, "logout", reg.host])
                e2e.docker_remove_images(docker, ref)
                e2e.run([*cli, "pull", ref])  # anonymous tokens carry pull only
                denied = e2e.run([*cli, "push", ref], check=False)
                assert denied.returncode != 0
            finally:
                e2e.docker_remove_images(docker, ref)
    finally:
        stop()
    scopes = [s for q in server.requests for s in q.get("scope", [])]
    assert any("repository:token/busybox:" in s and "push" in s for s in scopes), scopes
    assert all(q.get("service") == [SERVICE] for q in server.requests)
