"""First-order / closed-form path for the sector (LipSDP-Neuron, lifted) chain: torch, any device.

For fixed multipliers lam the smallest feasible storage matrices are given by the exact backward
Schur recursion (ECLipsE-style, generalised to the lifted form x_k = D x + G psi, psi = phi(C x)):
    Q_K = W_out^T W_out,   S_k = 2 Lam_k - G^T Q_k G  (> 0),   H_k = D^T Q_k G + C^T Lam_k (alpha+beta),
    Q_{k-1} = D^T Q_k D - 2 C^T Lam_k alpha beta C + H_k S_k^{-1} H_k^T,      rho(lam) = lambda_max(Q_0),
and rho(lam) is exactly the optimal value of the chain SDP with these multipliers fixed; it is
convex in lam on {S_k > 0}.  Every lam in that set gives a valid bound sqrt(rho(lam)) (after the
float64 proof of :mod:`sdp.verify`), so the optimiser can stop at any time.

Parametrisation that never leaves the domain: lam_k = s_k exp(theta_k) with
s_k = s_crit,k (1 + exp(eta_k)),  s_crit,k = lambda_max(d^{-1/2} G^T Q_k G d^{-1/2}) / 2, d = exp(theta_k).
``iters = 0`` is the closed-form point theta = 0, eta = 0 (uniform multipliers at twice the critical
scale): a sound, cheap, and typically 1.3-3x looser bound (see bench/results/lipsdp.md).
L-BFGS minimises log rho over (theta, eta).  It converges to the SDP value only approximately
(nonconvex parametrisation, nonsmooth lambda_max): it is an upper bound, not the SDP optimum.
"""

from __future__ import annotations

import time

import torch

from .first_order_linf import SMOOTHING, OutOfTime, check_clock, lmax_upper, sector_chain_Q0


def _dp(blocks, W_out, params, want_lams=False, mu: float = 0.0):
    """rho (lambda_max of the input storage matrix Q_0, smoothed at ``mu > 0``) and the multipliers of the
    backward Schur recursion from Q_K = W_out^T W_out (:func:`sdp.first_order_linf.sector_chain_Q0`)."""
    Q, lams = sector_chain_Q0(blocks, W_out, params, mu)
    return lmax_upper(Q, mu), lams


