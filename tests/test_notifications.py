"""Webhook notifications as the reference's ``notifications.endpoints`` (issue 6, item 8),
delivered to a receiver of our own."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.trio import serve
from oci import OCI_MANIFEST, push_image
from test_auth_htpasswd import write_htpasswd

from registry.config import ConfigError, load_config
from registry.notifications import EVENTS_MEDIA_TYPE, Endpoint, Notifier, parse_endpoints
from registry.ops.exchange import EventKind, Exchange
from registry.server import build_app


class Receiver:
    """An ASGI app that records POSTed envelopes; the first ``fail`` requests get 500."""

    def __init__(self, fail: int = 0) -> None:
        self.fail = fail
        self.requests: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.attempts = 0
        self.got = trio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                await send({"type": msg["type"] + ".complete"})
                if msg["type"] == "lifespan.shutdown":
                    return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        self.attempts += 1
        status = 500 if self.attempts <= self.fail else 200
        if status == 200:
            headers = {k.decode(): v.decode() for k, v in scope["headers"]}
            self.requests.append((headers, json.loads(body)))
            self.got.set()
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    @property
    def events(self) -> list[dict[str, Any]]:
        return [e for _, envelope in self.requests for e in envelope["events"]]

    async def wait_for(self, n: int, timeout: float = 10) -> list[dict[str, Any]]:
        with trio.fail_after(timeout):
            while len(self.events) < n:
                await trio.sleep(0.02)
        return self.events


async def start(nursery: trio.Nursery, app: Any) -> str:
    hc = HyperConfig()
    hc.bind = ["127.0.0.1:0"]
    hc.accesslog = None
    hc.graceful_timeout = 0.5
    return (await nursery.start(partial(serve, app, hc)))[0]


async def start_registry(nursery: trio.Nursery, env: dict[str, str]) -> str:
    config, _ = load_config(None, {"REGISTRY_STORAGE": "inmemory",
                                   "REGISTRY_STORAGE_DELETE_ENABLED": "true", **env})
    app = build_app(config)
    return await start(nursery, app)


def endpoint_env(url: str, **extra: str) -> dict[str, str]:
    env = {
        "REGISTRY_NOTIFICATIONS_ENDPOINTS_0_NAME": "receiver",
        "REGISTRY_NOTIFICATIONS_ENDPOINTS_0_URL": f"{url}/events",
        "REGISTRY_NOTIFICATIONS_ENDPOINTS_0_BACKOFF": "20ms",
        "REGISTRY_NOTIFICATIONS_ENDPOINTS_0_TIMEOUT": "2s",
    }
    env.update({f"REGISTRY_NOTIFICATIONS_ENDPOINTS_0_{k.upper()}": v for k, v in extra.items()})
    return env


async def test_push_pull_delete_events_in_the_reference_envelope(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    receiver = Receiver()
    rurl = await start(nursery, receiver)
    htpasswd = tmp_path / "htpasswd"
    write_htpasswd(htpasswd, {"alice": "pw"})
    url = await start_registry(nursery, {
        **endpoint_env(rurl, headers="{X-Token: [abc]}"),
        "REGISTRY_AUTH": "htpasswd", "REGISTRY_AUTH_HTPASSWD_PATH": str(htpasswd),
    })
    async with httpx.AsyncClient(base_url=url, auth=("alice", "pw")) as c:
        mdigest, body = await push_image(c, "team/app", "v1", layers=(b"layer",))
        assert (await c.get("/v2/team/app/manifests/v1",
                            headers={"Accept": OCI_MANIFEST})).status_code == 200
        assert (await c.head("/v2/team/app/manifests/v1")).status_code == 200  # no event
        layer = json.loads(body)["layers"][0]["digest"]
        assert (await c.get(f"/v2/team/app/blobs/{layer}")).status_code == 200
        assert (await c.delete(f"/v2/team/app/manifests/{mdigest}")).status_code == 202
        assert (await c.get("/v2/team/app/manifests/v1")).status_code == 404  # no event
    events = await receiver.wait_for(6)
    headers, _ = receiver.requests[0]
    assert headers["content-type"] == EVENTS_MEDIA_TYPE
    assert headers["x-token"] == "abc"
    summary = [(e["action"], e["target"].get("mediaType"), e["target"].get("tag")) for e in events]
    assert summary == [
        ("push", "application/octet-stream", None),  # config blob
        ("push", "application/octet-stream", None),  # layer
        ("push", OCI_MANIFEST, "v1"),
        ("pull", OCI_MANIFEST, "v1"),
        ("pull", "application/octet-stream", None),
        ("delete", None, None),
    ]
    push = events[2]
    assert push["target"]["digest"] == mdigest
    assert push["target"]["size"] == push["target"]["length"] == len(body)
    assert push["target"]["repository"] == "team/app"
    assert push["target"]["url"].endswith(f"/v2/team/app/manifests/{mdigest}")
    assert push["actor"] == {"name": "alice"}
    assert push["request"]["method"] == "PUT"
    assert push["request"]["addr"] == "127.0.0.1"
    assert push["source"]["instanceID"] and push["id"] and push["timestamp"]
    assert events[4]["target"]["digest"] == layer and events[4]["target"]["size"] == 5
    assert events[5]["target"]["digest"] == mdigest
    assert len({e["id"] for e in events}) == 6


async def test_events_see_headers_decoded_once_as_the_app_does(nursery: trio.Nursery) -> None:
    """The app decodes a request once; events read that decoding (a repeated header joined
    with ", ", RFC 9110 5.3), not a second one of their own that kept only the last."""
    receiver = Receiver()
    rurl = await start(nursery, receiver)
    url = await start_registry(nursery, endpoint_env(rurl))
    async with httpx.AsyncClient(base_url=url) as c:
        digest, _ = await push_image(c, "a", "v1", layers=())
        r = await c.get("/v2/a/manifests/v1",
                        headers=[("User-Agent", "docker/27"), ("User-Agent", "go/1.22")])
        assert r.status_code == 200
    events = await receiver.wait_for(3)  # config blob push, manifest push, manifest pull
    pull = events[-1]
    assert pull["action"] == "pull" and pull["target"]["digest"] == digest
    assert pull["request"]["useragent"] == "docker/27, go/1.22"


async def test_the_app_leaves_the_asgi_scope_alone(nursery: trio.Nursery) -> None:
    """The matched route and the user travel on the request and the exchange record, not in
    the server's scope (observed and authenticated requests alike)."""
    config, _ = load_config(None, {"REGISTRY_STORAGE": "inmemory",
                                   **endpoint_env("http://127.0.0.1:9/unused")})
    app = build_app(config)
    changed: list[set[str]] = []

    async def spy(scope: dict[str, Any], receive: Any, send: Any) -> None:
        before = dict(scope)
        await app(scope, receive, send)
        if scope["type"] == "http" and scope != before:
            changed.append(set(scope) ^ set(before))

    url = await start(nursery, spy)
    async with httpx.AsyncClient(base_url=url) as c:
        assert (await c.get("/v2/")).status_code == 200
        assert (await c.get("/v2/a/manifests/v1")).status_code == 404
        assert (await c.post("/v2/a/blobs/nope")).status_code == 405
    assert changed == []


