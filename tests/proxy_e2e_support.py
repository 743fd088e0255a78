"""Pull-through cache tests (issue 16): upstream registries and the proxy under test.

Everything runs as real processes on 127.0.0.1, started and stopped by these context
managers (SIGTERM, then SIGKILL, bounded):

- :func:`open_upstream` ``kind``: ``"anonymous"`` Debian's ``docker-registry``
  (distribution 2.8), ``"basic"`` our registry with htpasswd, ``"token"`` our registry
  with token auth and the tests' token issuer (tests/test_auth_token.py's ``Issuer`` and
  ``TokenServer``, served in a thread), ``"token-anonymous"`` the same, the proxy without
  credentials (anonymous pull tokens). An :class:`Upstream` knows the credentials the
  proxy must use and gives a client that may push to it.
- :func:`run_proxy` the proxy under test in registry:3's proxy mode (``proxy.remoteurl``,
  ``username``, ``password``, ``ttl``) on filesystem storage: ours (``python -m registry
  serve``) or ``../shared/bin/registry-v3.0.0`` (``env -u AWS_CA_BUNDLE``). Which one is
  :func:`proxy_kind`: the environment variable ``PROXY_UNDER_TEST`` = ``ours`` (default;
  CI) or ``v3`` (to check a test against the reference's behaviour).
- :func:`seed_image` / :func:`seed_index` push content straight to the upstream.

The fault-injecting reverse proxy between the two is tests/registry_faults.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from registry.errors import ErrorCode

try:  # tests/ is a plain directory on sys.path, or a package
    from tests import e2e_support as e2e
except ImportError:
    import e2e_support as e2e  # type: ignore[no-redef]

V3_BINARY = e2e.REPO_ROOT.parent / "shared" / "bin" / "registry-v3.0.0"
PROXY_KINDS = ("ours", "v3")
UPSTREAM_KINDS = ("anonymous", "basic", "token", "token-anonymous")
USER, PASSWORD = "mirror", "upstream-secret"  # the proxy's credentials at the upstream
PULL_TIMEOUT_S = 60.0  # one pull of a few MiB through the proxy, cold, on a busy machine


def proxy_kind() -> str:
    """The proxy under test: ``PROXY_UNDER_TEST`` (``ours`` by default)."""
    kind = os.environ.get("PROXY_UNDER_TEST", "ours")
    if kind not in PROXY_KINDS:
        raise ValueError(f"PROXY_UNDER_TEST={kind!r}: one of {PROXY_KINDS}")
    return kind


def require_v3() -> str:
    """The registry-v3.0.0 binary; fails under CI=true, skips elsewhere when it is missing."""
    if not V3_BINARY.is_file():
        reason = f"{V3_BINARY} is missing (see ../shared/bin/README.md)"
        if e2e.in_ci():
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    return str(V3_BINARY)


# --------------------------------------------------------------------------- processes


@contextlib.contextmanager
def run_process(
    name: str,
    argv: Sequence[str],
    env: dict[str, str],
    config: dict[str, Any],
    workdir: Path,
    *,
    check_log: bool = False,
    ready: tuple[int, ...] = (200, 401),
) -> Iterator[e2e.RegistryProcess]:
    """Write ``config`` (its ``http.addr`` set to a free port) and run ``argv + [config]``
    until ``GET /v2/`` answers one of ``ready`` (bounded); stop it on exit. With
    ``check_log`` a traceback or a 500 in its log fails the test (ours: DESIGN, Errors)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = e2e.free_port()
    config = {**config, "http": {**config.get("http", {}), "addr": f"127.0.0.1:{port}"}}
    root = Path(config["storage"]["filesystem"]["rootdirectory"])
    stamp = f"{name}-{port}"
    cfg_path = workdir / f"{stamp}.yml"
    cfg_path.write_text(yaml.safe_dump(config))
    log_path = workdir / f"{stamp}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*argv, str(cfg_path)], stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, env=env, cwd=workdir,
        )
    reg = e2e.RegistryProcess(name=name, root=root, port=port, proc=proc, log_path=log_path)
    try:
        _wait_ready(reg, ready)
        try:
            yield reg
        except BaseException as exc:
            exc.add_note(f"--- {name} log ({log_path}) ---\n{reg.log_tail()}")
            raise
    finally:
        killed = e2e._stop(proc)
    assert not killed, f"{name} ignored SIGTERM; log:\n{reg.log_tail()}"
    if check_log:
        problem = e2e.ours_log_problem(log_path.read_text(errors="replace"))
        assert problem is None, f"{name} log shows {problem}; log:\n{reg.log_tail()}"


