"""VNN-LIB 1.0 reader: a property file -> a :class:`relax.spec.Query` of :class:`relax.spec.Specification`.

The subset VNN-COMP uses (and a little more)
-------------------------------------------
* ``(declare-const X_i Real)`` / ``(declare-const Y_j Real)``: ``X`` are the network's inputs in flat
  C order of the ONNX input tensor, ``Y`` its outputs (flat).  Indices must run 0..n-1 without gaps.
* ``(assert F)``, where ``F`` is built from ``(and F ...)``, ``(or F ...)`` and comparisons
  ``(<= a b ...)``, ``(>= ...)``, ``(< ...)``, ``(> ...)``, ``(= ...)`` (chains allowed) of *linear* terms:
  numerals (``0.5``, ``-1e-3``, ``.5``), variables, ``(+ t ...)``, ``(- t)``, ``(- t u ...)``,
  ``(* c t)``, ``(/ t c)`` with ``c`` a constant.
* ``;`` comments, any whitespace, and the SMT-LIB commands ``set-logic``, ``set-info``, ``set-option``,
  ``check-sat``, ``get-model``, ``exit`` (ignored).  A ``.vnnlib.gz`` file is decompressed.

Meaning
-------
The asserts are conjoined and describe the *unsafe* set; the conjunction is put in disjunctive normal
form ``OR_k (AND_{atom in clause k} atom)``.  Numerals are read exactly (``0.1`` is 1/10, :class:`fractions.Fraction`) and the linear algebra is
done over the rationals; floats appear only at the end, rounded by :mod:`relax.outward` in the
direction that *enlarges* the region a counterexample may occupy (the rule the 2.0 reader uses, so
both readers give the same Query bit for bit).  Each clause becomes one Specification:

* atoms over a single input ``a X_i <= c`` form the box (``X_i <= c/a`` for ``a > 0``, ``>=`` for
  ``a < 0``; an upper bound is rounded up, a lower bound down, so the box contains the set the file
  describes and an ``unsat`` stays sound);
* atoms over outputs only, ``sum_j b_j Y_j <= c``, are the rows ``b`` of ``C`` and ``c`` of ``d``
  (a ``>=`` swaps sides: ``Y_i >= Y_j`` is the row ``e_j - e_i <= 0``); a row with a coefficient that
  is not a float64 number is scaled to integers first, and ``c`` is rounded up;
* constant atoms (``0 <= 1``) are dropped when true and make the clause empty when false.

Each :class:`Disjunct` also keeps the box rounded *inward* and its exact rows: a witness must lie in
the inward box and satisfy the rows exactly (:meth:`Disjunct.holds`), so a ``sat`` is about the file's
decimals too.

Strict comparisons ``<``/``>`` are read as ``<=``/``>=`` (as α,β-CROWN and the VNN-COMP scorer do): the
closure of the unsafe set is checked, which keeps every ``unsat`` sound.  Clauses whose box is empty
(exactly: ``lower > upper`` over the rationals) describe no point and are dropped (a file whose
clauses are all empty is ``unsat`` without running anything).

Not supported (a one-line error naming the file and line): atoms that mix inputs and outputs or
couple several inputs (boxes only), ``not``/``=>``/``ite``, non-linear terms, an input without a
lower or upper bound in some clause, unbalanced parentheses, undeclared variables, unknown commands.

Speed: one pass of a token regex per line and a stack (no backtracking); the conjunction of the many
single-atom asserts a box is written as is accumulated in place.  MNIST-FC's 3,164-line property
parses in a few milliseconds (see tests/test_vnnlib.py).
"""

from __future__ import annotations

import gzip
import math
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from ..models.errors import ShapeMismatchError, SpecificationError
from .outward import exact_number as _number, float_row, round_down, round_up

MAX_CLAUSES = 200_000  # refuse disjunctive normal forms larger than this (an and-of-ors can blow up)

_TOKEN = re.compile(r"[()]|[^\s()]+")
_NUMERAL = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\Z")
_VAR = re.compile(r"([XY])_(\d+)\Z")
_IGNORED = frozenset({"set-logic", "set-info", "set-option", "check-sat", "get-model", "exit"})
_CMP = frozenset({"<=", ">=", "<", ">", "="})


class _SList(list):
    """A parenthesized list remembering the line where it opened."""

    __slots__ = ("line",)

    def __init__(self, line: int):
        super().__init__()
        self.line = line


