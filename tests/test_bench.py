"""The load benchmark (issues 3 and 14) keeps working: `python -m bench --quick` runs every
default scenario against our registry and the reference (registry:3's binary from
../shared/bin, else Debian's distribution 2.8) and produces figures for both, and
`--quick --limits` runs each side in its own cgroup and removes the cgroups afterwards.

Only that figures exist, are positive and come from correct rounds is checked, never how
fast they are. Outside CI a missing tool skips (with how to install it); in CI it fails.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from bench.core import Figure, Target
from bench.http1 import Connection
from bench.report import aggregate

REPO = Path(__file__).resolve().parent.parent
from e2e_support import in_ci, require_tool  # one rule for missing tools: fail in CI

IN_CI = in_ci()
QUICK_RUN_TIMEOUT = 900  # seconds; the quick profile takes about two minutes
LIMITS_RUN_TIMEOUT = 300  # seconds; --quick --limits takes about 20 s


def require_reference() -> str:
    """The bench's default reference binary; fail under CI=true, else skip, if missing."""
    from bench.servers import default_reference

    path = default_reference()
    if not Path(path).is_file():
        require_tool("docker-registry", "apt-get install -y docker-registry, or put "
                     "registry-v3.0.0 in ../shared/bin")  # fmt: skip
    return path


def cgroup_problem() -> str | None:
    """Why this machine cannot make the limits scenario's cgroups, or None when it can."""
    import os

    from bench.cgroups import CgroupUnavailable, Limits, open_cgroup

    try:
        with open_cgroup(Limits(), f"registry-bench-testprobe-{os.getpid()}"):
            return None
    except (CgroupUnavailable, OSError) as exc:
        return str(exc)


def docker_reachable() -> bool:
    from bench.dockerclient import dockerd_problem

    return dockerd_problem() is None


@pytest.mark.e2e
def test_quick_bench_produces_figures_for_every_scenario_on_both_sides(tmp_path: Path) -> None:
    require_reference()
    require_tool("cc", "apt-get install -y gcc (bench/hload.c is compiled on first use)")
    out = tmp_path / "bench.json"
    chart = tmp_path / "chart.png"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--json", str(out), "--chart", str(chart)],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=QUICK_RUN_TIMEOUT,
    )
    log = proc.stdout[-6000:] + proc.stderr[-3000:]
    assert out.exists(), f"no JSON written\n{log}"
    results = json.loads(out.read_text())

    from bench.cli import SCENARIOS

    expected = [s.name for s in SCENARIOS if s.default]
    assert list(results["scenarios"]) == expected, log
    for name in expected:
        sc = results["scenarios"][name]
        if sc["skipped"]:
            if name == "docker_client" and not IN_CI and not docker_reachable():
                continue  # no dockerd here: allowed outside CI only
            if name == "limits" and not IN_CI and cgroup_problem() is not None:
                continue  # cgroups cannot be written here: allowed outside CI only
            pytest.fail(f"{name} skipped: {sc['skipped']}\n{log}")
        sides = {r["side"] for r in sc["rounds"]}
        assert sides == {"ours", "ref"}, f"{name}: rounds for {sides}"
        for r in sc["rounds"]:
            assert r["ok"], f"{name} round {r['round']} {r['side']}: {r['error']}\n{log}"
        assert sc["figures"], f"{name}: no figures"
        for f in sc["figures"]:
            for side in ("ours", "ref"):
                v = f[side]["median"]
                assert v is not None, f"{name} {f['label']}: no {side} figure\n{log}"
                assert v >= 0 if f["zero_ok"] else v > 0, f"{name} {f['label']} {side} = {v}"
    assert proc.returncode == 0, log
    if importlib.util.find_spec("matplotlib") is not None:
        assert chart.stat().st_size > 0
    assert results["meta"]["ref_version"], "the reference's version was not recorded"


def _cgroup_dirs_named(prefix: str) -> list[Path]:
    from bench.cgroups import detect

    return [d for parent in detect().dirs.values() for d in parent.glob(prefix + "*")]


