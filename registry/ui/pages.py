"""The page and asset routes: ``/ui/``, ``/ui/<any page path>`` (index.html) and
``/ui/assets/<file>`` (API.md "Pages", "Assets"). GET and HEAD; ``If-None-Match`` -> 304.
``/ui/login?next=<page>``: the "Sign in" link of an anonymous visitor (a public registry).

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
MAX_NEXT = 2000  # characters of a sign-in's ``next`` kept: a page URL, never longer


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


def safe_ui_path(root: str, raw: str | None) -> str:
    """``raw`` if it is a path of this UI's pages (``<root>/ui/...``, no scheme, host,
    backslash or control character: never an open redirect), else ``<root>/ui/``."""
    home = f"{root}/ui/"
    if not raw or len(raw) > MAX_NEXT or not raw.startswith(home) or raw.startswith("//"):
        return home
    if "\\" in raw or not raw.isascii() or any(ord(c) < 0x20 or ord(c) == 0x7F for c in raw):
        return home
    if raw.startswith((f"{home}login", f"{home}{API_PREFIX}")):
        return home  # not a page: a loop, or JSON
    return raw


async def login(svc: Services, req: Request) -> Response:
    """Reached only with valid credentials (the route's access is None: an anonymous
    browser gets 401 with the Basic challenge and asks the user, then retries). Sends the
    browser back to ``next``, a page of this UI (anything else: the home page), with the
    credentials it now sends on every /ui request."""
    target = safe_ui_path(req.root_path, req.q("next"))
    return Response(302, [(b"location", target.encode()), (b"cache-control", b"no-store")], b"")
