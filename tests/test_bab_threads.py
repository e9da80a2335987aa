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


@pytest.fixture
def two_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


def test_tuner_measures_both_counts_then_keeps_the_faster(two_threads):
    tu = ThreadTuner(2, probe_every=3600.0)
    assert tu.options == [1, 2]
    assert tu.choose() == 1 and torch.get_num_threads() == 1 and not tu.probing  # nothing measured: 1
    tu.record(1, 10, 1.0)  # 0.1 s per unit
    assert tu.choose() == 2 and tu.probing and tu.cautious and torch.get_num_threads() == 2  # unmeasured: tried
    tu.record(2, 10, 0.5)  # 0.05 s per unit: faster
    assert tu.choose() == 2 and not tu.probing  # no probe before probe_every has passed
    assert tu.best() == 2
    tu.record(2, 10, 5.0)  # it got 10x slower (another process took a core): the average follows
    assert tu.best() == 1 and tu.choose() == 1
    tu.restore()
    assert torch.get_num_threads() == 2


def test_tuner_probes_the_other_count_periodically(two_threads):
    tu = ThreadTuner(2, probe_every=0.05)
    tu.record(1, 1, 1.0)
    tu.record(2, 1, 2.0)
    time.sleep(0.06)
    assert tu.choose() == 2 and tu.probing and not tu.cautious  # re-measured once probe_every has passed
    tu.record(2, 1, 7.0)  # now > 2x slower: its next probe is a cautious (small) one
    time.sleep(0.06)
    assert tu.choose() == 2 and tu.probing and tu.cautious
    assert tu.choose() == 1 and not tu.probing  # ... and only then
    assert tu.summary()["threads"] == 1 and tu.switches == 2


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
