"""Build a :class:`~models.graph.Network` from an ``nn.Module`` by torch.fx tracing.

Supported: ``nn.Sequential``, residual blocks and user modules whose ``forward`` is traceable by
``torch.fx`` and built from the ops of :mod:`models.ops` (as modules, ``torch``/``F`` functions or
tensor methods).  BatchNorm in eval mode is folded into the preceding Linear/Conv2d when that layer
feeds only the BatchNorm; otherwise it becomes a ``scale_shift``.  Dropout and Identity vanish.
Weight parametrizations (``torch.nn.utils.parametrize``: spectral, orthogonal, ...) and
old-style ``spectral_norm`` hooks are materialized first, so the description holds the weights the
module really uses.

Anything else raises :class:`UnsupportedOperationError` naming the module path and the op, with the
list of what is supported.
"""

from __future__ import annotations

import copy
import operator
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from . import layers as L
from .errors import NNCertifyError, ShapeMismatchError, UnsupportedOperationError
from .graph import Network, Node

SUPPORTED_MODULES = (
    "Linear, Conv2d, Flatten, Unflatten, BatchNorm1d/2d (eval), ReLU, LeakyReLU, Tanh, Sigmoid, "
    "AvgPool2d, Dropout, Identity, nn.Sequential, MaxMin, GroupSort, HouseholderActivation, Normalize, "
    "Residual; functions relu/leaky_relu/tanh/sigmoid/flatten/reshape/view, +, and arithmetic with constants")

_LEAVES = (nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid,
           nn.Flatten, nn.Unflatten, nn.AvgPool2d, nn.Dropout, nn.Identity, L.MaxMin, L.GroupSort,
           L.HouseholderActivation, L.Normalize)


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, _LEAVES):
            return True
        if type(m).__module__ == "torch.nn.utils.parametrize":  # a parametrized layer: treat as its base class
            return True
        # any other torch.nn built-in that is not a container is a leaf (and will be reported)
        return m.__module__.startswith("torch.nn") and not isinstance(m, (nn.Sequential, nn.ModuleList, nn.ModuleDict))


def materialize(module: nn.Module) -> nn.Module:
    """A deep copy in eval mode with old-style ``spectral_norm`` hooks baked into plain weights.

    ``torch.nn.utils.parametrize`` parametrizations (spectral, orthogonal, ...) need no removal:
    the converter reads ``module.weight``, which evaluates the parametrization once.  (Removing
    them on a copy would also break the original, whose parametrized class is shared.)
    """
    m = copy.deepcopy(module).eval()
    for sub in list(m.modules()):
        for hook in list(getattr(sub, "_forward_pre_hooks", {}).values()):
            if type(hook).__name__ == "SpectralNorm":
                torch.nn.utils.remove_spectral_norm(sub, hook.name)
    return m


def _pair(v) -> tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (int(v), int(v))


def from_module(module: nn.Module, input_shape: tuple[int, ...] | None = None, name: str | None = None) -> Network:
    """Trace ``module`` into a normalized :class:`Network`.

    ``input_shape`` is the per-sample input shape; it can be omitted when the first layer is an
    ``nn.Linear`` (its ``in_features`` give it).
    """
    module = materialize(module)
    if input_shape is None:
        first = next((m for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv2d))), None)
        if isinstance(first, nn.Linear):
            input_shape = (first.in_features,)
        else:
            raise ShapeMismatchError(
                f"{type(module).__name__}: give input_shape (the per-sample input shape); it cannot be inferred")
    input_shape = tuple(int(s) for s in input_shape)
    try:
        graph = _Tracer().trace(module)
    except Exception as exc:
        raise UnsupportedOperationError(
            f"{type(module).__name__}: the forward pass could not be traced by torch.fx ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); data-dependent control flow is not supported") from None
    gm = fx.GraphModule(module, graph)
    p = next(iter(module.parameters()), None)
    example = torch.zeros((2, *input_shape), dtype=p.dtype if p is not None else torch.get_default_dtype())
    import contextlib
    import io
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # ShapeProp prints a traceback before raising
            ShapeProp(gm).propagate(example)
    except NNCertifyError:
        raise
    except Exception as exc:
        cause = exc.__cause__ or exc  # ShapeProp wraps the real error
        raise ShapeMismatchError(
            f"{type(module).__name__}: running it on inputs of shape {input_shape} failed ("
            f"{(str(cause).splitlines() or [type(cause).__name__])[0]}); check --input-shape") from None
    with torch.no_grad():
        return _Converter(gm, input_shape, example.dtype).convert(name or type(module).__name__)


