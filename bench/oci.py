"""Registry operations for the benchmark, on top of ``bench.http1``.

Each push function returns the final response; the caller checks the status and the
``Docker-Content-Digest`` it got back. Failures below HTTP raise ``HTTPError``; a wrong
status raises ``ProtocolError`` so a scenario can count it as an error, not a figure.
"""

from __future__ import annotations

import hashlib
import json
from urllib.parse import quote, urlsplit

from .http1 import Chunked, Connection, FileSlice, Response

OCTET = {"Content-Type": "application/octet-stream"}
SCHEMA2 = "application/vnd.docker.distribution.manifest.v2+json"
SCHEMA2_CONFIG = "application/vnd.docker.container.image.v1+json"
LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"


class ProtocolError(Exception):
    """The server answered, but not what the OCI Distribution spec says it should."""


def expect(resp: Response, *statuses: int, what: str) -> Response:
    if resp.status not in statuses:
        snippet = resp.body[:300].decode("utf-8", "replace") if resp.body else ""
        raise ProtocolError(f"{what}: HTTP {resp.status} (wanted {statuses}) {snippet}")
    return resp


def location_target(location: str) -> str:
    """Turn a Location header (absolute or relative) into a request target."""
    parts = urlsplit(location)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return target


def with_query(target: str, **params: str) -> str:
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())
    return target + ("&" if "?" in target else "?") + query


def start_upload(conn: Connection, repo: str) -> str:
    resp = conn.request("POST", f"/v2/{repo}/blobs/uploads/", {"Content-Length": "0"})
    expect(resp, 202, what="POST upload")
    loc = resp.header("location")
    if not loc:
        raise ProtocolError("POST upload: no Location header")
    return location_target(loc)


def check_pushed(resp: Response, digest: str, what: str) -> None:
    expect(resp, 201, what=what)
    got = resp.header("docker-content-digest")
    if got != digest:
        raise ProtocolError(f"{what}: Docker-Content-Digest {got!r}, wanted {digest}")


def push_monolithic(conn: Connection, repo: str, body: FileSlice, digest: str) -> Response:
    """POST, then PUT <location>?digest= with the whole body (SPEC 11)."""
    target = start_upload(conn, repo)
    resp = conn.request("PUT", with_query(target, digest=digest), OCTET, body)
    check_pushed(resp, digest, "PUT monolithic")
    return resp


def push_streamed(
    conn: Connection, repo: str, body: FileSlice, digest: str, chunk_size: int
) -> Response:
    """POST, one chunked-encoded PATCH, then an empty PUT ?digest= (SPEC 12, docker's way)."""
    target = start_upload(conn, repo)
    resp = conn.request("PATCH", target, OCTET, Chunked(body, chunk_size))
    expect(resp, 202, what="PATCH streamed")
    target = location_target(resp.header("location")) if resp.header("location") else target
    resp = conn.request("PUT", with_query(target, digest=digest), {"Content-Length": "0"})
    check_pushed(resp, digest, "PUT after streamed PATCH")
    return resp


def push_chunked(
    conn: Connection, repo: str, body: FileSlice, digest: str, chunk_size: int
) -> Response:
    """POST, PATCHes with Content-Range <start>-<end> and Content-Length, then PUT (SPEC 13)."""
    target = start_upload(conn, repo)
    done = 0
    while done < body.length:
        n = min(chunk_size, body.length - done)
        headers = dict(OCTET)
        headers["Content-Range"] = f"{done}-{done + n - 1}"
        resp = conn.request("PATCH", target, headers, FileSlice(body.file, body.offset + done, n))
        expect(resp, 202, what=f"PATCH chunk at {done}")
        if resp.header("location"):
            target = location_target(resp.header("location"))
        done += n
    resp = conn.request("PUT", with_query(target, digest=digest), {"Content-Length": "0"})
    check_pushed(resp, digest, "PUT after chunked PATCHes")
    return resp


def push_bytes(conn: Connection, repo: str, data: bytes) -> str:
    """Push a small blob monolithically; returns its digest."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    target = start_upload(conn, repo)
    resp = conn.request("PUT", with_query(target, digest=digest), OCTET, data)
    check_pushed(resp, digest, "PUT small blob")
    return digest


def verify_blob(conn: Connection, repo: str, digest: str, size: int) -> None:
    """HEAD then GET the blob and hash what came back; raise ProtocolError on any mismatch."""
    head = expect(conn.request("HEAD", f"/v2/{repo}/blobs/{digest}"), 200, what="HEAD blob")
    if head.header("content-length") != str(size):
        raise ProtocolError(f"HEAD blob: Content-Length {head.header('content-length')}")
    resp = conn.request("GET", f"/v2/{repo}/blobs/{digest}", sink="hash")
    expect(resp, 200, what="GET blob")
    if resp.sha256 != digest or resp.length != size:
        raise ProtocolError(f"GET blob: got {resp.length} bytes {resp.sha256}, wanted {digest}")


def push_image_blobs(conn: Connection, repo: str, layer: bytes) -> tuple[bytes, dict[str, str]]:
    """Push one layer and its config; return the schema2 manifest naming them (not pushed)
    and the blobs' digests."""
    layer_digest = push_bytes(conn, repo, layer)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
            "config": {},
        },
        sort_keys=True,
    ).encode()
    config_digest = push_bytes(conn, repo, config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": SCHEMA2,
            "config": {"mediaType": SCHEMA2_CONFIG, "size": len(config), "digest": config_digest},
            "layers": [{"mediaType": LAYER_GZIP, "size": len(layer), "digest": layer_digest}],
        },
        indent=3,
    ).encode()
    return manifest, {"layer": layer_digest, "config": config_digest}


def push_manifest(conn: Connection, repo: str, tag: str, manifest: bytes) -> str:
    """PUT a schema2 manifest tagged ``tag``; return its digest."""
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    resp = conn.request("PUT", f"/v2/{repo}/manifests/{tag}", {"Content-Type": SCHEMA2}, manifest)
    check_pushed(resp, digest, "PUT manifest")
    return digest


def push_small_image(conn: Connection, repo: str, tag: str, layer: bytes) -> dict[str, str]:
    """Push config + one layer + a schema2 manifest tagged ``tag``; return the digests."""
    manifest, digests = push_image_blobs(conn, repo, layer)
    return digests | {"manifest": push_manifest(conn, repo, tag, manifest)}
