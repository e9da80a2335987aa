"""Softmax-ghost radii (certify/ghosts.py) against independent truths: numerical complex zeros of the
partition function (Newton + argument principle), closed forms for linear models, float64 finite
differences, and untouched BatchNorm buffers."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from nncertify.certify.ghosts import (activation_radii, binary_radius, exact_binary_radii, ghost_location, logit_fd,
                            logit_jvp, normalized_step, radius_from_dlogits, rho_a, step_report)
from nncertify.models.errors import InvalidArgumentError, ShapeMismatchError


# ------------------------------------------------------------------ independent zero finders (numpy)
def _F(t, z, a):
    w = np.exp(z - z.max())
    e = w[None, :] * np.exp(np.outer(t, a))
    return e.sum(1), (e * a[None, :]).sum(1)


def newton_zeros(z, a, box, n=60, iters=80):
    """All zeros of F(t) = Σ e^{z_k + a_k t} that Newton finds from an n×n grid of starts in the box."""
    xs = np.linspace(-box, box, n)
    t = (xs[:, None] + 1j * xs[None, :]).ravel()
    for _ in range(iters):
        f, fp = _F(t, z, a)
        step = np.where(np.abs(fp) > 1e-300, f / np.where(fp == 0, 1, fp), 0)
        t = t - np.clip(np.abs(step), 0, box) * np.exp(1j * np.angle(step))
    f, fp = _F(t, z, a)
    scale = np.abs(np.exp(z - z.max())[None, :] * np.exp(np.outer(t.real, a))).sum(1)
    ok = np.isfinite(t) & (np.abs(f) < 1e-9 * scale)
    return t[ok]


def zeros_inside(z, a, radius, m=40000):
    """Number of zeros of F inside |t| < radius by the argument principle (winding of F on the circle)."""
    th = np.linspace(0, 2 * np.pi, m + 1)
    f, _ = _F(radius * np.exp(1j * th), z, a)
    return int(round(np.diff(np.unwrap(np.angle(f))).sum() / (2 * np.pi)))


# ------------------------------------------------------------------ closed forms vs numerical zeros
@pytest.mark.parametrize("z1,z2,a1,a2", [(2.0, -1.0, 0.3, -1.2), (0.0, 0.0, 1.0, -1.0), (-3.0, 1.5, -0.2, 2.7),
                                         (5.0, 4.0, 10.0, 9.0)])
def test_binary_radius_is_the_nearest_numerical_zero(z1, z2, a1, a2):
    z, a = np.array([z1, z2]), np.array([a1, a2])
    rho = binary_radius(z1 - z2, a1 - a2)
    roots = newton_zeros(z, a, box=3 * rho)
    assert roots.size > 0
    assert abs(np.abs(roots).min() - rho) < 1e-7 * rho
    # and there is no zero strictly inside, one pair on a slightly larger circle
    assert zeros_inside(z, a, rho * (1 - 1e-6)) == 0
    assert zeros_inside(z, a, rho * (1 + 1e-3)) >= 1
    g = ghost_location(z1 - z2, a1 - a2)
    assert np.abs(_F(np.array([g]), z, a)[0][0]) < 1e-9 * np.exp(np.abs(z - z.max())).sum() * 10
    # exact_binary_radii in torch, per sample
    t = exact_binary_radii(torch.tensor([[z1, z2]], dtype=torch.float64), torch.tensor([[a1, a2]], dtype=torch.float64))
    assert float(t[0]) == pytest.approx(rho, rel=1e-12)


def test_multiclass_lower_bound_never_violated():
    rng = np.random.default_rng(0)
    ratios = []
    for _ in range(25):
        n = int(rng.integers(3, 10))
        z, a = rng.normal(0, 3, n), rng.normal(0, 1, n)
        res = radius_from_dlogits(torch.tensor(a[None, :]))
        rho = res.rho_a
        assert rho == pytest.approx(math.pi / (a.max() - a.min()), rel=1e-9)
        assert zeros_inside(z, a, rho) == 0  # no zero inside the disk of radius rho_a
        roots = newton_zeros(z, a, box=4 * rho)
        assert roots.size > 0
        assert np.abs(roots).min() >= rho * (1 - 1e-9)
        assert np.abs(roots.imag).min() >= rho * (1 - 1e-9)  # the whole strip |Im t| < rho_a is zero-free
        ratios.append(np.abs(roots).min() / rho)
    assert min(ratios) >= 1.0


def test_temperature_scales_radius():
    # tempered binary at delta = 0: zeros of e^{(a1 t)/T} + e^{(a2 t)/T} at |t| = pi T / |a1 - a2|
    a = np.array([0.7, -0.5])
    for T in (0.5, 1.0, 4.0):
        res = radius_from_dlogits(torch.tensor(a[None, :]), temperature=T)
        roots = newton_zeros(np.zeros(2), a / T, box=3 * res.rho_a)
        assert np.abs(roots).min() == pytest.approx(res.rho_a, rel=1e-6)


def test_normalized_step():
    assert normalized_step(0.5, 2.0) == 0.25
    assert normalized_step(0.0, 0.0) == 0.0
    assert math.isinf(normalized_step(1.0, 0.0))


# ------------------------------------------------------------------ JVP correctness
class SmallNet(nn.Module):
    def __init__(self, bn=True):
        super().__init__()
        self.l1 = nn.Linear(6, 16)
        self.norm = nn.BatchNorm1d(16) if bn else nn.LayerNorm(16)
        self.l2 = nn.Linear(16, 5)

    def forward(self, x):
        return self.l2(torch.tanh(self.norm(self.l1(x))))


def _fd64(model, x, d, h=1e-6, train=False):
    m = SmallNet(bn=isinstance(model.norm, nn.BatchNorm1d)).double()
    m.load_state_dict(model.state_dict())
    m.train(train)
    base = {k: p.detach().double().clone() for k, p in m.named_parameters()}

    def f(s):
        with torch.no_grad():
            for k, p in m.named_parameters():
                p.copy_(base[k] + s * d[k].double())
            return m(x.double())

    return (f(h) - f(-h)) / (2 * h)


@pytest.mark.parametrize("bn,train", [(True, True), (True, False), (False, True)])
def test_jvp_matches_float64_finite_difference(bn, train):
    torch.manual_seed(1)
    m = SmallNet(bn)
    x = torch.randn(32, 6)
    if bn:  # make running stats non-trivial
        with torch.no_grad():
            m.train()
            m(x * 2 + 1)
    m.train(train)
    d = {k: torch.randn_like(p) for k, p in m.named_parameters()}
    ref = _fd64(m, x, d, train=train)
    _, a32 = logit_jvp(m, x, d)
    _, a64 = logit_jvp(m, x, d, dtype=torch.float64)
    assert a32.dtype == torch.float32 and a64.dtype == torch.float64
    assert torch.allclose(a64, ref, rtol=1e-6, atol=1e-7)
    assert torch.allclose(a32.double(), ref, rtol=1e-4, atol=1e-4)
    # the estimate path agrees loosely
    _, afd = logit_fd(m, x, d, eps=1e-3)
    scale = ref.abs().max()
    assert float((afd.double() - ref).abs().max()) < 2e-2 * float(scale)


def test_buffers_params_and_grads_untouched():
    torch.manual_seed(2)
    m = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))
    x, y = torch.randn(20, 6), torch.randint(0, 4, (20,))
    m.train()
    before = {k: b.clone() for k, b in m.state_dict().items()}
    d = {k: torch.randn_like(p) for k, p in m.named_parameters()}
    for mode in ("as_is", "train", "eval"):
        rho_a(m, x, d, mode=mode)
        rho_a(m, x, d, mode=mode, method="fd")
        activation_radii(m, x, d, mode=mode)
        step_report(m, x, y, mode=mode)
    after = m.state_dict()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert all(p.grad is None for p in m.parameters())
    assert m.training and all(mod.training for mod in m.modules())


# ------------------------------------------------------------------ closed forms on linear models
def test_linear_model_radius_and_sgd_lr_closed_form():
    rng = np.random.default_rng(3)
    B, D, K = 40, 7, 6
    X, W, b = rng.normal(size=(B, D)), rng.normal(size=(K, D)), rng.normal(size=K)
    y = rng.integers(0, K, B)
    m = nn.Linear(D, K).double()
    with torch.no_grad():
        m.weight.copy_(torch.tensor(W))
        m.bias.copy_(torch.tensor(b))
    xt, yt = torch.tensor(X), torch.tensor(y)
    # gradient of the mean cross-entropy in closed form
    Z = X @ W.T + b
    P = np.exp(Z - Z.max(1, keepdims=True))
    P /= P.sum(1, keepdims=True)
    E = P.copy()
    E[np.arange(B), y] -= 1
    gW, gb = E.T @ X / B, E.mean(0)
    gnorm = math.sqrt((gW ** 2).sum() + (gb ** 2).sum())
    A = -(X @ gW.T + gb) / gnorm  # exact logit derivatives along -g/|g| (logits are linear in theta)
    delta = (A.max(1) - A.min(1)).max()
    rep = step_report(m, xt, yt)
    assert rep["kind"] == "certified" and rep["status"] == "ok"
    assert rep["grad_norm"] == pytest.approx(gnorm, rel=1e-10)
    assert rep["rho_a"] == pytest.approx(math.pi / delta, rel=1e-8)
    assert rep["lr_max_sgd"] == pytest.approx(math.pi / (delta * gnorm), rel=1e-8)
    assert rep["bottleneck"] == [int((A.max(1) - A.min(1)).argmax())]
    # for a linear model the line loss is exactly the linearized one: every sample's nearest ghost is >= rho_a
    for i in range(B):
        assert zeros_inside(Z[i], A[i], rep["rho_a"]) == 0


def test_sequence_logits_reduced_per_token():
    torch.manual_seed(4)
    emb = nn.Sequential(nn.Linear(3, 8), nn.GELU(), nn.Linear(8, 11))  # acts on the last axis: (B, T, V)
    x = torch.randn(4, 5, 3)
    d = {k: torch.randn_like(p) for k, p in emb.named_parameters()}
    res = rho_a(emb, x, d, keep_per_sample=True)
    nrm = math.sqrt(sum(float((t.double() ** 2).sum()) for t in d.values()))
    e64 = nn.Sequential(nn.Linear(3, 8), nn.GELU(), nn.Linear(8, 11)).double()
    e64.load_state_dict(emb.state_dict())
    base = {k: p.detach().double().clone() for k, p in e64.named_parameters()}

    def at(s):  # independent float64 central difference
        with torch.no_grad():
            for k, p in e64.named_parameters():
                p.copy_(base[k] + s * d[k].double() / nrm)
            return e64(x.double())

    a = (at(1e-6) - at(-1e-6)) / 2e-6
    best, where = -1.0, None
    for bi in range(4):
        for ti in range(5):
            s = float(a[bi, ti].max() - a[bi, ti].min())
            if s > best:
                best, where = s, (bi, ti)
    assert res.bottleneck == where
    assert res.rho_a == pytest.approx(math.pi / best, rel=3e-4)
    assert res.rho_a <= math.pi / best * (1 + 1e-6)  # the float32 margin only makes it smaller
    assert res.per_sample_delta.shape == (4, 5)


def test_chunking_equals_whole_batch_and_radius_is_direction_scale_free():
    torch.manual_seed(5)
    m = SmallNet(bn=False)
    x = torch.randn(50, 6)
    d = {k: torch.randn_like(p) for k, p in m.named_parameters()}
    r1 = rho_a(m, x, d)
    r2 = rho_a(m, x, d, chunk_size=7)
    r3 = rho_a(m, x, {k: -3.0 * t for k, t in d.items()})  # sign and scale invariance
    assert r1.rho_a == pytest.approx(r2.rho_a, rel=1e-6) and r1.bottleneck == r2.bottleneck
    assert r1.rho_a == pytest.approx(r3.rho_a, rel=1e-5)
    flat = torch.cat([d[k].reshape(-1) for k, _ in m.named_parameters()])
    assert rho_a(m, x, flat).rho_a == pytest.approx(r1.rho_a, rel=1e-6)


def test_activation_radii_closed_form():
    torch.manual_seed(6)
    m = nn.Sequential(nn.Linear(4, 9), nn.Tanh(), nn.Linear(9, 3))
    x = torch.randn(10, 4, dtype=torch.float64)
    m = m.double()
    d = {k: torch.randn_like(p) for k, p in m.named_parameters()}
    nrm = math.sqrt(sum(float((t ** 2).sum()) for t in d.values()))
    res, act = activation_radii(m, x, d)
    W, b = m[0].weight.detach().numpy(), m[0].bias.detach().numpy()
    dW, db = d["0.weight"].numpy() / nrm, d["0.bias"].numpy() / nrm
    h, hd = x.numpy() @ W.T + b, x.numpy() @ dW.T + db  # first layer is linear in (x, theta)
    expect = (np.sqrt(h ** 2 + np.pi ** 2 / 4) / np.abs(hd)).min()
    assert act.per_module["1"] == pytest.approx(expect, rel=1e-9)
    assert act.binding_module == "1"
    assert act.to_dict()["rho_act"] == pytest.approx(expect, rel=1e-9)


def test_nonfinite_never_certified_and_bad_arguments():
    m = SmallNet(bn=False)
    x = torch.randn(8, 6)
    d = {k: torch.randn_like(p) for k, p in m.named_parameters()}
    d["l1.weight"][0, 0] = float("nan")
    res = rho_a(m, x, d)
    assert res.status == "nonfinite" and res.kind == "estimate" and res.rho_a == 0.0
    a = torch.randn(3, 4)
    a[1, 2] = float("inf")
    assert radius_from_dlogits(a).status == "nonfinite"
    with pytest.raises(InvalidArgumentError):
        rho_a(m, x, {k: torch.zeros_like(p) for k, p in m.named_parameters()})
    with pytest.raises(InvalidArgumentError):
        rho_a(m, x, {k: torch.ones_like(p) for k, p in m.named_parameters()}, mode="sideways")
    with pytest.raises(InvalidArgumentError):
        rho_a(m, x, {"nope": torch.ones(1)})
    with pytest.raises(ShapeMismatchError):
        rho_a(m, x, torch.ones(3))
    with pytest.raises(InvalidArgumentError):
        step_report(m, x, torch.zeros(8, dtype=torch.long), loss="mse")
    # a direction that shifts all logits equally: no ghost; the float32 margin keeps the radius finite but huge
    lin = nn.Linear(3, 4)
    r = rho_a(lin, torch.randn(5, 3), {"weight": torch.zeros(4, 3), "bias": torch.ones(4)})
    assert r.status == "ok" and r.rho_a >= math.pi / 1e-4 * 0.5 * 0.999
    # logits that do not move at all: unbounded (no ghost), JSON-safe
    r = radius_from_dlogits(torch.zeros(3, 4))
    assert r.status == "unbounded" and math.isinf(r.rho_a) and r.to_dict()["rho_a"] is None


def test_radius_from_dlogits_against_numpy_bruteforce():
    """Spread, bottleneck (sample, token), rounding margin and the non-finite index against plain numpy."""
    rng = np.random.default_rng(3)
    for shape in [(7, 4), (5, 3, 6)]:
        a = rng.normal(0, 2, shape).astype(np.float32)
        res = radius_from_dlogits(torch.tensor(a))
        s = a.max(-1) - a.min(-1)
        idx = np.unravel_index(int(s.argmax()), s.shape)
        da = float(s.max()) + 1e-4 * float(np.abs(a).max())  # float32 margin
        assert res.bottleneck == tuple(int(i) for i in idx)
        assert res.delta_a == pytest.approx(da, rel=1e-6) and res.rho_a == pytest.approx(math.pi / da, rel=1e-6)
        a[tuple(int(i) for i in idx[:-1]) + (1,) if len(shape) == 3 else (idx[0], 1)] = np.nan
        bad = radius_from_dlogits(torch.tensor(a))
        assert bad.status == "nonfinite" and bad.rho_a == 0.0 and bad.bottleneck == tuple(int(i) for i in idx)
