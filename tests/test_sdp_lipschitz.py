"""sdp.lipschitz_bound against independent truths.

* exhaustive pattern enumeration (every ReLU on/off, every MaxMin pair order, every Householder
  reflection choice): the max Jacobian norm over ALL patterns is >= the true Lipschitz constant and
  every sound LipSDP-type bound must be >= it (the QCs admit each pattern);
* gradient norms at random points (realised Jacobians: a lower bound of the true constant);
* the matrix-norm product (upper limit the SDP must not exceed);
* closed forms: one MaxMin layer with orthogonal weights has Lipschitz constant exactly 1.
"""

import itertools
import math

import numpy as np
from patterns import maxmin_patterns, relu_patterns
import pytest
import torch
from torch import nn

from nncertify import models
from nncertify import sdp
from nncertify.models import GroupSort, HouseholderActivation, MaxMin, Residual
from nncertify.models.errors import InvalidArgumentError
from nncertify.sdp.api import certify_sector
from nncertify.sdp.formulations.sector import build_sector
from nncertify.sdp import solve as S

DEFAULT_DTYPE = torch.float64  # applied per test by tests/conftest.py (no global leak)


def _mlp(sizes, act, seed):
    torch.manual_seed(seed)
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers).double()


def _weights(m):
    return [l.weight.detach().numpy() for l in m.modules() if isinstance(l, nn.Linear)]


def _pattern_jacobian_max(Ws, kind, norm=2, c=None, vs=None):
    """max over all activation patterns of ||c^T J|| (dual norm) or ||J||_2 -- independent of sdp/."""
    hidden = Ws[:-1]
    choices = []
    for W in hidden:
        n = W.shape[0]
        if kind == "relu":
            choices.append(relu_patterns(n))
        elif kind == "maxmin":
            choices.append(maxmin_patterns(n))
        elif kind == "householder":
            opts = []
            for p in itertools.product([0, 1], repeat=n // 2):
                H = np.eye(n)
                for j, s in enumerate(p):
                    if s:
                        v = vs[j]
                        H[2 * j:2 * j + 2, 2 * j:2 * j + 2] -= 2 * np.outer(v, v)
                opts.append(H)
            choices.append(opts)
    best = 0.0
    for combo in itertools.product(*choices):
        J = np.eye(Ws[0].shape[1])
        for W, P in zip(hidden, combo):
            J = P @ W @ J
        J = Ws[-1] @ J
        if c is not None:
            J = c[None, :] @ J
        val = np.linalg.norm(J, 2) if norm == 2 else np.abs(J).sum()
        best = max(best, val)
    return best


def _naive(Ws):
    return float(np.prod([np.linalg.norm(W, 2) for W in Ws]))


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("method,solver", [("lipsdp-neuron", "CLARABEL"), ("lipsdp-layer", "CLARABEL"),
                                           ("lipsdp-neuron", "SCS"), ("lipsdp-neuron", "FIRST_ORDER")])
def test_relu_bounds_sandwiched(seed, method, solver):
    m = _mlp([3, 4, 4, 2], nn.ReLU, seed)
    net = models.from_module(m, (3,))
    cert = sdp.lipschitz_bound(net, method=method, solver=solver, first_order_iters=60)
    assert cert.status == "certified" and cert.kind == "certificate"
    Ws = _weights(m)
    fgl = _pattern_jacobian_max(Ws, "relu")
    lb = sdp.sampled_lower_bound(net, n=1000).value
    assert lb <= fgl * (1 + 1e-9)
    assert cert.certified_value >= fgl * (1 - 1e-9)
    assert cert.certified_value <= _naive(Ws) * (1 + 1e-7)


def test_neuron_tighter_than_layer_and_first_order_close():
    m = _mlp([5, 12, 12, 3], nn.ReLU, 3)
    net = models.from_module(m, (5,))
    neu = sdp.lipschitz_bound(net, method="lipsdp-neuron", solver="CLARABEL")
    lay = sdp.lipschitz_bound(net, method="lipsdp-layer", solver="CLARABEL")
    fo = sdp.lipschitz_bound(net, method="lipsdp-neuron", solver="FIRST_ORDER", first_order_iters=150)
    cf = sdp.lipschitz_bound(net, method="lipsdp-neuron", solver="FIRST_ORDER", first_order_iters=0)
    assert neu.certified_value <= lay.certified_value * (1 + 1e-6)
    # the SDP optimum is a floor for any feasible multiplier choice
    assert fo.certified_value >= neu.certified_value * (1 - 1e-6)
    assert fo.certified_value <= neu.certified_value * 1.05
    assert cf.solver == "CLOSED_FORM" and cf.certified_value >= fo.certified_value * (1 - 1e-9)
    assert neu.raw_value > 0 and neu.naive_product >= neu.certified_value


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_maxmin_lifted_and_nsr_above_pattern_max(seed):
    m = _mlp([3, 4, 4, 2], MaxMin, seed)
    net = models.from_module(m, (3,))
    Ws = _weights(m)
    fgl = _pattern_jacobian_max(Ws, "maxmin")
    lif = sdp.lipschitz_bound(net, method="lifted", solver="CLARABEL")
    nsr = sdp.lipschitz_bound(net, method="nsr", solver="CLARABEL")
    for cert in (lif, nsr):
        assert cert.certified
        assert fgl * (1 - 1e-9) <= cert.certified_value <= _naive(Ws) * (1 + 1e-7)
    assert lif.certified_value <= nsr.certified_value * (1 + 1e-6)  # lifted is provably at least as tight


def test_one_maxmin_layer_orthogonal_certifies_one():
    torch.manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64))
    lin = nn.Linear(8, 8, bias=False).double()
    lin.weight.data = Q
    net = models.from_module(nn.Sequential(lin, MaxMin()), (8,))
    for method in ("lifted", "nsr"):
        cert = sdp.lipschitz_bound(net, method=method, solver="CLARABEL")
        assert cert.certified and 1.0 - 1e-9 <= cert.certified_value <= 1.0 + 1e-6, (method, cert)
    gs = models.from_module(nn.Sequential(lin, GroupSort(4)), (8,))
    cert = sdp.lipschitz_bound(gs, method="auto", solver="CLARABEL")
    assert cert.certified and 1.0 - 1e-9 <= cert.certified_value <= 1.0 + 1e-6


