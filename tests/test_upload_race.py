"""One writer per upload session, and publishing only bytes that match their digest
(issue 12, item 2: blob poisoning).

Two app instances share one storage root (two workers or replicas), each served over a
real socket. Without a writer lease, a PATCH on one and a PUT on the other append to the
same upload data; the PUT hashes only its own bytes, so mixed bytes were published at
``blobs/.../<digest>/data`` (blobs are global: this poisons every repository). The tests
drive the races in a fixed order (events, not sleeps) and then re-hash every blob in
storage: each must hash to the digest it is stored under.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import trio
from conftest import serve_asgi, start_app
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from oci import digest as sha

from registry.digest import Digest
from registry.drivers.base import Driver, PathNotFound
from registry.drivers.filesystem import FilesystemDriver
from registry.drivers.memory import MemoryDriver
from registry.errors import RegistryError
from registry.http.app import AppOptions, RegistryApp
from registry.storage import paths
from registry.storage.store import Storage

# httpx drops its request-body iterator unexhausted when the server answers (416) before
# reading the whole body; trio then warns when it is garbage collected: the client's doing.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
REPO = "race/app"
KiB = 1024
MiB = 1024 * KiB
TEST_TIMEOUT = 60  # s, a bound so that no schedule can hang the suite
ROUNDS = 4  # repetitions of each race (bounded)
SLOW_BODY_SECONDS = 120.0  # 4 x upload_lease.LEASE_TTL
ANSWERS = {202, 201, 204, 404, 416, 400}  # what a racing request may get (never 500)


async def read_all(driver: Driver, path: str) -> bytes:
    out = bytearray()
    async with driver.reader(path) as chunks:
        async for chunk in chunks:
            out += chunk
    return bytes(out)


async def published(driver: Driver) -> dict[str, bytes]:
    """Every blob in storage: its digest -> its stored bytes."""
    out: dict[str, bytes] = {}
    try:
        infos = [info async for info in driver.walk(paths.BLOBS)]
    except PathNotFound:
        return out
    for info in infos:
        d = paths.digest_from_blob_dir(info.path.rsplit("/", 1)[0])
        assert d is not None and info.path.endswith("/data"), info.path
        out[str(d)] = await read_all(driver, info.path)
    return out


async def assert_every_blob_matches_its_digest(driver: Driver) -> dict[str, bytes]:
    blobs = await published(driver)
    poisoned = [d for d, data in blobs.items() if sha(data) != d]
    assert not poisoned, f"blobs whose bytes do not hash to their digest: {poisoned}"
    return blobs


def assert_answer(r: httpx.Response, allowed: set[int] = ANSWERS) -> None:
    assert r.status_code in allowed, (r.status_code, r.text)
    if r.status_code >= 400:
        assert r.headers["content-type"].startswith("application/json"), r.headers
        assert json.loads(r.content)["errors"], r.text


async def wait_until(predicate: Callable[[], Awaitable[bool]]) -> None:
    """Poll ``predicate`` (every 10 ms) until it holds; the caller bounds the time."""
    while not await predicate():
        await trio.sleep(0.01)


async def exists(driver: Driver, path: str) -> bool:
    try:
        await driver.stat(path)
    except PathNotFound:
        return False
    return True


# --- the filesystem: a PATCH on one instance, a PUT on the other ----------------------------


async def race_patch_against_put(
    a: httpx.AsyncClient, b: httpx.AsyncClient, driver: Driver, rng: random.Random
) -> None:
    """A PATCH (instance a) is open on a session; a PUT ?digest=sha(Y) with body Y starts on
    instance b, sends part of Y, lets the PATCH send its bytes and finish, then ends Y.

    Before the fix both appended to the same file and b published Y mixed with the PATCH's
    bytes under sha(Y). Now the PUT gets 416 and the session holds exactly the PATCH's bytes
    (or, if the PUT's handler only ran after the PATCH ended, it appended after them and
    got 400 DIGEST_INVALID): never a 201.
    """
    r = await a.post(f"/v2/{REPO}/blobs/uploads/")
    assert r.status_code == 202
    location = urlsplit(r.headers["location"]).path  # relative: each client keeps its instance
    upload_id = r.headers["docker-upload-uuid"]
    x = os.urandom(rng.randrange(1, 700 * KiB))
    y_head = os.urandom(rng.randrange(520 * KiB, 700 * KiB))  # > the 512 KiB write unit
    y_tail = os.urandom(rng.randrange(1, 300 * KiB))
    go_a, a_answered = trio.Event(), trio.Event()
    answers: dict[str, httpx.Response] = {}

    async def a_body() -> AsyncIterator[bytes]:
        yield x[:10]
        await go_a.wait()
        yield x[10:]

    data = paths.upload_data(REPO, upload_id)
    lease = paths.upload_dir(REPO, upload_id) + "/lease"

    async def b_has_written_or_a_holds_the_session() -> bool:
        # b's first 512 KiB are on disk (b opened the data before a writes), or a holds
        # the session's writer lease (b will be refused without reading its body)
        return (await driver.stat(data)).size >= 512 * KiB or await exists(driver, lease)

    async def b_body() -> AsyncIterator[bytes]:
        yield y_head
        await wait_until(b_has_written_or_a_holds_the_session)
        go_a.set()
        await a_answered.wait()
        yield y_tail

    async def patch() -> None:
        try:
            answers["patch"] = await a.patch(location, content=a_body())
        finally:
            a_answered.set()

    async def put() -> None:
        try:
            answers["put"] = await b.put(
                location, params={"digest": sha(y_head + y_tail)}, content=b_body()
            )
        finally:
            go_a.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(patch)
        # the PATCH's handler has opened the session's data before the PUT arrives
        await wait_until(lambda: exists(driver, data))
        nursery.start_soon(put)
    await assert_every_blob_matches_its_digest(driver)
    assert_answer(answers["patch"], {202, 416})
    assert_answer(answers["put"], {201, 400, 416})
    assert answers["patch"].status_code == 202  # it held the session first
    if answers["put"].status_code == 400:
        # (a loaded machine) the PUT reached its handler after the PATCH had finished:
        # it appended Y after x, which is not sha(Y), and the session was cancelled
        assert answers["put"].json()["errors"][0]["code"] == "DIGEST_INVALID"
        return
    busy = answers["put"]  # the usual case: told the session is busy, without writing
    assert busy.status_code == 416
    assert busy.json()["errors"][0]["code"] == "BLOB_UPLOAD_INVALID"
    # the session's size when the 416 was answered (the PATCH may have written some of x)
    first, last = (int(n) for n in busy.headers["range"].split("-"))
    assert first == 0 and last < len(x)
    # the session holds exactly the PATCH's bytes, and finishes with them on either instance
    r = await b.put(location, params={"digest": sha(x)})
    assert r.status_code == 201, r.text


async def test_a_patch_and_a_put_on_two_instances_never_publish_mixed_bytes(nursery, tmp_path):
    root = str(tmp_path / "storage")
    url_a, app_a = await start_app(nursery, root)
    url_b, _ = await start_app(nursery, root)
    rng = random.Random(12)
    with trio.fail_after(TEST_TIMEOUT):
        async with httpx.AsyncClient(base_url=url_a, timeout=30) as a, httpx.AsyncClient(
            base_url=url_b, timeout=30
        ) as b:
            for _ in range(ROUNDS):
                await race_patch_against_put(a, b, app_a.storage.driver, rng)
                await assert_every_blob_matches_its_digest(app_a.storage.driver)


# --- S3: two PUTs on one session, the first held just before it publishes -------------------


class HeldMoves:
    """A real driver whose ``move`` first awaits ``hook(src, dst)``: a test holds a publish at
    that step to run the other instance's request in between (a fixed interleaving)."""

    def __init__(self, inner: Any, hook: Callable[[], Awaitable[None]]) -> None:
        self._inner = inner
        self._hook = hook

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def move(self, src: str, dst: str) -> None:
        await self._hook()
        await self._inner.move(src, dst)


