"""Lipschitz-friendly activation layers: MaxMin, GroupSort and Householder.

All three act on dimension 1 (features of a ``(B, n)`` tensor or channels of a ``(B, C, H, W)``
tensor), are piecewise linear, 1-Lipschitz in the l2 norm, and (MaxMin, GroupSort) preserve the
sum inside each group.  Their Clarke derivatives are selections of permutation matrices (sorting)
or of {I, I - 2 v v^T} (Householder).

Conventions
-----------
* ``MaxMin(layout="pairs")`` maps each adjacent pair ``(x[2i], x[2i+1])`` to ``(max, min)``;
  ``layout="halves"`` pairs ``x[i]`` with ``x[i + n/2]`` (the orthogonium / Anil et al. convention)
  and writes the maxima to the first half, the minima to the second.
* ``GroupSort(g)`` sorts each group of ``g`` consecutive features in *descending* order, so that
  ``GroupSort(2)`` equals ``MaxMin("pairs")``; ``descending=False`` sorts ascending.
* ``HouseholderActivation`` keeps one vector ``v`` per group (normalized to unit length in the
  forward pass): ``z -> z`` if ``v^T z > 0`` else ``(I - 2 v v^T) z``.
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import ShapeMismatchError


def _check_groups(n: int, g: int, who: str) -> None:
    if g < 1 or n % g != 0:
        raise ShapeMismatchError(f"{who}: {n} features are not divisible into groups of {g}")


def _grouped(x: torch.Tensor, g: int) -> torch.Tensor:
    """(B, n, *rest) -> (B, n // g, g, *rest)."""
    return x.reshape(x.shape[0], x.shape[1] // g, g, *x.shape[2:])


def group_sort(x: torch.Tensor, g: int, descending: bool = True) -> torch.Tensor:
    _check_groups(x.shape[1], g, "GroupSort")
    y = torch.sort(_grouped(x, g), dim=2, descending=descending).values
    return y.reshape(x.shape)


def max_min(x: torch.Tensor, layout: str = "pairs") -> torch.Tensor:
    _check_groups(x.shape[1], 2, "MaxMin")
    if layout == "pairs":
        z = _grouped(x, 2)
        a, b = z[:, :, 0], z[:, :, 1]
        return torch.stack((torch.maximum(a, b), torch.minimum(a, b)), dim=2).reshape(x.shape)
    if layout == "halves":
        a, b = torch.chunk(x, 2, dim=1)
        return torch.cat((torch.maximum(a, b), torch.minimum(a, b)), dim=1)
    raise ValueError(f"MaxMin layout must be 'pairs' or 'halves', got {layout!r}")


def householder(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Apply the Householder activation with unit vectors ``v`` of shape (groups, g)."""
    groups, g = v.shape
    if x.shape[1] != groups * g:
        raise ShapeMismatchError(
            f"Householder: input has {x.shape[1]} features, the layer expects {groups} groups of {g}")
    z = _grouped(x, g)
    vv = v.reshape(1, groups, g, *([1] * (x.dim() - 2))).to(x.dtype)
    s = (vv * z).sum(dim=2, keepdim=True)  # v^T z per group
    reflected = z - 2.0 * vv * s
    return torch.where(s > 0, z, reflected).reshape(x.shape)


class MaxMin(nn.Module):
    """Pairwise (max, min) activation; see the module docstring for the layouts."""

    def __init__(self, layout: str = "pairs"):
        super().__init__()
        if layout not in ("pairs", "halves"):
            raise ValueError(f"MaxMin layout must be 'pairs' or 'halves', got {layout!r}")
        self.layout = layout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return max_min(x, self.layout)

    def extra_repr(self) -> str:
        return f"layout={self.layout!r}"


class GroupSort(nn.Module):
    """Sort each group of ``group_size`` consecutive features (descending by default)."""

    def __init__(self, group_size: int = 2, descending: bool = True):
        super().__init__()
        if int(group_size) < 1:
            raise ValueError("GroupSort group_size must be >= 1")
        self.group_size = int(group_size)
        self.descending = bool(descending)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return group_sort(x, self.group_size, self.descending)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, descending={self.descending}"


class HouseholderActivation(nn.Module):
    """Per-group Householder activation with learnable direction ``v`` (unit-normalized on use)."""

    def __init__(self, num_features: int, group_size: int = 2, v: torch.Tensor | None = None):
        super().__init__()
        _check_groups(num_features, group_size, "HouseholderActivation")
        groups = num_features // group_size
        if v is None:
            v = torch.zeros(groups, group_size)
            v[:, 0], v[:, 1 % group_size] = 1.0, -1.0  # (1, -1)/sqrt(2): reduces to MaxMin for g = 2
        v = torch.as_tensor(v, dtype=torch.get_default_dtype())
        if v.dim() == 1:
            v = v.expand(groups, group_size).clone()
        if tuple(v.shape) != (groups, group_size):
            raise ShapeMismatchError(
                f"HouseholderActivation: v has shape {tuple(v.shape)}, expected ({groups}, {group_size})")
        self.num_features = num_features
        self.group_size = group_size
        self.v = nn.Parameter(v)

    def unit_v(self) -> torch.Tensor:
        return self.v / self.v.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return householder(x, self.unit_v())

    def extra_repr(self) -> str:
        return f"num_features={self.num_features}, group_size={self.group_size}"


class Residual(nn.Module):
    """``x + body(x)``: a residual block (used by the zoo's residual networks and the spec format)."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Normalize(nn.Module):
    """Input normalization ``(x - mean) / std`` with per-channel (or per-feature) constants."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.get_default_dtype()))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.get_default_dtype()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std
