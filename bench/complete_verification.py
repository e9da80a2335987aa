"""Complete verification (attack -> CROWN -> alpha-CROWN -> beta-CROWN BaB) on the ERAN MNIST networks.

Writes bench/results/complete_verification.json and .md: per network and image the verdict
(verified / falsified / unknown-or-timeout), the time, the domains visited, and the summary counts and
median time side by side with the published rows (first 1000 images there) and the `alpha-crown` baseline.

Settings (ERAN / alpha,beta-CROWN): 6x100 and 9x100 at l_inf eps = 0.026 on unnormalized pixels; ConvSmall at
eps = 0.12 in pixel units with the normalization (mean 0.1307, std 0.3081) in front; boxes clipped to [0, 1].
Misclassified images count as falsified (the clean image is a counterexample).

Usage: python bench/complete_verification.py [--nets 6x100,9x100,convsmall] [--images 0:100] [--timeout 60]
       [--threads 1] [--out NAME] [--refine auto|bab|off] [--refine-share 0.5]
       python bench/complete_verification.py --append RUN1.json,RUN2.json --label TITLE [--notes FILE]
       (adds earlier runs, e.g. --refine bab and --refine off run side by side, to complete_verification.json/.md)
"""

from __future__ import annotations

import argparse
import json
import math
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
from nncertify.models.layers import Normalize  # noqa: E402
from nncertify.relax.spec import robustness_query, verify_query  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "mnist"
OUT = ROOT / "bench" / "results"

ABCROWN_CPU = {  # alpha,beta-CROWN (8250d5f) on this project's 2-core CPU machine type, 60 s per image, MIP refinement
    # off (no Gurobi licence), reference note section 5: (images, verified, falsified, unknown, median s)
    "6x100": ("0-29", 9, 4, 17, 61), "9x100": ("0-25", 5, 3, 18, 62), "convsmall": ("0-29", 20, 8, 2, 8.6)}

BEFORE = {"6x100": "9 / 4 / 17", "9x100": "6 / 3 / 21", "convsmall": "15 / 8 / 7"}  # engine 58e2991, 30 s/image

PROFILE = (  # measured 2026-12-07 with cProfile, 1 thread, load average ~1 (the machine briefly idle), engine 9ba9644
    "Where the time goes (cProfile, 6x100 image 2, 30 s, BaBSR, batch 64, 20 beta-CROWN iterations, load average ~1): "
    "10,496 domains (350/s); 28.1 s of 30 in bounding the domains (engine backward passes 14.3 s, of which the "
    "activation steps 7.3 s and box concretization 4.2 s; autograd for alpha/beta 8.6 s; Adam 2.8 s), branching "
    "0.16 s, domain bookkeeping 0.4 s, PGD during the search 0.55 s, root intermediate alpha-CROWN 0.5 s. Larger "
    "batches do not raise throughput on one thread (64 / 256 / 1024: 3200 / 2560 / 2048 domains in the same 25 s "
    "at load ~9); 10 instead of 20 beta iterations: 1.8x the domains per second and the same domain counts on 5 "
    "closable images (ConvSmall 2, 13, 19, 22; 6x100 23), 10-20 % less CPU time. FSB (k = 4 or 8) closed ConvSmall 22, 19 "
    "and 6x100 23 with 149 / 85 / 60 domains (BaBSR: 123 / 79 / 66) at ~25 % more CPU per domain, so BaBSR stays the default. "
    "On ConvSmall image 22 the root intermediate alpha-CROWN takes 3.4 s of 12.6 s. Under the load of the "
    "benchmark runs (load average 12-17 on 2 cores) the same search gets 6-10x fewer domains per wall second.")

PUBLISHED = {  # verified % on the first 1000 images (reference note section 5)
    "6x100": dict(eps=0.026, deeppoly=16.0, prima=51.0, beta_crown=68.6, upper=84.2, alpha_crown_100=22, alpha_crown_30=7),
    "9x100": dict(eps=0.026, deeppoly=18.2, prima=42.8, beta_crown=57.3, upper=82.0, alpha_crown_100=19, alpha_crown_30=3),
    "convsmall": dict(eps=0.12, deeppoly=15.8, prima=59.8, beta_crown=71.6, upper=74.6, alpha_crown_100=21, alpha_crown_30=8),
}


def _state_dict(path):
    d = torch.load(path, weights_only=True, map_location="cpu")
    sd = d["state_dict"] if isinstance(d, dict) and "state_dict" in d else d
    return sd[0] if isinstance(sd, list) else sd


def eran_net(name: str):
    return models.from_module(eran_module(name), (1, 28, 28), name=name)


