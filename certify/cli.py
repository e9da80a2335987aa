"""The ``certify`` command line.

Exit codes (:mod:`.verdict`): 0 something was certified; 1 ran, but nothing could be certified (a
``failed`` certificate, a robustness run with no verified sample, a batch with failed units); 2 bad
input or usage (one line on stderr naming what is wrong); 4 internal error (a bug: please report
it).  ``--debug`` adds the traceback to errors and keeps every exit code; ``--quiet`` hides
progress bars (they are shown only on a terminal anyway).  Both are accepted anywhere on the line.

Adding a command: define a function decorated with ``@app.command()`` below, import what it needs
*inside* the function (start-up stays torch-free), raise :class:`InvalidArgumentError` (or any
``NNCertifyError``) for bad input, and end with ``_emit(certificate, json_path)``, which prints the
headline, writes ``--json`` and exits with the certificate's exit code.  Shared options are the
``*Opt`` objects below.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from ..models.errors import InvalidArgumentError, NNCertifyError
from .params import DEFAULT_GLOBAL_TIME_LIMIT
from .verdict import EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_NOT_CERTIFIED, EXIT_OK

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None, pretty_exceptions_enable=False,
                  help="Certify neural networks: sound Lipschitz bounds, robustness certificates and safe "
                       "training step sizes. MODEL is a file (.json spec, .safetensors, .pt/.pth, .pt2, "
                       "TorchScript, .onnx, .mat) or a zoo name such as digits_relu_mlp (see `certify zoo`). "
                       "Exit codes: 0 certified, 1 nothing could be certified, 2 bad input, 4 internal error.")

GLOBAL_FLAGS = {"--debug": "debug", "--quiet": "quiet", "-q": "quiet"}
_FLAGS = {"debug": False, "quiet": False}


def _print_version(value: bool) -> None:
    if value:
        from .. import __version__
        typer.echo(f"nncertify {__version__}")
        raise typer.Exit(EXIT_OK)



ModelArg = typer.Argument(..., metavar="MODEL", help="model file or zoo name (see `certify zoo`)")
ArchOpt = typer.Option(None, "--arch", help="architecture for bare weights: pkg.module:factory, file.py:factory "
                                            "or an architecture .json")
ShapeOpt = typer.Option(None, "--input-shape", help="per-sample input shape, e.g. 1,28,28 (when the file lacks it)")
TrustOpt = typer.Option(False, "--trust-pickle", help="allow unpickling a full nn.Module (runs code from the file)")
JsonOpt = typer.Option(None, "--json", help="write the certificate (JSON) to this file ('-': to stdout, instead "
                                            "of the headline)")
DataOpt = typer.Option(None, "--data", help="inputs: .npy/.npz/.pt/.csv (default: the zoo's digits test split)")
LabelsOpt = typer.Option(None, "--labels", help="labels file (.npy) when --data holds inputs only")


@app.callback()
def _global_options(debug: bool = typer.Option(False, "--debug", help="show tracebacks with errors (any position)"),
                    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars (any position)"),
                    version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                                 help="print the nncertify version and exit")):
    """(Global flags are taken out of the command line by main(); listed here for --help.)"""


# ------------------------------------------------------------------------------------------ helpers
def parse_shape(s: Optional[str]):
    """``--input-shape``: positive integers separated by ',' or 'x' (``1,28,28``, ``1x28x28``)."""
    if s is None:
        return None
    parts = s.replace("x", ",").replace("X", ",").split(",")
    try:
        dims = tuple(int(v) for v in parts)
    except ValueError:
        raise InvalidArgumentError(f"--input-shape {s!r}: expected positive integers like 1,28,28") from None
    if not dims or any(d <= 0 for d in dims):
        raise InvalidArgumentError(f"--input-shape {s!r}: dimensions must be positive integers")
    return dims


def _load(model, arch, input_shape, trust_pickle, require_network: bool = True):
    from .tasks import resolve_model
    return resolve_model(model, arch=arch, input_shape=parse_shape(input_shape), trust_pickle=trust_pickle,
                         require_network=require_network)


def _emit(cert, json_path: Optional[Path]) -> None:
    """Print the headline (what was proven), write ``--json``, exit with the certificate's code."""
    from .verdict import exit_code, headline
    if json_path is not None and str(json_path) == "-":
        typer.echo(cert.to_json())
    else:
        if json_path is not None:  # first, so that a path that cannot be written is the only line shown
            try:
                cert.save(json_path)
            except OSError as exc:
                raise InvalidArgumentError(f"--json {json_path}: cannot write ({exc.strerror or exc})") from None
        typer.echo(headline(cert))
        for note in cert.notes:
            typer.echo(f"  note: {note}")
        if json_path is not None:
            typer.echo(f"certificate written to {json_path}")
    raise typer.Exit(exit_code(cert))


