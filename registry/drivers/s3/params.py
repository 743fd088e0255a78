"""The ``storage.s3`` options, as the reference registry names them (keys lower-cased).

Parsing is pure: nothing here contacts S3 or reads the environment. Values may arrive as
YAML scalars or strings (``REGISTRY_STORAGE_S3_SECURE=true``); both are accepted. A bad
value raises :class:`S3ConfigError` naming the key.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from registry.drivers.s3.client import Endpoint

log = logging.getLogger("registry.drivers.s3")

R2_HOST_SUFFIX = ".r2.cloudflarestorage.com"  # R2's S3 endpoints (SPEC.md, Cloudflare R2)
MiB = 1024 * 1024
GiB = 1024 * MiB
MIN_CHUNK = 5 * MiB  # S3/R2 minimum part size
MAX_CHUNK = 5 * GiB  # S3/R2 maximum part size
DEFAULT_CHUNK = 10 * MiB  # the reference's default chunksize
DEFAULT_COPY_CHUNK = 32 * MiB  # reference: multipartcopychunksize
DEFAULT_COPY_CONCURRENCY = 100  # reference: multipartcopymaxconcurrency
DEFAULT_COPY_THRESHOLD = 32 * MiB  # reference: multipartcopythresholdsize
DEFAULT_PARALLEL_PARTS = 4  # ours: part uploads in flight per upload (memory: 4 x chunk)
DEFAULT_MAX_CONCURRENCY = 64  # ours: connections to S3 per process
# The reference's canned ACLs (aws-sdk-go's s3.ObjectCannedACL* values it accepts).
OBJECT_ACLS = frozenset({
    "private", "public-read", "public-read-write", "authenticated-read", "aws-exec-read",
    "bucket-owner-read", "bucket-owner-full-control",
})
# ours: bytes of parts buffered or in flight per process, across all uploads (at least two
# parts). 32 MiB keeps 16 concurrent pushes inside the container's 256 MB with room left.
DEFAULT_MAX_BUFFER_MEMORY = 32 * MiB

KNOWN = frozenset(
    {
        "accesskey",
        "secretkey",
        "sessiontoken",
        "region",
        "regionendpoint",
        "bucket",
        "rootdirectory",
        "secure",
        "v4auth",
        "chunksize",
        "forcepathstyle",
        "storageclass",
        "multipartcopychunksize",
        "multipartcopymaxconcurrency",
        "multipartcopythresholdsize",
        "skipverify",
        "redirectendpoint",
        "maxconcurrency",
        "parallelparts",
        "maxbuffermemory",
        "encrypt",
        "keyid",
        "objectacl",
        # accepted for compatibility with reference configs, without effect here:
        "useragent",
        "usedualstack",
        "accelerate",
        "loglevel",
        "checksum_disabled",
        "checksumdisabled",
    }
)


class S3ConfigError(ValueError):
    """A ``storage.s3`` option is missing or invalid; the message names it."""


def _bool(params: Mapping[str, Any], key: str, default: bool) -> bool:
    value = params.get(key, default)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "yes", "on", "1"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("false", "no", "off", "0", ""):
        return False
    if isinstance(value, int):
        return bool(value)
    raise S3ConfigError(f"storage.s3.{key}: expected true or false, got {value!r}")


def _int(params: Mapping[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    value = params.get(key, default)
    if value is None or value == "":
        return default
    try:
        number = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        raise S3ConfigError(f"storage.s3.{key}: expected an integer, got {value!r}") from None
    if isinstance(number, bool) or not lo <= number <= hi:
        raise S3ConfigError(f"storage.s3.{key}: {number} is outside {lo}..{hi}")
    return number


def _str(params: Mapping[str, Any], key: str, default: str = "") -> str:
    value = params.get(key, default)
    return default if value is None else str(value).strip()


def _needs_path_style(host: str, bucket: str, scheme: str) -> bool:
    """Virtual-host addressing cannot work for IPs, localhost, or dotted buckets over TLS."""
    if host.startswith("["):
        name = host[1 : host.index("]")]
    else:
        name = host.rsplit(":", 1)[0]
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    return name == "localhost" or (scheme == "https" and "." in bucket)


def _endpoint(url: str, secure: bool, bucket: str, force_path: bool, key: str) -> Endpoint:
    if "://" not in url:
        url = ("https://" if secure else "http://") + url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise S3ConfigError(f"storage.s3.{key}: not an http(s) URL: {url!r}")
    if parts.path not in ("", "/"):
        raise S3ConfigError(f"storage.s3.{key}: must not have a path: {url!r}")
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    default_port = 443 if parts.scheme == "https" else 80
    if parts.port and parts.port != default_port:
        host = f"{host}:{parts.port}"
    path_style = force_path or _needs_path_style(host, bucket, parts.scheme)
    return Endpoint(parts.scheme, host, bucket, path_style)


@dataclass(frozen=True)
class S3Params:
    accesskey: str
    secretkey: str
    sessiontoken: str | None
    region: str
    bucket: str
    root: str  # rootdirectory without surrounding slashes; "" means the bucket root
    endpoint: Endpoint
    redirect_endpoint: Endpoint | None
    skipverify: bool
    chunksize: int
    storageclass: str | None  # None: send no x-amz-storage-class header ("NONE")
    copy_chunksize: int
    copy_concurrency: int
    copy_threshold: int
    parallel_parts: int
    max_concurrency: int
    max_buffer_memory: int = DEFAULT_MAX_BUFFER_MEMORY
    encrypt: bool = False  # server-side encryption: SSE-S3 (AES256), or SSE-KMS with keyid
    keyid: str | None = None  # the KMS key for SSE-KMS; only with encrypt
    # None: send no x-amz-acl, which S3 treats as "private" (the reference's default) and
    # which R2 needs (it rejects ACL headers); any other canned ACL is sent as configured.
    objectacl: str | None = None

    def write_headers(self) -> dict[str, str]:
        """The headers the reference sends on every object-creating call (PutObject,
        CreateMultipartUpload, CopyObject): storage class, server-side encryption, ACL.
        They are signed like every header (sigv4.Signer signs all it is given)."""
        headers = {}
        if self.storageclass:
            headers["x-amz-storage-class"] = self.storageclass
        if self.encrypt:
            headers["x-amz-server-side-encryption"] = "aws:kms" if self.keyid else "AES256"
            if self.keyid:
                headers["x-amz-server-side-encryption-aws-kms-key-id"] = self.keyid
        if self.objectacl:
            headers["x-amz-acl"] = self.objectacl
        return headers

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> S3Params:
        params = {str(k).lower(): v for k, v in raw.items()}
        unknown = sorted(set(params) - KNOWN)
        if unknown:
            log.warning("storage.s3: ignoring unknown options %s", ", ".join(unknown))
        bucket = _str(params, "bucket")
        if not bucket:
            raise S3ConfigError("storage.s3.bucket: required")
        accesskey, secretkey = _str(params, "accesskey"), _str(params, "secretkey")
        if not accesskey or not secretkey:
            raise S3ConfigError(
                "storage.s3.accesskey and storage.s3.secretkey: both required, or"
                " AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY, or a profile in the AWS shared"
                " credentials file (instance and container roles are not supported)"
            )
        if not _bool(params, "v4auth", True):
            log.warning("storage.s3.v4auth=false: signature V2 is gone from S3; using V4")
        secure = _bool(params, "secure", True)
        regionendpoint = _str(params, "regionendpoint")
        region = _str(params, "region")
        if not region:
            if not regionendpoint:
                raise S3ConfigError("storage.s3.region: required without regionendpoint")
            region = "us-east-1"
        force_path = _bool(params, "forcepathstyle", False)
        if regionendpoint:
            endpoint = _endpoint(regionendpoint, secure, bucket, force_path, "regionendpoint")
        else:
            host = "s3.amazonaws.com" if region == "us-east-1" else f"s3.{region}.amazonaws.com"
            endpoint = _endpoint(host, secure, bucket, force_path, "region")
        redirect = _str(params, "redirectendpoint")
        redirect_endpoint = (
            _endpoint(redirect, secure, bucket, force_path, "redirectendpoint")
            if redirect
            else None
        )
        storageclass = _str(params, "storageclass", "STANDARD")
        encrypt = _bool(params, "encrypt", False)
        keyid = _str(params, "keyid") or None
        if keyid and not encrypt:
            # The reference sends the key id alone, which S3 refuses on every write.
            log.warning("storage.s3.keyid is set but encrypt is false: no encryption header"
                        " is sent; set storage.s3.encrypt: true for SSE-KMS")
        objectacl = _str(params, "objectacl", "private")
        if objectacl not in OBJECT_ACLS:
            raise S3ConfigError(f"storage.s3.objectacl: {objectacl!r} is not one of "
                                f"{', '.join(sorted(OBJECT_ACLS))}")
        if endpoint.host.endswith(R2_HOST_SUFFIX) and (encrypt or objectacl != "private"):
            raise S3ConfigError(
                "storage.s3.encrypt/objectacl: Cloudflare R2 rejects server-side encryption"
                " and ACL headers (R2 encrypts every object at rest itself); remove them")
        return cls(
            accesskey=accesskey,
            secretkey=secretkey,
            sessiontoken=_str(params, "sessiontoken") or None,
            region=region,
            bucket=bucket,
            root=_str(params, "rootdirectory").strip("/"),
            endpoint=endpoint,
            redirect_endpoint=redirect_endpoint,
            skipverify=_bool(params, "skipverify", False),
            chunksize=_int(params, "chunksize", DEFAULT_CHUNK, MIN_CHUNK, MAX_CHUNK),
            storageclass=None if storageclass.upper() == "NONE" else storageclass,
            copy_chunksize=_int(
                params, "multipartcopychunksize", DEFAULT_COPY_CHUNK, MIN_CHUNK, MAX_CHUNK
            ),
            copy_concurrency=_int(
                params, "multipartcopymaxconcurrency", DEFAULT_COPY_CONCURRENCY, 1, 1000
            ),
            copy_threshold=_int(
                params, "multipartcopythresholdsize", DEFAULT_COPY_THRESHOLD, 0, MAX_CHUNK
            ),
            parallel_parts=_int(params, "parallelparts", DEFAULT_PARALLEL_PARTS, 1, 64),
            max_concurrency=_int(params, "maxconcurrency", DEFAULT_MAX_CONCURRENCY, 1, 1024),
            max_buffer_memory=_int(
                params, "maxbuffermemory", DEFAULT_MAX_BUFFER_MEMORY, MIN_CHUNK, 64 * GiB
            ),
            encrypt=encrypt,
            keyid=keyid if encrypt else None,
            objectacl=None if objectacl == "private" else objectacl,
        )
