"""Findings of the hostile review of issues 16-18 (pull-through cache, Redis, web UI): each
test here failed before its fix. Real apps over real sockets (``serve_registry`` builds the
app from a Config as ``registry`` does; the proxy tests use tests/proxy_support.py)."""

from __future__ import annotations

import json
import logging
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from conftest import serve_asgi
from oci import error_codes, push_image
from proxy_support import Scope, remote, respond, start_proxy, start_upstream
from test_ui_api import UI, serve_registry

from registry.drivers.redis import RedisClient, RedisOptions, RedisUnavailable
from registry.drivers.redis.protocol import ProtocolError, ReplyParser
from registry.ops.metrics import Metrics
from registry.proxy import upstream as upstream_module

TIMEOUT = 30  # seconds any one test may take (none may hang)


@pytest.mark.parametrize("path", ["/v2/_catalog", "/v2/team/app/tags/list", f"{UI}/repositories"])
@pytest.mark.parametrize("n", ["%C2%B2", "%D9%A3", "1" * 5000, "0" * 5000])
async def test_odd_page_sizes_are_400_never_500(nursery: trio.Nursery, tmp_path: Path,
                                                 path: str, n: str) -> None:
    """``?n=`` with a character str.isdigit() takes but int() refuses (superscript two),
    a non-ASCII digit, or more digits than int() converts: 400 PAGINATION_NUMBER_INVALID
    (the UI API takes a huge n as its largest page, as it takes any n above it)."""
    with trio.fail_after(TIMEOUT):
        url = await serve_registry(nursery, tmp_path)
        async with httpx.AsyncClient(base_url=url, timeout=20) as c:
            await push_image(c, "team/app", "latest")
            r = await c.get(f"{path}?n={n}")
    if n == "1" * 5000 and path.startswith(UI):  # the UI takes a large n as its largest page
        assert r.status_code == 200 and r.json()["repositories"][0]["name"] == "team/app"
        return
    assert r.status_code == 400, r.text
    assert error_codes(r) == ["PAGINATION_NUMBER_INVALID"]


# --- the pull-through cache: what an upstream may send -----------------------------------

STALL_DECLARED = 1 << 30  # the Content-Length a stalling fake upstream announces (1 GiB)


def stalling_body(sent: int) -> Any:
    """An ASGI answer: 200 declaring STALL_DECLARED bytes, ``sent`` bytes of them (JSON-ish
    text), then nothing until cancelled. Reading it whole would hang, then eat memory."""

    async def answer(scope: Scope, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-length", str(STALL_DECLARED).encode()),
            (b"content-type", b"application/json")]})
        piece = b'{"tags":[' + b'"a",' * (256 * 1024)
        done = 0
        while done < sent:
            await send({"type": "http.response.body", "body": piece, "more_body": True})
            done += len(piece)
        await trio.sleep_forever()

    return answer


async def pulled_through(nursery: trio.Nursery, roots: tuple[str, Path], **up_kw: Any
                         ) -> tuple[Any, str]:
    """An upstream holding ``app:1`` and a proxy (credentials puller/s3cret) that pulled
    it through once; (the upstream, the proxy's URL)."""
    up_root, px_root = roots
    up, _ = await start_upstream(nursery, up_root)
    async with httpx.AsyncClient(base_url=up.url) as upc:
        await push_image(upc, "app", "1", layers=(b"layer",))
    for key, value in up_kw.items():
        setattr(up, key, value)
    url, _, _ = await start_proxy(nursery, str(px_root), [
        remote(up.url, username="puller", password="s3cret")])
    async with httpx.AsyncClient(base_url=url, timeout=20) as c:
        assert (await c.get("/v2/app/manifests/1")).status_code == 200
    return up, url


@pytest.fixture
def roots(tmp_path: Path) -> tuple[str, Path]:
    return str(tmp_path / "upstream"), tmp_path / "proxy"


