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
   An empty interval proves the domain infeasible.
2. **Bound** ``sup ||grad||_q`` over the domain by CROWN on the backward graph with the domain's
   Clarke masks (:mod:`.backward`); the child bound is ``min(child, parent)``.
3. **Leaves** (no free unstable neuron left): the gradient is one constant vector; an LP (HiGHS)
   checks that the closed activation region meets the box.  Infeasible leaves are pruned; feasible
   ones are exact.  The LP maximizes the normalized margin ``t`` of all sign constraints, and when
   ``t > 0`` its solution is an interior point where autograd's gradient is evaluated: an exact,
   attained lower bound.
4. Best-first: the ``batch`` domains with the largest bounds are split on the unstable neuron with
   the largest ``|CROWN coefficient| * max(|l_g|, |u_g|)`` (the looseness of its chord relaxation),
   weighted by ``(1 + layer_bias)^(layers above it)``: splits near the input are preferred, since
   their half-spaces are exact and narrow the input polytope for every later neuron (measured:
   ``layer_bias = 3`` finished random 16-32x3-10 in ~30 s where 0 stood at 0.40 vs exact 0.319).
   Domains whose bound is <= the best lower bound are dropped (they cannot raise the maximum).

The anytime upper bound (max over open domains and closed leaves) is always certified; when no
open domain remains, the maximum over feasible closed regions has been found: the result is exact.
Measured (bench/results/local_lipschitz.md): on random 16-32-32-10 the polytope re-bounding takes
the search from 0.82 after 30 s (not finished) to the exact 0.58927 in under a minute.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from ...models.errors import UnsupportedOperationError

from .attack import true_gradients
from .feasibility import domain_infeasible, leaf_margin
from .backward import BackwardGraph
from .chain import DenseChain, clamp_splits, clamp_switch, interval_bounds
from .polytope import polytope_forward_bounds
from .norms import dual_norm_of, row_dual_upper
from .result import LipschitzResult

BAB_OPS = ("relu", "leaky_relu", "maxmin", "groupsort", "householder")
POLY_ITERS = 20  # default dual steps of the input-polytope re-bounding
POLY_MAX_INPUT = 128  # ... used by default only up to this many input coordinates
POLY_CHUNK_ELEMS = 1 << 22  # ~32 MB of float64 per (domains x neurons x inputs) tensor in the polytope pass


