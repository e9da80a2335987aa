"""Floating-point-sound checks: proving a matrix inequality and repairing solver multipliers.

Positive-definiteness proof (Rump 2006 style, float64)
------------------------------------------------------
Let ``A`` be a symmetric float64 matrix and ``err >= ||A_exact - A||_2`` a bound on the error made
while *forming* ``A``.  With ``u = 2^-53``, ``g = (n+1)u/(1-(n+1)u)`` and ``t = g/(1-2g)``, choose
``c = 2 t tr+(A) + 2u max|a_ii| + 2 err + 1e-290`` (``tr+`` = sum of positive diagonal entries).  If the
floating-point Cholesky factorisation of ``fl(A - cI)`` succeeds, then by Demmel's backward error
bound ``R^T R = fl(A - cI) + E`` with ``||E||_2 <= t tr(A - cI)``, so
``lambda_min(A_exact) >= c - t tr+(A) - u(max|a_ii| + c) - err > 0``.  :func:`prove_pd` returns True
only in that case; it never returns True for a matrix with NaN/Inf.

Formation error of products is bounded with :func:`product_error`: ``|fl(A B) - A B| <= g_k |A||B|``
entrywise (``k`` = inner dimension), so ``||error||_2 <= g_k || |A||B| ||_inf`` for symmetric results.
"""

from __future__ import annotations

import numpy as np

U = 2.0 ** -53


def gamma(k: int) -> float:
    """gamma_k = k u / (1 - k u): the standard bound for k roundings."""
    return k * U / (1.0 - k * U)


def prove_pd(A: np.ndarray, err: float = 0.0) -> bool:
    """True only if the exact symmetric matrix within ``err`` (2-norm) of ``A`` is positive definite."""
    A = np.asarray(A, dtype=np.float64)
    if A.size == 0:
        return True
    if not np.all(np.isfinite(A)) or not np.isfinite(err):
        return False
    A = 0.5 * (A + A.T)  # symmetrising is exact up to one rounding per entry: folded into err below
    n = A.shape[0]
    d = np.diag(A)
    g = gamma(n + 1)
    t = g / (1.0 - 2.0 * g)
    err = err + 2 * U * float(np.abs(A).sum(axis=1).max())
    c = 2.0 * t * float(np.clip(d, 0, None).sum()) + 2.0 * U * float(np.abs(d).max()) + 2.0 * err + 1e-290
    B = A - c * np.eye(n)
    try:
        np.linalg.cholesky(B)
    except np.linalg.LinAlgError:
        return False
    return True


def product_error(*abs_factors: np.ndarray) -> float:
    """A 2-norm bound on the rounding error of the float64 product of the given factors (chained left to right).

    Uses ``|fl(A_1...A_r) - A_1...A_r| <= gamma_K |A_1|...|A_r|`` with ``K`` the sum of the inner
    dimensions, and ``||M||_2 <= ||M||_inf`` for the nonnegative symmetric bound matrix (``||M||_inf`` bounds
    the spectral radius of any matrix dominated entrywise by ``M``, hence its 2-norm when symmetric).
    """
    K = sum(f.shape[1] for f in abs_factors[:-1]) + 2
    M = np.abs(abs_factors[0])
    for f in abs_factors[1:]:
        M = M @ np.abs(f)
    if M.size == 0:
        return 0.0
    # the product of absolute values is itself computed with rounding: inflate by (1 + gamma_K)
    return gamma(K) * (1.0 + gamma(K)) * float(M.sum(axis=1).max()) * (1.0 + 1e-12)


def round_up(x: float) -> float:
    """The next float above x (so a computed value is an upper bound of itself plus one rounding)."""
    return float(np.nextafter(np.float64(x), np.inf))


def sqrt_up(x: float) -> float:
    """An upper bound of sqrt(x) in float64 (numpy sqrt is correctly rounded; step one ulp up)."""
    return round_up(float(np.sqrt(np.float64(max(x, 0.0)))))


