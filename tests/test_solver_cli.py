"""nncertify-solver (certify/solver_cli.py): the VNN-LIB 2.0 command line of chapter 5.

Small sat/unsat queries by construction for every ONNX operator the importer supports and for each
theory, run through ``main`` (the console script's function) in-process, where a failure is quickest
to localise.  The same as real subprocesses -- output format, exit codes, the time limit, serialised
assignments, VNN-COMP 2021 properties against the 1.0 path -- are tests/test_solver_subprocess.py."""

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from nncertify.certify.solver_cli import main

sys.path.insert(0, str(Path(__file__).resolve().parent))

RNG = np.random.default_rng(0)
HEAD = "(vnnlib-version <2.0>)\n"


def one_error(err: str) -> bool:
    """Exactly one error line on stderr (log lines start with [nncertify])."""
    return len([ln for ln in err.splitlines() if not ln.startswith("[nncertify]")]) == 1


def run(capsys, *argv):
    rc = main(list(argv))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _arr(v):
    a = np.asarray(v)
    return a.astype(np.int64) if a.dtype.kind == "i" else a.astype(np.float32)


def save_model(path, nodes, inits, in_shape, out_shape, in_name="x", out_name="y", extra_outputs=(), opset=13):
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info(in_name, TensorProto.FLOAT, in_shape)],
                          [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, out_shape), *extra_outputs],
                          initializer=[numpy_helper.from_array(_arr(v), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def ort_run(path, feeds):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {k: np.asarray(v, dtype=np.float32) for k, v in feeds.items()})


def parse_assignment(text):
    """{name: (type, shape, values)} from the 5.3.1 format (after the first line)."""
    lines = text.strip().splitlines()[1:]
    out, i = {}, 0
    while i < len(lines):
        name, typ, dims = lines[i].split(" ")
        shape = tuple(int(s) for s in dims.strip("[]").split(",") if s)
        n = int(np.prod(shape)) if shape else 1
        out[name] = (typ, shape, np.array([float(v) for v in lines[i + 1:i + 1 + n]]).reshape(shape))
        i += 1 + n
    return out


# ------------------------------------------------------------------------------- one model per operator
W = RNG.normal(size=(4, 3)).astype(np.float32)  # (in, out) for MatMul; Gemm uses W.T with transB
B = RNG.normal(size=3).astype(np.float32)
K = RNG.normal(size=(2, 1, 2, 2)).astype(np.float32)


def op_models():
    """name -> (nodes, initializers, input shape, output shape, crude bound on |y| over x in [-1, 1])."""
    a = float(np.abs(W).sum(0).max() + np.abs(B).max())
    return {
        "Gemm": ([helper.make_node("Gemm", ["x", "W", "b"], ["y"], transB=1)], {"W": W.T, "b": B}, [1, 4], [1, 3], a),
        "MatMul": ([helper.make_node("MatMul", ["x", "W"], ["y"])], {"W": W}, [1, 4], [1, 3],
                   float(np.abs(W).sum(0).max())),
        "Add": ([helper.make_node("MatMul", ["x", "W"], ["t"]), helper.make_node("Add", ["t", "b"], ["y"])],
                {"W": W, "b": B}, [1, 4], [1, 3], a),
        "Conv": ([helper.make_node("Conv", ["x", "K", "kb"], ["y"], kernel_shape=[2, 2], pads=[1, 1, 1, 1])],
                 {"K": K, "kb": np.array([0.5, -0.5])}, [1, 1, 3, 3], [1, 2, 4, 4], float(np.abs(K).sum((1, 2, 3)).max() + 0.5)),
        "Relu": ([helper.make_node("Relu", ["x"], ["y"])], {}, [1, 4], [1, 4], 1.0),
        "LeakyRelu": ([helper.make_node("LeakyRelu", ["x"], ["y"], alpha=0.1)], {}, [1, 4], [1, 4], 1.0),
        "Tanh": ([helper.make_node("Tanh", ["x"], ["y"])], {}, [1, 4], [1, 4], 1.0),
        "Sigmoid": ([helper.make_node("Sigmoid", ["x"], ["y"])], {}, [1, 4], [1, 4], 1.0),
        "Flatten": ([helper.make_node("Flatten", ["x"], ["y"], axis=1)], {}, [1, 2, 2], [1, 4], 1.0),
        "Reshape": ([helper.make_node("Reshape", ["x", "s"], ["y"])], {"s": np.array([1, 2, 2])}, [1, 4], [1, 2, 2], 1.0),
        "Sub": ([helper.make_node("Sub", ["x", "c"], ["y"])], {"c": np.array([0.5, -0.5, 0.25, 0.0])}, [1, 4], [1, 4], 1.5),
        "Mul": ([helper.make_node("Mul", ["x", "c"], ["y"])], {"c": np.array([2.0, -3.0, 0.5, 1.0])}, [1, 4], [1, 4], 3.0),
        "Div": ([helper.make_node("Div", ["x", "c"], ["y"])], {"c": np.array([2.0, -4.0, 0.5, 1.0])}, [1, 4], [1, 4], 2.0),
        "AveragePool": ([helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2])], {}, [1, 1, 4, 4],
                        [1, 1, 2, 2], 1.0),
        "BatchNormalization": ([helper.make_node("BatchNormalization", ["x", "g", "bb", "m", "v"], ["y"])],
                               {"g": [2.0, -1.0], "bb": [0.5, 0.0], "m": [0.1, -0.2], "v": [1.0, 4.0]},
                               [1, 2, 2, 2], [1, 2, 2, 2], 2.0 * 1.1 / np.sqrt(1.0 + 1e-5) + 0.5 + 1.2 / 2),
        "Identity": ([helper.make_node("Identity", ["x"], ["y"])], {}, [1, 4], [1, 4], 1.0),
        "Dropout": ([helper.make_node("Dropout", ["x"], ["y"])], {}, [1, 4], [1, 4], 1.0),
        "Constant": ([helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(
            np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32))), helper.make_node("Add", ["x", "c"], ["y"])],
            {}, [1, 4], [1, 4], 5.0),
        "Shape": ([helper.make_node("Shape", ["x"], ["sh"]),
                   helper.make_node("Constant", [], ["two"], value=numpy_helper.from_array(np.array([1, -1], dtype=np.int64))),
                   helper.make_node("Reshape", ["x", "two"], ["y0"]), helper.make_node("Reshape", ["y0", "sh"], ["y"])],
                  {}, [1, 2, 2], [1, 2, 2], 1.0),
    }


