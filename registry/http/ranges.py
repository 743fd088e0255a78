"""Pure parsing of byte ranges (SPEC.md Pull 5, Push 13). No I/O; table-tested."""

from __future__ import annotations

import re

from ..errors import ErrorCode, RegistryError

# Upload chunks: "<start>-<end>" as the spec says; docker-era clients also send
# "bytes=<start>-<end>" or "bytes <start>-<end>/<total|*>". All are inclusive.
_CONTENT_RANGE = re.compile(r"^(?:bytes[= ])?(\d{1,19})-(\d{1,19})(?:/(?:\d{1,19}|\*))?$")
_RANGE = re.compile(r"^bytes=(\d{0,19})-(\d{0,19})$")


def parse_content_range(value: str) -> tuple[int, int]:
    """Upload Content-Range -> (start, end inclusive). RANGE_INVALID (416) if malformed."""
    m = _CONTENT_RANGE.match(value.strip())
    if m is None:
        raise RegistryError(ErrorCode.RANGE_INVALID, f"invalid Content-Range: {value[:100]!r}")
    start, end = int(m.group(1)), int(m.group(2))
    if end < start:
        raise RegistryError(ErrorCode.RANGE_INVALID, f"invalid Content-Range: {value[:100]!r}")
    return start, end


def parse_content_length(value: str | None) -> int | None:
    """Content-Length header -> int, None if absent. SIZE_INVALID if not a number."""
    if value is None:
        return None
    v = value.strip()
    if not v.isdigit() or len(v) > 19:
        raise RegistryError(ErrorCode.SIZE_INVALID, f"invalid Content-Length: {value[:40]!r}")
    return int(v)


def check_chunk(content_range: str | None, content_length: int | None) -> int | None:
    """Validate a PATCH/PUT chunk's headers; return the start offset it claims, or None.

    The length implied by Content-Range must match Content-Length when both are given
    (SIZE_INVALID otherwise, SPEC Push 13).
    """
    if content_range is None:
        return None
    start, end = parse_content_range(content_range)
    if content_length is not None and content_length != end - start + 1:
        raise RegistryError(
            ErrorCode.SIZE_INVALID,
            f"Content-Range {start}-{end} does not match Content-Length {content_length}",
        )
    return start


class Unsatisfiable(Exception):
    pass


def parse_range(value: str | None, size: int) -> tuple[int, int] | None:
    """A blob GET ``Range`` -> (start, end inclusive), or None to serve the whole blob.

    Malformed or multi-range headers are ignored (RFC 9110 allows serving 200); a
    syntactically valid range outside the blob raises Unsatisfiable (416).
    """
    if value is None:
        return None
    m = _RANGE.match(value.strip())
    if m is None:
        return None
    a, b = m.group(1), m.group(2)
    if a == "" and b == "":
        return None
    if a == "":
        n = int(b)
        if n == 0 or size == 0:
            raise Unsatisfiable()
        return max(0, size - n), size - 1
    start = int(a)
    end = size - 1 if b == "" else min(int(b), size - 1)
    if b != "" and int(b) < start:
        return None
    if start >= size:
        raise Unsatisfiable()
    return start, end
