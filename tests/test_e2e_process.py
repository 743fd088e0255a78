"""Our server as a process: uploads live in storage, not in a process, and SIGTERM during an
upload leaves storage consistent (issue 2, Storage and CLI)."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

try:  # tests/ is a plain directory on sys.path, or a package
    from tests import e2e_support as e2e
except ImportError:
    import e2e_support as e2e  # type: ignore[no-redef]

pytestmark = pytest.mark.e2e

KiB = 1024
MiB = 1024 * KiB
CHUNK = 256 * KiB


def path_of(location: str) -> str:
    """The path and query of an (absolute or relative) upload Location."""
    url = httpx.URL(location)
    return url.raw_path.decode("ascii")


def patch_chunk(http: httpx.Client, location: str, data: bytes, start: int) -> httpx.Response:
    """SPEC 13: PATCH with `Content-Range: <start>-<end>`."""
    return http.patch(
        path_of(location),
        content=data,
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{start}-{start + len(data) - 1}",
        },
    )


def finish(http: httpx.Client, location: str, digest: str) -> httpx.Response:
    path = path_of(location)
    sep = "&" if "?" in path else "?"
    return http.put(f"{path}{sep}digest={digest}")


def assert_every_blob_matches_its_digest(root: Path) -> int:
    """No partial or corrupt blob is visible: each blobs/sha256/xx/<hex>/data hashes to <hex>.
    Returns how many blobs there are."""
    blobs = root / "docker" / "registry" / "v2" / "blobs" / "sha256"
    count = 0
    for data in blobs.glob("*/*/data") if blobs.exists() else []:
        assert hashlib.sha256(data.read_bytes()).hexdigest() == data.parent.name, data
        assert data.parent.parent.name == data.parent.name[:2], data
        count += 1
    return count


def test_chunked_upload_started_before_a_restart_is_finished_after_it_spec_13_14(
    tmp_path: Path,
) -> None:
    root = tmp_path / "storage"
    blob = os.urandom(3 * CHUNK + 123)
    digest = e2e.sha256_digest(blob)
    with e2e.run_ours(root) as reg, reg.client() as http:
        start = http.post("/v2/restart/app/blobs/uploads/")
        assert start.status_code == 202, start.text
        first = patch_chunk(http, start.headers["Location"], blob[:CHUNK], 0)
        assert first.status_code == 202, first.text
        assert first.headers["Range"] == f"0-{CHUNK - 1}"
        location = first.headers["Location"]

    with e2e.run_ours(root) as reg, reg.client() as http:
        status = http.get(path_of(location))
        assert status.status_code == 204, status.text
        assert status.headers["Range"] == f"0-{CHUNK - 1}"
        offset = CHUNK
        while offset < len(blob):
            resp = patch_chunk(http, location, blob[offset : offset + CHUNK], offset)
            assert resp.status_code == 202, (offset, resp.status_code, resp.text)
            offset += len(blob[offset : offset + CHUNK])
            assert resp.headers["Range"] == f"0-{offset - 1}"
            location = resp.headers["Location"]
        done = finish(http, location, digest)
        assert done.status_code == 201, done.text
        assert done.headers["Docker-Content-Digest"] == digest
        got = http.get(f"/v2/restart/app/blobs/{digest}")
        assert got.status_code == 200
        assert got.content == blob


def test_chunked_upload_over_a_new_connection_per_chunk_spreads_over_workers_spec_13(
    tmp_path: Path,
) -> None:
    """Each PATCH on a fresh connection may land on another worker process: per-worker
    caches must never decide correctness (DESIGN, Data path)."""
    blob = os.urandom(16 * CHUNK + 7)
    digest = e2e.sha256_digest(blob)
    no_reuse = httpx.Limits(max_keepalive_connections=0)
    with e2e.run_ours(tmp_path / "storage") as reg, reg.client(limits=no_reuse) as http:
        start = http.post("/v2/workers/app/blobs/uploads/")
        assert start.status_code == 202, start.text
        location = start.headers["Location"]
        for offset in range(0, len(blob), CHUNK):
            resp = patch_chunk(http, location, blob[offset : offset + CHUNK], offset)
            assert resp.status_code == 202, (offset, resp.status_code, resp.text)
            location = resp.headers["Location"]
        # An out-of-order chunk is refused whichever worker gets it (SPEC 13).
        stale = patch_chunk(http, location, b"x" * 10, 5)
        assert stale.status_code == 416, stale.text
        done = finish(http, location, digest)
        assert done.status_code == 201, done.text
        got = http.get(f"/v2/workers/app/blobs/{digest}")
        assert got.status_code == 200
        assert got.content == blob


class SlowBody:
    """A request body that trickles out until told to stop; counts what it yielded."""

    def __init__(self, piece: bytes, interval_s: float, max_s: float) -> None:
        self.piece = piece
        self.interval_s = interval_s
        self.max_s = max_s
        self.sent = 0
        self.stop = threading.Event()

    def __iter__(self) -> Iterator[bytes]:
        deadline = time.monotonic() + self.max_s
        while not self.stop.is_set() and time.monotonic() < deadline:
            yield self.piece
            self.sent += len(self.piece)
            self.stop.wait(self.interval_s)


def test_sigterm_during_streamed_upload_exits_promptly_and_leaves_storage_consistent(
    tmp_path: Path,
) -> None:
    """Issue 2: SIGTERM finishes or cancels in-flight requests without partial blobs; the
    upload can then be redone from scratch (SPEC 12, 15)."""
    root = tmp_path / "storage"
    body = SlowBody(os.urandom(64 * KiB), interval_s=0.02, max_s=60.0)
    outcome: list[object] = []

    with e2e.run_ours(root) as reg:
        with reg.client() as http:
            start = http.post("/v2/sigterm/app/blobs/uploads/")
            assert start.status_code == 202, start.text
            location = start.headers["Location"]

        def stream() -> None:
            try:
                with httpx.Client(base_url=reg.url, timeout=60.0) as client:
                    outcome.append(
                        client.patch(
                            path_of(location),
                            content=body,
                            headers={"Content-Type": "application/octet-stream"},
                        )
                    )
            except httpx.HTTPError as exc:
                outcome.append(exc)

        sender = threading.Thread(target=stream, daemon=True)
        sender.start()
        deadline = time.monotonic() + 20
        while body.sent < 2 * MiB and time.monotonic() < deadline:
            time.sleep(0.02)
        assert body.sent >= 2 * MiB, "the streamed PATCH never got going"

        reg.proc.send_signal(signal.SIGTERM)
        try:
            code = reg.proc.wait(timeout=e2e.STOP_TIMEOUT_S)
        except Exception:
            body.stop.set()
            raise
        finally:
            stopped_after = body.sent
        body.stop.set()
        sender.join(timeout=30)
        assert not sender.is_alive()
        assert code in (0, -signal.SIGTERM), f"exit code {code}"
    assert outcome, "the PATCH neither answered nor failed"
    assert stopped_after >= 2 * MiB
    assert assert_every_blob_matches_its_digest(root) == 0

    blob = os.urandom(MiB + 5)
    digest = e2e.sha256_digest(blob)
    with e2e.run_ours(root) as reg, reg.client() as http:
        # The interrupted session is either gone or consistent about what it holds.
        status = http.get(path_of(location))
        assert status.status_code in (204, 404), status.text
        if status.status_code == 204:
            end = int(status.headers["Range"].split("-")[1])
            assert 0 <= end < stopped_after + 64 * KiB
        assert e2e.push_blob(http, "sigterm/app", blob) == digest
        got = http.get(f"/v2/sigterm/app/blobs/{digest}")
        assert got.status_code == 200
        assert got.content == blob
    assert assert_every_blob_matches_its_digest(root) == 1
