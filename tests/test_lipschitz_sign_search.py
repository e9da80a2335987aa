"""Issue #15: the gradient-sign search in the l1 bound of the backward graph (``BackwardGraph._sign_search_l1``).

For an l_inf input norm the bound is on ``||g||_1 = max_s s^T g``.  The search partitions the sign choices of
the sign-unstable coordinates into leaves and bounds each leaf by one back-substitution.  Independent truths:

* every full sign vector ``s`` bounded on its own (``abs_fixed = s``: the back-substitution of ``s^T g``,
  brute force over all ``2^n`` of them): the search's bound is never below their maximum (a lost leaf would
  be), equals it when every sign is enumerated, and is never above the chord bound;
* autograd gradients at sampled box points: their l1 norms never exceed the bound;
* the activation BaB with the search on still ends at the HiGHS MILP value.
"""

import itertools

import pytest
import torch
from torch import nn

from nncertify import models
from nncertify.models.errors import InvalidArgumentError
from nncertify.models.layers import MaxMin
from nncertify.relax.lipschitz import local_lipschitz
from nncertify.relax.lipschitz.bounds.backward import BackwardGraph, SignSearch
from nncertify.relax.lipschitz.bounds.chain import dense_chain, forward_bounds
from nncertify.relax.lipschitz.bounds.common import derivative_ranges
from nncertify.relax.lipschitz.lower_bounds.attack import true_gradients
from nncertify.relax.lipschitz.lower_bounds.exact import exact_local_lipschitz

DT = torch.float64
pytestmark = pytest.mark.usefixtures("single_thread")
ACTS = {"relu": nn.ReLU, "leaky": lambda: nn.LeakyReLU(0.2), "maxmin": MaxMin}


def _net(widths, seed, act):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(widths[:-2], widths[1:-1]):
        layers += [nn.Linear(a, b), ACTS[act]()]
    layers.append(nn.Linear(widths[-2], widths[-1]))
    return models.from_module(nn.Sequential(*layers).double(), (widths[0],))


def _graph(net, eps, seed):
    chain = dense_chain(net)
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(chain.in_dim, generator=g, dtype=DT)
    xl, xu = x0 - eps, x0 + eps
    fb, _ = forward_bounds(chain, xl[None], xu[None], "ibp")
    seeds = torch.eye(chain.out_dim, dtype=DT)
    return chain, xl, xu, seeds, (lambda: BackwardGraph(chain, seeds, derivative_ranges(chain, fb, seeds.shape[0])))


def _all_signs(n):
    return torch.tensor(list(itertools.product((-1, 1), repeat=n)), dtype=torch.int8)


def _brute(make, n_rows, n, abs_fixed=None):
    """Per row, the largest back-substitution bound of ``s^T g`` over every full sign vector ``s`` (those
    agreeing with ``abs_fixed`` where it is set)."""
    S = _all_signs(n)
    out = []
    for r in range(n_rows):
        keep = S
        if abs_fixed is not None:
            f = abs_fixed[r]
            keep = S[((f == 0) | (S == f)).all(1)]
        bg = make()
        vals = BackwardGraph(bg.chain, bg.seeds[r:r + 1].expand(keep.shape[0], -1),
                             [(a[r:r + 1].expand(keep.shape[0], -1), b[r:r + 1].expand(keep.shape[0], -1))
                              for a, b in bg.d_ranges]).run(abs_fixed=keep).l1_upper
        out.append(float(vals.max()))
    return torch.tensor(out, dtype=DT)


@pytest.mark.parametrize("act,widths,seed", [("relu", [6, 12, 12, 3], 0), ("leaky", [7, 10, 9, 2], 1),
                                             ("maxmin", [6, 8, 8, 3], 2), ("relu", [5, 9, 7, 8, 2], 3)])
def test_sign_search_between_every_sign_vector_and_the_chord(act, widths, seed):
    net = _net(widths, seed, act)
    chain, xl, xu, seeds, make = _graph(net, 0.3, seed)
    n = chain.in_dim
    chord = make().run().l1_upper
    brute = _brute(make, seeds.shape[0], n)
    tol = 1e-9 * (1 + brute.abs())
    for cfg in (SignSearch(first=2, rounds=2, keep=2, step=1), SignSearch(first=1, rounds=3, keep=1, step=2),
                SignSearch(first=3, rounds=0), SignSearch(), SignSearch(low=False), SignSearch(verify=0),
                SignSearch(first=2, rounds=1, keep=2, step=1, verify=1)):
        v = make().run(sign_search=cfg).l1_upper
        assert (v >= brute - tol).all(), (cfg, v, brute)  # no sign choice is lost
        assert (v <= chord + tol).all()
    full = make().run(sign_search=SignSearch(first=n, rounds=0)).l1_upper
    assert torch.allclose(full, brute, rtol=1e-12, atol=1e-12)  # every sign enumerated: the brute force itself
    full64 = make().run(sign_search=SignSearch(first=n, rounds=0, low=False)).l1_upper
    assert torch.allclose(full64, brute, rtol=1e-12, atol=1e-12)  # (float32 leaves, the top ones in float64)
    assert (full < chord - 1e-6).any()  # and it is tighter than the chords on these nets
    # the true gradients at sampled points stay below the bound
    X = xl + (xu - xl) * torch.rand(seeds.shape[0], 400, n, generator=torch.Generator().manual_seed(5), dtype=DT)
    g = true_gradients(net, X, seeds).abs().sum(-1).amax(1)
    assert (g <= make().run(sign_search=SignSearch(first=2, rounds=1, keep=2, step=1)).l1_upper + tol).all()


