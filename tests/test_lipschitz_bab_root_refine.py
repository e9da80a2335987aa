"""Issue #15: the activation BaB's root pre-activation bounds refined by a per-neuron beta-CROWN search.

What changed, and the independent truth each test checks it against:

* :func:`relax.lipschitz.bounds.chain.refined_intermediate_bounds` (relax/bab/refine.py behind the chain's
  layout): every refined interval contains the exact range of its neuron over the box (HiGHS MILP on the
  prefix network, tests/milp_oracle.py, independent of relax/) and every sampled pre-activation; it is
  never looser than the bounds it starts from and strictly tighter on these nets;
* the BaB started from them (``bab_options={"refine_share": ...}``, the default where domains are
  re-bounded by the forward engine) still reaches the exact constant: MILP (ReLU MLP, conv net) and
  enumeration of activation regions (LeakyReLU), and its bound is never below the MILP value;
* a bad ``refine_share`` is refused with a one-line error naming it.
"""

import time

import numpy as np
import pytest
import torch
from torch import nn

from milp_oracle import spec_min
from nncertify import models
from nncertify.models.errors import InvalidArgumentError
from nncertify.relax.lipschitz import local_lipschitz
from nncertify.relax.lipschitz.bounds.chain import dense_chain, forward_bounds, refined_intermediate_bounds
from nncertify.relax.lipschitz.lower_bounds.exact import exact_local_lipschitz

from test_lipschitz_bab_speedups import FAST_ATTACK, enumerate_leaky, mlp

DEFAULT_DTYPE = torch.float64
DT = torch.float64
pytestmark = pytest.mark.usefixtures("single_thread")


def _prefix_module(module, k):
    """The Sequential up to (and including) the ``k``-th Linear layer (0-based): outputs ``z_k``."""
    lins = [i for i, m in enumerate(module) if isinstance(m, nn.Linear)]
    return nn.Sequential(*list(module)[:lins[k] + 1])


@pytest.mark.parametrize("act,seed", [("relu", 0), ("leaky", 1)])
def test_refined_root_bounds_contain_the_milp_range_and_are_tighter(act, seed):
    module = mlp([5, 10, 10, 10, 2], seed, act)
    chain = dense_chain(models.from_module(module).to(dtype=DT))
    lo, hi = torch.full((1, 5), -1.0, dtype=DT), torch.full((1, 5), 1.0, dtype=DT)
    fb, _ = forward_bounds(chain, lo, hi, "auto", refine=True)  # alpha-CROWN: what the BaB starts from
    ref = refined_intermediate_bounds(chain, lo, hi, fb, deadline=time.perf_counter() + 3.0)
    assert ref is not None
    fr, stats = ref
    assert "refine" in stats.summary()
    gain, checked = 0.0, 0
    for k, ((la, ua), (lr, ur)) in enumerate(zip(fb, fr)):
        assert (lr >= la).all() and (ur <= ua).all()  # intersected: never looser
        gain += float(((ua - la) - (ur - lr)).sum())
        if k == 0:
            assert torch.equal(la, lr) and torch.equal(ua, ur)  # first layer: interval already exact
            continue
        pnet = models.from_module(_prefix_module(module, k))
        for j in range(lr.shape[1]):
            if not (float(la[0, j]) < 0 < float(ua[0, j])):
                continue  # stable: unchanged (checked above to be no looser)
            e = torch.zeros(1, lr.shape[1], dtype=DT)
            e[0, j] = 1.0
            zmin = spec_min(pnet, lo[0], hi[0], e, torch.zeros(1, dtype=DT))
            zmax = -spec_min(pnet, lo[0], hi[0], -e, torch.zeros(1, dtype=DT))
            tol = 1e-7 * (1 + abs(zmin) + abs(zmax))
            assert float(lr[0, j]) <= zmin + tol and float(ur[0, j]) >= zmax - tol, (k, j)
            checked += 1
    assert checked >= 5 and gain > 1e-2, (checked, gain)
    g = torch.Generator().manual_seed(5)
    X = torch.cat((lo + (hi - lo) * torch.rand(20000, 5, generator=g, dtype=DT),
                   torch.where(torch.rand(2000, 5, generator=g) < 0.5, lo, hi)))
    zs, _ = chain.forward_all(X)
    for z, (l, u) in zip(zs, fr):
        assert (z >= l - 1e-12).all() and (z <= u + 1e-12).all()


