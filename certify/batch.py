"""Batch runs: many samples x models x methods, resumable, on a local process pool or Dask.

A *plan* (JSON) expands into *units*; each unit is one task on one model and one chunk of samples::

    {"models": ["digits_relu_mlp", "path/to/net.json"],
     "tasks": [{"task": "robustness", "eps": [0.01, 0.02], "method": "crown"},
               {"task": "global", "norm": "2", "time_limit": 30}],
     "data": "zoo:digits", "samples": 100, "chunk": 25, "timeout": 120}

List-valued task parameters expand into one unit each.  A unit's id is a hash of its content.
The whole plan is validated before any unit starts (:func:`validate_plan`): every field, every task
parameter (names and values, see :data:`certify.params.TASK_PARAMS`) and every model (a zoo name,
or a file that loads); a problem is one line naming ``tasks[i].field`` (or ``models[i]``, ...).

Results go to a JSONL file, one line per *finished* unit (``{"id", "unit", "status", "elapsed_s",
"attempts", "certificate" | "error"}``), written by the parent process alone with flush + fsync.
``status`` is the certificate's (``certified``, ``estimate``, ``failed``) or ``error`` / ``timeout``
with the reason in ``error``.  Killing the run at any point and restarting it loses nothing and
duplicates nothing: finished ids are skipped, and a torn last line (a kill mid-write) is cut off
before appending.  With ``retries=N`` a unit that errs or times out is run again up to N times; only
its last attempt is recorded (with the earlier reasons in ``"retried"``).

Process lifecycle (no worker outlives its parent, ``kill -9`` included): every unit runs in a fresh
process (forked from a fork server that has torch and the methods preloaded) that puts itself in its own process group, asks the kernel for SIGKILL when its
parent dies (``prctl(PR_SET_PDEATHSIG)`` on Linux) and forks a small watchdog that holds the read end
of a *lifeline* pipe whose write end only the parent holds.  When the parent dies (any signal) the
pipe reaches EOF and the watchdog kills the unit's whole process group (solver children included);
it does the same when the unit process itself disappears (the parent-pid poll, for platforms
without prctl).  A unit past its timeout is killed the same way, group and all.

Engines: ``local`` (default) runs at most ``workers`` unit processes at once; ``dask`` submits units
to a Dask ``distributed`` cluster (a loopback ``LocalCluster`` unless ``scheduler`` gives an
address), where each unit again runs in a guarded child of the Dask worker (from the worker's own
preloaded fork server) that the worker itself kills at the unit's timeout, or as soon as the task is
cancelled or its client disappears (``kill -9`` of a batch on a remote cluster): a unit past its time
is cancelled *on the worker*, not just forgotten.  A ``LocalCluster``'s scheduler and nannies live in
the batch process; its worker processes exit when the batch process dies (distributed's own parent
pipe), and their units with them (the lifeline above, with the worker as parent).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import multiprocessing as mp
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Iterable

from ..models.errors import InvalidArgumentError, NNCertifyError

PER_SAMPLE_TASKS = ("robustness", "lipschitz")
TASKS = ("robustness", "lipschitz", "global", "steps")
PLAN_FIELDS = {"models": "list of zoo names or model files", "tasks": "list of {task, parameters}",
               "data": "zoo:digits or a data file", "samples": "positive integer", "chunk": "positive integer",
               "timeout": "seconds per unit"}
DEFAULTS = {"data": "zoo:digits", "samples": 100, "chunk": 25, "timeout": 300}
GRACE_S = 30.0  # Dask: extra wait on the parent side for a unit the worker must cancel itself


# ------------------------------------------------------------------------------------------ plans
def unit_id(unit: dict) -> str:
    body = {k: v for k, v in unit.items() if k != "id"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def _resolve_path(p: str, base: Path | None) -> Path | None:
    for cand in (Path(p), *(() if base is None else (base / p,))):
        if cand.exists():
            return cand
    return None


def validate_plan(plan, source: str = "plan", check_models: bool = True, base: Path | None = None) -> dict:
    """Check every field of ``plan`` (see the module docstring); returns it with defaults filled in.

    ``check_models``: also load every model file (and resolve zoo names) so that a broken model is
    refused here, not by a unit.  Raises :class:`InvalidArgumentError` naming the field.
    """
    from .params import TASK_PARAMS, TASK_REQUIRED, check_int, check_timeout
    if not isinstance(plan, dict):
        raise InvalidArgumentError(f"{source}: expected a JSON object with 'models' and 'tasks'")
    for key in plan:
        if key not in PLAN_FIELDS:
            raise InvalidArgumentError(f"{source}: unknown field {key!r} (allowed: {', '.join(PLAN_FIELDS)})")
    models, tasks = plan.get("models"), plan.get("tasks")
    if not isinstance(models, list) or not models:
        raise InvalidArgumentError(f"{source}: 'models' must be a non-empty list")
    if not isinstance(tasks, list) or not tasks:
        raise InvalidArgumentError(f"{source}: 'tasks' must be a non-empty list")
    out = {**DEFAULTS, **plan}
    out["samples"] = check_int(out["samples"], f"{source}: samples", 1)
    out["chunk"] = check_int(out["chunk"], f"{source}: chunk", 1)
    out["timeout"] = check_timeout(out["timeout"], f"{source}: timeout")
    data = out["data"]
    if not isinstance(data, str) or not data:
        raise InvalidArgumentError(f"{source}: data must be 'zoo:digits' or a data file path, got {data!r}")
    if data != "zoo:digits":
        found = _resolve_path(data, base)
        if found is None:
            raise InvalidArgumentError(f"{source}: data {data!r}: no such file")
        out["data"] = str(found)
    for ti, task in enumerate(tasks):
        where = f"{source}: tasks[{ti}]"
        if not isinstance(task, dict):
            raise InvalidArgumentError(f"{where} must be an object like {{\"task\": \"robustness\", \"eps\": 0.01}}")
        kind = task.get("task")
        if kind not in TASKS:
            raise InvalidArgumentError(f"{where}.task {kind!r}: must be one of {', '.join(TASKS)}")
        allowed = TASK_PARAMS[kind]
        for key, value in task.items():
            if key == "task":
                continue
            if key not in allowed:
                raise InvalidArgumentError(f"{where}.{key}: unknown parameter for task {kind!r} (allowed: "
                                           f"{', '.join(allowed) or 'none'})")
            values = value if isinstance(value, list) else [value]
            if isinstance(value, list) and not value:
                raise InvalidArgumentError(f"{where}.{key}: an empty list expands to no unit")
            for j, v in enumerate(values):
                allowed[key](v, f"{where}.{key}" + (f"[{j}]" if isinstance(value, list) else ""))
        for key in TASK_REQUIRED[kind]:
            if key not in task:
                raise InvalidArgumentError(f"{where}.{key}: required for task {kind!r}")
    for mi, model in enumerate(models):
        if not isinstance(model, str) or not model:
            raise InvalidArgumentError(f"{source}: models[{mi}] must be a zoo name or a file path, got {model!r}")
        if check_models:
            models[mi] = _check_model(model, f"{source}: models[{mi}]", base)
    return out


def _check_model(model: str, where: str, base: Path | None) -> str:
    from ..models import zoo
    name = model[4:] if model.startswith("zoo:") else model
    path = _resolve_path(model, base) if not model.startswith("zoo:") else None
    if path is None:
        if name in zoo.available():
            return model
        raise InvalidArgumentError(f"{where} {model!r}: no such file and not a zoo model (available: "
                                   f"{', '.join(zoo.available())})")
    from .tasks import resolve_model
    try:
        resolve_model(str(path))
    except NNCertifyError as exc:
        raise InvalidArgumentError(f"{where}: {' '.join(str(exc).split())}") from None
    return str(path)


def expand_plan(plan: dict, source: str = "plan", check_models: bool = False, base: Path | None = None) -> list[dict]:
    """Validate (:func:`validate_plan`) and expand a plan into units (see the module docstring)."""
    plan = validate_plan(plan, source, check_models=check_models, base=base)
    samples, chunk = plan["samples"], plan["chunk"]
    units = []
    for model in plan["models"]:
        for task in plan["tasks"]:
            keys = [k for k in task if k != "task"]
            grids = [task[k] if isinstance(task[k], list) else [task[k]] for k in keys]
            for combo in itertools.product(*grids):
                params = dict(zip(keys, combo))
                chunks = [(s, min(s + chunk, samples)) for s in range(0, samples, chunk)] \
                    if task["task"] in PER_SAMPLE_TASKS else [(0, min(samples, chunk))]
                for start, stop in chunks:
                    u = {"task": task["task"], "model": model, "params": params, "data": plan["data"],
                         "start": start, "stop": stop, "timeout": plan["timeout"]}
                    u["id"] = unit_id(u)
                    units.append(u)
    return units


def load_plan(path: str | Path) -> list[dict]:
    """Read, validate (models included) and expand a plan file; every problem is one line naming the field."""
    path = Path(path)
    try:
        spec = json.loads(path.read_text())
    except FileNotFoundError:
        raise InvalidArgumentError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InvalidArgumentError(f"{path}: is a directory, not a plan file") from None
    except UnicodeDecodeError:
        raise InvalidArgumentError(f"{path}: not a text (JSON) file") from None
    except json.JSONDecodeError as exc:
        raise InvalidArgumentError(f"{path}: not valid JSON ({exc})") from None
    return expand_plan(spec, str(path), check_models=True, base=path.resolve().parent)


# ------------------------------------------------------------------------------------------ results file
def read_done(path: Path) -> dict[str, dict]:
    """Finished records by id; cuts off a torn last line so that appends stay valid JSONL."""
    done: dict[str, dict] = {}
    path = Path(path)
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


def proved(rec: dict) -> bool:
    """Whether a finished record's certificate establishes something (the CLI's exit-code rule)."""
    cert = rec.get("certificate")
    if not cert or rec.get("status") not in ("certified", "estimate"):
        return False
    res = cert.get("result", {})
    return res.get("kind") != "robustness" or (res.get("verified") or 0) > 0


def summary_line(counts: dict, n: int, out) -> str:
    """``10 units: 8 done (6 proved something), 1 failed (error), 1 timed out -> out``."""
    done = sum(v for k, v in counts.items() if k in ("certified", "estimate", "failed"))
    parts = [f"{done} done ({counts.get('proven', 0)} proved something)"]
    if counts.get("failed"):
        parts.append(f"{counts['failed']} certified nothing")
    if counts.get("error"):
        parts.append(f"{counts['error']} failed (error)")
    if counts.get("timeout"):
        parts.append(f"{counts['timeout']} timed out")
    if counts.get("missing"):
        parts.append(f"{counts['missing']} not run")
    return f"{n} units: " + ", ".join(parts) + f"  -> {out}"


# ------------------------------------------------------------------------------------------ lifecycle
def _pdeathsig(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux prctl); False elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(1, int(sig), 0, 0, 0) == 0  # PR_SET_PDEATHSIG = 1
    except Exception:
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _watchdog(lifeline, worker_pid: int, pgid: int, owner: int | None, server: int | None) -> None:
    """In a forked child of the unit process: wait for the parent's death (lifeline EOF) or the unit
    process's end, then SIGKILL the unit's whole process group (this watchdog included).  When the
    owner (the batch process) is dead, its fork server ``server`` (the unit's parent) is killed too."""
    parent_gone = False
    try:
        while True:
            if lifeline.poll(0.2):  # the parent never writes: readable means EOF, the parent is gone
                parent_gone = True
                break
            if os.getppid() != worker_pid:  # the unit process is gone (parent-pid poll)
                break
    except (OSError, EOFError):
        parent_gone = True
    try:
        if parent_gone and server is not None and owner is not None and not _pid_alive(owner):
            os.kill(server, signal.SIGKILL)  # an orphaned fork server would otherwise linger for seconds
    except OSError:
        pass
    try:
        os.killpg(pgid, signal.SIGKILL)
    finally:
        os._exit(0)


def guard_process(lifeline, parent_pid: int | None = None, close_in_watchdog=(), owner: int | None = None) -> None:
    """Make this (freshly spawned) unit process die with its parent, descendants included.

    ``close_in_watchdog``: connections the watchdog must not keep open (the result pipe: its EOF tells
    the parent that the unit process died)."""
    try:
        os.setpgid(0, 0)  # own process group: the watchdog and a timeout kill reach every descendant
    except OSError:
        pass
    _pdeathsig()  # our direct parent: the batch process, or its fork server (which dies with it)
    if (parent_pid is not None and os.getppid() != parent_pid) or lifeline.poll(0):
        os._exit(1)  # the parent died before we could ask
    if hasattr(os, "fork"):
        me, server = os.getpid(), (os.getppid() if parent_pid is None else None)
        if os.fork() == 0:
            for c in close_in_watchdog:
                c.close()
            _watchdog(lifeline, me, os.getpgrp(), owner, server)
    lifeline.close()


def _kill_group(p) -> None:
    """SIGKILL a unit process and its process group (whatever it started)."""
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    try:
        p.kill()
    except Exception:
        pass


# ------------------------------------------------------------------------------------------ workers
def _record(unit: dict, status: str, t0: float, **extra) -> dict:
    return {"id": unit["id"], "unit": unit, "status": status, "elapsed_s": time.perf_counter() - t0, **extra}


def _execute(unit: dict) -> dict:
    """Run one unit in this process; never raises (errors become records)."""
    t0 = time.perf_counter()
    try:
        import torch
        torch.set_num_threads(1)  # one CPU per unit: the batch runs as many units as there are CPUs
        try:
            from threadpoolctl import threadpool_limits
            threadpool_limits(limits=1)  # numpy / scipy / solver BLAS as well
        except ImportError:  # pragma: no cover
            pass
        import threading

        from tqdm import tqdm
        # tqdm's default lock is a multiprocessing semaphore (torch.fx makes a hidden bar while loading a
        # model); a unit killed at its timeout would leak it ("leaked semaphore" warning at the end)
        tqdm.set_lock(threading.RLock())
        from .tasks import run_unit
        cert = run_unit(unit)
        return _record(unit, cert.status, t0, certificate=json.loads(cert.to_json(indent=None)))
    except NNCertifyError as exc:
        return _record(unit, "error", t0, error=" ".join(str(exc).split()))
    except Exception as exc:  # a bug: keep the traceback in the record, keep the batch going
        return _record(unit, "error", t0, error=f"internal error: {type(exc).__name__}: {exc}",
                       traceback=traceback.format_exc(limit=5))


def _child(unit: dict, conn, lifeline, parent_pid: int | None, owner: int) -> None:
    guard_process(lifeline, parent_pid, close_in_watchdog=(conn,), owner=owner)
    conn.send(_execute(unit))
    conn.close()


# What every unit needs, imported once in the fork server instead of once per unit: our methods, and the
# modules torch and scikit-learn import lazily on first use (torch.func's dynamo, fx shape propagation,
# the digits data set), which cost a unit 2-6 s each time otherwise.  A module that fails to import is
# skipped by multiprocessing (the unit then imports it itself).
PRELOAD = ["nncertify.certify._forkserver_guard", "nncertify.certify.tasks", "nncertify.relax", "nncertify.sdp",
           "torch._dynamo", "torch.fx.experimental.symbolic_shapes", "torch.fx.passes.shape_prop",
           "sklearn.datasets", "sklearn.model_selection"]


def unit_context():
    """Where unit processes come from: a fork server with torch and the methods preloaded (a unit starts
    in milliseconds instead of re-importing torch), or fresh interpreters where fork is unavailable."""
    try:
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        return ctx
    except ValueError:
        return mp.get_context("spawn")


class _Unit:
    """One running unit process (local engine, or inside a Dask worker).

    Not a daemon process: a unit may start its own children (the SDP time budget does), and its
    lifetime is bound to ours by :func:`guard_process` instead."""

    def __init__(self, ctx, unit: dict):
        self.unit = unit
        self.conn, child = ctx.Pipe(duplex=False)
        life_r, self.life_w = ctx.Pipe(duplex=False)
        parent = os.getpid() if ctx.get_start_method() == "spawn" else None
        self.proc = ctx.Process(target=_child, args=(unit, child, life_r, parent, os.getpid()), daemon=False,
                                name=f"certify-unit-{unit['id']}")
        self.proc.start()  # the first one waits for the fork server's preload: not part of the unit's time
        self.t0 = time.perf_counter()
        child.close()
        life_r.close()

    def poll(self) -> dict | None:
        """The unit's record if it finished, died or ran past its timeout; None while it runs."""
        u, timeout = self.unit, float(self.unit.get("timeout", 300))
        rec = None
        if self.conn.poll():
            try:
                rec = self.conn.recv()
            except (EOFError, OSError):
                rec = None
            if rec is None:
                self.proc.join(timeout=5)
                code = self.proc.exitcode
                rec = _record(u, "error", self.t0, error=f"unit process died (exit code {code}"
                              + (f", signal {-code}" if code is not None and code < 0 else "") + ")")
        elif not self.proc.is_alive():
            rec = _record(u, "error", self.t0, error=f"unit process died (exit code {self.proc.exitcode})")
        elif time.perf_counter() - self.t0 > timeout:
            rec = _record(u, "timeout", self.t0, error=f"timed out: exceeded the unit timeout of {timeout:g} s "
                                                      "(the unit process and its children were killed)")
        if rec is not None:
            self.close(graceful=rec["status"] not in ("timeout", "error"))
        return rec

    def close(self, graceful: bool = False) -> None:
        """End the unit process: after a result, give it a moment to exit cleanly (its own children and
        semaphores), then kill whatever is left of its process group."""
        if graceful:
            self.proc.join(timeout=5)
        _kill_group(self.proc)
        self.proc.join(timeout=5)
        for c in (self.conn, self.life_w):
            try:
                c.close()
            except OSError:
                pass


def _run_local(units: list[dict], workers: int, on_result: Callable[[dict], bool]) -> None:
    """``on_result(rec)`` returns True when the unit must run again (a retry)."""
    ctx = unit_context()
    pending = list(units)
    running: list[_Unit] = []
    try:
        while pending or running:
            while pending and len(running) < workers:
                running.append(_Unit(ctx, pending.pop(0)))
            time.sleep(0.05)
            for r in list(running):
                rec = r.poll()
                if rec is not None:
                    running.remove(r)
                    if on_result(rec):
                        pending.append(r.unit)
    finally:  # interrupted (Ctrl-C, SIGTERM, an error): no unit process survives us
        for r in running:
            r.close()


def _dask_task_cancelled():
    """A callable telling whether the Dask task running in this thread was cancelled or released (its
    client cancelled it, or disconnected); None outside a Dask worker."""
    try:
        from distributed import get_worker
        worker = get_worker()
        key = worker.get_current_task()
    except Exception:
        return None

    def cancelled() -> bool:
        ts = worker.state.tasks.get(key)
        return ts is None or ts.state in ("cancelled", "released", "forgotten")
    return cancelled


def execute_isolated(unit: dict) -> dict:
    """Run ``unit`` in a guarded child of this process (the Dask task) and kill it, process group and
    all, at its timeout or as soon as the task is cancelled (``Future.cancel``, or the client that
    submitted it went away, ``kill -9`` included): a unit is never left running on the worker.

    The child comes from the same preloaded fork server as on the local engine (a per-worker one), so
    a unit starts in milliseconds instead of re-importing torch."""
    ctx = unit_context()
    me = mp.current_process()
    daemon = me._config.get("daemon")
    me._config["daemon"] = False  # Dask workers may be daemonic processes, which multiprocessing forbids children
    try:
        r = _Unit(ctx, unit)
    finally:
        me._config["daemon"] = daemon
    cancelled = _dask_task_cancelled()
    try:
        while True:
            rec = r.poll()
            if rec is not None:
                if rec["status"] == "timeout":
                    rec["error"] += "; cancelled on the Dask worker"
                return rec
            if cancelled is not None and cancelled():
                r.close()
                return _record(unit, "error", r.t0, error="cancelled: the Dask task was cancelled or its client "
                                                          "went away; the unit process was killed on the worker")
            time.sleep(0.05)
    finally:
        r.close()


def _run_dask(units: list[dict], workers: int, scheduler: str | None, on_result: Callable[[dict], bool],
              bar=None) -> None:
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise InvalidArgumentError("the dask engine needs dask[distributed] (pip install 'nncertify[dask]')") from None
    cluster = None
    if scheduler is None:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=":0")
        client = Client(cluster)
    else:
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise InvalidArgumentError(f"--scheduler {scheduler}: cannot connect ({type(exc).__name__}: {exc})") from None
    attempt: dict[str, int] = {}

    def submit(u):
        attempt[u["id"]] = attempt.get(u["id"], 0) + 1
        key = f"unit-{u['id']}-{attempt[u['id']]}"
        return client.submit(execute_isolated, u, key=key, pure=False)

    try:
        futures = {submit(u): (u, time.perf_counter()) for u in units}
        while futures:
            time.sleep(0.05)
            for fut, (u, t0) in list(futures.items()):
                rec = None
                if fut.done():
                    try:
                        rec = fut.result()
                    except Exception as exc:
                        rec = _record(u, "error", t0, error=f"Dask task failed: {type(exc).__name__}: {exc}")
                elif fut.status == "pending" and time.perf_counter() - t0 > float(u.get("timeout", 300)) + GRACE_S:
                    # the worker cancels a running unit at its timeout; this catches a unit that never started
                    # or a worker that went silent
                    fut.cancel()
                    rec = _record(u, "timeout", t0, error="timed out: no result from the Dask cluster within the "
                                                          "unit timeout (+ grace); the task was cancelled")
                if rec is not None:
                    futures.pop(fut)
                    if on_result(rec):
                        futures[submit(u)] = (u, time.perf_counter())
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def run_batch(units: Iterable[dict], out: str | Path, *, engine: str = "local", workers: int | None = None,
              scheduler: str | None = None, progress: bool = True, retries: int = 0) -> dict:
    """Run every unit not yet in ``out``; returns counts by status for all units (old and new), plus
    ``proven``: finished units whose certificate establishes something.

    ``workers``: units run at once (local engine; the LocalCluster's worker processes with Dask),
    default :func:`certify.cpus.available_cpus` -- each unit uses one CPU (one torch / BLAS thread)."""
    from . import progress as prog
    from .cpus import available_cpus
    out = Path(out)
    units = list(units)
    if workers is None:
        workers = available_cpus()
    if engine not in ("local", "dask"):
        raise InvalidArgumentError(f"engine {engine!r}: use 'local' or 'dask'")
    if workers < 1:
        raise InvalidArgumentError("workers must be >= 1")
    if retries < 0:
        raise InvalidArgumentError("retries must be >= 0")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        done = read_done(out)
    except OSError as exc:
        raise InvalidArgumentError(f"--out {out}: cannot write there ({exc.strerror or exc})") from None
    todo = [u for u in units if u["id"] not in done]
    bar = prog.bar(total=len(units), desc="certify batch", unit="unit") if progress else prog.Silent()
    bar.update(len(units) - len(todo))
    failures = {"n": sum(1 for u in units if done.get(u["id"], {}).get("status") in ("error", "timeout"))}
    earlier: dict[str, list[str]] = {}

    def on_result(rec: dict) -> bool:
        uid = rec["id"]
        if rec["status"] in ("error", "timeout") and len(earlier.get(uid, [])) < retries:
            earlier.setdefault(uid, []).append(f"{rec['status']}: {rec.get('error', '')}")
            return True
        rec["attempts"] = 1 + len(earlier.get(uid, []))
        if earlier.get(uid):
            rec["retried"] = earlier[uid]
        _append(out, rec)
        done[uid] = rec
        failures["n"] += rec["status"] in ("error", "timeout")
        bar.update(1)
        bar.set_postfix_str(f"failed {failures['n']}")
        return False

    old = signal.getsignal(signal.SIGTERM)
    if old in (signal.SIG_DFL, None) and _is_main_thread():  # SIGTERM: clean up like Ctrl-C
        signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        if todo:
            if engine == "local":
                _run_local(todo, workers, on_result)
            else:
                _run_dask(todo, workers, scheduler, on_result)
    finally:
        bar.close()
        if old in (signal.SIG_DFL, None) and _is_main_thread():
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
    counts: dict[str, int] = {}
    for u in units:
        st = done.get(u["id"], {}).get("status", "missing")
        counts[st] = counts.get(st, 0) + 1
    counts["proven"] = sum(1 for u in units if proved(done.get(u["id"], {})))
    return counts


def _is_main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt
