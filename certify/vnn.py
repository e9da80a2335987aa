"""The VNN-COMP interface: ONNX + VNN-LIB in, result files out.

One instance (``certify vnnlib NET.onnx PROP.vnnlib``): load the network with our importer, check it
against onnxruntime at a few points of the property's boxes, parse the property
(:mod:`relax.vnnlib`), decide it with :func:`relax.spec.verify_query` within the time limit, and
*re-check* every ``sat`` before it is reported:

* the witness ``x`` is clipped into the box of its specification in float64, then moved to a point
  that the ONNX input dtype (float32) represents exactly while staying inside the box;
* the network, evaluated in float64 at ``x``, must satisfy every row ``C f(x) <= d`` of the
  specification, and so must onnxruntime's output at the same ``x`` (an independent runtime);
* a witness that fails either check turns the answer into ``unknown`` with the reason.

The result file is VNN-COMP's (2022+ words): ``unsat`` (the property holds), ``sat`` followed by the
witness ``((X_0 v)`` ... ``(Y_0 v))`` (inputs in flat C order, then onnxruntime's outputs, every value
written with Python's shortest round-trip ``repr``), ``unknown`` or ``timeout``.

A whole benchmark (``certify vnncomp INSTANCES.csv``) runs each ``onnx,vnnlib,timeout`` row in a
worker process that is killed when it overruns its limit (then ``timeout``), appends one row per
finished instance to the results CSV (flushed and fsynced: a killed run resumes where it stopped) and
writes every witness to a ``.counterexamples`` folder beside it.
"""

from __future__ import annotations

import csv
import io
import math
import multiprocessing as mp
import os
import statistics
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..models.errors import InvalidArgumentError, ModelLoadError, NNCertifyError

RESULTS = ("unsat", "sat", "unknown", "timeout", "error")
HEADER = ["onnx", "vnnlib", "timeout_s", "result", "time_s", "reason"]
MISMATCH_TOL = 1e-3  # |ours - onnxruntime| <= tol * (1 + |onnxruntime|) at the load-time check points


# ------------------------------------------------------------------------------------------ onnxruntime
class OnnxRuntimeModel:
    """An ONNX file run by onnxruntime on one point at a time (inputs and outputs flat, float64)."""

    def __init__(self, path: str | Path):
        try:
            import onnxruntime as ort
        except ImportError:  # a declared dependency; say so rather than fail deep inside
            raise ModelLoadError("onnxruntime is not installed (pip install onnxruntime): it re-checks every "
                                 "counterexample") from None
        self.path = Path(path)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(f"{path}: onnxruntime cannot load it ({msg[:200]})") from None
        ins = self.session.get_inputs()
        if not ins:
            raise ModelLoadError(f"{path}: onnxruntime sees no input")
        # several inputs: x is their concatenation, each flattened row-major, in declaration order
        # (the importer's convention, models/onnx_import.py)
        self.input_names = [i.name for i in ins]
        self.shapes = [tuple(d if isinstance(d, int) and d > 0 else 1 for d in i.shape) for i in ins]
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        self.input_name, self.shape = self.input_names[0], self.shapes[0]
        types = {i.type for i in ins}
        self.dtype = {"tensor(float)": np.float32, "tensor(double)": np.float64,
                      "tensor(float16)": np.float16}.get(ins[0].type)
        if self.dtype is None or len(types) > 1:
            bad = next(i for i in ins if i.type != "tensor(float)" or self.dtype is None)
            raise ModelLoadError(f"{path}: input {bad.name!r} has type {bad.type}; expected float, the same for "
                                 f"every input")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        flat = np.asarray(x, dtype=np.float64).astype(self.dtype).reshape(-1)
        if flat.size != sum(self.sizes):
            raise ModelLoadError(f"{self.path}: {flat.size} input values given, the model's inputs "
                                 f"{', '.join(self.input_names)} take {sum(self.sizes)}")
        feed, off = {}, 0
        for name, shape, size in zip(self.input_names, self.shapes, self.sizes):
            feed[name] = flat[off:off + size].reshape(shape)
            off += size
        out = self.session.run(None, feed)[0]
        return np.asarray(out, dtype=np.float64).reshape(-1)


def representable_point(x: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, dtype) -> torch.Tensor:
    """``x`` clipped into ``[lower, upper]`` (float64), then moved to the nearest value the input dtype
    holds exactly that is still inside the box; entries where the box contains no such value (a
    degenerate box at a non-representable bound) keep their float64 value."""
    x64 = torch.minimum(torch.maximum(x.detach().to(torch.float64).cpu(), lower.cpu()), upper.cpu())
    tdt = {np.float32: torch.float32, np.float16: torch.float16}.get(dtype)
    if tdt is None:
        return x64
    lo, hi = lower.cpu(), upper.cpu()
    xr = x64.to(tdt)
    up = torch.nextafter(xr, torch.full_like(xr, math.inf))
    dn = torch.nextafter(xr, torch.full_like(xr, -math.inf))
    xr = torch.where(xr.double() < lo, up, xr)
    xr = torch.where(xr.double() > hi, dn, xr)
    inside = (xr.double() >= lo) & (xr.double() <= hi)
    return torch.where(inside, xr.double(), x64)


def _violation(C: torch.Tensor, d: torch.Tensor, y: torch.Tensor) -> float:
    """``max_k (C_k y - d_k)`` in float64 (``-inf`` for a specification without rows)."""
    if C.shape[0] == 0:
        return -math.inf
    return float((C.double().cpu() @ y.double().cpu() - d.double().cpu()).max())


def recheck(net, query, verdict, runtime: OnnxRuntimeModel | None = None):
    """Re-check a ``sat`` verdict (see the module docstring); other verdicts pass through.

    Returns a :class:`relax.spec.Verdict`: ``sat`` with the re-checked witness (``counterexample`` in
    float64, input shape; ``output`` = onnxruntime's output when ``runtime`` is given, else the
    model's float64 output) or ``unknown`` with the reason the witness failed."""
    from ..relax.spec import Verdict

    if verdict.status != "sat":
        return verdict
    if verdict.counterexample is None:
        return Verdict("unknown", time_s=verdict.time_s, domains=verdict.domains,
                       reason=f"the engine answered sat ({verdict.reason}) without a counterexample")
    order = list(range(len(query.specs)))
    if verdict.spec_index is not None and 0 <= verdict.spec_index < len(order):
        order.remove(verdict.spec_index)
        order.insert(0, verdict.spec_index)
    net64 = net if net.dtype == torch.float64 else net.to(dtype=torch.float64)
    net64 = net64.to(device="cpu") if net64.device.type != "cpu" else net64
    why = []
    for i in order:
        s = query.specs[i]
        x = representable_point(verdict.counterexample.reshape(s.lower.shape), s.lower, s.upper,
                                runtime.dtype if runtime is not None else None)
        if not bool(((x >= s.lower.cpu()) & (x <= s.upper.cpu())).all()):
            why.append(f"spec {i}: witness outside the box")
            continue
        with torch.no_grad():
            y64 = net64(x.unsqueeze(0)).reshape(-1)
        v_model = _violation(s.C, s.d, y64)
        if not v_model <= 0:
            why.append(f"spec {i}: the float64 model violates it by {v_model:.3g}")
            continue
        y_out = y64
        if runtime is not None:
            y_rt = torch.from_numpy(runtime(x.numpy()))
            v_rt = _violation(s.C, s.d, y_rt)
            if not v_rt <= 0:
                why.append(f"spec {i}: onnxruntime's output misses it by {v_rt:.3g} (float64 model: {v_model:.3g})")
                continue
            y_out = y_rt
        src = verdict.reason or "engine"
        checked = "float64 model and onnxruntime" if runtime is not None else "float64 model"
        return Verdict("sat", x, y_out, verdict.time_s, verdict.domains, f"{src}; re-checked by the {checked}", i)
    return Verdict("unknown", time_s=verdict.time_s, domains=verdict.domains,
                   reason=f"a counterexample ({verdict.reason}) failed the re-check: {'; '.join(why[:3])}")


