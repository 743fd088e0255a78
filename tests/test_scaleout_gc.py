"""Online GC (POST /admin/gc, storage/gc_online.py) on one replica of three behind haproxy
while the others take pushes (issue 17, item 3): no reachable blob is lost, unreferenced
ones are collected."""

from __future__ import annotations

import json
import secrets
import threading
import time
from pathlib import Path

import httpx
import pytest
from scaleout_support import STORAGES, deployment
from test_scaleout import CHUNK, chunked_upload, client, pull_and_verify, sha, stored_blobs

from registry.config import load_config
from registry.config.model import GCConfig
from registry.storage.gc_report import SETTLE_SECONDS

pytestmark = pytest.mark.e2e

# Grace 0: every unreferenced blob is a candidate, even one a push in flight just wrote
# (the protocol's worst case); settle 3 s: well above a loopback push's check-to-write
# window, and it keeps the run short.
GC_CONFIG = "gc:\n  graceperiod: 0s\n  settle: 3s\n"
GC_WAIT_S = 120.0  # bound on one online run here (a few seconds)
PUSHERS = 3  # client threads pushing while the collection runs
ORPHANS = 4  # blobs uploaded but referenced by no manifest


def push_image(http: httpx.Client, repo: str, tag: str, layers: list[bytes]) -> bytes:
    """Push config + layers + manifest; when the manifest PUT reports blobs unknown (a
    collection unlinked them between upload and PUT: gc_online.py, step 3) upload them
    again and retry, as a client does. Returns the manifest."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "tag": tag}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": sha(layer), "size": len(layer)} for layer in layers],
    }).encode()  # fmt: skip
    for _ in range(5):
        for blob in [config, *layers]:
            chunked_upload(http, repo, blob)
        r = http.put(f"/v2/{repo}/manifests/{tag}", content=manifest,
                     headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})  # fmt: skip
        if r.status_code == 201:
            return manifest
        assert r.status_code == 400 and "MANIFEST_BLOB_UNKNOWN" in r.text, r.text
    raise AssertionError(f"{repo}:{tag} never went in")


def test_gc_settle_is_configurable_and_defaults_to_the_collectors() -> None:
    """gc.settle (ours): the default is storage's SETTLE_SECONDS; a duration sets it."""
    assert GCConfig().settle == SETTLE_SECONDS
    config, _ = load_config(None, {"REGISTRY_GC_SETTLE": "3s"})
    assert config.gc.settle == 3.0


@pytest.mark.parametrize("storage", STORAGES)
def test_online_gc_on_one_replica_while_others_take_pushes_loses_nothing(
    tmp_path: Path, storage: str
) -> None:
    base = secrets.token_bytes(2 * CHUNK)
    orphans = [secrets.token_bytes(CHUNK + i) for i in range(ORPHANS)]
    pushed: dict[tuple[str, str], bytes] = {}
    stop = threading.Event()
    errors: list[Exception] = []

    with deployment(tmp_path, storage=storage, extra=GC_CONFIG) as deploy, client(deploy) as http:
        for i in range(4):
            layers = [base, secrets.token_bytes(CHUNK)]
            pushed["gc/kept", f"a{i}"] = push_image(http, "gc/kept", f"a{i}", layers)
        for blob in orphans:
            chunked_upload(http, "gc/orphans", blob)

        def pusher(n: int) -> None:
            try:
                with client(deploy) as own:
                    i = 0
                    while not stop.is_set():
                        tag = f"p{n}-{i}"
                        layers = [base, secrets.token_bytes(CHUNK + n)]
                        pushed["gc/live", tag] = push_image(own, "gc/live", tag, layers)
                        i += 1
            except (AssertionError, httpx.HTTPError) as exc:  # the main thread reports it
                errors.append(exc)

        threads = [threading.Thread(target=pusher, args=(n,)) for n in range(PUSHERS)]
        for t in threads:
            t.start()
        try:
            before = http.get("/admin/gc").json().get("last_finished")
            r = http.post("/admin/gc")
            assert r.status_code == 202, r.text
            deadline = time.monotonic() + GC_WAIT_S
            while time.monotonic() < deadline:
                state = http.get("/admin/gc").json()
                if state.get("last_finished") not in (None, before) and not state["lock_holder"]:
                    break
                time.sleep(0.5)
            else:
                raise AssertionError(f"the collection did not finish: {state}")
        finally:
            stop.set()
            for t in threads:
                t.join(GC_WAIT_S)
        assert not errors, errors
        live = [key for key in pushed if key[0] == "gc/live"]
        assert live, "no push ran during the collection"
        assert len(deploy.replica_of("/admin/gc", "POST")) == 1  # the collection ran on one
        assert len(deploy.replica_of("/v2/gc/live/", "PATCH")) == 3  # all took pushes

        for (repo, tag), manifest in pushed.items():
            pull_and_verify(http, repo, tag, manifest)
        stored = stored_blobs(deploy)
        for blob in orphans:
            assert http.head(f"/v2/gc/orphans/blobs/{sha(blob)}").status_code == 404
            assert sha(blob) not in stored, "an unreferenced blob survived the collection"
        assert all(sha(data) == key for key, data in stored.items())
