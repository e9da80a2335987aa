"""Our own ONNX importer for the op subset of the normalized description (no torchvision needed).

Supported ONNX ops: Gemm, MatMul (a following Add of a constant bias is folded into it when nothing
else reads the MatMul's output), Conv, Relu, LeakyRelu, Tanh, Sigmoid, Flatten, Reshape (constant
shape), Add and Sub (of two tensors of the same shape, or of a constant), Mul/Div by constants (and
``c - x``), AveragePool, BatchNormalization (inference), Identity, Dropout, Constant, and ``Shape`` of
a tensor (its shape is known).  Nodes whose inputs are all constants (weights transposed, reshaped,
cast, shape arithmetic for a flatten, ...) are evaluated once at load time by onnx's reference
evaluator, whatever their op.  Anything else is reported in one line naming the node and its op
type.  The graph has one output and one or more data inputs (inputs that are also initializers, as
in the ACAS Xu files of VNN-COMP, are constants), each with a fixed per-sample shape (the batch
dimension, the first, may be symbolic or 1).  With one data input the network's input is that
tensor; with several it is one flat vector ``z``: the inputs flattened row-major and concatenated in
declaration order (each input is ``reshape(S_i z)`` with one-hot ``S_i``, exact), the convention of
VNN-LIB 2.0's queries (:mod:`relax.vnnlib2`) and of :class:`certify.vnn.OnnxRuntimeModel`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .errors import ModelLoadError, UnsupportedOperationError
from .graph import Network, Node

from .onnx_support import SUPPORTED  # noqa: E402  (the table lives torch-free, for `nncertify-solver supports`)


def load_onnx(path: str | Path, name: str | None = None) -> Network:
    import onnx
    from onnx import numpy_helper

    path = Path(path)
    try:
        model = onnx.load(str(path))
    except Exception as exc:
        raise ModelLoadError(f"{path}: not a readable ONNX file ({type(exc).__name__})") from None
    g = model.graph
    consts: dict[str, torch.Tensor] = {}
    for init in g.initializer:
        consts[init.name] = torch.from_numpy(np.array(numpy_helper.to_array(init)))
    inputs = [i for i in g.input if i.name not in consts]
    if not inputs or len(g.output) != 1:
        raise UnsupportedOperationError(f"{path}: expected at least one data input and one output, got {len(inputs)} "
                                        f"and {len(g.output)}")
    shapes = [_input_shape(path, i) for i in inputs]
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    users: dict[str, int] = {}  # tensor -> number of node inputs reading it (graph outputs count as users)
    for n in g.node:
        for i in n.input:
            users[i] = users.get(i, 0) + 1
    for o in g.output:
        users[o.name] = users.get(o.name, 0) + 1

    env: dict[str, str] = {}
    if len(inputs) == 1:
        nodes = [Node("input", "input", (), {}, {"shape": shapes[0]}, "input")]
        env[inputs[0].name] = "input"
    else:  # one flat input z: the graph inputs flattened row-major, concatenated in declaration order
        sizes = [int(np.prod(sh)) for sh in shapes]
        total = sum(sizes)
        nodes = [Node("input", "input", (), {}, {"shape": (total,)}, "input")]
    count = [0]

    def attr(n, key, default=None):
        for a in n.attribute:
            if a.name == key:
                return onnx.helper.get_attribute_value(a)
        return default

    def new(op, ins, params=None, attrs=None, path=""):
        count[0] += 1
        nm = f"{op}_{count[0]}"
        nodes.append(Node(nm, op, tuple(ins), {k: v.float() for k, v in (params or {}).items()}, attrs or {}, path))
        return nm

    def cur_shape(tensor_name):
        net = Network(list(nodes), env[tensor_name], "partial")
        return net.output_shape

    if len(inputs) > 1:  # X_i = reshape(S_i z) with one-hot rows S_i (each output one weight 1: exact)
        off = 0
        for inp, sh, size in zip(inputs, shapes, sizes):
            S = torch.zeros(size, total)
            S[torch.arange(size), off + torch.arange(size)] = 1.0
            x = new("linear", ["input"], {"weight": S}, path=f"input {inp.name}")
            env[inp.name] = x if len(sh) == 1 else new("reshape", [x], attrs={"shape": tuple(sh)}, path=f"input {inp.name}")
            off += size

    def convert(n, t, ins, where):
        tensor_ins = [i for i in ins if i in env]
        if t in ("Identity", "Dropout"):
            env[n.output[0]] = env[ins[0]]
            return
        if t == "Shape":  # the per-sample shape is known; the batch is 1 (shape arithmetic then folds)
            full = [1, *cur_shape(ins[0])]
            start, end = attr(n, "start", 0), attr(n, "end", None)
            consts[n.output[0]] = torch.tensor(full[start:end] if end is not None else full[start:], dtype=torch.int64)
            return
        if t == "Gemm":
            a_, b_ = attr(n, "alpha", 1.0), attr(n, "beta", 1.0)
            if attr(n, "transA", 0):
                raise UnsupportedOperationError(f"{where}: Gemm with transA")
            W = consts[ins[1]]
            W = W if attr(n, "transB", 0) else W.T
            params = {"weight": W * a_}
            if len(ins) > 2 and ins[2]:
                params["bias"] = consts[ins[2]].reshape(-1) * b_
            env[n.output[0]] = new("linear", [env[ins[0]]], params, path=n.name)
        elif t == "MatMul":
            if ins[1] not in consts:
                raise UnsupportedOperationError(f"{where}: MatMul of two tensors")
            env[n.output[0]] = new("linear", [env[ins[0]]], {"weight": consts[ins[1]].T}, path=n.name)
        elif t == "Conv":
            pads = list(attr(n, "pads", [0, 0, 0, 0]))
            if pads[:2] != pads[2:]:
                raise UnsupportedOperationError(f"{where}: asymmetric Conv padding {pads}")
            if attr(n, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
                raise UnsupportedOperationError(f"{where}: Conv auto_pad")
            params = {"weight": consts[ins[1]]}
            if len(ins) > 2 and ins[2]:
                params["bias"] = consts[ins[2]]
            env[n.output[0]] = new("conv2d", [env[ins[0]]], params, {
                "stride": tuple(attr(n, "strides", [1, 1])), "padding": tuple(pads[:2]),
                "dilation": tuple(attr(n, "dilations", [1, 1])), "groups": int(attr(n, "group", 1))}, n.name)
        elif t in ("Relu", "Tanh", "Sigmoid"):
            env[n.output[0]] = new(t.lower(), [env[ins[0]]], path=n.name)
        elif t == "LeakyRelu":
            env[n.output[0]] = new("leaky_relu", [env[ins[0]]], attrs={"negative_slope": float(attr(n, "alpha", 0.01))},
                                   path=n.name)
        elif t in ("Flatten", "Reshape"):
            x = env[ins[0]]
            if t == "Flatten":
                if attr(n, "axis", 1) != 1:
                    raise UnsupportedOperationError(f"{where}: Flatten with axis != 1")
                env[n.output[0]] = new("flatten", [x], path=n.name)
            else:
                target = [int(s) for s in consts[ins[1]].tolist()]
                numel = int(np.prod(cur_shape(ins[0])))
                rest = target[1:]
                if -1 in rest:
                    known = int(np.prod([s for s in rest if s != -1]))
                    rest[rest.index(-1)] = numel // known
                if target[0] not in (-1, 0, 1) and len(target) > 1 and int(np.prod(rest)) != numel:
                    raise UnsupportedOperationError(f"{where}: Reshape that mixes the batch dimension")
                env[n.output[0]] = new("flatten", [x], path=n.name) if len(rest) == 1 else \
                    new("reshape", [x], attrs={"shape": tuple(rest)}, path=n.name)
        elif t in ("Add", "Sub", "Mul", "Div"):
            if len(tensor_ins) == 2:
                if t not in ("Add", "Sub"):
                    raise UnsupportedOperationError(f"{where}: {t} of two tensors (not affine)")
                sa, sb = cur_shape(ins[0]), cur_shape(ins[1])
                if tuple(sa) != tuple(sb):
                    raise UnsupportedOperationError(f"{where}: {t} of two tensors of shapes {list(sa)} and {list(sb)} "
                                                    f"(broadcasting between tensors is not supported)")
                b = env[ins[1]]
                if t == "Sub":  # a - b = a + (-1) * b  (negation is exact)
                    b = new("scale_shift", [b], {"scale": -torch.ones(tuple(sb)), "shift": torch.zeros(tuple(sb))},
                            path=n.name)
                env[n.output[0]] = new("add", [env[ins[0]], b], path=n.name)
                return
            negate = False
            if ins[0] not in env:
                if t == "Div":
                    raise UnsupportedOperationError(f"{where}: Div with a constant numerator (c / x is not affine)")
                negate = t == "Sub"  # c - x = (-1) * x + c
                t = "Add" if negate else t
                ins = ins[::-1]
            x, c = env[ins[0]], consts[ins[1]].float()
            if negate:
                s = cur_shape(ins[0])
                scale = -torch.ones_like(c)
                if scale.dim() > len(s):
                    scale, c = scale.reshape(scale.shape[1:]), c.reshape(c.shape[1:])
                env[n.output[0]] = new("scale_shift", [x], {"scale": scale, "shift": c}, path=n.name)
                return
            prev = nodes[-1]
            # fold a bias into the MatMul just before it only when nothing else reads the MatMul's output
            # (another node, a graph output, an alias through Identity): folding changes that tensor's value
            if t == "Add" and prev.name == x and prev.op == "linear" and "bias" not in prev.params and c.dim() <= 1 \
                    and users.get(ins[0], 0) == 1 and [k for k, v in env.items() if v == x] == [ins[0]]:
                prev.params["bias"] = c.reshape(-1).expand(prev.params["weight"].shape[0]).clone()
                env[n.output[0]] = x
                return
            one = torch.ones_like(c)
            scale, shift = {"Add": (one, c), "Sub": (one, -c), "Mul": (c, 0 * c), "Div": (1.0 / c, 0 * c)}[t]
            s = cur_shape(ins[0])
            if scale.dim() > len(s):  # drop a leading batch axis of size 1
                scale, shift = scale.reshape(scale.shape[1:]), shift.reshape(shift.shape[1:])
            env[n.output[0]] = new("scale_shift", [x], {"scale": scale, "shift": shift}, path=n.name)
        elif t == "AveragePool":
            pads = list(attr(n, "pads", [0, 0, 0, 0]))
            if attr(n, "ceil_mode", 0) or pads[:2] != pads[2:] or (any(pads) and not attr(n, "count_include_pad", 0)):
                raise UnsupportedOperationError(f"{where}: AveragePool with ceil_mode/asymmetric or excluded padding")
            k = tuple(attr(n, "kernel_shape"))
            env[n.output[0]] = new("avgpool2d", [env[ins[0]]], attrs={
                "kernel_size": k, "stride": tuple(attr(n, "strides", k)), "padding": tuple(pads[:2])}, path=n.name)
        elif t == "BatchNormalization":
            w, b, mean, var = (consts[i].float() for i in ins[1:5])
            eps = float(attr(n, "epsilon", 1e-5))
            scale = w / torch.sqrt(var + eps)
            shift = b - mean * scale
            view = (-1,) + (1,) * (len(cur_shape(ins[0])) - 1)
            env[n.output[0]] = new("scale_shift", [env[ins[0]]], {"scale": scale.reshape(view),
                                                                  "shift": shift.reshape(view)}, path=n.name)

    def fold(n, where):
        """Evaluate a node whose inputs are all constants (onnx's reference evaluator)."""
        from onnx.reference import ReferenceEvaluator
        try:
            feeds = {i: consts[i].numpy() for i in n.input if i}
            outs = ReferenceEvaluator(n, opsets={"": opset} if opset else None).run(None, feeds)
        except KeyError as exc:
            raise UnsupportedOperationError(f"{where}: operand {exc.args[0]!r} is neither a constant nor computed "
                                            f"from the input") from None
        except Exception as exc:
            raise UnsupportedOperationError(f"{where}: cannot evaluate this constant node "
                                            f"({type(exc).__name__}: {exc})") from None
        for name, val in zip(n.output, outs):
            consts[name] = torch.from_numpy(np.array(val))

    for k, n in enumerate(g.node):
        where = f"{path}: node {n.name or '#' + str(k)} ({n.op_type})"
        t = n.op_type
        if t == "Constant":
            if attr(n, "value") is None:
                raise UnsupportedOperationError(f"{where}: only Constant nodes with a 'value' tensor are supported")
            consts[n.output[0]] = torch.from_numpy(np.array(numpy_helper.to_array(attr(n, "value"))))
            continue
        ins = list(n.input)
        if not any(i in env for i in ins if i):
            fold(n, where)
            continue
        if t not in SUPPORTED:
            raise UnsupportedOperationError(f"{where}: unsupported ONNX op {t}; supported: {', '.join(SUPPORTED)} "
                                            f"(and any op on constants only)")
        try:
            convert(n, t, ins, where)
        except KeyError as exc:
            raise UnsupportedOperationError(f"{where}: operand {exc.args[0]!r} is neither a constant nor computed "
                                            f"from the input") from None
    out = g.output[0].name
    if out not in env:
        raise UnsupportedOperationError(f"{path}: the output {out!r} is not computed from the input")
    return Network(nodes, env[out], name or path.stem)



def _input_shape(path: Path, inp) -> tuple[int, ...]:
    """The per-sample shape of a graph input (the first dimension is the batch: 1 or symbolic)."""
    dims = list(inp.type.tensor_type.shape.dim)
    if len(dims) < 2:
        raise UnsupportedOperationError(f"{path}: input {inp.name!r} has rank {len(dims)}; expected a batch "
                                        f"dimension first and the per-sample shape after it")
    if dims[0].HasField("dim_value") and dims[0].dim_value not in (0, 1):
        raise UnsupportedOperationError(f"{path}: input {inp.name!r} has a fixed batch dimension of "
                                        f"{dims[0].dim_value}; expected 1 or symbolic")
    shape = []
    for d in dims[1:]:
        if not d.HasField("dim_value"):
            raise UnsupportedOperationError(f"{path}: input {inp.name!r} has a symbolic non-batch dimension")
        shape.append(int(d.dim_value))
    return tuple(shape)