# ------------------------------------------------------------------------------------------ one instance
@dataclass
class InstanceResult:
    result: str                      # unsat | sat | unknown | timeout
    time_s: float
    reason: str = ""
    witness_x: list[float] | None = None
    witness_y: list[float] | None = None
    verdict: object = None           # the relax.spec.Verdict (None when decided without the engine)
    notes: list[str] = field(default_factory=list)

    def text(self) -> str:
        """The VNN-COMP result file."""
        if self.result != "sat":
            return self.result + "\n"
        pairs = [f"(X_{i} {float(v)!r})" for i, v in enumerate(self.witness_x)]
        pairs += [f"(Y_{j} {float(v)!r})" for j, v in enumerate(self.witness_y)]
        return "sat\n(" + "\n ".join(pairs) + ")\n"


def load_network(path: str | Path):
    """(network, onnxruntime model or None).  ONNX files go through our importer and onnxruntime;
    other formats the loader knows (.json, .pt, ...) have no independent runtime."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if path.suffix.lower() == ".onnx":
        from ..models.onnx_import import load_onnx
        net = load_onnx(path)
        net.check_finite()
        return net, OnnxRuntimeModel(path)
    from ..models import load_model
    return load_model(path).network, None


def check_against_runtime(net, runtime: OnnxRuntimeModel, query, points: int = 3, seed: int = 0) -> float:
    """Compare our network with onnxruntime at each box's centre and ``points`` random points of the
    first box; raise :class:`ModelLoadError` on a mismatch (an importer bug would make every answer
    about the wrong function).  Returns the largest difference seen."""
    gen = torch.Generator().manual_seed(seed)
    xs = [((s.lower + s.upper) / 2).cpu() for s in query.specs[:8]]
    if query.specs:
        s = query.specs[0]
        for _ in range(points):
            t = torch.rand(s.lower.shape, generator=gen, dtype=torch.float64)
            xs.append((s.lower.cpu() + t * (s.upper - s.lower).cpu()))
    if not xs:
        shape = net.input_shape
        xs = [torch.rand(shape, generator=gen, dtype=torch.float64) for _ in range(points)]
    worst = 0.0
    net32 = net.to(device="cpu")
    for x in xs:
        xr = x.double() if runtime.dtype == np.float64 else x.to(torch.float32).double()
        y_rt = runtime(xr.numpy())
        with torch.no_grad():
            y = net32(xr.to(net32.dtype).unsqueeze(0)).double().reshape(-1).numpy()
        if y.shape != y_rt.shape:
            raise ModelLoadError(f"{runtime.path}: our import has {y.size} outputs, onnxruntime {y_rt.size}")
        diff = np.abs(y - y_rt)
        bad = diff > MISMATCH_TOL * (1 + np.abs(y_rt))
        worst = max(worst, float(diff.max(initial=0.0)))
        if bad.any() or not np.isfinite(y).all():
            raise ModelLoadError(f"{runtime.path}: the imported network disagrees with onnxruntime (max |diff| "
                                 f"{diff.max():.3g} at output {int(diff.argmax())}); refusing to verify it")
    return worst


def run_instance(onnx_path: str | Path, vnnlib_path: str | Path, timeout: float, *, device=None,
                 engine_opts: dict | None = None) -> InstanceResult:
    """Decide one VNN-COMP instance within ``timeout`` seconds of wall time (loading included).

    Bad input (unreadable ONNX or VNN-LIB, sizes that do not fit) raises an :class:`NNCertifyError`
    naming the file; everything else ends in a result."""
    from ..relax.spec import Verdict, verify_query
    from ..relax.vnnlib import read_vnnlib, to_query

    t0 = time.monotonic()
    if not (timeout > 0):
        raise InvalidArgumentError(f"--timeout must be positive, got {timeout}")
    net, runtime = load_network(onnx_path)
    spec = read_vnnlib(vnnlib_path)
    query = to_query(spec, net.input_shape, int(np.prod(net.output_shape)))
    notes = []
    if runtime is not None:
        worst = check_against_runtime(net, runtime, query)
        notes.append(f"import matches onnxruntime (max |diff| {worst:.2g})")
    else:
        notes.append("not an ONNX file: counterexamples re-checked by the float64 model only")
    if not query.specs:
        return InstanceResult("unsat", time.monotonic() - t0, "every disjunct of the property has an empty input set",
                              notes=notes)
    empty_rows = [i for i, s in enumerate(query.specs) if s.C.shape[0] == 0]
    if empty_rows:  # a clause with input constraints only: every point of its box is a counterexample
        s = query.specs[empty_rows[0]]
        verdict = Verdict("sat", (s.lower + s.upper) / 2, None, 0.0, 0, "input constraints only", empty_rows[0])
    else:
        left = timeout - (time.monotonic() - t0)
        if left <= 0:
            return InstanceResult("timeout", time.monotonic() - t0, "time limit reached while loading", notes=notes)
        verdict = verify_query(net, query, timeout=left, device=device, **(engine_opts or {}))
    # re-check inside the box rounded *inward* (the engine's box is rounded outward and may hold points
    # just outside the decimal box), then every row exactly over the rationals (relax.vnnlib.Disjunct.holds)
    verdict = recheck(net, to_query(spec, net.input_shape, int(np.prod(net.output_shape)), inner=True), verdict,
                      runtime)
    if verdict.status == "sat":
        dj = spec.disjuncts[verdict.spec_index]
        if not dj.holds(verdict.counterexample.reshape(-1).cpu().numpy(), verdict.output.reshape(-1).cpu().numpy()):
            verdict = Verdict("unknown", time_s=verdict.time_s, domains=verdict.domains,
                              reason=f"a counterexample ({verdict.reason}) satisfies the rounded property but not the "
                                     f"exact decimal one (line {dj.line} of {spec.source})")
    elapsed = time.monotonic() - t0
    status = verdict.status if verdict.status in RESULTS else "unknown"
    res = InstanceResult(status, elapsed, verdict.reason, verdict=verdict, notes=notes)
    if status == "sat":
        res.witness_x = verdict.counterexample.reshape(-1).tolist()
        res.witness_y = verdict.output.reshape(-1).tolist()
    return res


# ------------------------------------------------------------------------------------------ benchmarks
@dataclass
class Instance:
    onnx: Path
    vnnlib: Path
    timeout: float
    onnx_rel: str
    vnnlib_rel: str
    row: int

    @property
    def key(self) -> tuple[str, str]:
        return self.onnx_rel, self.vnnlib_rel


def _resolve(base: Path, rel: str) -> Path:
    p = (base / rel) if not Path(rel).is_absolute() else Path(rel)
    if p.exists():
        return p
    for alt in (Path(str(p) + ".gz"), p.with_suffix("") if p.suffix == ".gz" else None):
        if alt is not None and alt.exists():
            return alt
    return p


def read_instances(path: str | Path) -> list[Instance]:
    """Rows ``onnx,vnnlib,timeout`` (paths relative to the csv; a missing final newline, ``\\r``,
    blank lines and ``#`` comments are fine; ``X.vnnlib`` is also found as ``X.vnnlib.gz``)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InvalidArgumentError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgumentError(f"{path}: cannot be read ({exc})") from None
    out = []
    for row, fields in enumerate(csv.reader(io.StringIO(text)), 1):
        fields = [f.strip() for f in fields]
        if not fields or not any(fields) or fields[0].startswith("#"):
            continue
        if row == 1 and fields[0].lower() == "onnx":
            continue  # a header row
        if len(fields) < 3:
            raise InvalidArgumentError(f"{path}:{row}: expected onnx,vnnlib,timeout, got {','.join(fields)!r}")
        try:
            timeout = float(fields[2])
        except ValueError:
            raise InvalidArgumentError(f"{path}:{row}: timeout {fields[2]!r} is not a number") from None
        if not (timeout > 0 and math.isfinite(timeout)):
            raise InvalidArgumentError(f"{path}:{row}: timeout must be positive, got {fields[2]!r}")
        inst = Instance(_resolve(path.parent, fields[0]), _resolve(path.parent, fields[1]), timeout,
                        fields[0], fields[1], row)
        for p, what in ((inst.onnx, "network"), (inst.vnnlib, "property")):
            if not p.exists():
                raise InvalidArgumentError(f"{path}:{row}: {what} file {p} does not exist")
        out.append(inst)
    if not out:
        raise InvalidArgumentError(f"{path}: no instances")
    return out


def read_results(path: Path) -> dict[tuple[str, str], dict]:
    """Finished rows of a results CSV by (onnx, vnnlib); a torn last line (a kill mid-write) is cut off."""
    done: dict[tuple[str, str], dict] = {}
    if not path.exists():
        return done
    raw = path.read_bytes()
    good = raw.rfind(b"\n") + 1
    if good < len(raw):
        with open(path, "r+b") as f:
            f.truncate(good)
    for rec in csv.DictReader(io.StringIO(raw[:good].decode("utf-8", "replace"))):
        if rec.get("result") in RESULTS and rec.get("onnx") is not None:
            done[(rec["onnx"], rec["vnnlib"])] = rec
    return done


def _append_row(path: Path, rec: dict) -> None:
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, HEADER, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow(rec)
        f.flush()
        os.fsync(f.fileno())


def _instance_job(args: dict) -> dict:
    """Run one instance (in the worker); never raises."""
    t0 = time.monotonic()
    try:
        r = run_instance(args["onnx"], args["vnnlib"], args["timeout"], device=args.get("device"),
                         engine_opts=args.get("engine_opts"))
        return {"result": r.result, "time_s": r.time_s, "reason": r.reason, "text": r.text()}
    except NNCertifyError as exc:
        return {"result": "error", "time_s": time.monotonic() - t0, "reason": str(exc), "text": "error\n"}
    except Exception as exc:  # a bug: keep the benchmark going, keep the traceback
        return {"result": "error", "time_s": time.monotonic() - t0, "reason": f"{type(exc).__name__}: {exc}",
                "text": "error\n", "traceback": traceback.format_exc(limit=6)}


def _worker_loop(conn, threads: int) -> None:
    torch.set_num_threads(max(1, threads))
    while True:
        try:
            args = conn.recv()
        except EOFError:
            return
        if args is None:
            return
        conn.send(_instance_job(args))


class _Worker:
    """One spawned process that runs instances one by one; replaced when it is killed."""

    def __init__(self, threads: int):
        self.threads = threads
        self.proc = None
        self.conn = None

    def _start(self):
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_loop, args=(child, self.threads), daemon=True)
        self.proc.start()
        child.close()

    def run(self, args: dict, hard_limit: float) -> dict:
        if self.proc is None or not self.proc.is_alive():
            self._start()
        t0 = time.monotonic()
        self.conn.send(args)
        while True:
            if self.conn.poll(0.05):
                try:
                    return self.conn.recv()
                except EOFError:
                    break
            if not self.proc.is_alive():
                break
            if time.monotonic() - t0 > hard_limit:
                self.stop(kill=True)
                return {"result": "timeout", "time_s": time.monotonic() - t0,
                        "reason": f"killed after {hard_limit:.0f} s (the engine overran its limit)", "text": "timeout\n"}
        code = self.proc.exitcode
        self.stop(kill=True)
        return {"result": "error", "time_s": time.monotonic() - t0, "reason": f"worker died (exit code {code})",
                "text": "error\n"}

    def stop(self, kill: bool = False):
        if self.proc is None:
            return
        if kill:
            self.proc.kill()
        else:
            try:
                self.conn.send(None)
            except (OSError, BrokenPipeError):
                pass
        self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(timeout=5)
        self.conn.close()
        self.proc = self.conn = None