def test_every_supported_operator_has_a_model():
    from nncertify.models.onnx_import import SUPPORTED
    assert set(op_models()) == set(SUPPORTED)


def _query(in_shape, out_shape, assertion):
    n_in = int(np.prod(in_shape))
    box = " ".join(f"(assert (>= X[{','.join(map(str, np.unravel_index(k, in_shape)))}] -1.0))"
                   f"(assert (<= X[{','.join(map(str, np.unravel_index(k, in_shape)))}] 1.0))" for k in range(n_in))
    return (HEAD + f"(declare-network f (declare-input X real [{','.join(map(str, in_shape))}])"
            f" (declare-output Y real [{','.join(map(str, out_shape))}]))\n{box}\n{assertion}\n")


def test_operators_sat_and_unsat_by_construction(tmp_path, capsys):
    """unsat: y_0 >= (a bound on |y| over the box) + 1; sat: y_0 <= (onnxruntime's y_0 at the centre) + 0.25."""
    for op, (nodes, inits, ishape, oshape, bound) in op_models().items():
        path = save_model(tmp_path / f"{op}.onnx", nodes, inits, ishape, oshape)
        y_idx = ",".join("0" for _ in oshape)
        qu = tmp_path / f"{op}_unsat.vnnlib"
        qu.write_text(_query(ishape, oshape, f"(assert (>= Y[{y_idx}] {float(bound) + 1.0:.6f}))"))
        rc, out, err = run(capsys, "verify", str(qu), "--network", f"f={path}", "--timeout", "20")
        assert rc == 0 and out == "unsat\n", (op, out, err)
        y0 = float(ort_run(path, {"x": np.zeros(ishape)})[0].reshape(-1)[0])
        qs = tmp_path / f"{op}_sat.vnnlib"
        qs.write_text(_query(ishape, oshape, f"(assert (<= Y[{y_idx}] {y0 + 0.25:.6f}))"))
        rc, out, err = run(capsys, "verify", str(qs), "--network", f"f={path}", "--timeout", "20")
        assert rc == 0 and out.startswith("sat\n"), (op, out, err)
        a = parse_assignment(out)
        assert list(a) == ["X", "Y"] and a["X"][1] == tuple(ishape) and a["Y"][1] == tuple(oshape)
        x = a["X"][2]
        assert np.all(np.abs(x) <= 1.0)
        y = ort_run(path, {"x": x})[0]
        assert np.allclose(a["Y"][2], y, atol=1e-6) and y.reshape(-1)[0] <= y0 + 0.25


