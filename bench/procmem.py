"""Resident memory of a server's whole process tree, sampled from /proc.

Our server may fork worker processes, so the figure is the sum of VmRSS over the root
process and all its descendants. (Pages shared after fork are counted once per process, so
this over-states a forking server a little; it is what `ps`/`top` users would add up.)
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

SAMPLE_INTERVAL = 0.05  # seconds: fine enough to catch a 32 MiB-per-client burst


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    for tid in tasks:
        try:
            text = Path(f"/proc/{pid}/task/{tid}/children").read_text()
        except OSError:
            continue
        kids.extend(int(x) for x in text.split())
    return kids


def tree_pids(root: int) -> list[int]:
    seen: list[int] = []
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.append(pid)
        todo.extend(_children(pid))
    return seen


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, plus those of its reaped children."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text.rsplit(")", 1)[1].split()  # the command name may contain spaces
    # fields[0] is field 3 (state): utime, stime, cutime, cstime are fields 14..17
    return sum(int(x) for x in fields[11:15]) / CLK_TCK


def tree_cpu_seconds(root: int) -> float:
    """CPU time used so far by a process tree: less noisy than wall time on a busy box."""
    return sum(cpu_seconds(pid) for pid in tree_pids(root))


def pss_kib(pid: int) -> int:
    """Proportional set size: resident pages, each shared page divided by its sharers."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return rss_kib(pid)


def tree_rss_kib(root: int) -> int:
    """Resident memory of a process tree, as PSS summed over its processes.

    Summing VmRSS would count every page a forked worker shares with its parent once per
    process (36 MB of our 111 MB idle sum with two workers); PSS counts each page once,
    which is what the kernel (and a container's memory limit) charges the tree. For a
    single process (the reference) PSS is its RSS minus its share of shared libraries.
    """
    return sum(pss_kib(pid) for pid in tree_pids(root))


class RssSampler:
    """Samples ``tree_rss_kib(root)`` every SAMPLE_INTERVAL in a daemon thread.

    ``peak_mb`` is the maximum since start or the last ``reset()``. ``stop()`` is idempotent.
    """

    def __init__(self, root: int, interval: float = SAMPLE_INTERVAL) -> None:
        self.root = root
        self.interval = interval
        self._peak_kib = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-{root}", daemon=True)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> int:
        kib = tree_rss_kib(self.root)
        with self._lock:
            self._peak_kib = max(self._peak_kib, kib)
        return kib

    def reset(self) -> None:
        with self._lock:
            self._peak_kib = 0
        self.sample()

    @property
    def peak_mb(self) -> float:
        self.sample()
        with self._lock:
            return self._peak_kib * 1024 / 1e6

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
