"""The per-section builders and :func:`load_config`, which runs the whole pipeline:
read the file (loader.py), apply ``REGISTRY_*`` overrides (env.py), build each section
with typed reads (reader.py, params.py), then warn about unknown keys (schema.py).

Driver sections created only by ``REGISTRY_STORAGE_<DRIVER>_*`` while another driver is
selected stop start-up with a line that says to set ``REGISTRY_STORAGE=<driver>`` (the
reference refuses to start too, with "multiple storage drivers"). A key that keys.py refuses
stops start-up; ``storage: inmemory`` serves with one worker (each would have its own store).
"""

from __future__ import annotations

import dataclasses
import re
import urllib.parse
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from .aws import fill_s3_credentials
from .env import (
    CONFIG_PATH_VARIABLE,
    ENV_PREFIX,
    apply_env_overrides,
    env_path,
    normalise_selectors,
    storage_drivers,
)
from .keys import check_refused
from .loader import read_file
from .model import (
    AUTH_SCHEMES,
    BLOBDESCRIPTOR_SIZE,
    CATALOG_MAXENTRIES,
    DEFAULT_ROOTDIRECTORY,
    INDEX_PLATFORMS,
    LOG_FORMATTERS,
    LOG_LEVELS,
    STORAGE_DRIVERS,
    TLS_CLIENT_AUTH,
    TLS_CLIENT_AUTH_DEFAULT,
    TLS_MINIMUM_DEFAULT,
    TLS_VERSIONS,
    AuthConfig,
    Config,
    ConfigError,
    GCConfig,
    HttpConfig,
    LogConfig,
    StorageConfig,
    UploadPurging,
    ValidationConfig,
)
from .params import check_filesystem_params, read_params
from .proxy import build_proxies
from .reader import Node, freeze
from .redis import build_redis, fold_options
from .schema import SCHEMA, unknown_keys


def _build_storage(root: Node) -> StorageConfig:
    if root.data.get("storage") is None:
        raise ConfigError("no storage driver specified")
    storage = root.section("storage")
    drivers = storage_drivers(storage.data)
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
    params = read_params(storage, driver)
    if driver == "filesystem":
        check_filesystem_params(params)
    maintenance = storage.section("maintenance")
    purging = maintenance.section("uploadpurging")
    enabled = purging.get_bool("enabled", True)
    return StorageConfig(
        driver=driver,
        params=freeze(params),
        delete_enabled=storage.section("delete").get_bool("enabled", False),
        readonly=maintenance.section("readonly").get_bool("enabled", False),
        uploadpurging=UploadPurging(
            enabled=enabled,
            age=purging.get_duration("age", UploadPurging.age),
            interval=purging.get_duration("interval", UploadPurging.interval, positive=enabled),
            dryrun=purging.get_bool("dryrun", False),
        ),
        redirect_disable=storage.section("redirect").get_bool("disable", False),
        cache=freeze(storage.section("cache").data),
        blobdescriptor=_blobdescriptor(storage.section("cache")),
        blobdescriptorsize=storage.section("cache").get_int(
            "blobdescriptorsize", BLOBDESCRIPTOR_SIZE, minimum=0
        ),
        # The reference: 0 (or unset) means its default (GOMAXPROCS); ours is 100.
        tag_concurrencylimit=storage.section("tag").get_int("concurrencylimit", 0, minimum=0)
        or 100,
    )


def _blobdescriptor(cache: Node) -> str | None:
    """``storage.cache.blobdescriptor`` (or its old name ``layerinfo``): inmemory, redis, None.
    keys.py has refused every other value already."""
    value = cache.get_str("blobdescriptor", None) or cache.get_str("layerinfo", None)
    return value.lower() if value else None


# http.prefix without its outer slashes: segments of URL path characters that need no
# percent-encoding (the router compares it with the raw path), no empty, . or .. segment.
_PREFIX = re.compile(r"(?!\.\.?(/|$))[A-Za-z0-9._~-]+(/(?!\.\.?(/|$))[A-Za-z0-9._~-]+)*")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 header field name


def _build_headers(http: Node) -> Mapping[str, tuple[str, ...]]:
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