def _positive(value, name: str, integer: bool = False):
    import math
    if value is None or not math.isfinite(value) or value <= 0:
        raise InvalidArgumentError(f"{name} must be a positive {'integer' if integer else 'number'}, got {value}")
    return value


# ------------------------------------------------------------------------------------------ commands
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
         samples: int = typer.Option(50, "--samples", help="test samples for the robustness part"),
         time_limit: Optional[float] = typer.Option(None, "--time-limit", help="budget (s) of each long part: the "
                                                                             f"global SDP (default {DEFAULT_GLOBAL_TIME_LIMIT:g}) and the local "
                                                                             "Lipschitz run (default: none)")):
    """Certify a shipped zoo model end to end and write certificates and a report under --out."""
    from .params import check_time_limit
    from .tasks import run_demo
    _positive(samples, "--samples", integer=True)
    paths = run_demo(out, model=model, samples=samples, echo=typer.echo, time_limit=check_time_limit(time_limit))
    typer.echo(f"report: {paths['html']}  and  {paths['markdown']}")


@app.command()
def lipschitz(model: str = ModelArg, eps: float = typer.Option(0.01, "--eps", help="radius of the input region"),
              norm: str = typer.Option("inf", "--norm", help="input norm: inf, 2 or 1"),
              data: Optional[Path] = DataOpt, index: int = typer.Option(0, "--index", help="sample used as center"),
              bab_timeout: float = typer.Option(0.0, "--bab-timeout", help="seconds of branch-and-bound (0: none)"),
              bab: str = typer.Option("auto", "--bab", help="branch-and-bound kind: activation (split ReLUs), "
                                                            "input (split the input box; any activation), auto"),
              output: Optional[int] = typer.Option(None, "--output", help="bound only this output (default: all)"),
              time_limit: Optional[float] = typer.Option(
                  None, "--time-limit", help="wall-clock budget (s) for the whole run: loading, attack, bound "
                                             "and branch-and-bound (which gets what is left unless --bab-timeout is "
                                             "given); only the one bound pass, the certificate, is never cut"),
              clip: Optional[str] = typer.Option(None, "--clip", help="data domain lo,hi: the region is the eps-ball "
                                                                     "intersected with the box [lo, hi] (e.g. 0,1)"),
              arch: Optional[str] = ArchOpt, input_shape: Optional[str] = ShapeOpt, trust_pickle: bool = TrustOpt,
              json_path: Optional[Path] = JsonOpt):
    """Certified LOCAL Lipschitz constant over the region around one input (bound propagation + BaB)."""
    import time
    started = time.perf_counter()  # --time-limit counts from here: loading the model and data included
    from .params import BAB_KINDS, check_choice, check_eps, check_time_limit, check_timeout, parse_clip, parse_norm
    from .tasks import resolve_data, task_lipschitz
    # bad values: one line before any work
    time_limit, clip_box = check_time_limit(time_limit), parse_clip(clip)
    check_eps(eps), parse_norm(norm), check_timeout(bab_timeout, "--bab-timeout", allow_zero=True)
    check_choice(bab, BAB_KINDS, "--bab")
    if bab != "auto" and bab_timeout == 0:
        raise InvalidArgumentError(f"--bab {bab} needs --bab-timeout > 0 (seconds of branch-and-bound)")
    if index < 0:
        raise InvalidArgumentError(f"--index {index}: must be >= 0")
    lm = _load(model, arch, input_shape, trust_pickle)
    X, _ = resolve_data(data, lm.network, None, index + 1)
    if index >= X.shape[0]:
        raise InvalidArgumentError(f"--index {index}: the data has {X.shape[0]} samples")
    _emit(task_lipschitz(lm, X[index], eps=eps, norm=norm, bab_timeout=bab_timeout, output=output, index=index,
                         bab=bab, clip=clip_box, time_limit=time_limit, started=started),
          json_path)


