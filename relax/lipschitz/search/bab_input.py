"""Input-space branch-and-bound for the local Lipschitz constant (every activation of :mod:`.gates`).

Quantity.  For the region ``X`` (a box, or an l2 / l1 ball given as :class:`relax.sets.Ball`) and
seed rows ``c_s`` the local constant is ``L = sup_{x in X} max_s ||c_s^T J(x)||_q`` (Clarke
Jacobian ``J``, ``q`` the dual of the input norm ``p``; with ``c = None`` and ``p != inf`` the
operator norm ``sup_x ||J(x)||_{p->p}``).

Algorithm (best-first over sub-boxes of the region's bounding box ``B``):

* A *domain* is a sub-box ``[l, u] subset B``.  Its bound ``U(l, u)`` is the plain certified bound
  of :func:`.api.local_lipschitz` restricted to that box: forward pre-activation bounds over
  ``[l, u]`` (:func:`.chain.forward_bounds`, batched over boxes), Clarke-derivative ranges per
  box, CROWN on the backward graph (:mod:`.backward`, one batch row per (box, seed)), then the row
  dual norms (:func:`.norms.row_dual_upper`); boxes with few unstable switches are re-bounded by
  vertex enumeration (:func:`bound_boxes`).  Residual networks use the same steps on the general
  graph (:mod:`.graph_jacobian`: engine forward bounds, CROWN on the reversed DAG intersected with
  interval arithmetic).  A child's bound is ``min(child, parent)`` (the child is a subset of the
  parent, so both bound it).
* **Soundness of the anytime upper bound.**  The open and closed domains always cover
  ``B ∩ X``: a split replaces a box by its two halves (closed boxes: ``l_i <= x_i <= m`` and
  ``m <= x_i <= u_i``, ``m`` a float in ``[l_i, u_i]``), so every point stays in some domain, and a
  box is only discarded when it provably misses ``X`` (ball regions: ``dist_p(center, box) > eps``
  with a relative safety margin).  Hence ``L <= max over domains of U`` -- for every stopping rule.
* **Lower bound (estimate).**  True autograd gradients of the original network at the centre of
  every bounded box (for balls also at points between it and the box point nearest the ball's
  centre) that lies in ``X`` and where the network is differentiable (every switch of a
  piecewise-linear activation clearly away from zero, :func:`.attack.differentiable`), plus the
  projected-gradient attack of :mod:`.attack` on box regions (or samples of the ball otherwise).
* **Leaves.**  A box on which every piecewise-linear switch is strictly stable (and the network has
  no smooth activation) has a constant Jacobian; CROWN's bound there is that Jacobian's norm up to
  rounding, and the box centre attains it.  Leaves are closed; domains whose bound is ``<=`` the lower
  bound are closed too (they cannot hold a larger value).
* **Branching.**  ``"all"`` (default for ``d <= 4`` inputs): bound both halves for every input
  coordinate and keep the coordinate whose worse half is lowest (the widest one, relative to the
  region, when no coordinate lowers the bound); ``"sensitivity"``: bisect the
  coordinate maximizing ``width_i * (G_i + 0.1 mean G)`` with ``G_i = sum_s max(|l_si|, |u_si|)``
  the bound on ``|d(c_s^T f)/dx_i|`` (how fast the function varies along ``i``); ``"widest"``:
  the widest coordinate relative to the region.
* **Loop.**  The search is the shared :func:`...bab.search.branch_and_bound` (:class:`_InputSearch`:
  branching policy + bounding callback; key ``-bound``, so the largest bound is split first); its
  ``between`` hook stops it at ``rel_tol`` or the domain limit.
* **Stopping.**  ``timeout`` (wall seconds, batches are sized from the measured cost per box so that
  the last one ends near the budget), ``max_domains`` (boxes bounded in total), ``rel_tol``
  (``(upper - lower) <= rel_tol * upper``, status ``"converged"``), or no open domain (status
  ``"exact"``: every box was a leaf or dominated by the lower bound, so the upper bound is the
  maximum over the region up to the float margin).

For piecewise-linear networks with few inputs the bound converges to ``L``: once a box sits inside
one linear region its bound is exact, and a box around a point where at most ``enum_max`` kinks
cross is bounded by the max over the adjacent regions, which the box centres of its sub-boxes
attain.  **Limitation:** where more than ``enum_max`` kinks meet at one point the bound of the boxes
holding that point stalls -- in particular a bias-free piecewise-linear net (positively homogeneous:
every linear region is a cone at 0) on a region containing the origin.  Splitting cost grows
exponentially with the input dimension, so this engine is meant for ``d <= ~8`` inputs.
"""

from __future__ import annotations

import inspect
import math
import time

import numpy as np
import torch

from ....models.errors import InvalidArgumentError

