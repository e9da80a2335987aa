"""Complete activation-splitting branch-and-bound for MaxMin / GroupSort(2) / Householder chains.

These activations switch on ``s = S z`` (a pair difference, ``v^T z``), not on one pre-activation;
branch-and-bound splits on the sign of ``s`` and bounds the switches over each domain's input
polytope through the forward form ``y = P z + Q relu(S z)`` (relax/lipschitz/bounds/gates.py, polytope.py).

Independent truths, none computed by the code under test:
* the layers' own ``nn.Module`` forward (for the forward form) and autograd Jacobians at sampled points;
* rejection sampling of a domain (box points whose switch signs, computed with numpy from the module's
  weights, satisfy the splits) for the switch bounds;
* the exact constant of tiny nets from the region enumeration oracle of test_lipschitz_bab_input
  (depth-first over switch signs, HiGHS interior LP, gradient by autograd at the interior point).
"""

import numpy as np
import pytest
import torch
from torch import nn

from nncertify import models
from nncertify.models.errors import UnsupportedOperationError
from nncertify.models.layers import GroupSort, HouseholderActivation, MaxMin
from nncertify.relax.lipschitz import local_lipschitz
from nncertify.relax.lipschitz.search.bab import split_forward_bounds
from nncertify.relax.lipschitz.bounds.chain import dense_chain, forward_bounds
from test_lipschitz_bab_input import FAST_ATTACK, exact_by_regions, jacobians, make_net, sampled_truth

DEFAULT_DTYPE = torch.float64
pytestmark = pytest.mark.usefixtures("single_thread")

