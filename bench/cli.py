"""`python -m bench`: run the scenarios against our registry and the reference, side by side.

Rounds alternate the order of the two servers (ours first in even rounds, the reference
first in odd ones) so slow drift of the machine hits both. Every scenario starts each server
fresh. Exit status: 0 when every round of every scenario succeeded, 1 when some failed (the
table, JSON and chart are still written), 2 for bad usage.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from . import report
from .cgroups import Limits, parse_memory
from .core import FULL, QUICK, Env, Scenario, Skip
from .data import DataFile
from .dockerclient import DockerClientScenario
from .limits import LimitsScenario
from .proxy import ProxyScenario
from .replicas import ReplicasScenario
from .s3 import S3Scenario
from .servers import (
    ServerSpec,
    ServerStartError,
    default_ours_cmd,
    default_reference,
    reference_cmd,
    reference_version,
)
from .small import SmallRequestsScenario
from .transfer import (
    PUSH_CHUNKED,
    PUSH_MONOLITHIC,
    PUSH_STREAMED,
    ConcurrentPushScenario,
    PullScenario,
)

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"

SCENARIOS: list[Scenario] = [
    PUSH_MONOLITHIC,
    PUSH_STREAMED,
    PUSH_CHUNKED,
    PullScenario(),
    ConcurrentPushScenario(),
    SmallRequestsScenario(),
    DockerClientScenario(),
    S3Scenario(),
    ProxyScenario(),
    ReplicasScenario(),
    LimitsScenario(),
]


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(os.environ.get("BENCH_CACHE_DIR", Path(base) / "registry-bench"))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    names = [s.name for s in SCENARIOS]
    ap = argparse.ArgumentParser(
        prog="python -m bench",
        description="Load scenarios against our registry and the reference, side by side.",
    )
    ap.add_argument("--quick", action="store_true", help="small version of every scenario (~2 min)")
    ap.add_argument("--only", metavar="NAMES", help=f"comma-separated subset of: {','.join(names)}")
    ap.add_argument("--rounds", type=int, help="rounds per scenario (default 3; 1 with --quick)")
    ap.add_argument(
        "--ours-cmd",
        default=default_ours_cmd(),
        help="command for our server; {config} is the config path (default: %(default)s)",
    )
    ap.add_argument(
        "--reference",
        metavar="PATH",
        default=default_reference(),
        help="the reference registry binary, run as `env -u AWS_CA_BUNDLE PATH serve CONFIG` "
        "(default: %(default)s; /usr/bin/docker-registry for distribution 2.8)",
    )
    ap.add_argument(
        "--ref-cmd",
        help="command for the reference, overrides --reference; {config} is the config path",
    )
    ap.add_argument(
        "--limits",
        action="store_true",
        help="run only the limits scenario: each side in its own cgroup (see --cpu-quota, --memory)",
    )
    ap.add_argument(
        "--cpu-quota",
        type=float,
        default=Limits().cpus,
        metavar="CPUS",
        help="CPU quota of each side's cgroup in the limits scenario (default: %(default)s)",
    )
    ap.add_argument(
        "--memory",
        default="256M",
        help="memory limit of each side's cgroup in the limits scenario (default: %(default)s)",
    )
    ap.add_argument(
        "--json", type=Path, help="results file (default bench/results/<timestamp>.json)"
    )
    ap.add_argument(
        "--chart",
        type=Path,
        default=RESULTS_DIR / "latest.png",
        help="PNG chart path (default: %(default)s)",
    )
    ap.add_argument(
        "--publish",
        action="store_true",
        help="also copy the chart to bench/chart.png and the table to bench/RESULTS.md",
    )
    ap.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()),
        help="where per-run temp storage goes (default: %(default)s)",
    )
    ap.add_argument("--list", action="store_true", help="list the scenarios and exit")
    ap.add_argument("-v", "--verbose", action="store_true", help="print tracebacks of failures")
    args = ap.parse_args(argv)  # fmt: skip
    try:
        args.limits_box = Limits(args.cpu_quota, parse_memory(args.memory))
    except ValueError as exc:
        ap.error(str(exc))
    if not 0.01 <= args.cpu_quota <= 1024:
        ap.error("--cpu-quota must be between 0.01 and 1024 CPUs")
    args.ref_custom = args.ref_cmd is not None
    if not args.ref_custom:
        found = shutil.which(args.reference)
        if found is None:
            ap.error(f"--reference {args.reference}: no such executable (apt-get install -y "
                     "docker-registry, or put registry-v3.0.0 in ../shared/bin)")  # fmt: skip
        args.reference = os.path.abspath(found)
        args.ref_cmd = reference_cmd(args.reference)
    if args.limits and args.only:
        ap.error("--limits runs the limits scenario only; do not combine it with --only")
    if args.limits:
        args.only = LimitsScenario.name
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in names]
        if unknown:
            ap.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(names)}")
        args.selected = [s for s in SCENARIOS if s.name in wanted]
    else:
        args.selected = [s for s in SCENARIOS if s.default]
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    return args


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kib / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    distro = ""
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                distro = ", " + line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return f"{os.cpu_count()} cores {cpu}{mem}{distro}"


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], check=False, capture_output=True, text=True,
            timeout=10, cwd=BENCH_DIR,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def run_round(sc: Scenario, env: Env, spec: ServerSpec, verbose: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    rec: dict[str, Any] = {"side": spec.side, "ok": False, "error": None, "values": {}}
    try:
        res = sc.run(env, spec)
        rec.update(ok=True, values=res.values, notes=res.notes)
    except ServerStartError as exc:
        rec["error"] = f"server did not start: {exc}"
        rec["start_failed"] = True
    except Exception as exc:  # noqa: BLE001 - a failed round is reported, the run goes on
        rec["error"] = f"{type(exc).__name__}: {exc}"
        if verbose:
            rec["traceback"] = traceback.format_exc()
    rec["seconds"] = round(time.perf_counter() - t0, 3)
    return rec


def describe_round(rec: dict[str, Any]) -> str:
    head = f"round {rec['round']} {rec['side']:<4}"
    if not rec["ok"]:
        lines = (rec["error"] or "").splitlines()
        more = "\n      ".join(lines[1:8])
        return f"{head}: FAILED {lines[0] if lines else ''}" + (f"\n      {more}" if more else "")
    vals = " ".join(f"{k}={report.fmt(v)}" for k, v in rec["values"].items())
    return f"{head}: {vals}  [{rec['seconds']:.1f} s]"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for s in SCENARIOS:
            print(f"{s.name:<16} {s.title}{'' if s.default else '  (not run by default)'}")
        return 0
    profile = QUICK if args.quick else FULL
    started = dt.datetime.now().astimezone()
    specs = {"ours": ServerSpec("ours", args.ours_cmd), "ref": ServerSpec("ref", args.ref_cmd)}
    workdir = Path(tempfile.mkdtemp(prefix="registry-bench-", dir=args.workdir))
    cache_dir = default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "meta": {
            "date": started.isoformat(timespec="seconds"),
            "machine": machine_description(),
            "python": sys.version.split()[0],
            "profile": profile.name,
            "rounds": args.rounds,
            "ours_cmd": args.ours_cmd,
            "ref_cmd": args.ref_cmd,
            "ref_custom": args.ref_custom,
            "ref_path": args.reference,
            "ref_default": args.reference == default_reference(),
            "ref_version": None if args.ref_custom else reference_version(args.reference),
            "limits": args.limits_box.describe(),
            "commit": git_commit(),
            "units": "MB = 10^6 bytes; MB/s = 10^6 bytes per second; latency in ms",
            "loadavg_start": os.getloadavg(),
        },
        "scenarios": {},
    }
    print(f"bench: {profile.name} profile, {args.rounds} round(s), workdir {workdir}")
    print(f"  reference: {report.reference_name(results['meta'])}")
    print(f"  ours: {args.ours_cmd}\n  ref:  {args.ref_cmd}")
    load1 = os.getloadavg()[0]
    if load1 > 0.5:
        print(
            f"  note: load average {load1:.1f} before starting: other work on this machine "
            "will add noise to both sides"
        )
    broken: dict[str, str] = {}  # side -> why it cannot start; later rounds skip it
    data = DataFile(workdir / "data.bin", profile.data_size)
    env = Env(profile, data, workdir, cache_dir, args.verbose, args.limits_box)
    try:
        for sc in args.selected:
            print(f"\n== {sc.name}: {sc.title}", flush=True)
            entry: dict[str, Any] = {"title": sc.title, "skipped": None, "rounds": []}
            results["scenarios"][sc.name] = entry
            try:
                sc.prepare(env)
            except Skip as exc:
                entry["skipped"] = str(exc)
                print(f"  skipped: {exc}")
                continue
            for r in range(args.rounds):
                order = ("ours", "ref") if r % 2 == 0 else ("ref", "ours")
                for side in order:
                    rec: dict[str, Any]
                    if side in broken:
                        rec = {"side": side, "ok": False, "values": {}, "seconds": 0.0,
                               "error": f"not run: {side} server failed to start earlier: "
                                        f"{broken[side].splitlines()[0]}"}  # fmt: skip
                    else:
                        rec = run_round(sc, env, specs[side], args.verbose)
                        if rec.get("start_failed"):
                            broken[side] = rec["error"]
                    rec["round"] = r + 1
                    entry["rounds"].append(rec)
                    print("  " + describe_round(rec), flush=True)
            entry["figures"] = report.aggregate(sc.figures(profile), entry["rounds"])
    except KeyboardInterrupt:
        print("\ninterrupted: reporting what was measured so far")
        results["meta"]["interrupted"] = True
    finally:
        data.close()
        shutil.rmtree(workdir, ignore_errors=True)
    results["meta"]["loadavg_end"] = os.getloadavg()
    results["meta"]["seconds"] = round(
        (dt.datetime.now().astimezone() - started).total_seconds(), 1
    )
    for entry in results["scenarios"].values():
        entry.setdefault("figures", [])

    print("\n" + report.format_table(results))
    errors = report.format_errors(results)
    if errors:
        print("\nfailed rounds:\n" + errors)
    json_path = args.json or RESULTS_DIR / f"{started.strftime('%Y%m%d-%H%M%S')}.json"
    report.write_json(results, json_path)
    print(f"\nresults: {json_path}")
    problem = report.draw_chart(results, args.chart)
    print(f"chart: {problem}" if problem else f"chart: {args.chart}")
    if args.publish:
        publish(results, args.chart if problem is None else None)
    return 1 if errors else 0


def publish(results: dict[str, Any], chart: Path | None) -> None:
    meta = results["meta"]
    if chart is not None:
        shutil.copyfile(chart, BENCH_DIR / "chart.png")
        print(f"published: {BENCH_DIR / 'chart.png'}")
    ref_cmd = report.custom_ref_cmd(meta)
    if ref_cmd is not None:
        ref_flag = f" --ref-cmd '{ref_cmd}'"
    elif not meta.get("ref_default", True):
        ref_flag = f" --reference {meta['ref_path']}"
    else:
        ref_flag = ""
    only = " --limits" if list(results["scenarios"]) == ["limits"] else ""
    targets = report.targets_table(results)
    text = (
        "# Benchmark results\n\n"
        f"`python -m bench {'--quick ' if meta['profile'] == 'quick' else ''}"
        f"--rounds {meta['rounds']}{only}{ref_flag} --publish` on {meta['date']}, "
        f"commit {meta['commit']}.\n"
        f"Machine: {meta['machine']}. Reference: {report.reference_name(meta)}.\n"
        "Two modes: unlimited (both sides may use every core) and limited (the `limits` "
        f"scenario: each side in its own cgroup of {meta.get('limits', '?')}, the template's "
        "container; the load generator outside).\n"
        "Figures are medians with (min..max) over the rounds; MB = 10^6 bytes. "
        f"Load average at the start: {meta.get('loadavg_start', ['?'])[0]:.1f}, at the end: "
        f"{meta.get('loadavg_end', ['?'])[0]:.1f} (above ~0.5 other work shared the 2 cores, "
        "which adds noise to both sides; the CPU-time rows are the steadiest).\n\n"
        + ("## Targets (issue 14)\n\n" + report.markdown_table(targets) + "\n\n"
           if len(targets) > 1 else "")
        + "## All figures\n\n"
        + report.format_table(results, markdown=True)
        + "\n\n![ours vs reference](chart.png)\n"
    )  # fmt: skip
    (BENCH_DIR / "RESULTS.md").write_text(text)
    print(f"published: {BENCH_DIR / 'RESULTS.md'}")


if __name__ == "__main__":
    sys.exit(main())
