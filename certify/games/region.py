"""Compact convex regions of a game's joint parameter space: a box (ℓ∞ ball) or a Euclidean ball.

Each region can produce a grid with a known *covering radius* ``h``: every point of the region is within
Euclidean distance ``h`` of a grid point.  Certified constants of non-quadratic games use it together
with a Lipschitz bound on the Jacobian (``μ_i ≥ min_grid μ_i − K h`` etc.).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...models.errors import InvalidArgumentError


@dataclass
class Box:
    """``{x : ‖x − center‖∞ ≤ radius}`` (``radius`` scalar or per coordinate)."""

    center: np.ndarray
    radius: float | np.ndarray

    def __post_init__(self) -> None:
        self.center = np.asarray(self.center, dtype=np.float64).reshape(-1)
        r = np.broadcast_to(np.asarray(self.radius, dtype=np.float64), self.center.shape).copy()
        if (r < 0).any() or not np.isfinite(r).all():
            raise InvalidArgumentError("box radius must be finite and >= 0")
        self.radius = r

    @property
    def dim(self) -> int:
        return self.center.size

    def grid(self, points_per_dim: int) -> tuple[np.ndarray, float]:
        """Tensor grid with ``points_per_dim`` points per axis (cell centres) and its covering radius."""
        n = int(points_per_dim)
        if n < 1:
            raise InvalidArgumentError("points_per_dim must be >= 1")
        if n ** self.dim > 2_000_000:
            raise InvalidArgumentError(f"a {n}^{self.dim} grid is too large; use fewer points per dimension")
        # cell centres of an n-cell split of each axis: every point is within radius/n of one (per axis)
        ticks = [c + r * ((2 * np.arange(n) + 1) / n - 1) for c, r in zip(self.center, self.radius)]
        pts = np.stack(np.meshgrid(*ticks, indexing="ij"), -1).reshape(-1, self.dim)
        h = float(np.linalg.norm(self.radius / n))
        return pts, h

    def vertices(self) -> np.ndarray:
        if self.dim > 20:
            raise InvalidArgumentError("too many box vertices (dimension > 20)")
        signs = np.array(np.meshgrid(*[[-1.0, 1.0]] * self.dim, indexing="ij")).reshape(self.dim, -1).T
        return self.center + signs * self.radius

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return self.center + self.radius * rng.uniform(-1, 1, size=(n, self.dim))

    def contains(self, x: np.ndarray, tol: float = 0.0) -> np.ndarray:
        return (np.abs(np.asarray(x) - self.center) <= self.radius + tol).all(-1)

    def to_dict(self) -> dict[str, Any]:
        r = self.radius
        return {"type": "box", "center": self.center.tolist(),
                "radius": float(r[0]) if np.all(r == r[0]) else r.tolist()}


@dataclass
class Ball:
    """``{x : ‖x − center‖₂ ≤ radius}``.  Its grid is that of the bounding box, so certified constants
    need the Jacobian bound to hold on the bounding box."""

    center: np.ndarray
    radius: float

    def __post_init__(self) -> None:
        self.center = np.asarray(self.center, dtype=np.float64).reshape(-1)
        if not (self.radius >= 0 and math.isfinite(self.radius)):
            raise InvalidArgumentError("ball radius must be finite and >= 0")
        self.radius = float(self.radius)

    @property
    def dim(self) -> int:
        return self.center.size

    def grid(self, points_per_dim: int) -> tuple[np.ndarray, float]:
        return Box(self.center, self.radius).grid(points_per_dim)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        g = rng.normal(size=(n, self.dim))
        g /= np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-300)
        return self.center + g * self.radius * rng.uniform(0, 1, size=(n, 1)) ** (1 / self.dim)

    def contains(self, x: np.ndarray, tol: float = 0.0) -> np.ndarray:
        return np.linalg.norm(np.asarray(x) - self.center, axis=-1) <= self.radius + tol

    def to_dict(self) -> dict[str, Any]:
        return {"type": "ball", "center": self.center.tolist(), "radius": self.radius}


Region = Box | Ball
