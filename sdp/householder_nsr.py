"""LipSDP-NSR for Householder activations (Lemma 2 of Pauli et al., ICLR 2024), feed-forward, S = P = 0.

Householder activation per group j (size g, unit v_j): sigma(z) = z if v^T z > 0, else (I - 2 v v^T) z.
The groups are the channels at each pixel after a convolution (:func:`models.groups.activation_groups`).
QC (Lemma 2): with P_j = I - v_j v_j^T, every lam_j >= 0 and free gam_j,
    dz_j^T T_j dz_j - dphi_j^T T_j dphi_j >= 0,    T_j = lam_j I + gam_j P_j,
because sigma is 1-Lipschitz in l2 (lam term) and P_j sigma(z) = P_j z (the gam term vanishes:
P_j (I - 2 v v^T) = P_j).  For g = 2 and v = (1, -1)/sqrt(2), P_j = 11^T / 2 and this is the MaxMin QC.
The chain is that of :mod:`sdp.formulations.nsr` with T_k = blkdiag_j(lam_j I + gam_j P_j):
    l2:  rho I >= W_0^T T_1 W_0,  T_k >= W_k^T T_{k+1} W_k,  T_K >= W_out^T W_out;   L2 <= sqrt(rho).
(The one-ReLU lifted form, method="lifted", is provably at least as tight; this is the paper's baseline.)

Non-unit stored v (the description computes z - 2 v v^T z with v as stored; loaders store v / ||v|| in the
model's dtype, so ||v||^2 = s = 1 only up to rounding, and a hand-built Network may hold any v).  With
u = v / ||v||, a = u^T z and w = (I - u u^T) z, sigma maps (a, w) -> (f(a), w), f(a) = a (a > 0) or
(1 - 2 s) a, so |df| <= c |da| with c = max(1, |1 - 2 s|) = max(1, 2 s - 1).  The QC that holds is
    dz^T (T + lam (c^2 - 1) u u^T) dz - dphi^T T dphi >= 0,   T = lam I + gam (I - u u^T),
(difference = lam (c^2 da^2 - df^2)); the chain uses T_in = T + lam (c^2 - 1) I_group >= that on the
input side (for unit v, c = 1: Lemma 2).  Here P = I - u u^T is formed from the stored v in float64
and s, c^2 - 1 are bounded above with their rounding (:func:`householder_structure`).

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


def householder_structure(v: np.ndarray, index: np.ndarray, groups_v: np.ndarray, n: int
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(Mg, P, ex, eP) of one Householder layer with stored rows ``v`` (``(K, g)``) on ``n`` features.

    ``index`` (G x g) flat indices of each group and ``groups_v`` (G,) the row of v each group uses
    (:class:`models.groups.ActivationGroups`); ``Mg``: (n x G) group indicator.  ``P`` = blkdiag_j(I - u_j u_j^T) (n x n, float64, u = v / ||v||),
    ``ex[j] >= c_j^2 - 1`` (``c_j = max(1, 2 ||v_j||^2 - 1)``, rounding included) and ``eP`` bounds the
    2-norm of the rounding in P per unit of |gam| (see the module docstring)."""
    v = np.asarray(v, dtype=np.float64)
    g = v.shape[1]
    s = (v * v).sum(1)                                   # float64; |s - s_exact| <= gamma_g s_exact
    if not np.all(np.isfinite(s)) or np.any(s <= 0):
        bad = int(np.nonzero(~np.isfinite(s) | (s <= 0))[0][0])
        raise UnsupportedOperationError(f"Householder row {bad} of v is zero or not finite: no reflection")
    s_up = s * (1 + V.gamma(g + 2)) * (1 + 4 * V.U)
    c_up = np.maximum(1.0, (2 * s_up - 1) * (1 + 4 * V.U))
    ex = np.maximum(c_up * c_up * (1 + 4 * V.U) - 1.0, 0.0) * (1 + 4 * V.U) + 4 * V.U * (c_up * c_up)
    u = v / np.sqrt(s)[:, None]
    idx = np.asarray(index, dtype=np.int64)
    G = idx.shape[0]
    Mg = np.zeros((n, G))
    Mg[idx.reshape(-1), np.repeat(np.arange(G), g)] = 1.0
    P = np.zeros((n, n))
    U_rows = u[groups_v]                                 # (G, g)
    blocks = np.eye(g)[None] - U_rows[:, :, None] * U_rows[:, None, :]
    P[idx[:, :, None], idx[:, None, :]] = blocks
    ex = ex[groups_v]                                    # per group (row of v of each pixel's group)
    # |fl(u_i u_k) - v_i v_k / s| <= (g + 8) u |v_i v_k| / s (s: gamma_g, sqrt, division, product) and the
    # diagonal 1 - x one more rounding: row sums of |dP| <= u ((g + 8) sqrt(g) + 2), generous factor 2
    eP = 2 * V.U * ((g + 8) * np.sqrt(g) + 2)
    return Mg, P, ex, float(eP)


def T_of(lam, gam, Mg, P):
    """T = blkdiag_j(lam_j I + gam_j P_j) (numpy)."""
    return np.diag(Mg @ lam) + ((Mg * gam[None, :]) @ Mg.T) * P


