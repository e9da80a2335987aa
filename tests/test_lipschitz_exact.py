"""Exact oracles and complete branch-and-bound for local Lipschitz constants of ReLU networks.

Independent truth: enumeration of every activation pattern of a tiny ReLU network with an LP
feasibility check of its closed region (written here, not taken from the package)."""

import itertools
import math
import time

import numpy as np
import pytest
import torch
from scipy.optimize import linprog
from torch import nn

from nncertify import models
from nncertify.relax.lipschitz import local_lipschitz
from nncertify.relax.lipschitz.lower_bounds.exact import exact_local_lipschitz

FAST_ATTACK = {"n_samples": 64, "n_starts": 4, "steps": 10}


def mlp(widths, seed):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(widths[:-2], widths[1:-1]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(widths[-2], widths[-1]))
    return nn.Sequential(*layers).double()


def enumerate_exact(module, lo, hi, c, q="1"):
    """max over closed activation regions meeting the box of ||c^T J||_q (brute force + LP feasibility)."""
    lins = [m for m in module if isinstance(m, nn.Linear)]
    Ws = [m.weight.detach().numpy() for m in lins]
    bs = [m.bias.detach().numpy() for m in lins]
    hidden = [W.shape[0] for W in Ws[:-1]]
    lo, hi = lo[0].numpy(), hi[0].numpy()
    best = -math.inf
    for pattern in itertools.product([0.0, 1.0], repeat=sum(hidden)):
        pat = np.array(pattern)
        A_ub, b_ub = [], []
        M, v = np.eye(lo.size), np.zeros(lo.size)
        off = 0
        for W, b, n in zip(Ws[:-1], bs[:-1], hidden):
            Az, cz = W @ M, W @ v + b
            d = pat[off:off + n]
            s = np.where(d > 0, 1.0, -1.0)
            A_ub.append(-s[:, None] * Az)  # s z >= 0
            b_ub.append(s * cz)
            M, v = d[:, None] * Az, d * cz
            off += n
        grad = c @ Ws[-1] @ M
        val = np.abs(grad).sum() if q == "1" else np.abs(grad).max()
        if val <= best:
            continue
        r = linprog(np.zeros(lo.size), A_ub=np.vstack(A_ub), b_ub=np.concatenate(b_ub),
                    bounds=list(zip(lo, hi)), method="highs")
        if r.status == 0:
            best = val
    return best


CASES = [([3, 5, 5, 2], 0, 0.4), ([4, 6, 4, 2], 1, 0.3), ([2, 6, 5, 3], 2, 0.5)]


@pytest.mark.parametrize("widths,seed,eps", CASES)
def test_milp_and_complete_bab_equal_enumeration(widths, seed, eps):
    module = mlp(widths, seed)
    net = models.from_module(module)
    x0 = torch.full((1, widths[0]), 0.2, dtype=torch.float64)
    lo, hi = x0 - eps, x0 + eps
    c = torch.zeros(widths[-1], dtype=torch.float64)
    c[0], c[-1] = 1.0, -1.0
    truth = enumerate_exact(module, lo, hi, c.numpy())
    ex = exact_local_lipschitz(net, (lo, hi), c=c, time_limit=30)
    assert ex.optimal and ex.value == pytest.approx(truth, rel=1e-6)
    plain = local_lipschitz(net, (lo, hi), c=c, attack_options=FAST_ATTACK)
    bab = local_lipschitz(net, (lo, hi), c=c, bab_timeout=30, attack_options=FAST_ATTACK)
    assert bab.exact and bab.status == "exact"
    assert bab.upper == pytest.approx(truth, rel=1e-6) and bab.upper >= truth
    assert bab.lower <= bab.upper <= plain.upper
    # l1 input norm (l_inf of the gradient)
    truth_inf = enumerate_exact(module, lo, hi, c.numpy(), q="inf")
    bab1 = local_lipschitz(net, (lo, hi), c=c, norm="1", bab_timeout=30, attack_options=FAST_ATTACK)
    assert bab1.exact and bab1.upper == pytest.approx(truth_inf, rel=1e-6) and bab1.upper >= truth_inf


def test_reference_16_16_16_10_class3_reaches_the_exact_constant():
    # reference §4: torch.manual_seed(0), 16->16->16->10, x0 = 0.5, eps = 0.1, box clipped to [-1, 2];
    # the published BaB stops at 0.7159 for class 3, the exact (MILP) constant is 0.5416.
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 10))
    net = models.from_module(module)
    x0 = torch.full((1, 16), 0.5)
    lo, hi = (x0 - 0.1).clamp(-1, 2), (x0 + 0.1).clamp(-1, 2)
    r = local_lipschitz(net, (lo, hi), c=torch.eye(10)[3], bab_timeout=60, attack_options=FAST_ATTACK)
    assert r.exact
    assert r.upper == pytest.approx(0.54156, abs=2e-5)
    assert r.lower == pytest.approx(r.upper, rel=1e-6)  # attained at an interior point (autograd)
    assert r.history[0][1] > 1.0 and r.history[-1][1] <= r.history[0][1]


