"""Small-Gain Nash (SGN) algebra: SGN matrix, margin, Perron weights, band, step-size bounds.

Notation (Sharma, "Small-Gain Nash", 2025; formulas as in its public code, proofs re-derived).  Player i
has curvature ``μ_i`` (``λ_min(sym ∂F_i/∂x_i) ≥ μ_i`` on the region) and couplings ``L_ij``
(``‖∂F_i/∂x_j‖₂ ≤ L_ij``).  For block weights ``w > 0`` and the metric ``‖x‖²_M = Σ w_i ‖x_i‖²``:

* SGN matrix ``C(w)_ii = 2 w_i μ_i``, ``C(w)_ij = −(w_i L_ij + w_j L_ji)``; margin
  ``α*(w) = ½ λ_min(W^{-1/2} C(w) W^{-1/2})``.  Pointwise, ``uᵀ M J(x) u ≥ ½ ūᵀ C(w) ū ≥ α*(w) ‖u‖²_M``
  (``ū_i = ‖u_i‖``), so ``α*(w) > 0`` makes ``F`` α*-strongly monotone in ``‖·‖_M`` on the (convex) region.
* With ``K = diag(μ) − L`` (a Z-matrix) ``C(w) = WK + KᵀW``; a certificate exists for some ``w`` iff
  ``K`` is a nonsingular M-matrix iff the gain matrix ``Γ = diag(μ)^{-1} L`` has spectral radius < 1
  (all ``μ_i > 0``).  Then ``sup_w α*(w) = λ_min(K)`` (real, Perron root of K) attained at
  ``w_i = u_i/v_i`` (left/right Perron vectors of K).
* Flow ``ẋ = −F(x)``: ``‖x(t) − y(t)‖_M ≤ e^{−α t}‖x(0) − y(0)‖_M``.
* Euler ``x⁺ = x − hF(x)``: factor ``q(h) = √(1 − 2hα + h²β²)``, contraction iff ``0 < h < 2α/β²``; best
  ``h* = α/β²`` with ``q* = √(1 − α²/β²)``.  ``β`` bounds ``‖M^{1/2} J(x) M^{-1/2}‖₂`` on the region.
* RK4 (proved here, not the linear-stability guideline ``2.5/β``): with averaged Jacobians ``J_1..J_4``
  (each α-monotone and β-bounded in ``‖·‖_M``) the RK4 map's difference operator is
  ``I − hĀ + (h²/6)(J₂J₁+J₃J₂+J₄J₃) − (h³/12)(J₃J₂J₁+J₄J₃J₂) + (h⁴/24)J₄J₃J₂J₁`` with ``Ā`` a convex
  combination of the ``J_k``, so ``q_RK4(h) ≤ √(1 − 2hα + h²β²) + (hβ)²/2 + (hβ)³/6 + (hβ)⁴/24``.
  Valid while all stage points stay in the region.
* Two players, ``r = w₂/w₁``: ``C(w) − 2αW ≻ 0`` iff ``r ∈ (r₋, r₊)``,
  ``r± = [2P − L₁₂L₂₁ ± 2√(P(P − L₁₂L₂₁))]/L₂₁²`` with ``P = (μ₁ − α)(μ₂ − α)``.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ...models.errors import InvalidArgumentError


def _check(mu: np.ndarray, L: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu = np.asarray(mu, dtype=np.float64).reshape(-1)
    L = np.array(L, dtype=np.float64)
    n = mu.size
    if L.shape != (n, n):
        raise InvalidArgumentError(f"coupling matrix must be {n}x{n}, got {L.shape}")
    if (L < 0).any() or not np.isfinite(L).all() or not np.isfinite(mu).all():
        raise InvalidArgumentError("couplings must be finite and nonnegative, curvatures finite")
    np.fill_diagonal(L, 0.0)
    return mu, L


def sgn_matrix(mu, L, w) -> np.ndarray:
    """``C(w)``: diagonal ``2 w_i μ_i``, off-diagonal ``−(w_i L_ij + w_j L_ji)``."""
    mu, L = _check(mu, L)
    w = np.asarray(w, dtype=np.float64)
    WL = w[:, None] * L
    C = -(WL + WL.T)
    np.fill_diagonal(C, 2 * w * mu)
    return C


def sgn_margin(mu, L, w) -> float:
    """``α*(w) = ½ λ_min(W^{-1/2} C(w) W^{-1/2})``."""
    w = np.asarray(w, dtype=np.float64)
    if (w <= 0).any():
        raise InvalidArgumentError("SGN weights must be positive")
    d = 1.0 / np.sqrt(w)
    return 0.5 * float(np.linalg.eigvalsh(d[:, None] * sgn_matrix(mu, L, w) * d[None, :]).min())


def gain_spectral_radius(mu, L) -> float:
    """``ρ(diag(μ)^{-1} L)``; ``inf`` if some ``μ_i ≤ 0`` (no own-block curvature to absorb couplings)."""
    mu, L = _check(mu, L)
    if (mu <= 0).any():
        return math.inf
    return float(np.abs(np.linalg.eigvals(L / mu[:, None])).max()) if mu.size > 1 else 0.0


def perron_weights(mu, L) -> tuple[np.ndarray, float]:
    """Best weights ``w = u/v`` (normalized to sum 1) and ``λ_min(K)``, ``K = diag(μ) − L``.

    Reducible coupling patterns (zeros) have Perron vectors with zero entries; the vectors are then taken
    from ``L + ε 11ᵀ`` (ε = 1e-9·min μ).  If the resulting ``α*(w)`` (always re-evaluated with the true
    ``L``) falls short of ``λ_min(K)`` -- the supremum may need extreme weights -- a Nelder-Mead search
    over ``log w`` refines it; the returned weights are the best found, and the caller certifies
    ``α*(w)`` for exactly those weights.
    """
    mu, L = _check(mu, L)
    n = mu.size
    lam = float(np.min(np.linalg.eigvals(np.diag(mu) - L).real)) if n > 1 else float(mu[0])
    if n == 1:
        return np.ones(1), lam
    eps = 1e-9 * max(float(np.abs(mu).min()), 1e-300)
    Lp = L + eps * (np.ones((n, n)) - np.eye(n))
    K = np.diag(mu) - Lp
    s = float(np.abs(np.diag(K)).max() + np.abs(Lp).sum(1).max())
    Pm = s * np.eye(n) - K  # nonnegative; its Perron vectors are those of K for lambda_min
    ev, V = np.linalg.eig(Pm)
    v = np.abs(V[:, int(np.argmax(ev.real))].real)
    evl, U = np.linalg.eig(Pm.T)
    u = np.abs(U[:, int(np.argmax(evl.real))].real)
    cands = [np.ones(n)]
    if (v > 0).all() and (u > 0).all():
        cands.append(u / v)
    best = max(cands, key=lambda w: _margin_safe(mu, L, w))
    if _margin_safe(mu, L, best) < lam - 1e-9 * (1.0 + abs(lam)):
        from scipy.optimize import minimize
        for start in list(cands):
            res = minimize(lambda lw: -_margin_safe(mu, L, np.exp(lw - lw.max())), np.log(start),
                           method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-13, "maxiter": 4000 * n})
            w = np.exp(res.x - res.x.max())
            if _margin_safe(mu, L, w) > _margin_safe(mu, L, best):
                best = w
    return best / best.sum(), lam


def _margin_safe(mu, L, w) -> float:
    w = np.asarray(w, dtype=np.float64)
    if not np.isfinite(w).all() or (w <= 0).any():
        return -math.inf
    return sgn_margin(mu, L, w)


def two_player_band(mu1: float, mu2: float, L12: float, L21: float, alpha: float = 0.0):
    """Interval ``(r₋, r₊)`` of weight ratios ``r = w₂/w₁`` with margin > ``alpha``, or None if empty.

    ``L21 = 0``: the band is ``(L12²/(4P), ∞)``; ``L12 = 0``: ``(0, 4P/L21²)``.
    """
    P = (mu1 - alpha) * (mu2 - alpha)
    if mu1 - alpha <= 0 or mu2 - alpha <= 0:
        return None
    D = P - L12 * L21
    if D <= 0:
        return None
    if L21 == 0:
        return (L12 ** 2 / (4 * P), math.inf)
    if L12 == 0:
        return (0.0, 4 * P / L21 ** 2)
    s = 2 * math.sqrt(P * D)
    return ((2 * P - L12 * L21 - s) / L21 ** 2, (2 * P - L12 * L21 + s) / L21 ** 2)


def beta_in_metric(J: np.ndarray, w, dims) -> float:
    """``‖M^{1/2} J M^{-1/2}‖₂`` for ``M = blockdiag(w_i I_{d_i})`` (J: (d, d) or a stack (n, d, d))."""
    sw = np.repeat(np.sqrt(np.asarray(w, dtype=np.float64)), dims)
    A = sw[:, None] * np.asarray(J) / sw[None, :]
    return float(np.linalg.norm(A, 2, axis=(-2, -1)).max()) if A.ndim == 3 else float(np.linalg.norm(A, 2))


def euler_bounds(alpha: float, beta: float) -> dict:
    """Euler step bound ``2α/β²``, best step ``α/β²`` and its factor ``√(1 − α²/β²)``."""
    if alpha <= 0 or beta <= 0:
        return {"h_max": 0.0, "h_opt": 0.0, "rate_opt": None}
    return {"h_max": 2 * alpha / beta ** 2, "h_opt": alpha / beta ** 2,
            "rate_opt": math.sqrt(max(0.0, 1 - (alpha / beta) ** 2))}


def euler_factor(h: float, alpha: float, beta: float) -> float:
    """``q(h) = √(1 − 2hα + h²β²)``."""
    return math.sqrt(max(0.0, 1 - 2 * h * alpha + (h * beta) ** 2))


def rk4_factor(h: float, alpha: float, beta: float) -> float:
    """Proved RK4 contraction factor bound ``√(1 − 2hα + h²β²) + (hβ)²/2 + (hβ)³/6 + (hβ)⁴/24``."""
    z = h * beta
    return euler_factor(h, alpha, beta) + z ** 2 / 2 + z ** 3 / 6 + z ** 4 / 24


def rk4_bounds(alpha: float, beta: float) -> dict:
    """Largest ``h`` with ``rk4_factor < 1`` on all of ``(0, h]`` and the best factor on a fine grid."""
    if alpha <= 0 or beta <= 0:
        return {"h_max": 0.0, "h_opt": 0.0, "rate_opt": None}
    hs = np.linspace(0, 2 * alpha / beta ** 2, 4001)[1:]
    q = np.array([rk4_factor(h, alpha, beta) for h in hs])
    bad = np.nonzero(q >= 1)[0]
    if bad.size == 0:
        hi = float(hs[-1])
    else:
        lo_i = bad[0]
        lo, hi = (float(hs[lo_i - 1]) if lo_i > 0 else 0.0), float(hs[lo_i])
        for _ in range(60):  # bisection on the first crossing
            mid = 0.5 * (lo + hi)
            if rk4_factor(mid, alpha, beta) < 1:
                lo = mid
            else:
                hi = mid
        hi = lo
    good = hs[q < 1]
    if good.size == 0 and hi <= 0:
        return {"h_max": 0.0, "h_opt": 0.0, "rate_opt": None}
    qs = [(rk4_factor(h, alpha, beta), h) for h in np.linspace(0, hi, 2001)[1:]]
    qbest, hbest = min(qs)
    return {"h_max": hi, "h_opt": float(hbest), "rate_opt": float(qbest)}


_EULER = (1.0, 1.0)
_RK4 = (1.0, 1.0, 1 / 2, 1 / 6, 1 / 24)


def _poly_op(B: np.ndarray, coeffs: Sequence[float], h: float) -> np.ndarray:
    Z = -h * B
    out = np.zeros_like(B)
    P = np.eye(B.shape[0])
    for k, c in enumerate(coeffs):
        if k:
            P = P @ Z
        out = out + c * P
    return out


def linear_step_bound(A: np.ndarray, w, dims, method: str, h_start: float, h_cap: float) -> float:
    """Largest ``H`` such that the Euler/RK4 map of the *linear* field ``F(x) = A x + c`` contracts in
    ``‖·‖_M`` for every ``h ∈ [h_start, H]`` (``h_start`` must already be covered by a proof).

    The difference operator is exactly ``P(−hB)`` with ``B = M^{1/2} A M^{-1/2}`` and ``P`` the method's
    stability polynomial; ``f(h) = ‖P(−hB)‖₂`` is computed at points ``h_k`` and, since
    ``‖d/dh P(−hB)‖ ≤ β P'(hβ)`` (``β = ‖B‖``, ``P'`` with absolute coefficients, increasing), the whole
    interval ``[h_k, h_k + δ]`` is covered when ``f(h_k) + δ β P'((h_k + δ) β) < 1``.  Steps are chosen
    adaptively; a relative float margin of 1e-12 is added to every computed norm.
    """
    coeffs = _EULER if method == "euler" else _RK4
    dcoef = [k * c for k, c in enumerate(coeffs)][1:]  # P'(z) coefficients (all positive)
    sw = np.repeat(np.sqrt(np.asarray(w, dtype=np.float64)), dims)
    B = sw[:, None] * np.asarray(A, dtype=np.float64) / sw[None, :]
    beta = float(np.linalg.norm(B, 2)) * (1 + 1e-12)
    D = lambda h: beta * sum(c * (h * beta) ** k for k, c in enumerate(dcoef))  # noqa: E731
    h = float(h_start)
    if h <= 0:
        return 0.0
    for _ in range(5000):
        if h >= h_cap:
            return h_cap
        f = float(np.linalg.norm(_poly_op(B, coeffs, h), 2)) * (1 + 1e-12) + 1e-15
        if f >= 1:
            break
        dmax = 2 * (1 - f) / D(h)
        delta = 0.999 * (1 - f) / D(min(h + dmax, h_cap))
        if delta < 1e-7 * max(h, 1e-300):
            break
        h = min(h + delta, h_cap)
    return h
