"""Bounds on the Clarke Jacobian of a general graph network (residual adds included).

The chain code (:mod:`.chain`, :mod:`.backward`) needs a feed-forward chain.  For a network with
residual ``add`` nodes the gradient of ``c^T f`` is back-propagated node by node in reverse
topological order:

* output node: ``g = c`` (the seed);
* affine node ``y = W x + b`` (any op of ``models.graph.AFFINE_OPS``, as a dense matrix):
  ``g_x += W^T g_y``;
* activation node: the gate of :mod:`.gates`, ``h = F_g g + F_p (d * (E g))`` with the Clarke
  derivative ``d in [a, b]`` from forward pre-activation bounds;
* ``add`` node ``y = x_1 + x_2``: ``g_{x_1} += g_y``, ``g_{x_2} += g_y``.

Two bounds of the input gradient for every ``d`` in its range (so of every Clarke gradient over
the box): interval arithmetic (:meth:`GraphJacobian.backward`: centre/radius for the linear maps,
the interval hull of ``d q`` for the gates; the chain code's "ibp" relaxation) and CROWN
(:meth:`GraphJacobian.crown`: the chord relaxations of :mod:`.relaxations` back-substituted
through the reversed DAG to the seed, as :mod:`.backward` does for chains -- on a chain network the
two codes give identical numbers).  With every derivative fixed (``a = b``) both are a point
evaluation of the chain rule, exact up to rounding, which input-space branch-and-bound uses on
small boxes.  Pre-activation bounds come from the forward bound engine ``relax.compute_bounds``
(CROWN or IBP, batched over boxes).  No outward rounding: callers inflate by the certified margin
of :func:`.api.certified`, as for the chain code.
"""

from __future__ import annotations

import math

import torch

from ....models.errors import UnsupportedOperationError
from ....models.graph import AFFINE_OPS, Network, affine_matrix

from .chain import _evaluate_act
from .gates import GATES, build_gate
from .relaxations import abs_upper, gated_product_interval, gated_product_lower, gated_product_upper


def _centre_radius_matmul(l, u, M):
    """Interval image of ``v @ M`` for ``v in [l, u]``."""
    c, r = (l + u) / 2, (u - l) / 2
    c, r = c @ M, r @ M.abs()
    return c - r, c + r


