"""Each elementwise relaxation aL x + bL <= phi(x) <= aU x + bU is checked on a dense grid of every
interval (random, tiny, huge, touching 0, degenerate), for CROWN's slopes and random alphas; and the
sorting/reflection rewrites (relax.piecewise) reproduce the layers of models/ exactly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nncertify.models import layers as L
from nncertify.relax.activations import ACTIVATION_RELAXATIONS
from nncertify.relax.piecewise import CompareExchange, HouseholderMap, groupsort_layers, maxmin_layers, sorting_network


pytestmark = pytest.mark.usefixtures("single_thread")  # many small tensor ops: see tests/conftest.py


REF = {  # reference semantics, written independently of relax/
    "relu": lambda x, a: torch.relu(x),
    "leaky_relu": lambda x, a: F.leaky_relu(x, a["negative_slope"]),
    "tanh": lambda x, a: torch.tanh(x),
    "sigmoid": lambda x, a: torch.sigmoid(x),
}
CASES = [("relu", {}), ("tanh", {}), ("sigmoid", {})] + [
    ("leaky_relu", {"negative_slope": s}) for s in (-0.5, 0.0, 0.01, 0.3, 1.0, 1.7)]


def _intervals(dtype):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(400, generator=g, dtype=torch.float64) * 3
    b = torch.randn(400, generator=g, dtype=torch.float64) * 3
    l, u = torch.minimum(a, b), torch.maximum(a, b)
    extra_l = torch.tensor([0.0, -1.0, -1e-9, -20.0, 0.5, -3.0, 2.0, -1e-3, -0.7, -5.0, 1.0], dtype=torch.float64)
    extra_u = torch.tensor([0.0, 0.0, 1e-9, 20.0, 0.5, 1e-4, 2.0 + 1e-8, 8.0, 0.7, 0.1, 40.0], dtype=torch.float64)
    return torch.cat([l, extra_l]).to(dtype), torch.cat([u, extra_u]).to(dtype)


def _check(name, attrs, l, u, coeffs):
    aL, bL, aU, bU = (c.double() for c in coeffs)
    t = torch.linspace(0, 1, 2001, dtype=torch.float64)
    l64, u64 = l.double().unsqueeze(-1), u.double().unsqueeze(-1)
    x = torch.minimum(l64 + t * (u64 - l64), u64)
    x = torch.cat([x, torch.zeros_like(x[..., :1]).clamp(min=l64, max=u64)], -1)
    y = REF[name](x, attrs)
    lo = aL.unsqueeze(-1) * x + bL.unsqueeze(-1)
    hi = aU.unsqueeze(-1) * x + bU.unsqueeze(-1)
    assert (lo <= y + 1e-12).all(), f"{name} {attrs}: lower line above phi by {(lo - y).max().item()}"
    assert (hi >= y - 1e-12).all(), f"{name} {attrs}: upper line below phi by {(y - hi).max().item()}"
    return (hi - lo).max(-1).values


@pytest.mark.parametrize("name,attrs", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_relaxation_is_sound_on_dense_grid(name, attrs, dtype):
    act = ACTIVATION_RELAXATIONS[name]
    l, u = _intervals(dtype)
    gap = _check(name, attrs, l, u, act.relax(l, u, attrs))
    # tightness sanity: degenerate intervals give (almost) exact lines
    deg = (u - l).double() < 1e-7
    assert (gap[deg] < 1e-6).all()
    # IBP images contain the sampled values
    il, iu = act.ibp(l.double(), u.double(), attrs)
    t = torch.linspace(0, 1, 501, dtype=torch.float64)
    x = torch.minimum(l.double().unsqueeze(-1) + t * (u.double() - l.double()).unsqueeze(-1), u.double().unsqueeze(-1))
    y = REF[name](x, attrs)
    assert (y >= il.unsqueeze(-1) - 1e-12).all() and (y <= iu.unsqueeze(-1) + 1e-12).all()


@pytest.mark.parametrize("name,attrs", [c for c in CASES if c[0] in ("relu", "leaky_relu")])
def test_every_alpha_in_range_gives_a_sound_lower_line(name, attrs):
    act = ACTIVATION_RELAXATIONS[name]
    l, u = _intervals(torch.float64)
    rng = act.alpha_bounds(l, u, attrs)
    if rng is None:
        pytest.skip("no optimizable slope for this activation (concave leaky relu)")
    g = torch.Generator().manual_seed(1)
    alpha = rng[0] + (rng[1] - rng[0]) * torch.rand(l.shape[0], 3, generator=g, dtype=torch.float64)
    alpha = alpha.T.unsqueeze(0)  # (1, m=3, n)
    aL, bL, aU, bU = act.relax(l.unsqueeze(0), u.unsqueeze(0), attrs, alpha)
    for k in range(3):
        _check(name, attrs, l, u, (aL[0, k], bL[0], aU[0], bU[0]))


def test_sigmoidal_mixed_intervals_are_tighter_than_the_box():
    """On l < 0 < u the lines must beat the trivial constant bounds somewhere (not vacuous)."""
    for name in ("tanh", "sigmoid"):
        act = ACTIVATION_RELAXATIONS[name]
        l = torch.tensor([-2.0, -0.5, -4.0], dtype=torch.float64)
        u = torch.tensor([1.0, 3.0, 0.2], dtype=torch.float64)
        aL, bL, aU, bU = act.relax(l, u, {})
        fl, fu = REF[name](l, {}), REF[name](u, {})
        # at the interval ends the upper line is below the constant f(u) at l, the lower above f(l) at u
        assert ((aU * l + bU) < fu).all() and ((aL * u + bL) > fl).all()


# ---------------------------------------------------------------------------- piecewise rewrites
def _apply(layers, x):
    for pm in layers:
        x = pm.forward(x, torch.relu(pm.R(x)))
    return x


@pytest.mark.parametrize("g", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("desc", [True, False])
def test_groupsort_sorting_network_is_exact(g, desc):
    x = torch.randn(64, 3 * g, 2, 2, dtype=torch.float64)
    x[:8] = x[:8].round()  # ties
    layers = groupsort_layers({"group_size": g, "descending": desc}, (3 * g, 2, 2))
    assert torch.allclose(_apply(layers, x), L.group_sort(x, g, desc), rtol=0, atol=1e-12)


def test_sorting_networks_sort_all_zero_one_inputs():
    """0-1 principle: a comparator network sorts everything iff it sorts every 0-1 input."""
    import itertools
    for g in range(1, 9):
        net = sorting_network(g)
        for bits in itertools.product([0, 1], repeat=g):
            v = list(bits)
            for layer in net:
                for i, j in layer:
                    v[i], v[j] = max(v[i], v[j]), min(v[i], v[j])
            assert v == sorted(bits, reverse=True), (g, bits)


@pytest.mark.parametrize("layout", ["pairs", "halves"])
def test_maxmin_rewrite_is_exact(layout):
    x = torch.randn(32, 6, 3, dtype=torch.float64)
    layers = maxmin_layers({"layout": layout}, (6, 3))
    assert torch.allclose(_apply(layers, x), L.max_min(x, layout), rtol=0, atol=1e-12)


def test_householder_rewrite_is_exact_and_adjoints_match():
    v = torch.randn(3, 4, dtype=torch.float64)
    v = v / v.norm(dim=1, keepdim=True)
    pm = HouseholderMap(v, (12, 2))
    x = torch.randn(50, 12, 2, dtype=torch.float64)
    assert torch.allclose(_apply([pm], x), L.householder(x, v), atol=1e-12)
    # adjoint identities <R x, g> = <x, Rt g> etc. for every map
    for m in (pm, CompareExchange([0, 2, 5], [1, 3, 4], (6, 2))):
        xs = torch.randn(7, *m.x_shape, dtype=torch.float64)
        gr = torch.randn(7, *m.pre_shape, dtype=torch.float64)
        assert torch.allclose((m.R(xs) * gr).sum(), (xs * m.Rt(gr)).sum())
        r = torch.randn(7, *m.pre_shape, dtype=torch.float64)
        yA = torch.randn(7, *m.x_shape, dtype=torch.float64)
        y = m.forward(xs, r)
        assert torch.allclose((y * yA).sum(), (xs * m.Pt(yA)).sum() + (r * m.Qt(yA)).sum())
