"""ONNX graph surgery: several ONNX models, several inputs and hidden tensors -> one graph with one input
and one output, so that :func:`models.onnx_import.load_onnx` (one data input, one output) can load it.

Given models ``m_0 .. m_{K-1}`` (the same model may appear twice: ``equal-to`` copies) and a list of
*pieces* -- ``(model k, tensor t, flat indices)`` -- :func:`compose` builds the graph of

    g(z) = concat_p  flatten(t_p)[idx_p]        with   X_{k,i} = reshape(z[o_{k,i} : o_{k,i} + n_{k,i}])

where ``z`` (shape ``[1, N]``) is the concatenation of every data input of every model, flattened
row-major, in model order then input order.  Every added node is affine with 0/1 weights: the input
slices are ``Reshape(MatMul(z, S))`` with one-hot columns ``S``, the concatenation is
``Add_p MatMul(Flatten(t_p), P_p)`` with one-hot rows ``P_p`` (a dot product with a single non-zero
weight ``1`` is exact in floating point, so ``g`` is the pieces' values exactly).  A model's tensors and
nodes are renamed ``net{k}__NAME`` (a tensor ``None`` names ``z`` itself).  When there is one data
input in all, it stays the graph's input (``z`` is then that input, not reshaped) and when there is one
piece covering a whole tensor in order, ``g`` is that tensor flattened.

The ``Flatten`` reading a piece is placed right after the node producing its tensor, so that the
importer's fusion of ``MatMul`` + bias ``Add`` (which rewrites the MatMul's node in place) cannot
change the value a hidden-node piece reads.

Nothing here decides what is sound: the result is checked against onnxruntime on the original models
by the caller before it is used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import UnsupportedOperationError


@dataclass(frozen=True)
class Piece:
    model: int | None          # index into the model list (None: the composite input z)
    tensor: str | None         # ONNX tensor name in that model (None: z)
    indices: tuple[int, ...]   # flat row-major indices of the tensor, in the order they appear in g
    numel: int                 # number of elements of the tensor (per the declaration)


def data_inputs(model) -> list:
    """The graph inputs that are not initializers (IR < 4 files list weights as inputs too)."""
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def compose(models: list, input_numels: list[list[int]], input_shapes: list[list[tuple[int, ...]]],
            pieces: list[Piece]):
    """The composite :class:`onnx.ModelProto` (see the module docstring).

    ``input_numels[k][i]``/``input_shapes[k][i]``: size and full ONNX shape of data input ``i`` of
    model ``k`` (the caller has checked them against the model).  All models must share one opset of
    the default domain."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if not models:
        raise UnsupportedOperationError("no model to compose")
    opsets = {next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), None) for m in models}
    if len(opsets) != 1:
        raise UnsupportedOperationError(f"the networks use different ONNX opsets {sorted(o or 0 for o in opsets)}; "
                                        f"a product query needs one opset")
    opset = opsets.pop()

    def pre(k: int, name: str) -> str:
        return f"net{k}__{name}" if name else name

    nodes: list = []
    inits: list = []
    n_total = sum(sum(x) for x in input_numels)
    n_inputs = sum(len(x) for x in input_numels)
    single = n_inputs == 1
    z = "z"
    if single:
        k0 = next(k for k, x in enumerate(input_numels) if x)
        z = pre(k0, data_inputs(models[k0])[0].name)
        shape0 = list(input_shapes[k0][0])
        graph_input = helper.make_tensor_value_info(z, TensorProto.FLOAT, shape0)
    else:
        graph_input = helper.make_tensor_value_info(z, TensorProto.FLOAT, [1, n_total])
    producer: dict[str, int] = {}  # tensor -> index in nodes of the node producing it
    off = 0
    for k, m in enumerate(models):
        g = m.graph
        for init in g.initializer:
            t = onnx.TensorProto()
            t.CopyFrom(init)
            t.name = pre(k, init.name)
            inits.append(t)
        for i, inp in enumerate(data_inputs(m)):
            n = input_numels[k][i]
            if not single:
                S = np.zeros((n_total, n), dtype=np.float32)
                S[off + np.arange(n), np.arange(n)] = 1.0
                sname, flat, shp = f"slice{k}_{i}__S", f"slice{k}_{i}__flat", f"slice{k}_{i}__shape"
                inits.append(numpy_helper.from_array(S, sname))
                inits.append(numpy_helper.from_array(np.array(input_shapes[k][i], dtype=np.int64), shp))
                nodes.append(helper.make_node("MatMul", [z, sname], [flat], name=f"slice{k}_{i}__matmul"))
                nodes.append(helper.make_node("Reshape", [flat, shp], [pre(k, inp.name)], name=f"slice{k}_{i}__reshape"))
            off += n
        for node in g.node:
            new = onnx.NodeProto()
            new.CopyFrom(node)
            del new.input[:]
            new.input.extend(pre(k, x) for x in node.input)
            del new.output[:]
            new.output.extend(pre(k, x) for x in node.output)
            new.name = pre(k, node.name or f"node{len(nodes)}")
            nodes.append(new)
            for o in new.output:
                producer[o] = len(nodes) - 1

    # the pieces: Flatten right after the producer, then one-hot MatMuls and Adds at the end
    M = sum(len(p.indices) for p in pieces)
    insert_after: dict[int, list] = {}
    tail: list = []
    terms: list[str] = []
    col = 0
    whole_single = len(pieces) == 1 and tuple(pieces[0].indices) == tuple(range(pieces[0].numel))
    for j, p in enumerate(pieces):
        src = z if p.tensor is None else pre(p.model, p.tensor)
        flat = f"piece{j}__flat"
        fl = helper.make_node("Flatten", [src], [flat], name=f"piece{j}__flatten", axis=1)
        where = producer.get(src, -1)
        insert_after.setdefault(where, []).append(fl)
        if whole_single:
            terms.append(flat)
            break
        P = np.zeros((p.numel, M), dtype=np.float32)
        P[np.asarray(p.indices, dtype=np.int64), col + np.arange(len(p.indices))] = 1.0
        col += len(p.indices)
        pname = f"piece{j}__P"
        inits.append(numpy_helper.from_array(P, pname))
        tail.append(helper.make_node("MatMul", [flat, pname], [f"piece{j}__g"], name=f"piece{j}__select"))
        terms.append(f"piece{j}__g")
    acc = terms[0]
    for j, t in enumerate(terms[1:], 1):
        out = f"concat{j}__sum"
        tail.append(helper.make_node("Add", [acc, t], [out], name=f"concat{j}__add"))
        acc = out
    ordered = list(insert_after.get(-1, []))
    for i, nd in enumerate(nodes):
        ordered.append(nd)
        ordered.extend(insert_after.get(i, []))
    ordered.extend(tail)
    graph_output = helper.make_tensor_value_info(acc, TensorProto.FLOAT, [1, M])
    graph = helper.make_graph(ordered, "nncertify_composite", [graph_input], [graph_output], initializer=inits)
    ir = max(4, max(m.ir_version for m in models))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", int(opset or 13))])
    model.ir_version = ir
    return model
