"""Configuration: YAML file + REGISTRY_* overrides (SPEC.md "Configuration"). Pure, synchronous."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from registry.config import (
    AuthConfig,
    Config,
    ConfigError,
    GCConfig,
    HttpConfig,
    LogConfig,
    StorageConfig,
    UploadPurging,
    ValidationConfig,
    apply_env_overrides,
    load_config,
    parse_duration,
    parse_size,
)

HOUR = 3600.0


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.yml"
    path.write_text(text)
    return str(path)


# --- the override engine ---------------------------------------------------------------------

FS_WITH_SUBSECTIONS = {
    "filesystem": {"rootdirectory": "/var/lib/registry"},
    "delete": {"enabled": True},
    "maintenance": {"readonly": {"enabled": False}},
    "cache": {"blobdescriptor": "inmemory"},
}

ENGINE_CASES: list[tuple[str, dict[str, Any], dict[str, str], dict[str, Any]]] = [
    ("one-level", {}, {"REGISTRY_LOGLEVEL": "debug"}, {"loglevel": "debug"}),
    ("nested", {}, {"REGISTRY_HTTP_ADDR": ":5001"}, {"http": {"addr": ":5001"}}),
    (
        "creates-intermediates",
        {},
        {"REGISTRY_STORAGE_MAINTENANCE_UPLOADPURGING_AGE": "72h"},
        {"storage": {"maintenance": {"uploadpurging": {"age": "72h"}}}},
    ),
    (
        "keeps-siblings",
        {"http": {"addr": ":5000", "secret": "s"}},
        {"REGISTRY_HTTP_ADDR": ":80"},
        {"http": {"addr": ":80", "secret": "s"}},
    ),
    ("yaml-bool", {}, {"REGISTRY_HTTP_RELATIVEURLS": "true"}, {"http": {"relativeurls": True}}),
    (
        "yaml-int",
        {},
        {"REGISTRY_STORAGE_S3_CHUNKSIZE": "5242880"},
        {"storage": {"s3": {"chunksize": 5242880}}},
    ),
    ("yaml-quoted-string", {}, {"REGISTRY_HTTP_ADDR": '"5000"'}, {"http": {"addr": "5000"}}),
    ("yaml-empty-is-null", {}, {"REGISTRY_HTTP_SECRET": ""}, {"http": {"secret": None}}),
    (
        "yaml-list",
        {},
        {"REGISTRY_VALIDATION_MANIFESTS_URLS_ALLOW": "[a, b]"},
        {"validation": {"manifests": {"urls": {"allow": ["a", "b"]}}}},
    ),
    (
        "header-list-value",
        {},
        {"REGISTRY_HTTP_HEADERS_X-CONTENT-TYPE-OPTIONS": "[nosniff]"},
        {"http": {"headers": {"x-content-type-options": ["nosniff"]}}},
    ),
    (
        "replaces-key-case-insensitively",
        {"http": {"headers": {"X-Frame-Options": ["DENY"], "Server": ["r"]}}},
        {"REGISTRY_HTTP_HEADERS_X-FRAME-OPTIONS": "[SAMEORIGIN]"},
        {"http": {"headers": {"Server": ["r"], "x-frame-options": ["SAMEORIGIN"]}}},
    ),
    (
        "ignores-other-variables",
        {"http": {"addr": ":5000"}},
        {
            "PATH": "/bin",
            "registry_http_addr": ":1",
            "REGISTRYHTTP_ADDR": ":2",
            "MY_REGISTRY_HTTP_ADDR": ":3",
            "REGISTRY_CONFIGURATION_PATH": "/etc/distribution/config.yml",
            "REGISTRY_HTTP__ADDR": ":4",
            "REGISTRY_": "x",
        },
        {"http": {"addr": ":5000"}},
    ),
    (
        "lexical-order-selector-first",
        {},
        # dict order is deliberately reversed: sorting must put the selector first
        {"REGISTRY_STORAGE_S3_BUCKET": "b", "REGISTRY_STORAGE": "s3"},
        {"storage": {"s3": {"bucket": "b"}}},
    ),
    (
        "lexical-order-section-then-key",
        {},
        {"REGISTRY_HTTP_SECRET": "x", "REGISTRY_HTTP": "{addr: ':1', secret: y}"},
        {"http": {"addr": ":1", "secret": "x"}},
    ),
    (
        "storage-s3-replaces-file-driver-keeps-subsections",
        {"storage": FS_WITH_SUBSECTIONS},
        {"REGISTRY_STORAGE": "s3", "REGISTRY_STORAGE_S3_REGION": "auto"},
        {
            "storage": {
                "delete": {"enabled": True},
                "maintenance": {"readonly": {"enabled": False}},
                "cache": {"blobdescriptor": "inmemory"},
                "s3": {"region": "auto"},
            }
        },
    ),
    (
        "storage-same-driver-keeps-params",
        {"storage": {"filesystem": {"rootdirectory": "/srv"}}},
        {"REGISTRY_STORAGE": "filesystem"},
        {"storage": {"filesystem": {"rootdirectory": "/srv"}}},
    ),
    (
        "storage-selector-is-lowercased",
        {},
        {"REGISTRY_STORAGE": "S3"},
        {"storage": {"s3": {}}},
    ),
    (
        "storage-scalar-in-file-becomes-section",
        {"storage": "filesystem"},
        {"REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": "/data"},
        {"storage": {"filesystem": {"rootdirectory": "/data"}}},
    ),
    (
        "auth-selector-replaces-scheme",
        {"auth": {"token": {"realm": "https://auth"}}},
        {"REGISTRY_AUTH": "htpasswd", "REGISTRY_AUTH_HTPASSWD_PATH": "/auth/htpasswd"},
        {"auth": {"htpasswd": {"path": "/auth/htpasswd"}}},
    ),
    (
        "path-through-scalar-becomes-mapping",
        {"log": {"fields": "oops"}},
        {"REGISTRY_LOG_FIELDS_SERVICE": "registry"},
        {"log": {"fields": {"service": "registry"}}},
    ),
    (
        "non-selector-section-set-to-scalar",
        {"http": {"addr": ":5000"}},
        {"REGISTRY_HTTP": "off"},
        {"http": False},
    ),
    (
        "list-created-for-numeric-index",
        {},
        {
            "REGISTRY_NOTIFICATIONS_ENDPOINTS_0_NAME": "a",
            "REGISTRY_NOTIFICATIONS_ENDPOINTS_0_URL": "u",
        },
        {"notifications": {"endpoints": [{"name": "a", "url": "u"}]}},
    ),
    (
        "new-numeric-key-other-than-0-is-a-mapping-key",
        {},
        {"REGISTRY_PORT": "tcp://10.0.0.2:5000", "REGISTRY_PORT_5000_TCP_PORT": "5000"},
        {"port": {"5000": {"tcp": {"port": 5000}}}},
    ),
    (
        "existing-list-element-updated-and-appended",
        {"notifications": {"endpoints": [{"name": "a", "url": "old"}]}},
        {
            "REGISTRY_NOTIFICATIONS_ENDPOINTS_0_URL": "new",
            "REGISTRY_NOTIFICATIONS_ENDPOINTS_1_NAME": "b",
        },
        {"notifications": {"endpoints": [{"name": "a", "url": "new"}, {"name": "b"}]}},
    ),
]


@pytest.mark.parametrize(
    ("tree", "environ", "expected"),
    [case[1:] for case in ENGINE_CASES],
    ids=[case[0] for case in ENGINE_CASES],
)
def test_apply_env_overrides(
    tree: dict[str, Any], environ: dict[str, str], expected: dict[str, Any]
) -> None:
    assert apply_env_overrides(tree, environ) == expected


def test_apply_env_overrides_does_not_modify_its_input() -> None:
    tree = {"storage": {"filesystem": {"rootdirectory": "/x"}, "delete": {"enabled": False}}}
    snapshot = repr(tree)
    apply_env_overrides(tree, {"REGISTRY_STORAGE": "s3", "REGISTRY_STORAGE_DELETE_ENABLED": "1"})
    assert repr(tree) == snapshot


ENDPOINTS = {"notifications": {"endpoints": [{"url": "a"}]}}
ENGINE_ERRORS: list[tuple[dict[str, Any], dict[str, str], str]] = [
    (
        {},
        {"REGISTRY_HTTP_SECRET": "[unclosed"},
        "REGISTRY_HTTP_SECRET: invalid YAML at line 1: expected ',' or ']', but got '<stream end>'",
    ),
    (
        ENDPOINTS,
        {"REGISTRY_NOTIFICATIONS_ENDPOINTS_2_URL": "u"},
        "REGISTRY_NOTIFICATIONS_ENDPOINTS_2_URL: list index 2 is out of range (length 1)",
    ),
    (
        ENDPOINTS,
        {"REGISTRY_NOTIFICATIONS_ENDPOINTS_URL": "u"},
        "REGISTRY_NOTIFICATIONS_ENDPOINTS_URL: expected a numeric list index, got 'URL'",
    ),
]


@pytest.mark.parametrize(("tree", "environ", "message"), ENGINE_ERRORS)
def test_apply_env_overrides_errors(
    tree: dict[str, Any], environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        apply_env_overrides(tree, environ)
    assert str(info.value) == message


# --- bad configurations ----------------------------------------------------------------------

V = "version: 0.1\n"

BAD_CONFIGS: list[tuple[str, str | None, dict[str, str], str]] = [
    (
        "missing-version",
        "storage: {inmemory: {}}\n",
        {},
        "version: missing from the configuration file (write version: 0.1)",
    ),
    (
        "unsupported-version",
        "version: 0.2\n",
        {},
        "version: unsupported configuration version '0.2' (expected 0.1)",
    ),
    ("not-a-mapping", "- a\n- b\n", {}, "{path}: expected a mapping of configuration sections"),
    (
        "yaml-syntax",
        V + "storage:\n  filesystem: {rootdirectory: /x\nhttp: {}\n",
        {},
        "{path}: invalid YAML at line 4: expected ',' or '}', but got ':'",
    ),
    (
        "two-drivers-in-file",
        V + "storage:\n  s3: {bucket: b}\n  filesystem: {rootdirectory: /x}\n",
        {},
        "multiple storage drivers specified: filesystem, s3",
    ),
    ("no-driver", V + "storage:\n  delete: {enabled: true}\n", {}, "no storage driver specified"),
    ("null-storage", V + "storage:\n", {}, "no storage driver specified"),
    (
        "unsupported-driver",
        V + "storage: {azure: {accountname: a}}\n",
        {},
        "storage.azure: not supported: use the filesystem or s3 driver",
    ),
    (
        "driver-params-not-a-mapping",
        V + "storage: {s3: bucket}\n",
        {},
        "storage.s3: expected a mapping, got 'bucket'",
    ),
    (
        "bool-in-file",
        V + "storage: {filesystem: {}, delete: {enabled: maybe}}\n",
        {},
        "storage.delete.enabled: expected a boolean, got 'maybe'",
    ),
    (
        "bool-from-env",
        None,
        {"REGISTRY_STORAGE_DELETE_ENABLED": "maybe"},
        "storage.delete.enabled: expected a boolean, got 'maybe'",
    ),
    (
        "quoted-bool",
        V + "http: {relativeurls: 'true'}\n",
        {},
        "http.relativeurls: expected a boolean, got 'true'",
    ),
    (
        "section-not-a-mapping",
        None,
        {"REGISTRY_HTTP": "oops"},
        "http: expected a mapping, got 'oops'",
    ),
    (
        "subsection-not-a-mapping",
        V + "storage: {filesystem: {}, maintenance: {readonly: true}}\n",
        {},
        "storage.maintenance.readonly: expected a mapping, got true",
    ),
    (
        "log-level",
        V + "log: {level: verbose}\n",
        {},
        "log.level: invalid log level 'verbose' (expected error, warn, warning, info, debug)",
    ),
    (
        "legacy-loglevel",
        V + "loglevel: loud\n",
        {},
        "loglevel: invalid log level 'loud' (expected error, warn, warning, info, debug)",
    ),
    (
        "log-level-type",
        V + "log: {level: [info]}\n",
        {},
        "log.level: expected a string, got a list",
    ),
    (
        "log-formatter",
        None,
        {"REGISTRY_LOG_FORMATTER": "xml"},
        "log.formatter: invalid log formatter 'xml' (expected text, json, logstash)",
    ),
    (
        "duration",
        None,
        {"REGISTRY_HTTP_DRAINTIMEOUT": "10x"},
        "http.draintimeout: invalid duration '10x' (expected e.g. 168h, 10m30s or 500ms)",
    ),
    (
        "duration-negative",
        V + "gc: {graceperiod: -1h}\n",
        {},
        "gc.graceperiod: must be zero or more, got '-1h'",
    ),
    (
        "purge-interval-zero",
        V + "storage: {filesystem: {}, maintenance: {uploadpurging: {interval: 0s}}}\n",
        {},
        "storage.maintenance.uploadpurging.interval: must be greater than zero, got '0s'",
    ),
    (
        "gc-interval-zero-when-online",
        None,
        {"REGISTRY_GC_ONLINE_ENABLED": "true", "REGISTRY_GC_INTERVAL": "0"},
        "gc.interval: must be greater than zero, got 0",
    ),
    (
        "int-type",
        None,
        {"REGISTRY_STORAGE_TAG_CONCURRENCYLIMIT": "many"},
        "storage.tag.concurrencylimit: expected an integer, got 'many'",
    ),
    (
        "int-minimum",
        None,
        {"REGISTRY_STORAGE_TAG_CONCURRENCYLIMIT": "-1"},
        "storage.tag.concurrencylimit: must be at least 0, got -1",
    ),
    ("workers", None, {"REGISTRY_HTTP_WORKERS": "-1"}, "http.workers: must be at least 0, got -1"),
    (
        "maxthreads",
        V + "storage: {filesystem: {maxthreads: lots}}\n",
        {},
        "storage.filesystem.maxthreads: expected an integer, got 'lots'",
    ),
    (
        "host-without-scheme",
        None,
        {"REGISTRY_HTTP_HOST": "registry.example.com"},
        (
            "http.host: expected an absolute URL such as https://registry.example.com,"
            " got 'registry.example.com'"
        ),
    ),
    (
        "tls-certificate-without-key",
        V + "http: {tls: {certificate: /c.pem}}\n",
        {},
        "http.tls.key: required when http.tls.certificate is set",
    ),
    (
        "header-name",
        V + "http: {headers: {'Bad Header': [x]}}\n",
        {},
        "http.headers: invalid header name 'Bad Header'",
    ),
    (
        "header-values",
        V + "http: {headers: {X-A: [{a: b}]}}\n",
        {},
        "http.headers.X-A: expected a list of strings, got a list",
    ),
    (
        "two-auth-schemes",
        V + "auth: {token: {realm: r}}\n",
        {"REGISTRY_AUTH_HTPASSWD_PATH": "/auth/htpasswd"},
        "multiple auth schemes specified: htpasswd, token",
    ),
    (
        "unsupported-auth",
        None,
        {"REGISTRY_AUTH": "ldap"},
        "auth: unsupported auth scheme 'ldap' (supported: htpasswd, none, silly, token)",
    ),
    (
        "index-platforms",
        V + "validation: {manifests: {indexes: {platforms: some}}}\n",
        {},
        (
            "validation.manifests.indexes.platforms: invalid platforms setting 'some'"
            " (expected all, list, none)"
        ),
    ),
    (
        "free-section-type",
        V + "catalog: 5\n",
        {},
        "catalog: expected a mapping, got 5",
    ),
    (
        "env-yaml",
        None,
        {"REGISTRY_STORAGE_S3_SECRETKEY": "*abc"},
        "REGISTRY_STORAGE_S3_SECRETKEY: invalid YAML at line 1: found undefined alias 'abc'",
    ),
]


@pytest.mark.parametrize(
    ("text", "environ", "message"),
    [case[1:] for case in BAD_CONFIGS],
    ids=[case[0] for case in BAD_CONFIGS],
)
def test_bad_config_is_one_clear_line(
    tmp_path: Path, text: str | None, environ: dict[str, str], message: str
) -> None:
    path = write(tmp_path, text) if text is not None else None
    with pytest.raises(ConfigError) as info:
        load_config(path, environ)
    assert str(info.value) == message.replace("{path}", str(path))
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.yml")
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert (
        str(info.value) == f"{path}: cannot read the configuration file: No such file or directory"
    )


# --- warnings --------------------------------------------------------------------------------

FS_FILE = (
    V + "storage:\n  filesystem: {rootdirectory: /var/lib/registry}\n  delete: {enabled: true}\n"
)
S3_REFUSED = (
    "REGISTRY_STORAGE_S3_* variables are set (REGISTRY_STORAGE_S3_BUCKET,"
    " REGISTRY_STORAGE_S3_REGION) but the storage driver is filesystem; set"
    " REGISTRY_STORAGE=s3 to use the s3 driver, or unset them"
)
S3_VARS = {"REGISTRY_STORAGE_S3_BUCKET": "b", "REGISTRY_STORAGE_S3_REGION": "auto"}

WARNING_CASES: list[tuple[str, str | None, dict[str, str], str, list[str]]] = [
    ("s3-selected", FS_FILE, {**S3_VARS, "REGISTRY_STORAGE": "s3"}, "s3", []),
    ("s3-only-section", V + "storage: {delete: {enabled: true}}\n", S3_VARS, "s3", []),
    (
        "unknown-keys",
        V + "foo: 1\nhttp: {adress: ':5000'}\nstorage: {filesystem: {rootdir: /x}}\n",
        {},
        "filesystem",
        [
            "unknown configuration key: foo",
            "unknown configuration key: http.adress",
            "unknown configuration key: storage.filesystem.rootdir",
        ],
    ),
    (
        "unknown-key-from-env",
        None,
        {
            "REGISTRY_HTTP_TLS_CERT": "/c.pem",
            # what a Kubernetes service or Docker link named "registry" puts in the environment
            "REGISTRY_PORT": "tcp://10.0.0.2:5000",
            "REGISTRY_PORT_5000_TCP": "tcp://10.0.0.2:5000",
            "REGISTRY_PORT_5000_TCP_PORT": "5000",
            "REGISTRY_SERVICE_HOST": "10.0.0.2",
        },
        "filesystem",
        [
            "unknown configuration key: http.tls.cert",
            "unknown configuration key: port",
            "unknown configuration key: service",
        ],
    ),
    (
        "known-reference-keys-are-quiet",
        V
        + "log: {accesslog: {disabled: true}, fields: {service: registry}}\n"
        + "http: {net: tcp, http2: {disabled: false}, debug: {addr: ':5001'}}\n"
        + "catalog: {maxentries: 100}\nmiddleware: {}\nproxy:\nredis: {}\n"
        + "storage: {filesystem: {}, cache: {blobdescriptor: inmemory, blobdescriptorsize: 5}}\n",
        {},
        "filesystem",
        [],
    ),
    (
        "malformed-variable-name",
        None,
        {"REGISTRY_HTTP__ADDR": ":1"},
        "filesystem",
        ["ignoring environment variable REGISTRY_HTTP__ADDR: empty key component"],
    ),
]


@pytest.mark.parametrize(
    ("text", "environ", "driver", "warnings"),
    [case[1:] for case in WARNING_CASES],
    ids=[case[0] for case in WARNING_CASES],
)
def test_warnings(
    tmp_path: Path, text: str | None, environ: dict[str, str], driver: str, warnings: list[str]
) -> None:
    path = write(tmp_path, text) if text is not None else None
    config, got = load_config(path, environ)
    assert got == warnings
    assert config.storage.driver == driver
    drivers = set(config.raw["storage"]) - {"delete", "maintenance", "redirect", "cache", "tag"}
    assert drivers == {driver}


@pytest.mark.parametrize("text", [FS_FILE, None], ids=["file-filesystem", "default-filesystem"])
def test_s3_vars_without_storage_s3_stop_startup_end_5(tmp_path: Path, text: str | None) -> None:
    # v3 stops too ("multiple storage drivers specified in configuration or environment")
    path = write(tmp_path, text) if text is not None else None
    with pytest.raises(ConfigError) as info:
        load_config(path, S3_VARS)
    assert str(info.value) == S3_REFUSED


# --- durations and sizes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("168h", 168 * HOUR),
        ("24h", 24 * HOUR),
        ("10m30s", 630.0),
        ("1h30m", 5400.0),
        ("1.5h", 5400.0),
        (".5s", 0.5),
        ("500ms", 0.5),
        ("250us", 0.00025),
        ("250\u00b5s", 0.00025),
        ("10ns", 1e-8),
        ("0", 0.0),
        ("-1m", -60.0),
        ("+2s", 2.0),
        (60, 6e-8),  # a bare YAML number is nanoseconds, as Go's time.Duration
        (5_000_000_000, 5.0),
        (1.5e9, 1.5),
    ],
)
def test_parse_duration(value: str | float, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["", "60", "10x", "5 m", "1h 30m", "h", ".s", "1.5.5h", "1hr"])
def test_parse_duration_rejects(value: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(value)


@pytest.mark.parametrize("value", [True, None, [1], {"h": 1}])
def test_parse_duration_rejects_types(value: Any) -> None:
    with pytest.raises(TypeError):
        parse_duration(value)


@pytest.mark.parametrize(
    ("value", "size"),
    [(5242880, 5242880), ("5242880", 5242880), (" 10485760 ", 10485760), (0, 0), ("0", 0)],
)
def test_parse_size(value: Any, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize("value", [-1, "-1", "5MB", "1e6", 5.0, True, None, "", "0x10"])
def test_parse_size_rejects(value: Any) -> None:
    with pytest.raises(ValueError, match="expected a size in bytes"):
        parse_size(value)


# --- defaults and building -------------------------------------------------------------------


def test_no_file_no_env_is_the_builtin_default() -> None:
    config, warnings = load_config(None, {})
    assert warnings == []
    assert dataclasses.replace(config, raw={}) == Config()
    assert config.storage == StorageConfig(driver="filesystem", params={"rootdirectory": "./data"})
    assert config.http.addr == ":5000"
    assert config.raw == {"version": "0.1", "storage": {"filesystem": {"rootdirectory": "./data"}}}


DEFAULTS = [
    ("version", "0.1"),
    ("log", LogConfig(level="info", formatter="text", accesslog_disabled=False, fields={})),
    ("http", HttpConfig(addr=":5000", prefix="", draintimeout=0.0, workers=0, headers={})),
    ("auth", None),
    ("validation", ValidationConfig(disabled=False, indexes_platforms="all")),
    ("notifications", {}),
    ("health", {}),
    ("gc", GCConfig(online_enabled=False, interval=24 * HOUR, graceperiod=HOUR)),
]


@pytest.mark.parametrize(("attribute", "expected"), DEFAULTS, ids=[d[0] for d in DEFAULTS])
def test_defaults_for_a_file_with_only_a_version(
    tmp_path: Path, attribute: str, expected: Any
) -> None:
    config, _ = load_config(write(tmp_path, V), {})
    assert getattr(config, attribute) == expected


def test_storage_defaults() -> None:
    storage = load_config(None, {})[0].storage
    assert storage.delete_enabled is False
    assert storage.readonly is False
    assert storage.uploadpurging == UploadPurging(
        enabled=True, age=168 * HOUR, interval=24 * HOUR, dryrun=False
    )
    assert storage.redirect_disable is False
    assert storage.cache == {}
    assert storage.tag_concurrencylimit == 100


FILESYSTEM_ROOTS = [
    ("no-storage-section", V, "./data"),
    ("section-without-root", V + "storage: {filesystem: {}}\n", "/var/lib/registry"),
    ("null-section", V + "storage: {filesystem: }\n", "/var/lib/registry"),
    ("scalar-section", V + "storage: filesystem\n", "/var/lib/registry"),
    ("explicit", V + "storage: {filesystem: {rootdirectory: /srv/r}}\n", "/srv/r"),
]


@pytest.mark.parametrize(
    ("text", "root"), [r[1:] for r in FILESYSTEM_ROOTS], ids=[r[0] for r in FILESYSTEM_ROOTS]
)
def test_filesystem_rootdirectory(tmp_path: Path, text: str, root: str) -> None:
    config, _ = load_config(write(tmp_path, text), {})
    assert config.storage.driver == "filesystem"
    assert config.storage.params["rootdirectory"] == root


FULL_FILE = """\
version: 0.1
log:
  level: WARNING
  formatter: logstash
  fields: {service: registry}