def _wait_ready(reg: e2e.RegistryProcess, ready: tuple[int, ...]) -> None:
    deadline = time.monotonic() + e2e.START_TIMEOUT_S
    last = "no answer yet"
    with httpx.Client(timeout=2.0) as probe:
        while time.monotonic() < deadline:
            if reg.proc.poll() is not None:
                pytest.fail(f"{reg.name} exited with {reg.proc.returncode}; log:\n{reg.log_tail()}")
            try:
                resp = probe.get(f"{reg.url}/v2/")
                if resp.status_code in ready:
                    return
                last = f"GET /v2/ -> {resp.status_code}"
            except httpx.TransportError as exc:
                last = repr(exc)
            time.sleep(0.1)
    pytest.fail(f"{reg.name} not ready in {e2e.START_TIMEOUT_S}s ({last}); log:\n{reg.log_tail()}")


def _ours_argv() -> tuple[list[str], dict[str, str]]:
    env = e2e.clean_env()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(e2e.REPO_ROOT), env.get("PYTHONPATH")]))
    return [sys.executable, "-m", "registry", "serve"], env


def _base_config(root: Path) -> dict[str, Any]:
    return {
        "version": "0.1",
        "log": {"level": "info"},
        "storage": {"filesystem": {"rootdirectory": str(root)}, "delete": {"enabled": True}},
        "http": {},
    }


@contextlib.contextmanager
def run_proxy(
    kind: str,
    root: Path,
    remoteurl: str,
    *,
    username: str | None = None,
    password: str | None = None,
    ttl: str | None = None,
    workers: int = 1,
    workdir: Path | None = None,
    check_log: bool = True,
) -> Iterator[e2e.RegistryProcess]:
    """The proxy under test (``kind`` ours or v3) caching ``remoteurl`` into ``root``.

    Ours runs with ``http.workers: workers`` (v3 has no such key). ``check_log`` applies to
    ours only (v3 logs its own errors)."""
    config = _base_config(root)
    proxy: dict[str, Any] = {"remoteurl": remoteurl}
    if username is not None:
        proxy.update(username=username, password=password)
    if ttl is not None:
        proxy["ttl"] = ttl
    config["proxy"] = proxy
    if kind == "ours":
        argv, env = _ours_argv()
        config["http"]["workers"] = workers
    elif kind == "v3":
        argv, env = ["env", "-u", "AWS_CA_BUNDLE", require_v3(), "serve"], e2e.clean_env()
    else:
        raise ValueError(kind)
    with run_process(f"proxy-{kind}", argv, env, config, workdir or root.parent,
                     check_log=check_log and kind == "ours") as reg:
        yield reg


@contextlib.contextmanager
def run_ours_proxies(root: Path, proxies: list[dict[str, Any]], *, workdir: Path | None = None,
                     ) -> Iterator[e2e.RegistryProcess]:
    """Ours with our ``proxies:`` list (prefixed remotes beside local repositories); v3 has
    no such key, so there is no v3 side."""
    config = _base_config(root)
    config["proxies"] = proxies
    config["http"]["workers"] = 1
    argv, env = _ours_argv()
    with run_process("proxies-ours", argv, env, config, workdir or root.parent,
                     check_log=True) as reg:
        yield reg


# --------------------------------------------------------------------------- upstreams


@dataclasses.dataclass
class Upstream:
    """A registry the proxy caches: its process, and the proxy's credentials there."""

    kind: str
    process: e2e.RegistryProcess
    username: str | None = None
    password: str | None = None
    push_headers: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def host(self) -> str:
        return self.process.host

    @property
    def url(self) -> str:
        return self.process.url

    def client(self) -> httpx.Client:
        """A client that may push to (and pull from) the upstream directly."""
        auth = (self.username, self.password) if self.kind == "basic" else None
        return httpx.Client(base_url=self.url, timeout=30.0, auth=auth,  # type: ignore[arg-type]
                            headers=self.push_headers)

    def stop(self) -> None:
        """Stop the upstream process now (the "upstream stopped" scenarios)."""
        assert not e2e._stop(self.process.proc), "upstream ignored SIGTERM"


