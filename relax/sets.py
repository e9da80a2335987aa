"""Input sets for bound propagation and their support functions.

A set ``S`` of per-sample inputs (batch dimension first) must answer two questions:

* its bounding box (for interval bound propagation), and
* the lower/upper bound of a linear function ``A x + c`` over ``S`` (concretization of CROWN's
  backward linear bounds).  For ``A`` of shape ``(B|1, m, *input_shape)`` this is
  ``min_{x in S} A x = A x0 - eps * ||A||_q`` for an lp ball (``1/p + 1/q = 1``) and
  ``A mid - |A| rad`` for a box.

Both are exact support functions, so every bound built from them is sound as long as the linear
bound itself is.  A ball clipped to a data domain (``clip=(lo, hi)``) is the intersection of two
convex sets; its support function is bounded by the better of the two (each is an outer bound).
``Ball(p=inf)`` with clipping is exactly a box and is turned into a :class:`Box` by :meth:`Ball.as_box`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..models.errors import InvalidArgumentError, ShapeMismatchError


def _norm_p(p) -> float:
    if isinstance(p, str):
        key = p.strip().lower()
        if key in ("inf", "linf", "l_inf", "infinity"):
            return math.inf
        if key in ("2", "l2"):
            return 2.0
        if key in ("1", "l1"):
            return 1.0
        raise InvalidArgumentError(f"norm p={p!r} is not supported; use inf, 2 or 1")
    try:
        p = float(p)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"norm p={p!r} is not supported; use inf, 2 or 1") from None
    if p not in (math.inf, 2.0, 1.0):
        raise InvalidArgumentError(f"norm p={p} is not supported; use inf, 2 or 1")
    return p


def dual_norm(A: torch.Tensor, p: float, start_dim: int = 2) -> torch.Tensor:
    """``||A||_q`` over the dimensions from ``start_dim`` on, with ``q`` the dual exponent of ``p``."""
    flat = A.flatten(start_dim)
    if p == math.inf:
        return flat.abs().sum(-1)
    if p == 2.0:
        return flat.norm(dim=-1)
    return flat.abs().amax(-1)


class InputSet:
    """Common interface: ``box()``, ``concretize(A, c, lower)``, ``contains(x)``, ``batch``, ``shape``."""

    def box(self) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    def concretize(self, A: torch.Tensor, lower: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(value, magnitude)``: ``min`` (or ``max``) of ``<A_i, x>`` over the set, shape ``(B, m)``.

        ``magnitude`` is ``sum |A| max(|x|)`` over the set's box, the scale of the floating-point
        error of the value (used for the outward safety margin).
        """
        raise NotImplementedError  # pragma: no cover

    def to(self, dtype=None, device=None) -> "InputSet":  # pragma: no cover - interface
        raise NotImplementedError


@dataclass
class Box(InputSet):
    """Per-sample boxes ``lower <= x <= upper``, both of shape ``(B, *input_shape)``."""

    lower: torch.Tensor
    upper: torch.Tensor

    def __post_init__(self):
        if not isinstance(self.lower, torch.Tensor) or not isinstance(self.upper, torch.Tensor):
            raise InvalidArgumentError("Box: lower and upper must be tensors of shape (B, *input_shape)")
        if self.lower.shape != self.upper.shape:
            raise ShapeMismatchError(
                f"Box: lower {tuple(self.lower.shape)} and upper {tuple(self.upper.shape)} differ in shape")
        if self.lower.dim() < 2:
            raise ShapeMismatchError("Box: bounds need a batch dimension: shape (B, *input_shape)")
        if torch.isnan(self.lower).any() or torch.isnan(self.upper).any():
            raise InvalidArgumentError("Box: bounds contain NaN")
        if (self.lower > self.upper).any():
            raise InvalidArgumentError("Box: lower > upper for some coordinate (empty set)")

    @property
    def batch(self) -> int:
        return self.lower.shape[0]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.lower.shape[1:])

    def box(self):
        return self.lower, self.upper

    def center(self) -> torch.Tensor:
        return (self.lower + self.upper) / 2

    def to(self, dtype=None, device=None) -> "Box":
        return Box(self.lower.to(dtype=dtype, device=device), self.upper.to(dtype=dtype, device=device))

    def concretize(self, A, lower=True):
        return box_support(A, self.lower, self.upper, lower)

    def contains(self, x: torch.Tensor, tol: float = 0.0) -> torch.Tensor:
        return ((x >= self.lower - tol) & (x <= self.upper + tol)).flatten(1).all(1)

    def sample(self, n: int, vertex_frac: float = 0.25, generator=None) -> torch.Tensor:
        """``(B, n, *shape)`` points of the box: uniform, and a fraction of random vertices."""
        lo, hi = self.lower.unsqueeze(1), self.upper.unsqueeze(1)
        t = torch.rand((self.batch, n, *self.shape), generator=generator, dtype=lo.dtype).to(lo.device)
        nv = int(n * vertex_frac)
        if nv:
            t[:, :nv] = t[:, :nv].round()
        return torch.minimum(torch.maximum(lo + t * (hi - lo), lo), hi)  # rounding may overshoot at t = 1


