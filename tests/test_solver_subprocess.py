"""``nncertify-solver`` as a real subprocess (chapter 5 of VNN-LIB 2.0), the way a harness drives it.

Every run here is ``python -m nncertify.certify.solver_cli`` (the module the ``nncertify-solver``
console script calls) or the console script itself, generated from setup.cfg's entry point exactly as
an installer writes it.  Checked on every answer: exit status 0, the first stdout line, nothing on
stdout but the answer (``unsat`` alone; ``sat`` then the 5.3.1 assignment of every declared variable,
declaration order, shape line then row-major values, nothing after), no traceback on stderr; the
theory label the solver logs; and each ``sat`` assignment against onnxruntime on the original files
and the query's constraints (independent truths).

* every ONNX operator ``supports --onnx-operators`` lists: a sat and an unsat query by construction.
  To keep the number of interpreters (each imports torch: 1-2 s idle, ~10 s on a loaded machine) down,
  the per-operator networks are grouped: one query declares one network per operator (a product,
  theory MNET) -- unsat as the disjunction of each network's impossible output bound (so every network
  must be refuted on its own), sat as the conjunction of bounds each network meets at its box centre;
* every theory the solver claims (``supports --*-theories``): each label occurs in a sat and an unsat
  query whose logged logic says so;
* ``--serialise-assignments``: the TensorProto files equal the values the same query prints;
* ``--timeout``: ``timed-out`` within the limit plus a few seconds; the mandatory errors: one line on
  stderr, exit 2, nothing on stdout;
* VNN-COMP 2021 properties in 2.0: the same verdict as the 1.0 path (``certify vnnlib``'s function).

The independent runs go through a pool of two workers (the machine's two cores).
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_solver_cli import op_models  # noqa: E402
from vnnlib2_convert import convert_file  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HEAD = "(vnnlib-version <2.0>)\n"
MODULE = [sys.executable, "-m", "nncertify.certify.solver_cli"]
RESULTS = ("sat", "unsat", "unknown", "timed-out")
THEORY_CAPS = ("--hidden-node-theories", "--multiple-input-output-theories", "--multiple-network-theories",
               "--multiple-node-comparison-theories", "--arithmetic-complexity-theories")


def run(cmd, *args, timeout=300):
    t = time.monotonic()
    p = subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=dict(os.environ))
    return {"rc": p.returncode, "out": p.stdout, "err": p.stderr, "wall": time.monotonic() - t}


def console_script(folder: Path) -> list[str]:
    """The ``nncertify-solver`` script as an installer writes it from setup.cfg's entry point."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    entries = dict(line.split("=", 1) for line in cfg["options.entry_points"]["console_scripts"].strip().splitlines())
    target = {k.strip(): v.strip() for k, v in entries.items()}["nncertify-solver"]
    module, func = target.split(":")
    script = folder / "nncertify-solver"
    script.write_text(f"#!{sys.executable}\nimport sys\nfrom {module} import {func}\n"
                      f"if __name__ == '__main__':\n    sys.exit({func}())\n")
    script.chmod(0o755)
    return [str(script)]


# --------------------------------------------------------------------------------------- answers
def parse_answer(r, expect: str, decls):
    """Check the answer's form (module docstring); ``decls`` = [(name, type, shape)] in declaration order.
    Returns {name: array} for sat, None otherwise."""
    assert r["rc"] == 0, r
    assert "Traceback" not in r["err"], r["err"]
    lines = r["out"].split("\n")
    assert lines[-1] == "", "stdout must end with a newline"
    lines = lines[:-1]
    assert lines and lines[0] in RESULTS, r
    assert lines[0] == expect, (expect, r["out"][:200], r["err"][-2000:])
    if expect != "sat":
        assert lines == [expect]
        return None
    vals, i = {}, 1
    for name, typ, shape in decls:
        assert lines[i] == f"{name} {typ} [{','.join(map(str, shape))}]", (lines[i], name)
        n = int(np.prod(shape))
        vals[name] = np.array([float(v) for v in lines[i + 1:i + 1 + n]], dtype=np.float64).reshape(shape)
        i += 1 + n
    assert i == len(lines), "nothing may follow the assignment"
    return vals


