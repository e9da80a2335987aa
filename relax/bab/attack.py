"""Counterexample search for specifications ``C f(x) <= d`` on boxes, and its exact float64 re-check.

:func:`pgd_search` runs projected signed-gradient descent (with random restarts, the box centres and
optional given starts) on ``min over specifications of max over rows (C_k f(x) - d_k)`` inside each
box, in the working dtype; its points are only *candidates*.  :func:`check_counterexample` is the
judge: a point is clamped into its box in float64, the network is evaluated **in float64 on that point
alone**, and the point is returned only if every row of one specification holds (``C f <= d``) there
and the point lies in the box.  A float32-only violation is never reported.
"""

from __future__ import annotations

import math
import time

import torch

from ...models.graph import Network
from ..spec import SpecBatch


def check_counterexample(net64: Network, batch: SpecBatch, x64: torch.Tensor):
    """Exact float64 re-check of candidate points ``x64`` (``(G, S, *shape)``, one set per group).

    Points are clamped into their group's box in float64 first.  Returns ``(hit, x, y)`` for the first
    point found that satisfies some specification -- ``hit = (spec index, group, sample)`` -- or
    ``(None, None, None)``."""
    G, S = x64.shape[:2]
    lo, hi = batch.lower.unsqueeze(1), batch.upper.unsqueeze(1)
    x = torch.minimum(torch.maximum(x64.to(torch.float64), lo), hi)
    with torch.no_grad():
        y = net64(x.reshape(G * S, *x.shape[2:])).reshape(G, S, -1)
    v = batch.violation(y)  # (G, S, n_specs)
    ok = (v <= 0) & ((x >= lo) & (x <= hi)).flatten(2).all(2).unsqueeze(2)
    for g, s, i in ok.nonzero()[:64].tolist():
        # re-evaluate the point alone (a batched GEMM may round differently) and re-check its specification
        xi = x[g, s].clone()
        with torch.no_grad():
            yi = net64(xi.unsqueeze(0))[0]
        sp = batch.owner[g] == i
        if bool((batch.C[g][sp] @ yi.flatten() <= batch.d[g][sp]).all()):
            return (i, g, s), xi, yi
    return None, None, None


def pgd_search(net: Network, batch: SpecBatch, *, steps: int = 50, restarts: int = 10, seed: int = 0,
               dtype=None, deadline: float = math.inf, starts: torch.Tensor | None = None):
    """Projected signed-gradient descent on ``min_spec max_row (C_k f(x) - d_k)`` inside every group's box,
    ``restarts`` random starts per group (plus the box centre and ``starts`` ``(G, S0, *shape)`` if
    given).  Returns the candidate points ``(G, R, *shape)`` in float64 (best iterate per start); they
    are *not* checked -- use :func:`check_counterexample`."""
    dt = dtype or net.dtype
    G = batch.lower.shape[0]
    shape = tuple(batch.lower.shape[1:])
    lo64, hi64 = batch.lower, batch.upper
    lo, hi = lo64.to(dt), hi64.to(dt)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    R = max(int(restarts), 0)
    t = torch.rand((G, R, *shape), generator=gen, dtype=torch.float64).to(lo64.device)
    pts = [((lo64 + hi64) / 2).unsqueeze(1), lo64.unsqueeze(1) + t * (hi64 - lo64).unsqueeze(1)]
    if starts is not None:
        pts.append(starts.to(torch.float64))
    x0 = torch.cat(pts, 1)
    S = x0.shape[1]
    module = (net if net.dtype == dt else net.to(dtype=dt)).to_module(requires_grad=False)
    lo_e, hi_e = lo.unsqueeze(1), hi.unsqueeze(1)
    width = (hi_e - lo_e)
    x = torch.minimum(torch.maximum(x0.to(dt), lo_e), hi_e)
    best_x = x.detach().clone()
    best_v = torch.full((G, S), math.inf, dtype=dt, device=x.device)
    for it in range(int(steps) + 1):
        x = x.detach().requires_grad_(True)
        y = module(x.reshape(G * S, *shape)).reshape(G, S, -1)
        v = batch.violation(y)  # (G, S, n_specs) in dt
        obj = v.amin(2)  # best specification per point
        with torch.no_grad():
            better = obj < best_v
            best_v = torch.where(better, obj.detach(), best_v)
            best_x = torch.where(better.reshape(G, S, *([1] * len(shape))), x.detach(), best_x)
        if it == steps or time.monotonic() > deadline or bool((best_v <= 0).any()):
            break
        g, = torch.autograd.grad(obj.sum(), x)
        step = width * (0.25 * (0.97 ** it) if it < steps else 0.0)
        with torch.no_grad():
            x = torch.minimum(torch.maximum(x - step * g.sign(), lo_e), hi_e)
    return best_x.to(torch.float64)
