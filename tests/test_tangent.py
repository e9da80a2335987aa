"""Tangent-only forward mode (certify/tangent.py) and its use by the safe-step controller.

Independent truths: ``torch.func.jvp`` of the whole model (functorch, recomputes everything) and a float64
central finite difference of the model's own forward.  The engine runs on the cached values of a
forward it did not write, so the tests also check that the controller's capture leaves training
numerics bit-for-bit unchanged, that stale captures are refused, and that unsupported models fall back
(and say so in the record)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nncertify.certify.controller import SafeStepController
from nncertify.certify.ghosts import logit_jvp, rho_a
from nncertify.certify.tangent import TangentProgram, Unsupported, tangent_jvp


# ------------------------------------------------------------------ models
class MLPLN(nn.Module):
    def __init__(self, d_in=12, dim=16, n=5):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d_in, dim), nn.LayerNorm(dim), nn.GELU(),
                                  nn.Linear(dim, dim), nn.LayerNorm(dim), nn.GELU())
        self.head = nn.Linear(dim, n)

    def forward(self, x):
        return self.head(self.body(x))


class CNNBN(nn.Module):
    def __init__(self, dim=8, n=5):
        super().__init__()
        self.c1, self.b1 = nn.Conv1d(1, dim, 3, padding=1), nn.BatchNorm1d(dim)
        self.c2, self.b2 = nn.Conv1d(dim, dim, 3, padding=1), nn.BatchNorm1d(dim)
        self.head = nn.Linear(dim, n)

    def forward(self, x):
        h = F.relu(self.b1(self.c1(x.unsqueeze(1))))
        h = F.relu(self.b2(self.c2(h)))
        return self.head(h.mean(-1))


class TinyTransformer(nn.Module):
    """The benchmark's tiny transformer (one token per sample: the softmax is over one key)."""

    def __init__(self, d_in=12, dim=16, n=5):
        super().__init__()
        self.embed, self.qkv, self.out = nn.Linear(d_in, dim), nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.ffn1, self.ffn2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.n1, self.n2, self.head = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.Linear(dim, n)
        self.scale = dim ** -0.5

    def forward(self, x):
        h = self.embed(x).unsqueeze(1)
        q, k, v = self.qkv(self.n1(h)).chunk(3, -1)
        h = h + self.out(torch.softmax(q @ k.transpose(-2, -1) * self.scale, -1) @ v)
        h = h + self.ffn2(F.gelu(self.ffn1(self.n2(h))))
        return self.head(h.squeeze(1))


class Functional(nn.Module):
    """Functional ops in forward: attention over a real sequence (softmax over 4 keys), residuals, a raw
    parameter used with ``@`` (get_attr), products of two parameter-dependent tensors, cat, tanh, sigmoid,
    silu, log_softmax, constant padding, a frozen layer, a Conv2d + BatchNorm2d (eval) branch and an unknown
    leaf module (PReLU: the per-node functorch fallback)."""

    def __init__(self, d=8, n=5):
        super().__init__()
        self.inp = nn.Linear(3, d)
        self.W = nn.Parameter(torch.randn(d, d) / d ** 0.5)
        self.gate = nn.Linear(d, d)
        self.frozen = nn.Linear(d, d)
        self.frozen.requires_grad_(False)
        self.conv, self.bn = nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2)
        self.act = nn.PReLU()
        self.head = nn.Linear(2 * d + 2, n)

    def forward(self, x):                                  # x: (B, T=4, 3)
        h = self.inp(x)                                    # (B, T, d)
        att = torch.softmax(h @ self.W @ h.transpose(1, 2) / 3.0, dim=-1)
        h = h + att @ torch.tanh(h)
        g = torch.sigmoid(self.gate(h)) * F.silu(h)
        g = self.act(self.frozen(g) - 0.5 * g)
        c = F.pad(self.bn(self.conv(x.unsqueeze(1))), (1, 1), value=0.7)  # (B, 2, T, 5): constant padding
        pooled = torch.cat([g.mean(1), h.amax(1), c.mean((2, 3))], dim=-1)
        return F.log_softmax(self.head(pooled), dim=-1) + 1.0


