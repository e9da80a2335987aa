"""Input-space branch-and-bound for low-dimensional inputs (e.g. ACAS Xu: 5 inputs).

A domain is a sub-box ``[lo, hi]`` of the specification's box (kept in float64; rounded outward to the
working dtype for bounding, relax/spec.py:outward_box).  Its bound is the engine's CROWN (or
α-CROWN) lower bound of every row of ``C f(x)`` over the sub-box, with intermediate bounds recomputed on
the sub-box -- the reason input splitting wins when the input has few dimensions: every split
tightens every neuron's bounds.  A domain is closed when some row's lower bound exceeds ``d`` (compared
in float64).  Children: the box halved at the midpoint of one coordinate; the two halves cover it.

Branching ("sb"-style, cheap form): the coordinate with the largest width relative to the root box,
weighted by the sensitivity ``|∂ (worst row) / ∂ x_i|`` at the box centre, (``+10%`` of the plain
relative width so no coordinate starves); zero-width coordinates are never split.
Counterexamples: the centre of every child box is evaluated in float64 (cheap) and checked exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ...models.graph import Network
from ..engine import compute_bounds
from ..sets import Box


@dataclass
class BoxDomain:
    key: float
    lo: torch.Tensor          # float64, input shape
    hi: torch.Tensor
    lower: torch.Tensor       # (m,) certified row bounds
    depth: int = 0
    nbytes: int = 0

    def __post_init__(self):
        self.nbytes = int(2 * self.lo.numel() * 8 + self.lower.numel() * 8 + 256)


class InputSplit:
    """Bounding, branching and centre checks of input-split BaB for ``C f(x) <= d`` on a box."""

    def __init__(self, net: Network, lo: torch.Tensor, hi: torch.Tensor, C: torch.Tensor, d: torch.Tensor,
                 dtype: torch.dtype, *, method: str = "crown", alpha_iters: int = 10, net64: Network | None = None):
        self.net, self.dtype = net, dtype
        self.net64 = net64 if net64 is not None else net.to(dtype=torch.float64)
        self.lo0, self.hi0 = lo.to(torch.float64), hi.to(torch.float64)
        self.C64 = C.to(torch.float64)
        self.C = C.to(dtype)
        self.d = d.to(torch.float64).reshape(-1)
        self.method, self.alpha_iters = method, int(alpha_iters)
        w = (self.hi0 - self.lo0).flatten()
        self.width0 = torch.where(w > 0, w, torch.ones_like(w))
        self.splittable = w > 0
        self.module = net.to_module(requires_grad=False)

    def bound(self, lo64: torch.Tensor, hi64: torch.Tensor) -> torch.Tensor:
        """Certified ``(n, m)`` row lower bounds over the boxes ``lo64/hi64 (n, *shape)``."""
        from ..spec import outward_box
        lo, hi = outward_box(lo64, hi64, self.dtype)
        res = compute_bounds(self.net, Box(lo, hi), method=self.method, C=self.C, bound_upper=False,
                             dtype=self.dtype, alpha_iters=self.alpha_iters)
        low = res.lower
        return torch.where(torch.isnan(low), torch.full_like(low, -math.inf), low)

    def check_points(self, x64: torch.Tensor):
        """The first of the points ``x64 (n, *shape)`` where every row holds (``C f <= d``) in float64, re-run alone."""
        with torch.no_grad():
            y = self.net64(x64).flatten(1)
        ok = ((y @ self.C64.T) <= self.d).all(1)
        for i in ok.nonzero().flatten()[:16].tolist():
            xi = x64[i].clone()
            with torch.no_grad():
                yi = self.net64(xi.unsqueeze(0))[0]
            if bool(((self.C64 @ yi.flatten()) <= self.d).all()) and bool(((xi >= self.lo0) & (xi <= self.hi0)).all()):
                return xi, yi
        return None

    def _dims(self, lo64, hi64):
        """Coordinate to split per box: relative width times (centre sensitivity of the worst row + 10%)."""
        n = lo64.shape[0]
        rel = ((hi64 - lo64).reshape(n, -1) / self.width0)
        x = ((lo64 + hi64) / 2).to(self.dtype).requires_grad_(True)
        y = self.module(x).flatten(1)
        rows = y @ self.C.T - self.d.to(self.dtype)
        g, = torch.autograd.grad(rows.amax(1).sum(), x)
        sens = (g.reshape(n, -1).abs().double() * (hi64 - lo64).reshape(n, -1))
        sens = sens / sens.amax(1, keepdim=True).clamp_min(1e-300)
        score = rel * (sens + 0.1)
        score = torch.where(self.splittable.unsqueeze(0) & (rel > 0), score, torch.full_like(score, -1.0))
        return score

    def make(self, lo64, hi64, lower, depth) -> list[BoxDomain]:
        keys = (lower.double() - self.d).amax(1).tolist()
        return [BoxDomain(keys[i], lo64[i], hi64[i], lower[i], depth[i]) for i in range(lo64.shape[0])]

    def root(self) -> BoxDomain:
        lo, hi = self.lo0.unsqueeze(0), self.hi0.unsqueeze(0)
        return self.make(lo, hi, self.bound(lo, hi), [0])[0]


class InputSplitPolicy:
    """Halve each box along its highest-scoring coordinate (see :class:`InputSplit`), or along its ``k`` best
    coordinates at once (``2^k`` children) with ``multi = k > 1`` (measured on ACAS Xu 1_1 P1: k = 1..3
    adaptively needed 650 domains where k = 1 needed 242, at the same cost per domain)."""

    def __init__(self, isp: InputSplit, batch: int = 512, multi: int = 1):
        self.isp, self.batch, self.multi = isp, int(batch), int(multi)

    def split(self, domains: list[BoxDomain]):
        lo = torch.stack([d.lo for d in domains])
        hi = torch.stack([d.hi for d in domains])
        score = self.isp._dims(lo, hi)
        k = min(max(1, self.multi), score.shape[1])
        top_v, top_i = score.topk(k, dim=1)
        out = []
        for i, dom in enumerate(domains):
            flo, fhi = dom.lo.flatten(), dom.hi.flatten()
            dims = [int(j) for v, j in zip(top_v[i].tolist(), top_i[i].tolist())
                    if v > 0 and bool(flo[j] < (flo[j] + fhi[j]) / 2 < fhi[j])]
            if not dims:  # no coordinate can be halved (in float64) any more
                out.append(None)
                continue
            boxes = [(flo, fhi)]
            for j in dims:
                mid = (flo[j] + fhi[j]) / 2
                nxt = []
                for a, b in boxes:
                    b1, a2 = b.clone(), a.clone()
                    b1[j], a2[j] = mid, mid
                    nxt += [(a, b1), (a2, b)]
                boxes = nxt
            out.append([BoxDomain(dom.key, a.reshape(dom.lo.shape), b.reshape(dom.hi.shape), dom.lower, dom.depth + 1)
                        for a, b in boxes])
        return out


def make_bounder(isp: InputSplit):
    """Bound the child boxes (one batched CROWN pass); a checked counterexample at a box centre ends the search."""
    def bound(children: list[BoxDomain]):
        lo = torch.stack([c.lo for c in children])
        hi = torch.stack([c.hi for c in children])
        hit = isp.check_points((lo + hi) / 2)
        if hit is not None:
            return hit
        lower = isp.bound(lo, hi)
        parent = torch.stack([c.lower for c in children]).to(lower.dtype)
        lower = torch.maximum(lower, parent)
        keys = (lower.double() - isp.d).amax(1).tolist()
        for i, c in enumerate(children):
            c.key, c.lower = keys[i], lower[i]
        return None
    return bound
