"""Local Lipschitz bounds for every supported activation: never below true gradient norms sampled by
autograd on the original nn.Module (independent of the bounding code), for l_inf, l1 and l2 inputs."""

import pytest
import torch
from torch import nn

from nncertify import models
from nncertify.models.layers import GroupSort, HouseholderActivation, MaxMin
from nncertify.relax.lipschitz import jacobian_bounds, local_lipschitz

FAST_ATTACK = {"n_samples": 64, "n_starts": 4, "steps": 10}

ACTS = {
    "relu": lambda n: nn.ReLU(),
    "leaky_relu": lambda n: nn.LeakyReLU(0.1),
    "tanh": lambda n: nn.Tanh(),
    "sigmoid": lambda n: nn.Sigmoid(),
    "maxmin_pairs": lambda n: MaxMin("pairs"),
    "maxmin_halves": lambda n: MaxMin("halves"),
    "groupsort2_asc": lambda n: GroupSort(2, descending=False),
    "householder": lambda n: HouseholderActivation(n, 2, v=torch.randn(n // 2, 2)),
}


def net_with(act, seed=0, widths=(5, 8, 8, 3)):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(widths[:-2], widths[1:-1]):
        layers += [nn.Linear(a, b), ACTS[act](b)]
    layers.append(nn.Linear(widths[-2], widths[-1]))
    return nn.Sequential(*layers).double()


def sampled_jacobians(module, lo, hi, n=1500, seed=3):
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, lo.shape[1], generator=g, dtype=torch.float64)
    v = (torch.rand(n, lo.shape[1], generator=g, dtype=torch.float64) > 0.5).double()
    X = torch.cat((lo + (hi - lo) * u, lo + (hi - lo) * v))
    return torch.autograd.functional.jacobian(lambda x: module(x).sum(0), X)  # (out, N, in)


@pytest.mark.parametrize("act", sorted(ACTS))
@pytest.mark.parametrize("seed", [0, 1])
def test_bounds_dominate_sampled_gradients(act, seed):
    module = net_with(act, seed)
    net = models.from_module(module)
    x0 = torch.linspace(-0.5, 0.5, 5, dtype=torch.float64)[None]
    lo, hi = x0 - 0.4, x0 + 0.4
    J = sampled_jacobians(module, lo, hi)
    jb = jacobian_bounds(net, (lo, hi))
    assert (J >= jb.lower[:, None, :] - 1e-12).all() and (J <= jb.upper[:, None, :] + 1e-12).all()
    for norm, dual in (("inf", lambda G: G.abs().sum(-1)), ("1", lambda G: G.abs().amax(-1)),
                       ("2", lambda G: G.norm(dim=-1))):
        truth = dual(J).amax(1)
        res = {m: local_lipschitz(net, (lo, hi), norm=norm, method=m, attack=(m == "crown"),
                                  attack_options=FAST_ATTACK) for m in ("crown", "recurjac", "ibp")}
        for m, r in res.items():
            assert all(u >= t - 1e-12 for u, t in zip(r.per_output_upper, truth.tolist())), (act, norm, m)
        r = res["crown"]
        assert r.lower <= r.upper
        if norm == "inf":  # provable ordering of the relaxations for the same forward masks
            for j in range(3):
                assert res["crown"].per_output_upper[j] <= res["recurjac"].per_output_upper[j] * (1 + 1e-9)
                assert res["recurjac"].per_output_upper[j] <= res["ibp"].per_output_upper[j] * (1 + 1e-9)
    # the naive product is a global bound: sound as well
    nv = local_lipschitz(net, (lo, hi), method="naive", attack=False)
    assert all(u >= t - 1e-12 for u, t in zip(nv.per_output_upper, J.abs().sum(-1).amax(1).tolist()))


@pytest.mark.parametrize("act", ["leaky_relu", "tanh", "maxmin_pairs", "householder"])
def test_zero_radius_is_exact_for_every_activation(act):
    module = net_with(act, seed=2)
    net = models.from_module(module)
    x0 = torch.tensor([[0.31, -0.22, 0.13, 0.71, -0.45]], dtype=torch.float64)
    J = torch.autograd.functional.jacobian(lambda x: module(x)[0], x0)[:, 0]
    r = local_lipschitz(net, (x0, x0), attack=False)
    assert r.per_output_upper == pytest.approx(J.abs().sum(1).tolist(), rel=1e-7)


def test_leaky_relu_bab_is_sound_and_tightens():
    module = net_with("leaky_relu", seed=4, widths=(4, 8, 8, 2))
    net = models.from_module(module)
    lo, hi = torch.full((1, 4), -0.5, dtype=torch.float64), torch.full((1, 4), 0.5, dtype=torch.float64)
    J = sampled_jacobians(module, lo, hi, n=3000)
    truth = J.abs().sum(-1).amax(1).max().item()
    plain = local_lipschitz(net, (lo, hi), attack_options=FAST_ATTACK)
    bab = local_lipschitz(net, (lo, hi), bab_timeout=20, attack_options=FAST_ATTACK)
    assert truth - 1e-12 <= bab.upper <= plain.upper
    assert bab.exact and bab.lower <= bab.upper


def test_householder_gate_uses_v_as_stored_regression():
    """Found by bench/soundness_fuzz.py: a float32 Householder net whose v is unit only to float32
    precision got an upper bound below the true gradient norm, because the gate re-normalized v in
    float64 (bounding a slightly different function). The description's semantics use v as stored;
    a v of norm 1.05 makes the discrepancy large."""
    import math as _m
    import torch as _t
    from nncertify import models as _models
    from nncertify import relax as _relax
    from nncertify.models.graph import Network, Node
    from nncertify.relax.lipschitz import local_lipschitz as _ll
    g = _t.Generator().manual_seed(3)
    W1 = _t.randn(4, 3, generator=g, dtype=_t.float64)
    v = _t.randn(2, 2, generator=g, dtype=_t.float64)
    v = 1.05 * v / v.norm(dim=1, keepdim=True)
    W2 = _t.randn(2, 4, generator=g, dtype=_t.float64)
    net = Network([Node("input", "input", (), {}, {"shape": (3,)}),
                   Node("l1", "linear", ("input",), {"weight": W1, "bias": _t.zeros(4, dtype=_t.float64)}),
                   Node("h", "householder", ("l1",), {"v": v}, {"group_size": 2}),
                   Node("l2", "linear", ("h",), {"weight": W2, "bias": _t.zeros(2, dtype=_t.float64)})])
    center = _t.zeros(1, 3, dtype=_t.float64)
    for norm, p in (("inf", _m.inf), ("1", 1), ("2", 2)):
        res = _ll(net, _relax.Ball(center, 1.0, p=p), norm=norm)
        xs = (2 * _t.rand(3000, 3, generator=g, dtype=_t.float64) - 1)
        J = _t.func.vmap(_t.func.jacrev(lambda z: net(z[None])[0]))(xs)
        sampled = float(_t.linalg.matrix_norm(J, ord={"inf": _m.inf, "1": 1, "2": 2}[norm]).max())
        assert res.upper >= sampled * (1 - 1e-12), (norm, res.upper, sampled)
