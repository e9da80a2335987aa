"""Small-Gain Nash certificates (certify/games) against closed forms, brute-force weight searches,
exact matrix exponentials and simulated Euler / RK4 trajectories."""

import json
import math

import numpy as np
import pytest
import scipy.linalg
import scipy.optimize
import torch

from nncertify.certify.games import (Ball, Box, Game, QuadraticGame, certify_game, game_constants, gain_spectral_radius,
                           perron_weights, rk4_factor, sgn_margin, two_player_band)
from nncertify.certify.games.markov import coordination_game, find_equilibrium, fisher_constants, fisher_normalized_jacobians
from nncertify.certify.games.certificate import certify_from_constants
from nncertify.models.errors import InvalidArgumentError

TOY = [[1.0, 10.0], [0.05, 1.0]]


def m_norm_op(A, w, dims):
    sw = np.repeat(np.sqrt(np.asarray(w, float)), dims)
    return sw[:, None] * A / sw[None, :]


# ------------------------------------------------------------------ the paper's toy
def test_toy_numbers():
    g = QuadraticGame.from_blocks(TOY)
    cert = certify_game(g, weights=[1, 200])
    assert cert.status == "certified" and cert.kind == "certified"
    assert cert.euclidean_margin == pytest.approx(-4.025, abs=1e-9)
    assert cert.margin == pytest.approx(1 - math.sqrt(0.5), abs=1e-9)          # 0.2929
    assert cert.beta == pytest.approx(1 + math.sqrt(0.5), abs=1e-9)            # 1.7071
    assert cert.band[0] == pytest.approx(34.3146, abs=1e-3)
    assert cert.band[1] == pytest.approx(1165.685, abs=1e-2)
    assert cert.euler["h_max"] == pytest.approx(0.20101, abs=1e-5)
    assert cert.euler["h_opt"] == pytest.approx(0.100505, abs=1e-5)
    # the proved RK4 bound is far below the linear guideline 2.5/beta (reported separately)
    assert cert.rk4["h_max"] == pytest.approx(0.098, abs=1e-3)
    assert cert.rk4["linear_guideline_h"] == pytest.approx(1.46447, abs=1e-4)
    # exact linear-game ranges reach the true limits here (the M-metric makes the operator normal):
    # Euler 2/(1+sqrt .5) = 1.1716, RK4 2.7853/(1+sqrt .5) = 1.6316 (reference numbers)
    assert cert.euler["h_max_linear"] == pytest.approx(1.1716, abs=2e-4)
    assert cert.rk4["h_max_linear"] == pytest.approx(1.6316, abs=2e-4)
    # Perron weights: w2/w1 = L12/L21 = 200, margin = sup_w = lambda_min(K)
    best = certify_game(g)
    w = np.array(best.weights)
    assert w[1] / w[0] == pytest.approx(200.0, rel=1e-6)
    assert best.margin == pytest.approx(1 - math.sqrt(0.5), abs=1e-9)
    json.dumps(best.to_dict(), allow_nan=False)


def test_toy_metric_makes_operator_normal_and_flow_contracts():
    J = np.array(TOY)
    A = m_norm_op(J, [1, 200], [1, 1])
    assert np.allclose(A, A.T)  # [[1, .7071], [.7071, 1]]
    # exact flow: ||e^{-Jt}||_M <= e^{-alpha t}; Euclidean norm grows (not monotone)
    alpha = 1 - math.sqrt(0.5)
    for t in (0.1, 0.5, 1, 3):
        E = scipy.linalg.expm(-J * t)
        assert np.linalg.norm(m_norm_op(E, [1, 200], [1, 1]), 2) <= math.exp(-alpha * t) * (1 + 1e-12)
    assert np.linalg.norm(scipy.linalg.expm(-J * 0.3), 2) > 1.0


# ------------------------------------------------------------------ weights and the M-matrix structure
def test_perron_weights_are_optimal_against_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(12):
        n = int(rng.integers(2, 6))
        mu = rng.uniform(0.5, 2.0, n)
        L = rng.uniform(0, 1, (n, n)) * (rng.uniform(size=(n, n)) < 0.8)
        np.fill_diagonal(L, 0)
        rho = gain_spectral_radius(mu, L)
        if rho > 1e-3:
            L *= 0.9 / rho * rng.uniform(0.3, 1.0)
        w, lam = perron_weights(mu, L)
        a_star = sgn_margin(mu, L, w)
        assert a_star == pytest.approx(lam, abs=1e-6)
        res = scipy.optimize.minimize(lambda lw: -sgn_margin(mu, L, np.exp(lw)), np.zeros(n), method="Nelder-Mead",
                                      options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20000})
        assert -res.fun <= a_star + 1e-6
        for _ in range(50):
            assert sgn_margin(mu, L, np.exp(rng.normal(0, 2, n))) <= a_star + 1e-9


