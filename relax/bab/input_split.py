"""Input-space branch-and-bound for low-dimensional inputs (e.g. ACAS Xu: 5 inputs).

Two implementations of the same search, both on relax/bab/search.py's loop:

* :class:`ChainSplit` (affine-ReLU chains, what relax/bab/complete.py uses whenever
  :meth:`relax.bab.box_crown.AffineReluChain.from_network` accepts the network): a *domain* of the
  search is a :class:`BoxChunk`, a tensor of boxes ``(n, n_in)`` with their keys, next split coordinate and
  pre-activation bounds, so that splitting, bounding (one batched CROWN pass over all popped boxes,
  relax/bab/box_crown.py, the parents' intermediate bounds intersected in), closing and witness checks
  are tensor operations with no per-box Python.  The specifications of a VNN-LIB disjunction that share a
  box are searched together: a box is closed when every one of them has a refuting row on it.
  Branching: "sb" (the coordinate ``i`` maximising ``|A_i| (hi_i - lo_i)``, ``A`` the CROWN input
  coefficient of the worst specification's best row) with an optional look-ahead (both halves along every
  other coordinate bounded for the boxes where the "sb" split gains little; the coordinate whose worse
  child is best kept).  Optionally (``alpha_iters``/``refine_iters``) the boxes CROWN leaves open get
  alpha-CROWN on the final rows (slopes warm-started from the parent box), and those where the split gained
  less than ``refine_gain`` of the bound also alpha-CROWN intermediate bounds (kept for their children).
* :class:`InputSplit` (any network, the generic engine relax/engine.py, one domain per box): the
  fallback for networks that are not affine-ReLU chains (LeakyReLU, residual adds, sorting activations).

A box is a sub-box ``[lo, hi]`` of the specification's box (float64; rounded outward to the working dtype
for bounding).  Children: the box halved at the midpoint of one coordinate (the two halves cover it);
zero-width coordinates are never split.  Counterexamples: candidate points (box centres, minimisers of
the linear bound) evaluated in float64 and re-checked alone; only a re-checked point ends the search.
"""

from __future__ import annotations

import math
import time
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


# ====================================================================== batched input splitting on affine-ReLU chains
class BoxChunk:
    """A set of open boxes handled together: one *domain* of :func:`relax.bab.search.branch_and_bound`.

    Rows of ``lo/hi (n, n_in)`` (float64) are boxes; ``dim (n,)`` the coordinate each box is split along next
    (chosen when it was bounded); ``pre``: its pre-activation bounds (intersected into its children's);
    ``key``: the smallest box key (the chunk's certified lower bound of ``min_spec max_row (C f - d)``).
    The boxes of a chunk and of all chunks together cover the open part of the root box."""

    __slots__ = ("lo", "hi", "dim", "keys", "pre", "key", "nbytes", "depth", "stuck", "bounded", "alpha", "lam")

    def __init__(self, lo, hi, dim, keys, pre, depth=0, stuck=False, bounded=False, alpha=None, lam=None):
        self.lo, self.hi, self.dim, self.keys, self.pre = lo, hi, dim, keys, pre
        self.alpha = alpha  # alpha-CROWN slopes [(n, m, n_k)] of the boxes (warm start of their children), or None
        self.lam = lam  # row weights (n, S, m) of the AND-clause combinations (warm start of the children), or None
        self.depth, self.stuck, self.bounded = depth, stuck, bounded
        self.key = float(keys.min()) if keys.numel() else math.inf
        self.nbytes = self.size()

    def size(self) -> int:
        """Bytes held (the store's memory accounting)."""
        return int(self.lo.numel() * 16 + self.keys.numel() * 8 + self.lo.shape[0] * 8
                   + sum(a.numel() * a.element_size() * 2 for a, _ in self.pre)
                   + sum(a.numel() * a.element_size() for a in (self.alpha or []))
                   + (0 if self.lam is None else self.lam.numel() * self.lam.element_size()) + 256)

    def __len__(self):
        return self.lo.shape[0]


def _relu_default(l, u):
    """CROWN's lower ReLU slopes on ``[l, u]`` (1 where ``u >= -l``, else 0; 1 / 0 on active / inactive neurons)."""
    return torch.where(l >= 0, torch.ones_like(l), torch.where(u <= 0, torch.zeros_like(l), (u >= -l).to(l.dtype)))