async def first_of(*events: trio.Event) -> None:
    async with trio.open_nursery() as nursery:
        for event in events:

            async def wait(event: trio.Event = event) -> None:
                await event.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(wait)


async def race_two_puts(a: httpx.AsyncClient, b: httpx.AsyncClient, gates: dict[str, Any]) -> None:
    """b's PUT ?digest=sha(P+Y) commits and is held before its move; a's PUT (digest of
    everything: the attacker knows it) runs meanwhile; b's move goes on once a answered or
    is itself about to move. Before the fix, a appended X to the committed data, so b moved
    P+Y+X to sha(P+Y)."""
    r = await a.post(f"/v2/{REPO}/blobs/uploads/")
    location = urlsplit(r.headers["location"]).path
    p, y, x = os.urandom(1000), os.urandom(100 * KiB), os.urandom(100 * KiB)
    r = await a.patch(location, content=p)
    assert r.status_code == 202
    for name in ("b_at_move", "a_at_move", "b_moved", "a_answered"):
        gates[name] = trio.Event()
    answers: dict[str, httpx.Response] = {}

    async def put_b() -> None:
        answers["b"] = await b.put(location, params={"digest": sha(p + y)}, content=y)

    async def put_a() -> None:
        try:
            answers["a"] = await a.put(location, params={"digest": sha(p + y + x)}, content=x)
        finally:
            gates["a_answered"].set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(put_b)
        await gates["b_at_move"].wait()
        nursery.start_soon(put_a)
    return answers  # type: ignore[return-value]


