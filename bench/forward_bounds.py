"""Speed and tightness of relax/ (IBP, CROWN, alpha-CROWN) on the zoo models and the MNIST networks.

Writes bench/results/forward_bounds.json and bench/results/forward_bounds.md.

For every model and eps (l_inf ball clipped to [0, 1]) on the first 100 test inputs:
time per sample of the margin bounds (C = e_y - e_j, lower side only, as verification uses them),
the verified accuracy (correct and every margin lower bound > 0), and an upper bound on the robust
accuracy from a 20-step PGD attack (samples not falsified).  Separately, the target case of the issue:
CROWN on a 784-100-100-10 MLP at batch 100 with the full output bounds (C = identity, both sides).

Usage: .venv/bin/python bench/forward_bounds.py [--threads N] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nncertify import models  # noqa: E402
from nncertify.relax import Ball, compute_bounds  # noqa: E402
from nncertify.relax.verify import margin_spec, pgd_attack  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "mnist"
OUT = ROOT / "bench" / "results"


def _timed(fn, reps):
    ts = []
    out = None
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t)
    return out, statistics.median(ts)


def _mlp(widths):
    mods = [nn.Flatten()]
    for a, b in zip(widths[:-1], widths[1:]):
        mods += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*mods[:-1])


def _state_dict(path):
    d = torch.load(path, weights_only=True, map_location="cpu")
    sd = d["state_dict"] if isinstance(d, dict) and "state_dict" in d else d
    return sd[0] if isinstance(sd, list) else sd  # the ERAN files wrap the state_dict in a list


def mnist_models():
    out = {}
    if not DATA.exists():
        return out, "shared/data/mnist not found: MNIST rows skipped"
    X = torch.as_tensor(np.load(DATA / "X_eran.npy"))[:100].float()
    y = torch.as_tensor(np.load(DATA / "y_eran.npy"))[:100].long()
    sd = _state_dict(DATA / "mnist_2_20.pth")
    m = _mlp([784, 20, 10])
    m.load_state_dict(sd)
    out["mnist_2_20 (784-20-10)"] = (m, (1, 28, 28), X, y, [0.01, 0.02, 0.05])
    for name, hidden in (("mnist_6_100_nat", 5), ("mnist_9_100_nat", 8)):
        sd = _state_dict(DATA / f"{name}.pth")
        m = _mlp([784] + [100] * hidden + [10])
        m.load_state_dict(sd)
        out[f"{name} (784-{hidden}x100-10)"] = (m, (1, 28, 28), X, y, [0.005, 0.01, 0.026])
    sd = _state_dict(DATA / "mnist_conv_small_nat.pth")
    m = nn.Sequential(nn.Conv2d(1, 16, 4, stride=2), nn.ReLU(), nn.Conv2d(16, 32, 4, stride=2), nn.ReLU(),
                      nn.Flatten(), nn.Linear(800, 100), nn.ReLU(), nn.Linear(100, 10))
    m.load_state_dict(sd)
    out["mnist_conv_small_nat"] = (m, (1, 28, 28), X, y, [0.005, 0.01, 0.02])
    return out, ""


def zoo_models():
    from nncertify.models import zoo
    names = zoo.available()
    if not names:
        return {}, "models/zoo/*.json not present: zoo rows skipped"
    X, y = zoo.digits("test")
    out = {}
    for n in names:
        try:
            net = zoo.load_zoo(n).network
        except Exception as exc:  # a broken zoo entry must not stop the bench
            out[n] = exc
            continue
        out[f"zoo:{n}"] = (net, None, X[:100], y[:100], [0.01, 0.02, 0.05])
    return out, ""


def bench_model(name, module, shape, X, y, eps_list, quick):
    net = module if isinstance(module, models.Network) else models.from_module(module, shape, name=name)
    with torch.no_grad():
        pred = net(X).argmax(1)
    correct = pred == y
    K = int(np.prod(net.output_shape))
    C, _ = margin_spec(y, K)
    rows = []
    for eps in eps_list:
        s = Ball(X, eps, p="inf", clip=(0.0, 1.0))
        row = {"model": name, "eps": eps, "clean_acc": float(correct.float().mean())}
        for method, reps in (("ibp", 3), ("crown", 1 if quick else 3), ("alpha-crown", 1)):
            r, t = _timed(lambda: compute_bounds(net, s, method=method, C=C, bound_upper=False, alpha_iters=20),
                          reps)
            ver = torch.isfinite(r.lower).all(1) & (r.lower > 0).all(1) & correct
            row[f"{method}_ms_per_sample"] = 1000 * t / X.shape[0]
            row[f"{method}_verified_acc"] = float(ver.float().mean())
        eps_t = torch.full((X.shape[0],), float(eps))
        lo, hi = torch.zeros_like(X), torch.ones_like(X)
        _, m = pgd_attack(net, X, y, eps_t, float("inf"), (lo, hi), steps=20, restarts=1)
        row["pgd_robust_acc_upper"] = float(((m > 0) & correct).float().mean())
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def target_case(quick):
    torch.manual_seed(0)
    m = _mlp([784, 100, 100, 10])
    net = models.from_module(m, (1, 28, 28), name="mlp_784_100_100_10_random")
    X = torch.rand(100, 1, 28, 28)
    s = Ball(X, 0.01, clip=(0.0, 1.0))
    compute_bounds(net, s, method="crown")
    _, t = _timed(lambda: compute_bounds(net, s, method="crown"), 3 if quick else 7)
    return {"model": "784-100-100-10 MLP (random init, timing only)", "batch": 100, "spec": "identity, both sides",
            "crown_ms_per_sample": 1000 * t / 100, "target_ms_per_sample": 10.0}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    hw = {"processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
          "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
          "loadavg_at_start": os.getloadavg()}
    notes = []
    target = target_case(args.quick)
    print(json.dumps(target), flush=True)
    rows = []
    zoo, note = zoo_models()
    if note:
        notes.append(note)
    mn, note = mnist_models()
    if note:
        notes.append(note)
    for name, spec in list(zoo.items()) + list(mn.items()):
        if isinstance(spec, Exception):
            notes.append(f"{name}: could not be loaded ({spec})")
            continue
        module, shape, X, y, eps_list = spec
        rows += bench_model(name, module, shape, X, y, eps_list, args.quick)
    hw["loadavg_at_end"] = os.getloadavg()
    OUT.mkdir(parents=True, exist_ok=True)
    result = {"hardware": hw, "target": target, "rows": rows, "notes": notes,
              "settings": {"batch": 100, "set": "l_inf ball clipped to [0,1]", "spec": "margins e_y - e_j, lower side",
                           "alpha_iters": 20, "alpha_lr": 0.5, "pgd": "20 steps, 1 restart, step 2.5 eps/20"}}
    (OUT / "forward_bounds.json").write_text(json.dumps(result, indent=1))
    md = ["# forward_bounds: relax/ IBP, CROWN, alpha-CROWN", "",
          f"Hardware: {hw['processor']}, {hw['cpu_count']} cores (torch threads {hw['torch_threads']}), "
          f"torch {hw['torch']}, load average at start {tuple(round(v, 1) for v in hw['loadavg_at_start'])} "
          "(the machine is shared: timings are upper bounds).", "",
          f"**Target** (issue 3): CROWN on {target['model']}, batch 100, {target['spec']}: "
          f"**{target['crown_ms_per_sample']:.2f} ms/sample** (target: well under 10 ms/sample).", "",
          "Margin bounds on the first 100 test inputs, l_inf ball clipped to [0, 1]; verified accuracy = correct "
          "and all margin lower bounds > 0; PGD column = robust-accuracy upper bound (20-step PGD).", "",
          "| model | eps | clean | IBP ms/s | IBP ver | CROWN ms/s | CROWN ver | a-CROWN ms/s | a-CROWN ver | PGD ub |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['model']} | {r['eps']} | {r['clean_acc']:.2f} | {r['ibp_ms_per_sample']:.2f} | "
                  f"{r['ibp_verified_acc']:.2f} | {r['crown_ms_per_sample']:.2f} | {r['crown_verified_acc']:.2f} | "
                  f"{r['alpha-crown_ms_per_sample']:.2f} | {r['alpha-crown_verified_acc']:.2f} | "
                  f"{r['pgd_robust_acc_upper']:.2f} |")
    md += ["", "Notes:"] + [f"- {n}" for n in notes] + [
        "- Reference points (shared/reference/ecosystem.md): auto_LiRPA 0.7.1 CROWN verifies 91/100 digits "
        "points at eps=0.01 on a 64-64-10 MLP in 0.48 s (different network than our zoo model).",
        "- alpha-CROWN here optimizes only the final margins' slopes (intermediate bounds are CROWN's)."]
    (OUT / "forward_bounds.md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
