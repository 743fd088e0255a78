"""The GC benchmark's small run (``python -m bench.gc_bench --small``): it generates a
registry in the reference layout, collects it with ours and with the reference, and the
two results must agree (except the stale layer links only we remove)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

try:
    from tests import e2e_support as e2e
except ImportError:
    import e2e_support as e2e  # type: ignore[no-redef]

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_gc_bench_small_agrees_with_the_reference(tmp_path):
    e2e.require_tool("docker-registry", "apt-get install docker-registry")
    out = tmp_path / "gc.json"
    env = e2e.clean_env()
    env["PYTHONPATH"] = str(REPO_ROOT)
    proc = subprocess.run(
        [sys.executable, "-m", "bench.gc_bench", "--small", "--json", str(out)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    tools = {(t["tool"], t["mode"]) for t in result["timings"]}
    assert tools == {
        (tool, mode) for tool in ("ours", "reference") for mode in ("dry-run", "delete")
    }
    assert all(
        t["exit_code"] == 0 and t["seconds"] > 0 and t["peak_mb"] > 0 for t in result["timings"]
    )
    assert result["comparison"]["same_except_layer_links"]
    assert result["blobs_left_ours"] == result["expected_blobs_left"]
    assert result["generated"]["garbage"] > 0