def split_forward_bounds(chain: DenseChain, xl: torch.Tensor, xu: torch.Tensor, root_fb, fixed: list[torch.Tensor],
                         rebound: bool = True, poly_iters: int = 0, poly_lr: float = 0.1, root_sb=None
                         ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
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
    if rebound and (poly_iters > 0 or switched):
        # chunk the domains: the polytope pass holds (domains, neurons, n_0) tensors
        per = max(g.n for g in chain.gates) * (chain.in_dim + 2 * max(g.n for g in chain.gates))
        step = max(1, POLY_CHUNK_ELEMS // max(per, 1))
        parts = [polytope_forward_bounds(chain, xl, xu, [(l[i:i + step], u[i:i + step]) for l, u in fb],
                                         [f[i:i + step] for f in fixed], poly_iters, poly_lr) for i in range(0, D, step)]
        fb = [(torch.cat([p[0][k][0] for p in parts]), torch.cat([p[0][k][1] for p in parts])) for k in range(len(fb))]
        empty = torch.cat([p[1] for p in parts])
    elif rebound and chain.depth > 1:
        from ...relax import Box, compute_bounds  # the forward bound engine (layer below relax.lipschitz)
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
    return [(l, torch.maximum(u, l)) for l, u in fb], empty


def run_bab(*args, num_threads: int | None = 1, **kwargs) -> LipschitzResult:
    """:func:`_run_bab` with torch's intra-op threads set to ``num_threads`` for its duration (None: unchanged).

    A bias-free network over a box holding its apex 0 is searched over the box's shells instead
    (:mod:`.apex`: exact reduction, kinks in general position again).

    The domain batches are small tensors: one thread avoids the synchronization cost of intra-op
    parallelism, which on a shared 2-core machine slowed the search down by over 10x.
    """
    from .apex import applies, run_bab_shells
    old = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(max(1, int(num_threads)))
    try:
        net, chain, xl, xu, seeds, norm, root_fb, root, timeout, operator, attack_lower = args
        if applies(chain, xl, xu, kwargs.get("ball")):  # bias-free net, box around its apex 0
            kwargs.pop("ball", None)
            return run_bab_shells(net, chain, xl, xu, seeds, norm, root, timeout, operator, attack_lower, **kwargs)
        return _run_bab(*args, **kwargs)
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


def _run_bab(net, chain: DenseChain, xl, xu, seeds, norm: str, root_fb, root: LipschitzResult, timeout: float,
            operator: bool, attack_lower, batch: int = 256, max_domains: int = 1_000_000,
            max_pool: int = 2_000_000,
            feas_tol: float = 1e-9, rebound: bool = True, layer_bias: float = 3.0,
            lp_check: bool = False, balance: bool = False,
            lp_min_splits: int = 6, lp_top: int = 1_000_000, fsb_k: int = 1, abs_split: bool = False, abs_weight: float = 1.0,
            poly_iters: int | None = None, poly_lr: float = 0.1, log_every: float = 0.0,
            ball=None, progress=None) -> LipschitzResult:
    """Refine ``root`` (the plain bound) by branch-and-bound within ``timeout`` seconds.

    Resource limits: ``timeout`` (wall seconds), ``max_domains`` (domains bounded in total) and
    ``max_pool`` (pending domains kept in memory: each costs ``O(hidden neurons)`` int8 plus a few
    floats).  Whichever is hit first stops the search; the returned upper bound is then the maximum
    over the pending and closed domains, which is sound at any stopping point (``status`` says why).
    ``poly_iters``: dual steps of the input-polytope re-bounding (0: engine CROWN over the box; None:
    ``POLY_ITERS`` for inputs of at most ``POLY_MAX_INPUT`` coordinates, else 0 -- the polytope pass
    holds (domains x neurons x inputs) tensors, which made MNIST 6x100 (784 inputs) ~5x slower per domain);
    ``log_every > 0``: print the anytime bounds to stderr every that many seconds (long offline runs).
    ``progress``: None or a callable ``progress(elapsed_s, upper, lower)`` called with each anytime
    bound (for progress displays; it must not raise).
    ``ball``: for an l2 / l1 ball region searched over its bounding box, the
    :class:`.attack.BallGuard`: leaf witnesses outside the ball do not count as lower bounds.
    """
    from .bounds import certified
    t0 = time.perf_counter()
    if poly_iters is None:
        poly_iters = POLY_ITERS if chain.in_dim <= POLY_MAX_INPUT else 0
    check_supported(chain, norm, operator)
    if lp_check and any(g.switch_matrix is not None for g in chain.gates):
        raise UnsupportedOperationError("lp_check (triangle-relaxation LP of a domain) supports ReLU/LeakyReLU networks only")
    S = seeds.shape[0]
    dev, dt = seeds.device, seeds.dtype
    use_abs = abs_split and norm == "inf"
    sizes = [g.n_q for g in chain.gates] + ([chain.in_dim] if use_abs else [])
    offs = np.cumsum([0] + sizes)
    lb_seed = torch.tensor([max(v, 0.0) if v is not None else 0.0 for v in (attack_lower or [0.0] * S)],
                           dtype=dt, device=dev)
    closed_ub = torch.zeros(S, dtype=dt, device=dev)
    box_attained = torch.zeros(S, dtype=dt, device=dev)  # gradient norms at leaf interior points (in the box)
    xl_np, xu_np = xl.cpu().numpy(), xu.cpu().numpy()
    stats = {"domains_bounded": 0, "leaves": 0, "infeasible": 0, "pruned": 0, "lp_calls": 0, "batches": 0}

    root_sb = None  # the root domain's switch bounds (after its own re-bounding): valid for every domain

    def bound(seed_idx, fixed):
        D = seed_idx.shape[0]
        fb, empty = split_forward_bounds(chain, xl, xu, root_fb, fixed, rebound, poly_iters, poly_lr, root_sb)
        dr = [g.switch_derivative_range(l, u, f) for g, (l, u), f in zip(chain.gates, fb, fixed)]
        dr = [(a.expand(D, -1), b.expand(D, -1)) for a, b in dr]
        bg = BackwardGraph(chain, seeds[seed_idx], dr, "crown")
        bb = bg.run(want_coef=True, abs_fixed=fixed[-1] if use_abs else None)
        ub = row_dual_upper(norm, bb.grad_lower, bb.grad_upper, bb.l1_upper)
        scores, unst_any = [], torch.zeros(D, dtype=torch.bool, device=dev)
        for k, gate in enumerate(chain.gates):
            un = gate.switch_unstable(*fb[k], fixed[k])
            ql, qu = bb.q_bounds[k]
            sc = bb.gate_coef[k] * torch.maximum(ql.abs(), qu.abs())
            if balance:
                zl, zu = fb[k]
                sc = sc * (torch.minimum(zu, -zl).clamp(min=0) / (zu - zl).clamp(min=1e-30)).clamp(min=1e-3)
            sc = sc * (1.0 + layer_bias) ** (chain.depth - 1 - k)
            scores.append(torch.where(un, sc + 1e-12, torch.full_like(sc, -1.0)))
            unst_any |= un.any(-1)
        if use_abs:  # sign choices of ||g||_1 = max_s s^T g: the gap of the abs chord is the score
            gl, gu = bb.grad_lower, bb.grad_upper
            gap = torch.where((gl < 0) & (gu > 0), -2 * gl * gu / (gu - gl).clamp(min=1e-300), torch.zeros_like(gl))
            scores.append(torch.where((fixed[-1] == 0) & (gap > 0), gap * abs_weight + 1e-12, torch.full_like(gap, -1.0)))
        signs = [torch.where(f != 0, f, torch.where(l > 0, 1, -1).to(torch.int8)) for f, (l, u) in zip(fixed, fb)]
        return ub, torch.cat(scores, 1), unst_any, empty, signs, fb

    # root domain per seed
    seed_idx = torch.arange(S, device=dev)
    fixed = [torch.zeros(S, n, dtype=torch.int8, device=dev) for n in sizes]
    root_rows = torch.tensor(root.per_output_upper, dtype=dt, device=dev)
    t_root = time.perf_counter()
    ub, score, unst, empty, signs, sb = bound(seed_idx, fixed)
    # the first batch's size comes from the root's cost per domain (no batch of 256 blind)
    sec_per_domain = (time.perf_counter() - t_root) / S
    root_sb = [(l.amin(0, keepdim=True), u.amax(0, keepdim=True)) for l, u in sb]  # same box for every seed
    ub = torch.minimum(ub, root_rows)
    history = [(time.perf_counter() - t0, root.upper, float(lb_seed.max()))]
    pool = None
    witness = {}

    def process(seed_idx, fixed, ub, score, unst, empty, signs):
        nonlocal closed_ub, lb_seed
        keep = ~empty
        stats["infeasible"] += int(empty.sum())
        leaf = keep & ~unst
        for i in torch.nonzero(leaf).flatten().tolist():
            if time.perf_counter() - t0 >= timeout:
                # out of time: close the leaf without its LP.  Its bound (the exact gradient norm of its
                # activation pattern) still covers it; it just cannot be proven feasible or witnessed.
                closed_ub[int(seed_idx[i])] = torch.maximum(closed_ub[int(seed_idx[i])], ub[i])
                stats["leaves_unchecked"] = stats.get("leaves_unchecked", 0) + 1
                continue
            stats["lp_calls"] += 1
            t, xs = leaf_margin(chain, xl_np, xu_np, [s[i].cpu().numpy().astype(float) for s in signs])
            s_i = int(seed_idx[i])
            if t < -feas_tol:
                stats["infeasible"] += 1
                continue
            stats["leaves"] += 1
            closed_ub[s_i] = torch.maximum(closed_ub[s_i], ub[i])
            if t > feas_tol and xs is not None:
                X = torch.as_tensor(xs, dtype=dt, device=dev)[None, None]
                g = true_gradients(net, X, seeds[s_i:s_i + 1])
                v = dual_norm_of(g, norm)[0, 0]
                box_attained[s_i] = torch.maximum(box_attained[s_i], v)
                if ball is not None and not bool(ball.contains(X.reshape(1, -1))[0]):
                    continue  # an interior point of the bounding box but not of the l2/l1 ball region
                if v > lb_seed[s_i] or (s_i not in witness and v >= lb_seed[s_i]):  # also witness the attack's value
                    lb_seed[s_i] = v
                    witness[s_i] = xs
        inner = keep & unst
        return seed_idx[inner], [f[inner] for f in fixed], ub[inner], score[inner]

    pool = process(seed_idx, fixed, ub, score, unst, empty, signs)
    stop = "exact"
    last_log = 0.0
    while pool[0].numel() > 0:
        if time.perf_counter() - t0 >= timeout:
            stop = "timeout"
            break
        if stats["domains_bounded"] >= max_domains or pool[0].numel() >= max_pool:
            stop = "domain_limit"
            break
        p_seed, p_fixed, p_ub, p_score = pool
        # drop domains that cannot raise the maximum
        lbg = lb_seed.max()
        dead = p_ub <= lbg
        if dead.any():
            stats["pruned"] += int(dead.sum())
            closed_ub.scatter_reduce_(0, p_seed[dead], p_ub[dead], reduce="amax")
            alive = ~dead
            p_seed, p_fixed, p_ub, p_score = p_seed[alive], [f[alive] for f in p_fixed], p_ub[alive], p_score[alive]
            if p_seed.numel() == 0:
                pool = (p_seed, p_fixed, p_ub, p_score)
                break
        k = min(batch, p_ub.numel())
        if sec_per_domain > 0:  # keep the time budget: the next batch must fit in what is left
            left = timeout - (time.perf_counter() - t0)
            k = max(1, min(k, int(left / sec_per_domain)))
        t_batch = time.perf_counter()
        top = torch.topk(p_ub, k).indices
        rest = torch.ones_like(p_ub, dtype=torch.bool)
        rest[top] = False
        sel_seed, sel_fixed, sel_ub, sel_score = p_seed[top], [f[top] for f in p_fixed], p_ub[top], p_score[top]
        if lp_check:
            # LP feasibility (triangle relaxation + splits) of the domains about to be split
            nsplit = sum((f != 0).sum(-1) for f in sel_fixed)
            cand = torch.nonzero(nsplit >= lp_min_splits).flatten()
            cand = cand[torch.argsort(sel_ub[cand], descending=True)][:lp_top]  # the domains defining the max
            if cand.numel():
                fbc, emptyc = split_forward_bounds(chain, xl, xu, root_fb, [f[cand] for f in sel_fixed], rebound,
                                                   poly_iters, poly_lr, root_sb)
                fb_np = [(l.cpu().numpy(), u.cpu().numpy()) for l, u in fbc]
                drop = torch.zeros(k, dtype=torch.bool, device=dev)
                for ci, i in enumerate(cand.tolist()):
                    if time.perf_counter() - t0 > timeout:
                        break
                    if bool(emptyc[ci]):
                        drop[i] = True
                        continue
                    stats["lp_calls"] += 1
                    if domain_infeasible(chain, xl_np, xu_np, [(l[ci], u[ci]) for l, u in fb_np]):
                        drop[i] = True
                if drop.any():
                    stats["infeasible"] += int(drop.sum())
                    keep_sel = ~drop
                    sel_seed, sel_fixed = sel_seed[keep_sel], [f[keep_sel] for f in sel_fixed]
                    sel_ub, sel_score = sel_ub[keep_sel], sel_score[keep_sel]
                    k = int(keep_sel.sum())
                    if k == 0:
                        pool = (p_seed[rest], [f[rest] for f in p_fixed], p_ub[rest], p_score[rest])
                        continue
        K = max(1, min(fsb_k, sel_score.shape[1]))
        cand_sc, cand_j = sel_score.topk(K, dim=1)  # (k, K) candidate neurons per domain
        jj = cand_j.T.reshape(-1)  # candidate-major: r * k + i
        valid = (cand_sc.T.reshape(-1) > 0)
        valid[:k] = True  # the best candidate always exists (domain has an unstable neuron)
        layer = torch.as_tensor(np.searchsorted(offs, jj.cpu().numpy(), side="right") - 1, device=dev)
        pos = jj - torch.as_tensor(offs, device=dev)[layer]
        kk = K * k
        c_seed = sel_seed.repeat(2 * K)
        c_fixed = []
        for li, f in enumerate(sel_fixed):
            f2 = f.repeat(2 * K, 1).clone()
            lay2, pos2 = torch.cat((layer, layer)), torch.cat((pos, pos))
            rows = torch.nonzero((lay2 == li) & torch.cat((valid, valid))).flatten()
            vals = torch.cat((torch.ones(kk, dtype=torch.int8, device=dev), -torch.ones(kk, dtype=torch.int8, device=dev)))
            f2[rows, pos2[rows]] = vals[rows]
            c_fixed.append(f2)
        cub, cscore, cunst, cempty, csigns, _ = bound(c_seed, c_fixed)
        cub = torch.minimum(cub, sel_ub.repeat(2 * K))
        if K > 1:  # keep, per domain, the candidate whose worse child is lowest
            eff = torch.where(cempty, torch.full_like(cub, -math.inf), cub).reshape(2, K, k).amax(0)  # (K, k)
            eff = torch.where(valid.reshape(K, k), eff, torch.full_like(eff, math.inf))
            best = eff.argmin(0)  # (k,)
            idx = torch.cat((best * k + torch.arange(k, device=dev), kk + best * k + torch.arange(k, device=dev)))
            c_seed, c_fixed, cub = c_seed[idx], [f[idx] for f in c_fixed], cub[idx]
            cscore, cunst, cempty = cscore[idx], cunst[idx], cempty[idx]
            csigns = [t[idx] for t in csigns]
        stats["domains_bounded"] += 2 * k
        stats["batches"] += 1
        if time.perf_counter() - t_batch > timeout / 20 and batch > 8:
            batch //= 2  # keep the time budget: a batch must take a small fraction of it
        n_seed, n_fixed, n_ub, n_score = process(c_seed, c_fixed, cub, cscore, cunst, cempty, csigns)
        sec_per_domain = (time.perf_counter() - t_batch) / k  # bounding and the leaves' LPs
        pool = (torch.cat((p_seed[rest], n_seed)), [torch.cat((f[rest], g)) for f, g in zip(p_fixed, n_fixed)],
                torch.cat((p_ub[rest], n_ub)), torch.cat((p_score[rest], n_score)))
        open_ub = torch.zeros(S, dtype=dt, device=dev)
        if pool[0].numel():
            open_ub.scatter_reduce_(0, pool[0], pool[2], reduce="amax")
        # anytime upper bound, certified like the final one (outward margin), capped by the root bound
        history.append((time.perf_counter() - t0, min(root.upper, float(certified(torch.maximum(open_ub, closed_ub).max()))),
                        float(lb_seed.max())))
        if progress is not None:
            progress(*history[-1])
        if log_every > 0 and history[-1][0] - last_log >= log_every:
            last_log = history[-1][0]
            import sys
            print(f"[bab] t={history[-1][0]:.0f}s upper={history[-1][1]:.6f} lower={history[-1][2]:.6f} "
                  f"pool={pool[0].numel()} per_seed={[round(float(v), 5) for v in torch.maximum(open_ub, closed_ub)]} "
                  f"{ {k: v for k, v in stats.items()} }", file=sys.stderr, flush=True)
    open_ub = torch.zeros(S, dtype=dt, device=dev)
    if pool[0].numel():
        open_ub.scatter_reduce_(0, pool[0], pool[2], reduce="amax")
    per_seed = torch.minimum(torch.maximum(open_ub, closed_ub), torch.tensor(root.per_output_upper, dtype=dt, device=dev))
    finished = pool[0].numel() == 0
    per_c = certified(per_seed)
    upper = float(per_c.max())
    # A finished run has closed every domain: domains pruned by the lower bound cannot hold the max, and
    # the max is exact when it is *attained*: the largest closed leaf had an interior point, where
    # autograd's gradient gave the lower bound.  A leaf whose LP margin is ~0 (a region with no interior
    # point found: ties, or kinks that all meet in one point) keeps its bound but cannot witness it;
    # if such a leaf holds the max, the run is closed but not exact ("closed_unattained").
    attained = float(torch.maximum(lb_seed, box_attained).max()) >= float(per_seed.max()) * (1 - 1e-9) - 1e-12
    status = ("exact" if attained else "closed_unattained") if finished else stop if stop != "exact" else "timeout"
    res = LipschitzResult(min(upper, root.upper), float(lb_seed.max()), norm, root.method + "+bab",
                          exact=finished and attained, per_output_upper=[float(v) for v in per_c],
                          per_output_lower=[float(v) for v in lb_seed], status=status,
                          forward_method=root.forward_method, history=history, stats=stats)
    res.stats["witness"] = {k: v.tolist() for k, v in witness.items()}
    return res
