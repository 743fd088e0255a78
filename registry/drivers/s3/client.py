"""S3 over httpx on trio: addressing, signing, deadlines, retries, and one-line outage logs.

:class:`S3Client` owns one ``httpx.AsyncClient`` (a bounded connection pool) and turns a
``(method, key, query, headers, body)`` into a signed request against the bucket. It knows
nothing of the registry; :mod:`.api` builds the S3 operations on top of it.

Contracts:

- Every call runs under a deadline (``trio.fail_after``): past it, :class:`DriverTimeout`.
- Idempotent calls are retried with exponential backoff and full jitter on 429/5xx, on
  SlowDown-style error codes and on broken connections; non-idempotent ones only when
  the request cannot have been processed (the connection was never made). After the last
  try the error becomes :class:`~registry.drivers.base.Unavailable`.
- Errors that mean "this bucket does not work" (bad key, missing bucket, S3 unreachable)
  are logged ONCE as one line when the state flips, and once more when it recovers; every
  request in between just raises ``Unavailable``.
- R2 rejects ACL, SSE, ``x-amz-checksum-*`` and aws-chunked headers and
  ``Expect: 100-continue``: nothing here sends them (httpx never sends ``Expect``).

Size: past ~400 lines on purpose: signing, deadlines and retries of one request are one
loop (S3Client.request) that must be read whole; the S3 operations live in api.py.
"""

from __future__ import annotations

import logging
import random
import ssl
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import httpx
import trio

from registry.drivers import base
from registry.drivers.s3 import errors, sigv4, streams

log = logging.getLogger("registry.drivers.s3")

MiB = 1024 * 1024
CALL_TIMEOUT = 60.0  # s, one attempt of a small request (metadata, listing, small PUT)
MIN_BODY_RATE = 1 * MiB  # bytes/s we assume at worst, to size a big PUT's deadline
CONNECT_TIMEOUT = 10.0  # s
READ_TIMEOUT = 60.0  # s between bytes of a response (also bounds a stalled GET stream)
MAX_ATTEMPTS = 6  # 1 try + 5 retries, about 0.1+0.2+0.4+0.8+1.6 s of backoff at most
BACKOFF_BASE = 0.1  # s
BACKOFF_CAP = 5.0  # s
RETRY_AFTER_CAP = 10.0  # s, honour a server's Retry-After up to this
SAME_KEY_WRITE_INTERVAL = 1.0  # s, R2: at most one write per second to one key
OCTET_STREAM = "application/octet-stream"
HASH_IN_THREAD = 256 * 1024  # bytes; hash bigger bodies off the event loop
BODY_PIECE = streams.READ_BYTES  # a bytearray body is sent in copies this big


@dataclass(frozen=True)
class Endpoint:
    """Where the bucket lives and how it is addressed.

    ``host`` includes ``:port`` when it is not the scheme's default. Path-style puts the
    bucket in the path (``/bucket/key``); virtual-host style in the host name.
    """

    scheme: str
    host: str
    bucket: str
    path_style: bool

    def address(self, key: str | None) -> tuple[str, str]:
        """(Host header, raw path) for an object key, or for the bucket when key is None."""
        if self.path_style:
            return self.host, f"/{self.bucket}" + ("" if key is None else f"/{key}")
        return f"{self.bucket}.{self.host}", "/" + ("" if key is None else key)

    def url(self, key: str | None, query: str = "") -> str:
        """The URL to send: the raw path encoded once (as signed), then ``query`` (already
        canonical, :func:`~.sigv4.canonical_query`)."""
        host, raw = self.address(key)
        return f"{self.scheme}://{host}{sigv4.encode_path(raw)}" + (f"?{query}" if query else "")


