"""models.matlab.load_pauli_mat: layout, orientation, residual structure and error messages."""

from pathlib import Path

import numpy as np
import pytest
import scipy.io as sio
import torch

from nncertify.models.errors import ModelLoadError, ShapeMismatchError
from nncertify.models.matlab import load_pauli_mat

DATA = Path(__file__).parents[1].parent / "shared" / "data" / "pauli2024_maxmin"


def _maxmin_np(z):
    a, b = z[:, 0::2], z[:, 1::2]
    out = np.empty_like(z)
    out[:, 0::2], out[:, 1::2] = np.maximum(a, b), np.minimum(a, b)
    return out


def _save(tmp_path, name, mats):
    cell = np.empty((1, len(mats)), dtype=object)
    for i, m in enumerate(mats):
        cell[0, i] = m
    p = tmp_path / name
    sio.savemat(str(p), {"W": cell})
    return p


def test_feedforward_semantics(tmp_path):
    rng = np.random.default_rng(0)
    mats = [rng.standard_normal((6, 5)), rng.standard_normal((4, 6)), rng.standard_normal((3, 4))]
    net = load_pauli_mat(_save(tmp_path, "weights_x.mat", mats))
    x = rng.standard_normal((7, 5))
    ref = _maxmin_np(_maxmin_np(x @ mats[0].T) @ mats[1].T) @ mats[2].T
    assert np.allclose(net(torch.tensor(x)).numpy(), ref, atol=1e-12)


def test_transposed_orientation_is_detected(tmp_path):
    rng = np.random.default_rng(1)
    mats = [rng.standard_normal((6, 5)), rng.standard_normal((3, 6))]
    net = load_pauli_mat(_save(tmp_path, "weights_t.mat", [m.T for m in mats]))
    x = rng.standard_normal((4, 5))
    assert np.allclose(net(torch.tensor(x)).numpy(), _maxmin_np(x @ mats[0].T) @ mats[1].T)
    assert "transposed" in net.name


def test_residual_semantics(tmp_path):
    rng = np.random.default_rng(2)
    mats = [rng.standard_normal((4, 7)), rng.standard_normal((4, 4)), rng.standard_normal((4, 4)),
            rng.standard_normal((2, 4))]
    net = load_pauli_mat(_save(tmp_path, "resweights_x.mat", mats))
    assert not net.is_chain()
    x = rng.standard_normal((5, 7))
    h = x @ mats[0].T
    for W in mats[1:3]:
        h = h + _maxmin_np(h @ W.T)
    assert np.allclose(net(torch.tensor(x)).numpy(), h @ mats[3].T, atol=1e-12)


def test_errors_name_file_and_field(tmp_path):
    with pytest.raises(ModelLoadError, match="nope.mat"):
        load_pauli_mat(tmp_path / "nope.mat")
    p = tmp_path / "other.mat"
    sio.savemat(str(p), {"V": np.eye(2)})
    with pytest.raises(ModelLoadError, match="field 'W' not found"):
        load_pauli_mat(p)
    rng = np.random.default_rng(3)
    with pytest.raises(ShapeMismatchError, match="do not chain"):
        load_pauli_mat(_save(tmp_path, "weights_bad.mat", [rng.standard_normal((4, 5)), rng.standard_normal((3, 7))]))
    with pytest.raises(ShapeMismatchError, match="even width"):
        load_pauli_mat(_save(tmp_path, "weights_odd.mat", [rng.standard_normal((3, 5)), rng.standard_normal((2, 3))]))
    bad = [rng.standard_normal((4, 5)), rng.standard_normal((2, 4))]
    bad[0][0, 0] = np.nan
    with pytest.raises(ModelLoadError, match=r"W\{1\} contains NaN"):
        load_pauli_mat(_save(tmp_path, "weights_nan.mat", bad))


def test_released_files_load():
    if not DATA.exists():
        pytest.skip(f"shared data folder {DATA} is absent")
    net = load_pauli_mat(DATA / "weights_l2_18fc_32.mat")
    assert net.input_shape == (784,) and net.output_shape == (10,)
    assert net.op_counts()["maxmin"] == 17
    res = load_pauli_mat(DATA / "resweights_5_32.mat")
    assert res.op_counts()["add"] == 3 and res.output_shape == (10,)
    # MP (product of spectral norms) quoted in the reference for 18x32: 73,403
    W = [n.params["weight"] for n in net.nodes if n.op == "linear"]
    mp = float(np.prod([torch.linalg.matrix_norm(w, 2).item() for w in W]))
    assert abs(mp - 73403) / 73403 < 1e-3