# ------------------------------------------------------------------------------- theories
def _mlp(path, w1, b1, w2, b2, hidden_out=False, in_shape=(1, 2)):
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], transB=1),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "W2", "b2"], ["y"], transB=1)]
    return save_model(path, nodes, {"W1": w1, "b1": b1, "W2": w2, "b2": b2}, list(in_shape), [1, w2.shape[0]])


@pytest.fixture
def mlp(tmp_path):
    w1 = np.array([[1.0, 1.0], [1.0, -1.0], [-1.0, 0.5]])
    w2 = np.array([[1.0, 2.0, -1.0], [0.5, -1.0, 1.0]])
    return _mlp(tmp_path / "mlp.onnx", w1, np.array([0.0, 0.1, -0.2]), w2, np.array([0.0, 0.3]))


def _solve(capsys, tmp_path, text, nets, timeout="20"):
    p = tmp_path / "q.vnnlib"
    p.write_text(HEAD + text)
    args = ["verify", str(p), "--timeout", timeout]
    for k, v in nets.items():
        args += ["--network", f"{k}={v}"]
    return run(capsys, *args)


DECL1 = "(declare-network f (declare-input X real [1,2]) (declare-output Y real [1,2]))\n"
BOX1 = "(assert (and (>= X[0,0] 0.0) (<= X[0,0] 1.0) (>= X[0,1] 0.0) (<= X[0,1] 1.0)))\n"


def test_hidden_node_theory(tmp_path, capsys, mlp):
    """h = W1 x + b1 (the Gemm output "h"): h_0 = x_0 + x_1 <= 2 on the box; relu output r >= 0."""
    decl = ('(declare-network f (declare-input X real [1,2]) (declare-hidden H real [1,3] "h")'
            ' (declare-hidden R real [1,3] "r") (declare-output Y real [1,2]))\n')
    rc, out, _ = _solve(capsys, tmp_path, decl + BOX1 + "(assert (>= H[0,0] 2.01))", {"f": mlp})
    assert (rc, out) == (0, "unsat\n")
    rc, out, _ = _solve(capsys, tmp_path, decl + BOX1 + "(assert (<= R[0,2] -0.001))", {"f": mlp})
    assert (rc, out) == (0, "unsat\n")
    rc, out, _ = _solve(capsys, tmp_path, decl + BOX1 + "(assert (>= H[0,0] 1.9))", {"f": mlp})
    assert rc == 0 and out.startswith("sat\n")
    a = parse_assignment(out)
    assert list(a) == ["X", "H", "R", "Y"]
    x = a["X"][2]
    assert np.isclose(a["H"][2][0, 0], x.sum(), atol=1e-6) and a["H"][2][0, 0] >= 1.9
    assert np.allclose(a["R"][2], np.maximum(a["H"][2], 0), atol=1e-6)
    # a hidden node the model does not have: a mandatory error, one line on stderr
    bad = decl.replace('"r"', '"nope"')
    rc, out, err = _solve(capsys, tmp_path, bad + BOX1 + "(assert (>= H[0,0] 1.9))", {"f": mlp})
    assert rc == 2 and out == "" and "nope" in err and one_error(err)


