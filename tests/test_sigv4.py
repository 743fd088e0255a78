"""SigV4 (registry/drivers/s3/sigv4.py): AWS's published S3 examples, then botocore as oracle.

The table rows are the examples of the S3 API reference, "Signature Calculations for the
Authorization Header" and "Authenticating Requests: Using Query Parameters" (bucket
``examplebucket``, key ``AKIAIOSFODNN7EXAMPLE``, 2013-05-24). botocore is a test-only
dependency: the property test signs random requests with both and compares.
"""

from __future__ import annotations

import datetime as dt
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registry.drivers.s3 import sigv4

AK = "AKIAIOSFODNN7EXAMPLE"
SK = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
WHEN = dt.datetime(2013, 5, 24, tzinfo=dt.UTC)
HOST = "examplebucket.s3.amazonaws.com"

AWS_EXAMPLES = [
    # (name, method, path, query, headers, payload, signed headers, signature)
    (
        "GET object with range",
        "GET",
        "/test.txt",
        [],
        {"Range": "bytes=0-9"},
        b"",
        "host;range;x-amz-content-sha256;x-amz-date",
        "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41",
    ),
    (
        "PUT object",
        "PUT",
        "/test$file.text",
        [],
        {"Date": "Fri, 24 May 2013 00:00:00 GMT", "x-amz-storage-class": "REDUCED_REDUNDANCY"},
        b"Welcome to Amazon S3.",
        "date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class",
        "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd",
    ),
    (
        "GET bucket lifecycle",
        "GET",
        "/",
        [("lifecycle", "")],
        {},
        b"",
        "host;x-amz-content-sha256;x-amz-date",
        "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543",
    ),
    (
        "GET bucket (list objects)",
        "GET",
        "/",
        [("max-keys", "2"), ("prefix", "J")],
        {},
        b"",
        "host;x-amz-content-sha256;x-amz-date",
        "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7",
    ),
]


@pytest.mark.parametrize(
    "name,method,path,query,headers,payload,signed,expected",
    AWS_EXAMPLES,
    ids=[row[0] for row in AWS_EXAMPLES],
)
def test_aws_published_header_examples(
    name: str,
    method: str,
    path: str,
    query: list[tuple[str, str]],
    headers: dict[str, str],
    payload: bytes,
    signed: str,
    expected: str,
) -> None:
    signer = sigv4.Signer(AK, SK, "us-east-1")
    out = signer.sign_headers(
        method, HOST, path, query, headers, sigv4.payload_sha256(payload), WHEN
    )
    assert out["x-amz-date"] == "20130524T000000Z"
    assert out["Authorization"] == (
        f"AWS4-HMAC-SHA256 Credential={AK}/20130524/us-east-1/s3/aws4_request,"
        f"SignedHeaders={signed},Signature={expected}"
    )


def test_aws_published_get_object_canonical_request() -> None:
    canonical = sigv4.canonical_request(
        "GET",
        "/test.txt",
        [],
        {
            "host": HOST,
            "range": "bytes=0-9",
            "x-amz-content-sha256": sigv4.EMPTY_SHA256,
            "x-amz-date": "20130524T000000Z",
        },
        sigv4.EMPTY_SHA256,
    )
    assert canonical == (
        "GET\n/test.txt\n\nhost:examplebucket.s3.amazonaws.com\nrange:bytes=0-9\n"
        "x-amz-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n"
        "x-amz-date:20130524T000000Z\n\nhost;range;x-amz-content-sha256;x-amz-date\n"
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    sts = sigv4.string_to_sign("20130524T000000Z", "20130524/us-east-1/s3/aws4_request", canonical)
    assert sts.splitlines()[-1] == (
        "7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972"
    )


def test_aws_published_presigned_url() -> None:
    signer = sigv4.Signer(AK, SK, "us-east-1")
    query = signer.presign_query("GET", HOST, "/test.txt", [], 86400, WHEN)
    assert query == (
        "X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request"
        "&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"
        "&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
    )


def test_aws_published_signing_key_derivation() -> None:
    # General reference, "Examples of how to derive a signing key for Signature Version 4".
    key = sigv4.derive_signing_key(
        "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20120215", "us-east-1", "iam"
    )
    assert key.hex() == "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"


@pytest.mark.parametrize(
    "raw,encoded",
    [
        ("/test.txt", "/test.txt"),
        ("/test$file.text", "/test%24file.text"),
        ("/a b/c+d", "/a%20b/c%2Bd"),
        ("/already%2Fencoded", "/already%252Fencoded"),  # a literal % is data: encode once
        ("/a/./b/../c", "/a/./b/../c"),  # S3 keys are never normalised
        ("/ü/€", "/%C3%BC/%E2%82%AC"),
        ("/~-_.", "/~-_."),
        ("no-leading-slash", "/no-leading-slash"),
        ("/a//b/", "/a//b/"),
    ],
)
def test_encode_path_s3_rules(raw: str, encoded: str) -> None:
    assert sigv4.encode_path(raw) == encoded


def test_canonical_query_sorts_encoded_and_encodes_slash() -> None:
    assert (
        sigv4.canonical_query(
            [("prefix", "a/b c"), ("list-type", "2"), ("delimiter", "/"), ("uploads", "")]
        )
        == "delimiter=%2F&list-type=2&prefix=a%2Fb%20c&uploads="
    )


def test_canonical_headers_trimall_and_merge() -> None:
    block, names = sigv4.canonical_headers({"X-Amz-Meta-A": "  a   b  ", "Host": "h"})
    assert block == "host:h\nx-amz-meta-a:a b\n"
    assert names == "host;x-amz-meta-a"


def test_presign_refuses_more_than_seven_days() -> None:
    signer = sigv4.Signer(AK, SK, "auto")
    with pytest.raises(ValueError):
        signer.presign_query("GET", HOST, "/k", [], 7 * 24 * 3600 + 1, WHEN)
    signer.presign_query("GET", HOST, "/k", [], 7 * 24 * 3600, WHEN)


def test_signing_key_cache_per_date_and_region() -> None:
    signer = sigv4.Signer(AK, SK, "auto")
    first = signer.signing_key("20240101")
    assert signer.signing_key("20240101") is first
    assert signer.signing_key("20240102") != first
    assert signer.signing_key("20240101", "us-east-1") != first
    assert first == sigv4.derive_signing_key(SK, "20240101", "auto")


def test_session_token_is_signed() -> None:
    signer = sigv4.Signer(AK, SK, "auto", session_token="tok")
    out = signer.sign_headers("GET", HOST, "/k", [], {}, sigv4.EMPTY_SHA256, WHEN)
    assert out["x-amz-security-token"] == "tok"
    assert "x-amz-security-token" in out["Authorization"]


# --- botocore as an oracle -------------------------------------------------------------

import botocore.auth as botocore_auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.utils import percent_encode

# Headers botocore never signs (its own list: te, connection, traceparent, ...) or sets
# itself; generating them would compare against a signature that leaves them out.
_BLACKLIST = set(botocore_auth.SIGNED_HEADERS_BLACKLIST) | {
    "expect",
    "user-agent",
    "x-amzn-trace-id",
    "authorization",
    "host",
    "date",
    "x-amz-date",
    "x-amz-content-sha256",
    "x-amz-security-token",
    "transfer-encoding",
}

key_text = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
    min_size=1,
    max_size=40,
)
header_names = st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,20}", fullmatch=True).filter(
    lambda n: n.lower() not in _BLACKLIST
)
header_values = st.from_regex(r"[ -~]{0,30}", fullmatch=True)
query_items = st.lists(
    st.tuples(
        key_text,
        st.text(max_size=20).filter(lambda s: all(not ("\ud800" <= c <= "\udfff") for c in s)),
    ),
    max_size=5,
)
hosts = st.sampled_from(
    ["examplebucket.s3.amazonaws.com", "127.0.0.1:9000", "acct.r2.cloudflarestorage.com"]
)
times = st.datetimes(min_value=dt.datetime(2001, 1, 1), max_value=dt.datetime(2099, 12, 31)).map(
    lambda d: d.replace(microsecond=0)
)


