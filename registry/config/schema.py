"""The known configuration keys, for "unknown configuration key" warnings (never errors:
the reference ignores keys it does not know, and configs written for it must load)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from .params import PARAM_SECTIONS


def _keys(leaves: str = "", **sections: Any) -> dict[str, Any]:
    """A schema node: space-separated leaf keys map to None (not checked further), keyword
    arguments to the schema of a section."""
    return dict.fromkeys(leaves.split()) | sections


# Known keys, for "unknown configuration key" warnings. None: free-form below this key.
SCHEMA = _keys(
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
            "certificate key clientcas clientauth minimumtls ciphersuites",
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


def unknown_keys(data: Mapping[str, Any], schema: Mapping[str, Any], path: str) -> Iterator[str]:
    """One warning per key of `data` (at dotted `path`) that `schema` does not know."""
    for key, value in data.items():
        dotted = f"{path}.{key}" if path else key
        known = key.lower() if path in PARAM_SECTIONS else key
        if known not in schema:
            yield f"unknown configuration key: {dotted}"
        elif isinstance(schema[known], dict) and isinstance(value, dict):
            yield from unknown_keys(value, schema[known], dotted)
