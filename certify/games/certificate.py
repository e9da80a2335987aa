"""The SGN certificate: metric weights, margin, contraction rate, step sizes, band -- or a refusal.

:func:`certify_game` runs the pipeline: block constants on the region (:mod:`.constants`), the
small-gain test ``ρ(diag(μ)^{-1} L) < 1``, Perron weights (or given weights), margin ``α*(w)``,
``β(w)``, Euler and (proved) RK4 step bounds, the two-player band, and returns an
:class:`SGNCertificate`.

Statement certified (``kind="certified"``): on the convex region Ω, for the metric
``‖x‖²_M = Σ w_i‖x_i‖²``, ``⟨F(x) − F(y), x − y⟩_M ≥ α‖x − y‖²_M`` and ``‖F(x) − F(y)‖_M ≤ β‖x − y‖_M``.
Hence flows contract at rate ``α`` and Euler/RK4 with ``h`` below the bounds contract with the given
factors, for trajectories (and RK4 stage points) that stay in Ω; a quadratic game's constants hold on
all of R^d.  ``kind="estimate"`` means the constants were sampled (no bound).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ...models.errors import InvalidArgumentError
from .constants import GameConstants, game_constants
from .game import Game
from .region import Box, Region
from .sgn import (euler_bounds, gain_spectral_radius, linear_step_bound, perron_weights, rk4_bounds, sgn_margin,
                  two_player_band)

RK4_LINEAR_C4 = 2.5  # linear-stability guideline h ≤ 2.5/β (reported, never used as the certified bound)


def _fin(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


@dataclass
class SGNCertificate:
    """Outcome of :func:`certify_game` (``status``: ``"certified"`` | ``"estimate"`` | ``"refused"``)."""

    status: str
    kind: str
    mode: str
    reason: str
    n_players: int
    dims: list[int]
    region: dict
    constants: dict
    gain_spectral_radius: float
    weights: list[float] | None = None
    margin: float | None = None               # α*(w): strong monotonicity in ‖·‖_M
    best_margin: float | None = None          # λ_min(diag(μ) − L) = sup_w α*(w)
    rate: float | None = None                 # flow contraction rate (= margin)
    beta: float | None = None
    euclidean_margin: float | None = None
    euler: dict = field(default_factory=dict)  # h_max = 2α/β², h_opt = α/β², rate_opt
    rk4: dict = field(default_factory=dict)    # proved bound; plus the linear guideline 2.5/β (labelled)
    band: list[float | None] | None = None     # two players: certified interval of w2/w1
    seconds: float = 0.0

    @property
    def certified(self) -> bool:
        return self.status == "certified"

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["gain_spectral_radius"] = _fin(self.gain_spectral_radius)
        d["band"] = None if self.band is None else [_fin(float(b)) for b in self.band]
        d["euler"] = {k: _fin(v) for k, v in self.euler.items()}
        d["rk4"] = {k: _fin(v) for k, v in self.rk4.items()}
        return d


def certify_from_constants(c: GameConstants, *, weights: Sequence[float] | None = None, region: dict | None = None,
                           mode: str | None = None) -> SGNCertificate:
    """SGN certificate from block constants (weights: Perron-optimal unless given)."""
    t0 = time.perf_counter()
    N = len(c.dims)
    rho = gain_spectral_radius(c.mu, c.L)
    base = dict(kind=c.kind, mode=mode or c.mode, n_players=N, dims=list(c.dims), region=region or {},
                constants=c.to_dict(), gain_spectral_radius=rho, euclidean_margin=c.euclidean_margin)
    if not math.isfinite(rho) or rho >= 1.0:
        why = (f"player(s) {[i for i in range(N) if c.mu[i] <= 0]} have curvature mu <= 0"
               if not math.isfinite(rho) else
               f"small-gain condition fails: spectral radius of the gain matrix diag(mu)^-1 L is {rho:.6g} >= 1")
        return SGNCertificate(status="refused", reason=why, seconds=time.perf_counter() - t0, **base)
    if weights is None:
        w, lam = perron_weights(c.mu, c.L)
    else:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (N,) or (w <= 0).any() or not np.isfinite(w).all():
            raise InvalidArgumentError(f"weights must be {N} positive finite numbers")
        lam = float(np.min(np.linalg.eigvals(np.diag(c.mu) - c.L).real))
    alpha = sgn_margin(c.mu, c.L, w)
    if c.kind == "certified":
        alpha -= 1e-12 * (1.0 + float(np.abs(c.mu).max()) + float(c.L.max()))  # eigvalsh rounding margin
    if not alpha > 0:
        return SGNCertificate(status="refused", reason=f"margin alpha*(w) = {alpha:.6g} <= 0 for these weights",
                              weights=(w / w.sum()).tolist(), margin=alpha, best_margin=lam,
                              seconds=time.perf_counter() - t0, **base)
    beta = c.beta(w)
    eu = euler_bounds(alpha, beta)
    rk = rk4_bounds(alpha, beta)
    rk["linear_guideline_h"] = RK4_LINEAR_C4 / beta
    rk["linear_guideline_note"] = "linear-stability guideline only (not a nonlinear contraction proof)"
    band = None
    if N == 2:
        b = two_player_band(c.mu[0], c.mu[1], c.L[0, 1], c.L[1, 0], 0.0)
        band = [float(v) for v in b] if b is not None else None
    status = "certified" if c.kind == "certified" else "estimate"
    reason = ("SGN margin > 0: gradient play contracts in the weighted block metric" if status == "certified" else
              "sampled constants: the margin and steps are estimates, not bounds")
    return SGNCertificate(status=status, reason=reason, weights=(w / w.sum()).tolist(), margin=alpha,
                          best_margin=lam, rate=alpha, beta=beta, euler=eu, rk4=rk, band=band,
                          seconds=time.perf_counter() - t0, **base)


def _add_linear_bounds(cert: SGNCertificate, game: Game) -> None:
    w, dims, b = np.asarray(cert.weights), game.dims, cert.beta
    cert.euler["h_max_linear"] = linear_step_bound(game.A, w, dims, "euler", 0.999 * cert.euler["h_max"],
                                                   2.0 / b * 1.01)
    cert.rk4["h_max_linear"] = linear_step_bound(game.A, w, dims, "rk4", cert.rk4["h_max"], 3.0 / b)
    cert.rk4["h_max_linear_note"] = ("linear game: ||P(-hB)||_M < 1 checked for all h up to h_max_linear "
                                     "(operator norms + derivative bound), B = M^1/2 A M^-1/2")


def certify_game(game: Game, region: Region | None = None, mode: str = "certified", *,
                 weights: Sequence[float] | None = None, linear_exact: bool = True,
                 **constant_kwargs: Any) -> SGNCertificate:
    """Certify gradient play of ``game`` on ``region`` (``mode`` ``"certified"`` or ``"estimate"``).

    ``region`` may be omitted for a :class:`~certify.games.game.QuadraticGame` (its constants are global).
    Returns a refused certificate (with the reason) when the small-gain condition fails.  For a quadratic
    game (``linear_exact``) the Euler and RK4 step ranges are extended by the exact operator-norm check of
    :func:`~certify.games.sgn.linear_step_bound` (keys ``h_max_linear``), valid for that linear game only.
    """
    t0 = time.perf_counter()
    if region is None:
        if not game.is_quadratic():
            raise InvalidArgumentError("a region (Box or Ball) is needed for a non-quadratic game")
        c = game_constants(game, Box(np.zeros(game.dim), 1.0), mode)
        rdict = {"type": "global"}
    else:
        c = game_constants(game, region, mode, **constant_kwargs)
        rdict = region.to_dict()
    cert = certify_from_constants(c, weights=weights, region=rdict, mode=mode)
    if linear_exact and game.is_quadratic() and cert.status == "certified":
        _add_linear_bounds(cert, game)
    cert.seconds = time.perf_counter() - t0
    return cert
