"""Differentiable games: N players, parameter blocks, losses; the pseudo-gradient and its Jacobian.

Player i controls ``x_i ∈ R^{d_i}`` and minimizes ``f_i(x_1, …, x_N)``.  The pseudo-gradient is
``F(x) = (∇_{x_1} f_1(x), …, ∇_{x_N} f_N(x))`` and its Jacobian has blocks
``J_ij = ∂F_i/∂x_j = ∇²_{x_i x_j} f_i``.  Gradient play is the flow ``ẋ = −F(x)``.

:class:`Game` wraps torch callables (autograd, float64); :class:`QuadraticGame` is the explicit-matrix
case ``F(x) = A x + c`` whose Jacobian is constant (constants are then exact).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch.func import jacfwd, vmap

from ...models.errors import InvalidArgumentError, ShapeMismatchError

Loss = Callable[[list[torch.Tensor]], torch.Tensor]


class Game:
    """A game from per-player losses ``f_i(xs) -> scalar`` where ``xs`` is the list of player blocks.

    ``jacobian_lipschitz``: an optional bound ``K`` with ``‖J(x) − J(y)‖₂ ≤ K‖x − y‖₂`` on the regions
    it will be certified on (for example from a third-derivative bound); ``certified`` constants of a
    non-quadratic game need it (sampling + ``K`` × covering radius).
    """

    def __init__(self, losses: Sequence[Loss], dims: Sequence[int], *, names: Sequence[str] | None = None,
                 jacobian_lipschitz: float | None = None):
        if len(losses) != len(dims) or len(dims) < 1:
            raise InvalidArgumentError(f"a game needs one loss per player: {len(losses)} losses, {len(dims)} blocks")
        if any(int(d) < 1 for d in dims):
            raise InvalidArgumentError(f"player dimensions must be positive, got {list(dims)}")
        if jacobian_lipschitz is not None and not (jacobian_lipschitz >= 0 and np.isfinite(jacobian_lipschitz)):
            raise InvalidArgumentError(f"jacobian_lipschitz must be finite and >= 0, got {jacobian_lipschitz}")
        self.losses = list(losses)
        self.dims = [int(d) for d in dims]
        self.names = list(names) if names is not None else [f"player{i}" for i in range(len(dims))]
        self.jacobian_lipschitz = jacobian_lipschitz
        self.offsets = np.concatenate([[0], np.cumsum(self.dims)]).tolist()

    @property
    def n_players(self) -> int:
        return len(self.dims)

    @property
    def dim(self) -> int:
        return int(sum(self.dims))

    def split(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.shape[-1] != self.dim:
            raise ShapeMismatchError(f"game point has {x.shape[-1]} coordinates, the game has {self.dim}")
        return list(torch.split(x, self.dims, dim=-1))

    def block(self, i: int) -> slice:
        return slice(self.offsets[i], self.offsets[i + 1])

    def pseudo_gradient(self, x: torch.Tensor) -> torch.Tensor:
        """``F(x)`` for one point ``x`` of shape ``(d,)`` (float64)."""
        x = torch.as_tensor(x, dtype=torch.float64)
        parts = []
        for i, f in enumerate(self.losses):
            g = torch.func.grad(lambda z, f=f: f(self.split(z)))(x)
            parts.append(g[self.block(i)])
        return torch.cat(parts)

    def jacobian(self, x: torch.Tensor) -> torch.Tensor:
        """``J(x) = ∂F/∂x``, shape ``(d, d)``; for a batch ``(n, d)`` of points, ``(n, d, d)``."""
        x = torch.as_tensor(x, dtype=torch.float64)
        jf = jacfwd(self.pseudo_gradient)
        if x.dim() == 1:
            return jf(x)
        try:
            return vmap(jf)(x)
        except Exception:  # callables that vmap cannot trace: fall back to a loop
            return torch.stack([jf(xi) for xi in x])

    def is_quadratic(self) -> bool:
        return False


class QuadraticGame(Game):
    """``F(x) = A x + c``: player i's loss ``½ x_iᵀ A_ii x_i + Σ_{j≠i} x_iᵀ A_ij x_j + c_iᵀ x_i``.

    ``A`` is the full Jacobian (d×d).  Own blocks ``A_ii`` should be symmetric for a genuine game (they are
    Hessians); a non-symmetric own block is accepted as a variational inequality and only its symmetric
    part enters the curvature.
    """

    def __init__(self, A, dims: Sequence[int], c=None, *, names: Sequence[str] | None = None):
        A = np.asarray(A, dtype=np.float64)
        d = int(sum(dims))
        if A.shape != (d, d):
            raise ShapeMismatchError(f"game matrix must be {d}x{d} for blocks {list(dims)}, got {A.shape}")
        if not np.isfinite(A).all():
            raise InvalidArgumentError("game matrix has NaN or Inf entries")
        self.A = A
        self.c = np.zeros(d) if c is None else np.asarray(c, dtype=np.float64).reshape(d)
        At, ct = torch.tensor(A), torch.tensor(self.c)
        offs = np.concatenate([[0], np.cumsum(dims)]).tolist()

        def make_loss(i: int) -> Loss:
            s = slice(offs[i], offs[i + 1])

            def f(xs: list[torch.Tensor]) -> torch.Tensor:
                x = torch.cat(xs)
                xi = x[s]
                Aii = At[s, s]
                other = At[s] @ x - Aii @ xi
                return 0.5 * xi @ (0.5 * (Aii + Aii.T)) @ xi + xi @ other + ct[s] @ xi
            return f

        super().__init__([make_loss(i) for i in range(len(dims))], dims, names=names, jacobian_lipschitz=0.0)

    @classmethod
    def from_blocks(cls, blocks: Sequence[Sequence], c=None, names=None) -> "QuadraticGame":
        """From a nested list of blocks ``[[A_11, A_12], [A_21, A_22]]`` (scalars allowed for 1-d players)."""
        rows = [[np.atleast_2d(np.asarray(b, dtype=np.float64)) for b in row] for row in blocks]
        dims = [r[i].shape[0] for i, r in enumerate(rows)]
        return cls(np.block(rows), dims, c, names=names)

    def pseudo_gradient(self, x):
        """``F(x) = A x + c`` (for a batch ``(n, d)`` row-wise)."""
        x = torch.as_tensor(x, dtype=torch.float64)
        F = torch.tensor(self.A) @ x if x.dim() == 1 else x @ torch.tensor(self.A).T
        return F + torch.tensor(self.c)

    def jacobian(self, x=None):
        J = torch.tensor(self.A)
        if x is not None and torch.as_tensor(x).dim() == 2:
            return J.expand(torch.as_tensor(x).shape[0], -1, -1)
        return J

    def equilibrium(self) -> np.ndarray:
        """The unique point with ``F = 0`` (``A`` nonsingular)."""
        return np.linalg.solve(self.A, -self.c)

    def is_quadratic(self) -> bool:
        return True


def simulate(game: Game, x0, h: float, steps: int, method: str = "euler", box=None) -> np.ndarray:
    """Iterates of gradient play ``x⁺ = Π(x − h F(x))`` (``method="euler"``) or classical RK4 (``"rk4"``).

    ``box`` (a :class:`~certify.games.region.Box`) projects every iterate onto the box; the box is a product
    of per-player sets and the SGN metric is scalar on each block, so this is the projection in ``‖·‖_M``
    and is nonexpansive there -- the Euler step bounds of the certificate apply unchanged.  Returns the
    ``(steps + 1, d)`` trajectory.
    """
    if method not in ("euler", "rk4"):
        raise InvalidArgumentError(f"method must be 'euler' or 'rk4', got {method!r}")
    F = lambda z: game.pseudo_gradient(torch.tensor(z)).numpy()  # noqa: E731
    proj = (lambda z: np.clip(z, box.center - box.radius, box.center + box.radius)) if box is not None else (lambda z: z)
    x = np.asarray(x0, dtype=np.float64).copy()
    out = [x.copy()]
    for _ in range(int(steps)):
        if method == "euler":
            x = proj(x - h * F(x))
        else:
            k1 = F(x)
            k2 = F(x - h / 2 * k1)
            k3 = F(x - h / 2 * k2)
            k4 = F(x - h * k3)
            x = proj(x - h / 6 * (k1 + 2 * k2 + 2 * k3 + k4))
        out.append(x.copy())
    return np.stack(out)
