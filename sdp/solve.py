"""Solver choice and invocation (cvxpy backends).  Always an explicit solver name in the result.

* ``MOSEK``: only when a licence *file* exists (``MOSEKLM_LICENSE_FILE`` or ``~/mosek/mosek.lic``) and
  ``mosek`` imports; a missing licence otherwise makes MOSEK raise on the first solve.
* ``CLARABEL``: licence-free interior point; accurate, but its KKT system holds a dense
  (n(n+1)/2)^2 block per PSD cone, so only for small cones (largest cone <= ``CLARABEL_MAX_CONE``).
* ``SCS``: first-order splitting, O(nnz) memory, for large cones; inaccurate (1e-4..1e-6), so its
  output is only ever used through the certification repair of :mod:`sdp.verify`.
* ``CVXOPT``: used only if the user installed it (GPL-3.0) and asks for it explicitly.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import cvxpy as cp

from ..models.errors import InvalidArgumentError

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
    return "MOSEK" in cp.installed_solvers()


def choose_solver(solver: str | None, cone_sizes: list[int]) -> str:
    """Resolve ``solver`` (None/'auto' -> MOSEK if licensed, else CLARABEL for small cones, else SCS)."""
    if solver is None or str(solver).lower() == "auto":
        if mosek_licensed():
            return "MOSEK"
        return "CLARABEL" if max(cone_sizes, default=0) <= CLARABEL_MAX_CONE else "SCS"
    s = str(solver).upper()
    if s not in SOLVERS:
        raise InvalidArgumentError(f"solver must be one of {', '.join(SOLVERS)}, 'FIRST_ORDER' or 'auto'; got {solver!r}")
    if s == "MOSEK" and not mosek_licensed():
        raise InvalidArgumentError("solver='MOSEK' needs a licence file (MOSEKLM_LICENSE_FILE or ~/mosek/mosek.lic)")
    if s not in cp.installed_solvers():
        raise InvalidArgumentError(f"solver {s!r} is not installed (installed: {', '.join(cp.installed_solvers())})")
    if s == "CLARABEL":
        n = max(cone_sizes, default=0)
        need = clarabel_kkt_bytes(n)
        if need > CLARABEL_MAX_BYTES:
            raise InvalidArgumentError(
                f"solver='CLARABEL' would need about {need / 2 ** 30:.0f} GiB for a PSD block of size {n} (its KKT "
                f"system is dense in the cone); use solver='SCS' or 'FIRST_ORDER' (or 'auto')")
    return s


CLARABEL_MAX_BYTES = 4 * 2 ** 30


def clarabel_kkt_bytes(n: int) -> int:
    """Memory of Clarabel's dense KKT block for one n x n PSD cone: (n(n+1)/2)^2 float64 entries."""
    m = n * (n + 1) // 2
    return 8 * m * m


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
    except cp.error.SolverError as exc:
        status = f"solver_error: {exc}".splitlines()[0][:200]
    dt = time.perf_counter() - t0
    val = problem.value if problem.value is not None else float("nan")
    try:
        val = float(val)
    except (TypeError, ValueError):
        val = float("nan")
    return SolveResult(solver, status, val, dt)
