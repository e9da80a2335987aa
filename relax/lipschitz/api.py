"""Public entry points: local Lipschitz constants, element-wise Jacobian bounds, monotonicity.

Soundness: all bounding arithmetic runs in float64 on the network's device; the final certified
numbers are inflated by ``SAFETY_REL`` (relative) plus ``SAFETY_ABS`` (absolute), which dominates
the accumulated float64 rounding of the back-substitution for networks of realistic size
(relative error ~ depth * width * 2^-53).  A NaN/Inf anywhere makes the result ``failed`` with an
infinite upper bound.
"""

from __future__ import annotations

import math
import time

import torch

from ...models.errors import InvalidArgumentError, UnsupportedOperationError
from ...models.graph import Network

from .lower_bounds.attack import attack_lower_bound, ball_guard
from .bounds.chain import forward_bounds
from .bounds.implicit import dense_bytes
from .bounds.naive import naive_product
from .norms import operator_upper, parse_norm, row_dual_upper
from .result import JacobianBounds, LipschitzResult, MonotonicityResult

from .bounds.common import (SAFETY_ABS, SAFETY_REL, _seeds, backward_bounds, certified, certified_lower,  # noqa: F401
                     chain_of, derivative_ranges, input_box)

# ``time_limit``: the attack (an estimate) may use this share of it; the bound pass then runs; the
# branch-and-bound gets what is left minus a reserve for its last batch and the wrap-up.
ATTACK_SHARE = 0.25
# a chain whose dense layer matrices (:func:`.implicit.dense_bytes`) exceed this is bounded without them
DENSE_LIMIT_BYTES = 2e9
RESERVE_SHARE = 0.05
# ... and the alpha-CROWN refinement of the intermediate bounds before a BaB stops at this share of it
ALPHA_FORWARD_SHARE = 0.1


BAB_KINDS = ("activation", "input", "auto")


def _prefers_input_bab(net: Network, norm: str, operator: bool) -> bool:
    """``bab="auto"``: the complete activation BaB for piecewise-linear networks (ReLU, LeakyReLU, MaxMin,
    GroupSort, Householder; chains, and residual nets through their lifted chain) and a norm it handles
    (l_inf, or l1 per row); input splitting otherwise (smooth activations, l2) and for ReLU/LeakyReLU
    chains with <= 3 inputs.  Measured (bench/results/local_lipschitz_input.md): on ReLU chains activation
    splitting wins from 4 inputs on, input splitting up to 3; on MaxMin/GroupSort/Householder chains and
    residual MaxMin nets activation splitting wins from 2 inputs on."""
    from .bounds.gates import GATES
    from .bounds.lifted import LIFTABLE_ACTS
    from ...models.graph import AFFINE_OPS
    acts = [n.op for n in net.nodes if n.op in GATES]
    relu_chain = net.is_chain() and all(op in ("relu", "leaky_relu") for op in acts)
    liftable = all(n.op in AFFINE_OPS or n.op in LIFTABLE_ACTS or n.op in ("input", "add") for n in net.nodes)
    return (not liftable or (relu_chain and math.prod(net.input_shape) <= 3) or norm == "2"
            or (operator and norm != "inf"))


