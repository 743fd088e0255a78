"""Online GC racing pushes, deterministically (issue 5, Tests: "pushes interleaved with a
collection at every step boundary").

A driver wrapper counts the storage calls of two actors -- a client pushing (uploads,
mounts, manifest PUTs, through the same storage code the HTTP handlers use) and an online
collection -- and pauses each at a chosen call. Every case runs:

  A. the push until its j-th storage call (j = 0: before it starts),
  B. the collection until its k-th storage call, or until it is about to settle while the
     push is in flight (a push's check-to-write window is shorter than the settle period:
     the one assumption of the protocol, see storage/gc.py),
  C. the rest of the push, then D. the rest of the collection,

for every j and every k (the trio clock is trio.testing's autojump clock: the settle
period and the grace period cost nothing). After each case: everything a client could
pull is intact (every tag resolves, every revision's blobs exist and are linked), every
push that succeeded is pullable, the old garbage nobody touched is gone, the trash is
empty. The client behaves like docker: a blob that "exists" (HEAD) is not uploaded; a
manifest PUT refused with MANIFEST_BLOB_UNKNOWN makes it upload what is missing and retry.
"""

from __future__ import annotations

import contextvars
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio

from registry.digest import Digest
from registry.drivers.memory import MemoryDriver
from registry.errors import ErrorCode, RegistryError
from registry.storage import paths
from registry.storage.gc_online import collect
from registry.storage.gc_report import GCOptions, GCReport
from registry.storage.store import Storage

try:
    from tests import gc_support as s
except ImportError:
    import gc_support as s  # type: ignore[no-redef]

ACTOR: contextvars.ContextVar[str | None] = contextvars.ContextVar("actor", default=None)


class SteppedDriver:
    """Wraps a MemoryDriver; pauses an actor (``ACTOR``) from its n-th call on."""

    name = "inmemory"
    hidden_until_commit = False

    def __init__(self, inner: MemoryDriver) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()
        self.stop: dict[str, int] = {}
        self.paused: dict[str, trio.Event] = {}
        self.go: dict[str, trio.Event] = {}

    def pause(self, actor: str, at: int) -> None:
        self.stop[actor] = at
        self.paused[actor] = trio.Event()
        self.go[actor] = trio.Event()

    def resume(self, actor: str) -> None:
        self.stop.pop(actor, None)
        self.go[actor].set()

    async def hold(self, actor: str) -> None:
        """Pause ``actor`` here until resumed (used at the settle boundary)."""
        self.paused[actor].set()
        await self.go[actor].wait()

    async def _gate(self) -> None:
        actor = ACTOR.get()
        if actor is None:
            return
        n = self.calls[actor]
        self.calls[actor] += 1
        stop = self.stop.get(actor)
        if stop is not None and n >= stop:
            await self.hold(actor)

    async def get_content(self, path: str) -> bytes:
        await self._gate()
        return await self.inner.get_content(path)

    async def put_content(self, path: str, content: bytes, *, durable: bool = True) -> None:
        await self._gate()
        await self.inner.put_content(path, content, durable=durable)

    async def create_exclusive(self, path: str, content: bytes) -> None:
        await self._gate()
        await self.inner.create_exclusive(path, content)

    @asynccontextmanager
    async def reader(self, path: str, offset: int = 0, length: int | None = None) -> Any:
        await self._gate()
        async with self.inner.reader(path, offset, length) as chunks:
            yield chunks

    @asynccontextmanager
    async def writer(self, path: str, append: bool = False) -> Any:
        await self._gate()
        async with self.inner.writer(path, append) as w:
            yield w

    async def stat(self, path: str) -> Any:
        await self._gate()
        return await self.inner.stat(path)

    async def list(self, path: str) -> list[str]:
        await self._gate()
        return await self.inner.list(path)

    async def move(self, src: str, dst: str) -> None:
        await self._gate()
        await self.inner.move(src, dst)

    async def delete(self, path: str) -> None:
        await self._gate()
        await self.inner.delete(path)

    async def walk(self, path: str) -> AsyncIterator[Any]:
        await self._gate()
        async for info in self.inner.walk(path):
            yield info

    async def redirect_url(self, path: str, method: str = "GET") -> str | None:
        return None

    async def aclose(self) -> None:
        return None


# --- the registry before the race, and the pushes ------------------------------------------

BASE, APP1, U1, C1, NEW1 = b"base layer", b"app v1 layer", b"u layer", b"c layer", b"new layer"
G_APP, G_OTHER, G_GONE = b"garbage linked in app", b"garbage linked in other", b"untouched garbage"


@dataclass
class Seeded:
    u_body: bytes  # an old untagged manifest in app
    c_body: bytes  # an old untagged manifest in multi (a child-to-be)


