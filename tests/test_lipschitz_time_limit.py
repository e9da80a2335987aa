"""Issue #19 item 8: one ``time_limit`` bounds the whole local Lipschitz run (attack, bound, BaB), and
``--clip lo,hi`` makes the region the eps-ball intersected with the box [lo, hi].

Before: ``certify lipschitz MODEL --bab-timeout T`` ran the attack without a budget (measured on the
shared 2-core machine: digits_householder_mlp with ``--bab-timeout 2`` took 12.6 s, 10.7 s of it
attack; digits_relu_cnn 19.4 s, 13.1 s of it attack).  Now ``--time-limit T`` caps the run at
``T`` plus the cost of the one non-interruptible bound pass beyond its share (the certificate itself).
"""

import json
import math
import time

import numpy as np
import pytest
import torch
from torch import nn

from nncertify.models import from_module
from nncertify.models.errors import InvalidArgumentError
from nncertify.relax import Ball, Box
from nncertify.relax.lipschitz import local_lipschitz
from nncertify.relax.lipschitz.lower_bounds.attack import attack_lower_bound, true_gradients
from nncertify.relax.lipschitz.bounds.chain import dense_chain
from nncertify.relax.lipschitz.norms import dual_norm_of

from test_cli import assert_bad_input, certify_inproc

SLACK_S = 2.0  # the bound pass and one attack chunk / BaB batch past the deadline, on a loaded 2-core machine


def _deep_net():
    """random 16-32x5-10 (bench/local_lipschitz.py's seed-0 net): its complete BaB needs ~26-60 s."""
    torch.manual_seed(0)
    widths = [16] + [32] * 5 + [10]
    layers = []
    for a, b in zip(widths[:-2], widths[1:-1]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(widths[-2], widths[-1]))
    return from_module(nn.Sequential(*layers), (16,))


def _box():
    x0 = torch.full((1, 16), 0.5, dtype=torch.float64)
    return Box(x0 - 0.1, x0 + 0.1)


def _sampled_gradient_norm(net, box, n=256):
    g = torch.Generator().manual_seed(1)
    lo, hi = box.lower.reshape(-1), box.upper.reshape(-1)
    X = lo + (hi - lo) * torch.rand(n, lo.numel(), generator=g, dtype=torch.float64)
    net64 = net.to(dtype=torch.float64)
    seeds = torch.eye(10, dtype=torch.float64)
    G = true_gradients(net64, X[None].expand(10, -1, -1), seeds)
    return float(dual_norm_of(G, "inf").max())


def test_time_limit_bounds_attack_and_bab():
    net, box = _deep_net(), _box()
    t = time.perf_counter()
    res = local_lipschitz(net, box, bab_timeout=60.0, time_limit=3.0)
    wall = time.perf_counter() - t
    assert wall <= 3.0 + SLACK_S, (wall, res.timings)
    assert res.status == "timeout" and not res.exact  # the complete search needs far longer
    # sound: the estimate and independent gradient norms never exceed the certified bound
    assert 0 < res.lower <= res.upper
    assert _sampled_gradient_norm(net, box) <= res.upper
    # the attack kept to its share (plus at most one chunk / step)
    assert res.timings["attack"] <= 0.25 * 3.0 + SLACK_S


def test_time_limit_without_bab_and_input_bab():
    net, box = _deep_net(), _box()
    for kw in ({}, {"bab_timeout": 60.0, "bab": "input"}):
        t = time.perf_counter()
        res = local_lipschitz(net, box, time_limit=1.5, **kw)
        assert time.perf_counter() - t <= 1.5 + SLACK_S, kw
        assert 0 < res.lower <= res.upper and _sampled_gradient_norm(net, box) <= res.upper


def test_time_limit_arguments_are_checked():
    net, box = _deep_net(), _box()
    for bad in (0, -1, math.inf, math.nan, "3", True):
        with pytest.raises(InvalidArgumentError, match="time_limit"):
            local_lipschitz(net, box, time_limit=bad)
    with pytest.raises(InvalidArgumentError, match="lipsdp"):
        local_lipschitz(net, box, norm="2", method="lipsdp", time_limit=5.0)


def test_attack_deadline_stops_early_and_stays_a_lower_bound():
    """A deadline already passed: the attack evaluates one small chunk and no ascent step; what it returns
    is still a true gradient norm at a point of the box."""
    net = _deep_net().to(dtype=torch.float64)
    chain = dense_chain(net)
    box = _box()
    xl, xu = box.lower.reshape(-1), box.upper.reshape(-1)
    seeds = torch.eye(10, dtype=torch.float64)
    t = time.perf_counter()
    best, pts = attack_lower_bound(net, chain, xl, xu, seeds, "inf", deadline=time.perf_counter())
    fast = time.perf_counter() - t
    t = time.perf_counter()
    best_full, _ = attack_lower_bound(net, chain, xl, xu, seeds, "inf", n_samples=128, steps=10)
    full = time.perf_counter() - t
    assert fast < full
    assert ((pts >= xl) & (pts <= xu)).all()
    g = true_gradients(net, pts[:, None, :], seeds)
    assert torch.allclose(dual_norm_of(g, "inf")[:, 0], best, rtol=1e-12)


