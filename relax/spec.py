"""Verification queries in the VNN-LIB sense and their verdicts (the engine's public entry point).

A :class:`Specification` is the *unsafe* set of a property: an input box ``lower <= x <= upper`` and
linear output constraints ``C f(x) <= d`` (every row).  ``sat`` means some ``x`` of the box satisfies
every row (a counterexample to the property); ``unsat`` means none does (the property is verified).
A :class:`Query` is a disjunction of specifications (``sat`` iff one is ``sat``; ``unsat`` iff all
are ``unsat``), e.g. a VNN-LIB file with a top-level ``(or (and ...) ...)`` or the robustness margins
of one image (one single-row specification ``f_y - f_j <= 0`` per wrong class ``j``: the unsafe set).

Guarantees of :func:`verify_query`
----------------------------------
* ``unsat``: for every specification some row ``k`` has a certified lower bound of ``C_k f(x)`` over
  the box (or over every sub-domain of a complete branch-and-bound split of it) that is ``> d_k``
  when compared in float64.  The bounds are the engine's (relax/engine.py: IBP in float64 rounded
  outward, CROWN widened by a rounding margin); the box is rounded *outward* to the working dtype
  and ``C`` is used in float64 whenever the working dtype cannot hold it exactly.
* ``sat``: the returned ``counterexample`` lies in the box exactly (checked in float64) and the
  network, evaluated in float64 at it, satisfies every row of one specification (``C f <= d``).
* ``unknown`` / ``timeout``: neither could be established within the methods / time allowed.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from ..models.errors import InvalidArgumentError, ShapeMismatchError
from ..models.graph import Network

STATUSES = ("unsat", "sat", "unknown", "timeout")


@dataclass
class Specification:
    """A VNN-LIB-style query: is there an x with lower <= x <= upper (elementwise, input shape) and
    C @ f(x).flatten() <= d (every row)?  `sat` = such an x exists (a counterexample to the property the
    spec encodes); `unsat` = none exists (the property is verified).  A VNN-LIB file with a top-level
    disjunction becomes a list of Specifications (see `Query`)."""
    lower: torch.Tensor            # (*input_shape), float64
    upper: torch.Tensor            # (*input_shape), float64
    C: torch.Tensor                # (m, n_out), float64
    d: torch.Tensor                # (m,), float64


@dataclass
class Query:
    """The disjunction of several Specifications: sat iff any one is sat; unsat iff every one is unsat."""
    specs: list[Specification]
    source: str = ""               # file name (for messages)


@dataclass
class Verdict:
    status: str                    # "unsat" | "sat" | "unknown" | "timeout"
    counterexample: torch.Tensor | None = None   # x (input shape, float64) when sat, re-checked in float64
    output: torch.Tensor | None = None           # f(x) in float64 when sat
    time_s: float = 0.0
    domains: int = 0               # BaB domains visited
    reason: str = ""               # for unknown/timeout: why; for unsat: which method proved it
    spec_index: int | None = None  # which Specification of the Query was sat
    spec_bounds: torch.Tensor | None = None  # (n_specs,) float64: certified lower bounds of
    #   min over the box of max_k (C_k f(x) - d_k) per Specification (> 0: refuted; -inf: not bounded)


# ---------------------------------------------------------------------- construction helpers
def robustness_query(x: torch.Tensor, label: int, eps: float, n_classes: int, clip=None, source: str = "") -> Query:
    """The l_inf robustness of one input ``x`` (input shape) as a :class:`Query`: one single-row
    specification ``f_label - f_j <= 0`` (row ``e_label - e_j``, ``d = 0``: the *unsafe* set, class ``j``
    scores at least as high as the label; ties count as not robust) per wrong class ``j`` (ascending), on the box
    ``[x - eps, x + eps]`` (intersected with ``clip = (lo, hi)``), everything in float64."""
    x64 = x.detach().to(torch.float64)
    lo, hi = x64 - float(eps), x64 + float(eps)
    if clip is not None:
        c0 = torch.as_tensor(clip[0], dtype=torch.float64, device=x64.device)
        c1 = torch.as_tensor(clip[1], dtype=torch.float64, device=x64.device)
        lo, hi = torch.maximum(lo, c0), torch.minimum(hi, c1)
    specs = []
    for j in range(n_classes):
        if j == int(label):
            continue
        C = torch.zeros(1, n_classes, dtype=torch.float64, device=x64.device)
        C[0, j], C[0, int(label)] = -1.0, 1.0
        specs.append(Specification(lo.clone(), hi.clone(), C, torch.zeros(1, dtype=torch.float64, device=x64.device)))
    return Query(specs, source)


def check_query(net: Network, query: Query) -> None:
    """Raise a one-line error naming the specification and field at fault when ``query`` does not fit ``net``."""
    src = f"{query.source}: " if query.source else ""
    if not isinstance(query, Query) or not isinstance(query.specs, list) or not query.specs:
        raise InvalidArgumentError(f"{src}a Query needs a non-empty list of Specifications")
    n_out = int(math.prod(net.output_shape))
    for i, s in enumerate(query.specs):
        w = f"{src}specification {i}"
        if not isinstance(s, Specification):
            raise InvalidArgumentError(f"{w}: expected a Specification, got {type(s).__name__}")
        for name in ("lower", "upper", "C", "d"):
            t = getattr(s, name)
            if not isinstance(t, torch.Tensor) or not t.is_floating_point():
                raise InvalidArgumentError(f"{w}.{name}: expected a floating-point tensor")
            if torch.isnan(t).any():
                raise InvalidArgumentError(f"{w}.{name}: contains NaN")
        if tuple(s.lower.shape) != tuple(net.input_shape) or tuple(s.upper.shape) != tuple(net.input_shape):
            raise ShapeMismatchError(f"{w}: input box has shape {tuple(s.lower.shape)}/{tuple(s.upper.shape)}, "
                                     f"the network expects {tuple(net.input_shape)}")
        if not (torch.isfinite(s.lower).all() and torch.isfinite(s.upper).all()):
            raise InvalidArgumentError(f"{w}: input box must be bounded (finite lower and upper)")
        if (s.lower > s.upper).any():
            k = int((s.lower > s.upper).flatten().nonzero()[0])
            raise InvalidArgumentError(f"{w}: empty input box (lower > upper at X_{k})")
        if s.C.dim() != 2 or s.C.shape[1] != n_out:
            raise ShapeMismatchError(f"{w}.C: expected shape (m, {n_out}), got {tuple(s.C.shape)}")
        if s.d.dim() != 1 or s.d.shape[0] != s.C.shape[0]:
            raise ShapeMismatchError(f"{w}.d: expected shape ({s.C.shape[0]},), got {tuple(s.d.shape)}")
        if not torch.isfinite(s.C).all():
            raise InvalidArgumentError(f"{w}.C: contains Inf")


# ---------------------------------------------------------------------- batched representation
@dataclass
class SpecBatch:
    """Specifications grouped by identical input boxes: group ``g`` is one sample of a batch.

    ``lower/upper``: ``(G, *input_shape)`` float64; ``C``: ``(G, M, n_out)`` float64 with the rows of
    every specification of the group stacked (zero rows padding); ``d``: ``(G, M)`` (``+inf`` on
    padding rows, so they never refute and never constrain); ``owner``: ``(G, M)`` index of the
    specification each row belongs to (``-1`` on padding)."""
    lower: torch.Tensor
    upper: torch.Tensor
    C: torch.Tensor
    d: torch.Tensor
    owner: torch.Tensor
    n_specs: int
    group_of: list[int] = field(default_factory=list)

    @staticmethod
    def build(specs: list[Specification], device=None) -> "SpecBatch":
        groups: list[list[int]] = []
        for i, s in enumerate(specs):
            for g in groups:
                s0 = specs[g[0]]
                if torch.equal(s0.lower, s.lower) and torch.equal(s0.upper, s.upper):
                    g.append(i)
                    break
            else:
                groups.append([i])
        n_out = specs[0].C.shape[1]
        M = max(sum(specs[i].C.shape[0] for i in g) for g in groups)
        G = len(groups)
        dev = device if device is not None else specs[0].lower.device
        C = torch.zeros(G, M, n_out, dtype=torch.float64, device=dev)
        d = torch.full((G, M), math.inf, dtype=torch.float64, device=dev)
        owner = torch.full((G, M), -1, dtype=torch.long, device=dev)
        group_of = [0] * len(specs)
        for gi, g in enumerate(groups):
            r = 0
            for i in g:
                m = specs[i].C.shape[0]
                C[gi, r:r + m] = specs[i].C.to(device=dev, dtype=torch.float64)
                d[gi, r:r + m] = specs[i].d.to(device=dev, dtype=torch.float64)
                owner[gi, r:r + m] = i
                group_of[i] = gi
                r += m
        lower = torch.stack([specs[g[0]].lower for g in groups]).to(device=dev, dtype=torch.float64)
        upper = torch.stack([specs[g[0]].upper for g in groups]).to(device=dev, dtype=torch.float64)
        return SpecBatch(lower, upper, C, d, owner, len(specs), group_of)

    def refuted(self, row_lower: torch.Tensor) -> torch.Tensor:
        """``(n_specs,)`` bool: specification ``i`` is refuted (unsat) when some row of it has a certified
        lower bound ``> d`` (``row_lower``: ``(G, M)``, compared in float64)."""
        hit = (row_lower.to(torch.float64) > self.d) & (self.owner >= 0)
        out = torch.zeros(self.n_specs, dtype=torch.bool, device=hit.device)
        out.scatter_reduce_(0, self.owner[hit], torch.ones_like(self.owner[hit], dtype=torch.bool), reduce="amax")
        return out

    def violation(self, y: torch.Tensor) -> torch.Tensor:
        """``(G, n_specs)`` the max over its rows of ``C_k y - d_k`` for every specification (``+inf`` for
        specifications of other groups); ``<= 0`` means ``y`` satisfies that specification.
        ``y``: ``(G, n_out)`` (or ``(G, S, n_out)`` -> ``(G, S, n_specs)``)."""
        squeeze = y.dim() == 2
        if squeeze:
            y = y.unsqueeze(1)
        C = self.C.to(y.dtype)
        rows = torch.einsum("gmo,gso->gsm", C, y) - torch.nan_to_num(self.d.to(y.dtype), posinf=0.0).unsqueeze(1)
        G, S, M = rows.shape
        own = self.owner.unsqueeze(1).expand(G, S, M)
        v = torch.full((G, S, self.n_specs + 1), -math.inf, dtype=y.dtype, device=y.device)
        v = v.scatter_reduce(2, torch.where(own >= 0, own, self.n_specs), rows, reduce="amax")[..., :self.n_specs]
        mine = torch.zeros(G, self.n_specs, dtype=torch.bool, device=y.device)
        mine[torch.tensor(self.group_of, device=y.device), torch.arange(self.n_specs, device=y.device)] = True
        v = torch.where(mine.unsqueeze(1), v, torch.full_like(v, math.inf))
        return v[:, 0] if squeeze else v


def outward_box(lower64: torch.Tensor, upper64: torch.Tensor, dtype: torch.dtype):
    """The float64 box cast to ``dtype`` rounding outward (the cast box contains the float64 one)."""
    lo, hi = lower64.to(dtype), upper64.to(dtype)
    if dtype != torch.float64:
        lo = torch.where(lo.double() > lower64, torch.nextafter(lo, lo.new_tensor(-math.inf)), lo)
        hi = torch.where(hi.double() < upper64, torch.nextafter(hi, hi.new_tensor(math.inf)), hi)
    return lo, hi


def working_dtype(net: Network, C64: torch.Tensor, dtype=None) -> torch.dtype:
    """The network's dtype (or ``dtype``), promoted to float64 when ``C`` is not exact in it."""
    dt = dtype or net.dtype
    if dt != torch.float64 and not torch.equal(C64.to(dt).double(), C64):
        return torch.float64
    return dt


