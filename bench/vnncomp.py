"""Benchmark: VNN-COMP 2021 ACAS Xu (186 instances) and MNIST-FC (90) through the `certify vnncomp` path.

Each benchmark's instances.csv (../shared/data/vnncomp2021/<bench>/) is run by
:func:`nncertify.certify.vnn.run_benchmark` -- the function behind ``certify vnncomp`` -- with the
csv's timeouts times ``--timeout-scale`` (optionally every ``--every``-th row only): our ONNX import
checked against onnxruntime, the VNN-LIB reader, ``relax.spec.verify_query``, and the sat re-check
(float64 model + onnxruntime).  The raw results CSV and the counterexample files go to
``--work`` (resumable: rerunning continues where a run stopped).

Independent checks of every answer ("wrong" must be 0):
* every ``sat``: the written witness file is parsed back and run through a *fresh* onnxruntime
  session; the X values must lie in a box of the property and the outputs satisfy its clause;
* every ``unsat``: (a) against the known truth of the property where the benchmark's answer is the
  same for every network (ACAS Xu: P1, P5, P6, P9, P10 hold; P7, P8 are violated -- VNN-COMP 2021
  results, see ../shared/reference/complete_verification.md §5; the benchmark folders ship no
  per-instance answers), (b) a float64 PGD attack with random restarts on the network (our own
  autograd, re-checked in onnxruntime): a point it finds inside the unsafe set would prove the unsat
  wrong.

Writes bench/results/vnncomp_<bench>.json and .md, side by side with the published rows.

Usage: .venv/bin/python bench/vnncomp.py [--bench acasxu mnistfc] [--timeout-scale 1] [--every 1] [--offset 0]
       [--work /tmp/vnncomp_work] [--attack-restarts 20] [--tag _full]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nncertify.certify.vnn import (OnnxRuntimeModel, counterexample_dir, counterexample_name, read_instances,  # noqa: E402
                                   read_results, run_benchmark, summarize)
from nncertify.models.onnx_import import load_onnx  # noqa: E402
from nncertify.relax.vnnlib import read_vnnlib  # noqa: E402

OUT = ROOT / "bench" / "results"
DATA = ROOT.parent / "shared" / "data" / "vnncomp2021"

# VNN-COMP 2021 (../shared/reference/complete_verification.md §5, from the competition's result csvs)
PUBLISHED = {
    "acasxu": [("nnenum (CPU)", 186, 139, 47, 0.20), ("VeriNet", 186, 139, 47, 0.50),
               ("α,β-CROWN (GPU)", 186, 139, 47, 1.14), ("oval", 185, 138, 47, 0.67),
               ("Marabou", 183, 137, 46, 0.67), ("ERAN", 170, 125, 45, 1.85)],
    "mnistfc": [("α,β-CROWN (V100)", 70, 49, 21, 3.7), ("VeriNet", 60, 39, 21, 0.21), ("oval", 58, 37, 21, 0.37),
                ("ERAN", 56, 34, 22, 4.1), ("Marabou", 54, 35, 19, 5.5), ("nnenum", 47, 35, 12, 2.0)],
}
CPU_ABCROWN = {  # measured on this project's 2-core machine type (reference §5), every 6th csv row
    "acasxu": "α,β-CROWN 8250d5f on 2 CPU cores, every 6th row: 31 run, 23 unsat, 8 sat, 0 unknown, median 2.4 s",
    "mnistfc": "α,β-CROWN 8250d5f on 2 CPU cores, every 6th row (cap 120 s): 15 run, 7 unsat, 5 sat, 3 unknown, "
               "median 3.8 s",
}
ACAS_TRUTH = {"prop_1": "unsat", "prop_5": "unsat", "prop_6": "unsat", "prop_9": "unsat", "prop_10": "unsat",
              "prop_7": "sat", "prop_8": "sat"}


def parse_witness(text: str) -> dict[str, float]:
    toks = text.replace("(", " ").replace(")", " ").split()[1:]
    return {toks[i]: float(toks[i + 1]) for i in range(0, len(toks), 2)}


def check_sat(inst, ce_file: Path) -> str:
    """'ok' or why the written witness is wrong (fresh onnxruntime session, exact box membership)."""
    vals = parse_witness(ce_file.read_text())
    spec = read_vnnlib(inst.vnnlib)
    x = np.array([vals[f"X_{i}"] for i in range(spec.n_inputs)])
    rt = OnnxRuntimeModel(inst.onnx)
    y = rt(x)
    ys = np.array([vals[f"Y_{j}"] for j in range(spec.n_outputs)])
    if not np.array_equal(y, ys):
        return f"written Y differs from onnxruntime's (max {np.abs(y - ys).max():.2g})"
    for d in spec.disjuncts:
        if (x >= d.lower).all() and (x <= d.upper).all() and (d.C @ y <= d.d).all():
            return "ok"
    return "witness does not satisfy any disjunct"


def attack_unsat(inst, restarts: int, steps: int = 100, seed: int = 0) -> str:
    """Independent falsification attempt of an unsat answer: float64 signed-gradient PGD on
    max_k (C_k f(x) - d_k) per disjunct, random starts in the box; a hit is re-checked in onnxruntime."""
    net = load_onnx(inst.onnx).to(dtype=torch.float64)
    spec = read_vnnlib(inst.vnnlib)
    rt = OnnxRuntimeModel(inst.onnx)
    f = net.to_module(requires_grad=False)
    gen = torch.Generator().manual_seed(seed)
    shape = net.input_shape
    for dj in spec.disjuncts:
        lo = torch.tensor(dj.lower).reshape(shape)
        hi = torch.tensor(dj.upper).reshape(shape)
        C, d = torch.tensor(dj.C), torch.tensor(dj.d)
        x = lo + torch.rand((restarts, *shape), generator=gen, dtype=torch.float64) * (hi - lo)
        for it in range(steps):
            x = x.detach().requires_grad_(True)
            v = (f(x).reshape(restarts, -1) @ C.T - d).amax(1)
            if bool((v <= 0).any()):
                break
            g, = torch.autograd.grad(v.sum(), x)
            with torch.no_grad():
                x = torch.minimum(torch.maximum(x - (hi - lo) * 0.1 * 0.97 ** it * g.sign(), lo), hi)
        with torch.no_grad():
            v = (f(x).reshape(restarts, -1) @ C.T - d).amax(1)
        for k in torch.nonzero(v <= 0).flatten().tolist():
            xr = x[k].detach().to(torch.float32).double().clamp(lo, hi).reshape(-1).numpy()
            y = rt(xr)
            if (dj.C @ y <= dj.d).all():
                return "WRONG: attack found a counterexample"
    return "ok"


def engine_version() -> str:
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%h %s"], capture_output=True,
                              text=True).stdout.strip()
        e = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%h %s", "--", "relax/spec.py",
                            "relax/bab"], capture_output=True, text=True).stdout.strip()
        return f"branch head {head[:80]}; engine (relax/spec.py, relax/bab) last changed in {e[:120]}"
    except OSError:
        return "unknown"


def run(bench: str, args) -> dict:
    csv_path = DATA / bench / f"{bench}_instances.csv"
    instances = read_instances(csv_path)
    n_all = len(instances)
    instances = instances[args.offset::args.every]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    out = work / f"{bench}_results.csv"
    t0 = time.time()
    summary = run_benchmark(instances, out, timeout_scale=args.timeout_scale, progress=True)
    wall = time.time() - t0
    done = read_results(out)
    rows = []
    for inst in instances:
        r = done[inst.key]
        row = {"onnx": inst.onnx_rel, "vnnlib": inst.vnnlib_rel, "csv_timeout_s": inst.timeout,
               "timeout_s": float(r["timeout_s"]), "result": r["result"], "time_s": float(r["time_s"]),
               "reason": r["reason"]}
        prop = Path(inst.vnnlib_rel).name.replace(".vnnlib", "")
        truth = ACAS_TRUTH.get(prop) if bench == "acasxu" else None
        row["known"] = truth
        checks = []
        if row["result"] == "sat":
            checks.append(check_sat(inst, counterexample_dir(out) / counterexample_name(inst)))
            if truth == "unsat":
                checks.append("WRONG: the property is known to hold")
        elif row["result"] == "unsat":
            if truth == "sat":
                checks.append("WRONG: the property is known to be violated")
            if args.attack_restarts > 0:
                checks.append(attack_unsat(inst, args.attack_restarts))
        row["check"] = "; ".join(checks) if checks else "-"
        row["wrong"] = any(c != "ok" for c in checks)
        rows.append(row)
    summary = summarize([done[i.key] for i in instances], total=len(instances))
    summary["wrong"] = sum(r["wrong"] for r in rows)
    summary["checked_sat"] = sum(r["result"] == "sat" for r in rows)
    summary["checked_unsat_by_attack"] = sum(r["result"] == "unsat" for r in rows) if args.attack_restarts else 0
    summary["checked_unsat_by_truth"] = sum(r["result"] == "unsat" and r["known"] is not None for r in rows)
    solved_t = [r["time_s"] for r in rows if r["result"] in ("sat", "unsat")]
    res = {
        "benchmark": bench, "csv": str(csv_path.relative_to(ROOT.parent)), "instances_in_csv": n_all,
        "subset": (f"every {args.every}-th csv row from row {args.offset}" if args.every > 1 or args.offset
                   else "all rows"),
        "timeout_scale": args.timeout_scale, "engine": engine_version(),
        "hardware": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} (CPU); the 2 cores "
                    f"are shared with other jobs running at the same time: times are noisy upper estimates",
        "wall_s": wall, "sum_instance_s": sum(r["time_s"] for r in rows), "summary": summary, "median_solved_s": statistics.median(solved_t) if solved_t else None,
        "instances": rows, "published": PUBLISHED[bench], "cpu_abcrown": CPU_ABCROWN[bench],
    }
    name = f"vnncomp_{bench}{args.tag}"
    (OUT / f"{name}.json").write_text(json.dumps(res, indent=1))
    (OUT / f"{name}.md").write_text(markdown(res))
    return res


def markdown(res: dict) -> str:
    s, c = res["summary"], res["summary"]["counts"]
    med = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    title = {"acasxu": "ACAS Xu", "mnistfc": "MNIST-FC"}[res["benchmark"]]
    lines = [f"# VNN-COMP 2021 {title} through `certify vnncomp`", "",
             f"Instances: `{res['csv']}` ({res['instances_in_csv']} rows), run: {res['subset']} = {s['run']} "
             f"instances, each with the csv's timeout x {res['timeout_scale']:g}.",
             f"Engine: {res['engine']}.", f"Hardware: {res['hardware']}. Sum of the per-instance times: "
                                          f"{res['sum_instance_s']:.0f} s.",
             "", "Times are per instance, wall clock inside the worker (network import + onnxruntime cross-check + "
                 "VNN-LIB parse + verification + re-check), without process start-up.", "",
             "| tool | solved | unsat (holds) | sat (violated) | unknown | timeout | error | wrong | median s (solved) |",
             "|---|---|---|---|---|---|---|---|---|",
             f"| **nncertify (this run, {s['run']} instances)** | {s['solved']} | {c['unsat']} | {c['sat']} | "
             f"{c['unknown']} | {c['timeout']} | {c['error']} | {s['wrong']} | {med(res['median_solved_s'])} |"]
    n = res["instances_in_csv"]
    for name, solved, h, v, m in res["published"]:
        lines.append(f"| {name}, VNN-COMP 2021 ({n if res['benchmark'] == 'acasxu' else 90} instances) | {solved} | "
                     f"{h} | {v} | | | | | {m:.2f} |")
    if res["benchmark"] == "acasxu":
        by: dict = {}
        for r in res["instances"]:
            p = Path(r["vnnlib"]).stem
            by.setdefault(p, {}).setdefault(r["result"], 0)
            by[p][r["result"]] += 1
        truth = {"prop_1": "45 hold", "prop_2": "6 hold / 39 violated", "prop_3": "42 / 3", "prop_4": "42 / 3"}
        lines += ["", "By property (VNN-COMP 2021 truth, reference §5: P1-P4 counts; P5, P6, P9, P10 hold; P7, P8 "
                      "violated):", "", "| property | ours | 2021 truth (hold / violated) |", "|---|---|---|"]
        for p in sorted(by, key=lambda q: int(q.split("_")[1])):
            ours = ", ".join(f"{k} {v}" for k, v in sorted(by[p].items()))
            lines.append(f"| {p} | {ours} | {truth.get(p, ACAS_TRUTH.get(p, '').replace('unsat', 'holds').replace('sat', 'violated'))} |")
    for note in res.get("notes", []):
        lines += ["", note]
    lines += ["", f"On a CPU like ours: {res['cpu_abcrown']} (reference §5).", "",
              f"Checks: {s['checked_sat']} sat answers re-read from their result files and re-run in a fresh "
              f"onnxruntime session (box membership exact); {s['checked_unsat_by_truth']} unsat answers compared "
              f"with the property's known answer; {s['checked_unsat_by_attack']} unsat answers attacked by an "
              f"independent float64 PGD (re-checked in onnxruntime). Wrong answers: **{s['wrong']}**.", "",
              "| onnx | vnnlib | timeout s | result | time s | known | check | reason |", "|---|---|---|---|---|---|---|---|"]
    for r in res["instances"]:
        lines.append(f"| {Path(r['onnx']).stem} | {Path(r['vnnlib']).stem} | {r['timeout_s']:g} | {r['result']} | "
                     f"{r['time_s']:.2f} | {r['known'] or ''} | {r['check']} | {r['reason'][:90]} |")
    return "\n".join(lines) + "\n"


def rewrite(bench: str) -> None:
    """Regenerate bench/results/vnncomp_<bench>.md from its JSON (no run); ``bench`` may carry the tag."""
    res = json.loads((OUT / f"vnncomp_{bench}.json").read_text())
    res.setdefault("sum_instance_s", sum(r["time_s"] for r in res["instances"]))
    res["subset"] = res["subset"].replace("every 2th row", "every 2-th csv row")
    (OUT / f"vnncomp_{bench}.json").write_text(json.dumps(res, indent=1))
    (OUT / f"vnncomp_{bench}.md").write_text(markdown(res))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bench", nargs="+", default=["acasxu", "mnistfc"], choices=["acasxu", "mnistfc"])
    ap.add_argument("--timeout-scale", type=float, default=1.0)
    ap.add_argument("--every", type=int, default=1)
    ap.add_argument("--offset", type=int, default=0,
                    help="start at this csv row (with --every N: split a run over N processes, each its own "
                         "--work; then copy their results CSVs and counterexample files into one --work and "
                         "rerun with --every 1: finished rows are skipped, the checks and tables cover all)")
    ap.add_argument("--work", default="/tmp/vnncomp_work")
    ap.add_argument("--attack-restarts", type=int, default=20)
    ap.add_argument("--rewrite", action="store_true", help="only regenerate the .md files from the .json files")
    ap.add_argument("--tag", default="", help="suffix of the result files (vnncomp_<bench><tag>.json/.md)")
    args = ap.parse_args()
    if args.rewrite:
        for b in args.bench:
            rewrite(b + args.tag)
        return
    torch.set_num_threads(1)  # the checks are many small ops: one thread is much faster on a shared machine
    if not DATA.is_dir():
        sys.exit(f"{DATA} is absent: the VNN-COMP 2021 benchmarks are needed")
    OUT.mkdir(parents=True, exist_ok=True)
    for b in args.bench:
        res = run(b, args)
        s = res["summary"]
        print(f"{b}: {s['run']} run, solved {s['solved']} {s['counts']}, wrong {s['wrong']}, "
              f"median solved {res['median_solved_s']}")


if __name__ == "__main__":
    main()
