"""Load a saved model into a :class:`~models.graph.Network` (and an ``nn.Module`` that computes it).

Formats (chosen by extension, then by content):

| what                                    | how                                                        |
|-----------------------------------------|------------------------------------------------------------|
| ``NAME.json`` (+ ``NAME.safetensors``)  | our architecture spec (:mod:`models.spec`) and its weights |
| ``.safetensors`` / ``.pt`` state_dict   | needs ``arch=`` (``pkg.module:factory``, ``file.py:factory`` or a spec ``.json``) |
| ``.pt2``                                | ``torch.export`` program                                   |
| TorchScript (``.ts``, or a ``.pt`` zip with TorchScript code) | ``torch.jit.load``                   |
| ``.onnx``                               | our importer (:mod:`models.onnx_import`)                   |
| ``.mat``                                | the MaxMin networks of Pauli et al. 2024 (:mod:`models.matlab`) |
| full pickled ``nn.Module``              | only with ``trust_pickle=True`` (unpickling runs code)     |

Every load ends with checks: no NaN/Inf weights, and, where the source module exists, the
description's outputs equal the module's on random inputs (otherwise :class:`ModelLoadError`).
"""

from __future__ import annotations

import hashlib
import io
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import layers as L
from .errors import ModelLoadError, NNCertifyError, ShapeMismatchError, UntrustedPickleError
from .factory import import_callable
from .graph import Network
from .spec import build_module, input_shape_of, read_spec
from .trace import from_module

MAX_FILE_BYTES = 2 * 1024 ** 3


@dataclass
class LoadedModel:
    """A loaded model: the normalized description, a module computing it, and provenance."""

    network: Network | None  # None only when loaded with require_network=False and not convertible
    module: nn.Module
    path: str
    format: str
    sha256: str
    meta: dict


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load(path, **kwargs) -> Network:
    """Load ``path`` and return its normalized :class:`Network` (see :func:`load_model`)."""
    return load_model(path, **kwargs).network


def load_model(path, *, arch=None, input_shape=None, trust_pickle: bool = False, name: str | None = None,
               check: bool = True, require_network: bool = True) -> LoadedModel:
    """Load a model file.

    ``arch``: architecture for bare weights: ``"pkg.module:factory"``, ``"file.py:factory"``, a spec
    ``.json`` path, a spec dict, or a callable returning an ``nn.Module``.
    ``input_shape``: per-sample input shape where the file does not say it.
    ``trust_pickle``: allow unpickling a full ``nn.Module`` (executes code from the file).
    ``require_network=False``: for tasks that only run the module (``certify steps``), a module whose
    operations have no :class:`Network` form (attention, …) is returned with ``network=None`` (the reason in
    ``meta["network_error"]``, the input shape in ``meta["input_shape"]``) instead of refused.
    """
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if not path.is_file():
        raise ModelLoadError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"{path}: the file is empty")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise ModelLoadError(f"{path}: the file is larger than {MAX_FILE_BYTES >> 30} GiB")
    suffix = path.suffix.lower()
    name = name or path.stem
    meta: dict = {}
    module: nn.Module | None = None
    try:
        if suffix == ".json":
            spec = read_spec(path)
            module, shape, meta = _from_spec(spec, path, weights=_sibling(path, ".safetensors"))
            fmt = "spec+safetensors"
        elif suffix == ".safetensors":
            spec_path = _sibling(path, ".json", required=False)
            if arch is None and spec_path is not None:
                module, shape, meta = _from_spec(read_spec(spec_path), spec_path, weights=path)
            else:
                module, shape = _with_arch(arch, path, _read_safetensors(path), input_shape)
            fmt = "safetensors"
        elif suffix == ".onnx":
            from .onnx_import import load_onnx
            net = load_onnx(path, name)
            return _finish(net, net.to_module(), path, "onnx", meta, check=False)
        elif suffix == ".mat":
            try:
                from .matlab import load_pauli_mat
            except ImportError:
                raise ModelLoadError(f"{path}: the MATLAB loader is not available in this installation") from None
            net = load_pauli_mat(path)
            return _finish(net, net.to_module(), path, "mat", meta, check=False)
        elif suffix == ".pt2":
            net = _load_exported(path, input_shape, name)
            return _finish(net, net.to_module(), path, "pt2", meta, check=False)
        else:
            kind = _sniff(path)
            if kind == "torchscript":
                module, shape, net = _load_torchscript(path, input_shape, name)
                if net is not None:
                    return _finish(net, module, path, "torchscript", meta, check=False)
                fmt = "torchscript"
            elif kind == "pt2":
                net = _load_exported(path, input_shape, name)
                return _finish(net, net.to_module(), path, "pt2", meta, check=False)
            else:
                obj = _torch_load(path, trust_pickle)
                if isinstance(obj, nn.Module):
                    module, fmt = obj, "pickle"
                    shape = input_shape
                else:
                    state = _extract_state_dict(obj, path)
                    module, shape = _with_arch(arch, path, state, input_shape)
                    fmt = "state_dict"
    except NNCertifyError:
        raise
    except (OSError, RuntimeError, ValueError, KeyError, TypeError, pickle.UnpicklingError, zipfile.BadZipFile,
            EOFError, AttributeError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"{path}: could not be loaded as a model ({type(exc).__name__}: {msg[:200]})") from None
    module.eval()
    if not require_network:
        meta["input_shape"] = tuple(shape or input_shape) if (shape or input_shape) else None
        try:
            net = from_module(module, shape or input_shape, name)
        except NNCertifyError as e:
            meta["network_error"] = str(e)
            return LoadedModel(None, module, str(path), fmt, sha256_file(path), meta)
        return _finish(net, module, path, fmt, meta, check=check)
    net = from_module(module, shape or input_shape, name)
    return _finish(net, module, path, fmt, meta, check=check)


