"""First-order path for the l_inf LipSDP chains (lifted one-ReLU form and Pauli et al.'s NSR).

Bound sought: ``|w^T (x_K(x) - x_K(y))| <= L_inf ||x - y||_inf`` for a scalar output direction ``w``
(L_inf bounds max ||grad(w^T f)||_1).

Reduction (exact, [ours], proof in :mod:`sdp.linf`).  Both chains of the
reference (lipsdp.md §1.3 and the sector chain of sdp/formulations/sector.py) end with
``[[Q_K, w^T], [w, 2 rho - 1^T tau]] >= 0`` and start with ``Q_0 = diag(tau)``.  By monotonicity of
the chain in Q_K and positive homogeneity (scale every multiplier by c), the optimum is attained
with ``Q_K = w w^T`` and then
    L_inf = sqrt( t(Q_0) ),   t(Q_0) = min { 1^T tau : diag(tau) >= Q_0 },
where Q_0 is the *same* storage matrix as in the l2 chain for the scalar output w (l2 gives
sqrt(lambda_max(Q_0)) instead).  t is parametrised without constraints by tau = exp(theta_in):
    t(Q_0) = min_theta (1^T e^theta) * lambda_max( diag(e^-theta/2) Q_0 diag(e^-theta/2) ),
and since Q_0 = V Q~ V^T lives in the row space (V, 784 x r) of the first weight matrix, the
eigenvalue is that of the r x r matrix  L^T Q~ L,  L L^T = V^T diag(e^-theta) V  (no 784-wide
eigenproblem).  The closed-form start theta_in = log sqrt(diag Q_0) gives t <= (sum_i sqrt(Q_0,ii))^2
(Cauchy-Schwarz), i.e. L_inf <= sum_i sqrt(Q_0,ii).

Every point of the parametrisation is feasible, so the optimiser may stop at any time; the value
it reports is only an estimate until :mod:`sdp.formulations.linf` proves it in float64.
"""

from __future__ import annotations

import math
import time

import torch

# continuation levels of the smoothed lambda_max (relative); measured on the 18x128 NSR l_inf chain:
# 204,228 after 1000 L-BFGS iterations without smoothing vs 196,993 after 800 with it (published 1.97e5).
SMOOTHING = (1e-2, 1e-3, 1e-4, 0.0)


def sector_chain_Q0(blocks, w, params, mu: float = 0.0):
    """Backward Schur recursion of the sector chain from Q_K = w^T w (``w``: (m_out, m_K); the l_inf case
    has one row); returns (Q_0, lams).  Parametrisation: params[k] = (theta_k, eta_k), lam_k = s_k e^theta_k
    with s_k above the critical scale, so every point is feasible.  Shared by the l2 path
    (:func:`sdp.first_order._dp`)."""
    Q = w.T @ w
    lams = []
    for k in range(len(blocks) - 1, -1, -1):
        C, D, G, al, be = blocks[k]
        if C.shape[0] == 0:
            Q = D.T @ Q @ D
            Q = 0.5 * (Q + Q.T)
            lams.append(None)
            continue
        theta, eta = params[k]
        d = torch.exp(theta)
        GQG = G.T @ Q @ G
        GQG = 0.5 * (GQG + GQG.T)
        ds = torch.rsqrt(d)
        scrit = lmax_upper(ds[:, None] * GQG * ds[None, :], mu).clamp_min(0) / 2
        s = scrit * (1 + torch.exp(eta)) + 1e-12 * (1 + GQG.abs().max().detach())
        lam = s * d
        S = torch.diag(2 * lam) - GQG
        H = D.T @ Q @ G + C.T * (lam * (al + be))[None, :]
        L = torch.linalg.cholesky(0.5 * (S + S.T))
        X = torch.linalg.solve_triangular(L, H.T, upper=False)
        Q = D.T @ Q @ D - 2 * (C.T * (lam * al * be)[None, :]) @ C + X.T @ X
        Q = 0.5 * (Q + Q.T)
        lams.append(lam)
    return Q, lams[::-1]


