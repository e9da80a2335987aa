"""Exact logit JVPs read off the training step's own autograd graph (no forward recomputation).

Why.  The controller needs ``a = J_z(θ_old)·p̂`` for the forward that defined the step.  The replay engines
(:mod:`certify.replay`) recompute that forward with dual tensors: a primal forward plus a tangent, about
twice the tangent's work.  The primal values are already in memory while the training step runs: they are
the tensors autograd saved for the backward.  This module reads them and pushes only the tangent.

Capture (:func:`capture`, called from the controller's forward hook on ``logits_module``, i.e. after the
training forward and *before* the backward frees the saved tensors).  It walks ``z.grad_fn`` -- the
graph from the parameters to the logits -- and, for every node, reads the ``_saved_*`` attributes its
tangent rule needs (each one ``detach``-ed: an alias of the saved tensor, no copy, no reference to the
graph).  Reading a saved tensor does not change it or the graph: the training step's backward and
results are untouched (checked bit for bit by ``tests/test_controller_semantics.py``).  Alternative
considered: ``torch.autograd.graph.saved_tensors_hooks`` around the forward (a pack hook that keeps a
reference) -- it runs a Python call for *every* saved tensor of the forward, including ones no rule needs,
it changes how autograd stores them (packed objects) and it is overridden by any inner hook (activation
checkpointing).  Measured (thread CPU time, one thread, 2 shared cores under load, medians of 30): an
identity pack hook made the training forward of bench/lr_spike.py's MLP+LN (1,437 samples) 1.9 → 2.8 ms,
the Transformer 1.8 → 3.0 ms, the tied GPT 11.4 → 17.9 ms; walking the finished graph costs 0.16 / 0.29 /
0.41 ms and the watch mode below stays within the noise.  So the graph is walked once, in the forward
hook, and the training step is left exactly as it was.  With non-reentrant activation checkpointing the
walk triggers the region's recomputation early (autograd's unpack hook; checkpoint restores the RNG) and the
recomputed activations are held until the step.

The tape is a list of nodes in topological order, each with its rule, its inputs (producer index and
output number, from ``next_functions``), the saved values and the output shapes (``_input_metadata``).
Leaves are ``AccumulateGrad`` nodes: ``node.variable`` *is* the parameter, so a parameter tied in two
places (``head.weight = emb.weight``) is one leaf by construction; its tangent is the direction's entry for
that tensor, parameters outside the controlled set get none (a constant).  The module's inputs are cut
(their producers are not walked): like the replay, the JVP is of the module's forward with its inputs held
fixed.

Parameters at θ_old.  The optimizer overwrote the parameters in place after the capture.  A saved tensor
that aliases a controlled parameter's storage (``AddmmBackward0`` saves ``weight.t()``, a view) is replaced
at JVP time by the same view of the θ_old copy the controller keeps.  Every other saved tensor's version
counter is recorded at capture and compared at JVP time: a tensor modified in place after the forward
makes the tape refuse (:class:`GraphUnsupported`), and the controller falls back to the replay engines.

Refusals (the controller falls back to the exact replay, with the reason recorded): a ``grad_fn`` with no
rule in :data:`RULES` (custom ``autograd.Function`` -- a straight-through estimator's backward is not the
derivative of its forward --, ``CopySlices``/``AsStrided`` from in-place ops on views, fused kernels
without a rule: the recurrent kernels, upsampling, weight_norm's fused kernel, ...), a fused SDPA kernel with
dropout (its mask is not saved; on CPU dropout makes SDPA take its composite path, whose nodes have rules), a
version mismatch, any error inside a rule.
The controller also refuses the tape when the training forward used a parameter-dependent tensor where
the graph cannot see it: under ``torch.no_grad`` or through ``.detach()``/``.data`` (the logits depend
on it, the graph does not) -- see ``GraphWatch`` below; and for half-precision or autocast forwards (the
replay evaluates those in float32, the saved activations are half precision).

Precision: the tangent is computed in the dtype of the saved primal values, which are float32 or float64
here (half precision is refused above); the direction is used as given (float32 or wider).

Every rule is the exact derivative of the op as evaluated in the forward (ties, kinks: the same one-sided
choice torch's forward-mode AD makes: ``relu'(0) = 0``, clamp's derivative 1 on the closed interval);
``tests/test_controller_graph_engine.py`` checks each against ``torch.func.jvp``.  Where an op's Jacobian
is diagonal (activations) or symmetric (softmax ``diag(p) − ppᵀ``; the normalizations' ``x ↦ x̂``,
``rstd·(I − 11ᵀ/n − x̂x̂ᵀ/n)`` per normalized group) the JVP *is* the VJP, so the rule calls autograd's own
fused backward kernel on the tangent (one pass instead of a chain of elementwise ops).

Not seen by either engine (shared with the replay): a value leaving the tensor world inside the forward
(``.item()``, ``.tolist()``, Python control flow on tensor values) is a constant for the JVP.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .replay import ReplayUnsupported


_aten = torch.ops.aten


class GraphUnsupported(ReplayUnsupported):
    """The graph engine cannot compute this JVP exactly (the controller falls back to the replay)."""


class _Alias:
    """A saved tensor that is a view of controlled parameter ``i``: resolved to the same view of θ_old."""

    __slots__ = ("i", "size", "stride", "offset")

    def __init__(self, i: int, t: torch.Tensor, p: torch.Tensor):
        self.i, self.size, self.stride, self.offset = i, tuple(t.size()), tuple(t.stride()), \
            t.storage_offset() - p.storage_offset()


# ----------------------------------------------------------------------------- tangent rules
# A rule: ``capture(node, S, carry) -> saved`` and ``apply(saved, tin, meta) -> tangent | tuple``.
# ``S(name)`` reads ``node._saved_<name>`` (a tensor is detached and registered for the version check);
# ``carry[i]`` says whether input i carries a tangent; ``tin`` are the input tangents (None = zero);
# ``meta`` the output shapes.  ``apply`` is only called when some input carries a tangent.

def _bshape(t: torch.Tensor | None, shape: tuple) -> torch.Tensor | None:
    if t is None or tuple(t.shape) == shape:
        return t
    return t.expand(shape)


def _sum(*ts):
    out = None
    for t in ts:
        if t is not None:
            out = t if out is None else out + t
    return out


def _rule(names: tuple[str, ...], fn: Callable, need: Callable | None = None):
    """A rule reading the saved attributes ``names`` (all of them, or those ``need(carry)`` selects)."""
    def cap(node, S, carry):
        sel = names if need is None else need(carry)
        return {n: S(n) for n in sel}
    return cap, fn


def _addmm(s, t, meta):
    """``β·ḃ + α(Ṁ₁M₂ + M₁Ṁ₂)`` as one ``addmm`` and one in-place ``addmm_`` (no separate elementwise adds)."""
    a, b = s.get("alpha", 1), s.get("beta", 1)
    terms = [(x, y) for x, y in ((t[1], s.get("mat2")), (s.get("mat1"), t[2])) if x is not None and y is not None]
    if not terms:
        return _bshape(t[0] * b if b != 1 else t[0], meta[0])
    (x, y), rest = terms[0], terms[1:]
    out = torch.addmm(t[0], x, y, beta=b, alpha=a) if t[0] is not None else \
        (torch.mm(x, y) if a == 1 else torch.mm(x, y).mul_(a))
    for x, y in rest:
        out.addmm_(x, y, alpha=a)
    return out


def _mm(s, t, meta):
    bat = t[0].dim() == 3 if t[0] is not None else t[1].dim() == 3
    terms = [(x, y) for x, y in ((t[0], s.get("mat2")), (s.get("self"), t[1])) if x is not None and y is not None]
    (x, y), rest = terms[0], terms[1:]
    out = torch.bmm(x, y) if bat else torch.mm(x, y)
    for x, y in rest:
        if bat:
            out.baddbmm_(x, y)
        else:
            out.addmm_(x, y)
    return out


def _need_bilinear(a: str, b: str):
    return lambda c: tuple(([b] if c[0] else []) + ([a] if c[1] else []))


def _add(s, t, meta):
    a = s.get("alpha", 1)
    o = t[1] if (t[1] is None or a == 1) else t[1] * a
    return _bshape(_sum(t[0], o), meta[0])


def _sub(s, t, meta):
    a = s.get("alpha", 1)
    o = None if t[1] is None else -(t[1] * a if a != 1 else t[1])
    return _bshape(_sum(t[0], o), meta[0])


def _rsub0(s, t, meta):  # other - alpha*self; inputs (self, other)
    a = s.get("alpha", 1)
    return _bshape(_sum(t[1], None if t[0] is None else -(t[0] * a)), meta[0])


def _mul(s, t, meta):
    return _bshape(_sum(t[0] * s["other"] if t[0] is not None else None,
                        s["self"] * t[1] if t[1] is not None else None), meta[0])


def _div(s, t, meta):
    o = s["other"]
    return _bshape(_sum(t[0] / o if t[0] is not None else None,
                        -(s["self"] * t[1]) / (o * o) if t[1] is not None else None), meta[0])


def _red_dims(dim, nd):
    return tuple(range(nd)) if dim is None or (isinstance(dim, (tuple, list)) and len(dim) == 0) else dim


def _mean1(s, t, meta):
    return t[0].mean(_red_dims(s["dim"], t[0].dim()), keepdim=s["keepdim"])


def _sum1(s, t, meta):
    return t[0].sum(_red_dims(s["dim"], t[0].dim()), keepdim=s["keepdim"])


def _layer_norm(s, t, meta):
    """``ẏ = w ⊙ J_x̂ ẋ + x̂ ⊙ ẇ + ḃ`` with ``J_x̂ = rstd·(I − 11ᵀ/n − x̂x̂ᵀ/n)`` per row.  ``J_x̂`` is symmetric, so
    ``J_x̂ ẋ`` is exactly what the fused backward kernel computes for the output gradient ``ẋ`` and no weight."""
    x, mu, rstd = s["input"], s["result1"], s["result2"]
    w = s.get("weight")
    out = None
    if t[0] is not None:
        out = torch.ops.aten.native_layer_norm_backward(t[0], x, s["normalized_shape"], mu, rstd, None, None,
                                                        [True, False, False])[0]
        if w is not None:
            out = out.mul_(w)
    if t[1] is not None:
        xh = torch.sub(x, mu).mul_(rstd)
        out = xh.mul_(t[1]) if out is None else out.addcmul_(xh, t[1])
    if t[2] is not None:
        out = _bshape(t[2], meta[0]) if out is None else out.add_(t[2])
    return _bshape(out, meta[0])


def _cshape(v: torch.Tensor, nd: int) -> torch.Tensor:
    return v.reshape((1, -1) + (1,) * (nd - 2))


def _batch_norm(s, t, meta):
    """Training mode: per channel the same symmetric ``J_x̂`` as LayerNorm (over batch and positions), taken
    from the fused backward kernel; eval mode: an affine map with the running statistics."""
    x, w = s["input"], s.get("weight")
    nd = x.dim()
    out = None
    if s["training"]:
        mu, istd = s["result1"], s["result2"]
        if t[0] is not None:  # J_x̂ is block-diagonal per channel and w constant per channel: J(w⊙ẋ) = w⊙Jẋ
            out = torch.ops.aten.native_batch_norm_backward(t[0], x, w, None, None, mu, istd, True, s["eps"],
                                                            [True, False, False])[0]
        mu, istd = _cshape(mu, nd), _cshape(istd, nd)
    else:
        istd = _cshape(torch.rsqrt(s["running_var"] + s["eps"]), nd)
        mu = _cshape(s["running_mean"], nd)
        if t[0] is not None:
            out = t[0] * (istd * _cshape(w, nd) if w is not None else istd)
    if t[1] is not None:  # x̂ ⊙ ẇ = (x − μ) ⊙ (istd·ẇ), the second factor per channel
        f = istd * _cshape(t[1], nd)
        out = torch.sub(x, mu).mul_(f) if out is None else out.addcmul_(torch.sub(x, mu), f)
    if t[2] is not None:
        out = _bshape(_cshape(t[2], nd), meta[0]) if out is None else out.add_(_cshape(t[2], nd))
    return _bshape(out, meta[0])


def _bn_cap(node, S, carry):
    tr = node._saved_training
    names = ("input", "weight", "result1", "result2", "eps") if tr else \
        ("input", "weight", "running_mean", "running_var", "eps")
    d = {n: S(n) for n in names}
    d["training"] = tr
    return d


def _group_norm(s, t, meta):
    x, w = s["input"], s.get("weight")
    n, c, g = s["N"], s["C"], s["group"]
    shp, nd = x.shape, x.dim()
    out = None
    if t[0] is not None:
        out = torch.ops.aten.native_group_norm_backward(t[0], x, s["result1"], s["result2"], None, n, c, s["HxW"], g,
                                                        [True, False, False])[0]
        if w is not None:
            out = out.mul_(_cshape(w, nd))
    if t[1] is not None:
        xh = ((x.reshape(n, g, -1) - s["result1"].reshape(n, g, 1)) * s["result2"].reshape(n, g, 1)).reshape(shp)
        out = _sum(out, xh.mul_(_cshape(t[1], nd)))
    if t[2] is not None:
        out = _sum(out, _cshape(t[2], nd))
    return _bshape(out, meta[0])


_CONV = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}


def _conv(s, t, meta):
    """``conv(ẋ, w) + conv(x, ẇ) + ḃ`` (the non-transposed convolutions through ``F.convNd``, whose CPU path
    is faster than the generic ``torch.convolution``; sums in place)."""
    st, pad, dil, tr, opad, g = (s["stride"], s["padding"], s["dilation"], s["transposed"], s["output_padding"],
                                 s["groups"])
    fn = _CONV.get(len(meta[0])) if not tr else None

    def conv(x, w):
        if fn is not None:
            return fn(x, w, None, st, pad, dil, g)
        return torch.convolution(x, w, None, st, pad, dil, tr, opad, g)

    out = None
    if t[0] is not None:
        out = conv(t[0], s["weight"])
    if t[1] is not None:
        o = conv(s["input"], t[1])
        out = o if out is None else out.add_(o)
    if t[2] is not None:
        b = _cshape(t[2], len(meta[0]))
        out = _bshape(b, meta[0]) if out is None else out.add_(b)
    return out


def _sdpa_cpu(s, t, meta):
    if s["dropout_p"] and s["dropout_p"] > 0:
        raise GraphUnsupported("scaled_dot_product_attention with dropout (its mask is not saved)")
    q, k, v, lse = s["query"], s["key"], s["value"], s["logsumexp"]
    if q.shape[:-2] != k.shape[:-2] or k.shape[:-2] != v.shape[:-2]:
        raise GraphUnsupported("scaled_dot_product_attention with broadcast or grouped heads")
    sc = s["scale"] if s["scale"] is not None else 1.0 / math.sqrt(q.shape[-1])
    S = (q @ k.transpose(-2, -1)) * sc
    mask = s.get("attn_mask")
    if mask is not None:
        S = S.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else S + mask
    if s["is_causal"]:
        L, Sk = S.shape[-2], S.shape[-1]
        S = S.masked_fill(torch.ones(L, Sk, dtype=torch.bool, device=S.device).triu(1), float("-inf"))
    P = torch.exp(S - lse.unsqueeze(-1))
    dS = _sum(t[0] @ k.transpose(-2, -1) if t[0] is not None else None,
              q @ t[1].transpose(-2, -1) if t[1] is not None else None)
    out = None
    if dS is not None:
        dS = dS * sc
        if len(t) > 3 and t[3] is not None:
            dS = dS + t[3]
        dP = P * (dS - (P * dS).sum(-1, keepdim=True))
        out = dP @ v
    elif len(t) > 3 and t[3] is not None:
        dS = t[3]
        out = (P * (dS - (P * dS).sum(-1, keepdim=True))) @ v
    if t[2] is not None:
        out = _sum(out, P @ t[2])
    return out


def _sdpa_cap(node, S, carry):
    d = {n: S(n) for n in ("query", "key", "value", "logsumexp", "scale", "is_causal", "dropout_p")}
    d["attn_mask"] = S("attn_mask")
    return d


def _slice(s, t, meta):
    idx = [slice(None)] * t[0].dim()
    d = s["dim"] % t[0].dim()
    idx[d] = slice(s["start"], s["end"], s["step"])
    return t[0][tuple(idx)]


def _cat(s, t, meta, node_shapes):
    d = s["dim"]
    return torch.cat([x if x is not None else torch.zeros(shp, dtype=_dt(t), device=_dev(t))
                      for x, shp in zip(t, node_shapes)], d)


def _dt(t):
    return next(x.dtype for x in t if x is not None)


def _dev(t):
    return next(x.device for x in t if x is not None)


def _maxpool2d(s, t, meta):
    idx = s["result1"]
    return t[0].flatten(-2).gather(-1, idx.flatten(-2)).view(idx.shape)


def _max_dim(s, t, meta):
    d, idx = s["dim"], s["indices"]
    if not s["keepdim"]:
        idx = idx.unsqueeze(d)
        return t[0].gather(d, idx).squeeze(d)
    return t[0].gather(d, idx)


def _where(s, t, meta):
    c = s["condition"]
    a = t[0] if t[0] is not None else torch.zeros((), dtype=t[1].dtype, device=t[1].device)
    b = t[1] if t[1] is not None else torch.zeros((), dtype=t[0].dtype, device=t[0].device)
    return _bshape(torch.where(c, a, b), meta[0])


def _to_copy(s, t, meta, dtype):
    return t[0].to(dtype) if dtype in (torch.float32, torch.float64) and t[0].dtype != dtype else t[0]


def _clamp_mask(x, lo, hi):
    m = None
    if lo is not None:
        m = x >= lo
    if hi is not None:
        m = (x <= hi) if m is None else (m & (x <= hi))
    return m


def _clamp(s, t, meta):
    m = _clamp_mask(s["self"], s.get("min"), s.get("max"))
    return t[0] if m is None else t[0] * m


_SIMPLE = dict(
    AddmmBackward0=_rule(("mat1", "mat2", "alpha", "beta"), _addmm,
                         lambda c: tuple(["alpha", "beta"] + (["mat2"] if c[1] else []) + (["mat1"] if c[2] else []))),
    MmBackward0=_rule(("self", "mat2"), _mm, _need_bilinear("self", "mat2")),
    BmmBackward0=_rule(("self", "mat2"), _mm, _need_bilinear("self", "mat2")),
    AddBackward0=_rule(("alpha",), _add),
    SubBackward0=_rule(("alpha",), _sub),
    RsubBackward0=_rule(("alpha",), _rsub0),
    RsubBackward1=_rule(("alpha",), lambda s, t, m: -(t[0] * s["alpha"])),
    MulBackward0=_rule(("self", "other"), _mul, _need_bilinear("self", "other")),
    MulBackward1=_rule(("other",), lambda s, t, m: t[0] * s["other"]),
    DivBackward1=_rule(("other",), lambda s, t, m: t[0] / s["other"]),
    DivBackward0=_rule(("self", "other"), _div, lambda c: ("other",) + (("self",) if c[1] else ())),
    NegBackward0=_rule((), lambda s, t, m: -t[0]),
    PowBackward0=_rule(("self", "exponent"),
                       lambda s, t, m: t[0] * (s["exponent"] * s["self"] ** (s["exponent"] - 1))
                       if s["exponent"] != 0 else torch.zeros_like(t[0])),
    SqrtBackward0=_rule(("result",), lambda s, t, m: t[0] / (2 * s["result"])),
    RsqrtBackward0=_rule(("result",), lambda s, t, m: t[0] * (-0.5 * s["result"] ** 3)),
    ExpBackward0=_rule(("result",), lambda s, t, m: t[0] * s["result"]),
    LogBackward0=_rule(("self",), lambda s, t, m: t[0] / s["self"]),
    # diagonal Jacobians: the fused backward kernel applied to the tangent is the JVP
    TanhBackward0=_rule(("result",), lambda s, t, m: _aten.tanh_backward(t[0], s["result"])),
    SigmoidBackward0=_rule(("result",), lambda s, t, m: _aten.sigmoid_backward(t[0], s["result"])),
    ReluBackward0=_rule(("result",), lambda s, t, m: _aten.threshold_backward(t[0], s["result"], 0)),
    GeluBackward0=_rule(("self", "approximate"),
                        lambda s, t, m: _aten.gelu_backward(t[0], s["self"], approximate=s["approximate"])),
    SiluBackward0=_rule(("self",), lambda s, t, m: _aten.silu_backward(t[0], s["self"])),
    LeakyReluBackward0=_rule(("self", "negative_slope"),
                             lambda s, t, m: torch.where(s["self"] > 0, t[0], t[0] * s["negative_slope"])),
    HardtanhBackward0=_rule(("self", "min_val", "max_val"),
                            lambda s, t, m: t[0] * ((s["self"] > s["min_val"]) & (s["self"] < s["max_val"]))),
    ClampBackward1=_rule(("self", "min", "max"), _clamp),
    ClampMinBackward0=_rule(("self", "min"), _clamp),
    ClampMaxBackward0=_rule(("self", "max"), _clamp),
    # softmax: J = diag(p) − ppᵀ is symmetric
    SoftmaxBackward0=_rule(("result", "dim"), lambda s, t, m: _aten._softmax_backward_data(
        t[0], s["result"], s["dim"], s["result"].dtype)),
    LogSoftmaxBackward0=_rule(("result", "dim"), lambda s, t, m: t[0] - (
        torch.exp(s["result"]) * t[0]).sum(s["dim"], keepdim=True)),
    MeanBackward0=_rule((), lambda s, t, m: t[0].mean()),
    MeanBackward1=_rule(("dim", "keepdim"), _mean1),
    SumBackward0=_rule((), lambda s, t, m: t[0].sum()),
    SumBackward1=_rule(("dim", "keepdim"), _sum1),
    NativeDropoutBackward0=_rule(("result1", "p"), lambda s, t, m: t[0] * s["result1"] * (
        1.0 / (1.0 - s["p"]) if s["p"] < 1 else 0.0)),
    NativeLayerNormBackward0=_rule(("input", "normalized_shape", "weight", "result1", "result2"), _layer_norm),
    NativeGroupNormBackward0=_rule(("input", "weight", "result1", "result2", "N", "C", "HxW", "group"), _group_norm),
    ConvolutionBackward0=_rule(("input", "weight", "stride", "padding", "dilation", "transposed",
                                "output_padding", "groups"), _conv),
    EmbeddingBackward0=_rule(("indices",), lambda s, t, m: F.embedding(s["indices"], t[0])),
    TBackward0=_rule((), lambda s, t, m: t[0].t() if t[0].dim() == 2 else t[0]),
    TransposeBackward0=_rule(("dim0", "dim1"), lambda s, t, m: t[0].transpose(s["dim0"], s["dim1"])),
    PermuteBackward0=_rule(("dims",), lambda s, t, m: t[0].permute(s["dims"])),
    ExpandBackward0=_rule((), lambda s, t, m: t[0].expand(m[0])),
    RepeatBackward0=_rule(("repeats",), lambda s, t, m: t[0].repeat(s["repeats"])),
    SliceBackward0=_rule(("dim", "start", "end", "step"), _slice),
    SelectBackward0=_rule(("dim", "index"), lambda s, t, m: t[0].select(s["dim"], s["index"])),
    IndexBackward0=_rule(("indices",), lambda s, t, m: t[0][tuple(s["indices"])]),
    SplitBackward0=_rule(("dim", "split_size"), lambda s, t, m: t[0].split(s["split_size"], s["dim"])),
    SplitWithSizesBackward0=_rule(("dim", "split_sizes"), lambda s, t, m: t[0].split(list(s["split_sizes"]), s["dim"])),
    UnbindBackward0=_rule(("dim",), lambda s, t, m: t[0].unbind(s["dim"])),
    MaxPool2DWithIndicesBackward0=_rule(("result1",), _maxpool2d),
    MaxBackward0=_rule(("dim", "indices", "keepdim"), _max_dim),
    AvgPool2DBackward0=_rule(("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                              "divisor_override"),
                             lambda s, t, m: F.avg_pool2d(t[0], s["kernel_size"], s["stride"] or None, s["padding"],
                                                          s["ceil_mode"], s["count_include_pad"],
                                                          s["divisor_override"])),
    AdaptiveAvgPool2DBackward0=_rule((), lambda s, t, m: F.adaptive_avg_pool2d(t[0], m[0][-2:])),
    WhereBackward0=_rule(("condition",), _where),
    MaskedFillBackward0=_rule(("mask",), lambda s, t, m: t[0].masked_fill(s["mask"], 0)),
    StackBackward0=_rule(("dim",), lambda s, t, m: torch.stack([x if x is not None else torch.zeros_like(
        next(y for y in t if y is not None)) for x in t], s["dim"])),
)
def _softplus(s, t, m):
    bx = s["self"] * s["beta"]
    return t[0] * torch.where(bx > s["threshold"], torch.ones_like(bx), torch.sigmoid(bx))


def _elu(s, t, m):
    x, sc, a, isc = s["self"], s["scale"], s["alpha"], s["input_scale"]
    return t[0] * torch.where(x > 0, torch.full_like(x, sc), (sc * a * isc) * torch.exp(x * isc))


def _prelu(s, t, m):
    x, w = s["self"], s["weight"]
    pos = x > 0
    out = torch.where(pos, t[0], w * t[0]) if t[0] is not None else None
    if t[1] is not None:
        out = _sum(out, torch.where(pos, torch.zeros_like(x), x * t[1]))
    return _bshape(out, m[0])


def _addcmul(s, t, m):
    v = s["value"]
    prod = _sum(t[1] * s["tensor2"] if t[1] is not None else None, s["tensor1"] * t[2] if t[2] is not None else None)
    if prod is not None and v != 1:
        prod = prod * v
    return _bshape(_sum(t[0], prod), m[0])


def _var_dot(s, t):
    x, dims = s["self"], _red_dims(s["dim"], s["self"].dim())
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    n = 1
    for d in dims:
        n *= x.shape[d]
    c = s["correction"] if s["correction"] is not None else 1
    return (2.0 / max(n - c, 0)) * ((x - x.mean(dims, keepdim=True)) * t[0]).sum(dims, keepdim=s["keepdim"])


def _norm(s, t, m):
    if s["ord"] != 2:
        raise GraphUnsupported(f"vector norm of order {s['ord']}")
    dims = _red_dims(s["dim"], s["self"].dim())
    return (s["self"] * t[0]).sum(dims, keepdim=s["keepdim"]) / s["result"]


def _logsumexp(s, t, m):
    x, dims = s["self"], s["dim"]
    r = s["result"] if s["keepdim"] else s["result"].reshape(
        [1 if (d in dims or d - x.dim() in dims) else k for d, k in enumerate(x.shape)])
    return (torch.exp(x - r) * t[0]).sum(dims, keepdim=s["keepdim"])


_SIMPLE.update(
    SoftplusBackward0=_rule(("self", "beta", "threshold"), _softplus),
    EluBackward0=_rule(("self", "alpha", "scale", "input_scale"), _elu),
    PreluKernelBackward0=_rule(("self", "weight"), _prelu),
    SafeSoftmaxBackward0=_SIMPLE["SoftmaxBackward0"],
    UnsafeSplitBackward0=_SIMPLE["SplitBackward0"],
    AbsBackward0=_rule(("self",), lambda s, t, m: t[0] * torch.sign(s["self"])),
    ErfBackward0=_rule(("self",), lambda s, t, m: t[0] * ((2 / math.sqrt(math.pi)) * torch.exp(-s["self"] ** 2))),
    SinBackward0=_rule(("self",), lambda s, t, m: t[0] * torch.cos(s["self"])),
    CosBackward0=_rule(("self",), lambda s, t, m: -t[0] * torch.sin(s["self"])),
    ReciprocalBackward0=_rule(("result",), lambda s, t, m: -t[0] * s["result"] * s["result"]),
    AddcmulBackward0=_rule(("tensor1", "tensor2", "value"), _addcmul),
    HardswishBackward0=_rule(("self",), lambda s, t, m: t[0] * torch.where(
        s["self"] < -3, torch.zeros_like(s["self"]),
        torch.where(s["self"] <= 3, s["self"] / 3 + 0.5, torch.ones_like(s["self"])))),
    VarBackward0=_rule(("self", "dim", "correction", "keepdim"), lambda s, t, m: _var_dot(s, t)),
    StdBackward0=_rule(("self", "dim", "correction", "keepdim", "result"),
                       lambda s, t, m: _var_dot(s, t) / (2 * s["result"])),
    LinalgVectorNormBackward0=_rule(("self", "dim", "keepdim", "ord", "result"), _norm),
    LogsumexpBackward0=_rule(("self", "dim", "keepdim", "result"), _logsumexp),
    ConstantPadNdBackward0=_rule(("pad",), lambda s, t, m: F.pad(t[0], list(s["pad"]))),
    FlipBackward0=_rule(("dims",), lambda s, t, m: t[0].flip(s["dims"])),
    RollBackward0=_rule(("shifts", "dims"), lambda s, t, m: t[0].roll(s["shifts"], s["dims"])),
)

# reshapes (row-major order kept): the tangent takes the output's shape
for _n in ("ViewBackward0", "UnsafeViewBackward0", "ReshapeAliasBackward0", "SqueezeBackward0",
           "SqueezeBackward1", "SqueezeBackward2", "UnsqueezeBackward0", "AliasBackward0", "CloneBackward0"):
    _SIMPLE[_n] = _rule((), lambda s, t, m: t[0].reshape(m[0]))

RULES: dict[str, tuple[Callable, Callable]] = dict(_SIMPLE)
RULES["NativeBatchNormBackward0"] = (_bn_cap, _batch_norm)
RULES["ScaledDotProductFlashAttentionForCpuBackward0"] = (_sdpa_cap, _sdpa_cpu)
# completed in capture(): the input shapes (cat) and the output dtype (to) come from the neighbouring nodes
RULES["CatBackward0"] = (lambda n, S, c: {"dim": S("dim")}, None)
RULES["ToCopyBackward0"] = (lambda n, S, c: {}, None)


# ----------------------------------------------------------------------------- the tape
class Tape:
    """One captured graph (see the module doc).  :meth:`jvp` may be called several times (the controller
    recomputes the radius along the applied step); :meth:`release` drops every held tensor."""

    def __init__(self):
        self.ops: list[tuple] = []     # (apply, inputs, saved, meta, has_alias)
        self.held: list[tuple[torch.Tensor, int]] = []  # (saved tensor, version at capture)
        self.root = -1
        self.root_out = 0
        self.z_shape: tuple = ()
        self.z_dtype = torch.float32
        self.z_device = torch.device("cpu")
        self.last_use: list[int] = []

    def release(self) -> None:
        self.ops, self.held = [], []

    def tensors(self) -> list[torch.Tensor]:
        """The held saved tensors (for tests of the memory release)."""
        return [t for t, _ in self.held]

    def jvp(self, old: list[torch.Tensor], params: list[torch.Tensor], direction: list[torch.Tensor | None]
            ) -> torch.Tensor:
        """``J_z·direction`` at the parameters ``old`` (θ_old copies of ``params``, same order)."""
        for t, v in self.held:
            if t._version != v:
                raise GraphUnsupported("a tensor saved by the training forward was modified in place after it")
        tan: list[Any] = [None] * len(self.ops)
        try:
            with torch.no_grad():
                for j, (fn, inputs, saved, meta, alias) in enumerate(self.ops):
                    if fn is None:  # leaf
                        tan[j] = (direction[inputs],) if inputs is not None else None
                        continue
                    tin = [None if r is None or tan[r[0]] is None else tan[r[0]][r[1]] for r in inputs]
                    if all(x is None for x in tin):
                        tan[j] = None
                    else:
                        if alias:
                            saved = _resolve(saved, old, params)
                        out = fn(saved, tin, meta)
                        tan[j] = tuple(out) if isinstance(out, (tuple, list)) else (out,)
                    for r in inputs:
                        if r is not None and self.last_use[r[0]] == j:
                            tan[r[0]] = None
        except GraphUnsupported:
            raise
        except Exception as e:  # noqa: BLE001 - any failure inside a rule: fall back to the replay
            raise GraphUnsupported(f"tangent rule failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") \
                from e
        a = None if self.root < 0 or tan[self.root] is None else tan[self.root][self.root_out]
        if a is None:
            return torch.zeros(self.z_shape, dtype=self.z_dtype, device=self.z_device)
        if tuple(a.shape) != self.z_shape:
            raise GraphUnsupported(f"tangent has shape {tuple(a.shape)}, the logits {self.z_shape}")
        return a


def _resolve(saved: dict, old: list[torch.Tensor], params: list[torch.Tensor]) -> dict:
    out = {}
    for k, v in saved.items():
        if isinstance(v, _Alias):
            o = old[v.i]
            v = o.as_strided(v.size, v.stride, o.storage_offset() + v.offset)
        elif isinstance(v, (tuple, list)) and any(isinstance(x, _Alias) for x in v):
            v = type(v)(old[x.i].as_strided(x.size, x.stride, old[x.i].storage_offset() + x.offset)
                        if isinstance(x, _Alias) else x for x in v)
        out[k] = v
    return out


def capture(z: torch.Tensor, params: list[torch.Tensor], stop: set, max_nodes: int = 200000) -> Tape:
    """The tape of ``z``'s graph (see the module doc).  ``params``: the controlled parameters (leaf
    tangents are given per index); ``stop``: ids of ``grad_fn`` nodes of the module's inputs (not walked).
    Raises :class:`GraphUnsupported` with the reason."""
    tape = Tape()
    tape.z_shape, tape.z_dtype, tape.z_device = tuple(z.shape), z.dtype, z.device
    root = z.grad_fn
    if root is None:
        return tape
    pid = {id(p): i for i, p in enumerate(params)}
    pstore: dict[int, int] = {}
    for i, p in enumerate(params):
        if not p.is_contiguous():
            raise GraphUnsupported("a controlled parameter is not contiguous")
        ptr = p.untyped_storage().data_ptr()
        if ptr in pstore:
            raise GraphUnsupported("two controlled parameters share one storage")
        pstore[ptr] = i
    # iterative post-order
    index: dict[Any, int] = {}
    order: list[Any] = []
    stack: list[tuple[Any, bool]] = [(root, False)]
    visiting = set()
    while stack:
        n, done = stack.pop()
        if done:
            index[n] = len(order)
            order.append(n)
            continue
        if n in index or n in visiting:
            continue
        visiting.add(n)
        if len(visiting) > max_nodes:
            raise GraphUnsupported(f"graph larger than {max_nodes} nodes")
        stack.append((n, True))
        if id(n) in stop:
            continue
        for f, _ in n.next_functions:
            if f is not None and f not in index:
                stack.append((f, False))
    carry: list[bool] = []
    last_use = [-1] * len(order)
    held = tape.held

    for j, n in enumerate(order):
        if id(n) in stop:
            tape.ops.append((None, None, None, None, False))
            carry.append(False)
            continue
        name = type(n).__name__
        if name == "AccumulateGrad":
            i = pid.get(id(n.variable))
            tape.ops.append((None, i, None, None, False))
            carry.append(i is not None)
            continue
        rule = RULES.get(name)
        if rule is None:
            raise GraphUnsupported(f"no tangent rule for {name}" + (
                " (a custom autograd.Function)" if isinstance(n, torch.autograd.function.BackwardCFunction) else ""))
        inputs = [None if f is None else (index[f], k) for f, k in n.next_functions]
        c = [r is not None and carry[r[0]] for r in inputs]
        if not any(c):
            tape.ops.append((None, None, None, None, False))
            carry.append(False)
            continue
        alias = [False]

        def S(attr, n=n, alias=alias):
            v = getattr(n, "_saved_" + attr)
            if isinstance(v, int) and not isinstance(v, bool) and v >= _I63:
                return v - _U64  # a negative dim saved as uint64
            if isinstance(v, (tuple, list)) and any(isinstance(x, int) and x >= _I63 for x in v):
                return type(v)(x - _U64 if isinstance(x, int) and x >= _I63 else x for x in v)
            if isinstance(v, torch.Tensor):
                return _hold(v, held, pstore, params, alias)
            if isinstance(v, (tuple, list)) and any(isinstance(x, torch.Tensor) for x in v):
                return type(v)(_hold(x, held, pstore, params, alias) if isinstance(x, torch.Tensor) else x
                               for x in v)
            return v

        try:
            saved = rule[0](n, S, c)
        except GraphUnsupported:
            raise
        except Exception as e:  # noqa: BLE001 - a saved tensor could not be read (freed, modified, ...)
            raise GraphUnsupported(f"{name}: saved values unreadable ({type(e).__name__}: "
                                   f"{str(e).splitlines()[0] if str(e) else ''})") from e
        meta = [tuple(m.shape) for m in n._input_metadata]
        apply = rule[1]
        if name == "CatBackward0":
            shapes = [None if r is None else _out_shape(order[r[0]], r[1], z) for r in inputs]
            unknown = [i for i, sh in enumerate(shapes) if sh is None]
            if len(unknown) == 1:  # a constant input: its extent along dim is what the others leave
                d = saved["dim"] % len(meta[0])
                known = [sh for sh in shapes if sh is not None]
                sh = list(meta[0])
                sh[d] = meta[0][d] - sum(k[d] for k in known)
                shapes[unknown[0]] = tuple(sh)
            elif unknown:
                raise GraphUnsupported("CatBackward0 with several constant inputs")
            apply = (lambda shapes: lambda s, t, m: _cat(s, t, m, shapes))(shapes)
        elif name == "ToCopyBackward0":
            dt = n._input_metadata[0].dtype
            apply = (lambda dt: lambda s, t, m: _to_copy(s, t, m, dt))(dt)
        for r in inputs:
            if r is not None:
                last_use[r[0]] = j
        tape.ops.append((apply, inputs, saved, meta, alias[0]))
        carry.append(True)
    tape.root, tape.root_out = index[root], z.output_nr
    tape.last_use = last_use
    last_use[tape.root] = len(order)  # never freed
    return tape


_I63, _U64 = 1 << 63, 1 << 64


def _out_shape(node, k: int, z) -> tuple | None:
    try:
        return tuple(node._input_metadata[k].shape)
    except Exception:  # noqa: BLE001
        return None


def _hold(t: torch.Tensor, held: list, pstore: dict, params: list[torch.Tensor], alias: list):
    if t.layout != torch.strided:
        raise GraphUnsupported(f"saved tensor with layout {t.layout}")
    t = t.detach()
    i = pstore.get(t.untyped_storage().data_ptr()) if t.numel() else None
    if i is not None:
        a = _Alias(i, t, params[i])
        last = a.offset + sum((k - 1) * st for k, st in zip(a.size, a.stride) if k > 0)
        if a.offset < 0 or last >= params[i].numel() or any(st < 0 for st in a.stride):
            raise GraphUnsupported("a saved tensor shares storage with a parameter but is not a view inside it")
        alias[0] = True
        return a
    held.append((t, t._version))
    return t


# ----------------------------------------------------------------------------- watching the forward
class GraphWatch(TorchFunctionMode):
    """Active during the observed training forward; flags what the graph cannot see: a tensor that requires
    grad used while grad mode is off (``torch.no_grad`` / ``inference_mode`` blocks) or detached
    (``.detach()``, ``.data``).  The logits may depend on the parameters through such a path, which the
    autograd graph does not record; the tape is then refused (the replay differentiates it).  Every call is
    passed through unchanged: the training forward computes exactly what it computes without the mode."""

    _DETACH = {torch.Tensor.detach, torch.detach, torch.Tensor.detach_}

    def __init__(self):
        super().__init__()
        self.hit = ""
        self._data = torch.Tensor.data

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if not self.hit:
            if func in self._DETACH or getattr(func, "__self__", None) is self._data:
                if args and isinstance(args[0], torch.Tensor) and args[0].requires_grad:
                    self.hit = "the forward detaches a tensor that requires grad (.detach()/.data)"
            elif not torch.is_grad_enabled():
                for a in args:
                    if isinstance(a, torch.Tensor) and a.requires_grad:
                        self.hit = "the forward uses a tensor that requires grad with grad mode off (no_grad)"
                        break
                    if isinstance(a, (list, tuple)) and any(isinstance(x, torch.Tensor) and x.requires_grad
                                                            for x in a):
                        self.hit = "the forward uses a tensor that requires grad with grad mode off (no_grad)"
                        break
        return func(*args, **(kwargs or {}))
