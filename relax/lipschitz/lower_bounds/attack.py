"""Lower bounds (estimates) of the local Lipschitz constant by gradient-norm maximization.

The value reported is ``max ||grad(x)||_q`` over the points tried, where ``grad`` is computed by
autograd on the original :class:`~models.graph.Network` (not on the bounding code) and only at
points where the network is differentiable (every ReLU/MaxMin/Householder switch is at least
``kink_tol`` away from zero).  Each such value is a true gradient norm at a point of the region, so
it is a valid lower bound of the local Lipschitz constant -- an **estimate**, never a certificate
of the constant itself.

Search: uniform samples, box vertices, then projected sign-gradient ascent on a *smoothed*
gradient norm (switch derivatives replaced by sigmoids of decreasing temperature; for a
piecewise-linear network the true gradient norm is piecewise constant and has no useful gradient).
"""

from __future__ import annotations

import math
import time

import torch

from ..bounds.chain import DenseChain
from ..norms import dual_norm_of

SAMPLE_CHUNK = 64  # points per seed evaluated at a time in the sampling round when a deadline is set


def true_gradients(net, X: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
    """Gradients of ``seeds[s]^T f`` at ``X[s, i]`` (``X``: (S, N, n_0), seeds (S, out)) -> (S, N, n_0)."""
    S, N, n0 = X.shape
    x = X.reshape(S * N, *net.input_shape).detach().clone().requires_grad_(True)
    with torch.enable_grad():
        y = net(x).reshape(S, N, -1)
        obj = (y * seeds[:, None, :].to(y)).sum()
        (g,) = torch.autograd.grad(obj, x)
    return g.reshape(S, N, n0)


def differentiable(chain: DenseChain, X: torch.Tensor, tol: float) -> torch.Tensor:
    """Boolean (...,): every switch of a piecewise-linear activation is clearly away from 0.

    "Clearly" is relative to the rounding scale of that switch value, ``|S|(|W||y| + |b|)`` (the
    magnitude of the terms summed to compute it), so a neuron whose weights are all tiny (a dead
    neuron after weight decay) is judged on its own scale rather than against an absolute ``tol``.
    """
    flat = X.reshape(-1, X.shape[-1])
    ok = torch.ones(flat.shape[0], dtype=torch.bool, device=X.device)
    y = flat
    for k, gate in enumerate(chain.gates):
        W, b = chain.weights[k], chain.biases[k]
        z = y @ W.T + b
        if gate.piecewise_linear:
            scale = y.abs() @ W.abs().T + b.abs()
            S = gate.switch_matrix
            if S is not None:
                scale = scale @ S.abs().T
            ok &= (gate.switch_values(z).abs() > tol * scale).all(-1)
        y = chain.act(k, z)
    return ok.reshape(X.shape[:-1])


def _smooth_grad_norm(chain: DenseChain, X: torch.Tensor, seeds: torch.Tensor, temps: list[torch.Tensor],
                      norm: str) -> torch.Tensor:
    S, N, n0 = X.shape
    zs, _ = chain.forward_all(X.reshape(S * N, n0))
    g = (seeds @ chain.weights[-1]).repeat_interleave(N, 0)  # (S*N, n_L)
    for k in reversed(range(chain.depth)):
        gate, z = chain.gates[k], zs[k]
        if gate.piecewise_linear:
            s = gate.switch_values(z)
            d = gate.d_off + (gate.d_on - gate.d_off) * torch.sigmoid(s / temps[k])
        else:
            t = torch.tanh(z) if gate.op == "tanh" else torch.sigmoid(z)
            d = 1 - t * t if gate.op == "tanh" else t * (1 - t)
        q = g if gate.E is None else g @ gate.E.T
        p = d * q
        h = p if gate.F_p is None else p @ gate.F_p.T
        if gate.F_g is not None:
            h = h + g @ gate.F_g.T
        g = h @ chain.weights[k]
    return dual_norm_of(g, norm).reshape(S, N)


class BallGuard:
    """An l2 / l1 ball ``{x : ||x - center||_p <= eps}`` inside the search box: points are pulled into it
    radially (then clamped to the box, which keeps them in the ball when the center is in the box) and
    only points that are in it -- with a relative margin -- count as attack points."""

    def __init__(self, center: torch.Tensor, eps: float, p: float):
        self.center, self.eps, self.p = center.reshape(-1), float(eps), float(p)

    def pull(self, X: torch.Tensor, xl: torch.Tensor, xu: torch.Tensor) -> torch.Tensor:
        d = X - self.center
        n = d.norm(p=self.p, dim=-1, keepdim=True)
        scale = torch.clamp(self.eps * (1 - 1e-9) / n.clamp(min=1e-300), max=1.0)
        return torch.minimum(torch.maximum(self.center + d * scale, xl), xu)

    def contains(self, X: torch.Tensor) -> torch.Tensor:
        return (X - self.center).norm(p=self.p, dim=-1) <= self.eps * (1 - 1e-12)


def ball_guard(input_set, xl: torch.Tensor) -> BallGuard | None:
    """The :class:`BallGuard` of an l2 / l1 :class:`relax.sets.Ball` region (``None`` for boxes and l_inf
    balls, which are their own bounding box)."""
    p = float(getattr(input_set, "p", math.inf))
    if not hasattr(input_set, "eps_t") or p == math.inf:
        return None
    return BallGuard(input_set.center.reshape(-1).to(xl), float(input_set.eps_t.reshape(-1)[0]), p)


def attack_lower_bound(net, chain: DenseChain, xl: torch.Tensor, xu: torch.Tensor, seeds: torch.Tensor,
                       norm: str = "inf", n_samples: int = 512, n_starts: int = 16, steps: int = 60,
                       seed: int = 0, kink_tol: float = 1e-9, ball: BallGuard | None = None,
                       deadline: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Best true gradient dual norm per seed and the point achieving it: ((S,), (S, n_0)).

    ``xl, xu``: (n_0,) box.  ``ball``: for an l2 / l1 ball region, the ball inside that (bounding)
    box: points are kept in it and only points in it count.  Deterministic for a given ``seed``
    (and no ``deadline``).  ``deadline``: a ``time.perf_counter()`` value; the sampling round (in
    chunks of ``SAMPLE_CHUNK`` points per seed, the first always runs) and the ascent stop at the
    first chunk / step that would start after it, so the attack overruns it by at most one of them.  Stopping early only weakens the estimate: every
    value returned is still a true gradient norm at a point of the region.
    """
    n_samples = min(n_samples, max(64, 65536 // max(1, xl.numel())))  # keep high-dimensional inputs cheap
    gen = torch.Generator(device="cpu").manual_seed(seed)
    dt, dev = xl.dtype, xl.device
    S, n0 = seeds.shape[0], xl.numel()
    width = (xu - xl)

    def rand(*shape):
        return torch.rand(*shape, generator=gen, dtype=dt).to(dev)

    best = torch.full((S,), -float("inf"), dtype=dt, device=dev)
    best_x = ((xl + xu) / 2).expand(S, n0).clone()

    def consider(X):
        nonlocal best, best_x
        g = true_gradients(net, X, seeds)
        val = dual_norm_of(g.to(dt), norm)
        ok = differentiable(chain, X, kink_tol)
        if ball is not None:
            ok = ok & ball.contains(X)
        val = torch.where(ok, val, torch.full_like(val, -float("inf")))
        v, i = val.max(1)
        upd = v > best
        best = torch.where(upd, v, best)
        best_x = torch.where(upd[:, None], X[torch.arange(S, device=X.device), i], best_x)
        return val

    center = ((xl + xu) / 2).expand(S, 1, n0)
    if deadline is None:
        uni = xl + width * rand(S, n_samples, n0)
        vert = xl + width * (rand(S, n_samples, n0) > 0.5).to(dt)
        X0 = torch.cat((center, uni, vert), 1)
        if ball is not None:
            X0 = ball.pull(X0, xl, xu)
        val = consider(X0)
    else:  # the same kinds of points, drawn and evaluated in growing chunks until the deadline
        parts, vals, done, size = [], [], 0, 8  # chunks of 8, 16, 32, ... SAMPLE_CHUNK points per seed
        while done < 2 * n_samples + 1:
            if vals and time.perf_counter() >= deadline:
                break
            m = min(size, 2 * n_samples + 1 - done)
            if done == 0:
                h = (m - 1) // 2
                P = torch.cat((center, xl + width * rand(S, h, n0),
                               xl + width * (rand(S, m - 1 - h, n0) > 0.5).to(dt)), 1)
            else:
                h = m // 2
                P = torch.cat((xl + width * rand(S, h, n0), xl + width * (rand(S, m - h, n0) > 0.5).to(dt)), 1)
            if ball is not None:
                P = ball.pull(P, xl, xu)
            parts.append(P)
            vals.append(consider(P))
            done, size = done + m, min(2 * size, SAMPLE_CHUNK)
        X0, val = torch.cat(parts, 1), torch.cat(vals, 1)
    # smoothed ascent from the best starting points
    zs, _ = chain.forward_all(X0.reshape(-1, n0))
    scales = []
    for z, gate in zip(zs, chain.gates):
        s = gate.switch_values(z) if gate.piecewise_linear else z
        scales.append(s.abs().mean().clamp(min=1e-12))
    k = min(n_starts, X0.shape[1])
    idx = val.topk(k, dim=1).indices
    X = X0[torch.arange(S, device=X0.device)[:, None], idx].clone()
    step0 = width / 8
    if not chain.gates:
        steps = 0  # no activation: the gradient is one constant vector, the sampling round found it
    for t in range(steps):
        if deadline is not None and time.perf_counter() >= deadline:
            break
        frac = t / max(1, steps - 1)
        tau = 0.3 * (0.003 / 0.3) ** frac
        temps = [sc * tau for sc in scales]
        X.requires_grad_(True)
        with torch.enable_grad():
            obj = _smooth_grad_norm(chain, X, seeds.to(dt), temps, norm).sum()
            (gx,) = torch.autograd.grad(obj, X)
        with torch.no_grad():
            X = torch.minimum(torch.maximum(X + step0 * (1 - 0.9 * frac) * gx.sign(), xl), xu)
            if ball is not None:
                X = ball.pull(X, xl, xu)
        consider(X.detach())
    return best, best_x


def sampled_lower(net, xl: torch.Tensor, xu: torch.Tensor, seeds: torch.Tensor, norm: str = "inf",
                  n_samples: int = 256, seed: int = 0, chunk: int = 64) -> tuple[list[float], torch.Tensor]:
    """Estimate (lower bound, not a certificate): per seed row the largest ``||c_s^T grad f(x)||_q`` over
    the box centre, ``n_samples`` uniform points and as many random vertices (autograd gradients;
    random points are differentiable points with probability 1).  Returns (per-row values, best point)."""
    gen = torch.Generator().manual_seed(int(seed))
    n0 = xl.numel()
    t = torch.rand(2 * n_samples, n0, generator=gen, dtype=torch.float64)
    t[n_samples:] = t[n_samples:].round()
    X = torch.cat(((xl + xu)[None] / 2, xl + t.to(xl) * (xu - xl)))
    S = seeds.shape[0]
    best = torch.zeros(S, dtype=torch.float64)
    best_x = X[0]
    for i in range(0, X.shape[0], chunk):
        part = X[i:i + chunk]
        g = true_gradients(net, part[None].expand(S, -1, -1).to(seeds), seeds)
        v = dual_norm_of(g, norm).to(torch.float64).cpu()  # (S, N)
        top, where = v.max(1)
        if bool((top > best).any()):
            best_x = part[int(where[int((top - best).argmax())])]
        best = torch.maximum(best, top)
    return [float(v) for v in best], best_x
