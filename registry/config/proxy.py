"""The pull-through cache's remotes: registry:3's ``proxy:`` section and our ``proxies:`` list.

- ``proxy: {remoteurl, username, password, ttl}`` (registry:3, env ``REGISTRY_PROXY_*``)
  makes the whole registry a cache of one upstream: it is the remote with the empty prefix.
- ``proxies: [{prefix, remoteurl, username, password, ttl}, ...]`` (ours): names under a
  remote's prefix (``dockerhub/library/alpine`` with prefix ``dockerhub``) are cached from
  that remote (as ``library/alpine``); every other name is a normal local repository. One
  remote may have the empty prefix: the catch-all for every name under no other prefix
  (then there are no local repositories, as with ``proxy``: see the README).

``ttl`` as registry:3 reads it (registry/proxy/proxyregistry.go): unset = 168h, a positive
duration = that, zero or negative = cached content never expires (``ttl`` None here).
Bad values (no URL, a URL that is not http(s)://host, a bad prefix, duplicate or
overlapping prefixes, a bad duration) raise ConfigError naming the key (exit 2).
"""

from __future__ import annotations

import re
import urllib.parse

from .durations import parse_duration
from .loader import describe
from .model import DEFAULT_PROXY_TTL, ConfigError, RemoteConfig
from .reader import Node

# A prefix is one or more name components (SPEC General 3's grammar without the length rule).
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_PREFIX = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")


def _ttl(node: Node) -> float | None:
    value = node.data.get("ttl")
    if value is None:
        return DEFAULT_PROXY_TTL
    try:
        seconds = parse_duration(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{node.key('ttl')}: {exc}") from None
    return seconds if seconds > 0 else None  # registry:3: zero or negative never expires


def _url(node: Node) -> str:
    url = node.get_str("remoteurl", None)
    if not url:
        raise ConfigError(f"{node.key('remoteurl')}: required (the upstream registry's URL)")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        raise ConfigError(
            f"{node.key('remoteurl')}: expected http(s)://host[:port], got {describe(url)}"
        )
    try:
        parts.port  # noqa: B018  raises ValueError for a bad port
    except ValueError:
        raise ConfigError(f"{node.key('remoteurl')}: bad port in {describe(url)}") from None
    return url.rstrip("/")


def _remote(node: Node, prefix: str) -> RemoteConfig:
    username = node.get_str("username", None) or None
    password = node.get_str("password", None) or None
    if (username is None) != (password is None):
        which = "password" if username else "username"
        raise ConfigError(f"{node.key(which)}: required with {node.key('username' if password else 'password')}")
    return RemoteConfig(prefix, _url(node), username, password, _ttl(node), node.path)


def build_proxies(root: Node) -> tuple[RemoteConfig, ...]:
    """The remotes of ``proxy`` (if ``remoteurl`` is set, as registry:3 decides) and of
    ``proxies``, checked; longest prefix first."""
    remotes: list[RemoteConfig] = []
    proxy = root.section("proxy")
    if proxy.data.get("remoteurl"):
        remotes.append(_remote(proxy, ""))
    raw = root.data.get("proxies")
    if raw is not None and not isinstance(raw, list):
        raise ConfigError(f"proxies: expected a list of remotes, got {describe(raw)}")
    for i, item in enumerate(raw or ()):
        node = Node(item, f"proxies.{i}")
        prefix = (node.get_str("prefix", "") or "").strip("/")
        if prefix and not _PREFIX.match(prefix):
            raise ConfigError(f"{node.key('prefix')}: not a repository name prefix: {describe(prefix)}")
        remote = _remote(node, prefix)
        for other in remotes:
            if _overlap(other.prefix, prefix):
                what = "duplicate" if other.prefix == prefix else "overlapping"
                shown = prefix or "'' (the catch-all)"
                raise ConfigError(f"{node.key('prefix')}: {what} prefix {shown}: {other.key} has"
                                  f" {other.prefix or chr(39) * 2}")
        remotes.append(remote)
    return tuple(sorted(remotes, key=lambda r: -len(r.prefix)))


def _overlap(a: str, b: str) -> bool:
    """Would one name be under both prefixes? ('' overlaps only '', being the catch-all.)"""
    if not a or not b:
        return a == b
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")
