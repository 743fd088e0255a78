"""``REGISTRY_*`` environment overrides, with the reference registry's rules.

Pure: the caller passes the environment in; nothing here reads ``os.environ``. The rules
(distribution's ``configuration/parser.go``, SPEC.md "Configuration"):

- ``REGISTRY_<A>_<B>_<C>=value`` sets ``tree[a][b][c]``; names split on ``_`` (so a key with an
  underscore cannot be set) and are lowercased. Existing keys match case-insensitively and the
  override replaces them. ``REGISTRY_CONFIGURATION_PATH`` names the file and is not an override.
- A value is parsed as a YAML scalar (loader.py): ``true`` -> True, ``5242880`` -> int,
  ``[a, b]`` -> list; numbers remember their text for string fields.
- Variables apply in sorted order, so ``REGISTRY_STORAGE=s3`` precedes
  ``REGISTRY_STORAGE_S3_BUCKET``. Missing intermediates are created (a list when the next name
  is 0: ``REGISTRY_NOTIFICATIONS_ENDPOINTS_0_URL``); a scalar on the way is replaced by a
  mapping.
- ``storage`` and ``auth`` are selector sections: a scalar there (``storage: s3`` in YAML,
  ``REGISTRY_STORAGE=s3``, ``REGISTRY_AUTH=htpasswd``) means ``{s3: {}}``. Selecting a driver
  drops the other driver's section but keeps delete/maintenance/redirect/cache/tag, and keeps
  the driver's own parameters when it is the driver already selected. (The reference replaces
  the whole storage section, silently dropping ``delete.enabled``; we do not.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .loader import parse_scalar
from .model import STORAGE_SUBSECTIONS, ConfigError

ENV_PREFIX = "REGISTRY_"
CONFIG_PATH_VARIABLE = "REGISTRY_CONFIGURATION_PATH"  # names the file; never an override
# Selector sections -> the subsections that survive choosing another driver / scheme.
SELECTORS = {"storage": STORAGE_SUBSECTIONS, "auth": frozenset[str]()}


def _copy_tree(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _copy_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_copy_tree(v) for v in value]
    return value


def env_path(name: str) -> list[str] | None:
    """The lowercased key path a variable overrides, or None if it is not a valid override."""
    if not name.startswith(ENV_PREFIX) or name == CONFIG_PATH_VARIABLE:
        return None
    path = name[len(ENV_PREFIX) :].lower().split("_")
    return None if "" in path else path


def _select(section: Any, choice: str, keep: frozenset[str]) -> dict[str, Any]:
    """A selector section after choosing `choice`: other choices go, subsections stay."""
    choice = choice.lower()
    old = section if isinstance(section, dict) else {}
    if isinstance(section, str):
        old = {section.lower(): {}}
    new = {k: v for k, v in old.items() if k in keep or k == choice}
    new.setdefault(choice, {})
    return new


def _index(node: list[Any], key: str, name: str) -> int:
    if not (key.isdecimal() and key.isascii()):
        raise ConfigError(f"{name}: expected a numeric list index, got {key.upper()!r}")
    if int(key) > len(node):
        raise ConfigError(f"{name}: list index {key} is out of range (length {len(node)})")
    return int(key)


def _get(node: dict[str, Any] | list[Any], key: str, name: str) -> Any:
    if isinstance(node, list):
        i = _index(node, key, name)
        return node[i] if i < len(node) else None
    if key in node:
        return node[key]
    return next((v for k, v in node.items() if k.lower() == key), None)


def _put(node: dict[str, Any] | list[Any], key: str, value: Any, name: str) -> None:
    if isinstance(node, list):
        i = _index(node, key, name)
        if i < len(node):
            node[i] = value
        else:
            node.append(value)
        return
    for existing in [k for k in node if k.lower() == key]:
        del node[existing]
    node[key] = value


def apply_env_overrides(tree: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Return a copy of `tree` with every ``REGISTRY_*`` variable applied, in sorted order.

    Pure: `tree` is not modified. Raises ConfigError for a value that is not valid YAML or a
    list index that does not exist. Variables with an empty name part are skipped.
    """
    result: dict[str, Any] = _copy_tree(tree)
    for name in sorted(environ):
        path = env_path(name)
        if path is None:
            continue
        value = parse_scalar(name, environ[name])
        if len(path) == 1 and path[0] in SELECTORS and isinstance(value, str):
            value = _select(_get(result, path[0], name), value, SELECTORS[path[0]])
        node: dict[str, Any] | list[Any] = result
        for depth, key in enumerate(path[:-1]):
            child = _get(node, key, name)
            if depth == 0 and key in SELECTORS and isinstance(child, str):
                child = {child.lower(): {}}
            elif isinstance(child, (dict, list)):
                node = child
                continue
            else:
                # A new list can only take index 0; "5000" in REGISTRY_PORT_5000_TCP (set by
                # Docker links and Kubernetes services named "registry") is a mapping key.
                child = [] if path[depth + 1] == "0" else {}
            _put(node, key, child, name)
            node = child
        _put(node, path[-1], value, name)
    return result


def normalise_selectors(tree: dict[str, Any]) -> None:
    """A scalar selector section (``storage: s3``) becomes ``{s3: {}}``, in place."""
    for section, keep in SELECTORS.items():
        if isinstance(tree.get(section), str):
            tree[section] = _select(tree[section], tree[section], keep)


def storage_drivers(section: Any) -> list[str]:
    """The driver names in a storage section (every key but the subsections), sorted."""
    if not isinstance(section, dict):
        return []
    return sorted(k for k in section if k not in STORAGE_SUBSECTIONS)
