"""certify/cpus.py: the default number of batch workers follows the affinity mask and the cgroup CPU
quota, not the machine's CPU count."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nncertify.certify import batch
from nncertify.certify.cpus import available_cpus


def _v2(tmp_path: Path, cpu_max: str) -> tuple[Path, Path]:
    root = tmp_path / "cg"
    (root / "job").mkdir(parents=True, exist_ok=True)
    (root / "job" / "cpu.max").write_text(cpu_max + "\n")
    proc = tmp_path / "cgroup"
    proc.write_text("0::/job\n")
    return root, proc


def _v1(tmp_path: Path, quota: int, period: int) -> tuple[Path, Path]:
    root = tmp_path / "cg1"
    d = root / "cpu" / "job"
    d.mkdir(parents=True, exist_ok=True)
    (d / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (d / "cpu.cfs_period_us").write_text(f"{period}\n")
    proc = tmp_path / "cgroup1"
    proc.write_text("4:memory:/x\n1:cpu,cpuacct:/job\n0::/\n")
    return root, proc


@pytest.fixture
def eight_cpus(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)


def test_cgroup_v2_quota_caps_the_affinity(tmp_path, eight_cpus):
    assert available_cpus(*_v2(tmp_path, "150000 100000")) == 2  # 1.5 CPUs' worth: 2 workers
    assert available_cpus(*_v2(tmp_path, "100000 100000")) == 1
    assert available_cpus(*_v2(tmp_path, "max 100000")) == 8  # no quota: the affinity mask
    assert available_cpus(*_v2(tmp_path, "5000 100000")) == 1  # a twentieth of a CPU: still one worker


def test_cgroup_v1_quota_caps_the_affinity(tmp_path, eight_cpus):
    assert available_cpus(*_v1(tmp_path, 300000, 100000)) == 3
    assert available_cpus(*_v1(tmp_path, -1, 100000)) == 8  # -1: unlimited


def test_no_cgroup_files_means_the_affinity_mask(tmp_path, eight_cpus):
    assert available_cpus(tmp_path / "none", tmp_path / "none.txt") == 8


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or not Path("/usr/bin/taskset").exists(),
                    reason="needs Linux affinity and taskset")
def test_a_process_pinned_to_one_cpu_gets_one_worker():
    code = "from nncertify.certify.cpus import available_cpus; print(available_cpus())"
    r = subprocess.run(["/usr/bin/taskset", "-c", "0", sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "1"


def test_run_batch_defaults_to_the_available_cpus(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr("nncertify.certify.cpus.available_cpus", lambda: 3)
    monkeypatch.setattr(batch, "_run_local", lambda units, workers, on_result: seen.append(workers))
    units = batch.expand_plan({"models": ["digits_relu_mlp"], "tasks": [{"task": "global", "method": "product"}]})
    batch.run_batch(units, tmp_path / "r.jsonl", progress=False)
    batch.run_batch(units, tmp_path / "r.jsonl", progress=False, workers=1)
    assert seen == [3, 1]