async def test_two_puts_on_two_instances_on_s3_never_publish_mixed_bytes(nursery):
    s3 = pytest.importorskip("s3_support")
    from registry.drivers.s3.driver import S3Driver

    server = await trio.to_thread.run_sync(s3.moto_server)
    params = server.params(await trio.to_thread.run_sync(server.new_bucket))
    gates: dict[str, Any] = {}

    async def hold_b() -> None:
        gates["b_at_move"].set()
        await first_of(gates["a_at_move"], gates["a_answered"])

    async def hold_a() -> None:
        gates["a_at_move"].set()
        await gates["b_moved"].wait()

    class MarkMoved(HeldMoves):
        async def move(self, src: str, dst: str) -> None:
            try:
                await super().move(src, dst)
            finally:
                gates["b_moved"].set()

    drivers = [S3Driver.from_params(params), S3Driver.from_params(params)]
    app_a = RegistryApp(Storage(HeldMoves(drivers[0], hold_a)), AppOptions(delete_enabled=True))
    app_b = RegistryApp(Storage(MarkMoved(drivers[1], hold_b)), AppOptions(delete_enabled=True))
    url_a, url_b = await serve_asgi(nursery, app_a), await serve_asgi(nursery, app_b)
    try:
        with trio.fail_after(TEST_TIMEOUT):
            async with httpx.AsyncClient(base_url=url_a, timeout=30) as a, httpx.AsyncClient(
                base_url=url_b, timeout=30
            ) as b:
                for _ in range(2):
                    answers: Any = await race_two_puts(a, b, gates)
                    await assert_every_blob_matches_its_digest(drivers[0])
                    assert_answer(answers["a"], {416})
                    assert answers["a"].json()["errors"][0]["code"] == "BLOB_UPLOAD_INVALID"
                    assert_answer(answers["b"], {201})
    finally:
        for d in drivers:
            await d.aclose()


# --- publishing checks the stored bytes against the hashed ones -----------------------------


class ForeignAppendOnCommit:
    """A filesystem driver beside a writer that ignores our lease (a reference registry
    replica on the same storage, or a holder paused past its lease): right after an upload
    writer commits, ``extra`` bytes are appended to its file."""

    def __init__(self, inner: Any, extra: bytes) -> None:
        self._inner = inner
        self._extra = extra

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def writer(self, path: str, append: bool = False) -> Any:
        inner, extra = self._inner, self._extra

        class Appended:
            def __init__(self, w: Any) -> None:
                self._w = w

            def __getattr__(self, name: str) -> Any:
                return getattr(self._w, name)

            async def write(self, data: Any, hasher: Any = None) -> None:
                await self._w.write(data, hasher)

            async def commit(self) -> None:
                await self._w.commit()
                if "/_uploads/" in path:

                    def append_extra() -> None:
                        with open(inner.root + path, "ab") as f:
                            f.write(extra)

                    await trio.to_thread.run_sync(append_extra)

        @asynccontextmanager
        async def opened() -> AsyncIterator[Any]:
            async with inner.writer(path, append) as w:
                yield Appended(w)

        return opened()


