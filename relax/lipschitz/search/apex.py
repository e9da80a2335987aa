"""Branch-and-bound over the *shells* of a box around the apex of a positively homogeneous network.

A chain with all biases exactly zero and piecewise-linear positively homogeneous activations (ReLU,
LeakyReLU, MaxMin, GroupSort(2), Householder) satisfies ``f(t x) = t f(x)`` for ``t > 0``.  Every
switch boundary is then a cone with apex 0, and all of them meet at ``x = 0``: a box holding 0 meets
every activation pattern's closed region there, so activation splitting cannot prove the
lower-dimensional sign combinations empty (each still contains 0) and explores exponentially many.

Reduction (exact).  The gradient is constant along rays: ``grad f(t x) = grad f(x)``.  For a box
``B = [l, u]`` with ``l <= 0 <= u`` and ``x in B \\ {0}``, scale by ``1 / gamma(x)`` (``gamma`` the gauge
of ``B``, ``max_i max(x_i / u_i, x_i / l_i)`` over the nonzero ends): the point lies in ``B`` on a face,
hence in one of the *shells*

    S_i^+ = {x in B : x_i >= u_i / 2}  (u_i > 0),      S_i^- = {x in B : x_i <= l_i / 2}  (l_i < 0),

with the same gradient (and differentiability).  So ``sup_B ||grad f||_q = max_shells sup_S ||grad f||_q``:
the shells are boxes away from 0, where kinks are in general position again, and each gets an
ordinary (complete) branch-and-bound.  There are at most ``2 n_0`` shells; the reduction is used up
to :data:`APEX_MAX_INPUT` inputs.
"""

from __future__ import annotations

import time

import torch

from ..result import LipschitzResult

APEX_MAX_INPUT = 16


def is_positively_homogeneous(chain) -> bool:
    """All biases exactly zero (every BaB activation is positively homogeneous)."""
    return all(bool((b == 0).all()) for b in chain.biases)


def apex_shells(xl: torch.Tensor, xu: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The shells ``S_i^+ / S_i^-`` of the box (see the module docstring) as ``(lower, upper)`` boxes."""
    out = []
    for i in range(xl.numel()):
        if xu[i] > 0:
            lo = xl.clone()
            lo[i] = xu[i] / 2
            out.append((lo, xu.clone()))
        if xl[i] < 0:
            hi = xu.clone()
            hi[i] = xl[i] / 2
            out.append((xl.clone(), hi))
    return out


def applies(chain, xl: torch.Tensor, xu: torch.Tensor, ball) -> bool:
    """Use the shells: homogeneous chain, box holding 0 (not a ball region), at most APEX_MAX_INPUT inputs."""
    return (ball is None and chain.in_dim <= APEX_MAX_INPUT and bool((xl <= 0).all() and (xu >= 0).all())
            and bool((xu > xl).any()) and is_positively_homogeneous(chain))


def run_bab_shells(net, chain, xl, xu, seeds, norm, root: LipschitzResult, timeout: float, operator: bool,
                   attack_lower, run_box, **kwargs) -> LipschitzResult:
    """Complete branch-and-bound on every shell; the time left is shared evenly by the shells still to run.

    ``run_box`` is the activation search of one box (:func:`.bab._run_bab`, passed in by its caller
    :func:`.bab.run_bab`, so that this module does not import :mod:`.bab` back).

    The anytime upper bound is the max over shells of (final bound of a finished shell, the current
    bound of the running one, the root bound of a pending one), capped by the box's root bound.  The
    result is exact when every shell closed and the max is attained (a witness gradient).
    """
    from ..bounds.common import backward_bounds, certified
    from ..norms import row_dual_upper
    t0 = time.perf_counter()
    S = seeds.shape[0]
    dt, dev = seeds.dtype, seeds.device
    box_rows = torch.tensor(root.per_output_upper, dtype=dt, device=dev)
    shells = apex_shells(xl, xu)
    roots = []
    for sl, su in shells:
        bb, fb, used = backward_bounds(chain, sl, su, seeds, "crown", "auto")
        rows = certified(torch.minimum(row_dual_upper(norm, bb.grad_lower, bb.grad_upper, bb.l1_upper), box_rows))
        roots.append((fb, LipschitzResult(float(rows.max()), 0.0, norm, "crown", per_output_upper=rows.tolist(),
                                          forward_method=used)))
    bounds = [torch.tensor(r.per_output_upper, dtype=dt, device=dev) for _, r in roots]
    lower = [max(float(v), 0.0) if v is not None else 0.0 for v in (attack_lower or [0.0] * S)]
    history = [(0.0, min(root.upper, float(torch.stack(bounds).amax(0).max())), max(lower))]
    stats: dict = {"shells": len(shells), "shells_closed": 0}
    witness: dict = {}
    statuses = []
    for i, ((sl, su), (fb, sroot)) in enumerate(zip(shells, roots)):
        left = timeout - (time.perf_counter() - t0)
        if left <= 0:
            statuses.append("timeout")
            continue
        start = time.perf_counter() - t0
        r = run_box(net, chain, sl, su, seeds, norm, fb, sroot, left / (len(shells) - i), operator, lower, **kwargs)
        statuses.append(r.status)
        stats["shells_closed"] += r.status in ("exact", "closed_unattained")
        bounds[i] = torch.tensor(r.per_output_upper, dtype=dt, device=dev)
        lower = [max(a, b) for a, b in zip(lower, r.per_output_lower)]
        for k, v in r.stats.items():
            if isinstance(v, (int, float)):
                stats[k] = stats.get(k, 0) + v
        for k, w in r.stats.get("witness", {}).items():
            if r.per_output_lower[k] >= lower[k]:
                witness[k] = w
        others = torch.stack(bounds[:i] + bounds[i + 1:]).amax(0).max() if len(bounds) > 1 else torch.tensor(0.0)
        for t, up, lo in r.history:
            history.append((start + t, min(root.upper, max(up, float(others))), max(lo, history[-1][2])))
    per = torch.minimum(torch.stack(bounds).amax(0), box_rows)
    upper = min(root.upper, float(per.max()))
    closed = all(s in ("exact", "closed_unattained") for s in statuses)
    attained = max(lower) >= float(per.max()) * (1 - 3e-9) - 1e-11  # per is certified (+1e-9 rel, +1e-12)
    status = ("exact" if attained else "closed_unattained") if closed else \
        next((s for s in statuses if s not in ("exact", "closed_unattained")), "timeout")
    stats["witness"] = witness
    return LipschitzResult(upper, max(lower), norm, root.method + "+bab", exact=closed and attained,
                           per_output_upper=per.tolist(), per_output_lower=lower, status=status,
                           forward_method=root.forward_method, history=history, stats=stats)
