"""Bound propagation on the backward (Clarke-Jacobian) graph of a chain network.

For a seed ``c`` (one row per output, or a logit-margin vector) the gradient of ``c^T f`` is

    g_L = W_L^T c,    h_k = gate_k(g_k)  (see :mod:`.gates`),    g_{k-1} = W_{k-1}^T h_k,   grad = W_0^T h_1.

The only unknowns are the Clarke derivatives ``d_k in [a_k, b_k]`` (decided by forward
pre-activation bounds).  Because the seed is a *fixed point*, back-substituting linear
relaxations (CROWN) from any node down to the seed computes the exact maximum of a linear function
over the *relaxed* set (the set cut out by the per-neuron relaxations), so:

* intermediate bounds of every gate input ``q`` are computed by full back-substitution (no
  interval shortcuts), and
* ``mode="crown"`` (chords) <= ``mode="recurjac"`` (constants where ``q`` is sign-unstable)
  <= ``mode="ibp"`` (pure interval arithmetic) holds for the final bound: each mode's relaxed set
  contains the previous one's (same forward masks).

Everything is batched: a batch row is one (seed, activation-mask range) pair, so many outputs and
many branch-and-bound domains are bounded in one pass on the network's device.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .chain import DenseChain
from .relaxations import abs_upper, gated_product_interval, gated_product_lower, gated_product_upper

MODES = ("crown", "recurjac", "ibp")


@dataclass
class BackwardBounds:
    """Bounds for a batch of (seed, derivative-range) rows."""

    grad_lower: torch.Tensor  # (B, n_0): element-wise bounds of the input gradient
    grad_upper: torch.Tensor
    l1_upper: torch.Tensor  # (B,): upper bound of ||grad||_1 (l_inf input norm)
    q_bounds: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # per gate (B, n_q)
    gate_coef: list[torch.Tensor] = field(default_factory=list)  # per gate (B, n_q): |P| of the l1 objective


def _apply(M, x):
    """x @ M^T for x (B, m, n) / M (n', n); M None = identity."""
    return x if M is None else x @ M


class BackwardGraph:
    """The backward graph for a batch: gates ordered from the output side (gate L first)."""

    def __init__(self, chain: DenseChain, seeds: torch.Tensor, d_ranges: list[tuple[torch.Tensor, torch.Tensor]],
                 mode: str = "crown"):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.chain = chain
        self.seeds = seeds  # (B, out)
        self.d_ranges = d_ranges  # per activation k (0-based, input side first): (a, b) of shape (B, n_q)
        self.mode = mode
        L = chain.depth
        # items from the seed side: lin(W_L^T), gate L, lin(W_{L-1}^T), ..., gate 1, lin(W_0^T)
        self.items: list[tuple[str, int]] = [("lin", L)]
        for k in reversed(range(L)):
            self.items += [("gate", k), ("lin", k)]
        self.lines: dict[int, tuple] = {}
        self.q_bounds: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    # ------------------------------------------------------------------ back-substitution
    def upper(self, Lam: torch.Tensor, pos: int, record: dict | None = None) -> torch.Tensor:
        """Upper bound of ``Lam @ v_pos`` (``Lam``: (B, m, dim v_pos)) where ``v_pos`` is the value after
        ``pos`` items (``v_0`` = seed)."""
        bias = torch.zeros(Lam.shape[:2], dtype=Lam.dtype, device=Lam.device)
        for i in range(pos - 1, -1, -1):
            kind, k = self.items[i]
            if kind == "lin":
                # v_{i+1} = W_k^T v_i  ->  Lam v_{i+1} = (Lam W_k^T) v_i
                Lam = Lam @ self.chain.weights[k].T
            else:
                gate = self.chain.gates[k]
                au, bu, al, bl = self.lines[k]
                P = _apply(gate.F_p, Lam)
                if record is not None:
                    record[k] = P.abs().sum(1)
                # positive coefficients take the upper line, negative ones the lower line (one of the two
                # products is an exact 0 per entry); the intercepts summed by a batched mat-vec product
                Pp = P.clamp(min=0)
                Pn = P - Pp
                coef = torch.addcmul(Pn * al[:, None, :], Pp, au[:, None, :])
                bias = bias + torch.bmm(Pp, bu[:, :, None])[..., 0] + torch.bmm(Pn, bl[:, :, None])[..., 0]
                Lq = coef if gate.E is None else coef @ gate.E
                Lam = Lq if gate.F_g is None else Lam @ gate.F_g + Lq
        return torch.einsum("bmo,bo->bm", Lam, self.seeds) + bias

    def bounds(self, M: torch.Tensor | None, pos: int, batch: int, dim: int):
        """Lower and upper bounds of ``M v_pos`` (``M`` (m, dim) shared, None = identity)."""
        dt, dev = self.seeds.dtype, self.seeds.device
        if M is None:
            M = torch.eye(dim, dtype=dt, device=dev)
        m = M.shape[0]
        Lam = torch.cat((M, -M), 0)
        if pos > 0 and self.items[pos - 1][0] == "lin":
            # the first step of the back-substitution is linear and the same for every batch row: one
            # unbatched product (Lam W_k^T) instead of a batched one (for M = I, an exact copy of W_k^T)
            Lam = Lam @ self.chain.weights[self.items[pos - 1][1]].T
            pos -= 1
        up = self.upper(Lam.expand(batch, *Lam.shape), pos)
        return -up[:, m:], up[:, :m]

    # ------------------------------------------------------------------ main pass
    def run(self, want_coef: bool = False, abs_fixed: torch.Tensor | None = None) -> BackwardBounds:
        """Bounds for the batch.  ``abs_fixed`` ((B, n_0) in {-1, 0, +1}) replaces ``|g_i|`` by ``s_i g_i``
        where ``s_i != 0`` (branch-and-bound on the sign choice of ``||g||_1 = max_s s^T g``)."""
        if self.mode == "ibp":
            return self._run_ibp()
        B = self.seeds.shape[0]
        interval = self.mode == "recurjac"
        for pos, (kind, k) in enumerate(self.items):
            if kind != "gate":
                continue
            gate = self.chain.gates[k]
            ql, qu = self.bounds(gate.E, pos, B, gate.n)
            a, b = self.d_ranges[k]
            self.q_bounds[k] = (ql, qu)
            self.lines[k] = (*gated_product_upper(a, b, ql, qu, interval), *gated_product_lower(a, b, ql, qu, interval))
        end = len(self.items)
        n0 = self.chain.in_dim
        gl, gu = self.bounds(None, end, B, n0)
        slope, icpt = abs_upper(gl, gu)
        box = torch.maximum(gl.abs(), gu.abs())
        if abs_fixed is not None:
            fx = abs_fixed.to(slope)
            slope = torch.where(fx != 0, fx, slope)
            icpt = torch.where(fx != 0, torch.zeros_like(icpt), icpt)
            box = torch.where(fx > 0, gu, torch.where(fx < 0, -gl, box))
        record = {} if want_coef else None
        l1 = self.upper(slope[:, None, :], end, record)[:, 0] + icpt.sum(-1)
        l1 = torch.minimum(l1, box.sum(-1))  # never worse than the box
        coef = [record[k] for k in range(self.chain.depth)] if want_coef else []
        return BackwardBounds(gl, gu, l1, [self.q_bounds[k] for k in range(self.chain.depth)], coef)

    def _run_ibp(self) -> BackwardBounds:
        l = u = self.seeds
        qb = {}
        for kind, k in self.items:
            if kind == "lin":
                W = self.chain.weights[k]
                c, r = (l + u) / 2, (u - l) / 2
                c, r = c @ W, r @ W.abs()
                l, u = c - r, c + r
                continue
            gate = self.chain.gates[k]
            if gate.E is None:
                ql, qu = l, u
            else:
                c, r = (l + u) / 2, (u - l) / 2
                c, r = c @ gate.E.T, r @ gate.E.abs().T
                ql, qu = c - r, c + r
            qb[k] = (ql, qu)
            a, b = self.d_ranges[k]
            pl, pu = gated_product_interval(a, b, ql, qu)
            c, r = (pl + pu) / 2, (pu - pl) / 2
            if gate.F_p is not None:
                c, r = c @ gate.F_p.T, r @ gate.F_p.abs().T
            if gate.F_g is not None:
                gc, gr = (l + u) / 2, (u - l) / 2
                c, r = c + gc @ gate.F_g.T, r + gr @ gate.F_g.abs().T
            l, u = c - r, c + r
        return BackwardBounds(l, u, torch.maximum(l.abs(), u.abs()).sum(-1), [qb[k] for k in range(self.chain.depth)])
