"""Handlers for manifests, tags, the catalog and referrers (SPEC.md Pull 7-8, Push 17-21,
Discovery 22-24, Management 25). URLs they answer with are their own route's
(``req.route``)."""

from __future__ import annotations

from urllib.parse import quote

from ..digest import Digest, DigestError
from ..errors import ErrorCode, RegistryError
from ..reference import is_valid_tag
from ..storage.manifests import MAX_MANIFEST_BYTES, OCI_INDEX
from ..storage.tags import paginate
from .blobs import not_modified, parse_digest
from .ranges import parse_content_length
from .request import Request, Services
from .responses import Response, json_response

MAX_PAGE = 10_000  # largest n a client may ask for in one page
# Tags one manifest PUT may apply with ``?tag=``: the spec asks at least 10 and allows 414
# beyond a limit; 100 tags of 128 characters still fit in our request-line limit.
MAX_TAGS_PER_PUT = 100


def parse_reference(value: str, *, put: bool = False) -> str | Digest:
    """The tag or digest a manifest URL names.

    One that is neither answers 404 MANIFEST_UNKNOWN, as registry:3 does (its router has
    no route for it; the OCI conformance suite asks 404 for ``.INVALID_MANIFEST_NAME``):
    no such manifest can exist. Only a PUT naming a malformed digest is 400 DIGEST_INVALID,
    as registry:3 answers it (where its GET/HEAD/DELETE answer 500)."""
    if ":" in value:
        if put:
            return parse_digest(value)
        try:
            return Digest.parse(value)
        except DigestError:
            raise RegistryError(
                ErrorCode.MANIFEST_UNKNOWN, "invalid digest", {"digest": value[:200]}
            ) from None
    if not is_valid_tag(value):
        raise RegistryError(ErrorCode.MANIFEST_UNKNOWN, "invalid tag", {"tag": value[:200]})
    return value


async def get_manifest(svc: Services, req: Request) -> Response:
    """GET and HEAD: the stored bytes (a HEAD answer is the same without its body)."""
    name = req.params["name"]
    ref = parse_reference(req.params["reference"])
    # We serve the stored type whatever Accept says (SPEC Pull 8): clients that
    # cannot handle it reject it themselves, which beats a misleading 404.
    m = await svc.storage.manifests.get(name, ref)
    etag = f'"{m.digest}"'
    headers = [
        (b"content-type", m.media_type.encode()),
        (b"docker-content-digest", str(m.digest).encode()),
        (b"etag", etag.encode()),
    ]
    return not_modified(req, etag, headers) or Response(200, headers, m.body)


def query_tags(req: Request, ref: str | Digest) -> list[str]:
    """The ``tag`` query parameters of a manifest PUT (distribution-spec main, "Pushing
    Manifests": by digest, with ``?tag=a&tag=b``), in order, repeats once.

    Raises before anything is stored: 400 TAG_INVALID for a tag that is not a valid tag
    (an empty one too) and for ``?tag=`` on a PUT by tag (the spec defines the parameter
    only for a PUT by digest; which tag would win is not ours to guess); 414 TAG_INVALID
    for more than MAX_TAGS_PER_PUT distinct tags (the spec's "MAY return 414")."""
    values = req.query.get("tag")
    if not values:
        return []
    if not isinstance(ref, Digest):
        raise RegistryError(ErrorCode.TAG_INVALID, "tag query parameters need a PUT by digest",
                            {"reference": ref})
    tags = list(dict.fromkeys(values))
    for tag in tags:
        if not is_valid_tag(tag):
            raise RegistryError(ErrorCode.TAG_INVALID, "invalid tag", {"tag": tag[:200]})
    if len(tags) > MAX_TAGS_PER_PUT:
        raise RegistryError(ErrorCode.TAG_INVALID, f"at most {MAX_TAGS_PER_PUT} tags per request",
                            {"tags": len(tags)}, status=414)
    return tags


