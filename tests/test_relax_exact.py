"""CROWN / alpha-CROWN / IBP bounds versus the exact optimum on tiny ReLU networks.

The exact minimum (and maximum) of each logit margin over the input set is computed independently
of relax/: by a mixed-integer program solved with scipy's HiGHS (big-M constants from a plain numpy
interval pass written here) and, on the smallest network, also by enumerating every activation
pattern with one LP each.  A sound lower bound must never exceed the exact minimum.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import Bounds, LinearConstraint, linprog, milp
from torch import nn

from nncertify import models
from nncertify.relax import Ball, Box, compute_bounds


pytestmark = pytest.mark.usefixtures("single_thread")  # many small tensor ops: see tests/conftest.py


TOL = 1e-5
pytestmark = pytest.mark.filterwarnings("ignore:Unrecognized options")


def _layers(module):
    lin = [m for m in module if isinstance(m, nn.Linear)]
    return [(m.weight.detach().double().numpy(), m.bias.detach().double().numpy()) for m in lin]


def _interval_bounds(layers, lo, hi):
    """Plain numpy interval arithmetic: pre-activation boxes of each hidden layer (for big-M)."""
    out = []
    for W, b in layers[:-1]:
        mid, rad = (lo + hi) / 2, (hi - lo) / 2
        c, r = W @ mid + b, np.abs(W) @ rad
        out.append((c - r - 1e-6, c + r + 1e-6))
        lo, hi = np.maximum(c - r, 0), np.maximum(c + r, 0)
    return out


def exact_min_milp(layers, c, x_lo, x_hi, l1=None):
    """min c . f(x) over the box [x_lo, x_hi] (and ||x - center||_1 <= eps if l1=(center, eps))."""
    pre = _interval_bounds(layers, x_lo, x_hi)
    n0 = len(x_lo)
    sizes = [W.shape[0] for W, _ in layers[:-1]]
    # variable layout: x | (z_k, h_k, d_k) per hidden layer | (p, q) for l1
    idx, off = {}, n0
    for k, n in enumerate(sizes):
        idx[k] = (off, off + n, off + 2 * n)
        off += 3 * n
    n_l1 = 2 * n0 if l1 is not None else 0
    nv = off + n_l1
    lb, ub = np.full(nv, -np.inf), np.full(nv, np.inf)
    integ = np.zeros(nv)
    lb[:n0], ub[:n0] = x_lo, x_hi
    rows, lo_c, hi_c = [], [], []

    def add(row, a, b):
        rows.append(row)
        lo_c.append(a)
        hi_c.append(b)

    prev = (0, n0)
    for k, (W, b) in enumerate(layers[:-1]):
        zs, hs, ds = idx[k]
        n = W.shape[0]
        l, u = pre[k]
        lb[zs:zs + n], ub[zs:zs + n] = l, u
        lb[hs:hs + n], ub[hs:hs + n] = 0, np.maximum(u, 0)
        lb[ds:ds + n], ub[ds:ds + n] = 0, 1
        integ[ds:ds + n] = 1
        for i in range(n):
            r = np.zeros(nv)
            r[zs + i] = 1
            r[prev[0]:prev[0] + prev[1]] = -W[i]
            add(r, b[i], b[i])  # z = W h + b
            if l[i] >= 0:  # stable active: h = z
                r = np.zeros(nv); r[hs + i] = 1; r[zs + i] = -1
                add(r, 0, 0)
                continue
            if u[i] <= 0:  # stable inactive: h = 0 (its bounds)
                continue
            r = np.zeros(nv); r[hs + i] = 1; r[zs + i] = -1
            add(r, 0, np.inf)  # h >= z
            r = np.zeros(nv); r[hs + i] = 1; r[zs + i] = -1; r[ds + i] = -l[i]
            add(r, -np.inf, -l[i])  # h <= z - l (1 - d)
            r = np.zeros(nv); r[hs + i] = 1; r[ds + i] = -u[i]
            add(r, -np.inf, 0)  # h <= u d
        prev = (hs, n)
    if l1 is not None:
        center, eps = l1
        ps = off
        for j in range(n0):  # x = center + p - q
            r = np.zeros(nv); r[j] = 1; r[ps + j] = -1; r[ps + n0 + j] = 1
            add(r, center[j], center[j])
        lb[ps:], ub[ps:] = 0, np.inf
        r = np.zeros(nv); r[ps:] = 1
        add(r, -np.inf, eps)
    WL, bL = layers[-1]
    obj = np.zeros(nv)
    obj[prev[0]:prev[0] + prev[1]] = c @ WL
    for opts in ({"mip_rel_gap": 1e-7, "mip_feasibility_tolerance": 1e-9}, {"mip_rel_gap": 1e-7},
                 {"mip_rel_gap": 1e-7, "presolve": False}):  # HiGHS sometimes reports "Solve error"
        res = milp(obj, constraints=LinearConstraint(np.array(rows), lo_c, hi_c), integrality=integ,
                   bounds=Bounds(lb, ub), options=opts)
        if res.status == 0:
            break
    assert res.status == 0, res.message
    # the solver's proven dual bound is <= the true minimum (and within the gap of it)
    return min(res.fun, res.mip_dual_bound) + c @ bL


def exact_min_enumeration(layers, c, x_lo, x_hi):
    """min c . f(x) over a box by one LP per activation pattern (one hidden layer networks)."""
    (W1, b1), (W2, b2) = layers
    best = np.inf
    for pattern in itertools.product([0, 1], repeat=W1.shape[0]):
        D = np.diag(pattern).astype(float)
        sign = np.where(np.array(pattern) == 1, -1.0, 1.0)  # active: z >= 0 <=> -z <= 0
        A_ub = sign[:, None] * W1
        b_ub = -sign * b1
        obj = c @ W2 @ D @ W1
        res = linprog(obj, A_ub=A_ub, b_ub=b_ub, bounds=list(zip(x_lo, x_hi)), method="highs")
        if res.status == 0:
            best = min(best, res.fun + c @ (W2 @ D @ b1 + b2))
    return best


def _margin_spec(label, k):
    rows = []
    for j in range(k):
        if j != label:
            r = np.zeros(k)
            r[label], r[j] = 1, -1
            rows.append(r)
    return np.array(rows)


def _tiny(seed, widths):
    torch.manual_seed(seed)
    mods = []
    for a, b in zip(widths[:-1], widths[1:]):
        mods += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*mods[:-1])


@pytest.mark.parametrize("seed,widths,eps", [(0, (3, 6, 3), 0.6), (1, (3, 5, 5, 3), 0.5), (2, (4, 6, 4, 3), 0.4)])
def test_margin_lower_bounds_below_exact_minimum_linf(seed, widths, eps):
    module = _tiny(seed, widths)
    net = models.from_module(module, (widths[0],))
    layers = _layers(module)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, widths[0], generator=g)
    labels = net(x).argmax(1)
    k = widths[-1]
    C = torch.stack([torch.as_tensor(_margin_spec(int(y), k), dtype=torch.float32) for y in labels])
    s = Ball(x, eps)
    res = {m: compute_bounds(net, s, method=m, C=C, alpha_iters=30) for m in ("ibp", "crown", "alpha-crown")}
    gaps = []
    for b in range(3):
        lo, hi = (x[b] - eps).double().numpy(), (x[b] + eps).double().numpy()
        for i, c in enumerate(C[b].double().numpy()):
            exact = exact_min_milp(layers, c, lo, hi)
            exact_max = -exact_min_milp(layers, -c, lo, hi)
            for m, r in res.items():
                assert r.lower[b, i].item() <= exact + TOL, (m, b, i, r.lower[b, i].item(), exact)
                assert r.upper[b, i].item() >= exact_max - TOL, (m, b, i, r.upper[b, i].item(), exact_max)
            gaps.append((exact - res["alpha-crown"].lower[b, i].item(), exact - res["ibp"].lower[b, i].item()))
    # not vacuous: alpha-CROWN's distance to the optimum is well below IBP's
    g = np.array(gaps)
    assert g[:, 0].mean() < 0.7 * g[:, 1].mean()


def test_milp_agrees_with_pattern_enumeration():
    module = _tiny(5, (3, 6, 3))
    layers = _layers(module)
    rng = np.random.default_rng(0)
    for _ in range(3):
        x0 = rng.normal(size=3)
        c = rng.normal(size=3)
        lo, hi = x0 - 0.7, x0 + 0.7
        assert abs(exact_min_milp(layers, c, lo, hi) - exact_min_enumeration(layers, c, lo, hi)) < 1e-6


def test_one_hidden_layer_box_by_enumeration():
    module = _tiny(7, (3, 7, 2))
    net = models.from_module(module, (3,))
    layers = _layers(module)
    g = torch.Generator().manual_seed(1)
    lo = torch.randn(2, 3, generator=g)
    hi = lo + torch.rand(2, 3, generator=g)
    C = torch.tensor([[1.0, -1.0], [-1.0, 1.0], [0.5, 2.0]])
    for m in ("crown", "alpha-crown"):
        r = compute_bounds(net, Box(lo, hi), method=m, C=C)
        for b in range(2):
            for i, c in enumerate(C.double().numpy()):
                exact = exact_min_enumeration(layers, c, lo[b].double().numpy(), hi[b].double().numpy())
                assert r.lower[b, i].item() <= exact + TOL


def test_l1_ball_bounds_below_exact_minimum():
    module = _tiny(3, (3, 5, 4, 3))
    net = models.from_module(module, (3,))
    layers = _layers(module)
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(3))
    eps = 0.8
    C = torch.tensor([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0]])
    for m in ("crown", "alpha-crown"):
        r = compute_bounds(net, Ball(x, eps, p=1), method=m, C=C)
        for b in range(2):
            xb = x[b].double().numpy()
            for i, c in enumerate(C.double().numpy()):
                exact = exact_min_milp(layers, c, xb - eps, xb + eps, l1=(xb, eps))
                assert r.lower[b, i].item() <= exact + TOL


def test_crown_is_exact_when_all_neurons_are_stable():
    """With a tiny input box no ReLU is unstable: CROWN must equal the exact (affine) range."""
    module = _tiny(4, (3, 6, 6, 2))
    net = models.from_module(module, (3,))
    layers = _layers(module)
    x = torch.randn(1, 3, generator=torch.Generator().manual_seed(0))
    eps = 1e-4
    r = compute_bounds(net, Ball(x, eps), method="crown", C=torch.eye(2), dtype=torch.float64)
    xb = x[0].double().numpy()
    for i in range(2):
        c = np.eye(2)[i]
        exact = exact_min_milp(layers, c, xb - eps, xb + eps)
        assert r.lower[0, i].item() <= exact + 1e-9
        assert exact - r.lower[0, i].item() < 1e-7
