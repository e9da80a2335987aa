"""Decide a VNN-LIB 2.0 query on ONNX models (the work behind ``nncertify-solver verify``).

Pipeline
--------
1. :func:`relax.vnnlib2.read_vnnlib2` parses and type-checks the query (the standard's ``vnnlib``
   package) and :func:`relax.vnnlib2.to_query` gives the engine's :class:`~relax.spec.Query` over
   ``z`` (all declared inputs) and ``g`` (the variables the non-box atoms use).
2. :func:`bind` checks the ``--network`` mapping and the models against the declarations -- the
   standard's mandatory errors: a missing or unnecessary model, element types that differ from the
   model's, element types nncertify cannot analyse soundly (everything but ``real``: the engine's
   bounds hold for the real-valued network, see ``relax/engine.py``) -- plus shapes, hidden tensors,
   ``isomorphic-to`` structure, and the opset range / element types of :data:`ONNX_OPSETS`.
3. The networks that own a variable of ``g`` are composed into one ONNX graph
   (:func:`models.onnx_compose.compose`: a product of the networks, ``equal-to`` copies share the
   file, hidden tensors exposed as outputs), imported by :func:`models.onnx_import.load_onnx`, and the
   import is compared with onnxruntime on the original files (:func:`certify.vnn.check_against_runtime`).
4. :func:`relax.spec.verify_query` decides it.  A ``sat`` is re-checked by
   :func:`certify.vnn.recheck` (float64 model and onnxruntime on the original files, at a point the
   float32 inputs represent) and then *exactly* (rational arithmetic) against every atom of its DNF
   clause, strict ones included, with the values of both.  A witness failing any check is ``unknown``.

Networks that own no variable of ``g`` take no part in the analysis (a network is a total function:
its inputs can take any value of their box); the assignment still reports them, computed by
onnxruntime.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..models.errors import (InvalidArgumentError, ModelLoadError, NNCertifyError, ShapeMismatchError,
                             SpecificationError)
from ..relax.vnnlib2 import (SUPPORTED_VERSIONS, VarDecl, VNNLib2, clause_holds, read_vnnlib2, theories,
                               to_query)

from ..models.onnx_support import ELEMENT_TYPES, MODEL_ELEMENT_TYPES, ONNX_OPSETS  # noqa: E402
from .params import make_folder  # noqa: E402

_ONNX_TYPES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 8: "string",
               9: "bool", 10: "float16", 11: "float64", 12: "uint32", 13: "uint64", 14: "complex64",
               15: "complex128", 16: "bfloat16"}


class ErrorConditionError(InvalidArgumentError):
    """One of the standard's mandatory ``verify`` errors (chapter 5.3.2)."""


@dataclass
class Solution:
    status: str                            # sat | unsat | unknown | timed-out
    reason: str = ""
    assignment: list[tuple[VarDecl, np.ndarray]] | None = None   # sat: every declared variable's value
    time_s: float = 0.0
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ binding
def _tensor_type(vi) -> tuple[str, list]:
    tt = vi.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
    return _ONNX_TYPES.get(tt.elem_type, f"type{tt.elem_type}"), dims


def _opset(model) -> int | None:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def _structure(model) -> tuple:
    return (tuple(n.op_type for n in model.graph.node),
            tuple(tuple(i.dims) for i in model.graph.initializer))


@dataclass
class Binding:
    doc: VNNLib2
    files: dict[str, Path]      # network name -> ONNX file (equal-to copies: their referent's file)
    models: dict[str, object]   # network name -> onnx.ModelProto (shared by equal-to copies)


