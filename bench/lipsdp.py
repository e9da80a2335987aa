"""Reproduce Pauli et al. (ICLR 2024) Table 1 on the released MaxMin nets; compare our lifted formulation.

Columns: MP (matrix-norm product), LipSDP-NSR (paper's constraint, S = P = 0), lifted (ours: one ReLU
per MaxMin pair, LipSDP-Neuron on the exact rewriting), closed-form start of the lifted first-order
path, sampled lower bound (max gradient norm at random points: a heuristic, not a bound).
All SDP values are *certified* (float64-proven after repair); raw solver values are listed too.

Usage: .venv/bin/python bench/lipsdp.py [--subset quick|paper|all] [--time-limit S]
Writes bench/results/lipsdp.json and bench/results/lipsdp.md.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sdp  # noqa: E402
from models.matlab import load_pauli_mat  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "pauli2024_maxmin"
PUBLISHED = {("weights_l2_18fc_32", 2): 17432, ("weights_l2_18fc_128", 2): 24271, ("weights_l2_18fc_128", "inf"): 1.97e5}
PUBLISHED_MP = {("weights_l2_18fc_32", 2): 73405, ("weights_l2_18fc_128", 2): 74167, ("weights_l2_18fc_128", "inf"): 2.79e16}
SUBSETS = {
    "quick": [("weights_l2_2fc_16", 2), ("weights_l2_5fc_32", 2), ("weights_l2_18fc_32", 2), ("resweights_5_32", 2)],
    "paper": [("weights_l2_2fc_16", 2), ("weights_l2_2fc_32", 2), ("weights_l2_2fc_64", 2), ("weights_l2_5fc_32", 2),
              ("weights_l2_8fc_32", 2), ("weights_l2_18fc_32", 2), ("weights_l2_18fc_64", 2),
              ("weights_l2_18fc_128", 2), ("weights_l2_18fc_128", "inf"), ("resweights_5_32", 2),
              ("resweights_8_32", 2)],
}
SUBSETS["all"] = [(p.stem, 2) for p in sorted(DATA.glob("weights_l2_*.mat"))] + \
    [("weights_l2_18fc_128", "inf")] + [(p.stem, 2) for p in sorted(DATA.glob("resweights_*.mat"))]


def one(name, norm, tl, fo_iters, scs_above=32):
    net = load_pauli_mat(DATA / f"{name}.mat")
    c = None
    if norm == "inf":
        c = torch.zeros(10, dtype=torch.float64)
        c[8] = 1.0  # the paper's l_inf experiment: logit of label 8 (row 9)
    row = {"net": name, "norm": norm}
    width = max(n.shape[0] for n in net.nodes if n.op == "linear")
    residual = not net.is_chain()
    # paper's constraint (feed-forward only)
    if not residual:
        solver = "CLARABEL" if (width <= scs_above and norm == 2) else "SCS"
        r = sdp.lipschitz_bound(net, norm=norm, method="nsr", solver=solver, c=c, time_limit=tl)
        row.update(mp=r.naive_product, nsr=r.certified_value, nsr_raw=r.raw_value, nsr_solver=r.solver,
                   nsr_time=r.solve_time + r.verify_time, nsr_status=r.solver_status)
    else:
        r = sdp.lipschitz_bound(net, method="nsr", solver="SCS", time_limit=tl, residual_variant="Szero")
        row.update(nsr=r.certified_value, nsr_raw=r.raw_value, nsr_solver=r.solver + " (res, P free)",
                   nsr_time=r.solve_time + r.verify_time, nsr_status=r.solver_status)
    # ours: lifted (first-order path for l2; SCS for l_inf)
    if norm == 2:
        r = sdp.lipschitz_bound(net, method="lifted", solver="FIRST_ORDER", first_order_iters=fo_iters, time_limit=tl)
        row.update(lifted=r.certified_value, lifted_solver=r.solver, lifted_time=r.solve_time + r.verify_time)
        row.setdefault("mp", r.naive_product)
        r0 = sdp.lipschitz_bound(net, method="lifted", solver="FIRST_ORDER", first_order_iters=0)
        row.update(closed_form=r0.certified_value, closed_form_time=r0.solve_time + r0.verify_time)
        if width <= 16:
            rc = sdp.lipschitz_bound(net, method="lifted", solver="CLARABEL", time_limit=tl)
            row.update(lifted_clarabel=rc.certified_value, lifted_clarabel_time=rc.solve_time + rc.verify_time)
    elif width <= 64:  # l_inf lifted via SCS (the 784-input first cone makes it slow for wide nets)
        r = sdp.lipschitz_bound(net, norm="inf", method="lifted", solver="SCS", c=c, time_limit=tl)
        row.update(lifted=r.certified_value, lifted_raw=r.raw_value, lifted_solver=r.solver,
                   lifted_time=r.solve_time + r.verify_time, lifted_status=r.solver_status)
    t0 = time.perf_counter()
    lb = max(sdp.sampled_lower_bound(net, norm, c=c, n=2000, seed=0).value,
             sdp.sampled_lower_bound(net, norm, c=c, n=2000, seed=1, scale=0.3).value)
    row.update(sampled_lb=lb, sampled_time=time.perf_counter() - t0)
    if (name, norm) in PUBLISHED:
        row["published_nsr"] = PUBLISHED[(name, norm)]
        row["published_mp"] = PUBLISHED_MP[(name, norm)]
        if row.get("nsr"):
            row["nsr_vs_published"] = row["nsr"] / row["published_nsr"] - 1
    return row


def fmt(v, d=5):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{d}g}"
    return str(v)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--subset", default="paper", choices=sorted(SUBSETS))
    ap.add_argument("--time-limit", type=float, default=120.0)
    ap.add_argument("--fo-iters", type=int, default=300)
    ap.add_argument("--render-only", action="store_true", help="rewrite lipsdp.md from lipsdp.json")
    ap.add_argument("--append", action="store_true", help="merge into the existing results (replace same net/norm)")
    ap.add_argument("--nets", default="", help="comma list NAME[:inf] instead of --subset")
    ap.add_argument("--scs-above", type=int, default=32, help="NSR: CLARABEL up to this width, SCS above")
    a = ap.parse_args()
    if not DATA.exists():
        print(f"data folder {DATA} absent; nothing to do")
        return
    rows = []
    prev = []
    if a.append and (ROOT / "bench" / "results" / "lipsdp.json").exists():
        prev = json.loads((ROOT / "bench" / "results" / "lipsdp.json").read_text()).get("rows", [])
    a.prev = prev
    t_all = time.perf_counter()
    if a.render_only:
        old = json.loads((ROOT / "bench" / "results" / "lipsdp.json").read_text())
        a.prev, a.nets = [], "merged runs (see lipsdp.json rows; each row has its own wall_s)"
        write(old["rows"], a, t_all - old.get("total_s", 0.0))
        return
    todo = SUBSETS[a.subset] if not a.nets else [(n.split(":")[0], "inf" if n.endswith(":inf") else 2) for n in a.nets.split(",")]
    for name, norm in todo:
        t0 = time.perf_counter()
        try:
            row = one(name, norm, a.time_limit, a.fo_iters, a.scs_above)
        except Exception as exc:  # record and go on
            row = {"net": name, "norm": norm, "error": f"{type(exc).__name__}: {exc}"}
        row["wall_s"] = time.perf_counter() - t0
        rows.append(row)
        print(json.dumps(row), flush=True)
        write(rows, a, t_all)


def write(rows, a, t_all):
    new = {(r["net"], str(r["norm"])) for r in rows}
    rows = [r for r in a.prev if (r["net"], str(r["norm"])) not in new] + rows
    hw = {"processor": platform.processor() or platform.machine(), "cores": os.cpu_count(),
          "torch": torch.__version__, "python": platform.python_version()}
    out = {"subset": a.subset if not a.nets else f"nets={a.nets}", "time_limit_s": a.time_limit, "fo_iters": a.fo_iters, "hardware": hw,
           "total_s": time.perf_counter() - t_all, "rows": rows}
    res = ROOT / "bench" / "results"
    res.mkdir(parents=True, exist_ok=True)
    (res / "lipsdp.json").write_text(json.dumps(out, indent=1))
    lines = [f"# LipSDP on Pauli et al. (ICLR'24) MaxMin nets — {out['subset']}", "",
             f"Hardware: {hw['processor']}, {hw['cores']} cores, torch {hw['torch']}. Total {out['total_s']:.0f} s.",
             "All SDP columns are certified (float64-proven) upper bounds; 'sampled LB' is a heuristic lower estimate.",
             "NSR = paper's constraint (S=P=0); lifted = ours (one ReLU per pair), first-order path (ℓ2) or SCS (ℓ∞); "
             "closed form = lifted at the initial multipliers (no optimisation).", "",
             "| net | norm | MP | NSR (paper constr.) | solver, s | published NSR | lifted (ours) | solver, s | lifted/NSR | closed form | sampled LB | notes (NSR solver status) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['net']} | {r['norm']} | error: {r['error'][:80]} |||||||||")
            continue
        ratio = r["lifted"] / r["nsr"] if r.get("lifted") and r.get("nsr") else None
        if r.get("published_nsr") and r.get("nsr"):
            r["note"] = f"NSR vs published: {100 * (r['nsr'] / r['published_nsr'] - 1):+.2f} %"
        lines.append(
            f"| {r['net']} | {r['norm']} | {fmt(r.get('mp'))} | {fmt(r.get('nsr'), 7)} | "
            f"{r.get('nsr_solver', '–')}, {fmt(r.get('nsr_time'), 3)} | {fmt(r.get('published_nsr'))} | "
            f"{fmt(r.get('lifted'), 7)} | {r.get('lifted_solver', '–')}, {fmt(r.get('lifted_time'), 3)} | "
            f"{fmt(ratio, 4)} | {fmt(r.get('closed_form'))} | {fmt(r.get('sampled_lb'))} | {r.get('note', '')} {r.get('nsr_status', '')} |")
    extra = [r for r in rows if r.get("lifted_clarabel")]
    if extra:
        lines += ["", "Lifted solved exactly by CLARABEL (small nets) vs first-order path:", ""]
        for r in extra:
            lines.append(f"- {r['net']}: CLARABEL {r['lifted_clarabel']:.6g} ({r['lifted_clarabel_time']:.2f} s) vs "
                         f"first-order {r['lifted']:.6g}")
    (res / "lipsdp.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
