"""The client of one upstream registry: httpx on trio, its auth, and what its answers mean.

One :class:`Upstream` per remote per worker process, owning one ``httpx.AsyncClient`` (a
bounded connection pool, deadlines on connect and on every read). Auth as registry:3's
proxy does it (its internal/client/auth): anonymous first; on a 401 with
``WWW-Authenticate: Basic`` retry with the configured credentials; with ``Bearer
realm=..,service=..,scope=..`` GET the realm with ``service`` and the scope
``repository:<upstream name>:pull`` (with basic credentials when configured), take
``token`` or ``access_token``, keep it per scope until ``expires_in`` (default 60 s, the
token spec's) runs out, and fetch a new one on the next 401. Credentials and tokens are
never logged.

Errors are :class:`UpstreamError` with a ``kind`` (the metric label): ``unreachable``
(connect/read failure or deadline), ``status`` (5xx or another unexpected answer),
``toomanyrequests`` (429), ``unauthorized`` (401/403 after the auth flow), ``notfound``.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import aclosing, asynccontextmanager, contextmanager
from dataclasses import dataclass

import httpcore
import httpx
import trio

from ..config.model import RemoteConfig
from . import blobget

log = logging.getLogger("registry.proxy")

CONNECT_TIMEOUT = 10.0  # seconds to open a connection to the upstream
READ_TIMEOUT = 60.0  # seconds one read from the upstream may stall (blobs: per chunk)
POOL_TIMEOUT = 30.0  # seconds a request waits for a free pooled connection
# seconds a whole small exchange (manifest, HEAD, token, tags page) may take, auth included:
# a client (dockerd) gives up after about a minute, and a stale cached tag beats a hang
REQUEST_DEADLINE = 45.0
MAX_CONNECTIONS = 32  # per remote per worker: 16 cold pullers' blobs in parallel and more
MAX_KEEPALIVE = 16  # idle connections kept per remote per worker
TOKEN_DEFAULT_EXPIRY = 60.0  # seconds: the token spec's default for a missing expires_in
TOKEN_EARLY = 5.0  # seconds: a token this close to expiry is fetched again (clock skew)
MAX_TOKEN_BYTES = 1 << 20  # a token answer larger than this is not a token answer
# tokens kept (one per repository scope): clients choose the names, so without a bound
# every name ever asked for would stay in memory; past it expired and then the soonest
# expiring tokens are dropped (a dropped token is fetched again on the next 401)
MAX_TOKENS = 1024
MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # as pushes (storage.manifests.MAX_MANIFEST_BYTES)
MAX_TAG_PAGES = 100  # Link pages followed when listing an upstream's tags
# bytes of tags pages read in all for one listing: ~500,000 tags of 32 characters, more
# than any real repository has; past it the listing fails (the cached tags are served)
MAX_TAGS_BYTES = 16 * 1024 * 1024
# Bytes per socket read from an upstream. httpcore reads 64 KiB at a time; every piece then
# costs its way down the pipeline (h11, the client's channel, the response, the storage
# pump), and a cold 256 MiB pull spent 3x the CPU of 1 MiB reads (1.6 s vs 0.54 s here).
UPSTREAM_READ = 1024 * 1024
MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')


BLOB_HEADERS = {"user-agent": "registry-proxy", "accept-encoding": "identity"}


def shown_url(url: str) -> str:
    """``url`` as logs and metrics may show it: without its userinfo (a password)."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