def test_hidden_node_on_a_matmul_before_its_bias(tmp_path, capsys):
    """H = x W (before the bias Add the importer folds into the MatMul's node): H_0 = x_0 + x_1, bias 10."""
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])]
    path = save_model(tmp_path / "mm.onnx", nodes, {"W": np.array([[1.0, 2.0], [1.0, -1.0]]), "b": np.array([10.0, 10.0])},
                      [1, 2], [1, 2])
    decl = '(declare-network f (declare-input X real [1,2]) (declare-hidden H real [1,2] "m") (declare-output Y real [1,2]))\n'
    rc, out, err = _solve(capsys, tmp_path, decl + BOX1 + "(assert (>= H[0,0] 2.5))", {"f": path})
    assert (rc, out) == (0, "unsat\n"), err          # with the bias it would be sat (H_0 + 10 >= 2.5)
    rc, out, err = _solve(capsys, tmp_path, decl + BOX1 + "(assert (>= (- Y[0,0] H[0,0]) 10.0))", {"f": path})
    assert rc == 0 and out.startswith("sat\n"), err
    a = parse_assignment(out)
    assert np.allclose(a["Y"][2] - a["H"][2], 10.0, atol=1e-5)


def test_multiple_inputs_outputs_and_coupled_constraints(tmp_path, capsys):
    """y1 = a + b, y2 = a - b for two inputs a, b: MIO, LIN over inputs, MNC (input vs output)."""
    nodes = [helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("Mul", ["b", "m1"], ["nb"]),
             helper.make_node("Add", ["a", "nb"], ["d"])]
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 2]),
                                       helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 2])],
                          [helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, 2]),
                           helper.make_tensor_value_info("d", TensorProto.FLOAT, [1, 2])],
                          initializer=[numpy_helper.from_array(np.array([-1.0], dtype=np.float32), "m1")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    path = tmp_path / "mio.onnx"
    onnx.save(m, str(path))
    decl = ("(declare-network f (declare-input A real [1,2]) (declare-input B real [1,2])"
            " (declare-output S real [1,2]) (declare-output D real [1,2]))\n")
    box = " ".join(f"(assert (>= {v}[0,{i}] 0.0)) (assert (<= {v}[0,{i}] 1.0))" for v in "AB" for i in range(2))
    # S0 + D0 = 2 A0 <= 2: unsat above; with A0 + B0 <= 0.5 (coupled), S0 <= 0.5: unsat above 0.5
    rc, out, err = _solve(capsys, tmp_path, decl + box + "(assert (>= (+ S[0,0] D[0,0]) 2.1))", {"f": path})
    assert (rc, out) == (0, "unsat\n"), err
    rc, out, _ = _solve(capsys, tmp_path, decl + box + "(assert (>= (+ A[0,0] B[0,1]) 2.1))", {"f": path})
    assert (rc, out) == (0, "unsat\n")  # a coupled input row alone
    # the conjunction A0 + B0 <= 0.5, S0 >= 0.6 is empty, but no single row is refuted by the bounds (they are
    # refuted row by row): the honest answer without branching is unknown, never sat
    rc, out, _ = _solve(capsys, tmp_path, decl + box + "(assert (<= (+ A[0,0] B[0,0]) 0.5)) (assert (>= S[0,0] 0.6))",
                        {"f": path}, timeout="5")
    assert rc == 0 and out in ("unsat\n", "unknown\n", "timed-out\n")
    rc, out, _ = _solve(capsys, tmp_path, decl + box + "(assert (<= (+ A[0,0] B[0,0]) 0.5)) (assert (>= S[0,0] 0.4))",
                        {"f": path})
    assert rc == 0 and out.startswith("sat\n")
    a = parse_assignment(out)
    assert a["A"][2][0, 0] + a["B"][2][0, 0] <= 0.5 and a["S"][2][0, 0] >= 0.4
    rc, out, _ = _solve(capsys, tmp_path, decl + box + "(assert (>= D[0,1] A[0,1]))", {"f": path})  # b = 0
    assert rc == 0 and out.startswith("sat\n")
    a = parse_assignment(out)
    assert list(a) == ["A", "B", "S", "D"]
    assert a["D"][2][0, 1] >= a["A"][2][0, 1] and np.allclose(a["S"][2], a["A"][2] + a["B"][2], atol=1e-6)


def test_equal_to_and_product_of_networks(tmp_path, capsys, mlp):
    """Monotone g (positive weights): g(C) >= g(A) when C >= A elementwise; equal-to copies share the file."""
    g = _mlp(tmp_path / "mono.onnx", np.array([[1.0, 0.5], [0.2, 1.0]]), np.array([0.0, -0.3]),
             np.array([[1.0, 2.0]]), np.array([0.1]))
    decl = ("(declare-network f (declare-input A real [1,2]) (declare-output B real [1,1]))\n"
            "(declare-network f2 (equal-to f) (declare-input C real [1,2]) (declare-output D real [1,1]))\n")
    box = ("(assert (and (>= A[0,0] 0.0) (<= A[0,0] 0.5) (>= A[0,1] 0.0) (<= A[0,1] 0.5)))"
           "(assert (and (>= C[0,0] 0.6) (<= C[0,0] 1.0) (>= C[0,1] 0.6) (<= C[0,1] 1.0)))\n")
    rc, out, _ = _solve(capsys, tmp_path, decl + box + "(assert (< D[0,0] B[0,0]))", {"f": g})
    assert (rc, out) == (0, "unsat\n")
    rc, out, _ = _solve(capsys, tmp_path, decl + box + "(assert (>= (- D[0,0] B[0,0]) 1.0))", {"f": g})
    assert rc == 0 and out.startswith("sat\n")
    a = parse_assignment(out)
    assert list(a) == ["A", "B", "C", "D"] and a["D"][2][0, 0] - a["B"][2][0, 0] >= 1.0
    # a --network for the equal-to copy is unnecessary: a mandatory error
    rc, out, err = _solve(capsys, tmp_path, decl + box + "(assert (< D[0,0] B[0,0]))", {"f": g, "f2": g})
    assert rc == 2 and out == "" and "unnecessary" in err
    # independent networks (a product): f(x) and the mlp on the same box, relating their outputs
    decl = ("(declare-network f (declare-input A real [1,2]) (declare-output B real [1,1]))\n"
            "(declare-network h (declare-input X real [1,2]) (declare-output Y real [1,2]))\n")
    box = ("(assert (and (>= A[0,0] 0.0) (<= A[0,0] 0.5) (>= A[0,1] 0.0) (<= A[0,1] 0.5)))" + BOX1)
    rc, out, _ = _solve(capsys, tmp_path, decl + box + "(assert (<= B[0,0] (- Y[0,1] 100.0)))", {"f": g, "h": mlp})
    assert (rc, out) == (0, "unsat\n")
    rc, out, err = _solve(capsys, tmp_path, decl + box + "(assert (<= B[0,0] Y[0,1]))", {"f": g})
    assert rc == 2 and "no --network given for network h" in err


def test_mandatory_errors_element_types(tmp_path, capsys, mlp):
    decl32 = DECL1.replace("real", "float32")
    rc, out, err = _solve(capsys, tmp_path, decl32 + BOX1.replace("1.0", "1.0") + "(assert (<= Y[0,0] 0.0))",
                          {"f": mlp})
    assert rc == 2 and out == "" and "cannot analyse it soundly" in err and one_error(err)
    decl64 = DECL1.replace("real", "float64")
    rc, out, err = _solve(capsys, tmp_path, decl64 + BOX1 + "(assert (<= Y[0,0] 0.0))", {"f": mlp})
    assert rc == 2 and "declared float64" in err and "float32" in err
    rc, out, err = _solve(capsys, tmp_path, DECL1.replace("[1,2])", "[1,3])", 1) + "(assert (<= Y[0,0] 0.0))",
                          {"f": mlp})
    assert rc == 2 and "shape" in err


def test_supports_answers(capsys):
    from nncertify.models.onnx_import import SUPPORTED
    expected = {
        "--onnx-opset-versions": "7\n21\n",
        "--onnx-element-types": "real\n",
        "--onnx-operators": "".join(f"{op} float32\n" for op in SUPPORTED),
        "--vnnlib-versions": "2.0\n2.0\n",
        "--hidden-node-theories": "NH\nH\n",
        "--multiple-input-output-theories": "SIO\nMIO\n",
        "--multiple-network-theories": "SNET\nMENET\nMINET\nMNET\n",
        "--multiple-node-comparison-theories": "SNC\nMNC\n",
        "--arithmetic-complexity-theories": "BND\nCOUT\nLIN\n",
        "--optimised-disjunctive-reasoning": "false\n",
        "--serialise-assignments": "true\n",
    }
    for cap, text in expected.items():
        assert run(capsys, "supports", cap) == (0, text, ""), cap
    rc, out, err = run(capsys, "supports", "--bogus")
    assert rc == 2 and out == "" and "--bogus" in err
    assert run(capsys, "--version")[1].strip().count(".") == 2
    assert run(capsys, "--name")[1].startswith("nncertify")


def test_serialised_assignment(tmp_path, capsys, mlp):
    d = tmp_path / "out"
    p = tmp_path / "q.vnnlib"
    p.write_text(HEAD + DECL1 + BOX1 + "(assert (>= Y[0,0] 0.5))")
    rc, out, _ = run(capsys, "verify", str(p), "--network", f"f={mlp}", "--timeout", "20",
                     "--serialise-assignments", str(d))
    assert rc == 0 and out == "sat\n"
    x = numpy_helper.to_array(onnx.load_tensor(str(d / "X.pb")))
    y = numpy_helper.to_array(onnx.load_tensor(str(d / "Y.pb")))
    assert x.shape == (1, 2) and y.shape == (1, 2) and x.dtype == np.float64
    assert np.allclose(y, ort_run(mlp, {"x": x})[0], atol=1e-6) and y[0, 0] >= 0.5


def test_bad_input_is_one_line_exit_2(tmp_path, capsys, mlp):
    q = tmp_path / "q.vnnlib"
    q.write_text(HEAD + DECL1 + BOX1 + "(assert (>= Y[0,0] 0.5))")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not an onnx file")
    soft = save_model(tmp_path / "soft.onnx", [helper.make_node("Softmax", ["x"], ["y"])], {}, [1, 2], [1, 2])
    f64 = tmp_path / "f64.onnx"
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "t",
                          [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [1, 2])],
                          [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [1, 2])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), str(f64))
    poly = tmp_path / "poly.vnnlib"
    poly.write_text(HEAD + DECL1 + BOX1 + "(assert (>= (* Y[0,0] Y[0,1]) 0.5))")
    v21 = tmp_path / "v21.vnnlib"
    v21.write_text(HEAD.replace("2.0", "2.1") + DECL1 + BOX1 + "(assert (>= Y[0,0] 0.5))")
    cases = [
        (["verify", str(tmp_path / "missing.vnnlib"), "--network", f"f={mlp}", "--timeout", "5"], "no such file"),
        (["verify", str(q), "--network", f"f={garbage}", "--timeout", "5"], "not a readable ONNX"),
        (["verify", str(q), "--network", f"f={tmp_path / 'nope.onnx'}", "--timeout", "5"], "no such file"),
        (["verify", str(q), "--network", f"f={soft}", "--timeout", "5"], "Softmax"),
        (["verify", str(q), "--network", f"f={f64}", "--timeout", "5"], "float64"),
        (["verify", str(q), "--network", f"f{mlp}", "--timeout", "5"], "NAME=FILE"),
        (["verify", str(q), "--network", f"f={mlp}"], "--timeout"),
        (["verify", str(q), "--network", f"f={mlp}", "--timeout", "-1"], "positive"),
        (["verify", str(poly), "--network", f"f={mlp}", "--timeout", "5"], "POLY"),
        (["verify", str(v21), "--network", f"f={mlp}", "--timeout", "5"], "2.1"),
    ]
    for argv, what in cases:
        rc, out, err = run(capsys, *argv)
        assert rc == 2 and out == "" and one_error(err) and what in err and "Traceback" not in err, (argv, err)


