"""Reading YAML as the reference does: the file, and the scalars of ``REGISTRY_*`` values.

:class:`Loader` is a SafeLoader with three changes: mapping keys are always their text
(``on:`` is "on", not True), dates stay strings, and numbers remember the text they were
written as (:class:`Int`, :class:`Float`), so a *string* field given ``0123`` gets "0123",
not 83 (YAML 1.1 octal) -- Go's yaml gives a string field the raw text.
:func:`describe` and :func:`text` render such values for error messages and string fields.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar

import yaml

from .model import ConfigError


class Int(int):
    """An int from YAML that remembers its text, for fields that want a string."""

    source: str


class Float(float):
    source: str


class Loader(yaml.SafeLoader):
    """SafeLoader with string keys, no timestamps, and numbers that keep their text."""

    yaml_implicit_resolvers: ClassVar[dict[str, list[tuple[str, re.Pattern[str]]]]] = {
        first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[str, Any]:
        self.flatten_mapping(node)
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise yaml.constructor.ConstructorError(
                    None, None, "mapping keys must be scalars", key_node.start_mark
                )
            result[key_node.value] = self.construct_object(value_node, deep=deep)
        return result

    def _number(self, node: Any) -> Int | Float:
        if node.tag.endswith(":int"):
            number: Int | Float = Int(self.construct_yaml_int(node))
        else:
            number = Float(self.construct_yaml_float(node))
        number.source = node.value
        return number


Loader.add_constructor("tag:yaml.org,2002:int", Loader._number)
Loader.add_constructor("tag:yaml.org,2002:float", Loader._number)


def yaml_problem(exc: yaml.YAMLError) -> str:
    """ "invalid YAML at line 3: <problem>" on one line."""
    where = ":"
    text = str(exc)
    if isinstance(exc, yaml.MarkedYAMLError):
        text = exc.problem or exc.context or "syntax error"
        if exc.problem_mark is not None:
            where = f" at line {exc.problem_mark.line + 1}:"
    return f"invalid YAML{where} {' '.join(text.split())}"


def read_file(path: str) -> dict[str, Any]:
    """The file's tree. Raises ConfigError for an unreadable or non-UTF-8 file, invalid
    YAML, a document that is not a mapping, or a missing ``version``."""
    try:
        with open(path, encoding="utf-8") as f:
            content = f.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration file: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: the configuration file is not UTF-8 text") from None
    try:
        tree = yaml.load(content, Loader=Loader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: {yaml_problem(exc)}") from None
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping of configuration sections")
    if "version" not in tree:
        raise ConfigError("version: missing from the configuration file (write version: 0.1)")
    return tree


def parse_scalar(name: str, value: str) -> Any:
    """An environment variable's value read as YAML. Raises ConfigError naming `name`
    (the value is not echoed: it may be a secret)."""
    try:
        return yaml.load(value, Loader=Loader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{name}: {yaml_problem(exc)}") from None


def describe(value: Any) -> str:
    """A short one-line rendering of a bad value for an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (Int, Float)):
        return value.source
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    rendered = repr(value)
    return rendered if len(rendered) <= 60 else rendered[:57] + "..."


def as_text(value: Any) -> str | None:
    """A scalar as the string the user wrote (Go's yaml gives a string field the raw text);
    None for a mapping, a list or null."""
    if isinstance(value, str):
        return value
    if isinstance(value, (Int, Float)):
        return value.source
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return None
