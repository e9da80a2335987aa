from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

if TYPE_CHECKING:  # (annotations only: this module is imported by the first-order path, which needs no cvxpy)
    import cvxpy as cp


@dataclass
class Built:
    problem: cp.Problem
    read: Callable[[], dict]      # multipliers as numpy arrays (after a solve)
    rho: cp.Variable
    cone_sizes: list[int]


def psd(Z) -> cp.Constraint:
    """Z >> 0 on the symmetric part (cvxpy wants symmetric expressions)."""
    return 0.5 * (Z + Z.T) >> 0


def row_space_reduction(M: np.ndarray, rtol: float = 1e-12) -> np.ndarray:
    """V with orthonormal columns spanning the row space of M (thin SVD). For l2 only:
    ||x - y|| >= ||V^T (x - y)|| and M x depends on x only through V^T x, so the l2 Lipschitz
    constant of a map of M x equals that of the map restricted to the row space."""
    _, s, Vt = np.linalg.svd(M, full_matrices=False)
    r = int((s > rtol * (s[0] if s.size else 0)).sum())
    return Vt[:r].T