@app.command(name="global")
def global_(model: str = ModelArg, norm: str = typer.Option("2", "--norm", help="input norm: 2 or inf"),
            solver: str = typer.Option("auto", "--solver", help="CLARABEL, SCS, MOSEK (licence needed), CVXOPT, "
                                                                "FIRST_ORDER or auto"),
            method: str = typer.Option("auto", "--method", help="lipsdp-neuron, lipsdp-layer, lifted, nsr, auto "
                                                                "(the lifted form, and NSR too for MaxMin / GroupSort "
                                                                "/ Householder chains, the smaller verified value "
                                                                "wins; the solver by problem size: interior point "
                                                                "for small cones, first-order beyond), or product "
                                                                "(product of layer norms only)"),
            time_limit: float = typer.Option(
                DEFAULT_GLOBAL_TIME_LIMIT, "--time-limit",
                help="wall-clock budget (s) for the whole run, loading included: the product of norms is computed "
                     "first, the SDP gets what is left (a first-order solve stops at its limit and its best iterate "
                     "is verified; a solve still running at the deadline is killed and the product of norms is "
                     "reported). A larger value may give a tighter bound"),
            arch: Optional[str] = ArchOpt, input_shape: Optional[str] = ShapeOpt, trust_pickle: bool = TrustOpt,
            json_path: Optional[Path] = JsonOpt):
    """Certified GLOBAL Lipschitz upper bound by LipSDP (verified) and the product of layer norms."""
    import time
    started = time.perf_counter()  # --time-limit counts from here: loading the model included
    from .params import check_timeout, parse_norm
    from .tasks import task_global
    parse_norm(norm, ("2", "inf"))
    check_timeout(time_limit, "--time-limit")
    if method != "product" and time_limit >= 10:  # (with less, the solver process could not start in time)
        from ..sdp.budget import prewarm
        prewarm()  # the SDP's solver process imports torch/cvxpy while this one loads the model
    lm = _load(model, arch, input_shape, trust_pickle)
    _emit(task_global(lm, norm=norm, solver=solver, method=method, time_limit=time_limit, started=started),
          json_path)