def test_sign_search_respects_fixed_signs():
    """With some signs fixed (the BaB's sign splits), the search bounds exactly the sign vectors agreeing with
    them: at least the brute force over those, and with every free sign enumerated, equal to it."""
    net = _net([6, 10, 10, 3], 4, "relu")
    chain, xl, xu, seeds, make = _graph(net, 0.3, 4)
    fixed = torch.zeros(3, 6, dtype=torch.int8)
    fixed[0, 0], fixed[1, 2], fixed[1, 5], fixed[2, 1] = 1, -1, 1, -1
    brute = _brute(make, 3, 6, fixed)
    v = make().run(abs_fixed=fixed, sign_search=SignSearch(first=2, rounds=1, keep=1, step=1)).l1_upper
    assert (v >= brute - 1e-9).all()
    full = make().run(abs_fixed=fixed, sign_search=SignSearch(first=6, rounds=0)).l1_upper
    assert torch.allclose(full, brute, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("widths,seed", [([5, 10, 10, 3], 0), ([6, 12, 12, 2], 1)])
def test_bab_with_sign_search_reaches_the_milp_value(widths, seed, monkeypatch):
    net = _net(widths, seed, "relu")
    x0 = torch.rand(1, widths[0], generator=torch.Generator().manual_seed(seed), dtype=DT)
    box = (x0 - 0.25, x0 + 0.25)
    ex = exact_local_lipschitz(net, box, time_limit=120)
    assert ex.optimal
    on = local_lipschitz(net, box, bab_timeout=60, bab_options={"sign_search": {"first": 3, "rounds": 2,
                                                                                "keep": 4, "step": 2}},
                         attack_options={"n_samples": 64, "n_starts": 4, "steps": 10})
    off = local_lipschitz(net, box, bab_timeout=60, bab_options={"sign_search": False},
                          attack_options={"n_samples": 64, "n_starts": 4, "steps": 10})
    cold = local_lipschitz(net, box, bab_timeout=60, bab_options={"warm_start": False},
                           attack_options={"n_samples": 64, "n_starts": 4, "steps": 10})
    import nncertify.relax.lipschitz.search.bab as bab
    monkeypatch.setattr(bab, "WARM_MAX_BYTES", 1)  # no room for the multipliers: domains keep none
    capped = local_lipschitz(net, box, bab_timeout=60, attack_options={"n_samples": 64, "n_starts": 4, "steps": 10})
    assert capped.stats.get("warm_dropped", 0) > 0 and "warm_dropped" not in on.stats
    for r in (on, off, cold, capped):
        assert r.exact and r.status == "exact"
        assert r.upper == pytest.approx(ex.value, rel=1e-6)
        assert r.lower <= ex.value * (1 + 1e-9) <= r.upper * (1 + 1e-6)


@pytest.mark.parametrize("bad", [{"first": 20}, {"step": 0}, {"keep": 0}, {"depth": 3}, {"first": 2.5}, "yes"])
def test_bad_sign_search_option_is_refused(bad):
    net = _net([4, 6, 3], 0, "relu")
    box = (torch.zeros(1, 4, dtype=DT), torch.ones(1, 4, dtype=DT))
    with pytest.raises(InvalidArgumentError, match="sign_search"):
        local_lipschitz(net, box, bab_timeout=5, bab_options={"sign_search": bad})


@pytest.mark.parametrize("act,widths,seed", [("relu", [6, 12, 12, 3], 0), ("leaky", [7, 10, 9, 2], 1),
                                             ("maxmin", [6, 8, 8, 3], 2), ("relu", [5, 9, 7, 8, 2], 3)])
def test_skipping_fixed_gates_gives_the_same_bounds(act, widths, seed):
    """``skip_fixed`` computes a gate's input bounds only where its derivative is not fixed: every bound the
    full pass computes (gradient entries, l1, the inputs of the unfixed gates) is the same."""
    net = _net(widths, seed, act)
    chain = dense_chain(net)
    x0 = torch.rand(chain.in_dim, generator=torch.Generator().manual_seed(seed), dtype=DT)
    fb, _ = forward_bounds(chain, (x0 - 0.3)[None], (x0 + 0.3)[None], "ibp")
    seeds = torch.eye(chain.out_dim, dtype=DT)
    dr = derivative_ranges(chain, fb, seeds.shape[0])
    dr[0] = (dr[0][0].clone(), dr[0][1].clone())
    dr[0][0][0, :2] = dr[0][1][0, :2]  # fix two derivatives of the first row by hand (as BaB splits do)
    full = BackwardGraph(chain, seeds, dr).run(sign_search=SignSearch(first=2, rounds=1, keep=2, step=1))
    skip = BackwardGraph(chain, seeds, dr).run(sign_search=SignSearch(first=2, rounds=1, keep=2, step=1),
                                               skip_fixed=True)
    same = lambda x, y: torch.allclose(x, y, rtol=1e-12, atol=1e-13)  # noqa: E731 (up to summation order)
    assert same(full.grad_lower, skip.grad_lower) and same(full.grad_upper, skip.grad_upper)
    assert same(full.l1_upper, skip.l1_upper)
    for k, ((fl, fu), (sl, su)) in enumerate(zip(full.q_bounds, skip.q_bounds)):
        a, b = dr[k]
        free = (a < b) if chain.gates[k].E is None else torch.ones_like(fl, dtype=torch.bool)
        assert free.any()
        assert same(fl[free], sl[free]) and same(fu[free], su[free])


def _scaled_net(seed):
    """A net whose float32 sums cancel: large weights whose rows nearly cancel pairwise."""
    torch.manual_seed(seed)
    l1, l2, l3 = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 3)
    with torch.no_grad():
        l1.weight.mul_(40)
        l2.weight[8:] = -l2.weight[:8] * (1 + 1e-4 * torch.randn(8, 16))
        l2.weight.mul_(60)
        l3.weight.mul_(25)
    return models.from_module(nn.Sequential(l1, nn.ReLU(), l2, nn.ReLU(), l3).double(), (8,))


