"""What the UI's handlers share (``Services.ui``): built once with the app, never changed."""

from __future__ import annotations

from dataclasses import dataclass

from ..storage.gc_service import OnlineGC
from ..storage.store import Storage
from .access import Access
from .index import RepoIndex
from .static import Assets


@dataclass(frozen=True)
class UIService:
    """``pages_public``: pages and assets are served without authentication (token and
    silly auth: a browser cannot send a bearer token on a page load, so the page asks for
    one and sends it on its API calls; the files hold no data). With htpasswd they need the
    same credentials as the API, so the browser's Basic prompt appears on the page load."""

    storage: Storage
    assets: Assets
    index: RepoIndex
    access: Access
    gc: OnlineGC | None
    delete_enabled: bool
    driver_name: str  # "filesystem" | "s3" | "inmemory"
    version: str

    @property
    def pages_public(self) -> bool:
        return self.access.scheme in ("token", "silly")


def build_ui(
    storage: Storage,
    *,
    access: Access,
    gc: OnlineGC | None,
    delete_enabled: bool,
    driver_name: str,
    version: str,
    assets: Assets,
    index: RepoIndex | None = None,
) -> UIService:
    """The UI for one app; registers the index as a watcher of this worker's tag changes.
    The caller runs ``ui.index.start`` in the app's lifespan nursery."""
    index = index or RepoIndex(storage)
    storage.tags.watchers.append(index.changed)
    return UIService(storage, assets, index, access, gc, delete_enabled, driver_name, version)