def test_small_gain_iff_some_weights_certify():
    rng = np.random.default_rng(1)
    for target in (0.5, 0.95, 1.05, 2.0):
        for _ in range(5):
            n = 3
            mu = rng.uniform(0.5, 2.0, n)
            L = rng.uniform(0.1, 1, (n, n))
            np.fill_diagonal(L, 0)
            L *= target / gain_spectral_radius(mu, L)
            w, lam = perron_weights(mu, L)
            best = max(sgn_margin(mu, L, np.exp(rng.normal(0, 2, n))) for _ in range(300))
            best = max(best, sgn_margin(mu, L, w))
            if target < 1:
                assert lam > 0 and sgn_margin(mu, L, w) > 0
            else:
                assert lam <= 1e-12 and best <= 1e-9


def test_two_player_band_matches_scan():
    mu1, mu2, L12, L21 = 1.3, 0.8, 3.0, 0.2
    for alpha in (0.0, 0.1, 0.2):
        lo, hi = two_player_band(mu1, mu2, L12, L21, alpha)
        assert lo * hi == pytest.approx((L12 / L21) ** 2, rel=1e-9) if alpha == 0 else True
        for r in np.geomspace(lo / 3, hi * 3, 400):
            inside = sgn_margin([mu1, mu2], [[0, L12], [L21, 0]], [1, r]) > alpha
            if lo * (1 + 1e-6) < r < hi * (1 - 1e-6):
                assert inside
            elif r < lo * (1 - 1e-6) or r > hi * (1 + 1e-6):
                assert not inside
    assert two_player_band(1, 1, 2, 0.6) is None  # L12 L21 >= mu1 mu2


def test_refused_when_gain_spectral_radius_at_least_one():
    g = QuadraticGame.from_blocks([[1.0, 10.0], [0.1, 1.0]])  # L12 L21 = 1 = mu1 mu2
    cert = certify_game(g)
    assert cert.status == "refused" and not cert.certified
    assert "spectral radius" in cert.reason and cert.gain_spectral_radius >= 1.0
    assert cert.weights is None and cert.euler == {}
    g2 = QuadraticGame.from_blocks([[-0.5, 0.1], [0.1, 1.0]])
    assert "curvature" in certify_game(g2).reason
    json.dumps(cert.to_dict(), allow_nan=False)


# ------------------------------------------------------------------ the LQ family
def lq_game(lam, seed=12345):
    R = np.linalg.qr(np.random.default_rng(seed).normal(size=(32, 32)))[0]
    A = np.block([[np.eye(32), lam * 10 * R], [lam * 0.05 * R.T, np.eye(32)]])
    return QuadraticGame(A, [32, 32])


@pytest.mark.parametrize("lam", [0.333, 1.0, 1.333])
def test_lq_closed_forms(lam):
    cert = certify_game(lq_game(lam))
    assert cert.euclidean_margin == pytest.approx(1 - 5.025 * lam, abs=1e-9)
    assert cert.margin == pytest.approx(1 - math.sqrt(0.5) * lam, abs=1e-8)
    assert cert.beta == pytest.approx(1 + math.sqrt(0.5) * lam, abs=1e-8)
    assert cert.status == "certified"


def test_lq_refused_past_sqrt2():
    assert certify_game(lq_game(1.42), linear_exact=False).status == "refused"
    assert certify_game(lq_game(1.41), linear_exact=False).status == "certified"


# ------------------------------------------------------------------ simulations at the certified steps
def random_quadratic_game(rng, dims, coupling):
    d = sum(dims)
    A = np.zeros((d, d))
    offs = np.concatenate([[0], np.cumsum(dims)])
    for i, di in enumerate(dims):
        B = rng.normal(size=(di, di))
        A[offs[i]:offs[i + 1], offs[i]:offs[i + 1]] = B @ B.T / di + np.eye(di)
        for j, dj in enumerate(dims):
            if i != j:
                A[offs[i]:offs[i + 1], offs[j]:offs[j + 1]] = coupling * rng.normal(size=(di, dj)) * \
                    rng.choice([0.1, 3.0])
    return QuadraticGame(A, dims, c=rng.normal(size=d))


