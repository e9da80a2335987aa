"""Transparency invariant of the safe-step controller (issue #16): with the controller attached a training
run computes exactly what it computes without it -- losses, gradients, parameters, buffers, RNG consumption
(torch, Python ``random``, NumPy) and the modules' Python attributes -- apart from the step scaling.

Truth: the same run without the controller, compared bit for bit (``torch.equal``).  Unclipped runs use a
learning rate small enough that every step is inside its radius (asserted: ``status == "ok"``); clipped runs
are compared with a plain run that applies the recorded scales itself, ``θ_old + s·(θ_new − θ_old)``."""

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nncertify.certify.controller import SafeStepController


class STE(torch.autograd.Function):
    """Straight-through rounding: forward rounds, backward passes the gradient unchanged."""

    @staticmethod
    def forward(ctx, x):
        return torch.round(x * 4) / 4

    @staticmethod
    def backward(ctx, g):
        return g


class SteNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x):
        return self.b(STE.apply(torch.tanh(self.a(x))))


class NoGradNet(nn.Module):
    """A frozen-in-forward branch: its parameters are in the optimizer but get no gradient."""

    def __init__(self):
        super().__init__()
        self.a, self.f, self.b = nn.Linear(8, 16), nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x):
        with torch.no_grad():
            u = torch.tanh(self.f(x))
        return self.b(torch.relu(self.a(x)) + u)


class StochasticDepth(nn.Module):
    """The residual branch is taken with probability 0.6, decided by Python's ``random``; NumPy noise too."""

    def __init__(self):
        super().__init__()
        self.a, self.r, self.b = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 4)
        self.taken = 0

    def forward(self, x):
        h = torch.relu(self.a(x))
        if self.training and random.random() < 0.6:
            self.taken += 1
            h = h + torch.tanh(self.r(h))
        h = h * float(1.0 + 0.01 * np.random.rand())
        return self.b(h)