class Atom:
    """``sum_i x[i] X_i + sum_j y[j] Y_j <= rhs`` (from line ``line``; coefficients and ``rhs`` exact
    :class:`~fractions.Fraction`), classified once at creation: ``kind`` is "box" (one input: ``xi``,
    coefficient ``xc``), "out" (outputs only), "const", "mixed" (inputs and outputs) or "coupled"
    (several inputs).  ``cache`` holds the atom's float form once computed (atoms are shared by the
    clauses of a disjunctive normal form)."""

    __slots__ = ("x", "y", "rhs", "line", "kind", "xi", "xc", "cache")

    def __init__(self, x: dict, y: dict, rhs: Fraction, line: int):
        self.x, self.y, self.rhs, self.line = x, y, rhs, line
        self.xi, self.xc = -1, Fraction(0)
        self.cache = None
        if x and y:
            self.kind = "mixed"
        elif len(x) > 1:
            self.kind = "coupled"
        elif x:
            self.kind = "box"
            (self.xi, self.xc), = x.items()
        else:
            self.kind = "out" if y else "const"


@dataclass
class Disjunct:
    """One clause of the DNF: the box ``lower <= X <= upper`` (flat, float64) and ``C Y <= d``, rounded
    outward (:mod:`relax.outward`: the set contains the clause's exact set); ``lower_in``/``upper_in``
    the box rounded inward (float points there satisfy the exact box) and ``rows`` the exact output
    atoms, for :meth:`holds`."""

    lower: np.ndarray
    upper: np.ndarray
    C: np.ndarray
    d: np.ndarray
    line: int  # the line where the clause's first atom stands
    lower_in: np.ndarray | None = None
    upper_in: np.ndarray | None = None
    rows: list = field(default_factory=list)

    def holds(self, x, y) -> bool:
        """Exact truth of the clause at the float point ``x`` (flat inputs) with outputs ``y`` (flat): ``x``
        in the inward-rounded box and every output atom true over the rationals (strict comparisons read
        as their closure, as everywhere in this reader)."""
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        y = [Fraction(float(v)) for v in np.asarray(y, dtype=np.float64).reshape(-1)]
        lo = self.lower if self.lower_in is None else self.lower_in
        hi = self.upper if self.upper_in is None else self.upper_in
        if not bool(((x >= lo) & (x <= hi)).all()):
            return False
        return all(sum((c * y[j] for j, c in a.y.items()), Fraction(0)) <= a.rhs for a in self.rows)


@dataclass
class VNNLib:
    """A parsed VNN-LIB file: the unsafe set is the union of the ``disjuncts`` (empty ones dropped)."""

    source: str
    n_inputs: int
    n_outputs: int
    disjuncts: list[Disjunct] = field(default_factory=list)
    dropped_empty: int = 0  # clauses with an empty box or a false constant atom
    lines: int = 0


# ---------------------------------------------------------------------------------------- reading
def read_text(path: str | Path) -> str:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SpecificationError(f"{path}: no such file") from None
    except OSError as exc:
        raise SpecificationError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if path.suffix == ".gz" or raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise SpecificationError(f"{path}: not a readable gzip file ({exc})") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecificationError(f"{path}: not a text file (byte {exc.start} is not UTF-8)") from None


def _sexprs(text: str, src: str) -> tuple[list, int]:
    """Top-level S-expressions of ``text`` (comments removed) and the number of lines."""
    top: list = []
    stack: list[_SList] = []
    lineno = 0
    for lineno, line in enumerate(text.split("\n"), 1):
        cut = line.find(";")
        if cut >= 0:
            line = line[:cut]
        for tok in _TOKEN.findall(line):
            if tok == "(":
                new = _SList(lineno)
                (stack[-1] if stack else top).append(new)
                stack.append(new)
            elif tok == ")":
                if not stack:
                    raise SpecificationError(f"{src}:{lineno}: unbalanced ')' (no '(' open)")
                stack.pop()
            elif stack:
                stack[-1].append(tok)
            else:
                raise SpecificationError(f"{src}:{lineno}: {tok!r} outside parentheses")
    if stack:
        raise SpecificationError(f"{src}:{stack[-1].line}: unbalanced '(' (never closed before the end of the file)")
    return top, lineno


def _show(e) -> str:
    if isinstance(e, list):
        s = "(" + " ".join(_show(v) for v in e) + ")"
        return s if len(s) <= 60 else s[:57] + "..."
    return str(e)