def test_simulated_euler_rk4_and_flow_contract_at_certified_rates():
    rng = np.random.default_rng(7)
    n_cert = 0
    for trial in range(16):
        dims = [int(k) for k in rng.integers(1, 4, size=int(rng.integers(2, 4)))]
        g = random_quadratic_game(rng, dims, 0.15)
        cert = certify_game(g)
        if cert.status != "certified":
            assert cert.gain_spectral_radius >= 1 or min(cert.constants["mu"]) <= 0
            continue
        n_cert += 1
        w, a, b = np.array(cert.weights), cert.margin, cert.beta
        sw = np.repeat(np.sqrt(w), dims)
        mnorm = lambda v: np.linalg.norm(sw * v)  # noqa: E731
        A, c = g.A, g.c
        # pointwise: M-monotone with margin a and M-Lipschitz beta (exact check on the matrix)
        Am = sw[:, None] * A / sw[None, :]
        assert np.linalg.eigvalsh(0.5 * (Am + Am.T)).min() >= a - 1e-9
        assert np.linalg.norm(Am, 2) <= b + 1e-9
        F = lambda x: A @ x + c  # noqa: E731
        x, y = rng.normal(size=(2, sum(dims))) * 5
        for h, stepper, factor in [
            (cert.euler["h_opt"], "euler", math.sqrt(1 - 2 * cert.euler["h_opt"] * a + (cert.euler["h_opt"] * b) ** 2)),
            (0.999 * cert.euler["h_max"], "euler", None),
            (cert.rk4["h_max"] * 0.999, "rk4", None),
            (cert.euler["h_max_linear"] * 0.999, "euler", "linear"),
            (cert.rk4["h_max_linear"] * 0.999, "rk4", "linear"),
        ]:
            if factor == "linear":  # independent: brute-force operator norm of the exact difference operator
                Bm = Am
                Z = -h * Bm
                P = np.eye(len(Bm)) + Z if stepper == "euler" else \
                    np.eye(len(Bm)) + Z + Z @ Z / 2 + Z @ Z @ Z / 6 + Z @ Z @ Z @ Z / 24
                factor = np.linalg.norm(P, 2)
                for hh in np.linspace(h / 50, h, 50):
                    Zh = -hh * Bm
                    Ph = np.eye(len(Bm)) + Zh if stepper == "euler" else \
                        np.eye(len(Bm)) + Zh + Zh @ Zh / 2 + Zh @ Zh @ Zh / 6 + Zh @ Zh @ Zh @ Zh / 24
                    assert np.linalg.norm(Ph, 2) < 1
            q = factor if factor is not None else (
                math.sqrt(1 - 2 * h * a + (h * b) ** 2) if stepper == "euler" else rk4_factor(h, a, b))
            assert q < 1
            xa, ya = x.copy(), y.copy()
            for _ in range(30):
                d0 = mnorm(xa - ya)
                if stepper == "euler":
                    xa, ya = xa - h * F(xa), ya - h * F(ya)
                else:
                    def rk(z):
                        k1 = F(z)
                        k2 = F(z - h / 2 * k1)
                        k3 = F(z - h / 2 * k2)
                        k4 = F(z - h * k3)
                        return z - h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
                    xa, ya = rk(xa), rk(ya)
                assert mnorm(xa - ya) <= q * d0 * (1 + 1e-9) + 1e-12
        # flow: exact solution e^{-At}
        for t in (0.2, 1.0, 4.0):
            E = scipy.linalg.expm(-A * t)
            assert mnorm(E @ (x - y)) <= math.exp(-a * t) * mnorm(x - y) * (1 + 1e-9)
    assert n_cert >= 6


def test_three_player_game_euclidean_fails_sgn_certifies():
    A = np.array([[1.0, 6.0, 0.0], [0.0, 1.0, 6.0], [0.02, 0.0, 1.0]])
    cert = certify_game(QuadraticGame(A, [1, 1, 1]))
    assert cert.euclidean_margin < 0 and cert.status == "certified"
    assert cert.margin == pytest.approx(np.linalg.eigvals(np.eye(3) - (A - np.eye(3))).real.min(), abs=1e-9)
    assert cert.band is None


# ------------------------------------------------------------------ non-quadratic games
def tanh_game(a=2.0, b=0.1):
    # f1 = x1^2/2 + a x1 tanh(x2), f2 = x2^2/2 + b x2 sin(x1) ; J = [[1, a sech^2 x2], [b cos x1, 1]]
    # |d/dx sech^2| <= 4/(3 sqrt 3) and |d/dx cos| <= 1, so ||J(x) - J(y)||_2 <= ||J(x)-J(y)||_F
    # <= sqrt((a 4/(3 sqrt 3))^2 + b^2) ||x - y||
    K = math.hypot(a * 4 / (3 * math.sqrt(3)), b)
    return Game([lambda xs: 0.5 * xs[0].pow(2).sum() + a * (xs[0] * torch.tanh(xs[1])).sum(),
                 lambda xs: 0.5 * xs[1].pow(2).sum() + b * (xs[1] * torch.sin(xs[0])).sum()], [1, 1],
                jacobian_lipschitz=K)