def test_householder_lifted_above_pattern_max():
    torch.manual_seed(4)
    h1, h2 = HouseholderActivation(4), HouseholderActivation(4)
    v = torch.nn.functional.normalize(torch.randn(2, 2), dim=1)
    h1.v.data, h2.v.data = v.clone(), v.clone()
    m = nn.Sequential(nn.Linear(3, 4), h1, nn.Linear(4, 4), h2, nn.Linear(4, 2)).double()
    net = models.from_module(m, (3,))
    Ws = _weights(m)
    fgl = _pattern_jacobian_max(Ws, "householder", vs=v.numpy())
    cert = sdp.lipschitz_bound(net, method="lifted", solver="CLARABEL")
    assert cert.certified and fgl * (1 - 1e-9) <= cert.certified_value <= _naive(Ws) * (1 + 1e-7)


def test_groupsort4_sound_against_sampling():
    torch.manual_seed(5)
    m = nn.Sequential(nn.Linear(4, 8), GroupSort(4), nn.Linear(8, 8), GroupSort(4), nn.Linear(8, 2)).double()
    net = models.from_module(m, (4,))
    lb = sdp.sampled_lower_bound(net, n=3000).value
    for method in ("lifted", "nsr", "auto"):
        cert = sdp.lipschitz_bound(net, method=method, solver="CLARABEL")
        assert cert.certified and lb <= cert.certified_value <= _naive(_weights(m)) * (1 + 1e-7), method


