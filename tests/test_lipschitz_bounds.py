"""Local Lipschitz bounds (relax.lipschitz): soundness against sampled true gradients, ordering of the
relaxations, exactness at eps -> 0, and the golden per-class numbers of the reference study."""

import math

import pytest
import torch
from torch import nn
from patterns import mlp

from nncertify import models
from nncertify.relax.lipschitz import jacobian_bounds, local_lipschitz, monotonicity
from nncertify.relax.lipschitz.api import input_box

FAST_ATTACK = {"n_samples": 64, "n_starts": 4, "steps": 10}




def box(n, center=0.5, eps=0.1, clip=(-1.0, 2.0)):
    x0 = torch.full((1, n), center, dtype=torch.float64)
    return (x0 - eps).clamp(*clip), (x0 + eps).clamp(*clip)


def sampled_grad_norms(module, lo, hi, n=2000, seed=1, q=1):
    """Independent truth: autograd on the nn.Module at uniform and vertex samples; (out,) max dual norms."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, lo.shape[1], generator=g, dtype=torch.float64)
    v = (torch.rand(n, lo.shape[1], generator=g, dtype=torch.float64) > 0.5).double()
    X = torch.cat((lo + (hi - lo) * u, lo + (hi - lo) * v)).requires_grad_(True)
    J = torch.autograd.functional.jacobian(lambda x: module(x).sum(0), X)  # (out, N, in)
    if q == 1:
        return J.abs().sum(-1).amax(1), J
    if q == 2:
        return J.norm(dim=-1).amax(1), J
    return J.abs().amax(-1).amax(1), J


def test_golden_per_class_crown_numbers_of_the_reference():
    # reference §7: random 16-16-16-10, eps=0.1, x0=0.5, CROWN intermediate bounds (no alpha)
    net = models.from_module(mlp([16, 16, 16, 10]).float())
    r = local_lipschitz(net, box(16), method="crown", forward="crown", attack=False)
    expected = [0.7882, 0.7652, 0.5910, 1.2523, 0.8260, 0.7391, 0.9530, 0.8740, 0.5971, 0.8806]
    assert r.per_output_upper == pytest.approx(expected, abs=6e-5)
    naive = local_lipschitz(net, box(16), method="naive", attack=False)
    assert naive.upper == pytest.approx(17.18, abs=5e-3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_upper_bounds_dominate_sampled_gradients_and_are_ordered(seed):
    module = mlp([6, 12, 12, 4], seed=seed)
    net = models.from_module(module)
    lo, hi = box(6, eps=0.3)
    truth, _ = sampled_grad_norms(module, lo, hi)
    res = {m: local_lipschitz(net, (lo, hi), method=m, attack=(m == "crown"), attack_options=FAST_ATTACK)
           for m in ("crown", "recurjac", "ibp", "naive")}
    for m, r in res.items():
        assert all(u >= t - 1e-12 for u, t in zip(r.per_output_upper, truth.tolist())), m
    # provable ordering for the same forward masks (see relax/lipschitz/bounds/backward.py)
    for j in range(4):
        c, rj, ib, nv = (res[m].per_output_upper[j] for m in ("crown", "recurjac", "ibp", "naive"))
        assert c <= rj * (1 + 1e-9) and rj <= ib * (1 + 1e-9) and ib <= nv * (1 + 1e-9)
    r = res["crown"]
    assert r.lower <= r.upper and r.lower >= 0.9 * truth.max().item() - 1e-12  # attack finds most of the truth
    assert r.upper_kind == "certified" and r.lower_kind == "attack"


def test_zero_radius_bound_equals_autograd_gradient_norm():
    module = mlp([5, 10, 10, 3], seed=3)
    net = models.from_module(module)
    x0 = torch.tensor([[0.3, -0.2, 0.1, 0.7, -0.5]], dtype=torch.float64)
    J = torch.autograd.functional.jacobian(lambda x: module(x)[0], x0)[:, 0]  # (3, 5)
    for eps in (0.0, 1e-7):
        r = local_lipschitz(net, (x0 - eps, x0 + eps), attack=False)
        assert r.per_output_upper == pytest.approx(J.abs().sum(1).tolist(), rel=1e-5)
        jb = jacobian_bounds(net, (x0 - eps, x0 + eps))
        assert torch.allclose(jb.lower, J, atol=1e-5) and torch.allclose(jb.upper, J, atol=1e-5)


def test_margin_vector_c_and_l1_l2_norms_are_sound():
    module = mlp([6, 10, 10, 3], seed=4)
    net = models.from_module(module)
    lo, hi = box(6, eps=0.25)
    c = torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64)
    _, J = sampled_grad_norms(module, lo, hi)
    gm = torch.einsum("o,oni->ni", c, J)
    r = local_lipschitz(net, (lo, hi), c=c, attack_options=FAST_ATTACK)
    assert r.upper >= gm.abs().sum(-1).max().item() - 1e-12 and r.lower <= r.upper
    for norm, q in (("1", "inf"), ("2", 2)):
        r = local_lipschitz(net, (lo, hi), c=c, norm=norm, attack_options=FAST_ATTACK)
        truth = gm.abs().amax(-1).max() if q == "inf" else gm.norm(dim=-1).max()
        assert truth.item() - 1e-12 <= r.upper and r.lower <= r.upper
        # whole-Jacobian operator norm
        ro = local_lipschitz(net, (lo, hi), norm=norm, attack=False)
        opn = torch.linalg.matrix_norm(J.permute(1, 0, 2), ord=1 if q == "inf" else 2).max()
        assert opn.item() - 1e-12 <= ro.upper


def test_elementwise_jacobian_bounds_and_monotonicity_are_sound():
    module = mlp([4, 8, 8, 2], seed=5)
    net = models.from_module(module)
    lo, hi = box(4, eps=0.05)
    _, J = sampled_grad_norms(module, lo, hi, n=500)
    jb = jacobian_bounds(net, (lo, hi))
    assert (J >= jb.lower[:, None, :] - 1e-12).all() and (J <= jb.upper[:, None, :] + 1e-12).all()
    mono = monotonicity(net, (lo, hi))
    for i in range(2):
        for j in range(4):
            s = int(mono.sign[i, j])
            if s == 1:
                assert (J[i, :, j] >= 0).all()
            elif s == -1:
                assert (J[i, :, j] <= 0).all()
    assert (mono.sign != 0).any()  # small region: some signs are certified
    only = monotonicity(net, (lo, hi), pairs=[(0, 1)])
    assert int((only.sign != 0).sum()) <= 1


def test_bad_arguments_raise_one_line_errors():
    from nncertify.models.errors import InvalidArgumentError, ShapeMismatchError
    net = models.from_module(mlp([3, 4, 2]))
    lo, hi = box(3)
    with pytest.raises(InvalidArgumentError):
        local_lipschitz(net, (lo, hi), norm="3", attack=False)
    with pytest.raises(InvalidArgumentError):
        local_lipschitz(net, (hi, lo - 1), attack=False)
    with pytest.raises(ShapeMismatchError):
        local_lipschitz(net, box(4), attack=False)
    with pytest.raises(ShapeMismatchError):
        local_lipschitz(net, (lo, hi), c=torch.ones(3), attack=False)
    with pytest.raises(InvalidArgumentError):
        local_lipschitz(net, (lo, hi), bab_timeout=-1.0, attack=False)


def test_nan_weights_are_never_certified():
    from nncertify.models.errors import ModelLoadError
    module = mlp([3, 4, 2])
    with torch.no_grad():
        module[0].weight[0, 0] = float("nan")
    net = models.from_module(module)
    with pytest.raises(ModelLoadError):
        local_lipschitz(net, box(3), attack=False)


def test_accepts_relax_sets():
    relax = pytest.importorskip("nncertify.relax")
    net = models.from_module(mlp([3, 4, 2]))
    lo, hi = box(3)
    a = local_lipschitz(net, relax.Box(lo, hi), attack=False).upper
    b = local_lipschitz(net, (lo, hi), attack=False).upper
    assert a == b
    xl, xu = input_box(net.to(dtype=torch.float64), relax.Box(lo, hi))
    assert torch.equal(xl, lo[0]) and torch.equal(xu, hi[0])


def test_monotonicity_is_certified_for_a_network_monotone_by_construction():
    # closed form: non-negative hidden weights -> each output is non-decreasing in every input when its
    # last-layer row is non-negative and non-increasing when it is non-positive
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 2)).double()
    with torch.no_grad():
        for m in (module[0], module[2]):
            m.weight.abs_()
        module[4].weight[0].abs_()
        module[4].weight[1] = -module[4].weight[1].abs()
    net = models.from_module(module)
    lo, hi = torch.full((1, 3), -1.0, dtype=torch.float64), torch.full((1, 3), 1.0, dtype=torch.float64)
    mono = monotonicity(net, (lo, hi))
    assert (mono.sign[0] == 1).all() and (mono.sign[1] == -1).all()
    assert mono.label(0, 0) == "increasing" and mono.label(1, 2) == "decreasing"


def test_attack_lower_bound_with_a_dead_neuron_is_positive():
    """Regression: a neuron whose weights decayed to ~1e-10 sits within an absolute kink tolerance of 0
    everywhere; the differentiability test must be relative to its own scale (found via the CLI on the zoo)."""
    import math as _m
    import torch as _t
    from torch import nn as _nn
    from nncertify import models as _models
    from nncertify import relax as _relax
    from nncertify.relax.lipschitz import local_lipschitz as _ll
    _t.manual_seed(0)
    m = _nn.Sequential(_nn.Linear(4, 6), _nn.ReLU(), _nn.Linear(6, 3)).double()
    with _t.no_grad():
        m[0].weight[2].fill_(1e-12)
        m[0].bias[2] = 3e-10
    net = _models.from_module(m)
    res = _ll(net, _relax.Ball(_t.zeros(1, 4, dtype=_t.float64), 0.1, p=_m.inf), norm="inf")
    assert 0 < res.lower <= res.upper
