"""Every key of registry:3 (distribution v3.0.0) configuration, and what we do with it.

One table, :data:`KEYS`, read by two things so that they cannot drift apart:

- the start-up check (:func:`check_refused`, run by ``load_config``): a key the user set whose
  entry is refused stops start-up with one line naming the key and saying what to do
  (ConfigError, exit 2). Nothing the reference documents is accepted and then ignored;
- the README's configuration-key table (:func:`markdown_table`; tests/test_config_keys.py
  checks the README holds exactly this text, so regenerate it from there).

Keys are dotted paths; ``[]`` marks a list of mappings (``notifications.endpoints[].url``).
An entry covers the key and everything below it, unless a longer entry says otherwise.
The keys are v3.0.0's ``docs/content/about/configuration.md`` and ``configuration/
configuration.go`` (``catalog``, ``policy.repository``, ``log.reportcaller``), plus the
storage drivers' parameter lists (``docs/content/storage-drivers/*.md``), plus ours.

Statuses: ``supported`` (implemented as the reference documents it), ``refused`` (setting it
stops start-up), ``ours`` (our extension; the reference does not have it). A supported key
may refuse some values (``allowed``): ``redis.tls.enabled: true`` is refused while ``false``
loads. A leaf package module: pure data and pure functions.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .model import ConfigError

SUPPORTED = "supported"
REFUSED = "refused"
OURS = "ours"


@dataclass(frozen=True)
class Key:
    """One configuration key. ``note``: what it does here (supported, ours) or what to do
    instead (refused; also the second half of the start-up error). ``allowed``: for a
    supported key, the only values accepted (strings compared lowercased); any other value
    is refused with ``note``."""

    key: str
    status: str
    note: str = ""
    allowed: tuple[Any, ...] | None = None


def _k(key: str, status: str = SUPPORTED, note: str = "", allowed: Any = None) -> Key:
    return Key(key, status, note, tuple(allowed) if allowed is not None else None)


NO_CLUSTER = "Redis Cluster is not supported; give redis.addrs the one address of a standalone Redis"
NO_SENTINEL = "Redis Sentinel is not supported; give redis.addrs the master's address"
NO_GO_VALUE = "registry:3 cannot set it from YAML either (a Go value); remove it"
OTHER_DRIVER = "use the filesystem or s3 driver"

KEYS: tuple[Key, ...] = (
    _k("version", note="must be 0.1"),
    _k("loglevel", note="deprecated: log.level"),
    _k("log.level"),
    _k("log.formatter", note="text, json, logstash (as json)"),
    _k("log.fields"),
    _k("log.accesslog.disabled"),
    _k("log.hooks", REFUSED, "log hooks (mail) are not supported; remove log.hooks and alert"
       " from your log pipeline"),
    _k("log.reportcaller", note="only false: remove it or set it to false", allowed=[False]),
    _k("storage.filesystem.rootdirectory"),
    _k("storage.filesystem.maxthreads"),
    _k("storage.inmemory", note="for tests: one worker process (forced, with a warning)"),
    _k("storage.azure", REFUSED, OTHER_DRIVER),
    _k("storage.gcs", REFUSED, OTHER_DRIVER),
    _k("storage.s3.accesskey"),
    _k("storage.s3.secretkey"),
    _k("storage.s3.region"),
    _k("storage.s3.regionendpoint"),
    _k("storage.s3.forcepathstyle"),
    _k("storage.s3.accelerate", note="only false: transfer acceleration is not supported;"
       " use regionendpoint", allowed=[False]),
    _k("storage.s3.bucket"),
    _k("storage.s3.encrypt", note="SSE-S3 (R2 rejects it)"),
    _k("storage.s3.keyid", note="SSE-KMS (R2 rejects it)"),
    _k("storage.s3.secure"),
    _k("storage.s3.skipverify"),
    _k("storage.s3.v4auth", note="always V4 (V2 signatures are gone from S3)"),
    _k("storage.s3.chunksize", note="the multipart part size"),
    _k("storage.s3.multipartcopychunksize"),
    _k("storage.s3.multipartcopymaxconcurrency"),
    _k("storage.s3.multipartcopythresholdsize"),
    _k("storage.s3.rootdirectory"),
    _k("storage.s3.storageclass"),
    _k("storage.s3.objectacl"),
    _k("storage.s3.useragent", REFUSED, "a custom S3 User-Agent is not supported; remove it"),
    _k("storage.s3.usedualstack", note="only false: dual-stack endpoints are not supported;"
       " use regionendpoint", allowed=[False]),
    _k("storage.s3.loglevel", note="only off: S3 requests are logged at log.level debug",
       allowed=["off"]),
    _k("storage.s3.sessiontoken", OURS, "temporary credentials with accesskey/secretkey"),
    _k("storage.s3.redirectendpoint", OURS, "the host presigned redirect URLs use"),
    _k("storage.s3.parallelparts", OURS, "parts uploaded at once per upload"),
    _k("storage.s3.maxconcurrency", OURS, "connections to S3 per worker"),
    _k("storage.s3.maxbuffermemory", OURS, "part buffers per worker"),
    _k("storage.tag.concurrencylimit", note="0 = the default (100 here)"),
    _k("storage.delete.enabled"),
    _k("storage.redirect.disable"),
    _k("storage.cache.blobdescriptor", note="inmemory: a per-worker cache of blob sizes;"
       " redis: registry:3's descriptor cache in Redis, shared by replicas (needs redis.addrs)",
       allowed=["inmemory", "redis"]),
    _k("storage.cache.layerinfo", note="deprecated name of blobdescriptor",
       allowed=["inmemory", "redis"]),
    _k("storage.cache.blobdescriptorsize", note="default 10000; 0 = no limit (inmemory only,"
       " as registry:3)"),
    _k("storage.maintenance.uploadpurging.enabled"),
    _k("storage.maintenance.uploadpurging.age"),
    _k("storage.maintenance.uploadpurging.interval"),
    _k("storage.maintenance.uploadpurging.dryrun"),
    _k("storage.maintenance.readonly.enabled"),
    _k("auth.none"),
    _k("auth.silly.realm"),
    _k("auth.silly.service"),
    _k("auth.htpasswd.realm"),
    _k("auth.htpasswd.path"),
    _k("auth.token.realm"),
    _k("auth.token.service"),
    _k("auth.token.issuer"),
    _k("auth.token.rootcertbundle"),
    _k("auth.token.jwks"),
    _k("auth.token.signingalgorithms"),
    _k("auth.token.autoredirect", note="only false: set auth.token.realm to the token"
       " server's URL", allowed=[False]),
    _k("auth.token.autoredirectpath", note="used only with autoredirect (not supported)"),
    _k("middleware", REFUSED, "middleware (cloudfront, redirect, ...) is not supported;"
       " remove the middleware section (storage.s3.redirectendpoint sets the redirect host)"),
    _k("http.addr"),
    _k("http.net", note="only tcp: unix sockets are not supported; listen on a TCP address",
       allowed=["tcp", ""]),
    _k("http.prefix"),
    _k("http.host"),
    _k("http.secret"),
    _k("http.relativeurls"),
    _k("http.draintimeout"),
    _k("http.tls.certificate"),
    _k("http.tls.key"),
    _k("http.tls.clientcas"),
    _k("http.tls.clientauth"),
    _k("http.tls.minimumtls"),
    _k("http.tls.ciphersuites"),
    _k("http.tls.letsencrypt", REFUSED, "Let's Encrypt needs the network; terminate TLS at"
       " traefik or set http.tls.certificate and http.tls.key"),
    _k("http.debug.addr"),
    _k("http.debug.prometheus.enabled"),
    _k("http.debug.prometheus.path"),
    _k("http.headers"),
    _k("http.http2.disabled"),
    _k("http.h2c.enabled"),
    _k("http.workers", OURS, "worker processes; 0 = from the CPU quota, at most 2"),
    _k("http.headertimeout", OURS, "a request head must be complete this long after its"
       " first byte"),
    _k("http.bodytimeout", OURS, "a request body idle this long is dropped"),
    _k("http.minbodyrate", OURS, "bytes/s a request body must average; 0 = off"),
    _k("http.maxconnections", OURS, "open connections per worker; 0 = from the file limit"),
    _k("notifications.events.includereferences", note="only false: manifest references are"
       " not listed in events", allowed=[False]),
    _k("notifications.endpoints[].name"),
    _k("notifications.endpoints[].disabled"),
    _k("notifications.endpoints[].url"),
    _k("notifications.endpoints[].headers"),
    _k("notifications.endpoints[].timeout"),
    _k("notifications.endpoints[].threshold"),
    _k("notifications.endpoints[].backoff"),
    _k("notifications.endpoints[].ignoredmediatypes"),
    _k("notifications.endpoints[].ignore.mediatypes"),
    _k("notifications.endpoints[].ignore.actions"),
    _k("notifications.endpoints[].queuesize", OURS, "events held while the endpoint is down"),
    _k("redis.addrs", note="one host:port (a list, as registry:3); REGISTRY_REDIS_ADDRS or"
       " v3.0.0's REGISTRY_REDIS_OPTIONS_ADDRS"),
    _k("redis.addr", REFUSED, "registry:2's key: registry:3 reads addrs: [host:port]"),
    _k("redis.pool", REFUSED, "registry:2's pool section: use poolsize, maxidleconns,"
       " connmaxidletime"),
    _k("redis.username"),
    _k("redis.password"),
    _k("redis.db"),
    _k("redis.clientname", note="CLIENT SETNAME on every connection"),
    _k("redis.protocol", note="2 or 3; we speak RESP2 either way"),
    _k("redis.dialtimeout", note="a Go duration string; default 5s"),
    _k("redis.readtimeout", note="default 3s; every command's reply deadline"),
    _k("redis.writetimeout", note="default: readtimeout"),
    _k("redis.pooltimeout", note="wait for a pooled connection; default readtimeout + 1s"),
    _k("redis.poolsize", note="connections per worker; default 10 per CPU"),
    _k("redis.maxactiveconns", note="0 = poolsize"),
    _k("redis.maxidleconns", note="0 = no limit"),
    _k("redis.minidleconns", REFUSED, "connections are opened on demand; remove minidleconns"),
    _k("redis.connmaxidletime", note="default 30m"),
    _k("redis.connmaxlifetime"),
    _k("redis.poolfifo"),
    _k("redis.maxretries", note="retries of a command whose pooled connection broke; -1 = none"),
    _k("redis.minretrybackoff"),
    _k("redis.maxretrybackoff"),
    _k("redis.contexttimeoutenabled", note="either value: a cancelled request always ends"
       " its command here"),
    _k("redis.disableidentity", note="either value: we never send CLIENT SETINFO"),
    _k("redis.disableindentity", note="go-redis's misspelt disableidentity"),
    _k("redis.identitysuffix", note="unused: we never send CLIENT SETINFO"),
    _k("redis.unstableresp3", note="only false", allowed=[False]),
    _k("redis.tls.certificate", note="with key: TLS to Redis (as registry:3, only with a"
       " client certificate)"),
    _k("redis.tls.key"),
    _k("redis.tls.clientcas", note="CAs that verify the Redis server (v3.1's meaning)"),
    _k("redis.tls.enabled", note="only false: TLS is on when certificate and key are set",
       allowed=[False]),
    _k("redis.mastername", REFUSED, NO_SENTINEL),
    _k("redis.sentinelusername", REFUSED, NO_SENTINEL),
    _k("redis.sentinelpassword", REFUSED, NO_SENTINEL),
    _k("redis.maxredirects", REFUSED, NO_CLUSTER),
    _k("redis.readonly", REFUSED, NO_CLUSTER),
    _k("redis.routebylatency", REFUSED, NO_CLUSTER),
    _k("redis.routerandomly", REFUSED, NO_CLUSTER),
    _k("redis.tlsconfig", REFUSED, NO_GO_VALUE),
    _k("redis.dialer", REFUSED, NO_GO_VALUE),
    _k("redis.onconnect", REFUSED, NO_GO_VALUE),
    _k("health.storagedriver.enabled"),
    _k("health.storagedriver.interval"),
    _k("health.storagedriver.threshold"),
    _k("health.file[].file"),
    _k("health.file[].interval"),
    _k("health.file[].threshold"),
    _k("health.http[].uri"),
    _k("health.http[].headers"),
    _k("health.http[].statuscode"),
    _k("health.http[].timeout"),
    _k("health.http[].interval"),
    _k("health.http[].threshold"),
    _k("health.tcp[].addr"),
    _k("health.tcp[].timeout"),
    _k("health.tcp[].interval"),
    _k("health.tcp[].threshold"),
    _k("catalog.maxentries", note="largest n of /v2/_catalog; default 1000"),
    _k("proxy.remoteurl", note="the whole registry is a pull-through cache of this upstream"),
    _k("proxy.username"),
    _k("proxy.password"),
    _k("proxy.ttl", note="default 168h; 0 or negative: never expire"),
    _k("proxy.exec", REFUSED, "credential helpers are not supported; set proxy.username and"
       " proxy.password"),
    _k("proxies[].prefix", OURS, "names under it are cached from this remote, without it;"
       " '' = every name under no other prefix"),
    _k("proxies[].remoteurl", OURS, "the upstream registry's URL"),
    _k("proxies[].username", OURS, "basic or token credentials for the upstream"),
    _k("proxies[].password", OURS, "with username"),
    _k("proxies[].ttl", OURS, "as proxy.ttl"),
    _k("validation.enabled", note="deprecated: validation.disabled"),
    _k("validation.disabled"),
    _k("validation.manifests.urls.allow"),
    _k("validation.manifests.urls.deny"),
    _k("validation.manifests.indexes.platforms", note="all, none, list: which children of a"
       " pushed index must exist"),
    _k("validation.manifests.indexes.platformlist", note="architecture and os of the"
       " children that must exist with platforms: list"),
    _k("policy.repository.classes", REFUSED, "repository classes are not supported; remove"
       " them (policy.access restricts who may push)"),
    _k("policy.access", OURS, "who may pull, push, delete which repositories"),
    _k("policy.ratelimit", OURS, "requests per client (429)"),
    _k("gc.online.enabled", OURS, "online garbage collection"),
    _k("gc.interval", OURS, "time between online collections"),
    _k("gc.graceperiod", OURS, "blobs younger than this are never collected"),
    _k("gc.deleteuntagged", OURS, "also delete untagged manifests"),
    _k("gc.settle", OURS, "an online run's wait for pushes in flight (default 5m)"),
    _k("ui.enabled", OURS, "the web UI at /ui/ (default true; false: /ui is not found)"),
)

BY_KEY: Mapping[str, Key] = {k.key: k for k in KEYS}


def _is_set(value: Any) -> bool:
    """A key counts as set unless it is null or an empty section (``proxy:``, ``redis: {}``)."""
    return value is not None and value != {} and value != []


def _allows(entry: Key, value: Any) -> bool:
    if entry.allowed is None:
        return True
    if isinstance(value, str):
        value = value.lower()
    return any(isinstance(value, type(a)) and value == a for a in entry.allowed)


def _walk(node: Any, path: str) -> Iterator[tuple[str, str, Any]]:
    """(table path, dotted key for messages, value) of every key in the tree, depth first.
    Keys are lowercased, as env overrides write them; list items become ``[]`` in the
    table path and their index in the dotted key."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            sub = f"{path}.{str(key).lower()}" if path else str(key).lower()
            yield sub, sub, value
            yield from ((t, d, v) for t, d, v in _walk(value, sub))
    elif isinstance(node, (list, tuple)) and path:
        for i, item in enumerate(node):
            for t, d, v in _walk(item, ""):
                yield f"{path}[].{t}", f"{path}.{i}.{d}", v


