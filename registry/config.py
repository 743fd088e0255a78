"""Configuration: a YAML file plus ``REGISTRY_*`` overrides, as the reference registry reads them.

A leaf module (imports nothing from the project; never reads ``os.environ``: the caller passes
the environment in). :func:`load_config` builds one frozen :class:`Config` at the edge; everything
below the CLI receives it. Mappings in it are read-only views, sequences are tuples, and
``Config.raw`` keeps the merged tree for sections that later code owns (redis, middleware, ...).

Override rules (distribution's ``configuration/parser.go``, SPEC.md "Configuration"):

- ``REGISTRY_<A>_<B>_<C>=value`` sets ``tree[a][b][c]``; names split on ``_`` (so a key with an
  underscore cannot be set) and are lowercased. Existing keys match case-insensitively and the
  override replaces them. ``REGISTRY_CONFIGURATION_PATH`` names the file and is not an override.
- A value is parsed as a YAML scalar: ``true`` -> True, ``5242880`` -> int, ``[a, b]`` -> list.
  Ints and floats remember their text, so a *string* field given ``0123`` gets "0123", not 83
  (YAML 1.1 octal). Mapping keys are always their text (``on:`` is "on", not True) and dates stay
  strings.
- Variables apply in sorted order, so ``REGISTRY_STORAGE=s3`` precedes
  ``REGISTRY_STORAGE_S3_BUCKET``. Missing intermediates are created (a list when the next name
  is 0: ``REGISTRY_NOTIFICATIONS_ENDPOINTS_0_URL``); a scalar on the way is replaced by a
  mapping.
- ``storage`` and ``auth`` are selector sections: a scalar there (``storage: s3`` in YAML,
  ``REGISTRY_STORAGE=s3``, ``REGISTRY_AUTH=htpasswd``) means ``{s3: {}}``. Selecting a driver
  drops the other driver's section but keeps delete/maintenance/redirect/cache/tag, and keeps
  the driver's own parameters when it is the driver already selected. (The reference replaces
  the whole storage section, silently dropping ``delete.enabled``; we do not.)
- Driver sections created only by ``REGISTRY_STORAGE_<DRIVER>_*`` while another driver is
  selected are dropped with a warning that says to set ``REGISTRY_STORAGE=<driver>``; the
  reference would refuse to start with "multiple storage drivers".

Defaults and checks: with no file, and for a file without a ``storage`` key, storage is
filesystem at ``./data``; a filesystem section without ``rootdirectory`` uses
``/var/lib/registry`` (the reference's default). A file must say ``version: 0.1``. Unknown keys
are warnings; wrong types, bad values and YAML errors raise :class:`ConfigError` with one line
naming the key. Durations are Go durations (``168h``, ``10m30s``, ``500ms``); a bare number is
nanoseconds, as for Go's ``time.Duration`` in YAML.

Our extensions, not in the reference::

    http:
      workers: 0            # hypercorn worker processes; 0 = pick from the CPU count
      headertimeout: 30s    # a request head must be complete this long after its first byte
      bodytimeout: 60s      # a request body idle this long is dropped (also the rate window)
      minbodyrate: 1024     # bytes/s a request body must average over bodytimeout; 0 = off
      maxconnections: 0     # open connections per worker; 0 = derived from the open-file limit
    gc:                     # online garbage collection, run by the app's lifespan nursery
      online:
        enabled: false      # REGISTRY_GC_ONLINE_ENABLED
      interval: 24h         # time between runs
      graceperiod: 1h       # blobs younger than this are never collected (racing pushes)
      deleteuntagged: false # also delete manifests that no tag points to
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from types import MappingProxyType
from typing import Any, ClassVar

import yaml

ENV_PREFIX = "REGISTRY_"
CONFIG_PATH_VARIABLE = "REGISTRY_CONFIGURATION_PATH"  # names the file; never an override
DEFAULT_ROOTDIRECTORY = "./data"  # storage with no storage section at all
FILESYSTEM_ROOTDIRECTORY = "/var/lib/registry"  # the reference's filesystem default
STORAGE_SUBSECTIONS = frozenset({"delete", "maintenance", "redirect", "cache", "tag"})
STORAGE_DRIVERS = ("filesystem", "inmemory", "s3")
AUTH_SCHEMES = ("htpasswd", "none", "silly", "token")  # "none" -> Config.auth is None
LOG_LEVELS = {"error": "error", "warn": "warn", "warning": "warn", "info": "info", "debug": "debug"}
LOG_FORMATTERS = {"text": "text", "json": "json", "logstash": "json"}
INDEX_PLATFORMS = ("all", "list", "none")
HOUR = 3600.0  # seconds


class ConfigError(Exception):
    """The configuration cannot be used; the message is one line naming the key."""


def _keys(leaves: str = "", **sections: Any) -> dict[str, Any]:
    """A schema node: space-separated leaf keys map to None (not checked further), keyword
    arguments to the schema of a section."""
    return dict.fromkeys(leaves.split()) | sections


# Known keys, for "unknown configuration key" warnings. None: free-form below this key.
_SCHEMA = _keys(
    "version loglevel notifications health redis reporting middleware proxy compatibility"
    " catalog policy",
    log=_keys("level formatter fields hooks reportcaller", accesslog=_keys("disabled")),
    storage=_keys(
        "cache s3",
        delete=_keys("enabled"),
        maintenance=_keys(
            uploadpurging=_keys("enabled age interval dryrun"), readonly=_keys("enabled")
        ),
        redirect=_keys("disable"),
        tag=_keys("concurrencylimit"),
        filesystem=_keys("rootdirectory maxthreads"),
        inmemory=_keys(),
    ),
    http=_keys(
        "addr net host prefix secret relativeurls draintimeout workers headers"
        " headertimeout bodytimeout minbodyrate maxconnections",
        tls=_keys(
            "certificate key clientcas minimumtls ciphersuites",
            letsencrypt=_keys("cachefile email hosts directoryurl"),
        ),
        debug=_keys("addr", prometheus=_keys("enabled path")),
        http2=_keys("disabled"),
        h2c=_keys("enabled"),
    ),
    auth=_keys("token none", htpasswd=_keys("realm path"), silly=_keys("realm service")),
    validation=_keys(
        "enabled disabled",
        manifests=_keys(urls=_keys("allow deny"), indexes=_keys("platforms platformlist")),
    ),
    gc=_keys("interval graceperiod deleteuntagged", online=_keys("enabled")),
)
# Parameters that are strings even when they look like numbers (an all-digit secret key).
_STRING_PARAMS = frozenset(
    _keys(
        "accesskey secretkey sessiontoken region regionendpoint bucket rootdirectory storageclass"
        " keyid objectacl useragent redirectendpoint realm service issuer path rootcertbundle"
    )
)
# Parameter sections, whose keys are read case-insensitively (lowercased).
_PARAM_SECTIONS = frozenset(
    {"storage.filesystem", "storage.inmemory", "auth.htpasswd", "auth.silly"}
)
_SELECTORS = {"storage": STORAGE_SUBSECTIONS, "auth": frozenset[str]()}


def _empty() -> Mapping[str, Any]:
    return MappingProxyType({})


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"  # error | warn | info | debug
    formatter: str = "text"  # text | json (logstash is read as json)
    accesslog_disabled: bool = False
    fields: Mapping[str, Any] = field(default_factory=_empty)


@dataclass(frozen=True)
class UploadPurging:
    """storage.maintenance.uploadpurging; durations in seconds."""

    enabled: bool = True
    age: float = 168 * HOUR
    interval: float = 24 * HOUR
    dryrun: bool = False


@dataclass(frozen=True)
class StorageConfig:
    driver: str = "filesystem"  # filesystem | s3 | inmemory
    params: Mapping[str, Any] = field(
        default_factory=lambda: MappingProxyType({"rootdirectory": DEFAULT_ROOTDIRECTORY})
    )
    delete_enabled: bool = False
    readonly: bool = False
    uploadpurging: UploadPurging = field(default_factory=UploadPurging)
    redirect_disable: bool = False
    cache: Mapping[str, Any] = field(default_factory=_empty)
    tag_concurrencylimit: int = 100


@dataclass(frozen=True)
class HttpConfig:
    addr: str = ":5000"
    host: str | None = None  # absolute URL (scheme and host) for Location headers
    prefix: str = ""  # "" or "/a/b": leading slash, no trailing slash
    relativeurls: bool = False
    secret: str | None = None
    tls_certificate: str | None = None
    tls_key: str | None = None
    tls_clientcas: tuple[str, ...] = ()
    debug_addr: str | None = None
    debug_prometheus_enabled: bool = False
    debug_prometheus_path: str = "/metrics"
    headers: Mapping[str, tuple[str, ...]] = field(default_factory=_empty)  # canonical names
    draintimeout: float = 0.0  # seconds; 0 = not configured
    workers: int = 0  # our extension: 0 = auto
    # Our extensions for slow and many clients (registry/http/conn.py):
    headertimeout: float = 30.0  # seconds from a request head's first byte to its end
    bodytimeout: float = 60.0  # seconds a request body may stall; also the rate window
    minbodyrate: int = 1024  # bytes/s averaged over bodytimeout; 0 = no minimum rate
    maxconnections: int = 0  # per worker process; 0 = derived from the open-file limit
    h2c_enabled: bool = False  # http.h2c.enabled: cleartext HTTP/2 (prior knowledge, Upgrade)
    http2_disabled: bool = False  # http.http2.disabled: offer only http/1.1 over TLS (ALPN)


@dataclass(frozen=True)
class AuthConfig:
    scheme: str  # htpasswd | token | silly
    params: Mapping[str, Any] = field(default_factory=_empty)


@dataclass(frozen=True)
class ValidationConfig:
    disabled: bool = False
    manifests_urls_allow: tuple[str, ...] = ()
    manifests_urls_deny: tuple[str, ...] = ()
    indexes_platforms: str = "all"  # all | list | none


@dataclass(frozen=True)
class GCConfig:
    """Our extension ``gc:`` (see the module docstring); durations in seconds."""

    online_enabled: bool = False
    interval: float = 24 * HOUR
    graceperiod: float = 1 * HOUR
    delete_untagged: bool = False


@dataclass(frozen=True)
class Config:
    version: str = "0.1"
    log: LogConfig = field(default_factory=LogConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    auth: AuthConfig | None = None
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    notifications: Mapping[str, Any] = field(default_factory=_empty)
    health: Mapping[str, Any] = field(default_factory=_empty)
    gc: GCConfig = field(default_factory=GCConfig)
    raw: Mapping[str, Any] = field(default_factory=_empty)


# --- YAML ------------------------------------------------------------------------------------


class _Int(int):
    """An int from YAML that remembers its text, for fields that want a string."""

    source: str


class _Float(float):
    source: str


class _Loader(yaml.SafeLoader):
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

    def _number(self, node: Any) -> _Int | _Float:
        if node.tag.endswith(":int"):
            number: _Int | _Float = _Int(self.construct_yaml_int(node))
        else:
            number = _Float(self.construct_yaml_float(node))
        number.source = node.value
        return number


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader._number)
_Loader.add_constructor("tag:yaml.org,2002:float", _Loader._number)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """ "invalid YAML at line 3: <problem>" on one line."""
    where = ":"
    text = str(exc)
    if isinstance(exc, yaml.MarkedYAMLError):
        text = exc.problem or exc.context or "syntax error"
        if exc.problem_mark is not None:
            where = f" at line {exc.problem_mark.line + 1}:"
    return f"invalid YAML{where} {' '.join(text.split())}"


def _read_file(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration file: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: the configuration file is not UTF-8 text") from None
    try:
        tree = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: {_yaml_problem(exc)}") from None
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping of configuration sections")
    if "version" not in tree:
        raise ConfigError("version: missing from the configuration file (write version: 0.1)")
    return tree


# --- durations and sizes ---------------------------------------------------------------------

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
        raise TypeError(f"expected a duration such as 10m or 168h, got {_describe(value)}")
    if isinstance(value, (int, float)):
        if abs(value) > _MAX_NS:
            raise ValueError(f"duration out of range: {_describe(value)}")
        return float(value) / 1e9
    if not isinstance(value, str):
        raise TypeError(f"expected a duration such as 10m or 168h, got {_describe(value)}")
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
    raise ValueError(f"expected a size in bytes, got {_describe(value)}")


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
        raise ConfigError(f"{key}: must be {bound}, got {_describe(value)}")
    return seconds


# --- the override engine ---------------------------------------------------------------------


def _copy_tree(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _copy_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_copy_tree(v) for v in value]
    return value


def _env_path(name: str) -> list[str] | None:
    """The lowercased key path a variable overrides, or None if it is not a valid override."""
    if not name.startswith(ENV_PREFIX) or name == CONFIG_PATH_VARIABLE:
        return None
    path = name[len(ENV_PREFIX) :].lower().split("_")
    return None if "" in path else path


def _parse_env_value(name: str, text: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:  # the value is not echoed: it may be a secret
        raise ConfigError(f"{name}: {_yaml_problem(exc)}") from None


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
        path = _env_path(name)
        if path is None:
            continue
        value = _parse_env_value(name, environ[name])
        if len(path) == 1 and path[0] in _SELECTORS and isinstance(value, str):
            value = _select(_get(result, path[0], name), value, _SELECTORS[path[0]])
        node: dict[str, Any] | list[Any] = result
        for depth, key in enumerate(path[:-1]):
            child = _get(node, key, name)
            if depth == 0 and key in _SELECTORS and isinstance(child, str):
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


def _normalise_selectors(tree: dict[str, Any]) -> None:
    for section, keep in _SELECTORS.items():
        if isinstance(tree.get(section), str):
            tree[section] = _select(tree[section], tree[section], keep)


def _storage_drivers(section: Any) -> list[str]:
    if not isinstance(section, dict):
        return []
    return sorted(k for k in section if k not in STORAGE_SUBSECTIONS)


# --- typed reading ---------------------------------------------------------------------------


def _describe(value: Any) -> str:
    """A short one-line rendering of a bad value for an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (_Int, _Float)):
        return value.source
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _text(value: Any) -> str | None:
    """A scalar as the string the user wrote (Go's yaml gives a string field the raw text)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (_Int, _Float)):
        return value.source
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return None


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, _Int):
        return int(value)
    if isinstance(value, _Float):
        return float(value)
    return value


class _Node:
    """A mapping in the tree with its dotted path, read with typed getters that raise
    ConfigError naming the key. A missing or null value gives the default."""

    def __init__(self, data: Any, path: str) -> None:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping, got {_describe(data)}")
        self.data: dict[str, Any] = data
        self.path = path

    def key(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def section(self, key: str) -> _Node:
        return _Node(self.data.get(key), self.key(key))

    def get_bool(self, key: str, default: bool) -> bool:
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ConfigError(f"{self.key(key)}: expected a boolean, got {_describe(value)}")
        return value

    def get_str(self, key: str, default: str | None) -> str | None:
        value = self.data.get(key)
        if value is None:
            return default
        text = _text(value)
        if text is None:
            raise ConfigError(f"{self.key(key)}: expected a string, got {_describe(value)}")
        return text

    def get_int(self, key: str, default: int, minimum: int) -> int:
        value = self.data.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{self.key(key)}: expected an integer, got {_describe(value)}")
        if value < minimum:
            raise ConfigError(f"{self.key(key)}: must be at least {minimum}, got {value}")
        return int(value)

    def get_duration(self, key: str, default: float, positive: bool = False) -> float:
        return duration_setting(self.data.get(key), self.key(key), default, positive=positive)

    def get_strs(self, key: str) -> tuple[str, ...]:
        value = self.data.get(key)
        items = value if isinstance(value, list) else [] if value is None else [value]
        texts = tuple(_text(item) for item in items)
        if any(text is None for text in texts):
            raise ConfigError(
                f"{self.key(key)}: expected a list of strings, got {_describe(value)}"
            )
        return tuple(t for t in texts if t is not None)

    def get_choice(self, key: str, default: str, choices: Mapping[str, str], what: str) -> str:
        text = self.get_str(key, default) or default
        if text.lower() not in choices:
            expected = ", ".join(dict.fromkeys(choices))
            raise ConfigError(f"{self.key(key)}: invalid {what} {text!r} (expected {expected})")
        return choices[text.lower()]


def _unknown_keys(data: Mapping[str, Any], schema: Mapping[str, Any], path: str) -> Iterator[str]:
    for key, value in data.items():
        dotted = f"{path}.{key}" if path else key
        known = key.lower() if path in _PARAM_SECTIONS else key
        if known not in schema:
            yield f"unknown configuration key: {dotted}"
        elif isinstance(schema[known], dict) and isinstance(value, dict):
            yield from _unknown_keys(value, schema[known], dotted)


def _params(section: _Node, key: str) -> dict[str, Any]:
    """A driver's or auth scheme's parameters: keys lowercased, string-like ones as text."""
    params = section.section(key)
    return {
        k.lower(): (_text(v) if k.lower() in _STRING_PARAMS and _text(v) is not None else v)
        for k, v in params.data.items()
    }


# --- building the Config ---------------------------------------------------------------------


def _build_storage(root: _Node) -> StorageConfig:
    if root.data.get("storage") is None:
        raise ConfigError("no storage driver specified")
    storage = root.section("storage")
    drivers = _storage_drivers(storage.data)
    if len(drivers) > 1:
        raise ConfigError(f"multiple storage drivers specified: {', '.join(drivers)}")
    if not drivers:
        raise ConfigError("no storage driver specified")
    driver = drivers[0]
    if driver not in STORAGE_DRIVERS:
        supported = ", ".join(STORAGE_DRIVERS)
        raise ConfigError(
            f"storage: unsupported storage driver {driver!r} (supported: {supported})"
        )
    params = _params(storage, driver)
    if driver == "filesystem":
        fs = _Node(params, "storage.filesystem")
        params["rootdirectory"] = fs.get_str("rootdirectory", FILESYSTEM_ROOTDIRECTORY)
        if not params["rootdirectory"]:
            raise ConfigError("storage.filesystem.rootdirectory: must not be empty")
        if "maxthreads" in params:
            params["maxthreads"] = fs.get_int("maxthreads", 100, minimum=1)
    maintenance = storage.section("maintenance")
    purging = maintenance.section("uploadpurging")
    enabled = purging.get_bool("enabled", True)
    return StorageConfig(
        driver=driver,
        params=_freeze(params),
        delete_enabled=storage.section("delete").get_bool("enabled", False),
        readonly=maintenance.section("readonly").get_bool("enabled", False),
        uploadpurging=UploadPurging(
            enabled=enabled,
            age=purging.get_duration("age", UploadPurging.age),
            interval=purging.get_duration("interval", UploadPurging.interval, positive=enabled),
            dryrun=purging.get_bool("dryrun", False),
        ),
        redirect_disable=storage.section("redirect").get_bool("disable", False),
        cache=_freeze(storage.section("cache").data),
        tag_concurrencylimit=storage.section("tag").get_int("concurrencylimit", 100, minimum=1),
    )


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 header field name


def _build_headers(http: _Node) -> Mapping[str, tuple[str, ...]]:
    section = http.section("headers")
    headers: dict[str, tuple[str, ...]] = {}
    for name in section.data:
        if not _TOKEN.fullmatch(name):
            raise ConfigError(f"http.headers: invalid header name {name!r}")
        values = section.get_strs(name)
        if any("\r" in v or "\n" in v for v in values):
            raise ConfigError(f"http.headers.{name}: header values must not contain line breaks")
        # Canonical form, as Go's http.Header: x-content-type-options -> X-Content-Type-Options
        canonical = "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))
        headers[canonical] = headers.get(canonical, ()) + values
    return MappingProxyType(headers)


def _build_http(root: _Node) -> HttpConfig:
    http = root.section("http")
    host = http.get_str("host", None) or None
    if host is not None:
        parts = urllib.parse.urlsplit(host)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(
                f"http.host: expected an absolute URL such as https://registry.example.com,"
                f" got {host!r}"
            )
    prefix = (http.get_str("prefix", "") or "").strip("/")
    tls = http.section("tls")
    certificate = tls.get_str("certificate", None) or None
    key = tls.get_str("key", None) or None
    if (certificate is None) != (key is None):
        missing, present = ("key", "certificate") if key is None else ("certificate", "key")
        raise ConfigError(f"http.tls.{missing}: required when http.tls.{present} is set")
    debug = http.section("debug")
    prometheus = debug.section("prometheus")
    return HttpConfig(
        addr=http.get_str("addr", None) or ":5000",
        host=host,
        prefix=f"/{prefix}" if prefix else "",
        relativeurls=http.get_bool("relativeurls", False),
        secret=http.get_str("secret", None) or None,
        tls_certificate=certificate,
        tls_key=key,
        tls_clientcas=tls.get_strs("clientcas"),
        debug_addr=debug.get_str("addr", None) or None,
        debug_prometheus_enabled=prometheus.get_bool("enabled", False),
        debug_prometheus_path=prometheus.get_str("path", None) or "/metrics",
        headers=_build_headers(http),
        draintimeout=http.get_duration("draintimeout", 0.0),
        workers=http.get_int("workers", 0, minimum=0),
        headertimeout=http.get_duration("headertimeout", HttpConfig.headertimeout, positive=True),
        bodytimeout=http.get_duration("bodytimeout", HttpConfig.bodytimeout, positive=True),
        minbodyrate=http.get_int("minbodyrate", HttpConfig.minbodyrate, minimum=0),
        maxconnections=http.get_int("maxconnections", 0, minimum=0),
        h2c_enabled=http.section("h2c").get_bool("enabled", False),
        http2_disabled=http.section("http2").get_bool("disabled", False),
    )


def _build_auth(root: _Node) -> AuthConfig | None:
    auth = root.section("auth")
    schemes = sorted(auth.data)
    if len(schemes) > 1:
        raise ConfigError(f"multiple auth schemes specified: {', '.join(schemes)}")
    if not schemes:
        return None
    scheme = schemes[0]
    if scheme not in AUTH_SCHEMES:
        supported = ", ".join(AUTH_SCHEMES)
        raise ConfigError(f"auth: unsupported auth scheme {scheme!r} (supported: {supported})")
    params = _params(auth, scheme)
    return None if scheme == "none" else AuthConfig(scheme=scheme, params=_freeze(params))


def _build_log(root: _Node) -> LogConfig:
    log = root.section("log")
    level_node = log if log.data.get("level") is not None else root
    level_key = "level" if level_node is log else "loglevel"
    return LogConfig(
        level=level_node.get_choice(level_key, "info", LOG_LEVELS, "log level"),
        formatter=log.get_choice("formatter", "text", LOG_FORMATTERS, "log formatter"),
        accesslog_disabled=log.section("accesslog").get_bool("disabled", False),
        fields=_freeze(log.section("fields").data),
    )


def _build_validation(root: _Node) -> ValidationConfig:
    validation = root.section("validation")
    manifests = validation.section("manifests")
    urls = manifests.section("urls")
    # The reference: the deprecated `enabled: true` wins over `disabled`.
    enabled = validation.get_bool("enabled", False)
    return ValidationConfig(
        disabled=validation.get_bool("disabled", False) and not enabled,
        manifests_urls_allow=urls.get_strs("allow"),
        manifests_urls_deny=urls.get_strs("deny"),
        indexes_platforms=manifests.section("indexes").get_choice(
            "platforms", "all", {p: p for p in INDEX_PLATFORMS}, "platforms setting"
        ),
    )


def _build_gc(root: _Node) -> GCConfig:
    gc = root.section("gc")
    online = gc.section("online").get_bool("enabled", False)
    return GCConfig(
        online_enabled=online,
        interval=gc.get_duration("interval", GCConfig.interval, positive=online),
        graceperiod=gc.get_duration("graceperiod", GCConfig.graceperiod),
        delete_untagged=gc.get_bool("deleteuntagged", False),
    )


def _build(tree: dict[str, Any]) -> Config:
    root = _Node(tree, "")
    version = root.get_str("version", "0.1")
    if version != "0.1":
        raise ConfigError(f"version: unsupported configuration version {version!r} (expected 0.1)")
    for free in ("redis", "reporting", "middleware", "proxy", "compatibility", "catalog"):
        root.section(free)  # type check only: later code reads these from Config.raw
    tree["version"] = version  # the text, not YAML's float 0.1
    return Config(
        version=version,
        log=_build_log(root),
        storage=_build_storage(root),
        http=_build_http(root),
        auth=_build_auth(root),
        validation=_build_validation(root),
        notifications=_freeze(root.section("notifications").data),
        health=_freeze(root.section("health").data),
        gc=_build_gc(root),
        raw=_freeze(tree),
    )


def load_config(path: str | None, environ: Mapping[str, str]) -> tuple[Config, list[str]]:
    """Read the YAML file (if `path`), apply ``REGISTRY_*`` overrides from `environ`, validate.

    Returns the config and human-readable warnings (unknown keys, ignored variables) for the
    caller to log. Raises ConfigError (one line naming the key) for a missing or unreadable file,
    invalid YAML, a wrong type or value, or a storage section without exactly one driver.
    """
    tree: dict[str, Any] = _read_file(path) if path is not None else {"version": "0.1"}
    _normalise_selectors(tree)
    tree.setdefault("storage", {"filesystem": {"rootdirectory": DEFAULT_ROOTDIRECTORY}})
    warnings = [
        f"ignoring environment variable {name}: empty key component"
        for name in sorted(environ)
        if name.startswith(ENV_PREFIX) and name != CONFIG_PATH_VARIABLE and not _env_path(name)
    ]
    # The drivers chosen by the file or by REGISTRY_STORAGE itself; any other driver section
    # was created by REGISTRY_STORAGE_<DRIVER>_* alone.
    selection = {k: v for k, v in environ.items() if _env_path(k) == ["storage"]}
    chosen = _storage_drivers(apply_env_overrides(tree, selection).get("storage"))
    merged = apply_env_overrides(tree, environ)
    _normalise_selectors(merged)
    storage = merged.get("storage")
    drivers = _storage_drivers(storage)
    kept = [d for d in drivers if d in chosen]
    if kept and isinstance(storage, dict):
        for stray in (d for d in drivers if d not in chosen):
            prefix = f"{ENV_PREFIX}STORAGE_{stray.upper()}_"
            names = ", ".join(sorted(n for n in environ if n.startswith(prefix[:-1])))
            warnings.append(
                f"{prefix}* variables are set ({names}) but the storage driver is"
                f" {', '.join(kept)}, so they are ignored; set REGISTRY_STORAGE={stray} to use"
                f" the {stray} driver"
            )
            del storage[stray]
    config = _build(merged)
    warnings.extend(_unknown_keys(merged, _SCHEMA, ""))
    return config, warnings
