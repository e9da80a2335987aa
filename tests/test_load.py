"""Every loader round-trips (outputs equal), and every refusal path gives a clear one-line error."""

import json
import os
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from nncertify.models import (GroupSort, HouseholderActivation, MaxMin, ModelLoadError, ShapeMismatchError,
                    UnsupportedOperationError, UntrustedPickleError, load, load_model)
from nncertify.models import zoo


def lip_mlp():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), MaxMin(), nn.Linear(8, 8), GroupSort(4),
                      HouseholderActivation(8, 2, torch.randn(4, 2)), nn.Linear(8, 3))
    m[2].running_mean.uniform_(-1, 1)
    return m.eval()


def small_cnn():
    torch.manual_seed(1)
    m = nn.Sequential(nn.Conv2d(1, 3, 3, stride=2, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.AvgPool2d(2),
                      nn.Flatten(), nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
    m[1].running_var.uniform_(0.5, 2)
    return m.eval()


X = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(5))


def same(net, module, x=X):
    torch.testing.assert_close(net(x), module(x), rtol=1e-5, atol=1e-6)


def test_torch_export_round_trip(tmp_path):
    m = lip_mlp()
    torch.export.save(torch.export.export(m, (X,)), tmp_path / "m.pt2")
    lm = load_model(tmp_path / "m.pt2")
    assert lm.format == "pt2"
    assert lm.network.op_counts() == {"flatten": 1, "linear": 3, "scale_shift": 1, "maxmin": 1, "groupsort": 1,
                                      "householder": 1}
    same(lm.network, m)


def test_torch_export_cnn(tmp_path):
    m = small_cnn()
    torch.export.save(torch.export.export(m, (X,)), tmp_path / "c.pt2")
    same(load(tmp_path / "c.pt2"), m)


@pytest.mark.parametrize("how", ["trace", "script_cnn"])
def test_torchscript_round_trip(tmp_path, how):
    m = lip_mlp() if how == "trace" else small_cnn()
    sm = torch.jit.trace(m, X) if how == "trace" else torch.jit.script(m)
    sm.save(str(tmp_path / "m.pt"))  # a .pt that is really TorchScript: detected by content
    lm = load_model(tmp_path / "m.pt", input_shape=(1, 4, 4))
    assert lm.format == "torchscript"
    same(lm.network, m)


def test_onnx_round_trip(tmp_path):
    m = small_cnn()
    torch.onnx.export(m, (X,), str(tmp_path / "m.onnx"), dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "batch"}})
    lm = load_model(tmp_path / "m.onnx")
    assert lm.format == "onnx"
    same(lm.network, m)


def test_onnx_unsupported_op_is_named(tmp_path):
    m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2), nn.Flatten()).eval()
    torch.onnx.export(m, (torch.zeros(1, 1, 6, 6),), str(tmp_path / "p.onnx"), dynamo=False)
    with pytest.raises(UnsupportedOperationError, match="MaxPool"):
        load(tmp_path / "p.onnx")


def test_state_dict_with_factory_and_prefixes(tmp_path):
    m = lip_mlp()
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in m.state_dict().items()}}, tmp_path / "w.pth")
    same(load(tmp_path / "w.pth", arch=lip_mlp, input_shape=(1, 4, 4)), m)
    (tmp_path / "arch.py").write_text(
        "import torch\nfrom torch import nn\nfrom nncertify.models import MaxMin, GroupSort, HouseholderActivation\n"
        "def make():\n    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), MaxMin(),"
        " nn.Linear(8, 8), GroupSort(4), HouseholderActivation(8, 2), nn.Linear(8, 3))\n")
    same(load(tmp_path / "w.pth", arch=f"{tmp_path / 'arch.py'}:make", input_shape=(1, 4, 4)), m)


def test_safetensors_with_spec(tmp_path):
    spec = {"format": "nncertify-arch/1", "input_shape": [6], "layers": [
        {"type": "Linear", "in_features": 6, "out_features": 4}, {"type": "GroupSort", "group_size": 2},
        {"type": "Residual", "body": [{"type": "Linear", "in_features": 4, "out_features": 4}, {"type": "MaxMin"}]},
        {"type": "Linear", "in_features": 4, "out_features": 2}]}
    from nncertify.models.spec import build_module
    torch.manual_seed(0)
    m = build_module(spec).eval()
    (tmp_path / "net.json").write_text(json.dumps(spec))
    save_file(m.state_dict(), str(tmp_path / "net.safetensors"))
    x = torch.randn(5, 6)
    for p in ("net.json", "net.safetensors"):
        torch.testing.assert_close(load(tmp_path / p)(x), m(x))
    torch.testing.assert_close(load(tmp_path / "net.safetensors", arch=str(tmp_path / "net.json"))(x), m(x))


def test_full_pickle_refused_unless_trusted(tmp_path):
    m = lip_mlp()
    torch.save(m, tmp_path / "full.pt")
    with pytest.raises(UntrustedPickleError, match="trust-pickle"):
        load(tmp_path / "full.pt")
    same(load(tmp_path / "full.pt", trust_pickle=True, input_shape=(1, 4, 4)), m)


def test_pickle_with_code_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(UntrustedPickleError):
        load(tmp_path / "evil.pt")
    assert not marker.exists()


@pytest.mark.parametrize("content,suffix", [(b"\x00garbage" * 40, ".pt"), (os.urandom(3000), ".safetensors"),
                                            (os.urandom(3000), ".onnx"), (os.urandom(3000), ".pt2"),
                                            (b"{not json", ".json")])