def test_refinement_is_skipped_where_it_does_not_apply():
    chain = dense_chain(models.from_module(mlp([4, 6, 3], 0, "relu")).to(dtype=DT))  # one activation layer
    lo, hi = torch.zeros(1, 4, dtype=DT), torch.ones(1, 4, dtype=DT)
    fb, _ = forward_bounds(chain, lo, hi, "auto")
    assert refined_intermediate_bounds(chain, lo, hi, fb, deadline=time.perf_counter() + 1) is None
    chain2 = dense_chain(models.from_module(mlp([4, 6, 6, 3], 0, "maxmin")).to(dtype=DT))
    fb2, _ = forward_bounds(chain2, lo, hi, "auto")
    assert refined_intermediate_bounds(chain2, lo, hi, fb2, deadline=time.perf_counter() + 1) is None


REFINED = {"poly_iters": 0, "refine_share": 0.3}  # engine re-bounding (as for > 128 inputs) + refined root


@pytest.mark.parametrize("which", ["mlp", "conv"])
def test_bab_from_refined_root_bounds_matches_the_milp(which):
    if which == "mlp":
        module, shape = mlp([4, 8, 8, 8, 3], 3, "relu"), (4,)
        net = models.from_module(module)
    else:
        torch.manual_seed(1)
        module = nn.Sequential(nn.Conv2d(1, 2, 2), nn.ReLU(), nn.Conv2d(2, 2, 2), nn.ReLU(), nn.Flatten(),
                               nn.Linear(2, 2)).double()
        shape = (1, 3, 3)
        net = models.from_module(module, input_shape=shape)
    x0 = torch.rand(1, *shape, generator=torch.Generator().manual_seed(2), dtype=DT)
    lo, hi = x0 - 0.35, x0 + 0.35
    c = torch.zeros(3 if which == "mlp" else 2, dtype=DT)
    c[0], c[-1] = 1.0, -1.0
    ex = exact_local_lipschitz(net, (lo, hi), c=c, time_limit=60)
    assert ex.optimal
    r = local_lipschitz(net, (lo, hi), c=c, bab_timeout=30, attack_options=FAST_ATTACK, bab_options=REFINED)
    assert r.upper >= ex.value - 1e-8 and r.lower <= ex.value + 1e-8
    assert r.exact and r.upper == pytest.approx(ex.value, rel=1e-6, abs=1e-8)
    if which == "mlp":
        assert "refine" in r.stats  # the refinement ran (3 activation layers)


def test_bab_from_refined_root_bounds_is_exact_on_a_leaky_relu_net():
    module = mlp([3, 5, 5, 2], 1, "leaky")
    net = models.from_module(module)
    lo, hi = torch.full((1, 3), -0.5, dtype=DT), torch.full((1, 3), 0.4, dtype=DT)
    c = torch.tensor([1.0, -1.0], dtype=DT)
    truth = enumerate_leaky(module, lo[0].numpy(), hi[0].numpy(), c.numpy(), 0.15)
    r = local_lipschitz(net, (lo, hi), c=c, bab_timeout=30, attack_options=FAST_ATTACK, bab_options=REFINED)
    assert r.exact and r.upper >= truth * (1 - 1e-12) and r.upper == pytest.approx(truth, rel=1e-6)
    assert "refine" in r.stats


def test_refine_share_default_and_bad_values():
    module = mlp([4, 6, 6, 3], 0, "relu")
    net = models.from_module(module)
    lo, hi = torch.zeros(1, 4, dtype=DT), torch.full((1, 4), 0.5, dtype=DT)
    # default: off where the polytope re-bounding runs (<= 128 inputs), on with engine re-bounding
    r = local_lipschitz(net, (lo, hi), bab_timeout=5, attack_options=FAST_ATTACK)
    assert "refine" not in r.stats
    r0 = local_lipschitz(net, (lo, hi), bab_timeout=5, attack_options=FAST_ATTACK, bab_options={"poly_iters": 0})
    assert "refine" in r0.stats and r0.upper >= r.lower * (1 - 1e-12) and r.upper >= r0.lower * (1 - 1e-12)
    big = models.from_module(mlp([144, 8, 8, 2], 0, "relu"))  # > POLY_MAX_INPUT inputs: engine re-bounding
    x0 = torch.rand(1, 144, generator=torch.Generator().manual_seed(0), dtype=DT)
    rb = local_lipschitz(big, (x0 - 0.05, x0 + 0.05), bab_timeout=5, attack_options=FAST_ATTACK)
    assert "refine" in rb.stats and rb.lower <= rb.upper
    for bad in (1.0, -0.1, 2):
        with pytest.raises(InvalidArgumentError, match="refine_share"):
            local_lipschitz(net, (lo, hi), bab_timeout=5, attack_options=FAST_ATTACK, bab_options={"refine_share": bad})


