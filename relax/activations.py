"""Sound elementwise linear relaxations of scalar activations ``phi`` on an interval ``[l, u]``.

Every relaxation returns ``(aL, bL, aU, bU)`` with

    aL * x + bL  <=  phi(x)  <=  aU * x + bU      for every x in [l, u]      (elementwise).

* ``relu``: exact on stable neurons; on unstable ones (``l < 0 < u``) the upper line is the chord
  ``u (x - l) / (u - l)`` and the lower line is ``alpha x`` for any ``alpha`` in [0, 1] (CROWN's
  adaptive choice: ``alpha = 1`` if ``u >= -l`` else 0; alpha-CROWN optimizes it).
* ``leaky_relu`` with slope ``s <= 1`` (convex): chord above, ``alpha x`` below with ``alpha in [s, 1]``.
  With ``s > 1`` (concave) the roles swap (chord below, ``alpha x`` above; not optimized).
* ``tanh``, ``sigmoid`` (convex on x <= 0, concave on x >= 0): on a convex piece the chord is above and
  the tangent at the midpoint below (and the reverse on a concave piece).  When ``l < 0 < u`` the
  upper line is the tangent at a point ``d in [0, u]`` that passes on or above ``(l, phi(l))`` (found
  by bisection, keeping the side of the bracket where that holds), or the chord when no such tangent
  point exists in ``[0, u]`` (then the chord is above ``phi``); the lower line is the mirror image.
  These are computed in float64 and widened by ``1e-12 (1 + |b| + |a| max(|l|,|u|))``.

All lines are computed in float64 and cast to the working dtype by :func:`_cast_line`, which keeps
them valid (the intercept absorbs the slope's rounding over ``[l, u]`` and is rounded outward).

A property test (tests/test_relax_activations.py) samples each relaxation densely.
``alpha`` arguments broadcast against ``l`` with an extra specification dimension (``(B, m, *shape)``);
``alpha_bounds`` gives the projection interval of alpha (``None``: the activation has no alpha).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _where(c, a, b):
    return torch.where(c, a, b)


_EPS64 = torch.finfo(torch.float64).eps


def _cast_line(a, b, l, u, dtype, upper: bool):
    """Cast a valid float64 line ``a x + b`` on ``[l, u]`` to ``dtype`` keeping it valid.

    Rounding the slope to ``a'`` moves the line by ``(a' - a) x``; the intercept is corrected by the
    worst case of that over ``[l, u]`` (plus a few float64 ulps of the computation) and rounded
    outward, so ``a' x + b' >= a x + b`` (``upper``) or ``<=`` on the whole interval.
    """
    a_c = a.to(dtype)
    da = a - a_c.double()
    slack = 4 * _EPS64 * (a.abs() * torch.maximum(l.abs(), u.abs()) + b.abs())
    if upper:
        b = b + torch.maximum(da * l, da * u) + slack
        b_c = b.to(dtype)
        if dtype != torch.float64:
            b_c = torch.where(b_c.double() < b, torch.nextafter(b_c, b_c.new_tensor(float("inf"))), b_c)
    else:
        b = b + torch.minimum(da * l, da * u) - slack
        b_c = b.to(dtype)
        if dtype != torch.float64:
            b_c = torch.where(b_c.double() > b, torch.nextafter(b_c, b_c.new_tensor(float("-inf"))), b_c)
    return a_c, b_c


def _finish(aL, bL, aU, bU, l, u, dtype):
    aL, bL = _cast_line(aL, bL, l, u, dtype, upper=False)
    aU, bU = _cast_line(aU, bU, l, u, dtype, upper=True)
    return aL, bL, aU, bU


class ReLU:
    name = "relu"
    piecewise_linear = True

    @staticmethod
    def evaluate(x, attrs):
        return torch.relu(x)

    @staticmethod
    def ibp(l, u, attrs):
        return torch.relu(l), torch.relu(u)

    @staticmethod
    def alpha_bounds(l, u, attrs):
        return 0.0, 1.0

    @staticmethod
    def default_alpha(l, u, attrs):
        return (u >= -l).to(l.dtype)

    @staticmethod
    def relax(l_in, u_in, attrs, alpha=None):
        dt = l_in.dtype
        l, u = l_in.double(), u_in.double()
        unstable = (l < 0) & (u > 0)
        active = (l >= 0).double()
        denom = torch.where(unstable, u - l, torch.ones_like(u))
        aU = _where(unstable, u / denom, active)
        # the chord is above relu on [l, u] iff it is at both ends: choose the smallest such intercept
        bU = _where(unstable, torch.maximum(-aU * l, u - aU * u), torch.zeros_like(l))
        aL = _where(unstable, (u >= -l).double(), active)
        aL, bL, aU, bU = _finish(aL, torch.zeros_like(l), aU, bU, l, u, dt)
        bL = torch.zeros_like(bL)  # slopes 0/1 are exact: the lower line needs no rounding slack
        if alpha is not None:  # alpha x is exact in any precision (no intercept)
            aL = _where(unstable.unsqueeze(1), alpha, active.to(dt).unsqueeze(1))
            bL = torch.zeros_like(bL)
        return aL, bL, aU, bU


class LeakyReLU:
    name = "leaky_relu"
    piecewise_linear = True

    @staticmethod
    def _s(attrs):
        return float(attrs["negative_slope"])

    @staticmethod
    def evaluate(x, attrs):
        return F.leaky_relu(x, LeakyReLU._s(attrs))

    @staticmethod
    def ibp(l, u, attrs):
        s = LeakyReLU._s(attrs)
        fl, fu = F.leaky_relu(l, s), F.leaky_relu(u, s)
        if s >= 0:
            return fl, fu
        lo = torch.minimum(fl, fu)
        lo = torch.where((l < 0) & (u > 0), torch.zeros_like(lo), lo)
        return lo, torch.maximum(fl, fu)

    @staticmethod
    def alpha_bounds(l, u, attrs):
        s = LeakyReLU._s(attrs)
        return (s, 1.0) if s <= 1 else None

    @staticmethod
    def default_alpha(l, u, attrs):
        s = LeakyReLU._s(attrs)
        return torch.where(u >= -l, torch.ones_like(l), torch.full_like(l, s))

    @staticmethod
    def relax(l_in, u_in, attrs, alpha=None):
        s = LeakyReLU._s(attrs)
        dt = l_in.dtype
        l, u = l_in.double(), u_in.double()
        unstable = (l < 0) & (u > 0)
        stable_slope = torch.where(l >= 0, torch.ones_like(l), torch.full_like(l, s))
        denom = torch.where(unstable, u - l, torch.ones_like(u))
        chord = (u - s * l) / denom
        tang = torch.where(u >= -l, torch.ones_like(l), torch.full_like(l, s))
        zero = torch.zeros_like(l)
        if s <= 1:  # convex: chord above (valid iff above at both ends), alpha x below
            aU = _where(unstable, chord, stable_slope)
            bU = _where(unstable, torch.maximum(s * l - chord * l, u - chord * u), zero)
            aL = _where(unstable, tang, stable_slope)
            aL, bL, aU, bU = _finish(aL, zero, aU, bU, l, u, dt)
            if alpha is not None:
                aL = _where(unstable.unsqueeze(1), alpha, stable_slope.to(dt).unsqueeze(1))
                bL = torch.zeros_like(bL)
            return aL, bL, aU, bU
        aL = _where(unstable, chord, stable_slope)  # concave: chord below, a line through 0 above
        bL = _where(unstable, torch.minimum(s * l - chord * l, u - chord * u), zero)
        aU = _where(unstable, tang, stable_slope)
        return _finish(aL, bL, aU, zero, l, u, dt)


class _Sigmoidal:
    """Common relaxation of tanh and sigmoid (S-shaped: convex on x <= 0, concave on x >= 0)."""

    name = ""
    f = staticmethod(torch.tanh)

    @classmethod
    def df(cls, x):  # pragma: no cover - overridden
        raise NotImplementedError

    @classmethod
    def evaluate(cls, x, attrs):
        return cls.f(x)

    @classmethod
    def ibp(cls, l, u, attrs):
        return cls.f(l), cls.f(u)

    @staticmethod
    def alpha_bounds(l, u, attrs):
        return None

    @classmethod
    def _tangent(cls, d):
        a = cls.df(d)
        return a, cls.f(d) - a * d

    @classmethod
    def relax(cls, l_in, u_in, attrs, alpha=None, iters: int = 40):
        dt = l_in.dtype
        l, u = l_in.double(), u_in.double()
        f, df = cls.f, cls.df
        fl, fu = f(l), f(u)
        width = u - l
        narrow = width < 1e-7
        safe_w = torch.where(narrow, torch.ones_like(width), width)
        k = torch.where(narrow, df((l + u) / 2), (fu - fl) / safe_w)  # chord slope
        chord_b = fl - k * l
        mid_a, mid_b = cls._tangent((l + u) / 2)

        # mixed case: upper tangent through (l, f(l)) at d in [0, u]
        g_up = lambda d: f(d) + df(d) * (l - d) - fl  # >= 0 wanted
        lo, hi = torch.zeros_like(u), u.clamp_min(0)
        for _ in range(iters):
            m = (lo + hi) / 2
            ok = g_up(m) >= 0
            hi = torch.where(ok, m, hi)
            lo = torch.where(ok, lo, m)
        up_tangent_ok = g_up(u.clamp_min(0)) >= 0
        tu_a, tu_b = cls._tangent(hi)
        # mixed case: lower tangent through (u, f(u)) at d in [l, 0]
        g_lo = lambda d: f(d) + df(d) * (u - d) - fu  # <= 0 wanted
        lo2, hi2 = l.clamp_max(0), torch.zeros_like(l)
        for _ in range(iters):
            m = (lo2 + hi2) / 2
            ok = g_lo(m) <= 0
            lo2 = torch.where(ok, m, lo2)
            hi2 = torch.where(ok, hi2, m)
        lo_tangent_ok = g_lo(l.clamp_max(0)) <= 0
        tl_a, tl_b = cls._tangent(lo2)

        convex = u <= 0
        concave = l >= 0
        mixed = ~(convex | concave)
        aU = torch.where(concave, mid_a, k)
        bU = torch.where(concave, mid_b, chord_b)
        aU = torch.where(mixed & up_tangent_ok, tu_a, aU)
        bU = torch.where(mixed & up_tangent_ok, tu_b, bU)
        aL = torch.where(convex, mid_a, k)
        bL = torch.where(convex, mid_b, chord_b)
        aL = torch.where(mixed & lo_tangent_ok, tl_a, aL)
        bL = torch.where(mixed & lo_tangent_ok, tl_b, bL)
        # narrow intervals: the tangent at the midpoint is within w^2 * max|f''|/8 <= w^2 of f
        slack_n = torch.where(narrow, width * width, torch.zeros_like(width))
        scale = 1.0 + torch.maximum(l.abs(), u.abs())
        bU = bU + slack_n + 1e-12 * (scale * aU.abs() + bU.abs() + 1.0)  # float64 evaluation of f, f'
        bL = bL - slack_n - 1e-12 * (scale * aL.abs() + bL.abs() + 1.0)
        return _finish(aL, bL, aU, bU, l, u, dt)


class Tanh(_Sigmoidal):
    name = "tanh"
    f = staticmethod(torch.tanh)

    @staticmethod
    def df(x):
        t = torch.tanh(x)
        return 1 - t * t


class Sigmoid(_Sigmoidal):
    name = "sigmoid"
    f = staticmethod(torch.sigmoid)

    @staticmethod
    def df(x):
        s = torch.sigmoid(x)
        return s * (1 - s)


ACTIVATION_RELAXATIONS = {c.name: c for c in (ReLU, LeakyReLU, Tanh, Sigmoid)}
