"""Who may see and change what through the UI: the registry's own access rules, asked per
repository (``auth/``: the htpasswd policy or the token's ``access`` claim).

A repository the caller may not pull is, for the UI, a repository that does not exist:
every URL naming it answers 404 NAME_UNKNOWN, and lists leave it out (no 403: its name
would leak). A repository under a pull-through cache remote (``proxied``) is read-only,
as in the v2 API.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..auth.policy import ADMIN, DELETE, PULL
from ..errors import ErrorCode, RegistryError
from ..http.request import Request, Services

AUTH_SCHEMES = ("none", "htpasswd", "token", "silly")


class Allows(Protocol):
    async def allows(self, req: Request, action: str, repo: str | None) -> bool: ...


class Access:
    """``authenticator``: the app's (``auth.build_authenticator``), None when auth is off
    (then everyone may do everything, as the API allows)."""

    def __init__(self, authenticator: Allows | None, scheme: str) -> None:
        self.authenticator = authenticator
        self.scheme = scheme if scheme in AUTH_SCHEMES else "none"

    async def may(self, req: Request, action: str, repo: str | None) -> bool:
        if self.authenticator is None:
            return True
        return await self.authenticator.allows(req, action, repo)

    async def can_pull(self, req: Request, repo: str) -> bool:
        return await self.may(req, PULL, repo)

    async def can_delete(self, req: Request, repo: str) -> bool:
        return await self.may(req, DELETE, repo)

    async def can_gc(self, req: Request) -> bool:
        """Delete on every repository: what ``/admin/gc`` asks (policy.ADMIN)."""
        return await self.may(req, ADMIN, None)

    async def pullable(self, req: Request, repo: str) -> None:
        """Raise 404 NAME_UNKNOWN unless the caller may pull ``repo``."""
        if not await self.can_pull(req, repo):
            raise unknown(repo)


def proxied(svc: Services, repo: str) -> bool:
    """Is ``repo`` under a pull-through cache remote's prefix? The v2 API refuses every
    write there (405 UNSUPPORTED, ``http/proxied.py``), so the UI deletes nothing there
    either: the next pull would bring it back."""
    return svc.proxy is not None and svc.proxy.remote_for(repo) is not None


def unknown(repo: str) -> RegistryError:
    return RegistryError(ErrorCode.NAME_UNKNOWN, detail={"name": repo})


def scheme_of(auth_section: Any) -> str:
    """The ``auth`` scheme name of a Config's auth (None: "none")."""
    return "none" if auth_section is None else str(auth_section.scheme)