async def test_upstream_tags_link_to_another_host_gets_no_credentials(
        nursery: trio.Nursery, roots: tuple[str, Path]) -> None:
    """A tags page whose ``Link`` names another host: that host is not asked (it would be
    sent the remote's password); the tags so far are the answer."""
    seen: list[dict[bytes, bytes]] = []

    async def elsewhere(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
        elif scope["type"] == "http":
            seen.append(dict(scope["headers"]))
            await respond(send, 200, json.dumps({"name": "app", "tags": ["x"]}).encode())

    with trio.fail_after(TIMEOUT):
        other = await serve_asgi(nursery, elsewhere)

        def fault(scope: Scope) -> Any:
            if scope["path"].endswith("/tags/list"):
                async def page(scope: Scope, receive: Any, send: Any) -> None:
                    link = f'<{other}/v2/app/tags/list?last=1>; rel="next"'.encode()
                    await respond(send, 200, b'{"name":"app","tags":["1"]}', [(b"link", link)])
                return page
            return None

        _, url = await pulled_through(nursery, roots, auth="basic", fault=fault)
        async with httpx.AsyncClient(base_url=url, timeout=20) as c:
            r = await c.get("/v2/app/tags/list")
    assert not [h for h in seen if b"authorization" in h], "credentials sent to another host"
    assert r.status_code == 200 and r.json()["tags"] == ["1"]


@pytest.mark.parametrize("where", ["tags", "token"])
async def test_endless_upstream_answers_are_read_bounded(
        nursery: trio.Nursery, roots: tuple[str, Path], where: str) -> None:
    """A tags page or a token answer that never ends (1 GiB announced, megabytes sent,
    then a stall): the proxy stops reading at its cap and answers at once with the cached
    tags, instead of buffering it until the request deadline (45 s)."""

    def fault(scope: Scope) -> Any:
        if where == "tags" and scope["path"].endswith("/tags/list"):
            return stalling_body(24 * 1024 * 1024)
        return None

    with trio.fail_after(TIMEOUT):
        up, url = await pulled_through(nursery, roots, fault=fault)
        if where == "token":
            realm = f"{up.url}/endless-token"

            def token_fault(scope: Scope) -> Any:
                if scope["path"] == "/endless-token":
                    return stalling_body(4 * 1024 * 1024)

                async def challenge(scope: Scope, receive: Any, send: Any) -> None:
                    await respond(send, 401, b"{}", [
                        (b"www-authenticate", f'Bearer realm="{realm}",service="up"'.encode())])
                return challenge

            up.fault = token_fault
        async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as c:
            r = await c.get("/v2/app/tags/list")
    assert r.status_code == 200 and r.json()["tags"] == ["1"]  # the cached tags


async def test_credentials_in_the_remote_url_are_never_logged_or_exported(
        nursery: trio.Nursery, roots: tuple[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    """``remoteurl: http://user:password@host`` (accepted by the config, as Go's url.Parse
    does): the remote's label in the fetch log lines and the metrics has no userinfo."""
    up_root, px_root = roots
    metrics = Metrics()
    caplog.set_level(logging.INFO, logger="registry.proxy")
    with trio.fail_after(TIMEOUT):
        up, _ = await start_upstream(nursery, up_root)
        async with httpx.AsyncClient(base_url=up.url) as upc:
            await push_image(upc, "app", "1", layers=(b"layer",))
        with_secret = up.url.replace("http://", "http://puller:s3cret@")
        url, _, _ = await start_proxy(nursery, str(px_root), [remote(with_secret)],
                                      metrics=metrics)
        async with httpx.AsyncClient(base_url=url, timeout=20) as c:
            assert (await c.get("/v2/app/manifests/1")).status_code == 200
            assert (await c.get("/v2/app/manifests/nope")).status_code == 404
    assert "upstream fetch" in caplog.text
    assert "s3cret" not in caplog.text
    assert b"s3cret" not in metrics.exposition()[0]


# --- Redis: what a broken or hostile server may answer --------------------------------------

NESTED = b"*1\r\n" * 100_000  # an array in an array in ... 100,000 deep (400 kB)


async def test_deeply_nested_redis_reply_is_a_protocol_error_not_a_crash(
        nursery: trio.Nursery) -> None:
    """A server answering arrays nested past any command's reply: the connection is
    dropped and the call raises RedisUnavailable (what every caller handles), never
    RecursionError (which the HTTP layer would turn into a 500)."""

    async def handler(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await stream.send_all(NESTED)
        await trio.sleep_forever()

    with trio.fail_after(TIMEOUT):
        listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        client = RedisClient(RedisOptions("127.0.0.1", port, max_retries=0))
        try:
            with pytest.raises(RedisUnavailable, match="protocol error"):
                await client.execute("GET", "k")
        finally:
            await client.aclose()
    parser = ReplyParser()
    parser.feed(NESTED)
    with pytest.raises(ProtocolError):
        list(parser.replies())


async def test_names_asked_leave_no_token_lock_and_at_most_max_tokens(
        nursery: trio.Nursery, roots: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Names are the client's choice: asking for many (each its own bearer scope) leaves no
    lock behind and keeps at most MAX_TOKENS tokens (4 here), not one of each per name."""
    monkeypatch.setattr(upstream_module, "MAX_TOKENS", 4, raising=False)
    up_root, px_root = roots
    with trio.fail_after(TIMEOUT):
        up, _ = await start_upstream(nursery, up_root, auth="bearer")
        url, _, cache = await start_proxy(nursery, str(px_root), [
            remote(up.url, username="puller", password="s3cret")])
        async with httpx.AsyncClient(base_url=url, timeout=20) as c:
            for i in range(12):
                r = await c.get(f"/v2/name{i}/manifests/latest")
                assert r.status_code == 404, r.text
    client = cache.remotes[0].upstream
    assert up.tokens_issued >= 12  # a token per scope was fetched
    assert client._token_locks == {}
    assert len(client._tokens) <= 4
