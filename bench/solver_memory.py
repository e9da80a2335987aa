"""Peak memory of the interior-point (CLARABEL) and splitting (SCS) SDP solves vs. problem size.

Each point runs in a fresh child process: build a ReLU net (input ``w``, hidden ``h``, scalar output),
run ``lipschitz_bound(norm="inf", method="lipsdp-neuron", solver=S)`` (the cvxpy chain form, whose
PSD cones have sizes ``n_k``) with a short solver time limit (the KKT allocation and the first
factorisation, the peak, come first), and record the child's peak RSS (``ru_maxrss``) minus its RSS
just before the call.  The fit of :data:`sdp.solve.MEMORY_MODEL` is made from these points:
``bytes ~ a * sum_k (n_k (n_k + 1) / 2)^2 + b * sum_k n_k (n_k + 1) / 2``.

Writes ``bench/results/solver_memory.json`` and ``.md``.  Usage:
``PYTHONPATH=$PWD python bench/solver_memory.py [--quick]``.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CHILD = r"""
import json, resource, sys, time
import numpy as np, torch
from torch import nn
from nncertify.models import from_module
from nncertify.sdp import api
from nncertify.sdp import solve as S
w, h, solver = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
torch.manual_seed(0)
net = from_module(nn.Sequential(nn.Linear(w, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 1)).double(), (w,))
sizes = []
real = S.choose_solver
def spy(solver, cone_sizes):
    sizes.extend(cone_sizes)
    return real(solver, cone_sizes)
S.choose_solver = spy
S.memory_guard = lambda *a, **k: None  # measure the real thing
def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) * 1024
before = rss()
t0 = time.perf_counter()
r = api.lipschitz_bound(net, "inf", "lipsdp-neuron", solver, time_limit=15)
dt = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"w": w, "h": h, "solver": solver, "cones": sizes, "before": before, "peak": peak,
                  "delta": peak - before, "time": dt, "status": r.solver_status}))
"""


def main(quick: bool = False) -> None:
    root = Path(__file__).resolve().parent.parent
    points = [(8, 8), (16, 16), (24, 24), (32, 32), (40, 40), (48, 48)]
    if quick:
        points = points[:3]
    rows = []
    for solver in ("CLARABEL", "SCS"):
        for w, h in points + ([(64, 64), (96, 96)] if solver == "SCS" and not quick else []):
            out = subprocess.run([sys.executable, "-c", CHILD, str(w), str(h), solver], capture_output=True,
                                 text=True, timeout=600, cwd=root)
            line = [l for l in out.stdout.splitlines() if l.startswith("{")]
            if not line:
                print("failed", w, h, solver, out.stderr[-500:])
                continue
            r = json.loads(line[-1])
            m = [n * (n + 1) // 2 for n in r["cones"]]
            r["sum_m2"] = int(sum(x * x for x in m))
            r["sum_m"] = int(sum(m))
            rows.append(r)
            print(f"{solver:9s} w={w:3d} h={h:3d} cones={r['cones']} delta={r['delta'] / 2**20:8.1f} MiB "
                  f"time={r['time']:.1f}s", flush=True)
    fits = {}
    for solver in ("CLARABEL", "SCS"):
        pts = [r for r in rows if r["solver"] == solver]
        if len(pts) < 2:
            continue
        X = np.array([[r["sum_m2"], r["sum_m"], 1.0] for r in pts], float)
        y = np.array([max(r["delta"], 0) for r in pts], float)
        coef, *_ = np.linalg.lstsq(X, y, rcond=None)
        fits[solver] = {"a_per_m2": float(coef[0]), "b_per_m": float(coef[1]), "c": float(coef[2]),
                        "max_rel_residual": float(np.max(np.abs(X @ coef - y) / np.maximum(y, 1.0)))}
    res = {"host": f"{platform.processor() or platform.machine()}, 2-core CPU shared with other jobs",
           "python": sys.version.split()[0], "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "points": rows, "fits": fits}
    out = root / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "solver_memory.json").write_text(json.dumps(res, indent=1))
    lines = ["# SDP solver peak memory vs. problem size", "",
             f"{res['host']}; {res['date']}.  Peak RSS of a child process minus its RSS before the call; "
             "ReLU net w-h-h-1, l_inf LipSDP-Neuron (cvxpy chain form), solver time limit 15 s.", "",
             "| solver | w | h | PSD cones | sum m^2 (m = n(n+1)/2) | peak delta (MiB) | time (s) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['solver']} | {r['w']} | {r['h']} | {r['cones']} | {r['sum_m2']:.3g} | "
                     f"{r['delta'] / 2**20:.1f} | {r['time']:.1f} |")
    lines += ["", "Least-squares fit bytes = a sum m^2 + b sum m + c:", ""]
    for s, f in fits.items():
        lines.append(f"* {s}: a = {f['a_per_m2']:.3g}, b = {f['b_per_m']:.3g}, c = {f['c']:.3g} "
                     f"(max relative residual {f['max_rel_residual']:.2f})")
    (out / "solver_memory.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main("--quick" in sys.argv)
