"""relax/bab: branch-and-bound verification against exact answers (MILP with HiGHS), β soundness, budgets."""

import math

import pytest
import torch
from torch import nn

from nncertify.models import Network, Node, from_module
from nncertify.models.layers import MaxMin
from nncertify.relax import verify_robustness
from nncertify.relax.bab import DomainStore, branch_and_bound
from nncertify.relax.bab.beta_crown import BetaCrown
from nncertify.relax.spec import Query, Specification, robustness_query, verify_query

from milp_oracle import spec_min


def _mlp(seed, widths, act=nn.ReLU):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), act()]
    return from_module(nn.Sequential(*layers[:-1]), (widths[0],))


def _truth(net, q):
    return [spec_min(net, s.lower, s.upper, s.C, s.d) for s in q.specs]


def _agrees(net, q, v, truths):
    if v.status == "unsat":
        assert min(truths) > 0, truths
        assert (v.spec_bounds > 0).all()
        for b, t in zip(v.spec_bounds.tolist(), truths):  # certified bounds never above the exact minimum
            assert b <= t + 1e-6
    elif v.status == "sat":
        s = q.specs[v.spec_index]
        x = v.counterexample
        assert ((x >= s.lower) & (x <= s.upper)).all()
        y = net.to(dtype=torch.float64)(x[None])[0]
        assert (s.C @ y.flatten() <= s.d).all()
        assert truths[v.spec_index] <= 1e-9


@pytest.mark.parametrize("act,seed,eps", [(nn.ReLU, 0, 0.2), (lambda: nn.LeakyReLU(0.1), 1, 0.4)])
def test_bab_proves_what_alpha_crown_cannot(act, seed, eps, single_thread):
    net = _mlp(seed, (4, 16, 16, 3), act)
    x = torch.linspace(-0.5, 0.5, 4)
    q = robustness_query(x, int(net(x[None]).argmax()), eps, 3)
    truths = _truth(net, q)
    assert min(truths) > 0.005  # robust, but ...
    v0 = verify_query(net, q, timeout=20, bab=False, input_split=False)
    assert v0.status == "unknown"  # ... alpha-CROWN alone cannot prove it
    v = verify_query(net, q, timeout=30, input_split=False)
    assert v.status == "unsat" and v.domains > 1 and "bab" in v.reason
    _agrees(net, q, v, truths)
    vi = verify_query(net, q, timeout=30, input_split=True)  # input splitting (4 inputs) agrees
    assert vi.status == "unsat"
    _agrees(net, q, vi, truths)


@pytest.mark.parametrize("act", [nn.ReLU, lambda: nn.LeakyReLU(0.2)])
def test_verdicts_match_milp_sat_and_unsat(act, single_thread):
    seen = set()
    for seed in range(3):
        net = _mlp(seed, (3, 10, 10, 3), act)
        x = torch.tensor([0.2, -0.1, 0.4])
        y = int(net(x[None]).argmax())
        for eps in (0.3, 0.9, 1.5):
            q = robustness_query(x, y, eps, 3)
            truths = _truth(net, q)
            if abs(min(truths)) < 1e-3:
                continue  # too close to the boundary for the MILP's tolerance
            v = verify_query(net, q, timeout=30, input_split=False)
            assert v.status in ("unsat", "sat"), (seed, eps, v)  # small nets: the search is complete
            assert (v.status == "unsat") == (min(truths) > 0)
            _agrees(net, q, v, truths)
            seen.add(v.status)
    assert seen == {"sat", "unsat"}


def test_conv_net_against_milp(single_thread):
    torch.manual_seed(3)
    m = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Conv2d(3, 2, 2, stride=2), nn.ReLU(), nn.Flatten(),
                      nn.Linear(8, 3))
    net = from_module(m, (1, 6, 6))
    x = torch.rand(1, 6, 6)
    y = int(net(x[None]).argmax())
    for eps in (0.05, 0.3):
        q = robustness_query(x, y, eps, 3, clip=(0.0, 1.0))
        truths = _truth(net, q)
        v = verify_query(net, q, timeout=30)
        assert v.status in ("unsat", "sat")
        assert (v.status == "unsat") == (min(truths) > 0)
        _agrees(net, q, v, truths)