def logic(r) -> set[str]:
    line = next(ln for ln in r["err"].splitlines() if "logic: " in ln)
    return set(line.split("logic: ", 1)[1].split("-"))


def ort_eval(path, feeds, fetch=None):
    """onnxruntime on the file; ``fetch`` may name inner tensors (added to a copy's outputs)."""
    m = onnx.load(str(path))
    outs = [o.name for o in m.graph.output]
    for name in fetch or []:
        if name not in outs:
            m.graph.output.append(onnx.ValueInfoProto(name=name))
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    names = fetch or outs
    return [np.asarray(v, np.float64) for v in s.run(names, {k: np.asarray(v, np.float32) for k, v in feeds.items()})]


def save(path, nodes, inputs, outputs, inits, opset=13):
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info(k, TensorProto.FLOAT, s) for k, s in inputs],
                          [helper.make_tensor_value_info(k, TensorProto.FLOAT, s) for k, s in outputs],
                          initializer=[numpy_helper.from_array(np.asarray(v).astype(np.int64 if np.asarray(v).dtype.kind == "i"
                                                                                   else np.float32), k)
                                       for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path


def idx(shape, k=0) -> str:
    return ",".join(str(int(i)) for i in np.unravel_index(k, shape))


def box(name, shape, lo, hi) -> str:
    return "".join(f"(assert (>= {name}[{idx(shape, k)}] {lo:.1f})) (assert (<= {name}[{idx(shape, k)}] {hi:.1f}))\n"
                   for k in range(int(np.prod(shape))))


# --------------------------------------------------------------------------------------- operators
def op_cases():
    """op -> (nodes, initializers, input shape, output shape, a bound on |y| over [-1,1]^n): the per-operator
    networks of tests/test_solver_cli.py plus Add and Sub of two tensors."""
    cases = dict(op_models())
    cases["Add (two tensors)"] = ([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Add", ["r", "x"], ["y"])],
                                  {}, [1, 4], [1, 4], 2.0)   # relu(x) + x in [-1, 2]
    cases["Sub (two tensors)"] = ([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Sub", ["x", "r"], ["y"])],
                                  {}, [1, 4], [1, 4], 1.0)   # x - relu(x) = min(x, 0) in [-1, 0]
    return cases


def op_groups():
    """One group: every operator network in one query (two interpreters for all operators)."""
    return [sorted(op_cases())]


def _ident(op: str) -> str:
    return "".join(c for c in op if c.isalnum())


def op_group_queries(folder: Path, group: list[str], opset: int = 13):
    """(unsat query, sat query, --network args, decls, files) for one group of operator networks."""
    cases = op_cases()
    decl, boxes, unsat, sat, nets, decls, files = [], [], [], [], [], [], {}
    for op in group:
        nodes, inits, ishape, oshape, bound = cases[op]
        k = _ident(op)
        path = save(folder / f"op_{k}_{opset}.onnx", nodes, [("x", ishape)], [("y", oshape)], inits, opset)
        files[k] = path
        decl.append(f"(declare-network n{k} (declare-input X{k} real [{','.join(map(str, ishape))}])"
                    f" (declare-output Y{k} real [{','.join(map(str, oshape))}]))")
        decls += [(f"X{k}", "real", tuple(ishape)), (f"Y{k}", "real", tuple(oshape))]
        boxes.append(box(f"X{k}", ishape, -1.0, 1.0))
        y0 = float(ort_eval(path, {"x": np.zeros(ishape)})[0].reshape(-1)[0])
        unsat.append(f"(>= Y{k}[{idx(oshape)}] {float(bound) + 1.0:.6f})")
        sat.append(f"(assert (<= Y{k}[{idx(oshape)}] {y0 + 0.25:.6f}))")
        nets += ["--network", f"n{k}={path}"]
    head = HEAD + "\n".join(decl) + "\n" + "".join(boxes)
    qu, qs = folder / f"ops_{opset}_unsat.vnnlib", folder / f"ops_{opset}_sat.vnnlib"
    qu.write_text(head + f"(assert (or {' '.join(unsat)}))\n")
    qs.write_text(head + "\n".join(sat) + "\n")
    return qu, qs, nets, decls, files


# --------------------------------------------------------------------------------------- theories
def theory_queries(folder: Path):
    """name -> (query text, --network args, decls, expected theory labels, expected answer, witness check)."""
    rng = np.random.default_rng(3)
    out = {}
    # T1  SNET, H, MIO, MNC, LIN: two inputs a, b in [0,1]^2; hidden H = relu(a + b); outputs D = a - b, Y = Gemm(H)
    t1 = save(folder / "t1.onnx", [helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("Relu", ["s"], ["h"]),
                                   helper.make_node("Sub", ["a", "b"], ["d"]),
                                   helper.make_node("Gemm", ["h", "W", "c"], ["y"], transB=1)],
              [("a", [1, 2]), ("b", [1, 2])], [("d", [1, 2]), ("y", [1, 1])],
              {"W": rng.normal(size=(1, 2)), "c": np.array([0.5])})
    decl = ("(declare-network f (declare-input A real [1,2]) (declare-input B real [1,2])"
            ' (declare-hidden H real [1,2] "h") (declare-output D real [1,2]) (declare-output Y real [1,1]))\n')
    text = HEAD + decl + box("A", [1, 2], 0, 1) + box("B", [1, 2], 0, 1)
    d1 = [("A", "real", (1, 2)), ("B", "real", (1, 2)), ("H", "real", (1, 2)), ("D", "real", (1, 2)), ("Y", "real", (1, 1))]

    def check_t1(v):  # H0 + 2 D0 = 3 a0 - b0 <= 3 on the box
        h, d, y = ort_eval(t1, {"a": v["A"], "b": v["B"]}, ["h", "d", "y"])
        assert np.allclose(v["H"], h, atol=1e-6) and np.allclose(v["D"], d, atol=1e-6) and np.allclose(v["Y"], y, atol=1e-6)
        assert v["H"][0, 0] + 2 * v["D"][0, 0] >= 2.5
    labels = {"SNET", "H", "MIO", "MNC", "LIN", "REAL"}
    out["T1-unsat"] = (text + "(assert (>= (+ H[0,0] (* 2.0 D[0,0])) 3.5))\n", ["--network", f"f={t1}"], d1, labels,
                       "unsat", None)
    out["T1-sat"] = (text + "(assert (>= (+ H[0,0] (* 2.0 D[0,0])) 2.5))\n", ["--network", f"f={t1}"], d1, labels,
                     "sat", check_t1)
    # T2  MENET, NH, SIO, SNC, COUT: a monotone g; g(C) >= g(A) when C >= A elementwise; f2 equal-to f
    mono = save(folder / "mono.onnx", [helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], transB=1),
                                       helper.make_node("Relu", ["h"], ["r"]),
                                       helper.make_node("Gemm", ["r", "W2", "b2"], ["y"], transB=1)],
                [("x", [1, 2])], [("y", [1, 1])], {"W1": [[1.0, 0.5], [0.2, 1.0]], "b1": [0.0, -0.3],
                                                   "W2": [[1.0, 2.0]], "b2": [0.1]})
    decl = ("(declare-network f (declare-input A real [1,2]) (declare-output B real [1,1]))\n"
            "(declare-network f2 (equal-to f) (declare-input C real [1,2]) (declare-output D real [1,1]))\n")
    text = HEAD + decl + box("A", [1, 2], 0.0, 0.5) + box("C", [1, 2], 0.6, 1.0)
    d2 = [("A", "real", (1, 2)), ("B", "real", (1, 1)), ("C", "real", (1, 2)), ("D", "real", (1, 1))]

    def check_t2(v):
        assert np.allclose(v["B"], ort_eval(mono, {"x": v["A"]})[0], atol=1e-6)
        assert np.allclose(v["D"], ort_eval(mono, {"x": v["C"]})[0], atol=1e-6)
        assert v["D"][0, 0] - v["B"][0, 0] >= 1.0
    labels = {"MENET", "NH", "SIO", "SNC", "COUT", "REAL"}
    out["T2-unsat"] = (text + "(assert (< D[0,0] B[0,0]))\n", ["--network", f"f={mono}"], d2, labels, "unsat", None)
    out["T2-sat"] = (text + "(assert (>= (- D[0,0] B[0,0]) 1.0))\n", ["--network", f"f={mono}"], d2, labels, "sat",
                     check_t2)
    # T3  MINET, NH, SIO, SNC, BND: g2 isomorphic-to g1 (same graph, other weights)
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], transB=1), helper.make_node("Tanh", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "W2", "b2"], ["y"], transB=1)]
    g1 = save(folder / "g1.onnx", nodes, [("x", [1, 3])], [("y", [1, 2])],
              {"W1": rng.normal(size=(4, 3)), "b1": rng.normal(size=4), "W2": rng.normal(size=(2, 4)), "b2": np.zeros(2)})
    g2 = save(folder / "g2.onnx", nodes, [("x", [1, 3])], [("y", [1, 2])],
              {"W1": rng.normal(size=(4, 3)), "b1": rng.normal(size=4), "W2": rng.normal(size=(2, 4)), "b2": np.zeros(2)})
    decl = ("(declare-network g1 (declare-input X1 real [1,3]) (declare-output Y1 real [1,2]))\n"
            "(declare-network g2 (isomorphic-to g1) (declare-input X2 real [1,3]) (declare-output Y2 real [1,2]))\n")
    text = HEAD + decl + box("X1", [1, 3], -1, 1) + box("X2", [1, 3], -1, 1)
    d3 = [("X1", "real", (1, 3)), ("Y1", "real", (1, 2)), ("X2", "real", (1, 3)), ("Y2", "real", (1, 2))]
    c1 = float(ort_eval(g1, {"x": np.zeros((1, 3))})[0][0, 0])
    c2 = float(ort_eval(g2, {"x": np.zeros((1, 3))})[0][0, 1])

    def check_t3(v):
        assert np.allclose(v["Y1"], ort_eval(g1, {"x": v["X1"]})[0], atol=1e-6)
        assert np.allclose(v["Y2"], ort_eval(g2, {"x": v["X2"]})[0], atol=1e-6)
        assert v["Y1"][0, 0] >= c1 - 0.25 and v["Y2"][0, 1] <= c2 + 0.25
    big = [float(np.abs(ort_eval(g, {"x": np.zeros((1, 3))})[0]).max()) for g in (g1, g2)]
    wmax = 10.0  # |y| <= |W2|_1 + |b2| <= 4 * max|W2| < 10 for these draws (checked below)
    labels = {"MINET", "NH", "SIO", "SNC", "BND", "REAL"}
    nets = ["--network", f"g1={g1}", "--network", f"g2={g2}"]
    out["T3-unsat"] = (text + f"(assert (or (>= Y1[0,1] {wmax:.1f}) (<= Y2[0,0] -{wmax:.1f})))\n", nets, d3, labels,
                       "unsat", None)
    out["T3-sat"] = (text + f"(assert (>= Y1[0,0] {c1 - 0.25:.6f})) (assert (<= Y2[0,1] {c2 + 0.25:.6f}))\n", nets, d3,
                     labels, "sat", check_t3)
    for g in (g1, g2):  # the unsat threshold is a true bound: |y_i| <= sum_j |W2_ij| (tanh in [-1, 1])
        W2 = numpy_helper.to_array(next(i for i in onnx.load(str(g)).graph.initializer if i.name == "W2"))
        assert np.abs(W2).sum(1).max() < wmax and max(big) < wmax
    return out


