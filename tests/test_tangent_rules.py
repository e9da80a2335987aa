"""Per-rule checks of the tangent engine's fused rules (certify/tangent.py), added with issue #6:

* LayerNorm through PyTorch's backward kernel (symmetric input Jacobian), with and without the forward's
  saved statistics, affine / no affine / no bias, multi-dimensional ``normalized_shape``, data input;
* a Linear / Conv1d / Conv2d on data followed by a train-mode BatchNorm, collapsed into one affine call with
  closed-form batch reductions (patch mean and covariance), incl. the batch-statistics term;
* activations written over a LayerNorm/BatchNorm tangent they alone consume; ``consume=True`` captures.

Independent truths: ``torch.func.jvp`` of the whole model (recomputes everything with PyTorch's own forward
AD) and a float64 central finite difference of the model's own forward; the engine run in float64 must agree
with the finite difference to FD accuracy.  No expected value comes from the code under test."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nncertify.certify.ghosts import logit_jvp
from nncertify.certify.tangent import TangentProgram, tangent_jvp
from test_tangent import _fd64  # the float64 central difference of the model's own forward (one helper)


def _direction(m, seed=1, skip=()):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(p.shape, generator=g, dtype=p.dtype) for k, p in m.named_parameters()
            if p.requires_grad and k not in skip}


def _engine(m, x, d, grad=True):
    """(z, ż) from the engine on a capture taken with autograd on (BN/LN statistics saved by autograd, as
    in training) or off (statistics recomputed by the rules).  Buffers are restored."""
    prog = TangentProgram(m)
    bufs = [b.detach().clone() for b in m.buffers()]
    with torch.set_grad_enabled(grad):
        out, cap = prog.capture(x)
    with torch.no_grad():
        for b, b0 in zip(m.buffers(), bufs):
            b.copy_(b0)
    assert bool(cap.saved) == grad  # the saved-statistics path is exercised iff autograd ran
    d0 = {k: t.clone() for k, t in d.items()}
    vals0 = [v.clone() if isinstance(v, torch.Tensor) else v for v in cap.vals]
    z, a = prog.tangent(cap, {}, d, lambda o: o)
    # the rules never write into the direction or into a cached value (in-place rules own their tensors)
    assert all(torch.equal(d[k], d0[k]) for k in d)
    assert all(torch.equal(v, v0) for v, v0 in zip(cap.vals, vals0) if isinstance(v, torch.Tensor))
    return prog, z, a


def _check(m, x, d, grad=True, rtol=2e-5):
    """Engine vs torch.func (float32) and vs a float64 central difference; engine in float64 vs the FD."""
    bufs = [b.clone() for b in m.buffers()]
    prog, z, a = _engine(m, x, d, grad)
    _, a_ref = logit_jvp(m, x, d)
    for b, b0 in zip(m.buffers(), bufs):
        assert torch.equal(b, b0)
    scale = float(a_ref.abs().max())
    assert scale > 0
    assert float((a - a_ref).abs().max()) <= rtol * scale
    a_fd = _fd64(m, x, d)
    assert float((a.double() - a_fd).abs().max()) <= 1e-4 * scale
    m64 = copy.deepcopy(m).double()
    _, a64, = _engine(m64, x.double(), {k: t.double() for k, t in d.items()}, grad)[1:]
    assert float((a64 - a_fd).abs().max()) <= 1e-7 * scale
    return prog


# ------------------------------------------------------------------ LayerNorm via the backward kernel
class LNNet(nn.Module):
    def __init__(self, shape=(6,), affine=True, bias=True, first=False):
        super().__init__()
        self.first = first
        self.inp = nn.Linear(5, 6)
        self.ln = nn.LayerNorm(shape, elementwise_affine=affine, bias=bias)
        self.head = nn.Linear(6 if len(shape) == 1 else shape[-1], 3)

    def forward(self, x):
        h = x if self.first else self.inp(x)
        return self.head(F.gelu(self.ln(h)))


@pytest.mark.parametrize("grad", [True, False])
@pytest.mark.parametrize("case", ["affine", "no_affine", "no_bias", "data_input", "2d_shape", "3d_input"])
def test_layer_norm_rule(case, grad):
    torch.manual_seed(30)
    g = torch.Generator().manual_seed(31)
    if case == "2d_shape":
        m = LNNet(shape=(4, 6))
        x = torch.randn(7, 4, 5, generator=g)            # LN over the last two dims of (7, 4, 6)
    elif case == "3d_input":
        m = LNNet()
        x = torch.randn(7, 3, 5, generator=g)
    elif case == "data_input":
        m = LNNet(first=True)                            # LN on data: only Δγ⊙n̂ + Δβ (no input tangent)
        x = torch.randn(9, 6, generator=g) * 3 + 2
    else:
        m = LNNet(affine=case != "no_affine", bias=case != "no_bias")
        x = torch.randn(9, 5, generator=g)
    if m.ln.weight is not None:
        with torch.no_grad():
            m.ln.weight.uniform_(0.5, 1.5)
            if m.ln.bias is not None:
                m.ln.bias.uniform_(-0.5, 0.5)
    _check(m, x, _direction(m), grad)


def test_layer_norm_rule_on_a_single_vector_keeps_the_direction_intact():
    """1-D input with only Δβ: the tangent is Δβ itself in value -- it must be a copy, never an alias that a
    later in-place rule (here the GELU written over its LayerNorm's tangent) could overwrite."""
    torch.manual_seed(32)
    m = nn.Sequential(nn.LayerNorm(6), nn.GELU(), nn.Linear(6, 3))
    x = torch.randn(6)
    d = {"0.bias": torch.randn(6)}
    d0 = {k: t.clone() for k, t in d.items()}
    z, a = tangent_jvp(m, x, d)
    assert torch.equal(d["0.bias"], d0["0.bias"])
    _, a_ref = torch.func.jvp(lambda b: torch.func.functional_call(m, {"0.bias": b}, (x,)),
                              (m[0].bias.detach(),), (d0["0.bias"],))
    assert float((a - a_ref).abs().max()) <= 2e-5 * float(a_ref.abs().max())


# ------------------------------------------------------------------ affine layer on data -> train-mode BN
class AffineBN(nn.Module):
    def __init__(self, kind, bias=True, bn_affine=True):
        super().__init__()
        self.kind = kind
        if kind == "linear":
            self.lin, self.bn, n = nn.Linear(4, 8, bias=bias), nn.BatchNorm1d(8, affine=bn_affine), 8
        elif kind == "conv1d":
            self.lin = nn.Conv1d(2, 8, 3, padding=2, stride=2, dilation=2, bias=bias)
            self.bn, n = nn.BatchNorm1d(8, affine=bn_affine), 8
        else:
            self.lin = nn.Conv2d(2, 12, (3, 2), padding=(1, 1), stride=(2, 1), dilation=(1, 2), bias=bias)
            self.bn, n = nn.BatchNorm2d(12, affine=bn_affine), 12
        self.head = nn.Linear(n, 3)

    def forward(self, x):
        if self.kind == "linear":
            h = self.bn(self.lin(x.flatten(1)))          # a parameter-free op on the data first
        else:
            h = self.bn(self.lin(x)).flatten(2).mean(-1)
        return self.head(torch.relu(h))


def _affine_data(kind, n=12, seed=33):
    g = torch.Generator().manual_seed(seed)
    shape = {"linear": (n, 2, 2), "conv1d": (n, 2, 11), "conv2d": (n, 2, 6, 5)}[kind]
    return torch.randn(*shape, generator=g) * 2 + 0.5


@pytest.mark.parametrize("kind", ["linear", "conv1d", "conv2d"])
@pytest.mark.parametrize("variant", ["plain", "no_bias", "bn_no_affine", "frozen_weight", "only_bn_params"])
def test_affine_layer_on_data_then_train_batch_norm(kind, variant):
    torch.manual_seed(34)
    m = AffineBN(kind, bias=variant != "no_bias", bn_affine=variant != "bn_no_affine")
    if m.bn.affine:
        with torch.no_grad():
            m.bn.weight.uniform_(0.5, 1.5)
            m.bn.bias.uniform_(-0.5, 0.5)
    skip = {"frozen_weight": ("lin.weight",), "only_bn_params": ("lin.weight", "lin.bias")}.get(variant, ())
    d = _direction(m, skip=skip)
    prog = _check(m, _affine_data(kind), d)
    bn_idx = next(p.idx for p in prog.plans if p.kind == "bn")
    assert bn_idx in prog._fused  # the fused rule is the one that was checked


def test_affine_bn_rule_not_fused_where_it_does_not_pay_and_still_exact():
    torch.manual_seed(35)
    m = AffineBN("linear")
    m.lin, m.bn, m.head = nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 3)  # K = 4 > 3 channels
    prog = _check(m, _affine_data("linear"), _direction(m))
    assert not prog._fused


