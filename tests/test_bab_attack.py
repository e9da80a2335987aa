"""relax/bab/attack.py: the per-specification counterexample search and its float64 judge.

Truths are independent of the attack: closed forms on hand-built networks, the exact MILP oracle
(tests/milp_oracle.py, scipy HiGHS) and a NumPy float64 forward pass."""

import math
import time

import numpy as np
import pytest
import torch
from torch import nn

import nncertify.relax.bab.complete as complete
from nncertify.models import from_module
from nncertify.relax.bab.attack import check_counterexample, pgd_search
from nncertify.relax.spec import Query, Specification, SpecBatch, verify_query

from milp_oracle import spec_min


def _corner_net(n=10, dtype=torch.float32):
    """``s = sum(x)`` on ``[0, 1]^n``; outputs ``y_A = 0.5 + 0.01 s`` and ``y_B = 1 - 0.01 s - 20 relu(s - (n - 0.1))``.

    Clause A (``y_A <= 0``) never holds (``y_A >= 0.5``); clause B (``y_B <= 0``) holds exactly where
    ``s >= (20 (n - 0.1) + 1) / 20.01`` (``n = 10``: ``s >= 9.945``), a corner of volume ~1e-20.  Everywhere
    else ``y_A <= 0.6 < 0.9 <= y_B``, so the minimum over the clauses is clause A, whose gradient pushes
    every point to the origin: an attack on ``min over clauses`` cannot find B's corner."""
    lin1 = nn.Linear(n, 2)
    lin2 = nn.Linear(2, 2)
    with torch.no_grad():
        lin1.weight.copy_(torch.ones(2, n))
        lin1.bias.copy_(torch.tensor([-(n - 0.1), 0.0]))
        lin2.weight.copy_(torch.tensor([[0.0, 0.01], [-20.0, -0.01]]))
        lin2.bias.copy_(torch.tensor([0.5, 1.0]))
    net = from_module(nn.Sequential(lin1, nn.ReLU(), lin2), (n,))
    return net.to(dtype=dtype)


def _corner_query(n=10):
    lo, hi = torch.zeros(n, dtype=torch.float64), torch.ones(n, dtype=torch.float64)
    e = torch.eye(2, dtype=torch.float64)
    z = torch.zeros(1, dtype=torch.float64)
    return Query([Specification(lo, hi, e[:1], z), Specification(lo, hi, e[1:], z)])


def _y64(x):  # the corner net's outputs in closed form, float64
    s = x.double().sum(-1)
    return torch.stack([0.5 + 0.01 * s, 1 - 0.01 * s - 20 * torch.relu(s - 9.9)], -1)


