"""Issue #19 items 1-2: grouped activations after a convolution, and Householder v of any norm.

Truths are independent of the code under test: secant ratios |f(x + d) - f(x)| / |d| of the torch
module itself (along the top singular vector of its autograd Jacobian), and closed forms.
"""

from fractions import Fraction

import pytest
import torch
from torch import nn

from nncertify.models import GroupSort, HouseholderActivation, MaxMin, from_module
from nncertify.models.graph import Network, Node
from nncertify.models.groups import activation_groups
from nncertify.relax.lipschitz import local_lipschitz
from nncertify.relax.sets import Box
from nncertify.sdp import lipschitz_bound
from nncertify.sdp.baselines import certified_mp, extract_layers, fallback_bound

DEFAULT_DTYPE = torch.float64


def secant_witness(f, shape, n=400, seed=0, h=1e-6, center=None, radius=None):
    """max over random x of the secant ratio along the Jacobian's top right singular vector (a true lower
    bound of the l2 Lipschitz constant, on the region when ``center``/``radius`` are given)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g)
    if center is not None:
        x = center + radius * (2 * torch.rand(n, *shape, generator=g) - 1) * 0.9
    J = torch.func.vmap(torch.func.jacrev(lambda z: f(z[None])[0]))(x).reshape(n, -1, x[0].numel())
    _, _, Vh = torch.linalg.svd(J)
    d = (h * Vh[:, 0]).reshape(x.shape)
    with torch.no_grad():
        r = (f(x + d) - f(x)).reshape(n, -1).norm(dim=1) / d.reshape(n, -1).norm(dim=1)
    return float(r.max())


def _conv_net(act, seed=0):
    torch.manual_seed(seed)
    if act == "householder":
        act_m = HouseholderActivation(4, 2, torch.randn(2, 2))
    else:
        act_m = {"maxmin": MaxMin(), "groupsort4": GroupSort(4), "maxmin_halves": MaxMin("halves")}[act]
    m = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), act_m, nn.Flatten(), nn.Linear(16, 3)).double()
    return m, from_module(m, (1, 5, 5))


def test_groups_are_channels_at_each_pixel():
    n = Node("a", "maxmin", attrs={"layout": "pairs"}, shape=(4, 2, 3))
    g = activation_groups(n)
    P = 6
    assert g.index.tolist()[:2] == [[0, P], [1, P + 1]]           # channel 0 with channel 1, same pixel
    assert g.index.tolist()[P] == [2 * P, 3 * P]                     # channels 2, 3 at pixel 0
    h = activation_groups(Node("b", "maxmin", attrs={"layout": "halves"}, shape=(4, 3)))
    assert h.index.tolist()[0] == [0, 2 * 3]                        # channel 0 with channel C/2
    s = activation_groups(Node("c", "groupsort", attrs={"group_size": 3}, shape=(6,)))
    assert s.index.tolist() == [[0, 1, 2], [3, 4, 5]]
    # every flat index in exactly one group; the layer itself agrees: permuting inside a group is invisible
    for grp, shape, op in ((g, (4, 2, 3), "maxmin"),):
        assert sorted(grp.index.reshape(-1).tolist()) == list(range(24))
        x = torch.randn(5, *shape)
        y = MaxMin()(x).reshape(5, -1)
        xf = x.reshape(5, -1)
        assert torch.equal(y[:, grp.index[:, 0]], torch.maximum(xf[:, grp.index[:, 0]], xf[:, grp.index[:, 1]]))


@pytest.mark.parametrize("act", ["maxmin", "groupsort4", "householder"])
def test_issue_conv_grouped_sdp_not_below_secant(act):
    """Issue #19 item 1: the certified l2 value of lifted / nsr / auto was below a secant witness."""
    m, net = _conv_net(act)
    w = secant_witness(m, (1, 5, 5))
    for method in ("lifted", "nsr", "auto"):
        r = lipschitz_bound(net, 2, method)
        assert r.certified, (method, r.message)
        assert r.certified_value >= w * (1 - 1e-7), (act, method, r.certified_value, w)
    assert fallback_bound(net).certified_value >= w * (1 - 1e-7)