def certify_lmax(Q: np.ndarray, err: float = 0.0, tries: int = 8) -> float | None:
    """A float ``rho`` with ``rho I - Q_exact > 0`` proven (``||Q_exact - Q|| <= err``), or None."""
    Q = 0.5 * (Q + Q.T)
    if not np.all(np.isfinite(Q)):
        return None
    try:
        lam = float(np.linalg.eigvalsh(Q)[-1])
    except np.linalg.LinAlgError:  # no convergence (extreme scales): no proof, never a raw exception
        return None
    scale = max(abs(lam), float(np.abs(Q).max()), 1e-300)
    bump = 1e-12
    n = Q.shape[0]
    for _ in range(tries):
        rho = lam + bump * scale + 2 * err
        if prove_pd(rho * np.eye(n) - Q, err):
            return rho
        bump *= 100
    return None


# ----------------------------------------------------------------------------- chain certificates
# Every chain certificate runs *backward* from the output with "storage" matrices Q_k (quadratic forms
# on the state increments): stage k proves  dx_k^T Q_k dx_k <= dx_{k-1}^T Q_{k-1} dx_{k-1}  for every
# pair of trajectories, using the layer's quadratic constraint with the (repaired) multipliers.
# Q_{k-1} is *recomputed* as the smallest matrix the multipliers allow (Schur complement), plus a tiny
# slack, and each stage inequality is proven with prove_pd.  The input end gives rho (l2) or tau (l_inf).


def _sym(M):
    return 0.5 * (M + M.T)


def _add_diag(M, e):
    return M + e * np.eye(M.shape[0])


def sector_stage(Q: np.ndarray, blk, lam: np.ndarray, rel_slack: float = 1e-9):
    """One lifted/slope-restricted stage: returns (Q_prev, lam_used) with the stage LMI proven, or None.

    Stage inequality (x = dx_{k-1}, psi = dpsi_k, u = C x, x_k = D x + G psi; for each entry i the
    incremental sector QC  q_i = 2 lam_i (dpsi_i - alpha_i du_i)(beta_i du_i - dpsi_i) >= 0):
        x^T Q_prev x - (Dx + G psi)^T Q (Dx + G psi) - sum_i q_i >= 0   for all (x, psi).
    Its matrix is Z = [[Q_prev - D^T Q D + 2 C^T L_ab C, -H], [-H^T, S]] with L_ab = diag(lam alpha beta),
    H = D^T Q G + C^T diag(lam (alpha+beta)), S = 2 diag(lam) - G^T Q G.  The smallest Q_prev is
    D^T Q D - 2 C^T L_ab C + H S^{-1} H^T (needs S > 0).
    """
    C, D, G, al, be = blk
    m = D.shape[1]
    if C.shape[0] == 0:
        M = _sym(D.T @ Q @ D)
        err = product_error(D.T, Q, D)
        Qp = _add_diag(M, 2 * err + 4 * U * float(np.abs(M).sum(1).max()) + 1e-300)
        return Qp, lam
    lam = np.where(np.isfinite(lam), np.maximum(lam, 0.0), np.nan)
    if not np.all(np.isfinite(lam)):
        return None
    lab, lapb = lam * al * be, lam * (al + be)
    DQ = D.T @ Q
    GQG = G.T @ Q @ G
    for _ in range(6):
        S = _sym(2.0 * np.diag(lam) - GQG)
        try:
            Lc = np.linalg.cholesky(S)
            break
        except np.linalg.LinAlgError:
            # repair: lift the multipliers until S > 0 (keeps the QC valid: lam >= 0)
            ev = np.linalg.eigvalsh(S)[0]
            lam = lam * 1.01 + (abs(ev) + 1e-12 * max(1.0, np.abs(GQG).max()))
            lab, lapb = lam * al * be, lam * (al + be)
    else:
        return None
    H = DQ @ G + C.T * lapb[None, :]
    X = np.linalg.solve(Lc, H.T)
    base = _sym(DQ @ D - 2.0 * (C.T * lab[None, :]) @ C)
    Qmin = _sym(base + X.T @ X)
    err = (product_error(D.T, Q, D) + 2 * product_error(C.T, np.diag(lab), C)
           + 2 * product_error(D.T, Q, G) + 2 * product_error(C.T, np.diag(lapb))
           + product_error(G.T, Q, G) + 4 * U * (float(np.abs(np.diag(lam)).max()) + 1.0))
    scale = max(float(np.abs(Qmin).sum(1).max()), 1e-300)
    big = max(scale, float(np.abs(base).sum(1).max()), float(np.abs(S).sum(1).max()),
              float(np.abs(H).sum(1).max()) if H.size else 0.0)
    eta = rel_slack * scale
    for _ in range(6):
        Qp = _add_diag(Qmin, eta)
        Z = np.block([[Qp - base, -H], [-H.T, S]])
        if prove_pd(Z, err + 8 * U * big):
            return Qp, lam
        eta *= 100.0
    return None


