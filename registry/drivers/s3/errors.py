"""S3 error responses as typed exceptions, parsed from S3's XML with xml.etree.

Every class here is a :class:`~registry.drivers.base.DriverError`, so nothing S3-specific
leaks past the driver by accident. Errors that mean "this bucket cannot be used right now"
(bad credentials, missing bucket, wrong region, S3 down) are also
:class:`~registry.drivers.base.Unavailable`: the API answers 503 for them.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator

from registry.drivers import base


def local_name(tag: str) -> str:
    """``{namespace}Name`` -> ``Name`` (S3 answers in its 2006-03-01 namespace)."""
    return tag.rsplit("}", 1)[-1]


def children(elem: ET.Element, name: str) -> Iterator[ET.Element]:
    """Direct children of ``elem`` called ``name``, namespace ignored."""
    return (child for child in elem if local_name(child.tag) == name)


def child_text(elem: ET.Element, name: str, default: str = "") -> str:
    for child in children(elem, name):
        return child.text or ""
    return default


def parse_xml(body: bytes) -> ET.Element:
    """Parse an S3 XML document. S3 never sends DTDs or entities; refuse them."""
    if b"<!DOCTYPE" in body[:1024] or b"<!ENTITY" in body[:4096]:
        raise S3Error(0, "MalformedXML", "refusing an XML document with a DTD")
    try:
        return ET.fromstring(body)
    except ET.ParseError as exc:
        raise S3Error(0, "MalformedXML", f"unparseable S3 response: {exc}") from None


class S3Error(base.DriverError):
    """An error answer from S3 (or something that claims to be S3)."""

    def __init__(
        self, status: int, code: str, message: str = "", request_id: str = "", resource: str = ""
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id
        self.resource = resource
        self.retry_after: float | None = None  # seconds, from a Retry-After header
        detail = f"S3 {status} {code}"
        if message:
            detail += f": {message}"
        if resource:
            detail += f" ({resource})"
        super().__init__(detail)


class NoSuchKey(S3Error):
    pass


class NoSuchUpload(S3Error):
    pass


class InvalidRange(S3Error):
    pass


class PreconditionFailed(S3Error):
    pass


class Throttled(S3Error):
    """SlowDown / 429 / 503: retryable, and a sign to back off."""


class ServerError(S3Error):
    """5xx (InternalError, ...): retryable for idempotent requests."""


class S3Unavailable(S3Error, base.Unavailable):
    """The bucket refuses us: credentials, signature, permissions, missing bucket, region."""


# Codes that say "this configuration does not work", not "this request is wrong".
UNAVAILABLE_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AccessDenied",
        "AllAccessDisabled",
        "AccountProblem",
        "NoSuchBucket",
        "PermanentRedirect",
        "AuthorizationHeaderMalformed",
        "InvalidToken",
        "ExpiredToken",
        "InvalidBucketName",
        "RequestTimeTooSkewed",
        "Unauthorized",
        "Forbidden",
    }
)
THROTTLE_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "TooManyRequests", "RequestLimitExceeded"}
)
SERVER_CODES = frozenset({"InternalError", "ServiceUnavailable", "RequestTimeout"})
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})

_BODYLESS = {
    301: "PermanentRedirect",
    400: "BadRequest",
    403: "AccessDenied",
    404: "NoSuchKey",
    412: "PreconditionFailed",
    416: "InvalidRange",
    429: "SlowDown",
    500: "InternalError",
    503: "SlowDown",
}


def error_from_response(status: int, body: bytes, resource: str = "") -> S3Error:
    """Build the typed error for a non-success answer (HEAD answers have no body)."""
    code, message, request_id = "", "", ""
    if body.lstrip().startswith(b"<"):
        try:
            root = parse_xml(body)
        except S3Error:
            root = None
        if root is not None and local_name(root.tag) == "Error":
            code = child_text(root, "Code")
            message = child_text(root, "Message")
            request_id = child_text(root, "RequestId")
            resource = child_text(root, "Key") or child_text(root, "BucketName") or resource
    if not code:
        code = _BODYLESS.get(status, f"HTTP{status}")
    return make_error(status, code, message, request_id, resource)


def make_error(
    status: int, code: str, message: str = "", request_id: str = "", resource: str = ""
) -> S3Error:
    cls: type[S3Error]
    if code in UNAVAILABLE_CODES or status in (401, 403):
        cls = S3Unavailable
    elif code == "NoSuchKey" or (status == 404 and code in ("NotFound", "HTTP404")):
        cls = NoSuchKey
    elif code == "NoSuchUpload":
        cls = NoSuchUpload
    elif code == "InvalidRange" or status == 416:
        cls = InvalidRange
    elif code == "PreconditionFailed" or status == 412:
        cls = PreconditionFailed
    elif code in THROTTLE_CODES or status in (429, 503):
        cls = Throttled
    elif code in SERVER_CODES or status >= 500:
        cls = ServerError
    else:
        cls = S3Error
    return cls(status, code, message, request_id, resource)


def is_retryable(error: S3Error) -> bool:
    return isinstance(error, Throttled | ServerError)
