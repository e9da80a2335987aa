"""Block constants of a game on a region: curvatures ``μ_i``, couplings ``L_ij``, Lipschitz bounds.

From Jacobians ``J(x)`` at points of the region:

* ``μ_i = min_x λ_min(sym J_ii(x))``, ``L_ij = max_x ‖J_ij(x)‖₂``, Euclidean Lipschitz
  ``max_x ‖J(x)‖₂``, Euclidean monotonicity margin ``min_x λ_min(sym J(x))``, and for weights ``w`` the
  metric Lipschitz constant ``β(w) = max_x ‖W^{1/2} J(x) W^{-1/2}‖₂`` (block-scalar ``W``).

Modes (always labelled):

* ``estimate``: the region's vertices (when few), its centre and random samples -- fast, *not* a bound.
* ``certified``: a quadratic game has a constant Jacobian, so one evaluation is exact.  Otherwise the
  game must declare ``K ≥ sup ‖J(x) − J(y)‖₂/‖x − y‖₂`` on the region; the grid's covering radius ``h``
  gives the rigorous slack ``K h`` (``μ_i``, margins decrease by it; ``L_ij``, Lipschitz increase by it;
  ``β(w)`` by ``√(w_max/w_min) K h``).  Weyl's inequality and ``‖P A Q‖ ≤ ‖A‖`` for the blocks make
  these sound.  A relative float margin ``1e-12·(1 + max‖J‖)`` covers LAPACK rounding (documented
  safety margin, not a rounding analysis).  NaN/Inf in any Jacobian makes the constants unusable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from ...models.errors import InvalidArgumentError
from .game import Game
from .region import Ball, Box, Region

FLOAT_MARGIN = 1e-12


@dataclass
class GameConstants:
    """Block constants on a region, with how they were obtained."""

    mu: np.ndarray
    L: np.ndarray
    lipschitz: float
    euclidean_margin: float
    dims: list[int]
    mode: str
    kind: str                 # "certified" | "estimate"
    n_points: int
    covering_radius: float
    jacobian_lipschitz: float | None
    metric: str = "euclidean"
    slack: float = 0.0        # K h + float margin, added in beta()
    jacobians: np.ndarray = field(default=None, repr=False)  # (n, d, d) samples used for beta(w)

    def beta(self, w: Sequence[float]) -> float:
        """``β(w) = max_x ‖W^{1/2} J(x) W^{-1/2}‖₂`` (+ the certified slack scaled by ``√(w_max/w_min)``)."""
        w = np.asarray(w, dtype=np.float64)
        sw = np.repeat(np.sqrt(w), self.dims)
        A = sw[None, :, None] * self.jacobians / sw[None, None, :]
        b = float(np.linalg.norm(A, 2, axis=(-2, -1)).max())
        return b + math.sqrt(w.max() / w.min()) * self.slack

    def to_dict(self) -> dict[str, Any]:
        return {"mu": self.mu.tolist(), "L": self.L.tolist(), "lipschitz": self.lipschitz,
                "euclidean_margin": self.euclidean_margin, "dims": self.dims, "mode": self.mode, "kind": self.kind,
                "n_points": self.n_points, "covering_radius": self.covering_radius,
                "jacobian_lipschitz": self.jacobian_lipschitz, "metric": self.metric, "slack": self.slack}


def constants_from_jacobians(jacs: np.ndarray, dims: Sequence[int], *, mode: str, kind: str, slack: float = 0.0,
                             covering_radius: float = 0.0, jacobian_lipschitz: float | None = None,
                             metric: str = "euclidean") -> GameConstants:
    """Reduce sampled Jacobians ``(n, d, d)`` to block constants, widened by ``slack`` (see module doc)."""
    jacs = np.asarray(jacs, dtype=np.float64)
    if jacs.ndim == 2:
        jacs = jacs[None]
    if not np.isfinite(jacs).all():
        raise InvalidArgumentError("a Jacobian of the game has NaN/Inf entries on the region")
    dims = [int(d) for d in dims]
    offs = np.concatenate([[0], np.cumsum(dims)])
    N = len(dims)
    norm_all = np.linalg.norm(jacs, 2, axis=(-2, -1))
    s = slack + FLOAT_MARGIN * (1.0 + float(norm_all.max())) if kind == "certified" else slack
    mu, L = np.zeros(N), np.zeros((N, N))
    for i in range(N):
        bi = slice(offs[i], offs[i + 1])
        Jii = jacs[:, bi, bi]
        mu[i] = float(np.linalg.eigvalsh(0.5 * (Jii + Jii.transpose(0, 2, 1)))[:, 0].min()) - s
        for j in range(N):
            if i != j:
                L[i, j] = float(np.linalg.norm(jacs[:, bi, offs[j]:offs[j + 1]], 2, axis=(-2, -1)).max()) + s
    sym = 0.5 * (jacs + jacs.transpose(0, 2, 1))
    return GameConstants(mu=mu, L=L, lipschitz=float(norm_all.max()) + s,
                         euclidean_margin=float(np.linalg.eigvalsh(sym)[:, 0].min()) - s, dims=dims, mode=mode,
                         kind=kind, n_points=int(jacs.shape[0]), covering_radius=covering_radius,
                         jacobian_lipschitz=jacobian_lipschitz, metric=metric, slack=s, jacobians=jacs)


def estimation_points(region: Region, n_random: int, seed: int = 0) -> np.ndarray:
    """Centre, vertices (boxes of dimension ≤ 12) and ``n_random`` uniform samples of the region."""
    rng = np.random.default_rng(seed)
    pts = [region.center[None, :]]
    if isinstance(region, Box) and region.dim <= 12:
        pts.append(region.vertices())
    if n_random > 0:
        pts.append(region.sample(n_random, rng))
    return np.concatenate(pts)


def game_constants(game: Game, region: Region, mode: str = "certified", *, n_random: int = 256,
                   points_per_dim: int | None = None, max_grid: int = 20000, seed: int = 0) -> GameConstants:
    """Block constants of ``game`` on ``region`` in ``mode`` ``"certified"`` or ``"estimate"``."""
    if mode not in ("certified", "estimate"):
        raise InvalidArgumentError(f"mode must be 'certified' or 'estimate', got {mode!r}")
    if not isinstance(region, (Box, Ball)):
        raise InvalidArgumentError(f"region must be a Box or a Ball, got {type(region).__name__}")
    if region.dim != game.dim:
        raise InvalidArgumentError(f"region has dimension {region.dim}, the game has {game.dim}")
    if game.is_quadratic():
        J = game.jacobian().numpy()
        return constants_from_jacobians(J, game.dims, mode=mode, kind=mode, covering_radius=0.0,
                                        jacobian_lipschitz=0.0)
    if mode == "estimate":
        pts = estimation_points(region, n_random, seed)
        jac = game.jacobian(torch.tensor(pts)).numpy()
        return constants_from_jacobians(jac, game.dims, mode=mode, kind="estimate")
    K = game.jacobian_lipschitz
    if K is None:
        raise InvalidArgumentError("certified constants of a non-quadratic game need a Jacobian Lipschitz bound: "
                                   "construct the Game with jacobian_lipschitz=K, or use mode='estimate'")
    n = points_per_dim or max(2, int(math.floor(max_grid ** (1.0 / game.dim))))
    pts, h = region.grid(n)
    jac = game.jacobian(torch.tensor(pts)).numpy()
    return constants_from_jacobians(jac, game.dims, mode=mode, kind="certified", slack=K * h, covering_radius=h,
                                    jacobian_lipschitz=K)
