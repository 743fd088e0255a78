"""Go durations and byte sizes, as the reference reads them from YAML.

Pure. :func:`parse_duration` and :func:`parse_size` raise ValueError/TypeError;
:func:`duration_setting` wraps them for a named key and raises ConfigError.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Any

from .loader import describe
from .model import ConfigError

_NS_PER_UNIT = {
    "ns": 1,
    "us": 10**3,
    "\u00b5s": 10**3,
    "\u03bcs": 10**3,
    "ms": 10**6,
    "s": 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
}
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_MAX_NS = 2**63 - 1  # Go's time.Duration is an int64 of nanoseconds


def parse_duration(value: str | float) -> float:
    """Parse a Go duration ("168h", "10m30s", "1.5h", "500ms", "0") into seconds.

    A bare number (YAML int or float) is nanoseconds, as the reference reads a YAML number into
    ``time.Duration``: ``draintimeout: 60`` is 60ns, not a minute. Raises ValueError for a bad
    string or an out-of-range number, TypeError for anything else (a boolean too).
    """
    if isinstance(value, bool):
        raise TypeError(f"expected a duration such as 10m or 168h, got {describe(value)}")
    if isinstance(value, (int, float)):
        if abs(value) > _MAX_NS:
            raise ValueError(f"duration out of range: {describe(value)}")
        return float(value) / 1e9
    if not isinstance(value, str):
        raise TypeError(f"expected a duration such as 10m or 168h, got {describe(value)}")
    text = value.strip()
    body = text[1:] if text[:1] in "+-" else text
    if body == "0":
        return 0.0
    total = Fraction(0)
    pos = 0
    for match in _DURATION_PART.finditer(body):
        if match.start() != pos:
            break
        total += Fraction(match.group(1)) * _NS_PER_UNIT[match.group(2)]
        pos = match.end()
    if not body or pos != len(body):
        raise ValueError(f"invalid duration {value!r} (expected e.g. 168h, 10m30s or 500ms)")
    if total > _MAX_NS:
        raise ValueError(f"duration out of range: {value!r}")
    seconds = int(total) / 1e9  # Go truncates to whole nanoseconds
    return -seconds if text.startswith("-") else seconds


def parse_size(value: Any) -> int:
    """Parse a byte count: a non-negative int or a string of decimal digits. Raises ValueError."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return int(value)
    if isinstance(value, str) and value.strip().isdecimal() and value.strip().isascii():
        return int(value.strip())
    raise ValueError(f"expected a size in bytes, got {describe(value)}")


def duration_setting(value: Any, key: str, default: float, *, positive: bool = False) -> float:
    """The duration setting `key` in seconds (:func:`parse_duration`); `default` when `value`
    is None. Raises ConfigError naming `key` for a bad or negative duration, or for zero when
    `positive`."""
    if value is None:
        return default
    try:
        seconds = parse_duration(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}: {exc}") from None
    if seconds < 0 or (positive and seconds == 0):
        bound = "greater than zero" if positive else "zero or more"
        raise ConfigError(f"{key}: must be {bound}, got {describe(value)}")
    return seconds