def _cat_pre(pres):
    return [(torch.cat([p[k][0] for p in pres]), torch.cat([p[k][1] for p in pres])) for k in range(len(pres[0]))]


class ChainSplit:
    """Input-space branch-and-bound of a group of specifications sharing one box, on an affine-ReLU chain.

    ``C (M, n_out)``, ``d (M,)``, ``owner (M,)`` (specification index of each row, ``0..S-1``).  A box is
    *closed* when every specification has a row whose certified lower bound (relax/bab/box_crown.py) is
    ``> 0`` on it (``C f - d``); the specifications share every bound computation.  Its key is
    ``min_spec max_row`` of the row bounds.  Branching ("sb"): the coordinate ``i`` maximising
    ``|A_i| (hi_i - lo_i)`` for the best row of the worst specification (``A``: that row's CROWN coefficient
    on the input, so ``|A_i| (hi_i - lo_i) / 2`` is the looseness coordinate ``i`` adds); zero-width
    coordinates are never split.  Counterexamples: every bounded box's centre and the minimiser of its
    worst row's linear bound are evaluated in float64 (vectorised) and a hit is re-checked alone.

    ``alpha_iters > 0`` (default 0): boxes still open after CROWN get :meth:`BoxCrown.alpha_bound` (that many
    Adam steps, from the parent's slopes); ``refine_iters > 0``: boxes still open whose bound rose by less
    than ``refine_gain`` (relative) over the parent's get :meth:`BoxCrown.refine_intermediate` first (the
    tightened bounds are inherited by their children).  Every bound stays certified (any slopes in [0, 1]);
    boxes that only the float32 rounding margin keeps open are re-bounded in float64 with the slopes found.

    ``combo_iters > 0`` (default 0): on boxes still open, every specification of two or more rows (an AND
    clause) is also bounded by a convex combination of its rows (:meth:`BoxCrown.combo_bound`: ``lam`` by
    Adam, warm-started from the parent box, else 0.7 on the best row; jointly with the slopes when
    ``alpha_iters > 0``); a clause whose combination is certified ``> 0`` on a box is refuted there even when
    no single row is.  Near-misses are re-bounded in float64 with the ``lam`` found.  Measured on ACAS Xu P2
    3_3 (open boxes of the search): every open box had a single row whose sampled minimum was positive, and
    the combination closed 74 of 8,517 boxes at twice the cost per box -- the conjunction was not the
    bottleneck there, so it is off by default (``verify_query(input_combo_iters=...)``)."""

    def __init__(self, chain, net64: Network, lo0, hi0, C, d, owner, *, dtype=torch.float32, chunk: int = 256,
                 chunk_max: int = 4096, step_s: float = 0.3, deadline: float = math.inf, lookahead: str = "all", width_mix: float = 0.0,
                 alpha_iters: int = 0, alpha_lr: float = 0.2, refine_iters: int = 0, refine_gain: float = 0.1,
                 combo_iters: int = 0, combo_lr: float = 0.3):
        from .box_crown import BoxCrown
        self.net64 = net64
        self.shape = tuple(lo0.shape)
        self.lo0, self.hi0 = lo0.reshape(1, -1).to(torch.float64), hi0.reshape(1, -1).to(torch.float64)
        self.C64, self.d64 = C.to(torch.float64), d.to(torch.float64).reshape(-1)
        self.owner = owner.to(torch.long)
        self.S = int(self.owner.max()) + 1
        self.bc = BoxCrown(chain, self.C64, self.d64, dtype=dtype)
        self.bc64 = BoxCrown(chain, self.C64, self.d64, dtype=torch.float64) if dtype != torch.float64 else None
        self.mix = float(width_mix)
        self.alpha_iters, self.alpha_lr = int(alpha_iters), float(alpha_lr)
        self.refine_iters, self.refine_gain = int(refine_iters), float(refine_gain)
        self.alpha_boxes = self.alpha_closed = 0  # boxes given alpha-CROWN, and closed by it
        self.refine_boxes = self.refine_closed = 0  # boxes given refined intermediate bounds, and closed then
        self.combo_iters, self.combo_lr = int(combo_iters), float(combo_lr)
        # AND clauses (specifications of >= 2 rows) get the row combination; boxes given it, and closed by it
        self.multi = bool((torch.bincount(self.owner, minlength=self.S) >= 2).any())
        self.combo_boxes = self.combo_closed = 0
        self.last_lam = None
        self.splittable = (self.hi0 - self.lo0).flatten() > 0
        self.chunk, self.chunk_max, self.step_s = int(chunk), int(chunk_max), float(step_s)
        if self.alpha_iters > 0:  # ~5-20 times the work per box: smaller first pieces (then adapted to the time)
            self.chunk = min(self.chunk, 64)
        self.deadline = deadline
        self.witness = None
        self.boxes = 0  # boxes bounded
        if lookahead not in ("two", "all", "off"):
            raise ValueError(f"lookahead must be 'two', 'all' or 'off', got {lookahead!r}")
        self.lookahead = None if lookahead == "off" else lookahead
        self.piece = 64  # boxes per look-ahead pass (adapted to the measured time)
        self.gain = 0.2  # look-ahead where the "sb" split's worse child gains less than 20 % of the bound


    # ------------------------------------------------------------ bounds, keys, branching, witnesses
    def _spec_keys(self, low):
        """``(n, S)`` per specification: max over its rows of the row bounds."""
        n = low.shape[0]
        out = torch.full((n, self.S), -math.inf, dtype=torch.float64, device=low.device)
        return out.scatter_reduce(1, self.owner.unsqueeze(0).expand(n, -1), low, reduce="amax")

    def bound_boxes(self, lo, hi, parent=None, pkeys=None, palpha=None, plam=None):
        low, A, pre = self.bc.bound(lo, hi, parent)
        margin = self.bc.margin
        n = lo.shape[0]
        self.boxes += n
        # the slopes per box: found by alpha-CROWN (where has_alpha), else the parent's (warm start), else
        # CROWN's; kept for the float64 re-bound and the children
        alpha = None
        has_alpha = torch.zeros(n, dtype=torch.bool, device=lo.device)
        self.last_alpha = None
        if self.alpha_iters > 0 and len(pre):
            alpha = ([a.clone() for a in palpha] if palpha is not None else
                     [_relu_default(l, u).unsqueeze(1).expand(-1, self.bc.m, -1).clone() for l, u in pre])

        def improve(idx, low, margin, pre_i):
            """alpha-CROWN on the boxes ``idx`` (bounds ``pre_i``, slopes from ``alpha``); the better bounds kept."""
            la, al, ma = self.bc.alpha_bound(lo[idx], hi[idx], pre_i, iters=self.alpha_iters, lr=self.alpha_lr,
                                             alpha=[a[idx] for a in alpha], deadline=self.deadline)
            up = la > low[idx]
            low, margin = low.clone(), margin.clone()
            low[idx] = torch.where(up, la, low[idx])
            margin[idx] = torch.where(up, ma, margin[idx])
            for full, a in zip(alpha, al):
                full[idx] = a
            has_alpha[idx] = True
            return low, margin

        if self.alpha_iters > 0 and len(pre) and time.monotonic() < self.deadline:
            # boxes CROWN leaves open: alpha-CROWN on the final rows (same intermediate bounds)
            idx = (~(self._spec_keys(low).amin(1) > 0)).nonzero().flatten()
            if idx.numel():
                low, margin = improve(idx, low, margin, [(l[idx], u[idx]) for l, u in pre])
                self.alpha_boxes += idx.numel()
                self.alpha_closed += int((self._spec_keys(low[idx]).amin(1) > 0).sum())
        if self.refine_iters > 0 and self.alpha_iters > 0 and len(pre) > 1 and time.monotonic() < self.deadline:
            # still open: alpha-CROWN on the intermediate bounds too (kept for the children), then on the rows
            k_now = self._spec_keys(low).amin(1)
            stall = ~(k_now > 0)
            if pkeys is not None:  # only where splitting stopped paying: the split gained < refine_gain of the bound
                stall &= ~(k_now > pkeys + self.refine_gain * pkeys.abs())
            idx = stall.nonzero().flatten()
            if idx.numel():
                ref = self.bc.refine_intermediate(lo[idx], hi[idx], [(l[idx], u[idx]) for l, u in pre],
                                                  iters=self.refine_iters, lr=self.alpha_lr, deadline=self.deadline)
                pre = [(l.index_put((idx,), rl), u.index_put((idx,), ru)) for (l, u), (rl, ru) in zip(pre, ref)]
                low, margin = improve(idx, low, margin, ref)
                self.refine_boxes += idx.numel()
                self.refine_closed += int((self._spec_keys(low[idx]).amin(1) > 0).sum())
        # AND clauses still open: a convex combination of their rows (BoxCrown.combo_bound), lam warm-started
        # from the parent box (else from the best row), slopes optimised jointly in the alpha-CROWN members
        combo = torch.full((n, self.S), -math.inf, dtype=torch.float64, device=lo.device)
        cmargin = torch.zeros_like(combo)
        clam = cA = calpha = None
        cidx = None
        self.last_lam = None
        if self.combo_iters > 0 and self.multi and len(pre) and time.monotonic() < self.deadline:
            clam = plam.clone() if plam is not None else self._lam_init(low)
            cidx = (~(self._spec_keys(low).amin(1) > 0)).nonzero().flatten()
            if cidx.numel():
                pre_c = [(l[cidx], u[cidx]) for l, u in pre]
                ca0 = None
                if alpha is not None:  # the slopes of each clause's heaviest row
                    best_row = clam[cidx].argmax(2)  # (P, S)
                    ca0 = [a[cidx].gather(1, best_row.unsqueeze(2).expand(-1, -1, a.shape[2])) for a in alpha]
                cb, lam_c, calpha, cm, cA = self.bc.combo_bound(
                    lo[cidx], hi[cidx], pre_c, self.owner, iters=self.combo_iters, lr=self.combo_lr, lam=clam[cidx],
                    alpha=ca0, opt_alpha=alpha is not None, deadline=self.deadline)
                combo[cidx], cmargin[cidx] = cb, cm
                upd = torch.isfinite(cb).any(1)
                clam[cidx[upd]] = lam_c[upd].to(clam.dtype)
                self.combo_boxes += cidx.numel()
                self.combo_closed += int((self._spec_keys(low[cidx]).amin(1) <= 0).logical_and(
                    torch.maximum(self._spec_keys(low[cidx]), cb).amin(1) > 0).sum())
            self.last_lam = clam
        if self.bc64 is not None:
            # boxes that only the working dtype's rounding margin keeps open: bounded again in float64, their
            # own intermediate bounds intersected in, with the alpha-CROWN slopes found where there are; every
            # result is valid, the largest is kept
            near = (~(self._spec_keys(low).amin(1) > 0)) & (self._spec_keys(low + margin).amin(1) > 0)
            idx = near.nonzero().flatten()
            if idx.numel():
                par = [(l[idx].double(), u[idx].double()) for l, u in pre]
                low64, _, pre64 = self.bc64.bound(lo[idx], hi[idx], par)
                has = has_alpha[idx]
                if bool(has.any()):
                    sub = idx[has]
                    la64, _, _ = self.bc64.alpha_bound(lo[sub], hi[sub], [(l[has], u[has]) for l, u in pre64],
                                                          iters=0, alpha=[a[sub] for a in alpha])
                    low64 = low64.clone()
                    low64[has] = torch.maximum(low64[has], la64)
                low = low.clone()
                low[idx] = torch.maximum(low[idx], low64)
            if cidx is not None and cidx.numel():  # the same for the combinations, with the lam (and slopes) found
                sk_c = torch.maximum(self._spec_keys(low[cidx]), combo[cidx])
                sk_m = torch.maximum(self._spec_keys(low[cidx]), combo[cidx] + cmargin[cidx])
                near = ~(sk_c.amin(1) > 0) & (sk_m.amin(1) > 0)
                j = near.nonzero().flatten()
                if j.numel():
                    gi = cidx[j]
                    _, _, pre64 = self.bc64.bound(lo[gi], hi[gi], [(l[gi].double(), u[gi].double()) for l, u in pre])
                    cb64, *_ = self.bc64.combo_bound(lo[gi], hi[gi], pre64, self.owner, iters=0, lam=clam[gi],
                                                     alpha=None if calpha is None else [a[j] for a in calpha],
                                                     opt_alpha=calpha is not None)
                    combo[gi] = torch.maximum(combo[gi], cb64)
        self.last_alpha = alpha
        sk_rows = self._spec_keys(low)
        sk = torch.maximum(sk_rows, combo)
        keys = sk.amin(1)
        worst = sk.argmin(1)
        rowsel = torch.where(self.owner.unsqueeze(0) == worst.unsqueeze(1), low, torch.full_like(low, -math.inf))
        row = rowsel.argmax(1)
        Ar = A[torch.arange(A.shape[0], device=A.device), row].to(torch.float64)
        if cidx is not None and cidx.numel():  # where the worst clause's best bound is its combination: its coefficient
            ar = torch.arange(n, device=lo.device)
            use = combo[ar, worst] > sk_rows[ar, worst]
            full_cA = torch.zeros(n, self.S, A.shape[2], dtype=torch.float64, device=lo.device)
            full_cA[cidx] = cA.to(torch.float64)
            Ar = torch.where(use.unsqueeze(1), full_cA[ar, worst], Ar)
        width = hi - lo
        score = Ar.abs() * width
        ok = self.splittable.unsqueeze(0) & (width > 0)
        score = torch.where(ok, score, torch.full_like(score, -1.0))
        # a row with no input dependence (A = 0 on the splittable coordinates): the widest relative coordinate
        rel = torch.where(ok, width / (self.hi0 - self.lo0).clamp_min(1e-300), torch.full_like(width, -1.0))
        flat = ~(score.amax(1, keepdim=True) > 0)
        sc = torch.where(flat, rel, score)
        if self.mix > 0:  # the "sb" share times the relative width, plus a part of the relative width alone
            share = score / score.amax(1, keepdim=True).clamp_min(1e-300)
            sc = torch.where(ok, rel * (share + self.mix), torch.full_like(rel, -1.0))
        top = sc.topk(min(2, sc.shape[1]), dim=1).indices
        first = top[:, 0]
        wide = rel.argmax(1)  # the alternative: the widest (relative) coordinate, else the second "sb" choice
        alt = torch.where(wide != first, wide, top[:, -1])
        dim = torch.stack([first, alt], 1)  # (n, 2)
        # candidate counterexamples: centres and the minimisers of the worst row's linear bound
        corner = torch.where(Ar > 0, lo, hi)
        self._check(torch.cat([(lo + hi) / 2, corner]))
        return keys, dim, pre

    def _check(self, x):
        """Float64 evaluation of candidate points ``x (n, n_in)``; the first that satisfies every row of some
        specification (re-run alone, inside the root box) is kept in ``self.witness``."""
        if self.witness is not None or x.shape[0] == 0:
            return
        x = torch.minimum(torch.maximum(x, self.lo0), self.hi0)
        with torch.no_grad():
            y = self.net64(x.reshape(-1, *self.shape)).flatten(1)
        sat = self._spec_keys(y @ self.C64.T - self.d64)  # (n, S): <= 0 where every row of the spec holds
        hits = (sat <= 0).any(1).nonzero().flatten()
        for i in hits[:16].tolist():
            xi = x[i].reshape(self.shape).clone()
            with torch.no_grad():
                yi = self.net64(xi.unsqueeze(0))[0]
            r = self.C64 @ yi.flatten() - self.d64
            for s in range(self.S):
                if bool((r[self.owner == s] <= 0).all()) and bool(((xi.flatten() >= self.lo0[0]) &
                                                                   (xi.flatten() <= self.hi0[0])).all()):
                    self.witness = (s, xi, yi)
                    return

    def root(self) -> BoxChunk:
        keys, dim, pre = self.bound_boxes(self.lo0, self.hi0)
        return BoxChunk(self.lo0.clone(), self.hi0.clone(), dim, keys, pre, alpha=self.last_alpha, lam=self.last_lam)

    def root_spec_keys(self):
        low, _, pre = self.bc.bound(self.lo0, self.hi0)
        sk = self._spec_keys(low)
        if self.combo_iters > 0 and self.multi and len(pre):
            cb, *_ = self.bc.combo_bound(self.lo0, self.hi0, pre, self.owner, iters=self.combo_iters, lr=self.combo_lr,
                                         lam=self._lam_init(low))
            sk = torch.maximum(sk, cb)
        return sk[0]

    def _lam_init(self, low):
        """Starting row weights ``(n, S, m)`` of the combinations: 0.7 on each clause's best row (by the row
        bounds ``low (n, m)``) plus 0.3 spread evenly over its rows (so the first iterate is close to the best
        row's bound and every row can gain weight)."""
        n = low.shape[0]
        mask = self.owner.unsqueeze(0) == torch.arange(self.S, device=low.device).unsqueeze(1)  # (S, m)
        cnt = mask.sum(1, keepdim=True).clamp(min=1).to(torch.float64)
        lowm = torch.where(mask.unsqueeze(0), low.unsqueeze(1), torch.full((n, self.S, low.shape[1]), -math.inf,
                                                                           dtype=torch.float64, device=low.device))
        best = torch.nn.functional.one_hot(lowm.argmax(2), low.shape[1]).to(torch.float64)
        return (0.7 * best + 0.3 * mask.unsqueeze(0).to(torch.float64) / cnt) * mask.unsqueeze(0)

    # ------------------------------------------------------------ the policy (search.py's BranchingPolicy)
    def split(self, chunks: list[BoxChunk]):
        """All boxes of the popped chunks, halved along their chosen coordinate, as children chunks of at
        most ``chunk`` boxes (listed under the first parent; the other parents get none: the children of
        all of them together cover them all).  Boxes whose coordinate cannot be halved in float64 any
        more go to a ``stuck`` chunk, returned as it is."""
        lo = torch.cat([c.lo for c in chunks])
        hi = torch.cat([c.hi for c in chunks])
        dim = torch.cat([c.dim for c in chunks])
        pkeys = torch.cat([c.keys for c in chunks])
        pre = _cat_pre([c.pre for c in chunks])
        alpha = ([torch.cat([c.alpha[k] for c in chunks]) for k in range(len(chunks[0].alpha))]
                 if all(c.alpha is not None for c in chunks) else None)
        lam = torch.cat([c.lam for c in chunks]) if all(c.lam is not None for c in chunks) else None
        depth = max(c.depth for c in chunks) + 1
        a = lo.gather(1, dim[:, :1])
        b = hi.gather(1, dim[:, :1])
        mid = (a + b) / 2
        can = ((a < mid) & (mid < b)).flatten()
        out: list = []
        if not bool(can.all()):
            st = ~can
            out.append(BoxChunk(lo[st], hi[st], dim[st], pkeys[st], [(l[st], u[st]) for l, u in pre], depth, stuck=True,
                                alpha=None if alpha is None else [a[st] for a in alpha],
                                lam=None if lam is None else lam[st]))
            lo, hi, dim, mid, pkeys = lo[can], hi[can], dim[can], mid[can], pkeys[can]
            pre = [(l[can], u[can]) for l, u in pre]
            alpha = None if alpha is None else [a[can] for a in alpha]
            lam = None if lam is None else lam[can]
        if lo.shape[0] and self.lookahead and time.monotonic() < self.deadline:
            out += self._lookahead(lo, hi, dim, pkeys, pre, depth)
        elif lo.shape[0]:
            hi1 = hi.scatter(1, dim[:, :1], mid)
            lo2 = lo.scatter(1, dim[:, :1], mid)
            clo, chi = torch.cat([lo, lo2]), torch.cat([hi1, hi])
            cpre = [(torch.cat([l, l]), torch.cat([u, u])) for l, u in pre]
            ckeys, cdim = torch.cat([pkeys, pkeys]), torch.cat([dim, dim])  # the parents' (valid until bounded)
            calpha = None if alpha is None else [torch.cat([a, a]) for a in alpha]
            clam = None if lam is None else torch.cat([lam, lam])
            n = clo.shape[0]
            for s in range(0, n, self.chunk):
                sl = slice(s, s + self.chunk)
                out.append(BoxChunk(clo[sl], chi[sl], cdim[sl], ckeys[sl], [(l[sl], u[sl]) for l, u in cpre], depth,
                                    alpha=None if calpha is None else [a[sl] for a in calpha],
                                    lam=None if clam is None else clam[sl]))
        return [out] + [[] for _ in chunks[1:]]

    def _lookahead(self, lo, hi, dim, pkeys, pre, depth):
        """Children along the better of two candidate coordinates per box (``lookahead="two"``: the "sb"
        choice and the widest coordinate, or the second "sb" choice) or of every splittable coordinate
        (``"all"``), found by bounding both halves along each candidate (one batched pass over ``2 K N``
        boxes) and keeping, per box, the coordinate whose worse child has the highest bound (ties: the better
        child); the kept children are returned already bounded.  About ``K`` times the cost of a plain split
        per box, with far fewer boxes where the CROWN coefficient alone points at the wrong coordinate.
        Boxes are taken in pieces of bounded cost; after the deadline the rest is halved without bounding."""
        N, n_in = lo.shape
        if self.lookahead == "all":  # the "sb" choice first, then every other splittable coordinate
            others = torch.tensor([j for j in range(n_in) if bool(self.splittable[j])], dtype=torch.long,
                                  device=lo.device)
            rest = others.unsqueeze(0).expand(N, -1)
            rest = rest[rest != dim[:, :1]].reshape(N, -1) if bool((rest == dim[:, :1]).any(1).all()) else rest
            cand = torch.cat([dim[:, :1], rest], 1)
        else:
            cand = dim
        K = cand.shape[1]
        out = []
        s0 = 0
        while s0 < N:
            if time.monotonic() > self.deadline:  # plain halving along the "sb" coordinate, parents' keys
                sl = slice(s0, N)
                l_, h_, d_ = lo[sl], hi[sl], dim[sl]
                m_ = (l_.gather(1, d_[:, :1]) + h_.gather(1, d_[:, :1])) / 2
                clo = torch.cat([l_, l_.scatter(1, d_[:, :1], m_)])
                chi = torch.cat([h_.scatter(1, d_[:, :1], m_), h_])
                out.append(BoxChunk(clo, chi, torch.cat([d_, d_]), torch.cat([pkeys[sl], pkeys[sl]]),
                                    [(torch.cat([l[sl], l[sl]]), torch.cat([u[sl], u[sl]])) for l, u in pre], depth))
                break
            n = max(1, min(N - s0, self.piece))
            sl = slice(s0, s0 + n)
            out += self._look_piece(lo[sl], hi[sl], cand[sl], pkeys[sl], [(l[sl], u[sl]) for l, u in pre], depth, K)
            s0 += n
        return out

    def _halves(self, lo, hi, j):
        """Both halves of every box along coordinate ``j (N, 1)``; and whether it can be halved."""
        a, b = lo.gather(1, j), hi.gather(1, j)
        m = (a + b) / 2
        ok = ((a < m) & (m < b)).flatten() & self.splittable[j.flatten()]
        return torch.cat([lo, lo.scatter(1, j, m)]), torch.cat([hi.scatter(1, j, m), hi]), ok

    def _look_piece(self, lo, hi, cand, pkeys, pre, depth, K):
        """Look-ahead on one piece: first the "sb" coordinate for every box; the other candidates only for
        the boxes where its worse child gained less than ``gain`` (relative) over the parent's bound."""
        N = lo.shape[0]
        t = time.monotonic()
        c0lo, c0hi, ok0 = self._halves(lo, hi, cand[:, :1])
        k0, d0, p0 = self.bound_boxes(c0lo, c0hi, [(l.repeat(2, 1), u.repeat(2, 1)) for l, u in pre], pkeys.repeat(2))
        w0 = torch.minimum(k0[:N], k0[N:])
        b0 = torch.maximum(k0[:N], k0[N:])
        score0 = torch.where(ok0, w0 + 1e-6 * b0.clamp(max=1e6), torch.full_like(w0, -math.inf))
        poor = ~(w0 > 0) & ~((w0 - pkeys) > self.gain * pkeys.abs()) & ok0 if K > 1 else torch.zeros_like(ok0)
        kids = [(c0lo, c0hi, k0, d0, p0)]
        chosen_lo, chosen_hi = torch.cat([c0lo[:N], c0lo[N:]]), torch.cat([c0hi[:N], c0hi[N:]])
        keys_s, dims_s, pre_s = k0, d0, p0
        idx = poor.nonzero().flatten()
        if idx.numel() and K > 1:
            M = idx.numel()
            lo_p, hi_p = lo[idx], hi[idx]
            pre_p = [(l[idx], u[idx]) for l, u in pre]
            los, his, valid = [], [], []
            for k in range(1, K):  # a loop over candidate slots, not over boxes
                cl, ch, ok = self._halves(lo_p, hi_p, cand[idx, k:k + 1])
                los.append(cl)
                his.append(ch)
                valid.append(ok)
            clo, chi = torch.cat(los), torch.cat(his)
            keys, dims, kpre = self.bound_boxes(clo, chi, [(l.repeat(2 * (K - 1), 1), u.repeat(2 * (K - 1), 1))
                                                            for l, u in pre_p], pkeys[idx].repeat(2 * (K - 1)))
            k2 = keys.reshape(K - 1, 2, M)
            worse, better = k2.amin(1), k2.amax(1)
            sc = torch.where(torch.stack(valid), worse + 1e-6 * better.clamp(max=1e6), torch.full_like(worse, -math.inf))
            bv, bk = sc.max(0)
            take = bv > score0[idx]  # a candidate beats the "sb" coordinate: replace that box's children
            if bool(take.any()):
                ar = torch.arange(M, device=lo.device)
                src = torch.cat([(bk * 2) * M + ar, (bk * 2 + 1) * M + ar])[torch.cat([take, take])]
                dst = torch.cat([idx, idx + N])[torch.cat([take, take])]
                chosen_lo, chosen_hi = chosen_lo.clone(), chosen_hi.clone()
                chosen_lo[dst], chosen_hi[dst] = clo[src], chi[src]
                keys_s, dims_s = keys_s.clone(), dims_s.clone()
                keys_s[dst], dims_s[dst] = keys[src], dims[src]
                pre_s = [(l.clone(), u.clone()) for l, u in pre_s]
                for (l, u), (kl, ku) in zip(pre_s, kpre):
                    l[dst], u[dst] = kl[src], ku[src]
        el = time.monotonic() - t
        if el > 0:  # pieces of about step_s seconds
            self.piece = int(min(self.chunk_max, max(8, self.step_s * N / el)))
        out = []
        for s0 in range(0, chosen_lo.shape[0], self.chunk):
            sl = slice(s0, s0 + self.chunk)
            out.append(BoxChunk(chosen_lo[sl], chosen_hi[sl], dims_s[sl], keys_s[sl],
                                [(l[sl], u[sl]) for l, u in pre_s], depth, bounded=True))
        return out

    # ------------------------------------------------------------ the bounding callback
    def bound(self, children: list[BoxChunk]):
        """Bound every child chunk's boxes (the parents' bounds intersected in), drop closed boxes, set keys;
        a float64-checked counterexample ends the search.  Pieces of at most ``chunk_max`` boxes, the
        deadline checked between them; boxes not bounded before it keep their parent's (valid) key."""
        for ch in children:
            if ch.stuck:
                continue
            t = time.monotonic()
            if t > self.deadline:
                continue  # the child keeps its parent's keys (valid on the sub-box); the search stops at its deadline
            if ch.bounded:  # bounded by the look-ahead of split()
                keys, dim, pre, alpha, lam = ch.keys, ch.dim, ch.pre, None, None
            else:
                keys, dim, pre = self.bound_boxes(ch.lo, ch.hi, ch.pre, ch.keys, ch.alpha, ch.lam)
                alpha, lam = self.last_alpha, self.last_lam
            if self.witness is not None:
                s, x, y = self.witness
                return x, y, s
            op = ~(keys > 0)
            closed_min = float(keys[~op].min()) if bool((~op).any()) else math.inf
            ch.lo, ch.hi, ch.dim, ch.keys = ch.lo[op], ch.hi[op], dim[op], keys[op]
            ch.pre = [(l[op], u[op]) for l, u in pre]
            ch.alpha = None if alpha is None else [a[op] for a in alpha]
            ch.lam = None if lam is None else lam[op]
            ch.key = float(ch.keys.min()) if bool(op.any()) else closed_min
            ch.nbytes = ch.size()
            # adapt the chunk size to the measured time per box (bounded work per step)
            el = time.monotonic() - t
            if len(op) >= self.chunk // 2 and el > 0:
                per = el / len(op)
                self.chunk = int(min(self.chunk_max, max(32, 0.5 * self.step_s / per)))
        return None
