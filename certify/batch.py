"""Batch runs: many samples x models x methods, resumable, on a local process pool or Dask.

A *plan* (JSON) expands into *units*; each unit is one task on one model and one chunk of samples::

    {"models": ["digits_relu_mlp", "path/to/net.json"],
     "tasks": [{"task": "robustness", "eps": [0.01, 0.02], "method": "crown"},
               {"task": "global", "norm": "2"}],
     "data": "zoo:digits", "samples": 100, "chunk": 25, "timeout": 120}

List-valued task parameters expand into one unit each.  A unit's id is a hash of its content.

Results go to a JSONL file, one line per *finished* unit (``{"id", "unit", "status", "elapsed_s",
"certificate" | "error"}``), written by the parent process alone with flush + fsync.  Killing the
run at any point and restarting it loses nothing and duplicates nothing: finished ids are skipped,
and a torn last line (a kill mid-write) is cut off before appending.

Engines: ``local`` (default) runs each unit in a fresh spawned process, at most ``workers`` at once,
and terminates it at its timeout (recorded as ``timeout``); ``dask`` submits units to a Dask
``distributed`` cluster (a loopback ``LocalCluster`` unless ``scheduler`` gives an address), where a
unit past its timeout is cancelled and recorded as ``timeout``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import multiprocessing as mp
import os
import time
import traceback
from pathlib import Path
from typing import Callable, Iterable

from ..models.errors import InvalidArgumentError, NNCertifyError

PER_SAMPLE_TASKS = ("robustness", "lipschitz")
TASKS = ("robustness", "lipschitz", "global", "steps")


# ------------------------------------------------------------------------------------------ plans
def unit_id(unit: dict) -> str:
    body = {k: v for k, v in unit.items() if k != "id"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def expand_plan(plan: dict, source: str = "plan") -> list[dict]:
    """Expand a plan into units (see the module docstring)."""
    if not isinstance(plan, dict):
        raise InvalidArgumentError(f"{source}: expected a JSON object")
    models = plan.get("models")
    tasks = plan.get("tasks")
    if not isinstance(models, list) or not models:
        raise InvalidArgumentError(f"{source}: 'models' must be a non-empty list")
    if not isinstance(tasks, list) or not tasks:
        raise InvalidArgumentError(f"{source}: 'tasks' must be a non-empty list")
    samples = int(plan.get("samples", 100))
    chunk = int(plan.get("chunk", 25))
    if samples <= 0 or chunk <= 0:
        raise InvalidArgumentError(f"{source}: 'samples' and 'chunk' must be positive")
    data = plan.get("data", "zoo:digits")
    timeout = float(plan.get("timeout", 300))
    units = []
    for mi, model in enumerate(models):
        for ti, task in enumerate(tasks):
            if not isinstance(task, dict) or task.get("task") not in TASKS:
                raise InvalidArgumentError(f"{source}: tasks[{ti}].task must be one of {', '.join(TASKS)}")
            keys = [k for k in task if k != "task"]
            grids = [task[k] if isinstance(task[k], list) else [task[k]] for k in keys]
            for combo in itertools.product(*grids):
                params = dict(zip(keys, combo))
                chunks = [(s, min(s + chunk, samples)) for s in range(0, samples, chunk)] \
                    if task["task"] in PER_SAMPLE_TASKS else [(0, min(samples, chunk))]
                for start, stop in chunks:
                    u = {"task": task["task"], "model": model, "params": params, "data": data,
                         "start": start, "stop": stop, "timeout": timeout}
                    u["id"] = unit_id(u)
                    units.append(u)
    return units


# ------------------------------------------------------------------------------------------ results file
def read_done(path: Path) -> dict[str, dict]:
    """Finished records by id; cuts off a torn last line so that appends stay valid JSONL."""
    done: dict[str, dict] = {}
    if not path.exists():
        return done
    raw = path.read_bytes()
    good = raw.rfind(b"\n") + 1  # everything after the last newline is a torn write
    if good < len(raw):
        with open(path, "r+b") as f:
            f.truncate(good)
    for line in raw[:good].splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and "id" in rec:
            done[rec["id"]] = rec
    return done


def _append(path: Path, rec: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")
        f.flush()
        os.fsync(f.fileno())


# ------------------------------------------------------------------------------------------ workers
def _execute(unit: dict) -> dict:
    """Run one unit in this process; never raises (errors become records)."""
    import torch
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    try:
        from .tasks import run_unit
        cert = run_unit(unit)
        return {"id": unit["id"], "unit": unit, "status": cert.status, "elapsed_s": time.perf_counter() - t0,
                "certificate": json.loads(cert.to_json(indent=None))}
    except NNCertifyError as exc:
        return {"id": unit["id"], "unit": unit, "status": "error", "elapsed_s": time.perf_counter() - t0,
                "error": str(exc)}
    except Exception as exc:  # a bug: keep the traceback in the record, keep the batch going
        return {"id": unit["id"], "unit": unit, "status": "error", "elapsed_s": time.perf_counter() - t0,
                "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=5)}


def _child(unit: dict, conn) -> None:
    conn.send(_execute(unit))
    conn.close()


def _run_local(units: list[dict], workers: int, on_result: Callable[[dict], None]) -> None:
    ctx = mp.get_context("spawn")
    pending = list(units)
    running: dict = {}
    while pending or running:
        while pending and len(running) < workers:
            u = pending.pop(0)
            parent, child = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_child, args=(u, child), daemon=True)
            p.start()
            child.close()
            running[u["id"]] = (p, parent, u, time.monotonic())
        time.sleep(0.05)
        for uid, (p, conn, u, t0) in list(running.items()):
            rec = None
            if conn.poll():
                try:
                    rec = conn.recv()
                except EOFError:
                    rec = None
                p.join(timeout=5)
            elif not p.is_alive():
                rec = {"id": uid, "unit": u, "status": "error", "elapsed_s": time.monotonic() - t0,
                       "error": f"worker died with exit code {p.exitcode}"}
            elif time.monotonic() - t0 > float(u.get("timeout", 300)):
                p.terminate()
                p.join(timeout=5)
                rec = {"id": uid, "unit": u, "status": "timeout", "elapsed_s": time.monotonic() - t0,
                       "error": f"unit exceeded its timeout of {u.get('timeout')} s"}
            if rec is not None or not p.is_alive():
                if rec is None:
                    rec = {"id": uid, "unit": u, "status": "error", "elapsed_s": time.monotonic() - t0,
                           "error": "worker exited without a result"}
                running.pop(uid)
                conn.close()
                on_result(rec)


def _run_dask(units: list[dict], workers: int, scheduler: str | None, on_result: Callable[[dict], None]) -> None:
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise InvalidArgumentError("the dask engine needs dask[distributed] (pip install 'nncertify[dask]')") from None
    cluster = None
    if scheduler is None:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=None)
        client = Client(cluster)
    else:
        client = Client(scheduler, timeout="20s")
    try:
        futures = {client.submit(_execute, u, key=f"unit-{u['id']}", pure=False): (u, time.monotonic()) for u in units}
        while futures:
            time.sleep(0.05)
            for fut, (u, t0) in list(futures.items()):
                if fut.done():
                    futures.pop(fut)
                    try:
                        rec = fut.result()
                    except Exception as exc:
                        rec = {"id": u["id"], "unit": u, "status": "error", "elapsed_s": time.monotonic() - t0,
                               "error": f"{type(exc).__name__}: {exc}"}
                    on_result(rec)
                elif time.monotonic() - t0 > float(u.get("timeout", 300)):
                    futures.pop(fut)
                    fut.cancel()
                    on_result({"id": u["id"], "unit": u, "status": "timeout", "elapsed_s": time.monotonic() - t0,
                               "error": f"unit exceeded its timeout of {u.get('timeout')} s"})
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def run_batch(units: Iterable[dict], out: str | Path, *, engine: str = "local", workers: int = 2,
              scheduler: str | None = None, progress: bool = True) -> dict:
    """Run every unit not yet in ``out``; returns counts by status (for all units, old and new)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    units = list(units)
    done = read_done(out)
    todo = [u for u in units if u["id"] not in done]
    if engine not in ("local", "dask"):
        raise InvalidArgumentError(f"engine {engine!r}: use 'local' or 'dask'")
    if workers < 1:
        raise InvalidArgumentError("workers must be >= 1")
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(units), initial=len(units) - len(todo), unit="unit", desc="certify batch",
                   disable=None)

    def on_result(rec: dict) -> None:
        _append(out, rec)
        done[rec["id"]] = rec
        if bar is not None:
            bar.update(1)

    if todo:
        if engine == "local":
            _run_local(todo, workers, on_result)
        else:
            _run_dask(todo, workers, scheduler, on_result)
    if bar is not None:
        bar.close()
    counts: dict[str, int] = {}
    for u in units:
        st = done.get(u["id"], {}).get("status", "missing")
        counts[st] = counts.get(st, 0) + 1
    return counts
