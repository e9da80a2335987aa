"""``nncertify-solver``: the VNN-LIB 2.0 standard solver command line (chapter 5 of the standard).

    nncertify-solver --name | --version
    nncertify-solver verify QUERY.vnnlib --network NAME=FILE.onnx ... --timeout S [--serialise-assignments DIR]
    nncertify-solver supports --CAPABILITY

``verify`` prints one first line on stdout -- ``sat``, ``unsat``, ``unknown`` or ``timed-out`` -- and,
for ``sat``, the assignment of every declared variable (command-line format of 5.3.1) or, with
``--serialise-assignments DIR``, one ONNX TensorProto file per variable in ``DIR``.  Logs go to stderr
only.  Exit status: 0 with an answer; 2 with one line on stderr for bad input, including the
standard's mandatory errors (a missing or unnecessary ``--network``, element types that differ from
the model's, element types nncertify cannot analyse soundly); 1 for an internal error.  The time limit
is enforced by :func:`console_main` (the script), which runs ``verify`` in a forked worker and prints
``timed-out`` when the limit expires; :func:`main` (in-process use) has a watchdog thread instead.

``supports`` answers the mandatory capabilities from the same tables the solver enforces
(:data:`CAPABILITIES`).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time

SOLVER_NAME = "nncertify VNN-LIB 2.0 solver (certified linear bounds; witnesses re-checked in float64 and by onnxruntime)"


def _capabilities() -> dict[str, list[str]]:
    from ..models.onnx_support import (ELEMENT_TYPES, MODEL_ELEMENT_TYPES, ONNX_OPSETS, SUPPORTED,  # torch-free
                                       SUPPORTED_VERSIONS)

    ver = [f"{a}.{b}" for a, b in SUPPORTED_VERSIONS]
    return {
        "onnx-opset-versions": [str(ONNX_OPSETS[0]), str(ONNX_OPSETS[1])],
        "onnx-element-types": list(ELEMENT_TYPES),
        "onnx-operators": [f"{op} {' '.join(MODEL_ELEMENT_TYPES)}" for op in SUPPORTED],
        "vnnlib-versions": ver,
        "hidden-node-theories": ["NH", "H"],
        "multiple-input-output-theories": ["SIO", "MIO"],
        "multiple-network-theories": ["SNET", "MENET", "MINET", "MNET"],
        "multiple-node-comparison-theories": ["SNC", "MNC"],
        "arithmetic-complexity-theories": ["BND", "COUT", "LIN"],
        "optimised-disjunctive-reasoning": ["false"],
        "serialise-assignments": ["true"],
    }


CAPABILITY_ALIASES = {"multiple-inputs-output-theories": "multiple-input-output-theories"}  # 5.4's example spelling


class _Out:
    """stdout writes under one lock, so the watchdog and the main thread never interleave an answer."""

    def __init__(self):
        self.lock = threading.Lock()
        self.answered = False

    def answer(self, text: str) -> bool:
        with self.lock:
            if self.answered:
                return False
            self.answered = True
            sys.stdout.write(text)
            sys.stdout.flush()
            return True


def _err(msg: str) -> None:
    sys.stderr.write(msg.rstrip("\n").replace("\n", " ") + "\n")
    sys.stderr.flush()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nncertify-solver", description="VNN-LIB 2.0 solver interface of nncertify")
    p.add_argument("--name", action="store_true", help="print the solver's full name")
    p.add_argument("--version", action="store_true", help="print the solver's version")
    sub = p.add_subparsers(dest="command")
    v = sub.add_parser("verify", help="decide a VNN-LIB 2.0 query")
    v.add_argument("query")
    v.add_argument("--network", action="append", default=[], metavar="NAME=FILE.onnx")
    v.add_argument("--timeout", type=float, default=None, metavar="SECONDS")
    v.add_argument("--serialise-assignments", "--serialize-assignments", dest="serialise", default=None,
                   metavar="DIR")
    v.add_argument("--device", default=None, help="(non-standard, optional) torch device for the bounds")
    s = sub.add_parser("supports", help="report a capability")
    s.add_argument("capability", nargs="+", metavar="--CAPABILITY")
    return p


def _verify(args, out: _Out, t_start: float) -> int:
    from ..models.errors import InvalidArgumentError
    from .vnnlib2_solve import assignment_text, serialise_assignment, solve

    networks: dict[str, str] = {}
    for item in args.network:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise InvalidArgumentError(f"--network {item!r}: expected NAME=FILE.onnx")
        if name in networks:
            raise InvalidArgumentError(f"--network {name} given twice")
        networks[name] = path
    if args.timeout is None:
        raise InvalidArgumentError("verify needs --timeout SECONDS")
    if not (args.timeout > 0):
        raise InvalidArgumentError(f"--timeout must be positive, got {args.timeout}")
    deadline = t_start + args.timeout

    def expire():
        if out.answer("timed-out\n"):
            _err(f"nncertify-solver: time limit of {args.timeout:g} s reached")
            os._exit(0)

    timer = threading.Timer(max(0.0, deadline - time.monotonic()), expire)
    timer.daemon = True
    timer.start()
    try:
        margin = min(1.0, 0.1 * args.timeout)  # leave time to re-check and print before the watchdog
        left = deadline - time.monotonic() - margin
        if left <= 0:  # start-up (imports) used the time: the answer still says why, on stderr
            if out.answer("timed-out\n"):
                _err(f"nncertify-solver: time limit of {args.timeout:g} s reached before the search started")
            return 0
        opts = {"device": args.device} if args.device else {}
        sol = solve(args.query, networks, left, log=lambda m: _err(f"[nncertify] {m}"), engine_opts=opts)
        _err(f"[nncertify] {sol.status}: {sol.reason} ({sol.time_s:.2f} s)")
        text = sol.status + "\n"
        if sol.status == "sat" and sol.assignment is not None:
            if args.serialise:
                files = serialise_assignment(sol.assignment, args.serialise)
                _err(f"[nncertify] assignment written to {len(files)} file(s) in {args.serialise}")
            else:
                text += assignment_text(sol.assignment)
    finally:
        timer.cancel()
    out.answer(text)
    return 0


def _supports(args, out: _Out) -> int:
    from ..models.errors import InvalidArgumentError

    caps = _capabilities()
    lines = []
    for c in args.capability:
        key = CAPABILITY_ALIASES.get(c.lstrip("-"), c.lstrip("-"))
        if not c.startswith("--") or key not in caps:
            raise InvalidArgumentError(f"supports: unknown capability {c!r}; known: "
                                       f"{', '.join('--' + k for k in caps)}")
        lines.extend(caps[key])
    out.answer("\n".join(lines) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    t_start = time.monotonic()
    argv = sys.argv[1:] if argv is None else list(argv)
    out = _Out()
    # `supports --x` would be read by argparse as an option: pass capabilities after `--`
    if argv[:1] == ["supports"]:
        argv = ["supports", "--", *argv[1:]]
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed one usage line and the error on stderr
        return int(exc.code or 0) if exc.code not in (None, 0) else 0
    if args.name or args.version:
        if args.name:
            out.answer(SOLVER_NAME + "\n")
        else:
            from .. import __version__
            out.answer(__version__ + "\n")
        return 0
    if args.command is None:
        parser.print_usage(sys.stderr)
        return 2
    from ..models.errors import NNCertifyError

    try:
        if args.command == "verify":
            return _verify(args, out, t_start)
        return _supports(args, out)
    except NNCertifyError as exc:
        _err(f"nncertify-solver: error: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        _err("nncertify-solver: interrupted")
        return 130
    except Exception as exc:  # an internal failure: still one line, never a traceback
        _err(f"nncertify-solver: internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        return 1


def _peek_timeout(argv: list[str]) -> float | None:
    for i, a in enumerate(argv):
        val = argv[i + 1] if a == "--timeout" and i + 1 < len(argv) else (a.split("=", 1)[1] if a.startswith("--timeout=")
                                                                           else None)
        if val is not None:
            try:
                t = float(val)
            except ValueError:
                return None
            return t if t > 0 else None
    return None


def console_main(argv: list[str] | None = None) -> int:
    """The ``nncertify-solver`` script.  ``verify`` runs in a forked child while this process -- which
    never imports torch -- keeps the clock: loading torch holds the interpreter lock for seconds, so a
    watchdog thread in the working process could answer late.  At the limit the child is killed and
    ``timed-out`` printed; otherwise the child's stdout is passed on unchanged and its exit status
    returned.  Without ``fork`` (or for other commands) this is :func:`main`."""
    import select
    import signal

    t_start = time.monotonic()
    argv = sys.argv[1:] if argv is None else list(argv)
    timeout = _peek_timeout(argv) if argv[:1] == ["verify"] else None
    if timeout is None or not hasattr(os, "fork"):
        return main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker: its stdout is the pipe
        code = 1
        try:
            os.close(r)
            os.dup2(w, 1)
            os.close(w)
            code = main(argv)
            sys.stdout.flush()
        finally:
            os._exit(code)
    os.close(w)

    def stop(signum, frame):  # the harness stops us: stop the worker too
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os._exit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    deadline = t_start + timeout
    chunks: list[bytes] = []
    done = False
    while not done:
        left = deadline - time.monotonic()
        if chunks:  # the answer has started: let the worker finish writing it
            left = max(left, 2.0)
        if left <= 0:
            break
        ready, _, _ = select.select([r], [], [], left)
        if not ready:
            break
        data = os.read(r, 1 << 16)
        if not data:
            done = True
        else:
            chunks.append(data)
    if done:
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        sys.stdout.buffer.write(b"".join(chunks))
        sys.stdout.flush()
        return code if code >= 0 else 1
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    os.waitpid(pid, 0)
    if chunks:
        sys.stdout.buffer.write(b"".join(chunks))
    else:
        sys.stdout.write("timed-out\n")
        _err(f"nncertify-solver: time limit of {timeout:g} s reached")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(console_main())
