"""Local robustness verification on top of bound propagation.

For each sample ``x_b`` with label ``y_b`` and the set ``S_b = {x : ||x - x_b||_p <= eps} (∩ clip box)``:

* ``"verified"``: a certified lower bound of every logit margin ``f_y(x) - f_j(x)`` (``j != y``) over
  ``S_b`` is ``> 0`` (and finite): no point of ``S_b`` is classified otherwise (ties count as not
  robust).  These are bounds from :func:`relax.compute_bounds` (sound; see its floating-point policy).
* ``"falsified"``: a concrete counterexample ``x'`` found by PGD (or ``x_b`` itself when it is
  already misclassified) that lies in ``S_b`` and for which some margin is ``< 0`` when the network is
  re-evaluated in float64 with ``x'`` stored in float64 (membership of ``x'`` is re-checked in float64
  too).  A float32-only misclassification is never reported.
* ``"unknown"``: neither.

The margins' lower bounds are returned for every sample (columns ordered by class, skipping the label).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..models.errors import InvalidArgumentError, ShapeMismatchError
from ..models.graph import Network

from .engine import compute_bounds
from .sets import Ball, _norm_p


def margin_spec(labels: torch.Tensor, n_classes: int, dtype=torch.float32):
    """``C`` of shape ``(B, K-1, K)`` with rows ``e_y - e_j`` (``j != y`` ascending), and the ``j`` per row."""
    B = labels.shape[0]
    others = torch.stack([torch.cat([torch.arange(0, int(y)), torch.arange(int(y) + 1, n_classes)])
                          for y in labels.cpu()]) if B else torch.zeros(0, n_classes - 1, dtype=torch.long)
    C = torch.zeros(B, n_classes - 1, n_classes, dtype=dtype)
    C[torch.arange(B).unsqueeze(1), torch.arange(n_classes - 1).unsqueeze(0), others] = -1.0
    C[torch.arange(B), :, labels.cpu().long()] = 1.0
    return C.to(labels.device), others.to(labels.device)


@dataclass
class VerificationResult:
    """Per-sample outcome; ``margin_lower`` are certified lower bounds ``(B, K-1)`` of ``f_y - f_j``."""

    status: list[str]
    margin_lower: torch.Tensor
    other_classes: torch.Tensor
    counterexamples: dict[int, torch.Tensor] = field(default_factory=dict)  # float64 inputs
    counterexample_margins: dict[int, float] = field(default_factory=dict)  # min margin, float64
    method: str = "crown"
    eps: float | torch.Tensor = 0.0
    norm: float = math.inf
    details: dict[int, dict] = field(default_factory=dict)  # method="bab": per sample how it was decided

    def counts(self) -> dict[str, int]:
        return {k: self.status.count(k) for k in ("verified", "falsified", "unknown")}

    @property
    def verified(self) -> torch.Tensor:
        return torch.tensor([s == "verified" for s in self.status])


def _min_margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    true = logits.gather(1, labels.view(-1, 1)).squeeze(1)
    other = logits.clone()
    other.scatter_(1, labels.view(-1, 1), -math.inf)
    return true - other.amax(1)


def _project_l1(d: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row of ``d`` (B, n) onto the l1 ball of radius ``eps`` (B,)."""
    a = d.abs()
    inside = a.sum(1) <= eps
    mu, _ = torch.sort(a, dim=1, descending=True)
    cs = mu.cumsum(1)
    k = torch.arange(1, d.shape[1] + 1, device=d.device, dtype=d.dtype)
    cond = mu - (cs - eps.unsqueeze(1)) / k > 0
    rho = (cond.sum(1, keepdim=True) - 1).clamp_min(0)  # the condition holds on a prefix
    theta = (cs.gather(1, rho) - eps.unsqueeze(1)) / (rho + 1).to(d.dtype)
    out = torch.sign(d) * (a - theta).clamp_min(0)
    return torch.where(inside.unsqueeze(1), d, out)


