"""The local-Lipschitz searches on the shared branch-and-bound loop (relax/bab/search.py): the loop is
the one that runs them, the deadline is kept inside one huge batch, and the anytime bound stays above
sampled true gradients whichever way the search stops."""

import time

import pytest
import torch
from patterns import mlp

from nncertify import models
from nncertify.relax.bab import search
from nncertify.relax.lipschitz import local_lipschitz

FAST_ATTACK = {"n_samples": 64, "n_starts": 4, "steps": 10}


def sampled_l1(module, lo, hi, n=3000, seed=3):
    g = torch.Generator().manual_seed(seed)
    X = (lo + (hi - lo) * torch.rand(n, lo.shape[1], generator=g, dtype=torch.float64))
    J = torch.func.vmap(torch.func.jacrev(lambda z: module(z[None])[0]))(X)
    return float(J.detach().abs().sum(-1).amax())


@pytest.mark.parametrize("bab", ["activation", "input"])
def test_both_searches_run_on_the_shared_loop(monkeypatch, bab):
    calls = []
    real = search.branch_and_bound

    def spy(*a, **k):
        calls.append(k.get("batch"))
        return real(*a, **k)
    monkeypatch.setattr(search, "branch_and_bound", spy)
    module = mlp([3, 6, 5, 2], seed=11)
    lo, hi = torch.full((1, 3), -0.4, dtype=torch.float64), torch.full((1, 3), 0.4, dtype=torch.float64)
    r = local_lipschitz(models.from_module(module), (lo, hi), bab_timeout=30, bab=bab, attack_options=FAST_ATTACK,
                        bab_options={"batch": 7})
    assert calls == [7]
    assert r.status in ("exact", "converged") and r.lower <= r.upper
    assert sampled_l1(module, lo, hi) <= r.upper


@pytest.mark.parametrize("bab", ["activation", "input"])
def test_deadline_is_kept_inside_one_huge_batch(bab):
    """batch = 10^6 domains: the whole search is one or two batches, so only the in-batch deadline
    checks (between chunks of ``chunk`` domains) can keep the budget."""
    module = mlp([8, 32, 32, 4], seed=7)
    net = models.from_module(module)
    lo, hi = torch.full((1, 8), -0.5, dtype=torch.float64), torch.full((1, 8), 0.5, dtype=torch.float64)
    budget = 1.0
    t = time.perf_counter()
    r = local_lipschitz(net, (lo, hi), bab_timeout=budget, bab=bab, attack_options=FAST_ATTACK,
                        bab_options={"batch": 10 ** 6, "chunk": 16})
    assert r.timings["bab"] <= budget * 1.1 + 0.6, r.timings
    assert time.perf_counter() - t <= budget + 20
    assert r.status == "timeout" and sampled_l1(module, lo, hi) <= r.upper
    ups = [h[1] for h in r.history]
    assert all(b <= a + 1e-12 for a, b in zip(ups, ups[1:]))
