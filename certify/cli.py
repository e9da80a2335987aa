"""The ``certify`` command line.

Exit codes: 0 success; 1 ran, but nothing could be certified (a ``failed`` certificate);
2 bad input or usage (one line on stderr naming what is wrong); 4 internal error (a bug: please
report it; ``--debug`` shows the traceback).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from ..models.errors import InvalidArgumentError, NNCertifyError

EXIT_OK, EXIT_NOT_CERTIFIED, EXIT_BAD_INPUT, EXIT_INTERNAL = 0, 1, 2, 4

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Certify neural networks: sound Lipschitz bounds, robustness certificates and safe "
                       "training step sizes. MODEL is a file (.json spec, .safetensors, .pt/.pth, .pt2, "
                       "TorchScript, .onnx, .mat) or a zoo name such as digits_relu_mlp (see `certify zoo`).")

_DEBUG = {"on": False}

ModelArg = typer.Argument(..., metavar="MODEL", help="model file or zoo name (see `certify zoo`)")
ArchOpt = typer.Option(None, "--arch", help="architecture for bare weights: pkg.module:factory, file.py:factory "
                                            "or an architecture .json")
ShapeOpt = typer.Option(None, "--input-shape", help="per-sample input shape, e.g. 1,28,28 (when the file lacks it)")
TrustOpt = typer.Option(False, "--trust-pickle", help="allow unpickling a full nn.Module (runs code from the file)")
JsonOpt = typer.Option(None, "--json", help="write the certificate (JSON) to this file")
DataOpt = typer.Option(None, "--data", help="inputs: .npy/.npz/.pt/.csv (default: the zoo's digits test split)")
LabelsOpt = typer.Option(None, "--labels", help="labels file (.npy) when --data holds inputs only")


def _shape(s: Optional[str]):
    if s is None:
        return None
    try:
        dims = tuple(int(v) for v in s.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise InvalidArgumentError(f"--input-shape {s!r}: expected integers like 1,28,28") from None
    if not dims or any(d <= 0 for d in dims):
        raise InvalidArgumentError(f"--input-shape {s!r}: dimensions must be positive")
    return dims


def _load(model, arch, input_shape, trust_pickle):
    from .tasks import resolve_model
    return resolve_model(model, arch=arch, input_shape=_shape(input_shape), trust_pickle=trust_pickle)


def _emit(cert, json_path: Optional[Path]) -> None:
    from .report import _headline
    what, res = _headline(cert)
    typer.echo(f"{what}: {cert.status.upper()}  {res}  [{cert.method}, {cert.timing.total_s:.2f} s]")
    for note in cert.notes:
        typer.echo(f"  note: {note}")
    if json_path is not None:
        cert.save(json_path)
        typer.echo(f"certificate written to {json_path}")
    if cert.status == "failed":
        raise typer.Exit(EXIT_NOT_CERTIFIED)


@app.command()
def zoo():
    """List the models shipped with the package (trained on scikit-learn digits)."""
    from ..models import zoo as z
    for name in z.available():
        info = z.info(name)
        typer.echo(f"{name:<26} test acc {info['meta']['test_accuracy']:.3f}  {info.get('description', '')}")


@app.command()
def inspect(model: str = ModelArg, arch: Optional[str] = ArchOpt, input_shape: Optional[str] = ShapeOpt,
            trust_pickle: bool = TrustOpt):
    """Load MODEL and print its normalized description (every layer, as the methods see it)."""
    lm = _load(model, arch, input_shape, trust_pickle)
    typer.echo(lm.network.summary())
    typer.echo(f"format {lm.format}, sha256 {lm.sha256[:16]}...")


@app.command()
def demo(out: Path = typer.Option(Path("reports/demo"), "--out", help="output folder"),
         model: str = typer.Option("digits_relu_mlp", "--model", help="zoo model to certify"),
         samples: int = typer.Option(50, "--samples", help="test samples for the robustness part")):
    """Certify a shipped zoo model end to end and write certificates and a report under --out."""
    from .tasks import run_demo
    paths = run_demo(out, model=model, samples=samples, echo=typer.echo)
    typer.echo(f"report: {paths['html']}  and  {paths['markdown']}")


@app.command()
def lipschitz(model: str = ModelArg, eps: float = typer.Option(0.01, "--eps", help="radius of the input region"),
              norm: str = typer.Option("inf", "--norm", help="input norm: inf, 2 or 1"),
              data: Optional[Path] = DataOpt, index: int = typer.Option(0, "--index", help="sample used as center"),
              bab_timeout: float = typer.Option(0.0, "--bab-timeout", help="seconds of branch-and-bound (0: none)"),
              bab: str = typer.Option("auto", "--bab", help="branch-and-bound kind: activation (split ReLUs), "
                                                            "input (split the input box; any activation), auto"),
              output: Optional[int] = typer.Option(None, "--output", help="bound only this output (default: all)"),
              arch: Optional[str] = ArchOpt, input_shape: Optional[str] = ShapeOpt, trust_pickle: bool = TrustOpt,
              json_path: Optional[Path] = JsonOpt):
    """Certified LOCAL Lipschitz constant over the region around one input (bound propagation + BaB)."""
    from .tasks import resolve_data, task_lipschitz
    lm = _load(model, arch, input_shape, trust_pickle)
    X, _ = resolve_data(data, lm.network, None, index + 1)
    if index < 0 or index >= X.shape[0]:
        raise InvalidArgumentError(f"--index {index}: the data has {X.shape[0]} samples")
    _emit(task_lipschitz(lm, X[index], eps=eps, norm=norm, bab_timeout=bab_timeout, output=output, index=index,
                         bab=bab),
          json_path)


@app.command(name="global")
def global_(model: str = ModelArg, norm: str = typer.Option("2", "--norm", help="input norm: 2 or inf"),
            solver: str = typer.Option("auto", "--solver", help="CLARABEL, SCS, MOSEK (licence needed), CVXOPT, "
                                                                "FIRST_ORDER or auto"),
            method: str = typer.Option("auto", "--method", help="lipsdp-neuron, lipsdp-layer, lifted, nsr, auto, "
                                                                "or product (product of layer norms only)"),
            time_limit: Optional[float] = typer.Option(
                None, "--time-limit", help="hard wall-clock budget for the SDP solves (s): at the budget the "
                                           "solve is stopped and the certified product of norms is reported"),
            arch: Optional[str] = ArchOpt, input_shape: Optional[str] = ShapeOpt, trust_pickle: bool = TrustOpt,
            json_path: Optional[Path] = JsonOpt):
    """Certified GLOBAL Lipschitz upper bound by LipSDP (verified) and the product of layer norms."""
    from .tasks import task_global
    lm = _load(model, arch, input_shape, trust_pickle)
    _emit(task_global(lm, norm=norm, solver=solver, method=method, time_limit=time_limit), json_path)


@app.command()
def robustness(model: str = ModelArg, eps: float = typer.Option(..., "--eps", help="perturbation radius"),
               data: Optional[Path] = DataOpt, labels: Optional[Path] = LabelsOpt,
               norm: str = typer.Option("inf", "--norm", help="inf, 2 or 1"),
               method: str = typer.Option("crown", "--method", help="ibp, crown, alpha-crown or bab (complete: "
                                                                    "CROWN -> alpha-CROWN -> branch-and-bound)"),
               timeout: float = typer.Option(60.0, "--timeout", help="--method bab: seconds per sample for the "
                                                                      "branch-and-bound"),
               limit: int = typer.Option(100, "--limit", help="use the first N samples"),
               clip: Optional[str] = typer.Option("0,1", "--clip", help="data domain lo,hi ('none' to disable)"),
               radius: bool = typer.Option(True, "--radius/--no-radius", help="also certify per-sample radii"),
               arch: Optional[str] = ArchOpt, input_shape: Optional[str] = ShapeOpt, trust_pickle: bool = TrustOpt,
               json_path: Optional[Path] = JsonOpt):
    """Per-sample robustness: verified / falsified (real counterexample) / unknown, and certified radii."""
    from .tasks import parse_clip, resolve_data, task_robustness
    lm = _load(model, arch, input_shape, trust_pickle)
    X, y = resolve_data(data, lm.network, labels, limit)
    if y is None:
        raise InvalidArgumentError("robustness needs labels: a labelled --data file or --labels FILE")
    prog = _bab_progress() if method == "bab" and sys.stderr.isatty() else None
    cert = task_robustness(lm, X, y, eps=eps, norm=norm, method=method, clip=parse_clip(clip), radius=radius,
                           timeout=timeout, progress=prog)
    if prog is not None:
        sys.stderr.write("\r\033[K")
    _emit(cert, json_path)


def _bab_progress():
    """A one-line live status of the branch-and-bound (sample, specification, open domains, bound, time)."""
    import time
    last = [0.0]

    def cb(sample, spec, p):
        now = time.monotonic()
        if now - last[0] >= 0.2:
            last[0] = now
            sys.stderr.write(f"\r\033[K  BaB sample {sample}, class spec {spec}: {p.domains_left} open domains, "
                             f"certified bound {p.best_bound:.4g}, {p.visited} visited, {p.elapsed:.1f} s")
            sys.stderr.flush()
    return cb


@app.command()
def steps(model: str = ModelArg, data: Optional[Path] = DataOpt, labels: Optional[Path] = LabelsOpt,
          limit: int = typer.Option(256, "--limit", help="batch size (first N samples)"),
          arch: Optional[str] = ArchOpt, input_shape: Optional[str] = ShapeOpt, trust_pickle: bool = TrustOpt,
          json_path: Optional[Path] = JsonOpt):
    """Softmax-ghost step radius rho_a along the gradient, and the largest safe SGD learning rate."""
    from .tasks import resolve_data, task_steps
    lm = _load(model, arch, input_shape, trust_pickle)
    X, y = resolve_data(data, lm.network, labels, limit)
    if y is None:
        raise InvalidArgumentError("steps needs labels: a labelled --data file or --labels FILE")
    _emit(task_steps(lm, X, y), json_path)


@app.command()
def game(factory: str = typer.Argument(..., help="MODULE:FACTORY returning a game (or 'toy' for the built-in "
                                                 "two-player example)"),
         mode: str = typer.Option("certified", "--mode", help="certified or estimate"),
         json_path: Optional[Path] = JsonOpt):
    """Small-Gain Nash certificate: metric weights, contraction rate, safe step sizes, timescale band."""
    from .tasks import task_game
    _emit(task_game(factory, mode=mode), json_path)


@app.command()
def report(certificates: List[Path] = typer.Argument(..., help="certificate JSON files"),
           out: Path = typer.Option(Path("reports/report"), "--out", help="output folder"),
           title: str = typer.Option("nncertify report", "--title")):
    """Render certificates (and batch JSONL results) into report.md and a self-contained report.html."""
    from .records import Certificate, load_certificate
    from .report import write_report
    certs = []
    for p in certificates:
        if p.suffix == ".jsonl":
            from .batch import read_done
            if not p.exists():
                raise InvalidArgumentError(f"{p}: no such file")
            certs += [Certificate.model_validate(r["certificate"]) for r in read_done(p).values() if "certificate" in r]
        else:
            certs.append(load_certificate(p))
    paths = write_report(certs, out, title=title)
    typer.echo(f"report: {paths['html']}  and  {paths['markdown']}")


@app.command()
def batch(plan: Path = typer.Argument(..., help="plan JSON (models x tasks x samples; see docs)"),
          out: Path = typer.Option(Path("reports/batch.jsonl"), "--out", help="results JSONL (resumable)"),
          engine: str = typer.Option("local", "--engine", help="local (process pool) or dask"),
          workers: int = typer.Option(2, "--workers"),
          scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Dask scheduler address "
                                                                            "(default: a loopback LocalCluster)")):
    """Run a resumable batch of certification units; re-running skips finished units."""
    from .batch import expand_plan, run_batch
    try:
        spec = json.loads(plan.read_text())
    except FileNotFoundError:
        raise InvalidArgumentError(f"{plan}: no such file") from None
    except json.JSONDecodeError as exc:
        raise InvalidArgumentError(f"{plan}: not valid JSON ({exc})") from None
    units = expand_plan(spec, str(plan))
    counts = run_batch(units, out, engine=engine, workers=workers, scheduler=scheduler)
    typer.echo(f"{len(units)} units: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + f"  -> {out}")
    if counts.get("error") or counts.get("timeout"):
        raise typer.Exit(EXIT_NOT_CERTIFIED)


@app.command()
def vnnlib(network: Path = typer.Argument(..., metavar="NET.onnx", help="the network (ONNX; other model files "
                                                                          "work without the onnxruntime re-check)"),
           prop: Path = typer.Argument(..., metavar="PROP.vnnlib", help="the property (VNN-LIB 1.0, .gz accepted)"),
           timeout: float = typer.Option(..., "--timeout", help="wall-clock limit in seconds (loading included)"),
           out: Optional[Path] = typer.Option(None, "--out", help="write the VNN-COMP result file here"),
           device: Optional[str] = typer.Option(None, "--device", help="torch device for the bounds (cpu, cuda)")):
    """Decide one VNN-COMP instance: unsat (holds), sat (+ re-checked witness), unknown or timeout."""
    from .vnn import run_instance
    r = run_instance(network, prop, timeout, device=device)
    text = r.text()
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    typer.echo(text if r.result == "sat" and out is None else r.result)
    typer.echo(f"  {r.result} in {r.time_s:.2f} s{': ' + r.reason if r.reason else ''}", err=True)
    for note in r.notes:
        typer.echo(f"  note: {note}", err=True)
    if r.result != "unsat":
        raise typer.Exit(EXIT_NOT_CERTIFIED)


@app.command()
def vnncomp(instances: Path = typer.Argument(..., metavar="INSTANCES.csv", help="rows onnx,vnnlib,timeout "
                                                                                 "(paths relative to the csv)"),
            out: Path = typer.Option(..., "--out", help="results CSV (resumable: finished rows are skipped)"),
            limit: Optional[int] = typer.Option(None, "--limit", help="only the first N instances"),
            timeout_scale: float = typer.Option(1.0, "--timeout-scale", help="multiply every timeout by S"),
            device: Optional[str] = typer.Option(None, "--device", help="torch device for the bounds (cpu, cuda)")):
    """Run a VNN-COMP benchmark (instances.csv) with a progress bar and a summary by result and time."""
    from .vnn import read_instances, run_benchmark, summary_lines
    summary = run_benchmark(read_instances(instances), out, timeout_scale=timeout_scale, limit=limit, device=device)
    for line in summary_lines(summary):
        typer.echo(line)
    typer.echo(f"results: {out}")
    if summary["counts"].get("error"):
        raise typer.Exit(EXIT_NOT_CERTIFIED)


def _is_usage_error(e: BaseException) -> bool:
    """click's (or typer's bundled click's) usage errors: they know how to show themselves."""
    import click
    return isinstance(e, click.exceptions.ClickException) or (
        hasattr(e, "show") and hasattr(e, "exit_code") and type(e).__name__ in (
            "UsageError", "BadParameter", "NoSuchOption", "MissingParameter", "BadOptionUsage",
            "BadArgumentUsage", "ClickException", "FileError"))


def main(argv: Optional[list[str]] = None) -> None:
    import click
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in argv:
        argv.remove("--debug")
        _DEBUG["on"] = True
    command = typer.main.get_command(app)
    try:
        rc = command.main(args=argv, prog_name="certify", standalone_mode=False)
        sys.exit(rc if isinstance(rc, int) else EXIT_OK)
    except SystemExit:
        raise
    except NNCertifyError as e:
        if _DEBUG["on"]:
            raise
        typer.echo(f"error: {e}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except (KeyboardInterrupt, click.exceptions.Abort):
        sys.exit(130)
    except Exception as e:
        if type(e).__name__ == "Exit" and hasattr(e, "exit_code"):
            sys.exit(e.exit_code)
        if _is_usage_error(e):
            e.show()
            sys.exit(EXIT_BAD_INPUT)
        if _DEBUG["on"]:
            raise
        typer.echo(f"internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)", err=True)
        sys.exit(EXIT_INTERNAL)


if __name__ == "__main__":
    main()
