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
on the Gram matrix (float64 proof including the product's rounding), row sums are inflated by
gamma_{n+1}, and every multiplication is rounded up by one ulp (float products are correctly rounded).
"""

from __future__ import annotations

import math

import numpy as np

from ..models.errors import InvalidArgumentError, UnsupportedOperationError

from . import verify as V
from .structure import LayerList

L2_OK = ("relu", "leaky_relu", "maxmin", "groupsort", "householder", "identity")
LINF_OK = ("relu", "leaky_relu", "maxmin", "groupsort", "identity")


def norm2_up(W: np.ndarray) -> float:
    """Proven upper bound of ||W||_2 (0 for an empty matrix, inf if the proof fails)."""
    if W.size == 0 or not np.any(W):
        return 0.0
    a, b = (W, W.T) if W.shape[0] <= W.shape[1] else (W.T, W)
    r = V.certify_lmax(a @ b, V.product_error(a, b))
    return math.inf if r is None else V.sqrt_up(r)


def norminf_up(W: np.ndarray) -> float:
    """Proven upper bound of ||W||_inf = max_i sum_j |W_ij|."""
    if W.size == 0:
        return 0.0
    s = float(np.abs(W).sum(axis=1).max())
    return V.round_up(s * (1.0 + V.gamma(W.shape[1] + 1)))


def _mul(a: float, b: float) -> float:
    return V.round_up(a * b)


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
    ok = L2_OK if norm == 2 else LINF_OK
    nrm = norm2_up if norm == 2 else norminf_up
    p = 1.0
    for h in layers.hidden:
        if h.act not in ok or (h.act == "leaky_relu" and abs(float(h.attrs.get("negative_slope", 0.0))) > 1):
            raise UnsupportedOperationError(
                f"layer {h.path}: activation {h.act!r} is not known to be 1-Lipschitz in the "
                f"{'l2' if norm == 2 else 'l_inf'} norm; no matrix-norm product bound")
        W = h.W.detach().cpu().double().numpy()
        s = nrm(W)
        if h.act == "householder":
            s = _mul(s, householder_lip_up(h.params["v"].detach().cpu().double().numpy()))
        if h.residual:
            s2 = 1.0 if h.W2 is None else nrm(h.W2.detach().cpu().double().numpy())
            s = V.round_up(1.0 + _mul(s2, s))
        p = _mul(p, s)
    Wo = layers.W_out.detach().cpu().double().numpy()
    return _mul(p, nrm(Wo))


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