class GraphJacobian:
    """Dense view of a (possibly residual) network for interval Clarke-Jacobian bounds (float64)."""

    def __init__(self, net: Network, dtype: torch.dtype = torch.float64):
        self.net = net
        self.nodes = list(net.nodes)
        self.affine, self.gates = {}, {}
        for n in self.nodes[1:]:
            if n.op in AFFINE_OPS:
                W, b = affine_matrix(n, tuple(net[n.inputs[0]].shape), dtype=dtype, device=net.device)
                self.affine[n.name] = (W, b)
            elif n.op in GATES:
                numel = math.prod(n.shape)
                ref = torch.zeros(1, dtype=dtype, device=net.device)
                g = build_gate(n, numel, ref)
                for attr in ("E", "F_g", "F_p", "d_on", "d_off", "_S"):
                    t = getattr(g, attr, None)
                    if isinstance(t, torch.Tensor):
                        setattr(g, attr, t.to(dtype))
                self.gates[n.name] = g
            elif n.op != "add":
                raise UnsupportedOperationError(
                    f"node {n.describe()}: op {n.op!r} has no Clarke-Jacobian rule (affine ops, "
                    f"{', '.join(sorted(GATES))} and add are supported)")
        self.acts = [n for n in self.nodes if n.name in self.gates]
        self.in_dim = math.prod(net.input_shape)
        self.out_dim = math.prod(net.output_shape)

    @property
    def piecewise_linear(self) -> bool:
        return all(g.piecewise_linear for g in self.gates.values())

    # ------------------------------------------------------------------ forward
    def forward_bounds(self, XL: torch.Tensor, XU: torch.Tensor, forward: str = "auto"):
        """Sound pre-activation bounds ``[(l, u)]`` (``(D, n)``, one per activation, in node order)."""
        from ....relax import Box, compute_bounds  # the forward bound engine (layer below relax.lipschitz)
        method = "ibp" if forward == "ibp" else "crown" if forward == "auto" else forward
        shape = self.net.input_shape
        res = compute_bounds(self.net, Box(XL.reshape(-1, *shape), XU.reshape(-1, *shape)), method,
                             bound_lower=False, bound_upper=False)
        out = []
        for n in self.acts:
            l, u = res.intermediate[n.inputs[0]]
            l, u = l.reshape(l.shape[0], -1).to(XL), u.reshape(u.shape[0], -1).to(XL)
            out.append((l, torch.maximum(u, l)))
        return out

    def differentiable(self, X: torch.Tensor, tol: float) -> torch.Tensor:
        """Boolean ``(N,)``: every PWL switch is away from 0 relative to its rounding scale (see
        :func:`.attack.differentiable`; magnitudes are propagated through the graph)."""
        val = {self.nodes[0].name: X}
        mag = {self.nodes[0].name: X.abs()}
        ok = torch.ones(X.shape[0], dtype=torch.bool, device=X.device)
        for n in self.nodes[1:]:
            if n.op == "add":
                val[n.name] = val[n.inputs[0]] + val[n.inputs[1]]
                mag[n.name] = mag[n.inputs[0]] + mag[n.inputs[1]]
            elif n.name in self.affine:
                W, b = self.affine[n.name]
                val[n.name] = val[n.inputs[0]] @ W.T + b
                mag[n.name] = mag[n.inputs[0]] @ W.abs().T + b.abs()
            else:
                g, z = self.gates[n.name], val[n.inputs[0]]
                if g.piecewise_linear:
                    S = g.switch_matrix
                    scale = mag[n.inputs[0]] if S is None else mag[n.inputs[0]] @ S.abs().T
                    ok &= (g.switch_values(z).abs() > tol * scale).all(-1)
                y = _evaluate_act(n, z.reshape(-1, *self.net[n.inputs[0]].shape)).reshape(z.shape[0], -1)
                val[n.name], mag[n.name] = y, y.abs()
        return ok

    # ------------------------------------------------------------------ backward
    def backward(self, seeds: torch.Tensor, d_ranges: list[tuple[torch.Tensor, torch.Tensor]]):
        """Interval ``(gl, gu)`` ``(R, n_0)`` of the input gradient of ``seeds[r]^T f`` for every Clarke
        derivative in ``d_ranges[k] = (a, b)`` (``(R, n_q)`` per activation, node order)."""
        dr = {n.name: d for n, d in zip(self.acts, d_ranges)}
        grads = {self.net.output: (seeds, seeds)}

        def add_to(name, l, u):
            if name in grads:
                l0, u0 = grads[name]
                grads[name] = (l0 + l, u0 + u)
            else:
                grads[name] = (l, u)

        for n in reversed(self.nodes[1:]):
            if n.name not in grads:
                continue  # does not reach the output
            l, u = grads.pop(n.name)
            if n.op == "add":
                add_to(n.inputs[0], l, u)
                add_to(n.inputs[1], l, u)
            elif n.name in self.affine:
                add_to(n.inputs[0], *_centre_radius_matmul(l, u, self.affine[n.name][0]))
            else:
                g = self.gates[n.name]
                ql, qu = (l, u) if g.E is None else _centre_radius_matmul(l, u, g.E.T)
                pl, pu = gated_product_interval(*dr[n.name], ql, qu)
                hl, hu = (pl, pu) if g.F_p is None else _centre_radius_matmul(pl, pu, g.F_p.T)
                if g.F_g is not None:
                    gl2, gu2 = _centre_radius_matmul(l, u, g.F_g.T)
                    hl, hu = hl + gl2, hu + gu2
                add_to(n.inputs[0], hl, hu)
        name = self.nodes[0].name
        if name not in grads:
            z = torch.zeros(seeds.shape[0], self.in_dim, dtype=seeds.dtype, device=seeds.device)
            return z, z
        return grads[name]

    # ------------------------------------------------------------------ CROWN on the backward DAG
    def _reaches_output(self) -> set[str]:
        live = {self.net.output}
        for n in reversed(self.nodes):
            if n.name in live:
                live.update(n.inputs)
        return live

    def _upper(self, start: str, Lam: torch.Tensor, seeds: torch.Tensor, lines: dict, live: set) -> torch.Tensor:
        """Upper bound of ``Lam @ G[start]`` (``Lam``: ``(R, m, numel start)``) over the relaxed set.

        Back-substitution in forward topological order: ``G[n] = sum over consumers m of n`` of
        ``W_m^T G[m]`` (affine), ``G[m]`` (add, once per use of ``n``) or ``F_g G[m] + F_p p_m`` (gate,
        ``p_m`` replaced by its upper / lower relaxation line in ``q_m = E G[m]`` by the sign of its
        coefficient); a node's coefficient is complete when it is reached because every node feeding
        it comes earlier.  The seed ``G[output] = c`` closes the sum.
        """
        coef = {start: Lam}
        bias = torch.zeros(Lam.shape[:2], dtype=Lam.dtype, device=Lam.device)
        out = self.net.output
        for n in self.nodes:
            if n.name not in coef or n.name == out:
                continue
            L = coef.pop(n.name)
            for m in self.net.consumers(n.name):
                if m.name not in live:
                    continue
                if m.op == "add":
                    add = L * m.inputs.count(n.name)
                elif m.name in self.affine:
                    add = L @ self.affine[m.name][0].T
                else:
                    g = self.gates[m.name]
                    au, bu, al, bl = lines[m.name]
                    P = L if g.F_p is None else L @ g.F_p
                    pos = P > 0
                    Lq = P * torch.where(pos, au[:, None, :], al[:, None, :])
                    bias = bias + (P * torch.where(pos, bu[:, None, :], bl[:, None, :])).sum(-1)
                    add = Lq if g.E is None else Lq @ g.E
                    if g.F_g is not None:
                        add = add + L @ g.F_g
                coef[m.name] = coef[m.name] + add if m.name in coef else add
        return torch.einsum("rmo,ro->rm", coef[out], seeds) + bias

    def _bounds(self, M, start, seeds, lines, live, dim):
        R = seeds.shape[0]
        if M is None:
            M = torch.eye(dim, dtype=seeds.dtype, device=seeds.device)
        m = M.shape[0]
        up = self._upper(start, torch.cat((M, -M), 0).expand(R, 2 * m, dim), seeds, lines, live)
        return -up[:, m:], up[:, :m]

    def crown(self, seeds: torch.Tensor, d_ranges: list[tuple[torch.Tensor, torch.Tensor]], interval: bool = False):
        """CROWN on the backward DAG: ``(gl, gu, l1_upper)`` for every row (same relaxations as
        :mod:`.backward`: chords of the gated products, abs chord for ``||g||_1``; every gate input's
        bounds by full back-substitution to the seed, gates from the output side first; ``interval``:
        the RecurJac-style constants where ``q`` changes sign).  On a chain network it computes the
        same numbers as :class:`.backward.BackwardGraph`.  Sound for every Clarke derivative in
        ``d_ranges``."""
        live = self._reaches_output()
        dr = {n.name: d for n, d in zip(self.acts, d_ranges)}
        lines = {}
        for n in reversed(self.acts):
            if n.name not in live:
                continue
            g = self.gates[n.name]
            ql, qu = self._bounds(g.E, n.name, seeds, lines, live, g.n)
            a, b = dr[n.name]
            lines[n.name] = (*gated_product_upper(a, b, ql, qu, interval), *gated_product_lower(a, b, ql, qu, interval))
        inp = self.nodes[0].name
        if inp not in live:
            z = torch.zeros(seeds.shape[0], self.in_dim, dtype=seeds.dtype, device=seeds.device)
            return z, z, z.sum(-1)
        gl, gu = self._bounds(None, inp, seeds, lines, live, self.in_dim)
        slope, icpt = abs_upper(gl, gu)
        l1 = self._upper(inp, slope[:, None, :], seeds, lines, live)[:, 0] + icpt.sum(-1)
        return gl, gu, torch.minimum(l1, torch.maximum(gl.abs(), gu.abs()).sum(-1))