def bind(doc: VNNLib2, networks: dict[str, str | Path]) -> Binding:
    """Check the ``--network`` mapping and the models against the declarations (module docstring)."""
    import onnx

    names = [n.name for n in doc.networks]
    need = [n.name for n in doc.networks if not n.equal_to]
    missing = [n for n in need if n not in networks]
    if missing:
        raise ErrorConditionError(f"{doc.source}: no --network given for network {missing[0]} "
                                  f"(expected --network NAME=FILE.onnx for each of: {', '.join(need)})")
    extra = [n for n in networks if n not in need]
    if extra:
        why = "is declared equal-to another network and takes its model" if extra[0] in names else \
            "is not declared in the query"
        raise ErrorConditionError(f"{doc.source}: unnecessary --network {extra[0]}: the network {why}")
    files: dict[str, Path] = {}
    models: dict[str, object] = {}
    for n in doc.networks:
        if n.equal_to:
            continue
        p = Path(networks[n.name])
        if not p.exists():
            raise ModelLoadError(f"{p}: no such file (--network {n.name})")
        try:
            models[n.name] = onnx.load(str(p))
        except Exception as exc:
            raise ModelLoadError(f"{p}: not a readable ONNX file ({type(exc).__name__})") from None
        files[n.name] = p
    for n in doc.networks:
        if n.equal_to:
            if n.equal_to not in models:
                raise SpecificationError(f"{doc.source}: network {n.name} is equal-to {n.equal_to}, which is "
                                         f"itself declared equal-to another network")
            files[n.name], models[n.name] = files[n.equal_to], models[n.equal_to]
        if n.isomorphic_to and n.isomorphic_to in models and \
                _structure(models[n.name]) != _structure(models[n.isomorphic_to]):
            raise ErrorConditionError(f"{files[n.name]}: network {n.name} is declared isomorphic-to "
                                      f"{n.isomorphic_to} but its graph ({files[n.isomorphic_to]}) has other nodes "
                                      f"or weight shapes")
    for n in doc.networks:
        _check_model(n, models[n.name], files[n.name])
    return Binding(doc, files, models)


def _check_model(n, model, path: Path) -> None:
    from ..models.onnx_compose import data_inputs

    g = model.graph
    ins, outs = data_inputs(model), list(g.output)
    for what, decls, vis in (("input", n.inputs, ins), ("output", n.outputs, outs)):
        if len(decls) != len(vis):
            raise ErrorConditionError(f"{path}: network {n.name} declares {len(decls)} {what}(s), the model has "
                                      f"{len(vis)} ({', '.join(v.name for v in vis)})")
        for d, vi in zip(decls, vis):
            et, dims = _tensor_type(vi)
            if d.dtype != "real" and d.dtype != et:
                raise ErrorConditionError(f"{path}: {what} {d.name} of network {n.name} is declared {d.dtype}, the "
                                          f"model's {what} {vi.name!r} is {et}")
            if len(dims) != len(d.shape) or any(m is not None and m != s for m, s in zip(dims, d.shape)):
                raise ShapeMismatchError(f"{path}: {what} {d.name} of network {n.name} is declared "
                                         f"[{','.join(map(str, d.shape))}], the model's {what} {vi.name!r} has shape "
                                         f"[{','.join('?' if m is None else str(m) for m in dims)}]")
    produced = {o for node in g.node for o in node.output}
    for h in n.hidden:
        if h.onnx_name not in produced:
            raise ErrorConditionError(f"{path}: hidden node {h.name} of network {n.name} names {h.onnx_name!r}, "
                                      f"which no node of the model outputs")
    for v in n.variables:
        if v.dtype not in ELEMENT_TYPES:
            raise ErrorConditionError(
                f"{path}: {v.kind} {v.name} of network {n.name} has element type {v.dtype}: nncertify cannot "
                f"analyse it soundly (its bounds hold for the real-valued network; floating-point evaluation "
                f"error is not bounded); declare every variable 'real' to consent to a real-valued analysis")
    op = _opset(model)
    if op is None or not (ONNX_OPSETS[0] <= op <= ONNX_OPSETS[1]):
        raise ErrorConditionError(f"{path}: ONNX opset {op} is outside the supported range "
                                  f"{ONNX_OPSETS[0]}..{ONNX_OPSETS[1]}")
    for vi in [*ins, *outs]:
        et, _ = _tensor_type(vi)
        if et not in MODEL_ELEMENT_TYPES:
            raise ErrorConditionError(f"{path}: tensor {vi.name!r} is {et}; nncertify imports float32 models only")
    for init in g.initializer:
        et = _ONNX_TYPES.get(init.data_type, "?")
        if et in ("float64", "float16", "bfloat16"):
            raise ErrorConditionError(f"{path}: initializer {init.name!r} is {et}; nncertify imports float32 "
                                      f"models only (the importer would round it)")
    for node in g.node:
        a = {x.name: x for x in node.attribute}
        if node.op_type == "AveragePool" and "dilations" in a and any(v != 1 for v in a["dilations"].ints):
            raise ErrorConditionError(f"{path}: node {node.name or node.op_type}: AveragePool with dilations")
        if node.op_type == "Reshape" and "allowzero" in a and a["allowzero"].i:
            raise ErrorConditionError(f"{path}: node {node.name or node.op_type}: Reshape with allowzero=1")
        if node.op_type == "BatchNormalization" and "spatial" in a and a["spatial"].i == 0:
            raise ErrorConditionError(f"{path}: node {node.name or node.op_type}: BatchNormalization with spatial=0")