class Tempered(nn.Module):
    """A tensor attribute (temperature) the training loop reassigns between steps."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 4)
        self.temp = torch.tensor(1.0)

    def forward(self, x):
        return self.b(F.gelu(self.a(x))) / self.temp


def dropout_net():
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 32), nn.Dropout(0.5),
                         nn.GELU(), nn.Linear(32, 4))


def bn_net():
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))


class InplaceNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x):
        h = self.a(x)
        h.clamp_(-0.5, 0.5)  # in place on a Linear output
        h = h * 2.0
        v = h[:, :8]
        v.relu_()  # in place on a view whose base is used below
        t = self.b(h)
        t.tanh_()
        return t + F.dropout(h, 0.2)[:, :4]


class TiedLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(12, 8)
        self.mix = nn.Linear(8, 8)
        self.head = nn.Linear(8, 12, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids):
        return self.head(torch.tanh(self.mix(self.emb(ids))))


def mha_net():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(8, 16)
            self.att = nn.MultiheadAttention(16, 4, dropout=0.2, batch_first=True)
            self.out = nn.Linear(16, 4)

        def forward(self, x):
            h = self.inp(x.view(-1, 4, 2).repeat(1, 1, 4))
            h = h + self.att(h, h, h, need_weights=False)[0]
            return self.out(h.mean(1))
    return M()


MODELS = {"ste": SteNet, "no_grad": NoGradNet, "stochastic_depth": StochasticDepth, "tensor_attr": Tempered,
          "dropout": dropout_net, "batchnorm": bn_net, "inplace": InplaceNet, "tied": TiedLM, "mha_dropout": mha_net}


def batches(name, n=5):
    g = torch.Generator().manual_seed(7)
    out = []
    for _ in range(n):
        x = torch.randint(0, 12, (6, 5), generator=g) if name == "tied" else torch.randn(16, 8, generator=g)
        y = torch.randint(0, 12, (6, 5), generator=g) if name == "tied" else torch.randint(0, 4, (16,), generator=g)
        out.append((x, y))
    return out


def loss_of(z, y):
    return F.cross_entropy(z.reshape(-1, z.shape[-1]), y.reshape(-1))


def run(name, lr, with_ctrl, scales=None, opt_name="sgd"):
    torch.manual_seed(3)
    random.seed(3)
    np.random.seed(3)
    m = MODELS[name]()
    opt = (torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9) if opt_name == "sgd"
           else torch.optim.Adam(m.parameters(), lr=lr))
    ctrl = SafeStepController(m, opt) if with_ctrl else None
    trace = []
    for i, (x, y) in enumerate(batches(name)):
        if name == "tensor_attr":
            m.temp = torch.tensor(1.0 + 0.25 * i)  # reassigned between steps
        opt.zero_grad()
        loss = loss_of(m(x), y)
        loss.backward()
        grads = [None if p.grad is None else p.grad.clone() for p in m.parameters()]
        old = [p.detach().clone() for p in m.parameters()]
        opt.step()
        if scales is not None and scales[i] != 1.0:  # the plain run applies the controller's recorded scale
            with torch.no_grad():
                cur = [p.detach() for p in m.parameters()]
                delta = [c - o for c, o in zip(cur, old)]
                torch._foreach_copy_(cur, old)
                torch._foreach_add_(cur, delta, alpha=scales[i])
        trace.append((loss.detach().clone(), grads, [p.detach().clone() for p in m.parameters()],
                      [b.clone() for b in m.buffers()]))
    state = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy(),
             {k: v for k, v in vars(m).items() if not k.startswith("_") and k != "training"})
    return trace, state, ctrl


def assert_same(t1, t2):
    (tr1, st1), (tr2, st2) = t1, t2
    for (l1, g1, p1, b1), (l2, g2, p2, b2) in zip(tr1, tr2):
        assert torch.equal(l1, l2)
        for a, b in zip(g1, g2):
            assert (a is None and b is None) or torch.equal(a, b)
        assert all(torch.equal(a, b) for a, b in zip(p1, p2))
        assert all(torch.equal(a, b) for a, b in zip(b1, b2))
    assert torch.equal(st1[0], st2[0]) and st1[1] == st2[1] and np.array_equal(st1[2], st2[2])
    assert st1[3].keys() == st2[3].keys()
    for k in st1[3]:
        v1, v2 = st1[3][k], st2[3][k]
        assert torch.equal(v1, v2) if isinstance(v1, torch.Tensor) else v1 == v2


@pytest.mark.parametrize("name", list(MODELS))
def test_unclipped_training_is_bitwise_unchanged(name):
    tr1, st1, ctrl = run(name, 1e-4, True)
    tr0, st0, _ = run(name, 1e-4, False)
    assert all(r.status == "ok" and r.scale == 1.0 for r in ctrl.records), [r.status for r in ctrl.records]
    assert_same((tr1, st1), (tr0, st0))
    if name == "ste":  # the straight-through gradient survives (it was lost through an fx trace)
        assert float(tr1[0][1][0].abs().sum()) > 0
        assert all(r.kind == "estimate" and "STE" in r.fallback_reason for r in ctrl.records)
    elif name == "no_grad":
        assert all(g is None for g in tr1[0][1][2:4])  # the no_grad branch gets no gradient and does not move
        # the graph does not see the no_grad path: the graph engine refuses, the replay differentiates it
        assert all(r.kind == "certified" and r.engine == "forward_ad" and "grad mode off" in r.fallback_reason
                   for r in ctrl.records), [(r.engine, r.fallback_reason) for r in ctrl.records]
    elif name == "inplace":  # relu_ on a view whose base is reused: CopySlices, no graph rule -> the replay
        assert all(r.kind == "certified" and r.engine == "forward_ad" and "CopySlices" in r.fallback_reason
                   for r in ctrl.records), [(r.engine, r.fallback_reason) for r in ctrl.records]
    else:
        assert all(r.kind == "certified" and r.engine == "graph" for r in ctrl.records), \
            [(r.kind, r.fallback_reason) for r in ctrl.records]
    if name == "stochastic_depth":
        assert 0 < st1[3]["taken"] < 5  # Python-random branch taken on some steps only, as without controller


@pytest.mark.parametrize("name", ["dropout", "batchnorm", "stochastic_depth", "tied"])
def test_clipped_training_differs_only_by_the_recorded_scale(name):
    tr1, st1, ctrl = run(name, 3.0, True, opt_name="adam")
    scales = [r.scale for r in ctrl.records]
    assert sum(s < 1 for s in scales) >= 2, scales
    assert all(r.r_applied <= 1.0 for r in ctrl.records)
    tr0, st0, _ = run(name, 3.0, False, scales=scales, opt_name="adam")
    assert_same((tr1, st1), (tr0, st0))