@app.command()
def robustness(model: str = ModelArg, eps: float = typer.Option(..., "--eps", help="perturbation radius"),
               data: Optional[Path] = DataOpt, labels: Optional[Path] = LabelsOpt,
               norm: str = typer.Option("inf", "--norm", help="inf, 2 or 1"),
               method: str = typer.Option("crown", "--method", help="ibp, crown, alpha-crown or bab (complete: "
                                                                    "CROWN -> alpha-CROWN -> branch-and-bound)"),
               timeout: float = typer.Option(60.0, "--timeout", help="--method bab: seconds per sample for the "
                                                                      "branch-and-bound"),
               refine: str = typer.Option("auto", "--refine", help="--method bab: refine the intermediate bounds "
                                                                   "by per-neuron branch-and-bound before the search: "
                                                                   "auto (convolution-free ReLU nets), bab, off"),
               limit: int = typer.Option(100, "--limit", help="use the first N samples"),
               clip: Optional[str] = typer.Option("0,1", "--clip", help="data domain lo,hi ('none' to disable)"),
               radius: bool = typer.Option(True, "--radius/--no-radius", help="also certify per-sample radii"),
               arch: Optional[str] = ArchOpt, input_shape: Optional[str] = ShapeOpt, trust_pickle: bool = TrustOpt,
               json_path: Optional[Path] = JsonOpt):
    """Per-sample robustness: verified / falsified (real counterexample) / unknown, and certified radii."""
    from .params import check_eps, check_method, check_refine, parse_clip, parse_norm
    from .tasks import resolve_data, task_robustness
    check_eps(eps), parse_norm(norm), check_method(method), parse_clip(clip), check_refine(refine)
    _positive(limit, "--limit", integer=True)
    lm = _load(model, arch, input_shape, trust_pickle)
    X, y = resolve_data(data, lm.network, labels, limit)
    if y is None:
        raise InvalidArgumentError("robustness needs labels: a labelled --data file or --labels FILE")
    from .progress import active
    prog = _bab_progress() if method == "bab" and active() else None  # a terminal, not --quiet
    cert = task_robustness(lm, X, y, eps=eps, norm=norm, method=method, clip=parse_clip(clip), radius=radius,
                           timeout=timeout, progress=prog, refine=refine)
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
    from .tasks import module_shapes, resolve_data, task_steps
    _positive(limit, "--limit", integer=True)
    lm = _load(model, arch, input_shape, trust_pickle, require_network=False)  # attention models too
    X, y = resolve_data(data, module_shapes(lm), labels, limit)
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
def report(certificates: List[Path] = typer.Argument(..., help="certificate JSON files and batch results (.jsonl)"),
           out: Path = typer.Option(Path("reports/report"), "--out", help="output folder"),
           title: str = typer.Option("nncertify report", "--title")):
    """Render certificates and batch results (every unit: done, failed, timed out) into report.md and a
    self-contained report.html."""
    from .report import load_inputs, write_report
    certs, failures = load_inputs(certificates)
    paths = write_report(certs, out, title=title, failures=failures)
    typer.echo(f"report: {paths['html']}  and  {paths['markdown']}")


@app.command()
def batch(plan: Path = typer.Argument(..., help="plan JSON (models x tasks x samples; see certify/batch.py)"),
          out: Path = typer.Option(Path("reports/batch.jsonl"), "--out", help="results JSONL (resumable)"),
          engine: str = typer.Option("local", "--engine", help="local (process pool) or dask"),
          workers: Optional[int] = typer.Option(None, "--workers", help="units run at once (default: the CPUs "
                                                "this process may use: affinity mask and cgroup quota)"),
          retries: int = typer.Option(0, "--retries", help="re-run a failed or timed-out unit up to N more times"),
          scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Dask scheduler address "
                                                                            "(default: a loopback LocalCluster)")):
    """Run a resumable batch of certification units; re-running skips finished units.

    The whole plan is validated before any unit starts.  Exit 0 when every unit finished and at least
    one certified something; 1 when a unit failed or timed out (each recorded with its reason)."""
    from .batch import load_plan, run_batch
    if engine not in ("local", "dask"):
        raise InvalidArgumentError(f"--engine {engine!r}: use local or dask")
    if workers is not None and workers < 1:
        raise InvalidArgumentError(f"--workers must be >= 1, got {workers}")
    if retries < 0:
        raise InvalidArgumentError(f"--retries must be >= 0, got {retries}")
    units = load_plan(plan)
    counts = run_batch(units, out, engine=engine, workers=workers, scheduler=scheduler, retries=retries)
    from .batch import summary_line
    typer.echo(summary_line(counts, len(units), out))
    bad = counts.get("error", 0) + counts.get("timeout", 0) + counts.get("missing", 0)
    raise typer.Exit(EXIT_NOT_CERTIFIED if bad or not counts.get("proven") else EXIT_OK)