# ------------------------------------------------------------------------------------------ onnxruntime
class CompositeRuntime:
    """The original ONNX files run by onnxruntime: ``evaluate(z)`` gives every declared variable (hidden
    tensors are added to a copy of the graph's outputs); ``__call__(x)`` gives ``g`` for the engine's
    input ``x`` (the interface :func:`certify.vnn.recheck` / ``check_against_runtime`` expect)."""

    dtype = np.float32

    def __init__(self, binding: Binding, outputs: list[tuple[str, int]], z_of_x):
        import onnx
        import onnxruntime as ort

        self.doc = binding.doc
        self.files = binding.files
        self.path = ", ".join(sorted({str(p) for p in binding.files.values()}))
        self.outputs = outputs
        self.z_of_x = z_of_x
        self.sessions: dict[str, object] = {}
        self.fetch: dict[str, list[str]] = {}
        by_file: dict[tuple[str, tuple], object] = {}
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        for n in binding.doc.networks:
            model = binding.models[n.name]
            outs = [o.name for o in model.graph.output]
            hid = [h.onnx_name for h in n.hidden if h.onnx_name not in outs]
            key = (str(binding.files[n.name]), tuple(hid))
            if key not in by_file:
                m = onnx.ModelProto()
                m.CopyFrom(model)
                for h in hid:
                    m.graph.output.append(onnx.ValueInfoProto(name=h))
                try:
                    by_file[key] = ort.InferenceSession(m.SerializeToString(), sess_options=opts,
                                                        providers=["CPUExecutionProvider"])
                except Exception as exc:
                    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    raise ModelLoadError(f"{binding.files[n.name]}: onnxruntime cannot load it ({msg[:200]})") from None
            self.sessions[n.name] = by_file[key]
            self.fetch[n.name] = outs + hid
        self.offsets = {}
        off = 0
        for v in self.doc.variables:
            if v.kind == "input":
                self.offsets[v.name] = off
                off += v.numel
        self.n = off

    def evaluate(self, z: np.ndarray, networks=None) -> dict[str, np.ndarray]:
        """Every declared variable (declared shape, float64) at the full input vector ``z``."""
        z = np.asarray(z, dtype=np.float64).reshape(-1)
        vals: dict[str, np.ndarray] = {}
        for n in self.doc.networks:
            if networks is not None and n.name not in networks:
                continue
            sess = self.sessions[n.name]
            feed = {}
            for d, si in zip(n.inputs, sess.get_inputs()):
                x = z[self.offsets[d.name]:self.offsets[d.name] + d.numel].reshape(d.shape)
                vals[d.name] = x.copy()
                feed[si.name] = x.astype(np.float32)
            res = dict(zip(self.fetch[n.name], sess.run(self.fetch[n.name], feed)))
            outs = self.fetch[n.name]
            for d, name in [*zip(n.outputs, outs), *((h, h.onnx_name) for h in n.hidden)]:
                val = np.asarray(res[name], dtype=np.float64)
                if tuple(val.shape) != tuple(d.shape):
                    raise ShapeMismatchError(f"{self.files[n.name]}: {d.kind} {d.name} of network {n.name} is declared "
                                             f"[{','.join(map(str, d.shape))}], onnxruntime computes tensor {name!r} "
                                             f"with shape [{','.join(map(str, val.shape))}]")
                vals[d.name] = val
        return vals

    def g(self, vals: dict[str, np.ndarray]) -> np.ndarray:
        return np.array([vals[name].reshape(-1)[k] for name, k in self.outputs], dtype=np.float64)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        vals = self.evaluate(self.z_of_x(np.asarray(x, dtype=np.float64).reshape(-1)))
        return self.g(vals)


