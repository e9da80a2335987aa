"""The op kinds of the normalized description: one table from op name to its reference semantics.

Adding an op means adding one entry here (its evaluation) and one handler in each method's table
(``relax/`` and ``sdp/``).  Shapes exclude the batch dimension.

| op            | inputs | params                     | attrs                                   |
|---------------|--------|----------------------------|-----------------------------------------|
| input         | 0      |                            | shape                                   |
| linear        | 1      | weight (out, in), bias     |                                         |
| conv2d        | 1      | weight (O, I/g, kh, kw), bias | stride, padding, dilation, groups    |
| flatten       | 1      |                            |                                         |
| reshape       | 1      |                            | shape                                   |
| scale_shift   | 1      | scale, shift (broadcast)   |  (input normalization, unfolded BN)     |
| avgpool2d     | 1      |                            | kernel_size, stride, padding            |
| relu          | 1      |                            |                                         |
| leaky_relu    | 1      |                            | negative_slope                          |
| tanh, sigmoid | 1      |                            |                                         |
| maxmin        | 1      |                            | layout ("pairs" or "halves")            |
| groupsort     | 1      |                            | group_size, descending                  |
| householder   | 1      | v (groups, group_size), unit rows |                                  |
| add           | 2      |                            |  (residual connection)                  |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from . import layers


@dataclass(frozen=True)
class OpSpec:
    name: str
    arity: int | None
    kind: str  # "input", "affine", "activation", "merge"
    evaluate: Callable[..., torch.Tensor]
    piecewise_linear: bool = True


def _linear(n, x):
    return F.linear(x, n.params["weight"], n.params.get("bias"))


def _conv2d(n, x):
    a = n.attrs
    return F.conv2d(x, n.params["weight"], n.params.get("bias"), stride=tuple(a.get("stride", (1, 1))),
                    padding=tuple(a.get("padding", (0, 0))), dilation=tuple(a.get("dilation", (1, 1))),
                    groups=int(a.get("groups", 1)))


def _avgpool2d(n, x):
    a = n.attrs
    return F.avg_pool2d(x, tuple(a["kernel_size"]), tuple(a.get("stride") or a["kernel_size"]),
                        tuple(a.get("padding", (0, 0))), count_include_pad=True)


def _scale_shift(n, x):
    return x * n.params["scale"] + n.params["shift"]


OPS: dict[str, OpSpec] = {o.name: o for o in [
    OpSpec("input", 0, "input", lambda n: None),
    OpSpec("linear", 1, "affine", _linear),
    OpSpec("conv2d", 1, "affine", _conv2d),
    OpSpec("flatten", 1, "affine", lambda n, x: x.reshape(x.shape[0], -1)),
    OpSpec("reshape", 1, "affine", lambda n, x: x.reshape(x.shape[0], *n.attrs["shape"])),
    OpSpec("scale_shift", 1, "affine", _scale_shift),
    OpSpec("avgpool2d", 1, "affine", _avgpool2d),
    OpSpec("relu", 1, "activation", lambda n, x: torch.relu(x)),
    OpSpec("leaky_relu", 1, "activation", lambda n, x: F.leaky_relu(x, float(n.attrs["negative_slope"]))),
    OpSpec("tanh", 1, "activation", lambda n, x: torch.tanh(x), piecewise_linear=False),
    OpSpec("sigmoid", 1, "activation", lambda n, x: torch.sigmoid(x), piecewise_linear=False),
    OpSpec("maxmin", 1, "activation", lambda n, x: layers.max_min(x, n.attrs.get("layout", "pairs"))),
    OpSpec("groupsort", 1, "activation",
           lambda n, x: layers.group_sort(x, int(n.attrs["group_size"]), bool(n.attrs.get("descending", True)))),
    OpSpec("householder", 1, "activation", lambda n, x: layers.householder(x, n.params["v"])),
    OpSpec("add", 2, "merge", lambda n, a, b: a + b),
]}

ACTIVATIONS = tuple(k for k, v in OPS.items() if v.kind == "activation")
