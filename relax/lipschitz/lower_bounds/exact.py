"""Exact local Lipschitz constant of a small ReLU chain network by mixed-integer programming.

LipMIP-style formulation (Jordan & Dimakis 2020), solved with HiGHS (``scipy.optimize.milp``):

* forward: ``z_k = W_{k-1} a_{k-1} + b``, ``a_k = relu(z_k)`` with one binary ``delta`` per unstable
  neuron (big-M from sound pre-activation bounds ``[l, u]``): ``a >= z, a >= 0, a <= z - l(1-delta),
  a <= u delta``, plus ``z >= l (1-delta)`` and ``z <= u delta`` so that ``delta = 1 <=> z >= 0``,
  ``delta = 0 <=> z <= 0`` (closed activation regions);
* backward: ``g_L = W_L^T c`` and ``h_k = delta_k * g_k`` linearized exactly with the bounds of
  ``g_k`` from the backward-graph bounds (``h <= U delta, h >= L delta, h <= g - L(1-delta),
  h >= g - U(1-delta)``), ``g_{k-1} = W_{k-1}^T h_k``;
* objective ``||grad||_1 = sum_i t_i`` with ``t_i <= g_i + 2M(1-s_i)``, ``t_i <= -g_i + 2M s_i``
  (l_inf input), or ``max_i +-grad_i`` as ``2 n_0`` linear MILPs (l1 input).

The optimum is ``max`` over closed activation regions meeting the box of the region's gradient
dual norm, which is the local Lipschitz constant whenever the network is in general position.  It is
a reference oracle for tiny networks (exponential time); ``status`` says whether HiGHS proved it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import Bounds, LinearConstraint, milp

from ....models.errors import UnsupportedOperationError

from ..bounds.backward import BackwardGraph
from ..bounds.chain import DenseChain, forward_bounds


@dataclass
class ExactResult:
    value: float  # best feasible objective (exact if optimal)
    dual_bound: float  # HiGHS upper bound on the optimum
    optimal: bool
    per_seed: list[float]
    seconds: float
    x: list[np.ndarray]


class _V:
    """A block of variable indices (hashable by identity)."""

    def __init__(self, idx):
        self.idx = idx
        self.size = idx.size

    def __getitem__(self, i):
        return self.idx[i]


class _LP:
    def __init__(self):
        self.n = 0
        self.lb, self.ub, self.integ = [], [], []
        self.rows, self.lo, self.hi = [], [], []

    def var(self, lb, ub, integer=False):
        lb, ub = np.atleast_1d(np.asarray(lb, float)), np.atleast_1d(np.asarray(ub, float))
        idx = _V(np.arange(self.n, self.n + lb.size))
        self.n += lb.size
        self.lb += list(lb); self.ub += list(ub); self.integ += [int(integer)] * lb.size
        return idx

    def con(self, coefs: dict, lo, hi):
        """sum_j coefs[idx_j] @ x[idx_j] in [lo, hi]; coefs: {idx array: matrix (m, len(idx))}."""
        m = np.atleast_2d(next(iter(coefs.values()))).shape[0]
        self.rows.append(coefs)
        self.lo.append(np.broadcast_to(np.asarray(lo, float), (m,)).copy())
        self.hi.append(np.broadcast_to(np.asarray(hi, float), (m,)).copy())

    def matrix(self):
        from scipy.sparse import lil_matrix
        m = sum(len(l) for l in self.lo)
        A = lil_matrix((m, self.n))
        r0 = 0
        for coefs, lo in zip(self.rows, self.lo):
            for idx, M in coefs.items():
                M = np.atleast_2d(M)
                for i in range(M.shape[0]):
                    nz = np.nonzero(M[i])[0]
                    for j in nz:
                        A[r0 + i, idx.idx[j]] += M[i, j]
            r0 += len(lo)
        return A.tocsr(), np.concatenate(self.lo), np.concatenate(self.hi)


def _solve_one(chain: DenseChain, xl, xu, fb, gb, seed, objective, time_limit):
    """One MILP: maximize ``objective`` ('l1' or ('coord', i, sign)) of the input gradient for ``seed``."""
    W = [w.cpu().numpy() for w in chain.weights]
    b = [v.cpu().numpy() for v in chain.biases]
    L = chain.depth
    P = _LP()
    x = P.var(xl, xu)
    prev = x
    deltas = []
    for k in range(L):
        l, u = fb[k][0][0].cpu().numpy(), fb[k][1][0].cpu().numpy()
        n = l.size
        z = P.var(l, u)
        P.con({z: np.eye(n), prev: -W[k]}, b[k], b[k])
        act_on, act_off = l > 0, u < 0
        unst = ~(act_on | act_off)
        dl = np.where(act_on, 1.0, 0.0)
        du = np.where(act_off, 0.0, 1.0)
        d = P.var(dl, du, integer=True)
        a = P.var(np.zeros(n), np.maximum(u, 0))
        I = np.eye(n)
        Lm, Um = np.minimum(l, 0), np.maximum(u, 0)
        P.con({a: I, z: -I}, 0, np.inf)                                    # a >= z
        P.con({a: I, z: -I, d: -np.diag(Lm)}, -np.inf, -Lm)                # a <= z - l(1-d)
        P.con({a: I, d: -np.diag(Um)}, -np.inf, 0)                          # a <= u d
        P.con({z: I, d: np.diag(Lm)}, Lm, np.inf)                           # z >= l(1-d)
        P.con({z: I, d: -np.diag(Um)}, -np.inf, 0)                          # z <= u d
        deltas.append(d)
        prev = a
    # backward
    g_const = seed @ W[L]  # (n_L,)
    gvar = None
    for k in reversed(range(L)):
        d = deltas[k]
        n = d.size
        I = np.eye(n)
        if gvar is None:  # h = delta * g_const (linear)
            h = P.var(np.minimum(g_const, 0), np.maximum(g_const, 0))
            P.con({h: I, d: -np.diag(g_const)}, 0, 0)
        else:
            gl, gu = gb[k]
            h = P.var(np.minimum(gl, 0), np.maximum(gu, 0))
            P.con({h: I, d: -np.diag(gu)}, -np.inf, 0)          # h <= U d
            P.con({h: I, d: -np.diag(gl)}, 0, np.inf)           # h >= L d
            P.con({h: I, gvar: -I, d: -np.diag(gl)}, -np.inf, -gl)  # h <= g - L(1-d)
            P.con({h: I, gvar: -I, d: -np.diag(gu)}, -gu, np.inf)   # h >= g - U(1-d)
        Wk = W[k]  # g_prev = W_k^T h
        gl_next, gu_next = gb[k - 1] if k > 0 else gb["in"]
        gvar = P.var(gl_next, gu_next)
        P.con({gvar: np.eye(Wk.shape[1]), h: -Wk.T}, 0, 0)
    n0 = W[0].shape[1]
    if objective == "l1":
        gl, gu = gb["in"]
        M = np.maximum(np.abs(gl), np.abs(gu))
        t = P.var(np.zeros(n0), M)
        s = P.var(np.zeros(n0), np.ones(n0), integer=True)
        I = np.eye(n0)
        P.con({t: I, gvar: -I, s: np.diag(2 * M)}, -np.inf, 2 * M)   # t <= g + 2M(1-s)
        P.con({t: I, gvar: I, s: -np.diag(2 * M)}, -np.inf, 0)       # t <= -g + 2M s
        c = np.zeros(P.n)
        c[t.idx] = -1.0
    else:
        _, i, sign = objective
        c = np.zeros(P.n)
        c[gvar[i]] = -float(sign)
    A, lo, hi = P.matrix()
    res = milp(c, constraints=LinearConstraint(A, lo, hi), integrality=np.array(P.integ),
               bounds=Bounds(np.array(P.lb), np.array(P.ub)),
               options={"time_limit": time_limit, "mip_rel_gap": 1e-9, "presolve": True})
    if res.x is None:
        return -math.inf, math.inf, False, None
    val = -res.fun
    dual = -getattr(res, "mip_dual_bound", -val) if getattr(res, "mip_dual_bound", None) is not None else val
    return val, max(dual, val), res.status == 0, res.x[x.idx]


def exact_local_lipschitz(net, input_set, c=None, norm="inf", time_limit: float = 60.0,
                          forward: str = "auto") -> ExactResult:
    """Exact ``max_seed sup_x ||grad(seed^T f)(x)||_q`` for a ReLU chain network (MILP, HiGHS)."""
    from ..bounds.common import _seeds, input_box
    from ..bounds.chain import dense_chain
    from ..norms import parse_norm
    from ..bounds.common import derivative_ranges
    norm = parse_norm(norm)
    if norm == "2":
        raise UnsupportedOperationError("the exact MILP oracle supports l_inf and l1 input norms only")
    t0 = time.perf_counter()
    net64 = net.to(dtype=torch.float64)
    chain = dense_chain(net64)
    for node in chain.acts:
        if node.op != "relu":
            raise UnsupportedOperationError(f"node {node.describe()}: the exact MILP oracle supports ReLU only")
    xl, xu = input_box(net64, input_set)
    seeds = _seeds(chain, c)
    fb, _ = forward_bounds(chain, xl[None], xu[None], forward)
    # widen big-M bounds slightly: they must contain every feasible value (rounding of the LP)
    fb = [(l - 1e-9 * (1 + l.abs()), u + 1e-9 * (1 + u.abs())) for l, u in fb]
    per, duals, xs, opt = [], [], [], True
    for s in range(seeds.shape[0]):
        seed = seeds[s:s + 1]
        bg = BackwardGraph(chain, seed, derivative_ranges(chain, fb, 1), "crown")
        bb = bg.run()
        gb = {}
        for k in range(chain.depth):
            # bounds on g_k (input of gate k, q = g for ReLU)
            ql, qu = bb.q_bounds[k]
            gb[k] = (ql[0].cpu().numpy() - 1e-9 * (1 + ql[0].abs().cpu().numpy()),
                     qu[0].cpu().numpy() + 1e-9 * (1 + qu[0].abs().cpu().numpy()))
        gl, gu = bb.grad_lower[0].cpu().numpy(), bb.grad_upper[0].cpu().numpy()
        gb["in"] = (gl - 1e-9 * (1 + np.abs(gl)), gu + 1e-9 * (1 + np.abs(gu)))
        seed_np = seed[0].cpu().numpy()
        remaining = max(1.0, time_limit - (time.perf_counter() - t0))
        if norm == "inf":
            v, d, ok, xv = _solve_one(chain, xl.cpu().numpy(), xu.cpu().numpy(), fb, gb, seed_np, "l1", remaining)
        else:
            v, d, ok, xv = -math.inf, -math.inf, True, None
            for i in range(chain.in_dim):
                for sg in (1.0, -1.0):
                    vi, di, oki, xi = _solve_one(chain, xl.cpu().numpy(), xu.cpu().numpy(), fb, gb, seed_np,
                                                 ("coord", i, sg), remaining)
                    if vi > v:
                        v, xv = vi, xi
                    d = max(d, di)
                    ok = ok and oki
        per.append(v); duals.append(d); xs.append(xv); opt = opt and ok
    return ExactResult(max(per), max(duals), opt, per, time.perf_counter() - t0, xs)
