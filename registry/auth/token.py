"""Token authentication as the reference's ``auth.token`` (Docker's token auth spec).

Configuration (the reference's keys)::

    auth:
      token:
        realm: https://auth.example.com/token   # where clients get tokens
        service: registry.example.com           # must be in the token's "aud"
        issuer: auth.example.com                 # must be the token's "iss"
        rootcertbundle: /certs/token-ca.pem      # certificates whose keys sign tokens, and/or
        jwks: /certs/token-keys.json             # a JWK set (RFC 7517) of signing keys
        signingalgorithms: [ES256, RS256]        # optional: restrict "alg"

A request without a valid ``Authorization: Bearer <jwt>`` gets 401 with the challenge
``Bearer realm="...",service="...",scope="repository:<name>:pull,push"`` naming the access
the request needs, and ``error="invalid_token"`` when a token was sent but failed
verification; a valid token without the needed access gets 401 ``error="insufficient_scope"``
(the reference answers these with 401 too, which makes clients fetch a wider token).

Verification (pure, :meth:`TokenVerifier.verify`): a JWS compact token; ``alg`` one of
RS256/384/512, PS256/384/512, ES256/384/512, EdDSA (never ``none``, never HMAC); the key is
found by the header's ``x5c`` chain (leaf first, which must end at a certificate of the root
bundle, each certificate issued by the next and within its validity), or by ``kid``: a JWKS
key id, or the key id of a root bundle certificate's public key in libtrust's format (what the
reference and docker's token servers put there) or as an RFC 7638 thumbprint. Claims:
``iss`` equal to ``issuer``, ``aud`` (string or list) containing ``service``, ``exp`` and
``nbf`` with ``LEEWAY_S`` of clock skew. ``access`` is a list of ``{type, name, actions}``.

Access needed per request: pull for GET/HEAD, pull and push for uploads and manifest PUT,
delete for DELETE, ``registry:catalog:*`` for the catalog, ``registry:admin:*`` for our
administration endpoints (``/admin/gc``), nothing beyond a valid token for ``GET /v2/``. A cross-repository mount additionally needs pull on the source repository,
else it falls back to a normal upload.

Size: just past ~400 lines: JWS verification, key loading and the challenge are one
scheme; the pure verifier (TokenVerifier) is tested apart from the HTTP side.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from .. import safejson
from ..config import ConfigError
from .challenge import quote_param, unauthorized
from .policy import ADMIN, BROWSE, CATALOG, PULL, PUSH

if TYPE_CHECKING:
    from ..http.request import Request

log = logging.getLogger("registry.auth")

LEEWAY_S = 60  # clock skew allowed on exp/nbf (the reference's leeway)
MAX_TOKEN_BYTES = 16 * 1024  # a token with many scopes is a few KiB; refuse anything huge
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512",
              "EdDSA")
_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
_EC_CURVES: dict[str, Callable[[], ec.EllipticCurve]] = {
    "P-256": ec.SECP256R1, "P-384": ec.SECP384R1, "P-521": ec.SECP521R1}
_EC_JWK_NAMES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
_EC_SIZES = {"ES256": 32, "ES384": 48, "ES512": 66}

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


class TokenError(Exception):
    """The token is not acceptable; the message says why (never echoes the token)."""


def b64url_decode(text: str) -> bytes:
    if not isinstance(text, str) or any(c in text for c in "=+/ \t\n"):
        raise TokenError("invalid base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise TokenError("invalid base64url") from None


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def libtrust_key_id(key: PublicKey) -> str:
    """The key id docker's libtrust derives: base32 of the first 240 bits of the SHA-256 of
    the DER SubjectPublicKeyInfo, in 12 groups of 4 joined by ':'."""
    der = key.public_bytes(serialization.Encoding.DER,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    b32 = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode()
    return ":".join(b32[i:i + 4] for i in range(0, 48, 4))


def jwk_thumbprint(key: PublicKey) -> str:
    """RFC 7638 SHA-256 thumbprint, base64url."""
    if isinstance(key, rsa.RSAPublicKey):
        nums = key.public_numbers()
        members = {"e": _int_b64(nums.e), "kty": "RSA", "n": _int_b64(nums.n)}
    elif isinstance(key, ec.EllipticCurvePublicKey):
        nums_ec = key.public_numbers()
        size = (key.curve.key_size + 7) // 8
        crv = _EC_JWK_NAMES[key.curve.name]
        members = {"crv": crv, "kty": "EC", "x": b64url_encode(nums_ec.x.to_bytes(size, "big")),
                   "y": b64url_encode(nums_ec.y.to_bytes(size, "big"))}
    else:
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        members = {"crv": "Ed25519", "kty": "OKP", "x": b64url_encode(raw)}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return b64url_encode(hashlib.sha256(canonical).digest())


def _int_b64(n: int) -> str:
    return b64url_encode(n.to_bytes((n.bit_length() + 7) // 8 or 1, "big"))


def _b64_int(text: Any) -> int:
    if not isinstance(text, str):
        raise TokenError("bad JWK member")
    return int.from_bytes(b64url_decode(text), "big")


def jwk_public_key(jwk: Mapping[str, Any]) -> PublicKey:
    """A public key from a JWK (RSA, EC P-256/384/521, OKP Ed25519). Raises TokenError."""
    kty = jwk.get("kty")
    try:
        if kty == "RSA":
            return rsa.RSAPublicNumbers(_b64_int(jwk.get("e")), _b64_int(jwk.get("n"))).public_key()
        if kty == "EC" and jwk.get("crv") in _EC_CURVES:
            curve = _EC_CURVES[jwk["crv"]]()
            return ec.EllipticCurvePublicNumbers(
                _b64_int(jwk.get("x")), _b64_int(jwk.get("y")), curve).public_key()
        if kty == "OKP" and jwk.get("crv") == "Ed25519":
            return ed25519.Ed25519PublicKey.from_public_bytes(b64url_decode(jwk.get("x", "")))
    except ValueError as exc:
        raise TokenError(f"bad JWK: {exc}") from None
    raise TokenError(f"unsupported JWK key type {str(kty)[:20]!r}")


def _verify_signature(alg: str, key: PublicKey, signature: bytes, signed: bytes) -> None:
    try:
        if alg.startswith(("RS", "PS")) and isinstance(key, rsa.RSAPublicKey):
            h = _HASHES[alg[2:]]()
            pad = (padding.PKCS1v15() if alg.startswith("RS")
                   else padding.PSS(mgf=padding.MGF1(h), salt_length=h.digest_size))
            key.verify(signature, signed, pad, h)
            return
        if alg.startswith("ES") and isinstance(key, ec.EllipticCurvePublicKey):
            size = _EC_SIZES[alg]
            if len(signature) != 2 * size or (key.curve.key_size + 7) // 8 != size:
                raise TokenError("signature does not match the key")
            r = int.from_bytes(signature[:size], "big")
            s = int.from_bytes(signature[size:], "big")
            key.verify(encode_dss_signature(r, s), signed, ec.ECDSA(_HASHES[alg[2:]]()))
            return
        if alg == "EdDSA" and isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, signed)
            return
    except InvalidSignature:
        raise TokenError("bad signature") from None
    raise TokenError(f"algorithm {alg} does not match the signing key")


@dataclass(frozen=True)
class Claims:
    subject: str | None
    access: tuple[tuple[str, str, frozenset[str]], ...]  # (type, name, actions)

    def allows(self, type_: str, name: str, action: str) -> bool:
        for t, n, actions in self.access:
            if t == type_ and n == name and (action in actions or "*" in actions):
                return True
        return False


class TokenVerifier:
    """Checks JWTs against trusted keys and roots (see the module doc); pure apart from the
    clock, which tests may replace."""

    def __init__(
        self,
        issuer: str,
        service: str,
        keys: Mapping[str, PublicKey],
        roots: tuple[x509.Certificate, ...] = (),
        algorithms: tuple[str, ...] = ALGORITHMS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.issuer = issuer
        self.service = service
        self.keys = dict(keys)
        self.roots = roots
        self._root_der = {r.public_bytes(serialization.Encoding.DER) for r in roots}
        self.algorithms = algorithms
        self.clock = clock

    def _chain_key(self, x5c: Any) -> PublicKey:
        if not isinstance(x5c, list) or not x5c or len(x5c) > 10:
            raise TokenError("bad x5c")
        try:
            chain = [x509.load_der_x509_certificate(base64.b64decode(c, validate=True))
                     for c in x5c]
        except (ValueError, TypeError, binascii.Error):
            raise TokenError("bad x5c certificate") from None
        now = self.clock()
        for cert in chain:
            if not (cert.not_valid_before_utc.timestamp() - LEEWAY_S <= now
                    <= cert.not_valid_after_utc.timestamp() + LEEWAY_S):
                raise TokenError("x5c certificate outside its validity")
        for i, cert in enumerate(chain):
            if cert.public_bytes(serialization.Encoding.DER) in self._root_der:
                break  # reached a trusted root
            issuers = chain[i + 1:i + 2] or list(self.roots)
            if not any(self._issued_by(cert, issuer) for issuer in issuers):
                raise TokenError("x5c chain does not lead to a trusted root")
            if i + 1 == len(chain):
                break  # last cert, issued by a root
        else:  # pragma: no cover - the loop always breaks
            raise TokenError("x5c chain does not lead to a trusted root")
        key = chain[0].public_key()
        if not isinstance(key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey,
                                ed25519.Ed25519PublicKey)):
            raise TokenError("unsupported x5c key type")
        return key

    @staticmethod
    def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
        try:
            cert.verify_directly_issued_by(issuer)
            return True
        except (ValueError, TypeError, InvalidSignature):
            return False

    def verify(self, token: str) -> Claims:
        """The token's claims if it is valid for this registry; raises TokenError."""
        if len(token) > MAX_TOKEN_BYTES:
            raise TokenError("token too large")
        parts = token.split(".")
        if len(parts) != 3:
            raise TokenError("not a JWS compact token")
        try:
            header = safejson.loads(b64url_decode(parts[0]))
            payload = safejson.loads(b64url_decode(parts[1]))
        except ValueError:  # includes UnicodeDecodeError and safejson's limits
            raise TokenError("undecodable token") from None
        if not isinstance(header, dict) or not isinstance(payload, dict):
            raise TokenError("undecodable token")
        alg = header.get("alg")
        if alg not in self.algorithms:
            raise TokenError(f"algorithm {str(alg)[:20]!r} not accepted")
        if "x5c" in header:
            key = self._chain_key(header["x5c"])
        else:
            kid = header.get("kid")
            if not isinstance(kid, str) or kid not in self.keys:
                raise TokenError("unknown signing key")
            key = self.keys[kid]
        _verify_signature(alg, key, b64url_decode(parts[2]), f"{parts[0]}.{parts[1]}".encode())
        return self._claims(payload)

    def _claims(self, payload: dict[str, Any]) -> Claims:
        if payload.get("iss") != self.issuer:
            raise TokenError("wrong issuer")
        aud = payload.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        if self.service not in audiences:
            raise TokenError("wrong audience")
        now = self.clock()
        exp, nbf = payload.get("exp"), payload.get("nbf")
        if not isinstance(exp, (int, float)) or isinstance(exp, bool) or now > exp + LEEWAY_S:
            raise TokenError("token expired")
        if nbf is not None and (not isinstance(nbf, (int, float)) or now < nbf - LEEWAY_S):
            raise TokenError("token not yet valid")
        access = []
        for entry in payload.get("access") or []:
            if not isinstance(entry, dict):
                continue
            t, n, acts = entry.get("type"), entry.get("name"), entry.get("actions")
            if isinstance(t, str) and isinstance(n, str) and isinstance(acts, list):
                access.append((t, n, frozenset(a for a in acts if isinstance(a, str))))
        sub = payload.get("sub")
        return Claims(sub if isinstance(sub, str) and sub else None, tuple(access))


