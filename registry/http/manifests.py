"""Handlers for manifests, tags, the catalog and referrers (SPEC.md Pull 7-8, Push 17-21,
Discovery 22-24, Management 25)."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote

from ..digest import Digest
from ..errors import ErrorCode, RegistryError
from ..reference import is_valid_tag
from ..storage.manifests import MAX_MANIFEST_BYTES, OCI_INDEX
from ..storage.tags import paginate
from .blobs import parse_digest
from .ranges import parse_content_length
from .responses import Response, json_response

if TYPE_CHECKING:
    from .app import RegistryApp, Request

MAX_PAGE = 10_000  # largest n a client may ask for in one page


def parse_reference(value: str) -> str | Digest:
    if ":" in value:
        return parse_digest(value)
    if not is_valid_tag(value):
        raise RegistryError(ErrorCode.MANIFEST_INVALID, "invalid tag", {"tag": value[:200]})
    return value


async def manifest(app: RegistryApp, req: Request) -> Response:
    name = req.params["name"]
    ref = parse_reference(req.params["reference"])
    st = app.storage
    if req.method in ("GET", "HEAD"):
        # We serve the stored type whatever Accept says (SPEC Pull 8): clients that
        # cannot handle it reject it themselves, which beats a misleading 404.
        m = await st.manifests.get(name, ref)
        etag = f'"{m.digest}"'
        headers = [
            (b"content-type", m.media_type.encode()),
            (b"docker-content-digest", str(m.digest).encode()),
            (b"etag", etag.encode()),
        ]
        inm = req.headers.get("if-none-match")
        if inm is not None and etag in [t.strip() for t in inm.split(",")]:
            return Response(304, headers, b"", length=0, head=True)
        if req.method == "HEAD":
            return Response(200, headers, b"", length=len(m.body), head=True)
        return Response(200, headers, m.body)
    if req.method == "PUT":
        length = parse_content_length(req.headers.get("content-length"))
        if length is not None and length > MAX_MANIFEST_BYTES:
            raise RegistryError(ErrorCode.MANIFEST_TOO_BIG, f"manifest exceeds {MAX_MANIFEST_BYTES} bytes")
        body = await req.read(MAX_MANIFEST_BYTES)
        d, parsed = await st.manifests.put(name, ref, req.headers.get("content-type"), body)
        headers = [
            (b"location", app.url(req, f"/v2/{name}/manifests/{d}").encode()),
            (b"docker-content-digest", str(d).encode()),
        ]
        if parsed.subject is not None:
            headers.append((b"oci-subject", str(parsed.subject.digest).encode()))
        return Response(201, headers)
    # DELETE
    if not app.options.delete_enabled:
        raise RegistryError(ErrorCode.UNSUPPORTED, "deletion is disabled")
    if isinstance(ref, Digest):
        await st.manifests.delete(name, ref)
    else:
        await st.tags.untag(name, ref)
    return Response(202)


def _page_params(req: Request) -> tuple[int | None, str | None]:
    raw_n = req.q("n")
    n: int | None = None
    if raw_n is not None and raw_n != "":
        if not raw_n.isdigit() or len(raw_n) > 9 or int(raw_n) > MAX_PAGE:
            raise RegistryError(
                ErrorCode.PAGINATION_NUMBER_INVALID,
                f"n must be an integer between 0 and {MAX_PAGE}",
                {"n": raw_n[:20]},
            )
        n = int(raw_n)
    last = req.q("last") or None
    return n, last


def _link(app: RegistryApp, req: Request, path: str, last: str, n: int) -> tuple[bytes, bytes]:
    url = f"{path}?last={quote(last, safe='')}&n={n}"
    return (b"link", f'<{url}>; rel="next"'.encode())


async def tags(app: RegistryApp, req: Request) -> Response:
    name = req.params["name"]
    n, last = _page_params(req)
    all_tags = await app.storage.tags.list(name)
    page, more = paginate(all_tags, n, last)
    headers = []
    if more and page and n:
        headers.append(_link(app, req, f"/v2/{name}/tags/list", page[-1], n))
    return json_response(200, {"name": name, "tags": page}, headers)


async def catalog(app: RegistryApp, req: Request) -> Response:
    n, last = _page_params(req)
    repos = await app.storage.catalog()
    page, more = paginate(repos, n, last)
    headers = []
    if more and page and n:
        headers.append(_link(app, req, "/v2/_catalog", page[-1], n))
    return json_response(200, {"repositories": page}, headers)


async def referrers(app: RegistryApp, req: Request) -> Response:
    name = req.params["name"]
    subject = parse_digest(req.params["digest"])
    artifact_type = req.q("artifactType")
    found = await app.storage.manifests.referrers(name, subject, artifact_type)
    body = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": found}
    resp = json_response(200, body)
    resp.headers = [(b"content-type", OCI_INDEX.encode())]
    if artifact_type is not None:
        resp.headers.append((b"oci-filters-applied", b"artifactType"))
    return resp


HANDLERS = {"manifest": manifest, "tags": tags, "catalog": catalog, "referrers": referrers}
