"""CROWN on the backward graph with the layers applied as ops (relax/lipschitz/bounds/implicit_crown.py).

Truth: the dense backward-graph CROWN / RecurJac (bounds/backward.py) with the same forward bounds (equal up to
rounding: the op form widens every intermediate bound by its rounding margin), MILP exact values
(``exact_local_lipschitz``) and autograd gradients at sampled points (never above the bound); chunked ==
unchunked; the chunks stay inside the memory budget."""

import pytest
import torch
from torch import nn

from nncertify import models
from nncertify.relax.lipschitz import api, local_lipschitz
from nncertify.relax.lipschitz.bounds.backward import BackwardGraph
from nncertify.relax.lipschitz.bounds.chain import dense_chain, forward_bounds
from nncertify.relax.lipschitz.bounds.common import derivative_ranges
from nncertify.relax.lipschitz.bounds.implicit_crown import TEMP_FACTOR, OpBackwardGraph
from nncertify.relax.lipschitz.lower_bounds.exact import exact_local_lipschitz

from test_lipschitz_implicit import conv_net, sampled


class Tied(nn.Module):
    """The same convolution (one weight tensor) applied twice, the same in-place ReLU module after each."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.fc = nn.Linear(2 * 5 * 6, 4)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.act(self.conv(x))
        x = self.act(self.conv(x))
        return self.fc(x.flatten(1))


def pooled_net(seed):
    """Conv + BatchNorm (eval, folded) + LeakyReLU, average pooling, a strided conv, odd shapes."""
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.LeakyReLU(0.1), nn.AvgPool2d(2),
                      nn.Conv2d(4, 3, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 3 * 2, 6),
                      nn.ReLU(), nn.Linear(6, 3))
    with torch.no_grad():
        m[1].running_mean.uniform_(-0.2, 0.2)
        m[1].running_var.uniform_(0.5, 2.0)
    return m.eval().double(), (3, 11, 7)


def tied_net(seed):
    torch.manual_seed(seed)
    return Tied().double(), (2, 5, 6)


NETS = {"conv relu": lambda: conv_net(1), "conv leaky": lambda: conv_net(2, in_ch=2, act=lambda: nn.LeakyReLU(0.3)),
        "pool bn": lambda: pooled_net(3), "tied": lambda: tied_net(4)}


def _box(shape, seed, r):
    x = torch.rand(1, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return x - r, x + r


def _dense_and_op(net, lo, hi, seeds, mode, max_bytes=2 ** 30):
    net = net.to(dtype=torch.float64)
    xl, xu = lo.reshape(-1), hi.reshape(-1)
    chain = dense_chain(net)
    fb, _ = forward_bounds(chain, xl[None], xu[None], "auto")
    bb = BackwardGraph(chain, seeds, derivative_ranges(chain, fb, seeds.shape[0]), mode).run()
    fbd = {a.inputs[0]: (l.reshape(1, *net[a.inputs[0]].shape), u.reshape(1, *net[a.inputs[0]].shape))
           for a, (l, u) in zip(chain.acts, fb)}
    g = OpBackwardGraph(net, fbd, seeds, mode, max_bytes=max_bytes)
    return bb, g.run(), g


@pytest.mark.parametrize("name", list(NETS))
@pytest.mark.parametrize("mode", ["crown", "recurjac"])
def test_op_form_equals_the_dense_backward_graph(name, mode):
    module, shape = NETS[name]()
    net = models.from_module(module, input_shape=shape)
    lo, hi = _box(shape, 0, 0.1)
    n_out = module(lo).shape[1]
    seeds = torch.cat((torch.eye(n_out, dtype=torch.float64),
                       torch.randn(2, n_out, dtype=torch.float64, generator=torch.Generator().manual_seed(1))))
    bb, (gl, gu, l1), g = _dense_and_op(net, lo, hi, seeds, mode)
    scale = float(torch.maximum(bb.grad_lower.abs(), bb.grad_upper.abs()).max())
    if mode == "recurjac" and name == "pool bn":
        # rows the pooling drops (odd size) have q = 0 exactly: the dense form's bound is 0 with no rounding
        # margin ("stable": exact line), the op form's is -1e-15 ("unstable": RecurJac's constant) -> looser
        assert bool((l1 >= bb.l1_upper * (1 - 1e-9)).all())
    else:
        assert torch.allclose(gl, bb.grad_lower, rtol=1e-7, atol=1e-8 * scale)
        assert torch.allclose(gu, bb.grad_upper, rtol=1e-7, atol=1e-8 * scale)
        assert torch.allclose(l1, bb.l1_upper, rtol=1e-7)
    assert bool((gu > gl).any()) and g.stats["rows"] > 0  # unstable neurons exist: the relaxations matter
    truth = sampled(module, lo, hi)
    assert truth <= float(l1[:n_out].max()) * (1 + 1e-9)


def test_chunking_gives_the_same_value_and_respects_the_budget():
    module, shape = pooled_net(5)
    net = models.from_module(module, input_shape=shape)
    lo, hi = _box(shape, 3, 0.08)
    seeds = torch.eye(3, dtype=torch.float64)
    _, (gl, gu, l1), g = _dense_and_op(net, lo, hi, seeds, "crown")
    n_max = max(v.shape[1] for v in g.V)
    budget = 8 * TEMP_FACTOR * 3 * n_max * 3  # three rows per chunk
    _, (gl2, gu2, l12), g2 = _dense_and_op(net, lo, hi, seeds, "crown", max_bytes=budget)
    assert g.stats["chunks"] < g2.stats["chunks"] and g2.stats["rows"] == g.stats["rows"]
    assert 8 * g2.stats["max_chunk_elems"] <= budget < 8 * g.stats["max_chunk_elems"]
    assert torch.allclose(gl, gl2, rtol=1e-12, atol=1e-15) and torch.allclose(gu, gu2, rtol=1e-12, atol=1e-15)
    assert torch.allclose(l1, l12, rtol=1e-12)


def test_api_uses_op_crown_when_dense_does_not_fit_and_stays_above_the_milp_exact_value(monkeypatch):
    torch.manual_seed(7)
    module = nn.Sequential(nn.Conv2d(1, 2, 2), nn.ReLU(), nn.Conv2d(2, 2, 2, stride=2), nn.ReLU(), nn.Flatten(),
                           nn.Linear(2 * 2 * 2, 3)).double()
    shape = (1, 5, 6)
    net = models.from_module(module, input_shape=shape)
    lo, hi = _box(shape, 2, 0.15)
    dense = local_lipschitz(net, (lo, hi), method="crown", attack=False)
    exact = exact_local_lipschitz(net, (lo, hi), time_limit=60)
    monkeypatch.setattr(api, "DENSE_LIMIT_BYTES", 0)  # force the dense-free path
    r = local_lipschitz(net, (lo, hi), method="crown", attack_options={"n_samples": 64})
    rj = local_lipschitz(net, (lo, hi), method="recurjac", attack=False)
    ib = local_lipschitz(net, (lo, hi), method="ibp", attack=False)
    assert r.method == "crown-implicit" and r.upper_kind == "certified" and r.lower_kind == "sampled"
    assert exact.optimal and exact.value <= r.upper * (1 + 1e-9)
    assert r.lower <= exact.value * (1 + 1e-9)
    assert r.upper == pytest.approx(dense.upper, rel=1e-7)
    assert r.upper <= rj.upper * (1 + 1e-9) <= ib.upper * (1 + 1e-9) ** 2
    assert r.upper < ib.upper  # CROWN is tighter than interval arithmetic here


@pytest.mark.parametrize("norm", ["1", "2"])
def test_other_norms_and_a_margin_seed_match_dense(monkeypatch, norm):
    module, shape = conv_net(9, act=lambda: nn.LeakyReLU(0.2))
    net = models.from_module(module, input_shape=shape)
    lo, hi = _box(shape, 4, 0.12)
    c = torch.tensor([1.0, -1.0, 0.0, 0.5, 0.0], dtype=torch.float64)
    dense = local_lipschitz(net, (lo, hi), norm=norm, c=c, method="crown", attack=False)
    monkeypatch.setattr(api, "DENSE_LIMIT_BYTES", 0)
    r = local_lipschitz(net, (lo, hi), norm=norm, c=c, method="crown", attack=False)
    assert r.method == "crown-implicit" and r.upper == pytest.approx(dense.upper, rel=1e-7)


def test_hand_built_network_with_two_activations_in_a_row_and_a_float32_copy():
    """A hand-built ``Network`` (conv2d node, relu followed directly by leaky_relu: an empty affine block,
    reshape, linear) and its float32 copy: the op form equals the dense CROWN and stays above sampled gradients."""
    from nncertify.models.graph import Network, Node
    g = torch.Generator().manual_seed(11)
    Wc = torch.randn(2, 1, 3, 3, generator=g, dtype=torch.float64)
    W1 = torch.randn(3, 2 * 2 * 5, generator=g, dtype=torch.float64)
    net = Network([Node("x", "input", (), {}, {"shape": (1, 4, 5)}),
                   Node("c", "conv2d", ("x",), {"weight": Wc, "bias": torch.tensor([0.1, -0.2], dtype=torch.float64)},
                        {"stride": (2, 1), "padding": (1, 1), "dilation": (1, 1), "groups": 1}),
                   Node("r", "relu", ("c",)),
                   Node("lr", "leaky_relu", ("r",), {}, {"negative_slope": 0.5}),
                   Node("f", "reshape", ("lr",), {}, {"shape": (20,)}),
                   Node("l", "linear", ("f",), {"weight": W1, "bias": torch.zeros(3, dtype=torch.float64)})])
    lo, hi = _box((1, 4, 5), 5, 0.2)
    seeds = torch.eye(3, dtype=torch.float64)
    for n in (net, net.to(dtype=torch.float32)):
        bb, (gl, gu, l1), _ = _dense_and_op(n, lo, hi, seeds, "crown")
        assert torch.allclose(l1, bb.l1_upper, rtol=1e-7) and torch.allclose(gu, bb.grad_upper, rtol=1e-7, atol=1e-10)
    truth = sampled(net.to_module(requires_grad=False), lo, hi)
    assert truth <= float(l1.max()) * (1 + 1e-9)
