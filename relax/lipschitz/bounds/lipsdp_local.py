"""l2 local Lipschitz bounds by a *local* LipSDP-Neuron (per-neuron slope ranges from forward bounds).

For ``f(x) = W_L phi(... phi(W_0 x + b_0) ...)`` with element-wise activations, on the region every
hidden neuron i of layer k satisfies the incremental slope restriction
``(dphi - alpha_i dv)(beta_i dv - dphi) >= 0`` for any two inputs of the region, where
``[alpha_i, beta_i]`` contains every difference quotient of phi on its pre-activation interval
``[l_i, u_i]`` (forward bounds): ReLU ``[1, 1]`` if ``l > 0``, ``[0, 0]`` if ``u < 0``, else ``[0, 1]``;
LeakyReLU likewise with ``alpha``; tanh/sigmoid ``[min phi', max phi']`` on the interval (mean
value theorem).  Stable neurons with ``alpha = beta`` pin ``dphi = alpha dv`` exactly, which is why the
local SDP is much tighter than the global one (all slopes in ``[0, 1]``) and tends to the true
gradient norm as the region shrinks.

LipSDP-Neuron (Fazlyab et al. 2019, block-tridiagonal form of reference lipsdp.md §1.2) with
``Lam_k = diag(lambda_k) >= 0`` and the output row ``w = W_L^T c``: if

    -M = [[rho I + W_0^T D(2 a1 b1 l1) W_0,  -W_0^T D((a1+b1) l1),                       0, ...],
          [-D((a1+b1) l1) W_0,              2 Lam_1 + W_1^T D(2 a2 b2 l2) W_1,  -W_1^T D((a2+b2) l2), ...],
          ...,                                                   [..., 2 Lam_L - w w^T]]  >= 0

then ``|c^T f(x) - c^T f(y)| <= sqrt(rho) ||x - y||_2`` for x, y in the region, hence
``sup ||grad||_2 <= sqrt(rho)``.

Certification (reference lipsdp.md §5.2 item 1): the solver's multipliers are clipped to >= 0 and
``rho`` is recomputed *exactly* for them, ``rho* = lambda_max(K01 K11^{-1} K10 - K00)`` (Schur
complement on the input block; requires ``K11`` positive definite, checked by Cholesky), then
inflated by ``1e-7`` relative + ``1e-10`` and the full matrix ``-M(rho)`` is checked by a float64
Cholesky factorization.  If any check fails the bound is ``inf`` (never certified by accident).

Memory: the problem has one PSD cone of size ``N = n_0 + sum_k n_k`` and a dense ``(N^2, 1 + sum_k n_k)``
coefficient array; before anything is built, :func:`sdp.solve.memory_guard` (the estimate and refusal of
the global LipSDP, one model for both) refuses a solve that would not fit, with one line
(:class:`sdp.solve.SolverMemoryError`, a bad-input error: exit 2 on the command line).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from ....models.errors import UnsupportedOperationError

from .chain import DenseChain

SDP_OPS = ("relu", "leaky_relu", "tanh", "sigmoid")


def slope_ranges(chain: DenseChain, fb) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per-neuron [alpha, beta] from forward bounds (``fb`` None: global ranges)."""
    out = []
    for k, gate in enumerate(chain.gates):
        if gate.op not in SDP_OPS:
            raise UnsupportedOperationError(
                f"node {chain.acts[k].describe()}: the local LipSDP supports {', '.join(SDP_OPS)} activations")
        n = gate.n
        if fb is None:
            lo = torch.full((1, n), -math.inf, dtype=torch.float64, device=chain.weights[k].device)
            hi = torch.full((1, n), math.inf, dtype=torch.float64, device=chain.weights[k].device)
        else:
            lo, hi = fb[k]
        a, b = gate.derivative_range(lo, hi)
        out.append((a[0].cpu().numpy().astype(float), b[0].cpu().numpy().astype(float)))
    return out


def _assemble(W, slopes, lams, w_out, rho):
    """-M as a dense float64 matrix for fixed multipliers."""
    sizes = [W[0].shape[1]] + [Wk.shape[0] for Wk in W[:-1]]
    offs = np.cumsum([0] + sizes)
    N = offs[-1]
    K = np.zeros((N, N))
    K[:sizes[0], :sizes[0]] += rho * np.eye(sizes[0])
    L = len(lams)
    for k in range(L):
        a, b = slopes[k]
        lam = lams[k]
        Wk = W[k]  # maps block k -> neurons of layer k+1 (block k+1)
        i0, i1 = offs[k], offs[k + 1]
        j0, j1 = offs[k + 1], offs[k + 2]
        K[i0:i1, i0:i1] += Wk.T @ ((2 * a * b * lam)[:, None] * Wk)
        K[j0:j1, j0:j1] += np.diag(2 * lam)
        C = -((a + b) * lam)[:, None] * Wk
        K[j0:j1, i0:i1] += C
        K[i0:i1, j0:j1] += C.T
    jL = offs[L]
    K[jL:, jL:] -= np.outer(w_out, w_out)
    return K, sizes[0]


