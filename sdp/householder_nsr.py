"""LipSDP-NSR for Householder activations (Lemma 2 of Pauli et al., ICLR 2024), feed-forward, S = P = 0.

Householder activation per group j (size g, unit v_j): sigma(z) = z if v^T z > 0, else (I - 2 v v^T) z.
QC (Lemma 2): with P_j = I - v_j v_j^T, every lam_j >= 0 and free gam_j,
    dz_j^T T_j dz_j - dphi_j^T T_j dphi_j >= 0,    T_j = lam_j I + gam_j P_j,
because sigma is 1-Lipschitz in l2 (lam term) and P_j sigma(z) = P_j z (the gam term vanishes:
P_j (I - 2 v v^T) = P_j).  For g = 2 and v = (1, -1)/sqrt(2), P_j = 11^T / 2 and this is the MaxMin QC.
The chain is that of :mod:`sdp.formulations.nsr` with T_k = blkdiag_j(lam_j I + gam_j P_j):
    l2:  rho I >= W_0^T T_1 W_0,  T_k >= W_k^T T_{k+1} W_k,  T_K >= W_out^T W_out;   L2 <= sqrt(rho).
(The one-ReLU lifted form, method="lifted", is provably at least as tight; this is the paper's baseline.)

Soundness of the float64 proof: the float matrix T^ = fl(diag(lam) + gam * P^) differs from the exact
T (exact P from the stored v) by at most e_T = 8u max_rows(|lam| + |gam| (2 + sum_j |P_ij|)) in 2-norm
(entrywise rounding of v_i v_j, 1 - v_i^2, the product with gam and the diagonal sum).  Each stage proves
T^ - Q > 0 robustly to e_T (so the exact T >= Q) and continues with W^T (T^ + e_T I) W >= W^T T W.
"""

from __future__ import annotations

import cvxpy as cp
import numpy as np

from ..models.errors import UnsupportedOperationError

from . import solve as _solve
from . import verify as V
from .formulations.common import Built, psd, row_space_reduction