def test_residual_maxmin_sound():
    torch.manual_seed(6)
    m = nn.Sequential(nn.Linear(3, 4), Residual(nn.Sequential(nn.Linear(4, 4), MaxMin())),
                      Residual(nn.Sequential(nn.Linear(4, 4), MaxMin())), nn.Linear(4, 2)).double()
    net = models.from_module(m, (3,))
    Ws = _weights(m)
    # enumerate: J = Wout (I + P2 W2)(I + P1 W1) Win
    best = 0.0
    opts = maxmin_patterns(4)
    for P1 in opts:
        for P2 in opts:
            J = Ws[3] @ (np.eye(4) + P2 @ Ws[2]) @ (np.eye(4) + P1 @ Ws[1]) @ Ws[0]
            best = max(best, np.linalg.norm(J, 2))
    mp = np.linalg.norm(Ws[0], 2) * (1 + np.linalg.norm(Ws[1], 2)) * (1 + np.linalg.norm(Ws[2], 2)) * np.linalg.norm(Ws[3], 2)
    cert = sdp.lipschitz_bound(net, solver="CLARABEL")
    assert cert.certified and best * (1 - 1e-9) <= cert.certified_value <= mp * (1 + 1e-7)
    for variant in ("PSzero", "Szero", "Pzero"):
        nsr = sdp.lipschitz_bound(net, method="nsr", residual_variant=variant, solver="CLARABEL")
        assert nsr.certified and nsr.certified_value >= best * (1 - 1e-9), variant
        assert nsr.certified_value >= cert.certified_value * (1 - 1e-6)  # lifted is at least as tight
    with pytest.raises(Exception, match="nsr"):
        sdp.lipschitz_bound(net, method="nsr", norm="inf", c=[1.0, 0.0], solver="SCS")


@pytest.mark.parametrize("kind", ["relu", "maxmin"])
def test_linf_and_margin(kind):
    m = _mlp([3, 4, 4, 3], nn.ReLU if kind == "relu" else MaxMin, 7)
    net = models.from_module(m, (3,))
    Ws = _weights(m)
    c = np.array([1.0, -1.0, 0.0])
    fgl_inf = _pattern_jacobian_max(Ws, kind, norm="inf", c=c)
    fgl_2 = _pattern_jacobian_max(Ws, kind, norm=2, c=c)
    methods = ["lifted"]
    for method in methods:
        ci = sdp.lipschitz_bound(net, norm="inf", c=c, method=method, solver="SCS")
        assert ci.certified and ci.certified_value >= fgl_inf * (1 - 1e-9)
        assert ci.certified_value <= ci.naive_product * (1 + 1e-7)
    e0 = np.array([0.0, 0.0, -1.0])  # a signed unit vector (a logit, as in the paper's l_inf runs)
    fgl_e0 = _pattern_jacobian_max(Ws, kind, norm="inf", c=e0)
    for method in ["lifted"] + (["nsr"] if kind == "maxmin" else []):
        ci = sdp.lipschitz_bound(net, norm="inf", c=e0, method=method, solver="SCS")
        assert ci.certified and ci.certified_value >= fgl_e0 * (1 - 1e-9)
    c2 = sdp.margin_lipschitz(net, 0, 1, solver="CLARABEL")
    assert c2.certified and c2.certified_value >= fgl_2 * (1 - 1e-9)
    # the radius margin/L is never beaten by random perturbations inside it
    x = torch.randn(200, 3, generator=torch.Generator().manual_seed(0))
    y = net(x)
    marg = (y[:, 0] - y[:, 1]).detach()
    r = torch.tensor([c2.radius(float(mm)) for mm in marg])
    d = torch.nn.functional.normalize(torch.randn(200, 3), dim=1) * r[:, None] * 0.999
    y2 = net(x + d)
    assert bool(((y2[:, 0] - y2[:, 1]) * torch.sign(marg) >= -1e-12).all())
    with pytest.raises(InvalidArgumentError):
        sdp.lipschitz_bound(net, norm="inf")  # vector output needs c


