"""Tasks: the one place where user requests (CLI, batch units, the demo) call the methods and
wrap their results into :class:`~certify.records.Certificate` records.

* :func:`task_global`: LipSDP (``sdp``) + product of norms (+ a sampled lower estimate);
* :func:`task_lipschitz`: local Lipschitz by Clarke-Jacobian bound propagation (``relax.lipschitz``);
* :func:`task_robustness`: per-sample verdicts (``relax.verify_robustness``) and certified radii
  (largest eps verified by CROWN, found by bisection: every radius reported is itself verified);
* :func:`task_steps`: softmax-ghost radius along the gradient (``certify.ghosts``);
* :func:`task_game`: Small-Gain Nash certificate (``certify.games``).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from ..models.errors import DataLoadError, InvalidArgumentError, ModelLoadError, NNCertifyError

from .records import (Certificate, GameResult, LipschitzResult, RobustnessResult, SampleVerdict, StepRadiusResult,
                      make_certificate, model_ref)

from .params import (DEFAULT_GLOBAL_TIME_LIMIT, check_eps, check_method, check_refine, check_time_limit,  # noqa: F401
                     check_timeout, parse_clip, parse_norm)  # (re-exported)
from .progress import bar as progress_bar
from ..sdp.threads import single_thread

MIN_SDP_BUDGET = 0.5  # s: with less left after the product of norms, no SDP is started (it could not finish)
RADIUS_CHUNK = 50  # min samples per certified-radius bisection (progress granularity; results do not depend on it)



# ------------------------------------------------------------------------------------------ resolution
def resolve_model(spec, arch=None, input_shape=None, trust_pickle: bool = False, require_network: bool = True):
    """A model file path, ``zoo:NAME`` or a bare zoo name -> ``models.LoadedModel`` (``require_network=False``:
    see ``models.load_model``)."""
    from ..models import load_model, zoo
    s = str(spec)
    name = s[4:] if s.startswith("zoo:") else s
    if s.startswith("zoo:") or (not Path(s).exists() and name in zoo.available()):
        return zoo.load_zoo(name)
    if not Path(s).exists():
        raise ModelLoadError(f"{s}: no such file (and not a zoo model; available: {', '.join(zoo.available())})")
    return load_model(s, arch=arch, input_shape=input_shape, trust_pickle=trust_pickle,
                      require_network=require_network)


def module_shapes(lm):
    """What :func:`resolve_data` reads from a network (input/output shape, dtype), for a model loaded
    without one (``network=None``): the input shape from the file/``--input-shape``, the rest by one forward."""
    from types import SimpleNamespace
    if lm.network is not None:
        return lm.network
    shape = lm.meta.get("input_shape")
    if not shape:
        raise InvalidArgumentError(f"{lm.path}: give the per-sample input shape (--input-shape), the model has no "
                                   f"network form to read it from ({lm.meta.get('network_error', '')})")
    p = next(lm.module.parameters(), None)
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    with torch.no_grad():
        try:
            out = lm.module(torch.zeros(2, *shape, dtype=dtype))
        except Exception as e:  # noqa: BLE001 - the user's module: say which input it refused
            raise InvalidArgumentError(f"{lm.path}: the module does not accept inputs of shape {tuple(shape)} "
                                       f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    from .ghosts import _first_tensor
    return SimpleNamespace(input_shape=tuple(shape), output_shape=tuple(_first_tensor(out).shape[1:]), dtype=dtype)


def resolve_data(data, net, labels=None, limit: int | None = None):
    """Data file (or None / ``zoo:digits`` for the zoo's digits test split) -> ``(X, y)``."""
    from .data import load_data
    if limit is not None and limit <= 0:
        raise InvalidArgumentError(f"--limit must be positive, got {limit}")
    if data is None or str(data) == "zoo:digits":
        from ..models.zoo import digits
        if int(torch.tensor(net.input_shape).prod()) != 64:
            raise DataLoadError(f"the default digits data (64 features) does not fit a model with input "
                                f"{net.input_shape}; give --data")
        X, y = digits("test", dtype=net.dtype)
        X = X.reshape(-1, *net.input_shape)
        return (X[:limit], y[:limit]) if limit else (X, y)
    out = net.output_shape
    return load_data(data, net.input_shape, labels=labels, num_classes=out[0] if len(out) == 1 else None,
                     limit=limit, dtype=net.dtype)


# ------------------------------------------------------------------------------------------ tasks
def task_global(lm, norm="2", solver="auto", method="auto", time_limit=DEFAULT_GLOBAL_TIME_LIMIT,
                lower_samples: int = 2000, started: float | None = None) -> Certificate:
    """Global Lipschitz bound of the whole network (l2 -> l2), or per output (l_inf -> |.|, max over outputs).

    ``time_limit`` (s, default :data:`certify.params.DEFAULT_GLOBAL_TIME_LIMIT`; ``None``: no limit) bounds
    the whole task, counted from ``started`` (a ``time.perf_counter()`` value: the CLI passes its own start,
    so loading counts too; default: now).  Order of work: the certified product of norms first (cheap,
    always: the answer of last resort), then the SDP(s) in a killable child process with what is left
    minus a reserve (:func:`sdp.lipschitz_bound` ``time_budget``: the solver stops at a soft limit and the
    best iterate is verified, or the child is killed at the deadline and certifies nothing), then the
    sampled lower estimate with what remains (at least one small batch, skipped when nothing remains).
    The upper bound reported is always a verified one: the SDP value when its proof succeeded in time,
    else the product of norms, with a note saying why."""
    from .. import sdp
    t0 = time.perf_counter() if started is None else started
    norm = parse_norm(norm, ("2", "inf"))
    time_limit = check_time_limit(time_limit)
    net = lm.network
    solver_arg = None if str(solver).lower() == "auto" else str(solver).upper()
    notes: list[str] = []
    q = net.output_shape[0] if len(net.output_shape) == 1 else None
    reserve = 0.0 if time_limit is None else min(0.1 * time_limit, 2.0)  # for the lower estimate and the report

    def left() -> float | None:
        return None if time_limit is None else time_limit - (time.perf_counter() - t0)

    if norm == "inf" and method != "product" and q is None:
        raise InvalidArgumentError("--norm inf needs a network with a flat output vector")
    n_sdp = 0 if method == "product" else (1 if norm == "2" else q)
    bar = progress_bar(total=n_sdp + 2, desc="global: product of norms", unit="phase")
    with single_thread():
        naive = _product_bound(net, norm)
    bar.update(1)
    rows = None
    if method != "product":
        if time_limit is not None and left() - reserve < MIN_SDP_BUDGET:
            notes.append(f"time limit: {time_limit:g} s; no time left for the SDP after {time.perf_counter() - t0:.2f} s "
                         f"of loading and the product of norms (the product of norms is reported)")
        elif norm == "2":
            bar.set_description_str(f"global: LipSDP solve ({solver})")
            rows = [sdp.lipschitz_bound(net, norm=2, method=method, solver=solver_arg,
                                        time_budget=None if time_limit is None else left() - reserve)]
            bar.update(1)
        else:
            rows = []
            for i in range(q):
                bar.set_description_str(f"global: LipSDP solve ({solver}), output {i + 1}/{q}")
                c = torch.zeros(q, dtype=torch.float64)
                c[i] = 1.0
                share = None if time_limit is None else max(1e-3, (left() - reserve) / (q - i))  # even split
                rows.append(sdp.lipschitz_bound(net, norm="inf", method=method, solver=solver_arg, c=c,
                                                time_budget=share))
                bar.update(1)
                if not rows[-1].certified:  # the max over outputs needs every output: stop at the first failure
                    break
    by_method = {"product of norms": naive}
    upper = naive
    solver_used = None
    if rows is not None:
        ok = len(rows) == (1 if norm == "2" else q) and all(r.certified for r in rows)
        sdp_val = max(r.certified_value for r in rows) if ok else None
        raw = max(r.raw_value for r in rows)
        by_method[f"LipSDP ({rows[0].method}, certified)"] = sdp_val
        by_method[f"LipSDP ({rows[0].method}): solver value, unverified"] = raw if math.isfinite(raw) else None
        solver_used = rows[0].solver
        if ok and sdp_val is not None and (upper is None or sdp_val < upper):
            upper = sdp_val
        if not ok:
            notes.append("no SDP certificate (the product of norms is reported): " + "; ".join(r.message for r in rows if not r.certified))
        elif any(r.solver_status == "time_limit" for r in rows):
            notes.append("time limit: the SDP solver was stopped at its limit and its best iterate is verified "
                         "(a larger --time-limit may give a tighter bound)")
    lower = None
    bar.set_description_str("global: sampled lower estimate")
    rest = left()
    if rest is not None and rest <= 0:
        notes.append("time limit: no sampled lower estimate (no time left)")
    else:
        try:
            with single_thread():
                est = sdp.sampled_lower_bound(net, norm=2 if norm == "2" else "inf", n=lower_samples,
                                              c=None if norm == "2" else _best_output_c(net),
                                              batch=500 if rest is None else 100, time_limit=rest)
            lower = est.value
        except Exception as exc:  # an estimate is optional
            notes.append(f"no sampled lower estimate ({type(exc).__name__})")
    bar.update(1)
    bar.close()
    if norm == "inf":
        notes.append("l_inf input: bound on max_i |f_i(x) - f_i(y)| / ||x - y||_inf (max over outputs)")
    result = LipschitzResult(scope="global", norm=norm, upper=upper, lower=lower, by_method=by_method)
    return make_certificate(status="certified" if upper is not None else "failed", method=f"global/{method}",
                            result=result, model=model_ref(lm), parameters={"norm": norm, "method": method,
                                                                            "solver": solver, "time_limit": time_limit},
                            solver=solver_used, total_s=time.perf_counter() - t0, notes=notes)


def _best_output_c(net):
    q = net.output_shape[0]
    c = torch.zeros(q, dtype=torch.float64)
    c[0] = 1.0
    return c


def _product_bound(net, norm: str) -> float | None:
    """Product of layer operator norms (float64, rounded up): a certified but loose global bound.

    :func:`sdp.certified_mp` where it applies (every norm proven in float64, weights of any scale: the
    product is carried as mantissa and exponent, so entries of 1e160 and 1e-160 give a finite bound);
    else (tanh / sigmoid, Householder in l_inf, graphs ``sdp.extract`` does not read) the product of
    ``relax.lipschitz.bounds.naive``, carried through the graph for residual nets (``L(a + b) <= L(a) + L(b)``).
    ``None`` only for an op without a rule or a product beyond float64.
    """
    from ..models.errors import UnsupportedOperationError
    from ..sdp import certified_mp, extract
    try:
        v = certified_mp(extract(net), 2 if norm == "2" else "inf")
        return v if math.isfinite(v) else None
    except (UnsupportedOperationError, InvalidArgumentError, ValueError):
        pass
    from ..relax.lipschitz.api import certified
    from ..relax.lipschitz.bounds.chain import dense_chain
    from ..relax.lipschitz.bounds.naive import graph_product, naive_product
    try:
        if net.is_chain():
            v = naive_product(dense_chain(net.to(torch.float64)), norm)
        else:
            v = graph_product(net, norm)
    except (UnsupportedOperationError, ValueError):
        return None
    v = float(certified(v))
    return v if math.isfinite(v) else None


def task_lipschitz(lm, x, eps: float, norm="inf", bab_timeout: float = 0.0, output: int | None = None,
                   index: int | None = None, clip=None, bab: str = "auto", time_limit: float | None = None,
                   started: float | None = None) -> Certificate:
    """Local Lipschitz constant over the eps-ball around ``x`` (intersected with the box ``clip``).

    ``time_limit`` (s): wall-clock budget for the whole task (see ``local_lipschitz``), counted from
    ``started`` (a ``time.perf_counter()`` value: the CLI passes its own start, so loading the model
    and data counts too; default: now); with ``bab_timeout == 0`` the branch-and-bound gets whatever
    the budget leaves."""
    from ..relax import Ball
    from ..relax.lipschitz import local_lipschitz
    t0 = time.perf_counter() if started is None else started
    eps = check_eps(eps)
    norm = parse_norm(norm)
    time_limit = check_time_limit(time_limit)
    if bab_timeout < 0 or not math.isfinite(bab_timeout):
        raise InvalidArgumentError(f"--bab-timeout must be a finite number >= 0, got {bab_timeout}")
    if time_limit is not None and bab_timeout == 0:
        bab_timeout = time_limit
    net = lm.network
    c = None
    if output is not None:
        q = net.output_shape[0]
        if not 0 <= output < q:
            raise InvalidArgumentError(f"--output {output}: the model has {q} outputs")
        c = torch.zeros(q, dtype=torch.float64)
        c[output] = 1.0
    center = x.reshape(1, *net.input_shape).to(torch.float64)
    region = Ball(center, eps, p={"inf": math.inf, "2": 2, "1": 1}[norm], clip=parse_clip(clip))
    bar = progress_bar(total=bab_timeout, desc="local Lipschitz: branch-and-bound", unit="s",
                       bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.0f} s {postfix}") \
        if bab_timeout > 0 else None

    def show(elapsed: float, upper: float, lower: float) -> None:  # the anytime bounds of the BaB
        bar.set_postfix_str(f"upper {upper:.6g} ≥ L ≥ {lower:.6g} (gap {upper - lower:.3g})", refresh=False)
        bar.update(max(0.0, min(elapsed, bab_timeout) - bar.n))

    try:
        res = local_lipschitz(net, region, norm=norm, c=c, bab_timeout=bab_timeout,
                              bab=bab if bab_timeout > 0 else "activation",
                              attack_options={"steps": 30, "n_samples": 256, "n_starts": 8},
                              bab_options={"progress": show} if bar is not None else None,
                              time_limit=None if time_limit is None
                              else max(time_limit - (time.perf_counter() - t0), 1e-3))
    finally:
        if bar is not None:
            bar.close()
    status = "certified" if res.status != "failed" and math.isfinite(res.upper) else "failed"
    by_method = {f"bound propagation ({res.method})": res.upper}
    notes = [f"BaB status: {res.status}"] if bab_timeout > 0 else []
    if "time_limit" in res.stats:
        notes.append(f"time limit: {res.stats['time_limit']}")
    naive = None
    if time_limit is None or time.perf_counter() - t0 < time_limit:  # a side number: only with time left
        naive = _product_bound(net, norm)
    else:
        notes.append("time limit: the global product of norms was not computed")
    if naive is not None:
        by_method["product of norms (global)"] = naive
    result = LipschitzResult(scope="local", norm=norm, output="all outputs" if output is None else f"output {output}",
                             upper=res.upper if math.isfinite(res.upper) else None, lower=res.lower, exact=res.exact,
                             center_index=index, eps=eps, by_method=by_method, per_output=res.per_output_upper,
                             history=[list(h) for h in res.history] or None)
    suffix = "+bab" if bab_timeout > 0 and "bab" not in res.method else ""
    return make_certificate(status=status, method=f"local/{res.method}{suffix}",
                            result=result, model=model_ref(lm),
                            parameters={"eps": eps, "norm": norm, "bab_timeout": bab_timeout, "bab": bab,
                                        "output": output, "index": index, "clip": clip, "time_limit": time_limit},
                            total_s=time.perf_counter() - t0, details=res.timings, notes=notes)


def task_robustness(lm, X, y, eps: float, norm="inf", method="crown", clip=(0.0, 1.0), radius: bool = True,
                    radius_iters: int = 8, timeout: float = 60.0, progress=None, refine: str = "auto") -> Certificate:
    from ..relax import verify_robustness
    eps = check_eps(eps)
    norm = parse_norm(norm)
    check_method(method)
    if method == "bab" and norm != "inf":
        raise InvalidArgumentError(f"--method bab supports --norm inf only, got --norm {norm}")
    if method == "bab":
        check_timeout(timeout, "--timeout")
    net = lm.network
    t0 = time.perf_counter()
    with torch.no_grad():
        clean = (net(X).argmax(1) == y)
    n = X.shape[0]
    extra = dict(timeout=timeout, progress=progress) if method == "bab" else {}
    if method == "bab" and refine != "auto":
        extra["bab_options"] = {"refine": check_refine(refine)}
    with progress_bar(total=n, desc=f"robustness ε={eps:g}: bounds + PGD", unit="sample") as bar:
        res = verify_robustness(net, X, y, eps, norm=norm, method=method, clip=clip, **extra)
        statuses = list(res.status)
        det = getattr(res, "details", {}) or {}
        margins = res.margin_lower.min(dim=1).values if res.margin_lower.dim() == 2 else res.margin_lower
        bar.update(n)
        radii = None
        if radius:  # per-sample bisection: chunks give the same radii as one batch (no randomness)
            bar.reset(total=n)
            bar.set_description_str(f"robustness ε={eps:g}: certified radii")
            parts, k = [], max(RADIUS_CHUNK, -(-n // 5))  # at most 5 chunks: few calls, still vectorized
            for s in range(0, n, k):
                parts.append(certified_radii(net, X[s:s + k], y[s:s + k], norm, clip, iters=radius_iters, hi=2 * eps))
                bar.update(parts[-1].shape[0])
            radii = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)
    samples = [SampleVerdict(index=i, label=int(y[i]), status=statuses[i],
                             margin_lower=float(margins[i]) if math.isfinite(float(margins[i])) else None,
                             certified_radius=float(radii[i]) if radii is not None else None,
                             decided_by=det.get(i, {}).get("method") or None, time_s=det.get(i, {}).get("time_s"),
                             domains=det.get(i, {}).get("domains"),
                             reason=det.get(i, {}).get("reason") if statuses[i] == "unknown" else None)
               for i in range(len(statuses))]
    result = RobustnessResult(norm=norm, eps=eps, samples=samples, verified=statuses.count("verified"),
                              falsified=statuses.count("falsified"), unknown=statuses.count("unknown"),
                              clean_accuracy=float(clean.float().mean()), verified_accuracy=statuses.count("verified") / n)
    params = {"eps": eps, "norm": norm, "method": method, "clip": clip, "samples": n}
    if method == "bab":
        params["timeout_per_sample_s"] = timeout
        params["refine"] = refine
    return make_certificate(status="certified", method=f"robustness/{method}", result=result, model=model_ref(lm),
                            parameters=params,
                            total_s=time.perf_counter() - t0,
                            notes=["'verified' is proven (sound bounds); 'falsified' has a real counterexample "
                                   "re-checked in float64; certified_radius is the largest eps verified by CROWN "
                                   "(bisection)"])


def certified_radii(net, X, y, norm: str, clip, iters: int = 8, hi: float = 0.1, grow: int = 6) -> torch.Tensor:
    """Per-sample radius r such that the ball of radius r is *verified* by CROWN (0 if none).

    Doubling from ``hi`` while samples stay verified, then bisection, batched over samples; only
    radii at which verification succeeded are kept, so each reported radius is itself certified.
    """
    from ..relax import Ball, compute_bounds, margin_spec
    p = {"inf": math.inf, "2": 2, "1": 1}[norm]
    B = X.shape[0]
    C, _ = margin_spec(y, net.output_shape[0], dtype=net.dtype)
    with torch.no_grad():
        correct = (net(X).argmax(1) == y).cpu()

    def verified(eps: torch.Tensor) -> torch.Tensor:
        res = compute_bounds(net, Ball(X, eps.to(net.dtype), p=p, clip=clip), method="crown", C=C)
        return (res.lower > 0).all(dim=1).cpu() & correct

    lo = torch.zeros(B, dtype=torch.float64)
    up = torch.full((B,), float(hi), dtype=torch.float64)
    for _ in range(grow):  # exponential search for an unverified upper end
        ok = verified(up)
        if not ok.any():
            break
        lo = torch.where(ok, up, lo)
        up = torch.where(ok, 2 * up, up)
    for _ in range(iters):
        mid = (lo + up) / 2
        ok = verified(mid)
        lo = torch.where(ok, mid, lo)
        up = torch.where(ok, up, mid)
    return lo


def task_steps(lm, X, y) -> Certificate:
    from .ghosts import step_report
    t0 = time.perf_counter()
    rep = step_report(lm.module, X, y)
    rho = rep.get("rho_a")
    bott = rep.get("bottleneck") or []
    result = StepRadiusResult(direction="negative gradient of the mean cross-entropy", radius=rho,
                              gradient_norm=rep.get("grad_norm"), safe_lr_sgd=rep.get("lr_max_sgd"),
                              bottleneck_index=int(bott[0]) if len(bott) else None)
    ok = rho is not None and math.isfinite(rho) and rho > 0 and rep.get("kind") == "certified"
    notes = ["rho_a = pi / max_x Delta_a(x) lower-bounds the Taylor radius of the cross-entropy along the step "
             "under logit linearization (Ghosts of Softmax, Thm 4.6); a plain SGD step is inside it iff lr < "
             "rho_a / ||g||"]
    if not ok:
        notes.append(f"no radius: {rep.get('status')}")
    return make_certificate(status="certified" if ok else "failed", method="softmax-ghost radius (JVP)",
                            result=result, model=model_ref(lm), parameters={"batch": int(X.shape[0])},
                            total_s=time.perf_counter() - t0, notes=notes)


def controller_certificate(controller, model_name: str = "training run", lm=None) -> Certificate:
    """A step-radius record of a :class:`~certify.controller.SafeStepController` run (its trajectory).

    ``certified`` when every step was an exact-JVP step inside its radius (``r_applied <= 1``).
    """
    recs = [r.to_dict() for r in controller.records]
    traj = [{"rho": r["rho_a"], "step_norm": r["applied_norm"], "proposed": r["step_norm"],
             "r_applied": r["r_applied"], "scale": r["scale"]} for r in recs]
    ok = bool(recs) and all(r["kind"] == "certified" and r["r_applied"] is not None and r["r_applied"] <= 1.0
                            for r in recs)
    last = recs[-1] if recs else {}
    result = StepRadiusResult(direction="optimizer update (clip mode)" if controller.mode == "clip" else
                              "optimizer update (set mode)", radius=last.get("rho_a"), trajectory=traj)
    return make_certificate(status="certified" if ok else "estimate", method=f"safe-step controller ({controller.method})",
                            result=result, model=model_ref(lm) if lm is not None else None,
                            parameters={"mode": controller.mode, "steps": len(recs)},
                            notes=[f"{sum(r['scale'] < 1 for r in recs)} of {len(recs)} steps were clipped to rho_a"]
                            + _engine_notes(recs))


def _engine_notes(recs: list[dict]) -> list[str]:
    """Which engine computed the radii (the step's own autograd graph, forward AD / reverse-over-reverse on the
    replayed forward, or the finite-difference estimate), and why any step did not use the first exact engine."""
    engines: dict[str, int] = {}
    for r in recs:
        if r.get("engine"):
            engines[r["engine"]] = engines.get(r["engine"], 0) + 1
    notes = [f"JVP engine: {', '.join(f'{k} ({v} steps)' for k, v in sorted(engines.items()))}"] if engines else []
    reasons = sorted({r["fallback_reason"] for r in recs if r.get("fallback_reason")})
    if reasons:
        notes.append("fallbacks: " + "; ".join(reasons[:3]))
    return notes


def demo_training_run(steps: int = 60, spike_at: int = 30, spike: float = 1000.0):
    """A short Adam run on digits with a learning-rate spike, under the safe-step controller."""
    from torch import nn
    from ..models.zoo import digits
    from .controller import SafeStepController
    Xtr, ytr = digits("train")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.LayerNorm(64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    ctl = SafeStepController(model, opt, mode="clip")
    g = torch.Generator().manual_seed(1)
    for t in range(steps):
        for group in opt.param_groups:
            group["lr"] = 1e-3 * (spike if t == spike_at else 1.0)
        idx = torch.randint(0, len(Xtr), (128,), generator=g)
        loss = nn.functional.cross_entropy(model(Xtr[idx]), ytr[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    ctl.detach()
    return controller_certificate(ctl, "digits MLP+LN, Adam with a 1000x LR spike")


def toy_game():
    """The two-player toy of the SGN reference: Jacobian [[1, 10], [0.05, 1]] (Euclidean margin -4.025)."""
    from .games import QuadraticGame
    return QuadraticGame([[1.0, 10.0], [0.05, 1.0]], dims=[1, 1]), None


def _check_game(factory: str, game, region) -> None:
    """The factory's result must be a game (and an optional region): one line naming what it returned."""
    from .games import Ball, Box, Game
    if not isinstance(game, Game):
        raise InvalidArgumentError(f"game factory {factory}: returned {type(game).__name__}, not a game "
                                   f"(nncertify.certify.games.Game / QuadraticGame, or (game, region))")
    if region is not None and not isinstance(region, (Box, Ball)):
        raise InvalidArgumentError(f"game factory {factory}: the region is a {type(region).__name__}, not a "
                                   f"nncertify.certify.games Box or Ball")


def task_game(factory: str, mode: str = "certified") -> Certificate:
    from .games import certify_game
    if mode not in ("certified", "estimate"):
        raise InvalidArgumentError(f"--mode {mode!r}: use certified or estimate")
    t0 = time.perf_counter()
    if factory == "toy":
        game, region = toy_game()
    else:
        if ":" not in factory:
            raise InvalidArgumentError(f"{factory!r}: expected MODULE:FACTORY (or 'toy')")
        from ..models.factory import import_callable
        f = import_callable(factory, "game factory", InvalidArgumentError)
        try:
            out = f()
        except NNCertifyError:
            raise
        except Exception as exc:  # the user's factory failed: bad input, not our bug
            msg = " ".join(str(exc).split())[:200]
            raise InvalidArgumentError(f"game factory {factory}: raised {type(exc).__name__}: {msg}") from None
        game, region = out if isinstance(out, tuple) and len(out) == 2 else (out, None)
        _check_game(factory, game, region)
    cert = certify_game(game, region, mode=mode)
    d = cert.to_dict()
    result = GameResult(players=cert.n_players, weights=d.get("weights"), margin=d.get("margin"), rate=d.get("rate"),
                        beta=d.get("beta"), euler_step=d["euler"].get("h_max"), rk4_step=d["rk4"].get("h_max"),
                        band=d.get("band") if d.get("band") and None not in d["band"] else None,
                        constants={"gain_spectral_radius": d.get("gain_spectral_radius"),
                                   "euclidean_margin": d.get("euclidean_margin"), "region": d.get("region"),
                                   "euler": d["euler"], "rk4": d["rk4"]},
                        reason=cert.reason or None)
    status = {"certified": "certified", "estimate": "estimate"}.get(cert.status, "failed")
    return make_certificate(status=status, method=f"SGN ({mode})", result=result,
                            parameters={"factory": factory, "mode": mode}, total_s=time.perf_counter() - t0,
                            notes=[cert.reason] if cert.reason else [])


# ------------------------------------------------------------------------------------------ batch + demo
def run_unit(unit: dict) -> Certificate:
    """Execute one batch unit (see :mod:`certify.batch`)."""
    lm = resolve_model(unit["model"])
    p = dict(unit.get("params", {}))
    task = unit["task"]
    if task == "global":
        return task_global(lm, **p)
    X, y = resolve_data(None if unit.get("data") in (None, "zoo:digits") else unit["data"], lm.network, None,
                        unit["stop"])
    X, y = X[unit["start"]:unit["stop"]], y[unit["start"]:unit["stop"]] if y is not None else None
    if task == "robustness":
        return task_robustness(lm, X, y, **p)
    if task == "lipschitz":
        i = p.pop("index", 0)
        return task_lipschitz(lm, X[i], index=unit["start"] + i, **p)
    if task == "steps":
        return task_steps(lm, X, y)
    raise InvalidArgumentError(f"unknown task {task!r}")


def run_demo(out, model: str = "digits_relu_mlp", samples: int = 50, echo=print,
             time_limit: float | None = None) -> dict:
    """The embedded default: certify a zoo model with every method and write a report.

    ``time_limit`` (s): budget of each of the two long parts, the global SDP (default
    :data:`DEFAULT_GLOBAL_TIME_LIMIT`) and the local Lipschitz constant (default: none)."""
    time_limit = check_time_limit(time_limit)
    out = Path(out)
    lm = resolve_model(model)
    X, y = resolve_data(None, lm.network, None, samples)
    with single_thread():  # zoo-sized models: measured under load, the training run took 20.6 s on 2 threads, 0.65 s on 1
        return _demo_parts(lm, X, y, out, model, time_limit, echo)


def _demo_parts(lm, X, y, out, model, time_limit, echo) -> dict:
    from .report import write_report
    certs = []

    def add(name, cert):
        certs.append(cert)
        cert.save(out / "certificates" / f"{name}.json")
        from .verdict import describe
        what, res = describe(cert)
        echo(f"[{cert.status:>9}] {what}: {res}")

    add("global_l2", task_global(lm, norm="2", time_limit=DEFAULT_GLOBAL_TIME_LIMIT if time_limit is None else time_limit))
    for eps in (0.01, 0.02, 0.04):
        add(f"robustness_linf_{eps}", task_robustness(lm, X, y, eps=eps, norm="inf", clip=(0.0, 1.0)))
    add("local_lipschitz_linf", task_lipschitz(lm, X[0], eps=0.02, norm="inf", bab_timeout=5.0, index=0,
                                               time_limit=time_limit))
    add("step_radius", task_steps(lm, X, y))
    add("training_run", demo_training_run())
    add("game_toy", task_game("toy"))
    return write_report(certs, out, title=f"nncertify demo: {model}")
