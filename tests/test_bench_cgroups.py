"""The bench's cgroup setup and teardown (bench/cgroups.py, issue 14 item 1) over fake
cgroup trees: a temp directory laid out as cgroup v1 (cpu and memory hierarchies) or v2
(one unified hierarchy). Files in (mountinfo, /proc/self/cgroup, controllers), files
written out (the limits), directories removed. The real kernel is used only by
tests/test_bench.py's --limits run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.cgroups import CgroupUnavailable, Limits, create, detect, open_cgroup, parse_memory

MiB = 1024 * 1024
LIMITS = Limits(0.25, 256 * MiB)

V1_MOUNTINFO = (
    "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755\n"
    "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n"
    "33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct\n"
    "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
    "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
)
V1_CGROUP = "4:memory:/session/abc\n3:cpuacct:/\n1:cpu:/\n0::/\n"
V2_MOUNTINFO = "29 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
V2_CGROUP = "0::/bench\n"


def _tree(root: Path, cgroup: str, mountinfo: str, dirs: list[str], files: dict[str, str]) -> Path:
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/cgroup").write_text(cgroup)
    (root / "proc/self/mountinfo").write_text(mountinfo)
    for d in dirs:
        (root / d).mkdir(parents=True, exist_ok=True)
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def _v1(tmp_path: Path) -> Path:
    return _tree(tmp_path, V1_CGROUP, V1_MOUNTINFO,
                 ["sys/fs/cgroup/cpu", "sys/fs/cgroup/memory/session/abc"], {})  # fmt: skip


def _v2(tmp_path: Path, subtree: str = "") -> Path:
    return _tree(tmp_path, V2_CGROUP, V2_MOUNTINFO, [], {
        "sys/fs/cgroup/cgroup.controllers": "cpuset cpu io memory pids\n",
        "sys/fs/cgroup/bench/cgroup.subtree_control": subtree,
        "sys/fs/cgroup/bench/memory.swap.max": "max\n",
    })  # fmt: skip


def _empty(d: Path) -> None:
    """A fake cgroup directory holds real files; the kernel's rmdir ignores its own."""
    for f in d.iterdir():
        f.unlink()


def test_v1_limits_go_into_new_cpu_and_memory_groups_below_our_own(tmp_path: Path) -> None:
    root = _v1(tmp_path)
    layout = detect(root)
    assert layout.version == 1
    group = create(layout, "rb-1", LIMITS)
    cpu = root / "sys/fs/cgroup/cpu/rb-1"
    mem = root / "sys/fs/cgroup/memory/session/abc/rb-1"  # nested in our own memory cgroup
    assert group.dirs == [cpu, mem]
    assert (cpu / "cpu.cfs_period_us").read_text() == "100000"
    assert (cpu / "cpu.cfs_quota_us").read_text() == "25000"
    assert (mem / "memory.limit_in_bytes").read_text() == str(256 * MiB)
    assert group.procs_files == [cpu / "cgroup.procs", mem / "cgroup.procs"]
    (mem / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")
    assert group.oom_kills() == 3
    for d in group.dirs:
        _empty(d)
    group.remove()
    group.remove()  # twice is harmless
    assert not cpu.exists() and not mem.exists()


def test_v2_enables_controllers_and_writes_cpu_max_and_memory_max(tmp_path: Path) -> None:
    root = _v2(tmp_path)
    layout = detect(root)
    assert layout.version == 2
    group = create(layout, "rb-2", Limits(1.5, 512 * MiB))
    parent = root / "sys/fs/cgroup/bench"
    d = parent / "rb-2"
    assert group.dirs == [d]
    assert (parent / "cgroup.subtree_control").read_text() == "+cpu +memory"
    assert (d / "cpu.max").read_text() == "150000 100000"
    assert (d / "memory.max").read_text() == str(512 * MiB)
    assert (d / "memory.swap.max").read_text() == "0"
    (d / "memory.events").write_text("low 0\nhigh 0\nmax 7\noom 2\noom_kill 1\n")
    assert group.oom_kills() == 1
    _empty(d)
    group.remove()
    assert not d.exists()


def test_v2_leaves_subtree_control_alone_when_already_enabled(tmp_path: Path) -> None:
    root = _v2(tmp_path, subtree="cpu memory pids\n")
    create(detect(root), "rb-3", LIMITS)
    assert (root / "sys/fs/cgroup/bench/cgroup.subtree_control").read_text() == "cpu memory pids\n"


def test_no_usable_hierarchy_is_cgroup_unavailable(tmp_path: Path) -> None:
    root = _tree(tmp_path, "0::/\n", "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n",
                 [], {"sys/fs/cgroup/unified/cgroup.controllers": ""})  # fmt: skip
    with pytest.raises(CgroupUnavailable):
        detect(root)
    with pytest.raises(CgroupUnavailable):
        detect(tmp_path / "nothing-here")


def test_a_failed_create_leaves_no_directory_behind(tmp_path: Path) -> None:
    root = _v1(tmp_path)
    layout = detect(root)
    (root / "sys/fs/cgroup/memory/session/abc").rmdir()  # the memory parent vanished
    with pytest.raises(CgroupUnavailable, match="cannot create"):
        create(layout, "rb-4", LIMITS)
    assert not (root / "sys/fs/cgroup/cpu/rb-4").exists()


def test_open_cgroup_removes_the_group_after_the_block(tmp_path: Path) -> None:
    root = _v2(tmp_path, subtree="cpu memory")
    with open_cgroup(LIMITS, "rb-5", root) as group:
        assert group.dirs[0].is_dir()
        _empty(group.dirs[0])
    assert not group.dirs[0].exists()


def test_wrapped_command_writes_its_own_pid_then_execs(tmp_path: Path) -> None:
    root = _v1(tmp_path)
    group = create(detect(root), "rb-6", LIMITS)
    argv = group.wrap([sys.executable, "-c", "import os; print(os.getpid())"])
    out = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30).stdout
    pid = int(out)  # exec kept the shell's pid: the server itself is in the cgroup
    assert [f.read_text().strip() for f in group.procs_files] == [str(pid), str(pid)]


@pytest.mark.parametrize(
    ("text", "value"),
    [("256M", 256 * MiB), ("256Mi", 256 * MiB), ("1G", 1024 * MiB), ("300000000", 300000000),
     ("512k", None), ("lots", None), ("", None)],
)  # fmt: skip
def test_memory_sizes(text: str, value: int | None) -> None:
    if value is None:
        with pytest.raises(ValueError):
            parse_memory(text)
    else:
        assert parse_memory(text) == value
