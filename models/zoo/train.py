"""Regenerate the zoo deterministically: ``python -m nncertify.models.zoo.train [--out DIR]``.

Every model is trained with a fixed seed, full-batch-free deterministic mini-batches, Adam, on the
75 % training split of scikit-learn digits; the test accuracy on the other 25 % is recorded in
the spec.  Takes well under a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from . import ZOO_DIR, digits
from ..spec import FORMAT, build_module


def _mlp(act: list[dict], widths=(64, 32)) -> list[dict]:
    layers, prev = [], 64
    for w in widths:
        layers += [{"type": "Linear", "in_features": prev, "out_features": w}, *[dict(a, **({"num_features": w} if a["type"] == "Householder" else {})) for a in act]]
        prev = w
    return layers + [{"type": "Linear", "in_features": prev, "out_features": 10}]


ARCHS = {
    "digits_relu_mlp": ("ReLU MLP 64-64-32-10", _mlp([{"type": "ReLU"}])),
    "digits_relu_cnn": ("ReLU CNN: conv 8@3x3, conv 16@3x3/2, fc 32", [
        {"type": "Unflatten", "shape": [1, 8, 8]},
        {"type": "Conv2d", "in_channels": 1, "out_channels": 8, "kernel_size": 3, "padding": 1}, {"type": "ReLU"},
        {"type": "Conv2d", "in_channels": 8, "out_channels": 16, "kernel_size": 3, "stride": 2, "padding": 1},
        {"type": "ReLU"}, {"type": "Flatten"},
        {"type": "Linear", "in_features": 256, "out_features": 32}, {"type": "ReLU"},
        {"type": "Linear", "in_features": 32, "out_features": 10}]),
    "digits_maxmin_mlp": ("MaxMin MLP 64-64-32-10", _mlp([{"type": "MaxMin"}])),
    "digits_groupsort4_mlp": ("GroupSort-4 MLP 64-64-32-10", _mlp([{"type": "GroupSort", "group_size": 4}])),
    "digits_householder_mlp": ("Householder MLP 64-64-32-10", _mlp([{"type": "Householder", "group_size": 2}])),
    "digits_residual_maxmin": ("residual MaxMin: 64-32, 2 blocks x = x + MaxMin(W x + b), 32-10", [
        {"type": "Linear", "in_features": 64, "out_features": 32},
        {"type": "Residual", "body": [{"type": "Linear", "in_features": 32, "out_features": 32}, {"type": "MaxMin"}]},
        {"type": "Residual", "body": [{"type": "Linear", "in_features": 32, "out_features": 32}, {"type": "MaxMin"}]},
        {"type": "Linear", "in_features": 32, "out_features": 10}]),
}


def train_one(name: str, out: Path, epochs: int = 60, seed: int = 0) -> dict:
    desc, layers = ARCHS[name]
    spec = {"format": FORMAT, "name": name, "description": desc, "input_shape": [64], "layers": layers}
    torch.manual_seed(seed)
    model = build_module(spec, name)
    Xtr, ytr = digits("train")
    Xte, yte = digits("test")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(Xtr), generator=g)
        for i in range(0, len(Xtr), 64):
            idx = perm[i:i + 64]
            loss = torch.nn.functional.cross_entropy(model(Xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(Xte).argmax(1) == yte).float().mean().item()
    spec["meta"] = {"test_accuracy": round(acc, 4), "dataset": "sklearn digits, 8x8 scaled to [0,1], "
                    "test split = 25% stratified, random_state=0", "epochs": epochs, "seed": seed,
                    "optimizer": "Adam lr=3e-3 wd=1e-4 batch 64", "regenerate": "python -m nncertify.models.zoo.train"}
    (out / f"{name}.json").write_text(json.dumps(spec, indent=1) + "\n")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / f"{name}.safetensors"))
    return {"name": name, "test_accuracy": acc}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=ZOO_DIR)
    ap.add_argument("--only", nargs="*", default=list(ARCHS))
    args = ap.parse_args(argv)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    for name in args.only:
        print(train_one(name, args.out))


if __name__ == "__main__":
    main()
