"""Public entry point: :func:`lipschitz_bound` (one table from method name to handler)."""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from ..models.errors import InvalidArgumentError, UnsupportedOperationError
from ..models.graph import Network

from . import solve as _solve
from . import verify as V
from .certificate import LipschitzEstimate, SDPCertificate
from .first_order import optimize_sector
from .formulations.common import row_space_reduction
from .threads import single_thread
from .structure import GROUP_ACTS, SLOPE_RESTRICTED, LayerList, extract, lift, pow2_normalize, scale_up

# linear-algebra breakdowns (eigen/SVD/Cholesky not converging on extreme or ill-conditioned weights):
# a failed, uncertified result with the reason, never a raw exception
NUMERIC_ERRORS = (np.linalg.LinAlgError, torch.linalg.LinAlgError, FloatingPointError, OverflowError)

METHODS = ("auto", "lipsdp-neuron", "lipsdp-layer", "lifted", "nsr")
# LipSDP-Network (coupled multipliers zeta_ij (e_i - e_j)(e_i - e_j)^T) is deliberately absent: unsound for ReLU.


def _np(t):
    return t.detach().to("cpu", torch.float64).numpy()


def _norm(norm):
    if norm in (2, 2.0, "2", "l2"):
        return 2
    if norm in ("inf", "linf", math.inf, float("inf")):
        return "inf"
    raise InvalidArgumentError(f"norm must be 2 or 'inf', got {norm!r}")


# ----------------------------------------------------------------------------- verification drivers
def certify_sector(blocks_np, W_out, norm, mult) -> float | None:
    """Certified rho (l2: bound is sqrt) / L_inf from sector multipliers, or None."""
    lams = mult["lam"]
    if norm == 2:
        Q = V.output_storage_l2(W_out)
    else:
        QK = mult.get("QK")
        if QK is None or not np.all(np.isfinite(QK)):
            return None
        Q = 0.5 * (QK + QK.T)
        ev = np.linalg.eigvalsh(Q)
        Q = Q + (max(0.0, -ev[0]) + 1e-9 * max(abs(ev[-1]), 1e-300)) * np.eye(Q.shape[0])
        mult["QK"] = Q
    for k in range(len(blocks_np) - 1, -1, -1):
        r = V.sector_stage(Q, blocks_np[k], lams[k] if lams[k] is not None else np.zeros(0))
        if r is None:
            return None
        Q, lam = r
        lams[k] = lam
    if norm == 2:
        return V.finish_l2(Q)
    if mult.get("tau") is None:
        return None
    r = V.finish_linf(Q, mult["tau"], 0.5 * (mult["QK"] + mult["QK"].T), W_out.reshape(-1))
    if r is None:
        return None
    mult["tau"] = r[1]
    return r[0]


def _groups(h) -> np.ndarray:
    """(n, N) group indicator of a MaxMin/GroupSort layer (:func:`models.groups.activation_groups`:
    channels at each pixel after a convolution, consecutive features after a linear layer)."""
    return h.act_groups().indicator(torch.float64).numpy()


def certify_nsr(Ws, Ms, W_out, norm, mult) -> float | None:
    lams, gams = mult["lam"], mult["gam"]
    if norm == 2:
        Q = V.output_storage_l2(W_out)
    else:
        lamK = np.maximum(lams[-1], 4 * V.U * np.abs(gams[-1]) + 1e-300)
        if not (np.all(np.isfinite(lamK)) and np.all(np.isfinite(gams[-1]))):
            return None
        QK = V.nsr_T(lamK, gams[-1], Ms[-1])
        Q = QK
    for k in range(len(Ws) - 1, -1, -1):
        r = V.nsr_stage(Q, Ws[k], Ms[k], lams[k], gams[k])
        if r is None:
            return None
        Q, (lams[k], gams[k]) = r
    if norm == 2:
        return V.finish_l2(Q)
    if mult.get("tau") is None:
        return None
    r = V.finish_linf(Q, mult["tau"], QK, W_out.reshape(-1))
    if r is None:
        return None
    mult["tau"] = r[1]
    return r[0]


