"""Convert an aten-level ``torch.fx`` graph (from ``torch.export``) into a :class:`Network`.

``torch.export`` decomposes modules into aten ops but records, for every node, the stack of modules
it came from (``meta["nn_module_stack"]``).  Standard ops (linear, conv2d, relu, batch_norm, ...)
are translated one by one; the nodes of our own activation layers (MaxMin, GroupSort,
Householder, Normalize) are recognised by that stack and collapsed back into one op, with their
settings read from the graph (group size from the reshape, order from the sort) and their
tensors from the program's state.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx

from .errors import UnsupportedOperationError
from .graph import Network, Node

aten = torch.ops.aten

_GROUP_KINDS = {"MaxMin": "maxmin", "GroupSort": "groupsort", "HouseholderActivation": "householder",
                "Normalize": "normalize"}
# the module type names torch.export records in nn_module_stack: this package's (nncertify.models.layers.X)
# and those of programs exported before the nncertify import root existed (models.layers.X)
_GROUP_TYPES = {f"{prefix}.{cls}": kind for cls, kind in _GROUP_KINDS.items()
                for prefix in (f"{__package__}.layers", "models.layers")}
_IDENTITY = {aten.clone.default, aten.contiguous.default, aten.dropout.default, aten.alias.default,
             aten.to.dtype, aten._to_copy.default, aten.detach.default}
_SKIP = {aten._assert_tensor_metadata.default, aten.sym_size.int, aten._assert_scalar.default}
_RESHAPES = {aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.flatten.using_ints,
             aten.squeeze.dim, aten.unsqueeze.default, aten.squeeze.dims}
_ACT = {aten.relu.default: "relu", aten.tanh.default: "tanh", aten.sigmoid.default: "sigmoid"}


def _shape(n: fx.Node) -> tuple[int, ...]:
    v = n.meta.get("val")
    return tuple(int(s) for s in v.shape[1:])


def _group_of(n: fx.Node):
    stack = n.meta.get("nn_module_stack") or {}
    for path, tname in reversed(list(stack.values())):
        if tname in _GROUP_TYPES:
            return path, _GROUP_TYPES[tname]
    return None


def from_aten_graph(gm: fx.GraphModule, state: dict[str, torch.Tensor], input_shape, name: str,
                    source: str) -> Network:
    nodes: list[Node] = []
    env: dict[fx.Node, object] = {}
    counter = [0]

    def new(op, inputs, params=None, attrs=None, path=""):
        counter[0] += 1
        nm = f"{op}_{counter[0]}"
        nodes.append(Node(nm, op, tuple(inputs), {k: v.detach().clone() for k, v in (params or {}).items()},
                          dict(attrs or {}), path))
        return nm

    def unsupported(n, what):
        stack = n.meta.get("nn_module_stack") or {}
        where = list(stack.values())[-1][0] if stack else n.name
        raise UnsupportedOperationError(f"{source}: unsupported operation {what} at {where!r} (node {n.name})")

    def tensor_arg(a):
        v = env.get(a) if isinstance(a, fx.Node) else None
        return v if isinstance(v, str) else None

    def const(a):
        if isinstance(a, fx.Node):
            v = env.get(a)
            return v[1] if isinstance(v, tuple) else None
        return a

    graph_nodes = list(gm.graph.nodes)
    # constants folded into scale_shift nodes take the network's dtype (the input's, as traced), never
    # torch's default dtype: a float64 program would otherwise get float32 nodes and mix dtypes
    ph = next((n for n in graph_nodes if n.op == "placeholder"), None)
    val = ph.meta.get("val") if ph is not None else None
    work_dtype = val.dtype if isinstance(val, torch.Tensor) and val.is_floating_point() else \
        next((v.dtype for v in state.values() if isinstance(v, torch.Tensor) and v.is_floating_point()),
             torch.get_default_dtype())
    # -- group activation layers by module path
    groups: dict[str, list[fx.Node]] = {}
    for n in graph_nodes:
        g = _group_of(n)
        if g is not None and n.op == "call_function":
            groups.setdefault(g[0], []).append(n)
    group_last = {ns[-1]: p for p, ns in groups.items()}
    in_group = {n for ns in groups.values() for n in ns}

    for n in graph_nodes:
        if n.op == "placeholder":
            if nodes:
                unsupported(n, "a second input")
            nodes.append(Node("input", "input", (), {}, {"shape": tuple(input_shape)}, "input"))
            env[n] = "input"
            continue
        if n.op == "get_attr":
            obj = gm
            for part in n.target.split("."):
                obj = getattr(obj, part)
            env[n] = ("const", obj)
            continue
        if n.op == "call_module":  # export guards
            env[n] = ("const", None)
            continue
        if n.op == "output":
            out = n.args[0]
            out = out[0] if isinstance(out, (tuple, list)) else out
            output = env.get(out)
            if not isinstance(output, str):
                unsupported(n, "a non-tensor output")
            continue
        if n in in_group:
            if n in group_last:
                env[n] = _collapse_group(group_last[n], groups[group_last[n]], env, state, new, unsupported,
                                         tensor_arg)
            continue
        t = n.target
        a = n.args
        if t in _SKIP:
            env[n] = ("const", None)
        elif t in _IDENTITY:
            env[n] = env[a[0]]
        elif t is aten.linear.default:
            params = {"weight": const(a[1])}
            if len(a) > 2 and a[2] is not None:
                params["bias"] = const(a[2])
            env[n] = new("linear", [tensor_arg(a[0])], params, path=n.name)
        elif t in (aten.conv2d.default, aten.convolution.default):
            if t is aten.convolution.default and a[6]:
                unsupported(n, "transposed convolution")
            stride, padding, dilation = (list(a[3]) if len(a) > 3 else [1, 1]), \
                (list(a[4]) if len(a) > 4 else [0, 0]), (list(a[5]) if len(a) > 5 else [1, 1])
            groups_ = a[8] if t is aten.convolution.default else (a[6] if len(a) > 6 else 1)
            if isinstance(padding, str) or len(padding) != 2:
                unsupported(n, f"conv2d padding {padding}")
            params = {"weight": const(a[1])}
            if a[2] is not None:
                params["bias"] = const(a[2])
            env[n] = new("conv2d", [tensor_arg(a[0])], params, {"stride": tuple(stride), "padding": tuple(padding),
                                                                 "dilation": tuple(dilation), "groups": groups_},
                         path=n.name)
        elif t in _ACT:
            env[n] = new(_ACT[t], [tensor_arg(a[0])], path=n.name)
        elif t is aten.leaky_relu.default:
            env[n] = new("leaky_relu", [tensor_arg(a[0])], attrs={"negative_slope": float(a[1] if len(a) > 1 else 0.01)},
                         path=n.name)
        elif t in _RESHAPES:
            shape = _shape(n)
            env[n] = new("flatten", [tensor_arg(a[0])], path=n.name) if len(shape) == 1 else \
                new("reshape", [tensor_arg(a[0])], attrs={"shape": shape}, path=n.name)
        elif t in (aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default):
            if t is aten.batch_norm.default:
                x, w, b, mean, var, training, eps = a[0], a[1], a[2], a[3], a[4], a[5], a[7]
            else:
                x, w, b, mean, var, eps = a[0], a[1], a[2], a[3], a[4], a[6]
                training = False
            if training:
                unsupported(n, "BatchNorm in training mode")
            mean, var = const(mean), const(var)
            w = const(w) if w is not None else torch.ones_like(mean)
            b = const(b) if b is not None else torch.zeros_like(mean)
            scale = w / torch.sqrt(var + eps)
            shift = b - mean * scale
            view = (-1,) + (1,) * (len(_shape(n)) - 1)
            env[n] = new("scale_shift", [tensor_arg(x)], {"scale": scale.reshape(view), "shift": shift.reshape(view)},
                         path=n.name)
        elif t is operator.getitem:
            src = env.get(a[0])
            env[n] = src if (isinstance(src, str) and a[1] == 0) else ("const", None)
        elif t is aten.avg_pool2d.default:
            k = list(a[1])
            s = list(a[2]) if len(a) > 2 and a[2] else k
            p = list(a[3]) if len(a) > 3 else [0, 0]
            if (len(a) > 4 and a[4]) or (len(a) > 5 and not a[5]) or (len(a) > 6 and a[6] is not None):
                unsupported(n, "avg_pool2d with ceil_mode/count_include_pad=False/divisor_override")
            env[n] = new("avgpool2d", [tensor_arg(a[0])], attrs={"kernel_size": tuple(k), "stride": tuple(s),
                                                                 "padding": tuple(p)}, path=n.name)
        elif t in (aten.add.Tensor, aten.sub.Tensor, aten.mul.Tensor, aten.div.Tensor):
            x, y = tensor_arg(a[0]), tensor_arg(a[1]) if isinstance(a[1], fx.Node) else None
            alpha = n.kwargs.get("alpha", 1)
            if x is not None and y is not None:
                if t is not aten.add.Tensor or alpha != 1:
                    unsupported(n, f"{t} of two tensors (only residual additions are supported)")
                env[n] = new("add", [x, y], path=n.name)
                continue
            if x is None:
                unsupported(n, f"{t} with a constant first operand")
            c = const(a[1])
            c = c.to(work_dtype) if isinstance(c, torch.Tensor) else torch.as_tensor(c, dtype=work_dtype)
            one = torch.ones_like(c, dtype=work_dtype)
            if t is aten.add.Tensor:
                p = {"scale": one, "shift": c * alpha}
            elif t is aten.sub.Tensor:
                p = {"scale": one, "shift": -c * alpha}
            elif t is aten.mul.Tensor:
                p = {"scale": c, "shift": torch.zeros_like(one)}
            else:
                p = {"scale": 1.0 / c, "shift": torch.zeros_like(one)}
            env[n] = new("scale_shift", [x], {k: v.to(work_dtype) for k, v in p.items()}, path=n.name)
        else:
            unsupported(n, f"aten op {t}")
    keep = {output}
    for nd in reversed(nodes):
        if nd.name in keep:
            keep.update(nd.inputs)
    return Network([nd for nd in nodes if nd.name in keep], output, name)


def _collapse_group(path, gnodes, env, state, new, unsupported, tensor_arg):
    """One of our activation layers, recorded as a group of aten nodes, back into one op."""
    inside = set(gnodes)
    ext_inputs = [a for n in gnodes for a in n.all_input_nodes if a not in inside and isinstance(env.get(a), str)]
    if not ext_inputs:
        unsupported(gnodes[0], "an activation layer without tensor input")
    x = ext_inputs[0]
    kind = _GROUP_TYPES[next(t for p, t in reversed(list(gnodes[0].meta["nn_module_stack"].values()))
                             if t in _GROUP_TYPES)]
    targets = [n.target for n in gnodes]
    if kind == "maxmin":
        layout = "pairs" if any(t in (aten.reshape.default, aten.view.default) for t in targets[:1]) else "halves"
        return new("maxmin", [env[x]], attrs={"layout": layout}, path=path)
    if kind == "groupsort":
        sort = next((n for n in gnodes if n.target is aten.sort.default), None)
        rs = next((n for n in gnodes if n.target in (aten.reshape.default, aten.view.default)), None)
        if sort is None or rs is None:
            unsupported(gnodes[0], "GroupSort in an unrecognised form")
        g = int(rs.meta["val"].shape[2])
        descending = bool(sort.args[2]) if len(sort.args) > 2 else False
        return new("groupsort", [env[x]], attrs={"group_size": g, "descending": descending}, path=path)
    if kind == "householder":
        v = state.get(f"{path}.v")
        if v is None:
            unsupported(gnodes[0], f"Householder layer without its parameter {path}.v")
        v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return new("householder", [env[x]], {"v": v}, {"group_size": int(v.shape[1])}, path=path)
    mean, std = state.get(f"{path}.mean"), state.get(f"{path}.std")
    if mean is None or std is None:
        unsupported(gnodes[0], f"Normalize layer without buffers {path}.mean/std")
    return new("scale_shift", [env[x]], {"scale": 1.0 / std, "shift": -mean / std}, path=path)
