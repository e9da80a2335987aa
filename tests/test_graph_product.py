"""The product of layer norms carried through a residual graph (``relax.lipschitz.bounds.naive.graph_product``),
used by ``certify global --method product`` and the local certificate's side number for residual nets
(the zoo's digits_residual_maxmin used to get "FAILED no bound" from ``global --method product``)."""

import numpy as np
import pytest
import torch

from nncertify.models import Network, Node, from_module
from nncertify.relax.lipschitz.bounds.chain import dense_chain
from nncertify.relax.lipschitz.bounds.naive import graph_product, naive_product

from patterns import mlp


def _residual(act, seed=0, n=6):
    g = torch.Generator().manual_seed(seed)
    W1, W2 = (torch.randn(n, n, generator=g, dtype=torch.float64) for _ in range(2))
    W3 = torch.randn(3, n, generator=g, dtype=torch.float64)
    z = torch.zeros(n, dtype=torch.float64)
    a = {"relu": Node("a", "relu", ("l1",)),
         "maxmin": Node("a", "maxmin", ("l1",), {}, {"layout": "pairs"})}[act]
    net = Network([Node("x", "input", (), {}, {"shape": (n,)}),
                   Node("l1", "linear", ("x",), {"weight": W1, "bias": z + 0.3}),
                   a,
                   Node("l2", "linear", ("a",), {"weight": W2, "bias": z}),
                   Node("s", "add", ("x", "l2")),
                   Node("out", "linear", ("s",), {"weight": W3, "bias": torch.zeros(3, dtype=torch.float64)})])
    return net, (W1.numpy(), W2.numpy(), W3.numpy())


@pytest.mark.parametrize("act", ["relu", "maxmin"])
@pytest.mark.parametrize("norm", ["2", "inf", "1"])
def test_closed_form_and_secants(act, norm):
    net, (W1, W2, W3) = _residual(act)
    ordp = {"2": 2, "inf": np.inf, "1": 1}[norm]
    op = lambda W: np.linalg.norm(W, ordp)  # noqa: E731  numpy's induced matrix norms, independent
    expected = op(W3) * (1 + op(W2) * op(W1))  # ||W3|| (||I|| + ||W2|| Lip(phi) ||W1||)
    got = float(graph_product(net, norm))
    assert got == pytest.approx(expected, rel=1e-12)
    # the bound holds on secants (any pair of points, any scale)
    g = torch.Generator().manual_seed(1)
    a = torch.randn(2000, 6, generator=g, dtype=torch.float64)
    b = a + torch.randn(2000, 6, generator=g, dtype=torch.float64) * torch.logspace(-6, 1, 2000, dtype=torch.float64)[:, None]
    with torch.no_grad():
        num = torch.linalg.vector_norm(net(a) - net(b), ord=ordp, dim=1)
    den = torch.linalg.vector_norm(a - b, ord=ordp, dim=1)
    assert float((num / den).max()) <= got


def test_equals_the_chain_product_on_chains():
    for widths in ([5, 8, 8, 3], [4, 6, 2]):
        net = from_module(mlp(widths), (widths[0],))
        for norm in ("2", "inf", "1"):
            assert float(graph_product(net, norm)) == pytest.approx(float(naive_product(dense_chain(net), norm)),
                                                                    rel=1e-12)
