"""Read input data for the CLI: ``.npy``, ``.npz``, ``.pt`` (tensors only, never pickled code) and CSV.

Returns ``(X, y)`` with ``X`` reshaped to the model's per-sample input shape and ``y`` the integer
labels (or ``None``).  Every problem (missing file, wrong shape or dtype, empty, NaN/Inf, labels out
of range) raises :class:`DataLoadError` with one line naming the file and what is wrong.

Layouts understood:
* ``.npy``: one array ``X``; labels, if any, from ``--labels FILE`` (a second .npy);
* ``.npz``: arrays named ``x``/``X``/``data``/``inputs`` and ``y``/``labels``/``targets``;
* ``.pt``: a tensor, a ``(X, y)`` pair, or a dict with the keys above (loaded with ``weights_only``);
* ``.csv``: numeric columns; a column named ``label``/``y``/``target`` (header row) is the label.
"""

from __future__ import annotations

import csv
import pickle
from pathlib import Path

import numpy as np
import torch

from ..models.errors import DataLoadError

_X_KEYS = ("x", "X", "data", "inputs", "images")
_Y_KEYS = ("y", "Y", "labels", "label", "targets", "target")


def _as_array(obj, path: Path, what: str) -> np.ndarray:
    if isinstance(obj, torch.Tensor):
        obj = obj.detach().cpu().numpy()
    arr = np.asarray(obj)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise DataLoadError(f"{path}: {what} has dtype {arr.dtype}, expected numbers")
    return arr


def _pick(d: dict, keys, path: Path, what: str, required: bool):
    for k in keys:
        if k in d:
            return d[k]
    if required:
        raise DataLoadError(f"{path}: no {what} array (expected one of {', '.join(keys)}; found {', '.join(map(str, d))})")
    return None


def read_arrays(path: str | Path, labels: str | Path | None = None):
    path = Path(path)
    if not path.exists():
        raise DataLoadError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DataLoadError(f"{path}: the file is empty")
    suffix = path.suffix.lower()
    y = None
    try:
        if suffix == ".npy":
            X = np.load(path, allow_pickle=False)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                d = {k: z[k] for k in z.files}
            X, y = _pick(d, _X_KEYS, path, "input", True), _pick(d, _Y_KEYS, path, "label", False)
        elif suffix in (".pt", ".pth"):
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError as exc:
                if "GLOBAL" in str(exc):
                    raise DataLoadError(f"{path}: holds pickled Python objects; data files may contain tensors "
                                        f"only (they are never unpickled)") from None
                raise
            if isinstance(obj, dict):
                X, y = _pick(obj, _X_KEYS, path, "input", True), _pick(obj, _Y_KEYS, path, "label", False)
            elif isinstance(obj, (tuple, list)) and len(obj) == 2:
                X, y = obj
            else:
                X = obj
        elif suffix in (".csv", ".txt"):
            X, y = _read_csv(path)
        else:
            raise DataLoadError(f"{path}: unknown data format {suffix!r} (use .npy, .npz, .pt or .csv)")
    except DataLoadError:
        raise
    except Exception as exc:  # only safe readers are used (allow_pickle=False, weights_only=True)
        msg = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise DataLoadError(f"{path}: could not be read as {suffix or 'data'} ({msg})") from None
    if labels is not None:
        y = read_arrays(labels)[0]
    X = _as_array(X, path, "the input array")
    if y is not None:
        y = _as_array(y, path, "the label array")
    return X, y


def _read_csv(path: Path):
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    if not rows:
        raise DataLoadError(f"{path}: the file has no rows")
    header = None
    try:
        float(rows[0][0])
    except ValueError:
        header, rows = [c.strip() for c in rows[0]], rows[1:]
    if not rows:
        raise DataLoadError(f"{path}: the file has a header but no data rows")
    width = len(rows[0])
    for i, r in enumerate(rows):
        if len(r) != width:
            raise DataLoadError(f"{path}: row {i + 1 + (header is not None)} has {len(r)} columns, expected {width}")
    try:
        data = np.array([[float(c) for c in r] for r in rows])
    except ValueError as exc:
        raise DataLoadError(f"{path}: non-numeric value ({exc})") from None
    if header is not None:
        label_cols = [i for i, h in enumerate(header) if h.lower() in ("label", "y", "target", "class")]
        if label_cols:
            j = label_cols[0]
            return np.delete(data, j, axis=1), data[:, j]
    return data, None


def load_data(path, input_shape: tuple[int, ...], *, labels=None, num_classes: int | None = None,
              limit: int | None = None, dtype=torch.float32):
    """Read a data file and check it against the model's input shape (see the module docstring)."""
    path = Path(path)
    X, y = read_arrays(path, labels)
    if X.size == 0 or X.shape[0] == 0:
        raise DataLoadError(f"{path}: holds no samples")
    numel = int(np.prod(input_shape))
    if X.ndim == len(input_shape) and tuple(X.shape) == tuple(input_shape):
        X = X[None]
    per = int(np.prod(X.shape[1:])) if X.ndim > 1 else 1
    if per != numel:
        raise DataLoadError(f"{path}: samples have shape {tuple(X.shape[1:])} ({per} values), the model expects "
                            f"{tuple(input_shape)} ({numel} values)")
    if not np.isfinite(X).all():
        bad = int(np.argwhere(~np.isfinite(X.reshape(X.shape[0], -1)))[0][0])
        raise DataLoadError(f"{path}: sample {bad} contains NaN or Inf")
    if y is not None:
        y = np.asarray(y).reshape(-1)
        if len(y) != X.shape[0]:
            raise DataLoadError(f"{path}: {X.shape[0]} samples but {len(y)} labels")
        if not np.isfinite(y).all() or np.any(y != np.round(y)) or np.any(y < 0):
            raise DataLoadError(f"{path}: labels must be non-negative integers")
        if num_classes is not None and np.any(y >= num_classes):
            raise DataLoadError(f"{path}: label {int(y.max())} is out of range for a model with {num_classes} outputs")
    if limit is not None:
        X = X[:limit]
        y = y[:limit] if y is not None else None
    Xt = torch.as_tensor(X.reshape(X.shape[0], *input_shape), dtype=dtype)
    yt = torch.as_tensor(y.astype(np.int64)) if y is not None else None
    return Xt, yt