def test_disjunction_of_boxes_and_multirow_input_split():
    """ACAS-Xu-like: 5 inputs, a query of two boxes with 2-row conjunctions, input splitting."""
    net = _mlp(4, (5, 12, 12, 4))
    C = torch.tensor([[1.0, -1.0, 0, 0], [1.0, 0, -1.0, 0]], dtype=torch.float64)
    for d0 in (-0.05, 0.05, 0.3):
        specs = [Specification(torch.full((5,), a, dtype=torch.float64), torch.full((5,), a + 0.4, dtype=torch.float64),
                               C, torch.full((2,), d0, dtype=torch.float64)) for a in (-0.6, 0.3)]
        q = Query(specs, "acas-like")
        truths = _truth(net, q)
        if abs(min(truths)) < 1e-3:
            continue
        v = verify_query(net, q, timeout=30)
        assert v.status in ("unsat", "sat")
        assert (v.status == "unsat") == (min(truths) > 0)
        _agrees(net, q, v, truths)


def test_beta_soundness_for_any_multipliers():
    """Every beta >= 0 (and alpha in range) gives a valid bound on a split domain: compare with points sampled
    inside the domain (box points whose pre-activations satisfy the split signs)."""
    torch.manual_seed(5)
    net = _mlp(5, (3, 12, 12, 2))
    lo, hi = -torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    C = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    bc = BetaCrown(net, lo, hi, C, torch.zeros(1, dtype=torch.float64), torch.float32)
    X = lo + (hi - lo) * torch.rand(20000, 3, dtype=torch.float64)
    vals = net.intermediates(X.float())
    pre = torch.cat([vals[ln.inputs[0]].reshape(len(X), -1) for ln in bc.split_nodes], 1)
    f = (vals[net.output].double() @ C.T)[:, 0]
    unstable = bc.unstable0.nonzero().flatten()
    assert unstable.numel() >= 4
    g = torch.Generator().manual_seed(0)
    for trial in range(6):
        S = torch.zeros(1, bc.N, dtype=torch.int8)
        pick = unstable[torch.randperm(unstable.numel(), generator=g)[:3]]
        S[0, pick] = torch.tensor([1, -1, 1 if trial % 2 else -1], dtype=torch.int8)
        inside = ((pre[:, pick] * S[0, pick].float()) >= 0).all(1)
        if inside.sum() < 20:
            continue
        alpha = torch.rand(1, 1, bc.Na, generator=g)
        beta = torch.rand(1, 1, bc.N, generator=g) * 10 * (S != 0).float().unsqueeze(1)
        lower, *_ = bc.bound(S, alpha, beta, 0, 0.0, 0.0)
        assert float(lower) <= float(f[inside].min()) + 1e-5
        opt, *_ = bc.bound(S, alpha, beta, 30, 0.1, 0.1)  # optimized multipliers: still valid, and tighter
        assert float(lower) - 1e-6 <= float(opt) <= float(f[inside].min()) + 1e-5


def test_maxmin_net_bab_is_sound():
    torch.manual_seed(6)
    m = nn.Sequential(nn.Linear(3, 8), MaxMin(), nn.Linear(8, 8), MaxMin(), nn.Linear(8, 2))
    net = from_module(m, (3,))
    X = torch.rand(20000, 3) * 2 - 1
    margin = (net(X) @ torch.tensor([1.0, -1.0]))
    c = 1.0 if margin.min() > -margin.max() else -1.0
    C = torch.tensor([[c, -c]], dtype=torch.float64)
    d = torch.tensor([float((C.float() @ net(X).T).min()) - 0.05], dtype=torch.float64)
    s = Specification(-torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64), C, d)
    v = verify_query(net, Query([s]), timeout=30, input_split=False)
    assert v.status in ("unsat", "unknown", "timeout", "sat")
    if v.status == "sat":
        y = net.to(dtype=torch.float64)(v.counterexample[None])[0]
        assert float(C[0] @ y) <= float(d)
    assert v.status != "unsat" or float(v.spec_bounds[0]) <= float((C.float() @ net(X).T).min() - d) + 1e-5


def test_domain_store_budget_and_order():
    class D:
        def __init__(self, key, nbytes=100):
            self.key, self.nbytes = key, nbytes
    st = DomainStore(memory_budget=350)
    assert st.push([D(3.0), D(-1.0), D(0.5)])
    assert not st.push([D(0.0)]) and len(st) == 3  # would exceed the budget: refused, nothing added
    assert st.min_key() == -1.0
    assert [d.key for d in st.pop(2)] == [-1.0, 0.5]
    assert st.nbytes == 100 and st.push([D(-2.0)])