def local_lipschitz(net: Network, input_set, norm="inf", c=None, method: str = "crown", forward: str = "auto",
                    bab_timeout: float = 0.0, attack: bool = True, attack_options: dict | None = None,
                    bab_options: dict | None = None, sdp_solver: str = "CLARABEL",
                    bab: str = "activation", time_limit: float | None = None) -> LipschitzResult:
    """Certified upper bound (and attack lower bound) of the local Lipschitz constant over a box.

    * ``norm``: the input norm ``p`` ("inf", "2", "1"); gradients are measured in the dual norm.
    * ``c``: None -> every output; the result's ``upper`` is then the ``p -> p`` operator norm bound
      of the Jacobian (for ``p = inf``: the max over outputs of the per-output bounds); a vector
      (e.g. a logit margin) or a matrix of rows -> the scalar functions ``c_r^T f`` and ``upper`` =
      max over rows.
    * ``method``: "crown" (chord relaxations, Shi et al. 2022), "recurjac" (interval relaxation
      where the gradient sign is unknown), "ibp" (interval arithmetic on the backward graph), or
      "naive" (product of layer operator norms; global), or "lipsdp" (l2 only: local LipSDP-Neuron
      with per-neuron slope ranges from the forward bounds, :mod:`.lipsdp_local`; needs cvxpy).
      A chain whose dense layer matrices would exceed ``DENSE_LIMIT_BYTES`` (a CIFAR-sized CNN) is bounded
      with its layers applied as ops: "crown" / "recurjac" -> ``method == "crown-implicit"`` /
      "recurjac-implicit" (:mod:`.implicit_crown`, the same bound as the dense one up to rounding), "ibp" /
      "naive" -> "ibp-implicit" / "naive-implicit"; ``lower`` is then sampled (``lower_kind == "sampled"``).
    * ``forward``: pre-activation bounds for the Clarke masks ("auto" = engine CROWN if available, plus
      alpha-CROWN intermediate bounds of ReLU/LeakyReLU chains when a branch-and-bound follows;
      "alpha-crown" = those always).
    * ``bab_timeout > 0`` (piecewise-linear networks: ReLU, LeakyReLU, MaxMin, GroupSort -- groups > 2
      as sorting networks --, Householder; chains, and residual nets as lifted chains (:mod:`.lifted`);
      l_inf and l1 inputs): complete branch-and-bound (:mod:`.bab`, splitting on the
      activations' switches), anytime; when it finishes with an attained maximum, ``exact`` is True.
    * ``bab``: which branch-and-bound ``bab_timeout > 0`` runs: "activation" (above), "input"
      (input-space splitting, :mod:`.bab_input`: every activation, l_inf boxes and l2/l1 balls; best
      for few inputs) or "auto" (input splitting for smooth activations, l2 norms, or ReLU/LeakyReLU
      chains with <= 3 inputs; activation splitting otherwise, residual nets included).  ``bab_options`` go to the chosen engine
      (activation splitting: e.g. ``num_threads`` -- "auto" (default: 1 or all of torch's threads, chosen from
      measured throughput), None or an int -- and ``sign_search`` -- the gradient-sign search of each domain's
      l1 bound: None (default: on for <= 128 inputs), False, True or a dict of ``SignSearch`` fields --
      and ``warm_start`` -- input-polytope multipliers carried from parent to child domain (default True);
      see :func:`.search.bab._run_bab`).
    * ``time_limit`` (seconds, None: no limit): a wall-clock budget for the whole call.  The bound
      pass runs first (it is the certificate, one pass, never cut); then the attack (lower-bound
      estimate: its sampling chunks and ascent steps stop at ``ATTACK_SHARE * time_limit`` from the
      start when a BaB follows, else at the end of the budget less ``RESERVE_SHARE``); then the
      branch-and-bound for ``min(bab_timeout, time left - RESERVE_SHARE * time_limit)`` (skipped when
      nothing is left: ``stats["time_limit"]`` says so).  The input-space BaB keeps its own order
      (attack, root bound, search) under the same shares.  Every number returned stays sound; only
      its tightness depends on the budget.  Overrun: the bound pass beyond the budget, plus one
      attack chunk / BaB batch (``tests/test_lipschitz_time_limit.py``).  Not with
      ``method="lipsdp"`` (its SDP solve cannot be interrupted).
    """
    t0 = time.perf_counter()
    norm = parse_norm(norm)
    if bab_timeout < 0 or not math.isfinite(bab_timeout):
        raise InvalidArgumentError(f"bab_timeout must be a finite number >= 0, got {bab_timeout}")
    deadline = None
    if time_limit is not None:
        if isinstance(time_limit, bool) or not isinstance(time_limit, (int, float)) or not (
                math.isfinite(time_limit) and time_limit > 0):
            raise InvalidArgumentError(f"time_limit must be a positive finite number of seconds, got {time_limit!r}")
        if method == "lipsdp":
            raise InvalidArgumentError("time_limit cannot bound method='lipsdp' (its SDP solve is not interruptible); "
                                       "use method='crown' or no time_limit")
        time_limit = float(time_limit)
        deadline = t0 + time_limit

    def with_deadline(options: dict | None, until: float | None) -> dict:
        out = dict(options or {})
        if until is not None:
            out["deadline"] = until if out.get("deadline") is None else min(until, float(out["deadline"]))
        return out

    net64 = net.to(dtype=torch.float64)
    net64.check_finite()
    # ---- input-space branch-and-bound (issue #4): a separate engine with its own attack and result
    if bab not in BAB_KINDS:
        raise InvalidArgumentError(f"bab must be one of {BAB_KINDS}, got {bab!r}")
    if bab != "activation" and bab_timeout == 0:
        raise InvalidArgumentError(f"bab={bab!r} needs bab_timeout > 0 (seconds of branch-and-bound)")
    if bab_timeout > 0 and (bab == "input" or (bab == "auto" and _prefers_input_bab(net64, norm, c is None))):
        from .search.bab_input import input_bab
        res = input_bab(net64, input_set, norm, c, method, forward, bab_timeout, attack,
                        with_deadline(attack_options, None if deadline is None else t0 + ATTACK_SHARE * time_limit),
                        deadline=None if deadline is None else deadline - RESERVE_SHARE * time_limit,
                        **(bab_options or {}))
        res.timings["total"] = time.perf_counter() - t0
        return res
    if net64.is_chain() and dense_bytes(net64) > DENSE_LIMIT_BYTES:  # e.g. a CIFAR-sized CNN
        return _implicit(net64, input_set, norm, c, method, forward, bab_timeout, attack, attack_options, t0)
    chain = chain_of(net64)
    xl, xu = input_box(net64, input_set)
    seeds = _seeds(chain, c)
    timings: dict[str, float] = {}
    per_output_lower = attack_points = None
    lower = 0.0
    # the certificate first (the bound pass), then the estimate (attack), then the BaB, which uses both:
    # under a time_limit the attack gets at most ATTACK_SHARE of it when a BaB follows, else what is left
    run_bab_after = bab_timeout > 0 and method not in ("lipsdp", "naive")
    if run_bab_after:  # refuse an unsupported BaB before the attack and the bound, not after them
        from .search.bab import check_supported
        check_supported(chain, norm, c is None)

    def run_attack():
        nonlocal per_output_lower, attack_points
        if not attack:
            return
        until = None
        if deadline is not None:
            until = (t0 + ATTACK_SHARE * time_limit) if run_bab_after else deadline - RESERVE_SHARE * time_limit
        ta = time.perf_counter()
        lb, attack_points = attack_lower_bound(net64, chain, xl, xu, seeds, norm, ball=ball_guard(input_set, xl),
                                               **with_deadline(attack_options, until))
        per_output_lower = [float(v) for v in lb]
        timings["attack"] = time.perf_counter() - ta

    if method in ("lipsdp", "naive") and chain.lifted:
        raise UnsupportedOperationError(
            f"method={method!r} needs a chain network; {net.name!r} has residual connections (use 'crown', or "
            "sdp.lipschitz_bound for a global LipSDP bound of residual nets)")
    if method == "lipsdp":
        if norm != "2":
            raise InvalidArgumentError("method='lipsdp' bounds the l2 constant: use norm='2'")
        from .bounds.lipsdp_local import lipsdp_bound
        tb = time.perf_counter()
        fb, used = forward_bounds(chain, xl[None], xu[None], forward)
        rows = certified(lipsdp_bound(chain, fb, seeds, solver=sdp_solver))
        timings["bound"] = time.perf_counter() - tb
        if c is None:  # ||J||_2 <= sqrt(sum_rows ||row||^2)
            upper = float(certified(rows.pow(2).sum().sqrt()))
        else:
            upper = float(rows.max())
        res = LipschitzResult(upper, 0.0, norm, "lipsdp", per_output_upper=[float(v) for v in rows],
                              forward_method=used)
        run_attack()
    elif method == "naive":
        rows = certified(naive_product(chain, norm, seeds))
        upper = float(rows.max()) if c is not None or norm == "inf" else float(certified(naive_product(chain, norm)))
        res = LipschitzResult(upper, 0.0, norm, "naive", per_output_upper=[float(v) for v in rows])
        run_attack()
    else:
        tb = time.perf_counter()
        # before a BaB, forward="auto" adds alpha-CROWN intermediate bounds: every domain starts from them
        # (under a time_limit their refinement gets at most ALPHA_FORWARD_SHARE of it; any stopping point is sound)
        bb, fb, used = backward_bounds(chain, xl, xu, seeds, method, forward, refine=run_bab_after,
                                       deadline=None if deadline is None else t0 + ALPHA_FORWARD_SHARE * time_limit)
        rows = row_dual_upper(norm, bb.grad_lower, bb.grad_upper, bb.l1_upper)
        timings["bound"] = time.perf_counter() - tb
        rows_c = certified(rows)
        if c is None:
            upper = float(certified(operator_upper(norm, rows, bb.grad_lower, bb.grad_upper)))
        else:
            upper = float(rows_c.max())
        res = LipschitzResult(upper, 0.0, norm, method, per_output_upper=[float(v) for v in rows_c],
                              forward_method=used)
        run_attack()
        bab_budget = bab_timeout
        if bab_timeout > 0 and deadline is not None:
            bab_budget = min(bab_timeout, deadline - RESERVE_SHARE * time_limit - time.perf_counter())
            if bab_budget <= 0:
                res.stats["time_limit"] = "reached before branch-and-bound (the bound pass's result is reported)"
        if bab_budget > 0:
            from .search.bab import run_bab
            tb = time.perf_counter()
            guard = ball_guard(input_set, xl)
            res = run_bab(net64, chain, xl, xu, seeds, norm, fb, res, bab_budget, c is None,
                          per_output_lower, ball=guard, **(bab_options or {}))
            timings["bab"] = time.perf_counter() - tb
            if guard is not None and res.exact:  # complete over the bounding box, not over the ball
                res.exact, res.status = False, "box_exact"
    if per_output_lower is not None:
        # every lower bound gets its witness point: the BaB's leaf point, or else the attack's
        wit = res.stats.setdefault("witness", {})
        for k, v in enumerate(per_output_lower):
            if k not in wit and v >= (res.per_output_lower or per_output_lower)[k]:
                wit[k] = attack_points[k].reshape(-1).tolist()
        # the operator norm (c = None) is at least every row's gradient dual norm only for p = inf;
        # for p = 1 / 2 a single row's dual norm is still a lower bound of ||J||_{p->p}.
        lower = max(per_output_lower + [res.lower])
        res.per_output_lower = [max(a, b) for a, b in zip(per_output_lower, res.per_output_lower or per_output_lower)]
    res.lower = max(lower, 0.0) if attack else res.lower
    if not math.isfinite(res.upper):
        res.status = "failed"
    if res.lower > res.upper:
        raise RuntimeError(f"internal error: attack lower bound {res.lower} exceeds certified upper bound {res.upper}")
    timings["total"] = time.perf_counter() - t0
    res.timings.update(timings)
    return res