def refusals(tree: Mapping[str, Any]) -> list[str]:
    """One message per refused key set in `tree` (the merged file + env tree), in tree order:
    ``<key>: not supported: <what to do>``."""
    out = []
    for table_path, dotted, value in _walk(tree, ""):
        entry = BY_KEY.get(table_path)
        # A storage driver's section selects the driver even when empty (storage: azure).
        selects = table_path.startswith("storage.") and table_path.count(".") == 1
        if entry is None or not (_is_set(value) or selects):
            continue
        if entry.status == REFUSED:
            out.append(f"{dotted}: not supported: {entry.note}")
        elif not _allows(entry, value):
            out.append(f"{dotted}: {value!r} is not supported: {entry.note}")
    return out


def check_refused(tree: Mapping[str, Any]) -> None:
    """Raise ConfigError naming the first refused key set in `tree` (one line)."""
    found = refusals(tree)
    if found:
        more = f" (and {len(found) - 1} more refused key(s))" if len(found) > 1 else ""
        raise ConfigError(found[0] + more)


def _status_text(entry: Key) -> str:
    if entry.allowed is not None:
        values = ", ".join(f"`{str(a).lower()}`" for a in entry.allowed if a != "")
        return f"supported: {values} only"
    return entry.status


def markdown_table() -> str:
    """The README's table of every key: key, status, note (one row per entry)."""
    rows = ["| key | status | notes |", "|---|---|---|"]
    for entry in KEYS:
        note = entry.note.replace("|", "\\|")
        rows.append(f"| `{entry.key}` | {_status_text(entry)} | {note} |")
    return "\n".join(rows) + "\n"
