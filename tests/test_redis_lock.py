"""Locks replicas agree on through Redis (issue 17 item 1; storage/redis_lock.py) against a
real redis-server: racing takers (one wins), a holder killed with SIGKILL (its lock expires),
release and renewal only by the owner, the GC lock (Redis around the storage lock; Redis
down = busy, never the storage lock alone) and the purge lock (skip while another purges)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import pytest
import trio
from redis_support import RedisServer, running_redis

from registry.drivers.memory import MemoryDriver
from registry.drivers.redis import RedisClient, RedisOptions
from registry.storage.blobs import BlobStore
from registry.storage.gc_lock import LockBusy, LockUnavailable, open_gc_lock, read_lock
from registry.storage.gc_report import LockLost
from registry.storage.purge import UploadPurger
from registry.storage.redis_lock import (
    GC_LOCK_KEY,
    PURGE_LOCK_KEY,
    RedisLockHeld,
    open_redis_lock,
)
from registry.storage.uploads import Uploads

TEST_TIMEOUT_S = 30  # seconds; each test body is bounded by this
KEY = "registry::lock::test"


@pytest.fixture
def redis_server(tmp_path) -> Iterator[RedisServer]:
    with running_redis(tmp_path) as server:
        yield server


@asynccontextmanager
async def clients(server: RedisServer, n: int = 1, **kw) -> AsyncIterator[list[RedisClient]]:
    made = [RedisClient(RedisOptions("127.0.0.1", server.port, **kw)) for _ in range(n)]
    try:
        with trio.fail_after(TEST_TIMEOUT_S):
            yield made
    finally:
        for c in made:
            await c.aclose()


async def test_racing_takers_one_wins(redis_server):
    winners: list[int] = []
    busy: list[int] = []
    async with clients(redis_server, 8) as cs:
        release = trio.Event()

        async def take(i: int) -> None:
            try:
                async with open_redis_lock(cs[i], KEY, 10.0, {"who": i}):
                    winners.append(i)
                    await release.wait()
            except RedisLockHeld as exc:
                busy.append(exc.holder.get("who"))

        async with trio.open_nursery() as n:
            for i in range(8):
                n.start_soon(take, i)
            while len(winners) + len(busy) < 8:
                await trio.sleep(0.01)
            release.set()
    assert len(winners) == 1 and len(busy) == 7
    assert set(busy) == {winners[0]}  # the losers were told who holds it
    assert redis_server.cli("EXISTS", KEY) == 0  # released on exit


HOLDER = textwrap.dedent("""
    import sys, trio
    from registry.drivers.redis import RedisClient, RedisOptions
    from registry.storage.redis_lock import open_redis_lock
    async def main():
        client = RedisClient(RedisOptions("127.0.0.1", int(sys.argv[1])))
        async with open_redis_lock(client, sys.argv[2], float(sys.argv[3]), {"who": "child"}):
            print("held", flush=True)
            await trio.sleep_forever()
    trio.run(main)
""")


@contextmanager
def holder_process(server: RedisServer, ttl: float) -> Iterator[subprocess.Popen[bytes]]:
    """A separate process holding KEY (HOLDER), killed and reaped on exit."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(server.port), KEY, str(ttl)],
        stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()


async def test_a_killed_holders_lock_expires(redis_server):
    ttl = 1.0
    with holder_process(redis_server, ttl) as proc:
        assert proc.stdout is not None
        line = await trio.to_thread.run_sync(proc.stdout.readline)
        assert line == b"held\n"
        await trio.sleep(ttl)  # past one ttl: the living holder has renewed it
        async with clients(redis_server) as (c,):
            with pytest.raises(RedisLockHeld):
                async with open_redis_lock(c, KEY, ttl, {"who": "parent"}):
                    pass
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            for _ in range(int(3 * ttl / 0.05)):  # expires within ttl of its last renewal
                try:
                    async with open_redis_lock(c, KEY, ttl, {"who": "parent"}) as lock:
                        await lock.check()
                        break
                except RedisLockHeld:
                    await trio.sleep(0.05)
            else:
                pytest.fail("the dead holder's lock never expired")