def householder_structure(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Mg, P): group indicator (n x N, consecutive groups) and blkdiag_j(I - v_j v_j^T) (n x n)."""
    N, g = v.shape
    n = N * g
    Mg = np.zeros((n, N))
    P = np.zeros((n, n))
    for j in range(N):
        s = slice(j * g, (j + 1) * g)
        Mg[s, j] = 1.0
        P[s, s] = np.eye(g) - np.outer(v[j], v[j])
    return Mg, P


def T_of(lam, gam, Mg, P):
    """T = blkdiag_j(lam_j I + gam_j P_j) (numpy)."""
    return np.diag(Mg @ lam) + ((Mg * gam[None, :]) @ Mg.T) * P


def build_householder_nsr(Ws, Mgs, Ps, W_out, eps: float = 1e-9) -> Built:
    """cvxpy chain (l2).  ``Ws[k]``: (n_k, m_k); ``Mgs[k]``, ``Ps[k]`` from :func:`householder_structure`."""
    rho = cp.Variable(name="rho")
    lams = [cp.Variable(M.shape[1], nonneg=True, name=f"lam{k}") for k, M in enumerate(Mgs)]
    gams = [cp.Variable(M.shape[1], name=f"gam{k}") for k, M in enumerate(Mgs)]
    Ts = [cp.diag(M @ l) + cp.multiply(M @ cp.diag(g) @ M.T, P) for M, l, g, P in zip(Mgs, lams, gams, Ps)]
    Vr = row_space_reduction(Ws[0])
    W0 = Ws[0] @ Vr
    cons = [psd(rho * np.eye(W0.shape[1]) - W0.T @ Ts[0] @ W0 - eps * np.eye(W0.shape[1]))]
    sizes = [W0.shape[1]]
    for k in range(1, len(Ws)):
        n = Ws[k].shape[1]
        cons.append(psd(Ts[k - 1] - Ws[k].T @ Ts[k] @ Ws[k] - eps * np.eye(n)))
        sizes.append(n)
    cons.append(psd(Ts[-1] - W_out.T @ W_out - eps * np.eye(W_out.shape[1])))
    sizes.append(W_out.shape[1])

    def read():
        def val(v):
            return np.asarray(v.value, float) if v.value is not None else np.full(v.shape, np.nan)
        return {"lam": [val(l) for l in lams], "gam": [val(g) for g in gams]}

    return Built(cp.Problem(cp.Minimize(rho), cons), read, rho, sizes)


def householder_stage(Q, W, Mg, P, lam, gam, rel_slack: float = 1e-9):
    """One proven stage: returns (Q_prev, (lam_used, gam)) or None (see the module docstring)."""
    if not (np.all(np.isfinite(lam)) and np.all(np.isfinite(gam))):
        return None
    lam = np.maximum(lam, 0.0)
    rows = np.abs(P).sum(1)
    eT = 8 * V.U * float((Mg @ np.abs(lam) + (Mg @ np.abs(gam)) * (2 + rows)).max()) * (1 + 1e-10) + 1e-300
    T = T_of(lam, gam, Mg, P)
    scale = max(float(np.abs(T).sum(1).max()), float(np.abs(Q).sum(1).max()), 1e-300)
    d = float(np.linalg.eigvalsh(V._sym(T - Q))[0])
    delta = max(0.0, -d) + rel_slack * scale + 2 * eT
    for _ in range(6):
        lam2 = lam + delta
        T = T_of(lam2, gam, Mg, P)
        eT = 8 * V.U * float((Mg @ np.abs(lam2) + (Mg @ np.abs(gam)) * (2 + rows)).max()) * (1 + 1e-10) + 1e-300
        if V.prove_pd(T - Q, 4 * V.U * scale + eT):
            break
        delta *= 100.0
    else:
        return None
    Tu = V._add_diag(T, eT)
    M = V._sym(W.T @ Tu @ W)
    err = V.product_error(W.T, Tu, W)
    return V._add_diag(M, 2 * err + 4 * V.U * float(np.abs(M).sum(1).max()) + 1e-300), (lam2, gam)


def certify_householder_nsr(Ws, Mgs, Ps, W_out, mult) -> float | None:
    """Proven rho (L2 <= sqrt(rho)) from (repaired) multipliers."""
    Q = V.output_storage_l2(W_out)
    for k in range(len(Ws) - 1, -1, -1):
        r = householder_stage(Q, Ws[k], Mgs[k], Ps[k], np.asarray(mult["lam"][k], float),
                              np.asarray(mult["gam"][k], float))
        if r is None:
            return None
        Q, (mult["lam"][k], mult["gam"][k]) = r
    return V.finish_l2(Q)


def run_householder_nsr(layers, norm, solver, time_limit, eps):
    """Handler tuple for :mod:`sdp.api` (feed-forward Householder chains, l2)."""
    hs = layers.hidden
    if norm != 2 or not hs or any(h.act != "householder" or h.residual for h in hs):
        raise UnsupportedOperationError(
            "method 'nsr' with Householder activations needs a feed-forward chain of Householder layers and "
            "norm=2 (Lemma 2 of Pauli et al.); use method='lifted' otherwise")
    Ws = [h.W.detach().cpu().double().numpy() for h in hs]
    Mgs, Ps = zip(*[householder_structure(h.params["v"].detach().cpu().double().numpy()) for h in hs])
    W_out = layers.W_out.detach().cpu().double().numpy()
    built = build_householder_nsr(Ws, list(Mgs), list(Ps), W_out)
    s = _solve.choose_solver(None if str(solver).upper() == "FIRST_ORDER" else solver, built.cone_sizes)
    res = _solve.run(built.problem, s, time_limit, eps)
    return s, res.status, res.raw_value, res.solve_time, built.read(), \
        (lambda m: certify_householder_nsr(Ws, list(Mgs), list(Ps), W_out, m))
