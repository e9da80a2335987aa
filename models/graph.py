"""The normalized network description consumed by ``relax/`` and ``sdp/``.

A :class:`Network` is a small DAG of typed operations (:class:`Node`) in topological order.  Every
node has one of the op kinds of :data:`models.ops.OPS`; its tensors live in ``params`` and its
settings in ``attrs``.  ``path`` is the module path in the user's original model, so every error
and every report can name the layer it is about.

Shapes never include the batch dimension: ``Network.input_shape == (1, 28, 28)`` means inputs of
shape ``(B, 1, 28, 28)``.

The evaluation here (:meth:`Network.forward`) is the reference semantics: a network built from an
``nn.Module`` must agree with it on every input (tests check this on random inputs).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Iterator

import torch

from .errors import ModelLoadError, ShapeMismatchError, UnsupportedOperationError
from . import ops as _ops


MAX_INPUT_NUMEL = 50_000_000  # values per sample; larger declared inputs are refused before allocation


@dataclass
class Node:
    """One operation: ``name`` = ``op``(``inputs``...) with ``params`` and ``attrs``."""

    name: str
    op: str
    inputs: tuple[str, ...] = ()
    params: dict[str, torch.Tensor] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
    path: str = ""
    shape: tuple[int, ...] = ()  # output shape, without batch

    def describe(self) -> str:
        where = f" (from {self.path})" if self.path else ""
        return f"{self.name}: {self.op}{where}"


class Network:
    """A normalized network: input node, operations in topological order, one output node."""

    def __init__(self, nodes: Iterable[Node], output: str | None = None, name: str = "network"):
        self.nodes: list[Node] = list(nodes)
        if not self.nodes or self.nodes[0].op != "input":
            raise UnsupportedOperationError("a Network must start with an 'input' node")
        self.name = name
        self._by_name = {n.name: n for n in self.nodes}
        if len(self._by_name) != len(self.nodes):
            raise ModelLoadError("duplicate node names in the network description")
        self.output = output or self.nodes[-1].name
        seen: set[str] = set()
        for n in self.nodes:
            if n.op not in _ops.OPS:
                raise UnsupportedOperationError(
                    f"node {n.describe()}: op {n.op!r} is not supported; supported: {', '.join(sorted(_ops.OPS))}")
            for i in n.inputs:
                if i not in seen:
                    raise ModelLoadError(f"node {n.describe()} uses {i!r} before it is defined")
            expected = _ops.OPS[n.op].arity
            if n.op != "input" and expected is not None and len(n.inputs) != expected:
                raise ModelLoadError(f"node {n.describe()} takes {expected} inputs, got {len(n.inputs)}")
            seen.add(n.name)
        if self.output not in self._by_name:
            raise ModelLoadError(f"output node {self.output!r} does not exist")
        self._infer_shapes()

    # ------------------------------------------------------------------ structure
    @property
    def input_node(self) -> Node:
        return self.nodes[0]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.nodes[0].attrs["shape"])

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self[self.output].shape

    @property
    def dtype(self) -> torch.dtype:
        for n in self.nodes:
            for t in n.params.values():
                return t.dtype
        return torch.get_default_dtype()

    @property
    def device(self) -> torch.device:
        for n in self.nodes:
            for t in n.params.values():
                return t.device
        return torch.device("cpu")

    def __getitem__(self, name: str) -> Node:
        return self._by_name[name]

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    def consumers(self, name: str) -> list[Node]:
        return [n for n in self.nodes if name in n.inputs]

    def is_chain(self) -> bool:
        """True when every node consumes exactly the node before it (no residual adds)."""
        return all(n.inputs == (self.nodes[i].name,) for i, n in enumerate(self.nodes[1:]))

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for n in self.nodes[1:]:
            counts[n.op] = counts.get(n.op, 0) + 1
        return counts

    def summary(self) -> str:
        lines = [f"Network {self.name!r}: input {self.input_shape} -> output {self.output_shape}"]
        for n in self.nodes:
            p = ", ".join(f"{k}{tuple(v.shape)}" for k, v in n.params.items())
            lines.append(f"  {n.name:<12} {n.op:<12} {str(n.shape):<16} {p}  {n.path}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ evaluation
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.intermediates(x, keep_all=False)[self.output]

    __call__ = forward

    def intermediates(self, x: torch.Tensor, keep_all: bool = True,
                      params: dict[str, dict[str, torch.Tensor]] | None = None) -> dict[str, torch.Tensor]:
        """Evaluate every node; returns ``{name: value}`` (only the output unless ``keep_all``).

        ``params`` optionally overrides node parameters (``{node_name: {param_name: tensor}}``), which
        is how :class:`NetworkModule` makes the description differentiable in its parameters.
        """
        if tuple(x.shape[1:]) != self.input_shape:
            raise ShapeMismatchError(
                f"input has per-sample shape {tuple(x.shape[1:])}, network {self.name!r} expects {self.input_shape}")
        values: dict[str, torch.Tensor] = {self.nodes[0].name: x}
        last_use = self._last_use()
        for i, n in enumerate(self.nodes[1:], start=1):
            node = n if params is None or n.name not in params else replace(n, params=params[n.name])
            values[n.name] = _ops.OPS[n.op].evaluate(node, *[values[j] for j in n.inputs])
            if not keep_all:
                for j in n.inputs:
                    if last_use[j] == i and j != self.output:
                        values.pop(j, None)
        return values

    def _last_use(self) -> dict[str, int]:
        last = {n.name: len(self.nodes) for n in self.nodes}
        for i, n in enumerate(self.nodes):
            for j in n.inputs:
                last[j] = i
        return last

    def _infer_shapes(self) -> None:
        shape = self.input_shape
        numel = 1
        for d in shape:
            if not isinstance(d, int) or d <= 0:
                raise ShapeMismatchError(f"network {self.name!r}: invalid input shape {shape}")
            numel *= d
        if numel > MAX_INPUT_NUMEL:
            raise ShapeMismatchError(f"network {self.name!r}: input shape {shape} has {numel:,} values per sample, "
                                     f"more than the limit of {MAX_INPUT_NUMEL:,}")
        with torch.no_grad():
            x = torch.zeros((1, *self.input_shape), dtype=self.dtype, device=self.device)
            try:
                vals = self.intermediates(x, keep_all=True)
            except NNCertifyErrorTypes:
                raise
            except Exception as exc:  # a shape error inside an op: name the node
                for n in self.nodes[1:]:
                    n.shape = ()
                raise ShapeMismatchError(f"network {self.name!r}: shapes do not fit together ({exc})") from None
        for n in self.nodes:
            n.shape = tuple(vals[n.name].shape[1:])

    # ------------------------------------------------------------------ conversion
    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> "Network":
        """A copy with every parameter cast/moved (the description itself is immutable in use)."""
        nodes = [replace(n, params={k: v.to(dtype=dtype if v.is_floating_point() else None, device=device)
                                    for k, v in n.params.items()}, attrs=dict(n.attrs)) for n in self.nodes]
        return Network(nodes, self.output, self.name)

    def fingerprint(self) -> str:
        """SHA-256 over ops, attributes and parameter bytes: identifies the network in certificates."""
        h = hashlib.sha256()
        for n in self.nodes:
            h.update(f"{n.name}|{n.op}|{n.inputs}|{sorted(n.attrs.items(), key=lambda kv: kv[0])!r}".encode())
            for k in sorted(n.params):
                h.update(k.encode())
                h.update(n.params[k].detach().to("cpu", torch.float64).contiguous().numpy().tobytes())
        return h.hexdigest()

    def check_finite(self) -> None:
        """Raise :class:`ModelLoadError` naming the first parameter that holds NaN or Inf."""
        for n in self.nodes:
            for k, v in n.params.items():
                if v.is_floating_point() and not torch.isfinite(v).all():
                    raise ModelLoadError(f"layer {n.path or n.name}: parameter {k!r} contains NaN or Inf")

    def to_module(self, requires_grad: bool = True) -> torch.nn.Module:
        """An ``nn.Module`` view that evaluates this description (for attacks, JVPs, export)."""
        return NetworkModule(self, requires_grad)


class NetworkModule(torch.nn.Module):
    """Wraps a :class:`Network` as an ``nn.Module`` (parameters registered, so autograd/func work)."""

    def __init__(self, net: Network, requires_grad: bool = True):
        super().__init__()
        self.net = net
        self.weights = torch.nn.ParameterDict()
        for n in net.nodes:
            for k, v in n.params.items():
                self.weights[f"{n.name}__{k}"] = torch.nn.Parameter(v.detach().clone(), requires_grad=requires_grad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        params = {n.name: {k: self.weights[f"{n.name}__{k}"] for k in n.params} for n in self.net.nodes if n.params}
        return self.net.intermediates(x, keep_all=False, params=params)[self.net.output]


NNCertifyErrorTypes = (ShapeMismatchError, UnsupportedOperationError, ModelLoadError)


# ---------------------------------------------------------------------- dense views of affine ops
AFFINE_OPS = ("linear", "conv2d", "flatten", "reshape", "scale_shift", "avgpool2d")


def affine_matrix(node: Node, in_shape: tuple[int, ...], dtype: torch.dtype | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense ``(W, b)`` with ``vec(node(x)) = W vec(x) + b`` for an affine node.

    Built by pushing the identity through the op, so it is exact for every affine op kind; its
    size is ``out_numel x in_numel`` (only use it where that fits in memory).  ``dtype``: the
    network's dtype, used by parameter-free nodes (flatten, reshape, avg-pool) -- a node with
    parameters uses theirs.
    """
    if node.op not in AFFINE_OPS:
        raise UnsupportedOperationError(f"node {node.describe()} is not affine")
    op = _ops.OPS[node.op]
    n_in = 1
    for s in in_shape:
        n_in *= s
    p = next(iter(node.params.values()), None)
    dtype = p.dtype if p is not None else (dtype or torch.get_default_dtype())
    device = p.device if p is not None else None
    with torch.no_grad():
        zero = torch.zeros((1, *in_shape), dtype=dtype, device=device)
        b = op.evaluate(node, zero).reshape(-1)
        eye = torch.eye(n_in, dtype=dtype, device=device).reshape(n_in, *in_shape)
        W = (op.evaluate(node, eye).reshape(n_in, -1) - b).T.contiguous()
    return W, b


