"""Exact ReLU rewritings of the sorting and reflection activations (MaxMin, GroupSort, Householder).

Each is written as ``y = P x + Q relu(R x)`` with linear ``P, Q, R``, an *exact* identity, so the
only relaxation involved is the ReLU's (and its pre-activation bounds are bounds on ``R x``):

* compare-exchange of feature pairs ``(i, j)`` along dim 1 (``max`` to ``i``, ``min`` to ``j``):
  ``max(a, b) = b + relu(a - b)``, ``min(a, b) = a - relu(a - b)``; so ``R x = x_I - x_J``,
  ``P`` swaps ``I`` and ``J``, ``Q r`` adds ``r`` at ``I`` and subtracts it at ``J``.
  MaxMin ("pairs" or "halves") is one compare-exchange layer.
* GroupSort(g) is a sorting network of compare-exchange layers inside each group of ``g``
  consecutive features: the optimal 3-layer network for ``g = 4`` and odd-even transposition sort
  (``g`` layers) otherwise; a sorting network sorts every input, so the composition is exact.
* Householder with rows ``v`` per group: ``z -> z if v.z > 0 else z - 2 v (v.z)``, i.e.
  ``z + 2 v relu(-v.z)``: ``P = I``, ``R z = -v.z`` (one scalar per group), ``Q r = 2 v r``.

The groups along dim 1 come from :func:`models.groups.channel_groups` (the same helper every flat-index
consumer uses through :func:`models.groups.activation_groups`).  Each map object works on tensors with any leading dimension ``N`` followed by the per-sample shape
(``x``: ``(N, *x_shape)``, ``r``: ``(N, *pre_shape)``) and provides the adjoints ``Rt, Pt, Qt`` that
the backward pass needs, and an interval image ``ibp``.
"""

from __future__ import annotations

import torch

from ..models.errors import ShapeMismatchError
from ..models.groups import activation_groups, channel_groups


class CompareExchange:
    """One layer of disjoint compare-exchanges ``(I[k], J[k])`` along dim 1 (max -> I, min -> J)."""

    def __init__(self, I, J, x_shape, device=None):
        self.I = torch.as_tensor(I, dtype=torch.long, device=device)
        self.J = torch.as_tensor(J, dtype=torch.long, device=device)
        self.x_shape = tuple(x_shape)
        self.pre_shape = (len(self.I), *self.x_shape[1:])

    def R(self, x):
        return x[:, self.I] - x[:, self.J]

    def R_abs(self, x):
        return x[:, self.I] + x[:, self.J]

    def Rt(self, G):
        out = G.new_zeros((G.shape[0], *self.x_shape))
        out[:, self.I] = G
        out[:, self.J] = -G
        return out

    def Pt(self, A):  # P is the swap of I and J (an involution, so P^T = P)
        out = A.clone()
        out[:, self.I] = A[:, self.J]
        out[:, self.J] = A[:, self.I]
        return out

    def Qt(self, A):
        return A[:, self.I] - A[:, self.J]

    def forward(self, x, r):
        y = self.Pt(x)
        y[:, self.I] += r
        y[:, self.J] -= r
        return y

    def ibp(self, l, u, rl, ru):
        lo, hi = l.clone(), u.clone()
        lo[:, self.I] = torch.maximum(l[:, self.I], l[:, self.J])
        hi[:, self.I] = torch.maximum(u[:, self.I], u[:, self.J])
        lo[:, self.J] = torch.minimum(l[:, self.I], l[:, self.J])
        hi[:, self.J] = torch.minimum(u[:, self.I], u[:, self.J])
        return lo, hi


class HouseholderMap:
    """``z + 2 v relu(-v.z)`` per group of ``g`` features along dim 1 (``v``: (groups, g))."""

    def __init__(self, v, x_shape):
        groups, g = v.shape
        if x_shape[0] != groups * g:
            raise ShapeMismatchError(f"Householder: {x_shape[0]} features do not match {groups} groups of {g}")
        self.v = v
        self.groups, self.g = groups, g
        self.x_shape = tuple(x_shape)
        self.pre_shape = (groups, *self.x_shape[1:])
        self._vv = v.reshape(1, groups, g, *([1] * (len(x_shape) - 1)))

    def _grp(self, x):
        return x.reshape(x.shape[0], self.groups, self.g, *self.x_shape[1:])

    def R(self, x):
        return -(self._vv.to(x.dtype) * self._grp(x)).sum(2)

    def R_abs(self, x):
        return (self._vv.to(x.dtype).abs() * self._grp(x)).sum(2)

    def Rt(self, G):
        return (-self._vv.to(G.dtype) * G.unsqueeze(2)).reshape(G.shape[0], *self.x_shape)

    def Pt(self, A):
        return A

    def Qt(self, A):
        return 2 * (self._vv.to(A.dtype) * self._grp(A)).sum(2)

    def forward(self, x, r):
        return x + (2 * self._vv.to(x.dtype) * r.unsqueeze(2)).reshape(x.shape)

    def ibp(self, l, u, rl, ru):
        vv = self._vv.to(l.dtype)
        vp, vn = vv.clamp_min(0), vv.clamp_max(0)
        rl_, ru_ = rl.unsqueeze(2), ru.unsqueeze(2)
        lo = l + (2 * (vp * rl_ + vn * ru_)).reshape(l.shape)
        hi = u + (2 * (vp * ru_ + vn * rl_)).reshape(u.shape)
        return lo, hi


def maxmin_layers(attrs, x_shape, device=None):
    ch = channel_groups("maxmin", attrs, int(x_shape[0]), 2)  # channel pairs along dim 1
    return [CompareExchange(ch[:, 0], ch[:, 1], x_shape, device)]


def sorting_network(g: int) -> list[list[tuple[int, int]]]:
    """Layers of comparators ``(i, j)``, ``i < j``, that sort ``g`` values (max to the lower index)."""
    if g == 4:
        return [[(0, 1), (2, 3)], [(0, 2), (1, 3)], [(1, 2)]]
    layers = []
    for t in range(g):
        layer = [(k, k + 1) for k in range(t % 2, g - 1, 2)]
        if layer:
            layers.append(layer)
    return layers


def groupsort_layers(attrs, x_shape, device=None):
    g = int(attrs["group_size"])
    desc = bool(attrs.get("descending", True))
    ch = channel_groups("groupsort", attrs, int(x_shape[0]), g)  # (C/g, g) channels along dim 1
    out = []
    for layer in sorting_network(g):
        i = torch.tensor([c[0] for c in layer], dtype=torch.long)
        j = torch.tensor([c[1] for c in layer], dtype=torch.long)
        hi_, lo_ = (ch[:, i], ch[:, j]) if desc else (ch[:, j], ch[:, i])
        out.append(CompareExchange(hi_.reshape(-1), lo_.reshape(-1), x_shape, device))
    return out


def householder_layers(node, x_shape, device=None):
    activation_groups(node, x_shape)  # checks the channels against v's groups (names the node)
    return [HouseholderMap(node.params["v"], x_shape)]


PIECEWISE_LOWERING = {
    "maxmin": lambda node, shape, dev: maxmin_layers(node.attrs, shape, dev),
    "groupsort": lambda node, shape, dev: groupsort_layers(node.attrs, shape, dev),
    "householder": householder_layers,
}