@pytest.mark.parametrize("act", ["maxmin", "maxmin_halves", "householder"])
def test_conv_grouped_local_lipschitz_not_below_secant(act):
    m, net = _conv_net(act, seed=1)
    torch.manual_seed(3)
    x0 = torch.randn(1, 1, 5, 5)
    r = local_lipschitz(net, Box(x0 - 0.2, x0 + 0.2), norm="2", method="crown", attack=False)
    w = secant_witness(m, (1, 5, 5), n=300, center=x0, radius=0.2)
    assert r.upper >= w * (1 - 1e-7), (act, r.upper, w)


def _householder_net(v, dtype=torch.float64):
    W = torch.eye(2, dtype=dtype)
    nodes = [Node("x", "input", attrs={"shape": (2,)}),
             Node("l", "linear", ("x",), params={"weight": W, "bias": torch.zeros(2, dtype=dtype)}),
             Node("h", "householder", ("l",), params={"v": v}),
             Node("o", "linear", ("h",), params={"weight": W.clone(), "bias": torch.zeros(2, dtype=dtype)})]
    return Network(nodes)


def test_householder_norm_two_v_is_certified_at_least_seven():
    """Issue #19 item 2: ||v|| = 2 computes x - 2 v v^T x (constant |1 - 2*4| = 7); it was certified 1.0."""
    net = _householder_net(torch.tensor([[2.0, 0.0]]))
    x = torch.tensor([[-1.0, 0.3]])
    assert torch.allclose(net(x), torch.tensor([[7.0, 0.3]]))             # the description's semantics
    for method in ("lifted", "nsr", "auto"):
        r = lipschitz_bound(net, 2, method)
        assert r.certified and r.certified_value >= 7.0, (method, r)
    assert certified_mp(extract_layers(net), 2) >= 7.0
    assert fallback_bound(net).certified_value >= 7.0
    lo = local_lipschitz(net, Box(torch.tensor([[-1.0, -1.0]]), torch.tensor([[1.0, 1.0]])), norm="2",
                         method="crown", attack=False)
    assert lo.upper >= 7.0


def _exact_constant(v):
    """max(1, |1 - 2 ||v||^2|) in exact rational arithmetic for float rows v."""
    c = Fraction(1)
    for row in v.tolist():
        s = sum(Fraction(a) ** 2 for a in row)
        c = max(c, abs(1 - 2 * s))
    return c


def test_householder_float32_near_unit_v_certified_above_exact_constant():
    """A float32 unit_v() is unit only up to rounding; pick one with ||v||^2 > 1 exactly: the true constant
    2||v||^2 - 1 exceeds 1, and every certified value must be >= it."""
    found = None
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        layer = HouseholderActivation(2, 2, torch.randn(1, 2, generator=g, dtype=torch.float64).float())
        v = layer.unit_v().detach()
        c = _exact_constant(v.double())
        if c > 1:
            found = (v, c)
            break
    assert found is not None
    v, c = found
    net = _householder_net(v.double())
    for method in ("lifted", "nsr"):
        r = lipschitz_bound(net, 2, method)
        assert r.certified and Fraction(r.certified_value) >= c, (method, r.certified_value, float(c))
    assert Fraction(certified_mp(extract_layers(net), 2)) >= c


def test_householder_zero_v_row_is_refused_by_nsr():
    net = _householder_net(torch.tensor([[0.0, 0.0]]))
    from nncertify.models.errors import UnsupportedOperationError
    with pytest.raises(UnsupportedOperationError, match="zero"):
        lipschitz_bound(net, 2, "nsr")
    assert lipschitz_bound(net, 2, "lifted").certified_value >= 1.0   # v = 0: the identity