def counterexample_dir(out: Path) -> Path:
    return out.with_name(out.name + ".counterexamples")


def counterexample_name(inst: Instance) -> str:
    """The witness file of an instance inside :func:`counterexample_dir`: NET__PROP.txt."""
    stem = lambda s: Path(s).name.replace(".gz", "").replace(".onnx", "").replace(".vnnlib", "")  # noqa: E731
    return f"{stem(inst.onnx_rel)}__{stem(inst.vnnlib_rel)}.txt"


def run_benchmark(instances: list[Instance], out: str | Path, *, timeout_scale: float = 1.0, limit: int | None = None,
                  device=None, engine_opts: dict | None = None, progress: bool = True, threads: int | None = None,
                  grace: float = 30.0, on_result: Callable[[Instance, dict], None] | None = None) -> dict:
    """Run every instance not yet in ``out`` (see the module docstring); returns :func:`summarize` of
    all the listed instances' rows."""
    if not (timeout_scale > 0 and math.isfinite(timeout_scale)):
        raise InvalidArgumentError(f"--timeout-scale must be positive, got {timeout_scale}")
    if limit is not None:
        if limit <= 0:
            raise InvalidArgumentError(f"--limit must be positive, got {limit}")
        instances = instances[:limit]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = read_results(out)
    todo = [i for i in instances if i.key not in done]
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(instances), initial=len(instances) - len(todo), unit="inst", desc="vnncomp",
                   disable=None)
    worker = _Worker(threads or max(1, min(2, os.cpu_count() or 1)))
    try:
        for inst in todo:
            limit_s = inst.timeout * timeout_scale
            args = {"onnx": str(inst.onnx), "vnnlib": str(inst.vnnlib), "timeout": limit_s, "device": device,
                    "engine_opts": engine_opts}
            rec = worker.run(args, hard_limit=limit_s + grace + 0.5 * limit_s)
            row = {"onnx": inst.onnx_rel, "vnnlib": inst.vnnlib_rel, "timeout_s": f"{limit_s:g}",
                   "result": rec["result"], "time_s": f"{rec['time_s']:.3f}",
                   "reason": " ".join(str(rec.get("reason", "")).split())[:300]}
            if rec["result"] == "sat":
                d = counterexample_dir(out)
                d.mkdir(exist_ok=True)
                (d / counterexample_name(inst)).write_text(rec["text"])
            _append_row(out, row)
            done[inst.key] = row
            if on_result is not None:
                on_result(inst, rec)
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(" ".join(f"{k} {v}" for k, v in summarize(
                    [done[i.key] for i in instances if i.key in done])["counts"].items() if v))
    finally:
        worker.stop()
        if bar is not None:
            bar.close()
    return summarize([done[i.key] for i in instances if i.key in done], total=len(instances))