def _project(x_adv, x0, eps, p, clip):
    """Project ``x_adv`` onto ``{||x - x0||_p <= eps} ∩ clip`` (exact for p = inf; ball then box otherwise,
    followed by a shrink toward ``x0`` if the box step left the ball, which keeps both constraints)."""
    B = x0.shape[0]
    d = (x_adv - x0).flatten(1)
    e = eps.to(d.dtype)
    if p == math.inf:
        d = torch.maximum(torch.minimum(d, e.unsqueeze(1)), -e.unsqueeze(1))
    elif p == 2.0:
        n = d.norm(dim=1).clamp_min(1e-30)
        d = d * torch.clamp(e / n, max=1.0).unsqueeze(1)
    else:
        d = _project_l1(d, e)
    x = x0 + d.reshape(x0.shape)
    if clip is not None:
        x = torch.maximum(torch.minimum(x, clip[1]), clip[0])
    return x


def _inside64(x, x0, eps, p, clip) -> torch.Tensor:
    d = (x - x0).flatten(1)
    n = d.abs().amax(1) if p == math.inf else d.norm(p=p, dim=1)
    ok = n <= eps
    if clip is not None:
        ok &= ((x >= clip[0]) & (x <= clip[1])).flatten(1).all(1)
    return ok


def pgd_attack(net: Network, x0, labels, eps, p, clip, steps: int = 20, restarts: int = 1, seed: int = 0):
    """Projected gradient ascent on the worst margin; returns the best point per sample (working dtype)."""
    module = net.to_module()
    gen = torch.Generator(device="cpu").manual_seed(seed)
    best_x = x0.clone()
    with torch.no_grad():
        best_m = _min_margin(net(x0), labels)
    ev = eps.reshape(-1, *([1] * (x0.dim() - 1)))
    step = 2.5 * ev / max(steps, 1)
    n_feat = x0[0].numel()
    for r in range(restarts):
        start = Ball(x0, eps, p=p, clip=clip).sample(1, vertex_frac=0.0, generator=gen)[:, 0]
        x = _project(start.to(x0.dtype), x0, eps, p, clip)
        for _ in range(steps):
            x = x.detach().requires_grad_(True)
            m = _min_margin(module(x), labels)
            g, = torch.autograd.grad(m.sum(), x)
            with torch.no_grad():
                improved = m.detach() < best_m
                best_m = torch.where(improved, m.detach(), best_m)
                best_x = torch.where(improved.reshape(-1, *([1] * (x0.dim() - 1))), x.detach(), best_x)
                gf = g.flatten(1)
                if p == math.inf:
                    direction = -gf.sign()
                elif p == 2.0:
                    direction = -gf / gf.norm(dim=1, keepdim=True).clamp_min(1e-30)
                else:  # l1: steepest descent on the largest-gradient coordinates
                    k = max(1, n_feat // 20)
                    top = gf.abs().topk(k, dim=1).indices
                    direction = torch.zeros_like(gf).scatter(1, top, -gf.gather(1, top).sign() / k)
                x = _project(x + step * direction.reshape(x.shape), x0, eps, p, clip)
        with torch.no_grad():
            m = _min_margin(net(x), labels)
            improved = m < best_m
            best_m = torch.where(improved, m, best_m)
            best_x = torch.where(improved.reshape(-1, *([1] * (x0.dim() - 1))), x, best_x)
    return best_x, best_m


def verify_robustness(net: Network, x: torch.Tensor, labels, eps, norm="inf", method: str = "crown", clip=None,
                      pgd_steps: int = 20, pgd_restarts: int = 1, alpha_iters: int = 20, dtype=None,
                      seed: int = 0, timeout: float = 60.0, progress=None, bab_options: dict | None = None
                      ) -> VerificationResult:
    """Per-sample ``"verified" | "falsified" | "unknown"`` for the lp ball of radius ``eps`` around ``x``.

    ``clip = (lo, hi)``: the data domain (floats or tensors broadcastable to ``x``); ``x`` must lie in it.
    ``pgd_steps = 0`` disables the attack (then only misclassified clean points are falsified).

    ``method="bab"`` (complete verification, l_inf only): CROWN then alpha-CROWN on the whole batch, then
    for every sample still unknown :func:`relax.spec.verify_query` (attack, beta-CROWN branch-and-bound)
    with a budget of ``timeout`` seconds per sample; its verdicts are mapped unsat -> verified,
    sat -> falsified (counterexample re-checked in float64), unknown/timeout -> unknown.  The margins
    of BaB-verified samples are raised to the search's certified bounds.  ``details[b]`` records how
    each sample was decided (method, time, domains, reason).  ``progress(b, spec_index, BaBProgress)``
    is called after every domain batch; ``bab_options``: extra options of ``verify_query``.
    """
    if str(method).strip().lower() == "bab":
        return _verify_bab(net, x, labels, eps, norm, clip, pgd_steps, pgd_restarts, alpha_iters, dtype, seed,
                           timeout, progress, bab_options or {})
    if not isinstance(net, Network):
        raise InvalidArgumentError(f"net must be a models.Network, got {type(net).__name__}")
    p = _norm_p(norm)
    if not isinstance(x, torch.Tensor) or tuple(x.shape[1:]) != net.input_shape:
        raise ShapeMismatchError(f"x must have shape (B, *{net.input_shape}), got {tuple(getattr(x, 'shape', ()))}")
    x = x.to(device=net.device, dtype=dtype or net.dtype)
    B = x.shape[0]
    labels = torch.as_tensor(labels, device=net.device).long().reshape(-1)
    K = int(math.prod(net.output_shape))
    if labels.shape[0] != B or (labels < 0).any() or (labels >= K).any():
        raise InvalidArgumentError(f"labels must be {B} class indices in [0, {K})")
    if int(pgd_steps) < 0 or int(pgd_restarts) < 0:
        raise InvalidArgumentError("pgd_steps and pgd_restarts must be >= 0")
    ball = Ball(x, eps, p=p, clip=clip)  # validates eps and clip; rounds eps and clip outward
    eps_t = ball.eps_t
    clip_t = ball._clip
    # the requested set in float64 (used for falsification: a counterexample must lie in it)
    eps64 = torch.as_tensor(eps, dtype=torch.float64, device=x.device).expand(B).clone()
    clip64 = None if clip is None else tuple(torch.broadcast_to(torch.as_tensor(c, dtype=torch.float64,
                                                                                device=x.device), x.shape)
                                             for c in clip)
    if clip_t is not None and not ((x >= clip_t[0]) & (x <= clip_t[1])).all():
        raise InvalidArgumentError("verify_robustness: some inputs x lie outside the clip domain")

    C, others = margin_spec(labels, K, x.dtype)
    res = compute_bounds(net, ball, method=method, C=C, alpha_iters=alpha_iters, bound_upper=False, dtype=x.dtype)
    lower = res.lower
    verified = torch.isfinite(lower).all(1) & (lower > 0).all(1)

    # falsification, re-checked in float64
    net64 = net.to(dtype=torch.float64)
    x64 = x.double()
    status = ["verified" if bool(v) else "unknown" for v in verified]
    cex, cex_m = {}, {}
    with torch.no_grad():
        clean_m = _min_margin(net64(x64), labels)
    cands = [x64.clone()]
    todo = ~verified
    if pgd_steps > 0 and pgd_restarts > 0 and todo.any():
        idx = todo.nonzero().squeeze(1)
        adv, _ = pgd_attack(net, x[idx], labels[idx], eps_t[idx], p, None if clip_t is None else
                            (clip_t[0][idx], clip_t[1][idx]), steps=int(pgd_steps), restarts=int(pgd_restarts),
                            seed=seed)
        full = x64.clone()
        full[idx] = adv.double()
        cands.append(full)
    for cand in cands:
        shrink = torch.ones_like(eps64) * (1 - 1e-12)
        cand = _project(cand, x64, eps64 * shrink, p, clip64)
        inside = _inside64(cand, x64, eps64, p, clip64)
        with torch.no_grad():
            m = _min_margin(net64(cand), labels)
        for b in range(B):
            if status[b] == "unknown" and bool(inside[b]) and float(m[b]) < 0:
                status[b] = "falsified"
                cex[b] = cand[b].clone()
                cex_m[b] = float(m[b])
    for b in range(B):  # a clean misclassification can never be verified (bounds are sound)
        if status[b] == "verified" and float(clean_m[b]) < 0:  # pragma: no cover - would be a soundness bug
            raise AssertionError(f"sample {b}: verified but misclassified at the center (soundness bug)")
    return VerificationResult(status, lower, others, cex, cex_m, res.method, eps, p)


def _verify_bab(net, x, labels, eps, norm, clip, pgd_steps, pgd_restarts, alpha_iters, dtype, seed, timeout,
                progress, opts) -> VerificationResult:
    """``method="bab"``: alpha-CROWN on the batch, then complete search per sample still unknown."""
    from .spec import robustness_query, verify_query

    if _norm_p(norm) != math.inf:
        raise InvalidArgumentError(f"method='bab' supports norm='inf' only, got norm={norm!r}")
    if not (isinstance(timeout, (int, float)) and timeout > 0):
        raise InvalidArgumentError(f"timeout must be > 0 seconds per sample, got {timeout!r}")
    eps_list = torch.as_tensor(eps, dtype=torch.float64).reshape(-1)
    res = verify_robustness(net, x, labels, eps, norm=norm, method="crown", clip=clip, pgd_steps=pgd_steps,
                            pgd_restarts=pgd_restarts, dtype=dtype, seed=seed)
    details = {b: dict(method="crown" if s == "verified" else ("pgd" if s == "falsified" else ""))
               for b, s in enumerate(res.status)}
    todo = [b for b, s in enumerate(res.status) if s == "unknown"]
    if todo:
        idx = torch.tensor(todo, device=x.device)
        sub_clip = None if clip is None else tuple(torch.broadcast_to(torch.as_tensor(c, dtype=x.dtype, device=x.device),
                                                                      x.shape)[idx] for c in clip)
        sub_eps = eps_list[idx.cpu()] if eps_list.numel() > 1 else eps
        r2 = verify_robustness(net, x[idx], torch.as_tensor(labels, device=x.device).reshape(-1)[idx], sub_eps,
                               norm=norm, method="alpha-crown", clip=sub_clip, pgd_steps=0, alpha_iters=alpha_iters,
                               dtype=dtype, seed=seed)
        for k, b in enumerate(todo):
            res.margin_lower[b] = torch.maximum(res.margin_lower[b], r2.margin_lower[k].to(res.margin_lower.dtype))
            if r2.status[k] == "verified":
                res.status[b] = "verified"
                details[b] = dict(method="alpha-crown")
    labels_t = torch.as_tensor(labels).reshape(-1)
    K = int(math.prod(net.output_shape))
    for b in [b for b, s in enumerate(res.status) if s == "unknown"]:
        e = float(eps_list[b] if eps_list.numel() > 1 else eps_list[0])
        cl = None if clip is None else tuple(torch.broadcast_to(torch.as_tensor(c, dtype=torch.float64), x[b].shape)
                                             for c in clip)
        q = robustness_query(x[b], int(labels_t[b]), e, K, clip=cl, source=f"sample {b}")
        cb = None if progress is None else (lambda i, p, b=b: progress(b, i, p))
        v = verify_query(net, q, timeout=timeout, seed=seed, progress=cb, **opts)
        details[b] = dict(method="bab" if v.status == "unsat" else ("bab-attack" if v.status == "sat" else "bab"),
                          status=v.status, time_s=round(v.time_s, 4), domains=v.domains, reason=v.reason)
        if v.status == "unsat":
            res.status[b] = "verified"
            res.margin_lower[b] = torch.maximum(res.margin_lower[b], v.spec_bounds.to(res.margin_lower.dtype))
        elif v.status == "sat":
            res.status[b] = "falsified"
            res.counterexamples[b] = v.counterexample
            out = v.output.flatten()
            y_b = int(labels_t[b])
            others = torch.cat([out[:y_b], out[y_b + 1:]])
            res.counterexample_margins[b] = float(out[y_b] - others.max())
        else:
            res.margin_lower[b] = torch.maximum(res.margin_lower[b], v.spec_bounds.to(res.margin_lower.dtype))
    res.method = "bab"
    res.details = details
    return res