class _Parser:
    def __init__(self, src: str):
        self.src = src
        self.vars: dict[str, tuple[str, int]] = {}
        self.nx = self.ny = 0
        self.seen_x: set[int] = set()
        self.seen_y: set[int] = set()

    def err(self, line: int, msg: str) -> SpecificationError:
        return SpecificationError(f"{self.src}:{line}: {msg}")

    # ------------------------------------------------------------------ commands
    def declare(self, e: _SList) -> None:
        if len(e) != 3 or isinstance(e[1], list) or e[2] != "Real":
            raise self.err(e.line, f"expected (declare-const NAME Real), got {_show(e)}")
        name = e[1]
        m = _VAR.match(name)
        if m is None:
            raise self.err(e.line, f"variable {name!r}: only inputs X_i and outputs Y_j are supported")
        if name in self.vars:
            raise self.err(e.line, f"variable {name} declared twice")
        kind, idx = m.group(1), int(m.group(2))
        self.vars[name] = (kind, idx)
        (self.seen_x if kind == "X" else self.seen_y).add(idx)

    # ------------------------------------------------------------------ terms
    def term(self, e, line: int) -> tuple[dict, dict, float]:
        """A linear term as (coefficients on X, coefficients on Y, constant)."""
        if not isinstance(e, list):
            if _NUMERAL.match(e):
                return {}, {}, _number(e)
            v = self.vars.get(e)
            if v is None:
                if _VAR.match(e):
                    raise self.err(line, f"undeclared variable {e} (add (declare-const {e} Real) before its use)")
                raise self.err(line, f"unknown symbol {e!r} (expected a number or a declared X_i / Y_j)")
            return ({v[1]: _ONE}, {}, _ZERO) if v[0] == "X" else ({}, {v[1]: _ONE}, _ZERO)
        line = e.line
        if not e or isinstance(e[0], list):
            raise self.err(line, f"expected a term, got {_show(e)}")
        head, args = e[0], e[1:]
        if head in ("+", "-"):
            if not args:
                raise self.err(line, f"({head}) needs at least one argument")
            parts = [self.term(a, line) for a in args]
            if head == "-":
                parts = [parts[0]] + [_scale(p, -1) for p in parts[1:]] if len(parts) > 1 else [_scale(parts[0], -1)]
            return _sum(parts)
        if head == "*":
            if not args:
                raise self.err(line, "(*) needs arguments")
            parts = [self.term(a, line) for a in args]
            lin = [p for p in parts if p[0] or p[1]]
            if len(lin) > 1:
                raise self.err(line, f"non-linear term {_show(e)} (a product of variables)")
            c = _ONE
            for p in parts:
                if not (p[0] or p[1]):
                    c *= p[2]
            return _scale(lin[0], c) if lin else ({}, {}, c)
        if head == "/":
            if len(args) != 2:
                raise self.err(line, f"(/ t c) takes two arguments, got {_show(e)}")
            num, den = self.term(args[0], line), self.term(args[1], line)
            if den[0] or den[1]:
                raise self.err(line, f"non-linear term {_show(e)} (division by a variable)")
            if den[2] == 0:
                raise self.err(line, f"division by zero in {_show(e)}")
            return _scale(num, Fraction(1) / den[2])
        raise self.err(line, f"unsupported function {head!r} in {_show(e)} (linear terms: + - * / only)")

    # ------------------------------------------------------------------ formulas -> DNF
    def dnf(self, e, line: int) -> list[list[Atom]]:
        if not isinstance(e, list):
            if e == "true":
                return [[]]
            if e == "false":
                return []
            raise self.err(line, f"expected a formula, got {e!r}")
        line = e.line
        if not e or isinstance(e[0], list):
            raise self.err(line, f"expected a formula, got {_show(e)}")
        head, args = e[0], e[1:]
        if head == "and":
            clauses: list[list[Atom]] = [[]]
            for a in args:
                clauses = self.conjoin(clauses, self.dnf(a, line), line)
            return clauses
        if head == "or":
            out: list[list[Atom]] = []
            for a in args:
                out.extend(self.dnf(a, line))
                if len(out) > MAX_CLAUSES:
                    raise self.err(line, f"more than {MAX_CLAUSES:,} disjuncts")
            return out
        if head in _CMP:
            if len(args) < 2:
                raise self.err(line, f"({head} a b) needs two arguments, got {_show(e)}")
            terms = [self.term(a, line) for a in args]
            atoms: list[Atom] = []
            for a, b in zip(terms, terms[1:]):
                if head in ("<=", "<", "="):
                    atoms.append(_atom(a, b, line))
                if head in (">=", ">", "="):
                    atoms.append(_atom(b, a, line))
            return [atoms]
        if head in ("not", "=>", "xor", "ite", "distinct"):
            raise self.err(line, f"{head!r} is not in the supported VNN-LIB subset (use and/or of comparisons)")
        raise self.err(line, f"unknown operator {head!r} in {_show(e)}")

    def conjoin(self, clauses: list[list[Atom]], other: list[list[Atom]], line: int) -> list[list[Atom]]:
        if len(other) == 1:  # the common case (a box written atom by atom): extend in place
            for c in clauses:
                c.extend(other[0])
            return clauses
        if len(clauses) * len(other) > MAX_CLAUSES:
            raise self.err(line, f"the conjunction expands to {len(clauses) * len(other):,} disjuncts "
                                 f"(more than {MAX_CLAUSES:,})")
        return [c + o for c in clauses for o in other]

    # ------------------------------------------------------------------ the file
    def parse(self, text: str) -> VNNLib:
        exprs, nlines = _sexprs(text, self.src)
        clauses: list[list[Atom]] = [[]]
        asserted = False
        for e in exprs:
            if not isinstance(e, list) or not e or isinstance(e[0], list):
                raise self.err(getattr(e, "line", 0), f"expected a command, got {_show(e)}")
            cmd = e[0]
            if cmd == "declare-const":
                self.declare(e)
            elif cmd == "assert":
                if len(e) != 2:
                    raise self.err(e.line, f"(assert F) takes one formula, got {len(e) - 1}")
                clauses = self.conjoin(clauses, self.dnf(e[1], e.line), e.line)
                asserted = True
            elif cmd in _IGNORED:
                continue
            else:
                raise self.err(e.line, f"unknown command {cmd!r} (expected declare-const or assert)")
        for kind, seen in (("X", self.seen_x), ("Y", self.seen_y)):
            if not seen:
                raise SpecificationError(f"{self.src}: no {kind}_i variable declared")
            missing = sorted(set(range(max(seen) + 1)) - seen)
            if missing:
                raise SpecificationError(f"{self.src}: {kind}_{missing[0]} is not declared although "
                                         f"{kind}_{max(seen)} is (indices must run from 0 without gaps)")
        if not asserted:
            raise SpecificationError(f"{self.src}: no assert (the file states no property)")
        nx, ny = max(self.seen_x) + 1, max(self.seen_y) + 1
        out = VNNLib(self.src, nx, ny, lines=nlines)
        for clause in clauses:
            dj = self.disjunct(clause, nx, ny)
            if dj is None:
                out.dropped_empty += 1
            else:
                out.disjuncts.append(dj)
        return out

    def disjunct(self, clause: list[Atom], nx: int, ny: int) -> Disjunct | None:
        box = [a for a in clause if a.kind == "box"]
        if len(box) < len(clause):
            for a in clause:
                if a.kind == "mixed":
                    raise self.err(a.line, "a constraint mixing inputs X and outputs Y is not supported "
                                           "(inputs must be constrained by a box)")
                if a.kind == "coupled":
                    raise self.err(a.line, f"a constraint coupling several inputs "
                                           f"({', '.join(f'X_{i}' for i in sorted(a.x))}) is not supported "
                                           f"(inputs must be constrained by a box)")
                if a.kind == "const" and not (0 <= a.rhs):  # a false constant atom: the clause is empty
                    return None
        out = [a for a in clause if a.kind == "out"]
        C = np.zeros((len(out), ny))
        d = np.zeros(len(out))
        for r, a in enumerate(out):
            if a.cache is None:
                a.cache = float_row(a.y, a.rhs, f"{self.src}:{a.line}")
            coeffs, d[r] = a.cache
            for j, c in coeffs.items():
                C[r, j] = c
        lower, upper = np.full(nx, -math.inf), np.full(nx, math.inf)
        lower_in, upper_in = lower.copy(), upper.copy()
        if box:
            for a in box:
                if a.cache is None:  # x <= b (a > 0) or x >= b (a < 0), b = rhs / a exact; outward and inward
                    b = a.rhs if a.xc == 1 else (-a.rhs if a.xc == -1 else Fraction(a.rhs) / a.xc)
                    pos = a.xc > 0
                    a.cache = (b, a.xi, pos, round_up(b) if pos else round_down(b), round_down(b) if pos else round_up(b))
            _, idx, pos, f_out, f_in = (np.array(c) for c in zip(*(a.cache for a in box)))
            pos = pos.astype(bool)
            # the roundings are monotone: the tightest float bound is the rounding of the tightest exact one
            np.minimum.at(upper, idx[pos], f_out[pos])
            np.maximum.at(lower, idx[~pos], f_out[~pos])
            np.minimum.at(upper_in, idx[pos], f_in[pos])
            np.maximum.at(lower_in, idx[~pos], f_in[~pos])
        line = clause[0].line if clause else 0
        for name, arr in (("lower", lower), ("upper", upper)):
            bad = np.flatnonzero(~np.isfinite(arr))
            if bad.size:
                raise self.err(line, f"X_{int(bad[0])} has no {name} bound in the disjunct starting here "
                                     f"(inputs must lie in a bounded box)")
        if (lower > upper).any():
            return None
        # an exactly empty box can round to a float box one ulp wide: decide those entries exactly
        near = set(np.flatnonzero(upper <= np.nextafter(lower, math.inf)).tolist())
        if near:
            lo_ex: dict[int, Fraction] = {}
            hi_ex: dict[int, Fraction] = {}
            for a in box:
                if a.xi in near:
                    b = a.cache[0]
                    if a.cache[2]:
                        hi_ex[a.xi] = min(hi_ex.get(a.xi, b), b)
                    else:
                        lo_ex[a.xi] = max(lo_ex.get(a.xi, b), b)
            if any(lo_ex[k] > hi_ex[k] for k in near):
                return None
        return Disjunct(lower, upper, C, d, line, lower_in, upper_in, out)