@pytest.mark.e2e
def test_quick_limits_runs_each_side_in_its_own_cgroup_and_removes_it(tmp_path: Path) -> None:
    """issue 14 item 1: --limits; skipped only where cgroups cannot be written (never in CI)."""
    require_reference()
    require_tool("cc", "apt-get install -y gcc (bench/hload.c is compiled on first use)")
    problem = cgroup_problem()
    if problem is not None:
        if IN_CI:
            pytest.fail(f"CI=true but cgroups cannot be written: {problem}")
        pytest.skip(f"cgroups cannot be written here: {problem}")
    out = tmp_path / "bench.json"
    argv = [sys.executable, "-m", "bench", "--quick", "--limits", "--cpu-quota", "0.5",
            "--memory", "300M", "--json", str(out), "--chart", str(tmp_path / "chart.png")]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        stdout, _ = proc.communicate(timeout=LIMITS_RUN_TIMEOUT)
    finally:
        proc.kill()
    log = stdout[-6000:]
    assert proc.returncode == 0, log
    results = json.loads(out.read_text())
    assert list(results["scenarios"]) == ["limits"], log
    assert results["meta"]["limits"] == "0.5 CPU, 300 MiB"
    sc = results["scenarios"]["limits"]
    assert not sc["skipped"], sc["skipped"]
    assert {r["side"] for r in sc["rounds"]} == {"ours", "ref"}
    figures = {f["key"]: f for f in sc["figures"]}
    for key in ("push_mbps", "push_cpu_gb", "stream_mbps", "pull_mbps", "pull_cpu_gb",
                "mget_rps", "mget_cpu_1k", "c16_mbps", "c16_rss"):  # fmt: skip
        for side in ("ours", "ref"):
            assert figures[key][side]["median"] > 0, f"{key} {side}\n{log}"
    for key in ("oom_kills", "failed"):
        for side in ("ours", "ref"):
            assert figures[key][side]["median"] == 0, f"{key} {side}\n{log}"
    for r in sc["rounds"]:  # every phase's server ran inside its cgroup, workers included
        groups = r["notes"]["cgroups"]
        assert len(groups) == 4 and all(g["server_in_cgroup"] for g in groups), groups
        if r["side"] == "ours":  # the supervisor and (under 0.5 CPU) exactly one worker
            assert all(g["processes"] == 2 for g in groups), groups
    # every cgroup the run made (named after its pid) is gone
    assert _cgroup_dirs_named(f"registry-bench-{proc.pid}-") == []


def test_medians_ignore_failed_rounds_and_ratio_is_ours_over_ref() -> None:
    fig = Figure("mbps", "push", "MB/s", target=Target("ratio", 1.0))
    rounds = [
        {"side": "ours", "ok": True, "values": {"mbps": 100.0}},
        {"side": "ref", "ok": True, "values": {"mbps": 50.0}},
        {"side": "ref", "ok": False, "values": {"mbps": 9999.0}},  # a wrong answer never counts
        {"side": "ours", "ok": True, "values": {"mbps": 300.0}},
        {"side": "ref", "ok": True, "values": {"mbps": 150.0}},
        {"side": "ours", "ok": True, "values": {"mbps": 200.0}},
    ]
    [entry] = aggregate([fig], rounds)
    assert entry["ours"]["median"] == 200.0
    assert (entry["ours"]["min"], entry["ours"]["max"]) == (100.0, 300.0)
    assert entry["ref"]["median"] == 100.0
    assert entry["ref"]["rounds_ok"] == 2
    assert entry["ratio"] == 2.0
    assert entry["target_met"] is True


@pytest.mark.parametrize(
    ("target", "ours", "ref", "met"),
    [
        (Target("ratio", 1.0), 90.0, 100.0, False),
        (Target("ratio", 0.8), 80.0, 100.0, True),
        (Target("ratio_max", 1.25), 12.0, 10.0, True),
        (Target("ratio_max", 1.0), 12.0, 10.0, False),
        (Target("max", 150.0), 151.0, None, False),
        (Target("max", 150.0), 149.0, None, True),
        (Target("ratio", 1.0), None, 100.0, None),
    ],
)
def test_targets(target: Target, ours: float | None, ref: float | None, met: bool | None) -> None:
    assert target.met(ours, ref) is met


def _serve_once(listener: socket.socket, response: bytes) -> None:
    conn, _ = listener.accept()
    with conn:
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        conn.sendall(response)