# ------------------------------------------------------------------------------------------ solving
def _point(lo: float, hi: float) -> float:
    if math.isfinite(lo) and math.isfinite(hi):
        return lo + (hi - lo) / 2 if lo != hi else lo
    if math.isfinite(lo):
        return lo
    if math.isfinite(hi):
        return hi
    return 0.0


def solve(query_path, networks: dict[str, str | Path], timeout: float, *, log=lambda s: None,
          engine_opts: dict | None = None, doc: VNNLib2 | None = None) -> Solution:
    """Decide a VNN-LIB 2.0 query (module docstring).  Bad input raises an NNCertifyError naming the
    file; everything else ends in a :class:`Solution`."""
    from ..models.onnx_compose import Piece, compose
    from ..models.onnx_import import load_onnx
    from ..relax.spec import Query, Specification, verify_query
    from .vnn import check_against_runtime, recheck

    t0 = time.monotonic()
    if not (timeout > 0):
        raise InvalidArgumentError(f"--timeout must be positive, got {timeout}")
    doc = doc or read_vnnlib2(query_path)
    if not (SUPPORTED_VERSIONS[0] <= doc.version <= SUPPORTED_VERSIONS[1]):
        raise SpecificationError(f"{doc.source}: vnnlib-version {doc.version[0]}.{doc.version[1]} is outside the "
                                 f"supported range {'..'.join('.'.join(map(str, v)) for v in SUPPORTED_VERSIONS)}")
    for note in doc.notes[:1]:
        log(f"note: {note}")
    th = theories(doc)
    types = sorted({v.dtype for v in doc.variables})
    log(f"logic: {'-'.join(th.values())}-{'/'.join(t.upper() for t in types)}")
    tr = to_query(doc)
    binding = bind(doc, networks)
    notes: list[str] = []

    def result(status, reason="", assignment=None):
        return Solution(status, reason, assignment, time.monotonic() - t0, notes)

    if not tr.query.specs:
        return result("unsat", "every clause of the query is empty (an empty input box or a false constant atom)")
    decl_net = {v.name: v.network for v in doc.variables}
    comp_nets = [n for n in doc.networks if any(decl_net[name] == n.name for name, _ in tr.outputs)]
    offsets = tr.input_offsets()
    N = tr.n_inputs
    sel = np.array([offsets[v.name] + i for n in comp_nets for v in n.inputs for i in range(v.numel)], dtype=np.int64)

    # points for the inputs outside the analysis, and the clauses the engine can take
    def full_z(spec_i: int, x_sel: np.ndarray | None) -> np.ndarray:
        lo_in, hi_in = tr.inner[spec_i]
        z = np.array([_point(a, b) for a, b in zip(lo_in.tolist(), hi_in.tolist())], dtype=np.float64)
        if x_sel is not None and len(sel):
            z[sel] = x_sel
        return z

    direct = [i for i, s in enumerate(tr.query.specs) if s.C.shape[0] == 0]
    runtime = CompositeRuntime(binding, tr.outputs, lambda x: _embed(x, sel, N))

    def finish_sat(i: int, z: np.ndarray, how: str):
        vals = runtime.evaluate(z)
        ok, why = clause_holds(tr.clauses[i], lambda v: vals[v[0]].reshape(-1)[v[1]])
        if not ok:
            return None, why
        return [(v, vals[v.name].reshape(v.shape)) for v in doc.variables], how

    if direct:  # a clause without rows: any point of its box is a witness
        i = direct[0]
        assignment, how = finish_sat(i, full_z(i, None), f"clause {i} constrains inputs only")
        if assignment is not None:
            return result("sat", how, assignment)
        notes.append(f"clause {i}: {how}")
    for n in comp_nets:
        for v in n.inputs:
            if v.shape[:1] != (1,) or len(v.shape) < 2:
                raise ShapeMismatchError(f"{binding.files[n.name]}: input {v.name} of network {n.name} has shape "
                                         f"[{','.join(map(str, v.shape))}]: nncertify analyses networks whose inputs "
                                         f"carry a leading batch dimension of 1")
    for name, _ in tr.outputs:
        v = doc.var(name)
        if v.kind != "input" and (v.shape[:1] != (1,) or len(v.shape) < 2):
            raise ShapeMismatchError(f"{binding.files[v.network]}: {v.kind} {v.name} of network {v.network} has shape "
                                     f"[{','.join(map(str, v.shape))}]: nncertify reads hidden nodes and outputs with "
                                     f"a leading batch dimension of 1")
    engine_specs, engine_of = [], []
    unbounded = []
    for i, s in enumerate(tr.query.specs):
        if s.C.shape[0] == 0:
            continue
        lo, hi = s.lower[sel], s.upper[sel]
        if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
            k = int(sel[int((~(torch.isfinite(lo) & torch.isfinite(hi))).nonzero()[0])])
            unbounded.append(f"clause {i}: input {_name_of(tr, k)} is unbounded")
            continue
        engine_specs.append((lo, hi, s.C, s.d))
        engine_of.append(i)
    if not engine_specs:
        return result("unknown", "; ".join(unbounded + notes) or "nothing to analyse")

    # the composite network
    pieces = []
    comp_index = {n.name: k for k, n in enumerate(comp_nets)}
    in_offsets_comp, off = {}, 0
    for n in comp_nets:
        for v in n.inputs:
            in_offsets_comp[v.name] = off
            off += v.numel
    for name in dict.fromkeys(nm for nm, _ in tr.outputs):
        v = doc.var(name)
        idx = tuple(k for nm, k in tr.outputs if nm == name)
        if v.kind == "input":
            pieces.append(Piece(None, None, tuple(in_offsets_comp[name] + k for k in idx), off))
        else:
            model = binding.models[v.network]
            if v.kind == "hidden":
                tensor = v.onnx_name
            else:
                decl = next(n for n in doc.networks if n.name == v.network)
                tensor = model.graph.output[[o.name for o in decl.outputs].index(name)].name
            pieces.append(Piece(comp_index[v.network], tensor, idx, v.numel))
    # pieces must follow g's order: tr.outputs is sorted by declaration, and pieces are grouped by name in
    # that order, so the concatenation is tr.outputs exactly
    models = [binding.models[n.name] for n in comp_nets]
    composite = compose(models, [[v.numel for v in n.inputs] for n in comp_nets],
                        [[v.shape for v in n.inputs] for n in comp_nets], pieces)
    with tempfile.TemporaryDirectory(prefix="nncertify-vnnlib2-") as tmp:
        path = Path(tmp) / "composite.onnx"
        import onnx
        onnx.save(composite, str(path))
        try:
            net = load_onnx(path, name="+".join(n.name for n in comp_nets))
        except NNCertifyError as exc:  # name the user's files, not the temporary composite
            msg = str(exc).replace(str(path), "composite of " + runtime.path)
            for k, n in enumerate(comp_nets):
                msg = msg.replace(f"net{k}__", f"{n.name}:")
            raise type(exc)(msg) from None
    net.check_finite()
    shape = tuple(net.input_shape)
    query = Query([Specification(lo.reshape(shape), hi.reshape(shape), C, d) for lo, hi, C, d in engine_specs],
                  doc.source)
    worst = check_against_runtime(net, runtime, query)
    notes.append(f"import matches onnxruntime (max |diff| {worst:.2g})")
    log(f"composite network: {len(net.nodes)} nodes, input {shape}, output {tuple(net.output_shape)}; "
        f"{len(query.specs)} clause(s); import matches onnxruntime (max |diff| {worst:.2g})")
    left = timeout - (time.monotonic() - t0)
    if left <= 0:
        return result("timed-out", "time limit reached while loading")
    verdict = verify_query(net, query, timeout=left, **(engine_opts or {}))
    log(f"engine: {verdict.status} ({verdict.reason}; {verdict.time_s:.2f} s, {verdict.domains} domains)")
    # re-check inside the box rounded *inward* (the engine's box is rounded outward: a corner of it can lie
    # outside the exact decimal box), at a point the float32 inputs represent when the box holds one
    inner = Query([Specification(tr.inner[i][0][sel].reshape(shape), tr.inner[i][1][sel].reshape(shape), C, d)
                   for i, (_, _, C, d) in zip(engine_of, engine_specs)], doc.source)
    checked = recheck(net, inner, verdict, runtime)
    if verdict.status == "sat" and checked.status != "sat":  # no float32 point works: a float64 one (real semantics)
        checked = recheck(net, inner, verdict, _AnyFloat(runtime))
    verdict = checked
    if verdict.status == "sat":
        i = engine_of[verdict.spec_index]
        x = verdict.counterexample.reshape(-1).double().cpu().numpy()
        z = full_z(i, x)
        assignment, how = finish_sat(i, z, verdict.reason)
        if assignment is None:
            return result("unknown", f"a counterexample failed the exact re-check: {how}")
        with torch.no_grad():  # the float64 model's values must satisfy the exact atoms as well
            g64 = (net if net.dtype == torch.float64 else net.to(dtype=torch.float64))(
                torch.from_numpy(x).reshape(1, *shape)).reshape(-1).numpy()
        col = {v: j for j, v in enumerate(tr.outputs)}
        ok, why = clause_holds(tr.clauses[i], lambda v: g64[col[v]] if v in col else z[offsets[v[0]] + v[1]])
        if not ok:
            return result("unknown", f"a counterexample failed the exact float64 re-check: {why}")
        return result("sat", how, assignment)
    if verdict.status == "unsat":
        if unbounded:
            return result("unknown", f"the bounded clauses are unsat ({verdict.reason}); " + "; ".join(unbounded))
        return result("unsat", verdict.reason)
    if verdict.status == "timeout":
        return result("timed-out", verdict.reason)
    return result("unknown", verdict.reason)