def test_general_game_certified_constants_bound_dense_samples():
    g = tanh_game()
    region = Box([0.3, -0.2], 0.5)
    c = game_constants(g, region, "certified", points_per_dim=40)
    assert c.kind == "certified" and c.covering_radius > 0
    pts = region.sample(3000, np.random.default_rng(0))
    J = g.jacobian(torch.tensor(pts)).numpy()
    sech2 = 1 / np.cosh(pts[:, 1]) ** 2
    assert np.allclose(J[:, 0, 1], 2.0 * sech2) and np.allclose(J[:, 1, 0], 0.1 * np.cos(pts[:, 0]))
    assert c.L[0, 1] >= np.abs(J[:, 0, 1]).max() and c.L[1, 0] >= np.abs(J[:, 1, 0]).max()
    assert c.mu.max() <= 1.0
    cert = certify_game(g, region, "certified", points_per_dim=40)
    assert cert.status == "certified"
    w = np.array(cert.weights)
    sw = np.sqrt(w)
    Am = sw[None, :, None] * J / sw[None, None, :]
    assert np.linalg.eigvalsh(0.5 * (Am + Am.transpose(0, 2, 1)))[:, 0].min() >= cert.margin
    assert np.linalg.norm(Am, 2, axis=(1, 2)).max() <= cert.beta
    est = certify_game(g, region, "estimate")
    assert est.kind == "estimate" and est.status == "estimate" and est.margin >= cert.margin
    with pytest.raises(InvalidArgumentError):
        certify_game(Game(g.losses, [1, 1]), region, "certified")  # no Jacobian bound declared
    with pytest.raises(InvalidArgumentError):
        certify_game(g, Ball([0, 0, 0], 1.0))  # wrong dimension


# ------------------------------------------------------------------ Markov game, Fisher geometry
def test_markov_fisher_constants_and_npg_converges_at_recommended_step():
    mg = coordination_game()
    g = mg.game()
    xs = find_equilibrium(g, np.zeros(8))
    assert np.linalg.norm(g.pseudo_gradient(torch.tensor(xs)).numpy()) < 1e-10
    c = fisher_constants(mg, Box(xs, 0.1))
    assert c.kind == "estimate" and c.metric == "fisher" and c.dims == [2, 2]
    # independent check at the centre: thresholded eigenvalues of the full G^-1/2 H G^-1/2 (reference method)
    J = g.jacobian(torch.tensor(xs)).numpy()
    G1 = mg.fisher(torch.tensor(xs))[0]
    ev, U = np.linalg.eigh(G1)
    Gm = (U / np.sqrt(ev)) @ U.T
    e = np.linalg.eigvalsh(Gm @ J[:4, :4] @ Gm)
    mu_ref = e[np.abs(e) > 1e-5].min()
    Jh = fisher_normalized_jacobians(mg, xs[None, :])[0]
    assert np.linalg.eigvalsh(0.5 * (Jh[:2, :2] + Jh[:2, :2].T)).min() == pytest.approx(mu_ref, rel=1e-8)
    cert = certify_from_constants(c, mode="estimate")
    assert cert.status == "estimate" and cert.margin > 0.3
    assert cert.weights[0] == pytest.approx(0.5, abs=1e-6)  # symmetric game
    # NPG at the recommended step converges to the equilibrium
    x = xs + np.random.default_rng(0).normal(0, 0.05, 8)
    d0 = np.linalg.norm(x - xs)
    for _ in range(60):
        x = mg.npg_step(x, cert.euler["h_opt"])
    assert np.linalg.norm(g.pseudo_gradient(torch.tensor(x)).numpy()) < 1e-3 * d0


def test_projected_euler_contracts_in_certified_metric():
    from nncertify.certify.games import simulate
    g = QuadraticGame.from_blocks(TOY, c=[3.0, -2.0])  # equilibrium outside the box: projection is active
    cert = certify_game(g)
    w = np.array(cert.weights)
    box = Box([0.0, 0.0], 0.5)
    h = cert.euler["h_opt"]
    q = cert.euler["rate_opt"]
    rng = np.random.default_rng(3)
    for _ in range(5):
        x0, y0 = rng.uniform(-0.5, 0.5, (2, 2))
        tx, ty = simulate(g, x0, h, 40, box=box), simulate(g, y0, h, 40, box=box)
        d = np.sqrt(((tx - ty) ** 2 * w).sum(1))
        assert (d[1:] <= q * d[:-1] * (1 + 1e-9) + 1e-15).all()
        assert np.abs(tx).max() <= 0.5 + 1e-12
    # plain Euclidean distance is not monotone for this game (why the metric matters)
    tx, ty = simulate(g, [0.15, -0.15], h, 5), simulate(g, [0.0, 0.0], h, 5)
    assert (np.linalg.norm(tx - ty, axis=1)[1:] > np.linalg.norm(tx - ty, axis=1)[:-1]).any()