@contextlib.contextmanager
def open_upstream(kind: str, workdir: Path) -> Iterator[Upstream]:
    """An upstream of ``kind`` (see the module docstring) with storage under ``workdir``."""
    root = workdir / "upstream-storage"
    workdir.mkdir(parents=True, exist_ok=True)
    if kind == "anonymous":
        exe = e2e.require_tool("docker-registry",
                               "apt-get install docker-registry (Debian's distribution 2.8)")
        with run_process("upstream-2.8", [exe, "serve"], e2e.clean_env(drop=["AWS_CA_BUNDLE"]),
                         _base_config(root), workdir) as reg:
            yield Upstream(kind, reg)
    elif kind == "basic":
        from test_auth_process import htpasswd_config, htpasswd_file

        config = _base_config(root)
        config.update(htpasswd_config(htpasswd_file(workdir / "htpasswd", {USER: PASSWORD})))
        argv, env = _ours_argv()
        with run_process("upstream-basic", argv, env, config, workdir, check_log=True) as reg:
            yield Upstream(kind, reg, USER, PASSWORD)
    elif kind in ("token", "token-anonymous"):
        from test_auth_token import ISSUER, SERVICE, Issuer, TokenServer, serve_in_thread

        issuer = Issuer(workdir)
        realm, stop_issuer = serve_in_thread(TokenServer(issuer, {USER: PASSWORD}))
        config = _base_config(root)
        config["auth"] = {"token": {"realm": f"{realm}/token", "service": SERVICE,
                                    "issuer": ISSUER, "rootcertbundle": str(issuer.bundle)}}
        argv, env = _ours_argv()
        # The seeding client's token may push anywhere (its lifetime: issuer's ttl, 300 s).
        admin = issuer.token([{"type": "repository", "name": n, "actions": ["pull", "push"]}
                              for n in SEED_REPOS], sub="seeder", ttl=3600)
        try:
            with run_process("upstream-token", argv, env, config, workdir,
                             check_log=True) as reg:
                # token-anonymous: the proxy has no credentials; the issuer gives anonymous
                # callers pull-only tokens (the Bearer flow without a login).
                user, password = (USER, PASSWORD) if kind == "token" else (None, None)
                yield Upstream(kind, reg, user, password,
                               push_headers={"Authorization": f"Bearer {admin}"})
        finally:
            stop_issuer()
    else:
        raise ValueError(kind)


# Token upstreams grant the seeding client push on these names only.
SEED_REPOS = ("library/alpine", "library/busybox", "library/multi", "team/app", "team/big")


# --------------------------------------------------------------------------- content


def seed_image(client: httpx.Client, repo: str, tag: str, image: e2e.OciImage) -> str:
    """Push ``image`` (its blobs, then its manifest under ``tag``); returns its digest."""
    for data in image.blobs.values():
        e2e.push_blob(client, repo, data)
    put_manifest(client, repo, tag, image.manifest, e2e.MEDIA_OCI_MANIFEST)
    return image.digest


def seed_index(client: httpx.Client, repo: str, tag: str,
               images: Sequence[e2e.OciImage]) -> bytes:
    """Push every image of a multi-platform index (by digest), then the index under ``tag``."""
    for img in images:
        for data in img.blobs.values():
            e2e.push_blob(client, repo, data)
        put_manifest(client, repo, img.digest, img.manifest, e2e.MEDIA_OCI_MANIFEST)
    index = e2e.make_index(images)
    put_manifest(client, repo, tag, index, e2e.MEDIA_OCI_INDEX)
    return index


def put_manifest(client: httpx.Client, repo: str, ref: str, data: bytes, media: str) -> None:
    r = client.put(f"/v2/{repo}/manifests/{ref}", content=data,
                   headers={"Content-Type": media})
    assert r.status_code == 201, (r.status_code, r.text)


def random_image(layer_sizes: Sequence[int], seed: int = 0, arch: str = "amd64") -> e2e.OciImage:
    """An image with one layer per size (random, incompressible bytes: sizes hold on the
    wire)."""
    import random

    rng = random.Random(seed)
    return e2e.make_image([{f"f{i}": rng.randbytes(n)} for i, n in enumerate(layer_sizes)],
                          arch=arch)


