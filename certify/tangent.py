"""Tangent-only forward mode: the exact logit JVP ``a = J_z(θ) p`` from a forward pass that already ran.

Why.  A full forward-mode JVP (``torch.func.jvp``) recomputes the primal forward (1 unit of work) and
the tangent (≈ 2 units per linear/conv layer: ``ΔW·h + W·ḣ``).  A training step has just computed that
primal forward at θ_old (for its loss); this module keeps its intermediate values and propagates the
tangent only.  Same numbers (float32/float64, the same derivative formulas PyTorch's forward AD uses),
no primal recomputation.

How.  The model is traced once with :mod:`torch.fx` (cached per :func:`python_state`).
:meth:`TangentProgram.capture` runs the traced graph -- the same operations in the same order as the
model's own ``forward``, so the training numerics and the autograd graph are unchanged -- and returns the
output together with the node values the tangent rules read (e.g. a Linear's input, a ReLU's output;
values no rule reads are not kept alive) and the normalization statistics autograd saved anyway.
:meth:`TangentProgram.tangent` then runs straight-line code over the graph (each tangent is dropped after
its last use) and applies, per node, the chain rule

    ẏ = Σ_i ∂f/∂x_i · ẋ_i + Σ_k ∂f/∂θ_k · p_k        (all partials at the cached primal values, θ = θ_old)

with a hand-written rule for common layers (Linear, Conv, LayerNorm, BatchNorm in train mode *with* the
batch-statistics term and in eval mode, Embedding, ReLU/GELU/tanh/sigmoid/SiLU, softmax, dropout with the
forward's own mask, shape ops, ``+ − × @``) and, for any other node, ``torch.func.jvp`` of that node
alone (its primal is recomputed, nothing else).  Elementwise activations use PyTorch's own backward
kernels (``threshold_backward``, ``gelu_backward``, …): their Jacobians are diagonal, hence symmetric, so
the backward kernel applied to ``ḣ`` is exactly the JVP.  BatchNorm's input Jacobian per channel is
``γ_c·σ⁻¹(I − 11ᵀ/N − n̂n̂ᵀ/N)`` (symmetric too); its two reductions come from the backward kernel.
LayerNorm's input Jacobian without γ, ``σ⁻¹(I − 11ᵀ/N − n̂n̂ᵀ/N)`` per row, is symmetric as well: its
backward kernel (no weight) applied to ``ḣ`` is the JVP's input part.  A Linear/Conv on data followed by a
train-mode BatchNorm is one rule: the BN tangent is then itself that layer applied to the data with
combined weights, and the BN's batch reductions are closed forms in the data's patch mean and covariance
(float64).  An activation that alone consumes a LayerNorm/BatchNorm tangent overwrites it (``out=``), and
shape ops / ``+ −`` / scalar ``× ÷`` have specialized closures (no argument-template substitution).

Guarantee.  The result equals the forward-mode JVP of the traced graph at the cached primal values up to
float rounding of the same order as ``torch.func.jvp`` (tests compare both and a float64 central finite
difference).  The parameters' values are never read from the live model for controlled parameters: the
caller passes θ_old (the optimizer has already written θ_new).  The caller must ensure the cached values
belong to θ_old (the controller checks parameter version counters); cached tensors changed in place after
the capture are detected by their version counters.  Whatever cannot be handled exactly raises
:class:`Unsupported`, and the caller falls back to the whole-model ``torch.func.jvp``.

Not handled (→ :class:`Unsupported` → fallback): models ``torch.fx`` cannot trace (data-dependent
control flow), in-place ops other than ReLU on a single-use value, random ops other than dropout,
half-precision activations, train-mode dropout where the mask is ambiguous (input exactly 0 with a
nonzero tangent).  Python-level state read by ``forward`` is frozen at trace time, as for any
``torch.fx`` trace; :func:`cached_program` therefore keys programs on the modules' plain attributes
(:func:`python_state`: ``training`` flags, a scheduled temperature, …) and the controller checks once per
program that the trace reproduces the module's own forward bit for bit.

Cost.  The tangent pass is a backward pass's worth of work: per Linear/Conv layer two products
(``ΔW·h`` and ``W·ḣ``; one for a layer whose input is data) -- about 63-66% of a step's GEMM FLOPs on
MLP/CNN/transformer classifiers, a floor no exact tangent-only scheme avoids -- and per normalization or
activation a few elementwise passes (LayerNorm's rule: its backward kernel plus four passes).  With
``consume=True`` (the controller) each cached value is released after its last use in the pass, so the
pass's peak memory -- and, with glibc's default allocator, the page faults of fresh large tensors --
shrinks.  ``compile=True`` runs the same per-node rules
through ``torch.compile`` (straight-line code, so Inductor fuses the elementwise chains, Linear products
included as batched GEMMs that its ``mm + x → addmm`` rewrite, which copies the addend into every
product's output first, leaves alone; the first call of each compiled pass is checked against the eager
rules, any failure falls back to them).  Compilation
costs seconds once per model and input shape.
"""

from __future__ import annotations

import math
import operator
from typing import Any, Callable, Mapping

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.utils._pytree import tree_flatten, tree_unflatten

aten = torch.ops.aten


class Unsupported(Exception):
    """The tangent engine cannot treat this model/node exactly; use the whole-model JVP instead."""