@dataclass
class RetryPolicy:
    max_attempts: int = MAX_ATTEMPTS
    base: float = BACKOFF_BASE
    cap: float = BACKOFF_CAP
    rng: random.Random = field(default_factory=random.Random)
    # R2 allows one write per second to the same key and answers 429 past it: a retry
    # sooner than that is wasted, so a 429 waits at least this long.
    same_key_floor: float = SAME_KEY_WRITE_INTERVAL

    def delay(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**attempt)], at least 10 ms."""
        return max(0.01, self.rng.uniform(0, min(self.cap, self.base * 2**attempt)))


@dataclass
class S3Response:
    status: int
    headers: httpx.Headers
    body: bytes


# Per socket read for responses read through httpx (httpcore's 64 KiB costs a wakeup per
# 64 KiB); the size streams.READ_BYTES explains (under the malloc mmap threshold).
# Streamed GETs bypass httpx (:mod:`.streams`).
HTTPCORE_READ_BYTES = streams.READ_BYTES


def _tune_httpcore() -> None:
    """Raise httpcore's per-read size for HTTP/1.1 responses (a class attribute, so this
    affects every httpx client in the process; bigger reads only mean fewer wakeups).
    Measured against moto: a streamed 256 MiB GET goes from ~200 to ~375 MiB/s."""
    try:
        from httpcore._async.http11 import AsyncHTTP11Connection
    except ImportError:  # pragma: no cover - httpcore moved things; keep its default
        return
    if getattr(AsyncHTTP11Connection, "READ_NUM_BYTES", HTTPCORE_READ_BYTES) < HTTPCORE_READ_BYTES:
        AsyncHTTP11Connection.READ_NUM_BYTES = HTTPCORE_READ_BYTES


class StreamedResponse(Protocol):
    """A response whose body is read piece by piece (:meth:`S3Client.open_stream`)."""

    status_code: int
    headers: httpx.Headers

    async def receive(self) -> bytes:
        """The next piece of the body; ``b""`` at its end. Raises httpx.TransportError."""
        ...

    async def aread(self) -> bytes: ...

    async def aclose(self) -> None: ...


class _HttpxStream:
    """An httpx streamed response as a :class:`StreamedResponse` (the fallback path)."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self._pieces = response.aiter_raw()
        self.status_code = response.status_code
        self.headers = response.headers

    async def receive(self) -> bytes:
        async for piece in self._pieces:
            if piece:
                return piece
        return b""

    async def aread(self) -> bytes:
        return await self._response.aread()

    async def aclose(self) -> None:
        await self._response.aclose()


def _root_message(exc: BaseException) -> str:
    """The most specific message in an exception's cause chain (httpx's ConnectError often
    says nothing itself; the SSL or OS error under it does)."""
    best = str(exc)
    seen = 0
    inner: BaseException | None = exc.__cause__ or exc.__context__
    while inner is not None and seen < 8:
        if str(inner):
            best = f"{type(inner).__name__}: {inner}" if not best else f"{best} ({inner})"
        inner = inner.__cause__ or inner.__context__
        seen += 1
    return best or "connection failed"


class _Body(httpx.AsyncByteStream):
    """A request body already in memory: ``bytes`` go out whole (h11 sends them without a
    copy); a ``bytearray`` (a part handed over by the writer) in ``BODY_PIECE`` copies,
    since h11 would copy it whole, doubling the part in memory while it is sent.

    httpx's own byte stream iterates with an async generator, which trio reports as
    garbage-collected-unfinished when a request is cancelled mid-send; this iterator is a
    plain object, so a cancelled upload leaves nothing behind.
    """

    def __init__(self, body: bytes | bytearray) -> None:
        self._body = body
        self._pos = 0

    def __aiter__(self) -> _Body:  # type: ignore[override]
        return self

    async def __anext__(self) -> bytes:
        body, pos = self._body, self._pos
        if pos >= len(body):
            # Sent: drop the bytes now. httpx's request and response objects form a
            # reference cycle that only the cyclic GC frees, so a part body kept here
            # outlived its upload (6 of 12 live parts with 8 writers) and the driver's
            # part budget (maxbuffermemory) did not bound memory.
            self._body = b""
            raise StopAsyncIteration
        if isinstance(body, bytes):
            self._pos = len(body)
            return body
        self._pos = pos + BODY_PIECE
        with memoryview(body) as view:
            return bytes(view[pos : pos + BODY_PIECE])


