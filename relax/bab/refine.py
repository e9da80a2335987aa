"""Refined intermediate bounds: per-neuron β-CROWN branch-and-bound on the pre-activations, before the search.

Why
---
β-CROWN's search on a domain uses the root's intermediate bounds ``l <= z <= u`` (clamped at split
neurons).  On deep MLPs (ERAN 6x100, 9x100) those bounds, even α-CROWN-optimized, are far looser than the
exact ``min``/``max`` of each neuron over the input box, so every domain of the search inherits the
looseness.  α,β-CROWN's answer is a MILP per unstable neuron (Gurobi); a solver's reported optimum is not
a certificate, so here each bound is **proved by our own bounding**: an anytime β-CROWN branch-and-bound
with the neuron itself as the objective (option (c) of issue #14).

Math
----
For ReLU layer ``k`` (pre-activation ``z = z^(k)`` produced by node ``x``) the *prefix network* is the
network cut at ``x``.  For an unstable neuron ``j`` and a side ``σ in {+1, -1}`` the search bounds
``q = σ z_j`` from below over activation-split domains of the prefix (splits on earlier ReLUs only):

* a domain's bound is the β-CROWN lower bound of ``q`` on it (relax/bab/beta_crown.py: valid for every
  α in range and β >= 0, with the engine's outward rounding margins), never below its parent's;
* the two children of a split on ``z_i`` (``z_i >= 0`` / ``z_i <= 0``) cover the parent, so the
  leaves of a neuron's tree cover the whole input box and ``min over its leaves`` is a certified lower
  bound of ``q`` over the box at every moment (anytime), whatever the budget;
* the new bound is ``l_j <- max(l_j, min_leaves)`` for ``σ = +1`` and ``u_j <- min(u_j, -min_leaves)``
  for ``σ = -1``: the intersection of two valid bounds.

A leaf whose bound is ``> 0`` proves the sign of ``z_j`` on it and is not split again (a neuron whose
leaves are all such becomes stable); every round splits the *worst* leaf (the one holding the minimum) of
the ``batch`` rows with the largest relative gap ``(sampled extreme - certified bound) / (u - l)``, the
sampled extreme (random points of the box) being an upper estimate of what any bound can reach; the
children of all rows are bounded in one batched β-CROWN pass (per-domain specification rows).

Layers are refined in order (the first ReLU layer's bounds are already the exact interval of an affine
map on a box); before its searches, layer ``k`` gets α-CROWN on the refined earlier layers
(``BetaCrown._refine_intermediate``), so deeper layers use the refined earlier ones.  Each layer gets an
equal share of what is left of the refinement deadline; every bounding pass checks it; unfinished
neurons keep their anytime bound (never worse than before).

Guarantee: every returned bound contains the exact range of its pre-activation over the box (real
arithmetic, rounding covered by the engine's margins); a bound is never loosened.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from ...models.graph import Network
from .beta_crown import SPLIT_PHIS, BetaCrown

REFINE_MODES = ("auto", "off", "bab")


@dataclass
class RefineStats:
    """What the refinement did (for reports and profiling)."""
    layers: list = field(default_factory=list)  # per layer: dict(name, rows, unstable_before, unstable_after,
    #                                            domains, seconds, alpha_s, width_before, width_after)
    seconds: float = 0.0

    @property
    def domains(self) -> int:
        return sum(r["domains"] for r in self.layers)

    def summary(self) -> str:
        parts = [f"{r['name']}: {r['unstable_before']}->{r['unstable_after']} unstable, mean width "
                 f"{r['width_before']:.3g}->{r['width_after']:.3g}, {r['domains']} domains, {r['seconds']:.2f} s"
                 for r in self.layers]
        return f"refine {self.seconds:.2f} s: " + "; ".join(parts)


def refine_applies(net: Network) -> bool:
    """``refine="auto"``: on for ReLU networks without convolutions (MLPs), where it pays (ERAN 6x100/9x100)."""
    ops = {n.op for n in net.nodes}
    return "conv2d" not in ops and bool(ops & set(SPLIT_PHIS))


def _prefix(net: Network, xname: str) -> Network:
    idx = [n.name for n in net.nodes].index(xname)
    return Network(net.nodes[:idx + 1], output=xname, name=f"{net.name}[:{xname}]")


def refine_intermediate(bc: BetaCrown, pre: dict, *, deadline: float, interm_iters: int = 20,
                        interm_lr: float = 0.25, iters: int = 10, lr_alpha: float = 0.1, lr_beta: float = 0.05,
                        batch: int = 64, samples: int = 256, seed: int = 0,
                        max_rows: int | None = None, stop=None) -> tuple[dict, RefineStats]:
    """Refined copy of the intermediate bounds ``pre`` (``{act node: (l, u)}``, batch dimension 1) of
    ``bc.net`` over ``bc``'s box, stopping at ``deadline`` (``time.monotonic()``).  ``iters``/``lr_*``: β-CROWN
    per batch; ``batch``: leaves split per round (children bounded together: ``2 batch``); ``samples``: random
    points for the gap estimate; ``max_rows``: cap on neuron-sides searched per layer (largest gap first);
    ``stop(pre) -> bool``: called after each layer with the bounds so far, True ends the refinement (e.g. the
    query is already proved with them)."""
    t_start = time.monotonic()
    stats = RefineStats()
    pre = dict(pre)
    net, dt = bc.net, bc.dtype
    acts = [ln for ln in bc.lnodes if ln.kind == "act"]
    todo = [ln for k, ln in enumerate(acts) if k > 0 and ln.pmap is None and ln.phi.name in SPLIT_PHIS]
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    with torch.no_grad():
        u01 = torch.rand((max(1, int(samples)), *bc.lo.shape[1:]), generator=gen, dtype=torch.float64)
        xs = (bc.lo.double() + u01.to(bc.lo.device) * (bc.hi.double() - bc.lo.double())).to(net.dtype)
        xs = torch.cat([xs, ((bc.lo + bc.hi) / 2).to(net.dtype)])
    for pos, ln in enumerate(todo):
        now = time.monotonic()
        if now >= deadline:
            break
        layer_deadline = now + (deadline - now) / (len(todo) - pos)
        l_old, u_old = pre[ln.name]
        w_before = float((u_old - l_old).clamp(min=0).mean())
        unst_before = int(((l_old < 0) & (u_old > 0)).sum())
        # alpha-CROWN on this layer, on the refined earlier layers
        if interm_iters > 0:
            pre = bc._refine_intermediate(pre, int(interm_iters), float(interm_lr), layer_deadline, layers={ln.name})
        t_alpha = time.monotonic() - now
        rec = dict(name=ln.name, rows=0, unstable_before=unst_before, domains=0, alpha_s=round(t_alpha, 3),
                   width_before=w_before)
        if time.monotonic() < layer_deadline:
            pre, rows, dom = _search_layer(bc, pre, ln, xs, layer_deadline, iters, lr_alpha, lr_beta, batch, max_rows)
            rec.update(rows=rows, domains=dom)
        l, u = pre[ln.name]
        rec.update(unstable_after=int(((l < 0) & (u > 0)).sum()), width_after=float((u - l).clamp(min=0).mean()),
                   seconds=round(time.monotonic() - now, 3))
        stats.layers.append(rec)
        if stop is not None and pos + 1 < len(todo) and time.monotonic() < deadline and stop(pre):
            break
    stats.seconds = time.monotonic() - t_start
    return pre, stats


def _search_layer(bc: BetaCrown, pre: dict, ln, xs, deadline, iters, lr_a, lr_b, batch, max_rows):
    """The anytime per-neuron search of one layer (see the module docstring); returns the new ``pre``, the
    number of neuron-sides searched and the domains bounded."""
    net, dt = bc.net, bc.dtype
    xname = ln.inputs[0]
    pnet = _prefix(net, xname)
    names = {n.name for n in pnet.nodes}
    l, u = pre[ln.name]
    lf, uf = l.reshape(-1).clone(), u.reshape(-1).clone()
    unst = ((lf < 0) & (uf > 0)).nonzero().flatten()
    if unst.numel() == 0:
        return pre, 0, 0
    dev = lf.device
    with torch.no_grad():
        zs = pnet(xs).reshape(xs.shape[0], -1).to(dt)  # sampled values: what a bound can at best reach
    smin, smax = zs.amin(0), zs.amax(0)
    # rows: (neuron, side): side +1 bounds z from below (q = z), -1 from above (q = -z)
    nid = torch.cat([unst, unst])
    side = torch.cat([torch.ones_like(unst), -torch.ones_like(unst)]).to(dt)
    cur = torch.where(side > 0, lf[nid], -uf[nid])          # certified lower bound of q now
    reach = torch.where(side > 0, smin[nid], -smax[nid])     # q at a sampled point: no bound exceeds it
    width = (uf[nid] - lf[nid]).clamp(min=1e-12)
    if max_rows is not None and nid.numel() > max_rows:
        keep = ((reach - cur) / width).topk(int(max_rows)).indices
        nid, side, cur, reach, width = nid[keep], side[keep], cur[keep], reach[keep], width[keep]
    R = nid.numel()
    out_n = int(math.prod(pnet.output_shape))
    sub = BetaCrown(pnet, bc.lo, bc.hi, torch.zeros(1, out_n, dtype=dt, device=dev),
                    torch.zeros(1, dtype=torch.float64, device=dev), dt, iters=iters, lr_alpha=lr_a, lr_beta=lr_b,
                    chunk_elems=bc.chunk, pre={k: v for k, v in pre.items() if k in names})
    Crow = torch.zeros(R, 1, out_n, dtype=dt, device=dev)
    Crow[torch.arange(R, device=dev), 0, nid] = side
    Crow = Crow.reshape(R, 1, *pnet.output_shape)
    zero_d = torch.zeros(R, 1, dtype=torch.float64, device=dev)
    if sub.N == 0:  # no unstable earlier neuron: alpha-CROWN is already exact up to the relaxation-free pass
        return pre, R, 0
    # the roots: one per row, CROWN/alpha warm start from the defaults, never below the current bound
    S = torch.zeros(R, sub.N, dtype=torch.int8, device=dev)
    A = sub.default_alpha().unsqueeze(0).expand(R, -1, -1).contiguous()
    Bt = torch.zeros(R, 1, sub.N, dtype=dt, device=dev)
    low, A, Bt, sc = sub.bound(S, A, Bt, iters, lr_a, 0.0, deadline=deadline, C=Crow, d=zero_d)
    low = torch.maximum(low[:, 0], cur)
    pick = _pick(sc)
    rid = torch.arange(R, device=dev)
    visited = R
    while time.monotonic() < deadline:
        # the worst leaf of every row; rows whose worst leaf is closed (> 0) or unsplittable are finished
        order = torch.argsort(low)
        order = order[torch.argsort(rid[order], stable=True)]
        r_sorted = rid[order]
        first = torch.ones_like(r_sorted, dtype=torch.bool)
        first[1:] = r_sorted[1:] != r_sorted[:-1]
        worst = order[first]                      # one leaf per row, rows ascending
        wr = rid[worst]
        bound_r = low[worst]
        gap = (reach[wr] - bound_r) / width[wr]
        ok = (bound_r <= 0) & (pick[worst] >= 0) & (gap > 1e-4)
        if not bool(ok.any()):
            break
        cand = worst[ok]
        g = gap[ok]
        if cand.numel() > batch:
            cand = cand[g.topk(batch).indices]
        p = cand.numel()
        Sc = S[cand].repeat(2, 1)
        col = pick[cand].repeat(2)
        sgn = torch.cat([torch.ones(p, dtype=torch.int8, device=dev), -torch.ones(p, dtype=torch.int8, device=dev)])
        Sc[torch.arange(2 * p, device=dev), col] = sgn
        rc = rid[cand].repeat(2)
        lc, ac, bc_ = low[cand].repeat(2), A[cand].repeat(2, 1, 1), Bt[cand].repeat(2, 1, 1)
        nl, na, nb, nsc = sub.bound(Sc, ac, bc_, iters, lr_a, lr_b, deadline=deadline, C=Crow[rc], d=zero_d[rc])
        nl = torch.maximum(nl[:, 0], lc)  # a child is never worse than its parent
        visited += 2 * p
        keep = torch.ones(low.shape[0], dtype=torch.bool, device=dev)
        keep[cand] = False
        S, A, Bt = torch.cat([S[keep], Sc]), torch.cat([A[keep], na]), torch.cat([Bt[keep], nb])
        low, rid, pick = torch.cat([low[keep], nl]), torch.cat([rid[keep], rc]), torch.cat([pick[keep], _pick(nsc)])
    # anytime bound per row: the minimum over all its leaves (they cover the box)
    best = torch.full((R,), math.inf, dtype=dt, device=dev).scatter_reduce(0, rid, low, reduce="amin")
    best = torch.maximum(best, cur)
    lo_rows, up_rows = side > 0, side < 0
    lf[nid[lo_rows]] = torch.maximum(lf[nid[lo_rows]], best[lo_rows])
    uf[nid[up_rows]] = torch.minimum(uf[nid[up_rows]], -best[up_rows])
    pre = dict(pre)
    pre[ln.name] = (lf.reshape(l.shape), uf.reshape(u.shape))
    return pre, R, visited


def _pick(scores: torch.Tensor) -> torch.Tensor:
    """The neuron each leaf splits next (BaBSR scores of its last bounding pass), -1 when none is free."""
    if scores.shape[1] == 0:
        return torch.full((scores.shape[0],), -1, dtype=torch.long, device=scores.device)
    v, i = scores.max(1)
    return torch.where(torch.isfinite(v), i, torch.full_like(i, -1))
