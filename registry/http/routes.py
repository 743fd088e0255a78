"""The route table: every route the registry answers, one record each (request.Route).

Everything that depends on which route a request took reads its record here: the router
(``router.py``: template, methods), dispatch (``app.py``: one handler per method), the
access policy (``auth/``: the access action per method), the metrics (the label), webhook
notifications (the event kind, and MANIFEST/BLOB's paths for event targets) and the
``Location``/``Link`` headers (``Route.path``). No route name lives anywhere else.

Order matters where shapes overlap: the router takes the first record whose pattern and
method match, so the upload routes come before BLOB (``/blobs/uploads/`` would otherwise be
a blob named ``uploads``). Names may contain ``blobs``, ``manifests`` ...: the patterns
match from the right end (SPEC.md General 3).
"""

from __future__ import annotations

from functools import partial

from ..auth import policy
from ..ops.exchange import EventKind
from ..ui import actions as ui_actions
from ..ui import api as ui_api
from ..ui import pages as ui_pages
from . import admin, blobs, manifests
from .request import Route

BASE = Route(
    "base", "/v2/",
    handlers={"GET": blobs.base, "HEAD": blobs.base},
    access={"GET": None, "HEAD": None},  # any authenticated caller: clients probe auth here
)
CATALOG = Route(
    "catalog", "/v2/_catalog",
    handlers={"GET": manifests.catalog},
    access={"GET": policy.CATALOG},
)
TAGS = Route(
    "tags", "/v2/{name}/tags/list",
    handlers={"GET": manifests.tags},
    access={"GET": policy.PULL},
)
MANIFEST = Route(
    "manifest", "/v2/{name}/manifests/{reference}",
    handlers={
        "GET": manifests.get_manifest, "HEAD": manifests.get_manifest,
        "PUT": manifests.put_manifest, "DELETE": manifests.delete_manifest,
    },
    access={"GET": policy.PULL, "HEAD": policy.PULL, "PUT": policy.PUSH, "DELETE": policy.DELETE},
    event=EventKind.MANIFEST,
)
BLOB = Route(
    "blob", "/v2/{name}/blobs/{digest}",
    handlers={"GET": blobs.get_blob, "HEAD": blobs.head_blob, "DELETE": blobs.delete_blob},
    access={"GET": policy.PULL, "HEAD": policy.PULL, "DELETE": policy.DELETE},
    event=EventKind.BLOB,
)
UPLOAD = Route(
    "upload", "/v2/{name}/blobs/uploads/{uuid}",
    handlers={
        "GET": blobs.upload_status, "PATCH": blobs.append_upload,
        "PUT": partial(blobs.finish_upload, blob=BLOB), "DELETE": blobs.cancel_upload,
    },
    # Every request on a session is a push, a status check and a cancel too (the reference).
    access={"GET": policy.PUSH, "PATCH": policy.PUSH, "PUT": policy.PUSH, "DELETE": policy.PUSH},
    event=EventKind.UPLOAD,
)
UPLOADS = Route(
    "uploads", "/v2/{name}/blobs/uploads/",
    handlers={"POST": partial(blobs.start_upload, session=UPLOAD, blob=BLOB)},
    access={"POST": policy.PUSH},
    event=EventKind.UPLOAD_START,
)
REFERRERS = Route(
    "referrers", "/v2/{name}/referrers/{digest}",
    handlers={"GET": manifests.referrers},
    access={"GET": policy.PULL},
)
# Outside /v2/: start or inspect an online garbage collection (admin.py). In the table like
# the rest, so authentication and read-only mode apply to it.
ADMIN_GC = Route(
    "admin_gc", "/admin/gc",
    handlers={"GET": admin.gc_status, "POST": admin.start_gc},
    access={"GET": policy.ADMIN, "POST": policy.ADMIN},
)

# The web UI (registry/ui/, API.md): left out of the table the router reads when
# ``ui.enabled`` is false. Access BROWSE: any authenticated caller, and anonymous ones when
# the policy grants them anything (policy.py); the handlers filter by pull access per
# repository. UI_LOGIN (access None) makes an anonymous browser ask for credentials. Pages
# and assets are served without authentication under token auth (UIService.pages_public). The delete routes carry the MANIFEST event kind and
# ``name``/``reference`` like MANIFEST's DELETE, so notifications send the same events.
_BROWSE_READ = {"GET": policy.BROWSE, "HEAD": policy.BROWSE}
UI_INFO = Route(
    "ui_info", "/ui/api/v1/info",
    handlers={"GET": ui_api.info}, access={"GET": policy.BROWSE},
)
UI_REPOSITORIES = Route(
    "ui_repositories", "/ui/api/v1/repositories",
    handlers={"GET": ui_api.repositories}, access={"GET": policy.BROWSE},
)
UI_MANIFEST = Route(
    "ui_manifest", "/ui/api/v1/repositories/{name}/manifests/{reference}",
    handlers={"GET": ui_api.manifest}, access={"GET": policy.BROWSE},
)
UI_MANIFEST_DELETE = Route(
    "ui_manifest_delete", "/ui/api/v1/repositories/{name}/manifests/{reference}",
    handlers={"DELETE": ui_actions.delete_manifest}, access={"DELETE": policy.BROWSE},
    event=EventKind.MANIFEST,
)
UI_TAG_DELETE = Route(
    "ui_tag_delete", "/ui/api/v1/repositories/{name}/tags/{reference}",
    handlers={"DELETE": ui_actions.delete_tag}, access={"DELETE": policy.BROWSE},
    event=EventKind.MANIFEST,
)
UI_REPOSITORY = Route(  # after the two above: {name} would take their paths whole
    "ui_repository", "/ui/api/v1/repositories/{name}",
    handlers={"GET": ui_api.repository}, access={"GET": policy.BROWSE},
)
UI_GC = Route(
    "ui_gc", "/ui/api/v1/gc",
    handlers={"POST": ui_actions.start_gc}, access={"POST": policy.BROWSE},
)
UI_ASSET = Route(
    "ui_asset", "/ui/assets/{file}",
    handlers={"GET": ui_pages.asset, "HEAD": ui_pages.asset}, access=_BROWSE_READ,
)
UI_HOME = Route(
    "ui_home", "/ui/",
    handlers={"GET": ui_pages.page, "HEAD": ui_pages.page}, access=_BROWSE_READ,
)
UI_LOGIN = Route(  # before UI_PAGE; access None: credentials required (the sign-in prompt)
    "ui_login", "/ui/login",
    handlers={"GET": ui_pages.login}, access={"GET": None},
)
UI_PAGE = Route(  # last: every other /ui/ path is a page (index.html); {path}: any depth
    "ui_page", "/ui/{path}",
    handlers={"GET": ui_pages.page, "HEAD": ui_pages.page}, access=_BROWSE_READ,
)
UI_PAGE_ROUTES: tuple[Route, ...] = (UI_ASSET, UI_HOME, UI_PAGE)
UI_ROUTES: tuple[Route, ...] = (
    UI_INFO, UI_REPOSITORIES, UI_MANIFEST, UI_MANIFEST_DELETE, UI_TAG_DELETE, UI_REPOSITORY,
    UI_GC, UI_LOGIN, *UI_PAGE_ROUTES,
)

# Matching order (see the module doc): uploads before blobs.
CORE_ROUTES: tuple[Route, ...] = (
    BASE, CATALOG, TAGS, MANIFEST, UPLOADS, UPLOAD, BLOB, REFERRERS, ADMIN_GC,
)
ROUTES: tuple[Route, ...] = CORE_ROUTES + UI_ROUTES
