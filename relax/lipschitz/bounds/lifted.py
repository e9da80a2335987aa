"""Residual piecewise-linear networks as a *lifted chain*, for the chain bounds and the complete BaB.

The chain code (:mod:`.chain`, :mod:`.backward`, :mod:`.polytope`, :mod:`.bab`) needs
``f = W_L phi_L(... phi_1(W_0 x + b_0) ...) + b_L``.  A network with residual ``add`` nodes is one too,
on a larger state: walk the nodes in topological order keeping every node's value as an affine
function ``M s + c`` of the current state ``s`` (at first the input ``x``).  At an activation with input
``z = M_z s + c_z`` (``m`` features) the new state is ``s' = [r; phi(z)]`` where ``r`` carries what later
nodes still need: the values of the *live* nodes (``r = L s + c_L``) when they are fewer than ``s``, else
``s`` itself.  As a chain stage:

    u = [L; M_z] s + [c_L; c_z],        s' = P u + Q relu(S u),
    P = diag(I, P_phi),  Q = [0; Q_phi],  S = [0, S_phi]

with ``phi(z) = P_phi z + Q_phi relu(S_phi z)`` (:mod:`.gates`: ReLU ``(0, I, I)``, LeakyReLU
``(a I, (1 - a) I, I)``, MaxMin / GroupSort / Householder their switch forms; a GroupSort with groups
> 2 is one stage per sorting-network round).  This is exact: the lifted chain computes the network's
function, and its switches are the network's switches, so the activation-splitting branch-and-bound
is complete on it as on a chain.  The gate of a stage is the generic switch gate (op ``"switch"``):
backward ``h = P^T g + S^T (d * (Q^T g))``, ``d = 1[S u >= 0]``.

Supported nodes: the affine ops of :data:`models.graph.AFFINE_OPS`, ``add``, and the piecewise-linear
activations; anything else raises :class:`UnsupportedOperationError` naming the node.
"""

from __future__ import annotations

import math

import torch

from ....models.errors import UnsupportedOperationError
from ....models.graph import AFFINE_OPS, Network, affine_matrix

from .chain import DenseChain
from .gates import Gate, build_gates

LIFTABLE_ACTS = ("relu", "leaky_relu", "maxmin", "groupsort", "householder")


