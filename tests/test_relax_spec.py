"""relax/spec.py: the Query/Specification/Verdict interface and verify_query against an exact MILP oracle."""

import math

import pytest
import torch
from torch import nn

from nncertify.models import InvalidArgumentError, ShapeMismatchError, from_module
from nncertify.relax.spec import Query, Specification, Verdict, robustness_query, verify_query

from milp_oracle import spec_min


def _mlp(seed, widths=(3, 12, 12, 3), act=nn.ReLU):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), act()]
    return from_module(nn.Sequential(*layers[:-1]), (widths[0],))


def _check_verdict(net, q, v):
    assert v.status in ("unsat", "sat", "unknown", "timeout")
    truths = [spec_min(net, s.lower, s.upper, s.C, s.d) for s in q.specs]
    if v.status == "sat":
        s = q.specs[v.spec_index]
        x = v.counterexample
        assert x.dtype == torch.float64 and ((x >= s.lower) & (x <= s.upper)).all()
        y = net.to(dtype=torch.float64)(x[None])[0]
        assert torch.equal(y, v.output)
        assert (s.C @ y <= s.d).all()
        assert truths[v.spec_index] <= 1e-9
    if v.status == "unsat":
        assert all(t > 0 for t in truths), truths
    return truths


def test_verify_query_matches_milp_on_robustness():
    net = _mlp(0)
    x = torch.tensor([0.3, -0.2, 0.5])
    y = int(net(x[None]).argmax())
    seen = set()
    for eps in (0.01, 0.3, 1.0, 2.0):
        q = robustness_query(x, y, eps, 3)
        v = verify_query(net, q, timeout=20)
        truths = _check_verdict(net, q, v)
        seen.add(v.status)
        if min(truths) > 1e-3 and eps <= 0.01:
            assert v.status == "unsat"
    assert {"sat", "unsat"} <= seen


def test_robustness_query_rows_are_the_unsafe_set():
    q = robustness_query(torch.zeros(2), 1, 0.5, 3, clip=(-0.2, 1.0))
    assert len(q.specs) == 2
    assert q.specs[0].C.tolist() == [[-1.0, 1.0, 0.0]] and q.specs[1].C.tolist() == [[0.0, 1.0, -1.0]]
    assert q.specs[0].lower.tolist() == [-0.2, -0.2] and q.specs[0].upper.tolist() == [0.5, 0.5]


def test_disjunction_with_different_boxes_and_multirow():
    net = _mlp(1, act=nn.LeakyReLU)
    n = 3
    C = torch.tensor([[1.0, -1.0, 0.0], [1.0, 0.0, -1.0]], dtype=torch.float64)
    specs = [Specification(torch.full((n,), a, dtype=torch.float64), torch.full((n,), a + 0.2, dtype=torch.float64),
                           C, torch.zeros(2, dtype=torch.float64)) for a in (-1.0, 0.0, 0.7)]
    v = verify_query(net, Query(specs, "t"), timeout=20)
    _check_verdict(net, Query(specs), v)


def test_bad_queries_name_the_field():
    net = _mlp(0)
    s = Specification(torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64),
                      torch.zeros(1, 4, dtype=torch.float64), torch.zeros(1, dtype=torch.float64))
    with pytest.raises(ShapeMismatchError, match=r"f.vnnlib: specification 0.C"):
        verify_query(net, Query([s], "f.vnnlib"), timeout=1)
    s2 = Specification(torch.ones(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64),
                       torch.zeros(1, 3, dtype=torch.float64), torch.zeros(1, dtype=torch.float64))
    with pytest.raises(InvalidArgumentError, match="empty input box"):
        verify_query(net, Query([s2]), timeout=1)
    with pytest.raises(InvalidArgumentError, match="non-empty"):
        verify_query(net, Query([]), timeout=1)
    with pytest.raises(InvalidArgumentError, match="timeout"):
        verify_query(net, Query([s2]), timeout=0)
