"""Certified matrix-norm-product (MP) bounds, the fallback every SDP value is compared with.

* l2:  L <= prod_k Lip(phi_k) ||W_k||_2 * ||W_out||_2 (feed-forward; Lip(phi) = 1 for ReLU, leaky ReLU
  with |slope| <= 1, MaxMin, GroupSort, identity; a Householder layer with stored rows v (it computes
  z - 2 v v^T z, whatever ||v||) has Lip = max_j max(1, |1 - 2 ||v_j||^2|), bounded above with its
  rounding by :func:`householder_lip_up`); a residual block x + W2 phi(W x) contributes
  (1 + ||W2||_2 Lip(phi) ||W||_2).
* l_inf (scalar output w):  L_inf <= ||w^T W_out||_1 prod_k ||W_k||_inf with ||W||_inf the largest
  row abs-sum; valid when every activation is 1-Lipschitz in l_inf (ReLU, leaky ReLU, MaxMin,
  GroupSort, identity -- NOT Householder, a reflection can expand the l_inf norm); residual blocks
  contribute (1 + ||W2||_inf ||W||_inf).

Guarantee: the returned float is >= the exact product.  ||W||_2 is bounded by :func:`sdp.verify.certify_lmax`
on the Gram matrix (float64 proof including the product's rounding and the absolute error of underflowing
products), row sums are inflated by gamma_{n+1}, and every multiplication is rounded up by one ulp (float
products are correctly rounded).

Weights of any scale (e.g. entries 1e160 and 1e-160 in one matrix, whose Gram matrix overflows float64):
each factor is computed as ``m * 2^e`` -- the matrix is divided by the power of two ``2^e`` of its largest
entry (exact but for entries that underflow: each such entry moves by at most 2^-1075, so the norm by at
most sqrt(#entries) 2^-1075 (Frobenius), which is added) -- and the product is carried as a mantissa in
[1/2, 1) rounded up after every multiplication and an exact integer exponent, scaled to a float only at
the end (:func:`sdp.structure.scale_up`, inf only when the product itself exceeds float64).
"""

from __future__ import annotations

import math

import numpy as np

from ..models.errors import InvalidArgumentError, UnsupportedOperationError

from . import verify as V
from .structure import LayerList

L2_OK = ("relu", "leaky_relu", "maxmin", "groupsort", "householder", "identity")
LINF_OK = ("relu", "leaky_relu", "maxmin", "groupsort", "identity")


TINY = 2.0 ** -1074   # the smallest subnormal: bounds the absolute error of one underflowing operation


def norm2_up(W: np.ndarray) -> float:
    """Proven upper bound of ||W||_2 (0 for an empty matrix, inf if the proof fails or the Gram matrix
    overflows; :func:`norm2_up_scaled` for weights of any scale)."""
    if W.size == 0 or not np.any(W):
        return 0.0
    a, b = (W, W.T) if W.shape[0] <= W.shape[1] else (W.T, W)
    with np.errstate(over="ignore", under="ignore"):
        G = a @ b
    # product_error is relative (gamma |A||B|); underflowing products add up to TINY each, k per entry
    r = V.certify_lmax(G, V.product_error(a, b) + G.shape[0] * a.shape[1] * TINY)
    return math.inf if r is None else V.sqrt_up(r)


def norminf_up(W: np.ndarray) -> float:
    """Proven upper bound of ||W||_inf = max_i sum_j |W_ij|."""
    if W.size == 0:
        return 0.0
    s = float(np.abs(W).sum(axis=1).max())
    return V.round_up(s * (1.0 + V.gamma(W.shape[1] + 1)) + W.shape[1] * TINY)


def _mul(a: float, b: float) -> float:
    return V.round_up(a * b)


# ----------------------------------------------------------------------------- scaled numbers m * 2^e
def _pow2_scale(W: np.ndarray) -> tuple[np.ndarray, int, float]:
    """``(Ws, e, slack)``: ``Ws = fl(W / 2^e)`` with 2^e the power of two of the largest |entry| (so
    |Ws| < 1), and ``slack`` >= ||W / 2^e - Ws||_F (0 when no entry underflowed: the division is exact)."""
    amax = float(np.abs(W).max()) if W.size else 0.0
    if amax == 0.0 or not math.isfinite(amax):
        return W, 0, 0.0
    e = math.frexp(amax)[1]
    Ws = np.ldexp(W, -e)
    exact = bool(np.array_equal(np.ldexp(Ws, e), W))
    return Ws, e, 0.0 if exact else V.round_up(math.sqrt(W.size) * TINY * 2)


def _norm_scaled(W: np.ndarray, norm) -> tuple[float, int]:
    """``(m, e)`` with ||W||_{2 or inf} <= m 2^e, proven; any finite W (no overflow)."""
    Ws, e, slack = _pow2_scale(W)
    m = norm2_up(Ws) if norm == 2 else norminf_up(Ws)
    return (V.round_up(m + slack) if slack else m), e


def _normalize(m: float, e: int) -> tuple[float, int]:
    """The same number with the mantissa in [1/2, 1) (exact: only the exponent moves)."""
    if m == 0.0 or not math.isfinite(m):
        return m, 0 if m == 0.0 else e
    f, k = math.frexp(m)
    return f, e + k


