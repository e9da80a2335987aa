"""Mirror/Fisher geometry: SGN for entropy-regularized natural policy gradient in tabular Markov games.

Two players with tabular softmax policies ``π_i(·|s) = softmax(θ_i[s])`` maximize
``J_i = (1 − γ) ρ₀ᵀ V_i^π + τ Σ_s H(π_i(·|s))`` (occupancy-normalized discounted return from the
initial distribution plus an unweighted entropy bonus); the game losses are ``f_i = −J_i``.  Natural policy gradient (NPG) is
Euler in the Fisher metric: ``θ_i ← θ_i − η G_i^{-1} ∇_{θ_i} f_i`` with
``G_i = blockdiag_s(diag π_i(·|s) − π_i π_iᵀ) + ε I`` (the negative-entropy mirror metric on the simplex
in logit coordinates).

Fisher-normalized constants (as in the SGN code): with ``Ĵ = G^{-1/2} J G^{-1/2}`` (``G`` block-diagonal
over players), ``μ_i = λ_min(sym Ĵ_ii)``, ``L_ij = ‖Ĵ_ij‖₂`` and, for ``M = diag(w_i G_i)``,
``β = ‖W^{1/2} Ĵ W^{-1/2}‖₂ = ‖M^{1/2} G^{-1} J M^{-1/2}‖₂``.  Logits have a gauge freedom (adding a constant
to ``θ_i[s]`` leaves ``π`` unchanged); ``J`` and ``Ĵ`` vanish on it, so everything is computed *exactly*
on its orthogonal complement (no eigenvalue thresholding).

Guarantee: these constants are ``kind="estimate"`` -- sampled on the region, and the Fisher metric varies
with θ (the term ``(∂G^{-1}) F`` of the natural-gradient Jacobian is dropped, as in the reference code;
it vanishes at the equilibrium).  They are a diagnostic and a step-size recommendation, not a proof.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ...models.errors import InvalidArgumentError
from .constants import GameConstants, constants_from_jacobians, estimation_points
from .game import Game
from .region import Region


@dataclass
class TabularMarkovGame:
    """``P[s, a1, a2, s']`` transitions, ``R[i, s, a1, a2]`` rewards, discount, entropy weight, start dist."""

    P: np.ndarray
    R: np.ndarray
    gamma: float = 0.9
    tau: float = 1.0
    init: np.ndarray | None = None
    fisher_reg: float = 1e-3
    normalized_return: bool = True  # (1 − γ) ρ₀ᵀ V, the occupancy-normalized return of the SGN code

    def __post_init__(self) -> None:
        self.P = np.asarray(self.P, dtype=np.float64)
        self.R = np.asarray(self.R, dtype=np.float64)
        S, A1, A2, S2 = self.P.shape
        if S2 != S or self.R.shape != (2, S, A1, A2):
            raise InvalidArgumentError(f"P must be (S, A1, A2, S) and R (2, S, A1, A2); got {self.P.shape}, "
                                       f"{self.R.shape}")
        if not np.allclose(self.P.sum(-1), 1.0) or (self.P < 0).any():
            raise InvalidArgumentError("transition probabilities must be nonnegative and sum to 1 over s'")
        if not 0 <= self.gamma < 1:
            raise InvalidArgumentError(f"discount must be in [0, 1), got {self.gamma}")
        self.init = np.eye(S)[0] if self.init is None else np.asarray(self.init, dtype=np.float64)
        self.S, self.A = S, (A1, A2)

    @property
    def dims(self) -> list[int]:
        return [self.S * self.A[0], self.S * self.A[1]]

    def policies(self, x: torch.Tensor) -> list[torch.Tensor]:
        t1, t2 = torch.split(x, self.dims)
        return [torch.softmax(t1.reshape(self.S, self.A[0]), -1), torch.softmax(t2.reshape(self.S, self.A[1]), -1)]

    def objectives(self, x: torch.Tensor) -> torch.Tensor:
        """``(J_1, J_2)``: exact (normalized) discounted return from ``init`` plus ``τ Σ_s H(π_i(·|s))``."""
        p1, p2 = self.policies(x)
        P, R = torch.tensor(self.P), torch.tensor(self.R)
        joint = p1[:, :, None] * p2[:, None, :]                        # (S, A1, A2)
        Ppi = torch.einsum("sab,sabt->st", joint, P)
        rpi = torch.einsum("sab,isab->is", joint, R)                    # (2, S)
        V = torch.linalg.solve(torch.eye(self.S, dtype=torch.float64) - self.gamma * Ppi, rpi.T)  # (S, 2)
        ret = torch.tensor(self.init) @ V
        if self.normalized_return:
            ret = (1 - self.gamma) * ret
        ent = torch.stack([-(p * torch.log(p)).sum() for p in (p1, p2)])
        return ret + self.tau * ent

    def game(self) -> Game:
        return Game([lambda xs: -self.objectives(torch.cat(xs))[0], lambda xs: -self.objectives(torch.cat(xs))[1]],
                    self.dims, names=["player1", "player2"])

    def fisher(self, x: torch.Tensor) -> list[np.ndarray]:
        """``G_i = blockdiag_s(diag π − ππᵀ) + ε I`` for both players."""
        out = []
        for p in self.policies(torch.as_tensor(x, dtype=torch.float64)):
            p = p.detach().numpy()
            blocks = [np.diag(ps) - np.outer(ps, ps) for ps in p]
            G = np.zeros((p.size, p.size))
            k = p.shape[1]
            for s, b in enumerate(blocks):
                G[s * k:(s + 1) * k, s * k:(s + 1) * k] = b
            out.append(G + self.fisher_reg * np.eye(p.size))
        return out

    def gauge_complement(self) -> list[np.ndarray]:
        """Orthonormal bases (per player) of the complement of the per-state constant directions."""
        out = []
        for A in self.A:
            q = np.linalg.svd(np.eye(A) - 1.0 / A)[0][:, :A - 1]  # A-1 orthonormal columns ⟂ 1
            out.append(np.kron(np.eye(self.S), q))
        return out

    def npg_step(self, x: np.ndarray, eta: float) -> np.ndarray:
        """One NPG step ``θ_i ← θ_i − η G_i^{-1} ∇_{θ_i} f_i``."""
        g = self.game().pseudo_gradient(torch.tensor(x)).numpy()
        G = self.fisher(torch.tensor(x))
        d1 = self.dims[0]
        return x - eta * np.concatenate([np.linalg.solve(G[0], g[:d1]), np.linalg.solve(G[1], g[d1:])])


def fisher_normalized_jacobians(mg: TabularMarkovGame, points: np.ndarray) -> np.ndarray:
    """``Ĝ^{-1/2} Ĵ Ĝ^{-1/2}`` on the gauge complement (``Ĵ = QᵀJQ``, ``Ĝ = QᵀGQ``) at each point.

    ``Q`` spans an invariant subspace of ``G``, so this equals ``Qᵀ G^{-1/2} J G^{-1/2} Q`` and stays
    well defined for ``fisher_reg = 0``.
    """
    game = mg.game()
    jac = game.jacobian(torch.tensor(points)).numpy()
    Qs = mg.gauge_complement()
    Q = _blockdiag(Qs)
    out = []
    for x, J in zip(points, jac):
        Gis = []
        for G, Qi in zip(mg.fisher(torch.tensor(x)), Qs):
            ev, U = np.linalg.eigh(Qi.T @ G @ Qi)
            if ev.min() <= 0:
                raise InvalidArgumentError("Fisher metric is singular on the policy directions (a deterministic policy)")
            Gis.append((U / np.sqrt(ev)) @ U.T)
        Gi = _blockdiag(Gis)
        out.append(Gi @ (Q.T @ J @ Q) @ Gi)
    return np.stack(out)


def _blockdiag(mats: list[np.ndarray]) -> np.ndarray:
    r = sum(m.shape[0] for m in mats)
    c = sum(m.shape[1] for m in mats)
    out = np.zeros((r, c))
    i = j = 0
    for m in mats:
        out[i:i + m.shape[0], j:j + m.shape[1]] = m
        i, j = i + m.shape[0], j + m.shape[1]
    return out


def fisher_constants(mg: TabularMarkovGame, region: Region, *, n_random: int = 0, seed: int = 0) -> GameConstants:
    """Fisher-normalized block constants on ``region`` (always ``kind="estimate"``, see module doc)."""
    pts = estimation_points(region, n_random, seed)
    jh = fisher_normalized_jacobians(mg, pts)
    dims = [mg.S * (a - 1) for a in mg.A]
    return constants_from_jacobians(jh, dims, mode="estimate", kind="estimate", metric="fisher")


def find_equilibrium(game: Game, x0: np.ndarray, iters: int = 50, tol: float = 1e-12) -> np.ndarray:
    """Newton's method on ``F(x) = 0`` (least squares for singular gauge directions)."""
    x = np.asarray(x0, dtype=np.float64).copy()
    for _ in range(iters):
        F = game.pseudo_gradient(torch.tensor(x)).numpy()
        if np.linalg.norm(F) < tol:
            break
        J = game.jacobian(torch.tensor(x)).numpy()
        x = x - np.linalg.lstsq(J, F, rcond=None)[0]
    return x


def coordination_game(gamma: float = 0.9, tau: float = 1.0) -> TabularMarkovGame:
    """The SGN code's 2-state, 2-action cooperative game: reward +1 for matching actions, −1 otherwise;
    ``00`` goes to s0 w.p. 0.9, ``11`` to s1 w.p. 0.9, a mismatch to either state w.p. 0.5; start in s0."""
    S, A = 2, 2
    P = np.zeros((S, A, A, S))
    R = np.zeros((2, S, A, A))
    for s in range(S):
        for a in range(A):
            for b in range(A):
                R[:, s, a, b] = 1.0 if a == b else -1.0
                if a == b == 0:
                    P[s, a, b] = [0.9, 0.1]
                elif a == b == 1:
                    P[s, a, b] = [0.1, 0.9]
                else:
                    P[s, a, b] = [0.5, 0.5]
    return TabularMarkovGame(P, R, gamma=gamma, tau=tau)

