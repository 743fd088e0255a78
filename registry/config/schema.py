"""The known configuration keys, for "unknown configuration key" warnings (never errors:
the reference ignores keys it does not know, and configs written for it must load).

Derived from the one table of keys, keys.py: a key listed there is known, and so is
everything below it (its owner checks what lies below). ``storage.s3`` and ``auth.token``
are free-form here: the S3 driver and the token scheme warn about their own unknown keys.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from .keys import KEYS
from .params import PARAM_SECTIONS

FREE_FORM = ("storage.s3", "auth.token")  # their owners warn about unknown keys below


def _schema() -> dict[str, Any]:
    """A nested dict: a section maps to the schema of its keys; None = not checked below."""
    root: dict[str, Any] = {}
    for entry in KEYS:
        parts = entry.key.split("[]", 1)[0].split(".")
        node = root
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if child is None:
                break
            node = child
        else:
            node.setdefault(parts[-1], None)
    for dotted in FREE_FORM:
        *parents, last = dotted.split(".")
        node = root
        for part in parents:
            node = node[part]
        node[last] = None
    return root


# Known keys, for "unknown configuration key" warnings. None: free-form below this key.
SCHEMA = _schema()


def unknown_keys(data: Mapping[str, Any], schema: Mapping[str, Any], path: str) -> Iterator[str]:
    """One warning per key of `data` (at dotted `path`) that `schema` does not know."""
    for key, value in data.items():
        dotted = f"{path}.{key}" if path else key
        known = key.lower() if path in PARAM_SECTIONS else key
        if known not in schema:
            yield f"unknown configuration key: {dotted}"
        elif isinstance(schema[known], dict) and isinstance(value, dict):
            yield from unknown_keys(value, schema[known], dotted)