@pytest.mark.parametrize("kind,seed", [("relu", 0), ("leaky", 1), ("maxmin", 2), ("scaled", 3), ("scaled", 4)])
def test_float32_leaf_values_plus_the_margin_bound_the_float64_ones(kind, seed):
    """The sign search evaluates its leaves in float32 and adds ``low_margin``: for any leaf row (entries in
    [-1, 1]: signs and chord slopes) the float32 value plus the margin is >= the float64 value, while the
    float32 value alone falls below it somewhere (the margin is needed), and the margin stays small."""
    net = _scaled_net(seed) if kind == "scaled" else _net([8, 16, 16, 3], seed, kind)
    chain, xl, xu, seeds, make = _graph(net, 0.4, seed)
    bg = make()
    bg.run()  # sets the relaxation lines
    g = torch.Generator().manual_seed(seed)
    S = torch.rand(seeds.shape[0], 4000, chain.in_dim, generator=g, dtype=DT) * 2 - 1
    S = torch.where(torch.rand(S.shape, generator=g) < 0.5, S.sign(), S)
    end = len(bg.items)
    up64 = bg.upper(S, end)
    up32 = bg.upper(S.float(), end).double()
    err = bg.low_margin()[:, None]
    assert (up32 + err >= up64).all()
    assert (up32 < up64).any()
    assert (err <= 1e-3 * (up64.abs().amax(1, keepdim=True) + bg._magnitude()[:, None])).all()


def test_bad_warm_start_option_is_refused():
    net = _net([4, 6, 3], 0, "relu")
    box = (torch.zeros(1, 4, dtype=DT), torch.ones(1, 4, dtype=DT))
    with pytest.raises(InvalidArgumentError, match="warm_start"):
        local_lipschitz(net, box, bab_timeout=5, bab_options={"warm_start": "yes"})


def test_a_second_run_does_not_reuse_the_float32_copies_of_the_first():
    """The float32 copies of the relaxation lines are cast once per :meth:`BackwardGraph.run`: a graph whose
    derivative ranges change between two runs bounds like a fresh graph with the new ranges."""
    net = _net([6, 10, 10, 3], 7, "relu")
    chain, xl, xu, seeds, make = _graph(net, 0.3, 7)
    bg = make()
    wide = bg.run(sign_search=SignSearch()).l1_upper
    dr = [(a.clone(), b.clone()) for a, b in bg.d_ranges]
    dr[0][0][:] = dr[0][1]  # every first-layer derivative fixed to its upper end
    bg.d_ranges = dr
    again = bg.run(sign_search=SignSearch()).l1_upper
    fresh = BackwardGraph(chain, seeds, dr).run(sign_search=SignSearch()).l1_upper
    assert torch.equal(again, fresh)
    assert (fresh < wide - 1e-9).any()