def _finish(net: Network, module: nn.Module, path: Path, fmt: str, meta: dict, check: bool) -> LoadedModel:
    net.check_finite()
    if check:
        check_equivalent(net, module, str(path))
    return LoadedModel(net, module, str(path), fmt, sha256_file(path), meta)


def check_equivalent(net: Network, module: nn.Module, source: str, samples: int = 8, seed: int = 0) -> None:
    """Raise :class:`ModelLoadError` unless ``net`` and ``module`` agree on random inputs."""
    for what, tensors in (("parameter", module.named_parameters()), ("buffer", module.named_buffers())):
        for pname, t in tensors:
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise ModelLoadError(f"{source}: {what} {pname!r} contains NaN or Inf")
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((samples, *net.input_shape), generator=g, dtype=net.dtype)
    with torch.no_grad():
        a, b = net(x), module(x)
    if not torch.isfinite(b).all():
        raise ModelLoadError(f"{source}: the model outputs NaN or Inf on random inputs (a weight or constant "
                             f"holds NaN or Inf, or the model overflows)")
    if a.shape != b.shape:
        raise ModelLoadError(f"{source}: converted network outputs {tuple(a.shape)}, the module {tuple(b.shape)}")
    err = (a - b).abs().max().item()
    scale = 1.0 + b.abs().max().item()
    if not err <= 1e-4 * scale:
        raise ModelLoadError(f"{source}: the normalized description does not reproduce the module "
                             f"(max difference {err:.3g}); please report this model")


# ---------------------------------------------------------------------------------------------- helpers
def _sibling(path: Path, suffix: str, required: bool = True) -> Path | None:
    p = path.with_suffix(suffix)
    if p.exists():
        return p
    if required:
        raise ModelLoadError(f"{path}: expected its weights next to it in {p.name}")
    return None


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"{path}: not a valid safetensors file ({str(exc).splitlines()[0][:200]})") from None


def _from_spec(spec: dict, spec_path: Path, weights: Path):
    module = build_module(spec, str(spec_path))
    state = _read_safetensors(weights)
    _load_state(module, state, str(weights))
    return module, input_shape_of(spec, str(spec_path)), dict(spec.get("meta", {}))


def _resolve_arch(arch, path: Path) -> tuple[nn.Module, tuple | None]:
    if arch is None:
        raise ModelLoadError(f"{path}: holds only weights; give the architecture (--arch pkg.module:factory, "
                             f"file.py:factory or an architecture .json)")
    if isinstance(arch, dict):
        return build_module(arch, "arch"), tuple(arch["input_shape"]) if "input_shape" in arch else None
    if callable(arch):
        return arch(), None
    arch = str(arch)
    if arch.endswith(".json"):
        spec = read_spec(arch)
        return build_module(spec, arch), input_shape_of(spec, arch) if "input_shape" in spec else None
    if ":" not in arch:
        raise ModelLoadError(f"arch {arch!r}: expected 'package.module:factory', 'file.py:factory' or a .json file")
    factory = import_callable(arch, "arch")
    m = factory()
    if not isinstance(m, nn.Module):
        raise ModelLoadError(f"arch {arch!r}: the factory returned {type(m).__name__}, not an nn.Module")
    return m, getattr(m, "input_shape", None)


def _with_arch(arch, path: Path, state: dict, input_shape):
    module, shape = _resolve_arch(arch, path)
    _load_state(module, state, str(path))
    return module, input_shape or shape


_PREFIXES = ("module.", "_orig_mod.", "model.")


def _extract_state_dict(obj, path: Path) -> dict[str, torch.Tensor]:
    for _ in range(3):
        if isinstance(obj, (list, tuple)) and len(obj) == 1:
            obj = obj[0]
        if isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
            for key in ("state_dict", "model_state_dict", "model", "net", "weights"):
                if key in obj and isinstance(obj[key], (dict, list, tuple)):
                    obj = obj[key]
                    break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelLoadError(f"{path}: expected a state_dict (a mapping from names to tensors), "
                             f"found {type(obj).__name__}")
    return obj


