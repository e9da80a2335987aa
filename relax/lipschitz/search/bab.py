"""Complete branch-and-bound for the local Lipschitz constant of ReLU / LeakyReLU chain networks.

A domain is (seed row ``s``, partial activation pattern): each neuron is free, split "on"
(``z >= 0``) or split "off" (``z <= 0``).  For a batch of domains:

1. **Re-bound the forward graph under the splits** (:func:`split_forward_bounds`): interval
   arithmetic from the input box with the root pre-activation bounds intersected in and every split
   neuron's interval clamped to its side of zero; then (default, ``poly_iters > 0``) layer by layer
   CROWN under those bounds, concretized over the domain's **input polytope**
   (:mod:`.polytope`): every split is a half-space in input space (exact for the first layer, through
   the CROWN linear bounds of the split neuron for deeper layers), and each neuron's linear bound is
   maximized over box ∩ half-spaces by Lagrangian duality (any multipliers ``beta >= 0`` are sound;
   a few projected Adam steps are taken).  This couples the splits of *different* neurons: a split
   narrows the input region, which stabilizes other neurons.  (``poly_iters = 0``: the earlier
   re-bounding by the forward engine's CROWN with the split intervals clamped, over the whole box.)
   An empty interval proves the domain infeasible.  Every domain keeps the switch bounds it was
   bounded with (float32, rounded outward); its children start from them (a child's region is a subset
   of its parent's, so they stay valid and only tighten down the tree).
2. **Bound** ``sup ||grad||_q`` over the domain by CROWN on the backward graph with the domain's
   Clarke masks (:mod:`.backward`); the child bound is ``min(child, parent)``.  For an l_inf input norm
   (objective ``||g||_1 = max_s s^T g``) the bound also comes from a small search over the signs ``s`` of
   the sign-unstable gradient coordinates (``sign_search``, :meth:`..bounds.backward.BackwardGraph._sign_search_l1`):
   deep in the search ~15 of 16 gradient coordinates still take both signs, and the chords of ``|g_i|``
   overestimated the bound by ~2x (chord 0.98 against 0.51-0.56 for the best single sign vector).
3. **Leaves** (no free unstable neuron left): the gradient is one constant vector; an LP (HiGHS)
   checks that the closed activation region meets the box.  Infeasible leaves are pruned; feasible
   ones are exact.  The LP maximizes the normalized margin ``t`` of all sign constraints, and when
   ``t > 0`` its solution is an interior point where autograd's gradient is evaluated: an exact,
   attained lower bound.
4. The search is the shared loop :func:`...bab.search.branch_and_bound` (:class:`_ActivationSearch` is
   its branching policy and bounding callback; a domain's key is ``-bound``, so the loop's smallest
   key first is the largest bound first).  Best-first: the ``batch`` domains with the largest bounds are split on the unstable neuron with
   the largest ``|CROWN coefficient| * max(|l_g|, |u_g|)`` (the looseness of its chord relaxation),
   weighted by ``(1 + layer_bias)^(layers above it)``: splits near the input are preferred, since
   their half-spaces are exact and narrow the input polytope for every later neuron (measured:
   ``layer_bias = 3`` finished random 16-32x3-10 in ~30 s where 0 stood at 0.40 vs exact 0.319).
   Domains whose bound is <= the best lower bound are dropped (they cannot raise the maximum).

5. **Root bounds and lower bound** (issue #15): where domains are re-bounded by the forward engine (more
   than ``POLY_MAX_INPUT`` inputs), ``refine_share`` of the budget first refines the root pre-activation
   bounds by a per-neuron beta-CROWN search (:func:`..bounds.chain.refined_intermediate_bounds`); a search
   still running after ``BOOST_AFTER`` of its budget spends ``lower_share`` of it on a longer attack round
   on the seeds that matter (:meth:`_ActivationSearch.boost_lower`: attained gradient norms, with witness).

The anytime upper bound (max over open domains and closed leaves) is always certified; when no
open domain remains, the maximum over feasible closed regions has been found: the result is exact.
Measured (bench/results/local_lipschitz.md): on random 16-32-32-10 the polytope re-bounding takes
the search from 0.82 after 30 s (not finished) to the exact 0.58927 in under a minute.  Issue #15
(where-free back-substitutions, parent bounds, alpha-CROWN root bounds; same loaded 2-core machine):
domains bounded in 60 s on random 16-64-64-10 8586 -> 21506 (bound 1.589 -> 1.291), on MNIST 6x100
at eps 0.02 436 -> 1344 (776 -> 672); random 16-32x3-10 exact in 12 s (was 54 s), 16-32x5-10 exact in 47 s.
Refined root bounds (same machine state, 60 s): MNIST 6x100 at eps 0.02 591 -> 308 (root bound after 18 s
of refinement 939 -> ~480); with the second attack round the lower bound is 173.5 (was 168.5): 1.8x.
On random 16-64-64-10 (polytope re-bounding) the refinement did not pay (1.304 vs 1.273 after 30 s): off there.
Sign search and intra-op threads chosen by throughput (``num_threads="auto"``), idle 2-core machine: random
16-64-64-10 torch seed 2 exact (0.51038) in 57-64 s (was 280 s), seed 0 exact (0.69773) in ~116 s (was: 1.04
vs >= 0.65 after 60 s), seed 1 exact in a few seconds.  Polytope dual steps in float32 from the parent's
multipliers (``warm_start``), sign-search leaves in float32 with a rounding margin, packed polytope rows: seed 0
exact in 65-75 s (133,946 domains, was 161,700 and 121 s back to back), seed 2 in 35 s.  Fused Adam kernel, gathers
instead of two-index indexing, symmetric backward gates (same domains): seed 0 exact in 50-53 s, seed 2 in 26 s.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from ....models.errors import InvalidArgumentError, UnsupportedOperationError

from ..lower_bounds.attack import true_gradients
from .feasibility import domain_infeasible, leaf_margin
from ..bounds.backward import BackwardGraph, SignSearch
from ..bounds.chain import DenseChain, clamp_splits, clamp_switch, interval_bounds
from ..bounds.polytope import polytope_forward_bounds
from ..norms import dual_norm_of, row_dual_upper
from ..result import LipschitzResult

BAB_OPS = ("relu", "leaky_relu", "maxmin", "groupsort", "householder")
POLY_ITERS = 20  # default dual steps of the input-polytope re-bounding
POLY_MAX_INPUT = 128  # ... used by default only up to this many input coordinates
ROOT_REFINE_SHARE = 0.3  # share of the BaB budget for refining the root's pre-activation bounds (engine-rebounded nets)
BOOST_AFTER = 0.1  # ... started once this share of the budget has passed (searches that finish early skip it)
LOWER_SHARE = 0.08  # share of the BaB budget for a second, longer attack round on the seeds that matter
WARM_MAX_BYTES = 1 << 30  # open domains keep their polytope multipliers (warm starts) up to about this much memory
POLY_CHUNK_ELEMS = 1 << 22  # ~32 MB of float64 per (domains x neurons x inputs) tensor in the polytope pass


def split_forward_bounds(chain: DenseChain, xl: torch.Tensor, xu: torch.Tensor, root_fb, fixed: list[torch.Tensor],
                         rebound: bool = True, poly_iters: int = 0, poly_lr: float = 0.1, root_sb=None,
                         warm=None, keep_warm: bool = False):
    """Bounds of every activation's *switches* for a batch of BaB domains, and their infeasibility flags.

    The switch of a ReLU/LeakyReLU is its pre-activation ``z``; of a MaxMin/GroupSort(2) pair
    ``z_a - z_b``; of a Householder group ``v^T z`` (:mod:`.gates`).  ``fixed[k]``: ``(D, n_q)`` int8 split
    signs (+1: ``s >= 0``, -1: ``s <= 0``, 0: free) of the ``D`` domains (the batch dimension);
    ``root_fb``: sound pre-activation bounds ``[(l_k, u_k)]`` (``(1, n_k)``) over the box; ``root_sb``:
    optional sound switch bounds over the box (e.g. the root domain's re-bounded ones).

    Math: first interval arithmetic over the box with ``root_fb`` intersected in and every split
    ReLU clamped to its side of zero (:func:`.chain.interval_bounds`), mapped to the switches
    (``S z`` by interval arithmetic), intersected with ``root_sb`` and clamped by the splits; then,
    with ``rebound`` and ``poly_iters > 0`` (or any switch-matrix activation), CROWN over the domain's
    input polytope (:func:`.polytope.polytope_forward_bounds`, ``poly_iters`` dual steps; 0 steps =
    CROWN over the box with the split-clamped bounds); with ``rebound`` and ``poly_iters == 0`` on a
    ReLU/LeakyReLU chain, for
    ``k = 1 .. L-1`` the forward engine ``relax.compute_bounds(net, box, "crown",
    fixed_preact={act_j: (l_j, u_j), j != k})`` gives CROWN bounds on ``z_k`` that hold for every ``x``
    in the box whose pre-activations ``z_j`` lie in the current (split-clamped) bounds, i.e. for
    every ``x`` of the domain (the bounds of layers ``j > k`` are fixed only so that the engine spends
    no CROWN pass on them; they do not enter the bound on ``z_k``); these are intersected with the
    current ``(l_k, u_k)`` and clamped by the splits of layer ``k``.  ``skip_stable=False``: every
    neuron is CROWN-bounded (as tight as a CROWN pass over all rows).  Every returned interval
    contains ``s_k(x)`` for every ``x`` of the box that satisfies the domain's splits.
    ``empty[d]`` is True when some interval of domain ``d`` is empty (``l > u``, or flagged by the
    engine's ``BoundResult.empty``): no input satisfies its splits (the domain is infeasible).
    Returned intervals are made well-formed (``u >= l``) so that
    relaxations on empty domains stay finite; their values are meaningless and must be pruned.
    """
    D = fixed[0].shape[0]
    XL, XU = xl.reshape(1, -1).expand(D, -1), xu.reshape(1, -1).expand(D, -1)
    base = [(l.expand(D, -1), u.expand(D, -1)) for l, u in root_fb]
    fb = interval_bounds(chain, XL, XU, base=base, fixed=fixed)
    switched = any(g.switch_matrix is not None for g in chain.gates)
    if switched:
        fb = [g.switch_bounds(l, torch.maximum(u, l)) for g, (l, u) in zip(chain.gates, fb)]
    if root_sb is not None:
        fb = [(torch.maximum(l, rl), torch.minimum(u, ru)) for (l, u), (rl, ru) in zip(fb, root_sb)]
    fb = [clamp_switch(l, u, f) for (l, u), f in zip(fb, fixed)]
    empty = torch.zeros(D, dtype=torch.bool, device=XL.device)
    kept = [None] * D  # polytope multipliers per domain (only the polytope pass has any)
    if rebound and (poly_iters > 0 or switched):
        # chunk the domains: the polytope pass holds (domains, neurons, n_0) tensors
        per = max(g.n for g in chain.gates) * (chain.in_dim + 2 * max(g.n for g in chain.gates))
        step = max(1, POLY_CHUNK_ELEMS // max(per, 1))
        parts = [polytope_forward_bounds(chain, xl, xu, [(l[i:i + step], u[i:i + step]) for l, u in fb],
                                         [f[i:i + step] for f in fixed], poly_iters, poly_lr,
                                         None if warm is None else warm[i:i + step], keep_warm)
                 for i in range(0, D, step)]
        fb = [(torch.cat([p[0][k][0] for p in parts]), torch.cat([p[0][k][1] for p in parts])) for k in range(len(fb))]
        empty = torch.cat([p[1] for p in parts])
        if keep_warm:
            kept = [w for p in parts for w in p[2]]
    elif rebound and chain.depth > 1:
        from ....relax import Box, compute_bounds  # the forward bound engine (layer below relax.lipschitz)
        net = chain.net
        shapes = [net[node.inputs[0]].shape for node in chain.acts]
        box = Box(XL.reshape(D, *net.input_shape), XU.reshape(D, *net.input_shape))
        for k in range(1, chain.depth):
            fp = {}  # every other activation fixed: the engine runs CROWN for z_k only (j > k: no effect on z_k)
            for j in range(chain.depth):
                if j == k:
                    continue
                l, u = fb[j]
                empty |= (l > u).any(-1)
                fp[chain.acts[j].name] = (l.reshape(D, *shapes[j]), torch.maximum(u, l).reshape(D, *shapes[j]))
            res = compute_bounds(net, box, "crown", fixed_preact=fp, dtype=XL.dtype,
                                 bound_lower=False, bound_upper=False, skip_stable=False)
            if res.empty is not None:
                empty |= res.empty
            cl, cu = res.intermediate[chain.acts[k].inputs[0]]
            l0, u0 = fb[k]
            l = torch.maximum(l0, cl.reshape(D, -1).to(l0))
            u = torch.minimum(u0, cu.reshape(D, -1).to(u0))
            fb[k] = clamp_splits(chain.gates[k], l, u, fixed[k])
    for l, u in fb:
        empty |= (l > u).any(-1)
    out = [(l, torch.maximum(u, l)) for l, u in fb]
    return (out, empty, kept) if keep_warm else (out, empty)


def run_bab(*args, num_threads: int | str | None = "auto", **kwargs) -> LipschitzResult:
    """:func:`_run_bab` with torch's intra-op threads set to ``num_threads`` for its duration (None: unchanged;
    "auto": chosen during the search from measured throughput, :class:`...bab.threads.ThreadTuner`).

    A bias-free network over a box holding its apex 0 is searched over the box's shells instead
    (:mod:`.apex`: exact reduction, kinks in general position again).

    Measured on a 2-core machine (random 16-64-64-10): idle, 2 threads bound 1.2-1.7x the domains of 1 per
    second (seed-2 net exact in 50-80 s instead of 96-130 s, depending on the machine's state); with a second
    busy process, 2 threads bound ~10x fewer -- hence "auto", which starts with 1 and compares the counts on
    paired batches every few seconds (same time to exact as a fixed 2 when idle, 1 thread under load).
    """
    from ...bab.threads import ThreadTuner
    from .apex import applies, run_bab_shells
    old = torch.get_num_threads()
    tuner = None
    if num_threads == "auto":
        tuner = ThreadTuner(old)
        torch.set_num_threads(1)
    elif num_threads is not None:
        if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
            raise InvalidArgumentError(f"bab_options: num_threads must be 'auto', None or an int >= 1, got {num_threads!r}")
        torch.set_num_threads(num_threads)
    try:
        net, chain, xl, xu, seeds, norm, root_fb, root, timeout, operator, attack_lower = args
        if applies(chain, xl, xu, kwargs.get("ball")):  # bias-free net, box around its apex 0
            kwargs.pop("ball", None)
            return run_bab_shells(net, chain, xl, xu, seeds, norm, root, timeout, operator, attack_lower, _run_bab,
                                  thread_tuner=tuner, **kwargs)
        return _run_bab(*args, thread_tuner=tuner, **kwargs)
    finally:
        torch.set_num_threads(old)


def check_supported(chain: DenseChain, norm: str, operator: bool) -> None:
    """Raise (naming the node or the norm) unless the activation BaB applies: called before any work."""
    for node in chain.acts:
        if node.op not in BAB_OPS:
            raise UnsupportedOperationError(
                f"node {node.describe()}: branch-and-bound supports {', '.join(BAB_OPS)} networks only "
                "(bab='input' splits the input instead)")
    if norm == "2" or (operator and norm != "inf"):
        raise UnsupportedOperationError(
            "activation branch-and-bound bounds max_rows ||grad||_q for l_inf and l1 input norms (per output / "
            "given c); use bab='input' (or 'auto') for this norm")


def _outward32(l: torch.Tensor, u: torch.Tensor) -> np.ndarray:
    """``(D, 2, n)`` float32 numpy bounds containing ``[l, u]`` (float64): rounded to nearest, and where that
    moved inward, one float32 step outward (the nearest float32 is within half a step, so the result is
    ``<= l`` / ``>= u``; infinities stay infinite; a float32 value is kept as is, so bounds that only tighten
    stay nested).  Half the memory of float64 for the bounds every open domain keeps."""
    lo, hi = l.float(), u.float()
    lo = torch.where(lo.double() <= l, lo, torch.nextafter(lo, torch.full_like(lo, -math.inf)))
    hi = torch.where(hi.double() >= u, hi, torch.nextafter(hi, torch.full_like(hi, math.inf)))
    return torch.stack((lo, hi), 1).cpu().numpy()


class _Domain:
    """One activation-split domain of the search: seed row ``seed``, split signs ``fixed`` (all layers'
    switches concatenated, int8 in {-1, 0, +1}), certified-before-margin bound ``ub`` of
    ``sup ||c_seed^T J||_q`` on it, the search key ``-ub`` (the shared loop pops the smallest key
    first, i.e. the largest bound: best-first on the maximum) and ``cand``: the switches to split
    next, best first (chosen when the domain was bounded); ``sb``: the switch bounds computed when it (or,
    until it is bounded, its parent) was bounded -- valid on the domain, since a child's region is a subset
    of its parent's, and intersected into its own re-bounding (bounds only tighten down the tree)."""

    __slots__ = ("seed", "fixed", "ub", "key", "cand", "nbytes", "sb", "warm")

    def __init__(self, seed: int, fixed: np.ndarray, ub: float, sb=None, warm=None):
        self.seed, self.fixed, self.ub = seed, fixed, ub
        self.key, self.cand = -ub, None
        self.sb = sb  # (2, sum n_q) float32 switch bounds (rounded outward) of the domain or its parent: valid on it
        self.warm = warm  # the polytope pass's dual multipliers of the domain or its parent (a warm start)
        self.nbytes = 1  # the store's budget counts domains (bab_options["max_pool"])


class _ActivationSearch:
    """The activation-splitting BaB as a branching policy + bounding callback of :mod:`...bab.search`.

    Key of a domain: ``-ub`` while open.  A domain is *closed* (key ``+inf``, its bound folded into
    ``closed_ub`` of its seed) when it is a leaf (no unstable switch: LP-checked, see the module
    docstring), infeasible (dropped: it holds no point), or dominated (``ub <= lower bound``: it cannot
    raise the maximum).  So at every moment ``L <= max(lower, closed_ub, -min key of the open
    domains)``: children cover their parents, and every closed domain's bound is kept.
    """

    def __init__(self, net, chain, xl, xu, seeds, norm, root_fb, rebound, poly_iters, poly_lr, use_abs, balance,
                 layer_bias, abs_weight, fsb_k, feas_tol, lp_check, lp_min_splits, lp_top, ball, attack_lower,
                 deadline, chunk):
        self.net, self.chain, self.xl, self.xu, self.seeds, self.norm = net, chain, xl, xu, seeds, norm
        self.root_fb, self.rebound, self.poly_iters, self.poly_lr = root_fb, rebound, poly_iters, poly_lr
        self.use_abs, self.balance, self.layer_bias, self.abs_weight = use_abs, balance, layer_bias, abs_weight
        self.fsb_k, self.feas_tol, self.ball, self.deadline, self.chunk = max(1, int(fsb_k)), feas_tol, ball, deadline, chunk
        self.lp_check, self.lp_min_splits, self.lp_top = lp_check, lp_min_splits, lp_top
        S = seeds.shape[0]
        self.dev, self.dt = seeds.device, seeds.dtype
        self.sizes = [g.n_q for g in chain.gates] + ([chain.in_dim] if use_abs else [])
        self.lb_seed = torch.tensor([max(v, 0.0) if v is not None else 0.0 for v in (attack_lower or [0.0] * S)],
                                    dtype=self.dt, device=self.dev)
        self.closed_ub = [0.0] * S  # per seed, the largest bound of a closed domain
        self.open: set = set()  # every domain created and neither closed nor split yet (covers the rest)
        self.box_attained = torch.zeros(S, dtype=self.dt, device=self.dev)  # gradient norms at leaf interior points
        self.xl_np, self.xu_np = xl.cpu().numpy(), xu.cpu().numpy()
        self.stats = {"domains_bounded": 0, "leaves": 0, "infeasible": 0, "pruned": 0, "lp_calls": 0, "batches": 0}
        self.witness: dict = {}
        self.root_sb = None  # the root domains' switch bounds (after their re-bounding): valid for every domain
        self.sec_per_domain, self.budget = 0.0, math.inf  # measured bounding cost; the search's time budget
        self.sign_search = None  # settings of the gradient-sign search in each domain's bound (l_inf input norm)
        self.tuner = None  # ThreadTuner choosing the intra-op thread count per bounding call (None: fixed)
        self.warm_start = False  # polytope multipliers kept per domain (warm starts)
        self.warm_bytes = 0.0  # the largest measured size of one domain's multipliers

    # ------------------------------------------------------------------ bounding (vectorized over domains)
    def _fixed_tensors(self, rows: np.ndarray) -> list[torch.Tensor]:
        f = torch.from_numpy(rows).to(self.dev)
        return list(f.split(self.sizes, 1))

    def _inherited(self, part: list):
        """The switch bounds of a batch of domains known before bounding them: the root's re-bounded ones
        intersected with each domain's stored ``sb`` (its parent's bounds; sound on the child's subset)."""
        if self.root_sb is None or any(d.sb is None for d in part):
            return self.root_sb
        sb = torch.from_numpy(np.stack([d.sb for d in part])).to(device=self.dev, dtype=self.dt)
        out, off = [], 0
        for rl, ru in self.root_sb:
            n = rl.shape[-1]
            out.append((torch.maximum(rl, sb[:, 0, off:off + n]), torch.minimum(ru, sb[:, 1, off:off + n])))
            off += n
        return out

    def raw_bound(self, seed_idx: torch.Tensor, fixed: list[torch.Tensor], base_sb=None, warm=None):
        """Bounds of a batch of domains: ``(ub, score, unstable_any, empty, signs, switch_bounds, multipliers)``.
        ``base_sb``: sound per-domain switch bounds to intersect in (default: the root's); ``warm``: per domain,
        polytope multipliers to start from; the last result: this call's own, per domain (None without
        ``warm_start``)."""
        chain, D = self.chain, seed_idx.shape[0]
        fb, empty, *kept = split_forward_bounds(
            chain, self.xl, self.xu, self.root_fb, fixed, self.rebound, self.poly_iters, self.poly_lr,
            self.root_sb if base_sb is None else base_sb, warm=warm if self.warm_start else None,
            keep_warm=self.warm_start)
        dr = [g.switch_derivative_range(l, u, f) for g, (l, u), f in zip(chain.gates, fb, fixed)]
        dr = [(a.expand(D, -1), b.expand(D, -1)) for a, b in dr]
        bg = BackwardGraph(chain, self.seeds[seed_idx], dr, "crown")
        bb = bg.run(want_coef=True, abs_fixed=fixed[-1] if self.use_abs else None, sign_search=self.sign_search,
                    skip_fixed=True)
        ub = row_dual_upper(self.norm, bb.grad_lower, bb.grad_upper, bb.l1_upper)
        scores, unst_any = [], torch.zeros(D, dtype=torch.bool, device=self.dev)
        for k, gate in enumerate(chain.gates):
            un = gate.switch_unstable(*fb[k], fixed[k])
            ql, qu = bb.q_bounds[k]
            sc = bb.gate_coef[k] * torch.maximum(ql.abs(), qu.abs())
            if self.balance:
                zl, zu = fb[k]
                sc = sc * (torch.minimum(zu, -zl).clamp(min=0) / (zu - zl).clamp(min=1e-30)).clamp(min=1e-3)
            sc = sc * (1.0 + self.layer_bias) ** (chain.depth - 1 - k)
            scores.append(torch.where(un, sc + 1e-12, torch.full_like(sc, -1.0)))
            unst_any |= un.any(-1)
        if self.use_abs:  # sign choices of ||g||_1 = max_s s^T g: the gap of the abs chord is the score
            gl, gu = bb.grad_lower, bb.grad_upper
            gap = torch.where((gl < 0) & (gu > 0), -2 * gl * gu / (gu - gl).clamp(min=1e-300), torch.zeros_like(gl))
            scores.append(torch.where((fixed[-1] == 0) & (gap > 0), gap * self.abs_weight + 1e-12,
                                      torch.full_like(gap, -1.0)))
        signs = [torch.where(f != 0, f, torch.where(l > 0, 1, -1).to(torch.int8)) for f, (l, u) in zip(fixed, fb)]
        return ub, torch.cat(scores, 1), unst_any, empty, signs, fb, (kept[0] if kept else None)

    def _leaf(self, d: _Domain, ub: float, signs, i: int) -> None:
        """Close a leaf (one activation pattern): LP feasibility, interior point, autograd witness."""
        s_i = d.seed
        if self._late():
            # out of time: close the leaf without its LP.  Its bound (the exact gradient norm of its
            # activation pattern) still covers it; it just cannot be proven feasible or witnessed.
            self.closed_ub[s_i] = max(self.closed_ub[s_i], ub)
            self.stats["leaves_unchecked"] = self.stats.get("leaves_unchecked", 0) + 1
            return
        self.stats["lp_calls"] += 1
        t, xs = leaf_margin(self.chain, self.xl_np, self.xu_np, [s[i].cpu().numpy().astype(float) for s in signs])
        if t < -self.feas_tol:
            self.stats["infeasible"] += 1
            return
        self.stats["leaves"] += 1
        self.closed_ub[s_i] = max(self.closed_ub[s_i], ub)
        if t > self.feas_tol and xs is not None:
            X = torch.as_tensor(xs, dtype=self.dt, device=self.dev)[None, None]
            g = true_gradients(self.net, X, self.seeds[s_i:s_i + 1])
            v = dual_norm_of(g, self.norm)[0, 0]
            self.box_attained[s_i] = torch.maximum(self.box_attained[s_i], v)
            if self.ball is not None and not bool(self.ball.contains(X.reshape(1, -1))[0]):
                return  # an interior point of the bounding box but not of the l2/l1 ball region
            if v > self.lb_seed[s_i] or (s_i not in self.witness and v >= self.lb_seed[s_i]):
                self.lb_seed[s_i] = v  # (also witnesses the attack's value)
                self.witness[s_i] = xs

    def _late(self) -> bool:
        return time.perf_counter() >= self.deadline

    def boost_lower(self, ub_seed: list[float], until: float, n_starts: int = 64, steps: int = 200,
                    rng_seed: int = 1) -> None:
        """A second, longer attack round (:func:`..lower_bounds.attack.attack_lower_bound`: fresh random
        points, ``n_starts`` smoothed-ascent restarts of ``steps`` steps, stopped at ``until``) on at most two
        seeds: the one holding the best lower bound and the one with the largest upper bound ``ub_seed``.
        Every value it returns is autograd's gradient dual norm at a differentiable point of the region (in
        the ball for an l2/l1 ball), i.e. an attained lower bound; the point becomes the seed's witness."""
        from ..lower_bounds.attack import attack_lower_bound
        sel = sorted({int(self.lb_seed.argmax()), int(torch.tensor(ub_seed).argmax())})
        lb, pts = attack_lower_bound(self.net, self.chain, self.xl.reshape(-1), self.xu.reshape(-1),
                                     self.seeds[sel], self.norm, n_starts=n_starts, steps=steps, seed=rng_seed,
                                     ball=self.ball, deadline=until)
        for i, s_i in enumerate(sel):
            if bool(lb[i] > self.lb_seed[s_i]):
                self.lb_seed[s_i] = lb[i]
                self.witness[s_i] = pts[i].cpu().numpy()
        self.stats["lower_boost"] = [float(v) for v in lb]

    def _chunk(self) -> int:
        """Domains per bounding call: at most ``chunk``, and (from the measured cost per domain) few enough
        that one call takes at most ~2% of the budget -- the deadline is checked between calls."""
        if self.sec_per_domain <= 0 or not math.isfinite(self.budget):
            return self.chunk
        return max(1, min(self.chunk, int(0.02 * self.budget / self.sec_per_domain)))

    def bound(self, children: list) -> None:
        """The bounding callback: sets every child's key (chunks of at most ``chunk`` domains; past the
        deadline the remaining children keep their parent's bound, which covers them)."""
        i = 0
        while i < len(children):
            if self._late():
                break
            threads = self.tuner.choose() if self.tuner is not None else None
            n = self._chunk()
            if self.tuner is not None and self.tuner.cautious:
                n = max(1, n // 4)  # a probe of a thread count that may be much slower: a small batch
            tc = time.perf_counter()
            part = children[i:i + n]
            i += len(part)
            seed_idx = torch.tensor([d.seed for d in part], device=self.dev)
            fixed = self._fixed_tensors(np.stack([d.fixed for d in part]))
            ub, score, unst, empty, signs, sb, warm = self.raw_bound(seed_idx, fixed, self._inherited(part),
                                                                     [d.warm for d in part])
            if warm is not None:  # the multipliers cost ~5 KB per open domain: kept within WARM_MAX_BYTES
                size = sum(a.nbytes for w in warm for t in w if t is not None for a in t) / max(len(warm), 1)
                self.warm_bytes = max(self.warm_bytes, size)
                if len(self.open) * self.warm_bytes > WARM_MAX_BYTES:
                    warm = None
                    self.stats["warm_dropped"] = self.stats.get("warm_dropped", 0) + len(part)
            sb_np = _outward32(torch.cat([l for l, _ in sb], 1), torch.cat([u for _, u in sb], 1))
            ub = torch.minimum(ub, torch.tensor([d.ub for d in part], dtype=self.dt, device=self.dev))
            self.stats["domains_bounded"] += len(part)
            K = min(self.fsb_k, score.shape[1])
            cand = score.topk(K, dim=1)
            cand_j, cand_ok = cand.indices.cpu().numpy(), (cand.values > 0).cpu().numpy()
            ub_l, empty_l, unst_l = ub.tolist(), empty.tolist(), unst.tolist()
            lb = float(self.lb_seed.max())
            for j, d in enumerate(part):
                d.ub, d.key = ub_l[j], math.inf
                d.sb = sb_np[j]
                d.warm = None
                self.open.discard(d)
                if empty_l[j]:
                    self.stats["infeasible"] += 1
                elif not unst_l[j]:
                    self._leaf(d, ub_l[j], signs, j)
                elif d.ub <= lb:  # cannot raise the maximum: closed with its bound
                    self.stats["pruned"] += 1
                    self.closed_ub[d.seed] = max(self.closed_ub[d.seed], d.ub)
                else:
                    d.key = -d.ub
                    d.warm = warm[j] if warm is not None else None
                    self.open.add(d)
                    ok = cand_ok[j]
                    ok[0] = True  # an unstable switch exists: the best candidate is one
                    d.cand = cand_j[j][ok]
            took = time.perf_counter() - tc
            if self.tuner is not None:
                self.tuner.record(threads, len(part), took)
            spd = took / len(part)
            self.sec_per_domain = spd if self.sec_per_domain <= 0 else 0.5 * (self.sec_per_domain + spd)
        return None  # a witness here is a lower bound, not the end of the search

    # ------------------------------------------------------------------ branching
    def _children(self, d: _Domain, j: int, register: bool = True) -> list:
        out = []
        for sgn in (1, -1):
            f = d.fixed.copy()
            f[j] = sgn
            out.append(_Domain(d.seed, f, d.ub, d.sb, d.warm))
        if register:
            self.open.update(out)  # open (with the parent's bound) until bounded
        return out

    def split(self, parents: list) -> list:
        """The branching policy: split each parent on its best candidate switch (both signs); dominated
        or (with ``lp_check``) LP-infeasible parents get no children (they are closed here)."""
        self.stats["batches"] += 1
        lb = float(self.lb_seed.max())
        out: list = [None] * len(parents)
        live = []
        self.open.difference_update(parents)  # replaced by their children (or closed below)
        for i, d in enumerate(parents):
            if d.ub <= lb:
                self.stats["pruned"] += 1
                self.closed_ub[d.seed] = max(self.closed_ub[d.seed], d.ub)
                out[i] = []
            else:
                live.append(i)
        if self.lp_check and live:
            live = self._lp_filter(parents, live, out)
        if self.fsb_k > 1 and live and not self._late():
            return self._strong(parents, live, out)
        for i in live:
            d = parents[i]
            if d.cand is None:  # never bounded (the deadline came inside its batch): bound it as it is
                out[i] = [_Domain(d.seed, d.fixed, d.ub, d.sb)]
                self.open.update(out[i])
            else:
                out[i] = self._children(d, int(d.cand[0]))
        return out

    def _lp_filter(self, parents, live, out):
        """LP feasibility (triangle relaxation + splits) of the parents about to be split."""
        nsplit = [int((parents[i].fixed[:sum(self.sizes[:len(self.chain.gates)])] != 0).sum()) for i in live]
        cand = [i for i, n in zip(live, nsplit) if n >= self.lp_min_splits]
        cand = sorted(cand, key=lambda i: -parents[i].ub)[:self.lp_top]  # the domains defining the max
        if not cand:
            return live
        seed_idx = torch.tensor([parents[i].seed for i in cand], device=self.dev)
        fixed = self._fixed_tensors(np.stack([parents[i].fixed for i in cand]))
        fbc, emptyc = split_forward_bounds(self.chain, self.xl, self.xu, self.root_fb, fixed[:len(self.chain.gates)],
                                           self.rebound, self.poly_iters, self.poly_lr,
                                           self._inherited([parents[i] for i in cand]))
        fb_np = [(l.cpu().numpy(), u.cpu().numpy()) for l, u in fbc]
        drop = set()
        for ci, i in enumerate(cand):
            if self._late():
                break
            if bool(emptyc[ci]):
                drop.add(i)
                continue
            self.stats["lp_calls"] += 1
            if domain_infeasible(self.chain, self.xl_np, self.xu_np, [(l[ci], u[ci]) for l, u in fb_np]):
                drop.add(i)
        for i in drop:
            self.stats["infeasible"] += 1
            out[i] = []
        return [i for i in live if i not in drop]

    def _strong(self, parents, live, out):
        """Strong branching over each parent's ``fsb_k`` candidates: bound both children of every
        candidate and keep the candidate whose worse child is lowest (infeasible children count -inf)."""
        trials = [(i, int(j)) for i in live for j in (parents[i].cand if parents[i].cand is not None else ())]
        kids = [k for i, j in trials for k in self._children(parents[i], j, register=False)]
        if not kids:
            trials = []
            kids = [_Domain(0, parents[live[0]].fixed, 0.0)] * 2  # (nothing to compare: a dummy pair)
        seed_idx = torch.tensor([k.seed for k in kids], device=self.dev)
        fixed = self._fixed_tensors(np.stack([k.fixed for k in kids]))
        ub, _, _, empty, *_ = self.raw_bound(seed_idx, fixed, self._inherited(kids))
        ub = torch.where(empty, torch.full_like(ub, -math.inf), ub).reshape(-1, 2).amax(1).tolist()
        best: dict = {}
        for (i, j), v in zip(trials, ub):
            if i not in best or v < best[i][0]:
                best[i] = (v, j)
        for i in live:
            d = parents[i]
            if i in best:
                out[i] = self._children(d, best[i][1])
            else:  # never bounded (the deadline came inside its batch): bound it as it is
                out[i] = [_Domain(d.seed, d.fixed, d.ub, d.sb)]
                self.open.update(out[i])
        return out

    # ------------------------------------------------------------------ anytime bound
    def open_ub(self) -> torch.Tensor:
        """Per seed, the largest bound of the open domains (0 when none).  The open set holds every
        domain created and not yet closed or split, so with the closed bounds it covers the region
        whatever way the loop stopped (children refused by the memory budget included)."""
        out = [0.0] * len(self.closed_ub)
        for d in self.open:
            out[d.seed] = max(out[d.seed], d.ub)
        return torch.tensor(out, dtype=self.dt, device=self.dev)


def _sign_search_settings(opt, chain: DenseChain, norm: str):
    """The :class:`SignSearch` of ``bab_options["sign_search"]`` (see :func:`_run_bab`), or None (off)."""
    if norm != "inf" or opt is False:
        return None
    if opt is None:
        return SignSearch() if chain.in_dim <= POLY_MAX_INPUT else None
    if opt is True:
        return SignSearch()
    if isinstance(opt, dict):
        bad = set(opt) - {"first", "rounds", "keep", "step"}
        if bad or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in opt.values()):
            raise InvalidArgumentError("bab_options: sign_search must be None, True, False or a dict with "
                                       f"non-negative int fields first, rounds, keep, step (got {opt!r})")
        cfg = SignSearch(**opt)
        if cfg.first > 12 or cfg.step > 8 or cfg.keep < 1 or cfg.step < 1:
            raise InvalidArgumentError("bab_options: sign_search needs first <= 12, 1 <= step <= 8 and keep >= 1 "
                                       f"(got {opt!r})")
        return cfg
    raise InvalidArgumentError(f"bab_options: sign_search must be None, True, False or a dict (got {opt!r})")


def _run_bab(net, chain: DenseChain, xl, xu, seeds, norm: str, root_fb, root: LipschitzResult, timeout: float,
             operator: bool, attack_lower, batch: int = 256, max_domains: int = 1_000_000,
             max_pool: int = 2_000_000,
             feas_tol: float = 1e-9, rebound: bool = True, layer_bias: float = 3.0,
             lp_check: bool = False, balance: bool = False,
             lp_min_splits: int = 6, lp_top: int = 1_000_000, fsb_k: int = 1, abs_split: bool = False,
             abs_weight: float = 1.0, poly_iters: int | None = None, poly_lr: float = 0.1, log_every: float = 0.0,
             chunk: int = 128, ball=None, progress=None, refine_share: float | None = None,
             lower_share: float = LOWER_SHARE, sign_search=None, thread_tuner=None,
             warm_start: bool = True) -> LipschitzResult:
    """Refine ``root`` (the plain bound) by branch-and-bound within ``timeout`` seconds, on the shared
    search loop :func:`...bab.search.branch_and_bound` (policy and bounding of :class:`_ActivationSearch`).

    Resource limits: ``timeout`` (wall seconds; checked between batches by the loop and between
    chunks of ``chunk`` domains and before every leaf LP inside a batch), ``max_domains`` (domains
    bounded in total) and ``max_pool`` (open domains kept in memory: each costs ``O(hidden neurons)``
    int8).  Whichever is hit first stops the search; the returned upper bound is then the maximum
    over the open and closed domains, which is sound at any stopping point (``status`` says why).
    ``poly_iters``: dual steps of the input-polytope re-bounding (0: engine CROWN over the box; None:
    ``POLY_ITERS`` for inputs of at most ``POLY_MAX_INPUT`` coordinates, else 0 -- the polytope pass
    holds (domains x neurons x inputs) tensors, which made MNIST 6x100 (784 inputs) ~5x slower per domain);
    ``log_every > 0``: print the anytime bounds to stderr every that many seconds (long offline runs).
    ``progress``: None or a callable ``progress(elapsed_s, upper, lower)`` called with each anytime
    bound (for progress displays; it must not raise).
    ``ball``: for an l2 / l1 ball region searched over its bounding box, the
    :class:`.attack.BallGuard`: leaf witnesses outside the ball do not count as lower bounds.
    ``refine_share``: at most this share of ``timeout`` goes first to refining the root's pre-activation
    bounds by a per-neuron beta-CROWN search (:func:`..bounds.chain.refined_intermediate_bounds`; ReLU /
    LeakyReLU chains with >= 2 activation layers; it stops early when every neuron's bound meets its sampled
    range); 0: off; None: ``ROOT_REFINE_SHARE`` where the domains are re-bounded by the forward engine
    (``poly_iters == 0``, e.g. more than ``POLY_MAX_INPUT`` inputs), else 0.  Every domain starts from the
    refined bounds.
    ``sign_search``: each domain's ``||grad||_1`` bound (l_inf input norm) is also taken from a small search over
    the signs of its sign-unstable gradient coordinates (:meth:`..bounds.backward.BackwardGraph._sign_search_l1`);
    None: on with :class:`..bounds.backward.SignSearch` defaults for at most ``POLY_MAX_INPUT`` inputs; False: off;
    True or a dict of ``SignSearch`` fields: on.
    ``warm_start``: each domain's input-polytope dual steps start from its parent's multipliers (kept per open
    domain, compactly: its unstable rows x split half-spaces, float32, while the open domains' multipliers stay
    within ``WARM_MAX_BYTES``; beyond, new domains keep none and their children start from zero); False: from zero.  Measured on random
    16-64-64-10 (torch seed 0): 161,700 -> 133,946 domains to the exact value, 121 -> 104 s.
    ``lower_share``: a search still running after ``BOOST_AFTER`` of ``timeout`` spends at most this share of
    it on a longer attack round on the seeds that matter (:meth:`_ActivationSearch.boost_lower`; only when an
    attack ran before, ``attack_lower`` given); 0: off.
    """
    from ...bab.search import branch_and_bound
    from ..bounds.common import certified
    t0 = time.perf_counter()
    if poly_iters is None:
        poly_iters = POLY_ITERS if chain.in_dim <= POLY_MAX_INPUT else 0
    check_supported(chain, norm, operator)
    if lp_check and any(g.switch_matrix is not None for g in chain.gates):
        raise UnsupportedOperationError("lp_check (triangle-relaxation LP of a domain) supports ReLU/LeakyReLU networks only")
    if int(batch) < 1 or int(chunk) < 1 or int(max_pool) < 1 or int(max_domains) < 1:
        raise InvalidArgumentError("bab_options: batch, chunk, max_pool and max_domains must be >= 1")
    if refine_share is None:
        refine_share = ROOT_REFINE_SHARE if poly_iters == 0 else 0.0
    if not 0.0 <= float(refine_share) < 1.0:
        raise InvalidArgumentError(f"bab_options: refine_share must be in [0, 1), got {refine_share}")
    if not 0.0 <= float(lower_share) < 1.0:
        raise InvalidArgumentError(f"bab_options: lower_share must be in [0, 1), got {lower_share}")
    sign_cfg = _sign_search_settings(sign_search, chain, norm)
    if not isinstance(warm_start, bool):
        raise InvalidArgumentError(f"bab_options: warm_start must be True or False, got {warm_start!r}")
    stats_refine = None
    if refine_share > 0 and rebound and math.isfinite(timeout):
        from ..bounds.chain import refined_intermediate_bounds
        ref = refined_intermediate_bounds(chain, xl.reshape(1, -1), xu.reshape(1, -1), root_fb,
                                          deadline=t0 + float(refine_share) * timeout)
        if ref is not None:
            root_fb, stats_refine = ref[0], ref[1]
    S = seeds.shape[0]
    dev, dt = seeds.device, seeds.dtype
    srch = _ActivationSearch(net, chain, xl, xu, seeds, norm, root_fb, rebound, poly_iters, poly_lr,
                             abs_split and norm == "inf", balance, layer_bias, abs_weight, fsb_k, feas_tol, lp_check,
                             lp_min_splits, lp_top, ball, attack_lower, t0 + timeout, int(chunk))
    srch.sign_search, srch.tuner = sign_cfg, thread_tuner
    srch.warm_start = warm_start and rebound and poly_iters > 0
    N = sum(srch.sizes)
    root_rows = torch.tensor(root.per_output_upper, dtype=dt, device=dev)
    roots = [_Domain(s, np.zeros(N, dtype=np.int8), float(root_rows[s])) for s in range(S)]
    # root domains: bounded once together, their switch bounds then tighten every later domain's
    seed_idx = torch.arange(S, device=dev)
    sb = srch.raw_bound(seed_idx, srch._fixed_tensors(np.stack([d.fixed for d in roots])))[5]
    srch.root_sb = [(l.amin(0, keepdim=True), u.amax(0, keepdim=True)) for l, u in sb]  # same box for every seed
    srch.deadline = math.inf  # the roots are always bounded (their bound is the search's starting point)
    srch.open.update(roots)
    srch.bound(roots)
    srch.deadline, srch.budget = t0 + timeout, float(timeout)
    history = [(time.perf_counter() - t0, root.upper, float(srch.lb_seed.max()))]
    last_log = [0.0]

    def anytime(best_bound: float) -> float:
        open_max = -best_bound if math.isfinite(best_bound) else 0.0
        raw = max(open_max, max(srch.closed_ub))
        return min(root.upper, float(certified(torch.tensor(raw, dtype=torch.float64))), history[-1][1])

    boost = [lower_share > 0 and attack_lower is not None and math.isfinite(timeout)]

    def on_progress(p) -> None:
        if boost[0] and time.perf_counter() - t0 >= BOOST_AFTER * timeout:  # not finished early: boost the lower bound
            boost[0] = False
            ub = srch.open_ub().tolist()
            srch.boost_lower([max(a, b) for a, b in zip(ub, srch.closed_ub)],
                             until=time.perf_counter() + float(lower_share) * timeout)
        history.append((time.perf_counter() - t0, anytime(p.best_bound), float(srch.lb_seed.max())))
        if progress is not None:
            progress(*history[-1])
        if log_every > 0 and history[-1][0] - last_log[0] >= log_every:
            last_log[0] = history[-1][0]
            import sys
            print(f"[bab] t={history[-1][0]:.0f}s upper={history[-1][1]:.6f} lower={history[-1][2]:.6f} "
                  f"open={p.domains_left} {srch.stats}", file=sys.stderr, flush=True)

    out = branch_and_bound(roots, srch, srch.bound, timeout=max(0.0, t0 + timeout - time.perf_counter()), batch=int(batch), memory_budget=float(max_pool),
                           max_domains=int(max_domains) + S, progress=on_progress)
    finished = out.status == "proved" and not srch.open
    stop = "timeout" if out.status == "timeout" else "domain_limit"
    closed_ub = torch.tensor(srch.closed_ub, dtype=dt, device=dev)
    per_seed = torch.minimum(torch.maximum(srch.open_ub(), closed_ub), root_rows)
    per_c = certified(per_seed)
    upper = float(per_c.max())
    stats, lb_seed = srch.stats, srch.lb_seed
    stats["open_domains"] = len(srch.open)
    if stats_refine is not None:
        stats["refine"] = stats_refine.summary()
    if thread_tuner is not None:
        stats["threads"] = thread_tuner.summary()
    stats["search"] = out.reason
    # A finished run has closed every domain: domains pruned by the lower bound cannot hold the max, and
    # the max is exact when it is *attained*: the largest closed leaf had an interior point, where
    # autograd's gradient gave the lower bound.  A leaf whose LP margin is ~0 (a region with no interior
    # point found: ties, or kinks that all meet in one point) keeps its bound but cannot witness it;
    # if such a leaf holds the max, the run is closed but not exact ("closed_unattained").
    attained = float(torch.maximum(lb_seed, srch.box_attained).max()) >= float(per_seed.max()) * (1 - 1e-9) - 1e-12
    status = ("exact" if attained else "closed_unattained") if finished else stop
    history.append((time.perf_counter() - t0, min(history[-1][1], upper, root.upper), float(lb_seed.max())))
    res = LipschitzResult(min(upper, root.upper), float(lb_seed.max()), norm, root.method + "+bab",
                          exact=finished and attained, per_output_upper=[float(v) for v in per_c],
                          per_output_lower=[float(v) for v in lb_seed], status=status,
                          forward_method=root.forward_method, history=history, stats=stats)
    res.stats["witness"] = {k: v.tolist() for k, v in srch.witness.items()}
    return res

