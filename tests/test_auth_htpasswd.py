"""htpasswd authentication as the reference (SPEC.md Auth 27; issue 6, item 1)."""

from __future__ import annotations

import base64
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import bcrypt
import httpx
import pytest
import trio
from conftest import start_app

from registry.auth import Authenticator, HtpasswdAuth, build_authenticator
from registry.auth import htpasswd as htpasswd_mod
from registry.auth.htpasswd import HtpasswdError, HtpasswdFile, parse_basic, parse_htpasswd
from registry.auth.policy import REFERENCE_POLICY
from registry.config import ConfigError, load_config

REALM = "Test Realm"
FAST_COST = 4  # bcrypt's minimum: tests stay fast; the timing test uses a real cost


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def write_htpasswd(path: Path, users: dict[str, str], cost: int = FAST_COST) -> None:
    lines = [
        f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=cost)).decode()}"
        for u, p in users.items()
    ]
    path.write_text("\n".join(lines) + "\n")
    # Make sure the change is visible through (mtime, size, inode) even within one tick.
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


async def serve_with_auth(nursery: trio.Nursery, tmp_path: Path, auth: Authenticator) -> str:
    """The app with ``auth`` wired in as the server wires it (authenticate and can_pull)."""
    url, _ = await start_app(nursery, str(tmp_path / "storage"), authenticate=auth,
                             can_pull=auth.can_pull)
    return url


def make_auth(path: Path) -> HtpasswdAuth:
    return HtpasswdAuth(REALM, HtpasswdFile(str(path)), REFERENCE_POLICY)


# --- pure parsing ----------------------------------------------------------------------------


def test_htpasswd_lines_skip_blanks_and_comments_and_keep_the_hash() -> None:
    text = "# admins\n\nalice:$2y$05$abc\n  bob:{SHA}xyz  \n#carol:$2y$x\n"
    assert parse_htpasswd(text) == {"alice": b"$2y$05$abc", "bob": b"{SHA}xyz"}


@pytest.mark.parametrize("line", ["no-colon-here", ":$2y$05$abc"])
def test_htpasswd_line_without_user_or_colon_is_an_error_naming_the_line(line: str) -> None:
    with pytest.raises(HtpasswdError, match="line 2"):
        parse_htpasswd(f"ok:$2y$05$x\n{line}\n")


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Basic " + base64.b64encode(b"alice:s3cret").decode(), ("alice", b"s3cret")),
        ("basic " + base64.b64encode(b"alice:a:b").decode(), ("alice", b"a:b")),
        ("BASIC  " + base64.b64encode(b"u:").decode(), ("u", b"")),
        ("Basic " + base64.b64encode("jörg:pä".encode()).decode(), ("jörg", "pä".encode())),
        (None, None),
        ("", None),
        ("Basic", None),
        ("Basic !!!!", None),
        ("Basic " + base64.b64encode(b"nocolon").decode(), None),
        ("Basic " + base64.b64encode(b":password").decode(), None),
        ("Basic " + base64.b64encode(b"\xff\xfe:x").decode(), None),
        ("Bearer abc.def.ghi", None),
        ("Digest username=alice", None),
    ],
)
def test_basic_header_shapes(header: str | None, expected: tuple[str, bytes] | None) -> None:
    assert parse_basic(header) == expected


# --- over HTTP -------------------------------------------------------------------------------


@pytest.fixture
async def auth_server(nursery: trio.Nursery, tmp_path: Path) -> tuple[str, Path]:
    path = tmp_path / "htpasswd"
    write_htpasswd(path, {"alice": "wonderland", "bob": "builder"})
    url = await serve_with_auth(nursery, tmp_path, make_auth(path))
    return url, path


async def test_base_without_credentials_is_401_with_basic_challenge_spec_27(
    auth_server: tuple[str, Path],
) -> None:
    url, _ = auth_server
    async with httpx.AsyncClient(base_url=url) as c:
        r = await c.get("/v2/")
        assert r.status_code == 401
        assert r.headers["WWW-Authenticate"] == f'Basic realm="{REALM}"'
        assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"
        assert r.json()["errors"][0]["code"] == "UNAUTHORIZED"
        head = await c.head("/v2/")
        assert head.status_code == 401 and head.content == b""
        assert head.headers["WWW-Authenticate"] == f'Basic realm="{REALM}"'


