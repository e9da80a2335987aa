"""Result types.  Upper bounds are certified (sound); lower bounds are estimates from an attack."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class LipschitzResult:
    """Local Lipschitz constant of a network (or of ``c^T f``) over an input box.

    ``upper`` is a **certified upper bound** (float64, inflated by the documented safety margin);
    ``lower`` is an **estimate** (label ``lower_kind == "attack"``): the largest dual norm of a true
    gradient found at a differentiable point of the region, so ``lower <= L <= upper`` with ``L``
    the local Lipschitz constant.  ``exact`` is True when branch-and-bound closed the gap (every
    domain was proven or fully split into feasibility-checked activation regions); ``upper`` is then
    the exact value (the sup of the gradient dual norm over closed activation regions) plus margin.
    NaN/Inf never becomes certified: ``status`` is then ``"failed"`` and ``upper`` is ``inf``.
    """

    upper: float
    lower: float
    norm: str
    method: str
    exact: bool = False
    per_output_upper: list[float] | None = None
    per_output_lower: list[float] | None = None
    # "bound" | "exact" | "box_exact" (BaB completed over an l2/l1 ball's bounding box: upper is sound
    # for the ball, not necessarily its exact value) | "converged" (input BaB within its tolerance) |
    # "closed_unattained" (activation BaB closed every domain, but its maximum sits on a region without
    # an interior point found -- ties or kinks meeting in a point -- so upper is sound, not shown exact) |
    # "timeout" | "domain_limit" | "failed"
    status: str = "bound"
    forward_method: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    history: list[tuple[float, float, float]] = field(default_factory=list)  # (seconds, upper, lower)
    stats: dict[str, Any] = field(default_factory=dict)
    upper_kind: str = "certified"
    lower_kind: str = "attack"

    @property
    def gap(self) -> float:
        return self.upper - self.lower

    @property
    def relative_gap(self) -> float:
        return self.gap / self.upper if self.upper > 0 else 0.0


@dataclass
class JacobianBounds:
    """Certified element-wise bounds ``lower <= J(x) <= upper`` (every Clarke Jacobian element, every x)."""

    lower: torch.Tensor  # (n_out, n_in)  (rows = seeds when a matrix c was given)
    upper: torch.Tensor
    method: str


@dataclass
class MonotonicityResult:
    """Certified sign of df_i/dx_j over the region: +1 non-decreasing, -1 non-increasing, 0 unknown
    (an entry certified identically 0 is +1).  ``lower``/``upper`` are the certified Jacobian bounds."""

    sign: torch.Tensor  # (n_out, n_in) int8
    lower: torch.Tensor
    upper: torch.Tensor

    def label(self, i: int, j: int) -> str:
        return {1: "increasing", -1: "decreasing", 0: "unknown"}[int(self.sign[i, j])]