def _load_state(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict`` with prefix normalization and a message that lists every mismatch."""
    own = module.state_dict()
    state = dict(state)
    for prefix in _PREFIXES:
        if state and all(k.startswith(prefix) for k in state) and not any(k.startswith(prefix) for k in own):
            state = {k[len(prefix):]: v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked") or k in own}
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:6]}{' ...' if len(missing) > 6 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:6]}{' ...' if len(unexpected) > 6 else ''}")
        if wrong:
            parts.append(f"shape mismatch {wrong[:4]}")
        raise ShapeMismatchError(f"{source}: the weights do not fit the architecture: " + "; ".join(parts))
    module.load_state_dict(state, strict=False)


def _sniff(path: Path) -> str:
    if not zipfile.is_zipfile(path):
        return "torch"
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    if any(n.endswith("constants.pkl") for n in names) and any("/code/" in n for n in names):
        return "torchscript"
    if any("serialized_exported_program" in n or n.endswith("models/model.json") for n in names):
        return "pt2"
    return "torch"


def _torch_load(path: Path, trust_pickle: bool):
    """``torch.load`` with the safe weights-only unpickler; a full pickle only with ``trust_pickle``.

    The weights-only unpickler never runs code, so *any* failure of it on arbitrary bytes means "not a
    readable PyTorch file", except the refusal of a Python object (a ``GLOBAL`` opcode), which means a
    pickled object that would need the unsafe unpickler.
    """
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        if isinstance(exc, pickle.UnpicklingError) and ("GLOBAL" in str(exc) or "Unsupported global" in str(exc)):
            if not trust_pickle:
                raise UntrustedPickleError(
                    f"{path}: holds a pickled Python object (e.g. a whole nn.Module); unpickling it can run "
                    f"arbitrary code, so it is refused. Save a state_dict/safetensors instead, or pass "
                    f"--trust-pickle (trust_pickle=True) if you trust the file") from None
        else:
            raise ModelLoadError(f"{path}: not a readable PyTorch file (neither a state_dict nor a saved module)") \
                from None
    try:
        return torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ModelLoadError(f"{path}: the trusted pickle could not be loaded ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:160] if str(exc) else ''})") from None


# ---------------------------------------------------------------------------------------------- torch.export
def _load_exported(path: Path, input_shape, name: str) -> Network:
    if not zipfile.is_zipfile(path):
        raise ModelLoadError(f"{path}: not a torch.export program (not a zip archive)")
    import logging
    logger = logging.getLogger("torch.export")
    level = logger.level
    logger.setLevel(logging.ERROR)  # torch logs a traceback for unreadable archives; we raise one line instead
    try:
        ep = torch.export.load(str(path))
    except Exception as exc:
        raise ModelLoadError(f"{path}: not a readable torch.export program ({type(exc).__name__})") from None
    finally:
        logger.setLevel(level)
    return _from_exported(ep, input_shape, name, str(path))


def _from_exported(ep, input_shape, name: str, source: str) -> Network:
    from .aten import from_aten_graph
    gm = ep.module()
    ph = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(ph) != 1:
        raise ModelLoadError(f"{source}: expected one input, found {len(ph)}")
    val = ph[0].meta.get("val")
    shape = tuple(int(s) for s in val.shape[1:]) if val is not None else input_shape
    if shape is None:
        raise ShapeMismatchError(f"{source}: give the input shape")
    state = dict(ep.state_dict)
    state.update({k: v for k, v in getattr(ep, "constants", {}).items() if isinstance(v, torch.Tensor)})
    net = from_aten_graph(gm, state, shape, name, source)
    batch = int(val.shape[0]) if val is not None and isinstance(val.shape[0], int) else 8
    check_equivalent(net, gm, source, samples=batch)
    return net


# ---------------------------------------------------------------------------------------------- TorchScript
def _const(v):
    node = v.node()
    if node.kind() == "prim::ListConstruct":
        return [_const(i) for i in node.inputs()]
    return v.toIValue()


def _op_args(script_mod, kinds: tuple[str, ...]):
    for node in script_mod.inlined_graph.nodes():
        if node.kind() in kinds:
            return [_const(i) for i in node.inputs()]
    return None


def _probe(candidates, script_mod, width: int, source: str, what: str):
    x = torch.randn(16, width, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = script_mod(x)
        for c in candidates:
            if torch.allclose(c(x), ref, atol=1e-6, rtol=1e-5):
                return c
    raise ModelLoadError(f"{source}: could not recognise the {what} layer's settings")


def _rebuild_script(sm, width, source: str) -> tuple[nn.Module, int | None]:
    """Rebuild an eager module from a scripted/traced one (Sequential structure), tracking the width."""
    kind = sm.original_name
    params = dict(sm.named_parameters(recurse=False))
    buffers = dict(sm.named_buffers(recurse=False))
    if kind == "Sequential":
        mods = []
        for _, child in sm.named_children():
            m, width = _rebuild_script(child, width, source)
            mods.append(m)
        return nn.Sequential(*mods), width
    if kind == "Residual":
        body, _ = _rebuild_script(sm.body, width, source)
        return L.Residual(body), width
    if kind == "Linear":
        w = params["weight"]
        m = nn.Linear(w.shape[1], w.shape[0], bias="bias" in params)
        m.load_state_dict({k: v.detach() for k, v in params.items()})
        return m, w.shape[0]
    if kind == "Conv2d":
        args = _op_args(sm, ("aten::_convolution", "aten::conv2d"))
        w = params["weight"]
        stride, padding, dilation = args[3], args[4], args[5]
        groups = args[8] if len(args) > 8 else args[6]
        m = nn.Conv2d(w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), stride=tuple(stride),
                      padding=tuple(padding), dilation=tuple(dilation), groups=groups, bias="bias" in params)
        m.load_state_dict({k: v.detach() for k, v in params.items()})
        return m, None
    if kind in ("BatchNorm1d", "BatchNorm2d"):
        args = _op_args(sm, ("aten::batch_norm",))
        n = buffers["running_mean"].shape[0]
        m = (nn.BatchNorm1d if kind == "BatchNorm1d" else nn.BatchNorm2d)(n, eps=float(args[7]))
        m.load_state_dict({**{k: v.detach() for k, v in params.items()}, **buffers}, strict=False)
        return m, width
    simple = {"ReLU": nn.ReLU, "Tanh": nn.Tanh, "Sigmoid": nn.Sigmoid, "Flatten": nn.Flatten,
              "Identity": nn.Identity, "Dropout": nn.Identity}
    if kind in simple:
        return simple[kind](), width
    if kind == "LeakyReLU":
        return nn.LeakyReLU(float(_op_args(sm, ("aten::leaky_relu",))[1])), width
    if kind == "AvgPool2d":
        a = _op_args(sm, ("aten::avg_pool2d",))
        return nn.AvgPool2d(tuple(a[1]), tuple(a[2]) or None, tuple(a[3])), None
    if kind == "Normalize":
        return L.Normalize(buffers["mean"], buffers["std"]), width
    if kind in ("MaxMin", "GroupSort", "HouseholderActivation"):
        if width is None:
            raise ModelLoadError(f"{source}: cannot determine the width of a {kind} layer after a convolution")
        if kind == "MaxMin":
            cands = [L.MaxMin("pairs"), L.MaxMin("halves")]
        elif kind == "GroupSort":
            cands = [L.GroupSort(g, d) for g in range(2, width + 1) if width % g == 0 for d in (True, False)]
        else:
            v = params["v"].detach()
            cands = [L.HouseholderActivation(width, v.shape[1], v)]
        return _probe(cands, sm, width, source, kind), width
    raise ModelLoadError(f"{source}: TorchScript submodule of type {kind!r} is not supported")


def _load_torchscript(path: Path, input_shape, name: str):
    try:
        sm = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise ModelLoadError(f"{path}: not a readable TorchScript file ({type(exc).__name__})") from None
    sm.eval()
    if sm.original_name in ("Sequential",):
        first = next((p for n, p in sm.named_parameters()), None)
        width = None
        module, _ = _rebuild_script(sm, width=_first_width(sm), source=str(path))
        shape = input_shape
        if shape is None:
            lin = next((m for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv2d))), None)
            if isinstance(lin, nn.Linear) and isinstance(module[0], nn.Linear):
                shape = (lin.in_features,)
            else:
                raise ShapeMismatchError(f"{path}: give the per-sample input shape (--input-shape)")
        net = from_module(module, shape, name)
        check_equivalent(net, sm, str(path))
        return sm, shape, net
    # general TorchScript: convert to an exported program (standard ops only)
    if input_shape is None:
        raise ShapeMismatchError(f"{path}: give the per-sample input shape (--input-shape) for this TorchScript model")
    try:
        from torch._export.converter import TS2EPConverter
        ep = TS2EPConverter(sm, (torch.zeros((2, *input_shape)),)).convert()
    except Exception as exc:
        raise ModelLoadError(f"{path}: this TorchScript model could not be converted ({type(exc).__name__})") from None
    net = _from_exported(ep, tuple(input_shape), name, str(path))
    check_equivalent(net, sm, str(path))
    return sm, tuple(input_shape), net


def _first_width(sm):
    for _, p in sm.named_parameters():
        return p.shape[1] if p.dim() == 2 else None
    return None
