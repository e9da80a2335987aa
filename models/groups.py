"""Which features a grouped activation (MaxMin, GroupSort, Householder) acts on together.

A grouped activation acts on **dimension 1** of its input: the features of a ``(B, n)`` tensor, or
the *channels at each pixel* of a ``(B, C, H, W)`` tensor (after a convolution), exactly as
:mod:`models.layers` computes it.  Every consumer that works on the flattened per-sample vector
(the dense chains of ``relax/lipschitz``, the SDP lifts and NSR constraints of ``sdp/``, the exact
engines) must therefore pair flat index ``c * P + p`` (channel ``c``, spatial position ``p``,
``P = H * W``) with ``c' * P + p`` -- *not* with the next flat index.  :func:`activation_groups` is the
one place that says which flat indices form a group; every consumer calls it.

For a node whose per-sample shape is ``(C, *spatial)`` (``P = prod(spatial)``, ``P = 1`` for vectors):

* ``maxmin`` ``layout="pairs"``: channel pairs ``(2k, 2k+1)``; ``layout="halves"``: ``(k, k + C/2)``;
  column 0 of a group receives the max, column 1 the min.
* ``groupsort`` (``g = group_size``): channels ``kg, ..., kg + g - 1``, in that order (the layer sorts
  them descending by default: column 0 receives the largest).
* ``householder`` (``v``: ``(C/g, g)``): channels ``kg, ..., kg + g - 1``; group ``(k, p)`` uses row
  ``k`` of ``v`` (``ActivationGroups.channel_group``), column ``i`` of the group pairs with ``v[k, i]``.

Rows are ordered channel-group major, spatial position minor: row ``k * P + p`` is channel group
``k`` at position ``p`` (the order of a ``(B, C/g, *spatial)`` tensor of per-group switches, as in
:mod:`relax.piecewise`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .errors import ShapeMismatchError, UnsupportedOperationError

GROUPED_OPS = ("maxmin", "groupsort", "householder")


@dataclass(frozen=True)
class ActivationGroups:
    """Flat-index groups of one grouped activation node (see the module docstring)."""

    index: torch.Tensor          # (G, g) long: flat per-sample indices, one row per group
    channel_group: torch.Tensor  # (G,) long: channel group k of each row (the row of v for Householder)
    n: int                       # features per sample (numel of the node's input = output)

    @property
    def size(self) -> int:
        return int(self.index.shape[1])

    @property
    def count(self) -> int:
        return int(self.index.shape[0])

    def indicator(self, dtype=torch.float64) -> torch.Tensor:
        """``(n, G)`` 0/1 matrix: entry ``(i, j)`` is 1 when flat feature ``i`` belongs to group ``j``."""
        M = torch.zeros(self.n, self.count, dtype=dtype)
        M[self.index.reshape(-1), torch.arange(self.count).repeat_interleave(self.size)] = 1.0
        return M

    def rows_matrix(self, values: torch.Tensor) -> torch.Tensor:
        """``(G, n)`` matrix whose row ``j`` holds ``values[j]`` (``(G, g)``) at group ``j``'s flat indices,
        e.g. ``rows_matrix(v[channel_group])`` is the matrix of the Householder switches ``v^T z``."""
        M = values.new_zeros((self.count, self.n))
        M.scatter_(1, self.index.to(values.device), values)
        return M

    def householder_v(self, v: torch.Tensor) -> torch.Tensor:
        """``(G, g)``: the row of ``v`` each group uses (exact: a gather, no arithmetic)."""
        return v[self.channel_group.to(v.device)]


def group_size_of(node) -> int:
    if node.op == "maxmin":
        return 2
    if node.op == "groupsort":
        return int(node.attrs["group_size"])
    if node.op == "householder":
        return int(node.params["v"].shape[1])
    raise UnsupportedOperationError(f"node {node.describe()}: op {node.op!r} is not a grouped activation")


def channel_groups(op: str, attrs: dict, C: int, g: int, where: str = "") -> torch.Tensor:
    """``(C // g, g)`` channel (dimension-1) indices of each group of a grouped activation ``op``
    (the axis-level grouping; :func:`activation_groups` expands it over the spatial positions)."""
    who = f"node {where}" if where else op
    if g < 1 or C % g:
        raise ShapeMismatchError(f"{who}: {C} channels/features are not divisible into groups of {g}")
    K = C // g
    if op == "maxmin":
        layout = attrs.get("layout", "pairs")
        if layout == "pairs":
            return torch.arange(C).reshape(K, 2)
        if layout == "halves":
            return torch.stack((torch.arange(K), torch.arange(K) + K), 1)
        raise UnsupportedOperationError(f"{who}: MaxMin layout {layout!r} is not supported")
    if op in ("groupsort", "householder"):
        return torch.arange(C).reshape(K, g)
    raise UnsupportedOperationError(f"{who}: op {op!r} is not a grouped activation")


def activation_groups(node, shape: tuple[int, ...] | None = None) -> ActivationGroups:
    """The groups of a MaxMin / GroupSort / Householder ``node`` over its flattened per-sample input.

    ``shape``: the node's per-sample shape (default ``node.shape``, set by :class:`models.graph.Network`).
    Raises :class:`ShapeMismatchError` naming the node when the channels do not divide into groups.
    """
    shape = tuple(node.shape if shape is None else shape)
    if not shape:
        raise ShapeMismatchError(f"node {node.describe()}: grouped activation without a known input shape")
    C = int(shape[0])
    P = math.prod(shape[1:]) if len(shape) > 1 else 1
    g = group_size_of(node)
    if g < 1 or C % g:
        raise ShapeMismatchError(f"node {node.describe()}: {C} channels/features (dimension 1 of shape {shape}) "
                                 f"are not divisible into groups of {g}")
    K = C // g
    ch = channel_groups(node.op, node.attrs, C, g, where=node.describe())
    if node.op == "householder" and tuple(node.params["v"].shape) != (K, g):
        raise ShapeMismatchError(f"node {node.describe()}: v has shape {tuple(node.params['v'].shape)}, "
                                 f"{C} channels need ({K}, {g})")
    pos = torch.arange(P)
    index = (ch[:, None, :] * P + pos[None, :, None]).reshape(K * P, g)
    return ActivationGroups(index, torch.arange(K).repeat_interleave(P), C * P)
