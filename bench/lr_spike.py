"""Learning-rate spike test (Ghosts of Softmax, Table 1 / Fig. 10) and the controller's per-step overhead.

Setup (the paper's ``archgrid`` experiment): scikit-learn digits (inputs /16, stratified 80/20 split),
full-batch Adam at lr 0.015 for 200 steps, one step at step 50 with the learning rate multiplied by
10,000.  Three arms: plain Adam, Adam + ``clip_grad_norm_(1.0)``, and Adam under
:class:`certify.controller.SafeStepController` (clip mode, ρ_a along the *actual* Adam update, on the
training batch = the training set, train-mode BatchNorm statistics, exact JVP).  Metric: median final
test accuracy over the seeds; a seed diverges if its final training loss exceeds 10.

Overhead: per-step CPU and wall time of plain Adam vs. Adam + controller: exact JVP with the default
tangent engine (cached training forward + tangent-only pass), the same through ``torch.compile``, the
old whole-model functorch JVP, and the one-forward finite difference (estimate); interleaved rounds,
medians; plus the GEMM multiply-accumulate count that bounds any exact tangent from below.

Run: ``.venv/bin/python bench/lr_spike.py [--seeds 5] [--steps 200]``; ``--timing-only`` re-measures the
overhead with the cached accuracy runs (no training).
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
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
torch.set_num_threads(1)  # the machine is shared: one thread avoids oversubscription stalls
from nncertify.certify.controller import SafeStepController  # noqa: E402

PUBLISHED = {"MLP+LN": (44.6, 51.5, 93.9), "CNN+BN": (13.4, 10.3, 71.6), "Transformer": (31.8, 38.7, 95.3)}


class MLPLN(nn.Module):
    def __init__(self, dim: int = 64):
        super().__init__()
        layers, d_in = [], 64
        for _ in range(3):
            layers += [nn.Linear(d_in, dim), nn.LayerNorm(dim), nn.GELU()]
            d_in = dim
        self.body, self.head = nn.Sequential(*layers), nn.Linear(dim, 10)

    def forward(self, x):
        return self.head(self.body(x))


class CNNBN(nn.Module):
    def __init__(self, dim: int = 32):
        super().__init__()
        self.c1, self.b1 = nn.Conv1d(1, dim, 3, padding=1), nn.BatchNorm1d(dim)
        self.c2, self.b2 = nn.Conv1d(dim, dim, 3, padding=1), nn.BatchNorm1d(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        h = F.relu(self.b1(self.c1(x.unsqueeze(1))))
        h = F.relu(self.b2(self.c2(h)))
        return self.head(h.mean(-1))


class TinyTransformer(nn.Module):
    """d = 32, one token per image (as in the paper's archgrid), pre-norm attention + GELU FFN."""

    def __init__(self, dim: int = 32):
        super().__init__()
        self.embed, self.qkv, self.out = nn.Linear(64, dim), nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.ffn1, self.ffn2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.n1, self.n2, self.head = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.Linear(dim, 10)
        self.scale = dim ** -0.5

    def forward(self, x):
        h = self.embed(x).unsqueeze(1)
        q, k, v = self.qkv(self.n1(h)).chunk(3, -1)
        h = h + self.out(torch.softmax(q @ k.transpose(-2, -1) * self.scale, -1) @ v)
        h = h + self.ffn2(F.gelu(self.ffn1(self.n2(h))))
        return self.head(h.squeeze(1))


ARMS = ("plain", "clip", "controller", "controller_fd", "nospike")
ARCHS = {"MLP+LN": MLPLN, "CNN+BN": CNNBN, "Transformer": TinyTransformer}


def load_digits():
    from sklearn.datasets import load_digits as ld
    from sklearn.model_selection import train_test_split
    X, y = ld(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X / 16.0, y, test_size=0.2, stratify=y, random_state=0)
    t = lambda a, dt: torch.tensor(a, dtype=dt)  # noqa: E731
    return t(Xtr, torch.float32), t(ytr, torch.long), t(Xte, torch.float32), t(yte, torch.long)


def train(arch: str, arm: str, seed: int, data, steps: int, lr: float, spike_at: int, spike_mul: float):
    Xtr, ytr, Xte, yte = data
    torch.manual_seed(seed)
    model = ARCHS[arch]()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    ctrl = None
    if arm.startswith("controller"):
        ctrl = SafeStepController(model, opt, mode="clip", method="fd" if arm == "controller_fd" else "jvp")
    loss = None
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * spike_mul if (step == spike_at and arm != "nospike") else lr
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(Xtr), ytr)
        loss.backward()
        if arm == "clip":
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    if ctrl is not None:
        ctrl.detach()
    with torch.no_grad():
        # the paper's protocol: forward in train mode (BatchNorm uses the test batch's statistics);
        # buffers are restored so the eval-mode number below is unaffected
        state = {k: v.clone() for k, v in model.state_dict().items()}
        acc_bs = float((model(Xte).argmax(1) == yte).float().mean())
        model.load_state_dict(state)
        model.eval()
        acc = float((model(Xte).argmax(1) == yte).float().mean())
        final_loss = float(F.cross_entropy(model(Xtr), ytr))
        model.train()
        final_loss_bs = float(F.cross_entropy(model(Xtr), ytr))
    out = {"test_acc": acc_bs, "test_acc_eval_mode": acc, "final_train_loss": final_loss_bs
           if np.isfinite(final_loss_bs) else None, "final_train_loss_eval_mode": final_loss if np.isfinite(final_loss)
           else None, "diverged": (not np.isfinite(final_loss_bs)) or final_loss_bs > 10}
    if ctrl is not None:
        spike = ctrl.records[spike_at]
        out.update(spike_r_proposed=spike.r_proposed, spike_scale=spike.scale,
                   max_r_applied=ctrl.summary()["max_r_applied"], clipped_steps=ctrl.summary()["clipped"])
    return out


