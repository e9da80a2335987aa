"""Cross-check against auto_LiRPA (skipped unless a modern auto_LiRPA is importable)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nncertify import models
from nncertify.relax import auto_lirpa_adapter as adapter
from nncertify.models.errors import UnsupportedOperationError


def test_adapter_reports_unavailability_cleanly():
    if adapter.available():
        pytest.skip("auto_LiRPA is importable here; the unavailability path is not exercised")
    net = models.from_module(nn.Sequential(nn.Linear(2, 2)), (2,))
    with pytest.raises(UnsupportedOperationError):
        adapter.cross_check(net, torch.zeros(1, 2), torch.ones(1, 2))


@pytest.mark.skipif(not adapter.available(), reason="auto_LiRPA (>= 0.4) is not importable; optional cross-check")
@pytest.mark.parametrize("method", ["ibp", "crown"])
def test_bounds_agree_with_auto_lirpa(method):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    net = models.from_module(m, (5,))
    x = torch.randn(4, 5)
    r = adapter.cross_check(net, x - 0.2, x + 0.2, method=method)
    # both sound: each lower bound is below the other's upper bound, and CROWN implementations agree
    assert (r.ours_lower <= r.lirpa_upper + 1e-5).all() and (r.lirpa_lower <= r.ours_upper + 1e-5).all()
    assert r.max_abs_diff < 1e-3