def _implicit(net64, input_set, norm, c, method, forward, bab_timeout, attack, attack_options, t0) -> LipschitzResult:
    """Bounds without dense layer matrices for a chain whose dense matrices would exceed ``DENSE_LIMIT_BYTES``:
    ``method`` "crown" / "recurjac" (CROWN on the backward graph with ops, :mod:`.implicit_crown`; labelled
    "crown-implicit"), "ibp" or "naive" (:mod:`.implicit`); anything else is refused, naming the size."""
    from .bounds.implicit import dense_bytes, implicit_lipschitz
    from .lower_bounds.attack import sampled_lower
    size = f"~{dense_bytes(net64) / 1e9:.1f} GB of dense layer matrices (limit {DENSE_LIMIT_BYTES / 1e9:.1f} GB)"
    if method not in ("crown", "recurjac", "ibp", "naive"):
        raise UnsupportedOperationError(
            f"method={method!r} on {net64.name!r} needs {size}; use method='crown', 'recurjac', 'ibp' or 'naive' "
            "(bounds computed with the layers applied as ops, relax/lipschitz/bounds/implicit*.py)")
    if bab_timeout > 0:
        raise UnsupportedOperationError(f"branch-and-bound on {net64.name!r} needs {size}; use bab_timeout=0")
    xl, xu = input_box(net64, input_set)
    n_out = int(torch.tensor(net64[net64.output].shape).prod())
    from .search.bab_input import _SeedShape
    seeds = _seeds(_SeedShape(n_out, xl), c)
    tb = time.perf_counter()
    fwd = "crown" if forward in ("auto", "crown", "alpha-crown") else forward  # (alpha: not dense-free here)
    if method in ("crown", "recurjac"):
        from .bounds.implicit_crown import implicit_crown_lipschitz
        res = implicit_crown_lipschitz(net64, xl, xu, seeds, norm, method, operator=c is None, forward=fwd)
    else:
        res = implicit_lipschitz(net64, xl, xu, seeds, norm, method, operator=c is None, forward=fwd)
    res.timings["bound"] = time.perf_counter() - tb
    if attack:
        ta = time.perf_counter()
        opts = dict(attack_options or {})
        rows, x = sampled_lower(net64, xl, xu, seeds, norm, n_samples=int(opts.get("n_samples", 256)),
                                seed=int(opts.get("seed", 0)))
        res.per_output_lower = rows
        res.lower = max(rows)  # one row's gradient dual norm is below the operator norm too
        res.stats["witness"] = {int(torch.tensor(rows).argmax()): x.reshape(-1).tolist()}
        res.lower_kind = "sampled"
        res.timings["attack"] = time.perf_counter() - ta
    if not math.isfinite(res.upper):
        res.status = "failed"
    if res.lower > res.upper:
        raise RuntimeError(f"internal error: sampled lower bound {res.lower} exceeds certified upper bound {res.upper}")
    res.timings["total"] = time.perf_counter() - t0
    return res