def _mul_scaled(x: tuple[float, int], y: tuple[float, int]) -> tuple[float, int]:
    """An upper bound of x * y for nonnegative scaled numbers (mantissas in [1/2, 1): the float product
    never over- or underflows, one ulp up covers its rounding)."""
    (a, ea), (b, eb) = _normalize(*x), _normalize(*y)
    if a == 0.0 or b == 0.0:
        return 0.0, 0
    return _normalize(V.round_up(a * b), ea + eb)


def _one_plus_scaled(x: tuple[float, int]) -> tuple[float, int]:
    """An upper bound of 1 + x (x >= 0 scaled)."""
    m, e = _normalize(*x)
    if m == 0.0:
        return 0.5, 1
    if e <= 1000:
        return _normalize(V.round_up(1.0 + math.ldexp(m, e)) if e > -1000 else V.round_up(1.0 + 2.0 ** -900), 0)
    return _normalize(V.round_up(m), e)  # 1 + x <= x (1 + 2^-999) <= nextafter(m) 2^e for m in [1/2, 1)


def householder_lip_up_scaled(v: np.ndarray) -> tuple[float, int]:
    """:func:`householder_lip_up` as ``(m, e)``, also when sum v^2 overflows float64 (then the constant
    2 ||v||^2 - 1 < 2 ||v||^2 is bounded from v / 2^e)."""
    v = np.asarray(v, dtype=np.float64)
    with np.errstate(over="ignore"):
        s = float((v * v).sum(1).max()) if v.size else 0.0
    if math.isfinite(s):
        return _normalize(householder_lip_up(v), 0)
    vs, e, _ = _pow2_scale(v)  # only entries >= 2^(e-1) matter here; the underflow of tiny ones only lowers s
    ss = float((vs * vs).sum(1).max()) + vs.shape[1] * TINY
    return _normalize(V.round_up(2.0 * V.round_up(ss * (1.0 + V.gamma(vs.shape[1] + 2)))), 2 * e)


def householder_lip_up(v: np.ndarray) -> float:
    """Upper bound of the l2 Lipschitz constant max_j max(1, |1 - 2 ||v_j||^2|) of a Householder layer
    with stored rows ``v`` (the map is z on v^T z > 0 and (I - 2 v v^T) z else, continuous, so its constant
    is its larger piece norm).  ``s = sum v^2`` in float64 is within gamma_g s of the exact value."""
    v = np.asarray(v, dtype=np.float64)
    if v.size == 0:
        return 1.0
    s = float((v * v).sum(1).max())
    if not math.isfinite(s):
        return math.inf
    s_up = V.round_up(s * (1.0 + V.gamma(v.shape[1] + 2)))
    return max(1.0, V.round_up(V.round_up(2.0 * s_up) - 1.0))


def certified_mp(layers: LayerList, norm) -> float:
    """Certified matrix-norm product of a :class:`sdp.structure.LayerList` (``norm``: 2 or "inf")."""
    from .structure import scale_up
    ok = L2_OK if norm == 2 else LINF_OK
    nrm = lambda W: _norm_scaled(W.detach().cpu().double().numpy(), norm)  # noqa: E731
    p = (0.5, 1)  # 1.0
    for h in layers.hidden:
        if h.act not in ok or (h.act == "leaky_relu" and abs(float(h.attrs.get("negative_slope", 0.0))) > 1):
            raise UnsupportedOperationError(
                f"layer {h.path}: activation {h.act!r} is not known to be 1-Lipschitz in the "
                f"{'l2' if norm == 2 else 'l_inf'} norm; no matrix-norm product bound")
        s = nrm(h.W)
        if h.act == "householder":
            s = _mul_scaled(s, householder_lip_up_scaled(h.params["v"].detach().cpu().double().numpy()))
        if h.residual:
            s2 = (0.5, 1) if h.W2 is None else nrm(h.W2)
            s = _one_plus_scaled(_mul_scaled(s2, s))
        p = _mul_scaled(p, s)
    m, e = _mul_scaled(p, nrm(layers.W_out))
    return scale_up(m, e) if m > 0 else m


def fallback_bound(net, norm=2, c=None):
    """The cheap certified bound: min(lifted closed form, certified MP), as an :class:`SDPCertificate`
    whose ``solver`` names the winner ("CLOSED_FORM" or "MP").

    The closed form (lifted chain at its initial multipliers, ``first_order_iters=0``) is often looser
    than MP on deep nets (the uniform multipliers compound layer by layer), so neither is reported alone.
    Both are proven upper bounds, hence so is their minimum.
    """
    import time

    from .api import NUMERIC_ERRORS, _norm, lipschitz_bound
    from .certificate import SDPCertificate

    norm = _norm(norm)
    t0 = time.perf_counter()
    mp = certified_mp(extract_layers(net, c), norm)
    t_mp = time.perf_counter() - t0
    try:
        cf = lipschitz_bound(net, norm=norm, c=c, method="lifted", solver="FIRST_ORDER", first_order_iters=0)
    except (UnsupportedOperationError, InvalidArgumentError, ValueError, *NUMERIC_ERRORS):
        cf = None
    if cf is not None and cf.certified and cf.certified_value <= mp:
        cf.message = (cf.message + "; " if cf.message else "") + f"closed form won (certified MP {mp:.6g})"
        return cf
    msg = f"certified MP won (closed form {cf.certified_value:.6g})" if cf is not None and cf.certified else \
        "certified MP (closed form unavailable)"
    return SDPCertificate(mp, mp, "certified", "MP", t_mp, "mp", norm, mp, {}, 0.0, "done", msg)


def extract_layers(net, c=None):
    from .structure import extract
    return extract(net, c)
