"""Issue #19 item 3: the dense matrix of every affine node -- parameter-free ones (flatten, reshape,
avg-pool, padding inside conv/pool) included -- is built in the network's dtype and device, so
networks with ``Flatten`` / reshape ahead of a ``Linear`` / ``Conv2d`` get local Lipschitz bounds.

Every bound is checked against independent truths: the attack's lower bound, autograd gradient norms
of the original ``nn.Module`` at sampled points of the region, and secant ratios of pairs of points.
"""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from nncertify.models import Network, Node, affine_matrix, chain_stages, from_module, load_model
from nncertify.models.zoo import digits, load_zoo
from nncertify.relax import Ball, Box
from nncertify.relax.lipschitz import local_lipschitz


def _region(x, eps):
    return Ball(x.reshape(1, *x.shape).double(), eps, "inf")


def _independent_lower(f, x, eps, n=64, seed=0):
    """max over sampled points of max_i ||grad f_i||_1 (autograd on the module), and the largest secant
    ratio max_i |f_i(a) - f_i(b)| / ||a - b||_inf over sampled pairs: both are <= the l_inf constant."""
    g = torch.Generator().manual_seed(seed)
    x = x.double()
    pts = x + eps * (2 * torch.rand(n, *x.shape, generator=g, dtype=torch.float64) - 1)
    pts.requires_grad_(True)
    out = f(pts)
    best_grad = 0.0
    for i in range(out.shape[1]):
        (gr,) = torch.autograd.grad(out[:, i].sum(), pts, retain_graph=True)
        best_grad = max(best_grad, float(gr.flatten(1).abs().sum(1).max()))
    with torch.no_grad():
        a = pts.detach()
        b = x + eps * (2 * torch.rand(n, *x.shape, generator=g, dtype=torch.float64) - 1)
        num = (f(a) - f(b)).abs().amax(1)
        den = (a - b).flatten(1).abs().amax(1)
        secant = float((num / den).max())
    return best_grad, secant


def _check_bound(module, net, x, eps):
    res = local_lipschitz(net, _region(x, eps), attack_options={"steps": 10, "n_samples": 64, "n_starts": 4})
    assert res.upper_kind == "certified" and math.isfinite(res.upper)
    grad, secant = _independent_lower(lambda t: module(t.to(next(module.parameters()).dtype)).double(), x, eps)
    assert res.lower <= res.upper
    assert grad <= res.upper * (1 + 1e-6), (grad, res.upper)
    assert secant <= res.upper * (1 + 1e-6), (secant, res.upper)
    assert res.lower > 0.3 * res.upper  # the bound is also not vacuous on these small nets
    return res


