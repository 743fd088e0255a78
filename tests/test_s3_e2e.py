"""End to end on S3: registry processes (`python -m registry serve`) on a moto bucket.

Selected only through the environment, as users do (``REGISTRY_STORAGE=s3`` +
``REGISTRY_STORAGE_S3_*``). Pushes and pulls over HTTP, two replicas sharing one upload,
redirects to presigned URLs, a bucket shared with Debian's docker-registry (distribution
2.8's s3 driver, both directions), and S3 being down when the registry starts.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import e2e_support as e2e
import httpx
import pytest
import s3_support

pytestmark = [pytest.mark.e2e, pytest.mark.s3]
MiB = 1024 * 1024


def reference_exe() -> str:
    return e2e.require_tool(
        "docker-registry", "apt-get install docker-registry (Debian's distribution 2.8)"
    )


@contextlib.contextmanager
def run_on_s3(
    tmp_path: Path, s3_env: dict[str, str], *, reference: bool = False, name: str = "",
    ready_status: int = 200,
) -> Iterator[e2e.RegistryProcess]:
    """One registry process on S3, configured by environment only (the file it gets names
    filesystem storage, which ``REGISTRY_STORAGE=s3`` replaces)."""

    def command(config: Path) -> tuple[list[str], dict[str, str]]:
        if reference:
            cmd = [reference_exe(), "serve", str(config)]
            # AWS_CA_BUNDLE makes the Go S3 client in docker-registry panic at startup.
            env = e2e.clean_env(drop=["AWS_CA_BUNDLE"])
        else:
            cmd, env = e2e._ours_command(config)
        env.update(s3_env)
        if not reference:  # (2.8 panics on an uploadpurging section holding only enabled)
            # The first upload purge runs after 0..59 random minutes; a 0 would race these
            # short tests (and S3 being down on purpose). The purge has its own tests.
            env.setdefault("REGISTRY_STORAGE_MAINTENANCE_UPLOADPURGING_ENABLED", "false")
        return cmd, env

    label = name or ("reference-s3" if reference else "ours-s3")
    check = None if reference else e2e.ours_log_problem
    workdir = tmp_path / label
    workdir.mkdir(exist_ok=True)
    with e2e._run_registry(
        label, workdir / "unused-root", command, workdir=workdir, check_log=check,
        ready_status=ready_status,
    ) as reg:
        yield reg


def s3_env(bucket: str | None = None, *, auth: bool = True, **overrides: Any) -> dict[str, str]:
    server = s3_support.moto_server(auth=auth)
    env = s3_support.registry_env(bucket or server.new_bucket(), auth=auth, **overrides)
    env["REGISTRY_STORAGE_DELETE_ENABLED"] = "true"
    return env


def bucket_of(env: dict[str, str]) -> str:
    return env["REGISTRY_STORAGE_S3_BUCKET"]


def list_keys(bucket: str, *, auth: bool = True) -> list[str]:
    client = s3_support.moto_server(auth=auth).boto3()
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def open_uploads(bucket: str) -> list[str]:
    answer = s3_support.moto_server().boto3().list_multipart_uploads(Bucket=bucket)
    return [u["Key"] for u in answer.get("Uploads", [])]


def random_bytes(size: int) -> bytes:
    return secrets.token_bytes(size)


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push_chunked(client: httpx.Client, repo: str, data: bytes, chunk: int) -> str:
    """POST, PATCHes with Content-Range (SPEC 13), then an empty PUT ?digest=."""
    start = client.post(f"/v2/{repo}/blobs/uploads/")
    assert start.status_code == 202, start.text
    location = start.headers["Location"]
    for offset in range(0, len(data), chunk):
        piece = data[offset : offset + chunk]
        answer = client.patch(
            location,
            content=piece,
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{offset}-{offset + len(piece) - 1}",
            },
        )
        assert answer.status_code == 202, answer.text
        assert answer.headers["Range"] == f"0-{offset + len(piece) - 1}"
        location = answer.headers["Location"]
    digest = digest_of(data)
    sep = "&" if "?" in location else "?"
    done = client.put(f"{location}{sep}digest={digest}")
    assert done.status_code == 201, done.text
    return digest


def push_image(client: httpx.Client, repo: str, tag: str) -> tuple[bytes, dict[str, bytes]]:
    """Push an OCI image (config + 2 layers) and tag it; returns (manifest, blobs)."""
    nonce = secrets.token_hex(6)
    image = e2e.make_image([{"a.txt": f"a {nonce}".encode()}, {"b.txt": f"b {nonce}".encode()}])
    for blob in image.blobs.values():
        e2e.push_blob(client, repo, blob)
    put = client.put(
        f"/v2/{repo}/manifests/{tag}",
        content=image.manifest,
        headers={"Content-Type": e2e.MEDIA_OCI_MANIFEST},
    )
    assert put.status_code == 201, put.text
    return image.manifest, image.blobs


def check_image(
    client: httpx.Client, repo: str, tag: str, manifest: bytes, blobs: dict[str, bytes]
) -> None:
    got = e2e.get_manifest(client, repo, tag)
    assert got.status_code == 200, got.text
    assert got.content == manifest
    assert got.headers["Docker-Content-Digest"] == digest_of(manifest)
    for digest, blob in blobs.items():
        answer = client.get(f"/v2/{repo}/blobs/{digest}")
        assert answer.status_code == 200, (digest, answer.status_code, answer.text[:200])
        assert answer.content == blob
    tags = client.get(f"/v2/{repo}/tags/list")
    assert tag in tags.json()["tags"]


# --- ours alone ---------------------------------------------------------------------------


def test_push_pull_blobs_and_manifests_on_s3(tmp_path: Path) -> None:
    env = s3_env() | {"REGISTRY_STORAGE_REDIRECT_DISABLE": "true"}
    bucket = bucket_of(env)
    big = random_bytes(12 * MiB + 5)
    with run_on_s3(tmp_path, env) as reg, reg.client() as client:
        manifest, blobs = push_image(client, "s3/app", "v1")
        check_image(client, "s3/app", "v1", manifest, blobs)
        big_digest = push_chunked(client, "s3/app", big, 4 * MiB + 1)  # multipart, 3 parts
        head = client.head(f"/v2/s3/app/blobs/{big_digest}")
        assert head.headers["Content-Length"] == str(len(big))
        ranged = client.get(f"/v2/s3/app/blobs/{big_digest}", headers={"Range": "bytes=7-99"})
        assert (ranged.status_code, ranged.content) == (206, big[7:100])
        assert client.get(f"/v2/s3/app/blobs/{big_digest}").content == big
        assert "s3/app" in client.get("/v2/_catalog").json()["repositories"]
        deleted = client.delete(f"/v2/s3/app/manifests/{digest_of(manifest)}")
        assert deleted.status_code == 202
        assert e2e.get_manifest(client, "s3/app", "v1").status_code == 404
    keys = list_keys(bucket)
    root = "registry-root/docker/registry/v2"
    for digest in [*blobs, big_digest]:
        hexpart = digest.removeprefix("sha256:")
        assert f"{root}/blobs/sha256/{hexpart[:2]}/{hexpart}/data" in keys
        assert f"{root}/repositories/s3/app/_layers/sha256/{hexpart}/link" in keys
    assert not [k for k in keys if "/_uploads/" in k or k.endswith(".s3part")]
    assert open_uploads(bucket) == []


def test_a_second_replica_continues_an_upload_the_first_started(tmp_path: Path) -> None:
    env = s3_env() | {
        "REGISTRY_STORAGE_REDIRECT_DISABLE": "true",
        "REGISTRY_HTTP_SECRET": "shared-secret-for-both-replicas",
    }
    bucket = bucket_of(env)
    data = random_bytes(11 * MiB + 3)
    cut1, cut2 = 6 * MiB + 1, 9 * MiB
    with (
        run_on_s3(tmp_path, env, name="a") as a,
        run_on_s3(tmp_path, env, name="b") as b,
        a.client() as ca,
        b.client() as cb,
    ):
        start = ca.post("/v2/shared/app/blobs/uploads/")
        assert start.status_code == 202
        location = httpx.URL(start.headers["Location"])
        path = location.raw_path.decode()

        def patch(client: httpx.Client, target: str, first: int, last: int) -> str:
            answer = client.patch(
                target,
                content=data[first:last],
                headers={
                    "Content-Range": f"{first}-{last - 1}",
                    "Content-Type": "application/octet-stream",
                },
            )
            assert answer.status_code == 202, answer.text
            assert answer.headers["Range"] == f"0-{last - 1}"
            return httpx.URL(answer.headers["Location"]).raw_path.decode()

        path = patch(ca, path, 0, cut1)
        status = cb.get(path)  # the other replica sees the persisted size
        assert status.status_code == 204 and status.headers["Range"] == f"0-{cut1 - 1}"
        path = patch(cb, path, cut1, cut2)
        sep = "&" if "?" in path else "?"
        done = ca.put(
            f"{path}{sep}digest={digest_of(data)}",
            content=data[cut2:],
            headers={"Content-Type": "application/octet-stream"},
        )
        assert done.status_code == 201, done.text
        assert cb.get(f"/v2/shared/app/blobs/{digest_of(data)}").content == data
    assert open_uploads(bucket) == []
    assert not [k for k in list_keys(bucket) if k.endswith(".s3part")]


def test_blob_get_redirects_to_a_presigned_url(tmp_path: Path) -> None:
    # Presigned URLs need the moto server without IAM auth (see s3_support.moto_server).
    env = s3_env(auth=False)
    data = random_bytes(300_000)
    with run_on_s3(tmp_path, env) as reg, reg.client() as client:
        digest = e2e.push_blob(client, "redir/app", data)
        answer = client.get(f"/v2/redir/app/blobs/{digest}")
        assert answer.status_code == 307, answer.text
        target = answer.headers["Location"]
        assert target.startswith(s3_support.moto_server(auth=False).endpoint)
        assert "X-Amz-Signature=" in target
        with httpx.Client() as direct:
            assert direct.get(target).content == data
            ranged = direct.get(target, headers={"Range": "bytes=10-19"})
            assert (ranged.status_code, ranged.content) == (206, data[10:20])
        followed = client.get(
            f"/v2/redir/app/blobs/{digest}", headers={"Range": "bytes=5-9"}, follow_redirects=True
        )
        assert (followed.status_code, followed.content) == (206, data[5:10])


def test_redirectendpoint_names_the_public_host(tmp_path: Path) -> None:
    env = s3_env(auth=False, redirectendpoint="https://public.example.com")
    with run_on_s3(tmp_path, env) as reg, reg.client() as client:
        digest = e2e.push_blob(client, "redir/pub", b"public bytes")
        answer = client.get(f"/v2/redir/pub/blobs/{digest}")
        assert answer.status_code == 307
        assert answer.headers["Location"].startswith(
            f"https://public.example.com/{bucket_of(env)}/registry-root/docker/registry/v2/blobs/"
        )


def test_the_r2_style_variables_alone_configure_the_bucket(tmp_path: Path) -> None:
    """Exactly the variables R2 users set (issue 4), pointed at moto: region auto, root /."""
    server = s3_support.moto_server()
    bucket = server.new_bucket()
    env = {
        "REGISTRY_STORAGE": "s3",
        "REGISTRY_STORAGE_S3_REGIONENDPOINT": server.endpoint,
        "REGISTRY_STORAGE_S3_ACCESSKEY": server.access_key,
        "REGISTRY_STORAGE_S3_SECRETKEY": server.secret_key,
        "REGISTRY_STORAGE_S3_BUCKET": bucket,
        "REGISTRY_STORAGE_S3_REGION": "auto",
        "REGISTRY_STORAGE_S3_ROOTDIRECTORY": "/",
        "REGISTRY_STORAGE_S3_SECURE": "true",  # the endpoint URL's http:// wins
        "REGISTRY_STORAGE_S3_V4AUTH": "true",
        "REGISTRY_STORAGE_S3_CHUNKSIZE": "5242880",
        "REGISTRY_STORAGE_REDIRECT_DISABLE": "true",
    }
    data = random_bytes(7 * MiB)
    with run_on_s3(tmp_path, env) as reg, reg.client() as client:
        digest = push_chunked(client, "r2/app", data, 3 * MiB)
        assert client.get(f"/v2/r2/app/blobs/{digest}").content == data
    hexpart = digest.removeprefix("sha256:")
    assert f"docker/registry/v2/blobs/sha256/{hexpart[:2]}/{hexpart}/data" in list_keys(bucket)


def test_s3_down_at_startup_then_back(tmp_path: Path) -> None:
    """The registry starts with S3 unreachable, answers 503 (one log line, no traceback) --
    /v2/ too, so the container's health check fails (issue 15, item 5) -- and serves once
    S3 is up."""
    port = e2e.free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "REGISTRY_STORAGE": "s3",
        "REGISTRY_STORAGE_S3_REGIONENDPOINT": endpoint,
        "REGISTRY_STORAGE_S3_ACCESSKEY": "AKIDNOAUTH",
        "REGISTRY_STORAGE_S3_SECRETKEY": "secret",
        "REGISTRY_STORAGE_S3_BUCKET": "later",
        "REGISTRY_STORAGE_S3_REGION": "us-east-1",
        "REGISTRY_STORAGE_REDIRECT_DISABLE": "true",
        "REGISTRY_HTTP_WORKERS": "1",
    }
    blob = b"arrives once S3 is back"
    with run_on_s3(tmp_path, env, ready_status=503) as reg, reg.client() as client:
        down = client.head(f"/v2/late/app/blobs/{digest_of(blob)}")
        assert down.status_code == 503
        assert client.get("/v2/").json()["errors"][0]["code"] == "UNAVAILABLE"
        assert client.post("/v2/late/app/blobs/uploads/").status_code == 503
        moto = s3_support.start_moto_process(port)
        try:
            s3_support.wait_for_moto(endpoint, moto)
            import boto3

            boto3.client(
                "s3",
                endpoint_url=endpoint,
                region_name="us-east-1",
                aws_access_key_id="AKIDNOAUTH",
                aws_secret_access_key="secret",
            ).create_bucket(Bucket="later")
            deadline = time.monotonic() + 30  # the unhealthy check re-probes every 5 s
            while client.get("/v2/").status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.2)
            digest = e2e.push_blob(client, "late/app", blob)
            assert client.get(f"/v2/late/app/blobs/{digest}").content == blob
        finally:
            moto.terminate()
            moto.wait(10)
        log = reg.log_path.read_text(errors="replace")
    # One line per outage, never one per request. Between moto answering and the bucket
    # being created, a HEAD may succeed (a bucket-less 404 looks like a missing key) and a
    # GET then fails again: a second, short outage, so the lines alternate.
    events = [line for line in log.splitlines() if "is unusable" in line or "works again" in line]
    assert events and "is unusable" in events[0] and "ConnectError" in events[0], events
    assert "works again" in events[-1], events
    kinds = ["is unusable" in line for line in events]
    assert all(a != b for a, b in itertools.pairwise(kinds)), events
    assert len(events) <= 4, events  # the outage at start, at most one more while moto starts


def test_s3_failing_mid_upload_gives_a_retryable_error_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    """S3 fails every try of one part: the client gets a 5xx it may retry, no blob is
    visible, no multipart upload stays open; once S3 is healthy the same push works."""
    server = s3_support.moto_server()
    data = random_bytes(16 * MiB)
    digest = digest_of(data)
    with s3_support.proxy_in_thread(server.port) as proxy:
        env = s3_env(regionendpoint=proxy.endpoint) | {
            "REGISTRY_STORAGE_REDIRECT_DISABLE": "true",
        }
        bucket = bucket_of(env)
        proxy.fail("500", -1, lambda r: r.method == "PUT" and r.query.get("partNumber") == "2")
        with run_on_s3(tmp_path, env) as reg, reg.client() as client:
            start = client.post("/v2/faulty/app/blobs/uploads/")
            assert start.status_code == 202
            failed = client.patch(
                start.headers["Location"],
                content=data,
                headers={"Content-Type": "application/octet-stream"},
            )
            assert failed.status_code in (500, 502, 503), failed.text
            assert failed.json()["errors"][0]["code"] != "UNKNOWN", failed.text
            assert client.head(f"/v2/faulty/app/blobs/{digest}").status_code == 404
            assert open_uploads(bucket) == []
            assert not [k for k in list_keys(bucket) if "/blobs/" in k]
            proxy.rules.clear()
            again = client.post("/v2/faulty/app/blobs/uploads/")
            patched = client.patch(
                again.headers["Location"],
                content=data,
                headers={"Content-Type": "application/octet-stream"},
            )
            assert patched.status_code == 202, patched.text
            location = patched.headers["Location"]
            sep = "&" if "?" in location else "?"
            assert client.put(f"{location}{sep}digest={digest}").status_code == 201
            assert client.get(f"/v2/faulty/app/blobs/{digest}").content == data
        assert proxy.assert_equal_parts() >= 1
    assert open_uploads(bucket) == []


# --- sharing a bucket with the reference (distribution 2.8's s3 driver) -------------------


Runner = Callable[..., contextlib.AbstractContextManager[e2e.RegistryProcess]]


@pytest.mark.parametrize("writer,reader", [("reference", "ours"), ("ours", "reference")])
def test_bucket_shared_with_docker_registry(tmp_path: Path, writer: str, reader: str) -> None:
    reference_exe()
    env = s3_env() | {"REGISTRY_STORAGE_REDIRECT_DISABLE": "true"}
    big = random_bytes(13 * MiB + 1)
    with (
        run_on_s3(tmp_path, env, reference=writer == "reference", name=writer) as first,
        first.client() as client,
    ):
        manifest, blobs = push_image(client, "compat/s3", "v1")
        big_digest = push_chunked(client, "compat/s3", big, 5 * MiB)
    with (
        run_on_s3(tmp_path, env, reference=reader == "reference", name=reader) as second,
        second.client() as client,
    ):
        check_image(client, "compat/s3", "v1", manifest, blobs)
        assert client.get(f"/v2/compat/s3/blobs/{big_digest}").content == big
        assert client.get("/v2/_catalog").json()["repositories"] == ["compat/s3"]
        # and the reader can add to what the writer left
        more, more_blobs = push_image(client, "compat/s3", "v2")
    with (
        run_on_s3(tmp_path, env, reference=writer == "reference", name=writer + "2") as again,
        again.client() as client,
    ):
        check_image(client, "compat/s3", "v2", more, more_blobs)
    assert open_uploads(bucket_of(env)) == []


# --- the docker client on S3 --------------------------------------------------------------

docker_cli = e2e.docker_cli


@pytest.mark.parametrize("redirect", [True, False], ids=["redirect", "through-registry"])
def test_docker_push_pull_run_on_s3(docker_cli: str, tmp_path: Path, redirect: bool) -> None:
    """docker push (one streamed PATCH per layer) and pull on S3; with redirects the pull
    follows 307s to presigned URLs (moto without IAM auth, which breaks presigned URLs)."""
    from test_e2e_docker import build_app, docker_push, run_cat

    if redirect:
        env = s3_env(auth=False)
    else:
        env = s3_env() | {"REGISTRY_STORAGE_REDIRECT_DISABLE": "true"}
    with run_on_s3(tmp_path, env) as reg:
        ref = f"{reg.host}/s3e2e/app:{'redir' if redirect else 'stream'}"
        try:
            expected = build_app(docker_cli, tmp_path / "ctx", ref)
            digest, _ = docker_push(docker_cli, ref)
            e2e.docker_remove_images(docker_cli, ref, e2e.BASE_IMAGE)
            pulled = e2e.run([docker_cli, "pull", ref]).stdout
            assert digest in pulled
            assert run_cat(docker_cli, ref) == expected
        finally:
            e2e.docker_remove_images(docker_cli, ref)
        log = reg.log_path.read_text(errors="replace")
    blob_gets = e2e.access_lines(log, "GET", "/v2/s3e2e/app/blobs/")
    assert blob_gets, "docker pulled no blob through us?"
    assert all((status == 307) == redirect for _, status in blob_gets), blob_gets
    if not redirect:
        assert open_uploads(bucket_of(env)) == []


@pytest.mark.parametrize("fault", ["missing bucket", "wrong secret"])
def test_unusable_bucket_at_startup_is_unhealthy_everywhere(tmp_path: Path, fault: str) -> None:
    """Issue 15, item 5: with no health section at all, a bucket that does not exist or a
    wrong key shows on /debug/health (503, storagedriver_s3), on /v2/ (503 UNAVAILABLE),
    and so in the image's health check (docker/healthcheck.py exits 1)."""
    if fault == "missing bucket":
        env = s3_env("no-such-bucket-here")
    else:
        env = s3_env(secretkey="wrong")
    debug_port = e2e.free_port()
    env["REGISTRY_HTTP_DEBUG_ADDR"] = f"127.0.0.1:{debug_port}"
    with run_on_s3(tmp_path, env, ready_status=503) as reg:
        health = httpx.get(f"http://127.0.0.1:{debug_port}/debug/health", timeout=10)
        assert health.status_code == 503 and list(health.json()) == ["storagedriver_s3"]
        assert httpx.get(f"{reg.url}/v2/", timeout=10).json()["errors"][0]["code"] == (
            "UNAVAILABLE")
        probe = subprocess.run(
            [sys.executable, str(e2e.REPO_ROOT / "docker" / "healthcheck.py")],
            env={**e2e.clean_env(), "REGISTRY_HTTP_ADDR": f":{reg.port}"},
            capture_output=True, text=True, timeout=30, check=False,
        )
        assert probe.returncode == 1 and "503" in probe.stderr, probe.stderr
