"""Naive (global) bound: product of layer operator norms times activation Lipschitz constants.

``|c^T f(x) - c^T f(y)| <= ||W_L^T c||_q * prod_k Lip_p(phi_k) ||W_k||_{p->p} * ||x - y||_p``; with
``c = None`` the output norm is ``p`` too: ``prod_k ||W_k||_{p->p} Lip_p(phi_k)``.

For a network with residual ``add`` nodes (:func:`graph_product`) the same bound is carried through
the graph: every node's value is a ``L_v``-Lipschitz function of the input (``p -> p``) with
``L_input = 1``, ``L_v = ||W_v||_{p->p} L_u`` for an affine node, ``Lip_p(phi) L_u`` for an activation
and ``L_a + L_b`` for ``a + b`` (triangle inequality); on a chain it is the product above.
"""

from __future__ import annotations

import torch

from ....models.errors import UnsupportedOperationError
from .chain import DenseChain
from ..norms import dual_norm_of


def _op_norm(W: torch.Tensor, norm: str) -> torch.Tensor:
    if norm == "inf":
        return W.abs().sum(1).max()
    if norm == "1":
        return W.abs().sum(0).max()
    return torch.linalg.matrix_norm(W, ord=2)


def _act_lip(gate, norm: str) -> float:
    if gate.op in ("relu", "maxmin", "groupsort"):
        return 1.0
    if gate.op == "leaky_relu":
        return float(max(1.0, abs(float(gate.d_off[0]))))
    if gate.op == "tanh":
        return 1.0
    if gate.op == "sigmoid":
        return 0.25
    if gate.op == "householder":
        H = torch.eye(gate.n, dtype=gate.E.dtype, device=gate.E.device) - 2.0 * gate.E.T @ gate.E
        return float(max(1.0, float(_op_norm(H, norm))))
    raise ValueError(gate.op)


def naive_product(chain: DenseChain, norm: str, seeds: torch.Tensor | None = None) -> torch.Tensor:
    """Per seed row (or the operator norm if ``seeds`` is None): float64 tensor."""
    prod = torch.ones((), dtype=torch.float64, device=chain.weights[0].device)
    for k, gate in enumerate(chain.gates):
        prod = prod * _op_norm(chain.weights[k], norm) * _act_lip(gate, norm)
    if seeds is None:
        return prod * _op_norm(chain.weights[-1], norm)
    return prod * dual_norm_of(seeds @ chain.weights[-1], norm)


def graph_product(net, norm: str) -> torch.Tensor:
    """``p -> p`` Lipschitz bound of the output of any (residual) network by the recursion of the module
    docstring (float64; round it up with :func:`.api.certified`).  Raises
    :class:`UnsupportedOperationError` naming a node without a rule."""
    from .graph_jacobian import GraphJacobian
    g = GraphJacobian(net.to(dtype=torch.float64))
    L = {net.nodes[0].name: torch.ones((), dtype=torch.float64, device=net.device)}
    for n in net.nodes[1:]:
        if n.name in g.affine:
            L[n.name] = _op_norm(g.affine[n.name][0], norm) * L[n.inputs[0]]
        elif n.name in g.gates:
            try:
                L[n.name] = _act_lip(g.gates[n.name], norm) * L[n.inputs[0]]
            except ValueError:
                raise UnsupportedOperationError(f"node {n.describe()}: no Lipschitz constant for op {n.op!r}") from None
        elif n.op == "add":
            L[n.name] = L[n.inputs[0]] + L[n.inputs[1]]
        else:  # pragma: no cover - GraphJacobian refuses these already
            raise UnsupportedOperationError(f"node {n.describe()}: op {n.op!r} has no product-of-norms rule")
    return L[net.output]
