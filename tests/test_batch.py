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


def _descendants(pid):
    """Live (non-zombie) descendants of ``pid``, from /proc."""
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = open(f"/proc/{d}/stat").read()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2:].split()
            kids.setdefault(int(fields[1]), []).append((int(d), fields[0]))
    out, todo = [], [pid]
    while todo:
        for child, state in kids.get(todo.pop(), []):
            if state != "Z":
                out.append(child)
            todo.append(child)
    return out


def _alive(pids):
    live = []
    for p in pids:
        try:
            stat = open(f"/proc/{p}/stat").read()
        except OSError:
            continue
        if stat[stat.rfind(")") + 2:].split()[0] != "Z":
            live.append(p)
    return live


def _results(path):
    """Per unit id: the certificate's result (what was proven), without timings and provenance."""
    return {i: (r["status"], r["certificate"]["result"]) for i, r in read_done(path).items()}


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads the process tree from /proc (Linux)")
def test_sigkill_of_parent_leaves_no_orphan_and_resume_matches_uninterrupted_run(tmp_path):
    """``kill -9`` of the batch process alone (not its group): every unit process it started is gone
    within 5 s; the resumed run redoes nothing finished, loses nothing, and ends with exactly the
    results of an uninterrupted run."""
    small = {**PLAN, "tasks": [{**PLAN["tasks"][0], "lower_samples": [200, 400]}]}  # 4 units
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(small))
    out = tmp_path / "results.jsonl"
    cmd = [sys.executable, "-m", "nncertify", "batch", str(plan), "--out", str(out), "--workers", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    kids = []
    while time.time() < deadline:
        n = len(out.read_text().splitlines()) if out.exists() else 0
        kids = _descendants(proc.pid)
        if n >= 1 and len(kids) >= 2:  # a unit done, later ones running
            break
        time.sleep(0.1)
    kids = _descendants(proc.pid)
    assert kids, "no unit process was running at the kill"
    os.kill(proc.pid, signal.SIGKILL)  # the parent only: its workers must notice by themselves
    proc.wait()
    t0 = time.time()
    while _alive(kids) and time.time() - t0 < 5:
        time.sleep(0.05)
    assert not _alive(kids), f"orphans 5 s after kill -9 of the parent: {_alive(kids)}"
    partial = _ids(out)
    assert 1 <= len(partial) < 4
    with open(out, "a") as f:  # a kill in the middle of a write as well: a torn last line
        f.write('{"id": "torn-wri')
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    ids = _ids(out)
    assert sorted(ids) == sorted(u["id"] for u in expand_plan(small))  # every unit exactly once
    assert ids[:len(partial)] == partial  # finished units were not re-run
    clean = tmp_path / "uninterrupted.jsonl"
    r = subprocess.run(cmd[:-4] + ["--out", str(clean), "--workers", "2"], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert _results(out) == _results(clean)
    assert all(st == "certified" and res["upper"] > 0 for st, res in _results(out).values())


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