def test_affine_bn_rule_in_eval_mode_uses_running_statistics():
    """Eval-mode BN (running statistics, no batch term): the fused closure falls back to the plain rules."""
    torch.manual_seed(36)
    m = AffineBN("conv1d")
    with torch.no_grad():
        m.bn.running_mean.uniform_(-0.5, 0.5)
        m.bn.running_var.uniform_(0.5, 2.0)
    m.bn.eval()
    _check(m, _affine_data("conv1d"), _direction(m), grad=False)


def test_affine_bn_rule_with_a_shifted_input_matches_float64():
    """Inputs with a mean much larger than their spread (cancellation in h − μ): the closed-form reductions
    (float64 patch covariance) stay within the certificate's float32 margin."""
    torch.manual_seed(37)
    m = AffineBN("conv1d")
    x = _affine_data("conv1d") * 0.1 + 30.0
    _check(m, x, _direction(m))


# ------------------------------------------------------------------ in-place activations, consumed captures
def test_activation_over_its_normalization_tangent_and_consume():
    torch.manual_seed(38)
    m = nn.Sequential(nn.Linear(5, 8), nn.LayerNorm(8), nn.GELU(), nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU(),
                      nn.Linear(8, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 3))
    x = torch.randn(10, 5, generator=torch.Generator().manual_seed(39))
    d = _direction(m)
    _check(m, x, d)  # also asserts that no cached value and no direction tensor was written to
    prog = TangentProgram(m)
    out, cap = prog.capture(x)
    _, a1 = prog.tangent(cap, {}, d, lambda o: o)
    _, a2 = prog.tangent(cap, {}, d, lambda o: o, consume=True)
    assert torch.equal(a1, a2)
    assert cap.vals == () and not cap.stale()
    # with consume=True each cached value is released after the last rule reading it: when the head's rule
    # runs, the activations of the first layers are gone (captured without autograd, so only the engine
    # holds them)
    import weakref
    prog2 = TangentProgram(m)
    with torch.no_grad():
        out2, cap2 = prog2.capture(x)
    early = [weakref.ref(cap2.vals[i]) for i in (1, 2)]  # outputs of the first Linear and LayerNorm
    assert all(r() is not None for r in early)
    head = prog2.plans[-1]
    alive = []
    run = head.run
    head.run = lambda *args: (alive.append([r() is not None for r in early]), run(*args))[1]
    _, a3 = prog2.tangent(cap2, {}, d, lambda o: o, consume=True)
    assert alive == [[False, False]] and torch.equal(a3, a1)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_fused_rules_under_torch_compile(backend):
    """The compiled pass (Linear products as batched GEMMs, fused BN rule traced by Dynamo) equals the eager
    rules and torch.func.  Inductor code generation is slow: only with NNCERTIFY_SLOW_TESTS=1."""
    import os
    if backend == "inductor" and not os.environ.get("NNCERTIFY_SLOW_TESTS"):
        pytest.skip("Inductor compilation is slow; set NNCERTIFY_SLOW_TESTS=1")
    import torch._dynamo
    torch.manual_seed(42)
    m = AffineBN("conv1d")
    x = _affine_data("conv1d")
    d = _direction(m)
    torch._dynamo.reset()
    prog = TangentProgram(m, compile=backend if backend != "inductor" else True)
    out, cap = prog.capture(x)
    _, a_c = prog.tangent(cap, {}, d, lambda o: o)
    if prog.compile_error:
        pytest.skip(f"torch.compile unavailable here: {prog.compile_error}")
    _, a_c2 = prog.tangent(cap, {}, d, lambda o: o)
    _, a_ref = logit_jvp(m, x, d)
    assert prog._fused and not prog.compile_error and torch.equal(a_c, a_c2)
    assert float((a_c - a_ref).abs().max()) <= 2e-5 * float(a_ref.abs().max())


