"""The model zoo: small networks trained on scikit-learn's 8x8 digits, shipped with the package.

Each model is ``NAME.json`` (architecture spec with its test accuracy under ``meta``) plus
``NAME.safetensors``.  ``python -m nncertify.models.zoo.train`` regenerates them deterministically.
Inputs are flattened 8x8 images scaled to [0, 1] (shape ``(64,)``); labels 0..9.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ModelLoadError

ZOO_DIR = Path(__file__).resolve().parent
DEFAULT = "digits_relu_mlp"


def available() -> list[str]:
    """Names of the shipped zoo models."""
    return sorted(p.stem for p in ZOO_DIR.glob("*.json"))


def path(name: str) -> Path:
    p = ZOO_DIR / f"{name}.json"
    if not p.exists():
        raise ModelLoadError(f"zoo model {name!r} does not exist; available: {', '.join(available())}")
    return p


def info(name: str) -> dict:
    return json.loads(path(name).read_text())


def load_zoo(name: str = DEFAULT):
    """Load a zoo model as a :class:`models.load.LoadedModel`."""
    from ..load import load_model
    return load_model(path(name))


def digits(split: str = "test", dtype=None) -> tuple["torch.Tensor", "torch.Tensor"]:
    """scikit-learn digits as ``(X in [0,1] of shape (N, 64), y)``; a fixed stratified 75/25 split
    (``dtype``: of ``X``, default float32)."""
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X / 16.0, y, test_size=0.25, random_state=0, stratify=y)
    if split == "train":
        X, y = Xtr, ytr
    elif split == "test":
        X, y = Xte, yte
    else:
        raise ValueError("split must be 'train' or 'test'")
    return torch.as_tensor(X, dtype=dtype or torch.float32), torch.as_tensor(y, dtype=torch.long)
