"""The UI's actions: delete a tag, delete a manifest, start an online GC (API.md "Actions").

Cross-site protection, checked first on every action (403 DENIED otherwise):

- the header ``X-Registry-UI: 1``: a cross-site HTML form cannot send a custom header, and a
  cross-site ``fetch`` can only after a CORS preflight, which this server never grants;
- ``Origin``, when sent, must be this server's own origin (as the browser sees it: the
  ``Host`` or forwarded host and scheme, or ``http.host``);
- ``Sec-Fetch-Site``, when sent, must not be ``cross-site``.

Then: deletion disabled -> 405 UNSUPPORTED; a repository
under a pull-through cache remote -> 405 UNSUPPORTED after the pull check (as the v2 API's
DELETE there, ``http/proxied.py``); a repository the caller may not pull -> 404
NAME_UNKNOWN (no leak); no ``delete`` access -> 403 DENIED. Deletes run the v2 API's own
handler (``http/manifests.delete_manifest``: the same storage calls), and the routes carry
the MANIFEST event kind with the same ``name``/``reference`` parameters, so webhook
listeners get the same delete events as for ``DELETE /v2/<name>/manifests/<reference>``.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from ..digest import Digest
from ..errors import ErrorCode, RegistryError
from ..http import manifests
from ..http.request import Request, Services
from ..http.responses import Response
from ..http.urls import base_url
from .access import proxied
from .api import answer
from .service import UIService

CSRF_HEADER = "x-registry-ui"


def _denied(why: str) -> RegistryError:
    return RegistryError(ErrorCode.DENIED, why)


def own_origins(svc: Services, req: Request) -> set[str]:
    """The origins this request may come from: the one its own headers describe, and
    ``http.host``'s when configured."""
    origins = {base_url(req.headers, scheme=req.scheme, server=req.server).lower()}
    host = svc.options.host
    if host:
        parts = urlsplit(host)
        if parts.scheme and parts.netloc:
            origins.add(f"{parts.scheme}://{parts.netloc}".lower())
    return origins


def check_same_origin(svc: Services, req: Request) -> None:
    """Raise 403 DENIED unless the request carries the UI's header and no sign of coming
    from another site (the module doc)."""
    if req.headers.get(CSRF_HEADER, "").strip() != "1":
        raise _denied("missing X-Registry-UI header")
    origin = req.headers.get("origin")
    if origin is not None and origin.strip().lower().rstrip("/") not in own_origins(svc, req):
        raise _denied("cross-origin request")
    if req.headers.get("sec-fetch-site", "").strip().lower() == "cross-site":
        raise _denied("cross-site request")


async def _may_delete(svc: Services, req: Request, name: str) -> None:
    ui: UIService = svc.ui
    if not ui.delete_enabled:
        raise RegistryError(ErrorCode.UNSUPPORTED, "deletion is disabled")
    await ui.access.pullable(req, name)
    if proxied(svc, name):
        raise RegistryError(ErrorCode.UNSUPPORTED, "a pull-through cache is read-only")
    if not await ui.access.can_delete(req, name):
        raise _denied("delete access denied")


async def delete_tag(svc: Services, req: Request) -> Response:
    check_same_origin(svc, req)
    name = req.params["name"]
    await _may_delete(svc, req, name)
    if ":" in req.params["reference"]:
        raise RegistryError(ErrorCode.MANIFEST_UNKNOWN, "not a tag",
                            {"tag": req.params["reference"][:200]})
    return await manifests.delete_manifest(svc, req)


async def delete_manifest(svc: Services, req: Request) -> Response:
    check_same_origin(svc, req)
    name = req.params["name"]
    await _may_delete(svc, req, name)
    try:
        Digest.parse(req.params["reference"])
    except ValueError:
        raise RegistryError(ErrorCode.DIGEST_INVALID,
                            detail={"digest": req.params["reference"][:200]}) from None
    return await manifests.delete_manifest(svc, req)


async def start_gc(svc: Services, req: Request) -> Response:
    """202 ``{"started": true}`` once the collector holds the lock; 409 when a collection
    runs (here or in another process); 503 when storage failed."""
    ui: UIService = svc.ui
    check_same_origin(svc, req)
    if ui.gc is None:
        raise RegistryError(ErrorCode.UNSUPPORTED, "garbage collection is not available",
                            status=404)
    if not await ui.access.can_gc(req):
        raise _denied("garbage collection needs delete access on every repository")
    refused = await ui.gc.start_now()
    if refused is None:
        return answer({"started": True}, 202)
    status = 503 if refused.get("status") == "failed" else 409
    return answer({"started": False, "status": refused.get("status"),
                   "reason": refused.get("reason")}, status)
