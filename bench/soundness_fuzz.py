"""Soundness fuzzing across all methods: every certified quantity against an independent truth.

    python bench/soundness_fuzz.py [--pairs 10000] [--conv-pairs 2000] [--seed 0] [--time-budget 1200]

Random networks (depth 1-6, widths 2-64, ReLU / LeakyReLU / Tanh / Sigmoid / MaxMin / GroupSort /
Householder, residual blocks, float32 and float64) on random regions (l_inf boxes, l2 and l1 balls,
radii 1e-4..1, degenerate eps = 0, clipped boxes).  A *pair* is one (certified quantity, instance);
a *violation* is a pair where the certificate is beaten by its truth:

| method          | certified quantity                       | independent truth                                  |
|-----------------|------------------------------------------|----------------------------------------------------|
| ibp/crown/alpha | output bounds on the region              | outputs at sampled, vertex and boundary points (f64)|
| local_lipschitz | upper bound of the local constant        | Jacobian norms at sampled points (autograd, f64)    |
| bab_exact       | BaB-to-completion value, tiny ReLU nets  | MILP oracle (HiGHS), and sampled gradients          |
| lipsdp          | certified global l2 bound (small nets)   | spectral norms of sampled Jacobians                 |
| ghost_radius    | rho_a = pi / Delta_a                     | nearest complex zero of the partition function (polynomial roots) |
| ghost_binary    | exact binary radius                      | the same roots: must agree to 1e-6                  |
| sgn             | margin, Euler factor, certified steps    | metric monotonicity by sampling, exact step-operator norm, simulated Euler |
| controller      | certified safe steps: r_applied <= 1 and the recorded radius along the applied step | JVP of a float64 copy (float32 dual tensors under the forward's RNG state when it draws random numbers) along the displacement measured from parameter snapshots, over every micro-batch |
| conv:sdp_*, conv:mp_*, conv:fallback | global l2 / l_inf bounds of conv nets (every lipschitz_bound method) | secant + gradient-ascent pair ratios |
| conv:local_*    | local_lipschitz (crown/recurjac/ibp/naive/lipsdp), l2 and l_inf, on a box | secant + gradient-ascent pair ratios inside the box |

Writes bench/results/soundness_fuzz.json and .md.  ``run()`` is also called by the tests with a
small seeded budget.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nncertify import models
from nncertify import relax
from nncertify.models import GroupSort, HouseholderActivation, MaxMin, Residual

ACTS = ("relu", "leaky_relu", "tanh", "sigmoid", "maxmin", "groupsort", "householder")


def _act(kind: str, width: int, rng: np.random.Generator) -> nn.Module:
    if kind == "relu":
        return nn.ReLU()
    if kind == "leaky_relu":
        return nn.LeakyReLU(float(rng.uniform(0.01, 0.3)))
    if kind == "tanh":
        return nn.Tanh()
    if kind == "sigmoid":
        return nn.Sigmoid()
    if kind == "maxmin":
        return MaxMin("pairs" if rng.random() < 0.7 else "halves")
    if kind == "groupsort":
        return GroupSort(4 if width % 4 == 0 else 2, descending=bool(rng.random() < 0.5))
    return HouseholderActivation(width, 2, torch.tensor(rng.standard_normal((width // 2, 2)), dtype=torch.float32))


def random_network(rng: np.random.Generator, max_width: int = 64, max_depth: int = 6):
    depth = int(rng.integers(1, max_depth + 1))
    act = str(rng.choice(ACTS))
    width = int(rng.choice([2, 4, 8, 16, 32, 64]))
    width = min(width, max_width)
    in_dim = int(rng.integers(2, 9))
    out_dim = int(rng.integers(2, 6))
    residual = bool(rng.random() < 0.25) and depth >= 2
    torch.manual_seed(int(rng.integers(0, 2 ** 31)))
    layers: list[nn.Module] = [nn.Linear(in_dim, width), _act(act, width, rng)]
    for _ in range(depth - 1):
        if residual:
            layers.append(Residual(nn.Sequential(nn.Linear(width, width), _act(act, width, rng))))
        else:
            layers += [nn.Linear(width, width), _act(act, width, rng)]
    layers.append(nn.Linear(width, out_dim))
    module = nn.Sequential(*layers).eval()
    dtype = torch.float64 if rng.random() < 0.5 else torch.float32
    module = module.to(dtype)
    net = models.from_module(module, (in_dim,))
    # the certified function is the normalized description; its float64 evaluation is the truth
    module = net.to(torch.float64).to_module(requires_grad=False)
    desc = f"{act} d{depth} w{width} in{in_dim} out{out_dim}{' res' if residual else ''} {str(dtype)[6:]}"
    return module, net, desc


def random_region(rng: np.random.Generator, net, dtype):
    n = net.input_shape[0]
    center = torch.tensor(rng.standard_normal((1, n)), dtype=dtype)
    p = [math.inf, 2, 1][int(rng.integers(0, 3))]
    r = rng.random()
    eps = 0.0 if r < 0.03 else float(10 ** rng.uniform(-4, 0))
    clip = None
    if p == math.inf and rng.random() < 0.3:
        lo = float(center.min()) - float(rng.uniform(0, 0.5))
        hi = float(center.max()) + float(rng.uniform(0, 0.5))
        clip = (lo, hi)
    return relax.Ball(center, eps, p=p, clip=clip), (center, eps, p, clip)


def sample_region(info, m: int, rng: np.random.Generator) -> torch.Tensor:
    """Points of the region: interior, boundary and vertices, in float64."""
    center, eps, p, clip = info
    c = center.double()[0]
    n = c.numel()
    g = torch.Generator().manual_seed(int(rng.integers(0, 2 ** 31)))
    if p == math.inf:
        u = 2 * torch.rand(m, n, generator=g, dtype=torch.float64) - 1
        k = m // 4
        u[:k] = torch.sign(u[:k])  # vertices
        x = c + eps * u
        if clip is not None:
            x = x.clamp(clip[0], clip[1])
        return x
    if p == 2:
        d = torch.randn(m, n, generator=g, dtype=torch.float64)
        d = d / d.norm(dim=1, keepdim=True)
        rad = torch.rand(m, 1, generator=g, dtype=torch.float64) ** (1.0 / n)
        rad[: m // 3] = 1.0  # boundary
        return c + eps * (1 - 1e-12) * rad * d
    e = -torch.log(torch.rand(m, n, generator=g, dtype=torch.float64))
    d = e / e.sum(dim=1, keepdim=True) * torch.sign(torch.randn(m, n, generator=g, dtype=torch.float64))
    rad = torch.rand(m, 1, generator=g, dtype=torch.float64) ** (1.0 / n)
    x = c + eps * (1 - 1e-12) * rad * d
    k = min(2 * n, m // 4)
    for j in range(k):  # vertices +-eps e_i
        x[j] = c
        x[j, (j // 2) % n] += eps * (1 - 1e-12) * (1 if j % 2 == 0 else -1)
    return x


class Tally:
    def __init__(self):
        self.data: dict[str, dict] = {}

    def add(self, method: str, ok: bool, detail: str = "", skipped: bool = False):
        d = self.data.setdefault(method, {"pairs": 0, "violations": 0, "skipped": 0, "examples": []})
        if skipped:
            d["skipped"] += 1
            return
        d["pairs"] += 1
        if not ok:
            d["violations"] += 1
            if len(d["examples"]) < 5:
                d["examples"].append(detail)

    @property
    def pairs(self):
        return sum(d["pairs"] for d in self.data.values())


def check_forward(t: Tally, net, module, region, info, desc, rng, methods=("ibp", "crown", "alpha-crown")):
    x = sample_region(info, 600, rng)
    with torch.no_grad():
        y = module(x)
    for m in methods:
        try:
            b = relax.compute_bounds(net, region, method=m, alpha_iters=5)
        except models.UnsupportedOperationError:
            t.add(m, True, skipped=True)
            continue
        lo, hi = b.lower[0].double(), b.upper[0].double()
        tol = 1e-9 * (1 + y.abs())
        ok = bool((y >= lo - tol).all() and (y <= hi + tol).all() and torch.isfinite(lo).all() and torch.isfinite(hi).all())
        t.add(m, ok, f"{desc}: {m} bound violated by {float(torch.maximum(lo - y, y - hi).max()):.3g}")


def _jacobians(module, x) -> torch.Tensor:
    """(N, out, in) Jacobians of the float64 module at the rows of x."""
    return torch.func.vmap(torch.func.jacrev(lambda z: module(z[None])[0]))(x)


def _jac_norms(module, x, p) -> torch.Tensor:
    J = _jacobians(module, x)
    ordp = {math.inf: math.inf, 2: 2, 1: 1}[p]
    return torch.linalg.matrix_norm(J, ord=ordp)


def _lipschitz_or_tally(t: Tally, family: str, label: str, net, region, **kw):
    """``local_lipschitz(net, region, **kw)``, or None once the case is tallied: unsupported -> skipped; the
    library's own ``lower <= upper`` self-check firing (RuntimeError) -> a violation."""
    from nncertify.relax.lipschitz import local_lipschitz
    try:
        return local_lipschitz(net, region, **kw)
    except (models.UnsupportedOperationError, NotImplementedError):
        t.add(family, True, skipped=True)
    except RuntimeError as exc:
        t.add(family, False, f"{label}: {exc}")
    return None


