"""Small-Gain Nash benchmark: the 64-d linear-quadratic family, a random ensemble and a Markov game.

1. LQ family (SGN code's config): d = 32 + 32, Q1 = Q2 = I, R a random orthogonal 32x32 matrix (seed
   12345), H(λ) = [[I, 10 λ R], [0.05 λ Rᵀ, I]].  Euclidean monotonicity certifies only λ < 0.199; SGN
   up to λ < √2, where the Jacobian really loses stability.  Steps: SGN Euler 2α/β², the proved RK4 bound,
   the RK4 linear guideline 2.5/β, and the true linear-stability limits.
2. Random ensemble: 30 games, Q_i = R_iᵀR_i + I (R_i Gaussian, ‖R_i‖ = 1), couplings 10 λ N₁₂ and
   0.05 λ N₂₁ (N Gaussian, unit spectral norm), d = 16 + 16; fractions certified (Euclidean vs SGN) and
   the SGN margin against the best exact weighted margin (full Jacobian, weights optimized).
3. Markov game (SGN code's 2-state coordination game, τ = 1, γ = 0.9): Fisher-normalized constants on
   the ℓ∞ cube of radius 0.1 around θ*, margin, β, η_max = 2α/β², and an NPG sweep over multiples of η_max.

Run: ``.venv/bin/python bench/sgn.py``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import scipy.optimize
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
torch.set_num_threads(1)  # the machine is shared: one thread avoids oversubscription stalls
from nncertify.certify.games import Box, QuadraticGame, certify_game, sgn_margin  # noqa: E402
from nncertify.certify.games.certificate import certify_from_constants  # noqa: E402
from nncertify.certify.games.markov import coordination_game, find_equilibrium, fisher_constants  # noqa: E402

RK4_COEF = [1 / 24, 1 / 6, 1 / 2, 1, 1]


def true_euler_h(H):
    ev = np.linalg.eigvals(H)
    if ev.real.min() <= 0:
        return 0.0
    return float(np.min(2 * ev.real / np.abs(ev) ** 2))


def true_rk4_h(H):
    ev = np.linalg.eigvals(H)
    if ev.real.min() <= 0:
        return 0.0
    ok = lambda h: np.abs(np.polyval(RK4_COEF, -h * ev)).max() < 1  # noqa: E731
    hs = np.linspace(1e-4, 5.0 / np.abs(ev).max(), 2000)
    good = [h for h in hs if ok(h)]
    lo = 0.0
    for h in hs:  # first failure
        if not ok(h):
            break
        lo = h
    hi = lo + (hs[1] - hs[0])
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return float(lo) if good else 0.0


def exact_weighted_margin(H, dims):
    """max over w2/w1 of λ_min(sym(M^{1/2} H M^{-1/2})) (the full-Jacobian, Rosen-type margin)."""
    def neg(lr):
        sw = np.repeat(np.sqrt([1.0, math.exp(lr)]), dims)
        A = sw[:, None] * H / sw[None, :]
        return -np.linalg.eigvalsh(0.5 * (A + A.T)).min()
    res = scipy.optimize.minimize_scalar(neg, bounds=(-15, 15), method="bounded", options={"xatol": 1e-9})
    return -float(res.fun), math.exp(res.x)


def lq_family():
    R = np.linalg.qr(np.random.default_rng(12345).normal(size=(32, 32)))[0]
    rows = []
    t_cert = []
    for lam in np.linspace(0, 2.5, 61):
        H = np.block([[np.eye(32), 10 * lam * R], [0.05 * lam * R.T, np.eye(32)]])
        t0 = time.perf_counter()
        c = certify_game(QuadraticGame(H, [32, 32]))
        t_cert.append(time.perf_counter() - t0)
        ev = np.linalg.eigvals(H)
        a_true = exact_weighted_margin(H, [32, 32])[0]
        rows.append({"lambda": float(lam), "euclidean_margin": c.euclidean_margin, "certified": c.certified,
                     "alpha": c.margin if c.certified else None, "alpha_exact_weighted": a_true,
                     "beta": c.beta, "stable": bool(ev.real.min() > 0),
                     "h_euler_sgn": c.euler.get("h_max", 0.0) if c.certified else 0.0,
                     "h_euler_true": true_euler_h(H),
                     "h_rk4_sgn_proved": c.rk4.get("h_max", 0.0) if c.certified else 0.0,
                     "h_rk4_guideline": c.rk4.get("linear_guideline_h", 0.0) if c.certified else 0.0,
                     "h_rk4_true": true_rk4_h(H), "band": c.band,
                     "h_euler_linear_exact": c.euler.get("h_max_linear", 0.0) if c.certified else 0.0,
                     "h_rk4_linear_exact": c.rk4.get("h_max_linear", 0.0) if c.certified else 0.0})

    def flip(pred):
        lo, hi = 0.0, 2.5
        for _ in range(40):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if pred(mid) else (lo, mid)
        return lo

    mk = lambda lam: np.block([[np.eye(32), 10 * lam * R], [0.05 * lam * R.T, np.eye(32)]])  # noqa: E731
    cg = lambda l: certify_game(QuadraticGame(mk(l), [32, 32]), linear_exact=False)  # noqa: E731
    thr = {"euclidean": flip(lambda l: cg(l).euclidean_margin > 0),
           "sgn": flip(lambda l: cg(l).certified),
           "true_stability": flip(lambda l: np.linalg.eigvals(mk(l)).real.min() > 0)}
    return rows, thr, t_cert


def random_ensemble(n_games=30, lams=(0, 0.417, 0.833, 1.25, 1.667, 2.083, 2.5), d=16, seed=0):
    rng = np.random.default_rng(seed)
    games = []
    for _ in range(n_games):
        Q = []
        for _ in range(2):
            Rm = rng.normal(size=(d, d))
            Rm /= np.linalg.norm(Rm, 2)
            Q.append(Rm.T @ Rm + np.eye(d))
        N12, N21 = rng.normal(size=(d, d)), rng.normal(size=(d, d))
        games.append((Q, N12 / np.linalg.norm(N12, 2), N21 / np.linalg.norm(N21, 2)))
    out = []
    times = []
    for lam in lams:
        euc, sgn, ratio, stable = 0, 0, [], 0
        for Q, N12, N21 in games:
            H = np.block([[Q[0], 10 * lam * N12], [0.05 * lam * N21, Q[1]]])
            t0 = time.perf_counter()
            c = certify_game(QuadraticGame(H, [d, d]))
            times.append(time.perf_counter() - t0)
            euc += c.euclidean_margin > 0
            sgn += c.certified
            stable += np.linalg.eigvals(H).real.min() > 0
            if c.certified:
                ratio.append(c.margin / exact_weighted_margin(H, [d, d])[0])
        out.append({"lambda": lam, "frac_euclidean": euc / n_games, "frac_sgn": sgn / n_games,
                    "frac_stable": stable / n_games,
                    "median_alpha_over_exact_weighted": statistics.median(ratio) if ratio else None})
    return out, times


def markov(multipliers=(0.5, 1, 2, 4, 5, 6, 8), seeds=10, steps=300):
    mg = coordination_game()
    g = mg.game()
    xs = find_equilibrium(g, np.zeros(8))
    res = {}
    for eps in (1e-3, 0.0):
        mg.fisher_reg = eps
        t0 = time.perf_counter()
        c = fisher_constants(mg, Box(xs, 0.1))
        cert = certify_from_constants(c, region=Box(xs, 0.1).to_dict(), mode="estimate")
        res[f"fisher_reg={eps:g}"] = {"mu": c.mu.tolist(), "L": c.L.tolist(), "alpha": cert.margin,
                                      "beta": cert.beta, "eta_max": cert.euler["h_max"],
                                      "eta_safe": cert.euler["h_opt"], "band": cert.band, "weights": cert.weights,
                                      "seconds": time.perf_counter() - t0, "kind": cert.kind}
    mg.fisher_reg = 1e-3
    eta_max = res["fisher_reg=0.001"]["eta_max"]
    sweep = []
    for m in multipliers:
        conv = 0
        for s in range(seeds):
            x = xs + np.random.default_rng(s).normal(0, 0.1, 8)
            for _ in range(steps):
                x = mg.npg_step(x, m * eta_max)
                if not np.isfinite(x).all() or np.abs(x).max() > 1e3:
                    break
            F = g.pseudo_gradient(torch.tensor(x)).numpy() if np.isfinite(x).all() else np.array([np.inf])
            conv += bool(np.linalg.norm(F) < 1e-6)
        sweep.append({"multiplier": m, "eta": m * eta_max, "frac_converged": conv / seeds})
    return res, sweep, xs


def main():
    t0 = time.time()
    rows, thr, t_lq = lq_family()
    ens, t_ens = random_ensemble()
    mk, sweep, xs = markov()
    hw = {"processor": platform.processor() or platform.machine(), "cores": os.cpu_count(),
          "torch": torch.__version__, "python": platform.python_version()}
    out = {"benchmark": "sgn", "hardware": hw, "lq": {"rows": rows, "thresholds": thr,
           "ms_per_certificate_median": 1e3 * statistics.median(t_lq)},
           "random_ensemble": {"rows": ens, "ms_per_certificate_median": 1e3 * statistics.median(t_ens)},
           "markov": {"constants": mk, "npg_sweep": sweep, "theta_star": xs.tolist()},
           "published_reference": {"lq_thresholds": {"euclidean": 0.199, "sgn": math.sqrt(2)},
                                   "ensemble_frac_euclidean": [1, 1, 0.133, 0, 0, 0, 0],
                                   "ensemble_frac_sgn": [1, 1, 1, 1, 0, 0, 0],
                                   "markov": {"mu": 0.9344, "L": 0.6009, "alpha": 0.3334, "beta": 1.5718,
                                              "eta_max": 0.2699, "npg_converges_up_to": "about 5x eta_max"}},
           "wall_s": time.time() - t0}
    rdir = Path(__file__).resolve().parent / "results"
    rdir.mkdir(exist_ok=True)
    (rdir / "sgn.json").write_text(json.dumps(out, indent=1))
    L = ["# Small-Gain Nash certificates", "",
         f"Hardware: {hw['processor']}, {hw['cores']} cores (shared), torch {hw['torch']}. Wall {out['wall_s']:.0f} s.",
         "", "## 64-d LQ family H(λ) = [[I, 10λR], [0.05λRᵀ, I]]", "",
         f"Certified up to (bisection): Euclidean λ < {thr['euclidean']:.4f} (reference 0.199), "
         f"SGN λ < {thr['sgn']:.4f} (reference √2 = 1.4142), true stability lost at λ = {thr['true_stability']:.4f}. "
         f"Median time per certificate {out['lq']['ms_per_certificate_median']:.1f} ms (exact constants, d = 64).", "",
         "| λ | γ_Euc | α* (SGN) | α exact weighted | β | h_Euler SGN 2α/β² | h_Euler linear-exact | h_Euler true | h_RK4 SGN proved (nonlinear) | h_RK4 linear-exact | h_RK4 guideline 2.5/β | h_RK4 true |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if any(abs(r["lambda"] - v) < 0.021 for v in (0, 1 / 3, 2 / 3, 1, 4 / 3, 1.5, 2.0)):
            f = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
            L.append(f"| {r['lambda']:.3f} | {r['euclidean_margin']:.3f} | {f(r['alpha'])} | {r['alpha_exact_weighted']:.4f} | "
                     f"{f(r['beta'] if r['certified'] else None)} | {r['h_euler_sgn']:.4f} | "
                     f"{r['h_euler_linear_exact']:.4f} | {r['h_euler_true']:.4f} | "
                     f"{r['h_rk4_sgn_proved']:.4f} | {r['h_rk4_linear_exact']:.4f} | {r['h_rk4_guideline']:.4f} | "
                     f"{r['h_rk4_true']:.4f} |")
    r1 = min(rows, key=lambda r: abs(r["lambda"] - 1.0))
    L += ["", f"Band of w2/w1 at λ = {r1['lambda']:.4f}: {r1['band']} (reference at λ = 1: (34.31, 1165.69)).",
          "Step columns: 'SGN' bounds use only (α, β) and hold for any game with these constants (nonlinear "
          "RK4 bound: √(1−2hα+h²β²) + (hβ)²/2 + (hβ)³/6 + (hβ)⁴/24 < 1); 'linear-exact' bounds check the exact "
          "difference operator P(−hB) of this linear game in ‖·‖_M over the whole interval (operator norms + a "
          "derivative bound) -- a proof for this game, and they reach the true limits; the 2.5/β guideline is "
          "reported, never certified. 'true' = spectral stability limit (asymptotic, not contraction).", "",
          "## Random ensemble (30 games, d = 16 + 16)", "",
          f"Median time per certificate {out['random_ensemble']['ms_per_certificate_median']:.1f} ms.", "",
          "| λ | frac certified Euclidean | frac certified SGN | frac stable | median α*/α_exact-weighted |", "|---|---|---|---|---|"]
    for r in ens:
        m = r["median_alpha_over_exact_weighted"]
        L.append(f"| {r['lambda']} | {r['frac_euclidean']:.3f} | {r['frac_sgn']:.3f} | {r['frac_stable']:.3f} | "
                 f"{'-' if m is None else f'{m:.3f}'} |")
    L += ["", "Reference (SGN code, its own ensemble with d = 32 + 32): Euclidean [1, 1, 0.133, 0, 0, 0, 0], "
          "SGN [1, 1, 1, 1, 0, 0, 0]. This ensemble is our own construction from the description (coupling "
          "10λN12 / 0.05λN21 with unit-norm N), so the Euclidean column is not comparable one-to-one; the SGN "
          "pattern (all certified up to λ = 1.25, none from 1.667) matches.", "",
          "## Markov coordination game (Fisher geometry, estimate: sampled on the cube's vertices + centre)", "",
          "| Fisher ε | μ | L12 | α* | β | η_max = 2α/β² | η_safe |", "|---|---|---|---|---|---|---|"]
    for k, v in mk.items():
        L.append(f"| {k} | {min(v['mu']):.4f} | {v['L'][0][1]:.4f} | {v['alpha']:.4f} | {v['beta']:.4f} | "
                 f"{v['eta_max']:.4f} | {v['eta_safe']:.4f} |")
    L += ["", "Reference (SGN code run): μ = 0.9344, L = 0.6009, α* = 0.3334, β = 1.5718, η_max = 0.2699.", "",
          "NPG (Fisher ε = 1e-3) from θ* + N(0, 0.1²), 300 steps, converged = ‖F‖ < 1e-6:", "",
          "| η / η_max | fraction converged |", "|---|---|"]
    for s in sweep:
        L.append(f"| {s['multiplier']} | {s['frac_converged']:.2f} |")
    L += ["", "Reference: NPG converges up to about 5× η_max and fails near 6× (the certificate is conservative)."]
    (rdir / "sgn.md").write_text("\n".join(L) + "\n")
    print("\n".join(L))


if __name__ == "__main__":
    main()