class SeqLM(nn.Module):
    """Embedding + LayerNorm + Dropout(eval) -> sequence logits (B, T, V)."""

    def __init__(self, vocab=11, d=8):
        super().__init__()
        self.emb, self.ln, self.drop, self.out = nn.Embedding(vocab, d), nn.LayerNorm(d), nn.Dropout(0.3), \
            nn.Linear(d, vocab)

    def forward(self, ids):
        return self.out(self.drop(F.gelu(self.ln(self.emb(ids)), approximate="tanh")))


def _direction(m, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(p.shape, generator=g, dtype=p.dtype) for k, p in m.named_parameters() if p.requires_grad}


def _fd64(m, x, d, h=1e-6):
    """Central finite difference of the float64 model's own forward along d (buffers restored)."""
    m64 = _copy(m).double()
    bufs = [b.clone() for b in m64.buffers()]
    base = {k: p.detach().clone() for k, p in m64.named_parameters()}
    xd = x.double() if x.is_floating_point() else x

    def at(s):
        with torch.no_grad():
            for k, p in m64.named_parameters():
                p.copy_(base[k] + s * d[k].double() if k in d else base[k])
            out = m64(xd)
            for b, s0 in zip(m64.buffers(), bufs):
                b.copy_(s0)
            return out

    return (at(h) - at(-h)) / (2 * h)


def _snapshot(m, cls):
    """A fresh module with m's parameters and buffers (no hooks, no controller)."""
    c = cls()
    c.load_state_dict(m.state_dict())
    return c.train(m.training)


def _copy(m):
    import copy
    return copy.deepcopy(m)


def _data(name, seed=0, n=24):
    g = torch.Generator().manual_seed(seed)
    if name == "cnn":
        return torch.randn(n, 10, generator=g)
    if name == "functional":
        return torch.randn(n, 4, 3, generator=g)
    if name == "seq":
        return torch.randint(0, 11, (n, 6), generator=g)
    return torch.randn(n, 12, generator=g)


MODELS = {"mlp_ln": (MLPLN, "mlp"), "cnn_bn_train": (CNNBN, "cnn"), "transformer": (TinyTransformer, "mlp"),
          "functional": (Functional, "functional"), "seq_lm_eval_dropout": (SeqLM, "seq")}


# ------------------------------------------------------------------ engine vs functorch vs float64 FD
@pytest.mark.parametrize("name", list(MODELS))
def test_tangent_matches_functorch_and_fd64(name):
    cls, dk = MODELS[name]
    torch.manual_seed(3)
    m = cls()
    if name == "functional":
        m.bn.eval()  # eval-mode BatchNorm (running statistics) next to train-mode everything else
        with torch.no_grad():
            m.bn.running_mean.uniform_(-0.5, 0.5)
            m.bn.running_var.uniform_(0.5, 2.0)
    if name == "seq_lm_eval_dropout":
        m.drop.eval()
    x = _data(dk)
    d = _direction(m)
    bufs = [b.clone() for b in m.buffers()]
    z_ref, a_ref = logit_jvp(m, x, d)
    z, a = tangent_jvp(m, x, d)
    for b, b0 in zip(m.buffers(), bufs):  # BatchNorm statistics untouched
        assert torch.equal(b, b0)
    scale = float(a_ref.abs().max())
    assert scale > 0
    assert torch.allclose(z, z_ref, atol=1e-5 * float(z_ref.abs().max()), rtol=0)
    assert float((a - a_ref).abs().max()) <= 2e-5 * scale
    a_fd = _fd64(m, x, d)
    assert float((a.double() - a_fd).abs().max()) <= 1e-4 * scale
    # the engine in float64 agrees with the float64 finite difference to FD accuracy (independent truth)
    m64 = _copy(m).double()
    x64 = x.double() if x.is_floating_point() else x
    _, a64 = tangent_jvp(m64, x64, {k: t.double() for k, t in d.items()})
    assert float((a64 - a_fd).abs().max()) <= 1e-7 * scale