def _check_key(key: str | None) -> None:
    # httpx normalises "." and ".." segments away; S3 would not. Refuse rather than
    # silently address another key. (Driver paths never contain them: base.check_path.)
    if key is None:
        return
    parts = key.split("/")
    if "." in parts or ".." in parts:
        raise base.InvalidPath(f"S3 key with a dot segment: {key[:200]!r}")


class S3Client:
    """Signed, retried, deadline-bound requests against one bucket. Owns its connection pool.

    ``aclose()`` closes the pool; it is idempotent.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        signer: sigv4.Signer,
        *,
        verify: bool = True,
        max_connections: int = 64,
        retry: RetryPolicy | None = None,
        sign_payload: bool | None = None,
        call_timeout: float = CALL_TIMEOUT,
    ) -> None:
        _tune_httpcore()
        self.endpoint = endpoint
        self.signer = signer
        self.retry = retry or RetryPolicy()
        self.call_timeout = call_timeout
        # Hash bodies over plain HTTP (nothing else protects them); over TLS send
        # UNSIGNED-PAYLOAD and save a pass over every part.
        self.sign_payload = endpoint.scheme == "http" if sign_payload is None else sign_payload
        # One TLS context for httpx and the streamed-GET pool (skipverify: no checks).
        ssl_context = ssl.create_default_context()
        if not verify:
            ssl_context.check_hostname = False
            ssl_context.verify_mode = ssl.CERT_NONE
        transport = httpx.AsyncHTTPTransport(
            verify=ssl_context,
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            retries=0,
        )
        self._http = httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(
                connect=CONNECT_TIMEOUT, read=READ_TIMEOUT, write=READ_TIMEOUT, pool=CALL_TIMEOUT
            ),
            trust_env=False,  # no proxies from the environment: we talk to one endpoint
            follow_redirects=False,
        )
        # Streamed GETs read straight off the socket (~5x faster than through httpx); a
        # server that answers one without Content-Length turns that off for good.
        self._streams: streams.StreamPool | None = streams.StreamPool(
            endpoint.scheme,
            ssl_context if endpoint.scheme == "https" else None,
            max_connections=max_connections,
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=READ_TIMEOUT,
            pool_timeout=CALL_TIMEOUT,
        )
        self._outage: str | None = None  # the reason last logged, while the bucket is broken
        self._closed = False

    # -- health: one line per outage -----------------------------------------------------

    @property
    def outage(self) -> str | None:
        """A one-line reason while the last request failed for a bucket-wide cause."""
        return self._outage

    def _note_outage(self, reason: str) -> None:
        # One line when the bucket becomes unusable; the reason may change while it stays
        # broken (a bodyless HEAD 403 says less than a GET's SignatureDoesNotMatch): quiet.
        if self._outage is None:
            self._outage = reason
            log.error(
                "S3 bucket %r at %s is unusable: %s; answering 503 until it works",
                self.endpoint.bucket,
                self.endpoint.host,
                reason,
            )

    def _note_ok(self) -> None:
        if self._outage is not None:
            log.warning("S3 bucket %r at %s works again", self.endpoint.bucket, self.endpoint.host)
            self._outage = None

    # -- requests --------------------------------------------------------------------------

    async def _payload_hash(self, body: bytes | bytearray | None) -> str:
        if not body:
            return sigv4.EMPTY_SHA256
        if not self.sign_payload:
            return sigv4.UNSIGNED_PAYLOAD
        if len(body) < HASH_IN_THREAD:
            return sigv4.payload_sha256(body)
        return await trio.to_thread.run_sync(sigv4.payload_sha256, body)

    def _build(
        self,
        method: str,
        key: str | None,
        query: Sequence[tuple[str, str]],
        headers: Mapping[str, str] | None,
        body: bytes | bytearray | None,
        payload_hash: str = sigv4.EMPTY_SHA256,
    ) -> httpx.Request:
        _check_key(key)
        host, raw_path = self.endpoint.address(key)
        extra = dict(headers or {})
        signed = self.signer.sign_headers(
            method, host, raw_path, query, extra, payload_hash, datetime.now(UTC)
        )
        url = self.endpoint.url(key, sigv4.canonical_query(query))
        all_headers = {"Host": host, "Accept-Encoding": "identity", **extra, **signed}
        if body is None:
            return httpx.Request(method, url, headers=all_headers)
        # Always an explicit Content-Length (S3 wants one even for empty PUTs, and it keeps
        # httpx from ever choosing chunked or aws-chunked-like framing).
        all_headers["Content-Length"] = str(len(body))
        return httpx.Request(method, url, headers=all_headers, stream=_Body(body))

    async def request(
        self,
        method: str,
        key: str | None,
        *,
        query: Sequence[tuple[str, str]] = (),
        headers: Mapping[str, str] | None = None,
        body: bytes | bytearray | None = None,
        ok: tuple[int, ...] = (200,),
        idempotent: bool = True,
        error_in_body: bool = False,
    ) -> S3Response:
        """Send one S3 request (retried), return the response once its status is in ``ok``.

        Raises the typed :mod:`.errors` class for an S3 error answer, ``Unavailable`` when
        retries run out or the bucket refuses us, ``DriverTimeout`` past the deadline.
        ``error_in_body``: the operation may answer 200 with an ``<Error>`` document
        (CompleteMultipartUpload, CopyObject, UploadPartCopy).
        """
        size = len(body) if body else 0
        attempt_timeout = self.call_timeout + size / MIN_BODY_RATE
        payload_hash = await self._payload_hash(body)
        last: BaseException | None = None
        for attempt in range(self.retry.max_attempts):
            if attempt:
                await trio.sleep(self._sleep_for(attempt - 1, last))
            request = self._build(method, key, query, headers, body, payload_hash)
            try:
                with trio.fail_after(attempt_timeout):
                    response = await self._http.send(request)
                    try:
                        content = await response.aread()
                    finally:
                        await response.aclose()
            except trio.TooSlowError:
                last = base.DriverTimeout(f"S3 {method} timed out after {attempt_timeout:.0f} s")
                if not idempotent:
                    raise last from None
                continue
            except httpx.TransportError as exc:
                last = exc
                if not idempotent and not isinstance(exc, httpx.ConnectError):
                    break
                continue
            result = self._classify(
                response.status_code, content, response.headers, ok, key, error_in_body
            )
            if isinstance(result, S3Response):
                self._note_ok()
                return result
            last = result
            if errors.is_retryable(result):
                continue
            raise result
        raise self._give_up(method, last)

    async def open_stream(
        self,
        method: str,
        key: str,
        *,
        query: Sequence[tuple[str, str]] = (),
        headers: Mapping[str, str] | None = None,
        ok: tuple[int, ...] = (200, 206),
    ) -> StreamedResponse:
        """Send a request whose answer is streamed (GET); the CALLER closes the response.

        Retries only until a status line in ``ok`` arrives; the body is then read by the
        caller (``receive()``), each read bounded by the read timeout.
        """
        last: BaseException | None = None
        for attempt in range(self.retry.max_attempts):
            if attempt:
                await trio.sleep(self._sleep_for(attempt - 1, last))
            request = self._build(method, key, query, headers, None)
            response: StreamedResponse
            try:
                with trio.fail_after(self.call_timeout):
                    response = await self._send_streamed(request)
            except trio.TooSlowError:
                last = base.DriverTimeout(f"S3 {method} timed out after {self.call_timeout} s")
                continue
            except httpx.TransportError as exc:
                last = exc
                continue
            if response.status_code in ok:
                self._note_ok()
                return response
            try:
                with trio.fail_after(self.call_timeout):
                    content = await response.aread()
            except (trio.TooSlowError, httpx.TransportError) as exc:
                last = exc
                continue
            finally:
                await response.aclose()
            result = self._classify(response.status_code, content, response.headers, ok, key, False)
            assert not isinstance(result, S3Response)
            last = result
            if errors.is_retryable(result):
                continue
            raise result
        raise self._give_up(method, last)

    async def _send_streamed(self, request: httpx.Request) -> StreamedResponse:
        if self._streams is not None:
            try:
                return await self._streams.send(request)
            except streams.Unframed as exc:
                log.info("S3 streams through httpx from now on: %s", exc)
                pool, self._streams = self._streams, None
                await pool.aclose()
        return _HttpxStream(await self._http.send(request, stream=True))

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        key: str,
        *,
        query: Sequence[tuple[str, str]] = (),
        headers: Mapping[str, str] | None = None,
        ok: tuple[int, ...] = (200, 206),
    ) -> AsyncIterator[StreamedResponse]:
        """:meth:`open_stream` as a context manager that closes the response."""
        response = await self.open_stream(method, key, query=query, headers=headers, ok=ok)
        try:
            yield response
        finally:
            with trio.CancelScope(shield=True):
                await response.aclose()

    def _classify(
        self,
        status: int,
        content: bytes,
        headers: httpx.Headers,
        ok: tuple[int, ...],
        key: str | None,
        error_in_body: bool,
    ) -> S3Response | errors.S3Error:
        if status in ok:
            if error_in_body and b"<Error>" in content[:512]:
                return errors.error_from_response(500, content, key or "")
            return S3Response(status, headers, content)
        error = errors.error_from_response(status, content, key or "")
        if isinstance(error, errors.S3Unavailable):
            self._note_outage(f"{error.code} ({error.status}): {error.message or 'no detail'}")
        elif errors.is_retryable(error):
            retry_after = headers.get("retry-after", "")
            if retry_after.isdigit():
                error.retry_after = min(RETRY_AFTER_CAP, float(retry_after))
        elif content:
            # A definite answer with an S3 error document (NoSuchKey, ...): the bucket
            # works. A bodyless 404 (HEAD) is not proof: a missing bucket looks the same.
            self._note_ok()
        return error

    def _sleep_for(self, attempt: int, last: BaseException | None) -> float:
        delay = self.retry.delay(attempt)
        if isinstance(last, errors.S3Error):
            if last.retry_after:
                delay = max(delay, last.retry_after)
            elif last.status == 429:
                delay = max(delay, self.retry.same_key_floor * self.retry.rng.uniform(1, 1.5))
        return delay

    def _give_up(self, method: str, last: BaseException | None) -> base.DriverError:
        if isinstance(last, base.DriverTimeout):
            self._note_outage(str(last))
            return last
        if isinstance(last, httpx.TransportError):
            reason = f"{type(last).__name__}: {_root_message(last)}"
            self._note_outage(reason)
            error = base.Unavailable(f"S3 {method}: {reason}")
            error.__cause__ = last
            return error
        if isinstance(last, errors.S3Error):
            if isinstance(last, base.Unavailable):
                return last
            self._note_outage(f"{last.code} ({last.status}) after {self.retry.max_attempts} tries")
            error = errors.S3Unavailable(
                last.status, last.code, last.message, last.request_id, last.resource
            )
            error.__cause__ = last
            return error
        return base.Unavailable(f"S3 {method} failed")

    # -- presigned URLs --------------------------------------------------------------------

    def presign(
        self,
        method: str,
        key: str,
        expires: int,
        *,
        endpoint: Endpoint | None = None,
        now: datetime | None = None,
    ) -> str:
        """A presigned URL for ``key``; ``endpoint`` may be a public host (redirectendpoint)."""
        _check_key(key)
        target = endpoint or self.endpoint
        host, raw_path = target.address(key)
        query = self.signer.presign_query(
            method, host, raw_path, (), expires, now or datetime.now(UTC)
        )
        return target.url(key, query)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            if self._streams is not None:
                await self._streams.aclose()
            await self._http.aclose()