def _phi_form(node, m: int, ref: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(P, Q, S)`` of each round of the activation (one round except GroupSort with groups > 2)."""
    eye = torch.eye(m, dtype=ref.dtype, device=ref.device)
    if node.op == "relu":
        return [(torch.zeros_like(eye), eye, eye)]
    if node.op == "leaky_relu":
        a = float(node.attrs["negative_slope"])
        return [(a * eye, (1.0 - a) * eye, eye)]
    return [(g.P.to(ref), g.Q.to(ref), g.switch_matrix.to(ref)) for g in build_gates(node, m, ref)]


def switch_gate(P: torch.Tensor, Q: torch.Tensor, S: torch.Tensor) -> Gate:
    """The generic gate of ``y = P u + Q relu(S u)``: backward ``h = P^T g + S^T (d * (Q^T g))``."""
    one = torch.ones(S.shape[0], dtype=P.dtype, device=P.device)
    g = Gate("switch", P.shape[0], Q.T.contiguous(), P.T.contiguous(), S.T.contiguous(), one, torch.zeros_like(one),
             True, P, Q)
    g._S = S
    return g


def lifted_chain(net: Network, dtype: torch.dtype = torch.float64) -> DenseChain:
    """The lifted chain of a (residual) piecewise-linear network (see the module docstring)."""
    nodes = list(net.nodes)
    index = {n.name: i for i, n in enumerate(nodes)}
    last_use = {n.name: -1 for n in nodes}
    for i, n in enumerate(nodes):
        for a in n.inputs:
            last_use[a] = max(last_use[a], i)
    last_use[net.output] = len(nodes)
    ref = torch.zeros(1, dtype=dtype, device=net.device)
    n0 = math.prod(net.input_shape)
    N = n0
    expr = {nodes[0].name: (torch.eye(n0, dtype=dtype, device=net.device), torch.zeros(n0, dtype=dtype, device=net.device))}
    weights, biases, acts, gates = [], [], [], []
    for i, n in enumerate(nodes[1:], start=1):
        if n.op in AFFINE_OPS:
            W, b = affine_matrix(n, tuple(net[n.inputs[0]].shape), dtype=dtype, device=net.device)
            M, c = expr[n.inputs[0]]
            expr[n.name] = (W @ M, W @ c + b)
        elif n.op == "add":
            (M1, c1), (M2, c2) = expr[n.inputs[0]], expr[n.inputs[1]]
            expr[n.name] = (M1 + M2, c1 + c2)
        elif n.op in LIFTABLE_ACTS:
            Mz, cz = expr[n.inputs[0]]
            m = Mz.shape[0]
            live = [v for v in expr if last_use[v] > i]
            K = sum(expr[v][0].shape[0] for v in live)
            carry_all = K >= N
            if not carry_all:  # carry the live values themselves
                L = torch.cat([expr[v][0] for v in live]) if live else torch.zeros(0, N, dtype=dtype, device=net.device)
                cL = torch.cat([expr[v][1] for v in live]) if live else torch.zeros(0, dtype=dtype, device=net.device)
            else:  # carry the whole state
                K = N
                L = torch.eye(N, dtype=dtype, device=net.device)
                cL = torch.zeros(N, dtype=dtype, device=net.device)
            weights.append(torch.cat((L, Mz)))
            biases.append(torch.cat((cL, cz)))
            for r, (P0, Q0, S0) in enumerate(_phi_form(n, m, ref)):
                if r > 0:  # the next sorting-network round acts on the previous round's output
                    weights.append(torch.eye(K + m, dtype=dtype, device=net.device))
                    biases.append(torch.zeros(K + m, dtype=dtype, device=net.device))
                P = torch.block_diag(torch.eye(K, dtype=dtype, device=net.device), P0)
                Q = torch.cat((torch.zeros(K, Q0.shape[1], dtype=dtype, device=net.device), Q0))
                S = torch.cat((torch.zeros(S0.shape[0], K, dtype=dtype, device=net.device), S0), 1)
                gates.append(switch_gate(P, Q, S))
                acts.append(n)
            # values in the new state s' = [carried; phi(z)]
            if carry_all:
                for v in live:
                    Mv, cv = expr[v]
                    expr[v] = (torch.cat((Mv, torch.zeros(Mv.shape[0], m, dtype=dtype, device=net.device)), 1), cv)
            else:
                off = 0
                for v in live:
                    k = expr[v][0].shape[0]
                    sel = torch.zeros(k, K + m, dtype=dtype, device=net.device)
                    sel[:, off:off + k] = torch.eye(k, dtype=dtype, device=net.device)
                    expr[v] = (sel, torch.zeros(k, dtype=dtype, device=net.device))
                    off += k
            sel = torch.zeros(m, K + m, dtype=dtype, device=net.device)
            sel[:, K:] = torch.eye(m, dtype=dtype, device=net.device)
            expr[n.name] = (sel, torch.zeros(m, dtype=dtype, device=net.device))
            for v in [v for v in expr if last_use[v] <= i and v != n.name]:
                del expr[v]  # dead: no later consumer
            N = K + m
        else:
            raise UnsupportedOperationError(
                f"node {n.describe()}: the lifted chain (complete BaB of residual networks) supports affine ops, "
                f"add and the activations {', '.join(LIFTABLE_ACTS)}")
    M, c = expr[net.output]
    weights.append(M)
    biases.append(c)
    chain = DenseChain(weights, biases, acts, gates, net)
    chain.lifted = True
    return chain