async def chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


@pytest.mark.usefixtures("resumable_sha256")
async def test_bytes_appended_beside_the_hashed_ones_are_never_published(tmp_path):
    """The PUT resumes the saved hash state and hashes its body: P+Y. Someone else appends J
    after its commit. The stored size (P+Y+J) is not the hashed length: the data is
    re-hashed, does not match, and nothing is published (before: P+Y+J under sha(P+Y))."""
    fs = FilesystemDriver(str(tmp_path / "storage"))
    p, y, j = os.urandom(3000), os.urandom(600 * KiB), b"attacker's bytes"
    storage = Storage(ForeignAppendOnCommit(fs, j))
    up = await storage.uploads.start(REPO)
    await storage.uploads.append(REPO, up.id, chunks(p))
    d = Digest.parse(sha(p + y))
    with pytest.raises(RegistryError) as err:
        await storage.uploads.finish(REPO, up.id, d, chunks(y), start=len(p))
        await assert_every_blob_matches_its_digest(fs)
    assert err.value.code.name == "DIGEST_INVALID"
    assert await published(fs) == {}
    # an honest session with the same content publishes it, and only it
    honest = Storage(fs)
    up = await honest.uploads.start(REPO)
    await honest.uploads.finish(REPO, up.id, d, chunks(p + y))
    assert await assert_every_blob_matches_its_digest(fs) == {str(d): p + y}


# --- the lease: crashed holders, slow clients ------------------------------------------------


async def test_a_crashed_holders_lease_blocks_only_until_it_expires(tmp_path):
    """A lease nobody renews (its holder died) makes requests 416 with the current Range
    until its expiry, then the next request takes it over and writes."""
    fs = FilesystemDriver(str(tmp_path / "storage"))
    storage = Storage(fs)
    up = await storage.uploads.start(REPO)
    await storage.uploads.append(REPO, up.id, chunks(b"12345"))
    lease = paths.upload_dir(REPO, up.id) + "/lease"
    await fs.put_content(lease, json.dumps({"token": "dead", "expires": time.time() + 60}).encode())
    with pytest.raises(RegistryError) as err:
        await storage.uploads.append(REPO, up.id, chunks(b"678"))
    assert err.value.status == 416 and err.value.headers["Range"] == "0-4"
    with pytest.raises(RegistryError) as err:
        await storage.uploads.cancel(REPO, up.id)
    assert err.value.status == 416
    # expired: taken over (once), written, and released
    await fs.put_content(lease, json.dumps({"token": "dead", "expires": time.time() - 1}).encode())
    assert (await storage.uploads.append(REPO, up.id, chunks(b"678"))).size == 8
    assert not await exists(fs, lease)
    d = Digest.parse(sha(b"12345678"))
    assert await storage.uploads.finish(REPO, up.id, d, None) == 8
    await assert_every_blob_matches_its_digest(fs)


async def test_a_slow_upload_keeps_its_lease_and_others_get_416(autojump_clock):
    """A body that trickles for 4 lease lifetimes (SLOW_BODY_SECONDS, virtual time) is renewed the whole time:
    it is stored in full, and a second request meanwhile gets 416 instead of waiting."""
    driver = MemoryDriver()
    storage = Storage(driver)
    up = await storage.uploads.start(REPO)
    piece = b"x" * 1000
    halfway = trio.Event()

    async def slow() -> AsyncIterator[bytes]:
        for i in range(40):
            yield piece
            await trio.sleep(SLOW_BODY_SECONDS / 40)
            if i == 20:
                halfway.set()

    async def second() -> None:
        await halfway.wait()
        with pytest.raises(RegistryError) as err:
            await storage.uploads.append(REPO, up.id, chunks(b"other"))
        assert err.value.status == 416

    async with trio.open_nursery() as nursery:
        nursery.start_soon(second)
        assert (await storage.uploads.append(REPO, up.id, slow())).size == 40 * len(piece)
    d = Digest.parse(sha(piece * 40))
    assert await storage.uploads.finish(REPO, up.id, d, None) == 40 * len(piece)
    await assert_every_blob_matches_its_digest(driver)


