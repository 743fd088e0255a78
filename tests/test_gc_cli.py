"""``registry garbage-collect``: output, dry run, exit status (issue 5, What users get 1)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from registry.config import load_config
from registry.drivers.filesystem import FilesystemDriver
from registry.gc_cli import TerminalProgress, human_bytes, run_gc
from registry.storage import paths
from registry.storage.store import Storage

try:
    from tests import gc_support as s
except ImportError:
    import gc_support as s  # type: ignore[no-redef]

REPO_ROOT = Path(__file__).resolve().parent.parent


def tree(root: Path) -> dict[str, bytes]:
    out = {}
    for p in root.rglob("*"):
        out[str(p.relative_to(root))] = p.read_bytes() if p.is_file() else b"<dir>"
    return out


@pytest.fixture
def registry_dir(tmp_path: Path) -> tuple[Path, Path]:
    """A filesystem registry with an image, an untagged image, and an orphan blob."""
    root = tmp_path / "storage"

    async def seed() -> None:
        storage = Storage(FilesystemDriver(str(root)))
        await s.push_image(storage, "app", "v1", [b"layer one"])
        await s.push_image(storage, "app", None, [b"untagged layer"], b'{"u":1}')
        await s.push_blob(storage, "app", b"orphan")

    trio.run(seed)
    config = tmp_path / "config.yml"
    config.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {root}\n")
    return root, config


def load(path: Path):  # type: ignore[no-untyped-def]
    config, _ = load_config(str(path), {})
    return config


def test_dry_run_prints_what_it_would_delete_and_deletes_nothing(registry_dir, capsys):
    root, config = registry_dir
    before = tree(root)
    code = run_gc(load(config), dry_run=True, delete_untagged=True, quiet=False)
    out = capsys.readouterr().out
    assert code == 0
    assert tree(root) == before
    orphan = s.dg(b"orphan")
    assert f"would delete blob {orphan} (6 bytes)" in out
    assert "would delete manifest app@sha256:" in out
    assert f"would delete layer link app {orphan}" in out
    assert "garbage-collect summary (dry run: nothing was deleted)" in out


def test_run_deletes_and_summarises(registry_dir, capsys):
    root, config = registry_dir
    code = run_gc(load(config), dry_run=False, delete_untagged=False, quiet=False)
    out = capsys.readouterr().out
    assert code == 0
    orphan = s.dg(b"orphan")
    assert not (root / paths.blob_dir(orphan).lstrip("/")).exists()
    assert f"deleted blob {orphan} (6 bytes)" in out
    summary = out[out.index("garbage-collect summary") :]
    lines = {k.strip(): v.strip() for k, v in (ln.split(":", 1) for ln in summary.splitlines()[1:])}
    assert lines["repositories"] == "1"
    assert lines["manifests"] == "2 (0 deleted)"
    assert lines["blobs kept"] == "6"  # 2 manifests, 2 configs, 2 layers
    assert lines["blobs deleted"] == "1"
    assert lines["bytes freed"] == "6 B (6 bytes)"
    assert lines["layer links deleted"] == "1"
    assert lines["time taken"].endswith("s")
    # nothing of ours is left behind (the lock is gone with its directory)
    assert not (root / paths.GC.lstrip("/")).exists()


def test_quiet_prints_only_the_summary(registry_dir, capsys):
    _, config = registry_dir
    assert run_gc(load(config), dry_run=False, delete_untagged=True, quiet=True) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("garbage-collect summary")
    assert "deleted blob" not in captured.out
    assert captured.err == ""


def test_progress_without_a_terminal_is_plain_lines(registry_dir, capsys):
    _, config = registry_dir
    assert run_gc(load(config), dry_run=True, delete_untagged=False, quiet=False) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "[#" not in err
    assert any(line.startswith("mark") and "manifests 2" in line for line in err.splitlines())


def test_progress_on_a_terminal_draws_a_bar():
    stream = io.StringIO()
    p = TerminalProgress(stream, tty=True)
    p.phase("mark", 4)
    p.count("manifests", 7)
    p.advance(2)
    p.phase("blobs")
    p.close()
    text = stream.getvalue()
    assert "\r" in text and "[" in text and "/4" in text and "manifests 7" in text
    assert text.endswith("\n")


def test_another_collection_holding_the_lock_is_exit_status_1(registry_dir, capsys):
    root, config = registry_dir
    lock = root / paths.GC_LOCK.lstrip("/")
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"owner": "x", "host": "elsewhere", "pid": 1, "expires": 4e9}))
    before = tree(root)
    assert run_gc(load(config), dry_run=False, delete_untagged=False, quiet=False) == 1
    err = capsys.readouterr().err
    assert "another garbage collection holds the lock (elsewhere pid 1)" in err
    assert tree(root) == before


def test_human_bytes():
    assert [human_bytes(n) for n in (0, 1023, 1024, 5 * 1024**3)] == [
        "0 B",
        "1023 B",
        "1.0 KiB",
        "5.0 GiB",
    ]


def test_the_documented_command_line(registry_dir):
    """``registry garbage-collect [--dry-run] [--delete-untagged] CONFIG``, in a process."""
    _, config = registry_dir
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    base = [sys.executable, "-m", "registry", "garbage-collect"]
    dry = subprocess.run(
        base + ["--dry-run", "--delete-untagged", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert dry.returncode == 0, dry.stderr
    assert "would delete manifest" in dry.stdout
    real = subprocess.run(
        base + ["-m", str(config)], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert real.returncode == 0, real.stderr
    assert "deleted manifest app@" in real.stdout
    missing = subprocess.run(
        base + [str(config.parent / "nope.yml")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