def _group_matrix(n: int, g: int, layout: str) -> np.ndarray:
    """(n, N) indicator of the groups: consecutive groups of g, or MaxMin 'halves' pairs (i, i+n/2)."""
    N = n // g
    M = np.zeros((n, N))
    if layout == "halves":
        M[np.arange(N), np.arange(N)] = 1.0
        M[np.arange(N) + N, np.arange(N)] = 1.0
    else:
        M[np.arange(n), np.arange(n) // g] = 1.0
    return M


def nsr_T(lam: np.ndarray, gam: np.ndarray, Mg: np.ndarray) -> np.ndarray:
    """T = blkdiag_j(lam_j I + gam_j 1 1^T) in the permuted group layout given by the indicator Mg."""
    return np.diag(Mg @ lam) + (Mg * gam[None, :]) @ Mg.T


def nsr_stage(Q: np.ndarray, W: np.ndarray, Mg: np.ndarray, lam: np.ndarray, gam: np.ndarray,
              rel_slack: float = 1e-9):
    """One NSR stage (Pauli et al. 2024, S = P = 0): repair T >= Q, then Q_prev = W^T T W (+ rounding).

    QC: for T = blkdiag(lam_j I + gam_j 11^T), lam >= 0, gam free, dz^T T dz - dphi^T T dphi >= 0
    (each group map is 1-Lipschitz and sum-preserving).  Stage: dx^T Q_prev dx >= dphi^T Q dphi
    holds if T - Q >= 0 and Q_prev >= W^T T W.  Repair (backward, keeps the structure): lam += delta.
    The float T has off-diagonals exactly gam and diagonals fl(lam + gam); it equals lam~ I + gam 11^T
    with lam~ >= 0 because lam >= 4u|gam| is enforced.
    """
    if not (np.all(np.isfinite(lam)) and np.all(np.isfinite(gam))):
        return None
    lam = np.maximum(lam, 4 * U * np.abs(gam) + 1e-300)
    T = nsr_T(lam, gam, Mg)
    scale = max(float(np.abs(T).sum(1).max()), float(np.abs(Q).sum(1).max()), 1e-300)
    d = np.linalg.eigvalsh(_sym(T - Q))[0]
    delta = max(0.0, -d) + rel_slack * scale
    for _ in range(6):
        lam2 = lam + delta
        T = nsr_T(lam2, gam, Mg)
        if prove_pd(T - Q, 4 * U * scale):
            break
        delta *= 100.0
    else:
        return None
    M = _sym(W.T @ T @ W)
    err = product_error(W.T, T, W)
    Qp = _add_diag(M, 2 * err + 4 * U * float(np.abs(M).sum(1).max()) + 1e-300)
    return Qp, (lam2, gam)


def output_storage_l2(W_out: np.ndarray) -> np.ndarray:
    """Q_L with Q_L >= W_out^T W_out exactly (float product plus its rounding bound on the diagonal)."""
    M = _sym(W_out.T @ W_out)
    return _add_diag(M, 2 * product_error(W_out.T, W_out) + 4 * U * float(np.abs(M).sum(1).max()) + 1e-300)


def finish_l2(Q0: np.ndarray) -> float | None:
    """rho with rho I - Q0 proven > 0 (so ||dy||^2 <= rho ||dx||^2); the l2 bound is sqrt_up(rho)."""
    return certify_lmax(Q0)


def finish_linf(Q0: np.ndarray, tau: np.ndarray, QL: np.ndarray, w: np.ndarray):
    """Repair tau (diag(tau) >= Q0 proven) and find rho with [[QL, w^T], [w, 2 rho - 1^T tau]] proven > 0.

    Then |w^T dx_L| <= rho ||dx_0||_inf (GeoLIP/Pauli l_inf chain, see reference).  Returns (rho, tau) or None.
    """
    tau = np.where(np.isfinite(tau), np.maximum(tau, 0.0), np.nan)
    if not np.all(np.isfinite(tau)):
        return None
    scale = max(float(np.abs(Q0).sum(1).max()), float(tau.max(initial=0.0)), 1e-300)
    d = np.linalg.eigvalsh(_sym(np.diag(tau) - Q0))[0]
    delta = max(0.0, -d) + 1e-9 * scale
    for _ in range(6):
        t2 = tau + delta
        if prove_pd(np.diag(t2) - Q0, 4 * U * scale):
            break
        delta *= 100
    else:
        return None
    try:
        Lc = np.linalg.cholesky(_sym(QL))
    except np.linalg.LinAlgError:
        return None
    y = np.linalg.solve(Lc, w)
    base = 0.5 * (float(y @ y) + float(t2.sum()))
    n = QL.shape[0]
    bump = 1e-10
    for _ in range(8):
        rho = base * (1 + bump) + 1e-300
        Z = np.zeros((n + 1, n + 1))
        Z[:n, :n] = _sym(QL)
        Z[:n, n] = Z[n, :n] = w
        Z[n, n] = 2 * rho - float(t2.sum())
        err = gamma(n + 8) * (float(t2.sum()) + abs(rho)) + 8 * U * float(np.abs(QL).sum(1).max())
        if prove_pd(Z, err):
            return round_up(rho), t2
        bump *= 100
    return None


def certify_input_block(K: np.ndarray, nin: int, err: float) -> float | None:
    """For F(rho) = blkdiag(rho I_nin, 0) - K (K symmetric, ||K_exact - K|| <= err): a rho with
    F(rho) proven > 0.  Exact minimiser for fixed K: lambda_max(K00 + K01 (-K11)^{-1} K10) (Schur)."""
    K = _sym(K)
    if not np.all(np.isfinite(K)):
        return None
    K00, K01, K11 = K[:nin, :nin], K[:nin, nin:], K[nin:, nin:]
    try:
        L = np.linalg.cholesky(-K11) if K11.size else None
    except np.linalg.LinAlgError:
        return None
    Y = np.linalg.solve(L, K01.T) if L is not None else np.zeros((0, nin))
    base = float(np.linalg.eigvalsh(_sym(K00 + Y.T @ Y))[-1])
    scale = max(abs(base), float(np.abs(K).sum(1).max()), 1e-300)
    bump = 1e-10
    n = K.shape[0]
    for _ in range(8):
        rho = base + bump * scale
        F = -K.copy()
        F[:nin, :nin] += rho * np.eye(nin)
        if prove_pd(F, err + 4 * U * scale):
            return round_up(rho)
        bump *= 100
    return None


def certify_residual_nsr(Ws, Mg, mult) -> float | None:
    """Certified rho for the residual NSR LMI from (repaired) multipliers; see formulations.residual_nsr."""
    from .formulations.residual_nsr import qc_matrix, residual_matrices
    lam, gam, s, p = (np.asarray(mult[k], float) for k in ("lam", "gam", "s", "p"))
    if not all(np.all(np.isfinite(v)) for v in (lam, gam, s, p)):
        return None
    # lam >= 0 with room for the rounding of the diagonal entries lam + gam - 2 s etc.
    lam = np.maximum(lam, 16 * U * (np.abs(gam) + np.abs(s) + np.abs(p)) + 1e-300)
    A, B, O = residual_matrices(Ws)
    AB = np.vstack([A, B])
    X = qc_matrix(Mg, lam, gam, s, p)
    Xe = 16 * U * np.abs(X)  # entrywise bound of the rounding in forming X (each entry <= 4 ops)
    K = O.T @ O + AB.T @ X @ AB
    err = product_error(AB.T, X, AB) + float((np.abs(AB).T @ Xe @ np.abs(AB)).sum(1).max()) * (1 + 1e-10)
    nx = Ws[0].shape[0]
    for _ in range(6):
        rho = certify_input_block(K, nx, err)
        if rho is not None:
            mult["lam"] = lam
            return rho
        lam = lam * 1.001 + 1e-9 * max(1.0, float(np.abs(lam).max()))  # repair: strengthen the 1-Lipschitz term
        X = qc_matrix(Mg, lam, gam, s, p)
        K = O.T @ O + AB.T @ X @ AB
    return None