def certify_rho(W, slopes, lams, w_out) -> float:
    """Smallest certified ``rho`` for fixed multipliers (inf if the multipliers cannot certify)."""
    lams = [np.maximum(l, 0.0) for l in lams]
    K, n0 = _assemble(W, slopes, lams, w_out, 0.0)
    K00, K10, K11 = K[:n0, :n0], K[n0:, :n0], K[n0:, n0:]
    try:
        Lc = np.linalg.cholesky(K11)
    except np.linalg.LinAlgError:
        return math.inf
    Y = np.linalg.solve(Lc, K10)
    S = Y.T @ Y - K00
    rho = max(float(np.linalg.eigvalsh((S + S.T) / 2).max()), 0.0)
    rho = rho * (1 + 1e-7) + 1e-10
    Kf, _ = _assemble(W, slopes, lams, w_out, rho)
    try:
        np.linalg.cholesky(Kf)
    except np.linalg.LinAlgError:
        return math.inf
    return rho


def lipsdp_bound(chain: DenseChain, fb, seeds: torch.Tensor, solver: str = "CLARABEL") -> torch.Tensor:
    """Certified upper bounds of ``sup ||grad(c^T f)||_2`` per seed row (float64 tensor)."""
    W = [w.cpu().numpy() for w in chain.weights]
    L = chain.depth
    sizes = [W[0].shape[1]] + [Wk.shape[0] for Wk in W[:-1]]
    offs = np.cumsum([0] + sizes)
    N, nh = int(offs[-1]), int(sum(sizes[1:]))
    from ....sdp.solve import memory_guard
    memory_guard(solver, [N], extra_bytes=2 * 8 * N * N * (1 + nh),  # A (float64) and cvxpy's copy of it
                 advice="the local LipSDP has no first-order path: use method='crown' (or a smaller network)")
    import cvxpy as cp
    slopes = slope_ranges(chain, fb)
    # -M = rho E0 + sum_i lambda_i M_i - w w^T: one dense (N*N, 1 + nh) coefficient matrix
    A = np.zeros((N, N, 1 + nh))
    A[np.arange(sizes[0]), np.arange(sizes[0]), 0] = 1.0
    col = 1
    for k in range(L):
        a, b = slopes[k]
        Wk = W[k]
        i0, i1 = offs[k], offs[k + 1]
        for i in range(Wk.shape[0]):
            r = Wk[i]
            A[i0:i1, i0:i1, col] += 2 * a[i] * b[i] * np.outer(r, r)
            j = offs[k + 1] + i
            A[j, j, col] += 2.0
            A[j, i0:i1, col] -= (a[i] + b[i]) * r
            A[i0:i1, j, col] -= (a[i] + b[i]) * r
            col += 1
    A2 = A.reshape(N * N, 1 + nh)
    out = []
    for s in range(seeds.shape[0]):
        w_true = W[-1].T @ seeds[s].cpu().numpy()
        scale = float(np.linalg.norm(w_true)) or 1.0
        w_out = w_true / scale  # solve the scaled problem (rho and lambda scale by 1/scale^2)
        Cm = np.zeros((N, N))
        jL = offs[L]
        Cm[jL:, jL:] = np.outer(w_out, w_out)
        v = cp.Variable(1 + nh, nonneg=True)
        Mneg = cp.reshape(A2 @ v, (N, N), order="C") - Cm
        prob = cp.Problem(cp.Minimize(v[0]), [(Mneg + Mneg.T) / 2 >> 0])
        lam = [None] * L
        try:
            with warnings.catch_warnings():  # inaccurate solutions are caught by the certification below
                warnings.simplefilter("ignore")
                prob.solve(solver=solver)
        except Exception:  # noqa: BLE001 - a solver failure means "no certificate"
            out.append(math.inf)
            continue
        if v.value is None:
            out.append(math.inf)
            continue
        lam_all = np.asarray(v.value[1:], dtype=float) * scale ** 2
        lam = np.split(lam_all, np.cumsum(sizes[1:])[:-1])
        r = certify_rho(W, slopes, lam, w_true)
        out.append(math.sqrt(r) if math.isfinite(r) else math.inf)
    return torch.tensor(out, dtype=torch.float64)