def box_support(A: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, lower: bool = True):
    """``(min or max over lo <= x <= hi of <A_i, x>, sum_j |A_ij| max(|lo_j|, |hi_j|))``, each ``(B, m)``.

    ``A``: ``(B|1, m, *shape)``; ``lo, hi``: ``(B, *shape)``.  One pass over ``|A|`` for both the
    spread ``|A| rad`` and the magnitude.
    """
    Af = A.flatten(2)
    lo_f, hi_f = lo.flatten(1), hi.flatten(1)
    mid = (lo_f + hi_f) / 2
    aux = torch.stack(((hi_f - lo_f) / 2, torch.maximum(lo_f.abs(), hi_f.abs())), 1)  # (B, 2, n)
    center = _rowdot(Af, mid)
    sm = _rowdot(Af.abs(), aux)  # (B, m, 2)
    spread, mag = sm[..., 0], sm[..., 1]
    return (center - spread if lower else center + spread), mag


def _rowdot(Af: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``sum_n Af[b, i, n] v[b, (k,) n]`` -> ``(B, m)`` or ``(B, m, k)``, choosing an efficient kernel.

    ``Af``: ``(1 or B, m, n)``; ``v``: ``(B, n)`` or ``(B, k, n)``.  A shared ``Af`` (batch 1) is one
    GEMM; a single row per sample (``m = 1``) is an elementwise product; otherwise a batched GEMM.
    """
    squeeze = v.dim() == 2
    V = v.unsqueeze(1) if squeeze else v  # (B, k, n)
    B, k, n = V.shape
    if Af.shape[0] == 1 and B > 1:
        out = (V.reshape(B * k, n) @ Af[0].T).reshape(B, k, -1).transpose(1, 2)  # (B, m, k)
    elif Af.shape[1] == 1:
        out = (Af * V).sum(-1).unsqueeze(1)  # (B, 1, k)
    else:
        out = torch.matmul(Af, V.transpose(1, 2))  # (B, m, k)
    return out[..., 0] if squeeze else out


@dataclass
class Ball(InputSet):
    """``{x : ||x - center||_p <= eps}`` (optionally intersected with the box ``clip = (lo, hi)``).

    ``center`` has shape ``(B, *input_shape)``; ``eps`` is a float or a tensor of shape ``(B,)``;
    ``p`` is ``inf``, ``2`` or ``1``; ``clip`` bounds are floats or tensors broadcastable to ``center``.
    """

    center: torch.Tensor
    eps: float | torch.Tensor
    p: float | str = math.inf
    clip: tuple | None = None

    def __post_init__(self):
        self.p = _norm_p(self.p)
        if not isinstance(self.center, torch.Tensor) or self.center.dim() < 2:
            raise ShapeMismatchError("Ball: center must be a tensor of shape (B, *input_shape)")
        B = self.center.shape[0]
        eps = _round_up(_exact(self.eps, self.center.device), self.center.dtype)
        if eps.dim() == 0:
            eps = eps.expand(B)
        if eps.shape != (B,):
            raise ShapeMismatchError(f"Ball: eps must be a float or of shape ({B},), got {tuple(eps.shape)}")
        if not torch.isfinite(eps).all() or (eps < 0).any():
            raise InvalidArgumentError("Ball: eps must be finite and >= 0")
        if not torch.isfinite(self.center).all():
            raise InvalidArgumentError("Ball: center contains NaN or Inf")
        self.eps_t = eps.contiguous()
        if self.clip is not None:
            lo, hi = self.clip
            lo = -_round_up(-_exact(lo, self.center.device), self.center.dtype)
            hi = _round_up(_exact(hi, self.center.device), self.center.dtype)
            lo = torch.broadcast_to(lo, self.center.shape)
            hi = torch.broadcast_to(hi, self.center.shape)
            if (lo > hi).any():
                raise InvalidArgumentError("Ball: clip lower bound exceeds the upper bound")
            self._clip = (lo, hi)
        else:
            self._clip = None

    @property
    def batch(self) -> int:
        return self.center.shape[0]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.center.shape[1:])

    def _eps_view(self) -> torch.Tensor:
        return self.eps_t.reshape(-1, *([1] * (self.center.dim() - 1)))

    def box(self):
        e = self._eps_view()
        # c -/+ e rounded to nearest can land inside the real ball: step one ulp outward
        lo = torch.nextafter(self.center - e, torch.full_like(self.center, -math.inf))
        hi = torch.nextafter(self.center + e, torch.full_like(self.center, math.inf))
        if self._clip is not None:
            lo = torch.maximum(lo, self._clip[0])
            hi = torch.minimum(hi, self._clip[1])
            if (lo > hi).any():
                raise InvalidArgumentError("Ball: the ball does not meet the clipping domain for some sample")
        return lo, hi

    def as_box(self) -> Box:
        """The ball as a box (exact for ``p = inf``; the bounding box otherwise)."""
        lo, hi = self.box()
        return Box(lo, hi)

    def to(self, dtype=None, device=None) -> "Ball":
        clip = None if self._clip is None else (self._clip[0].to(dtype=dtype, device=device),
                                                self._clip[1].to(dtype=dtype, device=device))
        return Ball(self.center.to(dtype=dtype, device=device), self.eps_t.to(dtype=dtype, device=device),
                    self.p, clip)

    def concretize(self, A, lower=True):
        if self.p == math.inf:
            return self.as_box().concretize(A, lower)
        Af = A.flatten(2)
        c = _rowdot(Af, self.center.flatten(1))
        spread = self.eps_t.unsqueeze(1) * dual_norm(Af, self.p)
        val = c - spread if lower else c + spread
        mag = c.abs() + spread
        if self._clip is not None:  # the intersection is inside both sets: keep the better bound
            bval, bmag = self.as_box().concretize(A, lower)
            val = torch.maximum(val, bval) if lower else torch.minimum(val, bval)
            mag = torch.maximum(mag, bmag)
        return val, mag

    def sample(self, n: int, vertex_frac: float = 0.25, generator=None) -> torch.Tensor:
        """``(B, n, *shape)`` points of the set: interior points, and a fraction on the boundary
        (sphere for p = 2, vertices ``+-eps e_i`` for p = 1, corners for p = inf), clipped to the domain
        (clamping keeps a point inside the ball because the center lies in the domain)."""
        if self.p == math.inf:
            pts = Box(self.center - self._eps_view(), self.center + self._eps_view()).sample(n, vertex_frac, generator)
        else:
            d = _numel_shape(self.shape)
            B = self.batch
            nv = int(n * vertex_frac)
            kw = dict(generator=generator, dtype=self.center.dtype)
            if self.p == 2.0:
                z = torch.randn((B, n, d), **kw)
                z = z / z.norm(dim=-1, keepdim=True)
                rad = torch.rand((B, n, 1), **kw) ** (1.0 / d)
            else:
                z = -torch.log(torch.rand((B, n, d), **kw)) * (torch.randint(0, 2, (B, n, d), generator=generator) * 2 - 1)
                z = z / z.abs().sum(-1, keepdim=True)
                rad = torch.rand((B, n, 1), **kw) ** (1.0 / d)
                if nv:
                    idx = torch.randint(0, d, (B, nv), generator=generator)
                    sgn = (torch.randint(0, 2, (B, nv), generator=generator) * 2 - 1).to(z.dtype)
                    z[:, :nv] = 0
                    z[:, :nv].scatter_(-1, idx.unsqueeze(-1), sgn.unsqueeze(-1))
            if nv:
                rad[:, :nv] = 1.0
            z = (z * rad).to(self.center.device) * self.eps_t.reshape(-1, 1, 1)
            pts = self.center.unsqueeze(1) + z.reshape(B, n, *self.shape)
        if self._clip is not None:
            pts = torch.maximum(torch.minimum(pts, self._clip[1].unsqueeze(1)), self._clip[0].unsqueeze(1))
        return pts

    def contains(self, x: torch.Tensor, tol: float = 0.0) -> torch.Tensor:
        d = (x - self.center).flatten(1)
        n = d.abs().amax(1) if self.p == math.inf else d.norm(p=self.p, dim=1)
        ok = n <= self.eps_t + tol
        if self._clip is not None:
            ok &= ((x >= self._clip[0] - tol) & (x <= self._clip[1] + tol)).flatten(1).all(1)
        return ok


def _exact(v, device) -> torch.Tensor:
    """A user number as a tensor without rounding it first: Python floats are float64 (torch's default
    dtype, often float32, would round a radius before it can be rounded outward)."""
    if isinstance(v, torch.Tensor):
        return v.to(device)
    return torch.as_tensor(v, dtype=torch.float64, device=device)


def _round_up(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` cast to ``dtype`` rounding up (a radius or upper limit is never shrunk by the cast)."""
    t64 = t.to(torch.float64)
    c = t64.to(dtype)
    if dtype != torch.float64:
        c = torch.where(c.double() < t64, torch.nextafter(c, c.new_tensor(math.inf)), c)
    return c


def _numel_shape(shape) -> int:
    return int(math.prod(shape))


def as_input_set(s) -> InputSet:
    if isinstance(s, Ball) and s.p == math.inf and s._clip is not None:
        return s.as_box()
    if isinstance(s, (Box, Ball)):
        return s
    raise InvalidArgumentError(f"input_set must be a relax.Box or relax.Ball, got {type(s).__name__}")
