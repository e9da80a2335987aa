"""CROWN on the backward (Clarke-Jacobian) graph of a chain *without dense matrices* (convolutional networks).

The same bound as :class:`.backward.BackwardGraph` in mode ``"crown"`` / ``"recurjac"`` (chord relaxations of
the gated products ``p = d q``, ``d in [a_k, b_k]``, full back-substitution to the seed for every bound), with
every affine block applied *as its ops* and the back-substitution carried for a chunk of rows at a time:

* **Backward graph.**  With ``M_k`` the linear part of the affine block before activation ``k`` (``M_L`` after
  the last one) and a seed ``c``:  ``v_1 = M_L^T c``, ``q_k = v``, ``h_k = d_k * q_k``, ``v <- M_{k-1}^T h_k``,
  and the input gradient ``g = M_0^T h_1``.
* **Back-substitution.**  A linear function ``Lam . v`` of the value after a ``M^T`` step equals
  ``(M Lam)^T . v_before``: the rows are pushed through the block's ops *forward* (``conv2d`` on the rows as
  images, offsets zeroed).  Through a gated product the positive coefficients take the upper chord, the
  negative ones the lower chord (:mod:`.relaxations`), adding their intercepts; at the seed the row is
  dotted with ``c``.  This computes the maximum of ``Lam . v`` over the relaxed set exactly as the dense form.
* **Which rows.**  Bounds of ``q_k`` are needed only where the derivative range is not a point
  (``a_k < b_k``, an unstable neuron): for ``a = b`` the chord is the exact line ``a q`` whatever ``[l, u]``
  (the dense form computes it from bounds and gets ``a q`` up to rounding).  The input gradient is bounded
  element-wise (all ``n_0`` coordinates, ``+-e_j`` rows) and then ``||g||_1`` by the ``|g|`` chords, one row
  per seed, as in the dense form.
* **Memory.**  A chunk of ``r`` rows for ``S`` seeds holds ``O(S r n_max)`` floats (``n_max`` the largest
  layer); ``r`` is chosen from ``max_bytes`` (:data:`MAX_BYTES`), so the peak is about ``max_bytes`` plus
  the network and the ``O(S n)`` bound vectors, whatever the layer sizes.  Rows of one chunk are
  consecutive neurons; after the first (shared) step a row of a convolution's output touches only a
  patch, so a following dense layer is applied to the chunk's nonzero columns only (same numbers,
  fewer flops).

Rounding (float64): each step's floating-point error is bounded by ``rel`` times a magnitude computed
alongside, and the bound is widened by it.  For a ``M^T`` step with rows ``Lam`` the error of the pushed
rows, applied to the true ``v`` (``|v| <= V``, interval bounds of the backward graph,
:func:`.implicit.jacobian_intervals`' arithmetic), is at most ``gamma |Lam| (|M^T| V)``; at a gate
``gamma |P| (|slope| V + |intercept|)`` (the coefficient product and the computed chords); at the seed
``gamma (|Lam| |c| + sum |intercept terms|)``.  ``rel`` = :func:`.implicit.rounding_rel` dominates
``gamma_n`` of a float64 sum of the widest fan-in.  The final value also goes through
:func:`.common.certified` (the caller).
"""

from __future__ import annotations

import math

import torch

from ....models.errors import UnsupportedOperationError
from ....models.graph import AFFINE_OPS, Network

from ..norms import row_dual_upper
from ..result import LipschitzResult
from .implicit import (_apply, _check, _interval_mul, _linear_part, _slopes, _vjp, forward_bounds_implicit,
                       implicit_result, rounding_rel)
from .relaxations import abs_upper, gated_product_lower, gated_product_upper

MAX_BYTES = 2 ** 30  # default working memory of the back-substitution chunks (bytes, float64)
# bytes per (seed, row, neuron) of a chunk / 8: its +-rows (2), P+ / P- / products / the op's output and work
# space; measured on the CIFAR CNN: 12 gave ~2 GB of chunk tensors for a 1 GiB budget, 24 keeps them within it
TEMP_FACTOR = 24
MODES = ("crown", "recurjac")