storage:
  filesystem:
    rootdirectory: /var/lib/registry
  delete:
    enabled: true
  maintenance:
    uploadpurging: {enabled: true, age: 72h, interval: 12h, dryrun: true}
    readonly: {enabled: true}
  redirect: {disable: true}
  cache: {blobdescriptor: inmemory}
  tag: {concurrencylimit: 8}
http:
  addr: 0.0.0.0:5000
  host: https://registry.example.com
  prefix: /mirror/
  relativeurls: true
  secret: 0123
  draintimeout: 30s
  workers: 2
  tls: {certificate: /c.pem, key: /k.pem, clientcas: [/ca1.pem, /ca2.pem]}
  debug: {addr: ':5001', prometheus: {enabled: true, path: /prom}}
  headers:
    x-content-type-options: [nosniff]
    Strict-Transport-Security: max-age=31536000
auth:
  htpasswd: {Realm: Registry Realm, path: /auth/htpasswd}
validation:
  disabled: true
  manifests:
    urls: {allow: ['^https?://([^/]+\\.)*example\\.com/'], deny: ['^https?://evil/']}
    indexes: {platforms: none}
notifications:
  endpoints: [{name: a, url: 'http://hook'}]
health:
  storagedriver: {enabled: true}
gc:
  online: {enabled: true}
  interval: 6h
  graceperiod: 2h
  deleteuntagged: true
