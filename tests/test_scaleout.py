"""Three replicas on one storage behind haproxy, balancing every request round-robin
(issue 17, items 2-3): one bucket on moto (signature checking on) and, where cheap, one
shared directory. Real processes (tests/scaleout_support.py), real clients (httpx, dockerd,
skopeo); every check reads what the replicas logged or what storage holds."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import secrets
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from scaleout_support import STORAGES, Deployment, deployment

try:  # tests/ is a plain directory on sys.path, or a package
    from tests import e2e_support as e2e
except ImportError:
    import e2e_support as e2e  # type: ignore[no-redef]

pytestmark = pytest.mark.e2e
docker_cli = e2e.docker_cli

CHUNK = 64 * 1024  # bytes per PATCH in the chunked pushes: several PATCHes per layer
PUSHES = 32  # concurrent pushes of overlapping images (issue 17)
PUSH_THREADS = 8  # client threads: bounded, the machine has 2 cores
_UPLOAD_UUID = re.compile(r"/blobs/uploads/([^/?]+)")


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def client(deploy: Deployment) -> httpx.Client:
    return httpx.Client(base_url=deploy.url, timeout=60.0)


def chunked_upload(http: httpx.Client, repo: str, data: bytes) -> str:
    """POST, PATCHes of CHUNK bytes with Content-Range (SPEC 13), PUT ?digest= (one
    request per step, so haproxy spreads them); returns the digest."""
    digest = sha(data)
    r = http.post(f"/v2/{repo}/blobs/uploads/")
    assert r.status_code == 202, r.text
    location = r.headers["Location"]
    for start in range(0, len(data), CHUNK):
        piece = data[start : start + CHUNK]
        r = http.patch(location, content=piece, headers={
            "Content-Range": f"{start}-{start + len(piece) - 1}",
            "Content-Type": "application/octet-stream"})  # fmt: skip
        assert r.status_code == 202, r.text
        location = r.headers["Location"]
    sep = "&" if "?" in location else "?"
    r = http.put(f"{location}{sep}digest={digest}")
    assert r.status_code == 201, r.text
    return digest


def push_manifest(http: httpx.Client, repo: str, tag: str, config: bytes,
                  layers: list[bytes]) -> bytes:  # fmt: skip
    manifest = e2e.canonical_json({
        "schemaVersion": 2, "mediaType": e2e.MEDIA_OCI_MANIFEST,
        "config": e2e.descriptor(e2e.MEDIA_OCI_CONFIG, config),
        "layers": [e2e.descriptor(e2e.MEDIA_OCI_LAYER_GZIP, layer) for layer in layers]})  # fmt: skip
    r = http.put(f"/v2/{repo}/manifests/{tag}", content=manifest,
                 headers={"Content-Type": e2e.MEDIA_OCI_MANIFEST})  # fmt: skip
    assert r.status_code == 201, r.text
    return manifest


def pull_and_verify(http: httpx.Client, repo: str, tag: str, manifest: bytes) -> None:
    """The manifest comes back byte for byte and every blob's bytes match its digest."""
    r = e2e.get_manifest(http, repo, tag)
    assert r.status_code == 200, (repo, tag, r.text)
    assert r.content == manifest
    doc = json.loads(manifest)
    for desc in [doc["config"], *doc["layers"]]:
        blob = http.get(f"/v2/{repo}/blobs/{desc['digest']}")
        assert blob.status_code == 200, (repo, desc, blob.text)
        assert sha(blob.content) == desc["digest"], f"wrong bytes for {desc['digest']}"


def uploads_by_replica(deploy: Deployment, repo: str) -> dict[str, set[int]]:
    """Upload UUID -> the replicas that served a request of that upload session."""
    spread: dict[str, set[int]] = defaultdict(set)
    deploy.quiet_logs()
    for replica in deploy.replicas:
        for _, uri, _ in replica.access(None, f"/v2/{repo}/blobs/uploads/"):
            found = _UPLOAD_UUID.search(uri)
            if found:
                spread[found.group(1)].add(replica.index)
    return spread


