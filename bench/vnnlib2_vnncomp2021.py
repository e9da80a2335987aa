"""VNN-LIB 2.0 vs 1.0 on the VNN-COMP 2021 ACAS Xu and MNIST-FC properties (issue #21).

Every property (ACAS Xu prop_1..prop_10, MNIST-FC's 30) is rewritten in VNN-LIB 2.0 by
tests/vnnlib2_convert.py and decided on one network twice, with the same time limit:

* 1.0 path: ``python -m nncertify vnnlib NET PROP --timeout S`` (the 1.0 reader, our importer,
  ``relax.spec.verify_query``);
* 2.0 path: ``python -m nncertify.certify.solver_cli verify`` (the module the ``nncertify-solver`` script
  runs; the standard's parser, the composite ONNX graph, the same engine).  Both run as separate
  processes: both wall times include start-up (torch import, ~2-5 s on a loaded machine).

Both readers give the engine the same Query bit for bit (tests/test_vnnlib2.py checks all 40), so
the verdicts can differ only by timing (a search cut off at the limit on one side).

Writes bench/results/vnnlib2_vnncomp2021.json and .md: per instance both verdicts and times; the
summary counts agreements.  A disagreement where both answers are decisive (sat vs unsat) would be a
soundness bug in one path; ``unknown``/``timeout`` against a decisive answer is a difference in search.

Usage: .venv/bin/python bench/vnnlib2_vnncomp2021.py [--timeout S] [--quick]
       .venv/bin/python bench/vnnlib2_vnncomp2021.py --rerun-disagreements   (after a full run)
"""

from __future__ import annotations

import argparse
import math
import subprocess
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from vnnlib2_convert import convert_file  # noqa: E402

DATA = Path(__import__("os").environ.get("NNCERTIFY_SHARED", ROOT.parent / "shared")) / "data" / "vnncomp2021"
OUT = ROOT / "bench" / "results"


def instances(quick: bool):
    acas = DATA / "acasxu"
    # one network per property, as the VNN-COMP 2021 instance list pairs them (props 5-10) or 1_1 (props 1-4)
    pairs = {1: "1_1", 2: "2_1", 3: "1_1", 4: "1_1", 5: "1_1", 6: "1_1", 7: "1_9", 8: "2_9", 9: "3_3", 10: "4_5"}
    out = [(acas / f"ACASXU_run2a_{net}_batch_2000.onnx", acas / f"prop_{p}.vnnlib", (1, 1, 1, 5), 5)
           for p, net in pairs.items()]
    mn = DATA / "mnistfc"
    for p in sorted(mn.glob("prop_*.vnnlib")):
        out.append((mn / "mnist-net_256x2.onnx", p, (1, 784, 1), 10))
    return out[:6] + out[10:14] if quick else out


def hardware() -> dict:
    import os
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    import subprocess
    commit = os.environ.get("BENCH_COMMIT") or subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                                              capture_output=True, text=True).stdout.strip()
    return {"commit": commit or "?", "cpu": cpu, "cores": os.cpu_count(), "loadavg_start": [round(v, 2) for v in load] if load else None}


def write_md(summary: dict, rows: list[dict]) -> None:
    t1, t2, imp = summary["timeout_s"], summary["timeout_2_s"], min(summary["import_s"])
    md = ["# VNN-LIB 2.0 (nncertify-solver) vs 1.0 (certify vnnlib) on VNN-COMP 2021", "",
          "Both readers give the engine the same Query bit for bit on all 40 properties (tests/test_vnnlib2.py), so "
          "a difference in verdict here comes from timing (the 2.0 path analyses the same graph plus a Flatten of "
          "its output, under its own clock).", "",
          f"{summary['agree']}/{summary['instances']} verdicts agree, {summary['conflicts']} sat/unsat conflicts; "
          f"decided: 1.0 {summary['decided_1']}, 2.0 {summary['decided_2']} (`certify vnnlib --timeout "
          f"{t1:g}`, counted after its imports; `nncertify-solver --timeout {t2:g}`, counted from "
          f"its process start: {t1:g} s plus the measured import time {imp:.1f} s rounded up; "
          f"{summary['note']}).", "",
          f"Code: commit {summary['commit']}. Hardware: {summary['cpu']}, {summary['cores']} cores; load average "
          f"{summary['loadavg_start']} at the start, {summary['loadavg_end']} at the end; {summary['wall_s']} s in all.",
          "", "| network | property | 1.0 | s | 2.0 | s |", "|---|---|---|---|---|---|"]
    md += [f"| {r['network']} | {r['property']} | {r['vnnlib1']} | {r['vnnlib1_s']} | {r['vnnlib2']} | "
           f"{r['vnnlib2_s']} |" for r in rows]
    rerun = [r for r in rows if "vnnlib2_rerun" in r]
    if rerun:
        rs = summary.get("rerun", {})
        md += ["", "## Disagreements rerun with the same wall-clock budget", "",
               "Each instance the 1.0 path decided and the 2.0 path did not, rerun through `nncertify-solver` with "
               "`--timeout` = the whole wall time the 1.0 process used (its imports included) rounded up, plus 2 s "
               f"(`--rerun-disagreements`; code: commit {rs.get('commit', '?')}, load average {rs.get('loadavg', '?')}).",
               "", "| network | property | 1.0 | 1.0 s | 2.0 rerun | --timeout | s |", "|---|---|---|---|---|---|---|"]
        md += [f"| {r['network']} | {r['property']} | {r['vnnlib1']} | {r['vnnlib1_s']} | {r['vnnlib2_rerun']} | "
               f"{r['vnnlib2_rerun_timeout_s']} | {r['vnnlib2_rerun_s']} |" for r in rerun]
    (OUT / "vnnlib2_vnncomp2021.md").write_text("\n".join(md) + "\n")