"""


def test_full_file(tmp_path: Path) -> None:
    config, warnings = load_config(write(tmp_path, FULL_FILE), {})
    assert warnings == []
    assert config.log == LogConfig("warn", "json", False, {"service": "registry"})
    assert config.storage == StorageConfig(
        driver="filesystem",
        params={"rootdirectory": "/var/lib/registry"},
        delete_enabled=True,
        readonly=True,
        uploadpurging=UploadPurging(True, 72 * HOUR, 12 * HOUR, True),
        redirect_disable=True,
        cache={"blobdescriptor": "inmemory"},
        tag_concurrencylimit=8,
        blobdescriptor="inmemory",
    )
    assert config.http == HttpConfig(
        addr="0.0.0.0:5000",
        host="https://registry.example.com",
        prefix="/mirror",
        relativeurls=True,
        secret="0123",  # its text, not YAML 1.1's octal 83
        tls_certificate="/c.pem",
        tls_key="/k.pem",
        tls_clientcas=("/ca1.pem", "/ca2.pem"),
        debug_addr=":5001",
        debug_prometheus_enabled=True,
        debug_prometheus_path="/prom",
        headers={
            "X-Content-Type-Options": ("nosniff",),
            "Strict-Transport-Security": ("max-age=31536000",),
        },
        draintimeout=30.0,
        workers=2,
    )
    assert config.auth == AuthConfig(
        "htpasswd", {"realm": "Registry Realm", "path": "/auth/htpasswd"}
    )
    assert config.validation == ValidationConfig(
        disabled=True,
        manifests_urls_allow=("^https?://([^/]+\\.)*example\\.com/",),
        manifests_urls_deny=("^https?://evil/",),
        indexes_platforms="none",
    )
    assert config.notifications == {"endpoints": ({"name": "a", "url": "http://hook"},)}
    assert config.health == {"storagedriver": {"enabled": True}}
    assert config.gc == GCConfig(True, 6 * HOUR, 2 * HOUR, True)
    assert config.raw["version"] == "0.1"  # `version: 0.1` is a YAML float; raw keeps the text


def test_typical_s3_deployment_from_env(tmp_path: Path) -> None:
    """The Dokploy shape: the image's filesystem config.yml, S3 selected through the env."""
    environ = {
        "REGISTRY_STORAGE": "s3",
        "REGISTRY_STORAGE_S3_ACCESSKEY": "0042",
        "REGISTRY_STORAGE_S3_SECRETKEY": "123456789",
        "REGISTRY_STORAGE_S3_BUCKET": "registry",
        "REGISTRY_STORAGE_S3_REGION": "auto",
        "REGISTRY_STORAGE_S3_REGIONENDPOINT": "https://acct.r2.cloudflarestorage.com",
        "REGISTRY_STORAGE_S3_FORCEPATHSTYLE": "true",
        "REGISTRY_STORAGE_S3_CHUNKSIZE": "10485760",
        "REGISTRY_AUTH": "htpasswd",
        "REGISTRY_AUTH_HTPASSWD_REALM": "Registry",
        "REGISTRY_AUTH_HTPASSWD_PATH": "/auth/htpasswd",
        "REGISTRY_HTTP_HOST": "https://registry.example.com",
        "HOSTNAME": "abc123",
    }
    config, warnings = load_config(write(tmp_path, FS_FILE), environ)
    assert warnings == []
    assert config.storage.driver == "s3"
    assert config.storage.params == {
        "accesskey": "0042",
        "secretkey": "123456789",
        "bucket": "registry",
        "region": "auto",
        "regionendpoint": "https://acct.r2.cloudflarestorage.com",
        "forcepathstyle": True,
        "chunksize": 10485760,
    }
    assert type(config.storage.params["chunksize"]) is int
    assert parse_size(config.storage.params["chunksize"]) == 10 * 1024 * 1024
    assert config.storage.delete_enabled is True  # kept from the file despite REGISTRY_STORAGE
    assert config.auth == AuthConfig("htpasswd", {"realm": "Registry", "path": "/auth/htpasswd"})