def eran_module(name: str) -> nn.Module:
    """The ERAN network as a plain torch module (the independent checks run on it, not on nncertify's Network)."""
    if name in ("6x100", "9x100"):
        hidden = 5 if name == "6x100" else 8
        widths = [784] + [100] * hidden + [10]
        mods = [nn.Flatten()]
        for a, b in zip(widths[:-1], widths[1:]):
            mods += [nn.Linear(a, b), nn.ReLU()]
        m = nn.Sequential(*mods[:-1])
        m.load_state_dict(_state_dict(DATA / f"mnist_{name.replace('x', '_')}_nat.pth"))
        return m.eval()
    body = nn.Sequential(nn.Conv2d(1, 16, 4, stride=2), nn.ReLU(), nn.Conv2d(16, 32, 4, stride=2), nn.ReLU(),
                         nn.Flatten(), nn.Linear(800, 100), nn.ReLU(), nn.Linear(100, 10))
    body.load_state_dict(_state_dict(DATA / "mnist_conv_small_nat.pth"))
    m = nn.Sequential(Normalize([0.1307], [0.3081]), body)
    return m.eval()


def check_falsified(module64, x, label, lo, hi) -> str:
    """'ok' if the counterexample lies in the box exactly and the float64 torch module (not nncertify's
    Network) gives some class j != label a score >= the label's there."""
    if not bool(((x >= lo) & (x <= hi)).all()):
        return "WRONG: counterexample outside the box"
    with torch.no_grad():
        out = module64(x.reshape(1, *x.shape).double())[0]
    others = torch.cat([out[:label], out[label + 1:]])
    return "ok" if float(others.max()) >= float(out[label]) else "WRONG: the counterexample is classified correctly"


def attack_verified(module64, x0, label, lo, hi, restarts=20, steps=100, seed=0) -> str:
    """Independent falsification attempt of a verified image: float64 signed-gradient PGD on the margin
    f_label - max_j!=label f_j from the centre and random starts in the box (plain torch, own loop)."""
    gen = torch.Generator().manual_seed(seed)
    lo, hi = lo.double(), hi.double()
    x = torch.cat([x0.double().unsqueeze(0), lo + torch.rand((restarts, *lo.shape), generator=gen,
                                                              dtype=torch.float64) * (hi - lo)])
    mask = torch.zeros(10, dtype=torch.bool)
    mask[label] = True
    for it in range(steps + 1):
        x = x.detach().requires_grad_(True)
        out = module64(x)
        margin = out[:, label] - out.masked_fill(mask, -math.inf).amax(1)
        if bool((margin <= 0).any()) or it == steps:
            break
        g, = torch.autograd.grad(margin.sum(), x)
        with torch.no_grad():
            x = torch.minimum(torch.maximum(x - (hi - lo) * 0.25 * 0.97 ** it * g.sign(), lo), hi)
    return "WRONG: PGD found a counterexample" if bool((margin <= 0).any()) else "ok"


def run(nets, lo, hi, timeout, threads, opts=None, done=None, save=None):
    X = torch.as_tensor(np.load(DATA / "X_eran.npy")).float()
    y = torch.as_tensor(np.load(DATA / "y_eran.npy")).long()
    rows = {}
    for name in nets:
        module = eran_module(name)
        net = models.from_module(module, (1, 28, 28), name=name)
        module64 = eran_module(name).double()
        eps = PUBLISHED[name]["eps"]
        res = [r for r in (done or {}).get(name, []) if lo <= r["image"] < hi]
        have = {r["image"] for r in res}
        rows[name] = res
        for i in range(lo, hi):
            if i in have:
                continue
            t = time.monotonic()
            with torch.no_grad():
                pred = int(net(X[i:i + 1]).argmax())
            if pred != int(y[i]):
                res.append(dict(image=i, status="falsified", reason="misclassified", time_s=0.0, domains=0))
            else:
                q = robustness_query(X[i], int(y[i]), eps, 10, clip=(0.0, 1.0), source=f"{name}#{i}")
                v = verify_query(net, q, timeout=timeout, threads=threads, **(opts or {}))
                st = {"unsat": "verified", "sat": "falsified"}.get(v.status, v.status)
                res.append(dict(image=i, status=st, reason=v.reason, time_s=round(time.monotonic() - t, 3),
                                domains=v.domains))
                box = q.specs[0].lower, q.specs[0].upper
                if st == "falsified":
                    res[-1]["check"] = check_falsified(module64, v.counterexample, int(y[i]), *box)
                elif st == "verified":
                    res[-1]["check"] = attack_verified(module64, X[i], int(y[i]), *box)
            r = res[-1]
            print(f"{name} #{i}: {r['status']:<9} {r['time_s']:7.2f} s {r['domains']:7d} domains  "
                  f"{r.get('check', '-')}  {r['reason'][:90]}", flush=True)
            if save is not None:
                save(rows)
    return rows


