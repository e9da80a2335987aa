"""relax/bab/beta_crown.py: filtered smart branching (FSB) -- its choice, its children's bounds, its verdicts."""

import math

import pytest
import torch
from torch import nn

from nncertify.models import from_module
from nncertify.relax.bab.beta_crown import BaBSRPolicy, BetaCrown, FSBPolicy, make_bounder
from nncertify.relax.spec import robustness_query, verify_query

from milp_oracle import spec_min
from patterns import relu_network as _mlp


def _setup(seed=5, k=3):
    net = _mlp(seed, (3, 12, 12, 2))
    lo, hi = -torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    C = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    bc = BetaCrown(net, lo, hi, C, torch.full((1,), 50.0, dtype=torch.float64), torch.float32)
    S = torch.zeros(1, bc.N, dtype=torch.int8)
    lower, a, b, sc = bc.bound(S, bc.default_alpha().unsqueeze(0), torch.zeros(1, 1, bc.N), 5, 0.1, 0.0)
    root = bc.make_domains(S, lower, a, b, sc, [0], fsb_k=k)[0]
    return net, lo, hi, C, bc, root


def test_candidates_are_distinct_free_unstable_neurons(single_thread):
    net, lo, hi, C, bc, root = _setup()
    c = root.cands
    assert c is not None and c.numel() == 6
    got = c[c >= 0].tolist()
    assert len(got) == len(set(got)) >= 3
    assert all(bool(bc.unstable0[j]) for j in got)
    # after splitting some neurons, they are no longer candidates
    S = torch.zeros(1, bc.N, dtype=torch.int8)
    S[0, got[:2]] = torch.tensor([1, -1], dtype=torch.int8)
    lower, a, b, sc = bc.bound(S, root.alpha.unsqueeze(0), root.beta.unsqueeze(0), 0, 0.0, 0.0)
    d2 = bc.make_domains(S, lower, a, b, sc, [1], fsb_k=3)[0]
    assert not (set(d2.cands[d2.cands >= 0].tolist()) & set(got[:2]))


def test_fsb_picks_the_candidate_with_the_best_worse_child(single_thread):
    """The batched evaluation must equal bounding each candidate's two children one by one."""
    net, lo, hi, C, bc, root = _setup()
    kids = FSBPolicy(bc, 3).split([root, root])
    assert len(kids) == 2 and all(len(k) == 2 for k in kids)
    (a, b), _ = kids
    diff = (a.signs != root.signs).nonzero().flatten()
    assert diff.numel() == 1 and (b.signs != root.signs).nonzero().flatten().tolist() == diff.tolist()
    j = int(diff)
    assert int(a.signs[j]) == 1 and int(b.signs[j]) == -1  # the two children cover the parent
    worst = {}
    for c in root.cands[root.cands >= 0].tolist():
        ws = []
        for sgn in (1, -1):
            S = root.signs.clone().unsqueeze(0)
            S[0, c] = sgn
            low, *_ = bc.bound(S, root.alpha.unsqueeze(0), root.beta.unsqueeze(0), 0, 0.0, 0.0)
            ws.append(float(low[0, 0]))
        worst[c] = min(ws)
    assert worst[j] >= max(worst.values()) - 1e-5


