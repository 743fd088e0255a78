"""Handlers for blobs and blob uploads (SPEC.md Pull 5-6, Push 9-16, Management 25)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..digest import Digest, DigestError
from ..errors import ErrorCode, RegistryError
from ..reference import is_valid_name
from .ranges import Unsatisfiable, check_chunk, parse_content_length, parse_range
from .responses import Response, json_response

if TYPE_CHECKING:
    from .app import RegistryApp, Request


def parse_digest(value: str | None) -> Digest:
    if not value:
        raise RegistryError(ErrorCode.DIGEST_INVALID, "digest missing")
    try:
        return Digest.parse(value)
    except DigestError as e:
        raise RegistryError(ErrorCode.DIGEST_INVALID, str(e)) from None


async def base(app: RegistryApp, req: Request) -> Response:
    return json_response(200, {})


async def blob(app: RegistryApp, req: Request) -> Response:
    name = req.params["name"]
    d = parse_digest(req.params["digest"])
    st = app.storage
    if req.method == "DELETE":
        if not app.options.delete_enabled:
            raise RegistryError(ErrorCode.UNSUPPORTED, "deletion is disabled")
        await st.blobs.unlink(name, d)
        return Response(202, [(b"docker-content-digest", str(d).encode())])
    size = await st.blobs.stat_in_repo(name, d)
    etag = f'"{d}"'.encode()
    headers = [
        (b"docker-content-digest", str(d).encode()),
        (b"etag", etag),
        (b"accept-ranges", b"bytes"),
        (b"cache-control", b"max-age=31536000"),
    ]
    if req.method == "GET":
        url = await st.blobs.redirect_url(d, "GET")
        if url is not None:
            headers.append((b"location", url.encode()))
            return Response(307, headers)
    inm = req.headers.get("if-none-match")
    if inm is not None and etag.decode() in [t.strip() for t in inm.split(",")]:
        return Response(304, headers, b"", length=0, head=True)
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
    if req.method == "HEAD":
        return Response(status, headers, b"", length=length, head=True)
    return Response(status, headers, _stream(app, d, offset, length), length=length)


async def _stream(app: RegistryApp, d: Digest, offset: int, length: int):  # type: ignore[no-untyped-def]
    async with app.storage.blobs.open(d, offset, length) as chunks:
        async for chunk in chunks:
            yield chunk


def _upload_headers(app: RegistryApp, req: Request, name: str, upload_id: str, size: int):  # type: ignore[no-untyped-def]
    headers = [
        (b"location", app.url(req, f"/v2/{name}/blobs/uploads/{upload_id}").encode()),
        (b"docker-upload-uuid", upload_id.encode()),
        (b"range", f"0-{size - 1}".encode() if size else b"0-0"),
    ]
    if app.options.chunk_min_length:
        headers.append((b"oci-chunk-min-length", str(app.options.chunk_min_length).encode()))
    return headers


def _blob_created(app: RegistryApp, req: Request, name: str, d: Digest) -> Response:
    return Response(
        201,
        [
            (b"location", app.url(req, f"/v2/{name}/blobs/{d}").encode()),
            (b"docker-content-digest", str(d).encode()),
        ],
    )


async def start_upload(app: RegistryApp, req: Request) -> Response:
    name = req.params["name"]
    st = app.storage
    mount = req.q("mount")
    if mount is not None:
        d = parse_digest(mount)
        source = req.q("from")
        if (
            source
            and source != name
            and await app_can_pull(app, req, source)
            and await st.uploads.mount(name, d, source)
        ):
            return _blob_created(app, req, name, d)
    digest_param = req.q("digest")
    if digest_param is not None:
        d = parse_digest(digest_param)
        length = parse_content_length(req.headers.get("content-length"))
        body = req.body() if length != 0 else None
        await st.uploads.upload_whole(name, d, body)
        return _blob_created(app, req, name, d)
    up = await st.uploads.start(name)
    return Response(202, _upload_headers(app, req, name, up.id, 0))


async def app_can_pull(app: RegistryApp, req: Request, source: str) -> bool:
    """May the caller read ``source``? (An access policy may say no; then no mount.)"""
    if not is_valid_name(source):
        return False
    return app.can_pull is None or bool(await app.can_pull(req, source))


async def upload(app: RegistryApp, req: Request) -> Response:
    name = req.params["name"]
    upload_id = req.params["uuid"]
    st = app.storage
    if req.method == "GET":
        up = await st.uploads.status(name, upload_id)
        return Response(204, _upload_headers(app, req, name, upload_id, up.size))
    if req.method == "DELETE":
        await st.uploads.cancel(name, upload_id)
        return Response(204)
    length = parse_content_length(req.headers.get("content-length"))
    start = check_chunk(req.headers.get("content-range"), length)
    if req.method == "PATCH":
        up = await st.uploads.append(name, upload_id, req.body(), start=start)
        return Response(202, _upload_headers(app, req, name, upload_id, up.size))
    # PUT: finish, optionally with the last chunk.
    d = parse_digest(req.q("digest"))
    body = req.body() if length != 0 else None
    await st.uploads.finish(name, upload_id, d, body, start=start)
    return _blob_created(app, req, name, d)


HANDLERS = {"base": base, "blob": blob, "uploads": start_upload, "upload": upload}
