"""Handlers for the affine ops: interval propagation and the backward (adjoint) map.

An affine node computes ``y = L x + b`` with ``L`` linear.  Bound propagation needs

* ``ibp``: the exact interval image of a box: ``L mid + b +- |L| rad`` (``|L|`` = the same op
  with entrywise absolute weights), and
* ``backward``: for coefficients ``A`` of shape ``(Bb, m, *y_shape)`` of a linear bound
  ``A y + c``, the coefficients ``A L`` on ``x`` (shape ``(Bb, m, *x_shape)``) and the constant
  ``<A, b>`` (shape ``(Bb, m)``).  Convolutions use ``conv_transpose2d`` (the adjoint of
  ``conv2d``), so nothing is unrolled into a dense matrix.

Both are exact (no relaxation), so the only soundness concern is floating-point rounding, which
the engine covers with its outward margin.  ``Bb`` may be 1 (coefficients shared by the batch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.errors import UnsupportedOperationError


def _conv_params(node):
    a = node.attrs
    return (tuple(a.get("stride", (1, 1))), tuple(a.get("padding", (0, 0))), tuple(a.get("dilation", (1, 1))),
            int(a.get("groups", 1)))


def _conv_transpose(A2, weight, in_hw, stride, padding, dilation, groups):
    """Adjoint of conv2d applied to ``A2`` of shape ``(N, Cout, Ho, Wo)`` -> ``(N, Cin, H, W)``.

    ``conv_transpose2d`` in general; for convolutions with very few input channels (the first layer of
    an image network) a matmul + ``fold`` (col2im) is used, which is faster on CPU there.
    """
    kh, kw = weight.shape[-2:]
    Ho, Wo = A2.shape[-2:]
    if groups == 1 and weight.shape[1] <= 3:
        N, Co = A2.shape[:2]
        cols = torch.matmul(weight.reshape(Co, -1).T, A2.reshape(N, Co, Ho * Wo))
        return F.fold(cols, tuple(in_hw), (kh, kw), dilation=dilation, padding=padding, stride=stride)
    out_pad = []
    for d, (n_in, n_out, k) in enumerate(zip(in_hw, (Ho, Wo), (kh, kw))):
        base = (n_out - 1) * stride[d] - 2 * padding[d] + dilation[d] * (k - 1) + 1
        out_pad.append(n_in - base)
    return F.conv_transpose2d(A2, weight, None, stride=stride, padding=padding, output_padding=tuple(out_pad),
                              groups=groups, dilation=dilation)


def _fold(A, shape):
    """``(Bb, m, *shape)`` -> ``(Bb*m, *shape)``."""
    return A.reshape(A.shape[0] * A.shape[1], *shape)


class _Linear:
    @staticmethod
    def ibp(node, lo, hi):
        W, b = node.params["weight"], node.params.get("bias")
        mid, rad = (lo + hi) / 2, (hi - lo) / 2
        c = F.linear(mid, W, b)
        r = F.linear(rad, W.abs())
        return c - r, c + r

    @staticmethod
    def backward(node, A, in_shape):
        W, b = node.params["weight"], node.params.get("bias")
        A_in = torch.matmul(A, W)
        bias = torch.matmul(A, b) if b is not None else None
        return A_in, bias


class _Conv2d:
    @staticmethod
    def ibp(node, lo, hi):
        s, p, d, g = _conv_params(node)
        W, b = node.params["weight"], node.params.get("bias")
        mid, rad = (lo + hi) / 2, (hi - lo) / 2
        c = F.conv2d(mid, W, b, s, p, d, g)
        r = F.conv2d(rad, W.abs(), None, s, p, d, g)
        return c - r, c + r

    @staticmethod
    def backward(node, A, in_shape):
        s, p, d, g = _conv_params(node)
        W, b = node.params["weight"], node.params.get("bias")
        Bb, m = A.shape[:2]
        A_in = _conv_transpose(_fold(A, A.shape[2:]), W, in_shape[-2:], s, p, d, g).reshape(Bb, m, *in_shape)
        bias = torch.einsum("bmchw,c->bm", A, b) if b is not None else None
        return A_in, bias


class _Reshape:
    @staticmethod
    def ibp(node, lo, hi):
        return lo.reshape(lo.shape[0], *node.shape), hi.reshape(hi.shape[0], *node.shape)

    @staticmethod
    def backward(node, A, in_shape):
        return A.reshape(*A.shape[:2], *in_shape), None


def _full(t, shape):
    return torch.broadcast_to(t, (1, *shape))[0]


class _ScaleShift:
    @staticmethod
    def ibp(node, lo, hi):
        s, t = node.params["scale"], node.params["shift"]
        mid, rad = (lo + hi) / 2, (hi - lo) / 2
        c = mid * s + t
        r = rad * s.abs()
        return c - r, c + r

    @staticmethod
    def backward(node, A, in_shape):
        s = _full(node.params["scale"], in_shape)
        t = _full(node.params["shift"], node.shape)
        return A * s, (A * t).flatten(2).sum(-1)


class _AvgPool2d:
    """``avg_pool2d`` with ``count_include_pad=True`` is a depthwise conv with weight ``1/(kh kw)``."""

    @staticmethod
    def _weight(node, C, ref):
        kh, kw = node.attrs["kernel_size"]
        return torch.full((C, 1, kh, kw), 1.0 / (kh * kw), dtype=ref.dtype, device=ref.device)

    @staticmethod
    def _params(node):
        a = node.attrs
        return tuple(a.get("stride") or a["kernel_size"]), tuple(a.get("padding", (0, 0)))

    @staticmethod
    def ibp(node, lo, hi):
        ev = lambda x: F.avg_pool2d(x, tuple(node.attrs["kernel_size"]), *_AvgPool2d._params(node),
                                     count_include_pad=True)
        return ev(lo), ev(hi)  # monotone with nonnegative weights

    @staticmethod
    def backward(node, A, in_shape):
        stride, pad = _AvgPool2d._params(node)
        C = in_shape[0]
        Bb, m = A.shape[:2]
        W = _AvgPool2d._weight(node, C, A)
        A_in = _conv_transpose(_fold(A, A.shape[2:]), W, in_shape[-2:], stride, pad, (1, 1), C)
        return A_in.reshape(Bb, m, *in_shape), None


AFFINE_HANDLERS = {
    "linear": _Linear,
    "conv2d": _Conv2d,
    "flatten": _Reshape,
    "reshape": _Reshape,
    "scale_shift": _ScaleShift,
    "avgpool2d": _AvgPool2d,
}


def affine_handler(op: str):
    try:
        return AFFINE_HANDLERS[op]
    except KeyError:
        raise UnsupportedOperationError(f"relax: no affine handler for op {op!r}") from None