async def test_only_the_owner_renews_and_releases(redis_server):
    async with clients(redis_server, 2) as (a, b):
        async with open_redis_lock(a, KEY, 0.6, {"who": "a"}) as held:
            await trio.sleep(1.5)  # past two ttls: renewed in the background
            assert json.loads(redis_server.cli("GET", KEY))["who"] == "a"
            await held.check()
            # The key is lost (an operator's DEL, an eviction) and b takes it.
            redis_server.cli("DEL", KEY)
            async with open_redis_lock(b, KEY, 10.0, {"who": "b"}):
                await trio.sleep(0.5)  # a's next renewal finds the key is not its own
                with pytest.raises(LockLost):
                    await held.check()
                await held.release()  # a's release must not delete b's lock
                assert json.loads(redis_server.cli("GET", KEY))["who"] == "b"
        # a's own exit released nothing of b's either; b's exit released its own.
        assert redis_server.cli("EXISTS", KEY) == 0


class ReplyLostClient:
    """A real client whose SET runs in Redis but whose reply never comes back (a slow or
    broken link): the taker is cancelled after Redis made it the owner."""

    def __init__(self, real: RedisClient) -> None:
        self.real = real

    async def execute(self, *args):
        reply = await self.real.execute(*args)
        if args[0] == "SET":
            await trio.sleep_forever()
        return reply


async def test_a_taker_cancelled_after_its_set_ran_releases_the_key(redis_server):
    async with clients(redis_server, 2) as (a, b):
        with trio.move_on_after(1.0) as scope:
            async with open_redis_lock(ReplyLostClient(a), KEY, 600.0, {"who": "a"}):
                pytest.fail("the reply was lost; the lock cannot have been taken")
        assert scope.cancelled_caught
        # Left behind, the key would block b for the whole 10 minute ttl.
        assert redis_server.cli("EXISTS", KEY) == 0
        async with open_redis_lock(b, KEY, 600.0, {"who": "b"}):
            assert json.loads(redis_server.cli("GET", KEY))["who"] == "b"


async def test_gc_lock_takes_redis_then_storage_and_refuses_when_redis_is_down(redis_server):
    driver = MemoryDriver()
    async with clients(redis_server, 2, down_backoff=0) as (a, b):
        async with open_gc_lock(driver, confirm=0, redis=a) as lock:
            assert json.loads(redis_server.cli("GET", GC_LOCK_KEY))["pid"] == os.getpid()
            assert (await read_lock(driver))["owner"] == lock.token  # the storage lock too
            with pytest.raises(LockBusy):
                async with open_gc_lock(driver, confirm=0, redis=b):
                    pass
            await lock.check()
        assert redis_server.cli("EXISTS", GC_LOCK_KEY) == 0
        redis_server.stop()
        with pytest.raises(LockUnavailable):
            async with open_gc_lock(driver, confirm=0, redis=a):
                pass
        assert await read_lock(driver) is None  # no storage lock taken alone


async def test_purge_skips_while_another_replica_holds_the_lock(redis_server):
    driver = MemoryDriver()
    uploads = Uploads(driver, BlobStore(driver))
    async with clients(redis_server, 2, down_backoff=0) as (a, b):
        purger = UploadPurger(driver, uploads, age=3600.0, interval=3600.0, redis=a)
        async with open_redis_lock(b, PURGE_LOCK_KEY, 10.0, {"host": "other"}):
            assert await purger.purge_once() is None and purger.skipped == 1
        assert await purger.purge_once() is not None and purger.skipped == 1
        redis_server.stop()  # Redis down: purge anyway (idempotent), as without Redis
        assert await purger.purge_once() is not None
