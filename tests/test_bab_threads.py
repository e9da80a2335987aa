"""relax/bab/threads.py: the intra-op thread count chosen from measured throughput, and its use in the
Lipschitz branch-and-bound (``bab_options["num_threads"]``, default "auto")."""

import time

import pytest
import torch
from torch import nn

from nncertify import models
from nncertify.models.errors import InvalidArgumentError
from nncertify.relax.bab.threads import ThreadTuner
from nncertify.relax.lipschitz import local_lipschitz


def test_tuner_compares_paired_batches_and_follows_a_change_of_load(two_threads):
    tu = ThreadTuner(2, probe_every=3600.0)
    assert tu.options == [1, 2]
    assert tu.choose() == 1 and torch.get_num_threads() == 1 and not tu.probing  # nothing measured: 1
    tu.record(1, 10, 1.0)  # 0.1 s per unit
    assert tu.choose() == 2 and tu.probing and tu.cautious and torch.get_num_threads() == 2  # unmeasured: a probe
    tu.record(2, 10, 0.4)  # 0.04 s per unit against 0.1 just before: 2 threads become the choice
    assert tu.best() == 2 and tu.summary()["other_slower_by"] == pytest.approx(2.5)
    assert tu.choose() == 2 and not tu.probing  # no probe before probe_every has passed
    tu.record(2, 10, 5.0)  # 2 threads got slow (another process took a core) ...
    tu.probe_every, tu._probe_cost = 0.0, 0.0
    assert tu.choose() == 1 and tu.probing and tu.cautious  # ... the next probe of 1 (was 2.5x slower: small)
    tu.record(1, 10, 1.0)  # 0.1 against 0.5 just before: log-ratio average 0.5 log 2.5 + 0.5 log 0.2 < 0
    assert tu.best() == 1 and tu.choose() == 1 and not tu.probing  # (next probe after 9 x its 1.0 s)


def test_rates_measured_at_different_times_are_not_compared(two_threads):
    """The cost per unit grows during a search; only a probe and the batch just before it are compared."""
    tu = ThreadTuner(2, probe_every=3600.0)
    tu.choose()
    tu.record(1, 10, 1.0)
    tu.choose()
    tu.record(2, 10, 0.6)  # 2 threads 1.67x faster
    for cost in (2.0, 4.0, 8.0):  # the domains get dearer; no probe: the choice stays
        assert tu.choose() == 2
        tu.record(2, 10, cost)
    tu.probe_every, tu._probe_cost = 0.0, 0.0
    assert tu.choose() == 1 and tu.probing and not tu.cautious
    tu.record(1, 10, 13.0)  # 1.3 s per unit: cheaper than 2's first rate, dearer than its last (0.8): slower
    assert tu.best() == 2


def test_probes_take_a_small_share_of_the_time(two_threads):
    tu = ThreadTuner(2, probe_every=0.05)
    tu.choose()
    tu.record(1, 1, 1.0)
    assert tu.choose() == 2 and tu.probing
    tu.record(2, 1, 1.5)  # slower; the probe took 1.5 s
    time.sleep(0.06)  # probe_every has passed, but not 9 x 1.5 s
    assert tu.choose() == 1 and not tu.probing
    tu._probe_cost = 0.001
    time.sleep(0.06)
    assert tu.choose() == 2 and tu.probing and not tu.cautious


def test_single_thread_machine_never_switches():
    tu = ThreadTuner(1)
    assert tu.options == [1]
    for _ in range(3):
        assert tu.choose() == 1 and not tu.probing
        tu.record(1, 5, 0.1)
    assert tu.switches == 0


def _net():
    torch.manual_seed(0)
    return models.from_module(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(),
                                            nn.Linear(8, 3)).double(), (4,))


def test_bab_auto_threads_restores_the_callers_count_and_reports(two_threads):
    box = (torch.full((1, 4), 0.2, dtype=torch.float64), torch.full((1, 4), 0.8, dtype=torch.float64))
    fixed = local_lipschitz(_net(), box, bab_timeout=20, bab_options={"num_threads": 1})
    auto = local_lipschitz(_net(), box, bab_timeout=20)
    assert torch.get_num_threads() == 2
    assert auto.status == fixed.status == "exact"
    assert auto.upper == pytest.approx(fixed.upper, rel=1e-9)  # the thread count changes speed, not the bound
    assert auto.stats["threads"]["options"] == [1, 2]


@pytest.mark.parametrize("bad", [0, -1, 1.5, "two", True])
def test_bad_num_threads_is_refused(bad):
    box = (torch.zeros(1, 4, dtype=torch.float64), torch.ones(1, 4, dtype=torch.float64))
    with pytest.raises(InvalidArgumentError, match="num_threads"):
        local_lipschitz(_net(), box, bab_timeout=5, bab_options={"num_threads": bad})