async def seed(storage: Storage) -> Seeded:
    await s.push_image(storage, "app", "v1", [BASE, APP1])
    _, u_body = await s.push_image(storage, "app", None, [U1], b'{"u":1}')
    _, c_body = await s.push_image(storage, "multi", None, [C1], b'{"c":1}')
    await s.push_blob(storage, "app", G_APP)
    await s.push_blob(storage, "other", G_OTHER)
    await s.push_blob(storage, "app", G_GONE)
    return Seeded(u_body, c_body)


_SEEDED: list[tuple[dict[str, tuple[bytes, float]], Seeded]] = []


async def seeded_registry() -> tuple[MemoryDriver, Seeded]:
    """A fresh copy of the seeded registry, everything in it two hours old."""
    if not _SEEDED:
        inner = MemoryDriver()
        seeded = await seed(Storage(inner))
        s.age_everything(inner, 2 * s.HOUR)
        _SEEDED.append((dict(inner._files), seeded))
    files, seeded = _SEEDED[0]
    inner = MemoryDriver()
    inner._files = dict(files)
    return inner, seeded


class Client:
    """A docker-like client on the storage layer."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.bodies: dict[str, tuple[bytes, str]] = {}  # child manifests it can re-push

    async def ensure_blob(self, name: str, data: bytes) -> None:
        try:
            await self.storage.blobs.stat_in_repo(name, s.dg(data))  # HEAD: exists?
        except RegistryError:
            await s.push_blob(self.storage, name, data)

    async def mount_or_upload(self, name: str, data: bytes, source: str) -> None:
        if not await self.storage.uploads.mount(name, s.dg(data), source):
            await s.push_blob(self.storage, name, data)

    async def put_manifest(
        self, name: str, ref: str | None, body: bytes, media_type: str, blobs: list[bytes]
    ) -> Digest:
        """PUT, and on MANIFEST_BLOB_UNKNOWN upload what is missing and try again."""
        by_digest = {str(s.dg(b)): b for b in blobs}
        for _ in range(4):
            try:
                d, _ = await self.storage.manifests.put(
                    name, ref if ref else s.dg(body), media_type, body
                )
                return d
            except RegistryError as err:
                missing = [
                    detail["digest"]
                    for code, _, detail in err.entries
                    if code is ErrorCode.MANIFEST_BLOB_UNKNOWN
                ]
                if not missing:
                    raise
                for m in missing:
                    if m in self.bodies:  # a child manifest: push it (and its blobs) again
                        child, child_type = self.bodies[m]
                        await self.put_manifest(name, None, child, child_type, blobs)
                    else:
                        await s.push_blob(self.storage, name, by_digest[m])
        raise AssertionError("push kept failing")

    async def push_image(
        self, name: str, tag: str, cfg: bytes, layers: list[bytes]
    ) -> tuple[str, str, bytes]:
        """docker push of an image: HEAD/upload each blob, then PUT the manifest by tag."""
        for b in [cfg, *layers]:
            await self.ensure_blob(name, b)
        body = s.image_manifest(cfg, layers)
        await self.put_manifest(name, tag, body, s.OCI_MANIFEST, [cfg, *layers])
        return (name, tag, body)


@dataclass
class Push:
    """A scenario: run(client) pushes; ``expect`` is (repo, tag, body) that must pull."""

    name: str
    run: Callable[[Client, Seeded], Awaitable[list[tuple[str, str, bytes]]]]
    delete_untagged: bool = False
    pushed: list[tuple[str, str, bytes]] = field(default_factory=list)

    def gc_options(self) -> GCOptions:
        """The online collection every interleaving runs against this scenario."""
        return GCOptions(
            online=True,
            grace_period=s.HOUR,
            settle=60,
            delete_untagged=self.delete_untagged,
            concurrency=1,
        )


async def reuse_linked(c: Client, seeded: Seeded) -> list[tuple[str, str, bytes]]:
    """docker push of an image whose layers 'already exist' in the repo (no upload)."""
    return [await c.push_image("app", "v2", b'{"v":2}', [BASE, G_APP])]


async def reupload(c: Client, seeded: Seeded) -> list[tuple[str, str, bytes]]:
    """An upload of a blob that exists globally (linked only elsewhere) into a new repo."""
    return [await c.push_image("app2", "v1", b'{"app2":1}', [G_OTHER, NEW1])]


async def mount(c: Client, seeded: Seeded) -> list[tuple[str, str, bytes]]:
    """A cross-repository mount of an old unreferenced blob, then a manifest."""
    cfg = b'{"app3":1}'
    await c.mount_or_upload("app3", G_APP, "app")
    await c.mount_or_upload("app3", BASE, "app")
    await c.ensure_blob("app3", cfg)
    body = s.image_manifest(cfg, [BASE, G_APP])
    await c.put_manifest("app3", "v1", body, s.OCI_MANIFEST, [cfg, BASE, G_APP])
    return [("app3", "v1", body)]


async def retag_untagged(c: Client, seeded: Seeded) -> list[tuple[str, str, bytes]]:
    """Tag an old untagged manifest (PUT of its bytes by tag) while GC deletes untagged."""
    await c.put_manifest("app", "u", seeded.u_body, s.OCI_MANIFEST, [b'{"u":1}', U1])
    return [("app", "u", seeded.u_body)]


async def index_over_old_child(c: Client, seeded: Seeded) -> list[tuple[str, str, bytes]]:
    """A multi-arch push: a new child by digest, then an index over it and an old child."""
    cfg = b'{"n":1}'
    for b in [cfg, NEW1]:
        await c.ensure_blob("multi", b)
    child = s.image_manifest(cfg, [NEW1])
    c.bodies[str(s.dg(child))] = (child, s.OCI_MANIFEST)
    c.bodies[str(s.dg(seeded.c_body))] = (seeded.c_body, s.OCI_MANIFEST)
    await c.put_manifest("multi", None, child, s.OCI_MANIFEST, [cfg, NEW1])
    index = s.index_manifest([seeded.c_body, child])
    await c.put_manifest("multi", "v1", index, s.OCI_INDEX, [cfg, NEW1, b'{"c":1}', C1])
    return [("multi", "v1", index)]


SCENARIOS = [
    Push("reuse-linked", reuse_linked),
    Push("reupload", reupload),
    Push("mount", mount),
    Push("retag-untagged", retag_untagged, delete_untagged=True),
    Push("index-over-old-child", index_over_old_child, delete_untagged=True),
]


# --- the harness ---------------------------------------------------------------------------


@dataclass
class Outcome:
    gc_calls: int
    push_calls: int
    settle_at: int | None  # the gc call count when it reached the settle boundary
    report: GCReport | None


async def run_case(scenario: Push, j: int | None, k: int | None) -> Outcome:
    """One interleaving; ``None`` means "never pause"."""
    trio._core._run._r.seed(0)
    inner, seeded = await seeded_registry()
    driver = SteppedDriver(inner)
    storage = Storage(driver)  # what the pushing server process sees
    options = scenario.gc_options()
    push_done, gc_done = trio.Event(), trio.Event()
    result: dict[str, Any] = {"settle_at": None}
    driver.pause("push", j if j is not None else 10**9)
    driver.pause("gc", k if k is not None else 10**9)

    async def push() -> None:
        ACTOR.set("push")
        try:
            result["pushed"] = await scenario.run(Client(storage), seeded)
        finally:
            push_done.set()

    async def hook(step: str) -> None:
        if step == "settle":
            result["settle_at"] = driver.calls["gc"]
            in_flight = driver.calls["push"] > 0 and not push_done.is_set()
            if in_flight and "gc" in driver.stop:
                await driver.hold("gc")

    async def gc() -> None:
        ACTOR.set("gc")
        try:
            result["report"] = await collect(driver, options, hook=hook)
        finally:
            gc_done.set()

    async def first(*events: trio.Event) -> None:
        async with trio.open_nursery() as n:
            for ev in events:
                n.start_soon(_wait_then_cancel, ev, n.cancel_scope)

    # No virtual deadline here: uploads hash in a worker thread, and the autojump clock
    # would jump to any deadline while we wait for it. The phases never overlap, so the
    # only sleep (the settle period) runs while nothing else does.
    async with trio.open_nursery() as nursery:
        nursery.start_soon(push)
        await first(driver.paused["push"], push_done)  # A
        nursery.start_soon(gc)
        await first(driver.paused["gc"], gc_done)  # B
        driver.resume("push")  # C
        await push_done.wait()
        driver.resume("gc")  # D
        await gc_done.wait()

    await check(inner, storage, result["pushed"])
    return Outcome(driver.calls["gc"], driver.calls["push"], result["settle_at"], result["report"])


async def check(
    inner: MemoryDriver, storage: Storage, pushed: list[tuple[str, str, bytes]]
) -> None:
    # Everything a client can pull is whole, and every push that succeeded pulls.
    assert await s.problems(storage) == []
    for repo, tag, body in pushed:
        got = await storage.manifests.get(repo, tag)
        assert got.body == body, (repo, tag)
    # Old garbage nobody touched is gone; nothing is left in the trash.
    assert s.dg(G_GONE) not in s.blob_keys(inner)
    assert not any(k.startswith(paths.GC + "/") for k in inner._files)


async def _wait_then_cancel(ev: trio.Event, scope: trio.CancelScope) -> None:
    await ev.wait()
    scope.cancel()


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda p: p.name)
async def test_push_interleaved_with_online_gc_at_every_step(scenario, autojump_clock):
    free = await run_case(scenario, None, None)  # no pauses: how many calls each makes
    push_calls, gc_calls = free.push_calls, free.gc_calls
    assert free.settle_at is not None and push_calls > 3 and gc_calls > 20
    cases = 0
    for j in range(push_calls + 1):
        # with the push in flight, the collection cannot pass its settle point: pause
        # points past it are the same case
        k_max = gc_calls if j == 0 else free.settle_at
        for k in range(k_max + 1):
            try:
                await run_case(scenario, j, k)
            except BaseException as exc:
                exc.add_note(f"push paused at call {j}, collection at call {k}")
                raise
            cases += 1
    assert cases > push_calls * 10
    print(f"{scenario.name}: {cases} interleavings ({push_calls} push calls, {gc_calls} gc calls)")


async def test_garbage_is_collected_when_nobody_pushes(autojump_clock):
    outcome = await run_case(Push("nothing", _nothing), None, None)
    report = outcome.report
    assert report is not None
    gone = {d for d, _ in report.blobs_deleted}
    assert {str(s.dg(x)) for x in (G_APP, G_OTHER, G_GONE)} <= gone
    assert str(s.dg(BASE)) not in gone


async def test_delete_untagged_collects_old_untagged_when_nobody_pushes(autojump_clock):
    scenario = Push("nothing", _nothing, delete_untagged=True)
    outcome = await run_case(scenario, None, None)
    report = outcome.report
    assert report is not None
    assert [repo for repo, _ in report.manifests_deleted] == ["app", "multi"]


async def _nothing(c: Client, seeded: Seeded) -> list[tuple[str, str, bytes]]:
    return []


# --- many switches: random turns ----------------------------------------------------------


class TurnDriver(SteppedDriver):
    """The two actors take turns: at each storage call, the one holding the turn hands it
    to the other with probability ``p`` (seeded), so a push and a collection interleave at
    many points in one run. A collection about to settle while the push is in flight lets
    the push finish first (the protocol's one assumption)."""

    def __init__(self, inner: MemoryDriver, rng: random.Random, p: float) -> None:
        super().__init__(inner)
        self.rng, self.p = rng, p
        self.turn = "push"
        self.done: set[str] = set()
        self.frozen = False  # no hand-overs while the collection waits at settle
        self._changed = trio.Event()

    def give(self, actor: str) -> None:
        self.turn = actor
        self._changed.set()
        self._changed = trio.Event()

    def finish(self, actor: str) -> None:
        self.done.add(actor)
        if self.turn == actor:
            self.give("gc" if actor == "push" else "push")

    async def _gate(self) -> None:
        me = ACTOR.get()
        if me is None:
            return
        self.calls[me] += 1
        other = "gc" if me == "push" else "push"
        free = self.turn == me and other not in self.done and not self.frozen
        if free and self.rng.random() < self.p:
            self.give(other)
        while self.turn != me and other not in self.done:
            await self._changed.wait()


async def run_turns(scenario: Push, seed: int, p: float) -> int:
    """One randomly interleaved run; returns how many times the turn changed hands."""
    trio._core._run._r.seed(seed)
    inner, seeded = await seeded_registry()
    driver = TurnDriver(inner, random.Random(seed), p)
    storage = Storage(driver)
    options = scenario.gc_options()
    push_done = trio.Event()
    result: dict[str, Any] = {}
    switches = 0
    give = driver.give

    def counting_give(actor: str) -> None:
        nonlocal switches
        switches += 1
        give(actor)

    driver.give = counting_give  # type: ignore[method-assign]

    async def push() -> None:
        ACTOR.set("push")
        try:
            result["pushed"] = await scenario.run(Client(storage), seeded)
        finally:
            push_done.set()
            driver.finish("push")

    async def hook(step: str) -> None:
        if step == "settle" and driver.calls["push"] > 0 and not push_done.is_set():
            driver.frozen = True
            driver.give("push")
            await push_done.wait()

    async def gc() -> None:
        ACTOR.set("gc")
        try:
            await collect(driver, options, hook=hook)
        finally:
            driver.finish("gc")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(push)
        nursery.start_soon(gc)
    await check(inner, storage, result["pushed"])
    return switches


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda p: p.name)
async def test_push_and_online_gc_in_random_turns(scenario, autojump_clock):
    switched = 0
    for seed in range(200):
        p = (0.05, 0.2, 0.5)[seed % 3]
        try:
            switched += await run_turns(scenario, seed, p)
        except BaseException as exc:
            exc.add_note(f"seed {seed}, p {p}")
            raise
    assert switched > 1000  # they really interleaved
