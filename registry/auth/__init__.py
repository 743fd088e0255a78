"""Authentication and access control: builds the app's ``authenticate`` hook from Config.

:func:`build_authenticator` returns None when auth is off, else an :class:`Authenticator`:
an async callable ``(req)`` that RegistryApp calls before anything else in dispatch (so
before name validation: even an invalid name answers 401 to a stranger). It reads the
matched route's access action (``req.access``, from the route table) and the repository
(``req.params["name"]``), and sets ``req.user`` or raises RegistryError UNAUTHORIZED (401 + ``WWW-Authenticate``) or
DENIED (403). ``can_pull(req, repo)`` answers the cross-repository mount question,
``allows(req, action, repo)`` any access question of the web UI (``registry/ui/``).

Schemes (``auth.<scheme>`` as the reference):

- ``htpasswd``: Basic credentials against a bcrypt htpasswd file (``htpasswd.py``), then
  the access policy (``policy.py``, our extension, reference behaviour by default).
- ``token``: Bearer JWTs from an external issuer (``token.py``).
- ``silly``: the reference's development scheme: any Authorization header is accepted.

Construction reads the files the scheme needs and raises ConfigError (one line naming the
key) when they are missing or unusable, so the CLI refuses to start (exit code 2).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from ..config import Config, ConfigError
from ..errors import ErrorCode, RegistryError
from .challenge import quote_param, unauthorized
from .htpasswd import BasicVerifier, HtpasswdError, HtpasswdFile
from .policy import PULL, Policy, PolicyError, decide, parse_policy

if TYPE_CHECKING:
    from ..http.request import Request

log = logging.getLogger("registry.auth")

DEFAULT_REALM = "Registry Realm"


class Authenticator(Protocol):
    async def __call__(self, req: Request) -> None: ...

    async def can_pull(self, req: Request, repo: str) -> bool: ...

    async def allows(self, req: Request, action: str, repo: str | None) -> bool: ...


class HtpasswdAuth:
    """Basic auth against an htpasswd file, then the access policy."""

    def __init__(self, realm: str, file: HtpasswdFile, policy: Policy) -> None:
        self.realm = realm
        self.verifier = BasicVerifier(file)
        self.policy = policy
        self.challenge = f"Basic realm={quote_param(realm)}"

    async def __call__(self, req: Request) -> None:
        header = req.headers.get("authorization")
        user: str | None = None
        if header is not None:  # credentials that are sent must be right, even for pulls
            user = await self.verifier.verify(header)
            if user is None:
                log.info("authentication failed for a request from %s", req.client)
                raise unauthorized(self.challenge, "invalid credentials")
        action = req.access
        if action is None:  # GET /v2/: anyone with credentials, nobody without
            if user is None:
                raise unauthorized(self.challenge)
        elif not decide(user, action, req.params.get("name"), self.policy):
            if user is None:
                raise unauthorized(self.challenge)
            raise RegistryError(ErrorCode.DENIED, f"{action} access denied")
        req.user = user

    async def can_pull(self, req: Request, repo: str) -> bool:
        return decide(req.user, PULL, repo, self.policy)

    async def allows(self, req: Request, action: str, repo: str | None) -> bool:
        """May the (authenticated) caller do ``action`` on ``repo`` (the web UI asks)?"""
        return decide(req.user, action, repo, self.policy)


class SillyAuth:
    """The reference's ``silly`` scheme: any Authorization header passes (development only)."""

    def __init__(self, realm: str, service: str) -> None:
        self.challenge = f"Bearer realm={quote_param(realm)},service={quote_param(service)}"

    async def __call__(self, req: Request) -> None:
        if not req.headers.get("authorization"):
            raise unauthorized(self.challenge)

    async def can_pull(self, req: Request, repo: str) -> bool:
        return True

    async def allows(self, req: Request, action: str, repo: str | None) -> bool:
        return True


def _param(params: Any, key: str, scheme: str, required: bool = True) -> str | None:
    value = params.get(key)
    if value is None or value == "":
        if required:
            raise ConfigError(f"auth.{scheme}.{key}: required for {scheme} authentication")
        return None
    if not isinstance(value, str):
        raise ConfigError(f"auth.{scheme}.{key}: expected a string")
    return value


def access_policy(config: Config) -> Policy:
    section = config.raw.get("policy")
    access = section.get("access") if isinstance(section, Mapping) else None
    try:
        return parse_policy(access)
    except PolicyError as exc:
        raise ConfigError(str(exc)) from None


def build_authenticator(config: Config) -> Authenticator | None:
    """The hook for ``config.auth``, or None when auth is off. Raises ConfigError."""
    auth = config.auth
    if auth is None:
        return None
    params = auth.params
    if auth.scheme == "htpasswd":
        path = _param(params, "path", "htpasswd")
        assert path is not None
        realm = _param(params, "realm", "htpasswd", required=False) or DEFAULT_REALM
        try:
            file = HtpasswdFile(path)
        except HtpasswdError as exc:
            raise ConfigError(f"auth.htpasswd.path: {exc}") from None
        return HtpasswdAuth(realm, file, access_policy(config))
    if auth.scheme == "silly":
        realm = _param(params, "realm", "silly") or ""
        service = _param(params, "service", "silly") or ""
        return SillyAuth(realm, service)
    if auth.scheme == "token":
        from .token import build_token_auth

        return build_token_auth(params)
    raise ConfigError(f"auth: unsupported auth scheme {auth.scheme!r}")
