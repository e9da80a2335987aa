"""LipSDP-NSR for residual MaxMin nets (Pauli et al. 2024; ppauli/QCs_MaxMin LipschitzEstimationRes.m).

x_k = x_{k-1} + MaxMin(W_k x_{k-1}), k = 1..m, on the state space R^nx.  With xi = [dx_0; dw_1; ...; dw_m]
(dw_k the MaxMin increments), dv = A xi (A(r, c) = W_r for c <= r-1 in block terms), dw = B xi, dx_m = [I..I] xi:
    F(rho) = blkdiag(rho I, 0) - (1 1^T (x) I) - [A; B]^T X [A; B] >= 0,
    X = [[T - 2S, P + S], [P + S, -T - 2P]],  T = blkdiag(lam_j I + gam_j 11^T), S = blkdiag(s_j 11^T), P = blkdiag(p_j 11^T)
certifies ||dx_m|| <= sqrt(rho) ||dx_0||; the paper reports sqrt(rho) ||W_in|| ||W_out||.
``variant``: "PSzero" (S = P = 0), "Szero" (P free), "Pzero" (S free).  Both free is dual-degenerate.
"""

from __future__ import annotations

import cvxpy as cp
import numpy as np

from .common import Built, psd


def residual_matrices(Ws: list[np.ndarray]):
    m, nx = len(Ws), Ws[0].shape[0]
    A = np.zeros((m * nx, (m + 1) * nx))
    for r in range(m):
        for c in range(r + 1):
            A[r * nx:(r + 1) * nx, c * nx:(c + 1) * nx] = Ws[r]
    B = np.zeros((m * nx, (m + 1) * nx))
    B[:, nx:] = np.eye(m * nx)
    O = np.tile(np.eye(nx), (1, m + 1))
    return A, B, O


def qc_matrix(Mg, lam, gam, s, p, xp=np):
    """X of the docstring for cvxpy expressions or numpy arrays (Mg: neuron -> group indicator)."""
    if xp is np:
        T = np.diag(Mg @ lam) + (Mg * gam[None, :]) @ Mg.T
        S = (Mg * s[None, :]) @ Mg.T
        P = (Mg * p[None, :]) @ Mg.T
        return np.block([[T - 2 * S, P + S], [P + S, -T - 2 * P]])
    T = cp.diag(Mg @ lam) + Mg @ cp.diag(gam) @ Mg.T
    S = Mg @ cp.diag(s) @ Mg.T if s is not None else 0 * T
    P = Mg @ cp.diag(p) @ Mg.T if p is not None else 0 * T
    return cp.bmat([[T - 2 * S, P + S], [P + S, -T - 2 * P]])


def build_residual_nsr(Ws: list[np.ndarray], Mg: np.ndarray, variant: str = "Szero", eps: float = 1e-9) -> Built:
    A, B, O = residual_matrices(Ws)
    nx = Ws[0].shape[0]
    N = Mg.shape[1]
    rho = cp.Variable(name="rho")
    lam = cp.Variable(N, nonneg=True, name="lam")
    gam = cp.Variable(N, name="gam")
    s = cp.Variable(N, name="s") if variant == "Pzero" else None
    p = cp.Variable(N, name="p") if variant == "Szero" else None
    X = qc_matrix(Mg, lam, gam, s, p, xp=cp)
    AB = np.vstack([A, B])
    n = A.shape[1]
    E = np.zeros((n, n))
    E[:nx, :nx] = np.eye(nx)
    F = rho * E - O.T @ O - AB.T @ X @ AB
    prob = cp.Problem(cp.Minimize(rho), [psd(F - eps * np.eye(n))])

    def read():
        def val(v):
            return np.zeros(N) if v is None else (np.asarray(v.value, float) if v.value is not None else np.full(N, np.nan))
        return {"lam": val(lam), "gam": val(gam), "s": val(s), "p": val(p)}

    return Built(prob, read, rho, [n])