class _OpChain:
    """A chain network cut into affine blocks and activations: ``blocks[k]`` precedes ``acts[k]``,
    ``blocks[L]`` follows the last activation (an empty block is the identity)."""

    def __init__(self, net: Network):
        _check(net)
        self.net = net
        self.blocks, self.acts = [[]], []
        for n in net.nodes[1:]:
            if n.op in AFFINE_OPS:
                self.blocks[-1].append(n)
            else:
                self.acts.append(n)
                self.blocks.append([])
        shape = {net.nodes[0].name: tuple(net.input_shape)}
        for n in net.nodes[1:]:
            shape[n.name] = tuple(n.shape)
        self.shape_of = shape
        # in / out shape of each block
        self.block_in, self.block_out = [], []
        prev = tuple(net.input_shape)
        for k, blk in enumerate(self.blocks):
            self.block_in.append(prev)
            out = shape[blk[-1].name] if blk else prev
            self.block_out.append(out)
            if k < len(self.acts):
                prev = shape[self.acts[k].name]
        self.lin = [[_linear_part(n, False) for n in blk] for blk in self.blocks]
        self.absn = [[_linear_part(n, True) for n in blk] for blk in self.blocks]
        self.rel = rounding_rel(net)

    @property
    def depth(self) -> int:
        return len(self.acts)

    def forward_rows(self, k: int, x: torch.Tensor, absolute: bool = False) -> torch.Tensor:
        """``M_k x`` (``|M_k| x``) for rows ``x`` (N, *block_in[k]) -> (N, *block_out[k])."""
        for n in (self.absn if absolute else self.lin)[k]:
            x = _apply(n, x)
        return x

    def transpose_rows(self, k: int, g: torch.Tensor, absolute: bool = False) -> torch.Tensor:
        """``M_k^T g`` (``|M_k|^T g``) for ``g`` (S, *block_out[k]) -> (S, *block_in[k])."""
        nodes = (self.absn if absolute else self.lin)[k]
        for n in reversed(nodes):
            g = _vjp(n, g, self.shape_of[n.inputs[0]])
        return g


def _scatter_rows(idx: torch.Tensor, shape, dtype, device) -> torch.Tensor:
    """``(2 r, *shape)``: the unit rows ``e_i`` for ``i`` in ``idx`` followed by ``-e_i`` (never an identity
    of the full size)."""
    n = int(math.prod(shape))
    r = idx.numel()
    E = torch.zeros(2 * r, n, dtype=dtype, device=device)
    ar = torch.arange(r, device=device)
    E[ar, idx] = 1.0
    E[ar + r, idx] = -1.0
    return E.reshape(2 * r, *shape)


