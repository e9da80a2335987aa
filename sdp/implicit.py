"""Implicit (equilibrium / DEQ) models  z = phi(W z + U x + b),  y = C z:  Lipschitz bound + well-posedness.

Two quadratic constraints (incremental, so b drops out), with v = W z + U x:

* ``activation="relu"`` (any entrywise slope in [0, 1]: ReLU, tanh): Lam = diag(lam), lam > 0,
  QC 2 dz^T Lam (dv - dz) >= 0.  LMI in (dx, dz):
      [[rho I, -U^T Lam], [-Lam U, 2 Lam - Lam W - W^T Lam - C^T C]] >= 0.
  Well-posedness: 2 Lam - Lam W - W^T Lam > 0 with Lam > 0 diagonal (Revay, Wang & Manchester 2020,
  "Lipschitz bounded equilibrium networks", Thm 1); it follows from the proven (2,2) block > 0.
* ``activation="maxmin"`` / ``"groupsort"`` (NSR QC of Pauli et al. 2024, S = P = 0):
  T = blkdiag(lam_j I + gam_j 11^T) > 0, QC dv^T T dv - dz^T T dz >= 0.  LMI:
      [[rho I - U^T T U, -U^T T W], [-W^T T U, T - W^T T W - C^T C]] >= 0.
  Well-posedness: T > 0 and T - W^T T W > 0 make z -> phi(W z + .) a contraction in the T-norm
  (phi is 1-Lipschitz in the T-norm by the QC), so the equilibrium is unique (Banach).

Both give ||dy||_2 <= sqrt(rho) ||dx||_2.  The certificate is issued only if the (2,2) block and T
(resp. Lam) are proven positive definite in float64 (:mod:`sdp.verify`).
"""

from __future__ import annotations

import math
import time

import cvxpy as cp
import numpy as np

from ..models.errors import InvalidArgumentError

from . import solve as _solve
from . import verify as V
from .certificate import SDPCertificate
from .formulations.common import psd


def _mats(W, U, C):
    W, U, C = (np.asarray(getattr(a, "detach", lambda: a)(), dtype=np.float64) if not isinstance(a, np.ndarray)
               else a.astype(np.float64) for a in (W, U, C))
    n = W.shape[0]
    if W.shape != (n, n) or U.shape[0] != n or C.shape[1] != n:
        raise InvalidArgumentError(f"implicit model shapes do not fit: W {W.shape}, U {U.shape}, C {C.shape}")
    if not all(np.all(np.isfinite(a)) for a in (W, U, C)):
        raise InvalidArgumentError("implicit model weights contain NaN or Inf")
    return W, U, C


def _K(W, U, C, act, lam, gam, Mg):
    """K with F(rho) = blkdiag(rho I, 0) - K, plus the multiplier matrix (Lam or T)."""
    if act == "relu":
        Lam = np.diag(lam)
        K = np.block([[np.zeros((U.shape[1],) * 2), U.T @ Lam],
                      [Lam @ U, -(2 * Lam - Lam @ W - W.T @ Lam - C.T @ C)]])
        err = 2 * V.product_error(U.T, Lam) + 2 * V.product_error(Lam, W) + V.product_error(C.T, C)
        return K, Lam, err
    T = V.nsr_T(lam, gam, Mg)
    K = np.block([[U.T @ T @ U, U.T @ T @ W], [W.T @ T @ U, -(T - W.T @ T @ W - C.T @ C)]])
    err = (V.product_error(U.T, T, U) + 2 * V.product_error(U.T, T, W) + V.product_error(W.T, T, W)
           + V.product_error(C.T, C) + 8 * V.U * float(np.abs(T).sum(1).max()))
    return K, T, err


