"""β-CROWN: bounds on ``C f(x)`` over activation-split domains, and the BaBSR branching policy.

Math
----
A *domain* is the input box together with split signs ``s_j in {-1, 0, +1}`` on ReLU/LeakyReLU
pre-activations ``z_j`` (for MaxMin/GroupSort/Householder: the ReLU arguments ``r = R x`` of their
exact ReLU rewriting, relax/piecewise.py): ``+1`` restricts to ``z_j >= 0``, ``-1`` to ``z_j <= 0``.
Its intermediate bounds are the root's CROWN bounds with every split neuron clamped to its side
(``l_j <- max(l_j, 0)`` or ``u_j <- min(u_j, 0)``): bounds valid on the box stay valid on any part of
it, and the clamp is the split constraint itself (so the split neuron's relaxation is exact).

The lower bound is the engine's CROWN backward pass (relax/engine.py) with two families of free
variables: the lower relaxation slopes ``alpha`` (per spec row, domain and neuron, in their valid
interval) and, for every split neuron, a multiplier ``beta_j >= 0`` of the constraint ``s_j z_j >= 0``:
when the backward pass reaches the pre-activation ``z`` of a split layer, its coefficient ``a`` becomes
``a - beta * s``.  Since ``s_j z_j >= 0`` on the domain and ``beta_j >= 0``, the linear function
``a z + c`` that lower-bounds the output is lowered further by ``beta_j s_j z_j >= 0``: the bound stays
valid on the domain for **every** ``beta >= 0`` and every ``alpha`` in range (Wang et al. 2021, β-CROWN).
Every optimizer iterate is therefore a certified bound; the best per (domain, row) is kept.  With the
optimal multipliers the bound equals the LP relaxation with the split constraints imposed on
``z`` through all earlier layers (for fixed intermediate bounds) -- a Lagrangian dual.

α and β are optimized jointly by Adam (projected: ``beta <- max(beta, 0)``, ``alpha`` clipped), with
α warm-started from the parent and β of earlier splits inherited (the new split's β starts at 0).
Everything is vectorized over the domains of a batch (the engine's batch dimension) and runs on the
network's device.  Floating point: the engine's policy (CROWN widened by the worst-case rounding
margin of its dot products, relax/engine.py); the comparison with ``d`` is done in float64.

Branching (BaBSR, Bunel et al. 2020, as in α,β-CROWN): for unstable ``j`` with coefficient ``λ_j``
(CROWN's lower-bound coefficient on the activation's output, mean over spec rows), the bias ``b_j``
of the affine layer producing ``z_j``, ``s = u/(u-l)`` and the chord intercept ``t = -(1-a) l u/(u-l)``
(``a``: LeakyReLU slope), ``score_j = |min(λ_j b_j (s-1), λ_j b_j s) + min(λ_j, 0) t|``; the neuron with
the largest score is split (if every score is ``<= 1e-3``: the most negative intercept term).

FSB (filtered smart branching, De Palma et al. 2021; :class:`FSBPolicy`, ``branching="fsb"``): the
top-``k`` neurons by that score and the top-``k`` by intercept term are candidates; both children of
every candidate are bounded in one batched pass at the parent's α, β, and the candidate whose worse
child is best is split.  Those pass bounds are certified bounds of the children (any α, β are valid),
so the children start from them.  Measured on ERAN ConvSmall images 22, 19 and 6x100 image 23: FSB needed
149 / 85 / 60 domains where BaBSR needed 123 / 79 / 66 and costs ~25 % more CPU per domain, so BaBSR
stays the default.

Memory: a domain's warm starts (α, β, FSB candidates) are optional -- :meth:`ReluDomain.shed` drops
them when the store nears its budget (relax/bab/store.py) and :meth:`BetaCrown.warm` substitutes the
default slopes and zero multipliers, so spilling never changes soundness, only the starting point.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from ...models.graph import Network
from ..affine import AFFINE_HANDLERS
from ..engine import _Engine
from ..sets import Box
from .adam import Adam

SPLIT_PHIS = ("relu", "leaky_relu")


class BetaEngine(_Engine):
    """The engine's backward pass with split multipliers ``beta`` injected at split pre-activations and
    the coefficients reaching each activation recorded (for branching)."""

    beta: dict | None = None
    signs: dict | None = None
    record: dict | None = None

    def _relax(self, ln, alpha=None):
        # the relaxation without alpha is computed once per node; alpha only replaces the lower slopes of
        # unstable neurons (exactly what ReLU.relax / LeakyReLU.relax do with alpha: intercept 0)
        if alpha is None or ln.phi.name not in SPLIT_PHIS:
            return super()._relax(ln, alpha)
        aL, bL, aU, bU = super()._relax(ln, None)
        key = ln.name + "#unstable"
        unst = self.relax_cache.get(key)
        if unst is None:
            l, u = self.pre[ln.name]
            unst = ((l < 0) & (u > 0)).unsqueeze(1)
            self.relax_cache[key] = unst
        return torch.where(unst, alpha, aL.unsqueeze(1)), torch.zeros_like(bL), aU, bU

    def _seen_coefficient(self, ln, G) -> None:
        if self.record is not None:
            self.record[ln.name] = G.detach()

    def _split_terms(self, ln, coef, upper: bool):
        if self.beta is not None and ln.name in self.beta:
            # the split constraints s z >= 0 with multipliers beta >= 0 (lower bound: subtract; upper: add)
            term = self.beta[ln.name] * self.signs[ln.name].unsqueeze(1)
            coef = coef + term if upper else coef - term
        return coef


@dataclass
class ReluDomain:
    """A domain of activation-split BaB: flat split signs ``(N,)`` int8 over every splittable neuron,
    warm-start ``alpha (m, Na)`` and ``beta (m, N)``, and its certified row bounds ``lower (m,)``."""
    key: float
    signs: torch.Tensor
    alpha: torch.Tensor
    beta: torch.Tensor
    lower: torch.Tensor
    depth: int = 0
    split: int = -1            # the flat index to split next (chosen by the branching scores)
    nbytes: int = 0
    cands: torch.Tensor | None = None  # FSB: candidate neurons to split (flat indices, -1 = none)

    def __post_init__(self):
        self.nbytes = self._size()

    def _size(self) -> int:
        n = lambda t: 0 if t is None else t.numel() * t.element_size()
        return int(n(self.signs) + n(self.alpha) + n(self.beta) + n(self.cands) + 64 * 8)

    def shed(self) -> int:
        """Spill (memory budget, relax/bab/store.py): drop the warm starts ``alpha``/``beta`` and the FSB
        candidates -- optimizer starting points only, any value is sound; the next bounding starts from
        the default slopes and zero multipliers.  Returns the bytes freed."""
        if self.alpha is None and self.beta is None and self.cands is None:
            return 0
        old = self.nbytes
        self.alpha = self.beta = self.cands = None
        self.nbytes = self._size()
        return old - self.nbytes


class BetaCrown:
    """Bounding and branching for the specification ``C f(x) <= d`` (one conjunction of ``m`` rows) on a box.

    The property to prove is "no x of the box satisfies every row": a domain is closed when some row
    has a certified lower bound ``> d``; its key is ``max_k (lower_k - d_k)``.
    """

    def __init__(self, net: Network, lo: torch.Tensor, hi: torch.Tensor, C: torch.Tensor, d: torch.Tensor,
                 dtype: torch.dtype, *, iters: int = 20, lr_alpha: float = 0.1, lr_beta: float = 0.05,
                 root_iters: int = 50, root_lr: float = 0.1, chunk_elems: int = 2 ** 25, pre=None,
                 interm_iters: int = 0, interm_lr: float = 0.25, deadline: float = math.inf):
        self.dtype = dtype
        self.net = net
        self.lo, self.hi = lo.reshape(1, *net.input_shape).to(dtype), hi.reshape(1, *net.input_shape).to(dtype)
        self.C = C.reshape(1, C.shape[-2], *net.output_shape).to(dtype)
        self.d = d.to(torch.float64).reshape(-1)
        self.m = self.C.shape[1]
        self.iters, self.lr_alpha, self.lr_beta = int(iters), float(lr_alpha), float(lr_beta)
        self.root_iters, self.root_lr = int(root_iters), float(root_lr)
        self.chunk = chunk_elems
        with torch.no_grad():
            eng = _Engine(net, Box(self.lo, self.hi), dtype, chunk_elems)
            if pre is None:
                eng.sweep("crown")
                pre = dict(eng.pre)
        self.lnodes = eng.lnodes
        self.out = eng.net.output
        idx = eng.index
        if interm_iters > 0:
            pre = self._refine_intermediate(pre, int(interm_iters), float(interm_lr), deadline)
        self.pre0 = pre
        # splittable nodes (ReLU/LeakyReLU, also inside sorting rewritings) with unstable root neurons
        self.split_nodes, self.alpha_nodes = [], []
        self.alpha_rng = {}
        for ln in self.lnodes:
            if ln.kind != "act" or idx[ln.name] > idx[self.out]:
                continue
            l, u = pre[ln.name]
            unstable = bool(((l < 0) & (u > 0)).any())
            if ln.phi.name in SPLIT_PHIS and unstable:
                self.split_nodes.append(ln)
            rng = ln.phi.alpha_bounds(l, u, ln.attrs)
            if rng is not None and unstable:
                self.alpha_nodes.append(ln)
                self.alpha_rng[ln.name] = rng
        self.s_shape = {ln.name: tuple(pre[ln.name][0].shape[1:]) for ln in self.split_nodes}
        self.s_size = {k: int(math.prod(v)) for k, v in self.s_shape.items()}
        self.N = sum(self.s_size.values())
        self.a_shape = {ln.name: tuple(pre[ln.name][0].shape[1:]) for ln in self.alpha_nodes}
        self.a_size = {k: int(math.prod(v)) for k, v in self.a_shape.items()}
        self.Na = sum(self.a_size.values())
        # flat root bounds and the bias of the affine layer producing each split pre-activation
        dev = self.lo.device
        self.l0 = torch.cat([pre[ln.name][0].reshape(-1) for ln in self.split_nodes]) if self.N else \
            torch.zeros(0, dtype=dtype, device=dev)
        self.u0 = torch.cat([pre[ln.name][1].reshape(-1) for ln in self.split_nodes]) if self.N else \
            torch.zeros(0, dtype=dtype, device=dev)
        slope, bias = [], []
        by_name = {n.name: n for n in self.lnodes}
        for ln in self.split_nodes:
            a = float(ln.attrs.get("negative_slope", 0.0)) if ln.phi.name == "leaky_relu" else 0.0
            slope.append(torch.full((self.s_size[ln.name],), a, dtype=dtype, device=dev))
            b = torch.zeros(self.s_shape[ln.name], dtype=dtype, device=dev)
            src = by_name.get(ln.inputs[0])
            if ln.pmap is None and src is not None and src.kind == "affine":
                with torch.no_grad():
                    z = torch.zeros((1, *by_name[src.inputs[0]].shape), dtype=dtype, device=dev)
                    b = AFFINE_HANDLERS[src.node.op].ibp(src.node, z, z)[0][0].to(dtype)
            bias.append(b.reshape(-1))
        self.slope = torch.cat(slope) if slope else torch.zeros(0, dtype=dtype, device=dev)
        self.bias = torch.cat(bias) if bias else torch.zeros(0, dtype=dtype, device=dev)
        self.unstable0 = (self.l0 < 0) & (self.u0 > 0)

    def _refine_intermediate(self, pre: dict, iters: int, lr: float, deadline: float, layers=None) -> dict:
        """alpha-CROWN on the pre-activation bounds of every ReLU/LeakyReLU layer (in order; ``pmap``-free
        nodes), each unstable neuron a row with its own slopes, lower and upper side: the optimized bounds
        are intersected with CROWN's (every iterate is sound), and later layers use the refined earlier
        ones.  Fewer unstable neurons and tighter relaxations make every later bound, and every
        branch-and-bound domain, tighter.  ``layers``: only these activation nodes (by name), e.g. one layer
        at a time between the per-neuron searches of relax/bab/refine.py."""
        pre = dict(pre)
        by = {n.name: n for n in self.lnodes}
        order = [ln for ln in self.lnodes if ln.kind == "act"]
        for k, ln in enumerate(order):
            if time.monotonic() > deadline:
                break
            if ln.pmap is not None or ln.phi.name not in SPLIT_PHIS or k == 0:
                continue
            if layers is not None and ln.name not in layers:
                continue
            l, u = pre[ln.name]
            rows = ((l < 0) & (u > 0)).flatten(1).any(0).nonzero().flatten()
            if rows.numel() == 0:
                continue
            xname = ln.inputs[0]
            x_shape = by[xname].shape
            n = int(math.prod(x_shape))
            A0 = torch.eye(n, dtype=self.dtype, device=l.device)[rows].reshape(1, -1, *x_shape)
            eng = BetaEngine(self.net, Box(self.lo, self.hi), self.dtype, self.chunk)
            eng.pre = pre
            prev = [p for p in order[:k] if p.phi.alpha_bounds(*pre[p.name], p.attrs) is not None
                    and bool(((pre[p.name][0] < 0) & (pre[p.name][1] > 0)).any())]
            r = rows.numel()
            new = {}
            for upper in (False, True):
                params = {p.name: p.phi.default_alpha(*pre[p.name], p.attrs).to(self.dtype).unsqueeze(1)
                          .expand(1, r, *pre[p.name][0].shape[1:]).clone().requires_grad_(True) for p in prev}
                best = None
                opt = Adam([(t, lr) for t in params.values()]) if params else None
                for it in range(iters + 1):
                    with torch.set_grad_enabled(opt is not None and it < iters):
                        v = eng.backward(xname, A0, upper=upper, alpha=params or None)
                    vd = v.detach()
                    best = vd if best is None else (torch.minimum(best, vd) if upper else torch.maximum(best, vd))
                    if opt is None or it == iters or time.monotonic() > deadline:
                        break
                    grads = torch.autograd.grad(v.sum() if upper else -v.sum(), list(params.values()))
                    opt.step(grads)
                    with torch.no_grad():
                        for p in prev:
                            params[p.name].clamp_(*by_rng(p, pre))
                new[upper] = best
            lf, uf = l.flatten(1).clone(), u.flatten(1).clone()
            lf[:, rows] = torch.maximum(lf[:, rows], new[False])
            uf[:, rows] = torch.minimum(uf[:, rows], new[True])
            pre[ln.name] = (lf.reshape(l.shape), uf.reshape(u.shape))
        return pre

    # ------------------------------------------------------------------ views
    def _unflat(self, flat: torch.Tensor, names, shapes, sizes, lead: tuple):
        out, off = {}, 0
        for n in names:
            out[n] = flat[..., off:off + sizes[n]].reshape(*lead, *shapes[n])
            off += sizes[n]
        return out

    def _pre(self, S: torch.Tensor) -> dict:
        """Domain intermediate bounds: the root's with every split neuron clamped to its side."""
        n = S.shape[0]
        pre = {}
        for name, (l, u) in self.pre0.items():
            pre[name] = (l.expand(n, *l.shape[1:]), u.expand(n, *u.shape[1:]))
        if self.N:
            l = torch.where(S > 0, self.l0.clamp(min=0), self.l0)
            u = torch.where(S < 0, self.u0.clamp(max=0), self.u0)
            for name, t in self._unflat(torch.stack((l, u)), [ln.name for ln in self.split_nodes], self.s_shape,
                                        self.s_size, (2, n)).items():
                pre[name] = (t[0], t[1])
        return pre

    def default_alpha(self) -> torch.Tensor:
        parts = []
        for ln in self.alpha_nodes:
            l, u = self.pre0[ln.name]
            a = ln.phi.default_alpha(l, u, ln.attrs).to(self.dtype).reshape(1, -1).expand(self.m, -1)
            parts.append(a)
        return torch.cat(parts, 1) if parts else torch.zeros(self.m, 0, dtype=self.dtype, device=self.lo.device)

    def warm(self, domains) -> tuple[torch.Tensor, torch.Tensor]:
        """Stacked warm starts ``(alpha (n, m, Na), beta (n, m, N))`` of ``domains``; a domain that spilled
        them (:meth:`ReluDomain.shed`) gets the default slopes and zero multipliers."""
        a0 = b0 = None
        al, be = [], []
        for d in domains:
            if d.alpha is None:
                a0 = self.default_alpha() if a0 is None else a0
            if d.beta is None:
                b0 = torch.zeros(self.m, self.N, dtype=self.dtype, device=self.lo.device) if b0 is None else b0
            al.append(a0 if d.alpha is None else d.alpha)
            be.append(b0 if d.beta is None else d.beta)
        return torch.stack(al), torch.stack(be)

    # ------------------------------------------------------------------ bounding
    def bound(self, S: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, iters: int, lr_alpha: float,
              lr_beta: float, lo=None, hi=None, deadline: float = math.inf, owner: torch.Tensor | None = None,
              C: torch.Tensor | None = None, d: torch.Tensor | None = None):
        """Optimize α, β for the domains ``S (n, N)`` from ``alpha (n, m, Na)``, ``beta (n, m, N)``.

        Returns ``(lower (n, m), alpha, beta, scores (n, N))``: the best certified row bounds over
        the iterates (in the working dtype), the α, β attaining them, and the branching scores
        (``-inf`` where a neuron cannot be split).  Every iterate is a certified bound, so the
        optimization stops early, with the best so far, once ``time.monotonic()`` passes ``deadline``
        (the first iterate, plain CROWN with the given α, β, always runs).  ``owner (m,)``: the
        specification of each row when the rows are a *disjunction* of specifications (the root of a
        query): a domain is then closed only when every specification has a proved row; without it,
        one proved row closes the domain (its rows are one specification's conjunction).  ``C (n, m, *out)``
        and ``d (n, m)``: per-domain specification rows and thresholds instead of the instance's (the
        per-neuron searches of relax/bab/refine.py: each domain bounds its own neuron)."""
        n = S.shape[0]
        dt = self.dtype
        lo = self.lo.expand(n, *self.lo.shape[1:]) if lo is None else lo
        hi = self.hi.expand(n, *self.hi.shape[1:]) if hi is None else hi
        eng = BetaEngine(self.net, Box(lo, hi), dt, self.chunk)
        eng.pre = self._pre(S)
        eng.record = {}
        Sf = S.to(dt)
        names_s = [ln.name for ln in self.split_nodes]
        names_a = [ln.name for ln in self.alpha_nodes]
        eng.signs = self._unflat(Sf, names_s, self.s_shape, self.s_size, (n,))
        a_p = alpha.detach().clone().requires_grad_(iters > 0 and self.Na > 0)
        b_p = beta.detach().clone().requires_grad_(iters > 0 and bool((S != 0).any()))
        Cs = self.C.expand(n, *self.C.shape[1:]) if C is None else C.to(dt)
        dd = self.d if d is None else d.to(torch.float64)
        best = torch.full((n, Cs.shape[1]), -math.inf, dtype=dt, device=lo.device)
        best_a, best_b = a_p.detach().clone(), b_p.detach().clone()
        params = [(p, lr) for p, lr in ((a_p, lr_alpha), (b_p, lr_beta)) if p.requires_grad]
        opt = Adam(params) if params else None
        flush = torch.set_flush_denormal(True)  # Adam's second moments underflow: denormals are ~100x slower
        rec = {}
        spec_rows = None if owner is None else [owner == sp for sp in torch.unique(owner)]  # row masks per spec
        for it in range(iters + 1):
            with torch.set_grad_enabled(opt is not None and it < iters):
                eng.beta = self._unflat(b_p, names_s, self.s_shape, self.s_size, (n, self.m))
                al = self._unflat(a_p, names_a, self.a_shape, self.a_size, (n, self.m))
                val = eng.backward(self.out, Cs, upper=False, alpha=al if al else None)
            with torch.no_grad():
                v = val.detach()
                v = torch.where(torch.isnan(v), torch.full_like(v, -math.inf), v)
                better = v > best
                best = torch.where(better, v, best)
                best_a = torch.where(better.unsqueeze(2), a_p.detach(), best_a)
                best_b = torch.where(better.unsqueeze(2), b_p.detach(), best_b)
                if it == 0 or better.any():
                    rec = dict(eng.record)
                proved = best.double() > dd
                if owner is None:
                    closed = proved.any(1)
                else:
                    closed = torch.stack([proved[:, g].any(1) for g in spec_rows], 1).all(1)
            if it == iters or opt is None or bool(closed.all()) or time.monotonic() > deadline:
                break
            loss = -(val * (~closed).to(dt).unsqueeze(1)).sum()
            grads = torch.autograd.grad(loss, [p for p, _ in params])
            opt.step(grads)
            with torch.no_grad():
                if b_p.requires_grad:
                    b_p.clamp_(min=0)
                if a_p.requires_grad:
                    off = 0
                    for nm in names_a:
                        lo_a, hi_a = self.alpha_rng[nm]
                        a_p[..., off:off + self.a_size[nm]].clamp_(lo_a, hi_a)
                        off += self.a_size[nm]
        if flush:
            torch.set_flush_denormal(False)
        scores = self._scores(S, rec, names_s, n)
        return best.detach(), best_a, best_b, scores

    def _scores(self, S, rec, names_s, n):
        if not self.N:
            return torch.zeros(n, 0, dtype=self.dtype, device=S.device)
        lam = torch.cat([rec[nm].mean(1).reshape(n, -1) if nm in rec else
                         torch.zeros(n, self.s_size[nm], dtype=self.dtype, device=S.device) for nm in names_s], 1)
        l, u = self.l0, self.u0
        free = (S == 0) & self.unstable0.unsqueeze(0)
        den = torch.where(self.unstable0, u - l, torch.ones_like(u))
        s = u / den
        t = -(1 - self.slope) * l * u / den
        icp = lam.clamp(max=0) * t
        lb = lam * self.bias
        score = (torch.minimum(lb * (s - 1), lb * s) + icp).abs()
        score = torch.where(free, score, torch.full_like(score, -math.inf))
        # ties / tiny scores: the most negative intercept term, then any free neuron
        alt = torch.where(free, -icp + 1e-12, torch.full_like(icp, -math.inf))
        use_alt = score.amax(1, keepdim=True) <= 1e-3
        self._last_alt = alt  # the intercept scores: FSB's second candidate list (see candidates())
        return torch.where(use_alt, alt, score)

    def candidates(self, scores: torch.Tensor, k: int) -> torch.Tensor:
        """FSB's candidates per domain ``(n, 2k)``: the top-``k`` neurons by BaBSR score and the top-``k``
        by intercept term (of the last :meth:`bound` call), ``-1`` where fewer free neurons exist or a
        neuron is listed twice."""
        n = scores.shape[0]
        k = max(1, min(int(k), self.N))
        alt = getattr(self, "_last_alt", None)
        lists = [scores] + ([alt] if alt is not None and alt.shape == scores.shape else [])
        idx, val = [], []
        for t in lists:
            v, i = t.topk(k, dim=1)
            idx.append(i)
            val.append(v)
        idx, val = torch.cat(idx, 1), torch.cat(val, 1)
        idx = torch.where(torch.isfinite(val), idx, torch.full_like(idx, -1))
        if idx.shape[1] > k:  # drop repeats of a neuron already listed earlier in the row
            same = (idx.unsqueeze(2) == idx.unsqueeze(1)) & (idx.unsqueeze(2) >= 0)
            dup = torch.tril(same.to(torch.int8), diagonal=-1).any(2)
            idx = torch.where(dup, torch.full_like(idx, -1), idx)
        return idx.reshape(n, -1)

    # ------------------------------------------------------------------ domains
    def make_domains(self, S, lower, alpha, beta, scores, depth, fsb_k: int = 0) -> list[ReluDomain]:
        key = (lower.double() - self.d).amax(1)
        pick = scores.argmax(1) if scores.shape[1] else torch.zeros(S.shape[0], dtype=torch.long)
        can = torch.isfinite(scores.amax(1)) if scores.shape[1] else torch.zeros(S.shape[0], dtype=torch.bool)
        cands = self.candidates(scores, fsb_k) if fsb_k > 0 and scores.shape[1] else None
        key_l, pick_l, can_l = key.tolist(), pick.tolist(), can.tolist()
        out = []
        for i in range(S.shape[0]):
            closed = key_l[i] > 0
            out.append(ReluDomain(key_l[i], S[i] if not closed else S[i][:0], alpha[i] if not closed else alpha[i][:0],
                                  beta[i] if not closed else beta[i][:0], lower[i], depth[i],
                                  pick_l[i] if can_l[i] else -1,
                                  cands=cands[i] if cands is not None and not closed and can_l[i] else None))
        return out

    def root(self):
        S = torch.zeros(1, self.N, dtype=torch.int8, device=self.lo.device)
        alpha = self.default_alpha().unsqueeze(0)
        beta = torch.zeros(1, self.m, self.N, dtype=self.dtype, device=self.lo.device)
        lower, alpha, beta, scores = self.bound(S, alpha, beta, self.root_iters, self.root_lr, 0.0)
        return self.make_domains(S, lower, alpha, beta, scores, [0])[0]


