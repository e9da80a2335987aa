"""Dense-free Clarke-Jacobian bounds (relax/lipschitz/bounds/implicit.py): conv nets bounded with the layers
applied as ops.  Truth: autograd gradients at sampled points and box vertices (never above the bound),
the dense-chain interval bound (same value up to rounding), the dense product of norms."""

import pytest
import torch
from torch import nn

from nncertify import models
from nncertify.models.errors import UnsupportedOperationError
from nncertify.relax.lipschitz import api, local_lipschitz
from nncertify.relax.lipschitz.bounds.implicit import dense_bytes, jacobian_intervals


def conv_net(seed, in_ch=1, hw=(7, 9), act=nn.ReLU, dtype=torch.float64):
    """Conv before every activation, odd spatial shape, stride 2 + padding, a 1x1 conv, then linear."""
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(in_ch, 3, 3, stride=2, padding=1), act(), nn.Conv2d(3, 4, (2, 3), padding=(1, 0)),
                      act(), nn.Conv2d(4, 2, 1), act(), nn.Flatten())
    with torch.no_grad():
        n = m(torch.zeros(1, in_ch, *hw)).shape[1]
    m.append(nn.Linear(n, 5))
    return m.to(dtype), (in_ch, *hw)


def sampled(module, lo, hi, n=600, seed=1):
    """max over outputs of the largest ||grad f_j||_1 at uniform points and vertices (autograd on the module)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, *lo.shape[1:], generator=g, dtype=torch.float64)
    v = (torch.rand(n, *lo.shape[1:], generator=g, dtype=torch.float64) > 0.5).double()
    X = torch.cat((lo + (hi - lo) * u, lo + (hi - lo) * v)).to(lo.dtype).requires_grad_(True)
    J = torch.autograd.functional.jacobian(lambda x: module(x).sum(0), X)  # (out, N, *in)
    return float(J.reshape(J.shape[0], J.shape[1], -1).abs().sum(-1).amax())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("act", [nn.ReLU, lambda: nn.LeakyReLU(0.2)])
def test_implicit_bounds_are_sound_and_match_the_dense_interval_bound(monkeypatch, dtype, act):
    module, shape = conv_net(1, act=act, dtype=dtype)
    net = models.from_module(module, input_shape=shape)
    x = torch.full((1, *shape), 0.3, dtype=dtype)
    lo, hi = x - 0.15, x + 0.15
    dense_ibp = local_lipschitz(net, (lo, hi), method="ibp", forward="ibp", attack=False).upper
    dense_naive = local_lipschitz(net, (lo, hi), method="naive", attack=False).upper
    monkeypatch.setattr(api, "DENSE_LIMIT_BYTES", 0)  # force the dense-free path
    r = local_lipschitz(net, (lo, hi), method="ibp", forward="ibp", attack_options={"n_samples": 64})
    rc = local_lipschitz(net, (lo, hi), method="ibp", attack=False)  # engine CROWN forward bounds
    assert rc.upper <= r.upper * (1 + 1e-9)  # tighter pre-activation bounds, never looser
    nv = local_lipschitz(net, (lo, hi), method="naive", attack=False)
    assert r.method == "ibp-implicit" and r.lower_kind == "sampled"
    truth = sampled(module, lo, hi)
    assert 0 < r.lower <= truth * (1 + 1e-5) and truth <= rc.upper <= r.upper * (1 + 1e-9)
    assert r.upper == pytest.approx(dense_ibp, rel=1e-8)  # the same interval bound, computed as ops
    assert nv.upper >= dense_naive * (1 - 1e-9) and nv.upper >= r.upper  # per-op norms >= composed norms


def test_jacobian_intervals_contain_every_sampled_jacobian_row():
    module, shape = conv_net(5, in_ch=2, hw=(6, 5))
    net = models.from_module(module, input_shape=shape)
    x = torch.rand(1, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    lo, hi = x - 0.2, x + 0.2
    seeds = torch.tensor([[1.0, -1.0, 0, 0, 0], [0, 0, 2.0, 0, -0.5]], dtype=torch.float64)
    gl, gu = jacobian_intervals(net, lo.reshape(-1), hi.reshape(-1), seeds)
    g = torch.Generator().manual_seed(2)
    X = (lo + (hi - lo) * torch.rand(300, *shape, generator=g, dtype=torch.float64)).requires_grad_(True)
    J = torch.autograd.functional.jacobian(lambda z: module(z).sum(0), X).reshape(5, 300, -1)
    rows = torch.einsum("so,onk->snk", seeds, J)
    assert bool((rows >= gl[:, None] - 1e-12).all() and (rows <= gu[:, None] + 1e-12).all())
    assert bool((gu - gl).max() > 0)  # not trivially a point (unstable neurons exist at this radius)


def test_dense_size_decides_and_unsupported_requests_are_refused(monkeypatch):
    module, shape = conv_net(1)
    net = models.from_module(module, input_shape=shape)
    assert 0 < dense_bytes(net) < api.DENSE_LIMIT_BYTES
    # a CIFAR-shaped CNN does not fit as dense matrices
    big = models.from_module(nn.Sequential(nn.Conv2d(3, 32, 3), nn.ReLU(), nn.Conv2d(32, 32, 3), nn.ReLU(), nn.Flatten(),
                                           nn.Linear(32 * 28 * 28, 10)), input_shape=(3, 32, 32))
    assert dense_bytes(big) > api.DENSE_LIMIT_BYTES
    x = torch.full((1, *shape), 0.5, dtype=torch.float64)
    monkeypatch.setattr(api, "DENSE_LIMIT_BYTES", 0)
    with pytest.raises(UnsupportedOperationError, match="method='lipsdp'.*GB.*use method='crown'"):
        local_lipschitz(net, (x - 0.1, x + 0.1), norm="2", method="lipsdp")
    with pytest.raises(UnsupportedOperationError, match="branch-and-bound"):
        local_lipschitz(net, (x - 0.1, x + 0.1), method="ibp", bab_timeout=1.0)
    tanh = models.from_module(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(2 * 5 * 7, 3)),
                              input_shape=shape)
    with pytest.raises(UnsupportedOperationError, match="tanh"):
        local_lipschitz(tanh, (x - 0.1, x + 0.1), method="ibp")