def test_client_reads_chunked_responses_and_hashes_them() -> None:
    body = b"hello, " * 1000
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[:100], body[100:]))
    response = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nDocker-Content-Digest: x\r\n\r\n"
        + chunks
        + b"0\r\n\r\n"
    )
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        server = threading.Thread(target=_serve_once, args=(listener, response))
        server.start()
        with Connection("127.0.0.1", listener.getsockname()[1], timeout=10) as conn:
            resp = conn.request("GET", "/x", sink="hash")
        server.join()
    import hashlib

    assert resp.status == 200
    assert resp.header("Docker-Content-Digest") == "x"
    assert resp.length == len(body)
    assert resp.sha256 == "sha256:" + hashlib.sha256(body).hexdigest()


def test_client_compare_sink_detects_wrong_bytes(tmp_path: Path) -> None:
    from bench.http1 import FileSlice

    data = bytes(range(256)) * 64
    path = tmp_path / "data"
    path.write_bytes(data)
    good = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(data) + data
    bad = good[:-1] + b"\0"
    short = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n" + data[:10]
    results = []
    with open(path, "rb") as fh, socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(3)
        for response in (good, bad, short):
            server = threading.Thread(target=_serve_once, args=(listener, response))
            server.start()
            with Connection("127.0.0.1", listener.getsockname()[1], timeout=10) as conn:
                resp = conn.request("GET", "/x", sink="compare", expect=FileSlice(fh, 0, len(data)))
            server.join()
            results.append(resp.matches)
    assert results == [True, False, False]


def test_targets_table_rates_each_issue_target_that_was_measured() -> None:
    from bench.report import targets_table

    def fig(key: str, ours: float, ref: float) -> dict:  # type: ignore[type-arg]
        return {"key": key, "ours": {"median": ours}, "ref": {"median": ref}}

    results = {
        "meta": {"machine": "2 cores x", "limits": "0.25 CPU, 256 MiB"},
        "scenarios": {
            "push_monolithic": {"skipped": None, "figures": [fig("mbps", 500.0, 400.0)]},
            "pull": {"skipped": "not here", "figures": []},
            "limits": {"skipped": None, "figures": [
                fig("mget_rps", 600.0, 1000.0), fig("oom_kills", 1.0, 0.0),
            ]},
        },
    }  # fmt: skip
    rows = targets_table(results)
    assert rows[0][:3] == ["mode", "figure", "target"]
    by_figure = {(r[0], r[1]): r for r in rows[1:]}
    assert set(by_figure) == {
        ("unlimited (2 cores)", "monolithic push"),
        ("limited (0.25 CPU, 256 MiB)", "manifest GET, 32 connections"),
        ("limited (0.25 CPU, 256 MiB)", "OOM kills"),
    }  # unmeasured or skipped targets have no row
    assert by_figure[("unlimited (2 cores)", "monolithic push")][-2:] == ["1.25", "ok"]
    assert by_figure[("limited (0.25 CPU, 256 MiB)", "manifest GET, 32 connections")][-1] == "MISS"
    assert by_figure[("limited (0.25 CPU, 256 MiB)", "OOM kills")][-1] == "MISS"


@pytest.mark.parametrize(
    ("meta", "name"),
    [
        ({"ref_custom": False, "ref_cmd": "env -u AWS_CA_BUNDLE /b/registry-v3.0.0 serve {config}",
          "ref_path": "/b/registry-v3.0.0", "ref_version": "3.0.0"},
         "distribution 3.0.0 (/b/registry-v3.0.0)"),
        ({"ref_custom": True, "ref_cmd": "my-registry {config}", "ref_path": "/b/x"},
         "`my-registry {config}`"),
        # results from before --reference: the default command was Debian's 2.8
        ({"ref_cmd": "env -u AWS_CA_BUNDLE docker-registry serve {config}",
          "ref_version": "2.8.2+ds1"}, "distribution 2.8.2+ds1 (Debian's docker-registry)"),
    ],
)  # fmt: skip
def test_reference_is_named_with_its_version(meta: dict, name: str) -> None:  # type: ignore[type-arg]
    from bench.report import reference_name

    assert reference_name(meta) == name