# ----------------------------------------------------------------------------- method handlers
def _run_sector(layers: LayerList, norm, per_layer, solver, time_limit, eps, iters):
    blocks_t = lift(layers)
    blocks = [tuple(_np(x) for x in (b.C, b.D, b.G, b.alpha, b.beta)) for b in blocks_t]
    W_out = _np(layers.W_out)
    sizes = [b[1].shape[1] + b[0].shape[0] for b in blocks]
    if blocks and norm == 2:
        sizes[0] = min(sizes[0], blocks[0][0].shape[0] + blocks[0][1].shape[0] + blocks[0][0].shape[0])
    fo = str(solver).upper() == "FIRST_ORDER" if solver is not None else False
    if solver is None or str(solver).lower() == "auto":
        if norm == 2 and not per_layer and not _solve.mosek_licensed() and (
                max(sizes, default=0) > _solve.CLARABEL_MAX_CONE or sum(sizes) > 150):
            fo = True
    if (solver is None or str(solver).lower() == "auto") and norm == "inf" and blocks and not per_layer \
            and not _solve.mosek_licensed() and (max(sizes, default=0) > _solve.CLARABEL_MAX_CONE or sum(sizes) > 150):
        fo = True  # l_inf: the cvxpy form has an n0-wide first cone (784 for MNIST); see sdp/linf.py
    auto = solver is None or str(solver).lower() == "auto"
    if auto and not fo and not per_layer and blocks and not _solve.fits(
            "CLARABEL" if max(sizes, default=0) <= _solve.CLARABEL_MAX_CONE else "SCS", sizes) \
            and not _solve.fits("SCS", sizes):
        fo = True  # the cvxpy solve would not fit in memory: the first-order path forms no PSD cone
    if fo and norm == "inf" and not per_layer and blocks:
        from .linf import run_sector_linf
        return run_sector_linf(blocks_t, layers.W_out, iters, time_limit)
    if fo:
        if norm != 2 or per_layer:
            raise InvalidArgumentError("solver='FIRST_ORDER' supports norm=2 with per-neuron multipliers only")
        dev = layers.W_out.device
        tb = [tuple(x.to(dev) for x in (b.C, b.D, b.G, b.alpha, b.beta)) for b in blocks_t]
        if tb:
            C0, D0 = tb[0][0], tb[0][1]
            Vr = torch.as_tensor(row_space_reduction(_np(torch.cat([C0, D0]))), dtype=C0.dtype, device=dev)
            tb[0] = (C0 @ Vr, D0 @ Vr) + tb[0][2:]
        lams, rho, dt, _ = optimize_sector(tb, layers.W_out, iters=iters, time_limit=time_limit)
        mult = {"lam": lams}
        status = "time_limit" if time_limit and dt >= time_limit else "done"  # its best iterate is verified
        return "FIRST_ORDER" if iters > 0 else "CLOSED_FORM", status, rho, dt, mult, \
            (lambda m: certify_sector(blocks, W_out, 2, m))
    if not auto:
        _solve.memory_guard(str(solver).upper(), sizes)  # refuse before the cvxpy problem is even built
    from .formulations.sector import build_sector  # (cvxpy: imported only for a cvxpy solve)
    built = build_sector(blocks, W_out, norm, per_layer=per_layer)
    s = _solve.choose_solver(solver, built.cone_sizes)
    res = _solve.run(built.problem, s, time_limit, eps)
    mult = built.read()
    return s, res.status, res.raw_value, res.solve_time, mult, (lambda m: certify_sector(blocks, W_out, norm, m))


