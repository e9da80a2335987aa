"""Correctness of the controller's radius on 30 architectures (issue #16): for every controlled step, the
recorded radius along the applied displacement equals ``π/Δ_a`` of an independent JVP computed here,
and the applied step is inside it.

Independent truth: ``torch.func.jvp`` (functorch's transform, not the dual tensors the controller uses; dual
tensors where functorch draws dropout differently) of ``functional_call`` on the model at θ_old, along the displacement measured here from parameter snapshots,
under the RNG state captured here before the training forward; where an op has no forward-AD formula
(``weight_norm``'s fused kernel, recurrent cells) a float64 central difference of a float64 copy.  Covered:
tied embeddings (GPT-style, causal SDPA), in-place ops (``clamp_``, ``tanh_``, ``relu_`` on a view),
SDPA with dropout, ``gumbel_softmax``, ``weight_norm``, ``TransformerEncoderLayer`` (dropout 0.1 and 0.0),
``nn.MultiheadAttention``, GroupNorm/InstanceNorm, pooling, strided/dilated/grouped convolutions with
BatchNorm, Linear→BatchNorm1d over ``(N, T, F)`` (T = F and T ≠ F), Python-random stochastic depth, RNNs,
a hand-built :class:`~nncertify.models.graph.Network`, float64, bf16 parameters and CPU autocast.

The controller runs with its default engine: the step's own autograd graph where it applies, the replay
elsewhere (``test_controller_graph_engine.py`` lists which architectures fall back and why), so this suite
checks both against the independent JVP."""

import copy
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jvp

from nncertify.certify.controller import SafeStepController


class Lambda(nn.Module):
    def __init__(self, f, **mods):
        super().__init__()
        self.f = f
        for k, v in mods.items():
            setattr(self, k, v)

    def forward(self, x):
        return self.f(self, x)


def seq(*m):
    return nn.Sequential(*m)


class GPT(nn.Module):
    """Tiny GPT: tied embedding/head, causal SDPA with dropout, LayerNorm, GELU MLP."""

    def __init__(self, v=13, d=16, drop=0.1):
        super().__init__()
        self.emb, self.pos = nn.Embedding(v, d), nn.Parameter(torch.randn(6, d) * 0.1)
        self.ln1, self.ln2, self.lnf = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = seq(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d), nn.Dropout(drop))
        self.head = nn.Linear(d, v, bias=False)
        self.head.weight = self.emb.weight
        self.drop = drop

    def forward(self, ids):
        b, t = ids.shape
        h = self.emb(ids) + self.pos[:t]
        q, k, v = self.qkv(self.ln1(h)).view(b, t, 3, 2, -1).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.drop if self.training else 0.0)
        h = h + self.proj(a.transpose(1, 2).reshape(b, t, -1))
        h = h + self.mlp(self.ln2(h))
        return self.head(self.lnf(h))


class MHABlock(nn.Module):
    def __init__(self, d=16, drop=0.1):
        super().__init__()
        self.inp, self.att = nn.Linear(4, d), nn.MultiheadAttention(d, 4, dropout=drop, batch_first=True)
        self.ln, self.ff, self.out = nn.LayerNorm(d), seq(nn.Linear(d, 32), nn.GELU(), nn.Dropout(drop), nn.Linear(32, d)), nn.Linear(d, 5)

    def forward(self, x):
        h = self.inp(x.view(x.shape[0], -1, 4))
        h = self.ln(h + self.att(h, h, h, need_weights=False)[0])
        return self.out((h + self.ff(h)).mean(1))


class TEL(nn.Module):
    def __init__(self, drop):
        super().__init__()
        self.inp = nn.Linear(4, 16)
        self.enc = nn.TransformerEncoderLayer(16, 4, 32, dropout=drop, batch_first=True)
        self.out = nn.Linear(16, 5)

    def forward(self, x):
        return self.out(self.enc(self.inp(x.view(x.shape[0], -1, 4)))[:, 0])