def check_local_lipschitz(t: Tally, net, module, region, info, desc, rng):
    p = info[2]
    norm = {math.inf: "inf", 2: "2", 1: "1"}[p]
    res = _lipschitz_or_tally(t, "local_lipschitz", f"{desc} {norm} eps={info[1]:.3g}", net, region, norm=norm,
                              attack_options={"steps": 10, "n_starts": 4, "n_samples": 128})
    if res is None:
        return
    x = sample_region(info, 200, rng)
    m64 = module
    truth = float(_jac_norms(m64, x, p).max())
    ok = math.isfinite(res.upper) and res.upper >= truth * (1 - 1e-9) - 1e-12 and res.upper >= res.lower - 1e-12
    t.add("local_lipschitz", ok, f"{desc} {norm}: upper {res.upper:.6g} < sampled {truth:.6g} / attack {res.lower:.6g}")


def check_bab_exact(t: Tally, rng):
    """Tiny ReLU nets: BaB to completion equals the MILP oracle; both >= sampled gradients."""
    from nncertify.relax.lipschitz import local_lipschitz
    from nncertify.relax.lipschitz.lower_bounds.exact import exact_local_lipschitz
    torch.manual_seed(int(rng.integers(0, 2 ** 31)))
    n_in, w = int(rng.integers(2, 5)), int(rng.integers(3, 7))
    module = nn.Sequential(nn.Linear(n_in, w), nn.ReLU(), nn.Linear(w, w), nn.ReLU(), nn.Linear(w, 2)).double().eval()
    net = models.from_module(module, (n_in,))
    center = torch.tensor(rng.standard_normal((1, n_in)))
    eps = float(10 ** rng.uniform(-1.5, 0))
    region = relax.Ball(center, eps, p=math.inf)
    c = torch.tensor([1.0, -1.0], dtype=torch.float64)
    res = local_lipschitz(net, region, norm="inf", c=c, bab_timeout=20.0)
    ex = exact_local_lipschitz(net, region, c=c, norm="inf", time_limit=20.0)
    exact_val = float(getattr(ex, "value", getattr(ex, "upper", float("nan"))))
    x = sample_region((center, eps, math.inf, None), 400, rng).requires_grad_(True)
    (g,) = torch.autograd.grad((module(x) @ c).sum(), x)
    sampled = float(g.abs().sum(dim=1).max())
    ok = res.upper >= sampled * (1 - 1e-9) - 1e-12
    if res.exact and math.isfinite(exact_val) and getattr(ex, "status", "optimal") in ("optimal", "proved", "exact"):
        ok = ok and abs(res.upper - exact_val) <= 1e-6 * max(1.0, abs(exact_val))
    t.add("bab_exact", ok, f"tiny relu {n_in}-{w}-{w}-2 eps {eps:.3g}: bab {res.upper:.9g} (exact={res.exact}) "
                           f"milp {exact_val:.9g} sampled {sampled:.9g}")


def check_lipsdp(t: Tally, rng):
    from nncertify import sdp
    module, net, desc = random_network(rng, max_width=16, max_depth=3)
    if sum(int(np.prod(n.shape)) for n in net.nodes if n.op in models.ACTIVATIONS) > 48:
        t.add("lipsdp", True, skipped=True)
        return
    try:
        cert = sdp.lipschitz_bound(net, norm=2, solver="CLARABEL" if rng.random() < 0.7 else "SCS")
    except (models.UnsupportedOperationError, NotImplementedError):
        t.add("lipsdp", True, skipped=True)
        return
    if not cert.certified:
        t.add("lipsdp", True, skipped=True)
        return
    g = torch.Generator().manual_seed(int(rng.integers(0, 2 ** 31)))
    x = torch.randn(300, net.input_shape[0], generator=g, dtype=torch.float64) * float(rng.choice([0.3, 1, 3]))
    truth = float(_jac_norms(module, x, 2).max())
    t.add("lipsdp", cert.certified_value >= truth * (1 - 1e-9),
          f"{desc}: LipSDP {cert.certified_value:.6g} < sampled {truth:.6g}")


def check_input_bab(t: Tally, net, module, region, info, desc, rng):
    """Input-space BaB (every activation, residual nets, l_inf boxes and l2/l1 balls) on a short budget:
    its anytime upper bound >= sampled Jacobian norms in the region, and >= its own lower estimate."""
    p = info[2]
    norm = {math.inf: "inf", 2: "2", 1: "1"}[p]
    res = _lipschitz_or_tally(t, "input_bab", f"{desc} {norm} eps={info[1]:.3g}", net, region, norm=norm,
                              bab="input", bab_timeout=0.3, attack_options={"steps": 5, "n_starts": 2, "n_samples": 64})
    if res is None:
        return
    x = sample_region(info, 200, rng)
    truth = float(_jac_norms(module, x, p).max())
    ok = math.isfinite(res.upper) and res.upper >= truth * (1 - 1e-9) - 1e-12 and res.upper >= res.lower - 1e-12
    t.add("input_bab", ok, f"{desc} {norm}: input-BaB upper {res.upper:.6g} < sampled {truth:.6g} / lower {res.lower:.6g}")