def test_repair_never_certifies_wrongly():
    """Deliberately corrupted multipliers: the verifier either repairs them into a value >= the
    exact pattern bound or reports failure."""
    m = _mlp([3, 4, 4, 2], nn.ReLU, 0)
    net = models.from_module(m, (3,))
    Ws = _weights(m)
    fgl = _pattern_jacobian_max(Ws, "relu")
    layers = sdp.extract(net)
    blocks = [tuple(x.numpy() for x in (b.C, b.D, b.G, b.alpha, b.beta)) for b in sdp.lift(layers)]
    W_out = layers.W_out.numpy()
    built = build_sector(blocks, W_out, 2)
    S.run(built.problem, "CLARABEL")
    good = built.read()
    rng = np.random.default_rng(0)
    outcomes = []
    for trial in range(12):
        mult = {"lam": [l.copy() for l in good["lam"]]}
        for l in mult["lam"]:
            l *= rng.uniform(0.0, 1.2, l.shape)      # shrink (infeasible) or grow
            l[rng.integers(0, l.size)] *= -1.0       # a negative multiplier (invalid QC)
        if trial == 0:
            mult["lam"][0][0] = np.nan
        rho = certify_sector(blocks, W_out, 2, mult)
        outcomes.append(rho is not None)
        if rho is not None:
            assert math.sqrt(rho) >= fgl * (1 - 1e-9)
    assert outcomes[0] is False and any(outcomes[1:])


def test_scs_loose_tolerance_still_verified():
    m = _mlp([4, 10, 10, 2], nn.ReLU, 11)
    net = models.from_module(m, (4,))
    loose = sdp.lipschitz_bound(net, solver="SCS", eps=1e-3)
    exact = sdp.lipschitz_bound(net, solver="CLARABEL")
    assert loose.solver == "SCS"
    if loose.certified:
        assert loose.certified_value >= exact.certified_value * (1 - 1e-7)
    assert exact.certified


def test_bad_arguments():
    net = models.from_module(_mlp([3, 4, 2], nn.ReLU, 0), (3,))
    with pytest.raises(InvalidArgumentError, match="unsound"):
        sdp.lipschitz_bound(net, method="lipsdp-network")
    with pytest.raises(InvalidArgumentError):
        sdp.lipschitz_bound(net, norm=1)
    with pytest.raises(InvalidArgumentError):
        sdp.lipschitz_bound(net, solver="NOPE")
    with pytest.raises(InvalidArgumentError):
        sdp.lipschitz_bound(net, c=[1.0, 2.0, 3.0])
    mm = models.from_module(_mlp([3, 4, 2], MaxMin, 0), (3,))
    with pytest.raises(Exception, match="slope-restricted"):
        sdp.lipschitz_bound(mm, method="lipsdp-neuron")


def test_tanh_sigmoid_bounds():
    for act in (nn.Tanh, nn.Sigmoid):
        m = _mlp([3, 6, 6, 2], act, 2)
        net = models.from_module(m, (3,))
        cert = sdp.lipschitz_bound(net, method="lipsdp-neuron", solver="CLARABEL")
        lb = sdp.sampled_lower_bound(net, n=2000).value
        assert cert.certified and lb <= cert.certified_value <= cert.naive_product * (1 + 1e-7)


