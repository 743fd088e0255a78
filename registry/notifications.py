"""Webhook notifications as the reference's ``notifications.endpoints``.

Configuration (the reference's keys)::

    notifications:
      events:
        includereferences: true        # accepted; manifest references are not listed
      endpoints:
        - name: ci
          url: https://ci.example.com/registry-events
          headers: {Authorization: [Bearer s3cret]}
          timeout: 1s                  # one POST
          threshold: 10                # failures in a row before we log the endpoint as down
          backoff: 1s                  # first retry delay; doubles up to MAX_BACKOFF_S
          ignoredmediatypes: [application/octet-stream]
          ignore: {mediatypes: [...], actions: [pull]}
          disabled: false
          queuesize: 1000              # our extension: events held while the endpoint is down

Events are what the reference sends: ``push`` (a manifest PUT, a completed blob upload, a
blob mounted from another repository), ``pull`` (manifest and blob GET), ``delete``
(manifest, tag or blob DELETE), each in the envelope ``{"events": [...]}`` POSTed with
``Content-Type: application/vnd.docker.distribution.events.v2+json``. Each event has
``id, timestamp, action, target{mediaType, size, length, digest, repository, url, tag},
request{id, addr, host, method, useragent}, actor{name}, source{addr, instanceID}``.

Delivery: the app observes each finished exchange (``Notifier.observe``, called after the
response, never blocking it) and puts its event on each endpoint's bounded queue; when a queue
is full the event is dropped and counted (a dead endpoint must not grow memory). One task per
endpoint, started by the app's lifespan nursery, sends events in order in batches of up to
``BATCH`` and retries a failed batch with exponential backoff, forever: order is kept and
nothing is lost unless the queue overflows. A 2xx or 3xx answer is success (the reference).
Shutdown cancels the tasks; events still queued then are lost (they live in memory).
"""

from __future__ import annotations

import datetime
import json
import logging
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import trio

from .config import ConfigError, duration_setting
from .http.routes import BLOB, MANIFEST
from .http.urls import route_root
from .ops.exchange import UPLOAD_EVENTS, EventKind, Exchange

log = logging.getLogger("registry.notifications")

EVENTS_MEDIA_TYPE = "application/vnd.docker.distribution.events.v2+json"
DEFAULT_QUEUE = 1000  # events per endpoint held while it is slow or down
BATCH = 100  # events per POST at most
MAX_BACKOFF_S = 60.0  # retries of a dead endpoint settle at one a minute
DEFAULT_TIMEOUT_S = 1.0  # the reference's default
DEFAULT_BACKOFF_S = 1.0
DEFAULT_THRESHOLD = 10
BLOB_MEDIA_TYPE = "application/octet-stream"  # the reference's media type for blob events


@dataclass(frozen=True)
class Endpoint:
    name: str
    url: str
    headers: tuple[tuple[str, str], ...] = ()
    timeout: float = DEFAULT_TIMEOUT_S
    threshold: int = DEFAULT_THRESHOLD
    backoff: float = DEFAULT_BACKOFF_S
    ignored_media_types: frozenset[str] = frozenset()
    ignored_actions: frozenset[str] = frozenset()
    queue_size: int = DEFAULT_QUEUE

    def wants(self, event: dict[str, Any]) -> bool:
        return (event["action"] not in self.ignored_actions
                and event["target"].get("mediaType") not in self.ignored_media_types)


def _strs(value: Any, key: str) -> frozenset[str]:
    if value is None:
        return frozenset()
    items = value if isinstance(value, (list, tuple)) else [value]
    if not all(isinstance(v, str) for v in items):
        raise ConfigError(f"{key}: expected a list of strings")
    return frozenset(items)


