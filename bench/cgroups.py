"""Run a server inside its own cgroup with a CPU quota and a memory limit (``--limits``).

The template deploys the registry in one container limited to 0.25 CPU and 256 MB; the
limits mode gives each side of the bench the same box. ``open_cgroup`` creates a fresh
cgroup below the bench process's own one (so whatever contains the bench still contains
the server), writes the limits, yields a :class:`Cgroup`, and removes it afterwards. The
server joins it before it execs, through :meth:`Cgroup.wrap` (a ``sh`` that writes its own
pid into every ``cgroup.procs`` and then execs the server), so every process it forks is in
the cgroup too, and the load generator in the bench process stays outside.

Both layouts are supported, detected at run time from ``/proc/self/mountinfo``:

- v1: the ``cpu`` and ``memory`` hierarchies mounted separately (this machine): one
  directory in each; ``cpu.cfs_period_us`` / ``cpu.cfs_quota_us``,
  ``memory.limit_in_bytes``; OOM kills from ``memory.oom_control`` (``oom_kill N``).
- v2: one unified hierarchy: ``+cpu +memory`` in the parent's ``cgroup.subtree_control``,
  ``cpu.max``, ``memory.max`` (and ``memory.swap.max`` 0 where present); OOM kills from
  ``memory.events``.

Every path is relative to a ``root`` (``/`` for real, a temp tree in tests).
"""

from __future__ import annotations

import os
import re
import shlex
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

CFS_PERIOD_US = 100_000  # the kernel's default period; quota = CPUs x period
REMOVE_TIMEOUT = 10.0  # seconds to wait for a stopped server's processes to leave the cgroup
MiB = 1024 * 1024


class CgroupUnavailable(Exception):
    """No writable cgroup hierarchy with the cpu and memory controllers; says why."""


@dataclass(frozen=True)
class Limits:
    """What each side gets: ``cpus`` CPUs of quota (0.25 = 25 ms per 100 ms), ``memory``
    bytes of memory (RSS plus the page cache the cgroup is charged for)."""

    cpus: float = 0.25
    memory: int = 256 * MiB

    def describe(self) -> str:
        return f"{self.cpus:g} CPU, {self.memory / MiB:g} MiB"


def parse_memory(text: str) -> int:
    """``256M``, ``1G``, ``300000000``, ``512Mi`` -> bytes (K/M/G are powers of 1024, as in
    docker's ``--memory``). Raises ValueError."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)(?:i?[bB]?)?\s*", text)
    if not m:
        raise ValueError(f"not a memory size: {text!r} (e.g. 256M)")
    scale = {"": 1, "k": 1024, "m": MiB, "g": 1024 * MiB}[m.group(2).lower()]
    value = int(float(m.group(1)) * scale)
    if value < 4 * MiB:
        raise ValueError(f"memory limit {text!r} is below 4 MiB")
    return value


@dataclass(frozen=True)
class Layout:
    """Where to create cgroups: ``version`` 1 with ``dirs`` = {controller: parent directory},
    or 2 with ``dirs`` = {"unified": parent directory}."""

    version: int
    dirs: dict[str, Path]


def _own_paths(proc_cgroup: str) -> dict[str, str]:
    """controller ("cpu", "memory", or "" for v2) -> the process's cgroup path."""
    out: dict[str, str] = {}
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        for ctrl in parts[1].split(",") if parts[1] else [""]:
            out.setdefault(ctrl, parts[2])
    return out


def _join(base: Path, mount_root: str, path: str) -> Path:
    rel = os.path.relpath(path, mount_root)
    return base if rel == "." or rel.startswith("..") else base / rel


def detect(root: str | os.PathLike[str] = "/") -> Layout:
    """The layout to use: v1 when both cpu and memory v1 hierarchies are mounted, else a
    cgroup2 mount that offers both controllers. Raises CgroupUnavailable."""
    base = Path(root)
    try:
        mountinfo = (base / "proc/self/mountinfo").read_text()
        own = _own_paths((base / "proc/self/cgroup").read_text())
    except OSError as exc:
        raise CgroupUnavailable(f"cannot read /proc/self: {exc}") from None
    v1: dict[str, Path] = {}
    v2: Path | None = None
    for line in mountinfo.splitlines():
        head, sep, tail = line.partition(" - ")
        fields, after = head.split(), tail.split()
        if not sep or len(fields) < 5 or len(after) < 3:
            continue
        point = base / fields[4].lstrip("/")
        if after[0] == "cgroup":
            for ctrl in ("cpu", "memory"):
                if ctrl in after[2].split(",") and ctrl in own:
                    v1[ctrl] = _join(point, fields[3], own[ctrl])
        elif after[0] == "cgroup2" and "" in own:
            here = _join(point, fields[3], own[""])
            try:
                ctrls = (point / "cgroup.controllers").read_text().split()
            except OSError:
                continue
            if {"cpu", "memory"} <= set(ctrls):
                v2 = here
    if {"cpu", "memory"} <= set(v1):
        return Layout(1, v1)
    if v2 is not None:
        return Layout(2, {"unified": v2})
    raise CgroupUnavailable("no cgroup v1 cpu+memory hierarchies and no cgroup2 with cpu+memory")


