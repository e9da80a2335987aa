"""Data files for the CLI: every format, and one clear error per kind of bad data."""

import numpy as np
import pytest
import torch

from nncertify.certify.data import load_data
from nncertify.models.errors import DataLoadError

SHAPE = (1, 2, 2)


def test_formats(tmp_path):
    X = np.random.default_rng(0).random((5, 1, 2, 2)).astype(np.float32)
    y = np.array([0, 1, 2, 1, 0])
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "y.npy", y)
    np.savez(tmp_path / "d.npz", x=X.reshape(5, 4), labels=y)
    torch.save({"x": torch.tensor(X), "y": torch.tensor(y)}, tmp_path / "d.pt")
    rows = "a,b,label,c,d\n" + "\n".join(",".join([*map(str, X[i].reshape(-1)[:2]), str(y[i]),
                                                   *map(str, X[i].reshape(-1)[2:])]) for i in range(5))
    (tmp_path / "d.csv").write_text(rows)
    for f, labels in [("x.npy", "y.npy"), ("d.npz", None), ("d.pt", None), ("d.csv", None)]:
        Xt, yt = load_data(tmp_path / f, SHAPE, labels=tmp_path / labels if labels else None, num_classes=3)
        assert Xt.shape == (5, *SHAPE)
        np.testing.assert_allclose(Xt.numpy(), X, rtol=1e-6)
        assert yt.tolist() == y.tolist()


@pytest.mark.parametrize("make,msg", [
    (lambda p: np.save(p / "d.npy", np.zeros((3, 5))), "expects"),
    (lambda p: np.save(p / "d.npy", np.array([["a", "b"]])), "dtype"),
    (lambda p: np.save(p / "d.npy", np.zeros((0, 4))), "no samples"),
    (lambda p: np.save(p / "d.npy", np.array([[0, 1, np.nan, 2.0]])), "NaN"),
    (lambda p: (p / "d.npy").write_bytes(b""), "empty"),
    (lambda p: (p / "d.npy").write_bytes(b"garbage" * 10), "could not be read"),
    (lambda p: np.savez(p / "d.npz", foo=np.zeros((2, 4))), "no input array"),
    (lambda p: np.savez(p / "d.npz", x=np.zeros((2, 4)), y=np.array([0, 7])), "out of range"),
    (lambda p: np.savez(p / "d.npz", x=np.zeros((2, 4)), y=np.array([0, 0.5])), "integers"),
    (lambda p: np.savez(p / "d.npz", x=np.zeros((2, 4)), y=np.array([0])), "labels"),
    (lambda p: (p / "d.csv").write_text("1,2,3,4\n1,2\n"), "columns"),
    (lambda p: (p / "d.xyz").write_text("1"), "unknown data format"),
])
def test_bad_data_gives_one_line_naming_the_file(tmp_path, make, msg):
    make(tmp_path)
    f = next(tmp_path.iterdir())
    with pytest.raises(DataLoadError) as e:
        load_data(f, SHAPE, num_classes=3)
    assert msg in str(e.value) and str(f) in str(e.value) and "\n" not in str(e.value)


def test_pickled_objects_in_data_files_are_refused(tmp_path):
    np.save(tmp_path / "o.npy", np.array([object()], dtype=object), allow_pickle=True)
    with pytest.raises(DataLoadError):
        load_data(tmp_path / "o.npy", SHAPE)


def test_random_bytes_in_data_files_are_data_errors(tmp_path):
    import random
    rnd = random.Random(1)
    blobs = [bytes(rnd.getrandbits(8) for _ in range(5000)) for _ in range(396)][-3:]
    for i, b in enumerate(blobs):
        for suffix in (".pt", ".npy", ".npz", ".csv"):
            p = tmp_path / f"d{i}{suffix}"
            p.write_bytes(b)
            with pytest.raises(DataLoadError):
                load_data(p, SHAPE)