def optimize_sector(blocks, W_out, iters: int = 300, time_limit: float | None = None, init=None,
                    smoothing=SMOOTHING):
    """Minimise rho(lam) by L-BFGS.  ``blocks``: list of torch (C, D, G, alpha, beta) (first block may be
    row-space reduced).  Returns (list of lam as numpy (None for linear blocks), rho_float, seconds, evals).
    ``smoothing``: continuation levels mu; at mu > 0 every lambda_max (critical scale and rho) is replaced by
    its smooth upper bound (so iterates stay feasible), iters split evenly; the last level should be 0.
    Measured on weights_l2_18fc_32, 1000 iterations: 11,067 with the default levels vs 11,198 without
    (CVXOPT optimum of the same SDP 11,063.5, reference §2.3)."""
    dev, dt = W_out.device, W_out.dtype
    params = []
    for k, (C, D, G, al, be) in enumerate(blocks):
        p = C.shape[0]
        th = torch.zeros(p, device=dev, dtype=dt) if init is None or init[k] is None else init[k][0].clone()
        et = torch.zeros((), device=dev, dtype=dt) if init is None or init[k] is None else init[k][1].clone()
        params.append((th.requires_grad_(True), et.requires_grad_(True)))
    flat = [t for (C, *_), pr in zip(blocks, params) if C.shape[0] > 0 for t in pr]
    t0 = time.perf_counter()
    best = [float("inf"), None]
    evals = [0]

    mu = [0.0]

    def closure():
        check_clock(t0, time_limit)  # at the deadline: stop before another evaluation
        opt.zero_grad()
        rho, lams = _dp(blocks, W_out, params, mu=mu[0])
        val = torch.log(rho)
        evals[0] += 1
        if torch.isfinite(val) and float(rho.detach()) < best[0]:
            best[0] = float(rho.detach())
            best[1] = [None if l is None else l.detach().cpu().numpy().copy() for l in lams]
        if time_limit and time.perf_counter() - t0 > time_limit:
            return val.detach() * 0 + val.detach()  # no gradient step once over time
        val.backward()
        return val

    nthreads = torch.get_num_threads()
    if max((b[1].shape[0] for b in blocks), default=0) <= 512:
        torch.set_num_threads(1)  # small dense ops: threading overhead dominates (13x on 2 cores)
    levels = tuple(smoothing) if smoothing else (0.0,)
    for m in (levels if iters > 0 and flat else ()):
        if time_limit and time.perf_counter() - t0 > time_limit:
            break
        mu[0] = m
        opt = torch.optim.LBFGS(flat, lr=1.0, max_iter=max(iters // len(levels), 1), history_size=30,
                                line_search_fn="strong_wolfe", tolerance_grad=1e-12, tolerance_change=1e-14)
        try:
            opt.step(closure)
        except (RuntimeError, torch.linalg.LinAlgError, OutOfTime):
            pass  # numerical trouble or the deadline: keep the best point found so far
    torch.set_num_threads(nthreads)
    if best[1] is None:
        with torch.no_grad():
            rho, lams = _dp(blocks, W_out, params)
        best = [float(rho), [None if l is None else l.cpu().numpy() for l in lams]]
    return best[1], best[0], time.perf_counter() - t0, evals[0]


# ----------------------------------------------------------------------------- NSR polish
def _nsr_repair_map(Ws, Ms, W_out, a, g):
    """Backward repair as a function (torch): every (a, g) gives a feasible NSR point.

    T_k = blkdiag(exp(a_k)_j I + g_kj 11^T) + delta_k I with delta_k = max(0, lambda_max(Q_k - T_k)),
    Q_{k-1} = W_k^T T_k W_k, Q_K = W_out^T W_out; rho = lambda_max(Q_0).  Same map as sdp.verify's repair.
    """
    Q = W_out.T @ W_out
    lams = []
    for k in range(len(Ws) - 1, -1, -1):
        M = Ms[k]
        lam = torch.exp(a[k])
        T = torch.diag(M @ lam) + (M * g[k][None, :]) @ M.T
        d = torch.linalg.eigvalsh(0.5 * (Q - T + (Q - T).T))[-1]
        delta = torch.relu(d)
        T = T + delta * torch.eye(T.shape[0], dtype=T.dtype, device=T.device)
        lams.append(lam + delta)
        Q = Ws[k].T @ T @ Ws[k]
        Q = 0.5 * (Q + Q.T)
    return torch.linalg.eigvalsh(Q)[-1], lams[::-1]


def polish_nsr(Ws, Ms, W_out, lam0, gam0, iters: int = 300, time_limit: float | None = None):
    """L-BFGS on the NSR repair map from (lam0, gam0) (e.g. an inaccurate SCS point).  Returns
    (lams, gams) as numpy; the caller certifies them.  Heuristic polish: no optimality claim."""
    dev, dt = W_out.device, W_out.dtype
    a = [torch.log(torch.as_tensor(l, dtype=dt, device=dev).clamp_min(1e-12 * max(1.0, float(abs(l).max()))))
         .clone().requires_grad_(True) for l in lam0]
    g = [torch.as_tensor(x, dtype=dt, device=dev).clone().requires_grad_(True) for x in gam0]
    t0 = time.perf_counter()
    best = [float("inf"), None]

    def closure():
        check_clock(t0, time_limit)
        opt.zero_grad()
        rho, lams = _nsr_repair_map(Ws, Ms, W_out, a, g)
        v = float(rho.detach())
        if v == v and v < best[0]:
            best[0] = v
            best[1] = ([l.detach().cpu().numpy().copy() for l in lams], [x.detach().cpu().numpy().copy() for x in g])
        val = torch.log(rho)
        if time_limit and time.perf_counter() - t0 > time_limit:
            return val.detach()
        val.backward()
        return val

    nthreads = torch.get_num_threads()
    if max(W.shape[0] for W in Ws) <= 512:
        torch.set_num_threads(1)
    opt = torch.optim.LBFGS(a + g, lr=1.0, max_iter=iters, history_size=30, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-12, tolerance_change=1e-14)
    try:
        opt.step(closure)
    except (RuntimeError, torch.linalg.LinAlgError, OutOfTime):
        pass
    torch.set_num_threads(nthreads)
    return best[1], best[0], time.perf_counter() - t0
