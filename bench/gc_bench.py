"""GC benchmark: our ``registry garbage-collect`` against the reference's on the same data.

    python -m bench.gc_bench [--small] [--workdir DIR] [--keep] [--json OUT]

Generates a registry directly in the reference's filesystem layout (default: 2,000
repositories, 20,000 manifests, 50,000 layer/config blobs of a few bytes each, plus the
20,000 manifest blobs), copies it, and runs each collector as a separate process on its own
copy: ours (``python -m registry garbage-collect``) and Debian's ``docker-registry
garbage-collect`` (distribution 2.8). Reported per tool: wall seconds and peak memory (PSS) (the
child's ``ru_maxrss`` from wait4) of ``--repeat`` dry runs (alternating which tool goes
first; median and min) and of one real run. Then the two resulting
trees are compared: they must be identical except for the stale ``_layers`` links we also
remove (the reference 2.8 keeps them).

The data, per repository: 10 OCI manifests (8 tagged, 2 untagged), each with a config and
3 layers drawn from 22 repository blobs and a pool of 500 blobs shared by every
repository; 5,500 unreferenced blobs spread over the repositories' layer links are the
garbage. ``--small`` is 20 / 200 / 600 (used by tests/test_gc_bench.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .servers import FILESYSTEM_STORAGE, config_text, server_env

REPO_ROOT = Path(__file__).resolve().parent.parent
V2 = Path("docker/registry/v2")
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"

MANIFESTS_PER_REPO = 10
TAGGED_PER_REPO = 8
BLOBS_PER_REPO = 22  # 10 configs + 12 layers
SHARED_POOL = 500


@dataclass(frozen=True)
class Shape:
    repos: int
    blobs: int  # layer and config blobs (manifest blobs come on top)

    @property
    def manifests(self) -> int:
        return self.repos * MANIFESTS_PER_REPO


FULL = Shape(repos=2000, blobs=50_000)
SMALL = Shape(repos=20, blobs=600)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _blob(root: Path, data: bytes) -> str:
    h = _sha(data)
    _write(root / V2 / "blobs" / "sha256" / h[:2] / h / "data", data)
    return h


def _link(path: Path, h: str) -> None:
    _write(path / "sha256" / h / "link", f"sha256:{h}".encode())


@dataclass
class Generated:
    repos: int
    manifests: int
    blobs: int  # layer/config blobs written
    garbage: int  # of those, referenced by no manifest
    files: int


def generate(root: Path, shape: Shape) -> Generated:
    """Write the registry under ``root`` (the driver's rootdirectory)."""
    pool_n = min(SHARED_POOL, shape.blobs // 10)
    per_repo = BLOBS_PER_REPO
    garbage_n = shape.blobs - pool_n - shape.repos * per_repo  # the rest is garbage
    assert garbage_n > 0, shape
    files = 0

    def content(i: int) -> bytes:
        return f"blob {i}\n".encode()

    sizes: dict[str, int] = {}
    referenced: set[str] = set()

    def put(i: int) -> str:
        nonlocal files
        data = content(i)
        h = _blob(root, data)
        sizes[h] = len(data)
        files += 1
        return h

    pool = [put(i) for i in range(pool_n)]
    next_id = pool_n
    garbage = [put(next_id + i) for i in range(garbage_n)]
    next_id += garbage_n
    for r in range(shape.repos):
        name = f"team{r % 50}/app{r}"
        repo = root / V2 / "repositories" / name
        own = [put(next_id + i) for i in range(per_repo)]
        next_id += per_repo
        linked: set[str] = set()
        for j in range(MANIFESTS_PER_REPO):
            cfg = own[j]
            shared = pool[(r * MANIFESTS_PER_REPO + j) % pool_n]
            layers = [shared, own[10 + j], own[10 + (j + 2) % 12]]
            doc = {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": f"sha256:{cfg}", "size": sizes[cfg]},
                "layers": [
                    {"mediaType": OCI_LAYER, "digest": f"sha256:{h}", "size": sizes[h]}
                    for h in layers
                ],
                "annotations": {"bench": f"{r}/{j}"},
            }
            body = json.dumps(doc, indent=2).encode()
            m = _blob(root, body)
            files += 1
            _link(repo / "_manifests" / "revisions", m)
            files += 1
            if j < TAGGED_PER_REPO:
                tag = repo / "_manifests" / "tags" / f"v{j}"
                _write(tag / "current" / "link", f"sha256:{m}".encode())
                _link(tag / "index", m)
                files += 2
            linked.update([cfg, *layers])
            referenced.update([cfg, *layers])
        for g in garbage[r :: shape.repos]:
            linked.add(g)
        for h in sorted(linked):
            _link(repo / "_layers", h)
            files += 1
    return Generated(shape.repos, shape.manifests, shape.blobs, len(sizes) - len(referenced), files)


def write_config(path: Path, root: Path) -> None:
    path.write_text(config_text("error", FILESYSTEM_STORAGE.format(root=root), 0))


@dataclass
class Timing:
    tool: str
    mode: str  # dry-run | delete
    seconds: float
    peak_mb: float
    exit_code: int


def run_measured(cmd: list[str], env: dict[str, str], tool: str, mode: str) -> Timing:
    """Run to completion with output discarded; wall time and the child's peak memory (PSS)."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    err = proc.stderr.read()  # drains; progress lines are small
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.stderr.write(err.decode(errors="replace")[-3000:])
    return Timing(tool, mode, seconds, usage.ru_maxrss / 1024, proc.returncode)


def ours_command(config: Path, dry_run: bool) -> tuple[list[str], dict[str, str]]:
    env = server_env()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "registry", "garbage-collect", "--quiet", str(config)]
    if dry_run:
        cmd.insert(-1, "--dry-run")
    return cmd, env


def reference_command(config: Path, dry_run: bool) -> tuple[list[str], dict[str, str]] | None:
    exe = shutil.which("docker-registry")
    if exe is None:
        return None
    env = server_env()
    env.pop("AWS_CA_BUNDLE", None)  # makes the reference's Go S3 client panic at startup
    cmd = [exe, "garbage-collect", str(config)]
    if dry_run:
        cmd.insert(2, "--dry-run")
    return cmd, env


def tree(root: Path) -> set[str]:
    """Every file and directory under root, relative."""
    out: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for n in dirnames + filenames:
            out.add(os.path.normpath(os.path.join(rel, n)))
    return out


def is_layer_link(rel: str) -> bool:
    parts = rel.split("/")
    return "_layers" in parts and parts.index("_layers") < len(parts) - 2


def compare_trees(ours: Path, ref: Path) -> dict[str, Any]:
    a, b = tree(ours), tree(ref)
    only_ref = sorted(b - a)
    only_ours = sorted(a - b)
    unexplained = [p for p in only_ref if not is_layer_link(p)]
    return {
        "same_except_layer_links": not only_ours and not unexplained,
        "only_in_ours": only_ours[:20],
        "layer_link_entries_only_in_reference": len(only_ref) - len(unexplained),
        "unexplained_only_in_reference": unexplained[:20],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gc_bench", description=__doc__.split("\n")[0])
    p.add_argument("--small", action="store_true", help="20 repos / 200 manifests / 600 blobs")
    p.add_argument("--workdir", help="where to generate (default: a temporary directory)")
    p.add_argument("--keep", action="store_true", help="keep the generated trees")
    p.add_argument("--json", help="write the results here as JSON")
    p.add_argument("--no-reference", action="store_true", help="time ours only")
    p.add_argument("--repeat", type=int, default=3, help="dry runs per tool (default 3)")
    p.add_argument(
        "--reuse", action="store_true", help="reuse WORKDIR/base from an earlier --keep run"
    )
    args = p.parse_args(argv)
    shape = SMALL if args.small else FULL

    work = Path(args.workdir or tempfile.mkdtemp(prefix="gc-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        base = work / "base"
        t0 = time.perf_counter()
        meta = work / "generated.json"
        if args.reuse and meta.exists():
            gen = Generated(**json.loads(meta.read_text()))
        else:
            shutil.rmtree(base, ignore_errors=True)
            gen = generate(base, shape)
            meta.write_text(json.dumps(asdict(gen)))
        for tool in ("ours", "reference"):
            shutil.rmtree(work / tool, ignore_errors=True)
        print(
            f"{'reused' if args.reuse and meta.exists() else 'generated'} {gen.repos} "
            f"repositories, {gen.manifests} manifests, {gen.blobs} blobs "
            f"({gen.garbage} unreferenced), {gen.files} files "
            f"({time.perf_counter() - t0:.1f}s)",
            flush=True,
        )
        tools: list[tuple[str, Any]] = [("ours", ours_command)]
        if not args.no_reference:
            if shutil.which("docker-registry") is None:
                print("docker-registry not found; timing ours only", file=sys.stderr)
            else:
                tools.append(("reference", reference_command))
        results: list[Timing] = []
        finals: dict[str, Path] = {}
        configs: dict[str, Path] = {}
        for tool, _ in tools:
            root = work / tool
            shutil.copytree(base, root, symlinks=True)
            configs[tool] = work / f"{tool}.yml"
            write_config(configs[tool], root)
            finals[tool] = root

        def measure(tool: str, make: Any, dry: bool) -> None:
            cmd, env = make(configs[tool], dry)
            t = run_measured(cmd, env, tool, "dry-run" if dry else "delete")
            results.append(t)
            print(
                f"{tool:<10} {t.mode:<8} {t.seconds:7.2f} s  peak {t.peak_mb:6.1f} MB"
                f"  exit {t.exit_code}",
                flush=True,
            )

        # Dry runs change nothing: repeat them, alternating which tool goes first, so a
        # busy machine or a cold cache favours neither. Then one real run each.
        for r in range(args.repeat):
            for tool, make in tools if r % 2 == 0 else tools[::-1]:
                measure(tool, make, True)
        for tool, make in tools:
            measure(tool, make, False)
        summary = {}
        for tool, _ in tools:
            for mode in ("dry-run", "delete"):
                ts = [t for t in results if t.tool == tool and t.mode == mode]
                summary[f"{tool} {mode}"] = {
                    "median_seconds": round(statistics.median(t.seconds for t in ts), 2),
                    "min_seconds": round(min(t.seconds for t in ts), 2),
                    "peak_mb": round(max(t.peak_mb for t in ts), 1),
                    "runs": len(ts),
                }
        for key, v in summary.items():
            print(
                f"{key:<18} median {v['median_seconds']:7.2f} s  min {v['min_seconds']:7.2f} s"
                f"  peak {v['peak_mb']:6.1f} MB  ({v['runs']} runs)"
            )
        comparison = None
        if "reference" in finals:
            comparison = compare_trees(finals["ours"], finals["reference"])
            print(f"result trees: {json.dumps(comparison)}")
        blobs_left = sum(1 for _ in (finals["ours"] / V2 / "blobs" / "sha256").glob("*/*/data"))
        print(f"ours: {blobs_left} blobs left (expected {gen.manifests + gen.blobs - gen.garbage})")
        out = {
            "shape": asdict(shape) | {"manifests": shape.manifests},
            "generated": asdict(gen),
            "timings": [asdict(t) for t in results],
            "summary": summary,
            "comparison": comparison,
            "blobs_left_ours": blobs_left,
            "expected_blobs_left": gen.manifests + gen.blobs - gen.garbage,
        }
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=2))
        ok = all(t.exit_code == 0 for t in results) and blobs_left == out["expected_blobs_left"]
        if comparison is not None:
            ok = ok and comparison["same_except_layer_links"]
        return 0 if ok else 1
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
