"""relax.verify_robustness: verified samples survive an independent attack; falsified samples carry a
counterexample that is inside the set and misclassified in float64 (re-checked here)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nncertify import models
from nncertify.models.errors import InvalidArgumentError, ShapeMismatchError
from nncertify.relax import margin_spec, verify_robustness
from nncertify.relax.verify import _project_l1


pytestmark = pytest.mark.usefixtures("single_thread")  # many small tensor ops: see tests/conftest.py



def _trained_blobs(seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]])
    y = torch.randint(0, 3, (300,), generator=g)
    x = centers[y] + 0.6 * torch.randn(300, 2, generator=g)
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.Adam(m.parameters(), lr=0.03)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
    return models.from_module(m, (2,)), x[:40], y[:40]


NET, X, Y = _trained_blobs()


def _independent_counterexample(net64, x, y, eps, p, n=4000, seed=1):
    """Dense random search in the ball (float64): True if some point is misclassified."""
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(n, x.numel(), generator=g, dtype=torch.float64)
    if p == math.inf:
        d = (torch.rand(n, x.numel(), generator=g, dtype=torch.float64) * 2 - 1) * eps
        d[: n // 4] = d[: n // 4].sign() * eps
    elif p == 2:
        d = d / d.norm(dim=1, keepdim=True) * eps * torch.rand(n, 1, generator=g, dtype=torch.float64) ** 0.5
    else:
        d = d / d.abs().sum(1, keepdim=True) * eps
    pts = x.double().reshape(1, -1) + d
    logits = net64(pts.reshape(n, *x.shape))
    return bool((logits.argmax(1) != y).any())


@pytest.mark.parametrize("norm,eps", [("inf", 0.15), ("inf", 0.6), (2, 0.5), (1, 0.8)])
def test_statuses_are_consistent_with_independent_checks(norm, eps):
    r = verify_robustness(NET, X, Y, eps, norm=norm, method="crown", pgd_steps=30, pgd_restarts=2)
    p = {"inf": math.inf}.get(norm, float(norm))
    net64 = NET.to(dtype=torch.float64)
    assert set(r.status) <= {"verified", "falsified", "unknown"}
    assert r.margin_lower.shape == (40, 2)
    for b, s in enumerate(r.status):
        if s == "verified":
            assert (r.margin_lower[b] > 0).all()
            assert not _independent_counterexample(net64, X[b], int(Y[b]), eps, p), b
        elif s == "falsified":
            xc = r.counterexamples[b]
            assert xc.dtype == torch.float64
            d = (xc - X[b].double()).flatten()
            n = d.abs().max() if p == math.inf else d.norm(p=p)
            assert n <= eps
            logits = net64(xc.unsqueeze(0))[0]
            others = torch.cat([logits[: int(Y[b])], logits[int(Y[b]) + 1:]])
            assert others.max() > logits[int(Y[b])]
            # the certified lower bound of the worst margin is below the counterexample's margin
            assert r.margin_lower[b].min().item() <= r.counterexample_margins[b] + 1e-6
    c = r.counts()
    assert sum(c.values()) == 40
    if eps == 0.15 and norm == "inf":
        assert c["verified"] >= 25  # well-separated blobs: most points are robust at a small radius
    if eps == 0.6 and norm == "inf":
        assert c["falsified"] >= 1


def test_tiny_radius_verifies_every_correct_point_and_falsifies_wrong_ones():
    logits = NET(X)
    labels = Y.clone()
    wrong = logits.argmin(1)  # force some misclassified labels
    labels[:5] = wrong[:5]
    r = verify_robustness(NET, X, labels, 1e-4, pgd_steps=0)
    for b in range(40):
        if logits[b].argmax() == labels[b]:
            assert r.status[b] == "verified"
        else:
            assert r.status[b] == "falsified" and torch.equal(r.counterexamples[b], X[b].double())


def test_huge_radius_is_never_verified():
    r = verify_robustness(NET, X[:10], Y[:10], 5.0, pgd_steps=20)
    assert r.counts()["verified"] == 0 and r.counts()["falsified"] >= 8


def test_alpha_crown_and_clip():
    lo, hi = X.amin(0), X.amax(0)  # a per-coordinate data domain that the extreme points touch
    r_c = verify_robustness(NET, X, Y, 0.3, method="crown", clip=(lo, hi), pgd_steps=10)
    r_a = verify_robustness(NET, X, Y, 0.3, method="alpha-crown", clip=(lo, hi), pgd_steps=10, alpha_iters=20)
    assert (r_a.margin_lower >= r_c.margin_lower - 1e-6).all()
    assert r_a.counts()["verified"] >= r_c.counts()["verified"]
    for b, s in r_a.counterexamples.items():
        assert ((s >= lo.double()) & (s <= hi.double())).all()


def test_margin_spec_rows():
    C, others = margin_spec(torch.tensor([0, 2]), 3)
    assert torch.equal(C[0], torch.tensor([[1.0, -1.0, 0.0], [1.0, 0.0, -1.0]]))
    assert torch.equal(C[1], torch.tensor([[-1.0, 0.0, 1.0], [0.0, -1.0, 1.0]]))
    assert others.tolist() == [[1, 2], [0, 1]]


def test_l1_projection_is_the_nearest_point_of_the_ball():
    g = torch.Generator().manual_seed(0)
    d = torch.randn(20, 6, generator=g, dtype=torch.float64) * 2
    eps = torch.full((20,), 1.5, dtype=torch.float64)
    pr = _project_l1(d, eps)
    assert (pr.abs().sum(1) <= 1.5 + 1e-12).all()
    inside = d.abs().sum(1) <= 1.5
    assert torch.equal(pr[inside], d[inside])
    # no sampled point of the ball is closer to d than the projection
    s = torch.randn(20, 5000, 6, generator=g, dtype=torch.float64)
    s = s / s.abs().sum(-1, keepdim=True) * 1.5 * torch.rand(20, 5000, 1, generator=g, dtype=torch.float64)
    assert ((s - d.unsqueeze(1)).norm(dim=-1).min(1).values >= (pr - d).norm(dim=1) - 1e-12).all()


def test_bad_arguments():
    with pytest.raises(InvalidArgumentError):
        verify_robustness(NET, X, Y, -0.1)
    with pytest.raises(InvalidArgumentError):
        verify_robustness(NET, X, torch.full((40,), 7), 0.1)
    with pytest.raises(ShapeMismatchError):
        verify_robustness(NET, torch.zeros(3, 5), Y[:3], 0.1)
    with pytest.raises(InvalidArgumentError):
        verify_robustness(NET, X, Y, 0.1, norm="3")
    with pytest.raises(InvalidArgumentError):
        verify_robustness(NET, X, Y, 0.1, clip=(0.0, 1.0))  # x outside the domain