# ------------------------------------------------------------------------------------------ the mechanism
@pytest.mark.parametrize("net_dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("default_dtype", [torch.float32, torch.float64])
def test_parameter_free_matrix_follows_the_network(net_dtype, default_dtype):
    """The old code built a parameter-free node's matrix in torch's *default* dtype: a float64 net under a
    float32 default (and a float32 net under a float64 default) crashed when the matrices were composed."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(default_dtype)
    try:
        torch.manual_seed(0)
        m = nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.ReLU(), nn.Linear(5, 3)).to(net_dtype)
        net = from_module(m, (3, 2, 2))
        assert net.dtype == net_dtype
        stages = chain_stages(net)
        for s in stages:
            if s.kind == "affine":
                assert s.W.dtype == net_dtype and s.b.dtype == net_dtype
        # the composed first stage is exactly the Linear's weight (flatten is the identity)
        assert torch.equal(stages[0].W, m[1].weight.detach())
        fl = net.nodes[1]
        assert fl.op == "flatten"
        W, b = affine_matrix(fl, (3, 2, 2), dtype=net_dtype, device=net.device)
        assert W.dtype == net_dtype and torch.equal(W, torch.eye(12, dtype=net_dtype)) and not b.any()
    finally:
        torch.set_default_dtype(old)


def test_parameter_free_matrix_without_network_is_float64():
    """Called without a network, a parameter-free node gets float64, never the global default dtype."""
    node = Node("p", "avgpool2d", ("x",), {}, {"kernel_size": (3, 3), "stride": (3, 3), "padding": (0, 0)})
    W, b = affine_matrix(node, (1, 3, 3))
    assert W.dtype == torch.float64 and W.shape == (1, 9)
    assert torch.equal(W, torch.full((1, 9), 1.0, dtype=torch.float64) / 9)  # 1/9 rounded once, in float64
    W32, _ = affine_matrix(node, (1, 3, 3), dtype=torch.float32)
    assert W32.dtype == torch.float32
    # a node with parameters in another dtype: its parameters are cast to the requested one
    lin = Node("l", "linear", ("x",), {"weight": torch.ones(2, 3), "bias": torch.zeros(2)})
    W, b = affine_matrix(lin, (3,), dtype=torch.float64)
    assert W.dtype == b.dtype == torch.float64


# ------------------------------------------------------------------------------------------ networks
def test_mnist_style_flatten_first_state_dict_mlp(tmp_path):
    """1x28x28 -> Flatten -> Linear: a state_dict loaded with an architecture .json starting with Flatten."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 10))
    torch.save(m.state_dict(), tmp_path / "w.pth")
    arch = {"format": "nncertify-arch/1", "name": "mnist_mlp", "input_shape": [1, 28, 28],
            "layers": [{"type": "Flatten"}, {"type": "Linear", "in_features": 784, "out_features": 16},
                       {"type": "ReLU"}, {"type": "Linear", "in_features": 16, "out_features": 10}]}
    (tmp_path / "arch.json").write_text(json.dumps(arch))
    lm = load_model(tmp_path / "w.pth", arch=str(tmp_path / "arch.json"))
    assert lm.network.nodes[1].op == "flatten"
    x = torch.rand(1, 28, 28, generator=torch.Generator().manual_seed(1))
    _check_bound(m.double(), lm.network, x, 0.01)


def test_zoo_digits_relu_cnn_local_lipschitz():
    lm = load_zoo("digits_relu_cnn")
    X, _ = digits("test", dtype=torch.float64)
    res = local_lipschitz(lm.network, _region(X[0], 0.02),
                          attack_options={"steps": 10, "n_samples": 64, "n_starts": 4})
    module = lm.network.to(dtype=torch.float64).to_module(requires_grad=False)
    grad, secant = _independent_lower(module, X[0], 0.02)
    assert res.lower <= res.upper and grad <= res.upper * (1 + 1e-6) and secant <= res.upper * (1 + 1e-6)
    assert res.lower > 0.5 * res.upper


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_conv_flatten_linear(dtype):
    torch.manual_seed(2)
    m = nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 3 * 3, 4),
                      nn.ReLU(), nn.Linear(4, 3)).to(dtype)
    net = from_module(m, (2, 5, 5))
    x = torch.rand(2, 5, 5, generator=torch.Generator().manual_seed(3), dtype=dtype)
    _check_bound(m, net, x, 0.05)