class ShapeOps(nn.Module):
    """Shape ops, indexing and scalar arithmetic on tangents (the engine's specialized closures)."""

    def __init__(self):
        super().__init__()
        self.inp, self.mix, self.head = nn.Linear(6, 12), nn.Linear(4, 4), nn.Linear(7, 3)

    def forward(self, x):                                   # x: (B, 6)
        h = self.inp(x)                                     # (B, 12)
        a, b, c = h.chunk(3, dim=-1)                        # getitem on a tuple
        u = self.mix(a.view(-1, 2, 2).transpose(1, 2).reshape(-1, 4))
        v = (b - 0.5) * 2.0 + c / 3.0 - u                   # sub/add with scalars and tensors
        w = torch.flatten(v.unsqueeze(1), 1)[:, 1:]         # a function, a method, a slice
        s = (h[..., :1] + 1).contiguous()                   # (B, 1)
        return self.head(torch.cat([torch.tanh(v), w, s * 0 + s], dim=-1)[:, 1:])


def test_shape_ops_and_scalar_arithmetic():
    torch.manual_seed(43)
    m = ShapeOps()
    x = torch.randn(9, 6, generator=torch.Generator().manual_seed(44))
    prog = _check(m, x, _direction(m), grad=False)
    general = {p.node.name for p in prog.plans if getattr(p.run, "__name__", "") == "<lambda>"
               and p.kind in ("linear_op", "func")}
    assert general == {"cat"}  # every other shape op / getitem / +,-,×,÷ here has a specialized closure


