"""Batch runs: resumable JSONL (kill at any point, restart: nothing lost, nothing duplicated),
per-unit timeouts, and the Dask engine on a loopback LocalCluster."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from nncertify.certify.batch import expand_plan, read_done, run_batch

PLAN = {"models": ["digits_relu_mlp", "digits_maxmin_mlp"],
        "tasks": [{"task": "global", "method": "product", "norm": "2", "lower_samples": [200, 400, 600]}],
        "samples": 10, "chunk": 10, "timeout": 120}


def _ids(path):
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


def test_expand_plan_is_deterministic_and_validated():
    a, b = expand_plan(PLAN), expand_plan(PLAN)
    assert [u["id"] for u in a] == [u["id"] for u in b] and len(a) == 6 and len({u["id"] for u in a}) == 6
    rob = expand_plan({"models": ["m"], "tasks": [{"task": "robustness", "eps": [0.1, 0.2]}], "samples": 50,
                       "chunk": 20})
    assert [(u["start"], u["stop"]) for u in rob] == [(0, 20), (20, 40), (40, 50)] * 2
    from nncertify.models.errors import InvalidArgumentError
    with pytest.raises(InvalidArgumentError, match="tasks"):
        expand_plan({"models": ["m"], "tasks": [{"task": "dance"}]})


def test_kill_and_resume_loses_and_duplicates_nothing(tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(PLAN))
    out = tmp_path / "results.jsonl"
    cmd = [sys.executable, "-m", "nncertify", "batch", str(plan), "--out", str(out), "--workers", "1"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 2):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole process group, workers included
    proc.wait()
    partial = _ids(out)
    assert 2 <= len(partial) < 6
    # simulate a kill in the middle of a write as well: a torn last line
    with open(out, "a") as f:
        f.write('{"id": "torn-wri')
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    ids = _ids(out)
    want = {u["id"] for u in expand_plan(PLAN)}
    assert sorted(ids) == sorted(want)  # every unit exactly once
    assert ids[:len(partial)] == partial  # finished units were not re-run
    recs = read_done(out)
    assert all(r["status"] == "certified" for r in recs.values())
    assert all(r["certificate"]["result"]["upper"] > 0 for r in recs.values())


def test_timeouts_are_recorded(tmp_path):
    units = expand_plan({**PLAN, "models": ["digits_relu_mlp"], "timeout": 0.05})[:1]
    counts = run_batch(units, tmp_path / "r.jsonl", workers=1, progress=False)
    assert counts == {"timeout": 1, "proven": 0}


def test_errors_are_recorded_not_raised(tmp_path):
    units = expand_plan({**PLAN, "models": ["no_such_model.pt"]})[:1]
    counts = run_batch(units, tmp_path / "r.jsonl", workers=1, progress=False)
    assert counts == {"error": 1, "proven": 0}
    rec = next(iter(read_done(tmp_path / "r.jsonl").values()))
    assert "no such file" in rec["error"]


def test_dask_engine_on_loopback(tmp_path):
    pytest.importorskip("distributed")
    units = expand_plan(PLAN)[:2]
    counts = run_batch(units, tmp_path / "r.jsonl", engine="dask", workers=1, progress=False)
    assert counts == {"certified": 2, "proven": 2}
    # resume with dask: nothing left to do, nothing duplicated
    counts = run_batch(units, tmp_path / "r.jsonl", engine="dask", workers=1, progress=False)
    assert counts == {"certified": 2, "proven": 2} and len(_ids(tmp_path / "r.jsonl")) == 2