# --------------------------------------------------------------------------------------- the batch
@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """Every independent subprocess run of this module, two at a time."""
    folder = tmp_path_factory.mktemp("solver")
    script = console_script(folder)
    jobs, meta = {}, {}
    for g, group in enumerate(op_groups()):
        qu, qs, nets, decls, files = op_group_queries(folder, group)
        jobs[f"ops{g}-unsat"] = (MODULE, ["verify", qu, *nets, "--timeout", 120])
        jobs[f"ops{g}-sat"] = (MODULE, ["verify", qs, *nets, "--timeout", 120])
        meta[f"ops{g}"] = (group, decls, files)
    for name, (text, nets, decls, labels, expect, check) in theory_queries(folder).items():
        q = folder / f"{name}.vnnlib"
        q.write_text(text)
        cmd = script if name == "T2-sat" else MODULE   # the console script itself answers one query
        jobs[name] = (cmd, ["verify", q, *nets, "--timeout", 120])
        meta[name] = (decls, labels, expect, check)
        if name == "T1-sat":
            jobs["T1-sat-serialised"] = (MODULE, ["verify", q, *nets, "--timeout", 120, "--serialise-assignments",
                                                  folder / "assignment"])
            meta["serialised"] = folder / "assignment"
    # the mandatory errors (5.3.2)
    text, nets, *_ = theory_queries(folder)["T2-unsat"]
    q = folder / "err.vnnlib"
    q.write_text(text)
    jobs["err-missing-network"] = (MODULE, ["verify", q, "--timeout", 60])
    q32 = folder / "err32.vnnlib"
    q32.write_text(text.replace(" real ", " float32 "))
    jobs["err-unsound-type"] = (MODULE, ["verify", q32, *nets, "--timeout", 60])
    q64 = folder / "err64.vnnlib"
    q64.write_text(text.replace(" real ", " float64 "))
    jobs["err-type-mismatch"] = (MODULE, ["verify", q64, *nets, "--timeout", 60])
    jobs["supports"] = (MODULE, ["supports", "--onnx-operators", *THEORY_CAPS])
    import resource
    t = time.monotonic()
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {k: pool.submit(run, cmd, *args) for k, (cmd, args) in jobs.items()}
        results = {k: f.result() for k, f in futures.items()}
    results["_wall"] = time.monotonic() - t
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    results["_meta"] = meta
    walls = {k: round(r["wall"], 1) for k, r in results.items() if not k.startswith("_")}
    sys.stderr.write(f"[test_solver_subprocess] {len(jobs)} solver processes, two at a time, in {results['_wall']:.1f} s: "
                     f"{walls}; {cpu:.1f} s of CPU in all (the load-independent cost)\n")
    return results