def test_corner_counterexample_found_by_the_per_clause_attack():
    net = _corner_net()
    q = _corner_query()
    batch = SpecBatch.build(q.specs)
    # independent truth: clause A holds nowhere, clause B only in the corner (MILP); uniform sampling misses it
    assert spec_min(net, q.specs[0].lower, q.specs[0].upper, q.specs[0].C, q.specs[0].d) == pytest.approx(0.5, abs=1e-4)
    assert spec_min(net, q.specs[1].lower, q.specs[1].upper, q.specs[1].C, q.specs[1].d) == pytest.approx(-1.1, abs=1e-4)
    xs = torch.rand(20000, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert bool((_y64(xs) > 0).all())
    # the descent direction of the former objective (min over clauses) at the centre points away from the corner
    xc = torch.full((1, 10), 0.5, requires_grad=True)
    yc = net.to_module(requires_grad=False)(xc)
    g, = torch.autograd.grad(yc.amin(1).sum(), xc)
    assert bool((g > 0).all())  # descending it lowers every coordinate: to the origin, clause A's minimum
    for seed in range(3):
        cand = pgd_search(net, batch, steps=30, restarts=4, seed=seed)
        hit, x, y = check_counterexample(net.to(dtype=torch.float64), batch, cand)
        assert hit is not None and hit[0] == 1, seed
        assert float(_y64(x)[1]) <= 0 and bool(((x >= 0) & (x <= 1)).all())
        assert float(y[1]) <= 0
    v = verify_query(net, q, timeout=30)
    assert v.status == "sat" and v.spec_index == 1 and v.reason == "pgd"
    assert float(_y64(v.counterexample)[1]) <= 0


def _mlp(seed, widths, dtype=torch.float32):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return from_module(nn.Sequential(*layers[:-1]), (widths[0],)).to(dtype=dtype)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_property_that_holds_is_never_reported_sat(seed):
    """Thresholds a hair below the exact minimum (MILP): the property holds, and float32 rounding of the
    attack's own evaluation may say otherwise; the float64 judge must refuse every candidate."""
    net = _mlp(seed, (3, 12, 12, 4))
    lo = torch.full((3,), -1.0, dtype=torch.float64)
    hi = torch.full((3,), 1.0, dtype=torch.float64)
    specs = []
    for k in range(4):
        C = torch.zeros(1, 4, dtype=torch.float64)
        C[0, k] = 1.0
        t = spec_min(net, lo, hi, C, torch.zeros(1, dtype=torch.float64))  # min of y_k over the box
        specs.append(Specification(lo, hi, C, torch.tensor([t - 1e-7 * max(1.0, abs(t))], dtype=torch.float64)))
    q = Query(specs)
    batch = SpecBatch.build(specs)
    net64 = net.to(dtype=torch.float64)
    for s in range(3):
        cand = pgd_search(net, batch, steps=60, restarts=40, seed=s)
        assert cand.shape[:2] == (1, 4 * (10 + 1)) and cand.dtype == torch.float64
        assert check_counterexample(net64, batch, cand)[0] is None
    assert verify_query(net, q, timeout=30).status != "sat"


def test_the_judge_agrees_with_an_independent_float64_forward_pass():
    torch.manual_seed(3)
    seq = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    net = from_module(seq, (4,))
    W1, b1 = (p.detach().double().numpy() for p in seq[0].parameters())
    W2, b2 = (p.detach().double().numpy() for p in seq[2].parameters())
    lo, hi = -torch.ones(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    C = torch.tensor([[1.0, -1.0, 0.0]], dtype=torch.float64)
    pts = torch.rand(1, 50, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 - 1
    y = np.maximum(pts[0].numpy() @ W1.T + b1, 0) @ W2.T + b2
    m = y[:, 0] - y[:, 1]  # C y per point, NumPy float64
    order = np.argsort(m)
    assert m[order[1]] - m[order[0]] > 1e-6
    net64 = net.to(dtype=torch.float64)
    for d, expect in ((m[order[0]] - 1e-12, None), (m[order[0]] + 1e-12, int(order[0])),
                      (m[order[1]] + 1e-12, "any")):
        b = SpecBatch.build([Specification(lo, hi, C, torch.tensor([d], dtype=torch.float64))])
        hit, x, yy = check_counterexample(net64, b, pts)
        if expect is None:
            assert hit is None
        else:
            assert hit is not None and m[hit[2]] <= d
            assert torch.equal(x, pts[0, hit[2]])
            if expect != "any":
                assert hit[2] == expect
    # a point outside the box is clamped into it before judging: its outside value never counts
    far = torch.full((1, 1, 4), 5.0, dtype=torch.float64)
    m_far = float(((np.maximum(far[0].numpy() @ W1.T + b1, 0) @ W2.T + b2) @ np.array([1.0, -1.0, 0.0]))[0])
    m_in = float(((np.maximum(np.ones((1, 4)) @ W1.T + b1, 0) @ W2.T + b2) @ np.array([1.0, -1.0, 0.0]))[0])
    assert m_far != m_in
    d = (m_far + m_in) / 2  # holds at the outside point only if m_far < m_in
    b = SpecBatch.build([Specification(lo, hi, C, torch.tensor([d], dtype=torch.float64))])
    hit = check_counterexample(net64, b, far)[0]
    assert (hit is not None) == (m_in <= d)


def test_every_sat_passes_the_float64_judge(monkeypatch):
    net = _corner_net()
    q = _corner_query()
    seen = []
    real = complete.check_counterexample

    def spy(*a, **k):
        r = real(*a, **k)
        seen.append(r)
        return r

    monkeypatch.setattr(complete, "check_counterexample", spy)
    v = verify_query(net, q, timeout=30)
    assert v.status == "sat"
    assert any(r[0] is not None and torch.equal(r[1], v.counterexample) for r in seen)

    # an attack that lies (points outside the box, where clause B would hold) never makes a sat
    def liar(net_, batch, **k):
        return torch.full((batch.lower.shape[0], 3, 10), 2.0, dtype=torch.float64)

    monkeypatch.setattr(complete, "pgd_search", liar)
    q2 = Query([Specification(q.specs[1].lower, q.specs[1].upper * 0.9, q.specs[1].C, q.specs[1].d)])  # s <= 9
    assert float(_y64(torch.full((10,), 2.0))[1]) <= 0  # the lie satisfies the clause outside the box
    v2 = verify_query(net, q2, timeout=30)
    assert v2.status == "unsat"


def test_the_attack_respects_its_deadline():
    net = _mlp(4, (64, 256, 256, 10))
    lo = torch.zeros(64, dtype=torch.float64)
    C = torch.zeros(9, 10, dtype=torch.float64)
    C[:, 0] = -1
    C[torch.arange(9), torch.arange(1, 10)] = 1
    specs = [Specification(lo, lo + 1, C[i:i + 1], torch.full((1,), -1e6, dtype=torch.float64)) for i in range(9)]
    batch = SpecBatch.build(specs)  # never satisfiable: the attack runs until its deadline
    t0 = time.monotonic()
    cand = pgd_search(net, batch, steps=10 ** 7, restarts=2000, seed=0, deadline=t0 + 0.5)
    assert time.monotonic() - t0 < 4.0  # one step of 2000+ points is far below a second
    assert cand.shape[1] == 9 * (math.ceil(2000 / 9) + 1)


def test_conv_net_two_boxes_odd_shapes_and_float64():
    """Conv layers before every activation (in-place ReLUs), a (1, 5, 3) input, two groups (different
    boxes) with 1 and 3 specifications, float32 and float64 working dtypes, given starts: every candidate
    lies in its box, and the attack finds the counterexamples the MILP says exist."""
    torch.manual_seed(5)
    mod = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(3, 2, (2, 3)),
                        nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(8, 3))
    net = from_module(mod, (1, 5, 3))
    x0 = torch.rand(1, 5, 3, dtype=torch.float64)
    y0 = net.to(dtype=torch.float64)(x0[None])[0].flatten()
    lab = int(y0.argmax())
    specs, truths = [], []
    for g, eps in enumerate((0.05, 0.4)):
        lo, hi = x0 - eps, x0 + eps
        others = [k for k in range(3) if k != lab] if g else [next(k for k in range(3) if k != lab)]
        for k in others:
            C = torch.zeros(1, 3, dtype=torch.float64)
            C[0, lab], C[0, k] = 1.0, -1.0  # y_lab - y_k <= 0: class k at least as large
            specs.append(Specification(lo, hi, C, torch.zeros(1, dtype=torch.float64)))
            truths.append(spec_min(net, lo, hi, C, torch.zeros(1, dtype=torch.float64)))
    # the big box also gets the (cheap) same C shifted so that it surely holds a counterexample
    C = specs[-1].C
    specs.append(Specification(specs[-1].lower, specs[-1].upper, C, torch.tensor([truths[-1] + 0.05], dtype=torch.float64)))
    truths.append(-0.05)
    batch = SpecBatch.build(specs)
    assert batch.lower.shape[0] == 2
    for dt in (torch.float32, torch.float64):
        starts = x0.expand(2, 2, 1, 5, 3)
        cand = pgd_search(net.to(dtype=dt), batch, steps=40, restarts=30, seed=0, starts=starts)
        K = batch.owner.shape[1]
        assert cand.shape == (2, K * (math.ceil(30 / K) + 1) + 2 * K, 1, 5, 3)
        lo, hi = batch.lower.unsqueeze(1), batch.upper.unsqueeze(1)
        assert bool(((cand >= lo - 1e-7) & (cand <= hi + 1e-7)).all())
        hit, x, y = check_counterexample(net.to(dtype=torch.float64), batch, cand)
        if min(truths) < -1e-3:
            assert hit is not None
        if hit is not None:
            i = hit[0]
            assert truths[i] <= 1e-9
            s = specs[i]
            assert bool(((x >= s.lower) & (x <= s.upper)).all())
            assert bool((s.C @ net.to(dtype=torch.float64)(x[None])[0].flatten() <= s.d).all())


def test_attack_rounds_during_relu_bab_take_a_bounded_share(monkeypatch):
    """Rounds of the attack between branch-and-bound batches: a round that took t s is followed by at least
    9 t s of search (attack_every=0 asks for a round after every batch).  The property is violated at the
    box centre, so no proof ends the search; the stand-in attack is slow and returns no candidate."""
    net = _mlp(7, (6, 48, 48, 48, 2))
    lo, hi = torch.full((6,), -1.0, dtype=torch.float64), torch.full((6,), 1.0, dtype=torch.float64)
    C = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    yc = net.to(dtype=torch.float64)(torch.zeros(1, 6, dtype=torch.float64))[0]
    q = Query([Specification(lo, hi, C, (C @ yc).reshape(1))])
    calls = []

    def slow(net_, batch, **k):
        t0 = time.monotonic()
        time.sleep(0.15)
        calls.append((t0, time.monotonic()))
        return batch.lower.new_zeros((batch.lower.shape[0], 0, *batch.lower.shape[1:]))

    monkeypatch.setattr(complete, "pgd_search", slow)
    v = verify_query(net, q, timeout=4, input_split=False, attack_every=0.0)
    assert v.status == "timeout"
    rounds = calls[1:]  # the first call is the attack before the bounds
    assert len(rounds) >= 1
    for (s0, e0), (s1, _) in zip(rounds, rounds[1:]):
        assert s1 - e0 >= 9 * (e0 - s0) - 1e-3