@pytest.mark.parametrize("act", ["maxmin_pairs", "maxmin_halves", "gs2", "gs4", "gs4_asc", "gs3", "householder", "res"])
def test_lifted_form_reproduces_network(act):
    """The sector (lifted) form x_k = D x + G relu(C x) is the same function as the network (no biases)."""
    torch.manual_seed(8)
    mk = {"maxmin_pairs": lambda: MaxMin("pairs"), "maxmin_halves": lambda: MaxMin("halves"),
          "gs2": lambda: GroupSort(2), "gs4": lambda: GroupSort(4), "gs4_asc": lambda: GroupSort(4, descending=False),
          "gs3": lambda: GroupSort(3), "householder": lambda: HouseholderActivation(12, 3)}
    if act == "res":
        m = nn.Sequential(nn.Linear(5, 12, bias=False), Residual(nn.Sequential(nn.Linear(12, 12, bias=False), MaxMin())),
                          Residual(nn.Sequential(nn.Linear(12, 12, bias=False), nn.ReLU(), nn.Linear(12, 12, bias=False))),
                          nn.Linear(12, 3, bias=False)).double()
    else:
        m = nn.Sequential(nn.Linear(5, 12, bias=False), mk[act](), nn.Linear(12, 12, bias=False), mk[act](),
                          nn.Linear(12, 3, bias=False)).double()
    net = models.from_module(m, (5,))
    layers = sdp.extract(net)
    x = torch.randn(64, 5)
    h = x
    for b in sdp.lift(layers):
        h = h @ b.D.T + torch.relu(h @ b.C.T) @ b.G.T if b.p else h @ b.D.T
    assert torch.allclose(h @ layers.W_out.T, m(x), atol=1e-10)


def test_margin_vector_kept_exact():
    m = _mlp([3, 4, 4, 3], nn.ReLU, 9)
    net = models.from_module(m, (3,))
    c = torch.tensor([0.3, -1.7, 0.0])
    layers = sdp.extract(net, c=c)
    assert torch.equal(layers.W_out, c[None, :]) and layers.hidden[-1].act == "identity"
    cert = sdp.lipschitz_bound(net, c=c, solver="CLARABEL")
    fgl = _pattern_jacobian_max(_weights(m), "relu", c=c.numpy())
    assert cert.certified and cert.certified_value >= fgl * (1 - 1e-9)


def test_conv_and_leaky_relu_as_matrices():
    torch.manual_seed(12)
    m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.LeakyReLU(0.1), nn.Flatten(), nn.Linear(2 * 3 * 3, 6), nn.ReLU(),
                      nn.Linear(6, 2)).double()
    net = models.from_module(m, (1, 5, 5))
    cert = sdp.lipschitz_bound(net, method="lipsdp-neuron", solver="SCS")
    lb = sdp.sampled_lower_bound(net, n=2000).value
    assert cert.certified and lb <= cert.certified_value <= cert.naive_product * (1 + 1e-7)


def test_degenerate_depths():
    """A purely linear net (L = ||W||_2 exactly) and relu(Wx) with no output layer (LipSDP issue #4)."""
    torch.manual_seed(13)
    lin = nn.Linear(4, 3).double()
    net = models.from_module(nn.Sequential(lin), (4,))
    s = float(torch.linalg.matrix_norm(lin.weight.detach(), 2))
    for solver in ("CLARABEL", "FIRST_ORDER"):
        cert = sdp.lipschitz_bound(net, solver=solver)
        assert cert.certified and s * (1 - 1e-12) <= cert.certified_value <= s * (1 + 1e-6)
    one = models.from_module(nn.Sequential(nn.Linear(4, 3), nn.ReLU()).double(), (4,))
    W = one.nodes[1].params["weight"].numpy()
    fgl = _pattern_jacobian_max([W, np.eye(3)], "relu")
    cert = sdp.lipschitz_bound(one, solver="CLARABEL")
    assert cert.certified and fgl * (1 - 1e-9) <= cert.certified_value <= s * 10


def test_float32_network_uses_exact_weights():
    torch.manual_seed(14)
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))  # float32, with biases
    with torch.no_grad():
        m[0].bias.fill_(1e4)
    net = models.from_module(m, (3,))
    layers = sdp.extract(net)
    assert torch.equal(layers.hidden[0].W, m[0].weight.detach().double())
    cert = sdp.lipschitz_bound(net, solver="CLARABEL")
    fgl = _pattern_jacobian_max([w.astype(np.float64) for w in _weights(m)], "relu")
    assert cert.certified and cert.certified_value >= fgl * (1 - 1e-12)