def needed_access(action: str | None, name: str | None) -> list[tuple[str, str, str]]:
    """(type, name, action) entries a request needs (the reference's access records), for
    its route's access ``action`` (None: none) on repository ``name``."""
    if action is None or action == BROWSE:  # any caller with a valid token
        return []
    if action == CATALOG:
        return [("registry", "catalog", "*")]
    if action == ADMIN:  # outside /v2/ (our /admin/gc): not in the reference's scopes
        return [("registry", "admin", "*")]
    assert name is not None
    if action == PUSH:
        return [("repository", name, PULL), ("repository", name, PUSH)]
    return [("repository", name, action)]


class TokenAuth:
    """The authenticate hook for ``auth.token``."""

    def __init__(self, realm: str, service: str, verifier: TokenVerifier) -> None:
        self.realm = realm
        self.service = service
        self.verifier = verifier

    def challenge(self, needed: list[tuple[str, str, str]], error: str | None = None) -> str:
        parts = [f"realm={quote_param(self.realm)}", f"service={quote_param(self.service)}"]
        if needed:
            scopes: dict[tuple[str, str], list[str]] = {}
            for t, n, a in needed:
                scopes.setdefault((t, n), []).append(a)
            scope = " ".join(f"{t}:{n}:{','.join(a)}" for (t, n), a in scopes.items())
            parts.append(f"scope={quote_param(scope)}")
        if error:
            parts.append(f"error={quote_param(error)}")
        return "Bearer " + ",".join(parts)

    async def __call__(self, req: Request) -> None:
        needed = needed_access(req.access, req.params.get("name"))
        header = req.headers.get("authorization", "")
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise unauthorized(self.challenge(needed))
        try:
            claims = self.verifier.verify(token.strip())
        except TokenError as exc:
            log.info("rejected a token from %s: %s", req.client, exc)
            raise unauthorized(self.challenge(needed, "invalid_token"), "invalid token") from None
        missing = [n for n in needed if not claims.allows(*n)]
        if missing:
            raise unauthorized(self.challenge(needed, "insufficient_scope"), "insufficient scope")
        req.user = claims.subject
        req.token_claims = claims  # type: ignore[attr-defined]  # for can_pull

    async def can_pull(self, req: Request, repo: str) -> bool:
        claims = getattr(req, "token_claims", None)
        return claims is not None and claims.allows("repository", repo, "pull")

    async def allows(self, req: Request, action: str, repo: str | None) -> bool:
        """Does the caller's token grant ``action`` on ``repo`` (the web UI asks)?"""
        claims = getattr(req, "token_claims", None)
        if claims is None or (repo is None and action not in (CATALOG, ADMIN)):
            return False
        return all(claims.allows(*n) for n in needed_access(action, repo))