async def test_failed_deliveries_are_retried_in_order(nursery: trio.Nursery) -> None:
    receiver = Receiver(fail=3)
    rurl = await start(nursery, receiver)
    url = await start_registry(nursery, endpoint_env(rurl, ignore="{actions: [pull]}"))
    async with httpx.AsyncClient(base_url=url) as c:
        await push_image(c, "a", "one", layers=(b"1",))
        await push_image(c, "a", "two", layers=(b"2",))
        await c.get("/v2/a/manifests/one")  # ignored: pull
    events = await receiver.wait_for(6)
    assert receiver.attempts >= 4
    assert [e["action"] for e in events] == ["push"] * 6
    assert [e["target"].get("tag") for e in events if "tag" in e["target"]] == ["one", "two"]


def exchange(n: int) -> Exchange:
    return Exchange(
        method="DELETE", label="manifest", event=EventKind.MANIFEST,
        params={"name": "r", "reference": f"t{n}"},
        path=f"/v2/r/manifests/t{n}", client="127.0.0.1", request_headers={}, status=202,
    )


async def test_queue_is_bounded_while_the_endpoint_is_down(autojump_clock: trio.abc.Clock) -> None:
    attempts: list[int] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        attempts.append(len(json.loads(request.content)["events"]))
        raise httpx.ConnectError("refused")

    ep = Endpoint("down", "http://receiver.invalid/events", backoff=1.0, queue_size=5)
    notifier = Notifier([ep], transport=httpx.MockTransport(refuse))
    async with trio.open_nursery() as nursery:
        await notifier.start(nursery)
        for i in range(50):
            notifier.observe(exchange(i))
        await trio.sleep(3600)
        sink = notifier.sinks[0]
        # One batch is being retried (taken off the queue), the queue is full, the rest dropped.
        assert attempts[0] <= 5 and len(attempts) > 5
        assert sink.dropped >= 50 - 5 - attempts[0]
        assert sink.receive.statistics().current_buffer_used <= 5
        # Backoff doubles up to a minute: about 60 tries in an hour, not thousands.
        assert len(attempts) < 100
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("endpoints", "message"),
    [
        ([{"url": "ftp://x"}], "notifications.endpoints.0.url"),
        ([{"url": "http://x", "timeout": "soon"}], "notifications.endpoints.0.timeout"),
        ([{"url": "http://x", "threshold": 0}], "notifications.endpoints.0.threshold"),
        ("http://x", "notifications.endpoints: expected a list"),
        ([{"url": "http://x", "headers": {"A": ["x\ny"]}}], "notifications.endpoints.0.headers.A"),
    ],
)
def test_bad_endpoint_config_names_the_key(endpoints: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^{message}"):
        parse_endpoints({"endpoints": endpoints})


def test_disabled_endpoints_are_skipped_and_defaults_are_the_reference() -> None:
    eps = parse_endpoints({"endpoints": [
        {"name": "off", "url": "http://a", "disabled": True},
        {"name": "on", "url": "http://b", "ignoredmediatypes": ["application/octet-stream"]},
    ]})
    assert [e.name for e in eps] == ["on"]
    assert eps[0].timeout == 1.0 and eps[0].backoff == 1.0 and eps[0].threshold == 10
    assert eps[0].ignored_media_types == {"application/octet-stream"}
