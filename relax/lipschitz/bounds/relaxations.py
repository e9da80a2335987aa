"""Linear relaxations used on the backward (gradient) graph.

**Gated product** ``p = d q`` with ``d in [a, b]`` and ``q in [l, u]``.  For fixed ``q`` the set of
values is ``[min(a q, b q), max(a q, b q)]``; the upper envelope ``max(a q, b q)`` is convex and the
lower ``min(a q, b q)`` concave, so the tightest linear bounds over ``[l, u]`` are their chords

    upper:  line through (l, max(a l, b l)) and (u, max(a u, b u))
    lower:  line through (l, min(a l, b l)) and (u, min(a u, b u))

which are the two long edges of the convex hull of ``{(q, d q)}`` (for ReLU, ``a = 0, b = 1``:
``u (q - l)/(u - l)`` and ``l (u - q)/(u - l)``, the published "Clarke gradient" relaxation).  When
``q`` has one sign on ``[l, u]`` the envelopes are linear and the relaxation is exact.

**Interval ("RecurJac-style") mode** replaces the chords by the constants
``[min(al, au, bl, bu), max(al, au, bl, bu)]`` wherever ``q`` changes sign and ``d`` is not fixed.

**Absolute value** ``|q|`` on ``[l, u]``: the upper chord through ``(l, |l|)`` and ``(u, |u|)`` (exact
when ``q`` has one sign).  Used for the l1 norm of the input gradient.

All functions return ``(slope, intercept)`` tensors of the shape of ``l``.
"""

from __future__ import annotations

import torch


def _chord(l, u, fl, fu, exact_slope):
    """Line through (l, fl), (u, fu); ``exact_slope`` where u - l is (numerically) zero."""
    w = u - l
    safe = w > 0
    slope = torch.where(safe, (fu - fl) / torch.where(safe, w, torch.ones_like(w)), exact_slope)
    return slope, fl - slope * l


def gated_product_upper(a, b, l, u, interval: bool = False):
    pos, neg = l >= 0, u <= 0
    fl, fu = torch.maximum(a * l, b * l), torch.maximum(a * u, b * u)
    slope, icpt = _chord(l, u, fl, fu, torch.where(l >= 0, b, a))
    slope = torch.where(pos, b, torch.where(neg, a, slope))
    icpt = torch.where(pos | neg, torch.zeros_like(icpt), icpt)
    if interval:
        const = (~(pos | neg)) & (a < b)
        slope = torch.where(const, torch.zeros_like(slope), slope)
        icpt = torch.where(const, torch.maximum(fl, fu), icpt)
    return slope, icpt


def gated_product_lower(a, b, l, u, interval: bool = False):
    """Lower line of ``d * g`` (``d in [a, b]``, ``g in [l, u]``): the mirror image of the upper line,
    since ``min_d d g = -max_{d' in [-b, -a]} d' g``."""
    slope, icpt = gated_product_upper(-b, -a, l, u, interval)
    return -slope, -icpt


def gated_product_interval(a, b, l, u):
    """Interval hull of ``{d q}`` (a, b, l, u element-wise)."""
    c = torch.stack((a * l, a * u, b * l, b * u))
    return c.min(0).values, c.max(0).values


def abs_upper(l, u):
    pos, neg = l >= 0, u <= 0
    slope, icpt = _chord(l, u, l.abs(), u.abs(), torch.where(l >= 0, torch.ones_like(l), -torch.ones_like(l)))
    slope = torch.where(pos, torch.ones_like(slope), torch.where(neg, -torch.ones_like(slope), slope))
    icpt = torch.where(pos | neg, torch.zeros_like(icpt), icpt)
    return slope, icpt
