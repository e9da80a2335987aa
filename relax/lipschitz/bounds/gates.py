"""Clarke-derivative "gates": how each activation acts on the backward (gradient) signal.

For an activation ``y = phi(z)`` (``z, y`` of ``n`` features) the chain rule maps the gradient
``g = dL/dy`` to ``h = dL/dz = J_phi(z)^T g``.  Every supported activation has the form

    h = F_g g + F_p p,      p = d * q,      q = E g,      d in [a, b]  (element-wise, per coordinate of q)

where ``E`` (``n_q x n``), ``F_g`` (``n x n``), ``F_p`` (``n x n_q``) are fixed matrices and ``d`` is the
Clarke derivative of a scalar "switch", bounded by ``[a, b]`` from the forward pre-activation
bounds over the input region:

| op          | switch s (forward)        | q          | d                          | h                                 |
|-------------|---------------------------|------------|----------------------------|-----------------------------------|
| relu        | z_i                       | g_i        | 1[s>0] in {0,1}            | p                                 |
| leaky_relu  | z_i                       | g_i        | {alpha, 1}                 | p                                 |
| tanh/sigmoid| z_i                       | g_i        | phi'(z) in [min, max] phi' | p                                 |
| maxmin/     | z_a - z_b (pair a,b)      | g_hi-g_lo  | 1[z_a>=z_b] in {0,1}       | h_a = g_lo + p, h_b = g_hi - p    |
| groupsort(2)|                           |            |                            |                                   |
| householder | v^T z (per group)         | v^T g      | 1[v^T z<=0] in {0,1}       | h = g - 2 v p                     |

For the piecewise-linear ops, ``d_on``/``d_off`` give the derivative on the closed half-spaces
``s >= 0`` / ``s <= 0``; they are used by branch-and-bound, which splits on the sign of ``s``.
MaxMin/GroupSort(2)/Householder also carry their *forward* map as one ReLU of the switch,

    y = P z + Q relu(S z)        (MaxMin pair: max = z_b + relu(z_a - z_b), min = z_a - relu(z_a - z_b);
                                  Householder: y = H z + 2 v relu(v^T z), H = I - 2 v v^T),

which lets branch-and-bound bound the switches directly over a domain's input polytope
(:mod:`.polytope`); ReLU/LeakyReLU keep ``P = Q = S = None`` (the switch is ``z`` itself).
Stability uses strict inequalities (``l_s > 0`` is "on", ``u_s < 0`` is "off"); anything else keeps
the full range ``[min(d_on,d_off), max(d_on,d_off)]``, which contains every Clarke derivative at
kinks (``s = 0``).  The table :data:`GATES` maps op name -> builder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ....models.errors import UnsupportedOperationError
from ....models.graph import Node
from ....models.groups import activation_groups


@dataclass
class Gate:
    """One backward activation step (see the module docstring); matrices are shared over the batch."""

    op: str
    n: int
    E: torch.Tensor | None  # (n_q, n) or None = identity
    F_g: torch.Tensor | None  # (n, n) or None = zero
    F_p: torch.Tensor | None  # (n, n_q) or None = identity
    d_on: torch.Tensor | None  # (n_q,) derivative when switch >= 0 (piecewise-linear ops only)
    d_off: torch.Tensor | None
    piecewise_linear: bool
    P: torch.Tensor | None = None  # (n, n): forward y = P z + Q relu(S z) (switch-matrix ops only)
    Q: torch.Tensor | None = None  # (n, n_q)
    pairs: tuple | None = None  # comparator rounds: (a, b, hi, lo) index lists (see comparator_gate)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """The activation itself, for a comparator round (exact max / min, as the layer computes them)."""
        a, b, hi, lo = self.pairs
        y = z.clone()
        y[..., hi] = torch.maximum(z[..., a], z[..., b])
        y[..., lo] = torch.minimum(z[..., a], z[..., b])
        return y

    @property
    def switch_matrix(self) -> torch.Tensor | None:
        """``S`` (``n_q x n``) with switch ``s = S z``; None: the switch is ``z`` (ReLU-type and smooth ops)."""
        return _SWITCH[self.op](self)

    @property
    def n_q(self) -> int:
        return self.n if self.E is None else self.E.shape[0]

    def switch_bounds(self, zl: torch.Tensor, zu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Bounds of the forward switch ``s = S z`` from pre-activation bounds (interval arithmetic)."""
        S = self.switch_matrix
        if S is None:
            return zl, zu
        Sp, Sn = S.clamp(min=0), S.clamp(max=0)
        return zl @ Sp.T + zu @ Sn.T, zu @ Sp.T + zl @ Sn.T

    def switch_values(self, z: torch.Tensor) -> torch.Tensor:
        S = self.switch_matrix
        return z if S is None else z @ S.T

    def derivative_range(self, zl: torch.Tensor, zu: torch.Tensor, fixed: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """``[a, b]`` bounding ``d`` for all ``z`` in ``[zl, zu]`` (batch ``(B, n)``).

        ``fixed`` (``(B, n_q)`` int8: +1 switch >= 0, -1 switch <= 0, 0 free) adds branch-and-bound splits.
        """
        if not self.piecewise_linear:
            return _SMOOTH_DERIV[self.op](zl, zu)
        return self.switch_derivative_range(*self.switch_bounds(zl, zu), fixed)

    def switch_derivative_range(self, sl: torch.Tensor, su: torch.Tensor, fixed: torch.Tensor | None = None
                                ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`derivative_range` from bounds ``[sl, su]`` of the switch itself (piecewise-linear ops)."""
        on, off = self.d_on.to(sl), self.d_off.to(sl)
        lo, hi = torch.minimum(on, off).expand_as(sl), torch.maximum(on, off).expand_as(sl)
        is_on, is_off = sl > 0, su < 0
        if fixed is not None:
            is_on = is_on | (fixed > 0)
            is_off = is_off | (fixed < 0)
        d_on, d_off = on.expand_as(sl), off.expand_as(sl)
        a = torch.where(is_on, d_on, torch.where(is_off, d_off, lo))
        b = torch.where(is_on, d_on, torch.where(is_off, d_off, hi))
        return a, b

    def unstable(self, zl: torch.Tensor, zu: torch.Tensor, fixed: torch.Tensor | None = None) -> torch.Tensor:
        """Boolean ``(B, n_q)``: switch sign not decided by the bounds (nor by a split)."""
        return self.switch_unstable(*self.switch_bounds(zl, zu), fixed)

    def switch_unstable(self, sl: torch.Tensor, su: torch.Tensor, fixed: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`unstable` from bounds of the switch itself."""
        free = ~((sl > 0) | (su < 0))
        if fixed is not None:
            free = free & (fixed == 0)
        return free


# ---------------------------------------------------------------------- builders
def _eye_like(n, ref):
    return torch.eye(n, dtype=ref.dtype, device=ref.device)


def _relu(node: Node, n: int, ref: torch.Tensor) -> Gate:
    one = torch.ones(n, dtype=ref.dtype, device=ref.device)
    return Gate("relu", n, None, None, None, one, torch.zeros_like(one), True)


def _leaky(node: Node, n: int, ref: torch.Tensor) -> Gate:
    alpha = float(node.attrs["negative_slope"])
    one = torch.ones(n, dtype=ref.dtype, device=ref.device)
    return Gate("leaky_relu", n, None, None, None, one, alpha * one, True)


def _smooth(op):
    def build(node: Node, n: int, ref: torch.Tensor) -> Gate:
        return Gate(op, n, None, None, None, None, None, False)
    return build


def _groups_for(node: Node, n: int):
    """The node's flat-index groups (:func:`models.groups.activation_groups`), checked against ``n``."""
    grp = activation_groups(node)
    if grp.n != n:
        raise UnsupportedOperationError(
            f"node {node.describe()}: {n} features given, the node's shape {tuple(node.shape)} has {grp.n}")
    return grp


def _pairs_for(node: Node, n: int) -> tuple[list[int], list[int], list[int], list[int]]:
    """(a, b, hi, lo): input indices of each pair and the output positions of its max and min
    (MaxMin, GroupSort(2); pairs from :func:`models.groups.activation_groups`, so channels at each pixel
    after a convolution)."""
    grp = _groups_for(node, n)
    a, b = grp.index[:, 0].tolist(), grp.index[:, 1].tolist()
    if node.op == "groupsort" and not bool(node.attrs.get("descending", True)):
        return a, b, b, a
    return a, b, a, b


def comparator_gate(n: int, a: list[int], b: list[int], hi: list[int], lo: list[int], ref: torch.Tensor) -> Gate:
    """One round of disjoint comparators on ``n`` features: pair ``k`` writes ``max(z_a, z_b)`` to
    position ``hi[k]`` and ``min(z_a, z_b)`` to ``lo[k]`` (``{hi, lo} = {a, b}``); unpaired positions pass
    through.  MaxMin and GroupSort(2) are one round; GroupSort(g) is a sorting network of rounds."""
    m = len(a)
    E = torch.zeros(m, n, dtype=ref.dtype, device=ref.device)
    F_g = torch.zeros(n, n, dtype=ref.dtype, device=ref.device)
    F_p = torch.zeros(n, m, dtype=ref.dtype, device=ref.device)
    S = torch.zeros(m, n, dtype=ref.dtype, device=ref.device)
    P = torch.zeros(n, n, dtype=ref.dtype, device=ref.device)
    Q = torch.zeros(n, m, dtype=ref.dtype, device=ref.device)
    dev = ref.device
    A, B, H, L = (torch.as_tensor(t, dtype=torch.long, device=dev) for t in (a, b, hi, lo))
    k = torch.arange(m, device=dev)
    free = torch.ones(n, dtype=torch.bool, device=dev)
    free[A] = False
    free[B] = False
    fi = torch.nonzero(free).reshape(-1)
    F_g[fi, fi] = 1.0; P[fi, fi] = 1.0          # pass-through positions
    P[H, B] = 1.0; Q[H, k] = 1.0                # max = z_b + relu(z_a - z_b)
    P[L, A] = 1.0; Q[L, k] = -1.0               # min = z_a - relu(z_a - z_b)
    E[k, H] += 1.0; E[k, L] -= 1.0              # q = g_hi - g_lo
    F_g[A, L] = 1.0; F_g[B, H] = 1.0            # h_a = g_lo + p, h_b = g_hi - p
    F_p[A, k] = 1.0; F_p[B, k] = -1.0
    S[k, A] = 1.0; S[k, B] = -1.0               # switch z_a - z_b
    one = torch.ones(m, dtype=ref.dtype, device=ref.device)
    g = Gate("maxmin", n, E, F_g, F_p, one, torch.zeros_like(one), True, P, Q, (a, b, hi, lo))
    g._S = S
    return g


def sorting_rounds(n: int, group: int, descending: bool, index: torch.Tensor | None = None
                   ) -> list[tuple[list[int], list[int], list[int], list[int]]]:
    """Batcher's odd-even merge sort of every group of ``group`` consecutive features, as rounds of
    disjoint comparators ``(a, b, hi, lo)`` (:func:`comparator_gate`; ``a < b`` within the group, the max goes
    to the lower position when ``descending``).  Iterative form valid for any group size (Knuth, TAOCP
    5.3.4, exercise 32): for ``p = 1, 2, 4, ...`` and ``k = p, p/2, ..., 1`` one round compares positions
    ``i + j`` and ``i + j + k`` that lie in the same block of ``2p``.  Group 4: 5 comparators in 3 rounds
    (odd-even transposition: 6 in 4).  It sorts every input, ties included (tested by the 0-1 principle).
    ``index`` (``(G, group)`` flat indices, :func:`models.groups.activation_groups`): the groups; default
    consecutive groups of ``group`` features (a feature vector)."""
    if index is None:
        index = torch.arange(n).reshape(-1, group)
    pairs_per_round = []
    p = 1
    while p < group:
        k = p
        while k >= 1:
            rnd = []
            for j in range(k % p, group - k, 2 * k):
                for i in range(min(k, group - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        rnd.append((i + j, i + j + k))
            if rnd:
                pairs_per_round.append(rnd)
            k //= 2
        p *= 2
    rounds = []
    for rnd in pairs_per_round:
        x = torch.tensor([p[0] for p in rnd], dtype=torch.long)
        y = torch.tensor([p[1] for p in rnd], dtype=torch.long)
        a, b = index[:, x].reshape(-1).tolist(), index[:, y].reshape(-1).tolist()
        rounds.append((a, b, a, b) if descending else (a, b, b, a))
    return rounds


def _maxmin(node: Node, n: int, ref: torch.Tensor) -> Gate:
    if node.op == "groupsort" and int(node.attrs["group_size"]) != 2:
        raise UnsupportedOperationError(
            f"node {node.describe()}: GroupSort with group size {node.attrs['group_size']} is supported by the "
            "chain / lifted-chain Lipschitz bounds only (as a sorting network; bab='activation'), not by the "
            "graph bounds of input splitting; group size 2 = MaxMin is supported everywhere")
    return comparator_gate(n, *_pairs_for(node, n), ref)


def build_gates(node: Node, n: int, ref: torch.Tensor) -> list[Gate]:
    """The gates of one activation node: one, or a sorting network's rounds for GroupSort(g > 2)."""
    if node.op == "groupsort" and int(node.attrs["group_size"]) > 2:
        grp = _groups_for(node, n)
        return [comparator_gate(n, *r, ref) for r in
                sorting_rounds(n, grp.size, bool(node.attrs.get("descending", True)), grp.index)]
    return [build_gate(node, n, ref)]


def _householder(node: Node, n: int, ref: torch.Tensor) -> Gate:
    v = node.params["v"].to(ref)  # as stored: the description's semantics (never re-normalized here)
    grp = _groups_for(node, n)
    E = grp.rows_matrix(grp.householder_v(v))  # row j: v of group j at its flat indices (channels per pixel)
    one = torch.ones(grp.count, dtype=ref.dtype, device=ref.device)
    F_p = -2.0 * E.T.clone()
    # forward: y = z on v^T z >= 0, (I - 2 v v^T) z below: y = (I - 2 E^T E) z + 2 E^T relu(E z)
    g = Gate("householder", n, E, _eye_like(n, ref), F_p, torch.zeros_like(one), one, True,
             _eye_like(n, ref) - 2.0 * E.T @ E, 2.0 * E.T.clone())
    g._S = E.clone()  # switch v^T z; "on" (v^T z >= 0) keeps z: d = 0; "off" reflects: d = 1
    group_of = torch.empty(n, dtype=torch.long, device=ref.device)  # feature -> its group (channels per pixel)
    group_of[grp.index.to(ref.device)] = torch.arange(grp.count, device=ref.device)[:, None]
    g.group_of = group_of
    return g


_SWITCH: dict[str, Callable[[Gate], torch.Tensor | None]] = {
    "relu": lambda g: None, "leaky_relu": lambda g: None, "tanh": lambda g: None, "sigmoid": lambda g: None,
    "maxmin": lambda g: g._S, "householder": lambda g: g._S, "switch": lambda g: g._S,
}


def _tanh_d(z):
    return 1.0 - torch.tanh(z) ** 2


def _sigmoid_d(z):
    s = torch.sigmoid(z)
    return s * (1.0 - s)


def _bell_range(dfun):
    """phi' is even-unimodal with its maximum at 0: max at the point of [l,u] closest to 0, min at an end."""
    def rng(zl, zu):
        a = torch.minimum(dfun(zl), dfun(zu))
        b = dfun(torch.clamp(torch.zeros_like(zl), zl, zu))
        return a, b
    return rng


_SMOOTH_DERIV = {"tanh": _bell_range(_tanh_d), "sigmoid": _bell_range(_sigmoid_d)}

GATES: dict[str, Callable[[Node, int, torch.Tensor], Gate]] = {
    "relu": _relu,
    "leaky_relu": _leaky,
    "tanh": _smooth("tanh"),
    "sigmoid": _smooth("sigmoid"),
    "maxmin": _maxmin,
    "groupsort": _maxmin,
    "householder": _householder,
}


def build_gate(node: Node, n: int, ref: torch.Tensor) -> Gate:
    try:
        builder = GATES[node.op]
    except KeyError:
        raise UnsupportedOperationError(
            f"node {node.describe()}: no Clarke-derivative handler for op {node.op!r}; supported: "
            f"{', '.join(sorted(GATES))}") from None
    return builder(node, n, ref)