def test_transformer_single_key_softmax_is_structural_zero():
    torch.manual_seed(4)
    m = TinyTransformer()
    x = _data("mlp")
    prog = TangentProgram(m)
    out, cap = prog.capture(x)
    d = _direction(m)
    _, a = prog.tangent(cap, {}, d, lambda o: o)
    skipped = {p.node.name for p in prog.plans} - {p.node.name for p in prog._needed_plans(0, frozenset(
        i for i, p in prog._softmax_nodes))}
    assert "matmul" in skipped  # q @ k^T feeds only the 1-key softmax: never computed
    assert float((a - logit_jvp(m, x, d)[1]).abs().max()) <= 2e-5 * float(a.abs().max())


def test_train_mode_dropout_uses_the_forwards_own_mask():
    """Train-mode dropout: the tangent must use the mask of the captured forward.  Truth: a float64
    central difference where every evaluation re-draws the SAME mask (same RNG seed, same shapes)."""
    torch.manual_seed(5)
    m = nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Dropout(0.4), nn.Linear(16, 5))
    x = _data("mlp")
    d = _direction(m)
    prog = TangentProgram(m)
    torch.manual_seed(123)
    out, cap = prog.capture(x)
    _, a = prog.tangent(cap, {}, d, lambda o: o)
    m64 = _copy(m).double()
    base = {k: p.detach().clone() for k, p in m64.named_parameters()}

    def at(s):
        with torch.no_grad():
            for k, p in m64.named_parameters():
                p.copy_(base[k] + s * d[k].double())
            torch.manual_seed(123)
            return m64(x.double())

    fd = (at(1e-6) - at(-1e-6)) / 2e-6
    assert float((a.double() - fd).abs().max()) <= 1e-4 * float(fd.abs().max())


# ------------------------------------------------------------------ what is refused
class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1, self.l2 = nn.Linear(12, 8), nn.Linear(8, 5)

    def forward(self, x):
        h = self.l1(x)
        if h.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            h = -h
        return self.l2(torch.relu(h))


class InPlace(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1, self.l2 = nn.Linear(12, 8), nn.Linear(8, 5)

    def forward(self, x):
        h = self.l1(x)
        y = self.l2(h)
        h.mul_(2.0)  # mutates a value another node already used
        return y + self.l2(h)


def test_unsupported_models_are_refused():
    with pytest.raises(Unsupported, match="trace"):
        TangentProgram(DataDependent())
    with pytest.raises(Unsupported, match="in-place"):
        TangentProgram(InPlace())
    with pytest.raises(Unsupported, match="random"):
        TangentProgram(nn.Sequential(nn.Linear(3, 3), nn.AlphaDropout(0.2)))


def test_stale_capture_is_refused():
    torch.manual_seed(6)
    m = nn.Sequential(nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 5))
    prog = TangentProgram(m)
    out, cap = prog.capture(_data("mlp"))
    kept = next(v for v in cap.vals if isinstance(v, torch.Tensor) and not isinstance(v, nn.Parameter))
    kept.add_(1.0)  # someone changes a cached activation after the forward
    with pytest.raises(Unsupported, match="in place"):
        prog.tangent(cap, {}, _direction(m), lambda o: o)


# ------------------------------------------------------------------ the controller
def _train(m, opt, x, y, steps):
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        opt.step()