def by_rng(p, pre):
    return p.phi.alpha_bounds(*pre[p.name], p.attrs)


class BaBSRPolicy:
    """Split each domain on its highest-scoring neuron (scores computed by its bounding pass)."""

    def split(self, domains: list[ReluDomain]):
        out = []
        for dom in domains:
            if dom.split < 0:
                out.append(None)
                continue
            kids = []
            for sgn in (1, -1):
                S = dom.signs.clone()
                S[dom.split] = sgn
                kids.append(ReluDomain(dom.key, S, dom.alpha, dom.beta, dom.lower, dom.depth + 1))
            out.append(kids)
        return out


class FSBPolicy:
    """Filtered smart branching (De Palma et al. 2021, as α,β-CROWN's kFSB): for each domain, the
    ``2k`` candidates of :meth:`BetaCrown.candidates` (top-``k`` by BaBSR score, top-``k`` by intercept)
    are each tried: both children of every candidate of every domain of the batch are bounded in
    **one** batched β-CROWN pass at the parent's fixed α, β (no optimization), and the candidate whose
    worse child has the largest bound is split.  That pass's bounds are certified bounds on the
    children (any α, β are valid), so they are handed on as the children's starting ``lower`` (the
    optimized bound of the bounding step only raises it).  Domains without candidates fall back to
    their BaBSR choice."""

    def __init__(self, bc: "BetaCrown", k: int = 4, max_children: int = 4096):
        self.bc, self.k, self.max_children = bc, int(k), int(max_children)
        self.tried = 0  # candidate children bounded so far (for profiling)

    def split(self, domains: list[ReluDomain]):
        bc = self.bc
        use = [i for i, d in enumerate(domains) if d.split >= 0 and d.cands is not None and bool((d.cands >= 0).any())]
        choice = {i: domains[i].split for i in range(len(domains))}
        lows = {}
        step = max(1, self.max_children // max(1, 2 * (2 * self.k)))
        for a in range(0, len(use), step):
            part = use[a:a + step]
            cand = torch.stack([domains[i].cands for i in part])  # (p, K)
            p, K = cand.shape
            valid = cand >= 0
            c = cand.clamp(min=0)
            S = torch.stack([domains[i].signs for i in part])  # (p, N)
            Sk = S.unsqueeze(1).unsqueeze(1).repeat(1, K, 2, 1)  # (p, K, 2, N)
            sg = torch.tensor([1, -1], dtype=S.dtype, device=S.device).view(1, 1, 2, 1)
            Sk.scatter_(3, c.view(p, K, 1, 1).expand(p, K, 2, 1), sg.expand(p, K, 2, 1))
            al, be = bc.warm([domains[i] for i in part])
            rep = lambda t: t.unsqueeze(1).expand(p, 2 * K, *t.shape[1:]).reshape(p * 2 * K, *t.shape[1:])
            with torch.no_grad():
                low, _, _, _ = bc.bound(Sk.reshape(p * K * 2, -1), rep(al), rep(be), 0, 0.0, 0.0)
            self.tried += p * K * 2
            low = low.reshape(p, K, 2, -1)
            key = (low.double() - bc.d).amax(3)  # (p, K, 2)
            worst = key.amin(2)
            worst = torch.where(valid, worst, torch.full_like(worst, -math.inf))
            best = worst.argmax(1)
            for r, i in enumerate(part):
                j = int(best[r])
                if math.isfinite(float(worst[r, j])):
                    choice[i] = int(cand[r, j])
                    lows[i] = (low[r, j, 0], low[r, j, 1])
        out = []
        for i, dom in enumerate(domains):
            if dom.split < 0:
                out.append(None)
                continue
            kids = []
            for t, sgn in enumerate((1, -1)):
                S = dom.signs.clone()
                S[choice[i]] = sgn
                low = dom.lower if i not in lows else torch.maximum(dom.lower, lows[i][t].to(dom.lower.dtype))
                kids.append(ReluDomain(dom.key, S, dom.alpha, dom.beta, low, dom.depth + 1))
            out.append(kids)
        return out


def make_bounder(bc: BetaCrown, fsb_k: int = 0):
    """The bounding callback of the search: stacks the children, runs β-CROWN on them, sets keys
    (and, with ``fsb_k > 0``, each open child's FSB candidates for :class:`FSBPolicy`)."""
    def bound(children: list[ReluDomain]):
        S = torch.stack([c.signs for c in children])
        alpha, beta = bc.warm(children)
        lower, alpha, beta, scores = bc.bound(S, alpha, beta, bc.iters, bc.lr_alpha, bc.lr_beta)
        # a child is never worse than its parent (both bounds are valid on the child)
        parent = torch.stack([c.lower for c in children]).to(lower.dtype)
        lower = torch.maximum(lower, parent)
        new = bc.make_domains(S, lower, alpha, beta, scores, [c.depth for c in children], fsb_k=fsb_k)
        for c, nd in zip(children, new):
            c.key, c.signs, c.alpha, c.beta, c.lower, c.split, c.nbytes, c.cands = (
                nd.key, nd.signs, nd.alpha, nd.beta, nd.lower, nd.split, nd.nbytes, nd.cands)
        return None
    return bound