def test_every_supported_operator_sat_and_unsat_through_the_console(batch):
    r = batch["supports"]
    assert r["rc"] == 0 and r["err"] == ""
    listed = [ln.split()[0] for ln in r["out"].splitlines() if ln.endswith(" float32")]
    covered = set()
    for g in range(len(op_groups())):
        group, decls, files = batch["_meta"][f"ops{g}"]
        used = {n.op_type for f in files.values() for n in onnx.load(str(f)).graph.node}
        covered |= used
        parse_answer(batch[f"ops{g}-unsat"], "unsat", decls)
        assert logic(batch[f"ops{g}-unsat"]) == {"NH", "SIO", "MNET", "SNC", "BND", "REAL"}
        v = parse_answer(batch[f"ops{g}-sat"], "sat", decls)
        for k, path in files.items():  # every network's output is onnxruntime's at the printed input
            x = v[f"X{k}"]
            assert np.all(np.abs(x) <= 1.0), k
            assert np.allclose(v[f"Y{k}"], ort_eval(path, {"x": x})[0], atol=1e-5), k
    assert listed and set(listed) <= covered, sorted(set(listed) - covered)   # no listed operator untested
    from nncertify.models.onnx_import import SUPPORTED
    assert set(listed) == set(SUPPORTED)


def test_every_claimed_theory_sat_and_unsat_through_the_console(batch):
    claimed = set(batch["supports"]["out"].split()) - {"float32"}
    seen = {"sat": set(), "unsat": set()}
    for name in ("T1-unsat", "T1-sat", "T2-unsat", "T2-sat", "T3-unsat", "T3-sat"):
        decls, labels, expect, check = batch["_meta"][name]
        v = parse_answer(batch[name], expect, decls)
        assert logic(batch[name]) == labels, (name, batch[name]["err"])
        if check is not None:
            check(v)
        seen[expect] |= labels
    for g in range(len(op_groups())):
        for expect in ("sat", "unsat"):
            seen[expect] |= logic(batch[f"ops{g}-{expect}"])
    theories = {"NH", "H", "SIO", "MIO", "SNET", "MENET", "MINET", "MNET", "SNC", "MNC", "BND", "COUT", "LIN"}
    assert theories <= claimed  # what supports answers ...
    assert claimed & theories <= seen["sat"] and claimed & theories <= seen["unsat"]  # ... is run both ways