class OpBackwardGraph:
    """CROWN on the backward graph with ops (see the module docstring).  ``fb``: pre-activation bounds
    ``{node name: (lo, hi)}`` (batch 1, node shape) of every activation's input; ``seeds`` (S, n_out)."""

    def __init__(self, net: Network, fb, seeds: torch.Tensor, mode: str = "crown", max_bytes: int = MAX_BYTES):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.ch = _OpChain(net)
        self.seeds = seeds
        self.mode = mode
        self.max_bytes = int(max_bytes)
        self.stats = {"rows": 0, "max_chunk_elems": 0, "chunks": 0}
        ch, S = self.ch, seeds.shape[0]
        L = ch.depth
        self.items = [("lin", L)]
        for k in reversed(range(L)):
            self.items += [("gate", k), ("lin", k)]
        # derivative ranges [a, b] of each activation (1, *shape)
        self.ab = []
        for k, act in enumerate(ch.acts):
            zl, zu = fb[act.inputs[0]]
            s_off, s_on = _slopes(act)
            # strict, as :mod:`.gates`: a kink (z = 0) in the box keeps the whole range
            a = torch.where(zl > 0, s_on, s_off).to(seeds)
            b = torch.where(zu < 0, s_off, s_on).to(seeds)
            self.ab.append((torch.minimum(a, b).reshape(1, -1), torch.maximum(a, b).reshape(1, -1)))
        # interval bounds |v| <= V of the backward graph at every position (error magnitudes), per seed
        self.V = []  # V[i]: (S, numel of v_i)
        self.W = {}  # lin item i: |M^T| V_i  (S, numel of v_{i+1})
        gl = gu = seeds
        for i, (kind, k) in enumerate(self.items):
            self.V.append(torch.maximum(gl.abs(), gu.abs()))
            if kind == "lin":
                out = (S, *ch.block_out[k])
                c, r = ((gl + gu) / 2).reshape(out), ((gu - gl) / 2).reshape(out)
                gc = ch.transpose_rows(k, c).reshape(S, -1)
                m = ch.transpose_rows(k, c.abs() + r, absolute=True).reshape(S, -1)
                gr = ch.transpose_rows(k, r, absolute=True).reshape(S, -1) + ch.rel * m + 1e-300
                self.W[i] = ch.transpose_rows(k, self.V[-1].reshape(out), absolute=True).reshape(S, -1)
                gl, gu = gc - gr, gc + gr
            else:
                a, b = self.ab[k]
                gl, gu = _interval_mul(a, b, gl, gu)
        self.V.append(torch.maximum(gl.abs(), gu.abs()))
        self.lines = {}  # gate k -> (au, bu, al, bl), each (S, n_k)
        self.q_bounds = {}

    # ------------------------------------------------------------------ back-substitution
    def _upper(self, Lam: torch.Tensor, pos: int) -> torch.Tensor:
        """Upper bound (rounding included) of ``Lam . v_pos`` for rows ``Lam`` (Bb, m, n) with Bb in (1, S)."""
        ch, S = self.ch, self.seeds.shape[0]
        m = Lam.shape[1]
        bias = torch.zeros(S, m, dtype=Lam.dtype, device=Lam.device)
        err = torch.zeros(S, m, dtype=Lam.dtype, device=Lam.device)
        cols = None  # when set, Lam holds only these columns of v (the others are exact zeros)

        def dot(A, w):  # (Bb, m, n) . (S, n) -> (S, m)
            return torch.einsum("bmn,sn->sm", A, w) if A.shape[0] == 1 else torch.einsum("bmn,bn->bm", A, w)

        for i in range(pos - 1, -1, -1):
            kind, k = self.items[i]
            if kind == "lin":
                blk = ch.blocks[k]
                # flatten / reshape keep the flat (row-major) order: such a block is its last node's matrix
                dense_next = bool(blk) and blk[-1].op == "linear" and all(n.op in ("flatten", "reshape")
                                                                          for n in blk[:-1])
                if cols is not None and not dense_next:  # back to full rows for the op
                    full = Lam.new_zeros(*Lam.shape[:2], self.V[i + 1].shape[1])
                    full[:, :, cols] = Lam
                    Lam, cols = full, None
                    self.stats["max_chunk_elems"] = max(self.stats["max_chunk_elems"], Lam.numel())
                W = self.W[i] if cols is None else self.W[i][:, cols]
                err = err + dot(Lam.abs(), W)
                Bb = Lam.shape[0]
                if cols is not None:
                    Lam = Lam @ blk[-1].params["weight"][:, cols].T  # the zero columns add exact zeros
                else:
                    Lam = ch.forward_rows(k, Lam.reshape(Bb * m, *ch.block_in[k])).reshape(Bb, m, -1)
                cols = None
                if Lam.shape[-1] > 64:  # rows of a chunk after a convolution: a patch of the output
                    nz = (Lam != 0).flatten(0, 1).any(0).nonzero().squeeze(1)
                    if nz.numel() < 0.5 * Lam.shape[-1]:
                        cols, Lam = nz, Lam[:, :, nz]
            else:
                au, bu, al, bl = self.lines[k]
                Vq = self.V[i]
                if cols is not None:
                    au, bu, al, bl, Vq = (t[:, cols] for t in (au, bu, al, bl, Vq))
                Pp = Lam.clamp(min=0)
                Pn = Lam - Pp
                bias = bias + dot(Pp, bu) + dot(Pn, bl)
                err = err + dot(Pp, au.abs() * Vq + bu.abs()) - dot(Pn, al.abs() * Vq + bl.abs())
                Lam = Pp * au[:, None] + Pn * al[:, None]  # (S, m, n) from here on
            self.stats["max_chunk_elems"] = max(self.stats["max_chunk_elems"], Lam.numel())
        c = self.seeds if cols is None else self.seeds[:, cols]
        val = dot(Lam, c) + bias
        mag = dot(Lam.abs(), c.abs()) + err
        return val + ch.rel * mag  # no absolute floor: a row that is exactly 0 (mag = 0) stays exactly 0

    def _chunk(self, pos: int) -> int:
        S = self.seeds.shape[0]
        n_max = max(self.V[i].shape[1] for i in range(pos + 1))
        return max(1, self.max_bytes // (8 * TEMP_FACTOR * S * n_max))

    def bounds_of(self, idx: torch.Tensor, pos: int, shape) -> tuple[torch.Tensor, torch.Tensor]:
        """Lower / upper bounds (S, r) of ``v_pos[idx]`` (flat indices), chunked over rows."""
        S = self.seeds.shape[0]
        r = self._chunk(pos)
        lo, hi = [], []
        for s in range(0, idx.numel(), r):
            part = idx[s:s + r]
            Lam = _scatter_rows(part, shape, self.seeds.dtype, self.seeds.device).reshape(1, 2 * part.numel(), -1)
            up = self._upper(Lam, pos)
            lo.append(-up[:, part.numel():])
            hi.append(up[:, :part.numel()])
            self.stats["rows"] += 2 * part.numel()
            self.stats["chunks"] += 1
        if not lo:
            z = torch.zeros(S, 0, dtype=self.seeds.dtype, device=self.seeds.device)
            return z, z
        return torch.cat(lo, 1), torch.cat(hi, 1)

    # ------------------------------------------------------------------ main pass
    def run(self):
        """``(gl, gu, l1)``: element-wise bounds (S, n_0) of the input gradient and the upper bound (S,) of
        ``||g||_1`` (not yet certified)."""
        ch, S = self.ch, self.seeds.shape[0]
        interval = self.mode == "recurjac"
        for pos, (kind, k) in enumerate(self.items):
            if kind != "gate":
                continue
            a, b = self.ab[k]
            n = a.shape[1]
            a, b = a.expand(S, n), b.expand(S, n)
            # exact lines d q with d = a where the range is a point; chords over CROWN bounds of q elsewhere
            au, al = a.clone(), a.clone()
            bu = torch.zeros_like(a)
            bl = torch.zeros_like(a)
            idx = (self.ab[k][1] > self.ab[k][0])[0].nonzero().squeeze(1)
            ql, qu = self.bounds_of(idx, pos, ch.shape_of[ch.acts[k].name])
            self.q_bounds[k] = (idx, ql, qu)
            if idx.numel():
                ai, bi = a[:, idx], b[:, idx]
                su, iu = gated_product_upper(ai, bi, ql, qu, interval)
                sl, il = gated_product_lower(ai, bi, ql, qu, interval)
                au[:, idx], bu[:, idx], al[:, idx], bl[:, idx] = su, iu, sl, il
            self.lines[k] = (au, bu, al, bl)
        end = len(self.items)
        n0 = int(math.prod(ch.net.input_shape))
        gl, gu = self.bounds_of(torch.arange(n0, device=self.seeds.device), end, tuple(ch.net.input_shape))
        slope, icpt = abs_upper(gl, gu)
        box = torch.maximum(gl.abs(), gu.abs()).sum(-1)
        self.stats["rows"] += S
        vin = torch.maximum(gl.abs(), gu.abs())  # the chords' own rounding, relative to their magnitude
        l1 = self._upper(slope[:, None, :], end)[:, 0] + icpt.sum(-1) \
            + self.ch.rel * (slope.abs() * vin + icpt.abs()).sum(-1)
        l1 = torch.minimum(l1, box)
        return gl, gu, l1


def implicit_crown_lipschitz(net: Network, xl: torch.Tensor, xu: torch.Tensor, seeds: torch.Tensor, norm: str = "inf",
                             method: str = "crown", operator: bool = False, forward: str = "crown",
                             max_bytes: int = MAX_BYTES) -> LipschitzResult:
    """Certified bound by CROWN (``method`` "crown") / RecurJac ("recurjac") on the backward graph with ops, its
    chunks within ``max_bytes``; forward pre-activation bounds :func:`.implicit.forward_bounds_implicit`
    (``forward`` "crown": the engine's CROWN, ops and chunks too).  Labelled ``method + "-implicit"``."""
    if method not in MODES:
        raise UnsupportedOperationError(f"method={method!r}: the dense-free backward-graph CROWN takes {MODES}")
    net = net.to(dtype=torch.float64)
    seeds = seeds.to(torch.float64)
    _check(net)
    fb = forward_bounds_implicit(net, xl.to(torch.float64), xu.to(torch.float64), forward)
    graph = OpBackwardGraph(net, fb, seeds, method, max_bytes)
    gl, gu, l1 = graph.run()
    return implicit_result(row_dual_upper(norm, gl, gu, l1), norm, method, operator, forward, graph.stats)
