"""l_inf LipSDP (scalar output w): exact reduction to the l2 chain, first-order solve, float64 proof.

Claim (exact reduction, [ours]).  Let the chain certificate (lifted sector chain of
:mod:`sdp.formulations.sector`, or Pauli et al.'s NSR chain of :mod:`sdp.formulations.nsr`) prove
``dx_K^T Q_K dx_K <= dx_0^T Q_0 dx_0`` for every pair of trajectories.  If ``Q_K >= w^T w`` and
``diag(tau) >= Q_0`` with ``tau >= 0`` then
    |w^T dx_K| <= sqrt(dx_K^T Q_K dx_K) <= sqrt(dx_0^T diag(tau) dx_0) <= sqrt(1^T tau) ||dx_0||_inf,
so  L_inf <= sqrt(1^T tau).
Conversely the published form (``Q_0 = diag(tau)``, ``[[Q_K, w^T], [w, 2 rho - 1^T tau]] >= 0``,
L_inf <= rho) is no tighter: its last LMI means Q_K >= w^T w / s (s = 2 rho - 1^T tau > 0); the
minimal storage matrices are monotone in Q_K and scale linearly with it (multipliers scaled by the
same factor), so Q_K = w^T w / s costs t/s with t = min{1^T tau : diag(tau) >= Q_0(w^T w)}, and
min_s (s + t/s)/2 = sqrt(t).  Hence the optimal value of either l_inf SDP equals
sqrt(min over multipliers of t(Q_0)), with Q_0 the l2 chain's storage matrix for the output w.

Guarantee of :func:`certify_linf_sector` / :func:`certify_linf_nsr`: the returned float is >= the
true l_inf Lipschitz constant of w^T f.  Every chain stage is proven by :mod:`sdp.verify`
(Cholesky with Rump-style rounding margins), ``diag(tau) - Q_0`` is proven positive definite, and
1^T tau is summed with ``math.fsum`` (correctly rounded) and rounded up before the upward sqrt.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from . import verify as V
from .first_order_linf import optimize_nsr_l2, optimize_nsr_linf, optimize_sector_linf
from .formulations.common import row_space_reduction


def finish_tau(Q0: np.ndarray, tau: np.ndarray) -> float | None:
    """Repair tau so that diag(tau) - Q0 is proven > 0; return an upper bound of sqrt(1^T tau) or None.

    Repair: tau <- tau + delta, delta = max(0, -lambda_min(diag(tau) - Q0)) + eps (1^T tau)/n, so the
    cost of the repair is a relative eps (tried 1e-10, 1e-8, ... 1e-2)."""
    tau = np.asarray(tau, dtype=np.float64)
    n = Q0.shape[0]
    if tau.shape != (n,) or not np.all(np.isfinite(tau)) or not np.all(np.isfinite(Q0)):
        return None
    tau = np.maximum(tau, 0.0)
    Q0 = V._sym(Q0)
    d = float(np.linalg.eigvalsh(np.diag(tau) - Q0)[0])
    tot = max(float(tau.sum()), float(np.abs(np.diag(Q0)).sum()), 1e-300)
    scale = max(float(np.abs(Q0).sum(1).max()), float(tau.max(initial=0.0)), 1e-300)
    for eps in (1e-10, 1e-8, 1e-6, 1e-4, 1e-2):
        t2 = tau + (max(0.0, -d) + eps * tot / n)
        if V.prove_pd(np.diag(t2) - Q0, 4 * V.U * scale):
            s = V.round_up(math.fsum(t2.tolist()))
            return V.sqrt_up(s)
    return None


def certify_linf_sector(blocks_np, w: np.ndarray, mult: dict) -> float | None:
    """Proven L_inf for the sector (lifted / LipSDP-Neuron) chain from multipliers ``lam`` and ``tau``."""
    Q = V.output_storage_l2(w.reshape(1, -1))
    lams = mult["lam"]
    for k in range(len(blocks_np) - 1, -1, -1):
        lam = lams[k] if lams[k] is not None else np.zeros(0)
        r = V.sector_stage(Q, blocks_np[k], lam)
        if r is None:
            return None
        Q, lams[k] = r
    return finish_tau(Q, mult["tau"])


def certify_linf_nsr(Ws, Ms, w: np.ndarray, mult: dict) -> float | None:
    """Proven L_inf for the NSR chain (Pauli et al., S = P = 0) from ``lam``, ``gam`` and ``tau``."""
    Q = V.output_storage_l2(w.reshape(1, -1))
    lams, gams = mult["lam"], mult["gam"]
    for k in range(len(Ws) - 1, -1, -1):
        r = V.nsr_stage(Q, Ws[k], Ms[k], np.asarray(lams[k], float), np.asarray(gams[k], float))
        if r is None:
            return None
        Q, (lams[k], gams[k]) = r
    return finish_tau(Q, mult["tau"])


def _status(r, time_limit):
    """'time_limit' when the optimiser was stopped by the clock (its point is still feasible), else 'done'."""
    return "time_limit" if time_limit and r["time"] >= time_limit else "done"


def _np(t):
    return t.detach().to("cpu", torch.float64).numpy()


def run_sector_linf(blocks_t, W_out: torch.Tensor, iters: int, time_limit: float | None):
    """First-order l_inf solve of the sector chain.  Returns the tuple the handlers of :mod:`sdp.api` use:
    (solver name, status, raw estimate, seconds, multipliers, certify(mult) -> proven L_inf or None)."""
    if not blocks_t:
        raise ValueError("no hidden layer")  # caller handles linear nets through the cvxpy path
    dev = W_out.device
    blocks_np = [tuple(_np(x) for x in (b.C, b.D, b.G, b.alpha, b.beta)) for b in blocks_t]
    tb = [tuple(x.to(dev) for x in (b.C, b.D, b.G, b.alpha, b.beta)) for b in blocks_t]
    C0, D0 = tb[0][0], tb[0][1]
    Vr = torch.as_tensor(row_space_reduction(_np(torch.cat([C0, D0]))), dtype=C0.dtype, device=dev)
    tb[0] = (C0 @ Vr, D0 @ Vr) + tb[0][2:]
    w = W_out.reshape(1, -1)
    r = optimize_sector_linf(tb, w, Vr, iters=iters, time_limit=time_limit)
    mult = {"lam": r["lam"], "tau": r["tau"], "closed_form_estimate": r["closed"]}
    name = "FIRST_ORDER" if iters > 0 else "CLOSED_FORM"
    return name, _status(r, time_limit), r["est"], r["time"], mult, (lambda m: certify_linf_sector(blocks_np, _np(w), m))


def run_nsr_linf(Ws: list[np.ndarray], Ms: list[np.ndarray], w: np.ndarray, iters: int, time_limit: float | None,
                 dtype=torch.float64):
    """First-order l_inf solve of the NSR chain (same return tuple as :func:`run_sector_linf`)."""
    Vr = row_space_reduction(Ws[0])
    Ws_red = [torch.as_tensor(Ws[0] @ Vr, dtype=dtype)] + [torch.as_tensor(W, dtype=dtype) for W in Ws[1:]]
    Ms_t = [torch.as_tensor(M, dtype=dtype) for M in Ms]
    wt = torch.as_tensor(w.reshape(1, -1), dtype=dtype)
    r = optimize_nsr_linf(Ws_red, Ms_t, wt, torch.as_tensor(Vr, dtype=dtype), iters=iters, time_limit=time_limit)
    mult = {"lam": r["lam"], "gam": r["gam"], "tau": r["tau"], "closed_form_estimate": r["closed"]}
    name = "FIRST_ORDER" if iters > 0 else "CLOSED_FORM"
    return name, _status(r, time_limit), r["est"], r["time"], mult, (lambda m: certify_linf_nsr(Ws, Ms, w.reshape(-1), m))


def run_nsr_l2(Ws: list[np.ndarray], Ms: list[np.ndarray], W_out: np.ndarray, iters: int, time_limit: float | None,
               certify, dtype=torch.float64):
    """First-order l2 NSR (paper's Theorem 1 chain, S = P = 0), same tuple as :func:`run_sector_linf`; the raw
    value is rho (L2 <= sqrt(rho)) and ``certify`` is the existing proven backward repair (sdp.api.certify_nsr)."""
    Vr = row_space_reduction(Ws[0])
    Ws_red = [torch.as_tensor(Ws[0] @ Vr, dtype=dtype)] + [torch.as_tensor(W, dtype=dtype) for W in Ws[1:]]
    r = optimize_nsr_l2(Ws_red, [torch.as_tensor(M, dtype=dtype) for M in Ms], torch.as_tensor(W_out, dtype=dtype),
                        iters=iters, time_limit=time_limit)
    mult = {"lam": r["lam"], "gam": r["gam"]}
    name = "FIRST_ORDER" if iters > 0 else "CLOSED_FORM"
    return name, _status(r, time_limit), r["est_rho"], r["time"], mult, certify