async def put_manifest(svc: Services, req: Request) -> Response:
    """Store a manifest by tag or digest; a PUT by digest may tag it too (``?tag=``, see
    :func:`query_tags`): the manifest is stored once, then each tag points at it, and the
    answer names each applied tag in an ``OCI-Tag`` header."""
    name = req.params["name"]
    ref = parse_reference(req.params["reference"], put=True)
    tags = query_tags(req, ref)
    length = parse_content_length(req.headers.get("content-length"))
    if length is not None and length > MAX_MANIFEST_BYTES:
        raise RegistryError(ErrorCode.MANIFEST_TOO_BIG, f"manifest exceeds {MAX_MANIFEST_BYTES} bytes")
    body = await req.read(MAX_MANIFEST_BYTES)
    d, parsed = await svc.storage.manifests.put(name, ref, req.headers.get("content-type"), body)
    headers = [
        (b"location", svc.url(req, req.route.path(name=name, reference=str(d))).encode()),
        (b"docker-content-digest", str(d).encode()),
    ]
    if parsed.subject is not None:
        headers.append((b"oci-subject", str(parsed.subject.digest).encode()))
    for tag in tags:
        await svc.storage.tags.tag(name, tag, d)
        headers.append((b"oci-tag", tag.encode()))
    return Response(201, headers)


async def delete_manifest(svc: Services, req: Request) -> Response:
    """By digest: the manifest and its tags; by tag: only the tag."""
    name = req.params["name"]
    ref = parse_reference(req.params["reference"])
    if not svc.options.delete_enabled:
        raise RegistryError(ErrorCode.UNSUPPORTED, "deletion is disabled")
    if isinstance(ref, Digest):
        await svc.storage.manifests.delete(name, ref)
    else:
        await svc.storage.tags.untag(name, ref)
    return Response(202)


def _page_params(req: Request) -> tuple[int | None, str | None]:
    raw_n = req.q("n")
    n: int | None = None
    if raw_n is not None and raw_n != "":
        if not (raw_n.isascii() and raw_n.isdigit()) or len(raw_n) > 9 or int(raw_n) > MAX_PAGE:
            raise RegistryError(
                ErrorCode.PAGINATION_NUMBER_INVALID,
                f"n must be an integer between 0 and {MAX_PAGE}",
                {"n": raw_n[:20]},
            )
        n = int(raw_n)
    last = req.q("last") or None
    return n, last


def _link(path: str, last: str, n: int) -> tuple[bytes, bytes]:
    """The next page's Link header (a relative URL under http.prefix, as the reference)."""
    url = f"{path}?last={quote(last, safe='')}&n={n}"
    return (b"link", f'<{url}>; rel="next"'.encode())


async def tags(svc: Services, req: Request) -> Response:
    name = req.params["name"]
    n, last = _page_params(req)
    all_tags = await svc.storage.tags.list(name)
    page, more = paginate(all_tags, n, last)
    headers = []
    if more and page and n:
        headers.append(_link(req.root_path + req.route.path(name=name), page[-1], n))
    return json_response(200, {"name": name, "tags": page}, headers)


async def catalog(svc: Services, req: Request) -> Response:
    """A page of at most ``catalog.maxentries`` repositories (the reference's cap; its
    default 1000): without ``n`` the page is that size, with a Link when more follow; an
    ``n`` above it is 400 PAGINATION_NUMBER_INVALID, as the reference answers."""
    n, last = _page_params(req)
    cap = svc.options.catalog_max_entries
    if n is not None and n > cap:
        raise RegistryError(
            ErrorCode.PAGINATION_NUMBER_INVALID,
            f"n must be at most {cap} (catalog.maxentries)",
            {"n": n},
        )
    if n is None:
        n = cap
    page, more = await svc.storage.catalog_page(n, last)
    headers = []
    if more and page and n:
        headers.append(_link(req.root_path + req.route.path(), page[-1], n))
    return json_response(200, {"repositories": page}, headers)


async def referrers(svc: Services, req: Request) -> Response:
    name = req.params["name"]
    subject = parse_digest(req.params["digest"])
    artifact_type = req.q("artifactType")
    found = await svc.storage.manifests.referrers(name, subject, artifact_type)
    body = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": found}
    resp = json_response(200, body)
    resp.headers = [(b"content-type", OCI_INDEX.encode())]
    if artifact_type is not None:
        resp.headers.append((b"oci-filters-applied", b"artifactType"))
    return resp


# For the pull-through cache's tags list (proxied.py): the same paging rules.
page_params = _page_params
next_link = _link
