"""Loader for the MaxMin networks of Pauli et al. (ICLR 2024) released as MATLAB ``.mat`` files.

File layout (``ppauli/QCs_MaxMin/networks_weights``, read with :func:`scipy.io.loadmat`)
-----------------------------------------------------------------------------------------
Each file holds one variable ``W``: a ``1 x L`` MATLAB cell array of real matrices, **no biases**.
Every matrix is stored in the ``W x`` orientation (``out x in``), i.e. ``W{1}`` is ``n1 x n0``.

* Feed-forward (``weights_{l2,linf}_{depth}fc_{width}.mat``, also ``weights_{depth}_{width}.mat``)::

      x_0 = u,   x_k = MaxMin(W{k} x_{k-1})  (k = 1..L-1),   y = W{L} x_{L-1}

* Residual (``resweights_{depth}_{width}.mat``)::

      x_0 = W{1} u,   x_k = x_{k-1} + MaxMin(W{k+1} x_{k-1})  (k = 1..L-2),   y = W{L} x_{L-2}

MaxMin pairs adjacent neurons (``(z_{2i}, z_{2i+1}) -> (max, min)``, the ``blkdiag`` of ``2 x 2`` blocks
in the authors' code), i.e. ``layout="pairs"``.  The orientation is checked against the shapes: the
matrices must chain (``W{k}.shape[1] == W{k-1}.shape[0]``); if every matrix chains only after
transposition, the file is read as ``x W`` orientation and transposed (and said so in
``Network.name``); hidden widths must be even.  Residual files need square hidden matrices.

Residual or feed-forward is taken from ``kind`` (``"auto"``: from the file name prefix ``res``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .errors import ModelLoadError, ShapeMismatchError
from .graph import Network, Node

__all__ = ["load_pauli_mat"]


def _read_cell(path: Path, field: str) -> list[np.ndarray]:
    try:
        from scipy.io import loadmat
        data = loadmat(str(path))
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: file not found") from None
    except Exception as exc:  # scipy raises several types for corrupt files
        raise ModelLoadError(f"{path}: not a readable MATLAB .mat file ({exc})") from None
    if field not in data:
        keys = [k for k in data if not k.startswith("__")]
        raise ModelLoadError(f"{path}: field {field!r} not found (fields: {', '.join(keys) or 'none'})")
    cell = data[field]
    if cell.dtype != object:
        raise ModelLoadError(f"{path}: field {field!r} must be a cell array of matrices, got a {cell.dtype} array")
    mats = []
    for i, m in enumerate(cell.ravel()):
        m = np.asarray(m)
        if m.ndim != 2 or not np.issubdtype(m.dtype, np.number) or np.iscomplexobj(m):
            raise ModelLoadError(f"{path}: {field}{{{i + 1}}} is not a real matrix (shape {m.shape}, {m.dtype})")
        if not np.all(np.isfinite(m)):
            raise ModelLoadError(f"{path}: {field}{{{i + 1}}} contains NaN or Inf")
        mats.append(m.astype(np.float64))
    if len(mats) < 2:
        raise ModelLoadError(f"{path}: field {field!r} holds {len(mats)} matrices; need at least 2")
    return mats


def _chains(mats: list[np.ndarray]) -> bool:
    return all(mats[k].shape[1] == mats[k - 1].shape[0] for k in range(1, len(mats)))


def load_pauli_mat(path: str | Path, kind: str = "auto", field: str = "W",
                   dtype: torch.dtype = torch.float64) -> Network:
    """Load a Pauli et al. MaxMin network (``W`` cell array, no biases) as a :class:`Network`.

    ``kind``: ``"feedforward"``, ``"residual"`` or ``"auto"`` (residual iff the file name starts with
    ``res``).  Raises :class:`ModelLoadError` / :class:`ShapeMismatchError` naming the file and field.
    """
    path = Path(path)
    if kind == "auto":
        kind = "residual" if path.name.lower().startswith("res") else "feedforward"
    if kind not in ("feedforward", "residual"):
        raise ModelLoadError(f"{path}: kind must be 'feedforward', 'residual' or 'auto', got {kind!r}")
    mats = _read_cell(path, field)
    note = ""
    if not _chains(mats):
        t = [m.T for m in mats]
        if _chains(t):
            mats, note = t, " (transposed: file stored x W)"
        else:
            shapes = ", ".join(f"{field}{{{i + 1}}}: {m.shape}" for i, m in enumerate(mats))
            raise ShapeMismatchError(f"{path}: matrices of {field!r} do not chain in either orientation ({shapes})")
    for i, m in enumerate(mats[:-1]):
        if m.shape[0] % 2:
            raise ShapeMismatchError(f"{path}: {field}{{{i + 1}}} has {m.shape[0]} rows; MaxMin needs an even width")
    n0 = mats[0].shape[1]
    nodes = [Node("input", "input", attrs={"shape": (n0,)}, path="input")]

    def lin(i: int, src: str) -> str:
        name = f"linear_{i + 1}"
        w = torch.as_tensor(mats[i], dtype=dtype)
        nodes.append(Node(name, "linear", (src,), {"weight": w, "bias": torch.zeros(w.shape[0], dtype=dtype)},
                          path=f"{field}{{{i + 1}}}"))
        return name

    cur = "input"
    if kind == "feedforward":
        for i in range(len(mats) - 1):
            z = lin(i, cur)
            cur = f"maxmin_{i + 1}"
            nodes.append(Node(cur, "maxmin", (z,), attrs={"layout": "pairs"}, path=f"maxmin after {field}{{{i + 1}}}"))
        lin(len(mats) - 1, cur)
    else:
        if len(mats) < 3:
            raise ModelLoadError(f"{path}: a residual network needs input, >= 1 residual and output matrices")
        cur = lin(0, cur)
        for i in range(1, len(mats) - 1):
            if mats[i].shape[0] != mats[i].shape[1]:
                raise ShapeMismatchError(f"{path}: residual matrix {field}{{{i + 1}}} must be square, got {mats[i].shape}")
            z = lin(i, cur)
            a = f"maxmin_{i + 1}"
            nodes.append(Node(a, "maxmin", (z,), attrs={"layout": "pairs"}, path=f"maxmin after {field}{{{i + 1}}}"))
            s = f"add_{i + 1}"
            nodes.append(Node(s, "add", (cur, a), path=f"residual {i}"))
            cur = s
        lin(len(mats) - 1, cur)
    return Network(nodes, name=path.stem + note)
