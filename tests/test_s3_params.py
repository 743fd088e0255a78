"""Pure pieces of the S3 driver, table-tested without a server: the storage.s3 options,
endpoint addressing, S3 error documents, and the persisted multipart state format."""

from __future__ import annotations

from typing import Any

import pytest

from registry.drivers import base
from registry.drivers.s3 import errors
from registry.drivers.s3.client import Endpoint
from registry.drivers.s3.driver import S3Driver
from registry.drivers.s3.params import S3ConfigError, S3Params
from registry.drivers.s3.writer import CorruptState, PartState

MiB = 1024 * 1024
BASE = {"accesskey": "AK", "secretkey": "SK", "bucket": "docker-registry"}


def parse(**extra: Any) -> S3Params:
    return S3Params.parse({**BASE, **extra})


# --- options ------------------------------------------------------------------------------


def test_r2_settings_from_the_issue() -> None:
    p = parse(
        regionendpoint="https://ACCOUNT_ID.r2.cloudflarestorage.com",
        region="auto",
        rootdirectory="/",
        secure="true",
        v4auth="true",
        chunksize="5242880",
    )
    assert p.region == "auto"
    assert p.root == ""
    assert p.chunksize == 5 * MiB
    assert p.endpoint == Endpoint(
        "https", "account_id.r2.cloudflarestorage.com", "docker-registry", False
    )
    assert p.storageclass == "STANDARD"
    assert p.redirect_endpoint is None


@pytest.mark.parametrize(
    "extra,scheme,host,path_style",
    [
        ({"region": "us-east-1"}, "https", "s3.amazonaws.com", False),
        ({"region": "eu-west-3"}, "https", "s3.eu-west-3.amazonaws.com", False),
        ({"region": "eu-west-3", "secure": False}, "http", "s3.eu-west-3.amazonaws.com", False),
        ({"regionendpoint": "http://127.0.0.1:9000"}, "http", "127.0.0.1:9000", True),
        ({"regionendpoint": "minio:9000", "secure": False}, "http", "minio:9000", False),
        ({"regionendpoint": "minio:9000", "forcepathstyle": "true"}, "https", "minio:9000", True),
        ({"regionendpoint": "https://localhost:443"}, "https", "localhost", True),
        ({"regionendpoint": "http://[::1]:9000"}, "http", "[::1]:9000", True),
        # a secure=false does not override an explicit https:// endpoint
        ({"regionendpoint": "https://x.example", "secure": False}, "https", "x.example", False),
    ],
)
def test_endpoint_and_addressing_style(
    extra: dict[str, Any], scheme: str, host: str, path_style: bool
) -> None:
    e = parse(**extra).endpoint
    assert (e.scheme, e.host, e.path_style) == (scheme, host, path_style)


def test_dotted_bucket_over_tls_uses_path_style() -> None:
    p = S3Params.parse({**BASE, "bucket": "my.bucket", "region": "us-east-1"})
    assert p.endpoint.path_style


@pytest.mark.parametrize(
    "raw,root",
    [("", ""), ("/", ""), ("/registry", "registry"), ("registry/", "registry"), ("/a/b/", "a/b")],
)
def test_rootdirectory_slashes_are_stripped(raw: str, root: str) -> None:
    assert parse(region="auto", rootdirectory=raw).root == root


def test_defaults_follow_the_reference() -> None:
    p = parse(region="us-east-1")
    assert p.chunksize == 10 * MiB
    assert p.copy_chunksize == 32 * MiB
    assert p.copy_threshold == 32 * MiB
    assert p.copy_concurrency == 100
    assert not p.skipverify


def test_storageclass_none_sends_no_header() -> None:
    assert parse(region="auto", storageclass="NONE").storageclass is None
    assert parse(region="auto", storageclass="STANDARD_IA").storageclass == "STANDARD_IA"


@pytest.mark.parametrize(
    "extra,names",
    [
        ({"bucket": ""}, "bucket"),
        ({"accesskey": ""}, "accesskey"),
        ({}, "region"),
        ({"region": "auto", "chunksize": 4 * MiB}, "chunksize"),
        ({"region": "auto", "chunksize": "lots"}, "chunksize"),
        ({"region": "auto", "secure": "maybe"}, "secure"),
        ({"region": "auto", "regionendpoint": "ftp://x"}, "regionendpoint"),
        ({"region": "auto", "regionendpoint": "https://x/path"}, "regionendpoint"),
        ({"region": "auto", "multipartcopychunksize": 1}, "multipartcopychunksize"),
        ({"region": "auto", "parallelparts": 0}, "parallelparts"),
    ],
)
def test_bad_options_name_the_key(extra: dict[str, Any], names: str) -> None:
    with pytest.raises(S3ConfigError, match=names):
        S3Params.parse({**BASE, **extra})


def test_from_params_lowercases_keys_and_builds_without_io() -> None:
    driver = S3Driver.from_params(
        {
            "AccessKey": "AK",
            "SecretKey": "SK",
            "Bucket": "b",
            "Region": "auto",
            "RegionEndpoint": "https://acct.r2.cloudflarestorage.com",
            "SkipVerify": True,
        },
        redirect_disable=True,
    )
    assert driver.params.skipverify and driver.redirect_disable
    assert driver.name == "s3"