def build_householder_nsr(Ws, Mgs, Ps, W_out, eps: float = 1e-9, exs=None) -> Built:
    """cvxpy chain (l2).  ``Ws[k]``: (n_k, m_k); ``Mgs[k]``, ``Ps[k]``, ``exs[k]`` from
    :func:`householder_structure` (``exs``: the input-side terms lam (c^2 - 1) of non-unit v; None: 0)."""
    rho = cp.Variable(name="rho")
    lams = [cp.Variable(M.shape[1], nonneg=True, name=f"lam{k}") for k, M in enumerate(Mgs)]
    gams = [cp.Variable(M.shape[1], name=f"gam{k}") for k, M in enumerate(Mgs)]
    Ts = [cp.diag(M @ l) + cp.multiply(M @ cp.diag(g) @ M.T, P) for M, l, g, P in zip(Mgs, lams, gams, Ps)]
    exs = exs if exs is not None else [np.zeros(M.shape[1]) for M in Mgs]
    Tin = [T + cp.diag(M @ cp.multiply(e, l)) if np.any(e > 0) else T for T, M, e, l in zip(Ts, Mgs, exs, lams)]
    Vr = row_space_reduction(Ws[0])
    W0 = Ws[0] @ Vr
    cons = [psd(rho * np.eye(W0.shape[1]) - W0.T @ Tin[0] @ W0 - eps * np.eye(W0.shape[1]))]
    sizes = [W0.shape[1]]
    for k in range(1, len(Ws)):
        n = Ws[k].shape[1]
        cons.append(psd(Ts[k - 1] - Ws[k].T @ Tin[k] @ Ws[k] - eps * np.eye(n)))
        sizes.append(n)
    cons.append(psd(Ts[-1] - W_out.T @ W_out - eps * np.eye(W_out.shape[1])))
    sizes.append(W_out.shape[1])

    def read():
        def val(v):
            return np.asarray(v.value, float) if v.value is not None else np.full(v.shape, np.nan)
        return {"lam": [val(l) for l in lams], "gam": [val(g) for g in gams]}

    return Built(cp.Problem(cp.Minimize(rho), cons), read, rho, sizes)


def householder_stage(Q, W, Mg, P, lam, gam, rel_slack: float = 1e-9, ex=None, eP: float = 0.0):
    """One proven stage: returns (Q_prev, (lam_used, gam)) or None (see the module docstring).

    ``ex`` (per group, >= c^2 - 1) adds lam (c^2 - 1) on the input side for non-unit v; ``eP`` bounds the
    rounding of P per unit |gam|."""
    if not (np.all(np.isfinite(lam)) and np.all(np.isfinite(gam))):
        return None
    ex = np.zeros(Mg.shape[1]) if ex is None else np.asarray(ex, float)
    lam = np.maximum(lam, 0.0)
    rows = np.abs(P).sum(1)

    def e_T(lam_):
        return (8 * V.U * float((Mg @ np.abs(lam_) + (Mg @ np.abs(gam)) * (2 + rows)).max())
                + eP * float(np.abs(gam).max(initial=0.0))) * (1 + 1e-10) + 1e-300

    eT = e_T(lam)
    T = T_of(lam, gam, Mg, P)
    scale = max(float(np.abs(T).sum(1).max()), float(np.abs(Q).sum(1).max()), 1e-300)
    d = float(np.linalg.eigvalsh(V._sym(T - Q))[0])
    delta = max(0.0, -d) + rel_slack * scale + 2 * eT
    for _ in range(6):
        lam2 = lam + delta
        T = T_of(lam2, gam, Mg, P)
        eT = e_T(lam2)
        if V.prove_pd(T - Q, 4 * V.U * scale + eT):
            break
        delta *= 100.0
    else:
        return None
    # input side: T_exact + lam (c^2 - 1) u u^T <= T^ + (eT + lam ex) I per group (rounded up)
    add = (eT + (Mg @ (lam2 * ex)) * (1 + 4 * V.U)) * (1 + 4 * V.U)
    Tu = T + np.diag(add)
    M = V._sym(W.T @ Tu @ W)
    err = V.product_error(W.T, Tu, W) + 4 * V.U * float(np.abs(np.diag(Tu)).max())
    return V._add_diag(M, 2 * err + 4 * V.U * float(np.abs(M).sum(1).max()) + 1e-300), (lam2, gam)


def certify_householder_nsr(Ws, Mgs, Ps, W_out, mult, exs=None, ePs=None) -> float | None:
    """Proven rho (L2 <= sqrt(rho)) from (repaired) multipliers."""
    Q = V.output_storage_l2(W_out)
    for k in range(len(Ws) - 1, -1, -1):
        r = householder_stage(Q, Ws[k], Mgs[k], Ps[k], np.asarray(mult["lam"][k], float),
                              np.asarray(mult["gam"][k], float), ex=None if exs is None else exs[k],
                              eP=0.0 if ePs is None else ePs[k])
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
    structs = []
    for h in hs:
        grp = h.act_groups()
        try:
            structs.append(householder_structure(h.params["v"].detach().cpu().double().numpy(),
                                                 grp.index.numpy(), grp.channel_group.numpy(), grp.n))
        except UnsupportedOperationError as exc:
            raise UnsupportedOperationError(f"layer {h.path}: {exc}") from None
    Mgs, Ps, exs, ePs = (list(t) for t in zip(*structs))
    W_out = layers.W_out.detach().cpu().double().numpy()
    built = build_householder_nsr(Ws, Mgs, Ps, W_out, exs=exs)
    s = _solve.choose_solver(None if str(solver).upper() == "FIRST_ORDER" else solver, built.cone_sizes)
    res = _solve.run(built.problem, s, time_limit, eps)
    return s, res.status, res.raw_value, res.solve_time, built.read(), \
        (lambda m: certify_householder_nsr(Ws, Mgs, Ps, W_out, m, exs, ePs))