_ZERO, _ONE = 0, 1  # exact ints (they mix with Fraction exactly and cost far less)


def _scale(p, c):
    if c == -1:  # the common case (a - b, >=)
        return {k: -v for k, v in p[0].items()}, {k: -v for k, v in p[1].items()}, -p[2] if p[2] else _ZERO
    return {k: v * c for k, v in p[0].items()}, {k: v * c for k, v in p[1].items()}, p[2] * c


def _sum(parts):
    x: dict = {}
    y: dict = {}
    k = _ZERO
    for px, py, pk in parts:
        for i, v in px.items():
            x[i] = x[i] + v if i in x else v
        for j, v in py.items():
            y[j] = y[j] + v if j in y else v
        if pk:
            k = k + pk if k else pk
    return x, y, k


def _atom(a, b, line: int) -> Atom:
    """``a <= b`` as ``(a - b)_linear <= (b - a)_constant`` (exact)."""
    x, y, k = _sum([a, _scale(b, -1)])
    return Atom({i: v for i, v in x.items() if v != 0}, {j: v for j, v in y.items() if v != 0}, -k, line)


# ---------------------------------------------------------------------------------------- public API
def parse_vnnlib(text: str, source: str = "<vnnlib>") -> VNNLib:
    """Parse VNN-LIB text (see the module docstring); errors name ``source`` and the line."""
    return _Parser(source).parse(text)