# glibc settings for the second timing run: keep freed heap memory instead of returning it to the OS, so
# large tensors freed by one pass are not page-faulted back in by the next (jemalloc/tcmalloc do similar)
MALLOC_TUNED = {"MALLOC_MMAP_THRESHOLD_": "4000000000", "MALLOC_TRIM_THRESHOLD_": "4000000000",
                "MALLOC_TOP_PAD_": "268435456"}

TIMING_ARMS = {  # arm -> SafeStepController kwargs (None: plain Adam)
    "plain": None,
    "jvp": dict(method="jvp"),                                   # exact, default engine: cached forward + tangent
    "jvp_compiled": dict(method="jvp", compile_tangent=True),    # exact, tangent pass through torch.compile
    "jvp_functorch": dict(method="jvp", engine="functorch"),     # exact, whole-model torch.func JVP (old path)
    "fd": dict(method="fd"),                                     # estimate: one extra forward
    "no_tangent": dict(method="jvp"),                            # timing only: everything but the tangent pass
}


class _NoTangentController(SafeStepController):
    """Timing only (arm ``no_tangent``, never a certificate): the default controller with its tangent pass
    replaced by a zero logit tangent, so the step is applied unchanged (radius "unbounded") -- it measures
    what the controller costs besides the tangent: the traced training forward and its capture, the θ_old
    snapshot, p and its float64 norm, the radius reductions and the record."""

    def _tangent_radius(self, delta, tau):
        cap, self._cap = self._cap, None
        if cap is None or self._batch is None or self._batch[2] is None:
            return None, "no capture"
        return torch.zeros_like(self._batch[2]) / tau, ""