from ..lower_bounds.attack import attack_lower_bound, differentiable, true_gradients
from ..bounds.backward import MODES, BackwardGraph
from ..bounds.chain import FORWARD_METHODS, DenseChain, dense_chain, forward_bounds
from ..bounds.graph_jacobian import GraphJacobian
from ..norms import dual_norm_of, operator_norm_of, row_dual_upper
from ..result import LipschitzResult

BRANCHING = ("auto", "all", "sensitivity", "widest")


# ---------------------------------------------------------------------------------------------- region
class Region:
    """The region as its bounding box plus (for l2 / l1 balls) the ball constraint.

    ``lo, hi``: ``(n_0,)`` float64 bounding box.  ``center, eps, p``: the ball (``p`` in ``{2, 1}``),
    or ``None`` for a box region.  ``meets(L, U)`` is False only for boxes that provably miss the
    ball; ``contains(X)`` is True only for points that are in it (both with a relative margin).
    """

    def __init__(self, lo: torch.Tensor, hi: torch.Tensor, center=None, eps: float = 0.0, p: float = math.inf):
        self.lo, self.hi = lo, hi
        self.center, self.eps, self.p = center, float(eps), p

    @property
    def is_box(self) -> bool:
        return self.center is None

    def _dist(self, L: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
        gap = torch.maximum(torch.maximum(L - self.center, self.center - U), torch.zeros_like(L))
        return gap.norm(p=self.p, dim=-1)

    def meets(self, L: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
        if self.is_box:
            return torch.ones(L.shape[0], dtype=torch.bool, device=L.device)
        return self._dist(L, U) <= self.eps * (1 + 1e-9) + 1e-300

    def probes(self, L: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
        """Points at which to try true gradients for boxes ``(D, n_0)``: the centres, and for a ball
        also the box point nearest to the ball's centre and the midpoint of the two (a box that only
        grazes the ball has its centre outside it)."""
        mid = (L + U) / 2
        if self.is_box:
            return mid
        near = torch.minimum(torch.maximum(self.center, L), U)
        return torch.cat((mid, near, (mid + near) / 2, near + (mid - near) / 8))

    def contains(self, X: torch.Tensor) -> torch.Tensor:
        inside = ((X >= self.lo) & (X <= self.hi)).all(-1)
        if self.is_box:
            return inside
        return inside & ((X - self.center).norm(p=self.p, dim=-1) <= self.eps * (1 - 1e-12))


def region_of(input_set, xl: torch.Tensor, xu: torch.Tensor) -> Region:
    """``Region`` for ``input_set`` (bounding box ``xl, xu`` from :func:`.api.input_box`)."""
    p = getattr(input_set, "p", math.inf)
    if not hasattr(input_set, "eps_t") or p == math.inf:
        return Region(xl, xu)
    if input_set.batch != 1:
        raise InvalidArgumentError("input_set: input branch-and-bound takes one region (batch 1)")
    center = input_set.center.reshape(-1).to(xl)
    return Region(xl, xu, center, float(input_set.eps_t.reshape(-1)[0]), float(p))


# ---------------------------------------------------------------------------------------------- bounding
def _values(rows: torch.Tensor, gl: torch.Tensor, gu: torch.Tensor, norm: str, operator: bool) -> torch.Tensor:
    """Bound of the reported quantity from row bounds ``(..., S)`` and entry bounds ``(..., S, n_0)``."""
    M = torch.maximum(gl.abs(), gu.abs())
    if operator and norm == "1":
        return M.sum(-2).amax(-1)
    if operator and norm == "2":  # J = C + E, |E| <= R: ||J||_2 <= ||C||_2 + ||R||_2 (exact when R = 0)
        C, R = (gl + gu) / 2, (gu - gl) / 2
        perturbed = torch.linalg.matrix_norm(C, ord=2) + torch.linalg.matrix_norm(R, ord=2)
        return torch.minimum(torch.minimum(torch.linalg.matrix_norm(M, ord=2), rows.pow(2).sum(-1).sqrt()), perturbed)
    return rows.amax(-1)


class ChainBounder:
    """Per-box bounds of a chain network: forward bounds of :mod:`.chain`, CROWN (or RecurJac / IBP)
    on the backward graph of :mod:`.backward`."""

    def __init__(self, chain: DenseChain, method: str, forward: str):
        self.chain, self.method, self.forward = chain, method, forward
        self.gates, self.in_dim, self.label = chain.gates, chain.in_dim, method

    def forward_bounds(self, XL, XU):
        return forward_bounds(self.chain, XL, XU, self.forward)[0]

    def rows(self, seeds, dr, norm, n_rows):
        S, n0 = seeds.shape[0], self.in_dim
        bb = BackwardGraph(self.chain, seeds.repeat(n_rows, 1), dr, self.method).run()
        rows = row_dual_upper(norm, bb.grad_lower, bb.grad_upper, bb.l1_upper).reshape(n_rows, S)
        return rows, bb.grad_lower.reshape(n_rows, S, n0), bb.grad_upper.reshape(n_rows, S, n0)

    def differentiable(self, X, tol):
        return differentiable(self.chain, X, tol)


class GraphBounder:
    """Per-box bounds of a residual (general graph) network: engine forward bounds, then CROWN (or the
    RecurJac-style relaxation) on the reversed DAG intersected with interval arithmetic, or interval
    arithmetic alone for ``method="ibp"`` (:mod:`.graph_jacobian`)."""

    def __init__(self, graph, method: str, forward: str):
        self.graph, self.method, self.forward = graph, method, forward
        self.gates, self.in_dim = [graph.gates[n.name] for n in graph.acts], graph.in_dim
        self.label = "graph-" + method

    def forward_bounds(self, XL, XU):
        return self.graph.forward_bounds(XL, XU, self.forward)

    def rows(self, seeds, dr, norm, n_rows):
        S, n0 = seeds.shape[0], self.in_dim
        sd = seeds.repeat(n_rows, 1)
        gl, gu = self.graph.backward(sd, dr)
        l1 = torch.maximum(gl.abs(), gu.abs()).sum(-1)
        if self.method != "ibp":
            cl, cu, c1 = self.graph.crown(sd, dr, interval=self.method == "recurjac")
            gl, gu, l1 = torch.maximum(gl, cl), torch.minimum(gu, cu), torch.minimum(l1, c1)
        rows = row_dual_upper(norm, gl, gu, l1).reshape(n_rows, S)
        return rows, gl.reshape(n_rows, S, n0), gu.reshape(n_rows, S, n0)

    def differentiable(self, X, tol):
        return self.graph.differentiable(X, tol)


def bound_boxes(bounder, XL: torch.Tensor, XU: torch.Tensor, seeds: torch.Tensor, norm: str,
                operator: bool, enum_max: int = 4, max_boxes: int = 256):
    """Certified-before-margin bounds for a batch of boxes ``(D, n_0)``.

    Returns ``(value (D,), rows (D, S), G (D, n_0), leaf (D,))``: ``rows[d, s] >= sup_{x in box d}
    ||c_s^T J(x)||_q``; ``value`` bounds the reported quantity (max over rows, or the ``p -> p``
    operator norm when ``operator`` and ``p != inf``: ``|J| <= M = max(|l|, |u|)`` entry-wise, so
    ``||J||_1 <= max column sum of M`` and ``||J||_2 <= min(||M||_2, sqrt(sum rows^2), ||C||_2 + ||R||_2)``
    with ``C, R`` the centre and radius of ``[l, u]``; the last is exact for a constant Jacobian);
    ``G[d, i] = sum_s max(|l_si|, |u_si|)``; ``leaf[d]``: every switch strictly stable (PWL net).

    **Vertex enumeration** (boxes with ``1 <= k <= enum_max`` unstable piecewise-linear switches):
    the gradient ``W_0^T h_1`` is *multilinear* in the Clarke derivatives ``d`` (each gate is affine
    in its own ``d`` given the others), and a dual / operator norm is convex, so its sup over the box
    ``d in [a, b]`` is attained at a vertex.  Every PWL switch has the two vertex values
    ``d_on, d_off``; the box is re-bounded once per vertex pattern of its ``k`` unstable switches
    (smooth gates keep their ranges) and the maximum over the ``2^k`` patterns is kept when smaller.
    With all switches fixed the gradient is one vector and the bound is its exact norm (up to
    rounding), so near a crossing of kinks the bound is the max over the adjacent regions' gradients
    instead of a chord relaxation.  At most ``max_boxes`` boxes' patterns are bounded per call.
    """
    D, n0 = XL.shape
    S = seeds.shape[0]
    fb = bounder.forward_bounds(XL, XU)
    dr, unst = [], []
    leaf = torch.ones(D, dtype=torch.bool, device=XL.device)
    for gate, (zl, zu) in zip(bounder.gates, fb):
        a, b = gate.derivative_range(zl, zu)
        dr.append((a.repeat_interleave(S, 0), b.repeat_interleave(S, 0)))
        if gate.piecewise_linear:
            u = gate.unstable(zl, zu)
            leaf &= ~u.any(-1)
        else:
            u = torch.zeros(D, gate.n_q, dtype=torch.bool, device=XL.device)
            leaf &= False
        unst.append(u)
    rows, gl, gu = bounder.rows(seeds, dr, norm, D)
    value = _values(rows, gl, gu, norm, operator)
    G = torch.maximum(gl.abs(), gu.abs()).sum(1)
    if enum_max > 0 and any(g.piecewise_linear for g in bounder.gates):
        U = torch.cat(unst, 1)  # (D, N) over all switches
        sizes = [u.shape[1] for u in unst]
        cnt = U.sum(-1)
        for k in range(1, enum_max + 1):
            todo = torch.nonzero(cnt == k).flatten()
            for part in (todo.split(max(1, max_boxes // 2 ** k)) if todo.numel() else ()):
                _enumerate(bounder, fb, U, sizes, part, k, seeds, norm, operator, rows, value)
    return value, rows, G, leaf


def _enumerate(bounder, fb, U, sizes, boxes, k, seeds, norm, operator, rows, value):
    """Vertex enumeration for ``boxes`` (each with exactly ``k`` unstable switches, mask ``U``);
    lowers ``rows`` / ``value`` in place to the max over the ``2^k`` sign patterns."""
    nb, S, P, dev = boxes.numel(), seeds.shape[0], 2 ** k, U.device
    cols = torch.nonzero(U[boxes])[:, 1].reshape(nb, k)  # row-major: the k unstable columns of each box
    bits = (torch.arange(P, device=dev)[:, None] >> torch.arange(k, device=dev)) & 1
    pats = (2 * bits - 1).to(torch.int8)  # (P, k) in {-1, +1}
    fixed = torch.zeros(nb, P, U.shape[1], dtype=torch.int8, device=dev)
    fixed.scatter_(2, cols[:, None, :].expand(nb, P, k), pats[None].expand(nb, P, k))
    fixed = fixed.reshape(nb * P, -1).split(sizes, 1)
    dre = []
    for gate, (zl, zu), f in zip(bounder.gates, fb, fixed):
        zl_b, zu_b = zl[boxes].repeat_interleave(P, 0), zu[boxes].repeat_interleave(P, 0)
        a, b = gate.derivative_range(zl_b, zu_b, f if gate.piecewise_linear else None)
        dre.append((a.repeat_interleave(S, 0), b.repeat_interleave(S, 0)))
    r_e, gl_e, gu_e = bounder.rows(seeds, dre, norm, nb * P)
    v_e = _values(r_e, gl_e, gu_e, norm, operator).reshape(nb, P).amax(1)
    rows[boxes] = torch.minimum(rows[boxes], r_e.reshape(nb, P, S).amax(1))
    value[boxes] = torch.minimum(value[boxes], v_e)


def point_values(net, bounder, region: Region, X: torch.Tensor, seeds: torch.Tensor, norm: str,
                 operator: bool, kink_tol: float = 1e-9):
    """True values at points ``X`` ``(N, n_0)``: ``(value (N,), rows (N, S))``, ``-inf`` where a point is
    outside the region or not a differentiable point (so every finite entry is a true lower bound)."""
    S = seeds.shape[0]
    G = true_gradients(net, X[None].expand(S, -1, -1), seeds).to(X)  # (S, N, n0)
    rows = dual_norm_of(G, norm).T  # (N, S)
    if operator and norm != "inf":
        value = operator_norm_of(G.transpose(0, 1), norm)
    else:
        value = rows.amax(-1)
    ok = bounder.differentiable(X, kink_tol) & region.contains(X) & torch.isfinite(value)
    ninf = torch.full_like(value, -math.inf)
    return torch.where(ok, value, ninf), torch.where(ok[:, None], rows, ninf[:, None])


# ---------------------------------------------------------------------------------------------- search
def run_input_bab(net, bounder, region: Region, seeds: torch.Tensor, norm: str, operator: bool,
                  timeout: float, attack: bool = True,
                  attack_options: dict | None = None, batch: int = 256, max_domains: int = 1_000_000,
                  rel_tol: float = 1e-4, branching: str = "auto", enum_max: int = 4, chunk: int = 256,
                  kink_tol: float = 1e-9, deadline: float | None = None, progress=None) -> LipschitzResult:
    """Input-space BaB (see the module docstring).  ``timeout``: wall seconds for the search (root bound
    included, attack excluded); ``deadline``: a ``time.perf_counter()`` value the search (not the root
    bound, which is the certificate) also stops at, whatever is left of ``timeout`` after the attack
    (the caller's whole-run ``time_limit``); ``max_domains``: boxes bounded in total (root included); ``batch``:
    boxes split per step; ``chunk``: boxes per bounding call (bounds memory and keeps CPU tensors
    small); ``enum_max``: vertex enumeration up to that many unstable switches (0: off); ``progress``:
    None or ``progress(elapsed_s, upper, lower)``, called with each anytime bound."""
    from ..bounds.common import certified
    if branching not in BRANCHING:
        raise InvalidArgumentError(f"bab_options['branching'] must be one of {BRANCHING}, got {branching!r}")
    if not (timeout > 0 and math.isfinite(timeout)):
        raise InvalidArgumentError(f"bab_timeout must be a finite number > 0 for input branch-and-bound, got {timeout}")
    if int(batch) < 1 or int(max_domains) < 1 or int(chunk) < 1 or not (rel_tol >= 0) or int(enum_max) < 0:
        raise InvalidArgumentError("bab_options: batch, chunk and max_domains must be >= 1, rel_tol and enum_max >= 0")
    n0 = bounder.in_dim
    # memory: a bounding call holds ~2 n_max^2 floats per (box, seed) row; keep a call near 2^25 floats
    n_max = max([n0] + [max(g.n, g.n_q) for g in bounder.gates])
    chunk = max(1, min(int(chunk), 2 ** 25 // (2 * n_max * n_max * seeds.shape[0])))
    if branching == "auto":
        branching = "all" if n0 <= 4 else "sensitivity"
    S = seeds.shape[0]
    dt, dev = seeds.dtype, seeds.device
    timings: dict[str, float] = {}
    stats = {"domains_bounded": 0, "leaves": 0, "pruned": 0, "outside": 0, "batches": 0, "max_open": 1}

    # ---- lower bound: attack (box regions) or samples of the ball, then the region centre
    lb_val = torch.tensor(0.0, dtype=dt, device=dev)
    lb_rows = torch.zeros(S, dtype=dt, device=dev)
    witness = None

    def take(X):
        nonlocal lb_val, lb_rows, witness
        v, r = point_values(net, bounder, region, X, seeds, norm, operator, kink_tol)
        i = int(v.argmax())
        if v[i] > lb_val:
            lb_val, witness = v[i], X[i]
        lb_rows = torch.maximum(lb_rows, r.amax(0))

    attack_deadline = (attack_options or {}).get("deadline")

    def take_until(X, until):
        """``take`` in chunks of 16, 32, ... 128 points, stopping at ``until`` (the first chunk always runs)."""
        i, size = 0, 16
        while i < X.shape[0]:
            if i and until is not None and time.perf_counter() >= until:
                break
            take(X[i:i + size])
            i, size = i + size, min(2 * size, 128)

    if attack:
        ta = time.perf_counter()
        if region.is_box and isinstance(bounder, ChainBounder):
            best, best_x = attack_lower_bound(net, bounder.chain, region.lo, region.hi, seeds, norm,
                                              **(attack_options or {}))
            take(best_x)
        elif region.is_box:  # residual graph: uniform samples and vertices of the box
            gen = torch.Generator().manual_seed(int((attack_options or {}).get("seed", 0)))
            n = int((attack_options or {}).get("n_samples", 512))
            t = torch.rand(n, n0, generator=gen, dtype=dt).to(dev)
            t[: n // 4] = t[: n // 4].round()
            take_until(region.lo + t * (region.hi - region.lo), attack_deadline)
        else:
            from ....relax.sets import Ball
            gen = torch.Generator().manual_seed(int((attack_options or {}).get("seed", 0)))
            n = int((attack_options or {}).get("n_samples", 512))
            pts = Ball(region.center[None], region.eps, region.p).sample(n, generator=gen)[0].reshape(n, n0)
            take_until(pts.to(dt).to(dev), attack_deadline)
        timings["attack"] = time.perf_counter() - ta

    t0 = time.perf_counter()
    if deadline is not None:  # the search stops at the deadline (the root bound below always runs)
        timeout = min(timeout, max(deadline - t0, 0.0))
    lo0, hi0 = region.lo[None], region.hi[None]
    val, rows, G, leaf = bound_boxes(bounder, lo0, hi0, seeds, norm, operator, enum_max, chunk)
    stats["domains_bounded"] = 1
    take(region.probes(lo0, hi0))
    root_upper = float(certified(val.max()))
    root_rows = rows[0].clone()
    srch = _InputSearch(bounder, region, seeds, norm, operator, branching, enum_max, chunk, int(max_domains),
                        t0 + timeout, stats, lambda: float(lb_val), take)
    root = _Box(region.lo.cpu().numpy(), region.hi.cpu().numpy(), float(val[0]), rows[0].cpu().numpy(),
                G[0].cpu().numpy())
    srch.settle([root], leaf.tolist())
    history = []

    def current_upper(open_max: float) -> float:
        return float(certified(torch.tensor(max(open_max, srch.closed_val, float(lb_val)), dtype=torch.float64)))

    def record(open_max: float):  # every recorded upper bound stays valid: keep the running minimum
        up = min([current_upper(open_max)] + [h[1] for h in history[-1:]])
        history.append((time.perf_counter() - t0, up, float(lb_val)))
        if progress is not None:
            progress(*history[-1])

    record(srch.open_max())

    def between(store):
        if stats["domains_bounded"] >= max_domains or srch.limit_hit:
            return _DOMAIN_LIMIT
        up = history[-1][1]
        if up - float(lb_val) <= rel_tol * up:
            return _CONVERGED
        return None

    stop = between(None) if srch.open else None
    if srch.open and stop is None:
        from ...bab.search import branch_and_bound
        out = branch_and_bound([root], srch, srch.bound, timeout=max(0.0, t0 + timeout - time.perf_counter()),
                               batch=int(batch), progress=lambda p: record(-p.best_bound if math.isfinite(p.best_bound)
                                                                           else -math.inf),
                               between=between)
        stop = out.witness if out.status == "witness" else out.status
    status = ("exact" if not srch.open else "domain_limit" if stop is _DOMAIN_LIMIT or srch.limit_hit
              else "converged" if stop is _CONVERGED else "timeout")
    stats["batches"] = srch.batches
    stats["leaves"], stats["pruned"], stats["outside"] = srch.leaves, srch.pruned, srch.outside
    ov = srch.open_max()
    upper_raw = torch.maximum(torch.maximum(torch.tensor(ov, dtype=dt), torch.tensor(srch.closed_val, dtype=dt)),
                              lb_val.cpu().to(dt)).to(dev)
    per_rows = torch.minimum(torch.maximum(torch.maximum(srch.open_rows(S), srch.closed_rows), lb_rows.cpu()).to(dev),
                             root_rows)
    upper = min(float(certified(upper_raw)), root_upper, history[-1][1])
    timings["bab"] = time.perf_counter() - t0
    res = LipschitzResult(upper, float(lb_val), norm, bounder.label + "+bab-input", exact=(status == "exact"),
                          per_output_upper=[float(v) for v in certified(per_rows)],
                          per_output_lower=[max(float(v), 0.0) for v in lb_rows],
                          status=status,
                          forward_method=bounder.forward, timings=timings, history=history, stats=stats)
    res.stats["open_domains"] = len(srch.open)
    res.stats["root_upper"] = root_upper
    res.stats["branching"] = branching
    res.stats["witness"] = None if witness is None else witness.tolist()
    if res.lower > res.upper:
        raise RuntimeError(f"internal error: lower bound {res.lower} exceeds certified upper bound {res.upper}")
    return res


_CONVERGED, _DOMAIN_LIMIT = object(), object()  # returned by the loop's ``between`` hook: stop the search


class _Box:
    """One sub-box domain: bounds ``L, U`` (numpy ``(n_0,)``), value bound ``v`` (key ``-v``: the shared
    loop pops the largest bound first), row bounds ``r`` ``(S,)``, sensitivities ``G`` ``(n_0,)``;
    ``bounded``: False while it only carries its parent's bounds."""

    __slots__ = ("L", "U", "v", "r", "G", "key", "bounded", "nbytes")

    def __init__(self, L, U, v, r, G, bounded=True):
        self.L, self.U, self.v, self.r, self.G, self.bounded = L, U, v, r, G, bounded
        self.key = -v
        self.nbytes = 16 * L.size + 8 * (r.size + G.size) + 120


class _InputSearch:
    """Input splitting as a branching policy + bounding callback of :mod:`...bab.search`.

    Open domains are kept in ``open`` (every box created and neither closed nor split), closed ones
    fold their bounds into ``closed_val`` / ``closed_rows``: leaves (constant Jacobian) and boxes
    dominated by the lower bound (``v <= lower``); boxes that provably miss the region are dropped.
    So ``L <= max(lower, closed_val, max over open boxes of v)`` at every moment.
    """

    def __init__(self, bounder, region, seeds, norm, operator, branching, enum_max, chunk, max_domains, deadline,
                 stats, lower, take):
        self.bounder, self.region, self.seeds, self.norm, self.operator = bounder, region, seeds, norm, operator
        self.branching, self.enum_max, self.chunk, self.max_domains = branching, enum_max, chunk, max_domains
        self.deadline, self.stats, self.lower, self.take = deadline, stats, lower, take
        self.dt, self.dev = seeds.dtype, seeds.device
        self.n0 = bounder.in_dim
        self.width0 = (region.hi - region.lo).clamp(min=1e-300).cpu().numpy()
        self.closed_val = -math.inf
        self.closed_rows = torch.full((seeds.shape[0],), -math.inf, dtype=torch.float64)
        self.open: set = set()
        self.leaves = self.pruned = self.outside = self.batches = 0
        self.limit_hit = False

    def late(self) -> bool:
        return time.perf_counter() >= self.deadline

    def _t(self, arrays) -> torch.Tensor:
        return torch.from_numpy(np.stack(arrays)).to(dtype=self.dt, device=self.dev)

    def _bound(self, L: torch.Tensor, U: torch.Tensor):
        """bound_boxes in chunks; stops (returns fewer rows) once the deadline has passed."""
        parts = []
        for i in range(0, L.shape[0], self.chunk):
            if self.late():
                break
            parts.append(bound_boxes(self.bounder, L[i:i + self.chunk], U[i:i + self.chunk], self.seeds, self.norm,
                                     self.operator, self.enum_max, self.chunk))
        self.stats["domains_bounded"] += sum(p[0].numel() for p in parts)
        if not parts:
            return None
        return tuple(torch.cat(t) for t in zip(*parts))

    def _close(self, b: _Box) -> None:
        self.closed_val = max(self.closed_val, b.v)
        self.closed_rows = torch.maximum(self.closed_rows, torch.as_tensor(b.r, dtype=torch.float64))
        b.key = math.inf

    def settle(self, boxes: list, leaf: list) -> None:
        """Key the bounded ``boxes``: drop those outside the region, close leaves, open the rest."""
        for b, lf in zip(boxes, leaf):
            b.key = -b.v
            if lf:
                self.leaves += 1
                self._close(b)
            else:
                self.open.add(b)

    # ------------------------------------------------------------------ branching
    def _halves(self, b: _Box, j: int) -> list:
        mid = (b.L[j] + b.U[j]) / 2
        lo, hi = b.U.copy(), b.L.copy()
        lo[j], hi[j] = mid, mid  # lower half: x_j <= mid; upper half: x_j >= mid (closed boxes)
        return [_Box(b.L, lo, b.v, b.r, b.G, False), _Box(hi, b.U, b.v, b.r, b.G, False)]

    def split(self, parents: list) -> list:
        self.batches += 1
        self.open.difference_update(parents)
        lb = self.lower()
        out: list = [None] * len(parents)
        live = []
        n_child = 2 * self.n0 if self.branching == "all" else 2
        for i, b in enumerate(parents):
            if b.v <= lb:  # cannot hold a larger value than the one already attained
                self.pruned += 1
                self._close(b)
                out[i] = []
            elif self.stats["domains_bounded"] + n_child * (len(live) + 1) > self.max_domains:
                self.limit_hit = True
                self.open.add(b)  # stays open with its bound (the loop keeps it as unsplittable)
            else:
                live.append(i)
        if not live:
            return out
        sel = [parents[i] for i in live]
        if self.branching == "all" and not self.late():
            kids = self._strong(sel)
        else:
            if self.branching == "sensitivity":
                G = np.stack([b.G for b in sel])
                score = np.stack([b.U - b.L for b in sel]) * (G + 0.1 * G.mean(-1, keepdims=True) + 1e-300)
            else:  # widest relative to the region (also "all" past the deadline)
                score = np.stack([b.U - b.L for b in sel]) / self.width0
            kids = [self._halves(b, int(j)) for b, j in zip(sel, score.argmax(-1))]
        for i, ks in zip(live, kids):
            out[i] = ks
            self.open.update(ks)
        return out

    def _strong(self, sel: list) -> list:
        """Bound both halves for every coordinate; per box keep the coordinate whose worse half is lowest
        (the widest one when none lowers the parent's bound).  Children keep the computed bounds."""
        k, n0 = len(sel), self.n0
        L, U = self._t([b.L for b in sel]), self._t([b.U for b in sel])
        mid = (L + U) / 2
        Lr, Ur, Mr = L.repeat(n0, 1), U.repeat(n0, 1), mid.repeat(n0, 1)  # dim-major: j * k + i
        dims = torch.arange(n0, device=self.dev).repeat_interleave(k)
        m = dims.numel()
        ar = torch.arange(m, device=self.dev)
        cL, cU = torch.cat((Lr, Lr.clone())), torch.cat((Ur.clone(), Ur))
        cU[ar, dims] = Mr[ar, dims]
        cL[m + ar, dims] = Mr[ar, dims]
        res = self._bound(cL, cU)
        if res is None or res[0].numel() < 2 * m:  # the deadline came: split the widest, bound later
            score = np.stack([b.U - b.L for b in sel]) / self.width0
            return [self._halves(b, int(j)) for b, j in zip(sel, score.argmax(-1))]
        cv, cr, cG, cleaf = res
        par_v = torch.tensor([b.v for b in sel], dtype=cv.dtype, device=self.dev)
        par_r = torch.from_numpy(np.stack([b.r for b in sel])).to(cr)
        cv, cr = torch.minimum(cv, par_v.repeat(2 * n0)), torch.minimum(cr, par_r.repeat(2 * n0, 1))
        outside = ~self.region.meets(cL, cU)
        cv = torch.where(outside, torch.full_like(cv, -math.inf), cv)
        eff = torch.maximum(cv[:m], cv[m:]).reshape(n0, k)
        bval, best = eff.min(0)
        # no coordinate helps (ties at the parent's bound): bisect the widest one, so that every
        # box keeps shrinking in every coordinate (never an ever-thinner sliver)
        widest = ((U - L) / torch.from_numpy(self.width0).to(L)).argmax(-1)
        best = torch.where(bval < par_v * (1 - 1e-12), best, widest)
        idx = best * k + torch.arange(k, device=self.dev)
        idx = torch.cat((idx, m + idx))
        t = [x[idx] for x in (cL, cU, cv, cr, cG, cleaf, outside)]
        t = [x.cpu().numpy() for x in t]
        boxes = [_Box(t[0][i], t[1][i], float(t[2][i]), t[3][i], t[4][i]) for i in range(2 * k)]
        for b, lf, o in zip(boxes, t[5], t[6]):
            b.key = ("leaf" if lf else "") + ("out" if o else "")  # settled in ``bound``
        return [[boxes[i], boxes[k + i]] for i in range(k)]

    # ------------------------------------------------------------------ bounding
    def bound(self, children: list) -> None:
        """The bounding callback: bound the children not bounded by the policy (chunked, deadline-checked;
        past the deadline they keep their parent's bounds), drop those outside the region, take true
        gradients at probe points of the rest, close leaves."""
        todo = [b for b in children if not b.bounded]
        if todo:
            L, U = self._t([b.L for b in todo]), self._t([b.U for b in todo])
            res = self._bound(L, U)
            n = 0 if res is None else res[0].numel()
            if n:
                cv, cr, cG, cleaf = res
                out = (~self.region.meets(L[:n], U[:n])).tolist()
                cv, cr, cG, cleaf = cv.tolist(), cr.cpu().numpy(), cG.cpu().numpy(), cleaf.tolist()
                for i, b in enumerate(todo[:n]):
                    b.v, b.r, b.G, b.bounded = min(cv[i], b.v), np.minimum(cr[i], b.r), cG[i], True
                    b.key = ("leaf" if cleaf[i] else "") + ("out" if out[i] else "")
            for b in todo[n:]:
                b.key = -b.v  # not bounded: the parent's bound covers it
        inside = []
        for b in children:
            if isinstance(b.key, str):
                tag, b.key = b.key, -b.v
                if "out" in tag:
                    self.outside += 1
                    self.open.discard(b)
                    b.key = math.inf
                    continue
                inside.append(b)
                if "leaf" in tag:
                    self.open.discard(b)
                    self.leaves += 1
                    self._close(b)
        if inside:
            self.take(self.region.probes(self._t([b.L for b in inside]), self._t([b.U for b in inside])))
        return None  # a gradient found here is a lower bound, not the end of the search

    # ------------------------------------------------------------------ anytime bound
    def open_max(self) -> float:
        return max([b.v for b in self.open], default=-math.inf)

    def open_rows(self, S: int) -> torch.Tensor:
        if not self.open:
            return torch.full((S,), -math.inf, dtype=torch.float64)
        return torch.from_numpy(np.stack([b.r for b in self.open])).to(torch.float64).amax(0)


def input_bab(net, input_set, norm: str, c, method: str, forward: str, timeout: float, attack: bool = True,
              attack_options: dict | None = None, deadline: float | None = None, **options) -> LipschitzResult:
    """Entry point used by :func:`.api.local_lipschitz` (``bab="input"``): builds the region, the
    seeds and the per-box bounder (CROWN on the chain backward graph, or on the reversed DAG of a
    residual network) and runs :func:`run_input_bab` with ``options`` (= ``bab_options``).  ``net``
    is the float64 network."""
    from ..bounds.common import _seeds, input_box
    if method not in MODES:
        raise InvalidArgumentError(f"method must be one of {MODES} for input branch-and-bound, got {method!r}")
    if forward not in FORWARD_METHODS:
        raise InvalidArgumentError(f"forward must be one of {FORWARD_METHODS}, got {forward!r}")
    known = [k for k in inspect.signature(run_input_bab).parameters if k not in _SET_BY_CALLER]
    for key in options:
        if key not in known:
            raise InvalidArgumentError(f"bab_options: unknown option {key!r} for bab='input'; known: {', '.join(known)}")
    xl, xu = input_box(net, input_set)
    region = region_of(input_set, xl, xu)
    if net.is_chain():
        chain = dense_chain(net)
        bounder = ChainBounder(chain, method, forward)
        seeds = _seeds(chain, c)
    else:
        graph = GraphJacobian(net)
        bounder = GraphBounder(graph, method, forward)
        seeds = _seeds(_SeedShape(graph.out_dim, xl), c)
    return run_input_bab(net, bounder, region, seeds, norm, c is None, timeout, attack, attack_options,
                         deadline=deadline, **options)


_SET_BY_CALLER = ("net", "bounder", "region", "seeds", "norm", "operator", "timeout", "attack", "attack_options",
                  "deadline")


class _SeedShape:
    """What :func:`.api._seeds` reads from a chain (output size, dtype/device) for a graph network."""

    def __init__(self, out_dim: int, ref: torch.Tensor):
        self.out_dim = out_dim
        self.weights = [ref.new_zeros(out_dim, 1)]
