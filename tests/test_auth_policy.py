"""The access policy (our extension; issue 6, item 2): one pure decision, a table of cases,
then the same rules over HTTP, including cross-repository mounts (SPEC Push 16)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trio
from oci import push_blob, push_image
from test_auth_htpasswd import serve_with_auth, write_htpasswd

from registry.auth import HtpasswdAuth, access_policy
from registry.auth.htpasswd import HtpasswdFile
from registry.auth.policy import (
    ADMIN,
    CATALOG,
    REFERENCE_POLICY,
    Grant,
    Policy,
    PolicyError,
    decide,
    parse_policy,
)
from registry.config import ConfigError, load_config
from registry.http.routes import ROUTES


def action_for(route: str, method: str) -> str | None:
    """The access action the route table gives the route labelled ``route`` for ``method``."""
    return {r.label: r for r in ROUTES}[route].access[method]


ALL = frozenset({"pull", "push", "delete"})
PUBLIC = parse_policy({
    "anonymous": ["pull"],
    "default": ["pull", "push"],
    "users": {
        "reader": ["pull"],
        "admin": ["pull", "push", "delete"],
        "ci": [{"actions": ["pull"]}, {"actions": ["push"], "repositories": ["ci", "team/app"]}],
        "alice": [{"actions": ["pull", "push", "delete"], "repositories": ["{user}"]}],
        "nobody": "none",
    },
})


@pytest.mark.parametrize(
    ("user", "action", "repo", "policy", "allowed"),
    [
        # The reference: anonymous nothing, authenticated everything.
        (None, "pull", "a", REFERENCE_POLICY, False),
        (None, CATALOG, None, REFERENCE_POLICY, False),
        ("anyone", "pull", "a/b", REFERENCE_POLICY, True),
        ("anyone", "push", "a/b", REFERENCE_POLICY, True),
        ("anyone", "delete", "a/b", REFERENCE_POLICY, True),
        ("anyone", CATALOG, None, REFERENCE_POLICY, True),
        # Anonymous pull, authenticated push.
        (None, "pull", "library/busybox", PUBLIC, True),
        (None, "push", "library/busybox", PUBLIC, False),
        (None, "delete", "library/busybox", PUBLIC, False),
        (None, CATALOG, None, PUBLIC, True),
        ("someone", "push", "x", PUBLIC, True),
        ("someone", "delete", "x", PUBLIC, False),
        # Read-only user.
        ("reader", "pull", "x", PUBLIC, True),
        ("reader", "push", "x", PUBLIC, False),
        ("reader", "delete", "x", PUBLIC, False),
        ("admin", "delete", "x", PUBLIC, True),
        # Prefixes: a namespace matches itself and below, never a sibling with the same start.
        ("ci", "push", "ci", PUBLIC, True),
        ("ci", "push", "ci/tools", PUBLIC, True),
        ("ci", "push", "cider", PUBLIC, False),
        ("ci", "push", "team/app", PUBLIC, True),
        ("ci", "push", "team/app/web", PUBLIC, True),
        ("ci", "push", "team/application", PUBLIC, False),
        ("ci", "push", "team", PUBLIC, False),
        ("ci", "pull", "anything/else", PUBLIC, True),
        ("ci", "delete", "ci/tools", PUBLIC, False),
        ("ci", CATALOG, None, PUBLIC, True),
        # {user}: one's own namespace.
        ("alice", "push", "alice/app", PUBLIC, True),
        ("alice", "delete", "alice", PUBLIC, True),
        ("alice", "push", "bob/app", PUBLIC, False),
        ("alice", "pull", "bob/app", PUBLIC, False),
        ("alice", "push", "alicex/app", PUBLIC, False),
        ("alice", CATALOG, None, PUBLIC, False),
        # Administration (/admin/gc): delete on every repository.
        ("anyone", ADMIN, None, REFERENCE_POLICY, True),
        (None, ADMIN, None, PUBLIC, False),
        ("someone", ADMIN, None, PUBLIC, False),
        ("admin", ADMIN, None, PUBLIC, True),
        ("alice", ADMIN, None, PUBLIC, False),
        # An explicitly empty user entry, unknown actions, a missing repository.
        ("nobody", "pull", "x", PUBLIC, False),
        ("admin", "frobnicate", "x", PUBLIC, False),
        ("admin", "pull", None, PUBLIC, False),
        (None, "pull", "x", Policy(anonymous=(Grant(ALL, ("{user}",)),)), False),
    ],
)
def test_decide(user: str | None, action: str, repo: str | None, policy: Policy,
                allowed: bool) -> None:
    assert decide(user, action, repo, policy) is allowed


@pytest.mark.parametrize(
    ("route", "method", "action"),
    [
        ("base", "GET", None),
        ("catalog", "GET", CATALOG),
        ("tags", "GET", "pull"),
        ("manifest", "GET", "pull"),
        ("manifest", "HEAD", "pull"),
        ("manifest", "PUT", "push"),
        ("manifest", "DELETE", "delete"),
        ("blob", "GET", "pull"),
        ("blob", "HEAD", "pull"),
        ("blob", "DELETE", "delete"),
        ("uploads", "POST", "push"),
        ("upload", "GET", "push"),
        ("upload", "PATCH", "push"),
        ("upload", "PUT", "push"),
        ("upload", "DELETE", "push"),
        ("referrers", "GET", "pull"),
        ("admin_gc", "POST", ADMIN),
        ("admin_gc", "GET", ADMIN),
    ],
)
def test_action_for_each_route(route: str, method: str, action: str | None) -> None:
    assert action_for(route, method) == action


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"anonymous": ["pull", "fly"]}, "policy.access.anonymous: unknown action 'fly'"),
        ({"users": ["alice"]}, "policy.access.users: expected a mapping"),
        ({"users": {"a": [{"actions": ["pull"], "repos": ["x"]}]}},
         "policy.access.users.a.0: unknown key 'repos'"),
        ({"users": {"a": {"actions": "pull", "repositories": [1]}}},
         "policy.access.users.a.repositories: expected a list of strings"),
        ({"everyone": ["pull"]}, "policy.access: unknown key 'everyone'"),
    ],
)
def test_bad_policy_is_one_line_naming_the_key(section: dict, message: str) -> None:
    with pytest.raises(PolicyError) as err:
        parse_policy(section)
    assert str(err.value).startswith(message)


def test_policy_is_read_from_config_with_env_overrides(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yml"
    cfg.write_text("version: 0.1\npolicy:\n  access:\n    users:\n      reader: [pull]\n")
    config, warnings = load_config(str(cfg), {"REGISTRY_POLICY_ACCESS_ANONYMOUS": "[pull]"})
    assert not [w for w in warnings if "policy" in w]
    policy = access_policy(config)
    assert decide(None, "pull", "x", policy) and not decide(None, "push", "x", policy)
    assert not decide("reader", "push", "x", policy)
    assert decide("other", "delete", "x", policy)  # default stays the reference's
    config, _ = load_config(str(cfg), {"REGISTRY_POLICY_ACCESS_DEFAULT": "[fly]"})
    with pytest.raises(ConfigError, match="policy.access.default: unknown action 'fly'"):
        access_policy(config)


# --- over HTTP -------------------------------------------------------------------------------

USERS = {"reader": "r-pw", "ci": "ci-pw", "alice": "a-pw", "admin": "ad-pw", "someone": "s-pw"}


@pytest.fixture
async def public(nursery: trio.Nursery, tmp_path: Path) -> str:
    path = tmp_path / "htpasswd"
    write_htpasswd(path, USERS)
    url = await serve_with_auth(
        nursery, tmp_path, HtpasswdAuth("Policy", HtpasswdFile(str(path)), PUBLIC)
    )
    async with httpx.AsyncClient(base_url=url, auth=("admin", "ad-pw")) as c:
        await push_image(c, "library/busybox", "latest", layers=(b"busybox layer",))
        await push_image(c, "bob/private", "v1", layers=(b"bob's layer",))
    return url


def client(url: str, user: str | None = None) -> httpx.AsyncClient:
    auth = (user, USERS[user]) if user else None
    return httpx.AsyncClient(base_url=url, auth=auth)


async def test_anonymous_pull_but_not_push(public: str) -> None:
    async with client(public) as c:
        assert (await c.get("/v2/library/busybox/manifests/latest")).status_code == 200
        assert (await c.get("/v2/library/busybox/tags/list")).status_code == 200
        assert (await c.get("/v2/_catalog")).status_code == 200
        # /v2/ still challenges, so that clients learn to send credentials for a push.
        base = await c.get("/v2/")
        assert base.status_code == 401 and base.headers["WWW-Authenticate"].startswith("Basic ")
        push = await c.post("/v2/library/busybox/blobs/uploads/")
        assert push.status_code == 401 and "WWW-Authenticate" in push.headers
        # Wrong credentials are not downgraded to anonymous.
        r = await c.get("/v2/library/busybox/tags/list", auth=("reader", "bad"))
        assert r.status_code == 401


async def test_read_only_user_gets_403_denied_for_writes(public: str) -> None:
    async with client(public, "reader") as c:
        assert (await c.get("/v2/")).status_code == 200
        assert (await c.get("/v2/library/busybox/manifests/latest")).status_code == 200
        for method, path in (
            ("POST", "/v2/library/busybox/blobs/uploads/"),
            ("PUT", "/v2/library/busybox/manifests/v2"),
            ("DELETE", "/v2/library/busybox/manifests/latest"),
        ):
            r = await c.request(method, path, content=b"{}")
            assert r.status_code == 403, (method, path, r.text)
            assert r.json()["errors"][0]["code"] == "DENIED"
            assert "WWW-Authenticate" not in r.headers


async def test_prefix_user_pushes_only_in_its_namespace(public: str) -> None:
    async with client(public, "alice") as c:
        await push_image(c, "alice/tool", "v1", layers=(b"alice's layer",))
        assert (await c.post("/v2/bob/private/blobs/uploads/")).status_code == 403
        assert (await c.get("/v2/bob/private/manifests/v1")).status_code == 403
        assert (await c.get("/v2/_catalog")).status_code == 403


async def test_upload_session_of_another_namespace_is_out_of_reach(public: str) -> None:
    async with client(public, "ci") as c:
        start = await c.post("/v2/ci/build/blobs/uploads/")
        assert start.status_code == 202
        location = httpx.URL(start.headers["Location"]).raw_path.decode()
    async with client(public, "alice") as c:
        for method in ("GET", "PATCH", "PUT", "DELETE"):
            r = await c.request(method, location, content=b"x")
            assert r.status_code == 403, (method, r.text)
    async with client(public, "ci") as c:
        assert (await c.get(location)).status_code == 204


async def test_mount_needs_pull_on_the_source_spec_16(public: str) -> None:
    async with client(public, "admin") as c:
        bob_layer = await push_blob(c, "bob/private", b"bob only")
    async with client(public, "alice") as c:
        r = await c.post(f"/v2/alice/copy/blobs/uploads/?mount={bob_layer}&from=bob/private")
        assert r.status_code == 202  # no pull on bob/private: a normal session instead
        assert (await c.head(f"/v2/alice/copy/blobs/{bob_layer}")).status_code == 404
    async with client(public, "ci") as c:
        r = await c.post(f"/v2/ci/copy/blobs/uploads/?mount={bob_layer}&from=bob/private")
        assert r.status_code == 201  # ci may pull everything
        assert (await c.head(f"/v2/ci/copy/blobs/{bob_layer}")).status_code == 200