@pytest.fixture(params=STORAGES)
def storage(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# --------------------------------------------------------------------------- balancing


def test_successive_requests_on_one_connection_reach_every_replica(tmp_path: Path,
                                                                   storage: str) -> None:  # fmt: skip
    """haproxy balances per request, not per connection: 9 GETs on one keep-alive client
    connection land 3 on each replica (counted in the replicas' access logs)."""
    with deployment(tmp_path, storage=storage) as deploy, client(deploy) as http:
        for _ in range(9):
            assert http.get("/v2/_catalog").status_code == 200
        assert deploy.replica_of("/v2/_catalog", "GET") == {0: 3, 1: 3, 2: 3}


def test_chunked_upload_continues_across_replicas(tmp_path: Path, storage: str) -> None:
    """SPEC 13 across processes: the session lives in storage, so each PATCH may reach
    another replica; the blob is intact and every session was served by >1 replica."""
    data = secrets.token_bytes(5 * CHUNK + 123)
    with deployment(tmp_path, storage=storage) as deploy, client(deploy) as http:
        digest = chunked_upload(http, "spread/blob", data)
        r = http.get(f"/v2/spread/blob/blobs/{digest}")
        assert r.status_code == 200 and r.content == data
        spread = uploads_by_replica(deploy, "spread/blob")
        assert len(spread) == 1 and len(next(iter(spread.values()))) == 3, spread


# --------------------------------------------------------------------------- real clients


@pytest.fixture
def pushed_refs(docker_cli: str) -> Iterator[list[str]]:
    refs: list[str] = []
    yield refs
    e2e.docker_remove_images(docker_cli, *refs)


def test_docker_push_and_pull_through_the_load_balancer(
    docker_cli: str, pushed_refs: list[str], tmp_path: Path, storage: str
) -> None:
    """The system dockerd pushes and pulls through haproxy; one upload session's
    requests (POST, PATCH, PUT) were served by more than one replica."""
    with deployment(tmp_path, storage=storage) as deploy:
        ref = f"{deploy.host}/lb/app:1"
        pushed_refs.append(ref)
        expected = e2e.build_app(docker_cli, tmp_path / "ctx", ref)
        digest, _ = e2e.docker_push(docker_cli, ref)
        spread = uploads_by_replica(deploy, "lb/app")
        assert spread and any(len(replicas) > 1 for replicas in spread.values()), spread

        e2e.docker_remove_images(docker_cli, ref, e2e.BASE_IMAGE)
        e2e.run([docker_cli, "pull", ref])
        assert e2e.run_cat(docker_cli, ref) == expected
        with client(deploy) as http:
            r = e2e.get_manifest(http, "lb/app", "1")
            assert r.status_code == 200 and e2e.sha256_digest(r.content) == digest


def test_skopeo_two_platform_index_round_trip_through_the_load_balancer(
    tmp_path: Path, storage: str
) -> None:
    """skopeo copy --all in and out through haproxy: the index's digest is unchanged
    and every child, config and layer comes back byte for byte."""
    from test_e2e_skopeo import make_multiplatform

    src, dst = tmp_path / "src", tmp_path / "dst"
    index, images = make_multiplatform(src)
    digest = e2e.sha256_digest(index)
    with deployment(tmp_path, storage=storage) as deploy:
        target = f"docker://{deploy.host}/multi/app:v1"
        e2e.skopeo("copy", "--all", "--dest-tls-verify=false", f"oci:{src}:v1", target)
        raw = e2e.skopeo("inspect", "--raw", "--tls-verify=false", target).stdout
        assert e2e.sha256_digest(raw.encode()) == digest
        e2e.skopeo("copy", "--all", "--src-tls-verify=false", target, f"oci:{dst}:v1")
    assert e2e.read_oci_layout_ref(dst, "v1")["digest"] == digest
    assert e2e.read_oci_blob(dst, digest) == index
    for img in images:
        assert e2e.read_oci_blob(dst, img.digest) == img.manifest
        for blob_digest, data in img.blobs.items():
            assert e2e.read_oci_blob(dst, blob_digest) == data


# --------------------------------------------------------------------------- load


def test_32_concurrent_pushes_of_overlapping_images(tmp_path: Path, storage: str) -> None:
    """32 pushes (8 client threads) of images sharing base layers, into 4 repositories:
    every manifest then pulls back intact and every blob's bytes match its digest."""
    shared = [secrets.token_bytes(3 * CHUNK + i) for i in range(3)]

    def image(i: int) -> tuple[str, str, bytes, list[bytes]]:
        layers = [shared[0], shared[1 + i % 2], secrets.token_bytes(CHUNK + i)]
        config = json.dumps({"architecture": "amd64", "os": "linux", "n": i}).encode()
        return f"load/r{i % 4}", f"t{i}", config, layers

    images = [image(i) for i in range(PUSHES)]
    with deployment(tmp_path, storage=storage) as deploy:

        def push(item: tuple[str, str, bytes, list[bytes]]) -> bytes:
            repo, tag, config, layers = item
            with client(deploy) as http:
                for blob in [config, *layers]:
                    chunked_upload(http, repo, blob)
                return push_manifest(http, repo, tag, config, layers)

        with ThreadPoolExecutor(PUSH_THREADS) as pool:
            manifests = list(pool.map(push, images))
        with client(deploy) as http:
            for (repo, tag, _, _), manifest in zip(images, manifests):
                pull_and_verify(http, repo, tag, manifest)
        assert len(deploy.replica_of("/v2/load/", "PATCH")) == 3


# --------------------------------------------------------------------------- notifications


class Webhook:
    """A webhook receiver on 127.0.0.1 (a thread): records every event it is sent."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        events = self.events = []  # type: list[dict]
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with lock:
                    events.extend(json.loads(body).get("events", []))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", e2e.free_port()), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/events"


@contextlib.contextmanager
def open_webhook() -> Iterator[Webhook]:
    """A running :class:`Webhook`, shut down on exit."""
    hook = Webhook()
    hook.thread.start()
    try:
        yield hook
    finally:
        hook.server.shutdown()
        hook.server.server_close()
        hook.thread.join(10)


def test_notifications_are_sent_once_per_event_not_once_per_replica(tmp_path: Path) -> None:
    """Each request is one replica's, so each event is sent once: one manifest push event,
    one blob push event per uploaded blob, and no event id twice."""
    config, layer = b'{"architecture":"amd64","os":"linux"}', secrets.token_bytes(3 * CHUNK)
    with open_webhook() as hook:
        extra = ("notifications:\n  endpoints:\n    - name: hook\n"
                 f"      url: {hook.url}\n      timeout: 5s\n      threshold: 3\n"
                 "      backoff: 100ms\n")  # fmt: skip
        with deployment(tmp_path, storage="fs", extra=extra) as deploy, client(deploy) as http:
            for blob in (config, layer):
                chunked_upload(http, "notify/app", blob)
            manifest = push_manifest(http, "notify/app", "v1", config, [layer])
            expected = 3  # two blob pushes and one manifest push
            deadline = time.monotonic() + 30
            pushes: list[dict] = []
            while time.monotonic() < deadline:
                pushes = [e for e in hook.events if e.get("action") == "push"]
                if len(pushes) >= expected:
                    break
                time.sleep(0.2)
            time.sleep(1.0)  # let a duplicate (one per replica) arrive if there were any
        pushes = [e for e in hook.events if e.get("action") == "push"]
        targets = sorted(e["target"]["digest"] for e in pushes)
        assert targets == sorted([sha(config), sha(layer), sha(manifest)]), pushes
        ids = [e["id"] for e in hook.events]
        assert len(ids) == len(set(ids)), "an event was sent twice"


# --------------------------------------------------------------------------- faults

HALF = 4 * 1024 * 1024  # bytes sent before the replica serving the PATCH is killed
KILL_WAIT_S = 30.0  # bound on finding the replica that serves the streaming PATCH
LEASE_WAIT_S = 90.0  # bound on the dead writer's upload lease expiring (LEASE_TTL is 30 s)


def established(port: int) -> int:
    """How many ESTABLISHED TCP connections have local port ``port`` (/proc/net/tcp*)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                count += 1
    return count


def stored_blobs(deploy: Deployment) -> dict[str, bytes]:
    """digest -> bytes of every blob ``data`` in storage, read around the registry."""
    found: dict[str, bytes] = {}
    if deploy.storage == "fs":
        assert deploy.root is not None
        for data in (deploy.root / "docker/registry/v2/blobs").glob("sha256/*/*/data"):
            found["sha256:" + data.parent.name] = data.read_bytes()
        return found
    import boto3

    s3 = deploy.s3
    bucket = boto3.client(
        "s3", endpoint_url=s3["regionendpoint"], region_name=s3["region"],
        aws_access_key_id=s3["accesskey"], aws_secret_access_key=s3["secretkey"],
    )  # fmt: skip
    prefix = s3["rootdirectory"].strip("/") + "/docker/registry/v2/blobs/"
    for page in bucket.get_paginator("list_objects_v2").paginate(
        Bucket=s3["bucket"], Prefix=prefix
    ):
        for item in page.get("Contents", []):
            if item["Key"].endswith("/data"):
                body = bucket.get_object(Bucket=s3["bucket"], Key=item["Key"])["Body"].read()
                found["sha256:" + item["Key"].split("/")[-2]] = body
    return found


def test_replica_killed_mid_push_retry_succeeds_and_nothing_half_written_shows(
    tmp_path: Path, storage: str
) -> None:
    """SIGKILL the replica a streamed PATCH (SPEC 12) is writing to, half way: the blob is
    not linked, the session answers 204 or 404 (never 500), a fresh upload through the LB
    (docker's retry) succeeds, the old session continues once the dead writer's lease has
    expired, every blob in storage matches its digest, and the killed replica restarts."""
    data = secrets.token_bytes(2 * HALF)
    digest = sha(data)
    release = threading.Event()
    outcome: dict[str, object] = {}

    def body() -> Iterator[bytes]:
        yield data[:HALF]
        release.wait(KILL_WAIT_S + 10)
        yield data[HALF:]

    with deployment(tmp_path, storage=storage) as deploy, client(deploy) as http:
        r = http.post("/v2/crash/app/blobs/uploads/")
        assert r.status_code == 202, r.text
        location = r.headers["Location"]

        def patch() -> None:
            try:
                with client(deploy) as own:
                    outcome["status"] = own.patch(location, content=body()).status_code
            except httpx.HTTPError as exc:
                outcome["error"] = exc

        writer = threading.Thread(target=patch)
        writer.start()
        try:
            victim = None
            deadline = time.monotonic() + KILL_WAIT_S
            while victim is None and time.monotonic() < deadline:
                busy = [rep for rep in deploy.replicas if established(rep.port)]
                victim = busy[0] if len(busy) == 1 else None
                time.sleep(0.05)
            assert victim is not None, "no single replica was serving the PATCH"
            time.sleep(0.5)  # let it write part of what it got
            victim.kill()
        finally:
            release.set()
            writer.join(KILL_WAIT_S)
        assert outcome.get("status") != 202, outcome  # the PATCH could not have completed

        # Nothing half-written is visible.
        assert http.head(f"/v2/crash/app/blobs/{digest}").status_code == 404
        status = http.get(location)
        assert status.status_code in (204, 404), status.text

        # The client's retry (a new session, as docker does) succeeds through the LB.
        assert e2e.push_blob(http, "crash/app", data) == digest
        assert http.get(f"/v2/crash/app/blobs/{digest}").content == data

        # The interrupted session is continuable once the dead writer's lease expires.
        if status.status_code == 204:
            deadline = time.monotonic() + LEASE_WAIT_S
            while True:
                last = int(http.get(location).headers["Range"].split("-")[1])
                done = last + 1 if last else 0  # "0-0" is an empty session (SPEC 9)
                r = http.patch(location, content=data[done:], headers={
                    "Content-Range": f"{done}-{len(data) - 1}"})  # fmt: skip
                if r.status_code != 416 or time.monotonic() > deadline:
                    break
                time.sleep(1)
            assert r.status_code == 202, r.text
            sep = "&" if "?" in r.headers["Location"] else "?"
            put = http.put(f"{r.headers['Location']}{sep}digest={digest}")
            assert put.status_code == 201, put.text

        for key, stored in stored_blobs(deploy).items():
            assert sha(stored) == key, f"{key} holds bytes of another digest"
        victim.start()
        assert httpx.get(f"{victim.url}/v2/crash/app/blobs/{digest}").content == data