def test_avgpool_padding_reshape_chain():
    """conv (padded) -> ReLU -> avg-pool (padded, stride != kernel) -> Flatten -> Linear -> ReLU -> Unflatten
    (reshape) -> conv -> Flatten -> Linear, in float64: every parameter-free affine kind in one chain."""
    torch.manual_seed(4)
    m = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.AvgPool2d(3, stride=2, padding=1),
                      nn.Flatten(), nn.Linear(2 * 3 * 3, 8), nn.ReLU(), nn.Unflatten(1, (2, 2, 2)),
                      nn.Conv2d(2, 3, 2), nn.Flatten(), nn.ReLU(), nn.Linear(3, 2)).double()
    net = from_module(m, (1, 5, 5))
    ops = [n.op for n in net.nodes]
    assert "avgpool2d" in ops and "flatten" in ops and "reshape" in ops
    x = torch.rand(1, 5, 5, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    _check_bound(m, net, x, 0.1)


def test_hand_built_residual_network_with_flatten():
    """A hand-built residual ``Network`` (lifted chain and the graph Jacobian) whose input is reshaped:
    input (2, 2, 2) -> flatten -> linear -> maxmin -> linear -> add(flatten, .) -> linear."""
    g = torch.Generator().manual_seed(6)
    W1, W2, W3 = (torch.randn(8, 8, generator=g, dtype=torch.float64) * 0.5,
                  torch.randn(8, 8, generator=g, dtype=torch.float64) * 0.5,
                  torch.randn(3, 8, generator=g, dtype=torch.float64))
    z = torch.zeros(8, dtype=torch.float64)
    net = Network([Node("x", "input", (), {}, {"shape": (2, 2, 2)}),
                   Node("f", "flatten", ("x",)),
                   Node("l1", "linear", ("f",), {"weight": W1, "bias": z + 0.1}),
                   Node("a", "maxmin", ("l1",), {}, {"layout": "pairs"}),
                   Node("l2", "linear", ("a",), {"weight": W2, "bias": z}),
                   Node("s", "add", ("f", "l2")),
                   Node("out", "linear", ("s",), {"weight": W3, "bias": torch.zeros(3, dtype=torch.float64)})])
    x = torch.rand(2, 2, 2, generator=g, dtype=torch.float64)
    module = net.to_module(requires_grad=False)
    grad, secant = _independent_lower(module, x, 0.1)
    for kw in ({}, {"bab_timeout": 2.0, "bab": "input"}):  # lifted chain; graph Jacobian (input BaB)
        res = local_lipschitz(net, _region(x, 0.1), attack_options={"steps": 10, "n_samples": 64}, **kw)
        assert res.lower <= res.upper
        assert grad <= res.upper * (1 + 1e-6) and secant <= res.upper * (1 + 1e-6), (kw, grad, secant, res.upper)


def test_float32_network_and_float64_network_agree():
    """The bound is computed in float64 either way: the float32 and float64 copies of a Flatten-first
    net give bounds within float32 rounding of each other (the old code crashed on the float64 one)."""
    torch.manual_seed(7)
    m = nn.Sequential(nn.Flatten(), nn.Linear(9, 6), nn.ReLU(), nn.Linear(6, 2))
    net32 = from_module(m, (1, 3, 3))
    net64 = from_module(m.double(), (1, 3, 3))
    x = torch.rand(1, 3, 3, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    box = Box(x[None] - 0.05, x[None] + 0.05)
    r32 = local_lipschitz(net32, box, attack=False)
    r64 = local_lipschitz(net64, box, attack=False)
    assert r32.upper == pytest.approx(r64.upper, rel=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exported_program_constants_follow_the_network_dtype(tmp_path, dtype):
    """A torch.export program with constant arithmetic (x * 0.1 + 0.3): the folded scale_shift nodes take
    the program's dtype -- a float64 program used to fail to load (float32 constants mixed in) -- and
    the constants are not rounded through float32 first."""
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.flat = nn.Flatten()
            self.lin = nn.Linear(4, 3)

        def forward(self, x):
            return self.lin(self.flat(x) * 0.1 + 0.3)
    torch.manual_seed(9)
    m = M().to(dtype)
    ep = torch.export.export(m, (torch.zeros(2, 1, 2, 2, dtype=dtype),))
    torch.export.save(ep, tmp_path / "m.pt2")
    net = load_model(tmp_path / "m.pt2").network
    assert net.dtype == dtype
    ss = [n for n in net.nodes if n.op == "scale_shift"]
    assert ss and all(v.dtype == dtype for n in ss for v in n.params.values())
    assert any(float(n.params["scale"].flatten()[0]) == float(torch.tensor(0.1, dtype=dtype)) for n in ss)
    x = torch.rand(5, 1, 2, 2, generator=torch.Generator().manual_seed(10), dtype=torch.float64).to(dtype)
    with torch.no_grad():
        assert torch.equal(net(x), m(x))
    # no activation: the constant is exactly max_i ||W_i||_1 * 0.1 (the attack used to crash here)
    res = local_lipschitz(net, _region(x[0], 0.05), attack_options={"steps": 10, "n_samples": 64})
    exact = float(m.lin.weight.detach().double().abs().sum(1).max()) * float(torch.tensor(0.1, dtype=dtype))
    assert res.lower == pytest.approx(exact, rel=1e-6) and res.upper == pytest.approx(exact, rel=1e-6)
    assert res.lower <= res.upper
