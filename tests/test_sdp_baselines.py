"""sdp.baselines.certified_mp: >= the exact matrix-norm product (computed independently with numpy SVD /
row sums, and in exact rational arithmetic for the l_inf row sums), >= every pattern's Jacobian norm,
and refused for activations that are not 1-Lipschitz in the norm."""

from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn

from nncertify import models
from nncertify.models import HouseholderActivation, MaxMin
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