def _build_http(root: Node) -> HttpConfig:
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
    if prefix and not _PREFIX.fullmatch(prefix):
        raise ConfigError(
            f"http.prefix: {http.get_str('prefix', '')!r} is not a plain URL path"
            " (letters, digits and - . _ ~ between slashes, e.g. /registry/)"
        )
    tls = http.section("tls")
    certificate = tls.get_str("certificate", None) or None
    key = tls.get_str("key", None) or None
    if (certificate is None) != (key is None):
        missing, present = ("key", "certificate") if key is None else ("certificate", "key")
        raise ConfigError(f"http.tls.{missing}: required when http.tls.{present} is set")
    minimumtls = tls.get_str("minimumtls", None) or TLS_MINIMUM_DEFAULT
    if minimumtls not in TLS_VERSIONS:  # exact, as the reference's map lookup
        raise ConfigError(
            f"http.tls.minimumtls: unknown minimum TLS level {minimumtls!r}"
            f" (expected {' or '.join(TLS_VERSIONS)}; registry:3 refuses tls1.0 and tls1.1 too)"
        )
    clientauth = tls.get_str("clientauth", None) or TLS_CLIENT_AUTH_DEFAULT
    if clientauth not in TLS_CLIENT_AUTH:
        raise ConfigError(
            f"http.tls.clientauth: invalid client auth mode {clientauth!r}"
            f" (expected {', '.join(TLS_CLIENT_AUTH)})"
        )
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
        tls_clientauth=clientauth,
        tls_minimumtls=minimumtls,
        tls_ciphersuites=tls.get_strs("ciphersuites"),
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


def _build_auth(root: Node) -> AuthConfig | None:
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
    params = read_params(auth, scheme)
    return None if scheme == "none" else AuthConfig(scheme=scheme, params=freeze(params))


def _build_log(root: Node) -> LogConfig:
    log = root.section("log")
    level_node = log if log.data.get("level") is not None else root
    level_key = "level" if level_node is log else "loglevel"
    return LogConfig(
        level=level_node.get_choice(level_key, "info", LOG_LEVELS, "log level"),
        formatter=log.get_choice("formatter", "text", LOG_FORMATTERS, "log formatter"),
        accesslog_disabled=log.section("accesslog").get_bool("disabled", False),
        fields=freeze(log.section("fields").data),
    )


def _patterns(section: Node, key: str) -> tuple[str, ...]:
    """A list of regular expressions, each checked to compile (the reference panics at
    start-up on a bad one; we refuse it with one line naming the key)."""
    patterns = section.get_strs(key)
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(
                f"{section.key(key)}: invalid regular expression {pattern!r}: {exc}"
            ) from None
    return patterns


def _build_validation(root: Node) -> ValidationConfig:
    validation = root.section("validation")
    manifests = validation.section("manifests")
    urls = manifests.section("urls")
    # The reference: the deprecated `enabled: true` wins over `disabled`.
    enabled = validation.get_bool("enabled", False)
    indexes = manifests.section("indexes")
    return ValidationConfig(
        disabled=validation.get_bool("disabled", False) and not enabled,
        manifests_urls_allow=_patterns(urls, "allow"),
        manifests_urls_deny=_patterns(urls, "deny"),
        indexes_platforms=indexes.get_choice(
            "platforms", "all", {p: p for p in INDEX_PLATFORMS}, "platforms setting"
        ),
        indexes_platformlist=_platforms(indexes),
    )


def _platforms(indexes: Node) -> tuple[tuple[str, str], ...]:
    """``validation.manifests.indexes.platformlist``: (architecture, os) pairs."""
    raw = indexes.data.get("platformlist")
    if raw is None:
        return ()
    key = indexes.key("platformlist")
    if not isinstance(raw, list):
        raise ConfigError(f"{key}: expected a list of {{architecture, os}} mappings")
    out = []
    for i, item in enumerate(raw):
        entry = Node(item, f"{key}.{i}")
        arch, os_ = entry.get_str("architecture", None), entry.get_str("os", None)
        if not arch or not os_:
            raise ConfigError(f"{key}.{i}: needs both architecture and os")
        out.append((arch, os_))
    return tuple(out)


def _build_gc(root: Node) -> GCConfig:
    gc = root.section("gc")
    online = gc.section("online").get_bool("enabled", False)
    return GCConfig(
        online_enabled=online,
        interval=gc.get_duration("interval", GCConfig.interval, positive=online),
        graceperiod=gc.get_duration("graceperiod", GCConfig.graceperiod),
        delete_untagged=gc.get_bool("deleteuntagged", False),
        settle=gc.get_duration("settle", GCConfig.settle),
    )


