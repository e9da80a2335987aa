"""Residual piecewise-linear networks through their lifted chain (relax/lipschitz/bounds/lifted.py).

Independent truths: the module's own forward and autograd Jacobians (sampled, and at the BaB's witness
point), and the input-space branch-and-bound, a separate engine (graph Clarke-Jacobian bounds over
shrinking boxes, relax/lipschitz/search/bab_input.py), run to convergence on tiny nets.
"""

import pytest
import torch
from torch import nn

from nncertify import models
from nncertify.models.errors import UnsupportedOperationError
from nncertify.models.layers import GroupSort, HouseholderActivation, MaxMin, Residual
from nncertify.relax.lipschitz import jacobian_bounds, local_lipschitz
from nncertify.relax.lipschitz.bounds.lifted import lifted_chain
from test_lipschitz_bab_input import FAST_ATTACK, jacobians, sampled_truth

DEFAULT_DTYPE = torch.float64
pytestmark = pytest.mark.usefixtures("single_thread")

ACT = {"relu": lambda n: nn.ReLU(), "leaky_relu": lambda n: nn.LeakyReLU(0.15), "maxmin": lambda n: MaxMin(),
       "householder": lambda n: HouseholderActivation(n, 2, v=torch.randn(n // 2, 2)),
       "groupsort4": lambda n: GroupSort(4, descending=False)}


def residual_net(act, d, w, blocks, out, seed, bias=True, body_out=True):
    """x_0 = act(W_in u); x_k = x_{k-1} + [W_k'] act(W_k x_{k-1}); y = W_out x_B (Pauli-style without W_k')."""
    torch.manual_seed(seed)
    layers = [nn.Linear(d, w, bias=bias), ACT[act](w)]
    for _ in range(blocks):
        body = [nn.Linear(w, w, bias=bias), ACT[act](w)] + ([nn.Linear(w, w, bias=bias)] if body_out else [])
        layers.append(Residual(nn.Sequential(*body)))
    layers.append(nn.Linear(w, out, bias=bias))
    return nn.Sequential(*layers).double()


@pytest.mark.parametrize("act", sorted(ACT))
@pytest.mark.parametrize("body_out", [True, False])
def test_lifted_chain_computes_the_network(act, body_out):
    module = residual_net(act, 3, 8, 3, 2, 1, body_out=body_out)
    chain = lifted_chain(models.from_module(module))
    X = torch.randn(200, 3)
    assert torch.allclose(chain.forward_all(X)[1], module(X), atol=1e-12, rtol=0)
    assert chain.lifted and len(chain.weights) == len(chain.gates) + 1


@pytest.mark.parametrize("act,seed", [("relu", 0), ("maxmin", 1), ("householder", 2), ("leaky_relu", 3),
                                      ("groupsort4", 4)])
def test_complete_bab_on_residual_nets_matches_input_splitting(act, seed):
    module = residual_net(act, 2, 4 if act == "groupsort4" else 6, 2, 2, seed)
    lo, hi = torch.full((2,), -1.0), torch.full((2,), 1.0)
    net = models.from_module(module)
    r = local_lipschitz(net, (lo[None], hi[None]), bab="activation", bab_timeout=30, attack_options=FAST_ATTACK)
    assert r.exact and r.method == "crown+bab"
    assert r.upper == pytest.approx(r.lower, rel=1e-7)
    w = torch.tensor(next(iter(r.stats["witness"].values())))
    assert ((w >= lo) & (w <= hi)).all()
    assert float(jacobians(module, w[None])[0].abs().sum(-1).max()) == pytest.approx(r.lower, rel=1e-9)
    assert sampled_truth(module, lo, hi) <= r.upper * (1 + 1e-12)
    if act == "groupsort4":
        return  # the graph bounds of input splitting do not take GroupSort(4) (sorting networks: chains only)
    ri = local_lipschitz(net, (lo[None], hi[None]), bab="input", bab_timeout=20, attack_options=FAST_ATTACK,
                         bab_options={"rel_tol": 1e-7})
    assert ri.lower <= r.upper * (1 + 1e-9) and r.upper <= ri.upper * (1 + 1e-9)  # both engines bracket it
    if ri.status in ("exact", "converged"):
        assert ri.upper == pytest.approx(r.upper, rel=1e-5)


def test_bias_free_residual_net_around_0_is_exact():
    module = residual_net("maxmin", 3, 8, 2, 2, 5, bias=False, body_out=False)
    lo, hi = torch.full((3,), -1.0), torch.full((3,), 1.0)
    r = local_lipschitz(models.from_module(module), (lo[None], hi[None]), bab="activation", bab_timeout=30,
                        attack_options=FAST_ATTACK)
    assert r.exact and r.stats.get("shells") == 6
    assert sampled_truth(module, lo, hi) <= r.upper * (1 + 1e-12)


def test_plain_and_jacobian_bounds_of_residual_nets_are_sound():
    module = residual_net("maxmin", 4, 8, 2, 3, 6)
    lo, hi = torch.full((4,), 0.1), torch.full((4,), 0.9)
    net = models.from_module(module)
    r = local_lipschitz(net, (lo[None], hi[None]), attack_options=FAST_ATTACK)
    assert sampled_truth(module, lo, hi) <= r.upper
    jb = jacobian_bounds(net, (lo[None], hi[None]))
    J = jacobians(module, lo + (hi - lo) * torch.rand(2000, 4, generator=torch.Generator().manual_seed(0)))
    assert (J >= jb.lower - 1e-12).all() and (J <= jb.upper + 1e-12).all()


def test_unsupported_node_in_a_residual_net_is_named():
    module = nn.Sequential(nn.Linear(2, 4), Residual(nn.Sequential(nn.Linear(4, 4), nn.Tanh())),
                           nn.Linear(4, 2)).double()
    with pytest.raises(UnsupportedOperationError, match="tanh"):
        local_lipschitz(models.from_module(module), (torch.zeros(1, 2), torch.ones(1, 2)), bab="activation",
                        bab_timeout=1.0, attack=False)


@pytest.mark.parametrize("method", ["naive", "lipsdp"])
def test_chain_only_methods_refuse_residual_nets_by_name(method):
    module = residual_net("relu", 2, 4, 1, 2, 0)
    with pytest.raises(UnsupportedOperationError, match="residual connections"):
        local_lipschitz(models.from_module(module), (torch.zeros(1, 2), torch.ones(1, 2)), method=method,
                        norm="2" if method == "lipsdp" else "inf", attack=False)
