"""A hard wall-clock budget for an SDP solve: run it in a killable child process.

Solver time limits are soft: SCS checks its clock only between iterations, Clarabel between
interior-point steps, and neither counts cvxpy's compilation nor our float64 verification.  A
user who asks for "at most T seconds" gets, from :func:`run_with_budget`, an answer after at most
``T`` seconds of wall-clock time plus the few milliseconds it takes to kill a process:

* the solve (formulation, solver, verification: everything :func:`sdp.api.lipschitz_bound` does)
  runs in a child process forked from a *fork server* (``multiprocessing`` "forkserver" context)
  that has :mod:`sdp.api` preloaded, so a child starts in milliseconds once the server is up (the
  server itself is started once per parent process, on first use, and its start-up counts against
  the first budget);
* the child gets the absolute deadline (``time.monotonic()``, one clock for every process of the
  machine) and, when it starts, gives its solver a soft ``time_limit`` of a fraction of what is left
  *then* (the start-up of the fork server is not charged twice), so that it normally stops --
  a first-order loop keeps its best iterate, CLARABEL/SCS their last one -- verifies and reports
  on its own (a verified bound of that iterate, or a failed result);
* at the deadline the parent kills the child (SIGKILL) and returns a certificate with status
  ``"failed"`` and ``solver_status="time_budget"``.  That answer is sound by construction: it
  certifies nothing.  Callers fall back to a cheaper certified bound (e.g. the product of norms).

The child never re-imports the caller's ``__main__`` (see :func:`_without_main`), so budgeted solves work
from scripts without an ``if __name__ == "__main__":`` guard.

The child sends back a pickle over a pipe it shares only with this parent (our own process, our
own dataclass): no untrusted data is unpickled.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
import multiprocessing.spawn as _spawn
import threading
import time
from typing import Any

from ..models.errors import InvalidArgumentError

from .certificate import SDPCertificate

SOFT_FRACTION = 0.7   # share of the remaining budget handed to the solver as its own (soft) limit
MIN_START = 0.05      # s: with less than this left, no child is started (the answer is the exhausted budget)
_CTX_LOCK = threading.Lock()
_CTX = None


_PREP_LOCK = threading.Lock()


@contextlib.contextmanager
def _without_main():
    """While held, the preparation data sent to a new child names no ``__main__`` to re-import.

    A ``spawn``/``forkserver`` child normally re-imports the parent's main script (as ``__mp_main__``) before
    it runs its target; a user script without ``if __name__ == "__main__":`` would then run again in the
    child -- its whole workload, its prints, and a nested budgeted solve that fails.  Our child needs
    nothing from ``__main__`` (its target and arguments are :mod:`nncertify` objects), so the main-module
    keys are dropped from :func:`multiprocessing.spawn.get_preparation_data` for the duration of one
    ``Process.start()`` (serialised by a lock; other keys -- ``sys.path``, cwd -- still go to the child)."""
    with _PREP_LOCK:
        real = _spawn.get_preparation_data

        def prep(name):
            d = real(name)
            d.pop("init_main_from_path", None)
            d.pop("init_main_from_name", None)
            return d
        _spawn.get_preparation_data = prep
        try:
            yield
        finally:
            _spawn.get_preparation_data = real


def _context():
    global _CTX
    with _CTX_LOCK:
        if _CTX is None:
            try:
                ctx = mp.get_context("forkserver")
                ctx.set_forkserver_preload([f"{__package__}.api"])
            except ValueError:  # platforms without fork (Windows): a fresh interpreter per solve
                ctx = mp.get_context("spawn")
            _CTX = ctx
        return _CTX


def prewarm() -> None:
    """Start the fork server now, in a daemon thread, so that its imports (torch, cvxpy, :mod:`sdp.api`: seconds)
    overlap with the caller's own work (loading the model); the first budgeted solve then starts its child
    in milliseconds.  Light: this module imports neither torch nor cvxpy.  Errors are left to the solve."""
    def warm():
        try:
            ctx = _context()
            if ctx.get_start_method() == "forkserver":
                from multiprocessing import forkserver
                with _without_main():  # the server itself would import the user's __main__ otherwise
                    forkserver.ensure_running()
        except Exception:  # noqa: BLE001 - the solve starts (or reports) the server itself
            pass
    threading.Thread(target=warm, name="sdp-forkserver-warm", daemon=True).start()


def _child(conn, net, kwargs, deadline: float | None = None) -> None:
    """Runs in the child: one ordinary (unbudgeted) solve, result or error sent to the parent.  ``deadline``
    (``time.monotonic()``): the solver's soft limit is SOFT_FRACTION of what is left of it now."""
    try:
        from .api import lipschitz_bound
        if deadline is not None:
            soft = max(0.05, SOFT_FRACTION * (deadline - time.monotonic()))
            kwargs = dict(kwargs, time_limit=soft if kwargs.get("time_limit") is None
                          else min(float(kwargs["time_limit"]), soft))
        res = lipschitz_bound(net, **kwargs)
        conn.send(("ok", res))
    except (BrokenPipeError, ConnectionResetError):  # the parent stopped waiting (budget over): no traceback
        pass
    except BaseException as exc:  # report, never hang the parent
        try:
            conn.send(("error", exc))
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception:
            conn.send(("error", RuntimeError(f"{type(exc).__name__}: {exc}")))
    finally:
        conn.close()