def read_vnnlib(path: str | Path) -> VNNLib:
    """Read and parse a ``.vnnlib`` (or ``.vnnlib.gz``) file."""
    return parse_vnnlib(read_text(path), str(path))


def to_query(spec: VNNLib, input_shape, n_outputs: int, device=None, *, inner: bool = False):
    """The parsed file as a :class:`relax.spec.Query` for a network with ``input_shape`` (per sample,
    without batch) and ``n_outputs`` flat outputs: ``X`` is reshaped in C order to ``input_shape``.
    The query's ``specs`` may be empty (every clause was empty: nothing to verify, the answer is unsat).
    The boxes are rounded outward (the engine's query), or inward with ``inner=True`` (where a witness
    must lie; :meth:`Disjunct.holds` then checks its rows exactly)."""
    from .spec import Query, Specification

    input_shape = tuple(int(s) for s in input_shape)
    n_in = int(np.prod(input_shape)) if input_shape else 1
    if spec.n_inputs != n_in:
        raise ShapeMismatchError(f"{spec.source}: declares {spec.n_inputs} inputs X_0..X_{spec.n_inputs - 1}, "
                                 f"the network takes {n_in} (input shape {list(input_shape)})")
    if spec.n_outputs != int(n_outputs):
        raise ShapeMismatchError(f"{spec.source}: declares {spec.n_outputs} outputs Y_0..Y_{spec.n_outputs - 1}, "
                                 f"the network has {int(n_outputs)}")
    specs = []
    for dj in spec.disjuncts:
        t = lambda a: torch.as_tensor(a, dtype=torch.float64, device=device)  # noqa: E731
        lo, hi = (dj.lower_in, dj.upper_in) if inner and dj.lower_in is not None else (dj.lower, dj.upper)
        specs.append(Specification(t(lo).reshape(input_shape), t(hi).reshape(input_shape),
                                   t(dj.C).reshape(-1, spec.n_outputs), t(dj.d).reshape(-1)))
    return Query(specs, spec.source)


def load_vnnlib(path: str | Path, input_shape, n_outputs: int, device=None):
    """:func:`read_vnnlib` then :func:`to_query`."""
    return to_query(read_vnnlib(path), input_shape, n_outputs, device)