@pytest.mark.parametrize("name", ["mlp_ln", "cnn_bn_train", "transformer"])
def test_controller_tangent_engine_equals_functorch_engine(name):
    """Along one trajectory: every step's rho_a from the tangent engine equals rho_a recomputed by the
    whole-model functorch JVP at a copy of θ_old (train mode: BatchNorm batch statistics)."""
    cls, dk = MODELS[name]
    x = _data(dk, seed=7, n=32)
    y = torch.randint(0, 5, (32,), generator=torch.Generator().manual_seed(7))
    torch.manual_seed(8)
    m = cls()
    opt = torch.optim.Adam(m.parameters(), lr=0.5)  # large: most steps are clipped
    ctrl = SafeStepController(m, opt)
    for _ in range(4):
        old = _snapshot(m, cls)
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        opt.step()
        disp = {k: p.detach() - q.detach() for (k, p), (_, q) in zip(m.named_parameters(), old.named_parameters())}
        ref = rho_a(old, x, disp)  # functorch, certified
        rec = ctrl.last
        assert rec.engine == "tangent" and rec.kind == ref.kind == "certified" and rec.fallback_reason == ""
        assert rec.rho_a == pytest.approx(ref.rho_a, rel=1e-5)
        assert rec.bottleneck == list(ref.bottleneck) and rec.r_applied <= 1.0
    assert any(r.status == "clipped" for r in ctrl.records)
    ctrl.detach()
    assert "forward" not in m.__dict__  # the capture wrapper is removed
    # the functorch engine is still selectable and labelled
    c2 = SafeStepController(m, opt, engine="functorch")
    _train(m, opt, x, y, 1)
    assert c2.last.engine == "functorch" and c2.last.kind == "certified"


def test_capture_leaves_training_bit_for_bit_unchanged():
    x = _data("cnn", seed=9, n=16)
    y = torch.randint(0, 5, (16,), generator=torch.Generator().manual_seed(9))
    outs = []
    for attach in (True, False):
        torch.manual_seed(10)
        m = CNNBN()
        opt = torch.optim.SGD(m.parameters(), lr=1e-4)  # tiny: never clipped, so both runs take the same steps
        ctrl = SafeStepController(m, opt) if attach else None
        logits, grads = [], []
        for _ in range(3):
            opt.zero_grad()
            z = m(x)
            F.cross_entropy(z, y).backward()
            logits.append(z.detach().clone())
            grads.append([p.grad.clone() for p in m.parameters()])
            opt.step()
        if ctrl is not None:
            assert all(r.status == "ok" and r.engine == "tangent" for r in ctrl.records)
        outs.append((logits, grads, [p.detach().clone() for p in m.parameters()], [b.clone() for b in m.buffers()]))
    (l1, g1, p1, b1), (l2, g2, p2, b2) = outs
    assert all(torch.equal(a, b) for a, b in zip(l1, l2))
    assert all(torch.equal(a, b) for ga, gb in zip(g1, g2) for a, b in zip(ga, gb))
    assert all(torch.equal(a, b) for a, b in zip(p1, p2))
    assert all(torch.equal(a, b) for a, b in zip(b1, b2))


def test_controller_falls_back_and_says_why():
    torch.manual_seed(11)
    x, y = _data("mlp", n=16), torch.randint(0, 5, (16,))
    m = DataDependent()
    opt = torch.optim.Adam(m.parameters(), lr=1.0)
    ctrl = SafeStepController(m, opt)
    _train(m, opt, x, y, 2)
    assert all(r.engine == "functorch" and "trace" in r.fallback_reason for r in ctrl.records)
    assert all(r.kind == "certified" and r.r_applied <= 1.0 for r in ctrl.records)
    with pytest.raises(Exception, match="engine='tangent'"):
        c2 = SafeStepController(m, torch.optim.SGD(m.parameters(), lr=0.1), engine="tangent")
        _train(m, c2.optimizer, x, y, 1)


def test_parameters_changed_after_forward_fall_back():
    torch.manual_seed(12)
    x, y = _data("mlp", n=16), torch.randint(0, 5, (16,))
    m = MLPLN()
    opt = torch.optim.Adam(m.parameters(), lr=1.0)
    ctrl = SafeStepController(m, opt)
    opt.zero_grad()
    F.cross_entropy(m(x), y).backward()
    with torch.no_grad():
        m.head.bias.add_(0.1)  # θ moved after the captured forward: its activations are not θ_old's
    opt.step()
    rec = ctrl.last
    assert rec.engine == "functorch" and "changed" in rec.fallback_reason
    assert rec.kind == "certified" and rec.r_applied <= 1.0