class _AnyFloat:
    """``runtime`` for :func:`certify.vnn.recheck` without the move to a float32-representable point."""

    dtype = np.float64

    def __init__(self, runtime):
        self.runtime = runtime
        self.path = runtime.path

    def __call__(self, x):
        return self.runtime(x)


def _embed(x: np.ndarray, sel: np.ndarray, n: int) -> np.ndarray:
    z = np.zeros(n, dtype=np.float64)
    if len(sel):
        z[sel] = x.reshape(-1)
    return z


def _name_of(tr, k: int) -> str:
    for v in tr.inputs:
        o = tr.input_offsets()[v.name]
        if o <= k < o + v.numel:
            idx = np.unravel_index(k - o, v.shape) if v.shape else ()
            return f"{v.name}[{','.join(str(int(i)) for i in idx)}]"
    return f"z[{k}]"


# ------------------------------------------------------------------------------------------ output
def _fmt(v: float) -> str:
    """The shortest decimal that reads back as the same float64, without an exponent (the query syntax has none)."""
    v = float(v)
    if not math.isfinite(v):
        return repr(v)
    return np.format_float_positional(v, unique=True, trim="0")


def assignment_text(assignment: list[tuple[VarDecl, np.ndarray]]) -> str:
    """The command-line assignment format of chapter 5.3.1: ``NAME TYPE [d1,d2]`` then one value a line,
    row-major, every declared variable in declaration order."""
    lines = []
    for v, val in assignment:
        lines.append(f"{v.name} {v.type_text} [{','.join(map(str, v.shape))}]")
        lines.extend(_fmt(x) for x in np.asarray(val, dtype=np.float64).reshape(-1))
    return "\n".join(lines) + "\n"


def serialise_assignment(assignment: list[tuple[VarDecl, np.ndarray]], folder: str | Path) -> list[Path]:
    """``FOLDER/NAME.pb``: one serialised ONNX TensorProto per variable (``real``: DOUBLE, else the
    declared type)."""
    from onnx import numpy_helper

    folder = make_folder(folder, "--serialise-assignments")
    out = []
    np_types = {"real": np.float64, "float64": np.float64, "float32": np.float32, "float16": np.float16}
    for v, val in assignment:
        arr = np.asarray(val, dtype=np.float64).reshape(v.shape).astype(np_types.get(v.dtype, np.float64))
        t = numpy_helper.from_array(arr, v.name)
        p = folder / f"{v.name}.pb"
        p.write_bytes(t.SerializeToString())
        out.append(p)
    return out
