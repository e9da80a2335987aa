"""From a :class:`models.Network` to the layer lists the SDP formulations consume.

Two views of a network, both with biases dropped (every bound here is incremental, so biases cancel):

* :class:`Hidden` list (the *semantic* view): ``x_k = act(W x_{k-1})`` or, for residual blocks,
  ``x_k = x_{k-1} + [W2] act(W x_{k-1})``; then ``y = W_out x_L``.  An initial affine map without
  activation (the input matrix of a residual net) is a ``Hidden`` with ``act == "identity"``.
* :class:`SectorBlock` list (the *lifted* view used by LipSDP-Neuron/Layer and by our one-ReLU
  rewriting): every step is ``x_k = D x_{k-1} + G psi_k`` with ``psi_k = phi(C x_{k-1})`` applied
  entrywise by scalar functions slope-restricted to ``[alpha, beta]``.  The table :data:`LIFTS`
  maps each activation op to this form; it is *exact* (same function), e.g.
  MaxMin(z) = P z + G ReLU(z_a - z_b) per pair, Householder sigma_v(z) = z + 2 v ReLU(-v^T z),
  GroupSort(g > 2) = odd-even transposition sorting network of MaxMin comparators (g rounds).

Residual structure is detected from the graph: an ``add`` node whose two inputs are a state ``s``
and the end of a branch ``s -> affine -> activation [-> affine]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..models.errors import InvalidArgumentError, UnsupportedOperationError
from ..models.graph import AFFINE_OPS, Network, Node, affine_matrix
from ..models.groups import ActivationGroups, activation_groups

SLOPE_RESTRICTED = ("relu", "leaky_relu", "tanh", "sigmoid", "identity")
GROUP_ACTS = ("maxmin", "groupsort", "householder")
HOMOGENEOUS = ("relu", "leaky_relu", "maxmin", "groupsort", "householder", "identity")


@dataclass
class Hidden:
    W: torch.Tensor                 # (n, m) pre-activation weight
    act: str                        # op name or "identity"
    attrs: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    residual: bool = False
    W2: torch.Tensor | None = None  # residual branch output matrix (m, n) or None
    path: str = ""
    groups: ActivationGroups | None = None  # MaxMin/GroupSort/Householder: flat-index groups of the node

    def act_groups(self) -> ActivationGroups:
        """The activation's groups (:func:`models.groups.activation_groups`: channels at each pixel after a
        conv); a hand-made ``Hidden`` without them is a feature vector (consecutive groups)."""
        if self.groups is not None:
            if self.groups.n != self.W.shape[0]:
                raise UnsupportedOperationError(f"layer {self.path}: {self.groups.n} grouped features, "
                                                f"{self.W.shape[0]} pre-activations")
            return self.groups
        return activation_groups(Node(self.path or self.act, self.act, attrs=self.attrs, params=self.params,
                                      path=self.path), (self.W.shape[0],))

    @property
    def n_in(self) -> int:
        return self.W.shape[1]

    @property
    def n_out(self) -> int:
        return self.W.shape[1] if self.residual else self.W.shape[0]


@dataclass
class LayerList:
    hidden: list[Hidden]
    W_out: torch.Tensor
    name: str = "network"

    @property
    def input_dim(self) -> int:
        return self.hidden[0].W.shape[1] if self.hidden else self.W_out.shape[1]

    def naive_spectral_product(self) -> float:
        """prod ||W_k||_2 (resp. (1 + ||W2|| ||W||) for residual blocks), float64 SVD: an estimate."""
        p = 1.0
        for h in self.hidden:
            s = float(torch.linalg.matrix_norm(h.W, 2))
            if h.act in ("sigmoid",):
                s *= 0.25
            if h.residual:
                s = 1.0 + s * (float(torch.linalg.matrix_norm(h.W2, 2)) if h.W2 is not None else 1.0)
            p *= s
        return p * float(torch.linalg.matrix_norm(self.W_out, 2))

    def naive_inf_product(self) -> float:
        """prod ||W_k||_inf (max row abs-sum), the l_inf matrix-norm product (valid for MaxMin/ReLU)."""
        p = 1.0
        for h in self.hidden:
            s = float(h.W.abs().sum(1).max())
            if h.residual:
                s = 1.0 + s * (float(h.W2.abs().sum(1).max()) if h.W2 is not None else 1.0)
            p *= s
        return p * float(self.W_out.abs().sum(1).max())


def _groups_of(node):
    return activation_groups(node) if node.op in GROUP_ACTS else None


def _dense(node, shape, dtype):
    """Dense float64 matrix of an affine node's *linear part*.  Linear weights are taken verbatim
    (exact); other ops are evaluated in float64 with the bias/shift zeroed, so no ``(Wx + b) - b``
    cancellation enters (for conv/flatten the identity push is exact; avg-pool has 1/k^2 roundings)."""
    if node.op == "linear":
        return node.params["weight"].detach().to(dtype)
    params = {k: (torch.zeros_like(v, dtype=dtype) if k in ("bias", "shift") else v.detach().to(dtype))
              for k, v in node.params.items()}
    W, _ = affine_matrix(replace(node, params=params), shape, dtype)
    return W.to(dtype)


def extract(net: Network, c: torch.Tensor | None = None, dtype=torch.float64) -> LayerList:
    """Walk the graph into a :class:`LayerList`.  ``c`` (output direction) replaces W_out by c^T W_out."""
    nodes = net.nodes
    consumers = {n.name: [m for m in nodes if n.name in m.inputs] for n in nodes}
    shapes = {n.name: (n.shape if n.op != "input" else net.input_shape) for n in nodes}
    hidden: list[Hidden] = []
    pend_W = None  # affine map accumulated since the current state
    state = nodes[0].name
    i = 1

    def numel(s):
        k = 1
        for d in s:
            k *= d
        return k

    def acc(node, W):
        return W if pend_W is None else W @ pend_W

    while i < len(nodes):
        n = nodes[i]
        adds = [m for m in consumers[state] if m.op == "add"]
        if n.op == "add":
            raise UnsupportedOperationError(f"node {n.describe()}: residual pattern not recognised")
        if adds and len(consumers[state]) == 2 and pend_W is None:
            # residual block: branch = nodes until the add
            add = adds[0]
            j = nodes.index(add)
            branch = nodes[i:j]
            prev = state
            W1 = W2 = None
            act = None
            for b in branch:
                if b.inputs != (prev,):
                    raise UnsupportedOperationError(f"node {b.describe()}: residual branch must be a chain")
                if b.op in AFFINE_OPS:
                    Wb = _dense(b, shapes[prev], dtype)
                    if act is None:
                        W1 = Wb if W1 is None else Wb @ W1
                    else:
                        W2 = Wb if W2 is None else Wb @ W2
                elif act is None:
                    act = b
                else:
                    raise UnsupportedOperationError(
                        f"node {b.describe()}: residual branches with more than one activation are not supported")
                prev = b.name
            if act is None or W1 is None:
                raise UnsupportedOperationError(f"node {add.describe()}: residual branch needs affine -> activation")
            if set(add.inputs) != {state, prev}:
                raise UnsupportedOperationError(f"node {add.describe()}: residual add does not join state and branch")
            hidden.append(Hidden(W1, act.op, dict(act.attrs), {k: v.to(dtype) for k, v in act.params.items()},
                                 residual=True, W2=W2, path=act.path or act.name, groups=_groups_of(act)))
            state = add.name
            i = j + 1
            continue
        if n.inputs != (state if pend_W is None else nodes[i - 1].name,):
            raise UnsupportedOperationError(f"node {n.describe()}: unsupported graph structure for the SDP methods")
        if n.op in AFFINE_OPS:
            in_shape = shapes[n.inputs[0]]
            pend_W = acc(n, _dense(n, in_shape, dtype))
            if len(consumers[n.name]) > 1 or i == len(nodes) - 1:
                # a state feeding a residual block (or the output)
                if i == len(nodes) - 1:
                    break
                hidden.append(Hidden(pend_W, "identity", path=n.path or n.name))
                pend_W = None
                state = n.name
        else:
            if pend_W is None:
                pend_W = torch.eye(numel(shapes[n.inputs[0]]), dtype=dtype, device=net.device)
            hidden.append(Hidden(pend_W, n.op, dict(n.attrs), {k: v.to(dtype) for k, v in n.params.items()},
                                 path=n.path or n.name, groups=_groups_of(n)))
            pend_W = None
            state = n.name
        i += 1
    if pend_W is None:
        pend_W = torch.eye(numel(shapes[state]), dtype=dtype, device=net.device)
    W_out = pend_W
    if c is not None:
        c = torch.as_tensor(c, dtype=dtype, device=W_out.device).reshape(-1)
        if c.numel() != W_out.shape[0]:
            raise InvalidArgumentError(f"c has {c.numel()} entries, the network has {W_out.shape[0]} outputs")
        if not torch.isfinite(c).all():
            raise InvalidArgumentError("c contains NaN or Inf")
        nz = torch.nonzero(c).reshape(-1)
        if nz.numel() == 1 and abs(float(c[nz[0]])) == 1.0:
            W_out = float(c[nz[0]]) * W_out[nz[0]:nz[0] + 1]        # exact row selection
        else:
            # c^T W_out would be rounded: keep W_out as a linear step and c as the (exact) output map
            hidden.append(Hidden(W_out, "identity", path="output layer (before c)"))
            W_out = c[None, :]
    for h in hidden:
        if not (torch.isfinite(h.W).all() and (h.W2 is None or torch.isfinite(h.W2).all())):
            raise InvalidArgumentError(f"layer {h.path}: weights contain NaN or Inf")
    if not torch.isfinite(W_out).all():
        raise InvalidArgumentError("output layer weights contain NaN or Inf")
    return LayerList(hidden, W_out, net.name)


# ----------------------------------------------------------------------------- lifted (sector) form
@dataclass
class SectorBlock:
    """x_k = D x_{k-1} + G psi, psi = phi(C x_{k-1}) entrywise, phi slope-restricted to [alpha, beta]."""

    C: torch.Tensor      # (p, m)
    D: torch.Tensor      # (m_out, m)
    G: torch.Tensor      # (m_out, p)
    alpha: torch.Tensor  # (p,)
    beta: torch.Tensor   # (p,)
    path: str = ""

    @property
    def p(self) -> int:
        return self.C.shape[0]


def _comparators(W: torch.Tensor, a: torch.Tensor, b: torch.Tensor, big_first: bool):
    """Exact lifted form of (z_a, z_b) -> (max at a, min at b) [big_first] on the rows of z = W x."""
    n = W.shape[0]
    p = a.numel()
    C = W[a] - W[b]
    D = W.clone()
    G = torch.zeros(n, p, dtype=W.dtype, device=W.device)
    j = torch.arange(p)
    if big_first:   # max = z_b + r at a, min = z_a - r at b, r = relu(z_a - z_b)
        D[a], D[b] = W[b], W[a]
        G[a, j], G[b, j] = 1.0, -1.0
    else:           # min = z_a - r at a, max = z_b + r at b
        G[a, j], G[b, j] = -1.0, 1.0
    return C, D, G


def _relu_sector(p, W):
    z = torch.zeros(p, dtype=W.dtype, device=W.device)
    return z, torch.ones(p, dtype=W.dtype, device=W.device)


def _lift_plain(h: Hidden, alpha: float, beta: float) -> list[SectorBlock]:
    n = h.W.shape[0]
    o = torch.ones(n, dtype=h.W.dtype, device=h.W.device)
    return [SectorBlock(h.W, torch.zeros_like(h.W), torch.eye(n, dtype=h.W.dtype, device=h.W.device),
                        alpha * o, beta * o, h.path)]


def _lift_identity(h: Hidden) -> list[SectorBlock]:
    W = h.W
    e = W.new_zeros((0,))
    return [SectorBlock(W.new_zeros((0, W.shape[1])), W, W.new_zeros((W.shape[0], 0)), e, e, h.path)]


def _lift_maxmin(h: Hidden) -> list[SectorBlock]:
    grp = h.act_groups()
    C, D, G = _comparators(h.W, grp.index[:, 0], grp.index[:, 1], True)
    al, be = _relu_sector(C.shape[0], h.W)
    return [SectorBlock(C, D, G, al, be, h.path)]


def _lift_groupsort(h: Hidden) -> list[SectorBlock]:
    g = int(h.attrs.get("group_size", 2))
    desc = bool(h.attrs.get("descending", True))
    n = h.W.shape[0]
    if g == 1:
        return _lift_identity(h)
    blocks = []
    W = h.W
    idx = h.act_groups().index
    rounds = g if g > 2 else 1
    for r in range(rounds):  # odd-even transposition sort inside every group (g rounds)
        offs = torch.arange(r % 2, g - 1, 2)
        a, b = idx[:, offs].reshape(-1), idx[:, offs + 1].reshape(-1)
        C, D, G = _comparators(W, a, b, desc)
        al, be = _relu_sector(C.shape[0], W)
        blocks.append(SectorBlock(C, D, G, al, be, f"{h.path} (sort round {r + 1}/{rounds})"))
        W = torch.eye(n, dtype=h.W.dtype, device=h.W.device)
    return blocks


def _lift_householder(h: Hidden) -> list[SectorBlock]:
    v = h.params["v"].to(h.W.dtype).to(h.W.device)  # as stored (any norm): z + 2 v relu(-v^T z) is exact
    grp = h.act_groups()
    V = grp.rows_matrix(grp.householder_v(v))  # (groups x pixels, n): v^T z of each group
    groups = grp.count
    C = -(V @ h.W)
    al, be = _relu_sector(groups, h.W)
    return [SectorBlock(C, h.W.clone(), 2.0 * V.T, al, be, h.path)]


def _leaky(h):
    s = float(h.attrs["negative_slope"])
    return _lift_plain(h, min(s, 1.0), max(s, 1.0))


LIFTS = {
    "identity": _lift_identity,
    "relu": lambda h: _lift_plain(h, 0.0, 1.0),
    "leaky_relu": _leaky,
    "tanh": lambda h: _lift_plain(h, 0.0, 1.0),
    "sigmoid": lambda h: _lift_plain(h, 0.0, 0.25),
    "maxmin": _lift_maxmin,
    "groupsort": _lift_groupsort,
    "householder": _lift_householder,
}


def lift(layers: LayerList) -> list[SectorBlock]:
    """Exact sector (slope-restricted) form of every hidden step; residual/W2 folded into D and G."""
    out: list[SectorBlock] = []
    for h in layers.hidden:
        if h.act not in LIFTS:
            raise UnsupportedOperationError(f"layer {h.path}: activation {h.act!r} has no SDP handler "
                                            f"(supported: {', '.join(sorted(LIFTS))})")
        blocks = LIFTS[h.act](h)
        if h.residual:
            if len(blocks) != 1:
                raise UnsupportedOperationError(f"layer {h.path}: residual GroupSort with group size > 2")
            b = blocks[0]
            m = h.W.shape[1]
            I = torch.eye(m, dtype=h.W.dtype, device=h.W.device)
            D, G = (b.D, b.G) if h.W2 is None else (h.W2 @ b.D, h.W2 @ b.G)
            if D.shape[0] != m:
                raise UnsupportedOperationError(f"layer {h.path}: residual branch changes the width")
            blocks = [SectorBlock(b.C, I + D, G, b.alpha, b.beta, b.path)]
        out.extend(blocks)
    return out


def _pow2_exponent(W: torch.Tensor) -> int:
    """``e`` with ``2^e`` near ``||W||_2`` (0 for a zero matrix); from the float64 exponent, never via an
    overflowing float (weights of any scale, also when the norm itself overflows float64)."""
    amax = float(W.abs().max()) if W.numel() else 0.0
    if amax == 0.0 or not math.isfinite(amax):
        return 0
    s = float(torch.linalg.matrix_norm(W.to(torch.float64) / math.ldexp(1.0, math.frexp(amax)[1]), 2))
    return math.frexp(amax)[1] + (math.frexp(s)[1] if s > 0 and math.isfinite(s) else 0)


def _exact_div(W: torch.Tensor, e: int) -> torch.Tensor | None:
    """``W / 2^e`` when that is exact (no entry under/overflows), else None."""
    if e == 0:
        return W
    V = torch.ldexp(W, torch.tensor(-e, dtype=torch.int32, device=W.device))
    back = torch.ldexp(V, torch.tensor(e, dtype=torch.int32, device=W.device))
    return V if torch.equal(back, W) and bool(torch.isfinite(V).all()) else None


def pow2_normalize(layers: LayerList) -> tuple[LayerList, int]:
    """Divide every non-residual hidden W (and W_out) by a power of two near its spectral norm.

    Returns ``(scaled, E)``: ``L(original) = L(scaled) * 2^E``.  Exact in floating point (only exponents
    change; a layer whose division would under- or overflow an entry is left unscaled) and exact for the
    Lipschitz constant when the activations are positively homogeneous.  ``E`` is an integer so that no
    float overflows for extreme weight scales (the caller scales the certified value up with
    :func:`scale_up`).  Residual blocks are left alone (x + phi(Wx) is not homogeneous in W alone).
    """
    if any(h.act not in HOMOGENEOUS for h in layers.hidden):
        return layers, 0
    E = 0
    new = []
    for h in layers.hidden:
        if not h.residual and h.act in HOMOGENEOUS:
            e = _pow2_exponent(h.W)
            Wd = _exact_div(h.W, e)
            if Wd is None:
                e, Wd = 0, h.W
            new.append(replace(h, W=Wd))
            E += e
        else:
            new.append(h)
    e = _pow2_exponent(layers.W_out)
    Wd = _exact_div(layers.W_out, e)
    if Wd is None:
        e, Wd = 0, layers.W_out
    return LayerList(new, Wd, layers.name), E + e


def scale_up(x: float, E: int) -> float:
    """An upper bound of ``x * 2^E`` in float64 (``inf`` on overflow; the smallest subnormal, never 0,
    when a positive ``x`` underflows)."""
    if not (x > 0) or not math.isfinite(x):
        return x
    m, e = math.frexp(x)
    if e + E > 1024:
        return math.inf
    if e + E < -1073:
        return math.ldexp(1.0, -1074)
    y = math.ldexp(x, E)
    return y if math.ldexp(y, -E) >= x else float(np.nextafter(y, math.inf))
