"""The page and asset routes: ``/ui/``, ``/ui/<any page path>`` (index.html) and
``/ui/assets/<file>`` (API.md "Pages", "Assets"). GET and HEAD; ``If-None-Match`` -> 304.

A path under ``/ui/api/`` that no API route took is an unknown endpoint (404 JSON), not a
page. Without the front end's files everything here is 404, as an unknown path.
"""

from __future__ import annotations

from ..errors import ErrorCode, RegistryError
from ..http.request import Request, Services
from ..http.responses import Response
from .service import UIService
from .static import Asset

API_PREFIX = "api/"


def _not_found() -> RegistryError:
    return RegistryError(ErrorCode.UNSUPPORTED, "no such endpoint", status=404)


def _serve(req: Request, asset: Asset | None) -> Response:
    if asset is None:
        raise _not_found()
    if asset.matches(req.headers.get("if-none-match")):
        return Response(304, asset.headers(), b"", length=0, head=True)
    return Response(200, asset.headers(), asset.body)


async def page(svc: Services, req: Request) -> Response:
    """index.html for every page path (the page itself shows "not found")."""
    ui: UIService = svc.ui
    if req.params.get("path", "").startswith(API_PREFIX):
        raise _not_found()
    return _serve(req, ui.assets.index)


async def asset(svc: Services, req: Request) -> Response:
    ui: UIService = svc.ui
    return _serve(req, ui.assets.get(req.params.get("file", "")))