class UpstreamError(Exception):
    """The upstream did not give what was asked; ``kind`` says why (see the module doc)."""

    def __init__(self, kind: str, message: str, retry_after: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.retry_after = retry_after


@dataclass(frozen=True)
class ManifestAnswer:
    body: bytes
    media_type: str
    digest: str | None  # Docker-Content-Digest, when the upstream sent it


@dataclass(frozen=True)
class BlobStream:
    size: int | None  # Content-Length; None if the upstream did not say
    chunks: AsyncIterator[bytes]


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """(scheme lower-cased, params) of a ``WWW-Authenticate`` value (the first challenge)."""
    scheme, _, rest = header.strip().partition(" ")
    params = {m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
              for m in _PARAM.finditer(rest)}
    return scheme.lower(), params


@contextmanager
def _deadline(what: str) -> Iterator[None]:
    """REQUEST_DEADLINE for the body; past it, UpstreamError ``unreachable``."""
    try:
        with trio.fail_after(REQUEST_DEADLINE):
            yield
    except trio.TooSlowError:
        raise UpstreamError("unreachable", f"{what}: no answer in {REQUEST_DEADLINE:.0f}s") from None


def _tune_httpcore() -> None:
    """Raise httpcore's per-read size to UPSTREAM_READ (a class attribute it reads on every
    read; process-wide, which only makes other clients' large bodies cheaper too). A
    httpcore without it is left alone."""
    cls = getattr(getattr(httpcore, "_async", None), "http11", None)
    conn = getattr(cls, "AsyncHTTP11Connection", None)
    if conn is not None and getattr(conn, "READ_NUM_BYTES", UPSTREAM_READ) < UPSTREAM_READ:
        conn.READ_NUM_BYTES = UPSTREAM_READ


def _basic_header(username: str | None, password: str | None) -> str:
    pair = f"{username or ''}:{password or ''}".encode()
    return "Basic " + base64.b64encode(pair).decode("ascii")


def _kind_of(status: int) -> str:
    if status == 404:
        return "notfound"
    if status == 429:
        return "toomanyrequests"
    if status in (401, 403):
        return "unauthorized"
    return "status"


class Upstream:
    """One remote's client (see the module doc). ``aclose`` closes its pool."""

    def __init__(self, remote: RemoteConfig, transport: httpx.AsyncBaseTransport | None = None) -> None:
        _tune_httpcore()
        self.remote = remote
        self.url = remote.remoteurl
        self._basic = (remote.username, remote.password) if remote.username else None
        self._client = httpx.AsyncClient(
            base_url=self.url,
            timeout=httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT, pool=POOL_TIMEOUT),
            limits=httpx.Limits(max_connections=MAX_CONNECTIONS,
                                max_keepalive_connections=MAX_KEEPALIVE),
            follow_redirects=True,  # Docker Hub sends blobs from a CDN (auth is not forwarded)
            transport=transport,
            headers=BLOB_HEADERS,
        )
        self._tokens: dict[str, tuple[str, float]] = {}  # scope -> (token, expires at)
        self._challenge: tuple[str, dict[str, str]] | None = None
        self._token_locks: dict[str, trio.Lock] = {}
        # httpx honours HTTP(S)_PROXY; blobget speaks to the upstream only directly, so with
        # a proxy configured (or a transport injected) blob bodies stay on httpx
        self._direct = transport is None and not urllib.request.getproxies()
        # httpx's own context: the same CA rules (SSL_CERT_FILE, ...) as every other request
        self._ssl = httpx.create_ssl_context() if self.url.startswith("https") else None
        self._blob_slots = trio.Semaphore(MAX_CONNECTIONS)  # blob connections open at once

    async def aclose(self) -> None:
        await self._client.aclose()

    def _basic_pair(self) -> tuple[str, str]:
        return self.remote.username or "", self.remote.password or ""

    # --- auth ----------------------------------------------------------------------------

    def _auth_header(self, scope: str) -> dict[str, str]:
        token = self._tokens.get(scope)
        if token is not None and token[1] > time.monotonic():
            return {"authorization": f"Bearer {token[0]}"}
        if self._challenge is not None and self._challenge[0] == "basic" and self._basic:
            return {"authorization": _basic_header(*self._basic)}
        return {}

    async def _fetch_token(self, scope: str, params: Mapping[str, str]) -> None:
        """Get a token for ``scope`` from the challenge's realm (one fetch per scope at a
        time: concurrent requests wait for it instead of stampeding the token server)."""
        lock = self._token_locks.setdefault(scope, trio.Lock())
        try:
            async with lock:
                await self._fetch_token_locked(scope, params)
        finally:
            if not lock.locked() and self._token_locks.get(scope) is lock:
                del self._token_locks[scope]  # no one waits: one lock per name asked is a leak

    def _keep_token(self, scope: str, token: str, expires_at: float) -> None:
        """Keep ``token`` for ``scope``, at most MAX_TOKENS in all (see the constant)."""
        self._tokens[scope] = (token, expires_at)
        if len(self._tokens) <= MAX_TOKENS:
            return
        now = time.monotonic()
        for key in [k for k, (_, at) in self._tokens.items() if at <= now]:
            del self._tokens[key]
        while len(self._tokens) > MAX_TOKENS:
            del self._tokens[min(self._tokens, key=lambda k: self._tokens[k][1])]

    async def _fetch_token_locked(self, scope: str, params: Mapping[str, str]) -> None:
        """The body of :meth:`_fetch_token`, under its scope's lock."""
        cached = self._tokens.get(scope)
        if cached is not None and cached[1] > time.monotonic() + TOKEN_EARLY:
            return
        realm = params.get("realm")
        if not realm:
            raise UpstreamError("unauthorized", "bearer challenge without a realm")
        query = {"scope": scope}
        if params.get("service"):
            query["service"] = params["service"]
        auth = httpx.BasicAuth(*self._basic_pair()) if self._basic else None
        try:
            # streamed and read up to MAX_TOKEN_BYTES: the realm is the upstream's word
            req = self._client.build_request("GET", realm, params=query)
            r = await self._client.send(req, auth=auth, stream=True)
        except httpx.HTTPError as e:
            raise UpstreamError("unreachable", f"token server: {type(e).__name__}") from None
        if r.status_code != 200:
            await r.aclose()
            raise UpstreamError(_kind_of(r.status_code) if r.status_code != 404 else "unauthorized",
                                f"token server answered {r.status_code}")
        body = await _read_capped(r, MAX_TOKEN_BYTES, "token server", "unauthorized")
        try:
            doc = json.loads(body)
            token = doc.get("token") or doc.get("access_token")
            expires = float(doc.get("expires_in") or TOKEN_DEFAULT_EXPIRY)
        except (ValueError, AttributeError, TypeError):
            raise UpstreamError("unauthorized", "token server sent no token") from None
        if not isinstance(token, str) or not token:
            raise UpstreamError("unauthorized", "token server sent no token")
        self._keep_token(scope, token, time.monotonic() + max(expires - TOKEN_EARLY, 1.0))

    async def _send(self, method: str, path: str, repo: str,
                    headers: Mapping[str, str] | None = None) -> httpx.Response:
        """Send a request for ``repo``'s ``path`` with the auth flow; the streamed response
        (the caller closes it). Raises UpstreamError for transport errors only."""
        scope = f"repository:{repo}:pull"
        for attempt in range(2):
            req = self._client.build_request(method, path, headers={**(headers or {}),
                                                                    **self._auth_header(scope)})
            try:
                resp = await self._client.send(req, stream=True)
            except httpx.HTTPError as e:
                raise UpstreamError("unreachable", f"{method} {path}: {type(e).__name__}") from None
            if resp.status_code != 401 or attempt:
                return resp
            await resp.aclose()
            await self._log_in(scope, resp.headers.get("www-authenticate", ""), f"{method} {path}")
        raise AssertionError("unreachable")

    async def _log_in(self, scope: str, www_authenticate: str, what: str) -> None:
        """After a 401: take its challenge and get what the next attempt needs (a token for
        ``scope``, or basic credentials); UpstreamError when there is no way to log in."""
        challenge = parse_challenge(www_authenticate)
        self._challenge = challenge
        self._tokens.pop(scope, None)  # refreshed on 401
        if challenge[0] == "bearer":
            await self._fetch_token(scope, challenge[1])
        elif challenge[0] != "basic" or not self._basic:
            raise UpstreamError("unauthorized", f"{what}: 401 with no way to log in")

    @staticmethod
    async def _fail(resp: httpx.Response, what: str) -> UpstreamError:
        await resp.aclose()
        return UpstreamError(_kind_of(resp.status_code), f"{what}: upstream answered"
                             f" {resp.status_code}", resp.headers.get("retry-after"))

    # --- what the cache asks -------------------------------------------------------------

    async def head_manifest(self, repo: str, reference: str) -> str | None:
        """The digest the upstream's manifest ``reference`` has now (Docker-Content-Digest;
        None if it did not say)."""
        with _deadline("manifest HEAD"):
            return await self._head_manifest(repo, reference)

    async def _head_manifest(self, repo: str, reference: str) -> str | None:
        resp = await self._send("HEAD", f"/v2/{repo}/manifests/{reference}", repo,
                                {"accept": ", ".join(MANIFEST_TYPES)})
        if resp.status_code != 200:
            raise await self._fail(resp, "manifest HEAD")
        await resp.aclose()
        return resp.headers.get("docker-content-digest")

    async def get_manifest(self, repo: str, reference: str, accept: str | None) -> ManifestAnswer:
        """The manifest's bytes (at most MAX_MANIFEST_BYTES) and media type; Accept is the
        client's types plus every type we store."""
        with _deadline("manifest GET"):
            return await self._get_manifest(repo, reference, accept)

    async def _get_manifest(self, repo: str, reference: str, accept: str | None) -> ManifestAnswer:
        types = [t.strip() for t in (accept or "").split(",") if t.strip()]
        types += [t for t in MANIFEST_TYPES if t not in types]
        resp = await self._send("GET", f"/v2/{repo}/manifests/{reference}", repo,
                                {"accept": ", ".join(types)})
        if resp.status_code != 200:
            raise await self._fail(resp, "manifest GET")
        try:
            body = bytearray()
            async for chunk in resp.aiter_raw():
                body += chunk
                if len(body) > MAX_MANIFEST_BYTES:
                    raise UpstreamError("status", "manifest GET: larger than 4 MiB")
        except httpx.HTTPError as e:
            raise UpstreamError("unreachable", f"manifest GET: {type(e).__name__}") from None
        finally:
            await resp.aclose()
        ctype = resp.headers.get("content-type", "").split(";")[0].strip()
        return ManifestAnswer(bytes(body), ctype, resp.headers.get("docker-content-digest"))

    async def head_blob(self, repo: str, digest: str) -> int | None:
        """The blob's size per the upstream (None if it sent no Content-Length)."""
        with _deadline("blob HEAD"):
            return await self._head_blob(repo, digest)

    async def _head_blob(self, repo: str, digest: str) -> int | None:
        resp = await self._send("HEAD", f"/v2/{repo}/blobs/{digest}", repo)
        if resp.status_code != 200:
            raise await self._fail(resp, "blob HEAD")
        await resp.aclose()
        length = resp.headers.get("content-length")
        return int(length) if length and length.isdigit() else None

    @asynccontextmanager
    async def open_blob(self, repo: str, digest: str) -> AsyncIterator[BlobStream]:
        """The blob's bytes as they arrive, in pieces of up to 1 MiB; transport errors while
        reading raise UpstreamError ``unreachable``. Without an injected transport or an
        HTTP(S)_PROXY the body bypasses httpx (``blobget.py``: a connection per blob, at most
        MAX_CONNECTIONS at once, the body read straight into large buffers)."""
        if not self._direct:
            async with self._open_blob_httpx(repo, digest) as stream:
                yield stream
            return
        async with self._blob_slots, self._open_blob_direct(repo, digest) as stream:
            yield stream

    @asynccontextmanager
    async def _open_blob_direct(self, repo: str, digest: str) -> AsyncIterator[BlobStream]:
        scope = f"repository:{repo}:pull"
        url = self.url.rstrip("/") + f"/v2/{repo}/blobs/{digest}"
        what = "blob GET"
        for attempt in range(2):
            headers = {**BLOB_HEADERS, **self._auth_header(scope)}
            try:
                async with blobget.open_get(url, headers, ssl_context=self._ssl,
                                            connect_timeout=CONNECT_TIMEOUT,
                                            read_timeout=READ_TIMEOUT) as resp:
                    if resp.status == 401 and not attempt:
                        challenge = resp.headers.get("www-authenticate", "")
                    elif resp.status != 200:
                        raise UpstreamError(_kind_of(resp.status), f"{what}: upstream answered"
                                            f" {resp.status}", resp.headers.get("retry-after"))
                    else:
                        yield BlobStream(resp.length, _translated(resp.pieces(), what))
                        return
            except blobget.TransportError as e:
                raise UpstreamError("unreachable", f"{what}: {e}") from None
            await self._log_in(scope, challenge, what)
        raise AssertionError("unreachable")

    @asynccontextmanager
    async def _open_blob_httpx(self, repo: str, digest: str) -> AsyncIterator[BlobStream]:
        resp = await self._send("GET", f"/v2/{repo}/blobs/{digest}", repo)
        try:
            if resp.status_code != 200:
                raise await self._fail(resp, "blob GET")
            length = resp.headers.get("content-length")

            async def chunks() -> AsyncIterator[bytes]:
                try:
                    async with aclosing(resp.aiter_raw()) as raw:  # type: ignore[type-var]
                        async for chunk in raw:
                            yield chunk
                except httpx.HTTPError as e:
                    raise UpstreamError("unreachable", f"blob GET: {type(e).__name__}") from None

            yield BlobStream(int(length) if length and length.isdigit() else None, chunks())
        finally:
            with trio.CancelScope(shield=True):
                await resp.aclose()

    async def tags(self, repo: str) -> list[str]:
        """Every tag of ``repo`` upstream (following Link pages, at most MAX_TAG_PAGES)."""
        with _deadline("tags list"):
            return await self._tags(repo)

    async def _tags(self, repo: str) -> list[str]:
        path: str | None = f"/v2/{repo}/tags/list"
        found: list[str] = []
        budget = MAX_TAGS_BYTES
        for _ in range(MAX_TAG_PAGES):
            if path is None:
                break
            resp = await self._send("GET", path, repo)
            if resp.status_code != 200:
                raise await self._fail(resp, "tags list")
            body = await _read_capped(resp, budget, "tags list", "status")
            budget -= len(body)
            try:
                doc = json.loads(body)
                found.extend(t for t in (doc.get("tags") or []) if isinstance(t, str))
            except (ValueError, AttributeError, TypeError):
                raise UpstreamError("status", "tags list: not JSON") from None
            link = resp.headers.get("link", "")
            m = re.match(r"\s*<([^>]+)>", link)
            path = self._same_origin(m.group(1)) if m and 'rel="next"' in link else None
        return sorted(set(found))

    def _same_origin(self, link: str) -> str | None:
        """``link`` (a tags page's next page) if it is on the remote's own scheme, host and
        port, else None (the listing ends there): every request to the remote carries its
        credentials, which another host must never get."""
        base = httpx.URL(self.url)
        try:
            target = httpx.URL(link)
        except (httpx.InvalidURL, ValueError):
            return None
        if not target.is_absolute_url:
            return link  # a path: the client joins it to the remote's URL, as before
        if (target.scheme, target.host, target.port) != (base.scheme, base.host, base.port):
            log.warning("upstream %s: tags page link to another host ignored",
                        shown_url(self.url))
            return None
        return link


