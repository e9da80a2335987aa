"""Every branch-and-bound time budget holds (issue #20): a search ends within its budget plus a small
stated slack, measured through the public API, on searches whose steps are expensive (so that a
search which only looked at the clock between batches overran by a whole batch).

Before (2-core machine, load ~13): the input-space Lipschitz BaB overran 2-5 s budgets by 7-9 %
(``bench/hostile_inputs.py``) and a 1 s budget by 67 % on a CNN with an l2 ball (one box costs
~0.3-0.6 s: the batch after the root was bounded whole); ``verify_query`` overran by 6-8 %.

Slack: ``SLACK_REL`` of the budget plus ``SLACK_ABS`` seconds -- what one mispredicted step may
cost on a loaded machine.  One torch thread: on the shared 2-core machine at load ~14, two threads made
the CNN's root bound 7x slower (3.7 s instead of 0.5 s), longer than the budgets tested.  The root bound of a Lipschitz search is the certificate and always runs
(it is part of ``timings["bab"]``; here it takes well under the budget).
"""

import time

import pytest
import torch
from torch import nn

from nncertify.models import from_module
from nncertify.models.layers import MaxMin
from nncertify.relax import Ball
from nncertify.relax.lipschitz import local_lipschitz
from nncertify.relax.spec import robustness_query, verify_query

SLACK_REL, SLACK_ABS = 0.05, 0.25
FAST_ATTACK = {"steps": 20, "n_samples": 64, "n_starts": 4}


def _within(elapsed: float, budget: float) -> bool:
    return elapsed <= budget * (1 + SLACK_REL) + SLACK_ABS


@pytest.fixture(scope="module")
def cnn_ball():
    """digits_relu_cnn (conv before every ReLU) and an l2 ball of radius 0.05 around a test digit."""
    from nncertify.models.zoo import digits, load_zoo
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    net = load_zoo("digits_relu_cnn").network
    X, _ = digits("test")
    ball = Ball(torch.as_tensor(X[:1]).double(), 0.05, 2)
    # warm-up: a first call pays for lazy imports and first-use set-up inside its (always run) root bound
    local_lipschitz(net, ball, norm="2", bab="input", bab_timeout=0.1, attack_options=FAST_ATTACK)
    torch.set_num_threads(threads)
    return net, ball


def _maxmin():
    torch.manual_seed(1)
    net = from_module(nn.Sequential(nn.Linear(8, 32), MaxMin(), nn.Linear(32, 32), MaxMin(),
                                    nn.Linear(32, 2)).double().eval(), (8,))
    return net, (torch.full((1, 8), 0.25, dtype=torch.float64), torch.full((1, 8), 1.75, dtype=torch.float64))


@pytest.mark.parametrize("budget", [1.0, 2.0])
def test_input_bab_budget_holds_when_a_box_is_expensive(cnn_ball, budget, single_thread):
    net, ball = cnn_ball
    r = local_lipschitz(net, ball, norm="2", bab="input", bab_timeout=budget, attack_options=FAST_ATTACK)
    assert _within(r.timings["bab"], budget), (r.timings, r.stats)
    assert r.status == "timeout" and 0 < r.lower <= r.upper


def test_input_bab_budget_holds_on_cheap_boxes(single_thread):
    net, box = _maxmin()
    r = local_lipschitz(net, box, bab="input", bab_timeout=1.5, attack_options=FAST_ATTACK)
    assert _within(r.timings["bab"], 1.5), r.timings
    assert r.status == "timeout" and r.stats["batches"] >= 3 and 0 < r.lower <= r.upper


def test_time_limit_holds_for_the_whole_input_bab_run(cnn_ball, single_thread):
    """``time_limit``: attack, root bound and search together (the wall clock of the call)."""
    net, ball = cnn_ball
    t = time.perf_counter()
    r = local_lipschitz(net, ball, norm="2", bab="input", bab_timeout=600, time_limit=2.5)
    wall = time.perf_counter() - t
    assert _within(wall, 2.5), (wall, r.timings)
    assert 0 < r.lower <= r.upper


def _hard_query():
    """A random 16-256-256-10 ReLU net and an eps (0.0206) at which alpha-CROWN fails, PGD finds no
    counterexample and neither search finishes within the 3 s budget on an idle 2-core machine
    (beta-CROWN proves it in ~5 s, input splitting takes > 15 s; 0.0207 is falsified by PGD)."""
    torch.manual_seed(0)
    net = from_module(nn.Sequential(nn.Linear(16, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                                    nn.Linear(256, 10)), (16,))
    x = torch.linspace(-0.5, 0.5, 16)
    return net, robustness_query(x, int(net(x[None]).argmax()), 0.0206, 10)


@pytest.mark.parametrize("input_split,batch", [(True, 4096), (False, 1024)])
def test_verify_query_budget_holds_with_large_batches(input_split, batch, single_thread):
    """Input splitting and beta-CROWN, with batches far larger than fit in the budget."""
    net, q = _hard_query()
    t = time.perf_counter()
    v = verify_query(net, q, timeout=3.0, input_split=input_split, batch=batch)
    wall = time.perf_counter() - t
    # a faster engine may prove it (unsat is the true answer); it must never be late or wrong
    assert v.status in ("timeout", "unsat"), (v.status, v.reason)
    assert _within(wall, 3.0), wall


def test_verify_query_budget_holds_inside_the_root_alpha_crown(single_thread):
    """The root alpha-CROWN optimization (before any branching) stops at the deadline with its best
    certified iterate: 100,000 iterations on the hard query take minutes, the budget is 2 s.  (Before,
    the root loop ran all its iterations and only then looked at the clock.)"""
    net, q = _hard_query()
    t = time.perf_counter()
    v = verify_query(net, q, timeout=2.0, input_split=False, alpha_iters=100_000, interm_iters=0, bab=False)
    wall = time.perf_counter() - t
    assert v.status in ("timeout", "unknown"), (v.status, v.reason)
    assert _within(wall, 2.0), wall