def test_search_budgets_end_in_unknown_or_timeout_never_unsat():
    net = _mlp(0, (4, 16, 16, 3))
    x = torch.linspace(-0.5, 0.5, 4)
    q = robustness_query(x, int(net(x[None]).argmax()), 0.2, 3)
    v = verify_query(net, q, timeout=30, input_split=False, memory_budget=1000, interm_iters=0)
    assert v.status == "unknown" and "memory" in v.reason
    v = verify_query(net, q, timeout=30, input_split=False, max_domains=2, interm_iters=0)
    assert v.status == "unknown" and "limit" in v.reason
    v = verify_query(net, q, timeout=1e-3)
    assert v.status == "timeout"
    with pytest.raises(Exception, match="unknown option"):
        verify_query(net, q, timeout=1, nonsense=3)


def test_generic_search_anytime_bound_and_progress():
    """The framework on a toy problem: prove q(t) = t^2 - t + 0.3 > 0 on [0, 1] by interval splitting."""
    class Iv:
        def __init__(self, a, b):
            self.a, self.b, self.nbytes = a, b, 16
            # interval bound of t^2 - t + 0.3: t^2 >= a^2 (a >= 0), -t >= -b
            self.key = a * a - b + 0.3

    class Halve:
        def split(self, doms):
            return [[Iv(d.a, (d.a + d.b) / 2), Iv((d.a + d.b) / 2, d.b)] for d in doms]

    seen = []
    out = branch_and_bound([Iv(0.0, 1.0)], Halve(), lambda kids: None, timeout=10, batch=4, progress=seen.append)
    assert out.status == "proved" and 0 < out.best_bound <= 0.05 + 1e-12  # min of t^2 - t + 0.3 is 0.05
    assert seen and all(p.best_bound <= 0.05 + 1e-12 for p in seen)
    assert [p.best_bound for p in seen] == sorted(p.best_bound for p in seen)  # anytime bound only rises
    out = branch_and_bound([Iv(0.0, 1.0)], Halve(), lambda kids: None, timeout=10, batch=1, max_domains=5)
    assert out.status == "unknown" and out.best_bound <= 0.05


def test_verify_robustness_bab_matches_milp(single_thread):
    net = _mlp(0, (4, 16, 16, 3))
    X = torch.stack([torch.linspace(-0.5, 0.5, 4), torch.linspace(0.5, -0.5, 4), torch.zeros(4)])
    y = net(X).argmax(1)
    res = verify_robustness(net, X, y, 0.2, method="bab", timeout=20)
    res_a = verify_robustness(net, X, y, 0.2, method="alpha-crown")
    assert res.counts()["verified"] >= res_a.counts()["verified"]
    for b in range(3):
        truths = _truth(net, robustness_query(X[b], int(y[b]), 0.2, 3))
        if res.status[b] == "verified":
            assert min(truths) > 0 and (res.margin_lower[b] > 0).all()
            assert all(float(m) <= t + 1e-6 for m, t in zip(res.margin_lower[b], truths))
        if res.status[b] == "falsified":
            assert min(truths) <= 0
    assert res.status[0] == "verified" and res.details[0]["method"] == "bab"
    with pytest.raises(Exception, match="norm='inf'"):
        verify_robustness(net, X, y, 0.2, norm=2, method="bab")


def test_float64_network_and_hand_built_description():
    W1 = torch.tensor([[1.0, -1.0], [1.0, 1.0]], dtype=torch.float64)
    nodes = [Node("x", "input", attrs={"shape": (2,)}),
             Node("l1", "linear", ("x",), {"weight": W1, "bias": torch.zeros(2, dtype=torch.float64)}),
             Node("r1", "relu", ("l1",)),
             Node("l2", "linear", ("r1",), {"weight": torch.tensor([[1.0, 1.0]], dtype=torch.float64),
                                          "bias": torch.tensor([-0.5], dtype=torch.float64)})]
    net = Network(nodes)
    # f(x) = relu(x0 - x1) + relu(x0 + x1) - 0.5 >= |x0| ... on [-1, 1]^2 it has minimum -0.5 at x0 = 0, |x1| <= 0
    C = torch.tensor([[1.0]], dtype=torch.float64)
    box = (-torch.ones(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64))
    v = verify_query(net, Query([Specification(*box, C, torch.tensor([-0.6], dtype=torch.float64))]), timeout=10)
    assert v.status == "unsat"  # f >= -0.5 > -0.6 everywhere
    v = verify_query(net, Query([Specification(*box, C, torch.tensor([-0.5], dtype=torch.float64))]), timeout=10)
    assert v.status == "sat" and float(v.output) <= -0.5
