"""Refuting AND clauses by a convex combination of their rows (relax/bab/box_crown.py ``combo_bound``, used by
input_split.ChainSplit with ``combo_iters``): every bound against the exact minimum of the combined row (MILP with
HiGHS, tests/milp_oracle.py); a box where no single row is refuted but the combination is (the property holds
there, MILP); satisfiable clauses (MILP finds a point) are never closed, also inside a disjunction."""

import math

import pytest
import torch

from nncertify.relax.bab.box_crown import AffineReluChain, BoxCrown
from nncertify.relax.bab.input_split import ChainSplit
from nncertify.relax.bab.search import branch_and_bound
from nncertify.relax.spec import Query, Specification, verify_query

from milp_oracle import spec_min
from patterns import conv_relu_network as _conv
from patterns import relu_network as _mlp


def _minmax(net, lo, hi, C):
    """``min over the box of max_k C_k f(x)`` (exact, MILP)."""
    return spec_min(net, lo, hi, C, torch.zeros(C.shape[0], dtype=torch.float64))


@pytest.mark.parametrize("kind", ["mlp", "conv"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_combo_bound_is_a_lower_bound_of_the_combined_row(kind, dtype, single_thread):
    """For the weights it returns, the bound never exceeds the exact minimum of ``lam . (C f - d)`` (MILP on that
    one row), the weights are >= 0 and zero off the clause; one-row clauses get -inf."""
    net = _mlp(3, (3, 10, 10, 3)) if kind == "mlp" else _conv(4)
    n_in = int(math.prod(net.input_shape))
    chain = AffineReluChain.from_network(net)
    g = torch.Generator().manual_seed(1)
    C = torch.randn(4, 3, generator=g, dtype=torch.float64)
    d = torch.randn(4, generator=g, dtype=torch.float64) * 0.1
    owner = torch.tensor([0, 0, 0, 1])  # a 3-row AND clause and a one-row clause
    bc = BoxCrown(chain, C, d, dtype=dtype)
    lo = torch.rand(4, n_in, generator=g, dtype=torch.float64) - 0.8
    hi = lo + 0.6 * torch.rand(4, n_in, generator=g, dtype=torch.float64)
    _, _, pre = bc.bound(lo, hi)
    for opt_alpha in (False, True):
        low, lam, _, margin, A = bc.combo_bound(lo, hi, pre, owner, iters=15, lr=0.3, opt_alpha=opt_alpha)
        assert low.shape == (4, 2) and bool(torch.isinf(low[:, 1]).all()) and bool((low[:, 1] < 0).all())
        assert bool((lam >= 0).all()) and bool((lam[:, 0, 3] == 0).all()) and bool((lam[:, 1] == 0).all())
        assert bool((margin >= 0).all())
        for i in range(4):
            w = lam[i, 0].double()
            exact = spec_min(net, lo[i].reshape(net.input_shape), hi[i].reshape(net.input_shape),
                             (w @ C).unsqueeze(0), (w @ d).reshape(1))
            assert float(low[i, 0]) <= exact + 1e-9, (i, opt_alpha, float(low[i, 0]), exact)


@pytest.mark.parametrize("kind", ["mlp", "conv"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_clause_only_the_combination_refutes(kind, dtype, single_thread):
    """Rows ``(y0 - y1) - (c - 0.05)`` and ``(c + 0.05) - (y0 - y1)`` (``c`` the middle of the range of ``y0 - y1``
    on the box; the clause ``c + 0.05 <= y0 - y1 <= c - 0.05`` can never hold): each row alone takes both signs
    (MILP, so no single row can be refuted), the exact ``min max`` is positive (the property holds), and the
    combination (1/2, 1/2) is certified positive; the search with the combination proves it at the root, the
    one without it does not."""
    net = _mlp(5, (3, 12, 12, 2)) if kind == "mlp" else _conv(6)
    n_in = int(math.prod(net.input_shape))
    chain = AffineReluChain.from_network(net)
    row = [1.0, -1.0] + [0.0] * (int(math.prod(net.output_shape)) - 2)
    C = torch.tensor([row, [-v for v in row]], dtype=torch.float64)
    lo, hi = -torch.ones(n_in, dtype=torch.float64), torch.ones(n_in, dtype=torch.float64)
    lo_s, hi_s = lo.reshape(net.input_shape), hi.reshape(net.input_shape)
    zero = torch.zeros(1, dtype=torch.float64)
    c = (spec_min(net, lo_s, hi_s, C[:1], zero) - spec_min(net, lo_s, hi_s, C[1:], zero)) / 2
    d = torch.tensor([c - 0.05, -c - 0.05], dtype=torch.float64)
    singles = [spec_min(net, lo_s, hi_s, C[k:k + 1], d[k:k + 1]) for k in range(2)]
    assert max(singles) < 0, singles  # no row alone is positive on the whole box
    truth = spec_min(net, lo_s, hi_s, C, d)
    assert truth > 0, truth  # the clause is empty: the property holds
    own = torch.zeros(2, dtype=torch.long)
    bc = BoxCrown(chain, C, d, dtype=dtype)
    low, _, pre = bc.bound(lo.unsqueeze(0), hi.unsqueeze(0))
    assert not bool((low > 0).any())
    cb, lam, *_ = bc.combo_bound(lo.unsqueeze(0), hi.unsqueeze(0), pre, own, iters=20, lr=0.3)
    assert 0 < float(cb[0, 0]) <= truth + 1e-9, (float(cb[0, 0]), truth)
    net64 = net.to(dtype=torch.float64)
    plain = ChainSplit(chain, net64, lo_s, hi_s, C, d, own, dtype=dtype, lookahead="off")
    assert not float(plain.root().key) > 0
    new = ChainSplit(chain, net64, lo_s, hi_s, C, d, own, dtype=dtype, lookahead="off", combo_iters=20)
    assert float(new.root().key) > 0 and float(new.root_spec_keys()[0]) > 0
    q = Query([Specification(lo_s, hi_s, C, d)])
    v = verify_query(net, q, timeout=60, input_split=True, pgd_restarts=0, pgd_steps=0, input_combo_iters=10)
    assert v.status == "unsat" and float(v.spec_bounds[0]) <= truth + 1e-9, (v.status, v.reason)


@pytest.mark.parametrize("seed", range(4))
def test_satisfiable_clauses_are_never_closed(seed, single_thread):
    """Random nets and 2-3 row AND clauses with a common shift just past the exact ``min max`` (MILP finds a point
    of the clause): no box containing the point is ever closed by the combination; the search ends with a
    checked witness.  Seed 3: a disjunction of two clauses, one satisfiable, one not: the query is sat."""
    net = _mlp(40 + seed, (3, 12, 12, 4))
    chain = AffineReluChain.from_network(net)
    net64 = net.to(dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    m = 2 + seed % 2
    C = torch.randn(m, 4, generator=g, dtype=torch.float64)
    lo = torch.tensor([-1.0, -0.5, 0.0], dtype=torch.float64)
    hi = torch.tensor([1.0, 0.5, 0.0 if seed == 2 else 0.5], dtype=torch.float64)  # a zero-width coordinate
    t0 = _minmax(net, lo, hi, C)
    d = torch.full((m,), t0 + 0.01, dtype=torch.float64)
    assert spec_min(net, lo, hi, C, d) < 0  # satisfiable
    # the combination never refutes a box of the clause: the root and random sub-boxes around the optimum
    own = torch.zeros(m, dtype=torch.long)
    for dtype in (torch.float64, torch.float32):
        bc = BoxCrown(chain, C, d, dtype=dtype)
        boxes_lo = torch.cat([lo.unsqueeze(0), (lo + 0.25 * torch.rand(6, 3, generator=g, dtype=torch.float64)
                                                 * (hi - lo)).clamp(max=hi)])
        boxes_hi = torch.cat([hi.unsqueeze(0), (boxes_lo[1:] + 0.5 * (hi - lo)).clamp(max=hi)])
        _, _, pre = bc.bound(boxes_lo, boxes_hi)
        cb, *_ = bc.combo_bound(boxes_lo, boxes_hi, pre, own, iters=30, lr=0.3, opt_alpha=True)
        for i in range(boxes_lo.shape[0]):
            if float(cb[i, 0]) > 0:  # then the clause must be empty on that box
                assert spec_min(net, boxes_lo[i], boxes_hi[i], C, d) > 0, i
        assert not float(cb[0, 0]) > 0
    if seed == 3:  # a disjunction: the satisfiable clause and an unsatisfiable one (a shift below the optimum)
        C2 = torch.cat([C, C[:2]])
        d2 = torch.cat([d, torch.full((2,), _minmax(net, lo, hi, C[:2]) - 0.05, dtype=torch.float64)])
        own = torch.tensor([0] * m + [1, 1])
        C, d = C2, d2
    cs = ChainSplit(chain, net64, lo, hi, C, d, own, dtype=torch.float32, lookahead="off", alpha_iters=5,
                    combo_iters=10, chunk=16)
    out = branch_and_bound([cs.root()], cs, cs.bound, timeout=60, batch=4)
    assert out.status != "proved"
    assert out.status == "witness" or cs.witness is not None, out
    s, x, y = cs.witness
    assert s == 0
    assert bool(((C[own == s] @ net64(x.unsqueeze(0))[0]) <= d[own == s]).all())
    assert bool(((x >= lo) & (x <= hi)).all())


@pytest.mark.parametrize("seed", range(3))
def test_search_with_combination_matches_milp(seed, single_thread):
    """Thresholds just below / above the exact ``min max`` of a 2-row clause: proved iff MILP says the clause is
    empty (the certified bound never above the truth), else a checked witness."""
    net = _mlp(60 + seed, (3, 12, 12, 3))
    chain = AffineReluChain.from_network(net)
    net64 = net.to(dtype=torch.float64)
    g = torch.Generator().manual_seed(10 + seed)
    C = torch.randn(2, 3, generator=g, dtype=torch.float64)
    lo, hi = -torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    t0 = _minmax(net, lo, hi, C)
    own = torch.zeros(2, dtype=torch.long)
    for delta in (-0.03, 0.03):
        d = torch.full((2,), t0 + delta, dtype=torch.float64)
        truth = spec_min(net, lo, hi, C, d)
        cs = ChainSplit(chain, net64, lo, hi, C, d, own, dtype=torch.float32, lookahead="off",
                        alpha_iters=5 if seed == 2 else 0, combo_iters=10, chunk=16)
        out = branch_and_bound([cs.root()], cs, cs.bound, timeout=60, batch=4)
        if delta < 0:
            assert truth > 0 and out.status == "proved", (truth, out)
            assert out.best_bound <= truth + 1e-9
        else:
            assert truth <= 0 and out.status != "proved"
            s, x, y = cs.witness
            assert bool(((C @ net64(x.unsqueeze(0))[0]) <= d).all())