def _botocore_sign(
    method: str,
    host: str,
    path: str,
    query: list[tuple[str, str]],
    headers: dict[str, str],
    body: bytes,
    region: str,
    when: dt.datetime,
) -> str:
    url = f"https://{host}{percent_encode(path, safe='/~')}"
    request = AWSRequest(
        method=method, url=url, headers=dict(headers), data=body, params=query or None
    )
    creds = Credentials(AK, SK)
    with mock.patch("botocore.auth.get_current_datetime", return_value=when):
        botocore_auth.S3SigV4Auth(creds, "s3", region).add_auth(request)
    return str(request.headers["Authorization"])


def _fields(authorization: str) -> dict[str, str]:
    body = authorization.split(" ", 1)[1]
    return dict(part.strip().split("=", 1) for part in body.split(","))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    method=st.sampled_from(["GET", "PUT", "POST", "DELETE", "HEAD"]),
    host=hosts,
    bucket_in_path=st.booleans(),
    key=key_text,
    query=query_items,
    headers=st.dictionaries(header_names, header_values, max_size=4),
    body=st.binary(max_size=64),
    region=st.sampled_from(["us-east-1", "auto", "eu-west-3"]),
    when=times,
)
def test_matches_botocore_s3sigv4auth(
    method: str,
    host: str,
    bucket_in_path: bool,
    key: str,
    query: list[tuple[str, str]],
    headers: dict[str, str],
    body: bytes,
    region: str,
    when: dt.datetime,
) -> None:
    lowered: dict[str, str] = {}
    for name, value in headers.items():
        lowered.setdefault(name.lower(), value)
    path = ("/bucket/" if bucket_in_path else "/") + key
    expected = _fields(_botocore_sign(method, host, path, query, lowered, body, region, when))
    signer = sigv4.Signer(AK, SK, region)
    ours = signer.sign_headers(method, host, path, query, lowered, sigv4.payload_sha256(body), when)
    got = _fields(ours["Authorization"])
    assert got == expected


@settings(max_examples=150, deadline=None)
@given(
    host=hosts,
    key=key_text,
    # botocore's query signer folds repeated names into a dict, so names are unique here
    query=st.dictionaries(key_text, key_text, max_size=4).map(lambda d: list(d.items())),
    expires=st.integers(1, sigv4.MAX_PRESIGN_EXPIRES),
    when=times,
)
def test_presign_matches_botocore_s3sigv4queryauth(
    host: str,
    key: str,
    query: list[tuple[str, str]],
    expires: int,
    when: dt.datetime,
) -> None:
    path = "/bucket/" + key
    url = f"https://{host}{percent_encode(path, safe='/~')}"
    request = AWSRequest(method="GET", url=url, params=query or None)
    with mock.patch("botocore.auth.get_current_datetime", return_value=when):
        botocore_auth.S3SigV4QueryAuth(Credentials(AK, SK), "s3", "auto", expires=expires).add_auth(
            request
        )
    expected_sig = request.url.rsplit("X-Amz-Signature=", 1)[1]
    ours = sigv4.Signer(AK, SK, "auto").presign_query("GET", host, path, query, expires, when)
    assert ours.rsplit("X-Amz-Signature=", 1)[1] == expected_sig