@dataclass
class Stage:
    """One stage of a feed-forward chain: a dense affine map or an activation."""

    kind: str  # "affine" or the activation op name
    W: torch.Tensor | None = None
    b: torch.Tensor | None = None
    node: Node | None = None  # the activation node (for attrs/params)
    paths: tuple[str, ...] = ()


def chain_stages(net: Network) -> list[Stage]:
    """Collapse a chain network into alternating dense affine maps and activations.

    Consecutive affine ops (normalization, conv, flatten, linear, pooling, BatchNorm folded) are
    composed into one ``(W, b)``; an identity map is inserted where two activations are adjacent.
    Raises :class:`UnsupportedOperationError` for networks with residual adds.
    """
    if not net.is_chain():
        raise UnsupportedOperationError(
            f"network {net.name!r} has residual connections; use the residual/graph interfaces instead")
    stages: list[Stage] = []
    W = b = None
    paths: list[str] = []
    prev_shape = net.input_shape
    for n in net.nodes[1:]:
        if n.op in AFFINE_OPS:
            Wn, bn = affine_matrix(n, prev_shape, net.dtype)
            if W is None:
                W, b = Wn, bn
            else:
                W, b = Wn @ W, Wn @ b + bn
            paths.append(n.path or n.name)
        else:
            if W is None:
                numel = int(torch.tensor(prev_shape).prod())
                W = torch.eye(numel, dtype=net.dtype, device=net.device)
                b = torch.zeros(numel, dtype=net.dtype, device=net.device)
            stages.append(Stage("affine", W, b, paths=tuple(paths)))
            stages.append(Stage(n.op, node=n, paths=(n.path or n.name,)))
            W = b = None
            paths = []
        prev_shape = n.shape
    if W is None:
        numel = int(torch.tensor(prev_shape).prod())
        W = torch.eye(numel, dtype=net.dtype, device=net.device)
        b = torch.zeros(numel, dtype=net.dtype, device=net.device)
    stages.append(Stage("affine", W, b, paths=tuple(paths)))
    return stages