def summary(rows, timeout):
    out = {}
    for name, res in rows.items():
        c = {k: sum(r["status"] == k for r in res) for k in ("verified", "falsified", "unknown", "timeout")}
        c["checked"] = sum("check" in r for r in res)
        c["wrong"] = sum(r.get("check", "ok") != "ok" for r in res)
        solved = [r["time_s"] for r in res if r["status"] in ("verified", "falsified") and r["reason"] != "misclassified"]
        out[name] = dict(n=len(res), **c, median_s_all=statistics.median([r["time_s"] for r in res]) if res else None,
                         median_s_solved=statistics.median(solved) if solved else None, timeout_s=timeout)
    return out


def _git_head() -> str:
    import subprocess
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except Exception:  # noqa: BLE001 - informational only
        return ""


def write(rows, summ, args, wall, loads=None, runs=None):
    OUT.mkdir(parents=True, exist_ok=True)
    meta = dict(machine=f"{platform.machine()} {os.cpu_count()} logical CPUs (shared with ~5 other jobs), "
                        f"torch {torch.__version__}, {args.threads} thread(s)",
                load=os.getloadavg() if loads is None else max(loads, key=lambda l: l[0]), images=args.images,
                timeout_s=args.timeout, wall_s=round(wall, 1), date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                code=_git_head(), branching=getattr(args, "branching", "") or "default",
                refine=getattr(args, "refine", "") or "default", refine_share=getattr(args, "refine_share", None))
    if runs:
        meta["runs"] = runs
    name = args.out or "complete_verification"
    (OUT / f"{name}.json").write_text(json.dumps(dict(meta=meta, summary=summ, rows=rows), indent=1))
    lines = [f"# Complete verification on the ERAN MNIST networks ({meta['date']})", "",
             f"Machine: {meta['machine']}; load average (1/5/15 min) {tuple(round(x, 1) for x in meta['load'])} "
             f"on its 2 cores, i.e. each run got a fraction of one core: times are wall times under that load. "
             f"Images {args.images} of the ERAN test set, per-image budget {args.timeout:g} s "
             f"(attack -> CROWN -> alpha-CROWN -> beta-CROWN BaB). Published rows: first 1000 images, their hardware "
             f"(β-CROWN: one GPU; PRIMA: GPU + 20 CPUs).", "",
             "| net (eps) | images | verified | falsified | unknown/timeout | wrong (checked) | median s (all) | "
             "DeepPoly % | PRIMA % | β-CROWN % | PGD upper % | alpha-crown (100 img) | alpha-crown (30 img) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for n, s in summ.items():
        p = PUBLISHED[n]
        lines.append(f"| {n} ({p['eps']}) | {s['n']} | {s['verified']} | {s['falsified']} | "
                     f"{s['unknown'] + s['timeout']} | {s.get('wrong', '-')} ({s.get('checked', '-')}) | "
                     f"{s['median_s_all']:.2f} | {p['deeppoly']} | {p['prima']} | "
                     f"{p['beta_crown']} | {p['upper']} | {p['alpha_crown_100']} | {p['alpha_crown_30']} |")
    lines += ["", "Checks: every falsified image's counterexample is re-run through the float64 torch module (not "
              "nncertify's Network) with exact box membership; every verified image is attacked by an independent "
              "float64 PGD (centre + 20 random starts, 100 steps). A failed check counts as wrong. Misclassified "
              "images (the clean image is the counterexample) are not counted as checked."]
    lines += ["", f"Before this branch (session 2, 30 s per image, BaBSR, load ~14): 6x100 {BEFORE['6x100']}, "
              f"9x100 {BEFORE['9x100']}, convsmall {BEFORE['convsmall']} verified / falsified / unknown of 30."]
    lines += ["", "Same kind of 2-core CPU machine, α,β-CROWN 8250d5f (pure β-CROWN BaB, MIP refinement off: no Gurobi "
              "licence), 60 s per image, from ../shared/reference/complete_verification.md §5:", "",
              "| net | images | verified | falsified | unknown | median s |", "|---|---|---|---|---|---|"]
    for n in summ:
        if n in ABCROWN_CPU:
            im, v, f, u, med = ABCROWN_CPU[n]
            lines.append(f"| {n} | {im} | {v} | {f} | {u} | {med} |")
    lines += ["", PROFILE, "", "Per image: `bench/results/" + name + ".json` (commit of each run in `meta`)."]
    (OUT / f"{name}.md").write_text("\n".join(lines) + "\n")


def append_runs(files: list[str], label: str, notes: str = "", into: str = "complete_verification"):
    """Add the runs in ``files`` (result JSONs of earlier invocations, e.g. one per net and --refine mode run
    side by side) to ``bench/results/INTO.json`` under ``extra_runs`` and as a labelled section at the end of
    ``INTO.md``, keeping every earlier row and section."""
    base = OUT / f"{into}.json"
    data = json.loads(base.read_text())
    runs = []
    for f in files:
        d = json.loads(Path(f).read_text())
        runs.append(dict(label=label, file=Path(f).name, meta=d["meta"], summary=d["summary"], rows=d["rows"]))
    data.setdefault("extra_runs", []).extend(runs)
    base.write_text(json.dumps(data, indent=1))
    lines = ["", f"## {label}", "", "| net | refine | code | images | verified | falsified | unknown/timeout | "
             "wrong (checked) | median s (all) | load (1/5/15 min, at the end) | date |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        m = r["meta"]
        for n, s in r["summary"].items():
            imgs = sorted(x["image"] for x in r["rows"][n])
            span = f"{imgs[0]}-{imgs[-1]}" if imgs == list(range(imgs[0], imgs[-1] + 1)) else ",".join(map(str, imgs))
            lines.append(f"| {n} | {m.get('refine', 'default')} | {m['code']} | {span} ({s['n']}) | {s['verified']} | "
                         f"{s['falsified']} | {s['unknown'] + s['timeout']} | {s['wrong']} ({s['checked']}) | "
                         f"{s['median_s_all']:.2f} | {tuple(round(x, 1) for x in m['load'])} | {m['date']} |")
    if notes:
        lines += ["", notes]
    md = OUT / f"{into}.md"
    md.write_text(md.read_text().rstrip("\n") + "\n" + "\n".join(lines) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nets", default="6x100,9x100,convsmall")
    ap.add_argument("--images", default="0:100")
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="")
    ap.add_argument("--branching", default="", help="fsb or babsr (default: verify_query's)")
    ap.add_argument("--refine", default="", help="auto, bab or off: refined intermediate bounds before the search "
                                                 "(relax/bab/refine.py; default: verify_query's, auto)")
    ap.add_argument("--refine-share", type=float, default=None, help="share of the time left after alpha-CROWN "
                                                                      "for the refinement (default: verify_query's)")
    ap.add_argument("--resume", action="store_true", help="keep the images already in bench/results/OUT.json")
    ap.add_argument("--merge", default="", help="comma-separated result JSON files (of earlier runs) to combine "
                                                "into --out instead of running")
    ap.add_argument("--append", default="", help="comma-separated result JSON files to add (rows kept) to "
                                                 "bench/results/complete_verification.json/.md under --label")
    ap.add_argument("--label", default="", help="section title for --append")
    ap.add_argument("--notes", default="", help="a file whose text follows the --append table")
    args = ap.parse_args()
    if args.append:
        append_runs(args.append.split(","), args.label or "Additional runs",
                    Path(args.notes).read_text().strip() if args.notes else "")
        return
    torch.set_num_threads(max(1, args.threads))  # the checks too: many small ops, threads only contend on a loaded machine
    if args.merge:
        rows, metas = {}, []
        for f in args.merge.split(","):
            d = json.loads(Path(f).read_text())
            rows.update(d["rows"])
            metas.append(d["meta"])
        args.images = "; ".join(sorted({m["images"] for m in metas}))
        args.timeout = max(m["timeout_s"] for m in metas)
        write(rows, summary(rows, args.timeout), args, sum(m["wall_s"] for m in metas),
              loads=[m["load"] for m in metas], runs=[{**m, "nets": list(json.loads(Path(f).read_text())["rows"])}
                                                    for f, m in zip(args.merge.split(","), metas)])
        return
    if not DATA.exists():
        sys.exit(f"{DATA} not found")
    a, b = (int(t) for t in args.images.split(":"))
    t0 = time.monotonic()
    opts = {"branching": args.branching} if args.branching else {}
    if args.refine:
        opts["refine"] = args.refine
    if args.refine_share is not None:
        opts["refine_share"] = args.refine_share
    done = None
    prev = OUT / f"{args.out or 'complete_verification'}.json"
    if args.resume and prev.exists():
        done = json.loads(prev.read_text())["rows"]
    save = lambda rows: write(rows, summary(rows, args.timeout), args, time.monotonic() - t0)  # noqa: E731
    rows = run(args.nets.split(","), a, b, args.timeout, args.threads, opts, done, save)
    summ = summary(rows, args.timeout)
    write(rows, summ, args, time.monotonic() - t0)
    print(json.dumps(summ, indent=1))


if __name__ == "__main__":
    main()
