"""Implicit models z = phi(W z + U x), y = C z: bound >= every pattern Jacobian, >= sampled
difference quotients of the solved equilibria; ill-posed models are never certified."""

import itertools

import numpy as np
from patterns import maxmin_patterns, relu_patterns
import pytest

from nncertify.sdp import implicit_lipschitz_bound


def _model(seed, n=4, m=3, q=2, wnorm=0.9):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((n, n))
    W *= wnorm / np.linalg.norm(W, 2)
    return W, rng.standard_normal((n, m)), rng.standard_normal((q, n))


def _phi(v, act):
    if act == "relu":
        return np.maximum(v, 0)
    a, b = v[..., 0::2], v[..., 1::2]
    out = np.empty_like(v)
    out[..., 0::2], out[..., 1::2] = np.maximum(a, b), np.minimum(a, b)
    return out


def _solve(W, U, x, act):
    z = np.zeros((x.shape[0], W.shape[0]))
    for _ in range(2000):  # contraction (||W|| < 1, phi 1-Lipschitz): converges
        z = _phi(z @ W.T + x @ U.T, act)
    return z


def _patterns(n, act):
    return relu_patterns(n) if act == "relu" else maxmin_patterns(n)


@pytest.mark.parametrize("act", ["relu", "maxmin"])
@pytest.mark.parametrize("seed", [0, 1])
def test_implicit_bound_sound(act, seed):
    W, U, C = _model(seed)
    cert = implicit_lipschitz_bound(W, U, C, activation=act, solver="CLARABEL")
    assert cert.status == "certified", cert.message
    n = W.shape[0]
    fgl = max(np.linalg.norm(C @ np.linalg.solve(np.eye(n) - P @ W, P @ U), 2) for P in _patterns(n, act))
    assert cert.certified_value >= fgl * (1 - 1e-9)
    rng = np.random.default_rng(seed + 10)
    x = rng.standard_normal((300, U.shape[1]))
    x2 = x + 1e-3 * rng.standard_normal(x.shape)
    dy = np.linalg.norm((_solve(W, U, x, act) - _solve(W, U, x2, act)) @ C.T, axis=1)
    assert np.all(dy <= cert.certified_value * np.linalg.norm(x - x2, axis=1) * (1 + 1e-9))
    assert cert.certified_value <= cert.naive_product * (1 + 1e-7)


def test_ill_posed_is_not_certified():
    n = 4
    W = 1.5 * np.eye(n)    # z = relu(1.5 z + u) has no / several equilibria
    U, C = np.eye(n), np.eye(n)
    cert = implicit_lipschitz_bound(W, U, C, activation="relu", solver="CLARABEL")
    assert cert.status == "failed" and cert.certified_value is None


def test_bad_shapes():
    from nncertify.models.errors import InvalidArgumentError
    with pytest.raises(InvalidArgumentError):
        implicit_lipschitz_bound(np.eye(3), np.eye(4), np.eye(3))
    with pytest.raises(InvalidArgumentError):
        implicit_lipschitz_bound(np.eye(3), np.eye(3), np.eye(3), activation="maxmin")
