"""http.workers: 0 picks the worker count from the CPU quota the process actually has
(issue 14 item 5): cgroup v1 and v2 file contents in, workers out. Pure tables over a fake
/proc and /sys tree; no real cgroup is read or written."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry.cpuquota import (
    auto_workers,
    cgroup_dirs,
    cpu_quota,
    parse_cfs,
    parse_cpu_max,
    workers_for,
)

MAX = 2  # registry.server.MAX_AUTO_WORKERS

V1_MOUNTINFO = (
    "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
    "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct\n"
    "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
)
V1_CGROUP = "4:memory:/app\n2:cpu,cpuacct:/app/web\n1:name=systemd:/\n"
V2_MOUNTINFO = "29 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
V2_CGROUP = "0::/app/web\n"


@pytest.mark.parametrize(
    ("quota", "period", "cpus"),
    [
        ("25000", "100000", 0.25),
        ("150000\n", "100000\n", 1.5),
        ("-1", "100000", None),  # no limit
        ("0", "100000", None),
        ("abc", "100000", None),
        ("50000", "0", None),
    ],
)
def test_v1_cfs_pair(quota: str, period: str, cpus: float | None) -> None:
    assert parse_cfs(quota, period) == cpus


@pytest.mark.parametrize(
    ("text", "cpus"),
    [
        ("25000 100000\n", 0.25),
        ("200000 100000", 2.0),
        ("max 100000\n", None),
        ("max", None),
        ("50000", 0.5),  # period omitted: the kernel's default 100 ms
        ("", None),
        ("junk 100000", None),
    ],
)
def test_v2_cpu_max(text: str, cpus: float | None) -> None:
    assert parse_cpu_max(text) == cpus


@pytest.mark.parametrize(
    ("quota", "cpus", "workers"),
    [
        (None, 2, 2),  # no quota on 2 cores: both
        (None, 16, 2),  # never more than MAX_AUTO_WORKERS
        (None, 1, 1),
        (0.25, 2, 1),  # the template's container
        (0.25, 16, 1),
        (1.0, 16, 1),
        (1.5, 16, 2),  # rounded up
        (2.0, 1, 1),  # affinity allows one CPU
        (None, 0, 1),
    ],
)
def test_workers_for_quota(quota: float | None, cpus: int, workers: int) -> None:
    assert workers_for(quota, cpus, MAX) == workers


def _tree(tmp_path: Path, cgroup: str, mountinfo: str, files: dict[str, str]) -> Path:
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/cgroup").write_text(cgroup)
    (tmp_path / "proc/self/mountinfo").write_text(mountinfo)
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


CPU = "sys/fs/cgroup/cpu,cpuacct"


@pytest.mark.parametrize(
    ("cgroup", "mountinfo", "files", "quota"),
    [
        pytest.param(V1_CGROUP, V1_MOUNTINFO, {
            f"{CPU}/app/web/cpu.cfs_quota_us": "25000\n",
            f"{CPU}/app/web/cpu.cfs_period_us": "100000\n",
        }, 0.25, id="v1-own"),
        pytest.param(V1_CGROUP, V1_MOUNTINFO, {
            f"{CPU}/app/web/cpu.cfs_quota_us": "-1\n",
            f"{CPU}/app/web/cpu.cfs_period_us": "100000\n",
            f"{CPU}/app/cpu.cfs_quota_us": "150000\n",
            f"{CPU}/app/cpu.cfs_period_us": "100000\n",
        }, 1.5, id="v1-parent-limits"),
        pytest.param(V1_CGROUP, V1_MOUNTINFO, {
            f"{CPU}/app/web/cpu.cfs_quota_us": "-1\n",
            f"{CPU}/app/web/cpu.cfs_period_us": "100000\n",
        }, None, id="v1-unlimited"),
        pytest.param(V1_CGROUP, V1_MOUNTINFO, {}, None, id="v1-files-missing"),
        pytest.param(  # a container: its cgroup is the mount's root
            "2:cpu,cpuacct:/docker/abc\n",
            "32 31 0:29 /docker/abc /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n",
            {f"{CPU}/cpu.cfs_quota_us": "25000", f"{CPU}/cpu.cfs_period_us": "100000"},
            0.25, id="v1-container"),
        pytest.param(V2_CGROUP, V2_MOUNTINFO, {
            "sys/fs/cgroup/app/web/cpu.max": "25000 100000\n",
        }, 0.25, id="v2-own"),
        pytest.param(V2_CGROUP, V2_MOUNTINFO, {
            "sys/fs/cgroup/app/web/cpu.max": "max 100000\n",
            "sys/fs/cgroup/app/cpu.max": "50000 100000\n",
        }, 0.5, id="v2-parent-limits"),
        pytest.param(V2_CGROUP, V2_MOUNTINFO, {
            "sys/fs/cgroup/app/web/cpu.max": "max 100000\n",
        }, None, id="v2-max"),
        pytest.param(V2_CGROUP, V2_MOUNTINFO, {}, None, id="v2-files-missing"),
        pytest.param(  # hybrid: v1 cpu hierarchy and the unified one; the smaller wins
            V1_CGROUP + "0::/app/web\n",
            V1_MOUNTINFO + "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n",
            {
                f"{CPU}/app/web/cpu.cfs_quota_us": "-1",
                f"{CPU}/app/web/cpu.cfs_period_us": "100000",
                "sys/fs/cgroup/unified/app/web/cpu.max": "max 100000",
            }, None, id="hybrid-unlimited"),
        pytest.param("garbage\n", "garbage\n", {}, None, id="unparsable"),
    ],
)
def test_cpu_quota_from_a_cgroup_tree(
    tmp_path: Path, cgroup: str, mountinfo: str, files: dict[str, str], quota: float | None
) -> None:
    assert cpu_quota(_tree(tmp_path, cgroup, mountinfo, files)) == quota


def test_no_proc_files_means_no_quota(tmp_path: Path) -> None:
    assert cpu_quota(tmp_path) is None


def test_cgroup_dirs_walk_from_own_cgroup_up_to_the_mount() -> None:
    assert cgroup_dirs(V1_CGROUP, V1_MOUNTINFO) == [
        (1, "/sys/fs/cgroup/cpu,cpuacct/app/web"),
        (1, "/sys/fs/cgroup/cpu,cpuacct/app"),
        (1, "/sys/fs/cgroup/cpu,cpuacct"),
    ]


def test_auto_workers_is_one_in_a_quarter_cpu_container(tmp_path: Path) -> None:
    root = _tree(tmp_path, V2_CGROUP, V2_MOUNTINFO, {"sys/fs/cgroup/app/web/cpu.max": "25000 100000"})
    assert auto_workers(MAX, root) == 1
