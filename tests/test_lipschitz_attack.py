"""The attack's lower estimate must be a gradient norm at a point of the REGION, not of its bounding box.

Regression: for l2 / l1 balls the attack sampled the bounding box, so its "lower bound" could exceed
the true local constant over the ball.  Truth here is by construction: on the ball the network is
linear with gradient (1, 0).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nncertify.models.trace import from_module
from nncertify.relax import Ball
from nncertify.relax.lipschitz import local_lipschitz

FAST = {"steps": 20, "n_samples": 256, "n_starts": 8}


def _corner_net():
    """f(x) = 10 relu(x1 + x2 - 1.5) + relu(x1 + 5): the first ReLU is off on the unit l2 ball and the
    l1 ball of radius 1.4 around 0 (x1 + x2 <= sqrt 2, resp. <= 1.4) but on near the box corner (1, 1)."""
    lin1 = nn.Linear(2, 2)
    lin2 = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        lin1.weight.copy_(torch.tensor([[1.0, 1.0], [1.0, 0.0]]))
        lin1.bias.copy_(torch.tensor([-1.5, 5.0]))
        lin2.weight.copy_(torch.tensor([[10.0, 1.0]]))
    return from_module(nn.Sequential(lin1, nn.ReLU(), lin2).double().eval(), (2,))


@pytest.mark.parametrize("p,eps,norm", [(2, 1.0, "2"), (1, 1.4, "1"), (2, 1.0, "inf")])
def test_attack_on_a_ball_stays_in_the_ball(p, eps, norm):
    net = _corner_net()
    region = Ball(torch.zeros(1, 2, dtype=torch.float64), eps, p=p)
    r = local_lipschitz(net, region, norm=norm, attack_options=FAST)
    true = {"2": 1.0, "1": 1.0, "inf": 1.0}[norm]  # dual norm of the gradient (1, 0) on the whole ball
    assert r.lower <= true * (1 + 1e-12), (r.lower, true)
    assert r.lower >= true * (1 - 1e-12)  # and the attack does find it
    assert r.upper >= r.lower


def test_box_regions_still_see_the_corner():
    """On the box itself the corner is in the region: the estimate must find the larger gradient."""
    net = _corner_net()
    lo, hi = torch.full((1, 2), -1.0, dtype=torch.float64), torch.ones(1, 2, dtype=torch.float64)
    r = local_lipschitz(net, (lo, hi), norm="inf", attack_options=FAST)
    assert math.isclose(r.lower, 11.0 + 10.0, rel_tol=1e-12)  # ||(11, 10)||_1 at the corner
    assert r.upper >= r.lower


def test_activation_bab_on_an_l1_ball_is_not_called_exact_and_its_lower_bound_stays_in_the_ball():
    """BaB runs over the ball's bounding box: completing it proves the box's value, not the ball's."""
    net = _corner_net()
    region = Ball(torch.zeros(1, 2, dtype=torch.float64), 1.4, p=1)
    r = local_lipschitz(net, region, norm="1", c=torch.ones(1, dtype=torch.float64), bab_timeout=10,
                        bab="activation", attack_options=FAST)
    assert not r.exact and r.status in ("box_exact", "timeout")
    assert r.lower <= 1.0 * (1 + 1e-12)  # the true l1-input constant over the ball (gradient (1, 0))
    assert r.upper >= 1.0