def test_controller_get_attr_parameter_and_frozen_layer_use_theta_old():
    """The Functional model reads a raw parameter with ``@`` and has a frozen layer; the optimizer writes
    θ_new before the tangent runs, so the engine must use θ_old (compare with the functorch engine)."""
    x = _data("functional", seed=13, n=16)
    y = torch.randint(0, 5, (16,), generator=torch.Generator().manual_seed(13))
    recs = {}
    for engine in ("auto", "functorch"):
        torch.manual_seed(14)
        m = Functional()
        opt = torch.optim.SGD(m.parameters(), lr=3.0, momentum=0.9)
        ctrl = SafeStepController(m, opt, engine=engine)
        _train(m, opt, x, y, 3)
        recs[engine] = ctrl.records
    assert [r.engine for r in recs["auto"]] == ["tangent"] * 3
    for r1, r2 in zip(recs["auto"], recs["functorch"]):
        assert r1.rho_a == pytest.approx(r2.rho_a, rel=1e-4)
        assert r1.r_applied <= 1.0


def test_clip_mode_with_tangent_engine_never_exceeds_radius_fd64():
    """Independent check of the certified records: the applied displacement is at most the radius
    computed from a float64 central finite difference at θ_old."""
    torch.manual_seed(15)
    m = MLPLN()
    x, y = _data("mlp", seed=15, n=32), torch.randint(0, 5, (32,))
    opt = torch.optim.Adam(m.parameters(), lr=2.0)
    ctrl = SafeStepController(m, opt, mode="clip")
    for _ in range(4):
        old = _snapshot(m, MLPLN)
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        opt.step()
        disp = {k: p.detach() - q.detach() for (k, p), (_, q) in zip(m.named_parameters(), old.named_parameters())}
        nrm = math.sqrt(sum(float((t.double() ** 2).sum()) for t in disp.values()))
        a = _fd64(old, x, {k: t / nrm for k, t in disp.items()})
        rho64 = math.pi / float((a.max(1).values - a.min(1).values).max())
        rec = ctrl.last
        assert rec.engine == "tangent" and rec.r_applied <= 1.0
        assert nrm <= rho64 * (1 + 1e-4)


def test_copies_and_pickles_of_a_controlled_module_use_their_own_forward(tmp_path):
    import copy
    torch.manual_seed(16)
    m = MLPLN()
    x, y = _data("mlp", n=8), torch.randint(0, 5, (8,))
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    ctrl = SafeStepController(m, opt)
    _train(m, opt, x, y, 1)
    c = copy.deepcopy(m)
    with torch.no_grad():
        c.head.weight.add_(1.0)  # the copy's own parameters must be used by the copy's forward
    ref = _snapshot(c, MLPLN)
    assert torch.equal(c(x), ref(x)) and not torch.equal(c(x), m(x))
    torch.save(m, tmp_path / "m.pt")
    m2 = torch.load(tmp_path / "m.pt", weights_only=False)
    assert torch.equal(m2(x), m(x))
    assert ctrl.last.engine == "tangent"


class Scheduled(nn.Module):
    """Reads a plain Python attribute in forward (a scheduled temperature): torch.fx freezes it."""

    def __init__(self):
        super().__init__()
        self.l1, self.l2 = nn.Linear(12, 8), nn.Linear(8, 5)
        self.temp = 1.0

    def forward(self, x):
        return self.l2(torch.tanh(self.l1(x) / self.temp))


