"""Local LipSDP (l2) bounds: sound against sampled autograd gradients, exact at eps = 0, and the
certification step never certifies invalid multipliers."""

import math

import numpy as np
import pytest
import torch
from torch import nn
from patterns import mlp

from nncertify import models
from nncertify.relax.lipschitz import local_lipschitz
from nncertify.relax.lipschitz.bounds.chain import dense_chain
from nncertify.relax.lipschitz.bounds.lipsdp_local import certify_rho, slope_ranges

pytest.importorskip("cvxpy")
FAST_ATTACK = {"n_samples": 64, "n_starts": 4, "steps": 10}




@pytest.mark.parametrize("act", [nn.ReLU, nn.Tanh, lambda: nn.LeakyReLU(0.2)])
def test_local_lipsdp_is_sound_and_tighter_than_global_product(act):
    module = mlp([4, 8, 8, 2], act, 0)
    net = models.from_module(module)
    lo, hi = torch.full((1, 4), -0.3, dtype=torch.float64), torch.full((1, 4), 0.3, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    X = lo + (hi - lo) * torch.rand(3000, 4, generator=g, dtype=torch.float64)
    J = torch.autograd.functional.jacobian(lambda x: module(x).sum(0), X)  # (2, N, 4)
    c = torch.tensor([1.0, -1.0], dtype=torch.float64)
    truth = torch.einsum("o,oni->ni", c, J).norm(dim=-1).max().item()
    r = local_lipschitz(net, (lo, hi), norm="2", c=c, method="lipsdp", attack_options=FAST_ATTACK)
    naive = local_lipschitz(net, (lo, hi), norm="2", c=c, method="naive", attack=False)
    assert truth - 1e-12 <= r.upper < naive.upper
    assert r.lower <= r.upper
    rows = local_lipschitz(net, (lo, hi), norm="2", method="lipsdp", attack=False)
    assert all(u >= t - 1e-12 for u, t in zip(rows.per_output_upper, J.norm(dim=-1).amax(1).tolist()))
    opn = torch.linalg.matrix_norm(J.permute(1, 0, 2), ord=2).max().item()
    assert opn - 1e-12 <= rows.upper


def test_local_lipsdp_is_exact_at_zero_radius():
    module = mlp([5, 10, 10, 3], nn.ReLU, 1)
    net = models.from_module(module)
    x0 = torch.tensor([[0.3, -0.2, 0.1, 0.7, -0.5]], dtype=torch.float64)
    grad = torch.autograd.functional.jacobian(lambda x: module(x)[0, 2], x0)[0]
    r = local_lipschitz(net, (x0, x0), norm="2", c=torch.eye(3)[2], method="lipsdp", attack=False)
    assert r.upper == pytest.approx(grad.norm().item(), rel=1e-3) and r.upper >= grad.norm().item()


def test_certification_rejects_invalid_multipliers():
    module = mlp([3, 4, 2], nn.ReLU, 2)
    chain = dense_chain(models.from_module(module).to(dtype=torch.float64))
    W = [w.numpy() for w in chain.weights]
    slopes = slope_ranges(chain, None)
    w_out = W[-1].T @ np.array([1.0, 0.0])
    assert math.isinf(certify_rho(W, slopes, [np.zeros(4)], w_out))  # lambda = 0 cannot certify
    big = certify_rho(W, slopes, [np.full(4, 10.0)], w_out)
    assert math.isfinite(big)
    # a certified global constant: never below the gradient norm anywhere (sampled widely)
    X = torch.randn(2000, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 5
    G = torch.autograd.functional.jacobian(lambda x: module(x)[:, 0].sum(), X)
    assert G.norm(dim=-1).max().item() <= math.sqrt(big) + 1e-12