def _witness_ok(module, res, c, norm, contains) -> bool:
    """An exact claim must be attained: some witness point of the region whose autograd gradient norm
    (of the seed row) equals the certified upper bound up to the certification margin."""
    for k, w in res.stats.get("witness", {}).items():
        x = torch.tensor(w, dtype=torch.float64)[None].requires_grad_(True)
        y = module(x)
        row = y[0, int(k)] if c is None else (y[0] * c).sum()
        (g,) = torch.autograd.grad(row, x)
        v = float(g.abs().sum() if norm == "inf" else g.abs().max())
        if contains(x.detach()) and v >= res.upper * (1 - 1e-7) - 1e-12:
            return True
    return False


def check_activation_bab(t: Tally, net, module, region, info, desc, rng):
    """Activation-splitting BaB (ReLU-type and switch activations: MaxMin, GroupSort incl. sorting networks,
    Householder) on a short budget: anytime upper >= sampled gradient norms; an `exact` claim is attained."""
    p = info[2]
    norm = {math.inf: "inf", 2: "2", 1: "1"}[p]
    c = None if rng.random() < 0.5 else torch.tensor(rng.standard_normal(net.output_shape[0]), dtype=torch.float64)
    res = _lipschitz_or_tally(t, "activation_bab", f"{desc} {norm} eps={info[1]:.3g}", net, region, norm=norm, c=c,
                              bab="activation", bab_timeout=0.5,
                              attack_options={"steps": 5, "n_starts": 2, "n_samples": 64})
    if res is None:
        return
    x = sample_region(info, 200, rng)
    J = _jacobians(module, x)
    G = J if c is None else (c @ J)[:, None, :]
    truth = float((G.abs().sum(-1) if norm == "inf" else G.abs().amax(-1)).amax(-1).max())
    ok = math.isfinite(res.upper) and res.upper >= truth * (1 - 1e-9) - 1e-12 and res.upper >= res.lower - 1e-12
    if ok and res.exact:
        lo, hi = region.box()
        ok = _witness_ok(module, res, c, norm, lambda z: bool(((z >= lo.double().reshape(1, -1) - 1e-12)
                                                                  & (z <= hi.double().reshape(1, -1) + 1e-12)).all()))
    t.add("activation_bab", ok, f"{desc} {norm}: activation-BaB upper {res.upper:.6g} (exact={res.exact}) vs "
                                f"sampled {truth:.6g} / lower {res.lower:.6g}")


def check_apex(t: Tally, rng):
    """Bias-free (positively homogeneous) nets over a box holding 0: the shell reduction's upper bound
    >= gradient norms sampled in the whole box (incl. near 0); an `exact` claim is attained."""
    from nncertify.relax.lipschitz import local_lipschitz
    torch.manual_seed(int(rng.integers(0, 2 ** 31)))
    kind = str(rng.choice(["relu", "leaky_relu", "maxmin", "groupsort", "householder"]))
    n_in, w = int(rng.integers(2, 5)), int(rng.choice([4, 8, 12]))
    layers = [nn.Linear(n_in, w, bias=False), _act(kind, w, rng), nn.Linear(w, w, bias=False), _act(kind, w, rng),
              nn.Linear(w, 2, bias=False)]
    module = nn.Sequential(*layers).double().eval()
    net = models.from_module(module, (n_in,))
    lo = -torch.tensor(rng.uniform(0, 1, (1, n_in)))
    hi = torch.tensor(rng.uniform(0, 1, (1, n_in)))
    res = local_lipschitz(net, (lo, hi), norm="inf", bab="activation", bab_timeout=1.0,
                          attack_options={"steps": 5, "n_starts": 2, "n_samples": 64})
    g = torch.Generator().manual_seed(int(rng.integers(0, 2 ** 31)))
    x = lo + (hi - lo) * torch.rand(400, n_in, generator=g, dtype=torch.float64)
    x[:100] *= 1e-3  # near the apex
    truth = float(_jacobians(module, x).abs().sum(-1).amax(-1).max())
    ok = math.isfinite(res.upper) and res.upper >= truth * (1 - 1e-9) - 1e-12 and res.upper >= res.lower - 1e-12
    if ok and res.exact:
        ok = _witness_ok(module, res, None, "inf", lambda z: bool(((z >= lo - 1e-12) & (z <= hi + 1e-12)).all()))
    t.add("apex_bab", ok, f"bias-free {kind} {n_in}-{w}-{w}-2: upper {res.upper:.6g} (exact={res.exact}, "
                          f"{res.status}) vs sampled {truth:.6g}")


def check_lipsdp_linf(t: Tally, rng):
    """l_inf LipSDP (first-order path of sdp/linf.py, lifted and NSR) of a random scalar output c^T f:
    certified value >= max over samples of ||grad c^T f||_1."""
    from nncertify import sdp
    module, net, desc = random_network(rng, max_width=16, max_depth=3)
    q = net.output_shape[0]
    c = torch.tensor(rng.standard_normal(q))
    acts = {n.op for n in net.nodes if n.op in models.ACTIVATIONS}
    method = "nsr" if acts <= {"maxmin", "groupsort"} and rng.random() < 0.5 else "lifted"
    try:
        cert = sdp.lipschitz_bound(net, norm="inf", c=c, method=method, solver="FIRST_ORDER")
    except (models.UnsupportedOperationError, NotImplementedError, models.InvalidArgumentError):
        t.add("lipsdp_linf", True, skipped=True)
        return
    if not cert.certified:
        t.add("lipsdp_linf", True, skipped=True)
        return
    g = torch.Generator().manual_seed(int(rng.integers(0, 2 ** 31)))
    x = (torch.randn(400, net.input_shape[0], generator=g, dtype=torch.float64)
         * float(rng.choice([0.3, 1, 3]))).requires_grad_(True)
    (grad,) = torch.autograd.grad((module(x) @ c).sum(), x)
    truth = float(grad.abs().sum(dim=1).max())
    t.add("lipsdp_linf", cert.certified_value >= truth * (1 - 1e-9),
          f"{desc} ({method}): l_inf LipSDP {cert.certified_value:.6g} < sampled {truth:.6g}")


def _nearest_zero(z: np.ndarray, a: np.ndarray) -> float:
    """Distance from 0 to the nearest complex zero of F(t) = sum_k exp(z_k + t a_k), a_k integers."""
    a = a - a.min()
    deg = int(a.max())
    coef = np.zeros(deg + 1)
    for zk, ak in zip(z, a):
        coef[deg - int(ak)] += math.exp(zk - z.max())
    roots = np.roots(coef)
    roots = roots[np.abs(roots) > 0]
    t = np.log(np.abs(roots)) ** 2 + np.angle(roots) ** 2
    return float(np.sqrt(t.min())) if len(t) else math.inf