def lmax_upper(A, mu: float = 0.0):
    """lambda_max(A) (mu = 0) or its smooth upper bound s logsumexp(lambda / s), s = mu max|lambda| (mu > 0)."""
    ev = torch.linalg.eigvalsh(0.5 * (A + A.T))
    if mu <= 0:
        return ev[-1]
    s = mu * (ev.abs().max().detach() + 1e-300)
    return s * torch.logsumexp(ev / s, 0)


def nsr_chain_Q0_scaled(Ws_red, Ms, w, a, b, mu: float = 0.0):
    """NSR chain, multiplicative parametrisation (smooth where lambda_max is simple): per group j the block
    T_j = lam_j I + gam_j 1 1^T has eigenvalue e^{a_j} on 1-perp and e^{b_j} on 1 (so T > 0), and the layer's
    T_k = c_k T(a, b) with c_k = lambda_max(T^-1/2 Q_k T^-1/2), the smallest scaling with T_k >= Q_k.
    Returns (Q_0 (r x r), lams, gams) with lams/gams the scaled multipliers."""
    Q = w.T @ w
    lams, gams = [], []
    for k in range(len(Ws_red) - 1, -1, -1):
        M = Ms[k]
        gsz = M.sum(0)
        e1, e2 = torch.exp(a[k]), torch.exp(b[k])
        al, be = torch.rsqrt(e1), (torch.rsqrt(e2) - torch.rsqrt(e1)) / gsz
        Tm = torch.diag(M @ al) + (M * be[None, :]) @ M.T          # T^-1/2
        ck = lmax_upper(Tm @ Q @ Tm, mu).clamp_min(1e-300)
        lam, gam = ck * e1, ck * (e2 - e1) / gsz
        T = torch.diag(M @ lam) + (M * gam[None, :]) @ M.T
        lams.append(lam)
        gams.append(gam)
        Q = Ws_red[k].T @ T @ Ws_red[k]
        Q = 0.5 * (Q + Q.T)
    return Q, lams[::-1], gams[::-1]


def log_t(Q0r, V, theta_in, mu: float = 0.0):
    """log of (1^T tau) lambda_max(diag(tau)^-1/2 V Q0r V^T diag(tau)^-1/2), tau = exp(theta_in)
    (lambda_max replaced by its smooth upper bound when mu > 0)."""
    Minv = V.T @ (torch.exp(-theta_in)[:, None] * V)
    L = torch.linalg.cholesky(0.5 * (Minv + Minv.T))
    lm = lmax_upper(L.T @ Q0r @ L, mu)
    return torch.logsumexp(theta_in, 0) + torch.log(lm)


def init_theta_in(Q0r, V):
    """Closed-form start: tau_i = sqrt(Q_0,ii) (diag of V Q0r V^T), floored for inputs the net ignores."""
    dg = ((V @ Q0r) * V).sum(1).clamp_min(0)
    floor = 1e-12 * float(dg.max()) + 1e-300
    return 0.5 * torch.log(dg.clamp_min(floor))


def tau_from(Q0r, V, theta_in):
    """tau = e^theta * lambda_max(...), so that diag(tau) >= Q_0 up to rounding (the proof repairs it)."""
    with torch.no_grad():
        Minv = V.T @ (torch.exp(-theta_in)[:, None] * V)
        L = torch.linalg.cholesky(0.5 * (Minv + Minv.T))
        E = L.T @ Q0r @ L
        lm = torch.linalg.eigvalsh(0.5 * (E + E.T))[-1]
        return (torch.exp(theta_in) * lm).cpu().numpy()


class OutOfTime(Exception):
    """Raised inside an L-BFGS closure at its deadline: the optimiser stops at once (the best point so far,
    a feasible one, is what the caller verifies)."""


def check_clock(t0: float, time_limit: float | None) -> None:
    """Raise :class:`OutOfTime` when ``time_limit`` seconds have passed since ``t0`` (``perf_counter``)."""
    if time_limit and time.perf_counter() - t0 > time_limit:
        raise OutOfTime