def jacobian_bounds(net: Network, input_set, c=None, method: str = "crown", forward: str = "auto") -> JacobianBounds:
    """Certified element-wise bounds of every Clarke Jacobian entry over the region (rows: outputs or rows of c)."""
    net64 = net.to(dtype=torch.float64)
    chain = chain_of(net64)
    xl, xu = input_box(net64, input_set)
    bb, _, _ = backward_bounds(chain, xl, xu, _seeds(chain, c), method, forward)
    return JacobianBounds(certified_lower(bb.grad_lower), certified(bb.grad_upper), method)


def monotonicity(net: Network, input_set, pairs=None, c=None, method: str = "crown",
                 forward: str = "auto") -> MonotonicityResult:
    """Certify the sign of ``d f_i / d x_j`` over the region for all (or the given ``(i, j)``) pairs.

    ``sign[i, j] = +1`` if every Clarke derivative is >= 0 (``f_i`` non-decreasing in ``x_j`` on the
    region), ``-1`` if every one is <= 0, ``0`` if not certified.  Pairs not asked for are 0.
    """
    jb = jacobian_bounds(net, input_set, c, method, forward)
    sign = torch.zeros(jb.lower.shape, dtype=torch.int8)
    sign[jb.upper.cpu() <= 0] = -1
    sign[jb.lower.cpu() >= 0] = 1  # a derivative certified to be exactly 0 is reported as +1 (non-decreasing)
    if pairs is not None:
        mask = torch.zeros_like(sign, dtype=torch.bool)
        for i, j in pairs:
            if not (0 <= i < sign.shape[0] and 0 <= j < sign.shape[1]):
                raise InvalidArgumentError(f"monotonicity pair ({i}, {j}) is out of range {tuple(sign.shape)}")
            mask[i, j] = True
        sign = torch.where(mask, sign, torch.zeros_like(sign))
    return MonotonicityResult(sign, jb.lower, jb.upper)
