"""sdp.baselines.certified_mp: >= the exact matrix-norm product (computed independently with numpy SVD /
row sums, and in exact rational arithmetic for the l_inf row sums), >= every pattern's Jacobian norm,
and refused for activations that are not 1-Lipschitz in the norm."""

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn

from nncertify import models
from nncertify.models import HouseholderActivation, MaxMin, from_module
from nncertify.models.errors import UnsupportedOperationError
from nncertify.sdp.baselines import certified_mp
from nncertify.sdp.structure import extract

DEFAULT_DTYPE = torch.float64


def _net(seed, act=MaxMin):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(5, 6), act(), nn.Linear(6, 4), act(), nn.Linear(4, 3)).double()
    return m, models.from_module(m, (5,))


@pytest.mark.parametrize("seed", [0, 1])
def test_certified_mp_l2_and_linf(seed):
    m, net = _net(seed)
    Ws = [l.weight.detach().numpy() for l in m if isinstance(l, nn.Linear)]
    mp2 = float(np.prod([np.linalg.norm(W, 2) for W in Ws]))
    c2 = certified_mp(extract(net), 2)
    assert mp2 <= c2 <= mp2 * (1 + 1e-9)
    c = np.array([0.0, -1.0, 0.0])
    # exact rational l_inf product: sum |.| of the float entries, no rounding
    exact = Fraction(1)
    for W in Ws[:-1]:
        exact *= max(sum(Fraction(abs(float(x))) for x in row) for row in W)
    exact *= sum(Fraction(abs(float(x))) for x in Ws[-1][1])
    ci = certified_mp(extract(net, torch.tensor(c)), "inf")
    assert Fraction(ci) >= exact and ci <= float(exact) * (1 + 1e-12)


def test_certified_mp_refuses_householder_in_linf():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 4), HouseholderActivation(4), nn.Linear(4, 1)).double()
    net = models.from_module(m, (4,))
    assert certified_mp(extract(net), 2) > 0
    with pytest.raises(UnsupportedOperationError, match="l_inf"):
        certified_mp(extract(net), "inf")


@pytest.mark.parametrize("norm", [2, "inf"])
def test_fallback_is_min_of_closed_form_and_mp_and_names_winner(norm):
    from nncertify import sdp
    from nncertify.sdp.baselines import fallback_bound
    torch.manual_seed(3)
    layers = []
    for _ in range(6):
        layers += [nn.Linear(6, 6), MaxMin()]
    m = nn.Sequential(*layers, nn.Linear(6, 2)).double()
    net = models.from_module(m, (6,))
    c = torch.tensor([1.0, 0.0])
    fb = fallback_bound(net, norm, c)
    mp = certified_mp(extract(net, c), norm)
    cf = sdp.lipschitz_bound(net, norm=norm, c=c, method="lifted", solver="FIRST_ORDER", first_order_iters=0)
    assert fb.certified and fb.certified_value == min(mp, cf.certified_value)
    assert fb.solver == ("MP" if mp < cf.certified_value else "CLOSED_FORM")
    lb = sdp.sampled_lower_bound(net, norm, c=c, n=300).value
    assert lb <= fb.certified_value


# ---------------------------------------------------------------------------- issue #19: weights of extreme scale
def _gperm_net():
    """Generalized permutation matrices (one nonzero per row and column, so ||W||_2 = ||W||_inf = max |entry|)
    with entries 1e160 and 1e-160 in one matrix; the path x1 -> 1e160 -> 1e150 -> 5e-10 is linear for x1 >= 0
    (zero biases, ReLU active), so the true Lipschitz constant equals the exact norm product 1e160 1e150 5e-10
    = 5e300 (finite), while 1e160 1e150 = 1e310 overflows float64 and so does the Gram matrix of W1."""
    m = torch.nn.Sequential(torch.nn.Linear(3, 3, bias=False), torch.nn.ReLU(), torch.nn.Linear(3, 3, bias=False),
                            torch.nn.ReLU(), torch.nn.Linear(3, 2, bias=False)).double()
    W1, W2, W3 = (torch.zeros(3, 3, dtype=torch.float64), torch.zeros(3, 3, dtype=torch.float64),
                  torch.zeros(2, 3, dtype=torch.float64))
    W1[0, 1], W1[1, 0], W1[2, 2] = 1e160, 1e-160, 3.0
    W2[0, 2], W2[1, 1], W2[2, 0] = 2.0 ** -600, 1e-160, 1e150
    W3[0, 2], W3[1, 0] = 5e-10, 1e-300
    with torch.no_grad():
        m[0].weight.copy_(W1), m[2].weight.copy_(W2), m[4].weight.copy_(W3)
    exact = Fraction(1e160) * Fraction(1e150) * Fraction(5e-10)
    return m, from_module(m, (3,)), exact


@pytest.mark.parametrize("norm", [2, "inf"])
def test_certified_mp_finite_and_tight_on_mixed_1e160_weights(norm):
    """certified_mp was inf here (the Gram matrix of a 1e160 matrix overflows; 1e160 * 1e150 overflows):
    each norm is now bounded as m 2^e and the product carried in mantissa and exponent."""
    m, net, exact = _gperm_net()
    c = None if norm == 2 else torch.tensor([1.0, 0.0], dtype=torch.float64)
    v = certified_mp(extract(net, c), norm)
    assert math.isfinite(v), v
    assert Fraction(v) >= exact, (v, float(exact))          # a certificate: never below the exact product
    assert Fraction(v) <= exact * Fraction(1 + 1e-9), (v, float(exact))
    # and the exact product is attained (so it is the Lipschitz constant): a secant along x1
    x = torch.zeros(1, 3, dtype=torch.float64)
    y = x.clone()
    y[0, 1] = 1e-20
    with torch.no_grad():
        d = Fraction(float(m(y)[0, 0] - m(x)[0, 0])) / Fraction(1e-20)
    assert Fraction(v) >= d and d >= exact * Fraction(1 - 1e-12)


def test_product_bound_of_the_global_command_on_mixed_1e160_weights():
    """``certify global --method product`` reports this product (certify.tasks._product_bound)."""
    from nncertify.certify.tasks import _product_bound
    _, net, exact = _gperm_net()
    for norm in ("2", "inf"):
        v = _product_bound(net, norm)
        assert v is not None and Fraction(v) >= exact and Fraction(v) <= exact * Fraction(1 + 1e-9), (norm, v)


def test_certified_mp_householder_whose_norm_square_overflows():
    """Householder rows v with ||v||^2 = 1e320 (beyond float64): the constant 2 ||v||^2 - 1 (exact closed form,
    sdp.baselines.householder_lip_up) times ||W_out|| = 1e-200 is finite; bounded from v / 2^e."""
    from nncertify.sdp.structure import Hidden, LayerList
    v = torch.tensor([[1e160, 0.0]], dtype=torch.float64)
    W = torch.eye(2, dtype=torch.float64)
    W_out = torch.tensor([[1e-200, 0.0]], dtype=torch.float64)
    layers = LayerList([Hidden(W, "householder", params={"v": v})], W_out)
    val = certified_mp(layers, 2)
    exact = (2 * Fraction(1e160) ** 2 - 1) * Fraction(1e-200)
    assert math.isfinite(val) and Fraction(val) >= exact and Fraction(val) <= exact * Fraction(1 + 1e-9), val