def parse_endpoints(section: Mapping[str, Any]) -> list[Endpoint]:
    """The enabled endpoints of ``notifications``; raises ConfigError naming the key."""
    raw = section.get("endpoints") if hasattr(section, "get") else None
    if not raw:
        return []
    if not isinstance(raw, (list, tuple)):
        raise ConfigError("notifications.endpoints: expected a list")
    out = []
    for i, ep in enumerate(raw):
        key = f"notifications.endpoints.{i}"
        if not hasattr(ep, "get"):
            raise ConfigError(f"{key}: expected a mapping")
        if ep.get("disabled") is True:
            continue
        url = ep.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError(f"{key}.url: expected an http:// or https:// URL")
        headers = []
        for name, values in (ep.get("headers") or {}).items():
            for v in values if isinstance(values, (list, tuple)) else [values]:
                if "\n" in str(v) or "\r" in str(v):
                    raise ConfigError(f"{key}.headers.{name}: line breaks are not allowed")
                headers.append((str(name), str(v)))
        threshold = ep.get("threshold", DEFAULT_THRESHOLD)
        queue = ep.get("queuesize", DEFAULT_QUEUE)
        for k, v in (("threshold", threshold), ("queuesize", queue)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{key}.{k}: expected a positive integer")
        ignore = ep.get("ignore") or {}
        out.append(Endpoint(
            name=str(ep.get("name") or f"endpoint-{i}"),
            url=url,
            headers=tuple(headers),
            timeout=duration_setting(ep.get("timeout"), f"{key}.timeout", DEFAULT_TIMEOUT_S,
                                     positive=True),
            threshold=threshold,
            backoff=duration_setting(ep.get("backoff"), f"{key}.backoff", DEFAULT_BACKOFF_S,
                                     positive=True),
            ignored_media_types=_strs(ep.get("ignoredmediatypes"), f"{key}.ignoredmediatypes")
            | _strs(ignore.get("mediatypes"), f"{key}.ignore.mediatypes"),
            ignored_actions=_strs(ignore.get("actions"), f"{key}.ignore.actions"),
            queue_size=queue,
        ))
    return out


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds")


def event_for(ex: Exchange, source: dict[str, str], base_url: str) -> dict[str, Any] | None:
    """The reference's event for a finished exchange, or None when the exchange is not one
    the reference notifies about. Which exchanges those are follows from the event kind the
    route table gives the route (``ex.event``); target URLs are the table's MANIFEST and
    BLOB paths."""
    kind, method, status = ex.event, ex.method, ex.status
    name = ex.params.get("name")
    if name is None or kind is None:
        return None
    headers = ex.response_headers
    target: dict[str, Any] = {"repository": name}
    action = None
    if kind is EventKind.MANIFEST:
        ref = ex.params.get("reference", "")
        digest = headers.get("docker-content-digest") or (ref if ":" in ref else None)
        if method == "PUT" and status == 201:
            action = "push"
            target["mediaType"] = ex.request_headers.get("content-type", "")
            target["size"] = target["length"] = ex.bytes_in
        elif method == "GET" and status == 200:
            action = "pull"
            target["mediaType"] = headers.get("content-type", "")
            target["size"] = target["length"] = ex.bytes_out
        elif method == "DELETE" and status == 202:
            action = "delete"
        else:
            return None
        if digest:
            target["digest"] = digest
            target["url"] = base_url + MANIFEST.path(name=name, reference=digest)
        if ":" not in ref:
            target["tag"] = ref
    elif kind is EventKind.BLOB:
        digest = ex.params.get("digest", "")
        if method == "GET" and status in (200, 206):
            action = "pull"
            size = int(headers.get("content-length", ex.bytes_out) or 0)
        elif method == "DELETE" and status == 202:
            action, size = "delete", 0
        else:
            return None
        target.update(digest=digest, mediaType=BLOB_MEDIA_TYPE,
                      url=base_url + BLOB.path(name=name, digest=digest))
        if action == "pull":
            target["size"] = target["length"] = size
    elif kind in UPLOAD_EVENTS and status == 201:
        digest = headers.get("docker-content-digest", "")
        action = "push"
        target.update(digest=digest, mediaType=BLOB_MEDIA_TYPE,
                      url=base_url + BLOB.path(name=name, digest=digest))
        if kind is EventKind.UPLOAD_START and "mount" in ex.query:
            action = "mount"
            target["fromRepository"] = ex.query_param("from") or ""
    else:
        return None
    event = {
        "id": str(uuid.uuid4()),
        "timestamp": _now(),
        "action": action,
        "target": target,
        "request": {
            "id": str(uuid.uuid4()),
            "addr": ex.client,
            "host": ex.request_headers.get("host", ""),
            "method": method,
            "useragent": ex.request_headers.get("user-agent", ""),
        },
        "actor": {"name": ex.user} if ex.user else {},
        "source": source,
    }
    return event


def events_for(ex: Exchange, source: dict[str, str], base_url: str) -> list[dict[str, Any]]:
    """The events of a finished exchange: :func:`event_for`'s, except that a manifest PUT by
    digest that applied tags (``?tag=``, answered with one ``OCI-Tag`` header per tag) is
    one push event per tag, each as a PUT by that tag sends it (``target.tag`` set)."""
    event = event_for(ex, source, base_url)
    if event is None:
        return []
    applied = ex.response_headers.get("oci-tag", "")
    if event["action"] != "push" or "tag" in event["target"] or not applied:
        return [event]
    # Tags cannot hold a comma or a space, so the joined header splits back exactly.
    return [{**event, "id": str(uuid.uuid4()), "target": {**event["target"], "tag": tag}}
            for tag in applied.split(", ")]


@dataclass
class _Sink:
    endpoint: Endpoint
    send: trio.MemorySendChannel[dict[str, Any]]
    receive: trio.MemoryReceiveChannel[dict[str, Any]]
    dropped: int = 0
    failures: int = 0
    delivered: int = 0


@dataclass
class Notifier:
    """Queues events per endpoint and delivers them (see the module doc)."""

    endpoints: list[Endpoint]
    source_addr: str = field(default_factory=socket.gethostname)
    base_url: str = ""
    prefix: str = ""  # http.prefix, as in the API's own URLs (http/urls.py route_root)
    instance_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    transport: httpx.AsyncBaseTransport | None = None  # tests may inject one

    def __post_init__(self) -> None:
        self.sinks = []
        for ep in self.endpoints:
            send, receive = trio.open_memory_channel[dict[str, Any]](ep.queue_size)
            self.sinks.append(_Sink(ep, send, receive))
        self.source = {"addr": self.source_addr, "instanceID": self.instance_id}

    def observe(self, ex: Exchange) -> None:
        """An exchange listener: enqueue its events on every endpoint that wants them."""
        if not self.sinks:
            return
        base = self.base_url or f"http://{ex.request_headers.get('host', 'localhost')}"
        base += self.prefix
        for event in events_for(ex, self.source, base):
            self._enqueue(event)

    def _enqueue(self, event: dict[str, Any]) -> None:
        for sink in self.sinks:
            if not sink.endpoint.wants(event):
                continue
            try:
                sink.send.send_nowait(event)
            except trio.WouldBlock:
                sink.dropped += 1
                if sink.dropped == 1 or sink.dropped % 1000 == 0:
                    log.warning("notifications: queue for %s is full; %d events dropped",
                                sink.endpoint.name, sink.dropped)

    async def start(self, nursery: trio.Nursery) -> None:
        """A RegistryApp background callable: one delivery task per endpoint."""
        for sink in self.sinks:
            nursery.start_soon(self._deliver, sink)

    async def _deliver(self, sink: _Sink) -> None:
        ep = sink.endpoint
        headers = [*ep.headers, ("Content-Type", EVENTS_MEDIA_TYPE)]
        async with httpx.AsyncClient(transport=self.transport, timeout=ep.timeout,
                                     follow_redirects=False) as client:
            async for first in sink.receive:
                batch = [first]
                while len(batch) < BATCH:
                    try:
                        batch.append(sink.receive.receive_nowait())
                    except trio.WouldBlock:
                        break
                body = json.dumps({"events": batch}).encode()
                delay = ep.backoff
                while not await self._post(client, sink, headers, body):
                    await trio.sleep(delay)
                    delay = min(delay * 2, MAX_BACKOFF_S)
                sink.delivered += len(batch)

    async def _post(self, client: httpx.AsyncClient, sink: _Sink,
                    headers: list[tuple[str, str]], body: bytes) -> bool:
        ep = sink.endpoint
        try:
            with trio.fail_after(ep.timeout * 2):  # a deadline beyond httpx's own timeouts
                r = await client.post(ep.url, content=body, headers=headers)
            ok = 200 <= r.status_code < 400
            problem = f"status {r.status_code}"
        except (httpx.HTTPError, trio.TooSlowError, OSError) as exc:
            ok, problem = False, type(exc).__name__
        if ok:
            if sink.failures >= ep.threshold:
                log.info("notifications: endpoint %s is back", ep.name)
            sink.failures = 0
            return True
        sink.failures += 1
        if sink.failures == ep.threshold:
            log.warning("notifications: endpoint %s failed %d times in a row (%s); retrying",
                        ep.name, sink.failures, problem)
        return False


def build_notifier(config: Any) -> Notifier | None:
    """From Config: a Notifier for the enabled endpoints, or None. Raises ConfigError."""
    endpoints = parse_endpoints(config.notifications)
    if not endpoints:
        return None
    base = config.http.host.rstrip("/") if config.http.host else ""
    addr = config.http.addr
    host = addr if not addr.startswith(":") else f"{socket.gethostname()}{addr}"
    prefix = route_root(config.http.host, config.http.prefix)
    return Notifier(endpoints, source_addr=host, base_url=base, prefix=prefix)