def timed_out(budget: float, method: str, norm: Any, naive: float, elapsed: float) -> SDPCertificate:
    """The sound answer at an exhausted budget: nothing certified."""
    return SDPCertificate(float("nan"), None, "failed", "none", elapsed, method, norm, naive,
                          solver_status="time_budget",
                          message=f"time budget of {budget:.3g} s exhausted: the SDP solve was stopped "
                                  f"after {elapsed:.2f} s and certifies nothing")


def run_with_budget(net, kwargs: dict, budget: float, naive: float, start: float | None = None) -> SDPCertificate:
    """:func:`sdp.api.lipschitz_bound` ``(net, **kwargs)`` under a hard wall-clock ``budget`` (seconds).

    ``start``: ``time.perf_counter()`` at which the budget began (default: now).  Guarantee: returns
    by ``start + budget`` plus process-kill latency; the result is either the child's own (verified
    or failed) certificate or a ``"failed"`` one with ``solver_status="time_budget"``.  Errors raised
    in the child (bad input) are re-raised here.
    """
    if not (isinstance(budget, (int, float)) and math.isfinite(budget) and budget > 0):
        raise InvalidArgumentError(f"time_budget must be a positive number of seconds, got {budget!r}")
    start = time.perf_counter() if start is None else start
    deadline = start + float(budget)
    method, norm = kwargs.get("method", "auto"), kwargs.get("norm", 2)
    remaining = deadline - time.perf_counter()
    if remaining < MIN_START:  # no time to start anything: the sound answer right away
        return timed_out(budget, method, norm, naive, time.perf_counter() - start)
    ctx = _context()
    parent, child = ctx.Pipe(duplex=False)
    kw = dict(kwargs)
    proc = ctx.Process(target=_child, args=(child, net, kw, time.monotonic() + remaining), daemon=True)
    state: dict[str, Any] = {"started": False, "cancel": False, "error": None}
    lock = threading.Lock()

    def starter() -> None:
        # Process.start() blocks until the fork server is up (imports torch and cvxpy on first use):
        # it runs in this thread so that the caller's deadline holds even during that start-up.
        try:
            with _without_main():  # no re-import of the user's script in the child (no __main__ guard needed)
                proc.start()
        except Exception as exc:  # e.g. no fork server possible: reported as a failed solve
            state["error"] = exc
        finally:
            child.close()  # our copy of the child's end: EOF on ``parent`` once the child is gone
        with lock:
            state["started"] = state["error"] is None
            cancel = state["cancel"]
        if cancel and state["started"]:
            proc.kill()
            proc.join(timeout=1.0)

    thread = threading.Thread(target=starter, name="sdp-budget-start", daemon=True)
    thread.start()
    msg = None
    try:
        wait = deadline - time.perf_counter()
        if wait > 0 and parent.poll(wait):
            try:
                msg = parent.recv()
            except EOFError:  # the child died without a word (e.g. killed for memory), or never started
                msg = ("died", None)
    finally:
        with lock:
            state["cancel"] = True
            started = state["started"]
        if started:
            if proc.is_alive():
                proc.kill()
            proc.join(timeout=1.0)
        parent.close()
    elapsed = time.perf_counter() - start
    if msg is None:
        return timed_out(budget, method, norm, naive, elapsed)
    kind, payload = msg
    if kind == "error":
        raise payload
    if kind == "died":
        why = (f"could not be started ({type(state['error']).__name__}: {state['error']})" if state["error"]
               else f"exited with code {proc.exitcode} before reporting (out of memory?)")
        return SDPCertificate(float("nan"), None, "failed", "none", elapsed, method, norm, naive,
                              solver_status="process_died", message=f"the SDP solver process {why}: nothing certified")
    return payload