BUILD_CASES: list[tuple[str, str | None, dict[str, str], str, Any]] = [
    ("warning-is-warn", None, {"REGISTRY_LOG_LEVEL": "warning"}, "log.level", "warn"),
    ("level-uppercase", None, {"REGISTRY_LOG_LEVEL": "DEBUG"}, "log.level", "debug"),
    ("legacy-loglevel", V + "loglevel: error\n", {}, "log.level", "error"),
    ("log-level-wins", V + "loglevel: error\nlog: {level: debug}\n", {}, "log.level", "debug"),
    ("logstash-is-json", None, {"REGISTRY_LOG_FORMATTER": "logstash"}, "log.formatter", "json"),
    ("prefix-slashes", None, {"REGISTRY_HTTP_PREFIX": "registry/"}, "http.prefix", "/registry"),
    ("prefix-root", None, {"REGISTRY_HTTP_PREFIX": "/"}, "http.prefix", ""),
    ("addr-number", None, {"REGISTRY_HTTP_ADDR": "5000"}, "http.addr", "5000"),
    ("secret-octal-text", None, {"REGISTRY_HTTP_SECRET": "0777"}, "http.secret", "0777"),
    ("secret-float-text", None, {"REGISTRY_HTTP_SECRET": "1.10"}, "http.secret", "1.10"),
    ("draintimeout", None, {"REGISTRY_HTTP_DRAINTIMEOUT": "1m"}, "http.draintimeout", 60.0),
    ("draintimeout-bare-ns", V + "http: {draintimeout: 60}\n", {}, "http.draintimeout", 6e-8),
    (
        "header-canonical",
        None,
        {"REGISTRY_HTTP_HEADERS_ACCESS-CONTROL-ALLOW-ORIGIN": "['*']"},
        "http.headers",
        {"Access-Control-Allow-Origin": ("*",)},
    ),
    (
        "header-scalar-value",
        V + "http: {headers: {X-Robots-Tag: none}}\n",
        {},
        "http.headers",
        {"X-Robots-Tag": ("none",)},
    ),
    ("auth-none", V + "auth: {token: {realm: r}}\n", {"REGISTRY_AUTH": "none"}, "auth", None),
    ("auth-empty", V + "auth: {}\n", {}, "auth", None),
    (
        "auth-scalar",
        V + "auth: silly\n",
        {"REGISTRY_AUTH_SILLY_REALM": "r"},
        "auth",
        AuthConfig("silly", {"realm": "r"}),
    ),
    (
        "validation-enabled-wins",
        V + "validation: {enabled: true, disabled: true}\n",
        {},
        "validation.disabled",
        False,
    ),
    (
        "readonly",
        None,
        {"REGISTRY_STORAGE_MAINTENANCE_READONLY": "{enabled: true}"},
        "storage.readonly",
        True,
    ),
    (
        "purging-off",
        None,
        {"REGISTRY_STORAGE_MAINTENANCE_UPLOADPURGING_ENABLED": "false"},
        "storage.uploadpurging.enabled",
        False,
    ),
    ("inmemory", None, {"REGISTRY_STORAGE": "inmemory"}, "storage.driver", "inmemory"),
    ("version-float", V, {}, "version", "0.1"),
    ("yaml-on-key", V + "log: {fields: {on: 1}}\n", {}, "log.fields", {"on": 1}),
    (
        "yaml-date-stays-text",
        V + "log: {fields: {d: 2024-01-02}}\n",
        {},
        "log.fields",
        {"d": "2024-01-02"},
    ),
]


@pytest.mark.parametrize(
    ("text", "environ", "attribute", "expected"),
    [c[1:] for c in BUILD_CASES],
    ids=[c[0] for c in BUILD_CASES],
)
def test_build(
    tmp_path: Path, text: str | None, environ: dict[str, str], attribute: str, expected: Any
) -> None:
    path = write(tmp_path, text) if text is not None else None
    value: Any = load_config(path, environ)[0]
    for name in attribute.split("."):
        value = getattr(value, name)
    assert value == expected


def test_config_is_frozen() -> None:
    config, _ = load_config(None, {"REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR": "inmemory"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.storage.driver = "s3"  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.storage.params["rootdirectory"] = "/elsewhere"  # type: ignore[index]
    with pytest.raises(TypeError):
        config.raw["storage"]["cache"]["blobdescriptor"] = "redis"


def test_load_config_is_deterministic_and_reads_no_process_env(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REGISTRY_HTTP_ADDR", ":9999")
    config, _ = load_config(None, {})
    assert config.http.addr == ":5000"
    s3 = {**S3_VARS, "REGISTRY_STORAGE": "s3"}
    assert load_config(None, s3) == load_config(None, dict(reversed(s3.items())))