class SeqBN(nn.Module):
    """Linear → BatchNorm1d over positions: (N, T, F) with T channels."""

    def __init__(self, t, f):
        super().__init__()
        self.t, self.lin, self.bn, self.out = t, nn.Linear(16 // t, f), nn.BatchNorm1d(t), nn.Linear(t * f, 5)

    def forward(self, x):
        h = self.bn(self.lin(x.view(x.shape[0], self.t, -1)))
        return self.out(torch.relu(h).flatten(1))


class StochDepth(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.r, self.b = nn.Linear(16, 32), nn.Linear(32, 32), nn.Linear(32, 5)

    def forward(self, x):
        h = torch.relu(self.a(x))
        if self.training and random.random() < 0.6:
            h = h + torch.tanh(self.r(h))
        return self.b(h)


class Inplace(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(16, 32), nn.Linear(32, 5)

    def forward(self, x):
        h = self.a(x)
        h.clamp_(-0.7, 0.7)
        h = h * 1.5
        h[:, :8].relu_()
        t = self.b(h)
        return t.tanh_() + h[:, :5]


class RNNNet(nn.Module):
    def __init__(self, cell):
        super().__init__()
        self.rnn, self.out = cell(4, 12, batch_first=True), nn.Linear(12, 5)

    def forward(self, x):
        return self.out(self.rnn(x.view(x.shape[0], 4, 4))[0][:, -1])


def hand_network():
    from nncertify.models.graph import Network, Node
    g = torch.Generator().manual_seed(5)
    w1, w2 = torch.randn(24, 16, generator=g) * 0.3, torch.randn(5, 24, generator=g) * 0.3
    net = Network([Node("input", "input", (), {}, {"shape": (16,)}),
                   Node("fc1", "linear", ("input",), {"weight": w1, "bias": torch.zeros(24)}),
                   Node("act", "tanh", ("fc1",)),
                   Node("fc2", "linear", ("act",), {"weight": w2, "bias": torch.zeros(5)})])
    return net.to_module()


def img(c=1):
    return lambda x: x.view(x.shape[0], c, 4, 4)


ARCHS = {
    "mlp_relu": lambda: seq(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 5)),
    "mlp_ln_gelu_dropout": lambda: seq(nn.Linear(16, 32), nn.LayerNorm(32), nn.GELU(), nn.Dropout(0.2), nn.Linear(32, 5)),
    "mlp_bn": lambda: seq(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 5)),
    "acts_mix": lambda: seq(nn.Linear(16, 32), nn.SiLU(), nn.Linear(32, 32), nn.Softplus(), nn.Linear(32, 32),
                            nn.LeakyReLU(0.1), nn.Linear(32, 32), nn.ELU(), nn.PReLU(), nn.Linear(32, 5)),
    "cnn_bn_maxpool": lambda: Lambda(lambda s, x: s.n(x.view(-1, 1, 4, 4)), n=seq(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32, 5))),
    "cnn_groupnorm_adaptive": lambda: Lambda(lambda s, x: s.n(x.view(-1, 1, 4, 4)), n=seq(
        nn.Conv2d(1, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, 5))),
    "conv_strided_dilated_grouped_bn": lambda: Lambda(lambda s, x: s.n(x.view(-1, 2, 4, 2).repeat(1, 1, 1, 2)), n=seq(
        nn.Conv2d(2, 8, 3, padding=2, dilation=2), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=4), nn.BatchNorm2d(8), nn.Tanh(), nn.Flatten(), nn.Linear(32, 5))),
    "conv1d_bn": lambda: Lambda(lambda s, x: s.n(x.view(-1, 1, 16)), n=seq(
        nn.Conv1d(1, 8, 3, padding=1), nn.BatchNorm1d(8), nn.ReLU(), nn.AvgPool1d(2), nn.Flatten(), nn.Linear(64, 5))),
    "instancenorm_convtranspose": lambda: Lambda(lambda s, x: s.n(x.view(-1, 1, 4, 4)), n=seq(
        nn.Conv2d(1, 4, 3, padding=1), nn.InstanceNorm2d(4, affine=True), nn.ReLU(),
        nn.ConvTranspose2d(4, 2, 2, stride=2), nn.Upsample(scale_factor=0.5, mode="bilinear"), nn.Flatten(),
        nn.Linear(32, 5))),
    "mha_block_dropout": MHABlock,
    "transformer_layer_dropout": lambda: TEL(0.1),
    "transformer_layer_no_dropout": lambda: TEL(0.0),
    "gpt_tied_sdpa": GPT,
    "gpt_tied_no_dropout": lambda: GPT(drop=0.0),
    "sdpa_dropout": lambda: Lambda(lambda s, x: s.o(F.scaled_dot_product_attention(
        *[s.q(x).view(x.shape[0], 2, 4, 8)] * 3, dropout_p=0.3).reshape(x.shape[0], -1)), q=nn.Linear(16, 64),
        o=nn.Linear(64, 5)),
    "gumbel_softmax": lambda: Lambda(lambda s, x: s.o(F.gumbel_softmax(s.a(x), tau=0.7)), a=nn.Linear(16, 12),
                                     o=nn.Linear(12, 5)),
    "inplace_ops": Inplace,
    "linear_bn1d_T_eq_F": lambda: SeqBN(4, 4),
    "linear_bn1d_T_ne_F": lambda: SeqBN(4, 6),
    "weight_norm": lambda: seq(nn.utils.parametrizations.weight_norm(nn.Linear(16, 32)), nn.Tanh(), nn.Linear(32, 5)),
    "stochastic_depth": StochDepth,
    "shared_layer_twice": lambda: Lambda(lambda s, x: s.o(torch.tanh(s.l(torch.tanh(s.l(s.i(x)))))),
                                         i=nn.Linear(16, 16), l=nn.Linear(16, 16), o=nn.Linear(16, 5)),
    "embedding_bag": lambda: Lambda(lambda s, x: s.o(s.e((x.abs() * 3).long().clamp_max(19)).mean(1)),
                                    e=nn.Embedding(20, 8), o=nn.Linear(8, 5)),
    "gru": lambda: RNNNet(nn.GRU),
    "lstm": lambda: RNNNet(nn.LSTM),
    "hand_built_network": hand_network,
    "float64_mlp": lambda: seq(nn.Linear(16, 32), nn.LayerNorm(32), nn.Tanh(), nn.Linear(32, 5)).double(),
    "bf16_mlp": lambda: seq(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 5)).to(torch.bfloat16),
    "fp16_mlp": lambda: seq(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 5)).half(),
    "autocast_cnn": lambda: Lambda(lambda s, x: s.n(x.view(-1, 1, 4, 4)), n=seq(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(128, 5))),
}
LM = {"gpt_tied_sdpa", "gpt_tied_no_dropout"}


