"""The affine handlers of relax/affine.py against the reference semantics of models/ops.py:
the backward map is the exact adjoint (<A, L x + b> = <L^T A, x> + <A, b>) and the interval image
contains every sampled point and vertex of the box."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nncertify import models
from nncertify.models import Normalize
from nncertify.relax.affine import AFFINE_HANDLERS


pytestmark = pytest.mark.usefixtures("single_thread")  # many small tensor ops: see tests/conftest.py


def _cases():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    return {
        "linear": (nn.Linear(7, 5), (7,)),
        "conv_s2_p1": (nn.Conv2d(2, 4, 3, stride=2, padding=1), (2, 9, 9)),
        "conv_dil_groups": (nn.Conv2d(4, 6, 3, padding=2, dilation=2, groups=2), (4, 7, 8)),
        "conv_s3_k2": (nn.Conv2d(3, 2, 2, stride=3), (3, 10, 11)),
        "flatten": (nn.Flatten(), (2, 3, 4)),
        "unflatten": (nn.Unflatten(1, (2, 3)), (6,)),
        "normalize": (Normalize(torch.tensor([0.2, -0.1, 0.5]).reshape(3, 1, 1),
                                torch.tensor([0.5, 2.0, 1.5]).reshape(3, 1, 1)), (3, 4, 4)),
        "batchnorm": (bn.eval(), (3, 5, 5)),
        "avgpool": (nn.AvgPool2d(2), (3, 6, 6)),
        "avgpool_s1_p1": (nn.AvgPool2d(3, stride=1, padding=1), (2, 5, 5)),
        "scalar_scale": (_Scale(), (4,)),
    }


class _Scale(nn.Module):
    def forward(self, x):
        return 2.5 * x - 1.0


CASES = _cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_backward_is_the_exact_adjoint(name):
    module, shape = CASES[name]
    net = models.from_module(nn.Sequential(module), shape).to(dtype=torch.float64)
    nodes = [n for n in net.nodes[1:]]
    assert all(n.op in AFFINE_HANDLERS for n in nodes), [n.op for n in nodes]
    g = torch.Generator().manual_seed(1)
    in_shape = net.input_shape
    for n in nodes:
        x = torch.randn(2, *in_shape, generator=g, dtype=torch.float64)
        y = models.OPS[n.op].evaluate(n, x)
        A = torch.randn(2, 3, *n.shape, generator=g, dtype=torch.float64)
        A_in, bias = AFFINE_HANDLERS[n.op].backward(n, A, in_shape)
        lhs = (A * y.unsqueeze(1)).flatten(2).sum(-1)
        rhs = (A_in * x.unsqueeze(1)).flatten(2).sum(-1) + (bias if bias is not None else 0)
        assert A_in.shape == (2, 3, *in_shape)
        assert torch.allclose(lhs, rhs, atol=1e-10), (name, n.op)
        # a coefficient shared by the batch (leading dimension 1) works too
        A1, b1 = AFFINE_HANDLERS[n.op].backward(n, A[:1], in_shape)
        assert torch.allclose(A1, A_in[:1])
        in_shape = n.shape


@pytest.mark.parametrize("name", sorted(CASES))
def test_interval_image_contains_samples(name):
    module, shape = CASES[name]
    net = models.from_module(nn.Sequential(module), shape).to(dtype=torch.float64)
    g = torch.Generator().manual_seed(2)
    lo = torch.randn(2, *shape, generator=g, dtype=torch.float64)
    hi = lo + torch.rand(2, *shape, generator=g, dtype=torch.float64)
    t = torch.rand(2, 500, *shape, generator=g, dtype=torch.float64)
    t[:, :200] = t[:, :200].round()
    pts = lo.unsqueeze(1) + t * (hi - lo).unsqueeze(1)
    for n in net.nodes[1:]:
        l, u = AFFINE_HANDLERS[n.op].ibp(n, lo, hi)
        y = models.OPS[n.op].evaluate(n, pts.reshape(-1, *pts.shape[2:])).reshape(2, 500, *n.shape)
        assert (y >= l.unsqueeze(1) - 1e-12).all() and (y <= u.unsqueeze(1) + 1e-12).all(), n.op
        # tight: the bounds are attained up to rounding by the best vertex (exact interval image)
        c = models.OPS[n.op].evaluate(n, (lo + hi) / 2)
        assert torch.allclose((l + u) / 2, c, atol=1e-10)
        lo, hi, pts = l, u, y


def test_conv_adjoint_paths_agree():
    """The fold path (few input channels) and conv_transpose2d give the same adjoint."""
    import torch.nn.functional as F
    from nncertify.relax.affine import _conv_transpose
    g = torch.Generator().manual_seed(3)
    for cin, stride, pad, dil, hw in ((1, 2, 0, 1, (28, 28)), (3, 1, 1, 1, (9, 8)), (2, 3, 2, 2, (11, 12))):
        W = torch.randn(5, cin, 3, 3, generator=g, dtype=torch.float64)
        x = torch.randn(1, cin, *hw, generator=g, dtype=torch.float64)
        y = F.conv2d(x, W, stride=stride, padding=pad, dilation=dil)
        A = torch.randn(4, *y.shape[1:], generator=g, dtype=torch.float64)
        At = _conv_transpose(A, W, hw, (stride, stride), (pad, pad), (dil, dil), 1)
        assert At.shape == (4, cin, *hw)
        assert torch.allclose((A * y).flatten(1).sum(1), (At * x).flatten(1).sum(1), atol=1e-10)
