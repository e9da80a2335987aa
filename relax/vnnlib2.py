"""VNN-LIB 2.0 reader: a query file -> :class:`VNNLib2` (declarations + exact DNF) -> :class:`relax.spec.Query`.

Parsing and type checking are the standard's own Python bindings (``vnnlib`` on PyPI, >= 1.0.2: the
BNFC-generated parser and type checker of the VNNLIB-Standard repository); nothing here re-parses the
text.  This module walks the typed AST the package returns.

Declarations
------------
Every ``(declare-network N (equal-to M)? (isomorphic-to M)? (declare-input ...)+ (declare-hidden ...)*
(declare-output ...)+)`` becomes a :class:`NetworkDecl`; each input / hidden / output a
:class:`VarDecl` with its element type (ONNX names ``float32``, ... or ``real``), its shape and, for
hidden nodes, the ONNX tensor it names.  ``vnnlib`` 1.0.2 types the capitalised ``Real`` of the
standard's own examples as ``Unknown``; a declaration written ``Real`` is read as ``real``.

Meaning (exact)
---------------
Every arithmetic expression is linearised over the rationals: constants are read from their decimal
lexemes (the 2.0 grammar has no exponents) as :class:`fractions.Fraction`, ``X[i,j]`` is the
row-major flat element ``i * shape[1] + j`` of ``X``.  A product of two non-constant factors is the
arithmetic theory ``POLY`` and is refused by name.  The conjunction of the assertions is put in
disjunctive normal form (``and`` distributes, ``or`` concatenates, ``(== a b)`` is ``a <= b`` and
``a >= b``, ``(!= a b)`` is ``a < b`` or ``a > b``); every atom is ``sum_k c_k v_k (<= | <) r``.

Translation to the engine's :class:`~relax.spec.Query` (:func:`to_query`)
----------------------------------------------------------------------
* ``z`` -- the engine's input -- is every declared *input* of every network, in declaration order,
  each flattened row-major and concatenated.
* ``g`` -- the engine's output -- is the list of scalar variables ``(name, flat index)`` that occur
  in an atom that is not a single-input bound, in declaration order then row-major order (outputs,
  hidden nodes, and inputs of coupled input constraints alike).
* Each DNF clause becomes one :class:`~relax.spec.Specification`: atoms on a single input element
  form the box (``a x <= r`` is ``x <= r/a`` for ``a > 0`` and ``x >= r/a`` for ``a < 0``; bounds
  not exact in float64 are rounded *outward*; entries with no bound are ``-inf``/``+inf``); every
  other atom is a row ``C_k g <= d_k``.  A row whose rational coefficients are not all exact in
  float64 is multiplied by the least common multiple of their denominators first (integers, exact
  below 2**53); ``d_k`` is rounded *up*.  So each Specification's set contains the clause's exact
  set (an ``unsat`` stays sound), and strict ``<`` is read as its closure ``<=`` -- a ``sat`` must be
  re-checked against the exact atoms (:func:`clause_holds`).  Clauses with an empty box or a false
  constant atom are dropped (a query without clauses is ``unsat``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import torch

from ..models.errors import SpecificationError
from .outward import exact_number as _number, float_row, round_down, round_up  # noqa: F401 (re-exported)
from .spec import Query, Specification

MAX_CLAUSES = 100_000  # refuse disjunctive normal forms larger than this
from ..models.onnx_support import SUPPORTED_VERSIONS  # noqa: E402  (what vnnlib>=1.0.2 parses; 2.1 rejected)

_DTYPE_NAMES = {  # vnnlib.DType member name -> ONNX element type name (the standard's spelling)
    "F16": "float16", "F32": "float32", "F64": "float64", "BF16": "bfloat16", "F8E4M3FN": "float8e4m3fn",
    "F8E5M2": "float8e5m2", "F8E4M3FNUZ": "float8e4m3fnuz", "F8E5M2FNUZ": "float8e5m2fnuz", "F4E2M1": "float4e2m1",
    "I8": "int8", "I16": "int16", "I32": "int32", "I64": "int64", "U8": "uint8", "U16": "uint16",
    "U32": "uint32", "U64": "uint64", "C64": "complex64", "C128": "complex128", "Bool": "bool",
    "String": "string", "Real": "real",
}


# ---------------------------------------------------------------------------------------- declarations
@dataclass(frozen=True)
class VarDecl:
    """One declared tensor variable of a network."""

    network: str
    name: str
    kind: str                 # "input" | "hidden" | "output"
    dtype: str                # "real" or an ONNX element type name ("float32", ...)
    type_text: str            # the type exactly as written in the file ("Real", "real", "float32", ...)
    shape: tuple[int, ...]
    onnx_name: str | None = None  # hidden nodes: the ONNX tensor (node output) they name

    @property
    def numel(self) -> int:
        return int(math.prod(self.shape))


@dataclass
class NetworkDecl:
    name: str
    equal_to: str | None
    isomorphic_to: str | None
    inputs: list[VarDecl]
    hidden: list[VarDecl]
    outputs: list[VarDecl]

    @property
    def variables(self) -> list[VarDecl]:
        return [*self.inputs, *self.hidden, *self.outputs]


@dataclass(frozen=True)
class Atom:
    """``sum_k coeff_k * var_k <= rhs`` (``< rhs`` when ``strict``), exact; ``var_k = (name, flat index)``."""

    terms: tuple[tuple[tuple[str, int], Fraction], ...]
    rhs: Fraction
    strict: bool
    line: int

    def holds(self, value) -> bool:
        """Exact truth of the atom for ``value((name, flat)) -> float`` (floats are exact rationals)."""
        lhs = sum((c * Fraction(float(value(v))) for v, c in self.terms), Fraction(0))
        return lhs < self.rhs if self.strict else lhs <= self.rhs


@dataclass
class VNNLib2:
    """A parsed and type-checked VNN-LIB 2.0 query: declarations and the DNF of its assertions."""

    source: str
    version: tuple[int, int]
    networks: list[NetworkDecl]
    clauses: list[list[Atom]]          # the DNF: OR over clauses of AND over atoms
    notes: list[str] = field(default_factory=list)

    @property
    def variables(self) -> list[VarDecl]:
        """Every declared variable in declaration order."""
        return [v for n in self.networks for v in n.variables]

    def var(self, name: str) -> VarDecl:
        for v in self.variables:
            if v.name == name:
                return v
        raise KeyError(name)


# ---------------------------------------------------------------------------------------- parsing
def _package():
    try:
        import vnnlib
    except ImportError:  # a declared dependency; say so rather than fail deep inside
        raise SpecificationError("the VNN-LIB 2.0 parser is not installed (pip install 'vnnlib>=1.0.2')") from None
    return vnnlib


def package_error(exc: Exception, source: str) -> SpecificationError:
    """The package's (JSON) error report as one line naming the file and line."""
    text = str(exc).strip()
    try:
        rep = json.loads(text)
        errs = rep.get("errors") or []
        if errs:
            e = errs[0]
            more = f" (+{len(errs) - 1} more)" if len(errs) > 1 else ""
            sym = f" at {e['offendingSymbol']!r}" if e.get("offendingSymbol") else ""
            hint = f": {e['hint']}" if e.get("hint") else ""
            return SpecificationError(f"{source}:{e.get('line', '?')}: vnnlib {e.get('errorCode', 'error')}{sym}"
                                      f"{hint}{more}")
    except (ValueError, TypeError, AttributeError):
        pass
    first = text.splitlines()[0] if text else type(exc).__name__
    return SpecificationError(f"{source}: vnnlib: {first}")


