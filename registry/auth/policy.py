"""The access policy: who may pull, push or delete which repositories (our extension).

The reference registry lets every authenticated user do everything. With
``policy.access`` in the configuration, the registry decides per request instead::

    auth:
      htpasswd: {realm: Registry, path: /auth/htpasswd}
    policy:
      access:
        anonymous: [pull]                    # no credentials: pull only (a public registry)
        default: [pull, push, delete]        # authenticated users not listed under users
        users:
          reader: [pull]                     # a read-only user
          ci:                                # push to two namespaces, pull everything
            - {actions: [pull]}
            - {actions: [push], repositories: [ci, team/app]}
          alice:                             # everything in her own namespace only
            - {actions: [pull, push, delete], repositories: ["{user}"]}

- An access list is a list of grants; a grant is ``{actions, repositories}`` or, for short,
  just the list of actions (all repositories). ``anonymous`` and ``default`` take the same
  forms as a user entry.
- Actions: ``pull`` (GET/HEAD of manifests, blobs, tags, referrers), ``push`` (manifest
  PUT, every upload request), ``delete`` (DELETE of manifests and blobs; deletion must also
  be enabled in ``storage.delete``). ``push`` does not imply ``pull``: list both.
- A repository entry ``team/app`` matches the repository ``team/app`` and every repository
  below it (``team/app/web``), never ``team/application``. ``{user}`` is replaced by the
  user name. No ``repositories`` (or ``["*"]``) means every repository.
- The catalog (``/v2/_catalog``) needs ``pull`` on every repository; administration
  endpoints outside ``/v2/`` (``/admin/gc``) need ``delete`` on every repository.
- ``GET /v2/`` answers 200 to any authenticated user, and 401 to anonymous callers so that
  clients learn the challenge and send their credentials.
- The web UI (``/ui``) is open to any authenticated user, and to anonymous callers when
  ``anonymous`` grants anything: they see what they may pull. ``/ui/login`` asks for
  credentials (401 with the challenge) and sends the browser back once it has them.
- A denied anonymous request gets 401 with the challenge; a denied authenticated one gets
  403 DENIED. A cross-repository mount needs ``pull`` on the source repository, else it
  falls back to a normal upload (SPEC Push 16).

Without ``policy.access``: anonymous callers get nothing, every authenticated user every
action, as the reference. With token auth the token's ``access`` claim decides instead and
this policy is not used.

:func:`decide` is the whole decision, a pure function; :func:`parse_policy` reads the
configuration mapping and raises PolicyError (one line naming the key).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# The access actions. The route table (http/routes.py) names the one each route and method
# needs; None there means any authenticated caller (GET /v2/).
PULL = "pull"
PUSH = "push"
DELETE = "delete"
ACTIONS = (PULL, PUSH, DELETE)  # the actions a grant may list
CATALOG = "catalog"  # the pseudo-action of /v2/_catalog
ADMIN = "admin"  # the pseudo-action of routes outside /v2/ (e.g. /admin/gc)
# The pseudo-action of the web UI's routes (registry/ui/): any authenticated caller, and an
# anonymous one when ``anonymous`` grants anything (a public registry: the UI then shows
# what anonymous may pull, as the v2 API serves it; its handlers filter per repository).
BROWSE = "browse"
USER_PLACEHOLDER = "{user}"


class PolicyError(Exception):
    """The ``policy.access`` section cannot be used; one line naming the key."""


@dataclass(frozen=True)
class Grant:
    actions: frozenset[str]
    repositories: tuple[str, ...] | None = None  # None: every repository


def _everything() -> tuple[Grant, ...]:
    return (Grant(frozenset(ACTIONS)),)


@dataclass(frozen=True)
class Policy:
    anonymous: tuple[Grant, ...] = ()
    default: tuple[Grant, ...] = field(default_factory=_everything)
    users: Mapping[str, tuple[Grant, ...]] = field(default_factory=dict)


REFERENCE_POLICY = Policy()  # anonymous: nothing; authenticated: everything


def _matches(pattern: str, repo: str, user: str | None) -> bool:
    if pattern == "*":
        return True
    if USER_PLACEHOLDER in pattern:
        if user is None:
            return False
        pattern = pattern.replace(USER_PLACEHOLDER, user)
    pattern = pattern.strip("/")
    return bool(pattern) and (repo == pattern or repo.startswith(pattern + "/"))


def decide(user: str | None, action: str, repo: str | None, policy: Policy) -> bool:
    """May ``user`` (None: anonymous) do ``action`` on ``repo``?

    ``action`` is one of ACTIONS with a repository name, or CATALOG / ADMIN with ``repo``
    None (allowed when some grant gives ``pull`` / ``delete`` on every repository), or
    BROWSE (any user; anonymous when it has any grant). Anything else is denied.
    """
    grants = policy.anonymous if user is None else policy.users.get(user, policy.default)
    if action == BROWSE:
        return user is not None or bool(grants)
    if action in (CATALOG, ADMIN):
        needed = "pull" if action == CATALOG else "delete"
        return any(needed in g.actions and g.repositories is None for g in grants)
    if action not in ACTIONS or repo is None:
        return False
    for grant in grants:
        if action not in grant.actions:
            continue
        if grant.repositories is None:
            return True
        if any(_matches(p, repo, user) for p in grant.repositories):
            return True
    return False


# --- configuration -------------------------------------------------------------------------


def _strings(value: Any, key: str) -> tuple[str, ...]:
    items = value if isinstance(value, (list, tuple)) else [value]
    if not all(isinstance(v, str) and v for v in items):
        raise PolicyError(f"{key}: expected a list of strings")
    return tuple(items)


def _grant(value: Any, key: str) -> Grant:
    if isinstance(value, Mapping):
        unknown = set(value) - {"actions", "repositories"}
        if unknown:
            raise PolicyError(f"{key}: unknown key {min(unknown)!r}"
                              " (expected actions, repositories)")
        actions = _strings(value.get("actions", ()), f"{key}.actions")
        repos_raw = value.get("repositories")
        repos = None if repos_raw is None else _strings(repos_raw, f"{key}.repositories")
        if repos is not None and "*" in repos:
            repos = None
    else:
        actions, repos = _strings(value, key), None
    bad = [a for a in actions if a not in ACTIONS]
    if bad:
        raise PolicyError(f"{key}: unknown action {bad[0]!r} (expected pull, push, delete)")
    return Grant(frozenset(actions), repos)


def _grants(value: Any, key: str) -> tuple[Grant, ...]:
    """``[pull]``, ``pull``, ``{actions, repositories}`` or a list of such mappings."""
    if value is None or value == "none" or value == []:
        return ()
    if isinstance(value, (list, tuple)) and all(isinstance(v, Mapping) for v in value):
        return tuple(_grant(v, f"{key}.{i}") for i, v in enumerate(value))
    return (_grant(value, key),)


def parse_policy(section: Mapping[str, Any] | None) -> Policy:
    """The ``policy.access`` mapping as a Policy; None or empty gives REFERENCE_POLICY."""
    if not section:
        return REFERENCE_POLICY
    if not isinstance(section, Mapping):
        raise PolicyError("policy.access: expected a mapping")
    unknown = set(section) - {"anonymous", "default", "users"}
    if unknown:
        raise PolicyError(f"policy.access: unknown key {min(unknown)!r}"
                          " (expected anonymous, default, users)")
    users_raw = section.get("users") or {}
    if not isinstance(users_raw, Mapping):
        raise PolicyError("policy.access.users: expected a mapping of user names")
    default = section.get("default")
    return Policy(
        anonymous=_grants(section.get("anonymous"), "policy.access.anonymous"),
        default=_everything() if default is None
        else _grants(default, "policy.access.default"),
        users={str(u): _grants(g, f"policy.access.users.{u}") for u, g in users_raw.items()},
    )
