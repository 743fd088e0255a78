"""Requests on proxied names (a pull-through cache remote's, ``registry/proxy/``).

The app hands every routed request whose name is under a remote's prefix here before the
route's own handler; :func:`handle` answers it, or returns None to let the normal handler
run (catalog, referrers: local, as registry:3 lists what it holds; the web UI's routes:
it shows what is cached and answers its own deletes there with the same 405). What registry:3's
proxy mode answers, from its registry/proxy/*.go and registry/handlers/*.go:

- manifest GET/HEAD: through the cache (proxymanifeststore.go, proxytagservice.go);
- blob GET/HEAD: through the cache (proxyblobstore.go ServeBlob);
- tags list: the upstream's tags, the cached ones when it is down (proxytagservice.All);
- every write (upload POST/PATCH/PUT/DELETE/GET of a session, manifest PUT and DELETE, blob
  DELETE): 405 UNSUPPORTED, as its proxy stores answer distribution.ErrUnsupported and
  blobupload.go / manifests.go / blob.go map that to errcode.ErrorCodeUnsupported.
  (registry:3 lets a manifest DELETE by tag untag the cached tag; a cache that the next
  pull re-tags gains nothing from it, so it is 405 here too.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from ..digest import Digest
from ..errors import ErrorCode, RegistryError
from ..proxy import FetchAborted, ProxyCache
from ..storage.tags import paginate
from . import blobs, manifests, routes
from .request import ClientDisconnected, Request, Services
from .responses import Response, json_response

STALE_WARNING = b'110 registry "Response is Stale: the upstream is unreachable"'
READS = frozenset({"GET", "HEAD"})


async def handle(svc: Services, req: Request, cache: ProxyCache) -> Response | None:
    """The answer for ``req`` if its name is proxied, else None (see the module doc)."""
    name = req.params.get("name")
    if name is None or cache.remote_for(name) is None:
        return None
    route = req.route
    if route is routes.REFERRERS or route in routes.UI_ROUTES:
        # The web UI reads what is cached here and refuses deletes itself (ui/actions.py).
        return None
    if req.method not in READS or route not in (routes.MANIFEST, routes.BLOB, routes.TAGS):
        raise RegistryError(ErrorCode.UNSUPPORTED, "a pull-through cache is read-only")
    if route is routes.MANIFEST:
        return await _manifest(req, cache, name)
    if route is routes.BLOB:
        return await _blob(svc, req, cache, name)
    return await _tags(req, cache, name)


async def _manifest(req: Request, cache: ProxyCache, name: str) -> Response:
    ref = manifests.parse_reference(req.params["reference"])
    m, stale = await cache.manifest(name, ref, req.headers.get("accept"))
    etag = f'"{m.digest}"'
    headers = [
        (b"content-type", m.media_type.encode()),
        (b"docker-content-digest", str(m.digest).encode()),
        (b"etag", etag.encode()),
    ]
    if stale:
        headers.append((b"warning", STALE_WARNING))
    return blobs.not_modified(req, etag, headers) or Response(200, headers, m.body)


async def _blob(svc: Services, req: Request, cache: ProxyCache, name: str) -> Response:
    d: Digest = blobs.parse_digest(req.params["digest"])
    head = req.method == "HEAD"
    answer = await cache.blob(name, d, head=head, ranged="range" in req.headers)
    if answer.stream is None and answer.size is None:  # in storage (now): the normal answer
        return await (blobs.head_blob if head else blobs.get_blob)(svc, req)
    headers = [
        (b"docker-content-digest", str(d).encode()),
        (b"etag", f'"{d}"'.encode()),
        (b"content-type", b"application/octet-stream"),
        (b"accept-ranges", b"bytes"),
        (b"cache-control", blobs.BLOB_MAX_AGE),
    ]
    if answer.stream is None:  # a HEAD the upstream answered
        return Response(200, headers, b"", length=answer.size, head=True)
    return Response(200, headers, _cut_short_on_failure(answer.stream), length=answer.size)


async def _cut_short_on_failure(stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The fetch's bytes; a failed fetch ends the response as a lost client does (the app
    stops sending, the server closes the connection before the announced length), without
    an "unhandled error" traceback: the fetch logged its outcome already."""
    try:
        async for chunk in stream:
            yield chunk
    except FetchAborted:
        raise ClientDisconnected() from None
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()


async def _tags(req: Request, cache: ProxyCache, name: str) -> Response:
    n, last = manifests.page_params(req)
    page, more = paginate(await cache.tags(name), n, last)
    headers = []
    if more and page and n:
        headers.append(manifests.next_link(req.root_path + req.route.path(name=name), page[-1], n))
    return json_response(200, {"name": name, "tags": page}, headers)