async def _read_capped(resp: httpx.Response, limit: int, what: str, kind: str) -> bytes:
    """``resp``'s (decoded) body, closing it; UpstreamError ``kind`` past ``limit`` bytes
    (read no further: an answer may be endless), ``unreachable`` on a transport error."""
    body = bytearray()
    over = False
    try:
        async for chunk in resp.aiter_bytes():
            if over:
                continue
            body += chunk
            if len(body) > limit:
                # Close the connection and let the iteration end by the read error that
                # follows: breaking out would leave httpx's nested generators unfinished.
                over = True
                body.clear()
                await resp.aclose()
    except (httpx.HTTPError, httpx.StreamError) as e:
        if not over:
            raise UpstreamError("unreachable", f"{what}: {type(e).__name__}") from None
    finally:
        with trio.CancelScope(shield=True):
            await resp.aclose()
    if over:
        raise UpstreamError(kind, f"{what}: answer larger than {limit} bytes")
    return bytes(body)


async def _translated(pieces: AsyncIterator[bytearray], what: str) -> AsyncIterator[bytes]:
    """``pieces`` with blobget's TransportError as UpstreamError ``unreachable``."""
    try:
        async with aclosing(pieces) as body:  # type: ignore[type-var]
            async for piece in body:
                yield piece  # type: ignore[misc]  # a bytearray: a buffer like bytes
    except blobget.TransportError as e:
        raise UpstreamError("unreachable", f"{what}: {e}") from None
