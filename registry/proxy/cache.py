"""The pull-through cache: which names are proxied, and manifests and blobs fetched from
their remote into storage (issue 16; registry:3's registry/proxy/ for the behaviour).

One :class:`ProxyCache` per app (worker process), built from the config's remotes; the
HTTP layer (``http/proxied.py``) asks it for every request on a proxied name. It owns:

- one :class:`~.upstream.Upstream` client per remote;
- the in-flight blob fetches of this worker (single-flight: one upstream GET per
  repository and digest at a time; the first GET without a Range streams the bytes while
  they are stored, every other request waits for the verified blob and serves it from
  storage: memory stays one bounded channel per fetch);
- a nursery (the app's lifespan nursery, given by :meth:`start`) where fetches run, so a
  client that disconnects does not abort a fetch others wait for (registry:3 continues
  too); and the ttl expiry loop (``expiry.py``).

Blobs are written through the upload machinery (``Uploads.upload_whole``: temporary data,
hashed while written, published only when the digest verifies): a wrong or truncated body
stores nothing, and the client streaming it never gets its last bytes (the last piece is
held back until the blob is verified), so it can never take a wrong body for a complete
one. Across workers and replicas a blob may be fetched twice, never corrupted (the commit
is content-addressed).

Upstream unreachable, 5xx or 429: a manifest by tag is served from the cache if it holds
the tag (with a ``Warning`` header and a log line), anything not cached answers its
UNKNOWN code (404) when the upstream said 404, else UNAVAILABLE (503) or TOOMANYREQUESTS
(429). Never a 500.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Protocol

import httpx
import trio

from ..config.model import RemoteConfig
from ..digest import Digest, DigestError
from ..errors import ErrorCode, RegistryError, unwrap
from ..storage.manifest_store import Manifest
from ..storage.store import Storage
from .expiry import Expiry
from .upstream import Upstream, UpstreamError, shown_url

log = logging.getLogger("registry.proxy")

BLOB, MANIFEST = "blob", "manifest"  # the metrics' type label (registry:3's)
STORE_CHANNEL = 2  # upstream pieces queued for the storage write (up to 1 MiB each)
CLIENT_CHANNEL = 2  # upstream pieces buffered for the streaming client (up to 1 MiB each,
# upstream.UPSTREAM_READ): with the held-back piece and the storage pump's two units, a
# fetch holds about 4 MiB whatever the blob's size
CLOSE_TIMEOUT = 5.0  # seconds closing the upstream clients may take at shutdown



class CacheMetrics(Protocol):
    """What the cache reports (ops/metrics.py's Metrics has these)."""

    def proxy_served(self, kind: str, hit: bool, size: int) -> None: ...

    def proxy_fetched(self, remote: str, kind: str, size: int, outcome: str) -> None: ...


@dataclass(frozen=True)
class Remote:
    """A configured remote and its client."""

    config: RemoteConfig
    upstream: Upstream

    def upstream_name(self, name: str) -> str:
        """``name`` as the upstream knows it (without the prefix); '' for the prefix itself."""
        prefix = self.config.prefix
        return name[len(prefix) + 1 :] if prefix else name

    @property
    def label(self) -> str:
        """The remote's name in logs and metrics: its prefix, else its URL without any
        ``user:password@`` (the config accepts credentials in the URL)."""
        return self.config.prefix or shown_url(self.config.remoteurl)


@dataclass
class Fetch:
    """One blob fetch in flight: ``ready`` once the size is known (or it failed), ``done``
    when it ended; ``error`` None after success."""

    ready: trio.Event = field(default_factory=trio.Event)
    done: trio.Event = field(default_factory=trio.Event)
    size: int | None = None
    error: RegistryError | None = None
    ok: bool = False
    client: trio.MemorySendChannel[bytes] | None = None


@dataclass(frozen=True)
class BlobAnswer:
    """What to serve for a blob GET/HEAD: ``stream`` (the bytes as they are fetched, of
    ``size``), else serve the local blob (None: it is in storage now). ``size`` alone: a
    HEAD answered from the upstream."""

    size: int | None = None
    stream: AsyncIterator[bytes] | None = None


def upstream_error(exc: UpstreamError, unknown: ErrorCode, detail: object) -> RegistryError:
    """What the client sees for an upstream failure (see the module doc)."""
    if exc.kind == "notfound":
        return RegistryError(unknown, detail=detail)
    if exc.kind == "toomanyrequests":
        headers = {"Retry-After": exc.retry_after} if exc.retry_after else None
        return RegistryError(ErrorCode.TOOMANYREQUESTS, "upstream: too many requests",
                             headers=headers)
    return RegistryError(ErrorCode.UNAVAILABLE, f"upstream: {exc}")


class ProxyCache:
    """See the module doc. ``remotes``: longest prefix first (config/proxy.py)."""

    def __init__(self, storage: Storage, remotes: Sequence[RemoteConfig], *,
                 transport: httpx.AsyncBaseTransport | None = None,
                 metrics: CacheMetrics | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.storage = storage
        self.remotes = tuple(Remote(c, Upstream(c, transport)) for c in remotes)
        # Blob data is deleted on expiry only in a pure mirror: beside local repositories
        # a push could link the digest during the sweep (expiry.py's module doc).
        self.expiry = Expiry(storage, clock=clock,
                             delete_data=any(not c.prefix for c in remotes))
        self.metrics = metrics
        self._inflight: dict[tuple[str, Digest], Fetch] = {}
        self._nursery: trio.Nursery | None = None

    def remote_for(self, name: str) -> Remote | None:
        """The remote whose prefix ``name`` is under (or is), else None: a local name."""
        for r in self.remotes:
            p = r.config.prefix
            if not p or name == p or name.startswith(p + "/"):
                return r
        return None

    async def start(self, nursery: trio.Nursery) -> None:
        """Run in the app's lifespan ``nursery``: fetches, the expiry loop (when any remote
        has a ttl), and closing the upstream clients at shutdown."""
        self._nursery = nursery
        ttls = {r.config.prefix: r.config.ttl for r in self.remotes}
        if any(t is not None for t in ttls.values()):
            await nursery.start(self.expiry.serve)
        nursery.start_soon(self._close_at_shutdown)

    async def _close_at_shutdown(self) -> None:
        try:
            await trio.sleep_forever()
        finally:
            with trio.move_on_after(CLOSE_TIMEOUT) as cs:
                cs.shield = True
                for r in self.remotes:
                    await r.upstream.aclose()

    def _observed(self, remote: Remote, kind: str, repo: str, digest: str, size: int,
                  started: float, outcome: str) -> None:
        """The one log line (and the metrics) of one upstream fetch."""
        seconds = time.perf_counter() - started
        log.log(logging.INFO if outcome == "ok" else logging.WARNING, "upstream fetch remote=%s type=%s repository=%s digest=%s bytes=%d"
                 " duration=%.3fs outcome=%s", remote.label, kind, repo, digest, size, seconds,
                 outcome)
        if self.metrics is not None:
            self.metrics.proxy_fetched(remote.label, kind, size, outcome)

    def _failed(self, remote: Remote, kind: str, e: UpstreamError) -> None:
        """An upstream question (a HEAD) that failed: counted with the fetches."""
        if self.metrics is not None:
            self.metrics.proxy_fetched(remote.label, kind, 0, e.kind)

    def _served(self, kind: str, hit: bool, size: int | None) -> None:
        if self.metrics is not None:
            self.metrics.proxy_served(kind, hit, size or 0)

    # --- manifests -----------------------------------------------------------------------

    async def manifest(self, name: str, reference: str | Digest,
                       accept: str | None) -> tuple[Manifest, bool]:
        """(the manifest, stale): by tag, the digest the upstream has now (HEAD), served
        from storage when held there, else fetched; ``stale`` when the upstream could not
        be asked and the cached tag is served. By digest: storage, else fetched."""
        remote = self._remote(name)
        up_name = remote.upstream_name(name)
        st = self.storage
        if isinstance(reference, Digest):
            if await st.blobs.has_revision(name, reference):
                try:
                    m = await st.manifests.get(name, reference)
                except RegistryError:
                    pass  # the revision link without its bytes: fetch them again
                else:
                    self._served(MANIFEST, True, len(m.body))
                    return m, False
            return await self._fetch_manifest(remote, name, up_name, reference, None, accept), False
        try:
            current = await remote.upstream.head_manifest(up_name, reference)
        except UpstreamError as e:
            self._failed(remote, MANIFEST, e)
            if e.kind == "notfound":
                raise RegistryError(ErrorCode.MANIFEST_UNKNOWN, detail={"tag": reference}) from None
            log.warning("upstream %s unusable for %s:%s (%s); serving the cached tag",
                        remote.label, name, reference, e)
            try:
                m = await st.manifests.get(name, reference)
            except RegistryError as missing:
                if missing.code is ErrorCode.MANIFEST_UNKNOWN:
                    raise upstream_error(e, ErrorCode.MANIFEST_UNKNOWN, {"tag": reference}) from None
                raise
            self._served(MANIFEST, True, len(m.body))
            return m, True
        d = _digest_or_none(current)
        if d is not None and await st.blobs.has_revision(name, d):
            try:
                m = await st.manifests.get(name, d)
            except RegistryError:
                pass
            else:
                if await _tag_target(st, name, reference) != d:
                    await st.tags.tag(name, reference, d)
                self._served(MANIFEST, True, len(m.body))
                return m, False
        return await self._fetch_manifest(remote, name, up_name, d or reference, reference,
                                          accept), False

    async def _fetch_manifest(self, remote: Remote, name: str, up_name: str,
                              ref: str | Digest, tag: str | None, accept: str | None) -> Manifest:
        started = time.perf_counter()
        shown = str(ref)
        try:
            got = await remote.upstream.get_manifest(up_name, str(ref), accept)
        except UpstreamError as e:
            self._observed(remote, MANIFEST, name, shown, 0, started, e.kind)
            detail = {"digest": str(ref)} if isinstance(ref, Digest) else {"tag": ref}
            raise upstream_error(e, ErrorCode.MANIFEST_UNKNOWN, detail) from None
        expected = ref if isinstance(ref, Digest) else _digest_or_none(got.digest)
        algorithm = expected.algorithm if expected is not None else "sha256"
        d = Digest(algorithm, hashlib.new(algorithm, got.body).hexdigest())
        if expected is not None and d != expected:
            self._observed(remote, MANIFEST, name, shown, len(got.body), started,
                           "digest_mismatch")
            raise RegistryError(ErrorCode.UNAVAILABLE, "upstream sent a manifest that does not"
                                " match its digest", {"digest": str(expected)})
        try:
            await self.storage.manifests.put(name, d, got.media_type or None, got.body,
                                             check_references=False)
        except RegistryError as e:
            self._observed(remote, MANIFEST, name, str(d), len(got.body), started, "invalid")
            if e.code in (ErrorCode.MANIFEST_INVALID, ErrorCode.DIGEST_INVALID):
                raise RegistryError(ErrorCode.UNAVAILABLE, "upstream sent a manifest we cannot"
                                    " store", {"digest": str(d)}) from None
            raise
        if tag is not None:
            await self.storage.tags.tag(name, tag, d)
        if remote.config.ttl is not None:
            await self.expiry.add_manifest(name, d, remote.config.ttl)
        self._observed(remote, MANIFEST, name, str(d), len(got.body), started, "ok")
        m = await self.storage.manifests.get(name, d)
        self._served(MANIFEST, False, len(m.body))
        return m

    async def tags(self, name: str) -> list[str]:
        """The upstream's tags (as registry:3), else the cached ones (NAME_UNKNOWN if none)."""
        remote = self._remote(name)
        try:
            return await remote.upstream.tags(remote.upstream_name(name))
        except UpstreamError as e:
            if e.kind == "notfound":
                raise RegistryError(ErrorCode.NAME_UNKNOWN, detail={"name": name}) from None
            log.warning("upstream %s unusable for %s tags (%s); listing cached tags",
                        remote.label, name, e)
        return await self.storage.tags.list(name)

    # --- blobs ---------------------------------------------------------------------------

    async def blob(self, name: str, d: Digest, *, head: bool, ranged: bool) -> BlobAnswer:
        """What to serve for blob ``d`` of proxied ``name`` (see :class:`BlobAnswer`).
        A GET of a blob not held waits for (or leads) the fetch; a HEAD asks the upstream."""
        st = self.storage
        if await st.blobs.is_linked(name, d) and (size := await st.blobs.size(d)) is not None:
            if not head:
                self._served(BLOB, True, size)
            return BlobAnswer()
        remote = self._remote(name)
        up_name = remote.upstream_name(name)
        if head:
            try:
                size = await remote.upstream.head_blob(up_name, str(d))
            except UpstreamError as e:
                self._failed(remote, BLOB, e)
                raise upstream_error(e, ErrorCode.BLOB_UNKNOWN, {"digest": str(d)}) from None
            return BlobAnswer(size=size)
        key = (name, d)
        fetch = self._inflight.get(key)
        if fetch is None:
            fetch = Fetch()
            recv = None
            if not ranged:
                send, recv = trio.open_memory_channel[bytes](CLIENT_CHANNEL)
                fetch.client = send
            self._spawn(self._fetch_blob, remote, name, up_name, d, fetch)  # raises first
            self._inflight[key] = fetch
            if recv is not None:
                relay = Relay(recv, fetch)
                try:
                    await fetch.ready.wait()
                except BaseException:
                    relay.close()
                    raise
                if fetch.error is None and fetch.size is not None:
                    return BlobAnswer(size=fetch.size, stream=relay)
                relay.close()
        await fetch.done.wait()
        if fetch.error is not None:
            raise fetch.error
        return BlobAnswer()

    def _spawn(self, fn: Callable[..., object], *args: object) -> None:
        if self._nursery is None:
            raise RegistryError(ErrorCode.UNAVAILABLE, "the pull-through cache is not running")
        self._nursery.start_soon(fn, *args)  # type: ignore[arg-type]

    async def _fetch_blob(self, remote: Remote, name: str, up_name: str, d: Digest,
                          fetch: Fetch) -> None:
        """Fetch ``d`` into storage, feeding ``fetch.client`` (if any) as it goes; holds the
        last piece back until the blob verified. Never raises: the outcome is in ``fetch``."""
        started = time.perf_counter()
        received = 0
        outcome = "ok"
        held: list[bytes] = []
        try:
            async with remote.upstream.open_blob(up_name, str(d)) as stream:
                fetch.size = stream.size
                if stream.size is None and fetch.client is not None:
                    # No length to announce: the client waits for the verified blob instead.
                    await _close(fetch)
                fetch.ready.set()

                store_send, store_recv = trio.open_memory_channel[bytes](STORE_CHANNEL)

                async def store() -> None:
                    async def body() -> AsyncIterator[bytes]:
                        async with store_recv:
                            async for chunk in store_recv:
                                yield chunk

                    await self.storage.uploads.upload_whole(name, d, body())

                # Receiving, the client's copy and the storage write overlap (a task each),
                # instead of each piece waiting for the previous one's write.
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(store)
                        try:
                            async with aclosing(stream.chunks) as chunks:  # type: ignore[type-var]
                                async for chunk in chunks:
                                    received += len(chunk)
                                    if stream.size is not None and received > stream.size:
                                        raise UpstreamError("digest_mismatch", "upstream sent"
                                                            " more bytes than its Content-Length")
                                    if held:
                                        await _to_client(fetch, held.pop())
                                    held.append(chunk)
                                    await store_send.send(chunk)
                            if stream.size is not None and received != stream.size:
                                raise UpstreamError("unreachable", f"upstream closed after"
                                                    f" {received} of {stream.size} bytes")
                        except BaseException:
                            nursery.cancel_scope.cancel()  # nothing half-received is stored
                            raise
                        store_send.close()  # the end: the store task verifies and commits
                except BaseExceptionGroup as group:
                    raise unwrap(group) from None
            fetch.ok = True
            if held:
                await _to_client(fetch, held.pop())
            if remote.config.ttl is not None:
                await self.expiry.add_blob(name, d, remote.config.ttl)
        except UpstreamError as e:
            outcome = e.kind
            fetch.error = upstream_error(e, ErrorCode.BLOB_UNKNOWN, {"digest": str(d)})
        except RegistryError as e:
            outcome = "digest_mismatch" if e.code is ErrorCode.DIGEST_INVALID else "storage"
            fetch.error = (RegistryError(ErrorCode.UNAVAILABLE, "upstream sent a blob that does"
                                         " not match its digest", {"digest": str(d)})
                           if e.code is ErrorCode.DIGEST_INVALID else e)
        except Exception as e:  # logged; the waiters get UNAVAILABLE, not a 500
            outcome = "error"
            log.exception("blob fetch %s@%s failed", name, d)
            fetch.error = RegistryError(ErrorCode.UNAVAILABLE, f"blob fetch failed: {type(e).__name__}")
        finally:
            self._inflight.pop((name, d), None)
            fetch.ready.set()
            with trio.CancelScope(shield=True):
                await _close(fetch)
            fetch.done.set()
            self._observed(remote, BLOB, name, str(d), received, started, outcome)
            if fetch.ok:
                self._served(BLOB, False, received)

    def _remote(self, name: str) -> Remote:
        remote = self.remote_for(name)
        if remote is None or not remote.upstream_name(name):
            raise RegistryError(ErrorCode.NAME_UNKNOWN, detail={"name": name})
        return remote


async def _to_client(fetch: Fetch, chunk: bytes) -> None:
    """Give ``chunk`` to the streaming client; a client gone stops that, not the fetch."""
    if fetch.client is None:
        return
    try:
        await fetch.client.send(chunk)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        fetch.client = None


async def _close(fetch: Fetch) -> None:
    if fetch.client is not None:
        await fetch.client.aclose()
        fetch.client = None


class FetchAborted(Exception):
    """The blob being streamed failed (upstream gone, wrong bytes): the response must be
    cut short (the connection closed), never completed."""


class Relay:
    """The streaming client's body: the fetch's pieces as they come. Ends with
    FetchAborted unless the fetch verified and stored the blob. ``aclose`` (the app calls
    it whatever happened, also before the first piece) tells the fetch this client is gone,
    so it never waits for a reader that will not come."""

    def __init__(self, recv: trio.MemoryReceiveChannel[bytes], fetch: Fetch) -> None:
        self._recv = recv
        self._fetch = fetch

    def __aiter__(self) -> Relay:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self._recv.receive()
        except trio.EndOfChannel:
            pass
        await self._fetch.done.wait()
        if not self._fetch.ok:
            raise FetchAborted(str(self._fetch.error))
        raise StopAsyncIteration

    def close(self) -> None:
        self._recv.close()

    async def aclose(self) -> None:
        self._recv.close()


async def _tag_target(st: Storage, name: str, tag: str) -> Digest | None:
    try:
        return await st.tags.resolve(name, tag)
    except RegistryError:
        return None


def _digest_or_none(value: str | None) -> Digest | None:
    if not value:
        return None
    try:
        return Digest.parse(value)
    except DigestError:
        return None
