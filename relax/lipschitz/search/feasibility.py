"""LP feasibility of branch-and-bound domains (HiGHS via scipy): relaxed ReLU/LeakyReLU domains, exact leaves.

A domain fixes the sign of some neurons' pre-activations.  Its *relaxed* feasible set is

    x in box;  z_k = W_k a_{k-1} + b_k,  l_k <= z_k <= u_k;
    a_k >= z_k,  a_k >= slope_off z_k,  a_k <= s_u z_k + t_u   (triangle relaxation on [l_k, u_k])

with ``[l_k, u_k]`` the domain's sound pre-activation bounds (split neurons clamped to their side
of zero, which makes their relaxation exact).  It contains every input (with its activations) that
satisfies the splits, so an *infeasible* LP proves the domain empty -- it is pruned.  For a leaf
(every neuron fixed) the LP is exact; :func:`leaf_margin` also returns an interior point, and
reports a numerical failure as margin 0 (kept as feasible, no witness point).
HiGHS reports infeasibility with its own primal tolerance (1e-7); pruning only happens on a
definite "infeasible" status, never on a numerical failure.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import linprog
from scipy.sparse import csr_matrix, hstack, identity, vstack, diags

from ..bounds.chain import DenseChain


def domain_infeasible(chain: DenseChain, xl: np.ndarray, xu: np.ndarray, bounds: list[tuple[np.ndarray, np.ndarray]]
                      ) -> bool:
    """True when the relaxed domain set is empty (proven by HiGHS)."""
    n0 = xl.size
    sizes = [l.size for l, _ in bounds]
    # variable layout: x, then (z_k, a_k) per layer
    nvar = n0 + 2 * sum(sizes)
    lb = [xl]
    ub = [xu]
    eq_rows, eq_rhs, in_rows, in_lo, in_hi = [], [], [], [], []
    off = n0
    prev_off, prev_n = 0, n0
    for k, (l, u) in enumerate(bounds):
        n = l.size
        W = chain.weights[k].cpu().numpy()
        b = chain.biases[k].cpu().numpy()
        slope_off = float(chain.gates[k].d_off[0]) if chain.gates[k].d_off.numel() else 0.0
        zo, ao = off, off + n
        # z - W a_prev = b
        blocks = []
        row = np.zeros((n, nvar))
        row[:, zo:zo + n] = np.eye(n)
        row[:, prev_off:prev_off + prev_n] -= W
        eq_rows.append(csr_matrix(row)); eq_rhs.append(b)
        on, offm = l >= 0, u <= 0
        w = np.where(on | offm, 1.0, u - l)
        s_u = np.where(on, 1.0, np.where(offm, slope_off, (u - slope_off * l) / w))
        t_u = np.where(on | offm, 0.0, l * (slope_off - s_u))
        I = np.eye(n)
        r1 = np.zeros((n, nvar)); r1[:, ao:ao + n] = I; r1[:, zo:zo + n] = -I              # a - z >= 0
        r2 = np.zeros((n, nvar)); r2[:, ao:ao + n] = I; r2[:, zo:zo + n] = -slope_off * I  # a - s_off z >= 0
        r3 = np.zeros((n, nvar)); r3[:, ao:ao + n] = I; r3[:, zo:zo + n] = -np.diag(s_u)   # a - s_u z <= t_u
        in_rows += [csr_matrix(r1), csr_matrix(r2), csr_matrix(r3)]
        in_lo += [np.zeros(n), np.zeros(n), np.full(n, -np.inf)]
        in_hi += [np.full(n, np.inf), np.full(n, np.inf), t_u]
        amin = np.minimum(slope_off * l, 0.0) if slope_off > 0 else np.zeros(n)
        lb += [l, np.minimum(amin, np.maximum(l, 0))]
        ub += [u, np.maximum(u, slope_off * u)]
        prev_off, prev_n = ao, n
        off += 2 * n
    A_eq = vstack(eq_rows).tocsr()
    A_in = vstack(in_rows).tocsr()
    lo_in, hi_in = np.concatenate(in_lo), np.concatenate(in_hi)
    # linprog wants A_ub x <= b_ub: rows with finite hi as is, rows with finite lo negated
    fin_hi = np.isfinite(hi_in)
    fin_lo = np.isfinite(lo_in)
    A_ub = vstack([A_in[fin_hi], -A_in[fin_lo]]).tocsr()
    b_ub = np.concatenate([hi_in[fin_hi], -lo_in[fin_lo]])
    lbv, ubv = np.concatenate(lb), np.concatenate(ub)
    if (lbv > ubv).any():
        return True
    res = linprog(np.zeros(nvar), A_ub=A_ub, b_ub=b_ub, A_eq=A_eq, b_eq=np.concatenate(eq_rhs),
                  bounds=np.stack((lbv, ubv), 1), method="highs")
    return res.status == 2  # 2 = infeasible


def leaf_margin(chain: DenseChain, xl: np.ndarray, xu: np.ndarray, signs: list[np.ndarray]):
    """Max normalized margin ``t`` s.t. ``sign_i s_i(x) >= t ||grad s_i||`` on the box: (t, x) or (-inf, None).

    ``s`` are the switches of every activation (:mod:`.gates`: ``z`` for ReLU-type gates, ``S z`` for
    MaxMin/GroupSort(2)/Householder); with all signs fixed the network is affine on the region, layer by
    layer ``y = diag(d) z`` (ReLU-type: ``d`` = 1 or the negative slope) or ``y = (P + Q diag(1[sign > 0]) S) z``.
    """
    n0 = xl.size
    A_rows, b_rows = [], []
    M = np.eye(n0)
    c = np.zeros(n0)
    for k, s in enumerate(signs):
        gate = chain.gates[k]
        W = chain.weights[k].cpu().numpy()
        bk = chain.biases[k].cpu().numpy()
        Az, cz = W @ M, W @ c + bk  # z = Az x + cz
        S = gate.switch_matrix
        As, cs = (Az, cz) if S is None else (S.cpu().numpy() @ Az, S.cpu().numpy() @ cz)  # switches s = As x + cs
        nrm = np.linalg.norm(As, axis=1) + 1e-300
        A_rows.append(np.hstack((-s[:, None] * As, nrm[:, None])))
        b_rows.append(s * cs)
        if S is None:
            d = np.where(s > 0, 1.0, gate.d_off.cpu().numpy())
            M, c = d[:, None] * Az, d * cz
        else:
            L = gate.P.cpu().numpy() + gate.Q.cpu().numpy() @ ((s > 0)[:, None] * S.cpu().numpy())
            M, c = L @ Az, L @ cz
    A = np.vstack(A_rows)
    b = np.concatenate(b_rows)
    cost = np.zeros(n0 + 1)
    cost[-1] = -1.0
    bounds = [(float(l), float(u)) for l, u in zip(xl, xu)] + [(None, 1.0)]
    res = linprog(cost, A_ub=A, b_ub=b, bounds=bounds, method="highs")
    if res.status == 2:  # infeasible (cannot happen for a non-empty box: t is free below)
        return -math.inf, None
    if res.status != 0 or res.x is None:  # numerical trouble: never prune on it, no interior point either
        return 0.0, None
    return float(res.x[-1]), res.x[:-1]
