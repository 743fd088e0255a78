"""The configuration's shape: frozen dataclasses, their defaults, and the names of choices.

Pure data (no parsing here). A :class:`Config` is built once at the edge by
:func:`registry.config.load_config` and passed down; mappings in it are read-only views,
sequences are tuples. Durations are seconds (floats).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

DEFAULT_ROOTDIRECTORY = "./data"  # storage with no storage section at all
FILESYSTEM_ROOTDIRECTORY = "/var/lib/registry"  # the reference's filesystem default
STORAGE_SUBSECTIONS = frozenset({"delete", "maintenance", "redirect", "cache", "tag"})
STORAGE_DRIVERS = ("filesystem", "inmemory", "s3")
AUTH_SCHEMES = ("htpasswd", "none", "silly", "token")  # "none" -> Config.auth is None
LOG_LEVELS = {"error": "error", "warn": "warn", "warning": "warn", "info": "info", "debug": "debug"}
LOG_FORMATTERS = {"text": "text", "json": "json", "logstash": "json"}
INDEX_PLATFORMS = ("all", "list", "none")
# http.tls.minimumtls and clientauth as registry:3 v3.0.0 accepts them (registry/registry.go;
# its documentation also lists tls1.0 and tls1.1, which its code refuses).
TLS_VERSIONS = ("tls1.2", "tls1.3")
TLS_CLIENT_AUTH = (
    "request-client-cert", "require-any-client-cert", "verify-client-cert-if-given",
    "require-and-verify-client-cert",
)
TLS_MINIMUM_DEFAULT = "tls1.2"  # v3's defaultTLSVersionStr
TLS_CLIENT_AUTH_DEFAULT = "require-and-verify-client-cert"  # v3's default with clientcas
HOUR = 3600.0  # seconds
CATALOG_MAXENTRIES = 1000  # the reference's default largest page of /v2/_catalog
BLOBDESCRIPTOR_SIZE = 10_000  # the reference's default number of cached blob descriptors


class ConfigError(Exception):
    """The configuration cannot be used; the message is one line naming the key."""


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
    blobdescriptor: str | None = None  # storage.cache.blobdescriptor: inmemory, redis or None
    blobdescriptorsize: int = BLOBDESCRIPTOR_SIZE  # cached descriptors per worker; 0 = no limit


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
    tls_clientauth: str = TLS_CLIENT_AUTH_DEFAULT  # applies only with clientcas
    tls_minimumtls: str = TLS_MINIMUM_DEFAULT
    tls_ciphersuites: tuple[str, ...] = ()  # Go's names; () = registry:3's defaults
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
    """The ``validation`` section. ``disabled`` already folds in the deprecated ``enabled``
    (which wins, as in the reference). The URL lists are regular expressions, checked to
    compile when the config is loaded; what they mean is registry/storage/manifest_urls.py."""

    disabled: bool = False
    manifests_urls_allow: tuple[str, ...] = ()
    manifests_urls_deny: tuple[str, ...] = ()
    indexes_platforms: str = "all"  # all | list | none
    indexes_platformlist: tuple[tuple[str, str], ...] = ()  # (architecture, os) for "list"


@dataclass(frozen=True)
class GCConfig:
    """Our extension ``gc:`` (see the package docstring); durations in seconds."""

    online_enabled: bool = False
    interval: float = 24 * HOUR
    graceperiod: float = 1 * HOUR
    delete_untagged: bool = False
    settle: float = 300.0  # = storage.gc_report.SETTLE_SECONDS (config imports no storage)


DEFAULT_PROXY_TTL = 168 * HOUR  # proxy.ttl unset: registry:3's repositoryTTL (7 days)


@dataclass(frozen=True)
class RemoteConfig:
    """One upstream. ``prefix`` '' = the catch-all (registry:3's ``proxy``); ``ttl`` in
    seconds, None = never expire. ``key``: the config key it came from, for messages."""

    prefix: str
    remoteurl: str
    username: str | None = None
    password: str | None = None
    ttl: float | None = DEFAULT_PROXY_TTL
    key: str = "proxy"

    def __repr__(self) -> str:  # never print the password
        return f"RemoteConfig(prefix={self.prefix!r}, remoteurl={self.remoteurl!r})"



@dataclass(frozen=True)
class RedisConfig:
    """The ``redis`` section (registry/config/redis.py): one standalone Redis. Durations in
    seconds; None = no limit. Defaults are go-redis's, filled in by the builder."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None
    db: int = 0
    clientname: str | None = None
    dialtimeout: float | None = 5.0
    readtimeout: float | None = 3.0
    writetimeout: float | None = 3.0
    pooltimeout: float | None = 4.0
    poolsize: int = 10  # connections per worker process
    maxactiveconns: int = 0  # 0 = poolsize bounds them
    maxidleconns: int = 0  # 0 = every pooled connection may idle
    connmaxidletime: float | None = 1800.0
    connmaxlifetime: float | None = None
    maxretries: int = 3  # retries of a command whose pooled connection broke
    minretrybackoff: float = 0.008
    maxretrybackoff: float = 0.512
    poolfifo: bool = False
    tls_certificate: str | None = None  # TLS is on when certificate and key are set (v3)
    tls_key: str | None = None
    tls_clientcas: tuple[str, ...] = ()  # CAs that verify the server; () = the system's


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
    catalog_maxentries: int = CATALOG_MAXENTRIES  # catalog.maxentries: the largest n
    redis: RedisConfig | None = None  # the redis section; None = not configured (no addrs)
    ui_enabled: bool = True  # ui.enabled (ours): the web UI at /ui/ (registry/ui/)
    # proxy / proxies: the pull-through cache's remotes, longest prefix first (config/proxy.py)
    proxies: tuple[RemoteConfig, ...] = ()
    raw: Mapping[str, Any] = field(default_factory=_empty)
