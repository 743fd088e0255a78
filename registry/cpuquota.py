"""How many CPUs this process may actually use: the cgroup CPU quota and the affinity mask.

``http.workers: 0`` picks the worker count from this, not from the host's core count: a
container limited to 0.25 CPU on a 16-core host must run one worker, not sixteen (each
worker costs ~35 MB and they would only take turns inside the same quota).

The parsing is pure: each function takes file contents, or a root directory under which
``proc/self/cgroup``, ``proc/self/mountinfo`` and the cgroup mounts are read (``/`` in
production, a fake tree in tests). Both cgroup versions count:

- v1: ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (quota -1 = no limit) in the ``cpu``
  hierarchy;
- v2: ``cpu.max`` = ``"<quota> <period>"`` or ``"max <period>"`` (no limit).

A limit set on any ancestor of the process's cgroup applies too, so the directories from the
process's own cgroup up to the hierarchy's mount are read and the smallest quota wins.
Missing or unreadable files mean "no limit known". Nothing here raises for bad contents.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "auto_workers",
    "cgroup_dirs",
    "cpu_quota",
    "parse_cfs",
    "parse_cpu_max",
    "workers_for",
]


def parse_cfs(quota_us: str, period_us: str) -> float | None:
    """CPUs allowed by a v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` pair; None when
    unlimited (quota -1) or unparsable."""
    try:
        quota, period = int(quota_us.strip()), int(period_us.strip())
    except ValueError:
        return None
    if quota <= 0 or period <= 0:
        return None
    return quota / period


def parse_cpu_max(text: str) -> float | None:
    """CPUs allowed by a v2 ``cpu.max`` (``"25000 100000"``); None for ``"max ..."`` or
    unparsable contents."""
    words = text.split()
    if not words or words[0] == "max":
        return None
    period = words[1] if len(words) > 1 else "100000"  # the kernel's default period
    return parse_cfs(words[0], period)


@dataclass(frozen=True)
class _Mount:
    point: str  # where the hierarchy is mounted, e.g. /sys/fs/cgroup/cpu
    root: str  # the hierarchy's directory shown at that mount point (/ on the host)
    version: int  # 1 or 2


def _mounts(mountinfo: str) -> list[_Mount]:
    """cgroup mounts holding the CPU controller (v1) and cgroup2 mounts, from mountinfo."""
    out = []
    for line in mountinfo.splitlines():
        head, sep, tail = line.partition(" - ")
        fields, after = head.split(), tail.split()
        if not sep or len(fields) < 5 or len(after) < 3:
            continue
        if after[0] == "cgroup2":
            out.append(_Mount(fields[4], fields[3], 2))
        elif after[0] == "cgroup" and "cpu" in after[2].split(","):
            out.append(_Mount(fields[4], fields[3], 1))
    return out


def _own_paths(proc_cgroup: str) -> dict[int, str]:
    """The process's cgroup path per version: v1 from the line naming ``cpu``, v2 from the
    ``0::`` line."""
    out: dict[int, str] = {}
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        ident, controllers, path = parts
        if ident == "0" and controllers == "":
            out.setdefault(2, path)
        elif "cpu" in controllers.split(","):
            out[1] = path
    return out


def cgroup_dirs(proc_cgroup: str, mountinfo: str) -> list[tuple[int, str]]:
    """(version, directory) for the process's own CPU cgroup and each ancestor up to the
    mount point, innermost first. A cgroup path outside the mount's root (a container that
    sees only its own subtree) maps to the mount point itself."""
    own = _own_paths(proc_cgroup)
    dirs: list[tuple[int, str]] = []
    for mount in _mounts(mountinfo):
        path = own.get(mount.version)
        if path is None:
            continue
        rel = os.path.relpath(path, mount.root) if mount.root != "/" else path.lstrip("/")
        if rel == "." or rel.startswith(".."):
            rel = ""
        here = os.path.normpath(os.path.join(mount.point, rel))
        while True:
            dirs.append((mount.version, here))
            if here == os.path.normpath(mount.point) or here == "/":
                break
            here = os.path.dirname(here)
    return dirs


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def cpu_quota(root: str | os.PathLike[str] = "/") -> float | None:
    """The smallest CPU quota (in CPUs) on the process's cgroup or an ancestor, reading the
    tree under ``root``; None when no limit is set or nothing can be read."""
    base = Path(root)
    proc_cgroup = _read(base / "proc/self/cgroup")
    mountinfo = _read(base / "proc/self/mountinfo")
    if proc_cgroup is None or mountinfo is None:
        return None
    quotas = []
    for version, directory in cgroup_dirs(proc_cgroup, mountinfo):
        d = base / directory.lstrip("/")
        if version == 1:
            q, p = _read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us")
            quota = parse_cfs(q, p) if q is not None and p is not None else None
        else:
            text = _read(d / "cpu.max")
            quota = parse_cpu_max(text) if text is not None else None
        if quota is not None:
            quotas.append(quota)
    return min(quotas) if quotas else None


def workers_for(quota: float | None, cpus: int, max_workers: int) -> int:
    """Workers for ``cpus`` usable CPUs under ``quota`` CPUs (None = no quota): the quota
    rounded up (0.25 -> 1, 1.5 -> 2), never more than the CPUs or ``max_workers``, at least 1."""
    n = max(1, cpus)
    if quota is not None:
        n = min(n, math.ceil(quota))
    return max(1, min(n, max_workers))


def usable_cpus() -> int:
    """CPUs this process may be scheduled on (its affinity mask), else the host's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def auto_workers(max_workers: int, root: str | os.PathLike[str] = "/") -> int:
    """The worker count for ``http.workers: 0``: :func:`workers_for` with this process's
    cgroup quota and affinity."""
    return workers_for(cpu_quota(root), usable_cpus(), max_workers)