# ---------------------------------------------------------------------- the verifier
def verify_query(net: Network, query: Query, *, timeout: float, device=None, **opts) -> Verdict:
    """Decide a :class:`Query` on ``net``: ``sat`` (with a float64-checked counterexample), ``unsat``
    (every specification refuted by certified bounds, on the whole box or on every domain of a complete
    branch-and-bound split of it), ``unknown`` or ``timeout``.

    Pipeline: PGD attack (restarts) -> CROWN -> α-CROWN (per specification row) -> branch-and-bound on
    what is still open (input splitting when the input has at most ``input_split_max`` values, else
    β-CROWN activation splitting), with PGD restarts during the search.  See relax/bab/complete.py for
    the options (``dtype``, ``pgd_steps``, ``pgd_restarts``, ``alpha_iters``, ``seed``, ``bab``,
    ``input_split``, ``batch``, ``memory_budget``, ``progress``, ...).
    """
    t0 = time.monotonic()
    if not isinstance(net, Network):
        raise InvalidArgumentError(f"net must be a models.Network, got {type(net).__name__}")
    if not (isinstance(timeout, (int, float)) and timeout > 0):
        raise InvalidArgumentError(f"timeout must be > 0 seconds, got {timeout!r}")
    check_query(net, query)
    if device is not None:
        net = net.to(device=device)
    from .bab.complete import solve_query
    return solve_query(net, query, timeout=float(timeout), start=t0, **opts)
