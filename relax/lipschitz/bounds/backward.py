"""Bound propagation on the backward (Clarke-Jacobian) graph of a chain network.

For a seed ``c`` (one row per output, or a logit-margin vector) the gradient of ``c^T f`` is

    g_L = W_L^T c,    h_k = gate_k(g_k)  (see :mod:`.gates`),    g_{k-1} = W_{k-1}^T h_k,   grad = W_0^T h_1.

The only unknowns are the Clarke derivatives ``d_k in [a_k, b_k]`` (decided by forward
pre-activation bounds).  Because the seed is a *fixed point*, back-substituting linear
relaxations (CROWN) from any node down to the seed computes the exact maximum of a linear function
over the *relaxed* set (the set cut out by the per-neuron relaxations), so:

* intermediate bounds of every gate input ``q`` are computed by full back-substitution (no
  interval shortcuts), and
* ``mode="crown"`` (chords) <= ``mode="recurjac"`` (constants where ``q`` is sign-unstable)
  <= ``mode="ibp"`` (pure interval arithmetic) holds for the final bound: each mode's relaxed set
  contains the previous one's (same forward masks).

Everything is batched: a batch row is one (seed, activation-mask range) pair, so many outputs and
many branch-and-bound domains are bounded in one pass on the network's device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .chain import DenseChain, pack_true
from .relaxations import abs_upper, gated_product_interval, gated_product_lower, gated_product_upper

MODES = ("crown", "recurjac", "ibp")


@dataclass(frozen=True)
class SignSearch:
    """Settings of the gradient-sign search of :meth:`BackwardGraph._sign_search_l1` (l1 objective): all
    ``2^first`` sign prefixes, then ``rounds`` times the ``keep`` largest leaves split on ``step`` more signs."""

    first: int = 6
    rounds: int = 2
    keep: int = 8
    step: int = 3
    low: bool = True  # evaluate the leaves in float32 (with a rounding margin), the largest ``verify`` again in float64
    verify: int = 8


@dataclass
class BackwardBounds:
    """Bounds for a batch of (seed, derivative-range) rows."""

    grad_lower: torch.Tensor  # (B, n_0): element-wise bounds of the input gradient
    grad_upper: torch.Tensor
    l1_upper: torch.Tensor  # (B,): upper bound of ||grad||_1 (l_inf input norm)
    q_bounds: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # per gate (B, n_q)
    gate_coef: list[torch.Tensor] = field(default_factory=list)  # per gate (B, n_q): |P| of the l1 objective


def _apply(M, x):
    """x @ M^T for x (B, m, n) / M (n', n); M None = identity."""
    return x if M is None else x @ M


class BackwardGraph:
    """The backward graph for a batch: gates ordered from the output side (gate L first)."""

    def __init__(self, chain: DenseChain, seeds: torch.Tensor, d_ranges: list[tuple[torch.Tensor, torch.Tensor]],
                 mode: str = "crown"):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.chain = chain
        self.seeds = seeds  # (B, out)
        self.d_ranges = d_ranges  # per activation k (0-based, input side first): (a, b) of shape (B, n_q)
        self.mode = mode
        L = chain.depth
        # items from the seed side: lin(W_L^T), gate L, lin(W_{L-1}^T), ..., gate 1, lin(W_0^T)
        self.items: list[tuple[str, int]] = [("lin", L)]
        for k in reversed(range(L)):
            self.items += [("gate", k), ("lin", k)]
        self.lines: dict[int, tuple] = {}
        self.sym_lines: dict[int, tuple] = {}  # crown mode: the lines in the symmetric form of :meth:`upper`
        self._cache: dict = {}
        self.q_bounds: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    # ------------------------------------------------------------------ back-substitution
    def _params(self, dtype):
        """The weights, gate matrices, relaxation lines and seeds in ``dtype`` (cached per dtype until the next
        :meth:`run`, which sets the lines)."""
        key = ("params", dtype)
        if key not in self._cache:
            cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
            # the last linear step folded into the seeds (computed in float64): c^T W_L, one vector per batch row
            self._cache[key] = ([cast(w) for w in self.chain.weights],
                                {k: (cast(g.F_p), cast(g.E), cast(g.F_g)) for k, g in enumerate(self.chain.gates)},
                                {k: tuple(cast(t) for t in v) for k, v in self.lines.items()},
                                cast(self.seeds @ self.chain.weights[self.items[0][1]]),
                                {k: tuple(cast(t) for t in v) for k, v in self.sym_lines.items()})
        return self._cache[key]

    def upper(self, Lam: torch.Tensor, pos: int, record: dict | None = None) -> torch.Tensor:
        """Upper bound of ``Lam @ v_pos`` (``Lam``: (B, m, dim v_pos)) where ``v_pos`` is the value after
        ``pos`` items (``v_0`` = seed).  Evaluated in ``Lam``'s dtype (float32: see :meth:`_sign_search_l1`
        for the rounding margin that then makes it sound)."""
        bias = torch.zeros(Lam.shape[:2], dtype=Lam.dtype, device=Lam.device)
        low = Lam.dtype != self.seeds.dtype
        weights, mats, lines, seeds, sym = self._params(Lam.dtype) if low else (
            self.chain.weights, None, self.lines, self.seeds, self.sym_lines)
        stop = 1 if low and pos > 0 else 0  # low: the seeds are c^T W_L (the first item folded in)
        for i in range(pos - 1, stop - 1, -1):
            kind, k = self.items[i]
            if kind == "lin":
                # v_{i+1} = W_k^T v_i  ->  Lam v_{i+1} = (Lam W_k^T) v_i
                Lam = Lam @ weights[k].T
            else:
                gate = self.chain.gates[k]
                F_p, E, F_g = mats[k] if low else (gate.F_p, gate.E, gate.F_g)
                P = _apply(F_p, Lam)
                if k in sym:
                    # positive coefficients take the upper line, negative ones the lower line:
                    # P au [P > 0] + P al [P < 0] = P mid + |P| rad, and the intercepts P bu [P > 0] + P bl [P < 0]
                    # = |P| bu (bl = -bu: see ``sym_lines``), summed by a batched mat-vec product
                    am, ad, bs = sym[k]
                    aP = P.abs()
                    if record is not None:
                        record[k] = aP.sum(1)
                    coef = torch.addcmul(P * am[:, None, :], aP, ad[:, None, :])
                    bias = bias + torch.bmm(aP, bs[:, :, None])[..., 0]
                else:
                    au, bu, al, bl = lines[k]
                    if record is not None:
                        record[k] = P.abs().sum(1)
                    # (one of the two products is an exact 0 per entry)
                    Pp = P.clamp(min=0)
                    Pn = P - Pp
                    coef = torch.addcmul(Pn * al[:, None, :], Pp, au[:, None, :])
                    bias = bias + torch.bmm(Pp, bu[:, :, None])[..., 0] + torch.bmm(Pn, bl[:, :, None])[..., 0]
                Lq = coef if E is None else coef @ E
                Lam = Lq if F_g is None else Lam @ F_g + Lq
        return torch.einsum("bmo,bo->bm", Lam, seeds) + bias

    def low_margin(self) -> torch.Tensor:
        """Per batch row, an upper bound on ``|upper32(S) - upper(S)|`` for any one-row ``S`` at the input end with
        entries in [-1, 1] (``upper32``: :meth:`upper` evaluated in float32, ``S`` rounded to float32 first):
        ``2 (items + 4) (F + 2) eps_32`` times :meth:`_magnitude` (``F`` the largest layer width).  Each of the at
        most ``items + 4`` rounded stages (one product or accumulation per item, the casts, the seed product) errs
        by at most ``(F + 2) u_32`` times the magnitude it sums (``eps_32 = 2 u_32``), and later stages carry
        these errors with coefficients bounded by the same magnitudes."""
        fan = max(max(w.shape) for w in self.chain.weights) + 2
        return 2 * (len(self.items) + 4) * fan * float(torch.finfo(torch.float32).eps) * self._magnitude()

    def _magnitude(self) -> torch.Tensor:
        """Per batch row, a bound on the magnitudes that :meth:`upper` sums for any one-row ``Lam`` at the input end
        with entries in [-1, 1]: the same back-substitution with every entry replaced by its absolute value,
        started from all ones, each gate taking ``max(|upper line|, |lower line|)`` (float64)."""
        B, n0 = self.seeds.shape[0], self.chain.in_dim
        M = torch.ones(B, 1, n0, dtype=self.seeds.dtype, device=self.seeds.device)
        bias = torch.zeros(B, 1, dtype=M.dtype, device=M.device)
        for kind, k in reversed(self.items):
            if kind == "lin":
                M = M @ self.chain.weights[k].T.abs()
                continue
            gate = self.chain.gates[k]
            au, bu, al, bl = self.lines[k]
            P = _apply(None if gate.F_p is None else gate.F_p.abs(), M)
            bias = bias + torch.bmm(P, torch.maximum(bu.abs(), bl.abs())[:, :, None])[..., 0]
            Lq = P * torch.maximum(au.abs(), al.abs())[:, None, :]
            Lq = Lq if gate.E is None else Lq @ gate.E.abs()
            M = Lq if gate.F_g is None else M @ gate.F_g.abs() + Lq
        return torch.einsum("bmo,bo->bm", M, self.seeds.abs())[:, 0] + bias[:, 0]

    def bounds(self, M: torch.Tensor | None, pos: int, batch: int, dim: int):
        """Lower and upper bounds of ``M v_pos`` (``M`` (m, dim) shared, None = identity)."""
        dt, dev = self.seeds.dtype, self.seeds.device
        if M is None:
            M = torch.eye(dim, dtype=dt, device=dev)
        m = M.shape[0]
        Lam = torch.cat((M, -M), 0)
        if pos > 0 and self.items[pos - 1][0] == "lin":
            # the first step of the back-substitution is linear and the same for every batch row: one
            # unbatched product (Lam W_k^T) instead of a batched one (for M = I, an exact copy of W_k^T)
            Lam = Lam @ self.chain.weights[self.items[pos - 1][1]].T
            pos -= 1
        up = self.upper(Lam.expand(batch, *Lam.shape), pos)
        return -up[:, m:], up[:, :m]

    # ------------------------------------------------------------------ main pass
    def unstable_bounds(self, unst: torch.Tensor, pos: int, batch: int, dim: int):
        """Bounds of the gate input ``v_pos`` (a gate without input map ``E``) on the entries where ``unst``
        ((B, dim) bool) is True, by the same back-substitution as :meth:`bounds`, with the rows of each batch
        row packed; 0 elsewhere.  For a gate with ``a == b`` (a fixed derivative) the product's relaxation is
        exact whatever the bounds of its input, so those rows need not be computed."""
        dt, dev = self.seeds.dtype, self.seeds.device
        idx, valid = pack_true(unst)
        M = idx.shape[1]
        lo = torch.zeros(batch, dim, dtype=dt, device=dev)
        hi = torch.zeros(batch, dim, dtype=dt, device=dev)
        if M == 0:
            return lo, hi
        if pos > 0 and self.items[pos - 1][0] == "lin":  # e_i^T W_k^T = row i of W_k^T: a gather, no product
            Wt = self.chain.weights[self.items[pos - 1][1]].T
            rows, pos = Wt[idx], pos - 1
        else:
            rows = torch.eye(dim, dtype=dt, device=dev)[idx]
        up = self.upper(torch.cat((rows, -rows), 1), pos)
        zero = torch.zeros_like(up[:, :M])
        lo.scatter_(1, idx, torch.where(valid, -up[:, M:], zero))
        hi.scatter_(1, idx, torch.where(valid, up[:, :M], zero))
        return lo, hi

    def run(self, want_coef: bool = False, abs_fixed: torch.Tensor | None = None,
            sign_search: SignSearch | None = None, skip_fixed: bool = False) -> BackwardBounds:
        """Bounds for the batch.  ``abs_fixed`` ((B, n_0) in {-1, 0, +1}) replaces ``|g_i|`` by ``s_i g_i``
        where ``s_i != 0`` (branch-and-bound on the sign choice of ``||g||_1 = max_s s^T g``).
        ``sign_search``: also bound ``||g||_1`` by a small search over the signs of the sign-unstable gradient
        coordinates (:meth:`_sign_search_l1`) and keep the smaller bound (``l1_upper`` only).
        ``skip_fixed``: the input bounds of gates without input map are computed only where the derivative is
        not fixed (:meth:`unstable_bounds`; ``q_bounds`` are then 0 at fixed entries) -- the same bounds."""
        if self.mode == "ibp":
            return self._run_ibp()
        B = self.seeds.shape[0]
        interval = self.mode == "recurjac"
        self._cache.clear()  # the lines are set anew below: no cast copy of earlier ones may survive
        self.sym_lines.clear()
        for pos, (kind, k) in enumerate(self.items):
            if kind != "gate":
                continue
            gate = self.chain.gates[k]
            a, b = self.d_ranges[k]
            if skip_fixed and gate.E is None:
                ql, qu = self.unstable_bounds(a < b, pos, B, gate.n)
            else:
                ql, qu = self.bounds(gate.E, pos, B, gate.n)
            self.q_bounds[k] = (ql, qu)
            self.lines[k] = (*gated_product_upper(a, b, ql, qu, interval), *gated_product_lower(a, b, ql, qu, interval))
            if not interval:
                # chords of a gated product: the lower line's intercept is minus the upper one's (both l u (a - b) /
                # (u - l) up to sign, 0 where the product is linear), so P bu [P > 0] + P bl [P < 0] <= |P| max(bu, -bl)
                # (equal up to rounding); the slopes as mid-point and radius
                au, bu, al, bl = self.lines[k]
                self.sym_lines[k] = ((au + al) / 2, (au - al) / 2, torch.maximum(bu, -bl))
        end = len(self.items)
        n0 = self.chain.in_dim
        gl, gu = self.bounds(None, end, B, n0)
        slope, icpt = abs_upper(gl, gu)
        box = torch.maximum(gl.abs(), gu.abs())
        if abs_fixed is not None:
            fx = abs_fixed.to(slope)
            slope = torch.where(fx != 0, fx, slope)
            icpt = torch.where(fx != 0, torch.zeros_like(icpt), icpt)
            box = torch.where(fx > 0, gu, torch.where(fx < 0, -gl, box))
        record = {} if want_coef else None
        l1 = self.upper(slope[:, None, :], end, record)[:, 0] + icpt.sum(-1)
        l1 = torch.minimum(l1, box.sum(-1))  # never worse than the box
        if sign_search is not None and sign_search.first > 0:
            l1 = torch.minimum(l1, self._sign_search_l1(gl, gu, slope, icpt, box, abs_fixed, sign_search))
        coef = [record[k] for k in range(self.chain.depth)] if want_coef else []
        return BackwardBounds(gl, gu, l1, [self.q_bounds[k] for k in range(self.chain.depth)], coef)

    def _sign_search_l1(self, gl, gu, slope, icpt, box, abs_fixed, ss: SignSearch) -> torch.Tensor:
        """Upper bound of ``||g||_1`` over the relaxed set by a small search over gradient signs, per batch row.

        The chord of ``|g_i|`` over ``[gl_i, gu_i]`` is loose when ``g_i`` can take both signs, and the chords of
        all coordinates are tight only at their interval ends, which the relaxed set rarely reaches together
        (measured on random 16-64-64-10 BaB domains: 15 of 16 coordinates sign-unstable, chord bound 0.98,
        ``max_s CROWN(s^T g)`` over all ``2^16`` sign vectors 0.51-0.56).  Math: order the sign-unstable
        coordinates by chord gap ``-gl gu / (gu - gl)`` (largest first).  A *leaf* fixes the signs ``s`` of a
        prefix ``E`` of that order; every ``g`` of the relaxed set lies in the leaf with ``s_i = sign(g_i)`` on
        ``E``, where ``||g||_1 <= sum_E s_i g_i + sum_{i not in E} chord_i(g_i)``: a linear function bounded by
        one back-substitution (and by its box ``sum_E max(s_i gl_i, s_i gu_i) + sum_{not E} box_i``).  The
        leaves partition the sign choices, so the largest leaf bound bounds ``||g||_1``.  Start: all
        ``2^first`` prefixes of length ``first``; then ``rounds`` times the ``keep`` leaves with the largest
        bounds are replaced by their ``2^step`` children on the next ``step`` coordinates (a child's bound is
        capped by its parent's: its objective is pointwise smaller).  Coordinates fixed by ``abs_fixed`` and
        sign-stable ones keep their (exact) line.  Cost: ``2^first + rounds * keep * 2^step`` one-row
        back-substitutions per batch row.

        Precision (``ss.low``, float64 graphs): the leaves are evaluated in float32, each value raised by
        ``2 (items + 4) (F + 2) eps_32 * mag`` (``F`` the largest layer width, ``mag`` from :meth:`_magnitude`: the
        same back-substitution on absolute values from an all-ones row, which bounds every partial sum of any
        leaf since leaf rows have entries in [-1, 1]), so every leaf value stays an upper bound of its piece; then
        the ``ss.verify`` largest leaves are evaluated again in float64 (no margin).  The search's bound is the
        largest of these values: float64-tight whenever the other leaves are below the top ones by the margin
        (measured: ~1.5x faster per domain; the bound unchanged on the bench nets)."""
        B, n = gl.shape
        dt, dev = gl.dtype, gl.device
        gap = torch.where((gl < 0) & (gu > 0), -gl * gu / (gu - gl).clamp(min=1e-300), torch.zeros_like(gl))
        if abs_fixed is not None:
            gap = torch.where(abs_fixed != 0, torch.zeros_like(gap), gap)
        K = min(n, ss.first + ss.rounds * ss.step)
        k0 = min(ss.first, K)
        top = gap.topk(K, dim=1)
        order, ok = top.indices, top.values > 0  # (B, K): a pick without a gap keeps its exact line
        gl_o, gu_o = torch.gather(gl, 1, order)[:, None, :], torch.gather(gu, 1, order)[:, None, :]

        def patterns(j):  # (2^j, j) all sign vectors
            bits = (torch.arange(1 << j, device=dev)[:, None] >> torch.arange(j, device=dev)) & 1
            return (2 * bits - 1).to(dt)

        end = len(self.items)
        low = ss.low and dt == torch.float64
        if low:  # float32 leaf values, made sound by a margin on the magnitudes of their sums (see the docstring)
            err = self.low_margin()

        # per ordered coordinate: its chord (slope, intercept) and box term, replaced in a leaf where its sign is fixed
        slope_o, icpt_o, box_o = (torch.gather(t, 1, order)[:, None, :] for t in (slope, icpt, box))
        icpt_sum, box_sum = icpt.sum(-1)[:, None], box.sum(-1)[:, None]

        def evaluate(V, low=False):  # V (B, L, K) signs in {-1, 0, +1} on the ordered coordinates -> leaf bounds (B, L)
            L = V.shape[1]
            V = torch.where(ok[:, None, :], V, torch.zeros_like(V))
            on = V != 0
            S = slope[:, None, :].repeat(1, L, 1)
            S.scatter_(2, order[:, None, :].expand(B, L, K), torch.where(on, V, slope_o))
            I = icpt_sum - torch.where(on, icpt_o, torch.zeros_like(V)).sum(-1)
            X = box_sum + torch.where(on, torch.where(V > 0, gu_o, -gl_o) - box_o, torch.zeros_like(V)).sum(-1)
            up = self.upper(S.float(), end).double() + err[:, None] if low else self.upper(S, end)
            return torch.minimum(up + I, X)

        V = torch.zeros(B, 1 << k0, K, dtype=dt, device=dev)
        V[:, :, :k0] = patterns(k0)
        depth = torch.full((B, 1 << k0), k0, dtype=torch.long, device=dev)
        val = evaluate(V, low)
        kids, step = patterns(ss.step), ss.step
        for _ in range(ss.rounds if K > k0 else 0):
            can = depth + step <= K
            m = min(ss.keep, val.shape[1])
            sel = torch.where(can, val, torch.full_like(val, -math.inf)).topk(m, dim=1).indices  # (B, m)
            grow = torch.gather(can, 1, sel) & torch.isfinite(torch.gather(val, 1, sel))
            d = torch.gather(depth, 1, sel)
            C = torch.gather(V, 1, sel[..., None].expand(B, m, K))[:, :, None, :].repeat(1, 1, 1 << step, 1)
            pos = (d[:, :, None, None] + torch.arange(step, device=dev)).clamp(max=K - 1).expand(B, m, 1 << step, step)
            C.scatter_(3, pos, kids.expand(B, m, 1 << step, step))
            cv = evaluate(C.reshape(B, m << step, K), low).reshape(B, m, 1 << step)
            cv = torch.minimum(cv, torch.gather(val, 1, sel)[..., None])
            cv = torch.where(grow[..., None], cv, torch.full_like(cv, -math.inf))
            # each grown leaf is replaced by its children (its own slot drops out of the maximum)
            val = val.scatter(1, sel, torch.where(grow, torch.full_like(cv[..., 0], -math.inf), torch.gather(val, 1, sel)))
            V = torch.cat((V, C.reshape(B, m << step, K)), 1)
            val = torch.cat((val, cv.reshape(B, -1)), 1)
            depth = torch.cat((depth, (d + step)[..., None].expand(B, m, 1 << step).reshape(B, -1)), 1)
        if not low or ss.verify <= 0:
            return val.amax(1)
        # the largest leaves again in float64 (without the margin); every other leaf keeps its float32 bound
        t = min(ss.verify, val.shape[1])
        top = val.topk(t, dim=1)
        exact = evaluate(torch.gather(V, 1, top.indices[..., None].expand(B, t, K)))
        exact = torch.where(torch.isfinite(top.values), torch.minimum(exact, top.values), top.values)
        rest = val.scatter(1, top.indices, torch.full_like(top.values, -math.inf)).amax(1)
        return torch.maximum(exact.amax(1), rest)

    def _run_ibp(self) -> BackwardBounds:
        l = u = self.seeds
        qb = {}
        for kind, k in self.items:
            if kind == "lin":
                W = self.chain.weights[k]
                c, r = (l + u) / 2, (u - l) / 2
                c, r = c @ W, r @ W.abs()
                l, u = c - r, c + r
                continue
            gate = self.chain.gates[k]
            if gate.E is None:
                ql, qu = l, u
            else:
                c, r = (l + u) / 2, (u - l) / 2
                c, r = c @ gate.E.T, r @ gate.E.abs().T
                ql, qu = c - r, c + r
            qb[k] = (ql, qu)
            a, b = self.d_ranges[k]
            pl, pu = gated_product_interval(a, b, ql, qu)
            c, r = (pl + pu) / 2, (pu - pl) / 2
            if gate.F_p is not None:
                c, r = c @ gate.F_p.T, r @ gate.F_p.abs().T
            if gate.F_g is not None:
                gc, gr = (l + u) / 2, (u - l) / 2
                c, r = c + gc @ gate.F_g.T, r + gr @ gate.F_g.abs().T
            l, u = c - r, c + r
        return BackwardBounds(l, u, torch.maximum(l.abs(), u.abs()).sum(-1), [qb[k] for k in range(self.chain.depth)])
