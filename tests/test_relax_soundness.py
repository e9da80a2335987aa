"""Soundness of relax.compute_bounds by sampling: every sampled network output (and every
intermediate value) lies inside the bounds, for every op mix, input set and method; and the
ordering IBP >= CROWN >= alpha-CROWN in width holds where it must."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nncertify import models
from nncertify import relax
from nncertify.models import GroupSort, HouseholderActivation, MaxMin, Normalize, Residual
from nncertify.relax import Ball, Box, compute_bounds


pytestmark = pytest.mark.usefixtures("single_thread")  # many small tensor ops: see tests/conftest.py


N_SAMPLES = 1000


def _hh(n, g, seed):
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(n // g, g, generator=gen)
    return HouseholderActivation(n, g, v / v.norm(dim=1, keepdim=True))


def _nets():
    """name -> (module, input_shape); fixed seeds."""
    torch.manual_seed(1)
    out = {}
    out["mlp_relu"] = (nn.Sequential(nn.Linear(5, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 4)), (5,))
    body = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    out["residual"] = (nn.Sequential(nn.Linear(5, 8), nn.ReLU(), Residual(body), nn.ReLU(),
                                     Residual(nn.Sequential(nn.ReLU(), nn.Linear(8, 8))), nn.Linear(8, 3)), (5,))
    bn = nn.BatchNorm2d(4)
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    out["conv"] = (nn.Sequential(Normalize(torch.tensor([0.1, -0.2]).reshape(2, 1, 1), torch.tensor([0.5, 2.0]).reshape(2, 1, 1)),
                                 nn.Conv2d(2, 4, 3, padding=1), bn.eval(), nn.ReLU(), nn.AvgPool2d(2),
                                 nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=2), nn.LeakyReLU(0.2),
                                 nn.Flatten(), nn.Linear(16, 3)), (2, 8, 8))
    out["smooth"] = (nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.Sigmoid(), nn.Linear(8, 3)), (4,))
    out["leaky"] = (nn.Sequential(nn.Linear(4, 8), nn.LeakyReLU(-0.5), nn.Linear(8, 8), nn.LeakyReLU(1.5),
                                  nn.Linear(8, 8), nn.LeakyReLU(0.01), nn.Linear(8, 3)), (4,))
    out["maxmin"] = (nn.Sequential(nn.Linear(4, 8), MaxMin("pairs"), nn.Linear(8, 8), MaxMin("halves"),
                                   nn.Linear(8, 3)), (4,))
    out["groupsort"] = (nn.Sequential(nn.Linear(4, 8), GroupSort(4), nn.Linear(8, 6), GroupSort(3, descending=False),
                                      nn.Linear(6, 3)), (4,))
    out["householder"] = (nn.Sequential(nn.Linear(4, 8), _hh(8, 2, 3), nn.Linear(8, 8), _hh(8, 4, 4),
                                        nn.Linear(8, 3)), (4,))
    out["conv_maxmin"] = (nn.Sequential(nn.Conv2d(1, 4, 3), MaxMin("halves"), nn.Conv2d(4, 4, 3, stride=2),
                                        GroupSort(2), _hh(4, 2, 5), nn.Flatten(), nn.Linear(4, 2)), (1, 6, 6))
    body2 = nn.Sequential(nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 6))
    out["mixed"] = (nn.Sequential(nn.Linear(4, 6), nn.ReLU(), Residual(body2), MaxMin(), nn.Linear(6, 8), GroupSort(4),
                                  nn.Linear(8, 4), _hh(4, 2, 6), nn.Sigmoid(), nn.LeakyReLU(0.1), nn.Linear(4, 2)), (4,))
    return out


NETS = _nets()


def _set(kind: str, shape, B=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((B, *shape), generator=g) * 0.5
    if kind == "box":
        lo = x - torch.rand(x.shape, generator=g) * 0.6
        hi = x + torch.rand(x.shape, generator=g) * 0.6
        return Box(lo, hi)
    if kind == "linf":
        return Ball(x, 0.3, p="inf")
    if kind == "linf_clip":
        return Ball(x.clamp(-0.3, 0.5), torch.tensor([0.2, 0.4, 0.6]), p=math.inf, clip=(-0.3, 0.5))
    if kind == "l2":
        return Ball(x, 0.6, p=2)
    if kind == "l2_clip":
        return Ball(x.clamp(-0.4, 0.4), 0.9, p=2, clip=(-0.5, 0.5))
    if kind == "l1":
        return Ball(x, 0.9, p=1)
    raise AssertionError(kind)


def _check_inside(net, s, r, label):
    g = torch.Generator().manual_seed(7)
    pts = s.sample(N_SAMPLES, generator=g)
    B = pts.shape[0]
    flat = pts.reshape(B * N_SAMPLES, *net.input_shape)
    vals = net.intermediates(flat)
    for n in net.nodes:
        v = vals[n.name].reshape(B, N_SAMPLES, -1)
        lo, hi = r.intermediate[n.name]
        assert lo.shape == (B, *n.shape) and hi.shape == (B, *n.shape)
        assert torch.isfinite(lo).all() and torch.isfinite(hi).all()
        bad = (v < lo.reshape(B, 1, -1)) | (v > hi.reshape(B, 1, -1))
        assert not bad.any(), f"{label}: node {n.name} has {int(bad.sum())} sampled values outside its bounds"
    out = vals[net.output].reshape(B, N_SAMPLES, -1)
    assert (out >= r.lower.unsqueeze(1)).all(), f"{label}: output below the lower bound"
    assert (out <= r.upper.unsqueeze(1)).all(), f"{label}: output above the upper bound"
    return out


SETS = ["box", "linf", "linf_clip", "l2", "l2_clip", "l1"]


@pytest.mark.parametrize("net_name", sorted(NETS))
@pytest.mark.parametrize("set_kind", SETS)
def test_sampled_points_inside_bounds_and_ordering(net_name, set_kind):
    module, shape = NETS[net_name]
    net = models.from_module(module, shape)
    s = _set(set_kind, shape)
    res = {}
    for method in ("ibp", "crown", "alpha-crown"):
        r = compute_bounds(net, s, method=method, alpha_iters=3)
        assert r.method == method
        _check_inside(net, s, r, f"{net_name}/{set_kind}/{method}")
        res[method] = r
    for method in ("crown", "alpha-crown"):  # CROWN's own bounds, not intersected with IBP
        r = compute_bounds(net, s, method=method, alpha_iters=3, intersect_ibp=False, skip_stable=False)
        _check_inside(net, s, r, f"{net_name}/{set_kind}/{method}/raw")
    ibp, crown, alpha = res["ibp"], res["crown"], res["alpha-crown"]
    # CROWN is intersected with IBP and alpha-CROWN keeps the best iterate (starting from CROWN)
    assert (crown.lower >= ibp.lower).all() and (crown.upper <= ibp.upper).all()
    assert (alpha.lower >= crown.lower).all() and (alpha.upper <= crown.upper).all()
    for n in net.nodes:
        (li, ui), (lc, uc) = ibp.intermediate[n.name], crown.intermediate[n.name]
        assert (lc >= li).all() and (uc <= ui).all(), n.name


@pytest.mark.parametrize("net_name", ["mlp_relu", "residual", "conv", "maxmin", "householder", "smooth"])
def test_random_specification_matrix(net_name):
    module, shape = NETS[net_name]
    net = models.from_module(module, shape)
    s = _set("linf", shape, seed=3)
    n_out = int(math.prod(net.output_shape))
    C = torch.randn(3, 5, n_out, generator=torch.Generator().manual_seed(2))
    pts = s.sample(N_SAMPLES, generator=torch.Generator().manual_seed(4))
    y = net(pts.reshape(-1, *shape)).reshape(3, N_SAMPLES, n_out)
    cy = torch.einsum("bmo,bno->bnm", C, y)
    for method in ("ibp", "crown", "alpha-crown"):
        r = compute_bounds(net, s, method=method, C=C, alpha_iters=4)
        assert r.lower.shape == (3, 5)
        assert (cy >= r.lower.unsqueeze(1)).all() and (cy <= r.upper.unsqueeze(1)).all(), method
    # a spec shared by the batch, given as (m, out)
    r2 = compute_bounds(net, s, method="crown", C=C[0])
    assert (torch.einsum("mo,bno->bnm", C[0], y) >= r2.lower.unsqueeze(1)).all()


def test_crown_tighter_than_ibp_on_relu_mlp():
    module, shape = NETS["mlp_relu"]
    net = models.from_module(module, shape)
    s = _set("linf", shape)
    w = {m: (lambda r: (r.upper - r.lower).mean().item())(compute_bounds(net, s, method=m, alpha_iters=20))
         for m in ("ibp", "crown", "alpha-crown")}
    assert w["crown"] < 0.8 * w["ibp"]
    assert w["alpha-crown"] <= w["crown"]


def test_float64_option_and_device_dtype():
    module, shape = NETS["residual"]
    net = models.from_module(module, shape)
    s = _set("l2", shape)
    r = compute_bounds(net, s, method="crown", dtype=torch.float64)
    assert r.lower.dtype == torch.float64
    pts = s.sample(N_SAMPLES, generator=torch.Generator().manual_seed(1)).double()
    y = net.to(dtype=torch.float64)(pts.reshape(-1, *shape)).reshape(3, N_SAMPLES, -1)
    assert (y >= r.lower.unsqueeze(1)).all() and (y <= r.upper.unsqueeze(1)).all()
    r32 = compute_bounds(net, s, method="crown")
    assert r32.lower.dtype == torch.float32
    assert torch.allclose(r32.lower.double(), r.lower, atol=1e-3)


def test_alpha_warm_start_and_one_sided():
    module, shape = NETS["mlp_relu"]
    net = models.from_module(module, shape)
    s = _set("linf", shape)
    r1 = compute_bounds(net, s, method="alpha-crown", alpha_iters=10)
    assert set(r1.alpha) == {"lower", "upper"} and r1.alpha["lower"]
    r2 = compute_bounds(net, s, method="alpha-crown", alpha_iters=0, alpha_init=r1.alpha)
    # warm start with 0 iterations reproduces the optimized bounds (up to rounding)
    assert torch.allclose(r2.lower, r1.lower, atol=1e-5)
    lo_only = compute_bounds(net, s, method="crown", bound_upper=False)
    full = compute_bounds(net, s, method="crown")
    ibp = compute_bounds(net, s, method="ibp")
    # the skipped side falls back to IBP on the output (with CROWN intermediate bounds)
    assert torch.equal(lo_only.lower, full.lower)
    assert (lo_only.upper >= full.upper).all() and (lo_only.upper <= ibp.upper).all()


def test_bad_arguments_raise_one_line_errors():
    from nncertify.models.errors import InvalidArgumentError, ShapeMismatchError
    module, shape = NETS["mlp_relu"]
    net = models.from_module(module, shape)
    x = torch.zeros(2, 5)
    with pytest.raises(InvalidArgumentError):
        compute_bounds(net, Ball(x, 0.1), method="deeppoly")
    with pytest.raises(InvalidArgumentError):
        Ball(x, -1.0)
    with pytest.raises(InvalidArgumentError):
        Ball(x, 0.1, p=3)
    with pytest.raises(ShapeMismatchError):
        compute_bounds(net, Ball(torch.zeros(2, 4), 0.1))
    with pytest.raises(ShapeMismatchError):
        compute_bounds(net, Ball(x, 0.1), C=torch.ones(2, 3, 7))
    with pytest.raises(InvalidArgumentError):
        Box(x + 1, x)


def test_fixed_preact_splits_are_respected_and_tighten():
    """Branch-and-bound style splits: the bounds hold for every sampled input satisfying the split,
    and infeasible splits are flagged."""
    module, shape = NETS["mlp_relu"]
    net = models.from_module(module, shape)
    s = _set("linf", shape)
    base = compute_bounds(net, s, method="crown")
    act = next(n for n in net.nodes if n.op == "relu")
    l, u = base.intermediate[act.inputs[0]]
    unstable = ((l < 0) & (u > 0))[0].nonzero().squeeze(1)
    assert unstable.numel() > 0
    i = int(unstable[0])
    pts = s.sample(4000, generator=torch.Generator().manual_seed(3))
    flat = pts.reshape(-1, *shape)
    vals = net.intermediates(flat)
    pre = vals[act.inputs[0]].reshape(3, 4000, -1)
    out = vals[net.output].reshape(3, 4000, -1)
    for active in (True, False):
        fl, fu = l.clone(), u.clone()
        if active:
            fl[:, i] = 0.0
        else:
            fu[:, i] = 0.0
        r = compute_bounds(net, s, method="crown", fixed_preact={act.name: (fl, fu)})
        infeasible = (u[:, i] < 0) if active else (l[:, i] > 0)  # the split contradicts the bounds
        assert torch.equal(r.empty, infeasible)
        sat = (pre[:, :, i] >= 0) if active else (pre[:, :, i] <= 0)
        for b in range(3):
            if infeasible[b]:
                continue
            o = out[b][sat[b]]
            assert (o >= r.lower[b]).all() and (o <= r.upper[b]).all()
        # (no tightness claim: without beta-CROWN multipliers a split can loosen CROWN's bound,
        # because the input box is concretized without the split constraint)
    # an infeasible split (lower > upper) is flagged
    fl = l.clone()
    fl[:, i] = u[:, i] + 1.0
    r = compute_bounds(net, s, method="crown", fixed_preact={act.name: (fl, u)})
    assert r.empty.all()


def test_nan_weights_never_give_finite_bounds_or_verification():
    from nncertify.relax import verify_robustness
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        m[2].weight[0, 1] = float("nan")
    net = models.from_module(m, (3,))
    x = torch.zeros(2, 3)
    for method in ("ibp", "crown", "alpha-crown"):
        r = compute_bounds(net, Ball(x, 0.1), method=method, alpha_iters=2)
        assert not torch.isnan(r.lower).any() and not torch.isnan(r.upper).any()
        assert torch.isinf(r.lower[:, 0]).all() and torch.isinf(r.upper[:, 0]).all()
    v = verify_robustness(net, x, torch.zeros(2, dtype=torch.long), 0.1, pgd_steps=0)
    assert v.counts()["verified"] == 0


@pytest.mark.parametrize("set_kind", SETS)
def test_samples_lie_in_their_set(set_kind):
    s = _set(set_kind, (2, 3, 3))
    pts = s.sample(500, generator=torch.Generator().manual_seed(0))
    B = pts.shape[0]
    for k in range(0, 500, 50):
        assert s.contains(pts[:, k], tol=1e-6).all()
    if isinstance(s, Ball) and s.p != math.inf:  # boundary points are on the sphere / vertices
        d = (pts[:, 0] - s.center).flatten(1).norm(p=s.p, dim=1)
        assert torch.allclose(d[(d > 0)], s.eps_t.expand(B)[(d > 0)], rtol=1e-4) or s._clip is not None


def test_chunked_backward_gives_the_same_bounds():
    module, shape = NETS["conv"]
    net = models.from_module(module, shape)
    s = _set("l2", shape)
    a = compute_bounds(net, s, method="crown", skip_stable=False)
    b = compute_bounds(net, s, method="crown", skip_stable=False, chunk_elems=500)
    assert torch.allclose(a.lower, b.lower, atol=1e-5) and torch.allclose(a.upper, b.upper, atol=1e-5)
    for n in net.nodes:
        assert torch.allclose(a.intermediate[n.name][0], b.intermediate[n.name][0], atol=1e-5)


def test_float64_radius_is_not_rounded_through_float32_regression():
    """Found by bench/soundness_fuzz.py: Ball(eps=<python float>) built the radius as a float32 tensor
    (torch's default dtype) before rounding it outward, shrinking a float64 ball by ~1e-8: CROWN bounds
    of a float64 network then missed the ball's vertices."""
    eps = 0.19855884365516416  # float32(eps) < eps
    assert float(torch.tensor(eps, dtype=torch.float32)) < eps
    net = models.from_module(torch.nn.Sequential(torch.nn.Linear(1, 1)).double())
    with torch.no_grad():
        net.nodes[1].params["weight"].fill_(1.0)
        net.nodes[1].params["bias"].zero_()
    center = torch.zeros(1, 1, dtype=torch.float64)
    for p in (math.inf, 2, 1):
        for method in ("ibp", "crown"):
            b = relax.compute_bounds(net, relax.Ball(center, eps, p=p), method=method)
            assert float(b.upper[0, 0]) >= eps and float(b.lower[0, 0]) <= -eps, (p, method)
    b = relax.compute_bounds(net, relax.Ball(center, eps, p=math.inf, clip=(-0.1, 0.30000000000000004)))
    assert float(b.lower[0, 0]) <= -0.1 and float(b.upper[0, 0]) >= eps