@pytest.mark.parametrize(
    "creds", [("alice", "wrong"), ("mallory", "wonderland"), ("alice", ""), ("alice", "x" * 100)]
)
async def test_wrong_or_unknown_credentials_are_401_spec_27(
    auth_server: tuple[str, Path], creds: tuple[str, str]
) -> None:
    url, _ = auth_server
    async with httpx.AsyncClient(base_url=url) as c:
        r = await c.get("/v2/", headers=basic(*creds))
        assert r.status_code == 401
        assert r.headers["WWW-Authenticate"] == f'Basic realm="{REALM}"'
        assert r.json()["errors"][0]["code"] == "UNAUTHORIZED"


async def test_valid_credentials_push_and_pull(auth_server: tuple[str, Path]) -> None:
    url, _ = auth_server
    data = b"layer bytes"
    digest = "sha256:" + __import__("hashlib").sha256(data).hexdigest()
    async with httpx.AsyncClient(base_url=url, auth=("alice", "wonderland")) as c:
        assert (await c.get("/v2/")).status_code == 200
        r = await c.post(f"/v2/team/app/blobs/uploads/?digest={digest}", content=data)
        assert r.status_code == 201, r.text
        got = await c.get(f"/v2/team/app/blobs/{digest}")
        assert got.status_code == 200 and got.content == data
        assert (await c.get("/v2/_catalog")).status_code == 200
    async with httpx.AsyncClient(base_url=url, auth=("bob", "builder")) as c:
        assert (await c.get(f"/v2/team/app/blobs/{digest}")).status_code == 200


async def test_non_bcrypt_entries_never_authenticate(nursery: trio.Nursery, tmp_path: Path) -> None:
    path = tmp_path / "htpasswd"
    # {SHA} of "password" and an apr1 (MD5) entry: the reference accepts only bcrypt.
    path.write_text(
        "sha:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n"
        "md5:$apr1$9Cv/OMGj$ZomWQzuQbL.3TRCS81A1g/\n"
    )
    url = await serve_with_auth(nursery, tmp_path, make_auth(path))
    async with httpx.AsyncClient(base_url=url) as c:
        for user in ("sha", "md5"):
            assert (await c.get("/v2/", headers=basic(user, "password"))).status_code == 401


async def test_file_is_reread_when_it_changes(auth_server: tuple[str, Path]) -> None:
    url, path = auth_server
    async with httpx.AsyncClient(base_url=url) as c:
        assert (await c.get("/v2/", headers=basic("alice", "wonderland"))).status_code == 200
        assert (await c.get("/v2/", headers=basic("carol", "new"))).status_code == 401
        write_htpasswd(path, {"carol": "new"})
        assert (await c.get("/v2/", headers=basic("carol", "new"))).status_code == 200
        # alice was cached as verified, but the cache is keyed by the file version.
        assert (await c.get("/v2/", headers=basic("alice", "wonderland"))).status_code == 401


async def test_broken_file_on_reload_keeps_the_previous_entries(
    auth_server: tuple[str, Path],
) -> None:
    url, path = auth_server
    async with httpx.AsyncClient(base_url=url) as c:
        path.write_text("this line has no colon\n")
        assert (await c.get("/v2/", headers=basic("bob", "builder"))).status_code == 200
        path.unlink()
        assert (await c.get("/v2/", headers=basic("bob", "builder"))).status_code == 200