# ----------------------------------------------------------------------------- small helpers
def _is_float(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.is_floating_point()


def _fit(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A tangent with the primal output's shape (a term broadcast from a smaller operand)."""
    return t if t.shape == like.shape else t.expand(like.shape)


def _matmul(f: Callable, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``x @ y``; with an inner dimension of 1 (e.g. attention over one key) the product has no sum, so
    the broadcast elementwise product is the same number and avoids thousands of tiny batched GEMMs."""
    if x.dim() >= 2 and y.dim() >= 2 and x.shape[-1] == 1 and y.shape[-2] == 1:
        return x * y
    return f(x, y)


def _add(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    if a is None:
        return b
    if b is None:
        return a
    return a + b


def _chan(v: torch.Tensor, nd: int) -> torch.Tensor:
    """A per-channel vector ``(C,)`` shaped to broadcast over ``(N, C, *spatial)`` with ``nd`` dims."""
    return v.view((1, -1) + (1,) * (nd - 2))


_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _no_inplace(kw: Mapping[str, Any]) -> bool:
    """``F.relu(x)`` is traced with ``inplace=False`` spelled out: the same as no keyword arguments."""
    return all(k == "inplace" and v is False for k, v in kw.items())

_RANDOM_FUNCS = {torch.rand, torch.rand_like, torch.randn, torch.randn_like, torch.randint, torch.randint_like,
                 torch.bernoulli, torch.multinomial, torch.normal, torch.randperm, F.rrelu, F.alpha_dropout,
                 F.feature_alpha_dropout, F.dropout1d, F.dropout2d, F.dropout3d}
_RANDOM_METHODS = {"bernoulli", "bernoulli_", "uniform_", "normal_", "random_", "exponential_", "cauchy_",
                   "log_normal_", "geometric_"}
_INPLACE_FUNCS = {operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.imatmul,
                  operator.ipow, operator.ifloordiv, operator.imod, operator.iand, operator.ior}
_RELU_INPLACE_FUNCS = {torch.relu_, F.relu_}
_RANDOM_MODULES = (nn.AlphaDropout, nn.FeatureAlphaDropout, nn.RReLU, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)


# ----------------------------------------------------------------------------- elementwise rules
def _dropout_tangent(h: torch.Tensor, y: torch.Tensor, hd: torch.Tensor, p: float) -> torch.Tensor:
    """``ẏ = ḣ·mask/(1−p)`` with the forward's own mask ``mask = (y ≠ 0)`` (CPU/CUDA dropout computes
    ``y = h·noise``, ``noise ∈ {0, 1/(1−p)}``).  Where ``h = 0`` the mask is unknown: allowed only if ``ḣ = 0``."""
    if bool(((h == 0) & (hd != 0)).any()):
        raise Unsupported("dropout mask is ambiguous where the input is exactly 0")
    scale = torch.ones((), dtype=hd.dtype, device=hd.device).div_(1.0 - p)
    return torch.where(y != 0, hd * scale, torch.zeros((), dtype=hd.dtype, device=hd.device))


def _act_rule(kind: str, h: torch.Tensor, y: torch.Tensor, hd: torch.Tensor, **kw: Any) -> torch.Tensor:
    if kind == "relu":
        return aten.threshold_backward(hd, y, 0)
    if kind == "gelu":
        approx = kw.get("approximate", "none")
        if approx == "none" and y is not None and torch.compiler.is_compiling():
            # GELU'(h) = Φ(h) + h φ(h), with Φ(h) = y/h from the forward's own output y = h Φ(h) (no erf;
            # Inductor fuses it).  |h| < 1e-30: Φ = 1/2 to working precision (y/h would lose bits there)
            cdf = torch.where(h.abs() < 1e-30, 0.5, y / h)
            return hd * (cdf + h * torch.exp(h * h * -0.5) * _INV_SQRT_2PI)
        return aten.gelu_backward(hd, h, approximate=approx)
    if kind == "tanh":
        return aten.tanh_backward(hd, y)
    if kind == "sigmoid":
        return aten.sigmoid_backward(hd, y)
    if kind == "silu":
        return aten.silu_backward(hd, h)
    if kind == "leaky_relu":
        return aten.leaky_relu_backward(hd, h, kw.get("negative_slope", 0.01), False)
    if kind == "softplus":
        return aten.softplus_backward(hd, h, kw.get("beta", 1.0), kw.get("threshold", 20.0))
    raise Unsupported(kind)

def _act_rule_(kind: str, h: torch.Tensor, y: torch.Tensor, hd: torch.Tensor, **kw: Any) -> torch.Tensor:
    """:func:`_act_rule` written over ``hd`` (same kernels, ``out=hd``: an elementwise kernel may write to
    its own input).  Only for a tangent the caller owns and never reads again."""
    if kind == "relu":
        return aten.threshold_backward.grad_input(hd, y, 0, grad_input=hd)
    if kind == "gelu":
        return aten.gelu_backward.grad_input(hd, h, approximate=kw.get("approximate", "none"), grad_input=hd)
    if kind == "tanh":
        return aten.tanh_backward.grad_input(hd, y, grad_input=hd)
    if kind == "sigmoid":
        return aten.sigmoid_backward.grad_input(hd, y, grad_input=hd)
    if kind == "silu":
        return aten.silu_backward.grad_input(hd, h, grad_input=hd)
    return _act_rule(kind, h, y, hd, **kw)


_ACT_MODULES: dict[type, Callable[[nn.Module], tuple[str, dict]]] = {
    nn.ReLU: lambda m: ("relu", {}),
    nn.GELU: lambda m: ("gelu", {"approximate": m.approximate}),
    nn.Tanh: lambda m: ("tanh", {}),
    nn.Sigmoid: lambda m: ("sigmoid", {}),
    nn.SiLU: lambda m: ("silu", {}),
    nn.LeakyReLU: lambda m: ("leaky_relu", {"negative_slope": m.negative_slope}),
    nn.Softplus: lambda m: ("softplus", {"beta": m.beta, "threshold": m.threshold}),
}
_ACT_FUNCS: dict[Any, str] = {F.relu: "relu", torch.relu: "relu", F.gelu: "gelu", torch.tanh: "tanh",
                              F.tanh: "tanh", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", F.silu: "silu",
                              F.leaky_relu: "leaky_relu", F.softplus: "softplus", torch.relu_: "relu",
                              F.relu_: "relu"}
_ACT_METHODS = {"relu": "relu", "relu_": "relu", "tanh": "tanh", "sigmoid": "sigmoid"}


def _softmax_t(y: torch.Tensor, hd: torch.Tensor, dim: int) -> torch.Tensor:
    # J = diag(y) − y yᵀ is symmetric: the backward kernel with grad = ḣ is the JVP
    return aten._softmax_backward_data(hd, y, dim, y.dtype)


def _log_softmax_t(y: torch.Tensor, hd: torch.Tensor, dim: int) -> torch.Tensor:
    return hd - (y.exp() * hd).sum(dim, keepdim=True)


# ----------------------------------------------------------------------------- layer rules
def _linear_t(h, hd, W, dW, db, out):
    """``ẏ = h ΔWᵀ + ḣ Wᵀ + Δb`` as at most two GEMMs accumulating into one buffer (``addmm_``)."""
    n_in = h.shape[-1]
    lead = h.shape[:-1]
    if torch.compiler.is_compiling():
        # under torch.compile: products and a sum that Inductor fuses (with Δb) into the consumer's kernel.
        # Batched products of one batch: Inductor rewrites ``mm + x`` into ``addmm``, which copies the bias
        # or the other product into the GEMM's output first (an extra pass per product)
        bmm = lambda a, w: torch.bmm(a.reshape(1, -1, n_in), w.t().unsqueeze(0)).squeeze(0)  # noqa: E731
        terms = ([bmm(h, dW)] if dW is not None else []) + ([bmm(hd, W)] if hd is not None else [])
        if not terms:
            return db.expand(*lead, W.shape[0]) if db is not None else None
        t = terms[0] if len(terms) == 1 else terms[0] + terms[1]
        if db is not None:
            t = t + db
        return t.view(*lead, t.shape[-1])
    t = None
    if dW is not None:
        h2 = h.reshape(-1, n_in)
        t = torch.addmm(db, h2, dW.t()) if db is not None else torch.mm(h2, dW.t())
        db = None
    if hd is not None:
        hd2 = hd.reshape(-1, n_in)
        if t is None:
            t = torch.addmm(db, hd2, W.t()) if db is not None else torch.mm(hd2, W.t())
        else:
            t.addmm_(hd2, W.t())
    if t is None:
        return db.expand(*lead, W.shape[0]) if db is not None else None
    return t.view(*lead, t.shape[-1])


def _conv_t(mod, h, hd, W, dW, db, out):
    """``ẏ = conv(h, ΔW) + conv(ḣ, W) + Δb`` (bilinear; padding modes handled by ``_conv_forward``)."""
    t = None
    if dW is not None:
        t = mod._conv_forward(h, dW, db)
    if hd is not None:
        u = mod._conv_forward(hd, W, db if t is None else None)
        t = u if t is None else t.add_(u)
    if t is None and db is not None:
        t = _fit(_chan(db, out.dim()), out)
    return t


_ONES: dict[tuple, torch.Tensor] = {}


def _mean_vec(dn: int, like: torch.Tensor) -> torch.Tensor:
    """The vector ``1/dn`` (cached): row means as matrix-vector products."""
    key = (dn, like.dtype, like.device)
    w = _ONES.get(key)
    if w is None:
        w = _ONES[key] = torch.full((dn,), 1.0 / dn, dtype=like.dtype, device=like.device)
    return w


def _layer_norm_t(mod, h, hd, g, dg, db, out, saved):
    """``ẏ = γ⊙σ⁻¹P ḣ + Δγ⊙n̂ + Δβ`` per normalized row, ``n̂ = (h − μ)/σ``, ``P = I − 11ᵀ/N − n̂n̂ᵀ/N``.

    ``σ⁻¹P`` is LayerNorm's input Jacobian without γ; it is symmetric, so PyTorch's fused backward kernel
    with ``grad = ḣ`` and no weight computes ``σ⁻¹P ḣ`` exactly (one kernel instead of seven elementwise
    passes and two row reductions).  ``μ, 1/σ`` are the forward's own (saved by autograd) when available,
    else recomputed by the forward kernel (which then also yields ``n̂``)."""
    shape = list(mod.normalized_shape)
    nhat = None
    if saved is not None:
        mu, rs = saved
    else:
        nhat, mu, rs = aten.native_layer_norm(h, shape, None, None, mod.eps)
    # parameter part Δγ⊙n̂ + Δβ (n̂: two passes, then one); a fresh full-size tensor, or Δβ itself
    base, own = None, False
    if dg is not None:
        if nhat is None:
            nhat = torch.sub(h, mu).mul_(rs)
        base = torch.addcmul(db, nhat, dg) if db is not None else nhat.mul_(dg)
        own = base.shape == h.shape
    elif db is not None:
        base = db  # the direction's own tensor: never written to
    if hd is None:
        if base is None:
            return None
        return base if own else base.expand(h.shape).clone()
    u = aten.native_layer_norm_backward(hd, h, shape, mu, rs, None, None, [True, False, False])[0]
    if g is None:
        return u if base is None else u.add_(base)
    if base is None:
        return u.mul_(g)
    return base.addcmul_(u, g) if own else torch.addcmul(base, u, g)


def _batch_norm_t(mod, h, hd, g, dg, db, out, saved):
    nd, eps = h.dim(), mod.eps
    batch_stats = mod.training or not mod.track_running_stats or mod.running_mean is None
    if not batch_stats:  # eval: y = γ (h − μ_r)/√(v_r + ε) + β, μ_r, v_r constants
        rm, rv = mod.running_mean, mod.running_var
        t = None
        if hd is not None:
            t = torch.batch_norm(hd, g, None, torch.zeros_like(rm), rv, False, 0.0, eps, False)
        if dg is not None or db is not None:
            u = torch.batch_norm(h, dg if dg is not None else torch.zeros_like(rv),
                                 db, rm, rv, False, 0.0, eps, False)
            t = u if t is None else t.add_(u)
        return t
    if saved is not None:
        mean, invstd = saved
    else:
        _, mean, invstd = aten.native_batch_norm(h, None, None, None, None, True, 0.0, eps)
    var = invstd.pow(-2).sub_(eps)
    C = h.shape[1]
    ones = torch.ones(C, dtype=h.dtype, device=h.device)
    wB = dg.clone() if dg is not None else torch.zeros(C, dtype=h.dtype, device=h.device)
    bC = db.clone() if db is not None else torch.zeros(C, dtype=h.dtype, device=h.device)
    a = None
    if hd is not None:
        # per-channel reductions Σḣ n̂ and Σḣ from the backward kernel (weight None → no γ)
        _, sw, sb = aten.native_batch_norm_backward(hd, h, None, None, None, mean, invstd, True, eps,
                                                    [False, True, True])
        n = h.numel() // C
        gam = g if g is not None else ones
        a = gam * invstd                       # coefficient of ḣ
        wB.sub_(a * sw / n)                    # coefficient of n̂
        bC.sub_(a * sb / n)                    # constant
    t = torch.batch_norm(h, wB, bC, mean, var, False, 0.0, eps, False)  # wB·n̂ + bC (batch statistics)
    if a is not None:
        t.addcmul_(hd, _chan(a, nd))
    return t


def _patches(lin: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input patches of a Linear / Conv1d / Conv2d (zero padding, groups = 1) as rows of an (M, K) float64
    matrix: one row per output position, ordered like ``weight.reshape(C_out, K)`` (strided windows of the
    padded input; ``F.unfold`` loops over the batch on CPU).  For a float64 Linear input this is a view of
    ``x``: read only."""
    x = x.detach().double()
    if isinstance(lin, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    nd = x.dim() - 2
    x = F.pad(x, [q for pd in reversed(lin.padding) for q in (pd, pd)])
    for ax, (k, d, st) in enumerate(zip(lin.kernel_size, lin.dilation, lin.stride)):
        x = x.unfold(2 + ax, (k - 1) * d + 1, st)[..., ::d]  # (N, C, *out, *window)
    x = x.permute(0, *range(2, 2 + nd), 1, *range(2 + nd, 2 + 2 * nd))  # (N, *out, C, *window)
    return x.reshape(-1, math.prod(x.shape[1 + nd:]))


def _affine_bn_t(lin, bn, x, W, b, dW, dlb, g, dg, dbeta, saved):
    """Tangent of ``BN_train(lin(x))`` for data ``x`` (no tangent): ``lin`` is a Linear or a Conv (zero
    padding, one group) and BatchNorm normalizes with the batch statistics ``μ, σ`` (the forward's own).

    Per output channel c, with patches ``P`` of x (``h_c = W_c·P + b_c``, ``ḣ_c = ΔW_c·P + Δb_c``) the BN
    tangent ``A ḣ + B (h − μ) + C`` (``A = γ/σ``, ``B = Δγ/σ − γ mean(ḣ(h−μ))/σ³``, ``C = Δβ − A mean ḣ``) is
    itself an affine map of x: ``lin(x; A ΔW + B W, A Δb + B (b − μ) + C)``.  Its two batch reductions are
    exact closed forms in the patch mean ``P̄`` and covariance ``Σ``: ``mean ḣ_c = ΔW_c·P̄ + Δb_c`` and
    ``mean(ḣ_c (h_c − μ_c)) = ΔW_cᵀ Σ W_c`` (as ``μ_c = W_c·P̄ + b_c``), computed in float64.  So the
    layer's tangent, the BN reductions and the BN pass collapse into one ``lin`` call."""
    mean, invstd = saved
    C = W.shape[0]
    P = _patches(lin, x)  # may be a view of x itself (float64 Linear input): never written to
    pbar = P.mean(0)
    P = P - pbar
    cov = torch.mm(P.t(), P).div_(P.shape[0])
    del P
    W64 = W.detach().reshape(C, -1).double()
    dW64 = dW.detach().reshape(C, -1).double() if dW is not None else None
    r = invstd.detach().double().reshape(C)
    A = g.detach().double().reshape(C) * r if g is not None else r
    m1 = torch.mv(dW64, pbar) if dW64 is not None else torch.zeros_like(r)
    if dlb is not None:
        m1 += dlb.double()
    m2 = (torch.mm(dW64, cov) * W64).sum(1) if dW64 is not None else torch.zeros_like(r)
    B = -(A * r * r * m2)   # −γ σ⁻³ mean(ḣ (h − μ))
    if dg is not None:
        B += dg.double() * r
    Cc = -(A * m1)
    if dbeta is not None:
        Cc += dbeta.double()
    W2 = B[:, None] * W64
    if dW64 is not None:
        W2 += A[:, None] * dW64
    bias = B * ((b.detach().double() if b is not None else 0.0) - mean.detach().double().reshape(C)) + Cc
    if dlb is not None:
        bias += A * dlb.double()
    W2, bias = W2.reshape(W.shape).to(x.dtype), bias.to(x.dtype)
    return F.linear(x, W2, bias) if isinstance(lin, nn.Linear) else lin._conv_forward(x, W2, bias)


# ----------------------------------------------------------------------------- the program
class _Plan:
    __slots__ = ("node", "idx", "kind", "fn", "mod", "prefix", "extra", "run", "view")

    def __init__(self, node, idx, kind, fn=None, mod=None, prefix="", extra=None):
        self.node, self.idx, self.kind, self.fn, self.mod, self.prefix, self.extra = \
            node, idx, kind, fn, mod, prefix, extra
        self.run = None
        self.view = None


class _Ref:
    """Reference to the value (or tangent) of node ``i`` inside an argument template."""

    __slots__ = ("i",)

    def __init__(self, i: int):
        self.i = i


class _View:
    """A node's call with fx nodes replaced by :class:`_Ref` (no ``torch.fx`` objects at run time, so the
    tangent pass can be traced by ``torch.compile``)."""

    __slots__ = ("op", "target", "args", "kwargs", "leaves", "spec")

    def __init__(self, node: fx.Node, index: dict):
        ref = lambda a: _Ref(index[a])  # noqa: E731
        self.op, self.target = node.op, node.target
        self.args = fx.node.map_arg(node.args, ref)
        self.kwargs = dict(fx.node.map_arg(node.kwargs, ref))
        self.leaves, self.spec = tree_flatten((self.args, self.kwargs))


def _subst(t: Any, vals: list, tangent: bool) -> Any:
    """A template with each :class:`_Ref` replaced by its value (``tangent=False``) or tangent; other
    leaves are kept (values) or become None (tangents)."""
    if isinstance(t, _Ref):
        return vals[t.i]
    if isinstance(t, tuple):
        return tuple(_subst(e, vals, tangent) for e in t)
    if isinstance(t, list):
        return [_subst(e, vals, tangent) for e in t]
    if isinstance(t, dict):
        return {k: _subst(e, vals, tangent) for k, e in t.items()}
    if isinstance(t, slice) and not tangent:
        return slice(_subst(t.start, vals, False), _subst(t.stop, vals, False), _subst(t.step, vals, False))
    return None if tangent else t


class TangentProgram:
    """A traced model: :meth:`capture` (forward + node values) and :meth:`tangent` (JVP from them).

    ``TangentProgram.build(module)`` raises :class:`Unsupported` when the model cannot be traced or uses
    in-place / random operations the engine does not reproduce exactly.
    """

    def __init__(self, module: nn.Module, compile: bool | str = False):
        self.module = module
        self.flags = tuple(m.training for m in module.modules())
        self.validated = False  # set by a user (the controller) once the trace reproduced the forward
        self.compile = compile  # False, True (Inductor) or a torch.compile backend name
        self.compile_error = ""  # why torch.compile was given up (then the eager rules are used)
        self._compiled: dict[Any, Callable] = {}
        try:
            gm = fx.symbolic_trace(module)
        except Exception as e:  # noqa: BLE001 - any tracing failure means "not supported"
            raise Unsupported(f"torch.fx cannot trace the model: {type(e).__name__}: {e}") from None
        self.graph = gm.graph
        self.nodes = [n for n in gm.graph.nodes if n.op != "output"]
        self.index = {n: i for i, n in enumerate(self.nodes)}
        self.placeholders = [n.target for n in self.nodes if n.op == "placeholder"]
        out_node = next(n for n in gm.graph.nodes if n.op == "output")
        self.out_arg = out_node.args[0]
        self._check_graph(gm)
        self.gm = gm
        self.plans = [self._plan(n, i) for i, n in enumerate(self.nodes)]
        self._fused = self._find_affine_bn()  # BN index -> Linear/Conv index (see _affine_bn_t)
        # capture module: same graph, output = (original output, the node values the rules read); values
        # no rule reads (e.g. BatchNorm outputs feeding a ReLU) are not kept alive through the backward
        self.keep = sorted(set().union(*(self._reads(p) for p in self.plans)) | set(
            self.index[a] for a in tree_flatten(self.out_arg)[0] if isinstance(a, fx.Node)))
        stat = [p.idx for p in self.plans if p.kind in ("bn", "ln")]
        self._cap_idx = self.keep + [i for i in stat if i not in set(self.keep)]
        cap_graph = fx.Graph()
        remap: dict[fx.Node, fx.Node] = {}
        for n in gm.graph.nodes:
            if n.op == "output":
                cap_graph.output((fx.map_arg(self.out_arg, lambda a: remap[a]),
                                  tuple(remap[self.nodes[i]] for i in self._cap_idx)))
            else:
                remap[n] = cap_graph.node_copy(n, lambda a: remap[a])
        self.cap = fx.GraphModule(gm, cap_graph)
        for p in self.plans:
            p.view = _View(p.node, self.index)
            p.run = self._compile(p)
        self._param_attrs = [(i, n.target) for i, n in enumerate(self.nodes) if n.op == "get_attr"]
        self._softmax_nodes = [(p.idx, p) for p in self.plans if p.kind in ("softmax", "log_softmax") or
                               (p.kind == "func" and p.fn in _SOFTMAX_FUNCS)]
        self._stat_nodes = [i for i, p in enumerate(self.plans) if p.kind in ("bn", "ln")]
        self._keep_set = set(self.keep)
        self._needed: dict[Any, list[_Plan]] = {}
        self.fallback_nodes: list[str] = [p.node.name for p in self.plans if p.kind.startswith("jvp")]

    @staticmethod
    def build(module: nn.Module) -> "TangentProgram":
        return TangentProgram(module)

    # -------------------------------------------------------------- static checks
    def _check_graph(self, gm: fx.GraphModule) -> None:
        for n in self.nodes:
            inplace, relu_like = False, False
            if n.op == "call_module":
                m = gm.get_submodule(n.target)
                inplace = bool(getattr(m, "inplace", False))
                relu_like = isinstance(m, nn.ReLU)
                if isinstance(m, _RANDOM_MODULES) and m.training:
                    raise Unsupported(f"random module {type(m).__name__} at {n.target!r} in training mode")
                if isinstance(m, nn.Embedding) and m.max_norm is not None:
                    raise Unsupported(f"Embedding with max_norm at {n.target!r} renormalizes weights in place")
            elif n.op == "call_method":
                if n.target in _RANDOM_METHODS:
                    raise Unsupported(f"random method .{n.target}() in forward")
                inplace = n.target.endswith("_") and not n.target.startswith("__")
                relu_like = n.target == "relu_"
            elif n.op == "call_function":
                if n.target in _RANDOM_FUNCS:
                    raise Unsupported(f"random function {getattr(n.target, '__name__', n.target)} in forward")
                inplace = n.target in _INPLACE_FUNCS or n.target in _RELU_INPLACE_FUNCS or \
                    bool(n.kwargs.get("inplace", False))
                relu_like = n.target in (F.relu, torch.relu_, F.relu_)
                if n.target in (F.dropout, torch.dropout) and bool(n.kwargs.get("inplace", False)):
                    raise Unsupported("in-place functional dropout")
            if inplace:
                src = n.args[0] if n.args else None
                if not (relu_like and isinstance(src, fx.Node) and len(src.users) == 1):
                    raise Unsupported(f"in-place operation {n.format_node()}")

    def _find_affine_bn(self) -> dict[int, int]:
        """BatchNorm nodes fed only by a Linear/Conv whose input carries no tangent (data): their tangent is
        computed by :func:`_affine_bn_t` and the layer's own tangent (read by nobody else) is skipped."""
        free: set[int] = set()  # nodes whose tangent is structurally None: data and parameter-free ops on it
        for i, n in enumerate(self.nodes):
            if n.op == "placeholder":
                free.add(i)
            elif n.op in ("call_function", "call_method") or (
                    n.op == "call_module" and not any(True for _ in self.gm.get_submodule(n.target).parameters())):
                ins = n.all_input_nodes
                if ins and all(self.index[a] in free for a in ins):
                    free.add(i)
        fused = {}
        for p in self.plans:
            n = p.node
            if p.kind != "bn" or len(n.args) != 1 or n.kwargs or not isinstance(n.args[0], fx.Node):
                continue
            src = n.args[0]
            q = self.plans[self.index[src]]
            if q.kind not in ("linear", "conv") or len(src.users) != 1 or len(src.args) != 1 or src.kwargs:
                continue
            x, m = src.args[0], q.mod
            if not isinstance(x, fx.Node) or self.index[x] not in free:
                continue
            if isinstance(m, nn.Linear):
                k = m.in_features
            elif type(m) in (nn.Conv1d, nn.Conv2d) and m.groups == 1 and m.padding_mode == "zeros" and \
                    not isinstance(m.padding, str):
                k = m.in_channels * math.prod(m.kernel_size)
            else:
                continue
            if k <= m.weight.shape[0]:  # the patch covariance (K×K over all positions) costs at most the layer
                fused[p.idx] = q.idx
        return fused

    # -------------------------------------------------------------- per-node plans
    def _plan(self, n: fx.Node, i: int) -> _Plan:
        if n.op in ("placeholder",):
            return _Plan(n, i, "input")
        if n.op == "get_attr":
            return _Plan(n, i, "attr")
        if n.op == "call_module":
            m = self.gm.get_submodule(n.target)
            prefix = n.target + "."
            t = type(m)
            if t in (nn.Linear,):
                return _Plan(n, i, "linear", mod=m, prefix=prefix)
            if t in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
                return _Plan(n, i, "conv", mod=m, prefix=prefix)
            if t is nn.LayerNorm:
                return _Plan(n, i, "ln", mod=m, prefix=prefix)
            if t in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
                return _Plan(n, i, "bn", mod=m, prefix=prefix)
            if t is nn.Embedding:
                return _Plan(n, i, "embedding", mod=m, prefix=prefix)
            if t in _ACT_MODULES:
                kind, kw = _ACT_MODULES[t](m)
                return _Plan(n, i, "act", fn=kind, mod=m, extra=kw)
            if t in (nn.Identity, nn.Flatten, nn.Unflatten):
                return _Plan(n, i, "linmod", mod=m, prefix=prefix)
            if t is nn.Dropout:
                return _Plan(n, i, "dropout", mod=m, extra=m.p)
            if t is nn.Softmax:
                return _Plan(n, i, "softmax", mod=m, extra=m.dim)
            if t is nn.LogSoftmax:
                return _Plan(n, i, "log_softmax", mod=m, extra=m.dim)
            if m.training and any(isinstance(s, (nn.Dropout, *_RANDOM_MODULES)) and getattr(s, "p", 0) > 0
                                  for s in m.modules()) or (m.training and float(getattr(m, "dropout", 0) or 0) > 0):
                raise Unsupported(f"module {n.target!r} ({t.__name__}) draws random numbers in training mode")
            return _Plan(n, i, "jvp_module", mod=m, prefix=prefix)
        if n.op == "call_function":
            f = n.target
            if f in _ACT_FUNCS:
                return _Plan(n, i, "actf", fn=_ACT_FUNCS[f])
            if f in (operator.add, torch.add, operator.sub, torch.sub, operator.neg, torch.neg,
                     operator.mul, torch.mul, operator.truediv, torch.div, operator.matmul, torch.matmul,
                     torch.bmm, torch.mm, operator.getitem, torch.softmax, F.softmax, torch.log_softmax,
                     F.log_softmax, F.dropout, torch.dropout, torch.cat, torch.stack):
                return _Plan(n, i, "func", fn=f)
            if f in _LINEAR_FUNCS:
                return _Plan(n, i, "linear_op", fn=f)
            return _Plan(n, i, "jvp_func", fn=f)
        if n.op == "call_method":
            name = n.target
            if name in _ACT_METHODS:
                return _Plan(n, i, "actf", fn=_ACT_METHODS[name])
            if name in _LINEAR_METHODS:
                return _Plan(n, i, "linear_op", fn=name)
            if name in ("softmax", "log_softmax"):
                return _Plan(n, i, "func", fn=name)
            return _Plan(n, i, "jvp_method", fn=name)
        raise Unsupported(f"node kind {n.op}")

    # -------------------------------------------------------------- capture
    def accepts(self, args: tuple, kwargs: Mapping[str, Any]) -> bool:
        """Does this call bind every traced input to a tensor (so the trace's assumptions hold)?"""
        if len(args) + len(kwargs) != len(self.placeholders):
            return False
        names = self.placeholders
        if any(k not in names[len(args):] for k in kwargs):
            return False
        return all(isinstance(a, torch.Tensor) for a in args) and \
            all(isinstance(v, torch.Tensor) for v in kwargs.values())

    def _reads(self, p: _Plan) -> set[int]:
        """Indices of the node values the tangent rule of ``p`` reads (its inputs and/or its output)."""
        n, i = p.node, p.idx
        ins = {self.index[a] for a in n.all_input_nodes}
        k = p.kind
        if k == "input":
            return set()
        if k == "attr":
            return {i}
        fused = self._fused
        if i in fused:  # reads the layer's input (data) only: the layer's output is not kept (recomputed
            return {self.index[self.plans[fused[i]].node.args[0]]}  # by the rare fallback)
        if i in fused.values():  # its tangent is computed by the following BatchNorm's rule
            return set()
        if k in ("linear", "ln", "bn", "embedding") and len(n.args) == 1 and not n.kwargs:
            return ins
        if k in ("act", "actf") and len(n.args) == 1 and (not n.kwargs or (k == "actf" and _no_inplace(n.kwargs))) \
                and p.fn in ("relu", "tanh", "sigmoid"):
            return {i}  # these rules read the output only (so e.g. a BatchNorm output feeding F.relu is freed)
        if k == "act" and len(n.args) == 1 and not n.kwargs:
            return ins
        if k in ("softmax", "log_softmax", "linmod") and len(n.args) == 1 and not n.kwargs:
            return {i}
        return ins | {i}  # conv, dropout, functions, methods, generic fallbacks: everything

    def capture(self, *args: Any, **kwargs: Any) -> tuple[Any, "Capture"]:
        out, kept = self.cap(*args, **kwargs)
        vals: list[Any] = [None] * len(self.nodes)
        for i, v in zip(self._cap_idx, kept):
            vals[i] = v
        saved = {}
        for i in self._stat_nodes:  # the forward's own normalization statistics (free, exact)
            v = vals[i]
            gf = getattr(v, "grad_fn", None)
            if gf is not None and type(gf).__name__ in ("NativeBatchNormBackward0", "NativeLayerNormBackward0"):
                try:
                    saved[i] = (gf._saved_result1, gf._saved_result2)
                except (AttributeError, RuntimeError):
                    pass
        for i in self._stat_nodes:
            if i not in self._keep_set:
                vals[i] = None
        return out, Capture(self, vals, saved)

    # -------------------------------------------------------------- tangent
    def _needed_plans(self, out_leaf: int, zero: frozenset) -> list[_Plan]:
        """Plans of the nodes the logits depend on through a nonzero Jacobian (``zero``: nodes whose tangent
        is structurally 0, e.g. a softmax over an axis of length 1), in graph order."""
        key = (out_leaf, zero)
        if key not in self._needed:
            leaves, _ = tree_flatten(self.out_arg)
            root = leaves[out_leaf]
            need: set[fx.Node] = set()
            stack = [root] if isinstance(root, fx.Node) else []
            while stack:
                n = stack.pop()
                if n in need:
                    continue
                need.add(n)
                if self.index[n] not in zero:
                    stack.extend(n.all_input_nodes)
            self._needed[key] = [p for p in self.plans if p.node in need]
        return self._needed[key]

    def tangent(self, cap: "Capture", theta: Mapping[str, torch.Tensor], direction: Mapping[str, torch.Tensor],
                logits_fn: Callable[[Any], torch.Tensor], consume: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z, ż)``: the logits of the captured forward and their JVP along ``direction``.

        ``theta`` overrides parameter values by qualified name (θ_old of the controlled parameters);
        ``direction`` maps qualified parameter names to tangents (missing = 0).  ``consume=True`` empties
        the capture (it cannot be used again) so that the eager pass frees each cached value after its
        last use (lower peak memory; the controller uses a capture once)."""
        if cap.stale():
            raise Unsupported("a cached activation was modified in place after the forward")
        vals = list(cap.vals)
        drop = consume and not (self.compile and not self.compile_error)
        if consume:
            cap.vals, cap.versions = (), []
        for i, name in self._param_attrs:  # parameters read by get_attr: their θ_old value, not the live θ_new
            if name in theta:
                vals[i] = theta[name]
        if isinstance(self.out_arg, fx.Node):  # the common case: forward returns the logits tensor itself
            out_idx = self.index[self.out_arg]
            z = logits_fn(vals[out_idx])
            if z is not vals[out_idx]:
                raise Unsupported("the logits are not a traced output of the model")
            pos = 0
        else:
            out_struct = fx.node.map_aggregate(self.out_arg,
                                               lambda a: vals[self.index[a]] if isinstance(a, fx.Node) else a)
            z = logits_fn(out_struct)
            leaves, _ = tree_flatten(out_struct)
            pos = next((j for j, v in enumerate(leaves) if v is z), None)
            if pos is None:
                raise Unsupported("cannot locate the logits among the traced outputs")
            zn = tree_flatten(self.out_arg)[0][pos]
            out_idx = self.index[zn] if isinstance(zn, fx.Node) else None
        zero = frozenset(i for i, p in self._softmax_nodes if _softmax_is_const(p, vals)) \
            if self._softmax_nodes else frozenset()
        eager = self._runner(pos, zero, out_idx, drop)
        with torch.no_grad():
            if self.compile and not self.compile_error:
                zt = self._compiled_call((pos, zero, out_idx), eager, vals, theta, direction, cap.saved)
            else:
                zt = eager(vals, theta, direction, cap.saved)
        del vals
        if zt is None:
            zt = torch.zeros_like(z)
        elif zt.shape != z.shape:
            zt = zt.expand(z.shape)
        return z.detach(), zt

    def _runner(self, pos: int, zero: frozenset, out_idx: int | None, drop: bool = False) -> Callable:
        """Straight-line code calling the per-node closures in graph order (no loop: under ``torch.compile``
        a graph break in one node then splits the graph instead of abandoning the whole pass).  ``drop``:
        also release each cached value after the last rule that reads it (the caller's ``vals`` list must
        be the only holder for that to free memory)."""
        key = ("runner", pos, zero, out_idx, drop)
        run = self._needed.get(key)
        if run is None:
            plans = [p for p in self._needed_plans(pos, zero) if p.idx not in zero]
            computed = {p.idx for p in plans}
            last_use: dict[int, int] = {}  # tangent j is dropped right after its last consumer (less memory)
            last_read: dict[int, int] = {}  # value k: the last rule reading it (``_reads``: what is kept)
            for p in plans:
                for a in p.node.all_input_nodes:
                    if self.index[a] in computed:
                        last_use[self.index[a]] = p.idx
                for k in self._reads(p):
                    last_read[k] = p.idx
            lines = ["def run(vals, theta, direction, saved):", f"    tan = [None] * {len(self.nodes)}"]
            for p in plans:
                lines.append(f"    tan[{p.idx}] = R{p.idx}(vals, tan, theta, direction, saved)")
                lines += [f"    tan[{j}] = None" for j, last in last_use.items() if last == p.idx and j != out_idx]
                if drop:
                    lines += [f"    vals[{k}] = None" for k, last in last_read.items() if last == p.idx]
            lines.append(f"    return {'None' if out_idx is None else f'tan[{out_idx}]'}")
            ns: dict[str, Any] = {f"R{p.idx}": p.run for p in plans}
            exec(compile("\n".join(lines), f"<tangent program {id(self):x}>", "exec"), ns)  # noqa: S102
            run = self._needed[key] = ns["run"]
        return run

    def _compiled_call(self, key, eager: Callable, vals, theta, direction, saved):
        """The tangent pass through ``torch.compile`` (kernels fused by Inductor).  The first call of each
        compiled runner is checked against the eager rules (max deviation ≤ 1e-5·max|ż|); a failure to
        compile or a mismatch gives up compiling for this program (``compile_error``)."""
        f = self._compiled.get(key)
        first = f is None
        try:
            if first:
                backend = self.compile if isinstance(self.compile, str) else "inductor"
                f = self._compiled[key] = torch.compile(eager, backend=backend)  # static, then dynamic on a new shape
            zt = f(vals, theta, direction, saved)
        except Exception as e:  # noqa: BLE001 - compilation problems must never break the certificate
            self.compile_error = f"torch.compile failed: {type(e).__name__}: {str(e)[:200]}"
            return eager(vals, theta, direction, saved)
        if first:
            ref = eager(vals, theta, direction, saved)
            ok = (zt is None) == (ref is None) and (ref is None or (
                zt.shape == ref.shape and bool(torch.isfinite(zt).all() == torch.isfinite(ref).all()) and
                float((zt - ref).abs().max()) <= 1e-5 * max(float(ref.abs().max()), 1e-30)))
            if not ok:
                self.compile_error = "the compiled tangent differs from the eager rules"
                return ref
        return zt

    # -------------------------------------------------------------- compiled per-node closures
    def _compile(self, p: _Plan) -> Callable:
        """A closure ``run(vals, tan, theta, direction, saved) -> tangent`` for one node.  Hot, common cases
        get a specialized closure with their indices bound; everything else goes through the general rule."""
        n, kind, ix = p.node, p.kind, self.index
        j = p.idx
        single = len(n.args) == 1 and isinstance(n.args[0], fx.Node) and (
            not n.kwargs or (kind == "actf" and _no_inplace(n.kwargs)))
        general = lambda vals, tan, theta, d, saved: self._node_tangent(p, vals, tan, theta, d, saved)  # noqa: E731
        if kind == "input":
            return lambda vals, tan, theta, d, saved: None
        if kind == "attr":
            name = n.target
            return lambda vals, tan, theta, d, saved: d.get(name)
        fast = self._compile_structural(p)
        if fast is not None:
            return fast
        if not single:
            return general
        i = ix[n.args[0]]
        if j in self._fused.values():  # a Linear/Conv whose tangent the following BatchNorm rule computes
            return lambda vals, tan, theta, d, saved: None
        if j in self._fused:
            return self._compile_affine_bn(p, self.plans[self._fused[j]])
        if kind in ("linear", "conv", "ln", "bn"):
            m, wn, bn = p.mod, p.prefix + "weight", p.prefix + "bias"
            mw = getattr(m, "weight", None)

            def run(vals, tan, theta, d, saved):
                hd, dW, db = tan[i], d.get(wn), d.get(bn)
                if hd is None and dW is None and db is None:
                    return None
                W = theta.get(wn, mw)
                if kind == "linear":
                    return _linear_t(vals[i], hd, W, dW, db, vals[j])
                if kind == "conv":
                    return _conv_t(m, vals[i], hd, W, dW, db, vals[j])
                if kind == "ln":
                    return _layer_norm_t(m, vals[i], hd, W, dW, db, vals[j], saved.get(j))
                return _batch_norm_t(m, vals[i], hd, W, dW, db, vals[j], saved.get(j))
            return run
        if kind in ("act", "actf") and (kind == "act" or p.fn in ("relu", "tanh", "sigmoid", "silu")):
            act, kw = p.fn, (p.extra or {})
            # the tangent of a LayerNorm/BatchNorm rule is always a fresh tensor; when this activation is
            # its only consumer, overwrite it instead of allocating another (not under torch.compile, which
            # fuses the two anyway)
            src = n.args[0]
            own = self.plans[i].kind in ("ln", "bn") and len(src.users) == 1 and \
                act in ("relu", "gelu", "tanh", "sigmoid", "silu")

            def run(vals, tan, theta, d, saved):
                hd = tan[i]
                if hd is None:
                    return None
                if own and not torch.compiler.is_compiling():
                    return _act_rule_(act, vals[i], vals[j], hd, **kw)
                return _act_rule(act, vals[i], vals[j], hd, **kw)
            return run
        return general

    def _compile_structural(self, p: _Plan) -> Callable | None:
        """Specialized closures for shape ops applied to a tangent (``view``, ``chunk``, ``flatten``, ``[...]``)
        and for ``+``/``−``/scalar ``×``/``÷`` -- the same results as :meth:`_node_tangent` (which substitutes
        every argument template and costs tens of µs per node), or None where that rule has to decide."""
        n, kind, j = p.node, p.kind, p.idx
        args, kw = n.args, n.kwargs
        ix = self.index
        if not args or not isinstance(args[0], fx.Node):
            return None
        others: list = []
        fx.node.map_arg((args[1:], kw), others.append)
        i = ix[args[0]]
        f = p.fn

        def _float_out(out):
            return _is_float(out) or (isinstance(out, (tuple, list)) and any(_is_float(o) for o in out))

        if kind == "linear_op" and not others and f not in (torch.cat, torch.stack, torch.concat, torch.hstack,
                                                            torch.vstack, F.pad):
            rest, kwd = tuple(args[1:]), dict(kw)
            if isinstance(f, str):
                def run(vals, tan, theta, d, saved):
                    t = tan[i]
                    if t is None or not _float_out(vals[j]):
                        return None
                    return getattr(t, f)(*rest, **kwd)
            else:
                def run(vals, tan, theta, d, saved):
                    t = tan[i]
                    if t is None or not _float_out(vals[j]):
                        return None
                    return f(t, *rest, **kwd)
            return run
        if kind == "func" and f is operator.getitem and not others and not kw and len(args) == 2:
            idx = args[1]

            def run(vals, tan, theta, d, saved):
                t = tan[i]
                if t is None or not _float_out(vals[j]):
                    return None
                a = vals[i]
                if isinstance(a, (tuple, list)):
                    return t[idx]
                return t[idx] if isinstance(a, torch.Tensor) else None
            return run
        if kind == "func" and f in (operator.add, torch.add, operator.sub, torch.sub) and len(args) == 2 and not kw \
                and all(isinstance(a, (fx.Node, int, float)) and not isinstance(a, bool) for a in args):
            ia = ix[args[0]]
            ib = ix[args[1]] if isinstance(args[1], fx.Node) else None
            neg = f in (operator.sub, torch.sub)

            def run(vals, tan, theta, d, saved):
                at = tan[ia]
                bt = tan[ib] if ib is not None else None
                if at is None and bt is None:
                    return None
                out = vals[j]
                if not _float_out(out):
                    return None
                if bt is not None and neg:
                    bt = -bt
                return _fit(_add(at, bt), out)
            return run
        if kind == "func" and f in (operator.mul, torch.mul, operator.truediv, torch.div) and len(args) == 2 and \
                not kw and not others and isinstance(args[1], (int, float)) and not isinstance(args[1], bool):
            c, div = args[1], f in (operator.truediv, torch.div)

            def run(vals, tan, theta, d, saved):
                t = tan[i]
                if t is None or not _float_out(vals[j]):
                    return None
                return _fit(t / c if div else t * c, vals[j])
            return run
        return None

    def _compile_affine_bn(self, p: _Plan, q: _Plan) -> Callable:
        """Closure for a BatchNorm fed by the data-input layer ``q`` (:meth:`_find_affine_bn`): the fused rule
        when the forward's batch statistics are available, else the layer's and the BN's rules in turn."""
        j, i = p.idx, self.index[q.node.args[0]]
        bn, lin = p.mod, q.mod
        gn, gbn, wn, bname = p.prefix + "weight", p.prefix + "bias", q.prefix + "weight", q.prefix + "bias"
        conv = q.kind == "conv"

        def run(vals, tan, theta, d, saved):
            dW, dlb, dg, dbeta = d.get(wn), d.get(bname), d.get(gn), d.get(gbn)
            hd0 = tan[i]  # None (data) unless someone passed a direction for a buffer/input
            if hd0 is None and dW is None and dlb is None and dg is None and dbeta is None:
                return None
            W, b, g = theta.get(wn, lin.weight), theta.get(bname, lin.bias), theta.get(gn, bn.weight)
            st = saved.get(j)
            batch_stats = bn.training or not bn.track_running_stats or bn.running_mean is None
            x = vals[i]
            if hd0 is None and st is not None and batch_stats:
                return _affine_bn_t(lin, bn, x, W, b, dW, dlb, g, dg, dbeta, st)
            # no saved statistics (a capture without autograd) or eval-mode BN: the two rules in turn, on the
            # layer's output recomputed from θ_old (the capture does not keep it)
            h = lin._conv_forward(x, W, b) if conv else F.linear(x, W, b)
            hd = _conv_t(lin, x, hd0, W, dW, dlb, h) if conv else _linear_t(x, hd0, W, dW, dlb, h)
            return _batch_norm_t(bn, h, hd, g, dg, dbeta, None, st)
        return run

    # -------------------------------------------------------------- rules
    @staticmethod
    def _args(n: "_View", vals: list, tan: list):
        return _subst(n.args, vals, False), _subst(n.kwargs, vals, False), _subst(n.args, tan, True)

    def _node_tangent(self, p: _Plan, vals, tan, theta, direction, saved):
        n, kind = p.view, p.kind
        if kind == "input":
            return None
        if kind == "attr":
            return direction.get(n.target)
        out = vals[p.idx]
        if kind in ("linear", "conv", "ln", "bn", "embedding", "act", "linmod", "dropout", "softmax",
                    "log_softmax", "jvp_module"):
            if n.kwargs or len(n.args) != 1:
                if kind != "jvp_module":
                    return self._generic_module(p, vals, tan, theta, direction)
            src = n.args[0] if n.args else None
            h = vals[src.i] if isinstance(src, _Ref) else src
            hd = tan[src.i] if isinstance(src, _Ref) else None
            if kind == "jvp_module":
                return self._generic_module(p, vals, tan, theta, direction)
            m, pre = p.mod, p.prefix
            if kind in ("act", "softmax", "log_softmax", "linmod", "dropout"):
                if hd is None:
                    return None
                if kind == "act":
                    return _act_rule(p.fn, h, out, hd, **p.extra)
                if kind == "softmax":
                    return _softmax_t(out, hd, p.extra if p.extra is not None else _legacy_dim(h))
                if kind == "log_softmax":
                    return _log_softmax_t(out, hd, p.extra if p.extra is not None else _legacy_dim(h))
                if kind == "linmod":
                    return m(hd)
                if not m.training or p.extra == 0:
                    return hd
                return _dropout_tangent(h, out, hd, p.extra)
            W = theta.get(pre + "weight", getattr(m, "weight", None))
            dW = direction.get(pre + "weight")
            db = direction.get(pre + "bias")
            if kind == "linear":
                return _linear_t(h, hd, W, dW, db, out)
            if kind == "conv":
                return _conv_t(m, h, hd, W, dW, db, out)
            if kind == "ln":
                return _layer_norm_t(m, h, hd, W, dW, db, out, saved.get(p.idx))
            if kind == "bn":
                return _batch_norm_t(m, h, hd, W, dW, db, out, saved.get(p.idx))
            if kind == "embedding":
                if dW is None:
                    return None
                return F.embedding(h, dW, m.padding_idx, None, m.norm_type, m.scale_grad_by_freq, m.sparse)
        pa, pk, ta = self._args(n, vals, tan)
        if not any(t is not None for t in tree_flatten(ta)[0]):
            return None
        if not _is_float(out) and not (isinstance(out, (tuple, list)) and any(_is_float(o) for o in out)):
            return None
        if kind == "actf":
            kw = dict(pk)
            kw.pop("inplace", None)
            extra = {}
            if p.fn == "gelu":
                extra["approximate"] = kw.get("approximate", pa[1] if len(pa) > 1 else "none")
            elif p.fn == "leaky_relu":
                extra["negative_slope"] = kw.get("negative_slope", pa[1] if len(pa) > 1 else 0.01)
            elif p.fn == "softplus":
                extra["beta"] = kw.get("beta", pa[1] if len(pa) > 1 else 1.0)
                extra["threshold"] = kw.get("threshold", pa[2] if len(pa) > 2 else 20.0)
            return _act_rule(p.fn, pa[0], out, ta[0], **extra)
        if kind == "func":
            r = self._func_rule(p.fn, n, pa, pk, ta, out)
            if r is not NotImplemented:
                return r
            return self._generic_func(p, n, vals, tan)
        if kind == "linear_op":
            r = self._linear_op(p.fn, n, pa, pk, ta, out)
            if r is not NotImplemented:
                return r
        return self._generic_func(p, n, vals, tan)

    def _linear_op(self, f, n, pa, pk, ta, out):
        """Ops linear in their first tensor argument: apply the op to the tangent (other args as primal)."""
        if isinstance(f, str):  # method: the first arg is the tensor
            if any(t is not None for t in tree_flatten(ta[1:])[0]) or ta[0] is None:
                return NotImplemented
            return getattr(ta[0], f)(*pa[1:], **pk)
        if f in (torch.cat, torch.stack, torch.concat, torch.hstack, torch.vstack):
            seq = pa[0]
            tseq = ta[0]
            parts = [t if t is not None else torch.zeros_like(x) for x, t in zip(seq, tseq)]
            return f(parts, *pa[1:], **pk)
        if ta[0] is None or any(t is not None for t in tree_flatten(ta[1:])[0]):
            return NotImplemented
        if f is F.pad:  # constant padding: the padded constant has tangent 0
            args = list(pa[1:])
            if len(args) >= 3:
                args[2] = 0.0
            kw = dict(pk)
            if "value" in kw:
                kw["value"] = 0.0
            return f(ta[0], *args, **kw)
        return f(ta[0], *pa[1:], **pk)

    def _func_rule(self, f, n, pa, pk, ta, out):
        a = pa[0] if pa else None
        at = ta[0] if ta else None
        b = pa[1] if len(pa) > 1 else None
        bt = ta[1] if len(ta) > 1 else None
        if pk and f not in (torch.softmax, F.softmax, torch.log_softmax, F.log_softmax, F.dropout,
                            torch.dropout, "softmax", "log_softmax", torch.cat, torch.stack):
            return NotImplemented
        if f is operator.getitem:
            if isinstance(a, (tuple, list)):
                return at[b] if at is not None else None
            if at is None or not isinstance(a, torch.Tensor):
                return None
            return at[b]
        if f in (operator.add, torch.add):
            if pk:
                return NotImplemented
            return _fit(_add(at, bt), out) if (at is not None or bt is not None) else None
        if f in (operator.sub, torch.sub):
            if pk:
                return NotImplemented
            nb = -bt if bt is not None else None
            return _fit(_add(at, nb), out)
        if f in (operator.neg, torch.neg):
            return -at
        if f in (operator.mul, torch.mul):
            t1 = at * b if at is not None else None
            t2 = a * bt if bt is not None else None
            return _fit(_add(t1, t2), out)
        if f in (operator.truediv, torch.div):
            if bt is not None:
                return NotImplemented
            return _fit(at / b, out)
        if f in (operator.matmul, torch.matmul, torch.bmm, torch.mm):
            t1 = _matmul(f, at, b) if at is not None else None
            t2 = _matmul(f, a, bt) if bt is not None else None
            return _add(t1, t2)
        if f in (torch.softmax, F.softmax, "softmax", torch.log_softmax, F.log_softmax, "log_softmax"):
            dim = pk.get("dim", b)
            if pk.get("dtype") is not None or (len(pa) > 2 and pa[2] is not None and not isinstance(pa[2], int)):
                return NotImplemented
            if dim is None:
                dim = _legacy_dim(a)
            if f in (torch.softmax, F.softmax, "softmax"):
                return _softmax_t(out, at, dim)
            return _log_softmax_t(out, at, dim)
        if f in (F.dropout, torch.dropout):
            prob = pk.get("p", b if b is not None else 0.5)
            training = pk.get("training", pa[2] if len(pa) > 2 else (f is F.dropout))
            if f is F.dropout and len(pa) <= 2 and "training" not in pk:
                training = True
            if not training or prob == 0:
                return at
            return _dropout_tangent(a, out, at, prob)
        if f in (torch.cat, torch.stack):
            return self._linear_op(f, n, pa, pk, ta, out)
        return NotImplemented

    # -------------------------------------------------------------- generic fallbacks (exact, per node)
    def _generic_func(self, p: _Plan, n: "_View", vals, tan):
        leaves, spec = n.leaves, n.spec
        prim = [vals[x.i] if isinstance(x, _Ref) else x for x in leaves]
        tl = [tan[x.i] if isinstance(x, _Ref) else None for x in leaves]
        pos = [j for j, t in enumerate(tl) if t is not None and _is_float(prim[j])]
        if not pos:
            return None
        target = n.target

        def f(*xs):
            cur = list(prim)
            for j, x in zip(pos, xs):
                cur[j] = x
            args, kwargs = tree_unflatten(cur, spec)
            if n.op == "call_method":
                return getattr(args[0], target)(*args[1:], **kwargs)
            return target(*args, **kwargs)

        _, t = torch.func.jvp(f, tuple(prim[j] for j in pos), tuple(_fit(tl[j], prim[j]) for j in pos))
        return t

    def _generic_module(self, p: _Plan, vals, tan, theta, direction):
        n, m, pre = p.view, p.mod, p.prefix
        leaves, spec = n.leaves, n.spec
        prim = [vals[x.i] if isinstance(x, _Ref) else x for x in leaves]
        tl = [tan[x.i] if isinstance(x, _Ref) else None for x in leaves]
        pos = [j for j, t in enumerate(tl) if t is not None and _is_float(prim[j])]
        pnames = [k for k, _ in m.named_parameters()]
        pvals = {k: theta.get(pre + k, q).detach() for k, q in m.named_parameters()}
        pt = {k: direction[pre + k] for k in pnames if pre + k in direction}
        if not pos and not pt:
            return None
        bufs = {k: b.detach().clone() for k, b in m.named_buffers()}
        fixed = {k: v for k, v in pvals.items() if k not in pt}

        def f(pdict, *xs):
            cur = list(prim)
            for j, x in zip(pos, xs):
                cur[j] = x
            args, kwargs = tree_unflatten(cur, spec)
            return functional_call(m, {**fixed, **pdict, **bufs}, tuple(args), dict(kwargs), strict=False)

        primals = ({k: pvals[k] for k in pt},) + tuple(prim[j] for j in pos)
        tangents = (pt,) + tuple(_fit(tl[j], prim[j]) for j in pos)
        _, t = torch.func.jvp(f, primals, tangents)
        return t


_SOFTMAX_FUNCS = {torch.softmax, F.softmax, torch.log_softmax, F.log_softmax, "softmax", "log_softmax"}


def _softmax_is_const(p: _Plan, vals: list) -> bool:
    """A (log-)softmax over an axis of length 1 is constant (1, resp. 0): its tangent is exactly 0."""
    y = vals[p.idx]
    if not isinstance(y, torch.Tensor):
        return False
    if p.kind in ("softmax", "log_softmax"):
        dim = p.extra
    else:
        n = p.view
        dim = n.kwargs.get("dim", n.args[1] if len(n.args) > 1 else None)
    if dim is None or not isinstance(dim, int) or y.dim() == 0:
        return False
    return y.shape[dim] == 1


def _legacy_dim(x: torch.Tensor) -> int:
    return 0 if x.dim() in (0, 1, 3) else 1


_LINEAR_METHODS = {"view", "reshape", "unsqueeze", "squeeze", "transpose", "permute", "flatten", "contiguous",
                   "t", "expand", "expand_as", "view_as", "reshape_as", "mean", "sum", "chunk", "split",
                   "narrow", "select", "repeat", "flip", "roll", "unflatten", "movedim", "swapaxes",
                   "unbind", "tensor_split", "clone", "float", "double", "to", "type_as", "__getitem__"}
_LINEAR_FUNCS = {torch.flatten, torch.transpose, torch.reshape, torch.permute, torch.squeeze, torch.unsqueeze,
                 torch.mean, torch.sum, torch.chunk, torch.split, torch.narrow, torch.select, torch.flip,
                 torch.roll, torch.movedim, torch.swapaxes, torch.unbind, torch.concat, torch.hstack,
                 torch.vstack, torch.cat, torch.stack, F.pad}


class Capture:
    """Node values of one captured forward (references, not copies) and their version counters."""

    __slots__ = ("program", "vals", "saved", "versions")

    def __init__(self, program: TangentProgram, vals: tuple, saved: dict):
        self.program, self.vals, self.saved = program, vals, saved
        # parameters are excluded (the optimizer bumps their versions; their θ_old values are passed in).
        # ``type(v) is torch.Tensor`` first: nn.Parameter's isinstance check runs Python code
        self.versions = [(v, v._version) for v in vals if type(v) is torch.Tensor or (
            isinstance(v, torch.Tensor) and not isinstance(v, nn.Parameter))]

    def stale(self) -> bool:
        return any(v._version != ver for v, ver in self.versions)


def tangent_jvp(module: nn.Module, x: Any, direction: Mapping[str, torch.Tensor], *,
                params: Mapping[str, torch.Tensor] | None = None, kwargs: Mapping[str, Any] | None = None,
                logits_fn: Callable[[Any], torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Standalone ``(z, J_z v)`` with the tangent engine: one traced primal forward (no autograd) at the
    module's current parameters (or ``params``) + the tangent pass.  Buffers are restored afterwards.
    Raises :class:`Unsupported` where the engine does not apply.  Mainly for tests and one-off use."""
    from .ghosts import _first_tensor
    prog = TangentProgram(module)
    args = x if isinstance(x, tuple) else (x,)
    kw = dict(kwargs or {})
    if not prog.accepts(args, kw):
        raise Unsupported("the call does not bind every traced input to a tensor")
    saved_bufs = [b.detach().clone() for b in module.buffers()]
    live = dict(module.named_parameters())
    swap = {k: v for k, v in (params or {}).items() if k in live}
    old = {k: live[k].detach().clone() for k in swap}
    try:
        with torch.no_grad():
            for k, v in swap.items():
                live[k].copy_(v)
            out, cap = prog.capture(*args, **kw)
    finally:
        with torch.no_grad():
            for k, v in old.items():
                live[k].copy_(v)
            for b, s in zip(module.buffers(), saved_bufs):
                b.copy_(s)
    theta = {k: v.detach() for k, v in (params or {}).items()}
    return prog.tangent(cap, theta, direction, logits_fn or _first_tensor)


_SIMPLE = (bool, int, float, str, type(None))


def _traced_into(m: nn.Module) -> bool:
    """Does ``torch.fx`` trace through this module's Python ``forward`` (True) or call it as a leaf?"""
    return not (m.__module__.startswith("torch.nn") and not isinstance(m, nn.Sequential))


def python_state(mods: list[nn.Module], traced: list[nn.Module] | None = None) -> tuple:
    """Signature of what a ``torch.fx`` trace freezes: every module's ``training`` flag and the plain
    Python attributes (``scale``, a scheduled temperature, …) of the modules whose ``forward`` is traced
    through (leaf modules such as ``nn.Linear`` run live).  Programs are cached per signature, so a
    forward that reads a changed attribute gets a new trace."""
    traced = [m for m in mods if _traced_into(m)] if traced is None else traced
    return (tuple([m.training for m in mods]),
            tuple(tuple((k, v) for k, v in m.__dict__.items()
                        if not k.startswith("_") and (isinstance(v, _SIMPLE) or (
                            isinstance(v, tuple) and all(isinstance(e, _SIMPLE) for e in v))))
                  for m in traced))


def cached_program(module: nn.Module, cache: dict, compile: bool | str = False) -> TangentProgram:
    """The program for the modules' current Python state (training flags, hyper-parameters; built once per
    state, see :func:`python_state`).  Raises :class:`Unsupported` (remembered) where tracing fails."""
    mods = cache.get("__modules__")
    if mods is None:  # the module tree is taken as fixed once a program is cached for it
        mods = cache["__modules__"] = list(module.modules())
        cache["__traced__"] = [m for m in mods if _traced_into(m)]
    flags = python_state(mods, cache["__traced__"])
    prog = cache.get(flags)
    if prog is None:
        try:
            prog = TangentProgram(module, compile=compile)
        except Unsupported as e:
            prog = e  # remember the reason, do not re-trace every step
        cache[flags] = prog
    if isinstance(prog, Unsupported):
        raise prog
    return prog


__all__ = ["TangentProgram", "Capture", "Unsupported", "tangent_jvp", "cached_program"]
