"""A quick A/B of one cold blob pull through a pull-through cache (issue 16, "Speed").

``python -m bench.proxy_cold [--size MiB] [--rounds N] [--sides ref,ours,base]`` (``base``:
ours from the tree ``PROXY_COLD_BASE`` names, for before/after): an upstream
(registry-v3.0.0, filesystem) holds one blob of random bytes; per round and side a fresh
proxy (ours or registry-v3.0.0 in registry:3's proxy mode, empty storage) serves it to curl
twice: cold (fetched upstream while streamed and stored) and warm (from its storage). Prints
per round the wall seconds and the proxy's CPU seconds (all its processes) per pull, then
medians. Sides alternate within a round, so both see the same machine load. bench/proxy.py
(branch proxy-tests) is the full scenario with a 5-layer image; this one isolates one blob.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

MiB = 1024 * 1024
REF = Path(__file__).resolve().parents[2] / "shared" / "bin" / "registry-v3.0.0"
CLK_TCK = os.sysconf("SC_CLK_TCK")
READY_TIMEOUT = 20.0  # seconds a server may take to answer GET /v2/


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


WORKERS = int(os.environ.get("PROXY_COLD_WORKERS", "0"))  # ours' http.workers (0: its default)


def config(root: Path, port: int, remote: str | None) -> str:
    proxy = f"proxy:\n  remoteurl: {remote}\n" if remote else ""
    workers = f"  workers: {WORKERS}\n" if WORKERS and remote else ""
    return (f"version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {root}\n"
            f"http:\n  addr: 127.0.0.1:{port}\n{workers}{proxy}")


def start(side: str, base: Path, remote: str | None) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    base.mkdir(parents=True)
    (base / "storage").mkdir()
    cfg = base / "config.yml"
    cfg.write_text(config(base / "storage", port, remote))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("REGISTRY_") and k != "AWS_CA_BUNDLE"}
    argv = ([str(REF), "serve", str(cfg)] if side == "ref"
            else [sys.executable, "-m", "registry", "serve", str(cfg)])
    cwd = None
    if side == "base":  # ours from another tree (before/after): PROXY_COLD_BASE=/work/main
        cwd = os.environ["PROXY_COLD_BASE"]
        env["PYTHONPATH"] = cwd
    with (base / "log").open("wb") as log:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=log,
                                start_new_session=True, cwd=cwd)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        try:
            urllib.request.urlopen(url + "/v2/", timeout=1).read()
            return proc, url
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{side} did not start: {(base / 'log').read_text()[-2000:]}")
            time.sleep(0.1)


def stop(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def cpu_seconds(pgid: int) -> float:
    """utime+stime of every live process in process group ``pgid``."""
    total = 0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            fields = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # field 5 (pgrp) is index 2 after the ")"
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def push(url: str, data: Path, digest: str) -> None:
    loc = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{redirect_url}%header{location}",
                          "-X", "POST", f"{url}/v2/bench/blob/blobs/uploads/"],
                         check=True, capture_output=True, text=True).stdout
    loc = loc if loc.startswith("http") else url + loc
    sep = "&" if "?" in loc else "?"
    subprocess.run(["curl", "-sS", "-f", "-o", "/dev/null", "-X", "PUT", "-T", str(data),
                    "-H", "content-type: application/octet-stream",
                    f"{loc}{sep}digest={digest}"], check=True)


def pull(url: str, digest: str, proc: subprocess.Popen[bytes]) -> tuple[float, float]:
    cpu0, t0 = cpu_seconds(proc.pid), time.perf_counter()
    out = subprocess.run(["curl", "-sS", "-f", f"{url}/v2/bench/blob/blobs/{digest}"],
                         check=True, capture_output=True).stdout
    wall = time.perf_counter() - t0
    cpu = cpu_seconds(proc.pid) - cpu0
    if "sha256:" + hashlib.sha256(out).hexdigest() != digest:
        raise SystemExit("wrong body")
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=256, help="MiB")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sides", default="ref,ours")
    args = ap.parse_args()
    sides = args.sides.split(",")
    work = Path(tempfile.mkdtemp(prefix="proxy-cold-"))
    upstream = None
    try:
        data = work / "blob"
        with data.open("wb") as f:
            f.write(os.urandom(args.size * MiB))
        digest = "sha256:" + hashlib.sha256(data.read_bytes()).hexdigest()
        upstream, up_url = start("ref", work / "upstream", None)
        push(up_url, data, digest)
        got: dict[str, dict[str, list[float]]] = {s: {"cold": [], "cold_cpu": [], "warm": [],
                                                      "warm_cpu": []} for s in sides}
        for r in range(args.rounds):
            for side in sides if r % 2 == 0 else reversed(sides):
                proc, url = start(side, work / f"{side}-{r}", up_url)
                try:
                    for phase in ("cold", "warm"):
                        wall, cpu = pull(url, digest, proc)
                        got[side][phase].append(wall)
                        got[side][phase + "_cpu"].append(cpu)
                finally:
                    stop(proc)
                    shutil.rmtree(work / f"{side}-{r}", ignore_errors=True)
                print(f"round {r} {side}: cold {got[side]['cold'][-1]:.2f}s"
                      f" cpu {got[side]['cold_cpu'][-1]:.2f}s, warm {got[side]['warm'][-1]:.2f}s"
                      f" cpu {got[side]['warm_cpu'][-1]:.2f}s", flush=True)
        for side in sides:
            med = {k: statistics.median(v) for k, v in got[side].items()}
            print(f"median {side}: cold {med['cold']:.2f}s ({args.size / med['cold']:.0f} MiB/s)"
                  f" cpu {med['cold_cpu']:.2f}s; warm {med['warm']:.2f}s cpu {med['warm_cpu']:.2f}s")
    finally:
        if upstream is not None:
            stop(upstream)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
