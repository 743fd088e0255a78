"""AWS Signature Version 4 for S3, as pure functions (DESIGN.md: protocol logic has no I/O).

The steps follow the S3 API reference, "Authenticating Requests (AWS Signature Version 4)":

1. canonical request = method, canonical URI, canonical query, canonical headers,
   signed header names, payload hash -- joined by newlines;
2. string to sign = algorithm, timestamp, credential scope, sha256(canonical request);
3. signing key = HMAC chain over "AWS4"+secret, date, region, service, "aws4_request";
4. signature = hex HMAC(signing key, string to sign).

S3 differs from other services in one rule that matters: the canonical URI is the object
key URI-encoded exactly once (each byte outside ``A-Za-z0-9-_.~`` becomes ``%XX``, ``/``
is kept) and never normalised: no ``.``/``..`` removal, no second encoding. Callers pass
*raw* (decoded) paths and query values; the same encoded strings must then be sent on the
wire, which :func:`encode_path` and :func:`canonical_query` produce.

Nothing here reads the clock or the environment: the time is a parameter.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "s3"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
MAX_PRESIGN_EXPIRES = 7 * 24 * 3600  # seconds; SigV4 query auth refuses more than 7 days

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~")


def uri_encode(value: str, *, encode_slash: bool = True) -> str:
    """Percent-encode ``value`` (UTF-8) the SigV4 way: only unreserved bytes pass through.

    Hex digits are upper case. ``/`` is kept when ``encode_slash`` is false (object keys).
    """
    out = []
    for byte in value.encode("utf-8"):
        if byte in _UNRESERVED or (byte == 0x2F and not encode_slash):
            out.append(chr(byte))
        else:
            out.append(f"%{byte:02X}")
    return "".join(out)


def encode_path(raw_path: str) -> str:
    """The canonical URI of a raw path (S3: encode once, keep slashes, no normalisation)."""
    if not raw_path.startswith("/"):
        raw_path = "/" + raw_path
    return uri_encode(raw_path, encode_slash=False)


def canonical_query(params: Iterable[tuple[str, str]]) -> str:
    """Encode each raw (key, value) pair and sort by encoded key, then encoded value.

    A parameter without a value (``?uploads``) is ``("uploads", "")`` and becomes
    ``uploads=``. The result is also the query string to send.
    """
    pairs = sorted((uri_encode(k), uri_encode(v)) for k, v in params)
    return "&".join(f"{k}={v}" for k, v in pairs)


def _trimall(value: str) -> str:
    # SigV4 "Trimall": strip both ends and squeeze inner whitespace runs to one space.
    return " ".join(value.split())


def canonical_headers(headers: Mapping[str, str]) -> tuple[str, str]:
    """Return (canonical header block, signed header names) for the headers to sign.

    Names are lower-cased and sorted; values are Trimall-ed. Every given header is signed:
    the caller decides which headers to pass (host, x-amz-*, range, content-type, ...).
    """
    merged: dict[str, list[str]] = {}
    for name, value in headers.items():
        merged.setdefault(name.strip().lower(), []).append(_trimall(value))
    names = sorted(merged)
    block = "".join(f"{n}:{','.join(merged[n])}\n" for n in names)
    return block, ";".join(names)


def canonical_request(
    method: str,
    raw_path: str,
    query: Iterable[tuple[str, str]],
    headers: Mapping[str, str],
    payload_hash: str,
) -> str:
    """The canonical request string (step 1)."""
    block, signed = canonical_headers(headers)
    return "\n".join(
        [method.upper(), encode_path(raw_path), canonical_query(query), block, signed, payload_hash]
    )


def amz_date(now: datetime) -> str:
    """``YYYYMMDDTHHMMSSZ`` in UTC (naive datetimes are taken as UTC)."""
    if now.tzinfo is not None:
        now = now.astimezone(UTC)
    return now.strftime("%Y%m%dT%H%M%SZ")


def credential_scope(date: str, region: str, service: str = SERVICE) -> str:
    """``YYYYMMDD/region/service/aws4_request``."""
    return f"{date}/{region}/{service}/aws4_request"


def string_to_sign(timestamp: str, scope: str, canonical: str) -> str:
    """Step 2."""
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return f"{ALGORITHM}\n{timestamp}\n{scope}\n{digest}"


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode("utf-8"), hashlib.sha256).digest()


def derive_signing_key(secret_key: str, date: str, region: str, service: str = SERVICE) -> bytes:
    """Step 3: the HMAC chain. ``date`` is ``YYYYMMDD``."""
    k_date = _hmac(("AWS4" + secret_key).encode("utf-8"), date)
    k_region = _hmac(k_date, region)
    k_service = _hmac(k_region, service)
    return _hmac(k_service, "aws4_request")


def signature(signing_key: bytes, to_sign: str) -> str:
    """Step 4: hex HMAC-SHA256."""
    return hmac.new(signing_key, to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


def authorization_header(access_key: str, scope: str, signed_headers: str, sig: str) -> str:
    """The ``Authorization`` header value."""
    return (
        f"{ALGORITHM} Credential={access_key}/{scope},"
        f"SignedHeaders={signed_headers},Signature={sig}"
    )


def payload_sha256(body: bytes | bytearray) -> str:
    """Hex sha256 of a body, for ``x-amz-content-sha256``."""
    return hashlib.sha256(body).hexdigest()


@dataclass
class Signer:
    """Credentials plus a per-(date, region) cache of derived signing keys.

    The cache holds at most a few entries (keys change once a day); it is per instance,
    not module state. Methods are otherwise pure: ``now`` is always a parameter.
    """

    access_key: str
    secret_key: str
    region: str
    session_token: str | None = None
    service: str = SERVICE
    _keys: dict[tuple[str, str], bytes] = field(default_factory=dict, repr=False)

    def signing_key(self, date: str, region: str | None = None) -> bytes:
        region = region or self.region
        cache_key = (date, region)
        key = self._keys.get(cache_key)
        if key is None:
            if len(self._keys) >= 4:  # yesterday's keys are useless; keep the dict tiny
                self._keys.clear()
            key = derive_signing_key(self.secret_key, date, region, self.service)
            self._keys[cache_key] = key
        return key

    def sign_headers(
        self,
        method: str,
        host: str,
        raw_path: str,
        query: Sequence[tuple[str, str]],
        headers: Mapping[str, str],
        payload_hash: str,
        now: datetime,
    ) -> dict[str, str]:
        """Headers to add to a request: x-amz-date, x-amz-content-sha256, (token), Authorization.

        ``headers`` are the caller's extra headers, all of which get signed; ``host`` is the
        Host header value (with ``:port`` when not the scheme default).
        """
        timestamp = amz_date(now)
        added = {"x-amz-date": timestamp, "x-amz-content-sha256": payload_hash}
        if self.session_token:
            added["x-amz-security-token"] = self.session_token
        to_sign = {"host": host, **{k.lower(): v for k, v in headers.items()}, **added}
        canonical = canonical_request(method, raw_path, query, to_sign, payload_hash)
        scope = credential_scope(timestamp[:8], self.region, self.service)
        sig = signature(
            self.signing_key(timestamp[:8]), string_to_sign(timestamp, scope, canonical)
        )
        _, signed_names = canonical_headers(to_sign)
        added["Authorization"] = authorization_header(self.access_key, scope, signed_names, sig)
        return added

    def presign_query(
        self,
        method: str,
        host: str,
        raw_path: str,
        query: Sequence[tuple[str, str]],
        expires: int,
        now: datetime,
    ) -> str:
        """The full query string (canonical order, X-Amz-Signature last) of a presigned URL.

        Only ``host`` is signed and the payload is ``UNSIGNED-PAYLOAD``, as S3 documents
        for query-string authentication. ``expires`` is 1 s .. 7 days.
        """
        if not 1 <= expires <= MAX_PRESIGN_EXPIRES:
            raise ValueError(f"presign expiry must be 1..{MAX_PRESIGN_EXPIRES} s, got {expires}")
        timestamp = amz_date(now)
        scope = credential_scope(timestamp[:8], self.region, self.service)
        params = list(query) + [
            ("X-Amz-Algorithm", ALGORITHM),
            ("X-Amz-Credential", f"{self.access_key}/{scope}"),
            ("X-Amz-Date", timestamp),
            ("X-Amz-Expires", str(expires)),
            ("X-Amz-SignedHeaders", "host"),
        ]
        if self.session_token:
            params.append(("X-Amz-Security-Token", self.session_token))
        canonical = canonical_request(method, raw_path, params, {"host": host}, UNSIGNED_PAYLOAD)
        sig = signature(
            self.signing_key(timestamp[:8]), string_to_sign(timestamp, scope, canonical)
        )
        return canonical_query(params) + "&X-Amz-Signature=" + sig
