"""Configuration: a YAML file plus ``REGISTRY_*`` overrides, as the reference registry reads them.

A leaf package (imports nothing from the rest of the project; never reads ``os.environ``:
the caller passes the environment in). :func:`load_config` builds one frozen :class:`Config`
at the edge; everything below the CLI receives it. ``Config.raw`` keeps the merged tree for
sections that later code owns (redis, middleware, ...).

Modules, in the order a load runs through them::

    model.py      the frozen dataclasses, defaults, choice names, ConfigError
    loader.py     YAML: the file, env values as YAML scalars, numbers that keep their text
    env.py        REGISTRY_* overrides with the reference's rules (selectors, sorted order)
    durations.py  Go durations and byte sizes
    reader.py     Node: typed getters raising ConfigError naming the dotted key; freeze()
    params.py     driver / auth-scheme parameter sections (what config must know of them)
    keys.py       every registry:3 key: supported / refused / ours; refuses set refused keys
    redis.py      the redis section as registry:3 v3.0.0 reads it (go-redis's option names)
    schema.py     the known keys (from keys.py), for "unknown configuration key" warnings
    build.py      one builder per section (storage, http, auth, log, validation, gc) and
                  load_config, the pipeline

Defaults and checks: with no file, and for a file without a ``storage`` key, storage is
filesystem at ``./data``; a filesystem section without ``rootdirectory`` uses
``/var/lib/registry`` (the reference's default). A file must say ``version: 0.1``. Unknown keys
are warnings; wrong types, bad values and YAML errors raise :class:`ConfigError` with one line
naming the key. Durations are Go durations (``168h``, ``10m30s``, ``500ms``); a bare number is
nanoseconds, as for Go's ``time.Duration`` in YAML.

Our extensions, not in the reference::

    http:
      workers: 0            # hypercorn worker processes; 0 = from the CPU quota (cgroup), at most 2
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
      settle: 5m            # an online run waits this long for pushes in flight (step 5)
"""

from __future__ import annotations

from .build import load_config
from .durations import duration_setting, parse_duration, parse_size
from .env import CONFIG_PATH_VARIABLE, ENV_PREFIX, apply_env_overrides
from .model import (
    AUTH_SCHEMES,
    DEFAULT_ROOTDIRECTORY,
    FILESYSTEM_ROOTDIRECTORY,
    HOUR,
    INDEX_PLATFORMS,
    LOG_FORMATTERS,
    LOG_LEVELS,
    STORAGE_DRIVERS,
    STORAGE_SUBSECTIONS,
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

__all__ = [
    "AUTH_SCHEMES",
    "CONFIG_PATH_VARIABLE",
    "DEFAULT_ROOTDIRECTORY",
    "ENV_PREFIX",
    "FILESYSTEM_ROOTDIRECTORY",
    "HOUR",
    "INDEX_PLATFORMS",
    "LOG_FORMATTERS",
    "LOG_LEVELS",
    "STORAGE_DRIVERS",
    "STORAGE_SUBSECTIONS",
    "AuthConfig",
    "Config",
    "ConfigError",
    "GCConfig",
    "HttpConfig",
    "LogConfig",
    "StorageConfig",
    "UploadPurging",
    "ValidationConfig",
    "apply_env_overrides",
    "duration_setting",
    "load_config",
    "parse_duration",
    "parse_size",
]
