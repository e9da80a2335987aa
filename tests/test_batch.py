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


LONG_UNIT = {"models": ["digits_relu_mlp"], "samples": 1,  # 10^8 sampled gradients: minutes of work
             "tasks": [{"task": "global", "method": "product", "lower_samples": 10 ** 8}]}


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


def _depths(pid):
    """Live descendants of ``pid`` with their depth (1: a child, 2: a grandchild, ...)."""
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = open(f"/proc/{d}/stat").read()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2:].split()
            kids.setdefault(int(fields[1]), []).append((int(d), fields[0]))
    out, todo = {}, [(pid, 0)]
    while todo:
        parent, depth = todo.pop()
        for child, state in kids.get(parent, []):
            if state != "Z":
                out[child] = depth + 1
            todo.append((child, depth + 1))
    return out


def _kill_resume_compare(tmp_path, engine: str) -> None:
    """``kill -9`` of the batch process alone (not its group) while a unit runs: every process it started
    (fork servers, unit processes and their watchdogs; with Dask also the LocalCluster's worker
    processes -- its nannies and scheduler live in the batch process itself) is gone within 5 s; the
    resumed run (same engine) redoes nothing finished, loses nothing, and ends with exactly the results
    of an uninterrupted run (local engine)."""
    # 4 units of a few seconds each (units start in milliseconds from the preloaded fork server)
    small = {**PLAN, "tasks": [{**PLAN["tasks"][0], "lower_samples": [20000, 30000]}]}
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(small))
    out = tmp_path / "results.jsonl"
    # Dask: one worker process (units run one after the other; each worker pays for its own fork server)
    cmd = [sys.executable, "-m", "nncertify", "batch", str(plan), "--out", str(out), "--workers",
           "2" if engine == "local" else "1", "--engine", engine]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # a unit process: a child of the batch process's fork server (local engine), or of a Dask worker's
    # fork server (the worker being the batch process's child); its watchdog is one level deeper
    unit_depth = 2 if engine == "local" else 3
    deadline = time.time() + 240
    while time.time() < deadline:
        n = len(out.read_text().splitlines()) if out.exists() else 0
        tree = _depths(proc.pid)
        if n >= 1 and any(d >= unit_depth for d in tree.values()):  # a unit done, a later one running
            break
        time.sleep(0.1)
    tree = _depths(proc.pid)
    kids = list(tree)
    assert [p for p, d in tree.items() if d >= unit_depth], f"no unit process was running at the kill: {tree}"
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
    clean = tmp_path / "uninterrupted.jsonl"  # on the local engine: both engines must agree, too
    r = subprocess.run([*cmd[:6], str(clean), "--workers", "2"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert _results(out) == _results(clean)
    assert all(st == "certified" and res["upper"] > 0 for st, res in _results(out).values())


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads the process tree from /proc (Linux)")
def test_sigkill_of_parent_leaves_no_orphan_and_resume_matches_uninterrupted_run(tmp_path):
    _kill_resume_compare(tmp_path, "local")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads the process tree from /proc (Linux)")
def test_sigkill_of_dask_batch_leaves_no_worker_and_resume_matches_uninterrupted_run(tmp_path):
    pytest.importorskip("distributed")
    _kill_resume_compare(tmp_path, "dask")


def test_timeouts_are_recorded(tmp_path):
    units = expand_plan({**LONG_UNIT, "timeout": 0.5})
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


def _cmdline(pid):
    try:
        return open(f"/proc/{pid}/cmdline").read().replace("\0", " ")
    except OSError:
        return ""


def _units_under(worker_pids):
    """Unit processes (and their watchdogs) below Dask worker processes: every live descendant except
    a worker's own fork server and resource tracker (its direct children that stay for the next unit)."""
    out = []
    for w in worker_pids:
        for pid, depth in _depths(w).items():
            helper = depth == 1 and ("forkserver" in _cmdline(pid) or "resource_tracker" in _cmdline(pid))
            if not helper:
                out.append(pid)
    return out


@pytest.fixture(scope="module")
def dask_cluster():
    """A loopback LocalCluster that outlives the batches (as with ``--scheduler``): (address, worker pids)."""
    if not os.path.isdir("/proc"):
        pytest.skip("reads the process tree from /proc (Linux)")
    pytest.importorskip("distributed")
    from dask.distributed import Client, LocalCluster
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        yield cluster.scheduler_address, list(client.run(os.getpid).values())


def _watch_units(workers, stop, seen):
    while not stop.is_set():
        seen.update(_units_under(workers))
        time.sleep(0.05)


def test_dask_unit_past_its_timeout_is_killed_on_the_worker_while_the_cluster_lives(tmp_path, dask_cluster):
    """A unit that would run for minutes is killed on the worker at its 4 s timeout: the record says
    so, it arrives in about the timeout, and the worker, which stays up, has no unit process left."""
    import threading
    address, workers = dask_cluster
    units = expand_plan({**LONG_UNIT, "timeout": 4})
    seen, stop = set(), threading.Event()
    th = threading.Thread(target=_watch_units, args=(workers, stop, seen), daemon=True)
    th.start()
    t0 = time.perf_counter()
    try:
        counts = run_batch(units, tmp_path / "r.jsonl", engine="dask", scheduler=address, progress=False)
    finally:
        stop.set()
        th.join()
    took = time.perf_counter() - t0
    assert seen, "no unit process ever ran on the worker"
    t1 = time.time()
    while _units_under(workers) and time.time() - t1 < 5:
        time.sleep(0.05)
    assert not _units_under(workers), f"unit processes left on the worker: {_units_under(workers)}"
    assert _alive(workers) == workers  # the worker itself lives on
    assert counts == {"timeout": 1, "proven": 0}
    rec = next(iter(read_done(tmp_path / "r.jsonl").values()))
    assert "cancelled on the Dask worker" in rec["error"]
    assert 4 <= rec["elapsed_s"] < 4 + 10 and took < 90, (rec["elapsed_s"], took)


def test_kill_9_of_a_batch_on_a_remote_cluster_kills_its_unit_on_the_worker(tmp_path, dask_cluster):
    """``certify batch --scheduler ADDR`` killed with SIGKILL while its unit runs (timeout 300 s): the
    scheduler drops the departed client's task, the worker sees it cancelled and kills the unit process
    within 5 s; the worker stays up."""
    address, workers = dask_cluster
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({**LONG_UNIT, "timeout": 300}))
    proc = subprocess.Popen([sys.executable, "-m", "nncertify", "batch", str(plan), "--out", str(tmp_path / "r.jsonl"),
                             "--engine", "dask", "--scheduler", address],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while not _units_under(workers) and time.time() - t0 < 120:
        time.sleep(0.1)
    units = _units_under(workers)
    assert units, "the unit never started on the worker"
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    t1 = time.time()
    while _alive(units) and time.time() - t1 < 5:
        time.sleep(0.05)
    assert not _alive(units), f"unit processes still running on the worker 5 s after kill -9 of the batch"
    assert _alive(workers) == workers


def test_a_killed_unit_leaves_no_warning_behind(tmp_path):
    """A unit killed at its timeout: exit 1, the one summary line, and nothing on stderr (the unit used
    to leak tqdm's multiprocessing lock -- torch.fx makes a hidden bar while loading a model -- and the
    resource tracker warned about a leaked semaphore at the end of the batch)."""
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({**LONG_UNIT, "timeout": 1}))
    r = subprocess.run([sys.executable, "-m", "nncertify", "batch", str(plan), "--out", str(tmp_path / "r.jsonl")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stdout.strip().startswith("1 units: 0 done") and "1 timed out" in r.stdout
    assert r.stderr == "", r.stderr