@pytest.mark.parametrize("functional", [False, True])
def test_compiled_gelu_rule_from_the_forward_output(functional):
    """Under torch.compile GELU'(h) = Φ(h) + hφ(h) takes Φ = y/h from the forward's output: check it at
    h = 0, subnormal and tiny h, large |h| (y/h underflows) against torch.func on the same inputs."""
    import torch._dynamo

    class G(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.head = nn.Linear(1, 16, bias=False), nn.Linear(16, 2)

        def forward(self, x):
            h = self.lin(x)
            return self.head(F.gelu(h) if functional else self.act(h))

    m = G()
    m.act = nn.GELU()
    vals = torch.tensor([0.0, 1e-45, -1e-38, 1e-31, -1e-29, 1e-8, -0.3, 0.7, 2.0, -5.0, 5.5, -13.0, -14.0,
                         -40.0, 30.0, 1e30])
    with torch.no_grad():
        m.lin.weight.copy_(vals[:, None])
    x = torch.ones(3, 1)
    d = _direction(m)
    torch._dynamo.reset()
    prog = TangentProgram(m, compile="aot_eager")
    out, cap = prog.capture(x)
    _, a = prog.tangent(cap, {}, d, lambda o: o)
    assert not prog.compile_error
    _, a_ref = logit_jvp(m, x, d)
    assert torch.isfinite(a).all()
    assert float((a - a_ref).abs().max()) <= 2e-5 * float(a_ref.abs().max())
    # and the per-element derivative itself, against float64 autograd on the same h
    h = vals.double().requires_grad_()
    g64, = torch.autograd.grad(F.gelu(h).sum(), h)
    hd = torch.ones(16)
    from nncertify.certify.tangent import _act_rule
    comp = torch.compile(lambda hh, yy, t: _act_rule("gelu", hh, yy, t), backend="aot_eager")
    mine = comp(vals, F.gelu(vals), hd)
    assert float((mine.double() - g64).abs().max()) <= 1e-6


def test_fused_layer_output_is_not_kept_by_the_capture():
    """The fused rule reads the data, not the layer's output: the capture does not keep that output alive
    (autograd frees it during the backward), and the fallback without saved statistics recomputes it."""
    m = AffineBN("conv1d")
    prog = TangentProgram(m)
    conv_idx = next(p.idx for p in prog.plans if p.kind == "conv")
    bn_idx = next(p.idx for p in prog.plans if p.kind == "bn")
    assert prog._fused == {bn_idx: conv_idx} and conv_idx not in prog.keep
    _, cap = prog.capture(_affine_data("conv1d"))
    assert cap.vals[conv_idx] is None


def test_functional_relu_after_batch_norm_reads_only_its_output():
    """``F.relu(x)`` is traced with ``inplace=False``: its rule reads its output only, so the BatchNorm output
    feeding it is not kept by the capture, and its tangent is written over the BatchNorm's (checked exact)."""

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.b1 = nn.Conv1d(1, 4, 3, padding=1), nn.BatchNorm1d(4)
            self.c2, self.b2 = nn.Conv1d(4, 4, 3, padding=1), nn.BatchNorm1d(4)
            self.head = nn.Linear(4, 3)

        def forward(self, x):
            h = F.relu(self.b1(self.c1(x.unsqueeze(1))))
            return self.head(F.relu(self.b2(self.c2(h))).mean(-1))

    torch.manual_seed(45)
    m = M()
    x = torch.randn(10, 7, generator=torch.Generator().manual_seed(46))
    prog = _check(m, x, _direction(m))
    names = {p.node.name: p.idx for p in prog.plans}
    assert prog.plans[names["relu"]].node.kwargs == {"inplace": False}
    assert names["b1"] not in prog.keep and names["b2"] not in prog.keep and names["c1"] not in prog.keep
    assert prog.plans[names["relu"]].run.__name__ == "run"  # the specialized closure, not the general rule