def test_serialised_assignment_equals_the_printed_one(batch):
    decls, *_ = batch["_meta"]["T1-sat"]
    printed = parse_answer(batch["T1-sat"], "sat", decls)
    r = batch["T1-sat-serialised"]
    assert r["rc"] == 0 and r["out"] == "sat\n", r
    folder = batch["_meta"]["serialised"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{n}.pb" for n, _, _ in decls)
    for name, _, shape in decls:
        t = onnx.load_tensor(str(folder / f"{name}.pb"))
        assert t.name == name and t.data_type == TensorProto.DOUBLE   # 'real' is written as double
        arr = numpy_helper.to_array(t)
        assert arr.shape == shape and np.array_equal(arr, printed[name]), name


def test_mandatory_errors_one_line_exit_2(batch):
    for name, what in (("err-missing-network", "no --network given for network f"),
                       ("err-unsound-type", "cannot analyse it soundly"),
                       ("err-type-mismatch", "declared float64")):
        r = batch[name]
        lines = [ln for ln in r["err"].splitlines() if not ln.startswith("[nncertify]")]
        assert r["rc"] == 2 and r["out"] == "" and len(lines) == 1 and what in lines[0], (name, r)


def test_console_script_and_installed_script(batch, tmp_path):
    """T2-sat ran through the generated entry-point script; the installed one (when on PATH) names itself."""
    assert batch["T2-sat"]["out"].startswith("sat\n")
    installed = shutil.which("nncertify-solver") or (Path(sys.executable).parent / "nncertify-solver")
    if not Path(installed).exists():
        pytest.skip("no installed nncertify-solver script (this environment was installed before the entry point)")
    r = run([str(installed)], "--name")
    assert r["rc"] == 0 and r["out"].startswith("nncertify") and r["out"].count("\n") == 1


@pytest.mark.parametrize("opset", [7, 21])
def test_operators_at_the_ends_of_the_claimed_opset_range(tmp_path, capsys, opset):
    """``supports --onnx-opset-versions`` claims 7..21: the same per-operator product queries with every
    model at opset 7 and at opset 21 (in-process through ``main``, the function the script runs).  At
    opset 7 Shape has no start/end and Dropout / BatchNormalization their old attributes; the models
    are the same nodes, so the checker and onnxruntime decide whether each is valid there."""
    from nncertify.certify.solver_cli import main

    qu, qs, nets, decls, files = op_group_queries(tmp_path, op_groups()[0], opset)
    for q, expect in ((qu, "unsat"), (qs, "sat")):
        rc = main(["verify", str(q), *nets, "--timeout", "120"])
        cap = capsys.readouterr()
        v = parse_answer({"rc": rc, "out": cap.out, "err": cap.err}, expect, decls)
        if v is not None:
            for k, path in files.items():
                assert np.allclose(v[f"Y{k}"], ort_eval(path, {"x": v[f"X{k}"]})[0], atol=1e-5), k


def test_timeout_is_honoured(tmp_path):
    """A 784-512-10 network: importing torch, composing and checking the model cannot finish in 1 s, so
    the answer is ``timed-out``, printed within the limit plus a few seconds."""
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "W2", "b2"], ["y"], transB=1)]
    big = save(tmp_path / "big.onnx", nodes, [("x", [1, 784])], [("y", [1, 10])],
               {"W1": rng.normal(size=(512, 784)) / 10, "b1": np.zeros(512), "W2": rng.normal(size=(10, 512)) / 10,
                "b2": np.zeros(10)})
    q = tmp_path / "q.vnnlib"
    q.write_text(HEAD + "(declare-network f (declare-input X real [1,784]) (declare-output Y real [1,10]))\n"
                 + box("X", [1, 784], 0, 1) + "(assert (>= Y[0,0] 1000.0))\n")
    r = run(MODULE, "verify", q, "--network", f"f={big}", "--timeout", 1)
    assert r["rc"] == 0 and r["out"] == "timed-out\n" and "time limit" in r["err"], r
    assert r["wall"] < 1 + 4.0, r["wall"]


