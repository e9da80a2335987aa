"""The VNN-COMP interface: ONNX import vs onnxruntime, the sat re-check, `certify vnnlib` / `certify vnncomp`."""

import csv
import gzip
import math

import numpy as np
import pytest
import torch
from torch import nn

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from nncertify.certify.vnn import (OnnxRuntimeModel, check_against_runtime, read_instances, recheck,  # noqa: E402
                                   representable_point, run_instance)
from nncertify.models.errors import ModelLoadError, UnsupportedOperationError  # noqa: E402
from nncertify.models.onnx_import import load_onnx  # noqa: E402
from nncertify.relax.spec import Query, Specification, Verdict  # noqa: E402
from nncertify.relax.vnnlib import read_vnnlib, to_query  # noqa: E402

from milp_oracle import spec_min  # noqa: E402
from test_cli import certify_inproc  # noqa: E402


def ort_eval(path, x):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    i = s.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in i.shape]
    return np.asarray(s.run(None, {i.name: np.asarray(x, np.float32).reshape(shape)})[0], np.float64).reshape(-1)


def save(graph, path, opset=13):
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path


def init(name, a):
    return numpy_helper.from_array(np.asarray(a, np.float32), name)


def tiny_acas_like(path):
    """ACAS-Xu-style graph: input [1,1,1,2]; Sub mean and Div range in the graph (the mean is an
    initializer that is also a graph input, as in the MATLAB-converted files); Flatten; MatMul+Add.
    With z = (x - (0.5, 0)) / (2, 1):  y0 = relu(z0) + relu(-z0) = |z0|,  y1 = relu(z1)."""
    inits = [init("mean", np.array([0.5, 0.0]).reshape(1, 1, 1, 2)), init("range", np.array([2.0, 1.0]).reshape(1, 1, 1, 2)),
             init("W1", [[1, -1, 0], [0, 0, 1]]), init("b1", [0, 0, 0]),
             init("W2", [[1, 0], [1, 0], [0, 1]]), init("b2", [0, 0])]
    nodes = [helper.make_node("Sub", ["input", "mean"], ["s"], name="normalize_sub"),
             helper.make_node("Div", ["s", "range"], ["z"], name="normalize_div"),
             helper.make_node("Flatten", ["z"], ["f"], axis=1, name="flat"),
             helper.make_node("MatMul", ["f", "W1"], ["m1"], name="mm1"), helper.make_node("Add", ["m1", "b1"], ["a1"]),
             helper.make_node("Relu", ["a1"], ["r1"], name="relu1"),
             helper.make_node("MatMul", ["r1", "W2"], ["m2"], name="mm2"), helper.make_node("Add", ["m2", "b2"], ["out"])]
    inputs = [helper.make_tensor_value_info("mean", TensorProto.FLOAT, [1, 1, 1, 2]),
              helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 1, 2])]
    g = helper.make_graph(nodes, "tiny", inputs, [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 2])],
                          initializer=inits)
    return save(g, path)


HEAD = "".join(f"(declare-const X_{i} Real)\n" for i in range(2)) + "(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"
BOX = "(assert (<= X_0 2.5))\n(assert (>= X_0 -1.5))\n(assert (<= X_1 1.0))\n(assert (>= X_1 -1.0))\n"
UNSAT = HEAD + BOX + "(assert (>= Y_0 1.5))\n"                          # |z0| <= 1 on the box
SAT = HEAD + BOX + "(assert (>= Y_0 0.9))\n(assert (<= Y_1 0.1))\n"     # z0 near +-1 and z1 <= 0.1
OR = HEAD + BOX + "(assert (or (and (>= Y_0 1.5)) (and (>= Y_0 0.9) (<= Y_1 0.1))))\n"


@pytest.fixture
def tiny(tmp_path):
    net = tiny_acas_like(tmp_path / "tiny.onnx")
    for name, text in (("unsat", UNSAT), ("sat", SAT), ("or", OR)):
        (tmp_path / f"{name}.vnnlib").write_text(text)
    (tmp_path / "sat.vnnlib.gz").write_bytes(gzip.compress(SAT.encode()))
    return tmp_path


