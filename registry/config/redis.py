"""The ``redis:`` section as registry:3 v3.0.0 reads it, and ``storage.cache.blobdescriptor:
redis``'s requirement that it be there.

v3.0.0 (configuration/configuration.go ``Redis.UnmarshalYAML``) fills go-redis v9.7's
``UniversalOptions`` from the YAML keys that are its field names lowercased (``addrs``,
``dialtimeout``, ``poolsize``, ...) plus a ``tls`` mapping (certificate, key, clientcas);
a key that is no field name (v2's ``addr``, ``pool``) is silently ignored there, so a v2
config quietly ran without Redis. We refuse those with a line saying what to write
(keys.py). Durations there are Go duration *strings* (a YAML number is an error in v3, and
here). Unset or zero values take go-redis's defaults (``Options.init``): dial 5s, read 3s,
write = read, pool timeout = read + 1s, pool size 10 per CPU, idle connections closed after
30m, 3 retries with 8ms..512ms backoff; a negative timeout means none.

Environment: v3.0.0 applies ``REGISTRY_REDIS_OPTIONS_ADDRS`` (the inlined struct's Go
field name); v3.1 fixed the parser so ``REGISTRY_REDIS_ADDRS`` works as documented. Both
work here: :func:`fold_options` lifts ``redis.options.*`` into ``redis.*`` before checks.

Redis is "configured" when ``addrs`` is non-empty (v3's ``configureRedis``). One address
only: two or more make go-redis a cluster client, refused here with one line.
"""

from __future__ import annotations

import os
from typing import Any

from .durations import parse_duration
from .loader import describe
from .model import ConfigError, RedisConfig
from .reader import Node

REDIS_DEFAULT_POOL_PER_CPU = 10  # go-redis: PoolSize = 10 * GOMAXPROCS
REDIS_DEFAULT_DIAL = 5.0  # seconds, go-redis's DialTimeout default
REDIS_DEFAULT_READ = 3.0  # seconds, go-redis's ReadTimeout default (WriteTimeout follows it)
REDIS_DEFAULT_IDLE = 1800.0  # seconds, go-redis's ConnMaxIdleTime default (30m)
REDIS_DEFAULT_RETRIES = 3  # go-redis's MaxRetries default
REDIS_DEFAULT_MIN_BACKOFF = 0.008  # seconds, go-redis's MinRetryBackoff default
REDIS_DEFAULT_MAX_BACKOFF = 0.512  # seconds, go-redis's MaxRetryBackoff default
NO_LIMIT = None  # a negative go-redis duration: no timeout at all


def fold_options(tree: dict[str, Any]) -> None:
    """Move ``redis.options.*`` (v3.0.0's env spelling, REGISTRY_REDIS_OPTIONS_*) up into
    ``redis.*``, where the YAML file puts them; a key set both ways keeps the options one
    (env overrides are applied after the file)."""
    redis = tree.get("redis")
    if not isinstance(redis, dict):
        return
    options = redis.pop("options", None)
    if isinstance(options, dict):
        redis.update(options)
    elif options is not None:
        raise ConfigError(f"redis.options: expected a mapping, got {describe(options)}")


def _duration(node: Node, key: str, default: float | None) -> float | None:
    """A go-redis duration: a Go duration string; unset or zero = `default`; negative = no
    limit (None). A YAML number is refused as v3 refuses it."""
    value = node.data.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise ConfigError(
            f"{node.key(key)}: expected a duration string such as 5s or 100ms (registry:3"
            f" refuses a bare number here), got {describe(value)}"
        )
    try:
        seconds = parse_duration(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{node.key(key)}: {exc}") from None
    if seconds == 0:
        return default
    return NO_LIMIT if seconds < 0 else seconds


def _backoff(node: Node, key: str, default: float) -> float:
    """A retry backoff: unset/zero = default; negative (go-redis's -1) = no wait."""
    seconds = _duration(node, key, default)
    return 0.0 if seconds is None else seconds


def build_redis(root: Node) -> RedisConfig | None:
    """The ``redis`` section, or None when it names no address (Redis not configured).
    Raises ConfigError naming the key for a wrong type or value."""
    redis = root.section("redis")
    addrs = redis.get_strs("addrs")
    tls = redis.section("tls")
    if not addrs:
        return None
    if len(addrs) > 1:
        raise ConfigError(
            f"redis.addrs: {len(addrs)} addresses would make registry:3 a Redis Cluster client,"
            " which is not supported; give the one address of a standalone Redis"
        )
    addr = addrs[0]
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"redis.addrs: expected host:port, got {addr!r}")
    protocol = redis.get_int("protocol", 0, minimum=0)
    if protocol not in (0, 2, 3):
        raise ConfigError(f"redis.protocol: expected 2 or 3, got {protocol}")
    maxretries = redis.get_int("maxretries", 0, minimum=-1)
    read = _duration(redis, "readtimeout", REDIS_DEFAULT_READ)
    poolsize = redis.get_int("poolsize", 0, minimum=0)
    for flag in ("contexttimeoutenabled", "disableidentity", "disableindentity"):
        redis.get_bool(flag, False)  # type check only: their behaviour is fixed here (keys.py)
    redis.get_str("identitysuffix", None)
    cert, key = tls.get_str("certificate", None), tls.get_str("key", None)
    if bool(cert) != bool(key):
        raise ConfigError("redis.tls: certificate and key must be given together")
    return RedisConfig(
        host=host.strip("[]"),
        port=int(port),
        username=redis.get_str("username", None) or None,
        password=redis.get_str("password", None) or None,
        db=redis.get_int("db", 0, minimum=0),
        clientname=redis.get_str("clientname", None) or None,
        dialtimeout=_duration(redis, "dialtimeout", REDIS_DEFAULT_DIAL),
        readtimeout=read,
        writetimeout=_duration(redis, "writetimeout", read),
        pooltimeout=_duration(redis, "pooltimeout", read + 1.0 if read else 30.0),
        poolsize=poolsize or REDIS_DEFAULT_POOL_PER_CPU * (os.cpu_count() or 1),
        maxactiveconns=redis.get_int("maxactiveconns", 0, minimum=0),
        maxidleconns=redis.get_int("maxidleconns", 0, minimum=0),
        connmaxidletime=_duration(redis, "connmaxidletime", REDIS_DEFAULT_IDLE),
        connmaxlifetime=_duration(redis, "connmaxlifetime", None),
        maxretries=0 if maxretries == -1 else maxretries or REDIS_DEFAULT_RETRIES,
        minretrybackoff=_backoff(redis, "minretrybackoff", REDIS_DEFAULT_MIN_BACKOFF),
        maxretrybackoff=_backoff(redis, "maxretrybackoff", REDIS_DEFAULT_MAX_BACKOFF),
        poolfifo=redis.get_bool("poolfifo", False),
        tls_certificate=cert or None,
        tls_key=key or None,
        tls_clientcas=tls.get_strs("clientcas"),
    )