def test_single_input_coupled_rows_and_input_only_queries(tmp_path, capsys, mlp):
    rc, out, err = _solve(capsys, tmp_path, DECL1 + BOX1 + "(assert (>= (+ X[0,0] X[0,1]) 2.5))", {"f": mlp})
    assert (rc, out) == (0, "unsat\n"), err
    rc, out, err = _solve(capsys, tmp_path, DECL1 + BOX1 + "(assert (>= (- X[0,0] X[0,1]) 0.5)) (assert (>= Y[0,0] 0.0))",
                          {"f": mlp})
    assert rc == 0 and out.startswith("sat\n"), err
    a = parse_assignment(out)
    assert a["X"][2][0, 0] - a["X"][2][0, 1] >= 0.5 and a["Y"][2][0, 0] >= 0
    # constraints on inputs only: any point of the box is a witness (no analysis), outputs by onnxruntime
    rc, out, err = _solve(capsys, tmp_path, DECL1 + BOX1, {"f": mlp})
    assert rc == 0 and out.startswith("sat\n"), err
    a = parse_assignment(out)
    assert np.allclose(a["Y"][2], ort_run(mlp, {"x": a["X"][2]})[0], atol=1e-6)
    # an empty input box in every clause: unsat without analysis
    rc, out, err = _solve(capsys, tmp_path, DECL1 + "(assert (>= X[0,0] 1.0)) (assert (<= X[0,0] 0.5))", {"f": mlp})
    assert (rc, out) == (0, "unsat\n"), err
    # an unbounded input that the analysis needs: unknown (never unsat)
    rc, out, err = _solve(capsys, tmp_path, DECL1 + "(assert (>= X[0,0] 0.0)) (assert (<= X[0,0] 1.0))"
                          "(assert (>= Y[0,0] 1000.0))", {"f": mlp})
    assert (rc, out) == (0, "unknown\n") and "unbounded" in err