def _dtype(decl) -> tuple[str, str]:
    """(normalised element type, the type as written) of a vnnlib declaration."""
    written = str(decl).split()[2] if len(str(decl).split()) > 2 else "?"
    name = _DTYPE_NAMES.get(decl.dtype.name)
    if name is None:  # DType.Unknown: vnnlib 1.0.2 does not know the capitalised 'Real' of the examples
        if written.lower() == "real":
            return "real", written
        return f"unknown:{written}", written
    return name, written


def _decl(d, kind: str, network: str) -> VarDecl:
    dtype, written = _dtype(d)
    onnx = d.onnx_name if kind == "hidden" else None
    if onnx is not None and len(onnx) >= 2 and onnx[0] == onnx[-1] == '"':
        onnx = onnx[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return VarDecl(network, d.name, kind, dtype, written, tuple(int(s) for s in d.shape), onnx)


class NonLinearError(SpecificationError):
    """A product of two non-constant factors (arithmetic theory POLY)."""


def _flat(v, shapes: dict) -> int:
    """Row-major flat index of ``X[i,j,...]`` (the declared shape; the package checked the bounds)."""
    k = 0
    for s, i in zip(shapes[v.name], v.indices):
        k = k * s + int(i)
    return k


def _linear(e, vn, src: str, shapes: dict) -> tuple[dict, Fraction]:
    """``e`` as ({(name, flat): coefficient}, constant), exact."""
    if isinstance(e, vn.Var):
        return {(e.name, _flat(e, shapes)): Fraction(1)}, Fraction(0)
    if isinstance(e, vn.Literal):
        return {}, _number(e.lexeme)
    if isinstance(e, vn.Negate):
        t, c = _linear(e.expr, vn, src, shapes)
        return {k: -v for k, v in t.items()}, -c
    if isinstance(e, (vn.Plus, vn.Minus)):
        parts = [e.head, *e.rest] if isinstance(e, vn.Minus) else list(e.args)
        terms: dict = {}
        const = Fraction(0)
        for i, p in enumerate(parts):
            t, c = _linear(p, vn, src, shapes)
            sign = -1 if (isinstance(e, vn.Minus) and i > 0) else 1
            for k, v in t.items():
                terms[k] = terms.get(k, Fraction(0)) + sign * v
            const += sign * c
        return terms, const
    if isinstance(e, vn.Multiply):
        terms, const = {}, Fraction(1)
        for p in e.args:
            t, c = _linear(p, vn, src, shapes)
            if t and terms:
                raise NonLinearError(f"{src}: {str(e).strip()} is a product of variables (arithmetic theory POLY); "
                                     f"nncertify supports linear arithmetic only (BND, COUT, LIN)")
            if t:
                terms = {k: v * const for k, v in t.items()}
                const = c * const
            else:
                terms = {k: v * c for k, v in terms.items()}
                const *= c
        return terms, const
    raise SpecificationError(f"{src}: unsupported arithmetic expression {str(e).strip()!r}")


def _line(e, vn) -> int:
    """The line of the first variable or literal below ``e`` (0 if none)."""
    if isinstance(e, vn.Comparison):
        lhs = e.lhs
        if isinstance(lhs, (vn.Var, vn.Literal)):
            return int(lhs.line)
    stack = [e]
    while stack:
        x = stack.pop()
        if isinstance(x, (vn.Var, vn.Literal)):
            return int(x.line)
        stack.extend(reversed(x.children()))
    return 0


def _atom(lhs: dict, lc: Fraction, rhs: dict, rc: Fraction, op: str, line: int) -> Atom:
    """``lhs + lc  op  rhs + rc`` with op in <=, <, >=, > as ``sum c v (<=|<) r``."""
    if op in (">=", ">"):
        lhs, lc, rhs, rc = rhs, rc, lhs, lc
    terms = dict(lhs)
    for k, v in rhs.items():
        terms[k] = terms.get(k, Fraction(0)) - v
    items = tuple(sorted(((k, v) for k, v in terms.items() if v != 0)))
    return Atom(items, rc - lc, op in ("<", ">"), line)


def _dnf(e, vn, src: str, shapes: dict) -> list[list[Atom]]:
    if isinstance(e, vn.Comparison):
        line = _line(e, vn)
        where = f"{src}:{line}"
        lt, lc = _linear(e.lhs, vn, where, shapes)
        rt, rc = _linear(e.rhs, vn, where, shapes)
        ops = {vn.LessEqual: "<=", vn.LessThan: "<", vn.GreaterEqual: ">=", vn.GreaterThan: ">"}
        for cls, op in ops.items():
            if isinstance(e, cls):
                return [[_atom(lt, lc, rt, rc, op, line)]]
        if isinstance(e, vn.Equal):
            return [[_atom(lt, lc, rt, rc, "<=", line), _atom(lt, lc, rt, rc, ">=", line)]]
        if isinstance(e, vn.NotEqual):
            return [[_atom(lt, lc, rt, rc, "<", line)], [_atom(lt, lc, rt, rc, ">", line)]]
        raise SpecificationError(f"{where}: unsupported comparison {str(e).strip()!r}")
    if isinstance(e, vn.Or):
        out: list[list[Atom]] = []
        for a in e.args:
            out.extend(_dnf(a, vn, src, shapes))
            if len(out) > MAX_CLAUSES:
                raise SpecificationError(f"{src}:{_line(e, vn)}: the disjunctive normal form has more than "
                                         f"{MAX_CLAUSES} clauses")
        return out
    if isinstance(e, vn.And):
        out = [[]]
        for a in e.args:
            out = _conj(out, _dnf(a, vn, src, shapes), src, _line(e, vn))
        return out
    raise SpecificationError(f"{src}: unsupported boolean expression {str(e).strip()!r}")


def _conj(a: list[list[Atom]], b: list[list[Atom]], src: str, line: int) -> list[list[Atom]]:
    if len(b) == 1:  # the common case (one atom per assert): extend in place
        for c in a:
            c.extend(b[0])
        return a
    if len(a) * len(b) > MAX_CLAUSES:
        raise SpecificationError(f"{src}:{line}: the disjunctive normal form has more than {MAX_CLAUSES} clauses")
    return [[*x, *y] for x in a for y in b]


def parse_vnnlib2(text: str, source: str = "<string>") -> VNNLib2:
    """Parse and type-check VNN-LIB 2.0 ``text`` with the ``vnnlib`` package; exact DNF of its assertions."""
    vn = _package()
    try:
        q = vn.parse_query_string(text)
    except vn.VNNLibException as exc:
        raise package_error(exc, source) from None
    return _from_ast(q, vn, source)


def read_vnnlib2(path: str | Path) -> VNNLib2:
    """Read a VNN-LIB 2.0 file (see :func:`parse_vnnlib2`)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecificationError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecificationError(f"{path}: cannot be read ({exc})") from None
    return parse_vnnlib2(text, str(path))


def _version(text_q) -> tuple[int, int]:
    s = str(text_q).strip()
    i = s.find("<")
    if i >= 0:
        j = s.find(">", i)
        try:
            major, minor = s[i + 1:j].split(".")
            return int(major), int(minor)
        except ValueError:
            pass
    return (2, 0)


def _from_ast(q, vn, source: str) -> VNNLib2:
    networks = []
    notes = []
    for n in q.networks:
        decl = NetworkDecl(n.name, n.equal_to or None, n.isometric_to or None,
                           [_decl(d, "input", n.name) for d in n.inputs],
                           [_decl(d, "hidden", n.name) for d in n.hidden],
                           [_decl(d, "output", n.name) for d in n.outputs])
        for v in decl.variables:
            if v.dtype.startswith("unknown:"):
                raise SpecificationError(f"{source}: variable {v.name} of network {n.name}: element type "
                                         f"{v.type_text!r} is neither an ONNX element type nor 'real'")
            if v.type_text == "Real":
                notes.append(f"{v.name}: element type 'Real' read as 'real' (vnnlib 1.0.2 types it Unknown)")
        networks.append(decl)
    clauses: list[list[Atom]] = [[]]
    shapes = {v.name: v.shape for n in networks for v in n.variables}
    for a in q.assertions:
        clauses = _conj(clauses, _dnf(a.expr, vn, source, shapes), source, _line(a.expr, vn))
    version = _version(q)
    return VNNLib2(source, version, networks, clauses, notes)


# ---------------------------------------------------------------------------------------- to Query
@dataclass
class Translation:
    """The engine's view of a VNN-LIB 2.0 query.

    ``query.specs[i]`` is clause ``clauses[i]``: its box is over ``z`` (flat, the concatenated
    ``inputs``), its rows over ``g`` (``outputs``: ``(variable name, flat index)`` pairs)."""

    query: Query
    inputs: list[VarDecl]
    outputs: list[tuple[str, int]]
    clauses: list[list[Atom]]
    dropped: int = 0
    inner: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # per spec: the box rounded
    # *inward* (float64 points inside the exact box; where a witness must lie)

    @property
    def n_inputs(self) -> int:
        return sum(v.numel for v in self.inputs)

    def input_offsets(self) -> dict[str, int]:
        off, out = 0, {}
        for v in self.inputs:
            out[v.name] = off
            off += v.numel
        return out


def to_query(doc: VNNLib2) -> Translation:
    """Translate the exact DNF of ``doc`` into a :class:`Query` over ``z`` and ``g`` (module docstring)."""
    inputs = [v for n in doc.networks for v in n.inputs]
    order = {v.name: i for i, v in enumerate(doc.variables)}
    kinds = {v.name: v.kind for v in doc.variables}
    offsets, off = {}, 0
    for v in inputs:
        offsets[v.name] = off
        off += v.numel
    N = off

    def is_box(a: Atom) -> bool:
        return len(a.terms) == 1 and kinds[a.terms[0][0][0]] == "input"

    used = sorted({v for c in doc.clauses for a in c if a.terms and not is_box(a) for v, _ in a.terms},
                  key=lambda v: (order[v[0]], v[1]))
    col = {v: j for j, v in enumerate(used)}
    M = len(used)
    specs, kept, dropped, inner = [], [], 0, []
    box_of: dict[int, tuple] = {}  # id(atom) -> (entry, is_upper, exact bound, outward float): clauses share atoms
    for clause in doc.clauses:
        lo: dict[int, tuple[float, Fraction]] = {}
        hi: dict[int, tuple[float, Fraction]] = {}
        rows, rhs = [], []
        false = False
        for a in clause:
            if not a.terms:
                if not ((0 < a.rhs) if a.strict else (0 <= a.rhs)):
                    false = True
                continue
            if is_box(a):
                info = box_of.get(id(a))
                if info is None:
                    (name, flat), c = a.terms[0]
                    b = a.rhs if c == 1 else (-a.rhs if c == -1 else a.rhs / c)
                    info = box_of[id(a)] = (offsets[name] + flat, c > 0, b, round_up(b) if c > 0 else round_down(b))
                k, is_up, b, f = info
                best = hi if is_up else lo
                old = best.get(k)
                # the outward rounding is monotone: compare floats, the exact bounds only on ties
                if old is None or (f < old[0] if is_up else f > old[0]) or \
                        (f == old[0] and (b < old[1] if is_up else b > old[1])):
                    best[k] = (f, b)
                continue
            coeffs, r = float_row(dict(a.terms), a.rhs, f"{doc.source}:{a.line}")
            row = [0.0] * M
            for v, c in coeffs.items():
                row[col[v]] = c
            rows.append(row)
            rhs.append(r)
        if false or any(k in hi and lo[k][1] > hi[k][1] for k in lo):
            dropped += 1
            continue
        lower = torch.full((N,), -math.inf, dtype=torch.float64)
        upper = torch.full((N,), math.inf, dtype=torch.float64)
        if lo:
            lower[torch.tensor(list(lo), dtype=torch.long)] = torch.tensor([v[0] for v in lo.values()], dtype=torch.float64)
        if hi:
            upper[torch.tensor(list(hi), dtype=torch.long)] = torch.tensor([v[0] for v in hi.values()], dtype=torch.float64)
        lower_in, upper_in = lower.clone(), upper.clone()
        for k, (f, b) in lo.items():
            lower_in[k] = round_up(b)
        for k, (f, b) in hi.items():
            upper_in[k] = round_down(b)
        C = torch.tensor(rows, dtype=torch.float64).reshape(len(rows), M)
        d = torch.tensor(rhs, dtype=torch.float64).reshape(len(rows))
        specs.append(Specification(lower, upper, C, d))
        inner.append((lower_in, upper_in))
        kept.append(clause)
    return Translation(Query(specs, doc.source), inputs, used, kept, dropped, inner)


def clause_holds(clause: list[Atom], value) -> tuple[bool, str]:
    """Exact check of every atom of ``clause`` (``value((name, flat)) -> float``): (ok, first failing atom)."""
    for a in clause:
        if not a.holds(value):
            return False, f"the atom of line {a.line} ({' + '.join(f'{c}*{n}[{i}]' for (n, i), c in a.terms)} " \
                          f"{'<' if a.strict else '<='} {a.rhs}) does not hold"
    return True, ""


# ---------------------------------------------------------------------------------------- theories
def theories(doc: VNNLib2) -> dict[str, str]:
    """The smallest theory of each theory set (standard chapter 3) the query belongs to."""
    kinds = {v.name: v.kind for v in doc.variables}
    net_of = {v.name: v.network for v in doc.variables}
    hidden = any(n.hidden for n in doc.networks)
    mio = any(len(n.inputs) > 1 or len(n.outputs) > 1 for n in doc.networks)
    if len(doc.networks) == 1:
        nets = "SNET"
    elif all(n.equal_to for n in doc.networks[1:]):
        nets = "MENET"
    elif all(n.equal_to or n.isomorphic_to for n in doc.networks[1:]):
        nets = "MINET"
    else:
        nets = "MNET"
    mnc = False
    arith = 0  # 0 BND, 1 COUT, 2 LIN
    for c in doc.clauses:
        for a in c:
            per_net: dict[str, set] = {}
            for (nm, _), _c in a.terms:
                per_net.setdefault(net_of[nm], set()).add(nm)
            mnc = mnc or any(len(s) > 1 for s in per_net.values())
            if len(a.terms) > 1:
                simple = len(a.terms) == 2 and sorted(c for _, c in a.terms) == [-1, 1] \
                    and all(kinds[v[0]] != "input" for v, _ in a.terms)
                arith = max(arith, 1 if simple else 2)
    return {"hidden-node": "H" if hidden else "NH", "multiple-input-output": "MIO" if mio else "SIO",
            "multiple-network": nets, "multiple-node-comparison": "MNC" if mnc else "SNC",
            "arithmetic-complexity": ("BND", "COUT", "LIN")[arith]}