async def test_verified_credentials_are_cached_so_bcrypt_runs_once(
    auth_server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = auth_server
    calls: list[bytes] = []
    real = htpasswd_mod._check

    def counting(password: bytes, hashed: bytes) -> bool:
        calls.append(password)
        return real(password, hashed)

    monkeypatch.setattr(htpasswd_mod, "_check", counting)
    async with httpx.AsyncClient(base_url=url) as c:
        for _ in range(5):
            assert (await c.get("/v2/", headers=basic("alice", "wonderland"))).status_code == 200
        assert len(calls) == 1
        for _ in range(3):  # failures are not cached: every wrong guess pays bcrypt
            assert (await c.get("/v2/", headers=basic("alice", "guess"))).status_code == 401
        assert len(calls) == 4


async def test_cache_entries_expire(autojump_clock: trio.abc.Clock, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "htpasswd"
    write_htpasswd(path, {"alice": "wonderland"})
    verifier = make_auth(path).verifier
    calls = []
    real = htpasswd_mod._check
    monkeypatch.setattr(htpasswd_mod, "_check", lambda p, h: calls.append(p) or real(p, h))
    header = basic("alice", "wonderland")["Authorization"]
    assert await verifier.verify(header) == "alice"
    assert await verifier.verify(header) == "alice"
    assert len(calls) == 1
    await trio.sleep(htpasswd_mod.CACHE_TTL_S + 1)
    assert await verifier.verify(header) == "alice"
    assert len(calls) == 2


async def test_unknown_users_take_as_long_as_known_ones_spec_27(tmp_path: Path) -> None:
    path = tmp_path / "htpasswd"
    write_htpasswd(path, {"alice": "wonderland"}, cost=9)  # ~50 ms per check here
    verifier = make_auth(path).verifier

    async def timed(user: str) -> float:
        start = time.perf_counter()
        assert await verifier.verify(basic(user, "wrong")["Authorization"]) is None
        return time.perf_counter() - start

    known = statistics.median([await timed("alice") for _ in range(5)])
    unknown = statistics.median([await timed(f"nobody{i}") for i in range(5)])
    assert known > 0.01  # bcrypt really ran
    assert 0.5 < unknown / known < 2.0, (known, unknown)


async def test_bcrypt_runs_off_the_event_loop(auth_server: tuple[str, Path]) -> None:
    """While a check runs in its thread, other requests are still served."""
    url, path = auth_server
    write_htpasswd(path, {"slow": "pw"}, cost=12)  # ~0.3 s per check
    async with httpx.AsyncClient(base_url=url, timeout=30) as c, trio.open_nursery() as n:
        n.start_soon(c.get, "/v2/", )  # anonymous: 401 at once
        done = trio.Event()

        async def slow() -> None:
            assert (await c.get("/v2/", headers=basic("slow", "pw"))).status_code == 200
            done.set()

        n.start_soon(slow)
        await trio.sleep(0.05)
        with trio.fail_after(0.25):
            assert (await c.get("/v2/")).status_code == 401
        assert not done.is_set()


# --- configuration and startup ---------------------------------------------------------------


def test_build_from_reference_environment(tmp_path: Path) -> None:
    path = tmp_path / "htpasswd"
    write_htpasswd(path, {"alice": "wonderland"})
    config, _ = load_config(None, {
        "REGISTRY_AUTH": "htpasswd",
        "REGISTRY_AUTH_HTPASSWD_REALM": "Registry Realm",
        "REGISTRY_AUTH_HTPASSWD_PATH": str(path),
    })
    auth = build_authenticator(config)
    assert isinstance(auth, HtpasswdAuth)
    assert auth.challenge == 'Basic realm="Registry Realm"'


def test_missing_file_is_a_one_line_config_error(tmp_path: Path) -> None:
    config, _ = load_config(None, {
        "REGISTRY_AUTH": "htpasswd", "REGISTRY_AUTH_HTPASSWD_PATH": str(tmp_path / "nope"),
    })
    with pytest.raises(ConfigError, match=r"auth\.htpasswd\.path: .*nope: cannot read"):
        build_authenticator(config)
    config, _ = load_config(None, {"REGISTRY_AUTH": "htpasswd"})
    with pytest.raises(ConfigError, match=r"auth\.htpasswd\.path: required"):
        build_authenticator(config)


def test_serve_with_missing_htpasswd_exits_2_with_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yml"
    cfg.write_text(
        "version: 0.1\n"
        f"storage: {{filesystem: {{rootdirectory: {tmp_path / 'data'}}}}}\n"
        "http: {addr: 127.0.0.1:0}\n"
        f"auth: {{htpasswd: {{realm: r, path: {tmp_path / 'missing'}}}}}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    proc = subprocess.run(
        [sys.executable, "-m", "registry", "serve", str(cfg)],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "auth.htpasswd.path" in lines[0] and "missing" in lines[0], lines
    assert "Traceback" not in proc.stderr