def test_witness_lies_in_the_exact_decimal_box(tmp_path, capsys):
    """0.029999999329447746 is just below float32(0.03): the outward-rounded box's corner is outside the
    decimal box; the witness must be moved inside (regression: this answered unknown on MNIST-FC prop_14)."""
    from fractions import Fraction

    nodes = [helper.make_node("Gemm", ["x", "W", "b"], ["y"], transB=1)]
    path = save_model(tmp_path / "lin.onnx", nodes, {"W": np.array([[1.0, 1.0]]), "b": np.array([0.0])}, [1, 2], [1, 1])
    decl = "(declare-network f (declare-input X real [1,2]) (declare-output Y real [1,1]))\n"
    box = "".join(f"(assert (>= X[0,{i}] 0.0)) (assert (<= X[0,{i}] 0.029999999329447746))" for i in range(2))
    rc, out, err = _solve(capsys, tmp_path, decl + box + "(assert (>= Y[0,0] 0.05999999865889548))", {"f": path})
    assert rc == 0 and out.startswith("sat\n"), err
    x = [Fraction(v) for v in out.splitlines()[2:4]]
    assert all(0 <= v <= Fraction("0.029999999329447746") for v in x) and sum(x) >= Fraction("0.05999999865889548")


def test_name_version_and_supports_do_not_import_torch():
    """A harness asks one capability per process: `--name`, `--version` and every `supports` answer
    come from torch-free tables (models/onnx_support.py), so each answer costs a bare interpreter."""
    import subprocess
    import sys
    code = ("import sys; from nncertify.certify.solver_cli import console_main; "
            "rc = console_main(sys.argv[1:]); "
            "sys.stderr.write('TORCH=%s\\n' % ('torch' in sys.modules)); sys.exit(rc)")
    for args in (["--name"], ["--version"], ["supports", "--onnx-operators"], ["supports", "--vnnlib-versions"],
                 ["supports", "--onnx-element-types", "--onnx-opset-versions"]):
        p = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, (args, p.stderr)
        assert p.stdout.strip(), args
        assert "TORCH=False" in p.stderr, (args, p.stderr)