def solve2(onnx_path: Path, prop: Path, shape, n_out: int, timeout: float, tmp: Path) -> tuple[str, float]:
    q = tmp / (prop.stem + ".vnnlib")
    q.write_text(convert_file(prop, shape, n_out, "net"))
    t = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "nncertify.certify.solver_cli", "verify", str(q), "--network",
                        f"net={onnx_path}", "--timeout", f"{timeout:g}"], capture_output=True, text=True,
                       timeout=timeout + 120)
    v = p.stdout.splitlines()[0] if p.stdout else f"error (rc {p.returncode}: {p.stderr.strip()[-200:]})"
    return v, time.monotonic() - t


def rerun_disagreements() -> None:
    import os
    data = json.loads((OUT / "vnnlib2_vnncomp2021.json").read_text())
    where = {(o.name, p.name): (o, p, sh, n) for o, p, sh, n in instances(False)}
    tmp = OUT / "vnnlib2_tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    for r in data["rows"]:
        if r["vnnlib1"] in ("sat", "unsat") and r["vnnlib2"] not in ("sat", "unsat"):
            o, p, sh, n = where[(r["network"], r["property"])]
            budget = math.ceil(r["vnnlib1_s"]) + 2
            v, t = solve2(o, p, sh, n, budget, tmp)
            r.update({"vnnlib2_rerun": v, "vnnlib2_rerun_timeout_s": budget, "vnnlib2_rerun_s": round(t, 2)})
            print(json.dumps(r), flush=True)
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()
    data["summary"]["rerun"] = {"commit": hardware()["commit"], "loadavg": [round(v, 2) for v in os.getloadavg()]}
    (OUT / "vnnlib2_vnncomp2021.json").write_text(json.dumps(data, indent=1))
    write_md(data["summary"], data["rows"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rerun-disagreements", action="store_true",
                    help="rerun, from the saved results, the instances only 1.0 decided, with 1.0's wall time as budget")
    args = ap.parse_args()
    if args.rerun_disagreements:
        return rerun_disagreements()
    rows = []
    hw = hardware()
    # `certify vnnlib --timeout S` counts S from after its imports (run_instance's start); nncertify-solver
    # counts from its own process start, as the standard's harnesses do.  For the same engine budget the
    # 2.0 path gets S plus the import time measured here (the lower of two runs)
    imports = []
    for _ in range(2):
        t = time.monotonic()
        subprocess.run([sys.executable, "-c", "import nncertify.certify.vnnlib2_solve, nncertify.certify.vnn"], check=True)
        imports.append(time.monotonic() - t)
    startup = math.ceil(min(imports))
    timeout2 = args.timeout + startup
    t_all = time.monotonic()
    tmp = OUT / "vnnlib2_tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    for onnx_path, prop, shape, n_out in instances(args.quick):
        t = time.monotonic()
        p1 = subprocess.run([sys.executable, "-m", "nncertify", "vnnlib", str(onnx_path), str(prop), "--timeout",
                             str(args.timeout)], capture_output=True, text=True, timeout=args.timeout + 120)
        t1 = time.monotonic() - t
        r1 = p1.stdout.splitlines()[0] if p1.stdout else f"error (rc {p1.returncode}: {p1.stderr.strip()[-200:]})"
        q = tmp / (prop.stem + ".vnnlib")
        q.write_text(convert_file(prop, shape, n_out, "net"))
        t = time.monotonic()  # a separate process: the solver's watchdog exits the process at the time limit
        p = subprocess.run([sys.executable, "-m", "nncertify.certify.solver_cli", "verify", str(q), "--network",
                            f"net={onnx_path}",
                            "--timeout", f"{timeout2:g}"], capture_output=True, text=True,
                           timeout=timeout2 + 120)
        t2 = time.monotonic() - t
        v2 = p.stdout.splitlines()[0] if p.stdout else f"error (rc {p.returncode}: {p.stderr.strip()[-200:]})"
        v1 = {"timeout": "timed-out"}.get(r1, r1)
        row = {"network": onnx_path.name, "property": prop.name, "vnnlib1": v1, "vnnlib1_s": round(t1, 2),
               "vnnlib2": v2, "vnnlib2_s": round(t2, 2), "agree": v1 == v2,
               "conflict": {v1, v2} == {"sat", "unsat"}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()
    summary = {"instances": len(rows), "agree": sum(r["agree"] for r in rows),
               "conflicts": sum(r["conflict"] for r in rows),
               "decided_1": sum(r["vnnlib1"] in ("sat", "unsat") for r in rows),
               "decided_2": sum(r["vnnlib2"] in ("sat", "unsat") for r in rows),
               "timeout_s": args.timeout, "timeout_2_s": timeout2, "import_s": [round(v, 2) for v in imports],
               "machine": platform.platform(), **hw,
               "loadavg_end": [round(v, 2) for v in __import__("os").getloadavg()],
               "wall_s": round(time.monotonic() - t_all, 1),
               "note": "2-core CPU shared with ~5 other sessions running tests and benchmarks at the same time: "
                       "times are inflated and noisy, and a timeout on one side only is a timing difference"}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "vnnlib2_vnncomp2021.json").write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))
    write_md(summary, rows)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
