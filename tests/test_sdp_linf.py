"""l_inf LipSDP (sdp/linf.py, sdp/first_order_linf.py) against independent truths.

L_inf(w^T f) = sup_x ||grad (w^T f)(x)||_1 (bound on |w^T f(x) - w^T f(y)| / ||x - y||_inf).
Truths used:
* exhaustive pattern enumeration on tiny MaxMin nets: max over every pair order of ||w^T J||_1 is
  >= the true constant, and every certificate of the lifted or NSR type must be >= it (their QCs
  admit each pattern's linear map);
* gradient l1 norms at random points (realised Jacobians: lower bounds);
* the l_inf matrix-norm product ||w||_1 prod ||W_k||_inf (MaxMin is 1-Lipschitz in l_inf): upper limit;
* the exact SDP optimum of the *published* cvxpy form (diag(tau) first block, last LMI with rho),
  solved by CLARABEL on tiny nets: the first-order chain is a feasible point of the same SDP after
  the reduction, so it can never be below that optimum (a wrong reduction would be);
* a closed form: a linear map w^T W x has L_inf = ||w^T W||_1.
"""

import numpy as np
import pytest
import torch
from torch import nn

from nncertify import models
from nncertify import sdp
from nncertify.models import MaxMin
from patterns import maxmin_patterns

DEFAULT_DTYPE = torch.float64


def _mlp(sizes, seed, scale=1.0):
    torch.manual_seed(seed)
    layers = []
    for i in range(len(sizes) - 1):
        lin = nn.Linear(sizes[i], sizes[i + 1])
        with torch.no_grad():
            lin.weight.mul_(scale)
        layers.append(lin)
        if i < len(sizes) - 2:
            layers.append(MaxMin())
    return nn.Sequential(*layers).double()


def _weights(m):
    return [l.weight.detach().numpy() for l in m.modules() if isinstance(l, nn.Linear)]


def _fgl_inf(Ws, c):
    """max over all MaxMin pair orders of ||c^T J||_1 -- written independently of sdp/."""
    import itertools
    best = 0.0
    for combo in itertools.product(*[maxmin_patterns(W.shape[0]) for W in Ws[:-1]]):
        J = np.eye(Ws[0].shape[1])
        for W, P in zip(Ws[:-1], combo):
            J = P @ W @ J
        best = max(best, float(np.abs(c @ Ws[-1] @ J).sum()))
    return best


def _mp_inf(Ws, c):
    return float(np.abs(c @ Ws[-1]).sum() * np.prod([np.abs(W).sum(1).max() for W in Ws[:-1]]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_first_order_linf_between_patterns_and_product(seed):
    m = _mlp([5, 6, 6, 3], seed)
    net = models.from_module(m, (5,))
    Ws = _weights(m)
    c = np.array([0.0, 1.0, 0.0]) if seed != 2 else np.array([1.0, -1.0, 0.0])
    fgl, mp = _fgl_inf(Ws, c), _mp_inf(Ws, c)
    lb = sdp.sampled_lower_bound(net, "inf", c=c, n=500).value
    assert lb <= fgl * (1 + 1e-9)
    methods = ["lifted", "nsr"] if seed != 2 else ["lifted"]  # nsr needs a signed unit c
    vals = {}
    for method in methods:
        r = sdp.lipschitz_bound(net, norm="inf", c=c, method=method, solver="FIRST_ORDER", first_order_iters=60)
        assert r.certified, (method, r.message)
        assert r.solver == "FIRST_ORDER"
        assert r.certified_value >= fgl * (1 - 1e-9), method
        assert r.certified_value <= mp * (1 + 1e-7), method
        r0 = sdp.lipschitz_bound(net, norm="inf", c=c, method=method, solver="FIRST_ORDER", first_order_iters=0)
        assert r0.certified and r0.solver == "CLOSED_FORM" and r0.certified_value >= fgl * (1 - 1e-9)
        assert r.certified_value <= r0.certified_value * (1 + 1e-7)  # optimising never loses
        vals[method] = r.certified_value
    if "nsr" in vals:
        assert vals["lifted"] <= vals["nsr"] * (1 + 1e-6)  # lifted is provably at least as tight


@pytest.mark.parametrize("seed", [3, 4])
def test_first_order_linf_matches_the_published_sdp_optimum(seed):
    """Reduction check: the cvxpy form with tau and rho (reference §1.3), solved by CLARABEL, is the
    SDP optimum; the first-order chain value (a feasible point after the reduction) must be >= it and,
    being a good optimiser, close to it.  The SCS-only run is verified the same way."""
    m = _mlp([4, 6, 4, 2], seed)
    net = models.from_module(m, (4,))
    c = np.array([-1.0, 0.0])
    for method in ("lifted", "nsr"):
        ex = sdp.lipschitz_bound(net, norm="inf", c=c, method=method, solver="CLARABEL")
        fo = sdp.lipschitz_bound(net, norm="inf", c=c, method=method, solver="FIRST_ORDER", first_order_iters=300)
        scs = sdp.lipschitz_bound(net, norm="inf", c=c, method=method, solver="SCS")
        assert ex.certified and fo.certified and scs.certified
        opt = ex.raw_value
        assert fo.certified_value >= opt * (1 - 1e-6), method
        assert scs.certified_value >= opt * (1 - 1e-6), method
        assert fo.certified_value <= opt * 1.02, method
        assert scs.certified_value <= opt * 1.02, method


def test_linf_one_layer_closed_form():
    """f(x) = max(2 x1, 3 x2): gradients (2, 0) or (0, 3), so L_inf = 3.  Any quadratic certificate
    needs Q >= diag(4, 0) and Q >= diag(0, 9); then max over x in {-1, 1}^2 of x^T Q x >= 4 + 9, and
    diag(4, 9) attains it: the optimum of the l_inf SDP (either constraint) is sqrt(13) exactly."""
    m = nn.Sequential(nn.Linear(2, 2), MaxMin(), nn.Linear(2, 1)).double()
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 3.0]]))
        m[2].weight.copy_(torch.tensor([[1.0, 0.0]]))
    net = models.from_module(m, (2,))
    for method in ("lifted", "nsr"):
        r = sdp.lipschitz_bound(net, norm="inf", method=method, solver="FIRST_ORDER", first_order_iters=200)
        assert r.certified and 13 ** 0.5 <= r.certified_value <= 13 ** 0.5 * (1 + 1e-4), method


