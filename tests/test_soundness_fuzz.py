"""A small seeded slice of bench/soundness_fuzz.py: no certified quantity is ever beaten by its truth."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import soundness_fuzz  # noqa: E402


def test_seeded_fuzz_slice_has_no_violations():
    res = soundness_fuzz.run(pairs=220, seed=7, time_budget=150, log=None)
    assert res["pairs"] >= 150
    bad = {m: d["examples"] for m, d in res["by_method"].items() if d["violations"]}
    assert res["violations"] == 0, bad
    for m in ("ibp", "crown", "alpha-crown", "ghost_radius", "local_lipschitz"):
        assert res["by_method"][m]["pairs"] > 0, m


def test_fuzz_truths_are_exact_on_known_cases():
    # the nearest zero of e^{z1} + e^{z2 + t}: t = z1 - z2 + i*pi (2m+1)  -> distance sqrt(delta^2 + pi^2)
    import math
    import numpy as np
    d = soundness_fuzz._nearest_zero(np.array([0.7, -0.2]), np.array([0.0, 1.0]))
    assert abs(d - math.sqrt(0.9 ** 2 + math.pi ** 2)) < 1e-12


def test_conv_and_hand_built_families_have_no_violations():
    """Issue #19: conv nets (MaxMin / GroupSort / Householder / LeakyReLU / ReLU, BatchNorm, AvgPool) and
    hand-built Networks (v of any norm, zero layers, extreme scales): every global and local method against
    secant and gradient-ascent witnesses, l2 and l_inf."""
    res = soundness_fuzz.run_conv(pairs=60, seed=11, time_budget=120, log=None)
    bad = {m: d["examples"] for m, d in res["by_method"].items() if d["violations"]}
    assert res["violations"] == 0, bad
    assert res["pairs"] >= 40
    for m in ("conv:sdp_lifted_l2", "conv:sdp_auto_l2", "conv:mp_l2", "conv:local_crown_l2", "conv:local_crown_linf"):
        assert res["by_method"][m]["pairs"] > 0, m
    assert any(f.startswith("hand:") for f in res["families"])