def test_fsb_children_bounds_are_valid_on_the_children(single_thread):
    """The lower bound FSB hands to each child never exceeds the margin at points of that child."""
    net, lo, hi, C, bc, root = _setup(seed=7)
    X = lo + (hi - lo) * torch.rand(30000, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    vals = net.intermediates(X.float())
    pre = torch.cat([vals[ln.inputs[0]].reshape(len(X), -1) for ln in bc.split_nodes], 1)
    f = (vals[net.output].double() @ C.T)[:, 0]
    dom = root
    for depth in range(4):
        kids = FSBPolicy(bc, 3).split([dom])[0]
        assert kids is not None
        for kid in kids:
            s = kid.signs
            sel = s != 0
            inside = ((pre[:, sel] * s[sel].double()) >= 0).all(1)
            if inside.any():
                assert float(kid.lower[0]) <= float(f[inside].min()) + 1e-5
        make_bounder(bc, fsb_k=3)(kids)
        dom = min(kids, key=lambda k: k.key)
        if dom.cands is None:
            break


@pytest.mark.parametrize("branching", ["fsb", "babsr"])
def test_verdicts_match_milp_with_each_branching(branching, single_thread):
    seen = set()
    for seed in range(3):
        net = _mlp(seed, (3, 10, 10, 3))
        x = torch.tensor([0.2, -0.1, 0.4])
        y = int(net(x[None]).argmax())
        for eps in (0.3, 0.9):
            q = robustness_query(x, y, eps, 3)
            truths = [spec_min(net, s.lower, s.upper, s.C, s.d) for s in q.specs]
            if abs(min(truths)) < 1e-3:
                continue
            v = verify_query(net, q, timeout=30, input_split=False, branching=branching, fsb_k=2)
            assert v.status in ("unsat", "sat")
            assert (v.status == "unsat") == (min(truths) > 0), (seed, eps, v.status, truths)
            if v.status == "unsat":
                assert all(b <= t + 1e-6 for b, t in zip(v.spec_bounds.tolist(), truths))
            seen.add(v.status)
    assert seen == {"sat", "unsat"}


def test_fsb_needs_no_more_domains_than_babsr_here(single_thread):
    """On a net where alpha-CROWN fails, FSB closes the proof with at most BaBSR's domain count (measured:
    fewer); both agree with the MILP truth."""
    net = _mlp(0, (4, 16, 16, 3))
    x = torch.linspace(-0.5, 0.5, 4)
    q = robustness_query(x, int(net(x[None]).argmax()), 0.2, 3)
    truths = [spec_min(net, s.lower, s.upper, s.C, s.d) for s in q.specs]
    assert min(truths) > 0
    vb = verify_query(net, q, timeout=30, input_split=False, branching="babsr", interm_iters=0, batch=1)
    vf = verify_query(net, q, timeout=30, input_split=False, branching="fsb", interm_iters=0, batch=1)
    assert vb.status == vf.status == "unsat"
    assert vf.domains < vb.domains  # measured: 12 vs 22


def test_bad_branching_options_are_named():
    net = _mlp(0, (3, 4, 2))
    q = robustness_query(torch.zeros(3), 0, 0.1, 2)
    with pytest.raises(Exception, match="branching"):
        verify_query(net, q, timeout=1, branching="smart")
    with pytest.raises(Exception, match="fsb_k"):
        verify_query(net, q, timeout=1, fsb_k=0)


def test_memory_budget_spills_warm_starts_then_stops_with_unknown(single_thread):
    """Near the budget the store drops the domains' warm starts (sound: any alpha/beta is valid) and goes on;
    only when even that does not fit does the search end with unknown -- never a crash, never unsat."""
    from nncertify.relax.bab import branch_and_bound

    net = _mlp(0, (4, 16, 16, 3))
    x = torch.linspace(-0.5, 0.5, 4)
    y = int(net(x[None]).argmax())
    q = robustness_query(x, y, 0.2, 3)
    truths = [spec_min(net, s.lower, s.upper, s.C, s.d) for s in q.specs]
    assert min(truths) > 0
    i = min(range(len(truths)), key=lambda j: truths[j])  # the hardest specification
    s = q.specs[i]

    def run(budget, k=0):
        bc = BetaCrown(net, s.lower, s.upper, s.C, s.d, torch.float32, iters=5)
        root = bc.root()
        seen = {"spilled": 0, "peak": 0}

        def between(store):
            seen["spilled"] = max(seen["spilled"], store.spilled)
            seen["peak"] = max(seen["peak"], store.nbytes)
            assert store.nbytes <= budget
        policy = FSBPolicy(bc, k) if k else BaBSRPolicy()
        out = branch_and_bound([root], policy, make_bounder(bc, k), timeout=60, batch=2, memory_budget=budget,
                               between=between)
        return root, out, seen

    for k in (0, 2):
        root, free, seen = run(1e9, k)
        assert free.status == "proved" and seen["spilled"] == 0 and seen["peak"] > 0
        assert free.best_bound <= truths[i] + 1e-6
        _, out, s2 = run(0.8 * seen["peak"], k)
        assert s2["spilled"] > 0, (out, s2)
        if k == 0:  # BaBSR: the same tree, it went on after spilling and finished
            assert out.status == "proved", out
        else:  # FSB: spilled domains lose their candidates (BaBSR fallback), a different tree
            assert out.status == "proved" or (out.status == "unknown" and "memory" in out.reason), out
        assert out.best_bound <= truths[i] + 1e-6
    _, out, _ = run(1.5 * root.nbytes)
    assert out.status == "unknown" and "memory" in out.reason
    assert out.best_bound <= truths[i] + 1e-6


def test_shed_domain_is_bounded_from_default_warm_starts(single_thread):
    net, lo, hi, C, bc, root = _setup()
    kids = BaBSRPolicy().split([root])[0]
    a = kids[0]
    full = a.nbytes
    freed = a.shed()
    assert freed > 0 and a.nbytes == full - freed and a.alpha is None and a.shed() == 0
    make_bounder(bc)(kids)  # one child with warm starts, one without: both bounded
    assert all(math.isfinite(k.key) for k in kids) and kids[0].alpha is not None


def test_allocator_out_of_memory_in_the_search_is_unknown_not_a_crash(monkeypatch, single_thread):
    from nncertify.relax.bab import beta_crown as bcm

    net = _mlp(0, (4, 16, 16, 3))
    x = torch.linspace(-0.5, 0.5, 4)
    q = robustness_query(x, int(net(x[None]).argmax()), 0.2, 3)
    real = bcm.BetaCrown.bound

    msg = ["[enforce fail at alloc_cpu.cpp:118] DefaultCPUAllocator: not enough memory"]

    def bound(self, S, *a, **k):
        if (S != 0).any():  # only split domains: the root bounds run as usual
            raise RuntimeError(msg[0])
        return real(self, S, *a, **k)
    monkeypatch.setattr(bcm.BetaCrown, "bound", bound)
    v = verify_query(net, q, timeout=30, input_split=False, interm_iters=0)
    assert v.status == "unknown" and "out of memory" in v.reason
    msg[0] = "shape bug"
    with pytest.raises(RuntimeError, match="shape bug"):  # other errors are not hidden
        verify_query(net, q, timeout=30, input_split=False, interm_iters=0)


def test_root_alpha_crown_keeps_optimizing_a_disjunction_until_every_specification_is_proved():
    """At the root, the rows of a query are a *disjunction* of specifications (one row each here): one
    proved row must not stop the alpha optimization of the others (``owner``).  Before, the domain was
    called closed as soon as any row was proved and alpha-CROWN stopped after its first iterate, so the
    root of every robustness query whose CROWN bound already refuted one class got CROWN only."""
    import math
    from nncertify.relax.bab.beta_crown import BetaCrown
    torch.manual_seed(0)
    net = from_module(nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                                    nn.Linear(64, 4)), (16,))
    x = torch.linspace(-0.5, 0.5, 16)
    lo, hi = (x - 0.1)[None], (x + 0.1)[None]
    C = torch.eye(4)
    probe = BetaCrown(net, lo, hi, C, torch.zeros(4), torch.float32)
    S0 = torch.zeros(1, probe.N, dtype=torch.int8)
    B0 = torch.zeros(1, probe.m, probe.N)
    crown = probe.bound(S0, probe.default_alpha().unsqueeze(0), B0, 0, 0.1, 0.0)[0][0].double()
    d = crown + 100.0  # no row provable ...
    d[0] = crown[0] - 1.0  # ... except row 0, which CROWN already proves
    bc = BetaCrown(net, lo, hi, C, d, torch.float32)
    owner = torch.arange(4)
    best = bc.bound(S0, bc.default_alpha().unsqueeze(0), B0, 30, 0.1, 0.0, owner=owner)[0][0].double()
    assert torch.all(best >= crown - 1e-6)  # every iterate is a sound bound; the best is kept
    assert bool((best[1:] > crown[1:] + 1e-4).any()), (best, crown)  # the unproved rows were optimized
    # without owner the rows are one conjunction: one proved row closes the domain at the first iterate
    same = bc.bound(S0, bc.default_alpha().unsqueeze(0), B0, 30, 0.1, 0.0)[0][0].double()
    assert torch.allclose(same, crown, atol=1e-6) and math.isfinite(float(same[0]))