@dataclass
class Cgroup:
    layout: Layout
    dirs: list[Path]  # the cgroup's directories (one per v1 controller, one for v2)

    @property
    def procs_files(self) -> list[Path]:
        return [d / "cgroup.procs" for d in self.dirs]

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` run by a shell that first moves itself into this cgroup, then execs it."""
        joins = " ".join(f"echo $$ > {shlex.quote(str(f))} &&" for f in self.procs_files)
        return ["/bin/sh", "-c", f'{joins} exec "$@"', "cgroup-join", *argv]

    def pids(self) -> list[int]:
        out: set[int] = set()
        for f in self.procs_files:
            try:
                out.update(int(x) for x in f.read_text().split())
            except (OSError, ValueError):
                pass
        return sorted(out)

    def oom_kills(self) -> int:
        """Processes the kernel's OOM killer killed in this cgroup so far."""
        name = "memory.oom_control" if self.layout.version == 1 else "memory.events"
        directory = self.dirs[-1]  # v1: the memory one (created last); v2: the only one
        try:
            text = (directory / name).read_text()
        except OSError:
            return 0
        for line in text.splitlines():
            words = line.split()
            if len(words) == 2 and words[0] == "oom_kill":
                return int(words[1])
        return 0

    def remove(self, timeout: float = REMOVE_TIMEOUT) -> None:
        """Remove the directories once their processes are gone (retries until ``timeout``).
        Safe to call twice; a directory that stays busy is left and reported by OSError."""
        deadline = time.monotonic() + timeout
        for d in self.dirs:
            while True:
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError as exc:
        raise CgroupUnavailable(f"cannot write {path}: {exc}") from None


def create(layout: Layout, name: str, limits: Limits) -> Cgroup:
    """Make cgroup ``name`` under the layout's parents with ``limits``. Raises
    CgroupUnavailable (and leaves nothing behind) when a directory or limit cannot be written."""
    quota = max(1000, round(limits.cpus * CFS_PERIOD_US))  # the kernel's minimum is 1 ms
    if layout.version == 1:
        group = Cgroup(layout, [layout.dirs["cpu"] / name, layout.dirs["memory"] / name])
        writes = [
            (group.dirs[0] / "cpu.cfs_period_us", str(CFS_PERIOD_US)),
            (group.dirs[0] / "cpu.cfs_quota_us", str(quota)),
            (group.dirs[1] / "memory.limit_in_bytes", str(limits.memory)),
        ]
    else:
        parent = layout.dirs["unified"]
        group = Cgroup(layout, [parent / name])
        control = parent / "cgroup.subtree_control"
        try:
            enabled = control.read_text().split()
        except OSError:
            enabled = []
        if not {"cpu", "memory"} <= set(enabled):
            _write(control, "+cpu +memory")
        writes = [
            (group.dirs[0] / "cpu.max", f"{quota} {CFS_PERIOD_US}"),
            (group.dirs[0] / "memory.max", str(limits.memory)),
        ]
        if (parent / "memory.swap.max").exists():  # no swap: the limit is the limit
            writes.append((group.dirs[0] / "memory.swap.max", "0"))
    try:
        for d in group.dirs:
            try:
                d.mkdir()
            except OSError as exc:
                raise CgroupUnavailable(f"cannot create {d}: {exc}") from None
        for path, text in writes:
            _write(path, text)
    except CgroupUnavailable:
        try:
            group.remove(timeout=0)
        except OSError:
            pass  # the first error is the one to report
        raise
    return group


@contextmanager
def open_cgroup(limits: Limits, name: str, root: str | os.PathLike[str] = "/") -> Iterator[Cgroup]:
    """A fresh cgroup with ``limits`` for the block; removed afterwards (stop its processes
    first). Raises CgroupUnavailable."""
    group = create(detect(root), name, limits)
    try:
        yield group
    finally:
        group.remove()
