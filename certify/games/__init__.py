"""Small-Gain Nash (SGN) contraction certificates for differentiable games.

``Game``/``QuadraticGame`` (players, losses, pseudo-gradient, Jacobian blocks), regions ``Box``/``Ball``,
block constants (``game_constants``: estimate or certified), the SGN algebra (``sgn``), the certificate
(``certify_game`` → ``SGNCertificate``) and the Fisher/mirror variant for tabular Markov games (``markov``).
"""

from .certificate import SGNCertificate, certify_from_constants, certify_game
from .constants import GameConstants, constants_from_jacobians, game_constants
from .game import Game, QuadraticGame, simulate
from .region import Ball, Box
from .sgn import (beta_in_metric, euler_bounds, euler_factor, gain_spectral_radius, perron_weights, rk4_bounds,
                  rk4_factor, sgn_margin, sgn_matrix, two_player_band)

__all__ = ["Game", "QuadraticGame", "simulate", "Box", "Ball", "GameConstants", "game_constants", "constants_from_jacobians",
           "SGNCertificate", "certify_game", "certify_from_constants", "sgn_matrix", "sgn_margin",
           "gain_spectral_radius", "perron_weights", "two_player_band", "beta_in_metric", "euler_bounds",
           "euler_factor", "rk4_bounds", "rk4_factor"]
