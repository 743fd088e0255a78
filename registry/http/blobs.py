"""Handlers for blobs and blob uploads (SPEC.md Pull 5-6, Push 9-16, Management 25).

Upload handlers that answer with another route's URL (the session's, the created blob's)
are handed that route by the table (``routes.py``) as keyword arguments."""

from __future__ import annotations

from collections.abc import AsyncIterator

from ..digest import Digest, DigestError
from ..errors import ErrorCode, RegistryError
from ..reference import is_valid_name
from .ranges import Unsatisfiable, check_chunk, parse_content_length, parse_range
from .request import Request, Route, Services
from .responses import FileBody, Headers, Response, json_response

BLOB_MAX_AGE = b"max-age=31536000"  # content-addressed: a digest's bytes never change


def parse_digest(value: str | None) -> Digest:
    if not value:
        raise RegistryError(ErrorCode.DIGEST_INVALID, "digest missing")
    try:
        return Digest.parse(value)
    except DigestError as e:
        raise RegistryError(ErrorCode.DIGEST_INVALID, str(e)) from None


def not_modified(req: Request, etag: str, headers: Headers) -> Response | None:
    """A 304 with ``headers`` when the request's If-None-Match lists ``etag``, else None."""
    inm = req.headers.get("if-none-match")
    if inm is not None and etag in [t.strip() for t in inm.split(",")]:
        return Response(304, headers, b"", length=0, head=True)
    return None


async def base(svc: Services, req: Request) -> Response:
    return json_response(200, {})


async def get_blob(svc: Services, req: Request) -> Response:
    return await _blob(svc, req, head=False)


async def head_blob(svc: Services, req: Request) -> Response:
    return await _blob(svc, req, head=True)


async def _blob(svc: Services, req: Request, *, head: bool) -> Response:
    name = req.params["name"]
    d = parse_digest(req.params["digest"])
    st = svc.storage
    size = await st.blobs.stat_in_repo(name, d)
    etag = f'"{d}"'
    headers = [
        (b"docker-content-digest", str(d).encode()),
        (b"etag", etag.encode()),
        (b"accept-ranges", b"bytes"),
        (b"cache-control", BLOB_MAX_AGE),
    ]
    if not head:
        url = await st.blobs.redirect_url(d, "GET")
        if url is not None:
            headers.append((b"location", url.encode()))
            return Response(307, headers)
    if (unchanged := not_modified(req, etag, headers)) is not None:
        return unchanged
    try:
        rng = parse_range(req.headers.get("range"), size)
    except Unsatisfiable:
        raise RegistryError(
            ErrorCode.RANGE_INVALID, headers={"Content-Range": f"bytes */{size}"}
        ) from None
    headers.append((b"content-type", b"application/octet-stream"))
    status, offset, length = 200, 0, size
    if rng is not None:
        status, offset, length = 206, rng[0], rng[1] - rng[0] + 1
        headers.append((b"content-range", f"bytes {rng[0]}-{rng[1]}/{size}".encode()))
    if head:
        return Response(status, headers, b"", length=length, head=True)
    if req.zerocopy and length:  # the server sends the file itself (sendfile on plain TCP)
        file = await st.blobs.open_local(d)
        if file is not None:
            return Response(status, headers, FileBody(file, offset, length), length=length)
    return Response(status, headers, _stream(svc, d, offset, length), length=length)


async def delete_blob(svc: Services, req: Request) -> Response:
    name = req.params["name"]
    d = parse_digest(req.params["digest"])
    if not svc.options.delete_enabled:
        raise RegistryError(ErrorCode.UNSUPPORTED, "deletion is disabled")
    await svc.storage.blobs.unlink(name, d)
    return Response(202, [(b"docker-content-digest", str(d).encode())])


async def _stream(svc: Services, d: Digest, offset: int, length: int) -> AsyncIterator[bytes]:
    async with svc.storage.blobs.open(d, offset, length) as chunks:  # the driver closes them
        async for chunk in chunks:
            yield chunk


def _upload_headers(
    svc: Services, req: Request, session: Route, name: str, upload_id: str, size: int
) -> Headers:
    headers = [
        (b"location", svc.url(req, session.path(name=name, uuid=upload_id)).encode()),
        (b"docker-upload-uuid", upload_id.encode()),
        (b"range", f"0-{size - 1}".encode() if size else b"0-0"),
    ]
    if svc.options.chunk_min_length:
        headers.append((b"oci-chunk-min-length", str(svc.options.chunk_min_length).encode()))
    return headers


def _blob_created(svc: Services, req: Request, blob: Route, name: str, d: Digest) -> Response:
    return Response(
        201,
        [
            (b"location", svc.url(req, blob.path(name=name, digest=str(d))).encode()),
            (b"docker-content-digest", str(d).encode()),
        ],
    )


async def start_upload(svc: Services, req: Request, *, session: Route, blob: Route) -> Response:
    """POST: a mount (201 at ``blob``), a whole push (201 at ``blob``) or a new session
    (202 at ``session``)."""
    name = req.params["name"]
    st = svc.storage
    mount = req.q("mount")
    if mount is not None:
        d = parse_digest(mount)
        source = req.q("from")
        if (
            source
            and source != name
            and await can_pull(svc, req, source)
            and await st.uploads.mount(name, d, source)
        ):
            return _blob_created(svc, req, blob, name, d)
    digest_param = req.q("digest")
    if digest_param is not None:
        d = parse_digest(digest_param)
        length = parse_content_length(req.headers.get("content-length"))
        body = req.body() if length != 0 else None
        await st.uploads.upload_whole(name, d, body)
        return _blob_created(svc, req, blob, name, d)
    up = await st.uploads.start(name)
    return Response(202, _upload_headers(svc, req, session, name, up.id, 0))


async def can_pull(svc: Services, req: Request, source: str) -> bool:
    """May the caller read ``source``? (An access policy may say no; then no mount.)"""
    if not is_valid_name(source):
        return False
    return svc.can_pull is None or bool(await svc.can_pull(req, source))


async def upload_status(svc: Services, req: Request) -> Response:
    name, upload_id = req.params["name"], req.params["uuid"]
    up = await svc.storage.uploads.status(name, upload_id)
    return Response(204, _upload_headers(svc, req, req.route, name, upload_id, up.size))


async def cancel_upload(svc: Services, req: Request) -> Response:
    await svc.storage.uploads.cancel(req.params["name"], req.params["uuid"])
    return Response(204)


async def append_upload(svc: Services, req: Request) -> Response:
    name, upload_id = req.params["name"], req.params["uuid"]
    length = parse_content_length(req.headers.get("content-length"))
    start = check_chunk(req.headers.get("content-range"), length)
    up = await svc.storage.uploads.append(name, upload_id, req.body(), start=start)
    return Response(202, _upload_headers(svc, req, req.route, name, upload_id, up.size))


async def finish_upload(svc: Services, req: Request, *, blob: Route) -> Response:
    """PUT: complete the session, optionally with the last chunk; 201 at ``blob``."""
    name, upload_id = req.params["name"], req.params["uuid"]
    length = parse_content_length(req.headers.get("content-length"))
    start = check_chunk(req.headers.get("content-range"), length)
    d = parse_digest(req.q("digest"))
    body = req.body() if length != 0 else None
    await svc.storage.uploads.finish(name, upload_id, d, body, start=start)
    return _blob_created(svc, req, blob, name, d)
