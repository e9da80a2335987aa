"""The ONNX importer (models/onnx_import.py) against onnxruntime: bias folding only when it is safe, Sub of
two tensors, several graph inputs (one flat input in declaration order), one-line refusals."""

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from nncertify.certify.vnn import OnnxRuntimeModel  # noqa: E402
from nncertify.models.errors import UnsupportedOperationError  # noqa: E402
from nncertify.models.onnx_import import load_onnx  # noqa: E402

RNG = np.random.default_rng(7)


def vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def save(path, nodes, inputs, out_shape, inits, out="y"):
    g = helper.make_graph(nodes, "t", [vi(k, s) for k, s in inputs], [vi(out, out_shape)],
                          initializer=[numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path


def ort_out(path, feeds):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(s.run(None, {k: np.asarray(v, np.float32) for k, v in feeds.items()})[0], np.float64)


def ours(path, x):
    net = load_onnx(path)
    with torch.no_grad():
        return net(torch.as_tensor(np.asarray(x, np.float32)).reshape(1, *net.input_shape)).double().numpy(), net


def assert_matches(path, in_shape, n=5):
    for _ in range(n):
        x = RNG.normal(size=in_shape).astype(np.float32)
        y, _ = ours(path, x)
        assert np.allclose(y.reshape(-1), ort_out(path, {"x": x}).reshape(-1), atol=1e-5)


W = RNG.normal(size=(3, 4))
B = RNG.normal(size=4)


def test_bias_is_folded_only_when_nothing_else_reads_the_matmul(tmp_path):
    # the simple case still folds: one linear node with the bias
    p = save(tmp_path / "a.onnx", [helper.make_node("MatMul", ["x", "W"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])],
             [("x", [1, 3])], [1, 4], {"W": W, "b": B})
    assert_matches(p, (1, 3))
    _, net = ours(p, np.zeros((1, 3)))
    assert [n.op for n in net.nodes] == ["input", "linear"] and "bias" in net.nodes[1].params
    # m is also read by a Relu: y = (m + b) + relu(m); folding would give relu(m + b)
    p = save(tmp_path / "b.onnx", [helper.make_node("MatMul", ["x", "W"], ["m"]), helper.make_node("Add", ["m", "b"], ["a"]),
                                   helper.make_node("Relu", ["m"], ["r"]), helper.make_node("Add", ["a", "r"], ["y"])],
             [("x", [1, 3])], [1, 4], {"W": W, "b": 10 + B})
    assert_matches(p, (1, 3))
    # an alias through Identity read later: y = (m + b) + relu(identity(m))
    p = save(tmp_path / "c.onnx", [helper.make_node("MatMul", ["x", "W"], ["m"]), helper.make_node("Identity", ["m"], ["m2"]),
                                   helper.make_node("Add", ["m", "b"], ["a"]), helper.make_node("Relu", ["m2"], ["r"]),
                                   helper.make_node("Add", ["a", "r"], ["y"])],
             [("x", [1, 3])], [1, 4], {"W": W, "b": 10 + B})
    assert_matches(p, (1, 3))
    # the Add reads the alias, the MatMul's own output is read elsewhere
    p = save(tmp_path / "d.onnx", [helper.make_node("MatMul", ["x", "W"], ["m"]), helper.make_node("Identity", ["m"], ["m2"]),
                                   helper.make_node("Add", ["m2", "b"], ["a"]), helper.make_node("Relu", ["m"], ["r"]),
                                   helper.make_node("Sub", ["a", "r"], ["y"])],
             [("x", [1, 3])], [1, 4], {"W": W, "b": 10 + B})
    assert_matches(p, (1, 3))


def test_sub_of_two_tensors(tmp_path):
    p = save(tmp_path / "s.onnx", [helper.make_node("MatMul", ["x", "W"], ["m"]), helper.make_node("Relu", ["m"], ["r"]),
                                   helper.make_node("Sub", ["r", "m"], ["y"])],   # relu(m) - m = relu(-m)
             [("x", [1, 3])], [1, 4], {"W": W})
    assert_matches(p, (1, 3))
    x = RNG.normal(size=(1, 3)).astype(np.float32)
    y, _ = ours(p, x)
    assert np.allclose(y, np.maximum(-(x.astype(np.float64) @ W.astype(np.float32)), 0), atol=1e-5)
    p = save(tmp_path / "s2.onnx", [helper.make_node("Sub", ["x", "x"], ["y"])], [("x", [1, 3])], [1, 3], {})
    assert_matches(p, (1, 3))
    # broadcasting between two tensors is refused in one line naming the file, the node and the shapes
    bad = save(tmp_path / "bc.onnx", [helper.make_node("Sub", ["x", "v"], ["y"], name="sub_bc")],
               [("x", [1, 4]), ("v", [1, 1])], [1, 4], {})
    with pytest.raises(UnsupportedOperationError, match=r"bc.onnx: node sub_bc \(Sub\): Sub of two tensors of shapes "
                                                        r"\[4\] and \[1\]") as e:
        load_onnx(bad)
    assert "\n" not in str(e.value)
    bad = save(tmp_path / "mul.onnx", [helper.make_node("Mul", ["x", "x"], ["y"], name="sq")], [("x", [1, 4])], [1, 4], {})
    with pytest.raises(UnsupportedOperationError, match=r"node sq \(Mul\): Mul of two tensors"):
        load_onnx(bad)


def _two_inputs(tmp_path):
    """a [1,2], b [1,1,2,2] (4-D): y = a W1 + flatten(b) W2 - c with c = Relu(b) flattened (Sub of tensors)."""
    W1, W2 = RNG.normal(size=(2, 4)), RNG.normal(size=(4, 4))
    nodes = [helper.make_node("MatMul", ["a", "W1"], ["p"]), helper.make_node("Flatten", ["b"], ["bf"], axis=1),
             helper.make_node("MatMul", ["bf", "W2"], ["q"]), helper.make_node("Add", ["p", "q"], ["s"]),
             helper.make_node("Relu", ["bf"], ["c"]), helper.make_node("Sub", ["s", "c"], ["y"])]
    return save(tmp_path / "two.onnx", nodes, [("a", [1, 2]), ("b", [1, 1, 2, 2])], [1, 4], {"W1": W1, "W2": W2})


def test_several_graph_inputs_are_one_flat_input_in_declaration_order(tmp_path):
    p = _two_inputs(tmp_path)
    net = load_onnx(p)
    assert tuple(net.input_shape) == (6,)
    rt = OnnxRuntimeModel(p)
    for _ in range(5):
        a, b = RNG.normal(size=(1, 2)).astype(np.float32), RNG.normal(size=(1, 1, 2, 2)).astype(np.float32)
        z = np.concatenate([a.reshape(-1), b.reshape(-1)])
        with torch.no_grad():
            y = net(torch.from_numpy(z).reshape(1, 6)).double().numpy().reshape(-1)
        ref = ort_out(p, {"a": a, "b": b}).reshape(-1)
        assert np.allclose(y, ref, atol=1e-5) and np.allclose(rt(z), ref, atol=0)
    # sound bounds over a box of z: sampled outputs inside the interval bounds of the engine
    from nncertify.relax.spec import Query, Specification, verify_query
    lo, hi = -torch.ones(6, dtype=torch.float64), torch.ones(6, dtype=torch.float64)
    zs = RNG.uniform(-1, 1, size=(2000, 6)).astype(np.float32)
    with torch.no_grad():
        ys = net(torch.from_numpy(zs)).double().numpy()
    top = float(ys[:, 0].max())
    # unsat above a sampled maximum + margin would be a lie only if the bound were unsound: check it is not sat there
    v = verify_query(net, Query([Specification(lo, hi, torch.tensor([[-1.0, 0, 0, 0]], dtype=torch.float64),
                                               torch.tensor([-(top - 1e-3)], dtype=torch.float64))]), timeout=20)
    assert v.status != "unsat", v.reason


def test_several_inputs_refused_in_one_line_naming_the_input(tmp_path):
    p = save(tmp_path / "r1.onnx", [helper.make_node("Add", ["a", "v"], ["y"])], [("a", [1, 3]), ("v", [3])], [1, 3], {})
    with pytest.raises(UnsupportedOperationError, match=r"r1.onnx: input 'v' has rank 1") as e:
        load_onnx(p)
    assert "\n" not in str(e.value)
    p = save(tmp_path / "r2.onnx", [helper.make_node("Add", ["a", "v"], ["y"])], [("a", [1, 3]), ("v", [2, 3])], [2, 3], {})
    with pytest.raises(UnsupportedOperationError, match=r"r2.onnx: input 'v' has a fixed batch dimension of 2"):
        load_onnx(p)