def test_malformed_files(tmp_path, content, suffix):
    p = tmp_path / f"bad{suffix}"
    p.write_bytes(content)
    with pytest.raises(ModelLoadError) as e:
        load(p, arch=lip_mlp)
    assert str(p) in str(e.value) and "\n" not in str(e.value)


def test_truncated_safetensors(tmp_path):
    m = lip_mlp()
    save_file(m.state_dict(), str(tmp_path / "w.safetensors"))
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "t.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="safetensors"):
        load(tmp_path / "t.safetensors", arch=lip_mlp, input_shape=(1, 4, 4))


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(ModelLoadError, match="no such file"):
        load(tmp_path / "nope.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="empty"):
        load(tmp_path / "empty.pt")


def test_state_dict_mismatch_lists_keys_and_shapes(tmp_path):
    sd = lip_mlp().state_dict()
    sd["1.weight"] = torch.zeros(9, 16)
    sd.pop("7.bias")
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "w.pt")
    with pytest.raises(ShapeMismatchError) as e:
        load(tmp_path / "w.pt", arch=lip_mlp, input_shape=(1, 4, 4))
    msg = str(e.value)
    assert "7.bias" in msg and "extra.weight" in msg and "1.weight (9, 16) vs (8, 16)" in msg


def test_weights_only_file_without_architecture(tmp_path):
    torch.save(lip_mlp().state_dict(), tmp_path / "w.pt")
    with pytest.raises(ModelLoadError, match="architecture"):
        load(tmp_path / "w.pt")
    with pytest.raises(ModelLoadError, match="cannot import"):
        load(tmp_path / "w.pt", arch="no_such_package_xyz:make")


def test_nan_weights_are_refused(tmp_path):
    m = lip_mlp()
    with torch.no_grad():
        m[4].weight[2, 3] = float("inf")
    torch.save(m.state_dict(), tmp_path / "w.pt")
    with pytest.raises(ModelLoadError, match="NaN or Inf"):
        load(tmp_path / "w.pt", arch=lip_mlp, input_shape=(1, 4, 4))


def test_spec_errors_name_the_field(tmp_path):
    spec = {"input_shape": [4], "layers": [{"type": "Linear", "in_features": 4}]}
    (tmp_path / "a.json").write_text(json.dumps(spec))
    save_file({"0.weight": torch.zeros(2, 4)}, str(tmp_path / "a.safetensors"))
    with pytest.raises(ModelLoadError, match=r"layers\[0\]\.out_features: missing"):
        load(tmp_path / "a.json")
    spec["layers"] = [{"type": "Conv3d"}]
    (tmp_path / "a.json").write_text(json.dumps(spec))
    with pytest.raises(ModelLoadError, match=r"layers\[0\]\.type: unknown layer 'Conv3d'"):
        load(tmp_path / "a.json")


@pytest.mark.parametrize("name", zoo.available())
def test_zoo_models_load_and_reach_their_recorded_accuracy(name):
    lm = zoo.load_zoo(name)
    X, y = zoo.digits("test")
    acc = (lm.network(X).argmax(1) == y).float().mean().item()
    assert abs(acc - zoo.info(name)["meta"]["test_accuracy"]) < 1e-3
    assert acc > 0.9


def test_zoo_has_the_required_architectures():
    ops = {n: set(zoo.load_zoo(n).network.op_counts()) for n in zoo.available()}
    need = [{"relu", "linear"}, {"relu", "conv2d"}, {"maxmin"}, {"groupsort"}, {"householder"}, {"maxmin", "add"}]
    for want in need:
        assert any(want <= o for o in ops.values()), want


def test_huge_declared_shapes_are_refused_before_allocation(tmp_path):
    spec = {"input_shape": [8], "layers": [{"type": "Linear", "in_features": 8, "out_features": 10 ** 12}]}
    (tmp_path / "h.json").write_text(json.dumps(spec))
    save_file({"0.weight": torch.zeros(1)}, str(tmp_path / "h.safetensors"))
    with pytest.raises(ModelLoadError, match="more than the limit"):
        load(tmp_path / "h.json")
    import onnx
    from onnx import TensorProto, helper
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 100000, 100000])
    yv = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 100000, 100000])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [yv])
    onnx.save(helper.make_model(g), str(tmp_path / "huge.onnx"))
    with pytest.raises(ShapeMismatchError, match="limit"):
        load(tmp_path / "huge.onnx")


@pytest.mark.parametrize("suffix", [".pt", ".ts", ".pth", ".bin"])
def test_random_bytes_always_give_a_model_load_error(tmp_path, suffix):
    """Regression (bench/hostile_inputs.py): some random byte strings made torch.load raise IndexError,
    which escaped as an internal error. Any unreadable file must be a one-line ModelLoadError."""
    import random
    rnd = random.Random(1)
    cases = []
    for i in range(396):  # case 395 of this stream made torch.load raise IndexError
        cases.append(bytes(rnd.getrandbits(8) for _ in range(5000)))
    cases = cases[-1:] + [head + cases[j][:n] for j, (head, n) in enumerate(
        [(b"", 1), (b"\x80\x02", 7), (b"\x80\x04\x95", 64), (b"PK\x03\x04", 4096), (b"(lp0\n", 100)])]
    for i, data in enumerate(cases):
        p = tmp_path / f"r{i}{suffix}"
        p.write_bytes(data)
        with pytest.raises(ModelLoadError):
            load(p, arch=lip_mlp)