def summarize(rows: list[dict], total: int | None = None) -> dict:
    """Counts by result, solved (sat + unsat within the limit), time statistics."""
    counts = {k: 0 for k in RESULTS}
    times, solved_times = [], []
    for r in rows:
        res = r["result"]
        counts[res] = counts.get(res, 0) + 1
        t = float(r["time_s"])
        times.append(t)
        if res in ("sat", "unsat") and t <= float(r["timeout_s"]):
            solved_times.append(t)
    return {"instances": total if total is not None else len(rows), "run": len(rows), "counts": counts,
            "solved": len(solved_times), "total_time_s": sum(times),
            "median_time_s": statistics.median(times) if times else None,
            "median_solved_time_s": statistics.median(solved_times) if solved_times else None}


def summary_lines(s: dict) -> list[str]:
    c = s["counts"]
    med = lambda v: "-" if v is None else f"{v:.2f} s"  # noqa: E731
    return [f"{s['run']}/{s['instances']} instances run: " + ", ".join(f"{k} {c[k]}" for k in RESULTS if c.get(k)),
            f"solved {s['solved']} (sat {c['sat']} + unsat {c['unsat']}); total {s['total_time_s']:.1f} s, "
            f"median {med(s['median_time_s'])}, median of solved {med(s['median_solved_time_s'])}"]