# ------------------------------------------------------------------------------------------ the CLI
def test_cli_time_limit_bounds_the_whole_run(capsys):
    """digits_householder_mlp: `--bab-timeout 2` alone ran 12.6 s (attack 10.7 s) on the loaded machine."""
    from nncertify.models.zoo import digits
    certify_inproc(capsys, "inspect", "digits_householder_mlp")  # imports (cold: seconds) outside the timing
    digits("test")
    t = time.perf_counter()
    r = certify_inproc(capsys, "lipschitz", "digits_householder_mlp", "--eps", "0.02", "--time-limit", "3")
    wall = time.perf_counter() - t
    assert r.returncode == 0, r.stderr
    assert "(certified" in r.stdout, r.stdout
    assert wall <= 3.0 + SLACK_S, wall


@pytest.mark.parametrize("args,words", [
    (["--clip", "1,0"], ["--clip", "lo < hi"]),
    (["--clip", "0"], ["--clip", "lo,hi"]),
    (["--clip", "a,b"], ["--clip"]),
    (["--clip", "nan,1"], ["--clip"]),
    (["--time-limit", "0"], ["--time-limit", "positive"]),
    (["--time-limit", "-2"], ["--time-limit"]),
    (["--time-limit", "inf"], ["--time-limit"]),
    (["--time-limit", "nan"], ["--time-limit"]),
])
def test_cli_bad_clip_and_time_limit(args, words, capsys):
    assert_bad_input(certify_inproc(capsys, "lipschitz", "digits_relu_mlp", "--eps", "0.02", *args), *words)


def test_cli_clip_region_is_ball_intersected_with_box(tmp_path, capsys):
    """f(x) = relu(x) + 3 relu(-x) on R: around x = 0.05 with eps 0.1 the region [-0.05, 0.15] holds the
    kink, the constant is 3; clipped to [0.01, 1] the region is [0.01, 0.15] and the constant is 1."""
    m = nn.Sequential(nn.Linear(1, 2), nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([[1.0], [-1.0]]))
        m[0].bias.zero_()
        m[2].weight.copy_(torch.tensor([[1.0, 3.0]]))
        m[2].bias.zero_()
    torch.save(m.state_dict(), tmp_path / "w.pth")
    arch = {"format": "nncertify-arch/1", "name": "kink", "input_shape": [1],
            "layers": [{"type": "Linear", "in_features": 1, "out_features": 2}, {"type": "ReLU"},
                       {"type": "Linear", "in_features": 2, "out_features": 1}]}
    (tmp_path / "arch.json").write_text(json.dumps(arch))
    np.save(tmp_path / "x.npy", np.array([[0.05]], dtype=np.float32))
    common = ["lipschitz", tmp_path / "w.pth", "--arch", tmp_path / "arch.json", "--data", tmp_path / "x.npy",
              "--eps", "0.1"]
    r = certify_inproc(capsys, *common, "--json", tmp_path / "plain.json")
    assert r.returncode == 0, r.stderr
    plain = json.loads((tmp_path / "plain.json").read_text())["result"]
    assert plain["lower"] >= 3 * (1 - 1e-9) and plain["upper"] >= plain["lower"]
    r = certify_inproc(capsys, *common, "--clip", "0.01,1", "--json", tmp_path / "clip.json")
    assert r.returncode == 0, r.stderr
    cert = json.loads((tmp_path / "clip.json").read_text())
    assert cert["parameters"]["clip"] == [0.01, 1.0]
    assert cert["result"]["upper"] <= 1 + 1e-6  # the exact constant on [0.01, 0.15] is 1
    assert cert["result"]["lower"] >= 1 - 1e-9
    # a clip box that misses the ball: one line, exit 2
    assert_bad_input(certify_inproc(capsys, *common, "--clip", "0.5,1"), "clip")


def test_unsupported_activation_bab_is_refused_before_any_work(monkeypatch):
    """``--norm 2 --bab activation`` used to be refused only after the attack (95 s on the loaded machine)."""
    from nncertify.models.errors import UnsupportedOperationError
    import nncertify.relax.lipschitz.api as api

    def no_attack(*a, **k):
        raise AssertionError("the attack ran before the refusal")
    monkeypatch.setattr(api, "attack_lower_bound", no_attack)
    with pytest.raises(UnsupportedOperationError, match="l_inf and l1"):
        local_lipschitz(_deep_net(), _box(), norm="2", bab_timeout=5.0, bab="activation")
    tanh = from_module(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)), (3,))
    box = Box(torch.zeros(1, 3, dtype=torch.float64), torch.ones(1, 3, dtype=torch.float64))
    with pytest.raises(UnsupportedOperationError, match="tanh"):
        local_lipschitz(tanh, box, bab_timeout=5.0, bab="activation")