def test_key_mapping_matches_the_reference() -> None:
    for root, path, key in [
        ("", "/docker/registry/v2/x", "docker/registry/v2/x"),
        ("/reg/", "/docker/registry/v2/x", "reg/docker/registry/v2/x"),
        ("/a/b", "/docker", "a/b/docker"),
    ]:
        driver = S3Driver.from_params({**BASE, "region": "auto", "rootdirectory": root})
        assert driver._key(path) == key
        assert driver._path(key) == path
        with pytest.raises(base.InvalidPath):
            driver._key("/a/../b")


# --- addressing ---------------------------------------------------------------------------


def test_endpoint_address_styles() -> None:
    path = Endpoint("http", "127.0.0.1:9000", "b", True)
    assert path.address("k/x") == ("127.0.0.1:9000", "/b/k/x")
    assert path.address(None) == ("127.0.0.1:9000", "/b")
    virtual = Endpoint("https", "acct.r2.cloudflarestorage.com", "b", False)
    assert virtual.address("k x") == ("b.acct.r2.cloudflarestorage.com", "/k x")
    assert virtual.url("k x") == "https://b.acct.r2.cloudflarestorage.com/k%20x"


# --- S3 error documents -------------------------------------------------------------------

ERROR_XML = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
    b"<Message>msg</Message><Key>k</Key><RequestId>rid</RequestId></Error>"
)


@pytest.mark.parametrize(
    "status,code,cls,unavailable",
    [
        (404, "NoSuchKey", errors.NoSuchKey, False),
        (404, "NoSuchBucket", errors.S3Unavailable, True),
        (404, "NoSuchUpload", errors.NoSuchUpload, False),
        (403, "SignatureDoesNotMatch", errors.S3Unavailable, True),
        (403, "InvalidAccessKeyId", errors.S3Unavailable, True),
        (403, "AccessDenied", errors.S3Unavailable, True),
        (400, "AuthorizationHeaderMalformed", errors.S3Unavailable, True),
        (503, "SlowDown", errors.Throttled, False),
        (429, "TooManyRequests", errors.Throttled, False),
        (500, "InternalError", errors.ServerError, False),
        (416, "InvalidRange", errors.InvalidRange, False),
        (412, "PreconditionFailed", errors.PreconditionFailed, False),
        (400, "EntityTooSmall", errors.S3Error, False),
    ],
)
def test_error_documents_become_typed_errors(
    status: int, code: str, cls: type[errors.S3Error], unavailable: bool
) -> None:
    error = errors.error_from_response(status, ERROR_XML.replace(b"{code}", code.encode()))
    assert type(error) is cls
    assert (error.code, error.message, error.request_id, error.resource) == (
        code,
        "msg",
        "rid",
        "k",
    )
    assert isinstance(error, base.Unavailable) == unavailable
    assert isinstance(error, base.DriverError)
    assert errors.is_retryable(error) == (cls in (errors.Throttled, errors.ServerError))


@pytest.mark.parametrize(
    "status,cls",
    [
        (404, errors.NoSuchKey),
        (403, errors.S3Unavailable),
        (503, errors.Throttled),
        (500, errors.ServerError),
        (412, errors.PreconditionFailed),
        (301, errors.S3Unavailable),
    ],
)
def test_bodyless_answers_are_typed_by_status(status: int, cls: type) -> None:
    assert type(errors.error_from_response(status, b"")) is cls


def test_namespaced_and_hostile_xml() -> None:
    doc = (
        b'<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        b"<IsTruncated>true</IsTruncated></ListBucketResult>"
    )
    assert errors.child_text(errors.parse_xml(doc), "IsTruncated") == "true"
    with pytest.raises(errors.S3Error):
        errors.parse_xml(b'<!DOCTYPE x [<!ENTITY a "b">]><x>&a;</x>')
    with pytest.raises(errors.S3Error):
        errors.parse_xml(b"<unclosed>")
    assert errors.error_from_response(500, b"<html>oops</html>").code == "InternalError"


# --- the persisted multipart state --------------------------------------------------------


def test_part_state_roundtrip() -> None:
    state = PartState("up-1", 5 * MiB, ['"e1"', '"e2"'], b"tail\nbytes")
    blob = state.encode()
    back = PartState.decode(blob)
    assert back == state
    assert back.size == 10 * MiB + 10
    assert state.metadata() == {"size": str(10 * MiB + 10), "upload-id": "up-1"}
    assert PartState(None, 5 * MiB, [], b"").metadata() == {"size": "0"}


@pytest.mark.parametrize(
    "blob",
    [
        b"garbage",
        b'S3PART1\n{"upload_id":null,"part_size":5,"parts":[],"size":3}\nab',  # size lies
        b'S3PART1\n{"upload_id":null,"part_size":5,"parts":["e"],"size":5}\n',  # no upload
        b'S3PART1\n{"part_size":5}\n',
        b"S3PART1\nnot json\n",
    ],
)
def test_corrupt_state_is_refused(blob: bytes) -> None:
    with pytest.raises(CorruptState):
        PartState.decode(blob)