def test_linf_needs_scalar_output():
    m = _mlp([4, 4, 3], 0)
    net = models.from_module(m, (4,))
    from nncertify.models.errors import InvalidArgumentError
    with pytest.raises(InvalidArgumentError, match="c"):
        sdp.lipschitz_bound(net, norm="inf", method="lifted", solver="FIRST_ORDER")


def test_pauli_linf_2fc_16(shared_data):
    """Released weights (weights_linf_2fc_16, logit 8): LB <= lifted <= NSR <= MP, all certified."""
    from nncertify.models.matlab import load_pauli_mat
    path = shared_data / "pauli2024_maxmin" / "weights_linf_2fc_16.mat"
    if not path.exists():
        pytest.skip(f"{path} absent")
    net = load_pauli_mat(path)
    c = torch.zeros(10, dtype=torch.float64)
    c[8] = 1.0
    lif = sdp.lipschitz_bound(net, norm="inf", c=c, method="lifted", solver="FIRST_ORDER", first_order_iters=60)
    nsr = sdp.lipschitz_bound(net, norm="inf", c=c, method="nsr", solver="FIRST_ORDER", first_order_iters=60)
    lb = sdp.sampled_lower_bound(net, "inf", c=c, n=500).value
    assert lif.certified and nsr.certified
    assert lb <= lif.certified_value <= nsr.certified_value * (1 + 1e-6) <= lif.naive_product


def test_auto_solver_uses_first_order_for_wide_inputs():
    """A 50-input net: the cvxpy l_inf form would carry a 54-wide first cone, so auto picks the first-order
    path; the result is still >= every pattern (independent enumeration) and <= MP."""
    m = _mlp([50, 4, 1], 5)
    net = models.from_module(m, (50,))
    Ws = _weights(m)
    r = sdp.lipschitz_bound(net, norm="inf", method="lifted", first_order_iters=100)
    assert r.certified and r.solver == "FIRST_ORDER"
    c = np.array([1.0])
    assert _fgl_inf(Ws, c) * (1 - 1e-9) <= r.certified_value <= _mp_inf(Ws, c) * (1 + 1e-7)


@pytest.mark.parametrize("seed", [6, 7])
def test_first_order_nsr_l2_matches_clarabel(seed):
    """The same multiplicative chain with the l2 objective (method='nsr', solver='FIRST_ORDER', norm 2):
    certified, never below the CLARABEL optimum of the cvxpy NSR chain, within 1 % of it, and above the
    max over all MaxMin patterns of ||J||_2 (independent enumeration)."""
    import itertools
    m = _mlp([4, 6, 4, 2], seed)
    net = models.from_module(m, (4,))
    Ws = _weights(m)
    fgl = 0.0
    for P1, P2 in itertools.product(maxmin_patterns(6), maxmin_patterns(4)):
        fgl = max(fgl, np.linalg.norm(Ws[2] @ P2 @ Ws[1] @ P1 @ Ws[0], 2))
    ex = sdp.lipschitz_bound(net, method="nsr", solver="CLARABEL")
    fo = sdp.lipschitz_bound(net, method="nsr", solver="FIRST_ORDER", first_order_iters=200)
    assert ex.certified and fo.certified and fo.solver == "FIRST_ORDER"
    assert fgl * (1 - 1e-9) <= fo.certified_value
    assert ex.raw_value * (1 - 1e-6) <= fo.certified_value <= ex.raw_value * 1.01