@app.command()
def vnnlib(network: Path = typer.Argument(..., metavar="NET.onnx", help="the network (ONNX; other model files "
                                                                          "work without the onnxruntime re-check)"),
           prop: Path = typer.Argument(..., metavar="PROP.vnnlib", help="the property (VNN-LIB 1.0, .gz accepted)"),
           timeout: float = typer.Option(..., "--timeout", help="wall-clock limit in seconds (loading included)"),
           out: Optional[Path] = typer.Option(None, "--out", help="write the VNN-COMP result file here"),
           device: Optional[str] = typer.Option(None, "--device", help="torch device for the bounds (cpu, cuda)"),
           refine: str = typer.Option("auto", "--refine", help="refine the intermediate bounds by per-neuron "
                                                               "branch-and-bound before activation splitting: auto "
                                                               "(convolution-free ReLU nets), bab, off")):
    """Decide one VNN-COMP instance: unsat (holds), sat (+ re-checked witness), unknown or timeout."""
    from .params import check_refine
    from .vnn import run_instance
    check_refine(refine)
    r = run_instance(network, prop, timeout, device=device, engine_opts=None if refine == "auto" else {"refine": refine})
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


# ------------------------------------------------------------------------------------------ entry point
def _click_classes(name: str) -> tuple:
    """``name`` (ClickException, Exit, Abort) from click and from typer's bundled copy of click: only the
    copies already imported (an exception class that was never imported cannot have been raised)."""
    mods = [sys.modules.get(m) for m in ("typer._click.exceptions", "click.exceptions")]
    return tuple(getattr(m, name) for m in mods if m is not None and hasattr(m, name))


def _take_global_flags(argv: list[str]) -> list[str]:
    """Remove ``--debug`` / ``--quiet`` / ``-q`` wherever they stand (before a ``--``)."""
    out, rest = [], False
    for a in argv:
        if not rest and a in GLOBAL_FLAGS:
            _FLAGS[GLOBAL_FLAGS[a]] = True
            continue
        rest = rest or a == "--"
        out.append(a)
    return out


def main(argv: Optional[list[str]] = None) -> None:
    """The console script: runs the command, maps every outcome to the documented exit code."""
    from . import progress
    _FLAGS.update(debug=False, quiet=False)
    argv = _take_global_flags(list(sys.argv[1:] if argv is None else argv))
    json_stdout = any(a == "-" and i > 0 and argv[i - 1] == "--json" for i, a in enumerate(argv))
    progress.configure(not _FLAGS["quiet"] and not json_stdout)
    command = typer.main.get_command(app)
    try:
        rc = command.main(args=argv, prog_name="certify", standalone_mode=False)
        code = rc if isinstance(rc, int) else EXIT_OK
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (EXIT_OK if e.code is None else EXIT_INTERNAL)
    except NNCertifyError as e:
        if _FLAGS["debug"]:
            import traceback
            traceback.print_exc()
        msg = " ".join(str(e).split()) or type(e).__name__  # one line, whatever the message held
        typer.echo(f"error: {msg}", err=True)
        code = EXIT_BAD_INPUT
    except (KeyboardInterrupt, *_click_classes("Abort")):
        typer.echo("interrupted", err=True)
        code = 130
    except _click_classes("Exit") as e:
        code = e.exit_code
    except _click_classes("ClickException") as e:  # usage: one line, like every other bad input
        ctx = getattr(e, "ctx", None)
        if type(e).__name__ == "NoArgsIsHelpError" and ctx is not None:  # plain `certify`: the help
            typer.echo(ctx.get_help())
            sys.exit(EXIT_OK)
        where = ctx.command_path if ctx is not None and getattr(ctx, "command_path", None) else "certify"
        typer.echo(f"error: {' '.join(e.format_message().split())} (see '{where} --help')", err=True)
        code = EXIT_BAD_INPUT
    except MemoryError:
        typer.echo("error: out of memory (the problem is too large for this machine; reduce it)", err=True)
        code = EXIT_BAD_INPUT
    except Exception as e:  # a bug
        if _FLAGS["debug"]:
            import traceback
            traceback.print_exc()
        msg = " ".join(str(e).split())
        typer.echo(f"internal error: {type(e).__name__}: {msg} (please report it; rerun with --debug for the "
                   f"traceback)" if not _FLAGS["debug"] else f"internal error: {type(e).__name__}: {msg}", err=True)
        code = EXIT_INTERNAL
    sys.stdout.flush()
    sys.exit(code)


if __name__ == "__main__":
    main()