def implicit_lipschitz_bound(W, U, C, activation: str = "relu", group_size: int = 2, solver: str | None = None,
                             time_limit: float | None = None, eps: float = 1e-9) -> SDPCertificate:
    """Certified l2 Lipschitz bound of x -> y for z = phi(W z + U x + b), y = C z, with well-posedness.

    ``status == "certified"`` means: the equilibrium exists and is unique for every x and b, and
    ||y(x) - y(x')|| <= certified_value ||x - x'||.  Otherwise "failed" (message says why).
    """
    W, U, C = _mats(W, U, C)
    n, m = W.shape[0], U.shape[1]
    if activation not in ("relu", "maxmin", "groupsort"):
        raise InvalidArgumentError(f"activation must be relu, maxmin or groupsort; got {activation!r}")
    g = 2 if activation == "maxmin" else int(group_size)
    if activation != "relu" and (g < 2 or n % g):
        raise InvalidArgumentError(f"{n} neurons are not divisible into groups of {g}")
    Mg = V._group_matrix(n, g, "pairs") if activation != "relu" else None
    rho = cp.Variable()
    if activation == "relu":
        lam = cp.Variable(n, nonneg=True)
        gam = None
        Lam = cp.diag(lam)
        F = cp.bmat([[rho * np.eye(m), -U.T @ Lam], [-Lam @ U, 2 * Lam - Lam @ W - W.T @ Lam - C.T @ C]])
        cons = [psd(F - eps * np.eye(n + m)), lam >= eps]
    else:
        lam = cp.Variable(Mg.shape[1], nonneg=True)
        gam = cp.Variable(Mg.shape[1])
        T = cp.diag(Mg @ lam) + Mg @ cp.diag(gam) @ Mg.T
        F = cp.bmat([[rho * np.eye(m) - U.T @ T @ U, -U.T @ T @ W], [-W.T @ T @ U, T - W.T @ T @ W - C.T @ C]])
        cons = [psd(F - eps * np.eye(n + m)), psd(T - eps * np.eye(n))]
    prob = cp.Problem(cp.Minimize(rho), cons)
    s = _solve.choose_solver(solver, [n + m])
    res = _solve.run(prob, s, time_limit)
    naive = float(np.linalg.norm(C, 2) * np.linalg.norm(U, 2) / max(1e-300, 1 - np.linalg.norm(W, 2))) \
        if np.linalg.norm(W, 2) < 1 else math.inf
    t0 = time.perf_counter()
    lamv = np.asarray(lam.value, float) if lam.value is not None else np.full(lam.shape, np.nan)
    gamv = (np.asarray(gam.value, float) if gam.value is not None else np.full(gam.shape, np.nan)) if gam is not None else None
    cert, msg = None, ""
    if np.all(np.isfinite(lamv)) and (gamv is None or np.all(np.isfinite(gamv))):
        lamv = np.maximum(lamv, 1e-12 * max(1.0, float(np.abs(lamv).max())))  # repair: strictly positive
        if gamv is not None:
            lamv = np.maximum(lamv, 4 * V.U * np.abs(gamv) + 1e-300)
        K, Mult, err = _K(W, U, C, activation, lamv, gamv, Mg)
        if not V.prove_pd(Mult, 8 * V.U * float(np.abs(Mult).sum(1).max())):
            msg = "multiplier matrix not proven positive definite (well-posedness not shown)"
        else:
            r = V.certify_input_block(K, m, err)
            if r is None:
                msg = "LMI could not be proven for the repaired multipliers"
            else:
                cert = V.sqrt_up(r)
                msg = "well-posed (unique equilibrium) and Lipschitz bound proven"
    else:
        msg = f"solver returned no multipliers ({res.status})"
    raw = math.sqrt(res.raw_value) if res.raw_value == res.raw_value and res.raw_value >= 0 else float("nan")
    return SDPCertificate(raw, cert, "certified" if cert is not None else "failed", s, res.solve_time,
                          f"implicit-{activation}", 2, naive, {"lam": lamv, "gam": gamv},
                          time.perf_counter() - t0, res.status, msg)