def check_ghosts(t: Tally, rng):
    from nncertify.certify.ghosts import exact_binary_radii, radius_from_dlogits
    n = int(rng.integers(2, 7))
    z = rng.standard_normal(n) * float(rng.choice([0.3, 2, 6]))
    a = rng.integers(0, 5, size=n).astype(float)
    if a.max() == a.min():
        a[0] += 1
    truth = _nearest_zero(z, a)
    rho = radius_from_dlogits(torch.tensor(a)[None]).rho_a
    t.add("ghost_radius", rho <= truth * (1 + 1e-9), f"z={z.round(3)}, a={a}: rho_a {rho:.6g} > nearest zero {truth:.6g}")
    if n == 2:
        ex = float(exact_binary_radii(torch.tensor(z)[None], torch.tensor(a)[None])[0])
        t.add("ghost_binary", abs(ex - truth) <= 1e-6 * truth, f"z={z}, a={a}: exact {ex:.9g} vs roots {truth:.9g}")


def check_sgn(t: Tally, rng):
    from nncertify.certify.games import QuadraticGame, certify_game
    N = int(rng.integers(2, 5))
    dims = [int(d) for d in rng.integers(1, 4, size=N)]
    d = sum(dims)
    offs = np.concatenate([[0], np.cumsum(dims)])
    A = np.zeros((d, d))
    scale = float(10 ** rng.uniform(-1.5, 0.5))
    for i in range(N):
        si = slice(offs[i], offs[i + 1])
        B = rng.standard_normal((dims[i], dims[i]))
        A[si, si] = B @ B.T + float(rng.uniform(0.2, 2)) * np.eye(dims[i])
        for j in range(N):
            if i != j:
                A[si, slice(offs[j], offs[j + 1])] = scale * rng.standard_normal((dims[i], dims[j]))
    cert = certify_game(QuadraticGame(A, dims))
    if cert.status != "certified":
        t.add("sgn", True, skipped=True)
        return
    w = np.concatenate([[cert.weights[i]] * dims[i] for i in range(N)])
    M = np.diag(w)
    Mh, Mih = np.diag(np.sqrt(w)), np.diag(1 / np.sqrt(w))
    # strong monotonicity in the metric: v^T M A v >= alpha v^T M v
    S = Mih @ (0.5 * (M @ A + A.T @ M)) @ Mih
    ok = np.linalg.eigvalsh(S).min() >= cert.margin * (1 - 1e-9) - 1e-12
    # Lipschitz in the metric: ||A||_M <= beta
    ok = ok and np.linalg.norm(Mh @ A @ Mih, 2) <= cert.beta * (1 + 1e-9) + 1e-12
    h = cert.euler.get("h_opt")
    fac = cert.euler.get("rate_opt")
    if h and fac is not None:
        T = Mh @ (np.eye(d) - h * A) @ Mih
        ok = ok and np.linalg.norm(T, 2) <= fac * (1 + 1e-9) + 1e-12
        x = rng.standard_normal(d)
        nx = math.sqrt(x @ M @ x)
        for k in range(1, 31):
            x = x - h * (A @ x)
            ok = ok and math.sqrt(x @ M @ x) <= nx * fac ** k * (1 + 1e-9) + 1e-12
    t.add("sgn", bool(ok), f"N={N} dims={dims}: margin {cert.margin:.4g} beta {cert.beta:.4g} h {h} factor {fac}")


# ---------------------------------------------------------------------------------------------------------
# controller family (issue #16): random trainable architectures under the safe-step controller
_CTRL_ACTS = ("relu", "gelu", "tanh", "silu", "softplus", "leaky_relu")


