"""Benchmark: branch-and-bound for local l_inf Lipschitz constants of non-ReLU nets (issue #4).

Networks: small random networks shaped like the zoo's MaxMin models (Pauli et al. 2024: MaxMin after
every hidden layer; bias-free residual blocks x + MaxMin(W x)) but with 2-8 inputs, plus one
GroupSort(2) and one Tanh network; torch.manual_seed(0) before each factory.  Region: the l_inf box
[0.25, 1.75]^d (x0 = 1, eps = 0.75; one extra row uses [-1, 1]^d to show the bias-free limitation);
L = max_j sup ||grad f_j||_1 over the box (Clarke gradients).
Columns: naive (product of l_inf operator norms, global), ours (CROWN on the backward graph, no
BaB), ours + input BaB at 1 s and 10 s (read off one anytime run with a 10 s budget), attack lower
bound (estimate, before BaB) and the BaB's final lower bound (true gradient norms at box centres),
status, boxes bounded, wall times.  For networks of piecewise-linear activations (MaxMin, GroupSort --
groups > 2 as sorting networks --, Householder; residual nets through their lifted chain,
relax/lipschitz/bounds/lifted.py) the complete activation-splitting BaB (relax/lipschitz/search/bab.py, splits on the
switches' signs) runs with the same budget: its final upper and lower bound, status and time.  A second table compares input-branching rules on the 8-input network.

Usage: .venv/bin/python bench/local_lipschitz_input.py [--timeout 10] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nncertify import models  # noqa: E402
from nncertify.models.layers import GroupSort, HouseholderActivation, MaxMin, Residual  # noqa: E402
from nncertify.relax.lipschitz import local_lipschitz  # noqa: E402

OUT = ROOT / "bench" / "results"


def ff(widths, act=MaxMin, bias=True):
    layers = []
    for a, b in zip(widths[:-2], widths[1:-1]):
        layers += [nn.Linear(a, b, bias=bias), act()]
    layers.append(nn.Linear(widths[-2], widths[-1], bias=bias))
    return nn.Sequential(*layers)


def residual(d, width, blocks, out):
    """Pauli-style residual MaxMin: x_0 = W_in u, x_k = x_{k-1} + MaxMin(W_k x_{k-1}), y = W_out x."""
    body = [nn.Linear(d, width, bias=False)]
    for _ in range(blocks):
        body.append(Residual(nn.Sequential(nn.Linear(width, width, bias=False), MaxMin())))
    body.append(nn.Linear(width, out, bias=False))
    return nn.Sequential(*body)


def residual_naive(module):
    """||W_out|| prod_k (1 + ||W_k||) ||W_in|| in the l_inf operator norm (MaxMin is 1-Lipschitz in l_inf)."""
    nrm = lambda W: float(W.detach().abs().sum(1).max())  # noqa: E731
    val = 1.0
    for m in module:
        val *= 1 + nrm(m.body[0].weight) if isinstance(m, Residual) else nrm(m.weight)
    return val


X0, EPS = 1.0, 0.75  # box [0.25, 1.75]^d: away from the origin, where every kink of a bias-free net meets
NETS = [
    ("maxmin 2-16-16-2", lambda: ff([2, 16, 16, 2])),
    ("maxmin 2-32-32-32-2 (no bias)", lambda: ff([2, 32, 32, 32, 2], bias=False)),
    ("groupsort2 4-16-16-16-1", lambda: ff([4, 16, 16, 16, 1], act=lambda: GroupSort(2, descending=False))),
    ("maxmin 4-32-32-4", lambda: ff([4, 32, 32, 4])),
    ("maxmin 8-32-32-2", lambda: ff([8, 32, 32, 2])),
    ("residual maxmin 4-16x3-2 (no bias)", lambda: residual(4, 16, 3, 2)),
    ("tanh 4-16-16-2", lambda: ff([4, 16, 16, 2], act=nn.Tanh)),
    ("householder 4-32-32-4", lambda: ff([4, 32, 32, 4], act=lambda: HouseholderActivation(32, 2, v=torch.randn(16, 2)))),
    ("groupsort4 4-32-32-4", lambda: ff([4, 32, 32, 4], act=lambda: GroupSort(4))),
    ("maxmin 16-32-32-10", lambda: ff([16, 32, 32, 10])),
    # a bias-free net is positively homogeneous, every linear region is a cone at 0, so the box holding 0
    # meets all kinks however small it is: input splitting cannot tighten it; activation splitting runs
    # over the box's shells away from 0 (relax/lipschitz/search/apex.py)
    ("maxmin 2-32-32-32-2 (no bias), box around 0", lambda: ff([2, 32, 32, 32, 2], bias=False), 0.0, 1.0),
]


def value_at(history, t):
    best = history[0][1]
    for s, up, _ in history:
        if s <= t:
            best = up
    return best


def run_net(name, factory, timeout, x0=X0, eps=EPS, seed=0, branching="auto"):
    torch.manual_seed(seed)
    module = factory().double()
    net = models.from_module(module)
    d = net.input_shape[0]
    box = (torch.full((1, d), x0 - eps, dtype=torch.float64), torch.full((1, d), x0 + eps, dtype=torch.float64))
    t = time.perf_counter()
    bab = local_lipschitz(net, box, bab="input", bab_timeout=timeout,
                          bab_options={"rel_tol": 1e-6, "branching": branching})
    t_bab = time.perf_counter() - t
    if net.is_chain():
        t = time.perf_counter()
        naive = local_lipschitz(net, box, method="naive", attack=False).upper
        t_naive = time.perf_counter() - t
        t = time.perf_counter()
        plain = local_lipschitz(net, box)
        t_plain = time.perf_counter() - t
        ours, ours_lb = plain.upper, plain.lower
    else:  # residual: the api's plain bound needs a chain; the BaB's root bound is the same kind of number
        naive, t_naive = residual_naive(module), 0.0
        ours, ours_lb, t_plain = bab.stats["root_upper"], None, None
    act = None
    if not any(n.op in ("tanh", "sigmoid") for n in net.nodes) and branching == "auto":
        t = time.perf_counter()
        a = local_lipschitz(net, box, bab="activation", bab_timeout=timeout)
        act = {"upper": a.upper, "lower": a.lower, "status": a.status, "t_s": time.perf_counter() - t,
               "upper_1s": value_at(a.history, 1.0), "domains": a.stats.get("domains_bounded")}
    row = {"net": name, "inputs": d, "box": [x0 - eps, x0 + eps], "branching": bab.stats["branching"], "naive": naive,
           "activation_bab": act,
           "ours": ours, "ours_attack_lb": ours_lb,
           "bab_1s": value_at(bab.history, 1.0), f"bab_{timeout:g}s": bab.upper, "bab_lower": bab.lower,
           "status": bab.status, "boxes": bab.stats["domains_bounded"], "leaves": bab.stats["leaves"],
           "gap_rel": (bab.upper - bab.lower) / bab.upper if bab.upper > 0 else 0.0,
           "method": bab.method, "t_naive_s": t_naive, "t_ours_s": t_plain, "t_bab_s": bab.timings["bab"],
           "t_bab_total_s": t_bab}
    print(json.dumps({k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    return row


def relu_mlp(widths):
    return ff(widths, act=nn.ReLU)


RELU_NETS = [[2, 16, 16, 2], [2, 64, 64, 2], [3, 48, 48, 2], [4, 16, 16, 2], [8, 16, 16, 2], [8, 32, 32, 2]]


def relu_compare(widths, timeout):
    """Activation-splitting BaB (complete, LP-checked leaves) vs input splitting on a ReLU chain, box
    [-0.5, 0.5]^d: which one ``bab="auto"`` should pick."""
    torch.manual_seed(0)
    net = models.from_module(relu_mlp(widths).double())
    d = widths[0]
    box = (torch.full((1, d), -0.5, dtype=torch.float64), torch.full((1, d), 0.5, dtype=torch.float64))
    row = {"net": "relu " + "-".join(map(str, widths)), "inputs": d}
    for kind in ("activation", "input"):
        t = time.perf_counter()
        r = local_lipschitz(net, box, bab=kind, bab_timeout=timeout,
                            bab_options={"rel_tol": 1e-6} if kind == "input" else None)
        row[kind] = {"upper": r.upper, "lower": r.lower, "status": r.status, "t_s": time.perf_counter() - t}
    print(json.dumps(row), flush=True)
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--quick", action="store_true", help="1 s budget, first three networks")
    args = ap.parse_args()
    torch.set_num_threads(1)  # shared 2-core machine: one thread is faster for these small batches
    timeout = 1.0 if args.quick else args.timeout
    nets = NETS[:3] if args.quick else NETS
    rows = [run_net(*spec[:2], timeout, *spec[2:]) for spec in nets]
    rules = [run_net("maxmin 8-32-32-2", NETS[4][1], timeout, branching=b) for b in ("widest", "all")]
    relu = [relu_compare(w, timeout) for w in (RELU_NETS[:2] if args.quick else RELU_NETS)]
    hw = {"processor": platform.processor() or platform.machine(), "cores": os.cpu_count(),
          "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
          "note": "2 CPU cores shared with 3 other jobs running at the same time: wall times are noisy "
                  "and the BaB columns depend on how many boxes fit in the budget"}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "local_lipschitz_input.json").write_text(json.dumps(
        {"hardware": hw, "timeout_s": timeout, "region": "l_inf box (per row, field 'box')", "rows": rows,
         "branching_rules_8d": rules, "relu_activation_vs_input": relu}, indent=1))
    T = f"{timeout:g}s"
    lines = ["# Branch-and-bound for local l_inf Lipschitz constants of MaxMin / GroupSort / Householder / Tanh / residual nets", "",
             f"Hardware: {hw['processor']}, {hw['cores']} cores, torch {hw['torch']} ({hw['torch_threads']} thread); "
             f"{hw['note']}.", "",
             "Region: l_inf box [0.25, 1.75]^d unless the row says otherwise; L = max_j sup ||grad f_j||_1.  "
             "naive = product of operator norms "
             "(global); ours = CROWN on the backward graph; BaB = `local_lipschitz(..., bab=\"input\", "
             f"bab_timeout={timeout:g})` (1 s column read off the same anytime run).  attack LB and BaB LB "
             "are *estimates* (true gradient norms at points of the box); every other number is a certified "
             "upper bound.  Residual nets are bounded per box by CROWN on the reversed DAG (`graph-crown`, "
             "relax/lipschitz/bounds/graph_jacobian.py; the plain `local_lipschitz` needs a chain, so their 'ours' "
             "column is the BaB's root bound and their naive column is ||W_out|| prod(1 + ||W_k||) ||W_in||).", "",
             f"| network | d | naive | ours | BaB 1 s | BaB {T} | attack LB | BaB LB | rel. gap | status | boxes "
             f"| t ours (s) | t BaB (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        alb = "n/a" if r["ours_attack_lb"] is None else f"{r['ours_attack_lb']:.6g}"
        tours = "(root)" if r["t_ours_s"] is None else f"{r['t_ours_s']:.3f}"
        lines.append(f"| {r['net']} | {r['inputs']} | {r['naive']:.4g} | {r['ours']:.5g} | {r['bab_1s']:.5g} | "
                     f"{r[f'bab_{timeout:g}s']:.6g} | {alb} | {r['bab_lower']:.6g} | "
                     f"{r['gap_rel']:.1e} | {r['status']} | {r['boxes']} | {tours} | {r['t_bab_s']:.2f} |")
    lines += ["", "Complete activation-splitting BaB on the piecewise-linear networks (same budget, `bab=\"activation\"`; splits "
              "the sign of each switch -- a MaxMin pair difference, a Householder v^T z, a sorting-network comparator -- "
              "and bounds the switches over the domain's input polytope; `exact` = every domain closed and the "
              "maximum attained at an interior point, where autograd's gradient is the lower bound):", "",
              f"| network | d | input BaB {T} | activation BaB 1 s | activation BaB {T} / LB | status | domains | t (s) |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        a = r["activation_bab"]
        if a is None:
            continue
        lines.append(f"| {r['net']} | {r['inputs']} | {r[f'bab_{timeout:g}s']:.6g} ({r['status']}) | {a['upper_1s']:.6g} | "
                     f"{a['upper']:.6g} / {a['lower']:.6g} | {a['status']} | {a['domains']} | {a['t_s']:.2f} |")
    lines += ["", "Branching rules on maxmin 8-32-32-2 (same budget):", "",
              f"| rule | BaB 1 s | BaB {T} | BaB LB | rel. gap | boxes |", "|---|---|---|---|---|---|"]
    for r in [rows[4] if len(rows) > 4 else None] + rules:
        if r is None:
            continue
        lines.append(f"| {r['branching']} | {r['bab_1s']:.5g} | {r[f'bab_{timeout:g}s']:.6g} | {r['bab_lower']:.6g} | "
                     f"{r['gap_rel']:.1e} | {r['boxes']} |")
    lines += ["", "ReLU chains, box [-0.5, 0.5]^d: activation-splitting BaB (complete, LP-checked leaves) vs input "
              "splitting (same budget; `bab=\"auto\"` picks input splitting for ReLU chains only up to 3 inputs):", "",
              "| network | d | activation: upper / lower | status | t (s) | input: upper / lower | status | t (s) |",
              "|---|---|---|---|---|---|---|---|"]
    for r in relu:
        a, i = r["activation"], r["input"]
        lines.append(f"| {r['net']} | {r['inputs']} | {a['upper']:.6g} / {a['lower']:.6g} | {a['status']} | "
                     f"{a['t_s']:.2f} | {i['upper']:.6g} / {i['lower']:.6g} | {i['status']} | {i['t_s']:.2f} |")
    (OUT / "local_lipschitz_input.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