ACTS = {
    "maxmin": lambda n: MaxMin(), "maxmin_halves": lambda n: MaxMin("halves"),
    "groupsort_asc": lambda n: GroupSort(2, descending=False), "groupsort_desc": lambda n: GroupSort(2),
    "householder2": lambda n: HouseholderActivation(n, 2, v=torch.randn(n // 2, 2)),
    "householder3": lambda n: HouseholderActivation(n, 3, v=torch.randn(n // 3, 3)),
}


def chain_net(act, widths, seed, bias=True):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(widths[:-2], widths[1:-1]):
        layers += [nn.Linear(a, b, bias=bias), ACTS[act](b)]
    layers.append(nn.Linear(widths[-2], widths[-1], bias=bias))
    return nn.Sequential(*layers).double()


@pytest.mark.parametrize("act", sorted(ACTS))
def test_forward_form_is_the_layer(act):
    """y = P z + Q relu(S z) reproduces the module's own activation on random inputs (incl. ties)."""
    module = chain_net(act, (3, 6, 2), 0)
    gate = dense_chain(models.from_module(module)).gates[0]
    z = torch.randn(200, 6)
    z[:20, 1] = z[:20, 0]  # exact ties of the first pair / group coordinates
    y = z @ gate.P.T + torch.relu(z @ gate.switch_matrix.T) @ gate.Q.T
    assert torch.allclose(y, module[1](z), atol=1e-13, rtol=0)


def _switch_values(module, X):
    """Switch values per activation layer, computed with numpy from the module's weights."""
    out, h = [], X.numpy()
    for m in module:
        if isinstance(m, nn.Linear):
            h = h @ m.weight.detach().numpy().T + m.bias.detach().numpy()
            continue
        z = h
        if isinstance(m, HouseholderActivation):
            V = m.unit_v().detach().numpy()
            g = V.shape[1]
            out.append(np.stack([z[:, j * g:(j + 1) * g] @ V[j] for j in range(len(V))], 1))
        elif isinstance(m, MaxMin) and m.layout == "halves":
            out.append(z[:, : z.shape[1] // 2] - z[:, z.shape[1] // 2:])
        else:
            out.append(z[:, 0::2] - z[:, 1::2])
        h = m(torch.as_tensor(h)).detach().numpy()
    return out


@pytest.mark.parametrize("act", ["maxmin", "maxmin_halves", "groupsort_asc", "householder2", "householder3"])
def test_switch_bounds_contain_every_point_of_the_domain(act):
    module = chain_net(act, (3, 12, 6, 2), 4)
    chain = dense_chain(models.from_module(module))
    xl, xu = torch.full((3,), -0.5), torch.full((3,), 0.6)
    fb, _ = forward_bounds(chain, xl[None], xu[None])
    g = torch.Generator().manual_seed(2)
    D = 8
    anchors = xl + (xu - xl) * torch.rand(D, 3, generator=g)
    sw_anchor = _switch_values(module, anchors)
    fixed = [torch.where(torch.rand(s.shape, generator=g) < 0.5, torch.as_tensor(np.where(s >= 0, 1, -1)), 0)
             .to(torch.int8) for s in sw_anchor]
    sb, empty = split_forward_bounds(chain, xl, xu, fb, fixed, poly_iters=30)
    sb0, _ = split_forward_bounds(chain, xl, xu, fb, [torch.zeros_like(f) for f in fixed], poly_iters=30)
    assert not empty.any()  # every domain holds its anchor
    X = xl + (xu - xl) * torch.rand(40000, 3, generator=g)
    sw = _switch_values(module, X)
    tighter = 0
    for d in range(D):
        inside = np.ones(len(X), dtype=bool)
        for s, f in zip(sw, fixed):
            fd = f[d].numpy()
            inside &= ((fd * s >= 0) | (fd == 0)).all(1)
        assert inside.sum() > 0
        for k, s in enumerate(sw):
            l, u = sb[k][0][d].numpy(), sb[k][1][d].numpy()
            si = s[inside]
            assert (si >= l - 1e-12).all() and (si <= u + 1e-12).all()
            tighter += int(((u - l) < (sb0[k][1][0] - sb0[k][0][0]).numpy() - 1e-9).sum())
    assert tighter > 0  # the splits' half-spaces tighten the other switches


def test_contradictory_splits_are_proven_empty():
    """Both children of a first-layer pair fixed against a point's sign at a far-away box: s >= 0 on a box
    where s < 0 everywhere (by construction) is empty."""
    module = chain_net("maxmin", (2, 4, 2), 1)
    with torch.no_grad():
        module[0].weight[:] = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
        module[0].bias[:] = torch.tensor([-5.0, 0.0, 0.0, 0.0])  # s_0 = x_0 - 5 < 0 on [-1, 1]^2
    chain = dense_chain(models.from_module(module))
    xl, xu = torch.full((2,), -1.0), torch.full((2,), 1.0)
    fb, _ = forward_bounds(chain, xl[None], xu[None])
    fixed = [torch.tensor([[1, 0], [-1, 0]], dtype=torch.int8)]
    _, empty = split_forward_bounds(chain, xl, xu, fb, fixed, poly_iters=5)
    assert empty.tolist() == [True, False]


CASES = [("maxmin", (2, 6, 6, 2), 0), ("maxmin", (2, 8, 8, 8, 2), 1), ("groupsort_asc", (2, 6, 6, 2), 2),
         ("groupsort_desc", (3, 6, 6, 2), 3), ("householder2", (2, 6, 6, 2), 4), ("householder3", (2, 6, 6, 2), 5),
         ("maxmin_halves", (3, 6, 4, 2), 6)]


@pytest.mark.parametrize("act,widths,seed", CASES)
def test_complete_bab_reaches_the_exact_constant(act, widths, seed):
    module = chain_net(act, widths, seed)
    d = widths[0]
    lo, hi = torch.full((d,), -1.0), torch.full((d,), 1.0)
    if act in ("maxmin_halves", "householder3", "groupsort_desc"):
        truth = None  # the oracle knows adjacent pairs / groups of 2 only: sampled truth + exactness
    else:
        truth = exact_by_regions(module, lo, hi)
    r = local_lipschitz(models.from_module(module), (lo[None], hi[None]), bab="activation", bab_timeout=30,
                        attack_options=FAST_ATTACK)
    assert r.exact and r.status == "exact", (r.status, r.upper, r.lower)
    assert r.upper == pytest.approx(r.lower, rel=1e-7)  # closed: an attained gradient norm
    w = torch.tensor(next(iter(r.stats["witness"].values()))) if r.stats["witness"] else None
    if w is not None:  # the lower bound is attained at a point of the box, by the module's own autograd
        assert ((w >= lo) & (w <= hi)).all()
    samp = sampled_truth(module, lo, hi)
    assert samp <= r.upper * (1 + 1e-12)
    if truth is not None:
        assert r.upper == pytest.approx(truth, rel=1e-6) and r.upper >= truth


@pytest.mark.parametrize("act", ["maxmin", "householder2", "groupsort_asc"])
def test_anytime_bound_is_sound_on_larger_inputs_and_margins(act):
    module = chain_net(act, (8, 16, 16, 3), 7)
    lo, hi = torch.full((8,), -0.4), torch.full((8,), 0.5)
    c = torch.tensor([1.0, -1.0, 0.0])
    net = models.from_module(module)
    for norm in ("inf", "1"):
        r = local_lipschitz(net, (lo[None], hi[None]), norm=norm, c=c, bab="activation", bab_timeout=1.5,
                            attack_options=FAST_ATTACK)
        root = local_lipschitz(net, (lo[None], hi[None]), norm=norm, c=c, attack=False)
        X = lo + (hi - lo) * torch.rand(4000, 8, generator=torch.Generator().manual_seed(1))
        gm = (c @ jacobians(module, X))  # (N, 8): gradients of the margin
        samp = float((gm.abs().sum(-1) if norm == "inf" else gm.abs().amax(-1)).max())
        assert samp <= r.upper * (1 + 1e-12) and r.lower <= r.upper
        assert r.upper <= root.upper
        ups = [h[1] for h in r.history]
        assert all(b <= a * (1 + 1e-12) for a, b in zip(ups, ups[1:]))


def test_bias_free_net_around_its_apex_closes():
    """A bias-free net is positively homogeneous: every kink meets at 0.  Over a box holding 0 the
    constant is the global one; the search runs over shells of the box away from 0 and closes."""
    module = chain_net("maxmin", (2, 8, 8, 8, 2), 3, bias=False)
    lo, hi = torch.full((2,), -1.0), torch.full((2,), 1.0)
    truth = exact_by_regions(module, lo, hi)
    r = local_lipschitz(models.from_module(module), (lo[None], hi[None]), bab="activation", bab_timeout=30,
                        attack_options=FAST_ATTACK)
    assert r.exact and r.upper == pytest.approx(truth, rel=1e-6) and r.upper >= truth


def test_lp_check_is_refused_for_switch_matrix_activations():
    module = chain_net("maxmin", (3, 4, 2), 0)
    lo, hi = torch.zeros((1, 3)), torch.ones((1, 3))
    with pytest.raises(UnsupportedOperationError, match="lp_check"):
        local_lipschitz(models.from_module(module), (lo, hi), bab="activation", bab_timeout=1.0, attack=False,
                        bab_options={"lp_check": True})


# ------------------------------------------------------------------ GroupSort with groups > 2: sorting networks
@pytest.mark.parametrize("group,desc", [(3, True), (4, False), (5, True)])
def test_sorting_network_chain_reproduces_the_layer(group, desc):
    from nncertify.relax.lipschitz.bounds.gates import sorting_rounds
    n = 2 * group
    torch.manual_seed(group)
    z = torch.randn(500, n)
    z[:50, 1] = z[:50, 0]  # ties
    z[50:100] = torch.randint(0, 3, (50, n)).double()  # many ties
    rounds = sorting_rounds(n, group, desc)
    assert sum(len(r[0]) for r in rounds) <= 2 * group * (group - 1) // 2  # fewer comparators than transposition
    module = nn.Sequential(nn.Linear(3, n), GroupSort(group, descending=desc), nn.Linear(n, 2)).double()
    chain = dense_chain(models.from_module(module))
    assert len(chain.gates) == len(rounds)
    y = z
    for k in range(chain.depth):
        y = chain.act(k, y if k == 0 else y @ chain.weights[k].T + chain.biases[k])
    assert torch.equal(y, module[1](z))  # exact max/min: bit-identical to torch.sort
    X = torch.randn(64, 3)
    assert torch.allclose(chain.forward_all(X)[1], module(X), atol=1e-12, rtol=0)


@pytest.mark.parametrize("group", range(2, 10))
def test_sorting_rounds_sort_every_0_1_input(group):
    """0-1 principle: a comparator network sorts every input iff it sorts every 0-1 input."""
    import itertools
    from nncertify.relax.lipschitz.bounds.gates import comparator_gate, sorting_rounds
    Z = torch.tensor(list(itertools.product([0.0, 1.0], repeat=group)))
    for desc in (True, False):
        y = Z
        for r in sorting_rounds(group, group, desc):
            assert len(set(r[0] + r[1])) == 2 * len(r[0])  # a round's comparators are disjoint
            y = comparator_gate(group, *r, Z).forward(y)
        assert torch.equal(y, torch.sort(Z, dim=1, descending=desc).values)
    assert sum(len(r[0]) for r in sorting_rounds(4, 4, True)) == 5  # Batcher: 5 comparators for 4


@pytest.mark.parametrize("group,desc,d", [(3, True, 2), (4, False, 2), (3, False, 3)])
def test_groupsort_sound_and_complete(group, desc, d):
    torch.manual_seed(10 * group + d)
    w = 2 * group
    module = nn.Sequential(nn.Linear(d, w), GroupSort(group, descending=desc), nn.Linear(w, w),
                           GroupSort(group, descending=desc), nn.Linear(w, 2)).double()
    lo, hi = torch.full((d,), -1.0), torch.full((d,), 1.0)
    net = models.from_module(module)
    samp = sampled_truth(module, lo, hi, n=6000)
    plain = local_lipschitz(net, (lo[None], hi[None]), attack_options=FAST_ATTACK)
    assert samp <= plain.upper * (1 + 1e-12)
    r = local_lipschitz(net, (lo[None], hi[None]), bab="activation", bab_timeout=30, attack_options=FAST_ATTACK)
    assert samp <= r.upper * (1 + 1e-12) and r.upper <= plain.upper
    assert r.exact and r.upper == pytest.approx(r.lower, rel=1e-7)  # closed and attained (autograd witness)
    assert r.upper <= samp * 1.05  # dense sampling comes close to the exact value


def test_groupsort_in_a_residual_net_is_refused_with_the_node_named():
    from nncertify.models.layers import Residual
    module = nn.Sequential(nn.Linear(2, 6), Residual(nn.Sequential(nn.Linear(6, 6), GroupSort(3))),
                           nn.Linear(6, 2)).double()
    lo, hi = torch.zeros((1, 2)), torch.ones((1, 2))
    with pytest.raises(UnsupportedOperationError, match="GroupSort with group size 3"):
        local_lipschitz(models.from_module(module), (lo, hi), bab="input", bab_timeout=1.0, attack=False)


@pytest.mark.parametrize("act", ["maxmin", "householder2", "groupsort_asc"])
def test_plain_bound_uses_crown_switch_bounds(act):
    """Without BaB the switches S z are bounded by CROWN on their own rows: sound (sampled) and never
    looser than bounding them by interval arithmetic on z."""
    from nncertify.relax.lipschitz.api import derivative_ranges
    from nncertify.relax.lipschitz.bounds.backward import BackwardGraph
    from nncertify.relax.lipschitz.norms import row_dual_upper
    module = chain_net(act, (4, 16, 16, 3), 2)
    lo, hi = torch.full((4,), 0.2), torch.full((4,), 1.4)
    net = models.from_module(module)
    r = local_lipschitz(net, (lo[None], hi[None]), attack_options=FAST_ATTACK)
    chain = dense_chain(net)
    fb, _ = forward_bounds(chain, lo[None], hi[None])
    seeds = torch.eye(3)
    bb = BackwardGraph(chain, seeds, derivative_ranges(chain, fb, 3), "crown").run()
    interval_rows = row_dual_upper("inf", bb.grad_lower, bb.grad_upper, bb.l1_upper)
    assert r.upper <= float(interval_rows.max()) * (1 + 1e-8)
    assert sampled_truth(module, lo, hi) <= r.upper