def gemm_macs(model: nn.Module, X: torch.Tensor) -> dict:
    """Multiply-accumulates per step in Linear/Conv layers (the FLOP floor of both a step and a tangent).

    A plain step does, per layer, the forward ``W·h``, the weight gradient and -- when ``h`` depends on the
    parameters -- the input gradient.  An exact tangent needs ``ΔW·h`` and -- when ``h`` depends on the
    parameters -- ``W·ḣ``.  Attention products of one token are negligible and not counted."""
    rows = []

    def hook(mod, inp, out):
        per = mod.in_features if isinstance(mod, nn.Linear) else \
            (mod.in_channels // mod.groups) * int(np.prod(mod.kernel_size))
        rows.append((out.numel() * per, bool(inp[0].requires_grad)))

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    try:
        model(X)
    finally:
        for h in hs:
            h.remove()
    plain = sum(m * (2 + dep) for m, dep in rows)
    tangent = sum(m * (1 + dep) for m, dep in rows)
    return {"plain_step_macs": plain, "tangent_macs": tangent, "ratio": tangent / plain}


def time_overhead(arch: str, data, rounds: int, k: int, arms=tuple(TIMING_ARMS)):
    """Per-step time of each arm: interleaved rounds of ``k`` steps, medians of wall and thread-CPU time.

    CPU time (``time.thread_time``, one torch thread) is the robust number on a shared machine: it does not
    count time spent waiting for a core.  Warm-up steps (including ``torch.compile``) are not timed."""
    Xtr, ytr, _, _ = data
    wall, cpu, setups, warm = {}, {}, {}, {}
    for arm in arms:
        torch.manual_seed(0)
        m = ARCHS[arch]()
        o = torch.optim.Adam(m.parameters(), lr=1e-3)
        kw = TIMING_ARMS[arm]
        cls = _NoTangentController if arm == "no_tangent" else SafeStepController
        c = None if kw is None else cls(m, o, keep_records=True, **kw)
        setups[arm] = (m, o, c)
        wall[arm], cpu[arm] = [], []

    def step(m, o):
        o.zero_grad(set_to_none=True)
        F.cross_entropy(m(Xtr), ytr).backward()
        o.step()

    for arm in arms:  # warm-up (first capture validates the trace; compiled arms compile here)
        t0 = time.perf_counter()
        for _ in range(3):
            step(*setups[arm][:2])
        warm[arm] = time.perf_counter() - t0
    for _ in range(rounds):
        for arm in arms:
            m, o, _ = setups[arm]
            t0, c0 = time.perf_counter(), time.thread_time()
            for _ in range(k):
                step(m, o)
            wall[arm].append((time.perf_counter() - t0) / k)
            cpu[arm].append((time.thread_time() - c0) / k)
    # the tangent pass alone, warm (repeated on one captured forward): its algorithmic cost without the
    # cache misses it meets inside a step (right after the backward and the optimizer)
    iso = None
    if "jvp" in setups:
        from nncertify.certify.ghosts import _first_tensor
        m, _, c = setups["jvp"]
        prog = next((p for p in c._programs.values() if hasattr(p, "tangent")), None)
        if prog is not None:
            _, cap = prog.capture(Xtr)
            g = torch.Generator().manual_seed(0)
            d = {n: torch.randn(p.shape, generator=g) * 1e-3 for n, p in m.named_parameters()}
            prog.tangent(cap, {}, d, _first_tensor)
            best = math.inf
            for _ in range(5):
                c0 = time.thread_time()
                for _ in range(k):
                    prog.tangent(cap, {}, d, _first_tensor)
                best = min(best, (time.thread_time() - c0) / k)
            iso = 1e3 * best
            del cap
    mw = {a: statistics.median(v) for a, v in wall.items()}
    mc = {a: statistics.median(v) for a, v in cpu.items()}
    engines, reasons = {}, {}
    for arm, (_, _, c) in setups.items():
        if c is not None:
            recs = c.records[3:]  # timed steps only
            engines[arm] = sorted({r.engine for r in recs})
            reasons[arm] = sorted({r.fallback_reason for r in recs if r.fallback_reason})
            if arm == "jvp_compiled":
                errs = [p.compile_error for p in c._programs.values() if getattr(p, "compile_error", "")]
                reasons[arm] += errs
            c.records.clear()
    return {"ms_per_step": {a: 1e3 * v for a, v in mw.items()},
            "cpu_ms_per_step": {a: 1e3 * v for a, v in mc.items()},
            "overhead_wall": {a: mw[a] / mw["plain"] - 1 for a in arms if a != "plain"},
            "overhead_cpu": {a: mc[a] / mc["plain"] - 1 for a in arms if a != "plain"},
            "warmup_s": warm, "engines": engines, "fallback_reasons": reasons, "tangent_pass_warm_cpu_ms": iso,
            "gemm_macs": gemm_macs(setups["plain"][0], Xtr),
            # back-compatible keys
            "overhead_jvp": mw["jvp"] / mw["plain"] - 1, "overhead_fd": mw["fd"] / mw["plain"] - 1}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--seeds-cnn", type=int, default=3,
                    help="seeds for CNN+BN (its full-batch conv steps dominate the run time on 2 shared cores)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=0.015)
    ap.add_argument("--spike-at", type=int, default=50)
    ap.add_argument("--spike-mul", type=float, default=1e4)
    ap.add_argument("--timing-rounds", type=int, default=7)
    ap.add_argument("--timing-steps", type=int, default=10)
    ap.add_argument("--timing-steps-cnn", type=int, default=3,
                    help="steps per timing round for CNN+BN (its full-batch step takes ~0.1-0.2 s)")
    ap.add_argument("--timing-json", default=None, help=argparse.SUPPRESS)  # internal: timing only, to this file
    ap.add_argument("--no-malloc-variant", action="store_true",
                    help="skip the second timing run under a tuned glibc allocator (MALLOC_TUNED env)")
    ap.add_argument("--timing-only", action="store_true",
                    help="do not train: take the accuracy runs from lr_spike.runs.json (error if one is missing) "
                         "and re-measure only the per-step overhead")
    args = ap.parse_args()
    data = load_digits()
    if args.timing_json:
        tim = {arch: time_overhead(arch, data, args.timing_rounds,
                                   args.timing_steps_cnn if arch == "CNN+BN" else args.timing_steps) for arch in ARCHS}
        Path(args.timing_json).write_text(json.dumps(tim))
        return
    t_start = time.time()
    results = {}
    rdir = Path(__file__).resolve().parent / "results"
    rdir.mkdir(exist_ok=True)
    cache_path = rdir / "lr_spike.runs.json"  # resumable: finished (arch, arm, seed) runs
    key = f"v2-{args.steps}-{args.lr}-{args.spike_at}-{args.spike_mul}"
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    cache = cache if cache.get("key") == key else {"key": key}
    for arch in ARCHS:
        results[arch] = {}
        for arm in ARMS:
            runs = []
            for s in range(args.seeds_cnn if arch == "CNN+BN" else args.seeds):
                k = f"{arch}|{arm}|{s}"
                if k not in cache and args.timing_only:
                    raise SystemExit(f"--timing-only: run {k!r} is not in {cache_path} (run without the flag first)")
                if k not in cache:
                    t0 = time.time()
                    cache[k] = train(arch, arm, s, data, args.steps, args.lr, args.spike_at, args.spike_mul)
                    cache[k]["seconds"] = time.time() - t0
                    cache_path.write_text(json.dumps(cache))
                runs.append(cache[k])
            accs = [r["test_acc"] for r in runs]
            results[arch][arm] = {"median_test_acc": 100 * statistics.median(accs),
                                  "median_test_acc_eval_mode": 100 * statistics.median(
                                      [r["test_acc_eval_mode"] for r in runs]),
                                  "iqr": [100 * float(np.percentile(accs, 25)), 100 * float(np.percentile(accs, 75))],
                                  "divergent_seeds": sum(r["diverged"] for r in runs), "runs": runs}
            print(arch, arm, f"{results[arch][arm]['median_test_acc']:.1f}%", flush=True)
    timing = {}
    load = os.getloadavg()
    for arch in ARCHS:
        timing[arch] = t = time_overhead(arch, data, args.timing_rounds,
                                         args.timing_steps_cnn if arch == "CNN+BN" else args.timing_steps)
        print(arch, "cpu ms", {k: round(v, 2) for k, v in t["cpu_ms_per_step"].items()},
              "overhead (cpu)", {k: f"{100 * v:+.0f}%" for k, v in t["overhead_cpu"].items()},
              "engines", t["engines"], flush=True)
    timing_malloc = None
    if not args.no_malloc_variant:  # same timing in a child process whose glibc never trims or mmaps the heap
        import subprocess
        import tempfile
        with tempfile.TemporaryDirectory() as td:
            tj = Path(td) / "timing.json"
            cmd = [sys.executable, __file__, "--timing-json", str(tj), "--timing-rounds", str(args.timing_rounds),
                   "--timing-steps", str(args.timing_steps), "--timing-steps-cnn", str(args.timing_steps_cnn)]
            subprocess.run(cmd, check=True, env={**os.environ, **MALLOC_TUNED})
            timing_malloc = json.loads(tj.read_text())
        for arch, t in timing_malloc.items():
            print(arch, "[tuned malloc] overhead (cpu)", {k: f"{100 * v:+.0f}%" for k, v in t["overhead_cpu"].items()},
                  flush=True)
    hw = {"processor": platform.processor() or platform.machine(), "cores": os.cpu_count(),
          "torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version()}
    train_s = sum(r.get("seconds", 0.0) for a in results.values() for v in a.values() for r in v["runs"])
    out = {"benchmark": "lr_spike", "hardware": hw, "config": vars(args), "published": PUBLISHED,
           "results": results, "timing": timing, "timing_malloc_tuned": timing_malloc, "malloc_tuned_env": MALLOC_TUNED,
           "wall_s": time.time() - t_start, "train_s_total": train_s}
    (rdir / "lr_spike.json").write_text(json.dumps(out, indent=1))
    lines = ["# LR spike test (Ghosts of Softmax, Table 1) and controller overhead", "",
             f"Hardware: {hw['processor']}, {hw['cores']} cores ({hw['threads']} torch threads, shared with other "
             f"jobs), torch {hw['torch']}. Training time summed over runs {train_s:.0f} s (runs cached in "
             "lr_spike.runs.json, so a run may span invocations).", "",
             f"Setup: sklearn digits, stratified 80/20 split, full-batch Adam lr {args.lr}, {args.steps} steps, "
             f"x{args.spike_mul:g} learning rate at step {args.spike_at} (one step), {args.seeds} seeds "
             f"(0..n-1; CNN+BN: {args.seeds_cnn} seeds, scaled down to fit the time budget on 2 shared cores). Controller: clip mode, exact JVP along the actual Adam update, rho_a on the full "
             "training batch, train-mode BatchNorm statistics.", "",
             "## Median final test accuracy (%) [IQR], divergent seeds (final loss > 10)", "",
             "Test accuracy as in the paper's code: forward in train mode, i.e. BatchNorm normalizes with the "
             "test batch's own statistics (running statistics restored afterwards). 'no spike' = plain Adam "
             "without the spike (reference level).", "",
             "| architecture | plain Adam | Adam + clip 1.0 | rho_a controller (jvp) | rho_a controller (fd) | no spike | published (plain / clip / ctrl) |",
             "|---|---|---|---|---|---|---|"]
    for arch in ARCHS:
        cells = []
        for arm in ARMS:
            r = results[arch][arm]
            cells.append(f"{r['median_test_acc']:.1f} [{r['iqr'][0]:.1f}-{r['iqr'][1]:.1f}], div {r['divergent_seeds']}")
        p = PUBLISHED[arch]
        lines.append(f"| {arch} | " + " | ".join(cells) + f" | {p[0]} / {p[1]} / {p[2]} |")
    lines += ["", "Same runs, test accuracy in eval mode (BatchNorm running statistics; only CNN+BN differs):", "",
              "| architecture | " + " | ".join(ARMS) + " |", "|---" * (len(ARMS) + 1) + "|"]
    for arch in ARCHS:
        lines.append(f"| {arch} | " + " | ".join(f"{results[arch][a]['median_test_acc_eval_mode']:.1f}"
                                                  for a in ARMS) + " |")
    lines += ["", "Spike step under the controller (per seed): proposed r = ||p||/rho_a and the applied scale:", ""]
    for arch in ARCHS:
        runs = results[arch]["controller"]["runs"]
        lines.append(f"- {arch}: r_proposed = " + ", ".join(f"{r['spike_r_proposed']:.3g}" for r in runs)
                     + "; scale = " + ", ".join(f"{r['spike_scale']:.2g}" for r in runs)
                     + "; max applied r = " + ", ".join(f"{r['max_r_applied']:.6f}" for r in runs))
    lines += ["", "## Controller overhead per step (full-batch Adam step on 1,437 samples)", "",
              f"Median over {args.timing_rounds} interleaved rounds of {args.timing_steps} steps "
              f"(CNN+BN: {args.timing_steps_cnn}), after 3 warm-up steps per arm. **CPU** = thread CPU time "
              "(one torch thread; it does not count time spent waiting for a core, so it is the robust number on "
              "this shared machine), **wall** = elapsed time. Overheads are relative to plain Adam in the same "
              "column. Arms: `jvp` = exact JVP, default engine (the training forward's cached activations + a "
              "tangent-only pass, `certify/tangent.py`); `jvp compiled` = the same tangent pass through "
              "`torch.compile` (`compile_tangent=True`); `jvp functorch` = the previous exact path (whole-model "
              "`torch.func` JVP, recomputes the forward); `fd` = one extra forward, an *estimate*.", "",
              "| architecture | plain Adam ms (cpu / wall) | jvp (tangent) | jvp compiled | jvp functorch (old) | fd (estimate) |",
              "|---|---|---|---|---|---|"]
    for arch, t in timing.items():
        mc, mw, oc, ow = t["cpu_ms_per_step"], t["ms_per_step"], t["overhead_cpu"], t["overhead_wall"]
        cell = lambda a: f"{mc[a]:.2f} / {mw[a]:.2f} ms: **{100 * oc[a]:+.0f}%** cpu, {100 * ow[a]:+.0f}% wall"  # noqa: E731
        lines.append(f"| {arch} | {mc['plain']:.2f} / {mw['plain']:.2f} | {cell('jvp')} | {cell('jvp_compiled')} | "
                     f"{cell('jvp_functorch')} | {cell('fd')} |")
    if timing_malloc is not None:
        lines += ["", "Same measurement in a child process with a tuned glibc allocator (" +
                  ", ".join(f"`{k}={v}`" for k, v in MALLOC_TUNED.items()) + "): freed heap memory is kept, so "
                  "tensors of many MB (CNN+BN: 11.7 MB per activation) are not page-faulted in again on every "
                  "pass. This is the usual CPU tuning (jemalloc/tcmalloc do the same); it helps every arm, the "
                  "allocation-heavy tangent pass most:", "",
                  "| architecture | plain Adam ms (cpu / wall) | jvp (tangent) | jvp compiled | jvp functorch (old) | fd (estimate) |",
                  "|---|---|---|---|---|---|"]
        for arch, t in timing_malloc.items():
            mc, mw, oc, ow = t["cpu_ms_per_step"], t["ms_per_step"], t["overhead_cpu"], t["overhead_wall"]
            cell = lambda a: f"{mc[a]:.2f} / {mw[a]:.2f} ms: **{100 * oc[a]:+.0f}%** cpu, {100 * ow[a]:+.0f}% wall"  # noqa: E731
            lines.append(f"| {arch} | {mc['plain']:.2f} / {mw['plain']:.2f} | {cell('jvp')} | {cell('jvp_compiled')} | "
                         f"{cell('jvp_functorch')} | {cell('fd')} |")
    lines += ["", "Engines actually used in the timed steps (from the step records) and one-time warm-up "
              "(3 steps; includes the trace check and, for the compiled arm, compilation):", ""]
    for arch, t in timing.items():
        fb = {a: r for a, r in t["fallback_reasons"].items() if r}
        lines.append(f"- {arch}: " + ", ".join(f"{a} -> {'/'.join(e)}" for a, e in t["engines"].items()
                                               if a != "no_tangent")
                     + "; warm-up s: " + ", ".join(f"{a} {v:.1f}" for a, v in t["warmup_s"].items())
                     + (f"; fallbacks: {fb}" if fb else ""))
    lines += ["", "### Lower bound for an exact tangent (GEMM multiply-accumulates per step)", "",
              "A plain step does, per Linear/Conv layer, the forward `W·h`, the weight gradient and (when `h` "
              "depends on the parameters) the input gradient; an exact JVP needs `ΔW·h` and (same condition) "
              "`W·ḣ`. Reusing the training forward removes only the primal recomputation, so the tangent "
              "still costs about as much as a backward pass:", "",
              "| architecture | step MACs | tangent MACs | tangent / step |", "|---|---|---|---|"]
    for arch, t in timing.items():
        g = t["gemm_macs"]
        lines.append(f"| {arch} | {g['plain_step_macs'] / 1e6:.0f} M | {g['tangent_macs'] / 1e6:.0f} M | "
                     f"{100 * g['ratio']:.0f}% |")
    lines += ["", "| architecture | allocator | tangent pass alone, warm (cpu ms) | as % of a plain step | "
              "best exact arm in the step (cpu) | below +50%? |", "|---|---|---|---|---|---|"]
    for label, tim in (("default", timing), ("tuned", timing_malloc)):
        for arch, t in (tim or {}).items():
            oc, mc = t["overhead_cpu"], t["cpu_ms_per_step"]
            best = min(("jvp", "jvp_compiled"), key=lambda a: oc[a])
            iso = t["tangent_pass_warm_cpu_ms"]
            iso_s = f"{iso:.2f}" if iso is not None else "n/a"
            pct = f"{100 * iso / mc['plain']:.0f}%" if iso is not None else "n/a"
            verdict = "yes" if oc[best] < 0.5 else f"no, by {100 * (oc[best] - 0.5):.1f} points"
            lines.append(f"| {arch} | {label} | {iso_s} | {pct} | {best}: {100 * oc[best]:+.1f}% | {verdict} |")
    met = [f"{arch} ({label} allocator)" for label, tim in (("default", timing), ("tuned", timing_malloc))
           for arch, t in (tim or {}).items() if min(t["overhead_cpu"]["jvp"], t["overhead_cpu"]["jvp_compiled"]) < 0.5]
    lines += ["", "Reading these numbers:", "",
              "- Reusing the training forward (no primal recomputation) and a lean controller cut the exact "
              "path's overhead roughly in half relative to the whole-model functorch JVP, with the same "
              "certified radii. The issue's +50% target (CPU time) is met by an exact arm for: "
              + (", ".join(met) if met else "none") + "; otherwise not (last column). The finite difference "
              "(an estimate, not a certificate) is below it.",
              "- Floor: the tangent needs ~63-66% of a step's GEMM multiply-accumulates (table above), i.e. "
              "about a backward pass. On this CPU the steps are not GEMM-bound but memory- and dispatch-bound "
              "in the elementwise layers (LayerNorm/BatchNorm/GELU/ReLU on 1,437 x 64 (x 64) tensors). The "
              "eager rules use PyTorch's backward kernels where the Jacobian is symmetric (LayerNorm: its "
              "backward kernel plus four elementwise passes), let an activation overwrite the normalization "
              "tangent it alone consumes, compute a data-input Conv/Linear followed by a train-mode BatchNorm "
              "as one layer call (the batch reductions in closed form from the data's patch covariance) and "
              "release cached activations during the pass; inside a step the pass still runs cache-cold right "
              "after the backward and the optimizer -- compare the warm tangent pass with the in-step "
              "overhead. `compile_tangent=True` fuses the elementwise chains (Inductor; Linear products as "
              "batched GEMMs so that bias and partial sums are fused rather than copied into each product, "
              "GELU's derivative from the forward's own output without erf) and is the faster exact arm; it "
              "costs a few seconds of compilation once per model and input shape.",
              "- The controller's work besides the tangent pass (arm `no_tangent`, timing only: the tangent is "
              "replaced by a zero logit tangent; it keeps the traced forward and its capture, the θ_old "
              "snapshot into a flat buffer, p and its float64 norm, the radius reductions and the record) "
              "costs (cpu, default / tuned allocator) " + ", ".join(
                  f"{arch} {100 * t['overhead_cpu']['no_tangent']:+.0f}% "
                  f"({t['cpu_ms_per_step']['no_tangent'] - t['cpu_ms_per_step']['plain']:.2f} ms)"
                  + (f" / {100 * timing_malloc[arch]['overhead_cpu']['no_tangent']:+.0f}%"
                     if timing_malloc and "no_tangent" in timing_malloc.get(arch, {}).get("overhead_cpu", {}) else "")
                  for arch, t in timing.items() if "no_tangent" in t["overhead_cpu"]) +
              ". On MLP+LN/Transformer this is mostly Python and small-tensor dispatch running cache-cold "
              "after the backward; on CNN+BN with the default allocator it also includes page faults that vary "
              "from run to run (the capture keeps the activations the tangent reads past the backward, so the "
              "backward's large gradients cannot reuse their memory), which the tuned allocator removes.",
              "- Allocator: with glibc defaults, fresh large tensors (CNN+BN: 11.7 MB per activation) are "
              "page-faulted in again whenever the heap was trimmed, so the CNN+BN numbers depend on the "
              "allocation history of all arms (the jvp arm's backward slows down too). The tangent pass now "
              "allocates fewer of them (BatchNorm outputs are not kept, activations are written in place, the "
              "first conv+BN is one call, cached values are released during the pass); the tuned-allocator "
              "table removes the effect for all arms.",
              "", "Paper (ResNet-18/CIFAR-10, GPU): +66% with finite differences, +129% with an exact JVP.", "",
              "Accuracy runs above: cached in lr_spike.runs.json, produced earlier with the whole-model functorch "
              "JVP; the tangent engine gives the same radii up to float rounding (tests/test_tangent.py compares "
              "them step by step), so they were not re-trained. The machine (2 cores) was shared with other "
              f"jobs during the timing (1-minute load average {load[0]:.1f} when it started): CPU-time medians "
              "are the robust numbers, and repeated runs moved individual overheads by several points (CNN+BN "
              "with the default allocator: by 10-20)."]
    (rdir / "lr_spike.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