def batch(name, g):
    if name in LM:
        return torch.randint(0, 13, (4, 6), generator=g), torch.randint(0, 13, (4, 6), generator=g)
    x = torch.randn(12, 16, generator=g)
    dt = {"float64_mlp": torch.float64, "bf16_mlp": torch.bfloat16, "fp16_mlp": torch.float16}.get(name)
    return (x.to(dt) if dt else x), torch.randint(0, 5, (12,), generator=g)


def rng_state():
    return torch.get_rng_state(), random.getstate(), np.random.get_state()


def set_rng(s):
    torch.set_rng_state(s[0])
    random.setstate(s[1])
    np.random.set_state(s[2])


def independent_delta(model, x, old, disp, rng, z_train=None):
    """``max Δ_a`` along ``disp/‖disp‖`` by torch.func.jvp at θ_old under ``rng`` (or a float64 central
    difference when the model has no forward-AD formula), SDPA through its math kernel (the fused CPU
    kernel has no forward-AD formula).  Returns (Δ_a, max|a|, ‖disp‖, logits)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    nrm = math.sqrt(sum(float((d.double() ** 2).sum()) for d in disp.values()))
    up = lambda t: t.float() if t.dtype in (torch.float16, torch.bfloat16) else t  # noqa: E731
    bufs0 = {k: up(b.clone()) for k, b in model.named_buffers()}
    now = rng_state()
    try:
        set_rng(rng)
        tang = {k: up(d) / nrm for k, d in disp.items()}
        f = lambda P: functional_call(model, ({**P}, {k: b.clone() for k, b in bufs0.items()}), (up(x),),  # noqa: E731
                                      strict=False)
        try:
            torch.backends.mha.set_fastpath_enabled(False)
            with sdpa_kernel(SDPBackend.MATH):
                z, a = jvp(f, ({k: up(v) for k, v in old.items()},), (tang,))
                if z_train is not None and z.shape == z_train.shape and not torch.allclose(
                        z.double(), z_train.double(), rtol=1e-4, atol=1e-4):
                    # functorch draws some random numbers differently (TransformerEncoderLayer dropout):
                    # dual tensors through the module's own call instead
                    set_rng(rng)
                    import torch.autograd.forward_ad as fwAD
                    with fwAD.dual_level(), torch.no_grad():
                        P = {k: fwAD.make_dual(up(v), tang[k]) for k, v in old.items()}
                        z, a = fwAD.unpack_dual(f(P))
        except NotImplementedError:
            m64 = copy.deepcopy(model).double()
            h = 1e-6
            zs = []
            for sgn in (1, -1):
                set_rng(rng)
                P = {k: v.double() + sgn * h * disp[k].double() / nrm for k, v in old.items()}
                with torch.no_grad():
                    zs.append(functional_call(m64, (P, {k: b.double() for k, b in bufs0.items()}), (x.double() if x.is_floating_point() else x,),
                                              strict=False))
            a, z = (zs[0] - zs[1]) / (2 * h), (zs[0] + zs[1]) / 2
        finally:
            torch.backends.mha.set_fastpath_enabled(True)
    finally:
        set_rng(now)
    a = a.double()
    return float((a.amax(-1) - a.amin(-1)).max()), float(a.abs().max()), nrm, z.detach()


@pytest.mark.parametrize("name", list(ARCHS))
def test_controller_radius_matches_independent_jvp(name):
    torch.manual_seed(11)
    random.seed(11)
    m = ARCHS[name]()
    m.train()
    half = name in ("bf16_mlp", "fp16_mlp")  # Adam's second moments underflow in half precision: SGD there
    opt = torch.optim.SGD(m.parameters(), lr=0.5, momentum=0.9) if half else torch.optim.Adam(m.parameters(), lr=0.02)
    ctrl = SafeStepController(m, opt)
    g = torch.Generator().manual_seed(12)
    statuses = []
    for step in range(3):
        if step == 2:
            for grp in opt.param_groups:
                grp["lr"] = 5.0 if not half else 500.0  # a spike: the step must be clipped
        x, y = batch(name, g)
        rng = rng_state()
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == "autocast_cnn"):
            z = m(x)
        F.cross_entropy(z.float().reshape(-1, z.shape[-1]), y.reshape(-1)).backward()
        old = {k: p.detach().clone() for k, p in m.named_parameters()}
        opt.step()
        rec = ctrl.last
        statuses.append(rec.status)
        assert rec.kind == "certified", (step, rec.engine, rec.fallback_reason)
        assert rec.n_forwards == 1 and rec.status in ("ok", "clipped")
        disp = {k: (p.detach().float() - old[k].float()) if p.dtype in (torch.float16, torch.bfloat16)
                else p.detach() - old[k] for k, p in m.named_parameters()}
        da, amax, nrm, z_ind = independent_delta(m, x, old, disp, rng, z)
        # the independent JVP is of the training forward itself (same random numbers): same logits
        tol = 5e-2 if name in ("bf16_mlp", "fp16_mlp", "autocast_cnn") else 1e-4
        assert torch.allclose(z_ind.double(), z.detach().double(), rtol=tol, atol=tol)
        assert nrm == pytest.approx(rec.applied_norm, rel=1e-6)
        rho_ind = math.pi / da
        # sound: the recorded radius never exceeds the independent one ...
        assert rec.rho_applied <= rho_ind * (1 + 1e-6), (rec.rho_applied, rho_ind)
        # ... and tight: only the documented float32 margin (1e-4·max|a|) separates them
        assert rec.rho_applied >= math.pi / (da + 2e-4 * amax + 1e-9 * max(amax, 1.0)) * (1 - 1e-5)
        assert nrm * da / math.pi <= 1.0 + 1e-6  # the applied step is inside the independent radius
    assert statuses[-1] == "clipped", statuses