class _Converter:
    def __init__(self, gm: fx.GraphModule, input_shape, dtype=torch.float32):
        self.dtype = dtype
        self.gm = gm
        self.input_shape = input_shape
        self.modules = dict(gm.named_modules())
        self.nodes: list[Node] = []
        self.env: dict[fx.Node, Any] = {}  # fx node -> our node name, or a constant
        self.counter = 0

    # -------------------------------------------------------------- helpers
    def _new(self, op, inputs, params=None, attrs=None, path="") -> str:
        self.counter += 1
        name = f"{op}_{self.counter}"
        self.nodes.append(Node(name, op, tuple(inputs), {k: v.detach().clone() for k, v in (params or {}).items()},
                               dict(attrs or {}), path))
        return name

    def _shape(self, n: fx.Node) -> tuple[int, ...]:
        return tuple(n.meta["tensor_meta"].shape[1:])

    def _unsupported(self, n: fx.Node, what: str):
        path = n.target if n.op == "call_module" else n.stack_trace.strip().splitlines()[-1].strip() \
            if n.stack_trace else n.name
        raise UnsupportedOperationError(
            f"unsupported operation {what} at {path!r}; supported: {SUPPORTED_MODULES}")

    def _arg(self, a):
        if isinstance(a, fx.Node):
            return self.env[a]
        return a

    def _node_producer(self, name: str) -> Node | None:
        for nd in reversed(self.nodes):
            if nd.name == name:
                return nd
        return None

    # -------------------------------------------------------------- conversion
    def convert(self, name: str) -> Network:
        for n in self.gm.graph.nodes:
            if n.op == "placeholder":
                if self.nodes:
                    self._unsupported(n, "a second model input")
                self.nodes.append(Node("input", "input", (), {}, {"shape": self.input_shape}, "input"))
                self.env[n] = "input"
            elif n.op == "get_attr":
                obj = self.gm
                for part in n.target.split("."):
                    obj = getattr(obj, part)
                self.env[n] = ("const", obj.detach() if isinstance(obj, torch.Tensor) else obj)
            elif n.op == "call_module":
                self.env[n] = self._module(n, self.modules[n.target])
            elif n.op in ("call_function", "call_method"):
                self.env[n] = self._function(n)
            elif n.op == "output":
                out = n.args[0]
                if not isinstance(out, fx.Node) or not isinstance(self.env.get(out), str):
                    self._unsupported(n, "an output that is not a single tensor")
                output = self.env[out]
        self._fold_batchnorms()
        return Network(self._prune(output), output, name)

    def _prune(self, output: str) -> list[Node]:
        needed = {output}
        for nd in reversed(self.nodes):
            if nd.name in needed:
                needed.update(nd.inputs)
        return [nd for nd in self.nodes if nd.name in needed]

    def _tensor_in(self, n: fx.Node) -> str:
        x = self._arg(n.args[0])
        if not isinstance(x, str):
            self._unsupported(n, "an operation on constants only")
        return x

    def _module(self, n: fx.Node, m: nn.Module) -> str:
        x = self._tensor_in(n)
        path = n.target
        if isinstance(m, nn.Linear):
            return self._new("linear", [x], {"weight": m.weight, **({"bias": m.bias} if m.bias is not None else {})},
                             path=path)
        if isinstance(m, nn.Conv2d):
            if m.padding_mode != "zeros" or isinstance(m.padding, str):
                if isinstance(m.padding, str) and m.padding == "valid":
                    pad = (0, 0)
                else:
                    self._unsupported(n, f"Conv2d with padding={m.padding!r}, padding_mode={m.padding_mode!r}")
            else:
                pad = _pair(m.padding)
            params = {"weight": m.weight}
            if m.bias is not None:
                params["bias"] = m.bias
            return self._new("conv2d", [x], params, {"stride": _pair(m.stride), "padding": pad,
                                                      "dilation": _pair(m.dilation), "groups": m.groups}, path)
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if m.running_mean is None:
                self._unsupported(n, "BatchNorm without running statistics")
            scale = (m.weight if m.affine else torch.ones_like(m.running_mean)) / torch.sqrt(m.running_var + m.eps)
            shift = (m.bias if m.affine else torch.zeros_like(m.running_mean)) - m.running_mean * scale
            shape = self._shape(n)
            view = (-1,) + (1,) * (len(shape) - 1)
            return self._new("scale_shift", [x], {"scale": scale.reshape(view), "shift": shift.reshape(view)},
                             {"batchnorm": True}, path)
        if isinstance(m, nn.ReLU):
            return self._new("relu", [x], path=path)
        if isinstance(m, nn.LeakyReLU):
            return self._new("leaky_relu", [x], attrs={"negative_slope": float(m.negative_slope)}, path=path)
        if isinstance(m, nn.Tanh):
            return self._new("tanh", [x], path=path)
        if isinstance(m, nn.Sigmoid):
            return self._new("sigmoid", [x], path=path)
        if isinstance(m, (nn.Dropout, nn.Identity)):
            return x
        if isinstance(m, (nn.Flatten, nn.Unflatten)):
            return self._reshape(n, x, path)
        if isinstance(m, nn.AvgPool2d):
            if m.ceil_mode or not m.count_include_pad or m.divisor_override:
                self._unsupported(n, "AvgPool2d with ceil_mode/count_include_pad=False/divisor_override")
            return self._new("avgpool2d", [x], attrs={"kernel_size": _pair(m.kernel_size),
                                                      "stride": _pair(m.stride or m.kernel_size),
                                                      "padding": _pair(m.padding)}, path=path)
        if isinstance(m, L.MaxMin):
            return self._new("maxmin", [x], attrs={"layout": m.layout}, path=path)
        if isinstance(m, L.GroupSort):
            return self._new("groupsort", [x], attrs={"group_size": m.group_size, "descending": m.descending},
                             path=path)
        if isinstance(m, L.HouseholderActivation):
            return self._new("householder", [x], {"v": m.unit_v()}, {"group_size": m.group_size}, path)
        if isinstance(m, L.Normalize):
            scale = 1.0 / m.std
            return self._new("scale_shift", [x], {"scale": scale, "shift": -m.mean * scale}, path=path)
        self._unsupported(n, f"module {type(m).__name__}")

    def _reshape(self, n: fx.Node, x: str, path: str) -> str:
        shape = self._shape(n)
        if len(shape) == 1:
            return self._new("flatten", [x], path=path)
        return self._new("reshape", [x], attrs={"shape": shape}, path=path)

    def _function(self, n: fx.Node):
        t = n.target
        args = [self._arg(a) for a in n.args]
        path = n.name
        if n.op == "call_method" and t in ("size", "dim"):
            return ("const", None)  # only used for reshape arguments; shapes come from ShapeProp
        if n.op == "call_function" and t is getattr:
            return ("const", None)
        if t in (torch.relu, F.relu, "relu"):
            return self._new("relu", [self._tensor_in(n)], path=path)
        if t in (torch.tanh, F.tanh, "tanh"):
            return self._new("tanh", [self._tensor_in(n)], path=path)
        if t in (torch.sigmoid, F.sigmoid, "sigmoid"):
            return self._new("sigmoid", [self._tensor_in(n)], path=path)
        if t in (F.leaky_relu,):
            slope = n.kwargs.get("negative_slope", args[1] if len(args) > 1 else 0.01)
            return self._new("leaky_relu", [self._tensor_in(n)], attrs={"negative_slope": float(slope)}, path=path)
        if t in (torch.flatten, "flatten", "view", "reshape", torch.reshape, "squeeze", "unsqueeze"):
            return self._reshape(n, self._tensor_in(n), path)
        if t in ("contiguous", "clone") or t is torch.clone:
            return self._tensor_in(n)
        if t in (operator.add, torch.add, "add", operator.sub, torch.sub, "sub", operator.mul, torch.mul, "mul",
                 operator.truediv, torch.div, "div"):
            return self._arith(n, t, args)
        self._unsupported(n, f"function {getattr(t, '__name__', t)}")

    def _arith(self, n, t, args):
        if len(args) != 2 or n.kwargs:
            self._unsupported(n, f"{getattr(t, '__name__', t)} with extra arguments")
        a, b = args
        name = t if isinstance(t, str) else t.__name__
        kind = {"add": "add", "iadd": "add", "sub": "sub", "mul": "mul", "truediv": "div", "div": "div"}[name]
        if isinstance(a, str) and isinstance(b, str):
            if kind != "add":
                self._unsupported(n, f"{kind} of two tensors (only residual additions are supported)")
            return self._new("add", [a, b], path=n.name)
        if not isinstance(a, str) and not isinstance(b, str):
            return ("const", None)
        swapped = not isinstance(a, str)
        x, c = (b, a) if swapped else (a, b)
        c = c[1] if isinstance(c, tuple) else c
        if c is None:
            self._unsupported(n, f"{kind} with a non-constant operand")
        c = torch.as_tensor(c, dtype=self.dtype)
        one, zero = torch.ones_like(c), torch.zeros_like(c)
        if kind == "add":
            scale, shift = one, c
        elif kind == "sub":
            scale, shift = (-one, c) if swapped else (one, -c)
        elif kind == "mul":
            scale, shift = c, zero
        else:
            if swapped:
                self._unsupported(n, "division of a constant by a tensor")
            scale, shift = 1.0 / c, zero
        return self._new("scale_shift", [x], {"scale": scale, "shift": shift}, path=n.name)

    # -------------------------------------------------------------- BatchNorm folding
    def _fold_batchnorms(self) -> None:
        uses: dict[str, int] = {}
        for nd in self.nodes:
            for i in nd.inputs:
                uses[i] = uses.get(i, 0) + 1
        by_name = {nd.name: nd for nd in self.nodes}
        keep = []
        rename: dict[str, str] = {}
        for nd in self.nodes:
            nd.inputs = tuple(rename.get(i, i) for i in nd.inputs)
            prev = by_name.get(nd.inputs[0]) if nd.inputs else None
            if (nd.op == "scale_shift" and nd.attrs.get("batchnorm") and prev is not None
                    and prev.op in ("linear", "conv2d") and uses.get(prev.name, 0) == 1):
                s = nd.params["scale"].reshape(-1)
                sh = nd.params["shift"].reshape(-1)
                w = prev.params["weight"]
                prev.params["weight"] = w * s.reshape((-1,) + (1,) * (w.dim() - 1))
                bias = prev.params.get("bias", torch.zeros(w.shape[0], dtype=w.dtype))
                prev.params["bias"] = bias * s + sh
                prev.path = f"{prev.path}+{nd.path}"
                rename[nd.name] = prev.name
                continue
            nd.attrs.pop("batchnorm", None)
            keep.append(nd)
        self.nodes = keep
