"""Householder NSR (Lemma 2 of Pauli et al. 2024) against independent truths: the max over every
reflection pattern of ||J||_2 (exhaustive, written here), sampled gradient norms, the spectral-norm
product, the lifted form (provably at least as tight) and, for v = (1, -1)/sqrt(2), the MaxMin NSR
(Lemma 2 reduces to Lemma 1 there)."""

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from nncertify import models
from nncertify import sdp
from nncertify.models import HouseholderActivation, MaxMin

DEFAULT_DTYPE = torch.float64


def _pattern_max(Ws, vs):
    best = 0.0
    n = Ws[0].shape[0]
    opts = []
    for p in itertools.product([0, 1], repeat=n // 2):
        H = np.eye(n)
        for j, s in enumerate(p):
            if s:
                H[2 * j:2 * j + 2, 2 * j:2 * j + 2] -= 2 * np.outer(vs[j], vs[j])
        opts.append(H)
    for H1, H2 in itertools.product(opts, opts):
        best = max(best, np.linalg.norm(Ws[2] @ H2 @ Ws[1] @ H1 @ Ws[0], 2))
    return best


@pytest.mark.parametrize("seed", [0, 1])
def test_householder_nsr_sound_and_looser_than_lifted(seed):
    torch.manual_seed(seed)
    v = torch.randn(2, 2)
    v = v / v.norm(dim=1, keepdim=True)
    m = nn.Sequential(nn.Linear(3, 4), HouseholderActivation(4, v=v), nn.Linear(4, 4),
                      HouseholderActivation(4, v=v), nn.Linear(4, 2)).double()
    net = models.from_module(m, (3,))
    Ws = [l.weight.detach().numpy() for l in m if isinstance(l, nn.Linear)]
    fgl = _pattern_max(Ws, v.double().numpy())
    nsr = sdp.lipschitz_bound(net, method="nsr", solver="CLARABEL")
    lif = sdp.lipschitz_bound(net, method="lifted", solver="CLARABEL")
    assert nsr.certified and lif.certified
    lb = sdp.sampled_lower_bound(net, n=500).value
    assert lb <= fgl * (1 + 1e-9) <= nsr.certified_value
    assert lif.certified_value <= nsr.certified_value * (1 + 1e-6)
    mp = float(np.prod([np.linalg.norm(W, 2) for W in Ws]))
    assert nsr.certified_value <= mp * (1 + 1e-7)


def test_householder_nsr_reduces_to_maxmin_nsr():
    torch.manual_seed(2)
    lin = [nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 2)]
    hh = nn.Sequential(lin[0], HouseholderActivation(4), lin[1], HouseholderActivation(4), lin[2]).double()
    mm = nn.Sequential(lin[0], MaxMin(), lin[1], MaxMin(), lin[2]).double()
    x = torch.randn(50, 3, dtype=torch.float64)
    assert torch.allclose(hh(x), mm(x))  # same function (max first, min second)
    a = sdp.lipschitz_bound(models.from_module(hh, (3,)), method="nsr", solver="CLARABEL")
    b = sdp.lipschitz_bound(models.from_module(mm, (3,)), method="nsr", solver="CLARABEL")
    assert a.certified and b.certified
    assert abs(a.certified_value / b.certified_value - 1) < 1e-4
