"""LipSDP-Neuron / LipSDP-Layer on the exact sector (lifted) form of the network, chain-decomposed.

Network (see :mod:`sdp.structure`): x_k = D_k x_{k-1} + G_k psi_k, psi_k = phi(C_k x_{k-1}) entrywise,
phi slope-restricted to [alpha, beta] (ReLU: [0,1]); y = W_out x_K.  For ReLU chains this is
LipSDP-Neuron (Fazlyab et al. 2019); for MaxMin / Householder / GroupSort it is our one-ReLU-per-
comparator rewriting, provably at least as tight as the NSR constraint of Pauli et al. 2024.

Chain form (exactly equivalent to the full block LMI by eliminating the states one layer at a time:
the value function of a quadratic form is quadratic), with storage matrices Q_k:
    stage k:  [[Q_{k-1} - D^T Q_k D + 2 C^T L_ab C,  -(D^T Q_k G + C^T L_{a+b})],
               [ . ,                                 2 Lam - G^T Q_k G          ]]  >= eps I
    l2:    Q_0 = rho I,  Q_K = W_out^T W_out,  L2 <= sqrt(rho)
    l_inf: Q_0 = diag(tau), Q_K free, [[Q_K, w^T], [w, 2 rho - 1^T tau]] >= 0,  L_inf <= rho  (scalar w)
Multipliers: Lam = diag(lam) with lam >= 0 per psi entry ("neuron") or one per block ("layer").
"""

from __future__ import annotations

import cvxpy as cp
import numpy as np

from .common import Built, psd, row_space_reduction


def build_sector(blocks: list[tuple], W_out: np.ndarray, norm, per_layer: bool = False,
                 eps: float = 1e-9) -> Built:
    """``blocks``: list of numpy (C, D, G, alpha, beta).  ``W_out``: (q, m_K) (q = 1 for l_inf)."""
    K = len(blocks)
    cons = []
    rho = cp.Variable(name="rho")
    lams = []
    for k, (C, D, G, al, be) in enumerate(blocks):
        p = C.shape[0]
        if p == 0:
            lams.append(None)
        elif per_layer:
            t = cp.Variable(nonneg=True, name=f"lam{k}")
            lams.append(t * np.ones(p))
        else:
            lams.append(cp.Variable(p, nonneg=True, name=f"lam{k}"))
    if norm == 2:
        C0, D0, G0, al0, be0 = blocks[0] if K else (None, W_out, None, None, None)
        if K:
            V = row_space_reduction(np.vstack([C0, D0]))
            first = (C0 @ V, D0 @ V, G0, al0, be0)
            m0 = V.shape[1]
        else:
            first, m0 = None, W_out.shape[1]
        Qs = [rho * np.eye(m0)]
        QK = W_out.T @ W_out
        tau = None
    else:
        first = blocks[0] if K else None
        m0 = (blocks[0][1].shape[1] if K else W_out.shape[1])
        tau = cp.Variable(m0, nonneg=True, name="tau")
        Qs = [cp.diag(tau)]
        QK = cp.Variable((W_out.shape[1], W_out.shape[1]), symmetric=True, name="QK")
    Qvars = []
    for k in range(1, K):
        Q = cp.Variable((blocks[k][1].shape[1],) * 2, symmetric=True, name=f"Q{k}")
        Qvars.append(Q)
        Qs.append(Q)
    Qs.append(QK)
    sizes = []
    for k in range(K):
        C, D, G, al, be = first if k == 0 else blocks[k]
        Qp, Qn = Qs[k], Qs[k + 1]
        if C.shape[0] == 0:
            Z = Qp - D.T @ Qn @ D
            sizes.append(D.shape[1])
        else:
            lam = lams[k]
            Z11 = Qp - D.T @ Qn @ D + 2 * C.T @ cp.diag(cp.multiply(lam, al * be)) @ C
            Z12 = -(D.T @ Qn @ G + C.T @ cp.diag(cp.multiply(lam, al + be)))
            Z22 = 2 * cp.diag(lam) - G.T @ Qn @ G
            Z = cp.bmat([[Z11, Z12], [Z12.T, Z22]])
            sizes.append(D.shape[1] + C.shape[0])
        cons.append(psd(Z - eps * np.eye(Z.shape[0])))
    if K == 0:
        if norm == 2:
            cons.append(psd(rho * np.eye(m0) - W_out.T @ W_out))
    if norm != 2:
        w = W_out.reshape(1, -1)
        if K == 0:
            cons.append(psd(Qs[0] - QK))
        cons.append(psd(cp.bmat([[QK, w.T], [w, cp.reshape(2 * rho - cp.sum(tau), (1, 1), order="C")]])))
        sizes.append(W_out.shape[1] + 1)
    prob = cp.Problem(cp.Minimize(rho), cons)

    def read():
        out = {"lam": [None if l is None else np.asarray(l.value if hasattr(l, "value") and l.value is not None
                                                          else np.full(blocks[k][0].shape[0], np.nan), float)
                       for k, l in enumerate(lams)]}
        if norm != 2:
            out["tau"] = np.asarray(tau.value, float) if tau.value is not None else None
            out["QK"] = np.asarray(QK.value, float) if QK.value is not None else None
        return out

    return Built(prob, read, rho, sizes)