class PyRandom(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(12, 5)

    def forward(self, x):
        import random
        return self.l1(x) * random.uniform(0.5, 1.5)  # Python randomness: the trace freezes one draw


def test_changed_python_attribute_gets_a_new_trace():
    torch.manual_seed(17)
    m = Scheduled()
    x, y = _data("mlp", n=16), torch.randint(0, 5, (16,))
    opt = torch.optim.Adam(m.parameters(), lr=1.0)
    ctrl = SafeStepController(m, opt)
    for temp in (1.0, 0.25):
        m.temp = temp
        old = _snapshot(m, Scheduled)
        old.temp = temp
        z_ref = old(x)
        opt.zero_grad()
        z = m(x)
        assert torch.equal(z, z_ref)  # the training forward uses the current temperature
        F.cross_entropy(z, y).backward()
        opt.step()
        disp = {k: p.detach() - q.detach() for (k, p), (_, q) in zip(m.named_parameters(), old.named_parameters())}
        assert ctrl.last.engine == "tangent"
        assert ctrl.last.rho_a == pytest.approx(rho_a(old, x, disp).rho_a, rel=1e-5)
    assert sum(isinstance(v, TangentProgram) for v in ctrl._programs.values()) == 2


def test_trace_that_does_not_reproduce_the_forward_is_not_used():
    torch.manual_seed(18)
    m = PyRandom()
    x, y = _data("mlp", n=16), torch.randint(0, 5, (16,))
    opt = torch.optim.Adam(m.parameters(), lr=1.0)
    ctrl = SafeStepController(m, opt)
    _train(m, opt, x, y, 2)
    assert all(r.engine == "functorch" and "reproduce" in r.fallback_reason for r in ctrl.records)
    assert all(r.kind == "certified" for r in ctrl.records)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_tangent_pass_matches_eager_and_functorch(backend):
    """``compile=...``: the same rules through torch.compile, traced as one graph (no graph breaks).
    ``aot_eager`` checks the tracing quickly; Inductor code generation takes ~15 s, so it runs only with
    NNCERTIFY_SLOW_TESTS=1."""
    import os
    if backend == "inductor" and not os.environ.get("NNCERTIFY_SLOW_TESTS"):
        pytest.skip("Inductor compilation is slow; set NNCERTIFY_SLOW_TESTS=1")
    import torch._dynamo
    torch.manual_seed(19)
    m = MLPLN(dim=8)
    x = _data("mlp", n=16)
    d = _direction(m)
    prog = TangentProgram(m, compile=backend if backend != "inductor" else True)
    torch._dynamo.reset()
    out, cap = prog.capture(x)
    _, a_c = prog.tangent(cap, {}, d, lambda o: o)
    if prog.compile_error:
        pytest.skip(f"torch.compile unavailable here: {prog.compile_error}")
    _, a_c2 = prog.tangent(cap, {}, d, lambda o: o)  # the cached compiled pass
    _, a_ref = logit_jvp(m, x, d)
    scale = float(a_ref.abs().max())
    assert float((a_c - a_ref).abs().max()) <= 2e-5 * scale and torch.equal(a_c, a_c2)
    assert not prog.compile_error
    if backend == "aot_eager":
        f = next(iter(prog._compiled.values()))
        with torch.no_grad():
            expl = torch._dynamo.explain(f._torchdynamo_orig_callable)(list(cap.vals), {}, d, cap.saved)
        assert expl.graph_break_count == 0


def test_controller_with_train_mode_dropout_uses_tangent_engine():
    """The first-capture check replays the forward with the same RNG state, so a dropout model is accepted;
    the radius uses the training forward's own mask (see test_train_mode_dropout_uses_the_forwards_own_mask)."""
    torch.manual_seed(20)
    m = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 5))
    x, y = _data("mlp", n=16), torch.randint(0, 5, (16,))
    opt = torch.optim.Adam(m.parameters(), lr=1.0)
    ctrl = SafeStepController(m, opt)
    torch.manual_seed(21)
    _train(m, opt, x, y, 3)
    assert [r.engine for r in ctrl.records] == ["tangent"] * 3
    assert all(r.kind == "certified" and r.r_applied <= 1.0 for r in ctrl.records)
