"""LipSDP-NSR (Pauli, Havens, Araujo, Garg, Khorrami, Allgöwer, Hu, ICLR 2024), S = P = 0, chain form.

GroupSort / MaxMin layers x_k = phi(W_k x_{k-1}); T_k = blkdiag_j(lam_j I + gam_j 1 1^T), lam >= 0, gam free.
    l2:    rho I - W_0^T T_1 W_0 >= 0,  T_k - W_k^T T_{k+1} W_k >= 0,  T_K - W_out^T W_out >= 0;  L2 <= sqrt(rho)
    l_inf: diag(tau) - W_0^T T_1 W_0 >= 0,  ...,  [[T_K, w^T], [w, 2 rho - 1^T tau]] >= 0;    L_inf <= rho
(as in ppauli/QCs_MaxMin LipschitzEstimation.m; with S = P = 0 the SDP decouples into this chain).
"""

from __future__ import annotations

import cvxpy as cp
import numpy as np

from .common import Built, psd, row_space_reduction


def build_nsr(Ws: list[np.ndarray], groups: list[np.ndarray], W_out: np.ndarray, norm, eps: float = 1e-9) -> Built:
    """``Ws[k]``: (n_k, m_k) hidden weights; ``groups[k]``: (n_k, N_k) group indicator matrix."""
    K = len(Ws)
    rho = cp.Variable(name="rho")
    lams = [cp.Variable(M.shape[1], nonneg=True, name=f"lam{k}") for k, M in enumerate(groups)]
    gams = [cp.Variable(M.shape[1], name=f"gam{k}") for k, M in enumerate(groups)]
    Ts = [cp.diag(M @ l) + M @ cp.diag(g) @ M.T for M, l, g in zip(groups, lams, gams)]
    cons, sizes = [], []
    tau = None
    if norm == 2:
        V = row_space_reduction(Ws[0])
        W0 = Ws[0] @ V
        cons.append(psd(rho * np.eye(W0.shape[1]) - W0.T @ Ts[0] @ W0 - eps * np.eye(W0.shape[1])))
    else:
        W0 = Ws[0]
        tau = cp.Variable(W0.shape[1], nonneg=True, name="tau")
        cons.append(psd(cp.diag(tau) - W0.T @ Ts[0] @ W0 - eps * np.eye(W0.shape[1])))
    sizes.append(W0.shape[1])
    for k in range(1, K):
        n = Ws[k].shape[1]
        cons.append(psd(Ts[k - 1] - Ws[k].T @ Ts[k] @ Ws[k] - eps * np.eye(n)))
        sizes.append(n)
    if norm == 2:
        cons.append(psd(Ts[-1] - W_out.T @ W_out - eps * np.eye(W_out.shape[1])))
        sizes.append(W_out.shape[1])
    else:
        w = W_out.reshape(1, -1)
        cons.append(psd(cp.bmat([[Ts[-1], w.T], [w, cp.reshape(2 * rho - cp.sum(tau), (1, 1), order="C")]])))
        sizes.append(W_out.shape[1] + 1)
    prob = cp.Problem(cp.Minimize(rho), cons)

    def read():
        def val(v):
            return np.asarray(v.value, float) if v.value is not None else np.full(v.shape, np.nan)
        out = {"lam": [val(l) for l in lams], "gam": [val(g) for g in gams]}
        if tau is not None:
            out["tau"] = val(tau)
        return out

    return Built(prob, read, rho, sizes)
