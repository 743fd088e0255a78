"""Typed reading of the merged tree: :class:`Node` getters that raise ConfigError naming
the dotted key, and :func:`freeze` for the read-only values a Config holds."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from .durations import duration_setting
from .loader import Float, Int, as_text, describe
from .model import ConfigError


def freeze(value: Any) -> Any:
    """A read-only deep copy: mappings become MappingProxyType, sequences tuples, and YAML
    numbers plain ints and floats."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    if isinstance(value, Int):
        return int(value)
    if isinstance(value, Float):
        return float(value)
    return value


class Node:
    """A mapping in the tree with its dotted path, read with typed getters that raise
    ConfigError naming the key. A missing or null value gives the default."""

    def __init__(self, data: Any, path: str) -> None:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping, got {describe(data)}")
        self.data: dict[str, Any] = data
        self.path = path

    def key(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def section(self, key: str) -> Node:
        return Node(self.data.get(key), self.key(key))

    def get_bool(self, key: str, default: bool) -> bool:
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ConfigError(f"{self.key(key)}: expected a boolean, got {describe(value)}")
        return value

    def get_str(self, key: str, default: str | None) -> str | None:
        value = self.data.get(key)
        if value is None:
            return default
        text = as_text(value)
        if text is None:
            raise ConfigError(f"{self.key(key)}: expected a string, got {describe(value)}")
        return text

    def get_int(self, key: str, default: int, minimum: int) -> int:
        value = self.data.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{self.key(key)}: expected an integer, got {describe(value)}")
        if value < minimum:
            raise ConfigError(f"{self.key(key)}: must be at least {minimum}, got {value}")
        return int(value)

    def get_duration(self, key: str, default: float, positive: bool = False) -> float:
        return duration_setting(self.data.get(key), self.key(key), default, positive=positive)

    def get_strs(self, key: str) -> tuple[str, ...]:
        value = self.data.get(key)
        items = value if isinstance(value, list) else [] if value is None else [value]
        texts = tuple(as_text(item) for item in items)
        if any(text is None for text in texts):
            raise ConfigError(f"{self.key(key)}: expected a list of strings, got {describe(value)}")
        return tuple(t for t in texts if t is not None)

    def get_choice(self, key: str, default: str, choices: Mapping[str, str], what: str) -> str:
        text = self.get_str(key, default) or default
        if text.lower() not in choices:
            expected = ", ".join(dict.fromkeys(choices))
            raise ConfigError(f"{self.key(key)}: invalid {what} {text!r} (expected {expected})")
        return choices[text.lower()]