def test_time_budget_is_honoured_and_anytime_bound_is_sound():
    module = mlp([8, 24, 24, 4], seed=7)
    net = models.from_module(module)
    x0 = torch.zeros((1, 8), dtype=torch.float64)
    lo, hi = x0 - 0.5, x0 + 0.5
    plain = local_lipschitz(net, (lo, hi), attack_options=FAST_ATTACK)
    t = time.perf_counter()
    r = local_lipschitz(net, (lo, hi), bab_timeout=0.5, attack_options=FAST_ATTACK, bab_options={"batch": 16})
    elapsed = time.perf_counter() - t
    assert r.status in ("timeout", "exact")
    assert r.lower <= r.upper <= plain.upper
    assert elapsed < 0.5 + plain.timings["total"] + 3.0
    ups = [h[1] for h in r.history]
    assert all(b <= a + 1e-12 for a, b in zip(ups, ups[1:]))  # anytime upper bound never increases


@pytest.mark.parametrize("opts", [{"lp_check": True, "lp_min_splits": 1}, {"rebound": False}, {"batch": 3},
                                  {"poly_iters": 0}, {"poly_iters": 2, "num_threads": None}, {"layer_bias": 0.0},
                                  {"fsb_k": 3}, {"abs_split": True}])
def test_bab_variants_stay_complete(opts):
    module = mlp([3, 6, 5, 2], 11)
    net = models.from_module(module)
    lo, hi = torch.full((1, 3), -0.4, dtype=torch.float64), torch.full((1, 3), 0.4, dtype=torch.float64)
    c = torch.tensor([1.0, -1.0], dtype=torch.float64)
    truth = enumerate_exact(module, lo, hi, c.numpy())
    r = local_lipschitz(net, (lo, hi), c=c, bab_timeout=30, bab_options=opts, attack_options=FAST_ATTACK)
    assert r.exact and r.upper == pytest.approx(truth, rel=1e-6) and r.upper >= truth


def test_bab_rejects_unsupported_settings():
    from nncertify.models.errors import UnsupportedOperationError
    torch.manual_seed(0)
    net = models.from_module(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double())
    lo, hi = torch.zeros((1, 3), dtype=torch.float64), torch.ones((1, 3), dtype=torch.float64)
    with pytest.raises(UnsupportedOperationError):
        local_lipschitz(net, (lo, hi), bab_timeout=1.0, attack=False)
    relu = models.from_module(mlp([3, 4, 2], 0))
    with pytest.raises(UnsupportedOperationError):
        local_lipschitz(relu, (lo, hi), norm="2", bab_timeout=1.0, attack=False)


def test_domain_memory_cap_stops_soundly_and_budget_is_tight():
    """Issue 9 resource limits: a cap on pending domains stops BaB with a sound anytime bound, and the
    branch-and-bound phase keeps its time budget to within a few percent."""
    module = mlp([8, 24, 24, 4], seed=7)
    net = models.from_module(module)
    x0 = torch.zeros((1, 8), dtype=torch.float64)
    lo, hi = x0 - 0.5, x0 + 0.5
    plain = local_lipschitz(net, (lo, hi), attack_options=FAST_ATTACK)
    capped = local_lipschitz(net, (lo, hi), bab_timeout=30, attack_options=FAST_ATTACK,
                             bab_options={"max_pool": 40, "batch": 16})
    assert capped.status == "domain_limit" and not capped.exact
    # sound: never below true gradients at sampled points, never above the plain bound
    xs = (lo + (hi - lo) * torch.rand(4000, 8, dtype=torch.float64)).requires_grad_(True)
    J = torch.func.vmap(torch.func.jacrev(lambda z: module(z[None])[0]))(xs.detach())
    sampled = float(J.abs().sum(-1).amax())  # l_inf input: max over outputs of ||grad f_i||_1
    assert sampled <= capped.upper <= plain.upper
    budget = 1.5
    r = local_lipschitz(net, (lo, hi), bab_timeout=budget, attack_options=FAST_ATTACK)
    if r.status == "timeout":
        assert r.timings["bab"] <= budget * 1.05 + 0.25, r.timings


def test_bab_progress_log_and_thread_setting_are_restored(capsys):
    module = mlp([3, 6, 5, 2], 11)
    net = models.from_module(module)
    lo, hi = torch.full((1, 3), -0.4, dtype=torch.float64), torch.full((1, 3), 0.4, dtype=torch.float64)
    before = torch.get_num_threads()
    r = local_lipschitz(net, (lo, hi), bab_timeout=30, attack_options=FAST_ATTACK,
                        bab_options={"log_every": 1e-9, "num_threads": 1, "batch": 2})
    assert torch.get_num_threads() == before
    assert r.exact and "[bab] t=" in capsys.readouterr().err