def _build(tree: dict[str, Any]) -> Config:
    root = Node(tree, "")
    version = root.get_str("version", "0.1")
    if version != "0.1":
        raise ConfigError(f"version: unsupported configuration version {version!r} (expected 0.1)")
    for free in ("middleware",):
        root.section(free)  # type check only: keys.py refuses them when set
    catalog = root.section("catalog")
    maxentries = catalog.get_int("maxentries", 0, minimum=-(2**63))
    tree["version"] = version  # the text, not YAML's float 0.1
    return Config(
        version=version,
        log=_build_log(root),
        storage=_build_storage(root),
        http=_build_http(root),
        auth=_build_auth(root),
        validation=_build_validation(root),
        notifications=freeze(root.section("notifications").data),
        health=freeze(root.section("health").data),
        gc=_build_gc(root),
        proxies=build_proxies(root),
        # The reference: an empty, zero or negative value means its default, 1000.
        catalog_maxentries=maxentries if maxentries > 0 else CATALOG_MAXENTRIES,
        redis=build_redis(root),
        ui_enabled=root.section("ui").get_bool("enabled", True),
        raw=freeze(tree),
    )


def load_config(path: str | None, environ: Mapping[str, str]) -> tuple[Config, list[str]]:
    """Read the YAML file (if `path`), apply ``REGISTRY_*`` overrides from `environ`, validate.

    Returns the config and human-readable warnings (unknown keys, ignored variables) for the
    caller to log. Raises ConfigError (one line naming the key) for a missing or unreadable file,
    invalid YAML, a wrong type or value, or a storage section without exactly one driver.
    """
    tree: dict[str, Any] = read_file(path) if path is not None else {"version": "0.1"}
    normalise_selectors(tree)
    tree.setdefault("storage", {"filesystem": {"rootdirectory": DEFAULT_ROOTDIRECTORY}})
    warnings = [
        f"ignoring environment variable {name}: empty key component"
        for name in sorted(environ)
        if name.startswith(ENV_PREFIX) and name != CONFIG_PATH_VARIABLE and not env_path(name)
    ]
    # The drivers chosen by the file or by REGISTRY_STORAGE itself; any other driver section
    # was created by REGISTRY_STORAGE_<DRIVER>_* alone.
    selection = {k: v for k, v in environ.items() if env_path(k) == ["storage"]}
    chosen = storage_drivers(apply_env_overrides(tree, selection).get("storage"))
    merged = apply_env_overrides(tree, environ)
    normalise_selectors(merged)
    fold_options(merged)  # REGISTRY_REDIS_OPTIONS_* (v3.0.0's spelling) -> redis.*
    storage = merged.get("storage")
    drivers = storage_drivers(storage)
    kept = [d for d in drivers if d in chosen]
    if len(kept) > 1:  # the file's own two drivers are the error to report
        raise ConfigError(f"multiple storage drivers specified: {', '.join(kept)}")
    if kept and isinstance(storage, dict):
        for stray in (d for d in drivers if d not in chosen):
            prefix = f"{ENV_PREFIX}STORAGE_{stray.upper()}_"
            names = ", ".join(sorted(n for n in environ if n.startswith(prefix[:-1])))
            # The reference refuses to start here ("multiple storage drivers specified in
            # configuration or environment"); we say which variables and what to do.
            raise ConfigError(
                f"{prefix}* variables are set ({names}) but the storage driver is"
                f" {', '.join(kept)}; set REGISTRY_STORAGE={stray} to use the {stray} driver,"
                f" or unset them"
            )
    check_refused(merged)
    fill_s3_credentials(merged, environ)  # AWS_* variables, the shared credentials file
    config = _build(merged)
    if config.storage.blobdescriptor == "redis" and config.redis is None:
        # registry:3 panics here ("redis configuration required to use for layerinfo cache").
        raise ConfigError(
            "storage.cache.blobdescriptor: redis needs the redis section: set redis.addrs"
            " (REGISTRY_REDIS_ADDRS=[host:6379])"
        )
    cache = (merged.get("storage") or {}).get("cache") or {}
    if config.storage.blobdescriptor == "redis" and cache.get("blobdescriptorsize") is not None:
        warnings.append("storage.cache.blobdescriptorsize: not used with the redis cache"
                        " (registry:3 warns the same)")
    warnings.extend(unknown_keys(merged, SCHEMA, ""))
    if config.storage.driver == "inmemory" and config.http.workers != 1:
        # Each worker process would hold its own store: a push to one is missing from the
        # next request's worker. One worker keeps the in-memory registry coherent.
        warnings.append(
            "storage.inmemory: each worker process would have its own store; serving with"
            " one worker (http.workers: 1)"
        )
        config = dataclasses.replace(config, http=dataclasses.replace(config.http, workers=1))
    return config, warnings