# ------------------------------------------------------------------------------------------ import vs onnxruntime
def test_tiny_graph_import_matches_onnxruntime_and_closed_form(tiny):
    net = load_onnx(tiny / "tiny.onnx")
    assert net.input_shape == (1, 1, 2) and net.output_shape == (2,)
    X = torch.rand(64, 1, 1, 2) * 4 - 1.5
    y = net(X)
    z0, z1 = (X[..., 0].flatten() - 0.5) / 2, X[..., 1].flatten()
    torch.testing.assert_close(y, torch.stack([z0.abs(), z1.clamp_min(0)], 1), atol=1e-6, rtol=0)
    for x, yy in zip(X[:16], y[:16]):
        np.testing.assert_allclose(ort_eval(tiny / "tiny.onnx", x.numpy()), yy.numpy(), atol=1e-6)


class FlattenByView(nn.Module):
    """Conv before every activation, flatten via x.view(x.size(0), -1) (Shape/Gather/Concat/Reshape
    in the exported graph), a constant-first subtraction 1 - x, an odd 3x5 image."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 2, padding=1)
        self.lin = nn.Linear(3 * 4 * 6, 4)

    def forward(self, x):
        h = torch.relu(self.conv(1.0 - x))
        return self.lin(h.view(h.size(0), -1))


def test_exported_graphs_match_onnxruntime(tmp_path):
    torch.manual_seed(0)
    cases = {
        "view": (FlattenByView().eval(), (1, 2, 3, 5)),
        "mlp": (nn.Sequential(nn.Flatten(), nn.Linear(7, 5), nn.LeakyReLU(0.1), nn.Linear(5, 3)).eval(), (1, 7)),
    }
    for name, (m, shape) in cases.items():
        path = tmp_path / f"{name}.onnx"
        torch.onnx.export(m, (torch.zeros(shape),), str(path), dynamo=False)
        net = load_onnx(path)
        rt = OnnxRuntimeModel(path)
        for _ in range(10):
            x = torch.randn(shape)
            np.testing.assert_allclose(net(x).detach().numpy().reshape(-1), rt(x.numpy()), atol=1e-5, rtol=1e-5)
            np.testing.assert_allclose(m(x).detach().numpy().reshape(-1), rt(x.numpy()), atol=1e-5, rtol=1e-5)


def test_unsupported_node_is_named_in_one_line(tmp_path):
    g = helper.make_graph([helper.make_node("Flatten", ["x"], ["f"], name="flat"),
                           helper.make_node("Sin", ["f"], ["y"], name="weird_sine")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    with pytest.raises(UnsupportedOperationError) as ei:
        load_onnx(save(g, tmp_path / "sin.onnx"))
    assert "node weird_sine (Sin)" in str(ei.value) and "sin.onnx" in str(ei.value) and "\n" not in str(ei.value)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "x2"], ["y"], name="mm_tensors"),
                           helper.make_node("Identity", ["x"], ["x2"], name="copy")][::-1], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    with pytest.raises(UnsupportedOperationError, match=r"node mm_tensors \(MatMul\): MatMul of two tensors"):
        load_onnx(save(g, tmp_path / "mm.onnx"))


def test_vnncomp_networks_match_onnxruntime(shared_data):
    root = shared_data / "vnncomp2021"
    gen = torch.Generator().manual_seed(0)
    files = [root / "acasxu" / f"ACASXU_run2a_{a}_batch_2000.onnx" for a in ("1_1", "3_3", "5_9")]
    files += [root / "mnistfc" / f"mnist-net_256x{k}.onnx" for k in (2, 4, 6)]
    for f in files:
        net = load_onnx(f)
        rt = OnnxRuntimeModel(f)
        acas = "ACASXU" in f.name
        assert net.input_shape == ((1, 1, 5) if acas else (784, 1)), f.name
        assert net.output_shape == ((5,) if acas else (10,))
        net64 = net.to(dtype=torch.float64)
        for _ in range(20):
            u = torch.rand(net.input_shape, generator=gen)
            x = (u - 0.5) if acas else u  # ACAS boxes are normalised around 0, MNIST pixels in [0, 1]
            y_rt = rt(x.numpy())
            np.testing.assert_allclose(net(x.unsqueeze(0)).detach().numpy().reshape(-1), y_rt, atol=2e-5, rtol=1e-5)
            np.testing.assert_allclose(net64(x.double().unsqueeze(0)).numpy().reshape(-1), y_rt, atol=2e-5, rtol=1e-5)


def test_import_mismatch_with_onnxruntime_is_refused(tiny):
    net = load_onnx(tiny / "tiny.onnx")
    q = to_query(read_vnnlib(tiny / "sat.vnnlib"), net.input_shape, 2)
    rt = OnnxRuntimeModel(tiny / "tiny.onnx")
    assert check_against_runtime(net, rt, q) < 1e-6

    class Off(OnnxRuntimeModel):
        def __call__(self, x):
            return super().__call__(x) + np.array([0.0, 0.5])

    off = Off(tiny / "tiny.onnx")
    with pytest.raises(ModelLoadError, match="disagrees with onnxruntime"):
        check_against_runtime(net, off, q)


# ------------------------------------------------------------------------------------------ the sat re-check
def tiny_query(tiny, name):
    net = load_onnx(tiny / "tiny.onnx")
    return net, to_query(read_vnnlib(tiny / f"{name}.vnnlib"), net.input_shape, 2)


def test_recheck_accepts_true_witness_clipped_into_the_box(tiny):
    net, q = tiny_query(tiny, "sat")
    rt = OnnxRuntimeModel(tiny / "tiny.onnx")
    # x0 = 2.6 lies outside the box (x0 <= 2.5): clipped to 2.5 (z0 = 1), x1 = -0.5 -> y = (1, 0)
    v = recheck(net, q, Verdict("sat", torch.tensor([[[2.6, -0.5]]], dtype=torch.float64), reason="test"), rt)
    assert v.status == "sat" and v.spec_index == 0
    assert v.counterexample.tolist() == [[[2.5, -0.5]]]
    assert "onnxruntime" in v.reason
    np.testing.assert_allclose(v.output.numpy(), ort_eval(tiny / "tiny.onnx", [2.5, -0.5]))


def test_recheck_rejects_a_false_witness_and_a_runtime_disagreement(tiny):
    net, q = tiny_query(tiny, "sat")
    rt = OnnxRuntimeModel(tiny / "tiny.onnx")
    bad = recheck(net, q, Verdict("sat", torch.tensor([[[0.5, -0.5]]], dtype=torch.float64), reason="test"), rt)
    assert bad.status == "unknown" and "failed the re-check" in bad.reason and "float64 model" in bad.reason

    class Off(OnnxRuntimeModel):
        def __call__(self, x):
            return super().__call__(x) + np.array([0.0, 1.0])  # Y_1 <= 0.1 fails in the runtime only

    off = Off(tiny / "tiny.onnx")
    v = recheck(net, q, Verdict("sat", torch.tensor([[[2.5, -0.5]]], dtype=torch.float64), reason="test"), off)
    assert v.status == "unknown" and "onnxruntime" in v.reason
    none = recheck(net, q, Verdict("sat", None, reason="test"), rt)
    assert none.status == "unknown" and "without a counterexample" in none.reason
    assert recheck(net, q, Verdict("unsat", reason="crown"), rt).status == "unsat"


def test_representable_point_stays_in_the_box():
    lo = torch.tensor([0.1, 0.3, -1.0], dtype=torch.float64)
    hi = torch.tensor([0.1 + 1e-8, 0.3, 1.0], dtype=torch.float64)
    x = representable_point(torch.tensor([5.0, 0.3, 0.123456789123]), lo, hi, np.float32)
    assert bool(((x >= lo) & (x <= hi)).all())
    assert x[0].item() == float(np.float32(x[0].item()))      # 0.10000000149 is a float32 in the box
    assert x[1].item() == 0.3                                   # degenerate box at a non-float32 value: kept
    assert x[2].item() == float(np.float32(x[2].item()))


# ------------------------------------------------------------------------------------------ one instance
def test_run_instance_verdicts_agree_with_milp(tiny):
    net = load_onnx(tiny / "tiny.onnx")
    for name, want in (("unsat", "unsat"), ("sat", "sat"), ("or", "sat")):
        q = to_query(read_vnnlib(tiny / f"{name}.vnnlib"), net.input_shape, 2)
        truth = min(spec_min(net, s.lower, s.upper, s.C, s.d) for s in q.specs)
        assert (truth <= 0) == (want == "sat")
        r = run_instance(tiny / "tiny.onnx", tiny / f"{name}.vnnlib", timeout=60)
        assert r.result == want, (name, r.reason)
        if want == "sat":
            x = np.array(r.witness_x)
            y = ort_eval(tiny / "tiny.onnx", x)
            np.testing.assert_array_equal(y, r.witness_y)
            assert -1.5 <= x[0] <= 2.5 and -1 <= x[1] <= 1 and y[0] >= 0.9 and y[1] <= 0.1
    r = run_instance(tiny / "tiny.onnx", tiny / "or.vnnlib", timeout=60)
    assert r.verdict.spec_index == 1


def test_box_only_and_empty_properties(tiny):
    (tiny / "box.vnnlib").write_text(HEAD + BOX)  # no output constraint: every point is a counterexample
    r = run_instance(tiny / "tiny.onnx", tiny / "box.vnnlib", timeout=30)
    assert r.result == "sat" and len(r.witness_x) == 2
    (tiny / "empty.vnnlib").write_text(HEAD + "(assert (<= X_0 -1))(assert (>= X_0 1))(assert (<= X_1 1))"
                                              "(assert (>= X_1 0))(assert (<= Y_0 0))")
    r = run_instance(tiny / "tiny.onnx", tiny / "empty.vnnlib", timeout=30)
    assert r.result == "unsat" and "empty" in r.reason


def parse_result(text):
    lines = text.strip().split("\n")
    vals = {}
    for tok in " ".join(lines[1:]).replace("(", " ").replace(")", " ").split():
        vals.setdefault("_", []).append(tok)
    toks = vals.get("_", [])
    return lines[0], {toks[i]: float(toks[i + 1]) for i in range(0, len(toks), 2)}


def test_falsified_mnistfc_witness_rechecked_by_onnxruntime(shared_data, tmp_path):
    root = shared_data / "vnncomp2021" / "mnistfc"
    onnx_path, prop = root / "mnist-net_256x2.onnx", root / "prop_1_0.05.vnnlib"
    r = run_instance(onnx_path, prop, timeout=120)
    assert r.result == "sat", r.reason  # PGD falsifies this one (VNN-COMP 2021: violated)
    word, vals = parse_result(r.text())
    assert word == "sat"
    x = np.array([vals[f"X_{i}"] for i in range(784)])
    ys = np.array([vals[f"Y_{j}"] for j in range(10)])
    spec = read_vnnlib(prop)
    dj = spec.disjuncts[0]
    assert (x >= dj.lower).all() and (x <= dj.upper).all()           # the written values, exactly
    assert np.array_equal(x.astype(np.float32).astype(np.float64), x)  # what onnxruntime is fed
    y = ort_eval(onnx_path, x)                                        # a fresh, independent session
    np.testing.assert_array_equal(y, ys)
    assert any((d.C @ y <= d.d).all() for d in spec.disjuncts)


# ------------------------------------------------------------------------------------------ the commands
def test_cli_vnnlib_sat_unsat_and_bad_input(tiny, capsys):
    r = certify_inproc(capsys, "vnnlib", tiny / "tiny.onnx", tiny / "unsat.vnnlib", "--timeout", "60",
                       "--out", tiny / "u.txt")
    assert r.returncode == 0 and (tiny / "u.txt").read_text() == "unsat\n"
    r = certify_inproc(capsys, "vnnlib", tiny / "tiny.onnx", tiny / "sat.vnnlib.gz", "--timeout", "60",
                       "--out", tiny / "s.txt")
    assert r.returncode == 1
    word, vals = parse_result((tiny / "s.txt").read_text())
    assert word == "sat" and set(vals) == {"X_0", "X_1", "Y_0", "Y_1"}
    y = ort_eval(tiny / "tiny.onnx", [vals["X_0"], vals["X_1"]])
    assert y[0] >= 0.9 and y[1] <= 0.1 and y[0] == vals["Y_0"]
    (tiny / "bad.vnnlib").write_text(HEAD + BOX + "(assert (<= Y_0 (* Y_1 Y_1)))\n")
    (tiny / "three.vnnlib").write_text(HEAD.replace("(declare-const Y_1 Real)", "(declare-const Y_1 Real)"
                                                    "(declare-const Y_2 Real)") + BOX + "(assert (<= Y_2 0))")
    (tiny / "junk.onnx").write_bytes(b"not an onnx file at all")
    for args, words in (((tiny / "tiny.onnx", tiny / "bad.vnnlib"), ["bad.vnnlib:9:", "non-linear"]),
                        ((tiny / "tiny.onnx", tiny / "three.vnnlib"), ["three.vnnlib", "3 outputs", "has 2"]),
                        ((tiny / "junk.onnx", tiny / "sat.vnnlib"), ["junk.onnx"]),
                        ((tiny / "tiny.onnx", tiny / "missing.vnnlib"), ["missing.vnnlib", "no such file"])):
        r = certify_inproc(capsys, "vnnlib", *args, "--timeout", "10")
        assert r.returncode == 2, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
        for w in words:
            assert w in r.stderr, r.stderr


def test_cli_vnncomp_benchmark_resumes(tiny, capsys):
    # no final newline (as VNN-COMP 2021's mnistfc csv), \r\n, a .gz property found for a .vnnlib row
    (tiny / "instances.csv").write_bytes(b"tiny.onnx,unsat.vnnlib,60\r\ntiny.onnx,sat.vnnlib,60\n"
                                         b"tiny.onnx,or.vnnlib,60\ntiny.onnx,broken.vnnlib,60")
    (tiny / "broken.vnnlib").write_text(HEAD + BOX + "(assert (<= Y_0 1)\n")
    (tiny / "gz.csv").write_text("tiny.onnx,sat.vnnlib.gz,60\n")
    assert [i.vnnlib.name for i in read_instances(tiny / "instances.csv")] == ["unsat.vnnlib", "sat.vnnlib", "or.vnnlib",
                                                                             "broken.vnnlib"]
    out = tiny / "res" / "results.csv"
    r = certify_inproc(capsys, "vnncomp", tiny / "instances.csv", "--out", out, "--limit", "2", "--timeout-scale", "0.5")
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(out.open()))
    assert [(x["vnnlib"], x["result"], x["timeout_s"]) for x in rows] == [("unsat.vnnlib", "unsat", "30"),
                                                                          ("sat.vnnlib", "sat", "30")]
    assert "2/2 instances run: unsat 1, sat 1" in r.stdout and "solved 2" in r.stdout
    ce = (out.parent / "results.csv.counterexamples" / "tiny__sat.txt").read_text()
    assert ce.startswith("sat\n((X_0 ")
    # resume: the two finished rows are kept, only the last two run; a torn last line is cut off; a broken
    # property is an 'error' row (with the one-line reason) and the exit code is 1, the run goes on
    with out.open("a") as f:
        f.write("tiny.onnx,or.vnn")
    r = certify_inproc(capsys, "vnncomp", tiny / "instances.csv", "--out", out)
    assert r.returncode == 1
    rows2 = list(csv.DictReader(out.open()))
    assert rows2[:2] == rows and [x["result"] for x in rows2] == ["unsat", "sat", "sat", "error"]
    assert "broken.vnnlib:9: unbalanced '('" in rows2[3]["reason"]
    assert "4/4 instances run" in r.stdout and "error 1" in r.stdout
    for bad, words in (("tiny.onnx,unsat.vnnlib\n", ["bad.csv:1", "onnx,vnnlib,timeout"]),
                       ("tiny.onnx,nothere.vnnlib,5\n", ["bad.csv:1", "nothere.vnnlib", "does not exist"]),
                       ("tiny.onnx,unsat.vnnlib,-3\n", ["bad.csv:1", "positive"])):
        (tiny / "bad.csv").write_text(bad)
        r = certify_inproc(capsys, "vnncomp", tiny / "bad.csv", "--out", tiny / "b.csv")
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
        for w in words:
            assert w in r.stderr, r.stderr


def test_worker_is_killed_past_its_hard_limit(tiny):
    from nncertify.certify.vnn import _Worker
    w = _Worker(1)
    try:
        rec = w.run({"onnx": str(tiny / "tiny.onnx"), "vnnlib": str(tiny / "sat.vnnlib"), "timeout": 60}, hard_limit=0.3)
    finally:
        w.stop()
    assert rec["result"] == "timeout" and "killed" in rec["reason"]


def test_acasxu_instances_end_to_end(shared_data, tmp_path):
    """Two ACAS Xu instances through the whole path: 1_9/P4 is violated (VNN-COMP 2021: P4 has 3
    violated networks) -- its written witness must lie in the box and violate P4 in a fresh onnxruntime
    session; 2_9/P3 holds -- our answer must not be sat."""
    root = shared_data / "vnncomp2021" / "acasxu"
    onnx_path = root / "ACASXU_run2a_1_9_batch_2000.onnx"
    r = run_instance(onnx_path, root / "prop_4.vnnlib", timeout=60)
    assert r.result == "sat", r.reason
    word, vals = parse_result(r.text())
    x = np.array([vals[f"X_{i}"] for i in range(5)])
    spec = read_vnnlib(root / "prop_4.vnnlib")
    y = ort_eval(onnx_path, x)
    assert np.array_equal(y, [vals[f"Y_{j}"] for j in range(5)])
    assert any((d.lower <= x).all() and (x <= d.upper).all() and (d.C @ y <= d.d).all() for d in spec.disjuncts)
    assert x[2] == 0.0  # P4 pins X_2 to 0: the degenerate box is kept exactly
    r = run_instance(root / "ACASXU_run2a_2_9_batch_2000.onnx", root / "prop_3.vnnlib", timeout=60)
    assert r.result in ("unsat", "unknown", "timeout"), r.reason


def test_decimal_property_is_never_unsat_by_rounding(tmp_path):
    """y = x on 0 <= x <= 0.3 with 3 y >= 0.9: over the reals x = 0.3 is a counterexample.  Rounded to
    nearest (box up to float(0.3) < 0.3, row 3 y >= float(0.9) > 0.9) the query would be empty and the
    answer a false unsat; rounded outward it is not, and no float point satisfies the exact decimals,
    so the honest answer is unknown.  With 3 y >= 0.6 the witness is re-checked exactly."""
    g = helper.make_graph([helper.make_node("Gemm", ["x", "W", "b"], ["y"], transB=1)], "id",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])],
                          [init("W", [[1.0]]), init("b", [0.0])])
    path = save(g, tmp_path / "id.onnx")
    decl = "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (>= X_0 0.0))\n(assert (<= X_0 0.3))\n"
    p = tmp_path / "p.vnnlib"
    p.write_text(decl + "(assert (>= (* 3 Y_0) 0.9))\n")
    res = run_instance(path, p, 20)
    assert res.result == "unknown", (res.result, res.reason)
    p.write_text(decl + "(assert (>= (* 3 Y_0) 0.6))\n")
    res = run_instance(path, p, 20)
    assert res.result == "sat", res.reason
    from fractions import Fraction
    x, y = Fraction(res.witness_x[0]), Fraction(res.witness_y[0])
    assert 0 <= x <= Fraction("0.3") and 3 * y >= Fraction("0.6") and y == Fraction(float(np.float32(res.witness_x[0])))


def test_two_input_model_through_the_vnnlib_1_path(tmp_path):
    """X_0..X_1 are input a [1,2], X_2..X_4 input b [1,3] (declaration order, row-major); y = a_0 - b_2 - a_1."""
    g = helper.make_graph([helper.make_node("Gemm", ["a", "Wa", "c"], ["p"], transB=1),
                           helper.make_node("Gemm", ["b", "Wb", "c"], ["q"], transB=1),
                           helper.make_node("Sub", ["p", "q"], ["y"])], "two",
                          [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 2]),
                           helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])],
                          [init("Wa", [[1.0, -1.0]]), init("Wb", [[0.0, 0.0, 1.0]]), init("c", [0.0])])
    path = save(g, tmp_path / "two.onnx")
    decl = "".join(f"(declare-const X_{i} Real)\n" for i in range(5)) + "(declare-const Y_0 Real)\n"
    box = "".join(f"(assert (>= X_{i} 0.0))\n(assert (<= X_{i} 1.0))\n" for i in range(5))
    p = tmp_path / "p.vnnlib"
    p.write_text(decl + box + "(assert (>= Y_0 1.01))\n")   # max a_0 - a_1 - b_2 = 1
    assert run_instance(path, p, 20).result == "unsat"
    p.write_text(decl + box + "(assert (>= Y_0 0.9))\n")
    res = run_instance(path, p, 20)
    assert res.result == "sat", res.reason
    x = np.asarray(res.witness_x)
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    y = s.run(None, {"a": x[:2].reshape(1, 2).astype(np.float32), "b": x[2:].reshape(1, 3).astype(np.float32)})[0]
    assert y[0, 0] >= 0.9 and np.isclose(res.witness_y[0], y[0, 0]) and np.isclose(y[0, 0], x[0] - x[1] - x[4], atol=1e-6)