def _run_residual_nsr(layers: LayerList, norm, solver, time_limit, eps, variant):
    from .formulations.residual_nsr import build_residual_nsr
    hs = layers.hidden
    ok = (norm == 2 and len(hs) >= 2 and hs[0].act == "identity" and not hs[0].residual
          and all(h.residual and h.act == "maxmin" and h.W2 is None for h in hs[1:]))
    if not ok:
        raise UnsupportedOperationError(
            "method 'nsr' on residual nets needs x0 = W_in u, x_k = x_{k-1} + MaxMin(W_k x_{k-1}), y = W_out x_m "
            "and norm=2 (Pauli et al.); use method='lifted' for anything else")
    Ws = [_np(h.W) for h in hs[1:]]
    Mg = np.zeros((len(Ws) * Ws[0].shape[0], len(Ws) * Ws[0].shape[0] // 2))
    nx = Ws[0].shape[0]
    for k, h in enumerate(hs[1:]):
        Mg[k * nx:(k + 1) * nx, k * nx // 2:(k + 1) * nx // 2] = _groups(h)
    from .baselines import norm2_up
    outer = norm2_up(_np(hs[0].W)) * norm2_up(_np(layers.W_out))
    built = build_residual_nsr(Ws, Mg, variant)
    s = _solve.choose_solver(None if str(solver).upper() == "FIRST_ORDER" else solver, built.cone_sizes)
    res = _solve.run(built.problem, s, time_limit, eps)
    mult = built.read()
    raw = res.raw_value * outer ** 2 if res.raw_value == res.raw_value else res.raw_value

    def certify(m):
        r = V.certify_residual_nsr(Ws, Mg, m)
        return None if r is None else V.round_up(r * V.round_up(outer * outer) * (1 + 4 * V.U))
    return s, res.status, raw, res.solve_time, mult, certify


def _run_nsr(layers: LayerList, norm, solver, time_limit, eps, iters, variant="Szero"):
    if any(h.residual for h in layers.hidden):
        return _run_residual_nsr(layers, norm, solver, time_limit, eps, variant)
    if any(h.act == "householder" for h in layers.hidden):
        from .householder_nsr import run_householder_nsr  # Lemma 2 of Pauli et al. (l2, feed-forward)
        return run_householder_nsr(layers, norm, solver, time_limit, eps)
    for h in layers.hidden:
        if h.residual or h.act not in ("maxmin", "groupsort"):
            raise UnsupportedOperationError(
                f"layer {h.path}: method 'nsr' needs a feed-forward MaxMin/GroupSort chain and c = None or a "
                f"signed unit vector (got {h.act}"
                f"{', residual' if h.residual else ''}); use method='lifted'")
    if not layers.hidden:
        raise UnsupportedOperationError("method 'nsr' needs at least one hidden layer")
    Ws = [_np(h.W) for h in layers.hidden]
    Ms = [_groups(h) for h in layers.hidden]
    W_out = _np(layers.W_out)
    if norm == "inf" and str(solver).upper() == "FIRST_ORDER":
        from .linf import run_nsr_linf  # first-order l_inf NSR (no n0-wide cone); see sdp/linf.py
        return run_nsr_linf(Ws, Ms, W_out, iters, time_limit)
    if norm == 2 and str(solver).upper() == "FIRST_ORDER":
        from .linf import run_nsr_l2  # same multiplicative first-order chain, l2 objective; proof: certify_nsr
        return run_nsr_l2(Ws, Ms, W_out, iters, time_limit, lambda m: certify_nsr(Ws, Ms, W_out, 2, m))
    from .formulations.nsr import build_nsr  # (cvxpy: imported only for a cvxpy solve)
    built = build_nsr(Ws, Ms, W_out, norm)
    try:
        s = _solve.choose_solver(None if str(solver).upper() == "FIRST_ORDER" else solver, built.cone_sizes)
    except _solve.SolverMemoryError:
        if not (solver is None or str(solver).lower() == "auto"):
            raise
        from .linf import run_nsr_l2, run_nsr_linf  # route: no PSD cone is formed on the first-order path
        if norm == "inf":
            return run_nsr_linf(Ws, Ms, W_out, iters, time_limit)
        return run_nsr_l2(Ws, Ms, W_out, iters, time_limit, lambda m: certify_nsr(Ws, Ms, W_out, 2, m))
    res = _solve.run(built.problem, s, time_limit, eps)
    mult = built.read()
    return s, res.status, res.raw_value, res.solve_time, mult, (lambda m: certify_nsr(Ws, Ms, W_out, norm, m))


def _zero_layer(layers: LayerList) -> str | None:
    """The path of a feed-forward (non-residual) hidden matrix or the output matrix that is exactly zero
    (then the output does not depend on the input), else None."""
    for h in layers.hidden:
        if not h.residual and not bool(h.W.any()):
            return f"layer {h.path}"
    return None if bool(layers.W_out.any()) else "the output layer"


def _check_acts(layers, allowed, method):
    for h in layers.hidden:
        if h.act not in allowed:
            raise UnsupportedOperationError(
                f"layer {h.path}: activation {h.act!r} is not slope-restricted; method {method!r} needs "
                f"{', '.join(allowed)} (use method='lifted' or 'nsr')")


def lipschitz_bound(net: Network, norm=2, method: str = "auto", solver: str | None = None, c=None,
                    time_limit: float | None = None, eps: float | None = None,
                    first_order_iters: int = 300, residual_variant: str = "Szero",
                    time_budget: float | None = None) -> SDPCertificate:
    """Certified global Lipschitz upper bound of ``f`` (or of ``c^T f``) by semidefinite programming.

    ``norm``: 2 (l2 -> l2) or ``"inf"`` (l_inf -> |.|, needs a scalar output or ``c``).
    ``method``: ``"lipsdp-neuron"`` / ``"lipsdp-layer"`` (slope-restricted activations), ``"lifted"``
    (exact one-ReLU-per-comparator form: MaxMin, GroupSort via sorting networks, Householder,
    residual blocks; equals LipSDP-Neuron for ReLU nets), ``"nsr"`` (Pauli et al. 2024 constraint,
    feed-forward MaxMin/GroupSort), ``"auto"`` (lifted; for feed-forward MaxMin / GroupSort /
    Householder chains also NSR, and the smaller *certified* value wins).  ``method="nsr"`` on the
    paper's residual nets uses its residual LMI (``residual_variant``: "PSzero", "Szero" (P free, default) or "Pzero") and reports, like the
    paper, sqrt(rho) ||W_in|| ||W_out|| (norms certified).
    ``solver``: ``"MOSEK" | "CLARABEL" | "SCS" | "CVXOPT" | "FIRST_ORDER" | None/"auto"``.
    ``"FIRST_ORDER"`` (and "auto" for l_inf on wide inputs) never forms the input-wide cone: l_inf
    reduces exactly to the l2 chain for the scalar output plus a diagonal majorant of its input
    storage matrix (:mod:`sdp.linf`); with ``method="nsr"`` it runs the paper's constraint through
    the first-order optimiser of :mod:`sdp.first_order_linf` for both norms.  Householder nets with
    ``method="nsr"`` use Lemma 2 of Pauli et al. (:mod:`sdp.householder_nsr`).
    ``c``: output direction, e.g. ``e_i - e_j`` for margin certificates (radius = margin / L).
    ``time_limit``: the solver's own limit (s): CLARABEL / SCS / MOSEK get it as their time limit, the
    first-order loops stop at it and verify their best iterate (status "time_limit", still certified);
    cvxpy's compilation and the float64 verification are not counted.  ``time_budget``: a hard wall-clock limit (s) on the
    whole call, enforced by running the solve in a killable child process (:mod:`sdp.budget`); at
    the budget the result has status "failed", ``solver_status="time_budget"``.
    Guarantee: if ``status == "certified"``, ``certified_value`` >= the true Lipschitz constant; it
    is recomputed from the (repaired) multipliers and proven in float64, never copied from the solver.
    """
    with single_thread():  # small dense linear algebra throughout (sdp/threads.py: 13 s vs < 1 s under load)
        return _lipschitz_bound(net, norm, method, solver, c, time_limit, eps, first_order_iters, residual_variant,
                                time_budget)


def _lipschitz_bound(net, norm, method, solver, c, time_limit, eps, first_order_iters, residual_variant,
                     time_budget) -> SDPCertificate:
    t_start = time.perf_counter()
    if time_budget is not None and not (isinstance(time_budget, (int, float)) and math.isfinite(time_budget)
                                        and time_budget > 0):
        raise InvalidArgumentError(f"time_budget must be a positive number of seconds, got {time_budget!r}")
    norm = _norm(norm)
    if method not in METHODS:
        raise InvalidArgumentError(f"method must be one of {', '.join(METHODS)}; got {method!r}"
                                   + (" (LipSDP-Network is unsound for ReLU and not provided)"
                                      if "network" in str(method).lower() else ""))
    if time_limit is not None and not (time_limit > 0):
        raise InvalidArgumentError(f"time_limit must be positive, got {time_limit!r}")
    net.check_finite()
    layers = extract(net, c)
    if norm == "inf" and layers.W_out.shape[0] != 1:
        raise InvalidArgumentError("norm='inf' bounds a scalar output: pass c (e.g. a logit or e_i - e_j)")
    naive = layers.naive_spectral_product() if norm == 2 else layers.naive_inf_product()
    if time_budget is not None:
        from .budget import run_with_budget
        kw = dict(norm=norm, method=method, solver=solver, c=c, time_limit=time_limit, eps=eps,
                  first_order_iters=first_order_iters, residual_variant=residual_variant)
        return run_with_budget(net, kw, time_budget, naive, start=t_start)
    zero = _zero_layer(layers)
    if zero is not None:  # f (or c^T f) is constant: its Lipschitz constant is exactly 0
        return SDPCertificate(0.0, 0.0, "certified", "EXACT", 0.0, method, norm, naive, {}, 0.0, "done",
                              f"{zero} is exactly zero, so the network is constant: L = 0")
    scaled, E = pow2_normalize(layers)
    if method == "auto":
        if layers.hidden and all(h.act in GROUP_ACTS and not h.residual for h in layers.hidden):
            return _best_verified(net, norm, solver, c, time_limit, eps, first_order_iters)
        method = "lifted"
    if method in ("lipsdp-neuron", "lipsdp-layer"):
        _check_acts(layers, SLOPE_RESTRICTED, method)
        run = lambda: _run_sector(scaled, norm, method == "lipsdp-layer", solver, time_limit, eps, first_order_iters)
    elif method == "lifted":
        run = lambda: _run_sector(scaled, norm, False, solver, time_limit, eps, first_order_iters)
    else:
        if residual_variant not in ("PSzero", "Szero", "Pzero"):
            raise InvalidArgumentError(f"residual_variant must be PSzero, Szero or Pzero; got {residual_variant!r}")
        run = lambda: _run_nsr(scaled, norm, solver, time_limit, eps, first_order_iters, residual_variant)
    try:
        sname, sstatus, raw, st, mult, certify = run()
    except NUMERIC_ERRORS as exc:  # eigen/SVD/Cholesky breakdown on extreme weights: no answer, one reason
        return SDPCertificate(float("nan"), None, "failed", str(solver or "auto"), time.perf_counter() - t_start,
                              method, norm, naive, {}, 0.0, "numerical_error",
                              f"numerical failure before verification ({type(exc).__name__}: {str(exc)[:160]})")
    t0 = time.perf_counter()
    try:
        rho = certify(mult)
    except (*NUMERIC_ERRORS, ValueError) as exc:
        rho, msg = None, f"verification error: {exc}"
    else:
        msg = "" if rho is not None else "multipliers could not be repaired into a proven certificate"
    vt = time.perf_counter() - t0
    if norm == 2:
        raw_b = scale_up(math.sqrt(raw), E) if raw == raw and raw >= 0 else float("nan")
        cert = None if rho is None else scale_up(V.sqrt_up(rho), E)
    else:
        raw_b = scale_up(raw, E) if raw == raw else float("nan")
        cert = None if rho is None else scale_up(rho, E)
    if cert is not None and not math.isfinite(cert):
        cert, msg = None, "the certified bound overflows float64 (weights of extreme scale)"
    if cert is not None and sstatus == "time_limit":
        msg = (msg + "; " if msg else "") + (f"time limit: the first-order solve was stopped after {st:.2f} s and "
                                             f"its best iterate is the one verified (a full solve may be tighter)")
    return SDPCertificate(raw_b, cert, "certified" if cert is not None else "failed", sname, st, method, norm,
                          naive, mult, vt, sstatus, msg)


def _best_verified(net, norm, solver, c, time_limit, eps, first_order_iters) -> SDPCertificate:
    """``method="auto"`` on feed-forward MaxMin / GroupSort / Householder chains: the lifted form and the NSR
    constraint are both run and the smallest *certified* value is returned (in exact arithmetic lifted is at
    least as tight, but the repaired float64 proofs, the sorting-network rounds of GroupSort(g > 2) and the
    first-order paths can reverse that); never a looser value than another verified candidate."""
    t0 = time.perf_counter()  # a time limit is shared: lifted gets half, nsr what is left
    cands = [lipschitz_bound(net, norm, "lifted", solver, c, None if time_limit is None else 0.5 * time_limit,
                             eps, first_order_iters)]
    left = None if time_limit is None else max(0.05, time_limit - (time.perf_counter() - t0))
    try:
        cands.append(lipschitz_bound(net, norm, "nsr", solver, c, left, eps, first_order_iters))
    except (UnsupportedOperationError, InvalidArgumentError) as exc:
        cands[0].message = (cands[0].message + "; " if cands[0].message else "") + f"nsr not applicable: {exc}"
    ok = [x for x in cands if x.certified]
    if not ok:
        return cands[0]
    best = min(ok, key=lambda x: x.certified_value)
    others = ", ".join(f"{x.method} {x.certified_value:.6g}" if x.certified else f"{x.method} failed"
                       for x in cands if x is not best)
    if others:
        best.message = (best.message + "; " if best.message else "") + f"auto: best of lifted/nsr (other: {others})"
    return best


def margin_lipschitz(net: Network, i: int, j: int, **kw) -> SDPCertificate:
    """Lipschitz bound of the logit difference (e_i - e_j)^T f: a certified radius is margin / L."""
    q = net.output_shape[0] if net.output_shape else 1
    if not (0 <= i < q and 0 <= j < q) or i == j:
        raise InvalidArgumentError(f"need two different output indices in [0, {q}), got {i}, {j}")
    c = torch.zeros(q, dtype=torch.float64)
    c[i], c[j] = 1.0, -1.0
    return lipschitz_bound(net, c=c, **kw)


def sampled_lower_bound(net: Network, norm=2, c=None, n: int = 2000, seed: int = 0, scale: float = 1.0,
                        batch: int = 500, time_limit: float | None = None) -> LipschitzEstimate:
    """max over random points of the dual norm of the gradient of c^T f (or the spectral norm of the
    Jacobian for vector f, via power iteration): a heuristic LOWER estimate, never a certificate.
    ``time_limit`` (s): no new batch starts after it (at least one batch runs); ``n`` reports the points used."""
    norm = _norm(norm)
    g = torch.Generator(device="cpu").manual_seed(seed)
    best = 0.0
    dt, dev = net.dtype, net.device
    shape = net.input_shape
    t0 = time.perf_counter()
    used = 0
    for s in range(0, n, batch):
        if used and time_limit is not None and time.perf_counter() - t0 > time_limit:
            break
        used += min(batch, n - s)
        x = (torch.randn((min(batch, n - s), *shape), generator=g, dtype=torch.float64) * scale).to(dev, dt)
        x.requires_grad_(True)
        y = net(x)
        if c is not None or y.shape[1] == 1:
            cc = torch.as_tensor(c, dtype=y.dtype, device=dev) if c is not None else torch.ones(1, dtype=y.dtype, device=dev)
            (gr,) = torch.autograd.grad((y @ cc).sum(), x)
            gr = gr.reshape(gr.shape[0], -1)
            val = gr.norm(dim=1) if norm == 2 else gr.abs().sum(dim=1)
        else:
            if norm != 2:
                raise InvalidArgumentError("norm='inf' estimates need c")
            # one backward pass per output (not torch.func.vmap: its first call imports torch._dynamo, ~2-3 s)
            y = y.reshape(y.shape[0], -1)
            J = torch.stack([torch.autograd.grad(y[:, i].sum(), x, retain_graph=i + 1 < y.shape[1])[0]
                             .reshape(y.shape[0], -1) for i in range(y.shape[1])], dim=1)
            val = torch.linalg.matrix_norm(J, 2)
        best = max(best, float(val.max()))
    return LipschitzEstimate(best, norm, used, "max gradient norm at random points")