# --- any interleaving of PATCH/PUT/DELETE on one session across two instances ---------------

_request = st.tuples(
    st.sampled_from([0, 1]),  # the instance it goes to
    st.sampled_from(["PATCH", "PUT", "DELETE"]),
    st.lists(st.sampled_from([1, 2000, 600 * KiB]), min_size=1, max_size=3),  # body pieces
    st.sampled_from(["own", "all", "none"]),  # a PUT's digest: its body, every body, empty
)


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    requests=st.lists(_request, min_size=2, max_size=4),
    schedule=st.lists(st.integers(0, 3), max_size=12),
)
def test_interleaved_requests_on_one_session_publish_only_matching_blobs(
    tmp_path_factory, requests, schedule
):
    """Requests start at their first turn in ``schedule`` and send one body piece per turn
    (then the rest in order). Whatever the order: answers are only 202/201/204/404/416/400
    with JSON errors, and every published blob hashes to its digest."""
    root = str(tmp_path_factory.mktemp("race"))
    bodies = [[os.urandom(n) for n in pieces] for _, _, pieces, _ in requests]
    everything = b"".join(b"".join(body) for body in bodies)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            urls = [(await start_app(nursery, root))[0] for _ in range(2)]
            clients = [httpx.AsyncClient(base_url=url, timeout=30) for url in urls]
            try:
                with trio.fail_after(TEST_TIMEOUT):
                    await run_schedule(clients, requests, bodies, everything, schedule)
                await assert_every_blob_matches_its_digest(FilesystemDriver(root))
            finally:
                for c in clients:
                    await c.aclose()
            nursery.cancel_scope.cancel()

    trio.run(main)


async def run_schedule(
    clients: list[httpx.AsyncClient],
    requests: list[tuple[int, str, list[int], str]],
    bodies: list[list[bytes]],
    everything: bytes,
    schedule: list[int],
) -> None:
    r = await clients[0].post(f"/v2/{REPO}/blobs/uploads/")
    location = urlsplit(r.headers["location"]).path
    grants = [[trio.Event() for _ in body] for body in bodies]
    sent = [[trio.Event() for _ in body] for body in bodies]
    done = [trio.Event() for _ in bodies]
    answers: dict[int, httpx.Response] = {}
    next_piece = [0] * len(bodies)

    async def body(i: int) -> AsyncIterator[bytes]:
        for k, piece in enumerate(bodies[i]):
            await grants[i][k].wait()
            yield piece
            sent[i][k].set()

    async def send(i: int) -> None:
        instance, method, _, digest_of = requests[i]
        client = clients[instance]
        try:
            if method == "DELETE":
                answers[i] = await client.delete(location)
                return
            params = {}
            if method == "PUT":
                own = b"".join(bodies[i])
                params["digest"] = sha({"own": own, "all": everything, "none": b""}[digest_of])
            answers[i] = await client.request(method, location, params=params, content=body(i))
        finally:
            done[i].set()

    async def step(nursery: trio.Nursery, i: int) -> None:
        """Start request i if it has not started; let it send its next piece."""
        k = next_piece[i]
        if k == 0:
            nursery.start_soon(send, i)
        if k >= len(bodies[i]) or requests[i][1] == "DELETE":
            if requests[i][1] == "DELETE":
                next_piece[i] = len(bodies[i])
                await done[i].wait()
            return
        next_piece[i] += 1
        grants[i][k].set()
        await first_of(sent[i][k], done[i])

    async with trio.open_nursery() as nursery:
        for i in schedule:
            if i < len(requests):
                await step(nursery, i)
        for i in range(len(requests)):
            while next_piece[i] < len(bodies[i]) or (next_piece[i] == 0 and bodies[i]):
                await step(nursery, i)
    for i, (_, method, _, _) in enumerate(requests):
        assert_answer(answers[i])
