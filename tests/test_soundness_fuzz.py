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
