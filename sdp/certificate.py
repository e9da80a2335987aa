"""Result types.  A *certificate* (float64-proven upper bound) and an *estimate* are different types."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SDPCertificate:
    """Global Lipschitz upper bound of ``c^T f`` (or ``f``) w.r.t. ``norm`` (input) / l2 (output).

    ``certified_value`` is proven in float64 (see :mod:`sdp.verify`) and is None unless
    ``status == "certified"``.  ``raw_value`` is what the solver's objective implied (NOT a bound:
    solver points are slightly infeasible).  ``naive_product`` is the matrix-norm product (float SVD).
    For ``norm="inf"`` the bound is on |c^T f(x) - c^T f(y)| / ||x - y||_inf (scalar output).
    """

    raw_value: float
    certified_value: float | None
    status: str                 # "certified" | "failed"
    solver: str
    solve_time: float
    method: str
    norm: Any
    naive_product: float
    multipliers: dict = field(default_factory=dict, repr=False)
    verify_time: float = 0.0
    solver_status: str = ""
    message: str = ""
    kind: str = "certificate"

    def __post_init__(self):
        if self.status == "certified":
            v = self.certified_value
            if v is None or not math.isfinite(v) or v < 0:
                self.status, self.certified_value = "failed", None
                self.message = (self.message + "; " if self.message else "") + "non-finite bound rejected"
        else:
            self.certified_value = None

    @property
    def certified(self) -> bool:
        return self.status == "certified"

    def radius(self, margin: float) -> float:
        """Certified robustness radius margin / L (0 unless certified and margin > 0)."""
        if not self.certified or not (margin > 0):
            return 0.0
        return float(margin) / self.certified_value if self.certified_value > 0 else math.inf


@dataclass
class LipschitzEstimate:
    """A heuristic LOWER estimate (sampling / gradient ascent): never a certificate."""

    value: float
    norm: Any
    samples: int
    how: str
    kind: str = "estimate"