def _lbfgs(params, f, iters, time_limit, record, best0=float("inf")):
    """Minimise f() over params with L-BFGS; keep the best point (``record`` called on improvement).
    Stops before an evaluation that would start after ``time_limit`` seconds."""
    t0 = time.perf_counter()
    best = [best0]
    evals = [0]

    def closure():
        check_clock(t0, time_limit)
        opt.zero_grad()
        val = f()
        evals[0] += 1
        v = float(val.detach())
        if v == v and v < best[0]:
            best[0] = v
            record()
        if time_limit and time.perf_counter() - t0 > time_limit:
            return val.detach()
        val.backward()
        return val

    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=max(iters, 1), history_size=30,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-12, tolerance_change=1e-14)
    try:
        opt.step(closure)
    except (RuntimeError, torch.linalg.LinAlgError, OutOfTime):
        pass  # numerical trouble or the deadline: keep the best point found
    return best[0], evals[0]


def _continuation(params, f, record, iters, time_limit, smoothing, mu, best, t0):
    """L-BFGS rounds with the smoothing level mu[0] taken from ``smoothing`` (upper bounds of lambda_max,
    so every iterate stays feasible; the last level should be 0), iters split evenly."""
    evals = 0
    for m in (smoothing if iters > 0 else ()):
        mu[0] = m
        left = None if not time_limit else time_limit - (time.perf_counter() - t0)
        if left is not None and left <= 0:
            break
        b, e = _lbfgs(params, f, max(iters // len(smoothing), 1), left, record, best)
        best, evals = min(best, b), evals + e
    return best, evals


class _Threads:
    def __init__(self, small):
        self.small = small

    def __enter__(self):
        self.n = torch.get_num_threads()
        if self.small:
            torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.n)


def optimize_sector_linf(blocks, w, V, iters: int = 300, time_limit: float | None = None, init=None,
                         smoothing=SMOOTHING):
    """Joint L-BFGS over the hidden multipliers (theta_k, eta_k) and the input weights theta_in of
    log t.  ``blocks``: torch (C, D, G, alpha, beta), the first one already reduced to the row space V
    (784 x r).  ``init``: optional hidden params (list of (theta, eta) or None).
    Returns dict(lam=[numpy], tau=numpy, est=L_inf estimate, closed=closed-form estimate, time, evals)."""
    dev, dt = w.device, w.dtype
    params = []
    for k, (C, *_r) in enumerate(blocks):
        p = C.shape[0]
        th = torch.zeros(p, device=dev, dtype=dt) if init is None or init[k] is None else init[k][0].clone()
        et = torch.zeros((), device=dev, dtype=dt) if init is None or init[k] is None else init[k][1].clone()
        params.append((th.requires_grad_(True), et.requires_grad_(True)))
    t0 = time.perf_counter()
    with _Threads(max((b[1].shape[0] for b in blocks), default=0) <= 512):
        with torch.no_grad():
            Q0, lams = sector_chain_Q0(blocks, w, params)
            th_in = init_theta_in(Q0, V)
            closed = float(torch.exp(0.5 * log_t(Q0, V, th_in)))
        th_in = th_in.clone().requires_grad_(True)
        state = {"lam": [None if l is None else l.cpu().numpy() for l in lams], "tau": tau_from(Q0, V, th_in)}

        mu = [0.0]

        def f():
            Q0, lams = sector_chain_Q0(blocks, w, params, mu[0])
            state["_last"] = (Q0, lams)
            return log_t(Q0, V, th_in, mu[0])

        def record():
            Q0, lams = state["_last"]
            state["lam"] = [None if l is None else l.detach().cpu().numpy().copy() for l in lams]
            state["tau"] = tau_from(Q0.detach(), V, th_in.detach())

        flat = [t for (C, *_r), pr in zip(blocks, params) if C.shape[0] > 0 for t in pr] + [th_in]
        best, evals = _continuation(flat, f, record, iters, time_limit, smoothing, mu, 2 * math.log(closed), t0)
    est = math.exp(0.5 * best)
    return {"lam": state["lam"], "tau": state["tau"], "est": min(est, closed), "closed": closed,
            "time": time.perf_counter() - t0, "evals": evals}


def optimize_nsr_linf(Ws_red, Ms, w, V, iters: int = 300, time_limit: float | None = None,
                      smoothing=SMOOTHING):
    """L-BFGS on the NSR l_inf chain in the multiplicative parametrisation of :func:`nsr_chain_Q0_scaled`
    (per group log-eigenvalues a, b) jointly with the input weights theta_in.  Every point is feasible;
    the optimiser is a heuristic (no optimality claim), the bound comes from the float64 proof."""
    dev, dt = w.device, w.dtype
    a = [torch.zeros(M.shape[1], dtype=dt, device=dev).requires_grad_(True) for M in Ms]
    b = [torch.zeros(M.shape[1], dtype=dt, device=dev).requires_grad_(True) for M in Ms]
    t0 = time.perf_counter()
    with _Threads(max(W.shape[0] for W in Ws_red) <= 512):
        with torch.no_grad():
            Q0, lams, gams = nsr_chain_Q0_scaled(Ws_red, Ms, w, a, b)
            th_in = init_theta_in(Q0, V)
            closed = math.exp(0.5 * float(log_t(Q0, V, th_in)))
        th_in = th_in.clone().requires_grad_(True)
        state = {"lam": [l.cpu().numpy() for l in lams], "gam": [x.cpu().numpy() for x in gams],
                 "tau": tau_from(Q0, V, th_in)}

        mu = [0.0]

        def f():
            out = nsr_chain_Q0_scaled(Ws_red, Ms, w, a, b, mu[0])
            state["_last"] = out
            return log_t(out[0], V, th_in, mu[0])

        def record():
            Q0, lams, gams = state["_last"]
            state["lam"] = [l.detach().cpu().numpy().copy() for l in lams]
            state["gam"] = [x.detach().cpu().numpy().copy() for x in gams]
            state["tau"] = tau_from(Q0.detach(), V, th_in.detach())

        best, evals = _continuation(a + b + [th_in], f, record, iters, time_limit, smoothing, mu,
                                    2 * math.log(closed), t0)
    est = math.exp(0.5 * best)
    return {"lam": state["lam"], "gam": state["gam"], "tau": state["tau"], "est": min(est, closed),
            "closed": closed, "time": time.perf_counter() - t0, "evals": evals}


def optimize_nsr_l2(Ws_red, Ms, W_out, iters: int = 300, time_limit: float | None = None, smoothing=SMOOTHING):
    """The l2 NSR chain (Pauli et al. Theorem 1, S = P = 0) in the same multiplicative parametrisation:
    minimise log lambda_max(Q_0) (L2 <= sqrt(lambda_max(Q_0))), Q_K = W_out^T W_out.  ``Ws_red[0]`` is the
    row-space-reduced first matrix (exact for l2).  Heuristic optimiser; the bound comes from the proof."""
    dev, dt = W_out.device, W_out.dtype
    a = [torch.zeros(M.shape[1], dtype=dt, device=dev).requires_grad_(True) for M in Ms]
    b = [torch.zeros(M.shape[1], dtype=dt, device=dev).requires_grad_(True) for M in Ms]
    t0 = time.perf_counter()
    with _Threads(max(W.shape[0] for W in Ws_red) <= 512):
        with torch.no_grad():
            Q0, lams, gams = nsr_chain_Q0_scaled(Ws_red, Ms, W_out, a, b)
            closed = float(lmax_upper(Q0))
        state = {"lam": [l.cpu().numpy() for l in lams], "gam": [x.cpu().numpy() for x in gams]}
        mu = [0.0]

        def f():
            out = nsr_chain_Q0_scaled(Ws_red, Ms, W_out, a, b, mu[0])
            state["_last"] = out
            return torch.log(lmax_upper(out[0], mu[0]))

        def record():
            _q, lams, gams = state["_last"]
            state["lam"] = [l.detach().cpu().numpy().copy() for l in lams]
            state["gam"] = [x.detach().cpu().numpy().copy() for x in gams]

        best, evals = _continuation(a + b, f, record, iters, time_limit, smoothing, mu, math.log(closed), t0)
    return {"lam": state["lam"], "gam": state["gam"], "est_rho": min(math.exp(best), closed), "closed_rho": closed,
            "time": time.perf_counter() - t0, "evals": evals}
