"""Solver choice and invocation (cvxpy backends).  Always an explicit solver name in the result.

* ``MOSEK``: only when a licence *file* exists (``MOSEKLM_LICENSE_FILE`` or ``~/mosek/mosek.lic``) and
  ``mosek`` imports; a missing licence otherwise makes MOSEK raise on the first solve.
* ``CLARABEL``: licence-free interior point; accurate, but its KKT system holds a dense
  (n(n+1)/2)^2 block per PSD cone, so only for small cones (largest cone <= ``CLARABEL_MAX_CONE``).
* Memory: every solve is checked before it starts against a model of its peak memory fitted on
  measurements (:func:`estimate_solver_bytes`) and the memory the process may still take
  (:func:`available_bytes`: free RAM, RLIMIT_AS / RLIMIT_DATA, cgroup limit); a solve that would not fit
  raises :class:`SolverMemoryError` (auto-solver callers route to the first-order path instead).
* ``SCS``: first-order splitting, O(nnz) memory, for large cones; inaccurate (1e-4..1e-6), so its
  output is only ever used through the certification repair of :mod:`sdp.verify`.
* ``CVXOPT``: used only if the user installed it (GPL-3.0) and asks for it explicitly.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from typing import TYPE_CHECKING

from ..models.errors import InvalidArgumentError

if TYPE_CHECKING:
    import cvxpy as cp


def _cvxpy():
    """cvxpy, imported on first use (seconds): the first-order path and the memory checks never need it."""
    import cvxpy
    return cvxpy

CLARABEL_MAX_CONE = 40   # measured: 2 x 64-cones took 77 s in CLARABEL vs 1.2 s in SCS (eps 1e-7)
SOLVERS = ("MOSEK", "CLARABEL", "SCS", "CVXOPT")


def mosek_licensed() -> bool:
    """True when a MOSEK licence file is present and mosek imports (no network/floating check)."""
    lic = os.environ.get("MOSEKLM_LICENSE_FILE")
    ok = (lic and ("@" in lic or Path(lic).exists())) or (Path.home() / "mosek" / "mosek.lic").exists()
    if not ok:
        return False
    try:
        import mosek  # noqa: F401
    except Exception:
        return False
    return "MOSEK" in _cvxpy().installed_solvers()


def choose_solver(solver: str | None, cone_sizes: list[int]) -> str:
    """Resolve ``solver`` (None/'auto' -> MOSEK if licensed, else CLARABEL for small cones, else SCS) and
    check that it fits in memory (:func:`memory_guard`; auto falls back from CLARABEL to SCS).  Raises
    :class:`SolverMemoryError` before the solve when it would not fit."""
    if solver is None or str(solver).lower() == "auto":
        if mosek_licensed() and fits("MOSEK", cone_sizes):
            return "MOSEK"
        if max(cone_sizes, default=0) <= CLARABEL_MAX_CONE and fits("CLARABEL", cone_sizes):
            return "CLARABEL"
        memory_guard("SCS", cone_sizes)
        return "SCS"
    s = str(solver).upper()
    if s not in SOLVERS:
        raise InvalidArgumentError(f"solver must be one of {', '.join(SOLVERS)}, 'FIRST_ORDER' or 'auto'; got {solver!r}")
    if s == "MOSEK" and not mosek_licensed():
        raise InvalidArgumentError("solver='MOSEK' needs a licence file (MOSEKLM_LICENSE_FILE or ~/mosek/mosek.lic)")
    installed = _cvxpy().installed_solvers()
    if s not in installed:
        raise InvalidArgumentError(f"solver {s!r} is not installed (installed: {', '.join(installed)})")
    memory_guard(s, cone_sizes)
    return s


# ----------------------------------------------------------------------------- memory
class SolverMemoryError(InvalidArgumentError):
    """The chosen solver would need more memory than is available (raised before it starts)."""


# Peak memory (bytes, over the RSS before the call) of a cvxpy + solver run on PSD cones of sizes n_k, with
# m_k = n_k (n_k + 1) / 2:  a * sum m_k^2 + b * sum m_k + c.  From measured peak RSS (bench/solver_memory.py ->
# bench/results/solver_memory.md; l_inf LipSDP chains, cones 16..96 for CLARABEL, 16..192 for SCS):
# CLARABEL 12.6 MiB .. 2.13 GiB, growing as sum m^2 (n^4: its KKT system is dense in each cone, plus the
# LDL factor), least squares a = 51.3 bytes per m^2; SCS 16 .. 83 MiB, b = 1.65e3 bytes per m.  The model
# below covers every measured point with MEMORY_MARGIN on top.  MOSEK / CVXOPT (interior point, not
# measured) use CLARABEL's model.
MEMORY_MODEL = {"CLARABEL": (52.0, 0.0, 4.0e7), "SCS": (0.0, 2.0e3, 3.0e7),
                "MOSEK": (52.0, 0.0, 4.0e7), "CVXOPT": (52.0, 0.0, 4.0e7)}
MEMORY_MARGIN = 1.5
MEMORY_FRACTION = 0.8   # of the available memory that one solve may take


def estimate_solver_bytes(solver: str, cone_sizes: list[int]) -> int:
    """Predicted peak memory of solving an SDP with these PSD cone sizes by ``solver`` (see MEMORY_MODEL)."""
    a, b, c = MEMORY_MODEL.get(str(solver).upper(), MEMORY_MODEL["CLARABEL"])
    m = [n * (n + 1) // 2 for n in cone_sizes]
    return int(MEMORY_MARGIN * (a * sum(x * x for x in m) + b * sum(m) + c))


def _proc_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def available_bytes() -> int | None:
    """Memory this process may still take: the least of the free physical memory (MemAvailable), the
    address-space limit (RLIMIT_AS) minus the current address space, the data limit (RLIMIT_DATA) and
    the cgroup (container) limit minus its usage.  None when nothing is known (non-Linux)."""
    cands = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    cands.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    try:
        import resource
        for lim, used in ((resource.RLIMIT_AS, _proc_kb("VmSize")), (resource.RLIMIT_DATA, _proc_kb("VmData"))):
            soft = resource.getrlimit(lim)[0]
            if soft not in (resource.RLIM_INFINITY, -1) and used is not None:
                cands.append(max(0, soft - used))
    except (ImportError, OSError, ValueError):
        pass
    try:
        mx = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if mx != "max":
            cur = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
            cands.append(max(0, int(mx) - cur))
    except (OSError, ValueError):
        pass
    return min(cands) if cands else None


def memory_guard(solver: str, cone_sizes: list[int], extra_bytes: int = 0,
                 advice: str = "use solver='FIRST_ORDER' (or 'auto', which routes there) or a smaller problem") -> None:
    """Raise :class:`SolverMemoryError` (one line: solver, need, available) before a solve that would not fit.
    ``extra_bytes``: memory the caller itself builds for the problem on top of the solver's (e.g. a dense
    coefficient array), counted in the need; ``advice``: the end of the message (what to do instead)."""
    if str(solver).upper() not in MEMORY_MODEL or not cone_sizes:
        return
    need = estimate_solver_bytes(solver, cone_sizes) + int(extra_bytes)
    have = available_bytes()
    if have is not None and need > MEMORY_FRACTION * have:
        raise SolverMemoryError(
            f"solver={solver!r} would need about {need / 2 ** 30:.2f} GiB for PSD cones of sizes up to "
            f"{max(cone_sizes)} ({len(cone_sizes)} cones), only {have / 2 ** 30:.2f} GiB available; {advice}")


def fits(solver: str, cone_sizes: list[int]) -> bool:
    try:
        memory_guard(solver, cone_sizes)
    except SolverMemoryError:
        return False
    return True


@dataclass
class SolveResult:
    solver: str
    status: str
    raw_value: float
    solve_time: float


def run(problem: cp.Problem, solver: str, time_limit: float | None = None, eps: float | None = None,
        verbose: bool = False) -> SolveResult:
    """Solve; never raises on solver failure (status says it), so verification can still run."""
    opts: dict = {}
    if solver == "SCS":
        opts = dict(eps_abs=eps or 1e-7, eps_rel=eps or 1e-7, max_iters=200000)
        if time_limit:
            opts["time_limit_secs"] = float(time_limit)
    elif solver == "CLARABEL":
        if time_limit:
            opts["time_limit"] = float(time_limit)
    elif solver == "MOSEK" and time_limit:
        opts["mosek_params"] = {"MSK_DPAR_OPTIMIZER_MAX_TIME": float(time_limit)}
    t0 = time.perf_counter()
    try:
        problem.solve(solver=solver, verbose=verbose, **opts)
        status = str(problem.status)
    except _cvxpy().error.SolverError as exc:
        status = f"solver_error: {exc}".splitlines()[0][:200]
    dt = time.perf_counter() - t0
    val = problem.value if problem.value is not None else float("nan")
    try:
        val = float(val)
    except (TypeError, ValueError):
        val = float("nan")
    return SolveResult(solver, status, val, dt)
