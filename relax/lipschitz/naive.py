"""Naive (global) bound: product of layer operator norms times activation Lipschitz constants.

``|c^T f(x) - c^T f(y)| <= ||W_L^T c||_q * prod_k Lip_p(phi_k) ||W_k||_{p->p} * ||x - y||_p``; with
``c = None`` the output norm is ``p`` too: ``prod_k ||W_k||_{p->p} Lip_p(phi_k)``.
"""

from __future__ import annotations

import torch

from .chain import DenseChain
from .norms import dual_norm_of


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