def pull_image(client: httpx.Client, repo: str, ref: str) -> dict[str, bytes]:
    """GET the manifest ``ref`` and every blob it names through ``client``; digest -> bytes.

    Asserts each answer is 200 and each body hashes to its digest."""
    r = e2e.get_manifest(client, repo, ref)
    assert r.status_code == 200, (r.status_code, r.text)
    got = {r.headers["Docker-Content-Digest"]: r.content}
    assert e2e.sha256_digest(r.content) == r.headers["Docker-Content-Digest"]
    manifest = json.loads(r.content)
    for desc in [manifest["config"], *manifest["layers"]]:
        b = client.get(f"/v2/{repo}/blobs/{desc['digest']}")
        assert b.status_code == 200, (desc["digest"], b.status_code, b.text[:300])
        assert e2e.sha256_digest(b.content) == desc["digest"]
        got[desc["digest"]] = b.content
    return got


WIRE_STATUS = {(c.wire_code, c.status) for c in ErrorCode}  # UNAVAILABLE: 503 and 507


def assert_clean_error(r: httpx.Response, allowed: set[int]) -> None:
    """A JSON error envelope (HEAD: no body) with spec codes matching the status; never 500."""
    assert r.status_code != 500, ("500 to the client", r.text[:500])
    assert r.status_code in allowed, (r.status_code, r.text[:500])
    if r.request.method == "HEAD":
        return
    body = json.loads(r.content)
    codes = [e["code"] for e in body["errors"]]
    assert codes, body
    assert all((c, r.status_code) in WIRE_STATUS for c in codes), (r.status_code, codes)


def blob_data_path(root: Path, digest: str) -> Path:
    """Where a blob's bytes live in the reference's filesystem layout (SPEC, Storage)."""
    hexpart = digest.removeprefix("sha256:")
    return root / "docker/registry/v2/blobs/sha256" / hexpart[:2] / hexpart / "data"


# --------------------------------------------------------------------------- dockerd

DOCKERD_START_TIMEOUT_S = 60.0


@contextlib.contextmanager
def own_dockerd(workdir: Path, mirror: str) -> Iterator[list[str]]:
    """A dockerd of the test's own (never the system's, which others share), with
    ``registry-mirrors: [mirror]`` and the mirror's host insecure (plain HTTP): its own data
    root, exec root, pidfile and unix socket under ``workdir``, vfs storage, no iptables or
    bridge. Yields the docker CLI argv prefix that talks to it; stops it (SIGTERM, bounded)
    on exit."""
    dockerd = e2e.require_tool("dockerd", "apt-get install docker.io")
    docker = e2e.require_tool("docker", "apt-get install docker.io")
    workdir.mkdir(parents=True, exist_ok=True)
    sock = workdir / "docker.sock"
    assert len(str(sock)) < 100, f"unix socket path too long: {sock}"
    config = workdir / "daemon.json"
    host = mirror.removeprefix("http://")
    config.write_text(json.dumps({"registry-mirrors": [mirror], "insecure-registries": [host]}))
    argv = [
        dockerd, f"--config-file={config}", f"--data-root={workdir / 'data'}",
        f"--exec-root={workdir / 'exec'}", f"--pidfile={workdir / 'docker.pid'}",
        f"-H=unix://{sock}", "--storage-driver=vfs", "--iptables=false", "--ip6tables=false",
        "--bridge=none",
    ]
    log_path = workdir / "dockerd.log"
    env = e2e.clean_env()
    env.pop("DOCKER_HOST", None)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, env=env)
    cli = [docker, "-H", f"unix://{sock}"]
    try:
        deadline = time.monotonic() + DOCKERD_START_TIMEOUT_S
        while e2e.run([*cli, "info"], check=False, timeout=20).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"own dockerd did not start; log:\n{log_path.read_text()[-4000:]}")
            time.sleep(0.5)
        try:
            yield cli
        except BaseException as exc:
            exc.add_note(f"--- dockerd log ---\n{log_path.read_text(errors='replace')[-4000:]}")
            raise
    finally:
        killed = e2e._stop(proc)
        # vfs layers are plain directories; leave nothing mounted or running behind
        assert not killed, "own dockerd ignored SIGTERM"
