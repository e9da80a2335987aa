"""A small JSON architecture format: build an ``nn.Module`` from a list of layer records.

Used by the zoo (``models/zoo/NAME.json`` + ``NAME.safetensors``) and accepted by the loaders
wherever an architecture is needed.  Example::

    {"format": "nncertify-arch/1", "name": "mlp", "input_shape": [64],
     "layers": [{"type": "Linear", "in_features": 64, "out_features": 32}, {"type": "ReLU"},
                {"type": "Residual", "body": [{"type": "Linear", "in_features": 32, "out_features": 32},
                                             {"type": "MaxMin"}]},
                {"type": "Linear", "in_features": 32, "out_features": 10}],
     "meta": {"test_accuracy": 0.95}}

Errors name the field at fault, e.g. ``arch.json: layers[2].out_features: missing``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from . import layers as L
from .errors import ModelLoadError

FORMAT = "nncertify-arch/1"


def _req(rec: dict, key: str, where: str, typ=int):
    if key not in rec:
        raise ModelLoadError(f"{where}.{key}: missing")
    val = rec[key]
    try:
        if typ is int:
            if isinstance(val, bool) or int(val) != val or int(val) < 0:
                raise ValueError
            return int(val)
        return typ(val)
    except (TypeError, ValueError):
        raise ModelLoadError(f"{where}.{key}: expected {typ.__name__}, got {val!r}") from None


def _opt(rec, key, default, where, typ=int):
    return _req(rec, key, where, typ) if key in rec else default


_BUILDERS = {
    "Linear": lambda r, w: nn.Linear(_req(r, "in_features", w), _req(r, "out_features", w),
                                     bias=_opt(r, "bias", True, w, bool)),
    "Conv2d": lambda r, w: nn.Conv2d(_req(r, "in_channels", w), _req(r, "out_channels", w),
                                     _req(r, "kernel_size", w), stride=_opt(r, "stride", 1, w),
                                     padding=_opt(r, "padding", 0, w), bias=_opt(r, "bias", True, w, bool)),
    "BatchNorm1d": lambda r, w: nn.BatchNorm1d(_req(r, "num_features", w)),
    "BatchNorm2d": lambda r, w: nn.BatchNorm2d(_req(r, "num_features", w)),
    "ReLU": lambda r, w: nn.ReLU(),
    "LeakyReLU": lambda r, w: nn.LeakyReLU(_opt(r, "negative_slope", 0.01, w, float)),
    "Tanh": lambda r, w: nn.Tanh(),
    "Sigmoid": lambda r, w: nn.Sigmoid(),
    "Flatten": lambda r, w: nn.Flatten(),
    "AvgPool2d": lambda r, w: nn.AvgPool2d(_req(r, "kernel_size", w), stride=_opt(r, "stride", None, w)),
    "MaxMin": lambda r, w: L.MaxMin(_opt(r, "layout", "pairs", w, str)),
    "GroupSort": lambda r, w: L.GroupSort(_req(r, "group_size", w), _opt(r, "descending", True, w, bool)),
    "Householder": lambda r, w: L.HouseholderActivation(_req(r, "num_features", w), _opt(r, "group_size", 2, w)),
    "Normalize": lambda r, w: L.Normalize(r["mean"], r["std"]) if "mean" in r and "std" in r else
    (_ for _ in ()).throw(ModelLoadError(f"{w}: Normalize needs 'mean' and 'std'")),
    "Unflatten": lambda r, w: nn.Unflatten(1, tuple(_req({"s": s}, "s", f"{w}.shape") for s in r.get("shape", [])))
    if r.get("shape") else (_ for _ in ()).throw(ModelLoadError(f"{w}.shape: missing")),
}


MAX_ELEMENTS = 500_000_000  # refuse architectures declaring more parameters than this (2 GB in float32)


def _declared_elements(r: dict) -> int:
    t = r.get("type")
    try:
        if t == "Linear":
            return int(r.get("in_features", 0)) * int(r.get("out_features", 0))
        if t == "Conv2d":
            k = int(r.get("kernel_size", 1))
            return int(r.get("in_channels", 0)) * int(r.get("out_channels", 0)) * k * k
        if t in ("BatchNorm1d", "BatchNorm2d", "Householder"):
            return int(r.get("num_features", 0))
    except (TypeError, ValueError, OverflowError):
        return 0  # the builder reports the bad field
    return 0


def build_layers(records: Any, where: str) -> nn.Sequential:
    if not isinstance(records, list):
        raise ModelLoadError(f"{where}: expected a list of layer records")
    mods = []
    for i, r in enumerate(records):
        w = f"{where}[{i}]"
        if not isinstance(r, dict) or "type" not in r:
            raise ModelLoadError(f"{w}: expected an object with a 'type'")
        if _declared_elements(r) > MAX_ELEMENTS:
            raise ModelLoadError(f"{w}: declares {_declared_elements(r):,} parameters, more than the limit of "
                                 f"{MAX_ELEMENTS:,}")
        t = r["type"]
        if t == "Residual":
            mods.append(L.Residual(build_layers(r.get("body"), f"{w}.body")))
        elif t in _BUILDERS:
            try:
                mods.append(_BUILDERS[t](r, w))
            except ModelLoadError:
                raise
            except Exception as exc:
                raise ModelLoadError(f"{w}: invalid {t} layer ({exc})") from None
        else:
            raise ModelLoadError(f"{w}.type: unknown layer {t!r}; known: {', '.join(sorted(_BUILDERS) + ['Residual'])}")
    return nn.Sequential(*mods)


def build_module(spec: dict, source: str = "arch") -> nn.Module:
    """Build the ``nn.Module`` an architecture record describes (weights uninitialized)."""
    if not isinstance(spec, dict):
        raise ModelLoadError(f"{source}: expected a JSON object")
    fmt = spec.get("format", FORMAT)
    if fmt != FORMAT:
        raise ModelLoadError(f"{source}: format {fmt!r} is not {FORMAT!r}")
    return build_layers(spec.get("layers"), f"{source}: layers")


def input_shape_of(spec: dict, source: str = "arch") -> tuple[int, ...]:
    shape = spec.get("input_shape")
    if not isinstance(shape, list) or not shape or not all(isinstance(s, int) and s > 0 for s in shape):
        raise ModelLoadError(f"{source}: input_shape: expected a list of positive integers, got {shape!r}")
    return tuple(shape)


def read_spec(path: str | Path) -> dict:
    path = Path(path)
    try:
        spec = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: no such file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path}: not a valid JSON architecture file ({exc})") from None
    if not isinstance(spec, dict):
        raise ModelLoadError(f"{path}: expected a JSON object")
    return spec