def _read(path: str, key: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ConfigError(f"auth.token.{key}: {path}: cannot read: {exc.strerror or exc}") from None


def load_roots(path: str) -> tuple[x509.Certificate, ...]:
    try:
        certs = x509.load_pem_x509_certificates(_read(path, "rootcertbundle"))
    except ValueError:
        raise ConfigError(f"auth.token.rootcertbundle: {path}: no PEM certificates") from None
    return tuple(certs)


def load_jwks(path: str) -> dict[str, PublicKey]:
    try:
        doc = json.loads(_read(path, "jwks"))
        keys = doc["keys"]
        assert isinstance(keys, list)
    except (ValueError, KeyError, TypeError, AssertionError):
        raise ConfigError(f"auth.token.jwks: {path}: not a JWK set ({{\"keys\": [...]}})") from None
    out: dict[str, PublicKey] = {}
    for i, jwk in enumerate(keys):
        try:
            key = jwk_public_key(jwk)
        except (TokenError, AttributeError) as exc:
            raise ConfigError(f"auth.token.jwks: {path}: key {i}: {exc}") from None
        kid = jwk.get("kid") if isinstance(jwk.get("kid"), str) else jwk_thumbprint(key)
        out[kid] = key
    return out


def build_token_auth(params: Mapping[str, Any]) -> TokenAuth:
    """From ``auth.token`` parameters; raises ConfigError naming the key."""
    def required(key: str) -> str:
        value = params.get(key)
        if not isinstance(value, str) or not value:
            raise ConfigError(f"auth.token.{key}: required for token authentication")
        return value

    realm, service, issuer = required("realm"), required("service"), required("issuer")
    bundle, jwks = params.get("rootcertbundle"), params.get("jwks")
    if not bundle and not jwks:
        raise ConfigError("auth.token.rootcertbundle: required (or auth.token.jwks)")
    roots = load_roots(str(bundle)) if bundle else ()
    keys: dict[str, PublicKey] = {}
    for cert in roots:
        key = cert.public_key()
        if isinstance(key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey,
                            ed25519.Ed25519PublicKey)):
            keys[libtrust_key_id(key)] = key
            keys[jwk_thumbprint(key)] = key
    if jwks:
        keys.update(load_jwks(str(jwks)))
    algorithms = ALGORITHMS
    raw_algs = params.get("signingalgorithms")
    if raw_algs:
        algs = tuple(raw_algs) if isinstance(raw_algs, (list, tuple)) else (raw_algs,)
        bad = [a for a in algs if a not in ALGORITHMS]
        if bad:
            raise ConfigError(f"auth.token.signingalgorithms: unsupported {bad[0]!r}"
                              f" (supported: {', '.join(ALGORITHMS)})")
        algorithms = algs
    return TokenAuth(realm, service, TokenVerifier(issuer, service, keys, roots, algorithms))
