"""Input norms, their dual norms on gradient rows, and operator norms of the Jacobian.

For a scalar function ``c^T f`` and input norm ``||.||_p`` the local Lipschitz constant is
``sup_x ||grad(x)||_q`` with ``1/p + 1/q = 1`` (sup over the Clarke gradients in the region):

* p = inf -> q = 1: bounded by CROWN on ``sum_i |g_i|`` (abs chords, :mod:`.backward`);
* p = 1   -> q = inf: ``max_i max(-l_i, u_i)`` from element-wise gradient bounds (each ``u_i`` is
  the exact maximum of ``g_i`` over the relaxed set, so this is the relaxed optimum);
* p = 2   -> q = 2: ``min( sqrt(sum_i max(l_i^2, u_i^2)), sqrt(B_1 * B_inf) )`` (box bound and Hoelder).

For the whole Jacobian with the same norm on outputs (operator norm ``p -> p``):
``inf``: max over rows of the row bounds; ``1``: max column sum of ``M = max(|L|, |U|)``;
``2``: ``min(||M||_2, sqrt(sum_rows B_row^2))`` (``|J| <= M`` entry-wise and the spectral norm
is monotone on non-negative matrices).
"""

from __future__ import annotations

import math

import torch

from ...models.errors import InvalidArgumentError

NORMS = ("inf", "2", "1")


def parse_norm(norm) -> str:
    key = str(norm).strip().lower().replace("l", "") if not isinstance(norm, float) else (
        "inf" if math.isinf(norm) else str(int(norm)))
    key = {"inf": "inf", "infinity": "inf", "_inf": "inf", "2": "2", "2.0": "2", "1": "1", "1.0": "1"}.get(key)
    if key is None:
        raise InvalidArgumentError(f"norm must be one of 'inf', '2', '1' (input norm), got {norm!r}")
    return key


def row_dual_upper(norm: str, gl: torch.Tensor, gu: torch.Tensor, l1_upper: torch.Tensor) -> torch.Tensor:
    """Upper bound of ``sup ||grad||_q`` per batch row."""
    m = torch.maximum(gl.abs(), gu.abs())
    if norm == "inf":
        return l1_upper
    linf = torch.maximum(-gl, gu).clamp(min=0).amax(-1)
    linf = torch.minimum(linf, m.amax(-1))
    if norm == "1":
        return linf
    return torch.minimum(m.pow(2).sum(-1).sqrt(), (l1_upper * linf).clamp(min=0).sqrt())


def operator_upper(norm: str, rows: torch.Tensor, L: torch.Tensor, U: torch.Tensor) -> float:
    """Upper bound of ``sup ||J||_{p->p}`` from per-row bounds ``rows`` and entry bounds ``L, U``."""
    M = torch.maximum(L.abs(), U.abs())
    if norm == "inf":
        return float(rows.max())
    if norm == "1":
        return float(M.sum(0).max())
    spec = torch.linalg.matrix_norm(M, ord=2)
    return float(torch.minimum(spec, rows.pow(2).sum().sqrt()))


def dual_norm_of(g: torch.Tensor, norm: str) -> torch.Tensor:
    """``||g||_q`` of gradient rows (last dim)."""
    if norm == "inf":
        return g.abs().sum(-1)
    if norm == "1":
        return g.abs().amax(-1)
    return g.norm(dim=-1)


def operator_norm_of(J: torch.Tensor, norm: str) -> torch.Tensor:
    """``||J||_{p->p}`` for a batch of Jacobians (..., out, in)."""
    if norm == "inf":
        return J.abs().sum(-1).amax(-1)
    if norm == "1":
        return J.abs().sum(-2).amax(-1)
    return torch.linalg.matrix_norm(J, ord=2)