# --------------------------------------------------------------------------------------- VNN-COMP 2021
FAST = [("acasxu/ACASXU_run2a_2_1_batch_2000.onnx", "acasxu/prop_2.vnnlib", (1, 1, 1, 5), 5),
        ("acasxu/ACASXU_run2a_1_1_batch_2000.onnx", "acasxu/prop_1.vnnlib", (1, 1, 1, 5), 5),
        ("mnistfc/mnist-net_256x2.onnx", "mnistfc/prop_1_0.05.vnnlib", (1, 784, 1), 10),
        ("mnistfc/mnist-net_256x2.onnx", "mnistfc/prop_4_0.03.vnnlib", (1, 784, 1), 10)]


def test_vnncomp2021_same_verdict_through_the_console(shared_data, tmp_path):
    """A handful of the 40 properties that solve fast: the 2.0 rewrite through the console as a subprocess
    (two at a time) and the 1.0 path (run_instance, what ``certify vnnlib`` runs) give the same verdict;
    tests/test_vnnlib2.py shows all 40 give the engine the same Query, bench/vnnlib2_vnncomp2021.py runs them."""
    from nncertify.certify.vnn import run_instance

    base = shared_data / "vnncomp2021"
    jobs = []
    for k, (net, prop, shape, n_out) in enumerate(FAST):
        q = tmp_path / f"p{k}.vnnlib"
        q.write_text(convert_file(base / prop, shape, n_out, "net"))
        jobs.append((MODULE, ["verify", q, "--network", f"net={base / net}", "--timeout", 60]))
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda j: run(j[0], *j[1]), jobs))
    for (net, prop, shape, n_out), r in zip(FAST, results):
        r1 = run_instance(base / net, base / prop, 60)
        assert r1.result in ("sat", "unsat"), (prop, r1.result, r1.reason)
        decls = [("X", "real", shape), ("Y", "real", (1, n_out))]
        v = parse_answer(r, r1.result, decls)
        if v is not None:
            s = ort.InferenceSession(str(base / net), providers=["CPUExecutionProvider"])
            y = ort_eval(base / net, {s.get_inputs()[0].name: v["X"]})[0]
            assert np.allclose(v["Y"].reshape(-1), y.reshape(-1), atol=1e-6)