class _CtrlNet(nn.Module):
    """A random trainable classifier: a stem (Linear, Conv2d on a 4x4 image, or a tied Embedding), blocks of
    [norm] -> activation (some in place) -> [dropout] with optional residuals and attention, and a head."""

    def __init__(self, rng: np.random.Generator):
        super().__init__()
        self.kind = str(rng.choice(["mlp", "conv", "tied_lm", "attn"]))
        w = int(rng.choice([8, 12, 16]))
        self.classes = 13 if self.kind == "tied_lm" else int(rng.integers(2, 8))
        if self.kind == "conv":
            self.stem = nn.Conv2d(1, w // 4, 3, padding=1, stride=int(rng.choice([1, 2])))
            self.stem_out = (w // 4) * (16 if self.stem.stride[0] == 1 else 4)
            self.proj = nn.Linear(self.stem_out, w)
            self.cnorm = [nn.Identity(), nn.BatchNorm2d(w // 4), nn.GroupNorm(1, w // 4)][int(rng.integers(0, 3))]
        elif self.kind == "tied_lm":
            self.stem = nn.Embedding(self.classes, w)
        else:
            self.stem = nn.Linear(16, w)
        self.blocks = nn.ModuleList()
        self.spec = []
        for _ in range(int(rng.integers(1, 4))):
            norm = str(rng.choice(["none", "ln", "bn"] if self.kind == "mlp" else ["none", "ln"]))
            act = str(rng.choice(_CTRL_ACTS))
            drop = float(rng.choice([0.0, 0.0, 0.2]))
            self.blocks.append(nn.ModuleDict({
                "lin": nn.Linear(w, w),
                "norm": nn.LayerNorm(w) if norm == "ln" else nn.BatchNorm1d(w) if norm == "bn" else nn.Identity()}))
            self.spec.append((act, drop, bool(rng.random() < 0.5), bool(rng.random() < 0.3)))
        self.att = nn.MultiheadAttention(w, 2, dropout=float(rng.choice([0.0, 0.1])), batch_first=True) \
            if self.kind in ("attn", "tied_lm") else None
        if self.kind == "tied_lm":
            self.head = nn.Linear(w, self.classes, bias=False)
            self.head.weight = self.stem.weight
        else:
            self.head = nn.Linear(w, self.classes)

    def forward(self, x):
        import torch.nn.functional as F
        if self.kind == "conv":
            h = self.proj(torch.relu(self.cnorm(self.stem(x.view(-1, 1, 4, 4)))).flatten(1))
        elif self.kind == "attn":
            h = self.stem(x.view(x.shape[0], 4, 16 // 4).repeat(1, 1, 4))
        else:
            h = self.stem(x)
        for blk, (act, drop, res, inplace) in zip(self.blocks, self.spec):
            u = blk["norm"](blk["lin"](h)) if h.dim() == 2 or not isinstance(blk["norm"], nn.BatchNorm1d) \
                else blk["lin"](h)
            if inplace and act in ("relu", "tanh"):
                u = u.relu_() if act == "relu" else u.tanh_()
            else:
                u = {"relu": F.relu, "gelu": F.gelu, "tanh": torch.tanh, "silu": F.silu, "softplus": F.softplus,
                     "leaky_relu": F.leaky_relu}[act](u)
            u = F.dropout(u, drop, self.training)
            h = h + u if res else u
        if self.att is not None:
            h = h + self.att(h, h, h, need_weights=False)[0]
            if self.kind == "attn":
                h = h.mean(1)
        return self.head(h)


def _ctrl_batch(net: _CtrlNet, n: int, g: torch.Generator, dtype):
    if net.kind == "tied_lm":
        return torch.randint(0, net.classes, (n, 5), generator=g), torch.randint(0, net.classes, (n, 5), generator=g)
    return torch.randn(n, 16, generator=g).to(dtype), torch.randint(0, net.classes, (n,), generator=g)


def _ctrl_truth(model, recs, old, new):
    """(max_x Δ_a along new − old over the recorded micro-batches, ‖new − old‖) by an independent JVP:
    a float64 copy when the forwards draw no random numbers, else float32 dual tensors under each forward's
    RNG state (their logits must equal the training logits, else None)."""
    import copy
    import random as pyrandom
    import torch.autograd.forward_ad as fwAD
    from torch.func import functional_call
    disp = {k: new[k].double() - old[k].double() for k in old}
    nrm = math.sqrt(sum(float((d ** 2).sum()) for d in disp.values()))
    random_fw = any(not torch.equal(r["rng0"][0], r["rng1"][0]) or r["rng0"][1] != r["rng1"][1] for r in recs)
    m = copy.deepcopy(model)
    dt = torch.float32 if random_fw else torch.float64
    m = m.to(dt)
    da = 0.0
    from torch.nn.attention import SDPBackend, sdpa_kernel
    now = (torch.get_rng_state(), pyrandom.getstate())
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        for r in recs:
            torch.set_rng_state(r["rng0"][0])
            pyrandom.setstate(r["rng0"][1])
            x = r["x"].to(dt) if r["x"].is_floating_point() else r["x"]
            bufs = {k: b.clone() for k, b in m.named_buffers()}
            with fwAD.dual_level(), torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
                P = {k: fwAD.make_dual(old[k].to(dt), (disp[k] / nrm).to(dt)) for k in old}
                z, a = fwAD.unpack_dual(functional_call(m, (P, bufs), (x,)))
            if random_fw and not torch.allclose(z.double(), r["z"].double(), rtol=1e-4, atol=1e-4):
                return None, nrm
            a = a.double()
            da = max(da, float((a.amax(-1) - a.amin(-1)).max()))
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
        torch.set_rng_state(now[0])
        pyrandom.setstate(now[1])
    return da, nrm


def check_controller(t: Tally, rng):
    """One random architecture, optimizer, learning rate, dtype and accumulation count; two controlled steps."""
    import random as pyrandom
    import torch.nn.functional as F
    from nncertify.certify.controller import SafeStepController
    seed = int(rng.integers(0, 2 ** 31))
    torch.manual_seed(seed)
    pyrandom.seed(seed)
    net = _CtrlNet(rng)
    dtype = rng.choice([torch.float32, torch.float32, torch.float64, torch.bfloat16]) if net.kind != "tied_lm" \
        else torch.float32
    net = net.to(dtype).train()
    lr = float(10 ** rng.uniform(-2.5, 1.0))
    name = str(rng.choice(["sgd", "sgdm", "adam", "adamw"]))
    if name in ("adam", "adamw") and dtype == torch.bfloat16:
        name = "sgdm"
    opt = {"sgd": lambda: torch.optim.SGD(net.parameters(), lr=lr),
           "sgdm": lambda: torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=1e-3),
           "adam": lambda: torch.optim.Adam(net.parameters(), lr=lr),
           "adamw": lambda: torch.optim.AdamW(net.parameters(), lr=lr)}[name]()
    ctrl = SafeStepController(net, opt)
    micro = int(rng.integers(1, 4))
    g = torch.Generator().manual_seed(seed)
    desc = f"ctrl seed={seed} kind={net.kind} spec={net.spec} dtype={dtype} opt={name} lr={lr:.3g} micro={micro}"
    for step in range(2):
        opt.zero_grad()
        recs = []
        for _ in range(micro):
            x, y = _ctrl_batch(net, int(rng.integers(3, 9)), g, dtype)
            rng0 = (torch.get_rng_state(), pyrandom.getstate())
            z = net(x)
            recs.append({"x": x, "z": z.detach(), "rng0": rng0, "rng1": (torch.get_rng_state(), pyrandom.getstate())})
            (F.cross_entropy(z.float().reshape(-1, z.shape[-1]), y.reshape(-1)) / micro).backward()
        old = {k: p.detach().clone() for k, p in net.named_parameters()}
        try:
            opt.step()
        except Exception as e:  # noqa: BLE001 - an exception out of step() is itself a finding
            t.add("controller", False, f"{desc}: optimizer.step() raised {type(e).__name__}: {e}")
            return
        rec = ctrl.last
        if rec.kind != "certified" or rec.status not in ("ok", "clipped"):
            t.add("controller", True, skipped=True)
            continue
        new = {k: p.detach().clone() for k, p in net.named_parameters()}
        da, nrm = _ctrl_truth(net, recs, old, new)
        if da is None:
            t.add("controller", True, skipped=True)
            continue
        r_true = nrm * da / math.pi
        ok = r_true <= 1.0 + 1e-6 and rec.rho_applied <= math.pi / da * (1 + 1e-6) and rec.n_forwards == micro
        t.add("controller", ok, f"{desc} step {step}: r_true {r_true:.6g}, rho_applied {rec.rho_applied:.6g} vs "
                                f"truth {math.pi / da:.6g}, n_forwards {rec.n_forwards}")


# ----------------------------------------------------------------------------- convolutional families (issue #19)
CONV_ACTS = ("maxmin", "groupsort", "householder", "leaky_relu", "relu")
CONV_EXTRAS = ("plain", "batchnorm", "avgpool")
LOCAL_METHODS = ("crown", "recurjac", "ibp", "naive")


def _conv_act(kind: str, ch: int, rng: np.random.Generator) -> nn.Module:
    if kind == "groupsort":
        return GroupSort(4 if ch % 4 == 0 and rng.random() < 0.6 else 2, descending=bool(rng.random() < 0.5))
    if kind == "householder":
        return HouseholderActivation(ch, 2, torch.tensor(rng.standard_normal((ch // 2, 2)), dtype=torch.float32))
    return _act(kind, ch, rng)


def random_conv_network(rng: np.random.Generator):
    """Conv -> [BatchNorm] -> act -> [AvgPool] -> Conv -> [BatchNorm] -> act -> Flatten -> Linear: a conv layer
    before every activation, odd spatial shapes, strides and paddings; the activation's groups are the channels
    at each pixel (the layout issue #19 found misread)."""
    act = str(rng.choice(CONV_ACTS))
    extra = str(rng.choice(CONV_EXTRAS))
    cin = int(rng.integers(1, 3))
    H, W = int(rng.integers(4, 7)), int(rng.integers(4, 8))
    c1 = int(rng.choice([2, 4])) if act in ("maxmin", "groupsort", "householder") else int(rng.integers(2, 5))
    c2 = int(rng.choice([2, 4])) if act in ("maxmin", "groupsort", "householder") else int(rng.integers(2, 5))
    k1, s1, p1 = int(rng.integers(2, 4)), int(rng.integers(1, 3)), int(rng.integers(0, 2))
    torch.manual_seed(int(rng.integers(0, 2 ** 31)))
    layers: list[nn.Module] = [nn.Conv2d(cin, c1, k1, stride=s1, padding=p1)]
    if extra == "batchnorm":
        bn = nn.BatchNorm2d(c1)
        with torch.no_grad():
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.3, 2.0)
            bn.weight.normal_()
            bn.bias.normal_()
        layers.append(bn)
    layers.append(_conv_act(act, c1, rng))
    if extra == "avgpool" and min(nn.Sequential(*layers).eval()(torch.zeros(1, cin, H, W)).shape[2:]) >= 2:
        layers.append(nn.AvgPool2d(2, stride=1))
    probe = nn.Sequential(*layers).eval()
    h1, w1 = probe(torch.zeros(1, cin, H, W)).shape[2:]
    k2 = int(min(2, h1, w1))
    layers += [nn.Conv2d(c1, c2, k2, stride=1 if h1 * w1 <= 16 else 2, padding=int(rng.integers(0, 2))),
               _conv_act(act, c2, rng),
               nn.Flatten()]
    probe = nn.Sequential(*layers).eval()
    feat = probe(torch.zeros(1, cin, H, W)).shape[1]
    out_dim = int(rng.integers(2, 4))
    layers.append(nn.Linear(feat, out_dim))
    module = nn.Sequential(*layers).eval()
    dtype = torch.float64 if rng.random() < 0.5 else torch.float32
    module = module.to(dtype)
    net = models.from_module(module, (cin, H, W))
    desc = f"conv {act} {extra} in({cin},{H},{W}) k{k1}s{s1}p{p1} c{c1}-{c2} feat{feat} out{out_dim} {str(dtype)[6:]}"
    return net, desc, f"{act}+{extra}"


def hand_built_variant(net, rng: np.random.Generator):
    """A Network the loaders would not produce: Householder v of any norm, an all-zero layer, an extreme
    (power-of-ten) weight scale on one layer, or one layer whose entries are scaled by 1e160 or 1e-160 at random
    ("mixed"; 1e+-30 in float32); the description's own evaluation stays the truth."""
    from dataclasses import replace as _replace
    nodes = [_replace(n, params=dict(n.params), attrs=dict(n.attrs)) for n in net.nodes]
    kinds = ["zero", "scale", "mixed"] + (["v_norm"] if any(n.op == "householder" for n in nodes) else [])
    kind = str(rng.choice(kinds))
    aff = [n for n in nodes if n.op in ("conv2d", "linear")]
    if kind == "v_norm":
        for n in nodes:
            if n.op == "householder":
                n.params["v"] = n.params["v"] * float(rng.choice([0.3, 0.7, 1.0 + 1e-7, 1.5, 2.0, 3.0]))
    elif kind == "zero":
        n = aff[int(rng.integers(0, len(aff)))]
        n.params["weight"] = torch.zeros_like(n.params["weight"])
    elif kind == "mixed":  # entries of 1e160 and 1e-160 in one matrix (Gram matrices overflow float64)
        n = aff[int(rng.integers(0, len(aff)))]
        w = n.params["weight"]
        sgn = torch.as_tensor(rng.choice([-1.0, 1.0], size=tuple(w.shape)), dtype=torch.float64)
        n.params["weight"] = (w.double() * torch.pow(10.0, 160.0 * sgn)).to(w.dtype) if w.dtype == torch.float64 \
            else w * torch.where(sgn > 0, 1e30, 1e-30).to(w.dtype)  # (float32: the largest scale it holds)
    else:
        n = aff[int(rng.integers(0, len(aff)))]
        s = float(10.0 ** rng.choice([-30, -8, 8, 30]))
        n.params["weight"] = n.params["weight"] * s
        if "bias" in n.params:
            n.params["bias"] = n.params["bias"] * s
    return models.Network(nodes, net.output, net.name), kind


def _pair_ratios(module, x, y, c=None, p=2):
    """|f(x) - f(y)| / |x - y| (output l2 / input l2, or |c^T df| / ||dx||_inf), rowwise."""
    fx, fy = module(x), module(y)
    d = (fx - fy) if c is None else ((fx - fy) @ c)[:, None]
    dx = (x - y).flatten(1)
    # a *guaranteed* lower bound: subtract a bound on the float64 rounding of the evaluated outputs (relative
    # 1e-13 of their magnitude, covering the network's evaluation), which dominates when |df| is tiny
    mag = (fx.abs() + fy.abs()) if c is None else ((fx.abs() + fy.abs()) @ c.abs())[:, None]
    err = 1e-13 * mag.amax(dim=1)
    if p == 2:
        return (d.norm(dim=1) - err * math.sqrt(d.shape[1])).clamp_min(0) / dx.norm(dim=1)
    if c is None:
        return (d.abs().amax(dim=1) - err).clamp_min(0) / dx.abs().amax(dim=1)
    return (d.abs()[:, 0] - err).clamp_min(0) / dx.abs().amax(dim=1)


def witnesses(module, shape, p, c=None, box=None, rng=None, n=32, steps=12, h=1e-6):
    """Lower bounds of the Lipschitz constant (global, or on ``box = (lo, hi)``): secant ratios along the
    Jacobian's worst direction, then gradient ascent on the pair ratio |f(x) - f(y)| / |x - y| (Adam on both
    points, projected into the box).  Every returned number is a ratio of two true function values."""
    g = torch.Generator().manual_seed(int(rng.integers(0, 2 ** 31)))
    if box is None:
        x = torch.randn(n, *shape, generator=g, dtype=torch.float64) * float(rng.choice([0.3, 1.0, 3.0]))
    else:
        lo, hi = box
        x = lo + (hi - lo) * torch.rand(n, *shape, generator=g, dtype=torch.float64)
    J = _jacobians(module, x).reshape(n, -1, x[0].numel())
    if c is not None:
        J = (c @ J)[:, None, :]
    if p == 2:
        d = torch.linalg.svd(J)[2][:, 0]
    else:
        row = J.abs().sum(-1).argmax(-1)
        d = torch.sign(J[torch.arange(n), row])
    d = d.reshape(x.shape)
    step = h * (1 if box is None else 1)
    y = x + step * d
    if box is not None:
        y = torch.minimum(torch.maximum(y, lo), hi)
        x2 = torch.minimum(torch.maximum(x - step * d, lo), hi)
        y, x = torch.where((y - x2).flatten(1).abs().sum(1).view(-1, *[1] * len(shape)) > 0, y, x + 0 * y), x2
    with torch.no_grad():
        r = _pair_ratios(module, x, y, c, p)
    best = float(torch.nan_to_num(r, nan=0.0).max())
    # gradient ascent on the pair ratio (a few Adam steps from the best secant pairs, separation kept >= 1e-4)
    k = min(8, n)
    idx = torch.argsort(torch.nan_to_num(r, nan=0.0), descending=True)[:k]
    xa = x[idx].clone().requires_grad_(True)
    da = ((y - x)[idx] / (y - x)[idx].flatten(1).norm(dim=1).clamp_min(1e-300).view(-1, *[1] * len(shape))
          * 1e-3).clone().requires_grad_(True)
    opt = torch.optim.Adam([xa, da], lr=1e-2 if box is None else 1e-3)
    for _ in range(steps):
        xx, yy = xa, xa + da
        if box is not None:
            xx = torch.minimum(torch.maximum(xx, lo), hi)
            yy = torch.minimum(torch.maximum(yy, lo), hi)
        rr = _pair_ratios(module, xx, yy, c, p)
        ok = torch.isfinite(rr) & ((xx - yy).flatten(1).abs().amax(1) > 1e-7)
        if ok.any():
            best = max(best, float(rr[ok].max()))
        loss = -(torch.where(ok, rr, torch.zeros_like(rr))).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return best


def _cert_pair(t: Tally, fam: dict, label: str, family: str, value, truth: float, detail: str):
    fam[family] = fam.get(family, 0) + 1
    if value is not None and value == math.inf:  # no bound (a failed result): sound, but nothing to compare
        t.add(label, True, skipped=True)
        return
    ok = value is not None and math.isfinite(value) and value >= truth * (1 - 1e-7) - 1e-300  # NaN: a violation
    t.add(label, ok, f"{detail}: {label} {value!r} < witness {truth:.9g}")


def check_conv(t: Tally, fam: dict, rng: np.random.Generator, hand: bool = False):
    """Every global (sdp lipschitz_bound methods, certified MP, fallback) and local (local_lipschitz methods)
    bound of a random conv net against secant + gradient-ascent witnesses, l2 and l_inf."""
    from nncertify import sdp
    from nncertify.sdp.baselines import certified_mp, extract_layers, fallback_bound
    net, desc, family = random_conv_network(rng)
    if hand:
        net, kind = hand_built_variant(net, rng)
        desc, family = f"{desc} hand:{kind}", f"hand:{kind}"
    module = net.to(torch.float64).to_module(requires_grad=False)
    shape = net.input_shape
    q = net.output_shape[0]
    c = torch.tensor(rng.standard_normal(q), dtype=torch.float64)
    w2 = witnesses(module, shape, 2, rng=rng)
    winf = witnesses(module, shape, math.inf, c=c, rng=rng)
    acts = {n.op for n in net.nodes if n.op in models.ACTIVATIONS}
    grouped = acts <= {"maxmin", "groupsort", "householder"}
    methods = ["lifted", "auto"] + (["nsr"] if grouped else []) + \
        (["lipsdp-neuron"] if acts <= {"relu", "leaky_relu"} else [])
    width = max(int(np.prod(n.shape)) for n in net.nodes if n.op in models.ACTIVATIONS)
    for method in methods:
        for norm in (2, "inf"):
            if norm == "inf" and (method == "nsr" and "householder" in acts):
                continue
            # interior point on small nets; the first-order path (no cvxpy cone) on wide ones, as "auto" would
            solver = "FIRST_ORDER" if norm == "inf" or width > 40 or rng.random() < 0.3 else None
            try:
                r = sdp.lipschitz_bound(net, norm=norm, method=method, solver=solver, time_limit=20,
                                        c=None if norm == 2 else c, first_order_iters=60)
            except (models.UnsupportedOperationError, models.InvalidArgumentError):
                t.add(f"conv:sdp_{method}_{'l2' if norm == 2 else 'linf'}", True, skipped=True)
                continue
            label = f"conv:sdp_{method}_{'l2' if norm == 2 else 'linf'}"
            if not r.certified:
                t.add(label, True, skipped=True)
                continue
            _cert_pair(t, fam, label, family, r.certified_value, w2 if norm == 2 else winf, desc)
    for norm, truth in ((2, w2), ("inf", winf)):
        try:
            mp = certified_mp(extract_layers(net, None if norm == 2 else c), norm)
            _cert_pair(t, fam, f"conv:mp_{'l2' if norm == 2 else 'linf'}", family, mp, truth, desc)
        except models.UnsupportedOperationError:
            t.add(f"conv:mp_{'l2' if norm == 2 else 'linf'}", True, skipped=True)
    fb = fallback_bound(net, 2)
    if fb.certified:
        _cert_pair(t, fam, "conv:fallback_l2", family, fb.certified_value, w2, desc)
    else:
        t.add("conv:fallback_l2", True, skipped=True)
    # local: a box around a random point
    g = torch.Generator().manual_seed(int(rng.integers(0, 2 ** 31)))
    x0 = torch.randn(1, *shape, generator=g, dtype=torch.float64)
    eps = float(10 ** rng.uniform(-3, -0.3))
    lo, hi = x0 - eps, x0 + eps
    box = (lo, hi)
    region = relax.Ball(x0.to(net.dtype), eps, p=math.inf)
    if net.dtype == torch.float32:  # the float32 center is not x0: take the box the library will use
        lo32, hi32 = region.box()
        box = (lo32.double().reshape(1, *shape), hi32.double().reshape(1, *shape))
    l2 = witnesses(module, shape, 2, box=box, rng=rng, n=24)
    linf = witnesses(module, shape, math.inf, box=box, rng=rng, n=24)
    for method in LOCAL_METHODS + (("lipsdp",) if acts <= {"relu", "leaky_relu"} and width <= 40 else ()):
        for norm, truth in (("2", l2), ("inf", linf)):
            if method == "lipsdp" and norm != "2":
                continue
            label = f"conv:local_{method}_{'l2' if norm == '2' else 'linf'}"
            res = _lipschitz_or_tally(t, label, desc, net, region, norm=norm, method=method, attack=False)
            if res is None:
                continue
            _cert_pair(t, fam, label, family, res.upper, truth, f"{desc} eps={eps:.3g}")


def run_conv(pairs: int = 2000, seed: int = 0, time_budget: float = 1800.0, log=print) -> dict:
    """The convolutional + hand-built families alone (issue #19's independent witness check).  Runs with one
    torch thread: small float64 convolutions are ~300x slower with two threads on a shared 2-core machine."""
    warnings.filterwarnings("ignore")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rng = np.random.default_rng(seed)
    t = Tally()
    fam: dict[str, int] = {}
    t0 = time.perf_counter()
    i = 0
    try:
        while t.pairs < pairs and time.perf_counter() - t0 < time_budget:
            i += 1
            check_conv(t, fam, rng, hand=(i % 3 == 0))
            if i % 10 == 0 and log:
                log(f"{t.pairs} pairs, {sum(d['violations'] for d in t.data.values())} violations, "
                    f"{time.perf_counter() - t0:.0f} s")
    finally:
        torch.set_num_threads(threads)
    return {"seed": seed, "instances": i, "pairs": t.pairs,
            "violations": sum(d["violations"] for d in t.data.values()),
            "seconds": round(time.perf_counter() - t0, 1), "by_method": t.data, "families": fam}


def run(pairs: int = 10000, seed: int = 0, time_budget: float = 1800.0, log=print) -> dict:
    warnings.filterwarnings("ignore")
    rng = np.random.default_rng(seed)
    t = Tally()
    t0 = time.perf_counter()
    i = 0
    while t.pairs < pairs and time.perf_counter() - t0 < time_budget:
        i += 1
        module, net, desc = random_network(rng)
        region, info = random_region(rng, net, net.dtype)
        check_forward(t, net, module, region, info, desc, rng)
        if i % 2 == 0:
            check_local_lipschitz(t, net, module, region, info, desc, rng)
        for _ in range(4):
            check_ghosts(t, rng)
        check_sgn(t, rng)
        if i % 5 == 0:
            check_input_bab(t, net, module, region, info, desc, rng)
        if i % 5 == 2:
            check_activation_bab(t, net, module, region, info, desc, rng)
        if i % 20 == 7:
            check_apex(t, rng)
        if i % 25 == 0:
            check_lipsdp(t, rng)
        if i % 10 == 0:
            check_lipsdp_linf(t, rng)
        if i % 60 == 0:
            check_bab_exact(t, rng)
        if i % 6 == 1:  # a few seconds each (two training steps, replays and float64 truths)
            check_controller(t, rng)
        if i % 50 == 0 and log:
            log(f"{t.pairs} pairs, {sum(d['violations'] for d in t.data.values())} violations, "
                f"{time.perf_counter() - t0:.0f} s")
    return {"seed": seed, "instances": i, "pairs": t.pairs,
            "violations": sum(d["violations"] for d in t.data.values()),
            "seconds": round(time.perf_counter() - t0, 1), "by_method": t.data}


HISTORY = [
    "- 2026-11-23, crown/alpha-crown (3 of 3,000 pairs, by up to 4.5e-9): `relax.Ball` turned a Python-float radius "
    "into a float32 tensor before rounding it outward, so float64 balls were shrunk by ~1e-8. Fixed in relax/sets.py; "
    "test_float64_radius_is_not_rounded_through_float32_regression.",
    "- 2026-11-23, local_lipschitz (float32 Householder nets, ~1e-7 relative): the Clarke gate re-normalized v in "
    "float64, bounding a slightly different function than the network's. Fixed in relax/lipschitz/bounds/gates.py; "
    "test_householder_gate_uses_v_as_stored_regression.",
    "- 2026-12-07, issue #19 (conv family, written with the fix): grouped activations after a Conv2d act on the "
    "channels at each pixel, but sdp/ lifts and NSR, the relax/lipschitz gates and the chain's activation evaluation "
    "grouped consecutive flat entries (certified l2 values below secant witnesses). Fixed by models/groups.py "
    "(activation_groups, used by every consumer); tests/test_grouped_conv_soundness.py.",
    "- 2026-12-07, issue #19 (hand-built family): Householder v of norm != 1 was certified as a reflection "
    "(NSR, certified MP); fixed in sdp/householder_nsr.py and sdp/baselines.py; "
    "test_householder_norm_two_v_is_certified_at_least_seven.",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=10000)
    ap.add_argument("--conv-pairs", type=int, default=2000, help="pairs of the convolutional / hand-built families")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-budget", type=float, default=1800.0)
    ap.add_argument("--merge-conv", help="JSON of another run_conv (other seed) to add to the committed results")
    args = ap.parse_args()
    if args.merge_conv:
        old = Path(__file__).resolve().parent / "results" / "soundness_fuzz.json"
        extra = json.loads(Path(args.merge_conv).read_text())
        write_results(merge_conv(json.loads(old.read_text()), extra,
                                 f"run_conv(pairs={extra['pairs']}, seed={extra['seed']}) merged"))
        return
    torch.set_num_threads(2)
    old = Path(__file__).resolve().parent / "results" / "soundness_fuzz.json"
    if args.pairs == 0 and old.exists():  # conv families only: keep the previous general run's numbers
        res = {k: v for k, v in json.loads(old.read_text()).items() if k not in ("conv", "hardware")}
        args.pairs = res.get("pairs", 0)
    else:
        res = run(args.pairs, args.seed, args.time_budget)
    res["conv"] = run_conv(args.conv_pairs, args.seed, args.time_budget) if args.conv_pairs > 0 else None
    hw = {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
          "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
          "note": "2-core CPU shared with other jobs (timings under load)"}
    res["hardware"] = hw
    res["command"] = (f"python bench/soundness_fuzz.py --pairs {args.pairs} --conv-pairs {args.conv_pairs} "
                      f"--seed {args.seed}")
    write_results(res)


def merge_conv(res: dict, extra: dict, label: str) -> dict:
    """Add another run_conv result (e.g. a second process with another seed) into ``res["conv"]``."""
    cv = res.get("conv") or {"instances": 0, "pairs": 0, "violations": 0, "seconds": 0.0, "by_method": {},
                             "families": {}, "seeds": []}
    cv.setdefault("seeds", [cv.get("seed")])
    cv["seeds"].append(extra["seed"])
    for k in ("instances", "pairs", "violations"):
        cv[k] += extra[k]
    cv["seconds"] = round(cv["seconds"] + extra["seconds"], 1)
    for m, d in extra["by_method"].items():
        e = cv["by_method"].setdefault(m, {"pairs": 0, "violations": 0, "skipped": 0, "examples": []})
        for k in ("pairs", "violations", "skipped"):
            e[k] += d[k]
        e["examples"] = (e["examples"] + d["examples"])[:5]
    for f, n in extra["families"].items():
        cv["families"][f] = cv["families"].get(f, 0) + n
    res["conv"] = cv
    res["command"] = res.get("command", "python bench/soundness_fuzz.py --pairs 0 --conv-pairs 2000 --seed 0 "
                                        "(general part: the previous 10000-pair run)") + f"; {label}"
    return res


def write_results(res: dict) -> None:
    hw = res["hardware"]
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "soundness_fuzz.json").write_text(json.dumps(res, indent=1) + "\n")
    md = ["# Soundness fuzzing", "", f"`{res['command']}` on {hw['cores']} cores ({hw['processor']}, shared with "
          f"other jobs), torch {hw['torch']}: {res['instances']} random instances, "
          f"**{res['pairs']} pairs, {res['violations']} violations**, {res['seconds']} s.", "",
          "| method | pairs | violations | skipped (unsupported / not certified) |", "|---|---|---|---|"]
    for m, d in sorted(res["by_method"].items()):
        md.append(f"| {m} | {d['pairs']} | {d['violations']} | {d['skipped']} |")
    bad = [(m, d) for m, d in res["by_method"].items() if d["violations"]]
    cv = res.get("conv")
    if cv:
        md += ["", "## Convolutional and hand-built networks (issue #19)", "",
               "Conv -> [BatchNorm] -> MaxMin / GroupSort / Householder / LeakyReLU / ReLU -> [AvgPool] -> Conv -> act "
               "-> Flatten -> Linear (odd spatial shapes, strides, paddings, float32 and float64), and hand-built "
               "variants the loaders would not produce (Householder v of norm 0.3..3, an all-zero layer, a layer "
               "scaled by 1e+-8 / 1e+-30, a layer whose entries are scaled by 1e160 or 1e-160 at random).  Truth: secant ratios along the Jacobian's worst direction and gradient "
               "ascent on |f(x) - f(y)| / |x - y| (global, and inside the local box), l2 and l_inf (scalar c^T f).",
               "", f"{cv['instances']} instances (seeds {cv.get('seeds', [cv.get('seed')])}), "
               f"**{cv['pairs']} pairs, {cv['violations']} violations**, {cv['seconds']} s of process time "
               "(one torch thread each, under load).", "",
               "| method | pairs | violations | skipped (unsupported / not certified) |", "|---|---|---|---|"]
        for m, d in sorted(cv["by_method"].items()):
            md.append(f"| {m} | {d['pairs']} | {d['violations']} | {d['skipped']} |")
        md += ["", "| family | pairs |", "|---|---|"] + [f"| {f} | {n} |" for f, n in sorted(cv["families"].items())]
        bad += [(m, d) for m, d in cv["by_method"].items() if d["violations"]]
    if bad:
        md += ["", "## Violations (first examples)", ""]
        for m, d in bad:
            md += [f"- {m}: {e}" for e in d["examples"]]
    md += ["", "## Violations found earlier and fixed (each is now a regression test)", "", *HISTORY]
    (out / "soundness_fuzz.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))

if __name__ == "__main__":
    main()