# ------------------------------------------------------------------ the second attack round (lower bound)
@pytest.mark.parametrize("act", ["relu", "leaky"])
def test_boosted_lower_bound_is_attained_and_never_above_the_exact_value(act, monkeypatch):
    """The longer attack round inside the BaB (forced at the first batch here) only reports autograd gradient
    norms at points of the box: never above the MILP / enumerated exact value, and its witness attains it."""
    from nncertify.relax.lipschitz.search import bab as bab_mod
    monkeypatch.setattr(bab_mod, "BOOST_AFTER", 0.0)
    module = mlp([3, 6, 6, 2], 4, act)
    net = models.from_module(module)
    lo, hi = torch.full((1, 3), -0.6, dtype=DT), torch.full((1, 3), 0.5, dtype=DT)
    c = torch.tensor([1.0, -1.0], dtype=DT)
    if act == "relu":
        truth = exact_local_lipschitz(net, (lo, hi), c=c, time_limit=60)
        assert truth.optimal
        truth = truth.value
    else:
        truth = enumerate_leaky(module, lo[0].numpy(), hi[0].numpy(), c.numpy(), 0.15)
    weak = {"n_samples": 1, "n_starts": 1, "steps": 1}  # a weak first attack: the round has work to do
    r = local_lipschitz(net, (lo, hi), c=c, bab_timeout=20, attack_options=weak,
                        bab_options={"lower_share": 0.2, "batch": 1})
    assert "lower_boost" in r.stats
    boost = max(r.stats["lower_boost"])
    assert boost <= truth * (1 + 1e-9) + 1e-12 and r.lower <= truth * (1 + 1e-9) + 1e-12 <= r.upper * (1 + 2e-9)
    w = torch.tensor(r.stats["witness"][0], dtype=DT).reshape(1, 3)
    assert ((w >= lo) & (w <= hi)).all()
    w.requires_grad_(True)
    g = torch.autograd.grad((module(w)[0] * c).sum(), w)[0]
    assert float(g.abs().sum()) == pytest.approx(r.lower, rel=1e-9)


def test_boost_round_raises_a_weak_attack_and_bad_share_is_refused():
    from nncertify.relax.lipschitz.lower_bounds.attack import attack_lower_bound
    from nncertify.relax.lipschitz.search.bab import _ActivationSearch
    module = mlp([6, 16, 16, 16, 3], 2, "relu")
    net = models.from_module(module).to(dtype=DT)
    chain = dense_chain(net)
    lo, hi = torch.full((6,), -0.5, dtype=DT), torch.full((6,), 0.5, dtype=DT)
    seeds = torch.eye(3, dtype=DT)
    weak, _ = attack_lower_bound(net, chain, lo, hi, seeds, "inf", n_samples=1, n_starts=1, steps=0)
    srch = _ActivationSearch.__new__(_ActivationSearch)  # only what boost_lower reads
    srch.net, srch.chain, srch.xl, srch.xu, srch.seeds, srch.norm, srch.ball = net, chain, lo, hi, seeds, "inf", None
    srch.lb_seed, srch.witness, srch.stats = weak.clone(), {}, {}
    srch.boost_lower([1.0, 5.0, 2.0], until=time.perf_counter() + 5.0)
    assert bool((srch.lb_seed >= weak).all()) and float(srch.lb_seed.max()) > float(weak.max())
    for s, x in srch.witness.items():  # each improved seed's value is attained at its witness
        X = torch.tensor(x, dtype=DT)[None].requires_grad_(True)
        g = torch.autograd.grad(module(X)[0, s], X)[0]
        assert float(g.abs().sum()) == pytest.approx(float(srch.lb_seed[s]), rel=1e-9)
        assert bool(((X >= lo) & (X <= hi)).all())
    net1 = models.from_module(mlp([4, 6, 6, 3], 0, "relu"))
    with pytest.raises(InvalidArgumentError, match="lower_share"):
        local_lipschitz(net1, (lo[:4][None], hi[:4][None]), bab_timeout=5, attack_options=FAST_ATTACK,
                        bab_options={"lower_share": 1.5})
