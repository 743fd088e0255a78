"""Our Redis client (registry/drivers/redis/): the RESP2 tables (pure), then against a real
redis-server: commands and pipelines, AUTH/SELECT/SETNAME, a cancel mid-command that must
not leave a half-read connection in the pool, timeouts, and the outage policy (one log
line down, one back, no connect attempt per call while down)."""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest
import trio
import trustme
from redis_support import RedisServer, running_redis

from registry.config import load_config
from registry.drivers.redis import RedisClient, RedisOptions, RedisUnavailable, ReplyError
from registry.drivers.redis.protocol import (
    ProtocolError,
    ReplyParser,
    encode_command,
)
from registry.ops.redis import redis_client

TEST_TIMEOUT_S = 20  # seconds; every test body here ends well within this

# --- protocol tables ---------------------------------------------------------------------------

ENCODE = [
    (("PING",), b"*1\r\n$4\r\nPING\r\n"),
    (("SET", "k", b"v\r\n", 12), b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv\r\n\r\n$2\r\n12\r\n"),
    (("HSET", "h", "f", ""), b"*4\r\n$4\r\nHSET\r\n$1\r\nh\r\n$1\r\nf\r\n$0\r\n\r\n"),
    (("SET", "\u00e9", -1), b"*3\r\n$3\r\nSET\r\n$2\r\n\xc3\xa9\r\n$2\r\n-1\r\n"),
]


@pytest.mark.parametrize(("args", "wire"), ENCODE)
def test_encode_command(args, wire):
    assert encode_command(*args) == wire


@pytest.mark.parametrize("args", [(), ("SET", True), ("SET", None), ("SET", 1.5)])
def test_encode_refuses_bad_arguments(args):
    with pytest.raises((TypeError, ValueError)):
        encode_command(*args)


DECODE = [
    (b"+OK\r\n", "OK"),
    (b":42\r\n", 42),
    (b":-3\r\n", -3),
    (b"$3\r\nabc\r\n", b"abc"),
    (b"$0\r\n\r\n", b""),
    (b"$-1\r\n", None),
    (b"$4\r\na\r\nb\r\n", b"a\r\nb"),  # CRLF inside a bulk string is data
    (b"*-1\r\n", None),
    (b"*0\r\n", []),
    (b"*3\r\n$1\r\na\r\n:1\r\n$-1\r\n", [b"a", 1, None]),
    (b"*2\r\n*1\r\n+x\r\n*0\r\n", [["x"], []]),
]


@pytest.mark.parametrize(("wire", "value"), DECODE)
def test_decode_whole_and_byte_by_byte(wire, value):
    whole = ReplyParser()
    whole.feed(wire)
    assert list(whole.replies()) == [value]
    split = ReplyParser()
    got = []
    for i in range(len(wire)):
        split.feed(wire[i : i + 1])
        got += list(split.replies())
    assert got == [value] and not split.pending


def test_decode_error_reply_is_a_value_with_its_kind():
    p = ReplyParser()
    p.feed(b"-WRONGTYPE Operation against a key\r\n+OK\r\n")
    err, ok = list(p.replies())
    assert isinstance(err, ReplyError) and err.kind == "WRONGTYPE" and ok == "OK"


@pytest.mark.parametrize("wire", [
    b"?what\r\n", b":12x\r\n", b"$-2\r\n", b"$3\r\nabcXY", b"*-5\r\n", b"$99999999999\r\n",
])
def test_decode_refuses_a_broken_stream(wire):
    p = ReplyParser()
    p.feed(wire)
    with pytest.raises(ProtocolError):
        list(p.replies())


def test_decode_incomplete_waits_for_more():
    p = ReplyParser()
    p.feed(b"*2\r\n$3\r\nab")
    assert list(p.replies()) == [] and p.pending
    p.feed(b"c\r\n:7\r\n")
    assert list(p.replies()) == [[b"abc", 7]]


# --- against redis-server ----------------------------------------------------------------------


@pytest.fixture
def redis_server(tmp_path) -> Iterator[RedisServer]:
    with running_redis(tmp_path) as server:
        yield server


@asynccontextmanager
async def client_for(server, **kw) -> AsyncIterator[RedisClient]:
    """A client of ours for `server`; the body is bounded by TEST_TIMEOUT_S."""
    c = RedisClient(RedisOptions("127.0.0.1", server.port, **kw))
    try:
        with trio.fail_after(TEST_TIMEOUT_S):
            yield c
    finally:
        await c.aclose()


async def test_commands_and_pipeline(redis_server):
    async with client_for(redis_server) as c:
        assert await c.execute("SET", "k", "v") == "OK"
        assert await c.execute("GET", "k") == b"v"
        replies = await c.pipeline([("HSET", "h", "a", 1), ("HGET", "h", "a"), ("GET", "h")])
        assert replies[:2] == [1, b"1"] and isinstance(replies[2], ReplyError)
        with pytest.raises(ReplyError):
            await c.execute("GET", "h")
    assert redis_server.cli("HGET", "h", "a") == b"1"


async def test_auth_select_and_client_name(redis_server):
    redis_server.cli("CONFIG", "SET", "requirepass", "s3cret")
    async with client_for(
        redis_server, password="s3cret", db=5, clientname="registry-test"
    ) as good, client_for(redis_server, password="nope", down_backoff=0) as wrong:
        await good.execute("SET", "in5", "x")
        name = await good.execute("CLIENT", "GETNAME")
        with pytest.raises(RedisUnavailable, match="set-up refused"):
            await wrong.execute("PING")
    assert name == b"registry-test"
    assert redis_server.cli_many(("AUTH", "s3cret"), ("SELECT", 5), ("GET", "in5")) == b"x"


async def test_cancel_mid_command_never_pools_a_half_read_connection(redis_server):
    async with client_for(redis_server, pool_size=1) as c:
        await c.execute("SET", "k", "v")
        with trio.move_on_after(0.2):
            await c.execute("BLPOP", "q", 5)  # blocks; cancelled while waiting for its reply
        # The cancelled connection is closed: Redis drops its blocked BLPOP client.
        for _ in range(100):
            if b"cmd=blpop" not in redis_server.cli("CLIENT", "LIST"):
                break
            await trio.sleep(0.02)
        assert b"cmd=blpop" not in redis_server.cli("CLIENT", "LIST")
        # Had the connection gone back to the pool, this value would answer the BLPOP on it
        # and the GET below would read ["q", "x"].
        redis_server.cli("LPUSH", "q", "x")
        assert await c.execute("GET", "k") == b"v"
        assert not c.down


async def test_read_timeout_is_unavailable_and_the_next_call_works(redis_server):
    async with client_for(redis_server, read_timeout=0.2, down_backoff=0) as c:
        with pytest.raises(RedisUnavailable, match="timed out"):
            await c.execute("BLPOP", "q", 3)
        redis_server.cli("LPUSH", "q", "x")
        assert await c.execute("PING") == "PONG"


async def test_pool_is_bounded(redis_server):
    async with client_for(redis_server, pool_size=2, pool_timeout=10) as c, \
            trio.open_nursery() as n:
        for _ in range(6):
            n.start_soon(c.execute, "BLPOP", "never", "0.3")
    clients = redis_server.cli("CLIENT", "LIST")
    assert clients.count(b"cmd=") <= 2 + 1  # the pool's two, plus the CLIENT LIST caller


async def test_outage_logs_once_each_way_and_skips_redis_while_down(redis_server, caplog):
    caplog.set_level(logging.INFO, "registry.redis")
    async with client_for(redis_server, down_backoff=0.3, max_retries=1, min_backoff=0.001) as c:
        assert await c.execute("PING") == "PONG"
        redis_server.stop()
        for _ in range(20):
            with pytest.raises(RedisUnavailable):
                await c.execute("GET", "k")
        assert c.down and c.failures == 1  # the 19 others did not even try to connect
        await trio.sleep(0.35)
        with pytest.raises(RedisUnavailable):
            await c.execute("GET", "k")  # the probe after the back-off: still down
        assert c.failures == 2
        redis_server.start()
        await trio.sleep(0.35)
        assert await c.execute("PING") == "PONG"
        assert await c.execute("PING") == "PONG"
    lines = [r.getMessage() for r in caplog.records if r.name == "registry.redis"]
    assert len(lines) == 2, lines
    assert "unavailable" in lines[0] and "serving from storage" in lines[0]
    assert "is back" in lines[1]


async def test_reused_connection_broken_by_a_restart_is_retried(redis_server):
    async with client_for(redis_server, down_backoff=0) as c:
        await c.execute("SET", "k", "v")
        redis_server.stop()
        redis_server.start()  # the pooled connection is now dead
        assert await c.execute("PING") == "PONG"
        assert not c.down and c.failures == 0


# --- TLS (redis.tls: certificate, key, clientcas) ----------------------------------------------


async def test_tls_with_a_client_certificate_from_the_config(tmp_path):
    ca, stranger = trustme.CA(), trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1")
    client_cert = ca.issue_cert("registry-client")
    files = {}
    for name, blob in (("server.pem", server_cert.cert_chain_pems[0]),
                       ("server.key", server_cert.private_key_pem),
                       ("client.pem", client_cert.cert_chain_pems[0]),
                       ("client.key", client_cert.private_key_pem),
                       ("ca.pem", ca.cert_pem), ("stranger.pem", stranger.cert_pem)):
        files[name] = tmp_path / name
        blob.write_to_path(str(files[name]))
    cli_ctx = ssl.create_default_context(cafile=str(files["ca.pem"]))
    client_cert.configure_cert(cli_ctx)
    tls = (files["server.pem"], files["server.key"], files["ca.pem"], cli_ctx)

    def configured(**env: str):
        config, _ = load_config(None, {"REGISTRY_STORAGE": "inmemory", **env})
        return redis_client(config.redis)

    with running_redis(tmp_path, tls=tls) as server:
        base = {"REGISTRY_REDIS_ADDRS": f"[127.0.0.1:{server.port}]",
                "REGISTRY_REDIS_DIALTIMEOUT": "2s", "REGISTRY_REDIS_MAXRETRIES": "-1"}
        good = configured(**base, REGISTRY_REDIS_TLS_CERTIFICATE=str(files["client.pem"]),
                          REGISTRY_REDIS_TLS_KEY=str(files["client.key"]),
                          REGISTRY_REDIS_TLS_CLIENTCAS=f"[{files['ca.pem']}]")
        wrong_ca = configured(**base, REGISTRY_REDIS_TLS_CERTIFICATE=str(files["client.pem"]),
                              REGISTRY_REDIS_TLS_KEY=str(files["client.key"]),
                              REGISTRY_REDIS_TLS_CLIENTCAS=f"[{files['stranger.pem']}]")
        plain = configured(**base)  # no certificate: no TLS (registry:3's rule)
        try:
            with trio.fail_after(TEST_TIMEOUT_S):
                assert await good.execute("SET", "over", "tls") == "OK"
                for refused in (wrong_ca, plain):
                    with pytest.raises(RedisUnavailable):
                        await refused.execute("PING")
        finally:
            for c in (good, wrong_ca, plain):
                await c.aclose()
        assert server.cli("GET", "over") == b"tls"
