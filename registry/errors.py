"""Every OCI distribution error code with its HTTP status (SPEC.md General 2).

A leaf module: imports nothing from the project. Handlers and storage raise
:class:`RegistryError`; exactly one function in ``registry.http.responses`` turns it
into the JSON envelope ``{"errors": [{"code", "message", "detail"}]}``.
"""

from __future__ import annotations

import enum
from typing import Any


class ErrorCode(enum.Enum):
    """(HTTP status, default message) for each spec error code."""

    BLOB_UNKNOWN = (404, "blob unknown to registry")
    BLOB_UPLOAD_INVALID = (400, "blob upload invalid")
    BLOB_UPLOAD_UNKNOWN = (404, "blob upload unknown to registry")
    DIGEST_INVALID = (400, "provided digest did not match uploaded content")
    MANIFEST_BLOB_UNKNOWN = (400, "manifest references a manifest or blob unknown to registry")
    MANIFEST_INVALID = (400, "manifest invalid")
    MANIFEST_UNKNOWN = (404, "manifest unknown to registry")
    NAME_INVALID = (400, "invalid repository name")
    NAME_UNKNOWN = (404, "repository name not known to registry")
    SIZE_INVALID = (400, "provided length did not match content length")
    UNAUTHORIZED = (401, "authentication required")
    DENIED = (403, "requested access to the resource is denied")
    UNSUPPORTED = (405, "The operation is unsupported.")
    TOOMANYREQUESTS = (429, "too many requests")
    # Not in the spec's table but used by the reference for these situations:
    RANGE_INVALID = (416, "requested range not satisfiable")
    PAGINATION_NUMBER_INVALID = (400, "invalid number of results requested")
    MANIFEST_TOO_BIG = (413, "manifest too big")
    # The reference's code for a bad tag in a manifest PUT; the spec names it (as a Docker
    # code) and has none of its own for a bad ``?tag=`` on a PUT by digest.
    TAG_INVALID = (400, "manifest tag invalid")
    UNAVAILABLE = (503, "service unavailable")
    # The spec has no code for "the registry's storage is full". The status is 507
    # Insufficient Storage (RFC 4918 11.5: the server cannot store what the request needs),
    # not 503: generic retrying clients retry 503 at once and would re-send whole layers
    # into a full disk, while 507 says exactly what is wrong. The wire code is the
    # reference's UNAVAILABLE (its errcode registry has it; docker knows it and retries
    # later with backoff): UNKNOWN would claim we do not know what happened.
    STORAGE_FULL = (507, "storage full: the registry cannot store more data now")
    UNKNOWN = (500, "unknown error")

    @property
    def status(self) -> int:
        return self.value[0]

    @property
    def message(self) -> str:
        return self.value[1]

    @property
    def wire_code(self) -> str:
        # 413 and 416 are not spec codes; clients only look at the status for them.
        if self is ErrorCode.MANIFEST_TOO_BIG:
            return "MANIFEST_INVALID"
        if self is ErrorCode.RANGE_INVALID:
            return "BLOB_UPLOAD_INVALID"
        if self is ErrorCode.PAGINATION_NUMBER_INVALID:
            return "PAGINATION_NUMBER_INVALID"
        if self is ErrorCode.STORAGE_FULL:
            return "UNAVAILABLE"
        return self.name


class RegistryError(Exception):
    """An error the client should see: one or more (code, message, detail) entries.

    ``status`` is the HTTP status of the first entry unless given. ``headers`` are
    added to the error response (e.g. ``Range`` on 416, ``Retry-After`` on 429).
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str | None = None,
        detail: Any = None,
        *,
        headers: dict[str, str] | None = None,
        status: int | None = None,
    ) -> None:
        self.entries: list[tuple[ErrorCode, str, Any]] = [(code, message or code.message, detail)]
        self.status = status if status is not None else code.status
        self.headers = dict(headers or {})
        super().__init__(f"{code.name}: {message or code.message}")

    @property
    def code(self) -> ErrorCode:
        return self.entries[0][0]

    def add(self, code: ErrorCode, message: str | None = None, detail: Any = None) -> None:
        self.entries.append((code, message or code.message, detail))

    def to_json(self) -> dict[str, Any]:
        return {
            "errors": [
                {"code": c.wire_code, "message": m, "detail": d if d is not None else {}}
                for c, m, d in self.entries
            ]
        }


def unwrap(exc: BaseException) -> BaseException:
    """Collapse exception groups holding a single exception (trio nurseries wrap errors)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
