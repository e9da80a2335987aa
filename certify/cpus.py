"""How many CPUs this process may really use: the default number of parallel units.

``os.cpu_count()`` counts the machine's CPUs, not ours: a container or a job scheduler restricts a
process with an affinity mask (``taskset``, cpusets: :func:`os.sched_getaffinity`) and/or a CFS
bandwidth quota (cgroup v2 ``cpu.max`` = ``"QUOTA PERIOD"``, cgroup v1 ``cpu.cfs_quota_us`` /
``cpu.cfs_period_us``), which lets it run ``QUOTA / PERIOD`` CPUs' worth of time however many CPUs it
sees.  Running more single-threaded workers than that only makes them take turns (measured on a
shared 2-core machine: two torch threads instead of one made a bound 7x slower).

:func:`available_cpus` = ``min(affinity, ceil(quota / period))``, at least 1.
"""

from __future__ import annotations

import math
import os
from pathlib import Path


def _cgroup_quota(root: Path, proc_cgroup: Path) -> float | None:
    """CPUs' worth of the CFS quota of this process's cgroup (v2, then v1); None when unlimited/unknown."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:  # cgroup v2: "0::/path"
        hier, _, path = line.partition(":")[2].partition(":")
        if hier == "" and path:
            for d in (root / path.lstrip("/"), root):
                try:
                    quota, period = (d / "cpu.max").read_text().split()[:2]
                except (OSError, ValueError):
                    continue
                return None if quota == "max" else int(quota) / int(period)
    for line in lines:  # cgroup v1: "N:cpu,cpuacct:/path" (also mounted as cpu/ or cpu,cpuacct/)
        _, ctrls, path = line.split(":", 2) if line.count(":") >= 2 else ("", "", "")
        if "cpu" in ctrls.split(","):
            for d in (root / "cpu" / path.lstrip("/"), root / "cpu", root / "cpu,cpuacct" / path.lstrip("/")):
                try:
                    quota = int((d / "cpu.cfs_quota_us").read_text())
                    period = int((d / "cpu.cfs_period_us").read_text())
                except (OSError, ValueError):
                    continue
                return None if quota <= 0 or period <= 0 else quota / period
    return None


def available_cpus(root: str | Path = "/sys/fs/cgroup", proc_cgroup: str | Path = "/proc/self/cgroup") -> int:
    """CPUs this process may use: its affinity mask, capped by its cgroup CPU quota (rounded up), >= 1."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        n = os.cpu_count() or 1
    quota = _cgroup_quota(Path(root), Path(proc_cgroup))
    if quota is not None and quota > 0:
        n = min(n, math.ceil(quota - 1e-9))
    return max(1, n)
