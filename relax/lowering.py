"""Lowering a :class:`models.Network` into the node list the bound-propagation engine walks.

Each original node becomes one lowered node of a small set of kinds, except that a sorting
activation (MaxMin, GroupSort) may become several compare-exchange layers (internal names
``"<name>#k"``; the last one keeps the original name, so every original node keeps its name):

| kind       | meaning                                    | handler table                          |
|------------|--------------------------------------------|----------------------------------------|
| input      | the input set                              | -                                      |
| affine     | linear/conv2d/flatten/reshape/scale_shift/avgpool2d | :data:`relax.affine.AFFINE_HANDLERS` |
| add        | residual sum of two nodes                  | (coefficients copied to both inputs)   |
| identity   | a no-op (GroupSort with groups of 1)        | -                                      |
| act        | ``y = P x + Q phi(R x)``, phi elementwise  | :data:`relax.activations.ACTIVATION_RELAXATIONS` + :data:`relax.piecewise.PIECEWISE_LOWERING` |

For ``act`` nodes with ``pmap is None`` the map is simply ``y = phi(x)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..models.errors import UnsupportedOperationError
from ..models.graph import Network, Node

from .activations import ACTIVATION_RELAXATIONS
from .affine import AFFINE_HANDLERS
from .piecewise import PIECEWISE_LOWERING


@dataclass
class LNode:
    name: str
    kind: str
    inputs: tuple[str, ...]
    shape: tuple[int, ...]
    node: Node | None = None
    phi: Any = None
    attrs: dict = field(default_factory=dict)
    pmap: Any = None

    @property
    def pre_shape(self) -> tuple[int, ...]:
        return self.pmap.pre_shape if self.pmap is not None else None


def lower(net: Network) -> list[LNode]:
    out: list[LNode] = []
    shapes = {n.name: n.shape for n in net.nodes}
    dev = net.device
    for n in net.nodes:
        if n.op == "input":
            out.append(LNode(n.name, "input", (), n.shape, n))
        elif n.op in AFFINE_HANDLERS:
            out.append(LNode(n.name, "affine", n.inputs, n.shape, n))
        elif n.op == "add":
            out.append(LNode(n.name, "add", n.inputs, n.shape, n))
        elif n.op in ACTIVATION_RELAXATIONS:
            out.append(LNode(n.name, "act", n.inputs, n.shape, n, ACTIVATION_RELAXATIONS[n.op], dict(n.attrs)))
        elif n.op in PIECEWISE_LOWERING:
            x_shape = shapes[n.inputs[0]]
            layers = PIECEWISE_LOWERING[n.op](n, x_shape, dev)
            if not layers:
                out.append(LNode(n.name, "identity", n.inputs, n.shape, n))
                continue
            prev = n.inputs[0]
            for k, pm in enumerate(layers):
                name = n.name if k == len(layers) - 1 else f"{n.name}#{k}"
                out.append(LNode(name, "act", (prev,), x_shape, n, ACTIVATION_RELAXATIONS["relu"], {}, pm))
                prev = name
        else:
            raise UnsupportedOperationError(f"relax: node {n.describe()}: op {n.op!r} has no bound-propagation handler")
    return out
