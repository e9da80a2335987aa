"""Example game factories for `certify game examples/games.py:NAME`.

A factory returns a game, or ``(game, region)`` for games whose constants hold only on a region.
"""

import numpy as np

from nncertify.certify.games import QuadraticGame


def toy():
    """The two-player game with Jacobian [[1, 10], [0.05, 1]]: not monotone, yet SGN-certifiable."""
    return QuadraticGame([[1.0, 10.0], [0.05, 1.0]], dims=[1, 1])


def lq(lam: float = 1.0, d: int = 32, seed: int = 0):
    """The 64-dimensional linear-quadratic family H(lam) = [[I, 10 lam R], [0.05 lam R^T, I]]."""
    rng = np.random.default_rng(seed)
    R, _ = np.linalg.qr(rng.standard_normal((d, d)))
    A = np.block([[np.eye(d), 10 * lam * R], [0.05 * lam * R.T, np.eye(d)]])
    return QuadraticGame(A, dims=[d, d])


def unstable():
    """Coupling too strong: refused (spectral radius of the gain matrix >= 1)."""
    return QuadraticGame([[1.0, 3.0], [3.0, 1.0]], dims=[1, 1])
