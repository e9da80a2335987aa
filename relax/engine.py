"""The bound-propagation traversal: IBP, CROWN and alpha-CROWN over a lowered network.

Math
----
*IBP* propagates boxes node by node (exact interval images of affine maps, monotone images of
activations).  *CROWN* bounds ``C f(x)`` by a backward pass: starting from coefficients ``A = C`` at
the output, every node ``y = g(x)`` maps a linear bound ``A y + c`` to one on ``x``: exactly for affine
nodes (``A W``, ``c + A b``), by summing coefficients at fan-outs (residual ``add``), and through an
activation by the linear relaxation ``aL x + bL <= phi(x) <= aU x + bU`` on the pre-activation bounds,
choosing for the lower bound ``aL`` where the coefficient is positive and ``aU`` where negative (and
the reverse for the upper bound).  At the input the bound is concretized with the input set's
support function.  Pre-activation bounds of every activation are computed the same way (CROWN from
that node, with an identity specification), in topological order; by default only for
ReLU/LeakyReLU/sorting neurons that IBP finds unstable for some sample of the batch (``skip_stable``),
and for every neuron of Tanh/Sigmoid.  MaxMin/GroupSort/Householder are rewritten exactly through
ReLUs (relax/piecewise.py); their pre-activation bounds are bounds on the ReLU arguments.  *alpha-CROWN* treats the lower
slopes of ReLU/LeakyReLU relaxations as free variables in their valid interval (one per output
specification, sample, and neuron; separately for the lower and the upper bound), and maximizes the
lower bound (minimizes the upper) by projected Adam steps; every iterate is a sound bound, and the
best one per entry is kept.  Intermediate bounds of alpha-CROWN are CROWN's (only the final
specification is optimized).

Guarantee and floating point
----------------------------
Every returned bound holds for all inputs of the set (for the real-arithmetic network).  To cover
rounding, (1) IBP is evaluated in float64 and rounded outward to the working dtype with a
``gamma_n``-style margin, (2) CROWN bounds (computed in the working dtype) are widened by
``2 * fan_in_max * eps(dtype) * (sum |A||x| + sum |bias terms|)``, (3) every CROWN bound is
intersected with the IBP bound (so CROWN is never looser than IBP).  The CROWN margin is the standard
worst-case rounding bound of one dot product of the widest layer applied to the magnitudes of the
final linear bound; it is not a formal proof of rounding soundness through all layers (use
``dtype=torch.float64`` when that matters: the margins there are ~1e-13 relative).  NaN or Inf in a
bound is turned into -inf/+inf (never into a finite certified value).
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field

import torch

from ..models.errors import InvalidArgumentError, ShapeMismatchError
from ..models.graph import Network

from .affine import AFFINE_HANDLERS
from .lowering import LNode, lower
from .sets import Ball, InputSet, as_input_set, box_support

METHODS = {"ibp": "ibp", "crown": "crown", "backward": "crown", "alpha-crown": "alpha-crown",
           "alpha_crown": "alpha-crown", "crown-optimized": "alpha-crown", "alphacrown": "alpha-crown"}


@dataclass
class BoundResult:
    """Certified bounds ``lower <= C f(x) <= upper`` for every ``x`` in the input set.

    ``lower``/``upper``: ``(B, m)``.  ``intermediate``: ``{node name: (lower, upper)}`` for every
    node of the network, each ``(B, *node.shape)``.  ``preact``: bounds on the pre-activation
    ``R x`` of every lowered activation (for MaxMin/GroupSort the differences ``x_i - x_j`` of each
    compare-exchange layer ``"<name>#k"``; for Householder ``-v.z``).  ``alpha``: optimized slopes
    ``{"lower": {act: (B, m, *pre)}, "upper": {...}}`` (alpha-CROWN only) to warm-start a later call.
    ``empty``: ``(B,)``, True where the constraints (``fixed_preact``) are infeasible (vacuous bounds).
    """

    lower: torch.Tensor
    upper: torch.Tensor
    intermediate: dict[str, tuple[torch.Tensor, torch.Tensor]]
    method: str
    alpha: dict | None = None
    preact: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    empty: torch.Tensor | None = None
    kind: str = "certified bound"


_CACHE: "weakref.WeakKeyDictionary[Network, dict]" = weakref.WeakKeyDictionary()


def _prepared(net: Network, dtype: torch.dtype):
    """(network in dtype, its lowering, float64 network, its lowering), cached per network object."""
    key = (dtype, tuple((id(t), t._version) for n in net.nodes for t in n.params.values()))
    entry = _CACHE.get(net)
    if entry is not None and entry["key"] == key:
        return entry["val"]
    work = net if net.dtype == dtype else net.to(dtype=dtype)
    n64 = work if dtype == torch.float64 else net.to(dtype=torch.float64)
    val = (work, lower(work), n64, lower(n64) if n64 is not work else None)
    if val[3] is None:
        val = (work, val[1], n64, val[1])
    _CACHE[net] = {"key": key, "val": val}
    return val


def _numel(shape) -> int:
    return int(math.prod(shape))


def _round_out(lo64: torch.Tensor, hi64: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Cast float64 bounds to ``dtype`` rounding outward (never inward)."""
    lo, hi = lo64.to(dtype), hi64.to(dtype)
    if dtype != torch.float64:
        lo = torch.where(lo.double() > lo64, torch.nextafter(lo, lo.new_tensor(-math.inf)), lo)
        hi = torch.where(hi.double() < hi64, torch.nextafter(hi, hi.new_tensor(math.inf)), hi)
    return lo, hi


def _sanitize(lo, hi):
    lo = torch.where(torch.isnan(lo), torch.full_like(lo, -math.inf), lo)
    hi = torch.where(torch.isnan(hi), torch.full_like(hi, math.inf), hi)
    return lo, hi


class _Engine:
    def __init__(self, net: Network, input_set: InputSet, dtype: torch.dtype, chunk_elems: int,
                 skip_stable: bool = True, fixed: dict | None = None):
        self.skip_stable = skip_stable
        self.fixed = fixed or {}
        self.net, self.lnodes, self.net64, self.lnodes64 = _prepared(net, dtype)
        self.dtype = dtype
        self.set = input_set
        self.B = input_set.batch
        self.by_name = {n.name: n for n in self.lnodes}
        self.by_name64 = {n.name: n for n in self.lnodes64}
        self.index = {n.name: i for i, n in enumerate(self.lnodes)}
        self.internal = {n.name for n in self.lnodes} - {n.name for n in self.net.nodes}
        self.bounds: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.pre: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.relax_cache: dict[str, tuple] = {}
        self.crowned: set[str] = set()
        self.chunk_elems = chunk_elems
        self.max_numel = max(_numel(n.shape) for n in self.lnodes)
        fan = 1
        for n in self.net.nodes:
            if n.op == "linear":
                fan = max(fan, n.params["weight"].shape[1])
            elif n.op == "conv2d":
                fan = max(fan, _numel(n.params["weight"].shape[1:]))
            elif n.op == "avgpool2d":
                fan = max(fan, _numel(n.attrs["kernel_size"]))
        self.fan = fan + 2
        self.eps = torch.finfo(dtype).eps

    # ------------------------------------------------------------------ IBP (float64, outward)
    def _ibp64(self, ln: LNode, ins):
        n64 = self.by_name64[ln.name]
        if ln.kind == "affine":
            h = AFFINE_HANDLERS[ln.node.op]
            lo, hi = h.ibp(n64.node, *ins[0])
            M = torch.maximum(ins[0][0].abs(), ins[0][1].abs())
            mlo, mhi = h.ibp(n64.node, -M, M)
            mag = torch.maximum(mlo.abs(), mhi.abs())
            fan = self.fan
        elif ln.kind == "add":
            (l1, u1), (l2, u2) = ins
            lo, hi = l1 + l2, u1 + u2
            mag = torch.maximum(lo.abs(), hi.abs())
            fan = 2
        elif ln.kind == "identity":
            return ins[0]
        elif ln.kind == "act":
            (lx, ux), (rl, ru) = ins
            fl, fu = ln.phi.ibp(rl, ru, ln.attrs)
            if ln.pmap is None:
                lo, hi = fl, fu
            else:
                lo, hi = n64.pmap.ibp(lx, ux, fl, fu)
            mag = torch.maximum(lo.abs(), hi.abs())
            fan = 8
        else:  # pragma: no cover
            raise AssertionError(ln.kind)
        d = 2 * fan * self.eps * mag  # covers float64 rounding and evaluation in the working dtype
        return lo - d, hi + d

    def _to64(self, b):
        return b[0].double(), b[1].double()

    def _ibp_node(self, ln: LNode):
        """IBP bounds of node ``ln`` from the current bounds of its inputs (and its pre-activation)."""
        ins = [self._to64(self.bounds[i]) for i in ln.inputs]
        if ln.kind == "act":
            ins.append(self._to64(self.pre[ln.name]))
        lo, hi = self._ibp64(ln, ins)
        return _round_out(lo, hi, self.dtype)

    def _pre_ibp(self, ln: LNode):
        """IBP bounds of the pre-activation ``R x`` of act node ``ln``."""
        lx, ux = self._to64(self.bounds[ln.inputs[0]])
        if ln.pmap is None:
            return self.bounds[ln.inputs[0]]
        pm = self.by_name64[ln.name].pmap
        mid, rad = (lx + ux) / 2, (ux - lx) / 2
        c, r = pm.R(mid), pm.R_abs(rad)
        mag = pm.R_abs(torch.maximum(lx.abs(), ux.abs()))
        d = 16 * self.eps * mag
        return _round_out(c - r - d, c + r + d, self.dtype)

    # ------------------------------------------------------------------ CROWN backward pass
    def _relax(self, ln: LNode, alpha=None):
        l, u = self.pre[ln.name]
        if alpha is None:
            r = self.relax_cache.get(ln.name)
            if r is None:
                r = ln.phi.relax(l, u, ln.attrs)
                self.relax_cache[ln.name] = r
            return r
        return ln.phi.relax(l, u, ln.attrs, alpha)

    @staticmethod
    def _m(t, ref_dim):
        return t.unsqueeze(1) if t.dim() == ref_dim - 1 else t

    def _seen_coefficient(self, ln: LNode, G) -> None:
        """Hook: the backward coefficient ``G`` on ``ln``'s pre-activation (subclasses record it)."""

    def _split_terms(self, ln: LNode, coef, upper: bool):
        """Hook: extra linear terms on ``ln``'s pre-activation before its relaxation's transpose (the
        split multipliers of beta-CROWN in :mod:`relax.bab.beta_crown`); none here."""
        return coef

    def _act_backward(self, ln: LNode, A, upper: bool, alpha):
        aL, bL, aU, bU = self._relax(ln, alpha)
        pm = ln.pmap
        if pm is None:
            G = A
        else:
            Bb, m = A.shape[:2]
            G = pm.Qt(A.reshape(Bb * m, *A.shape[2:]))
            G = G.reshape(Bb, m, *G.shape[1:])
        self._seen_coefficient(ln, G)
        d = G.dim()
        Gp = G.clamp(min=0)
        Gn = G - Gp
        ap, an, bp, bn = (aU, aL, bU, bL) if upper else (aL, aU, bL, bU)
        coef = torch.addcmul(Gn * self._m(an, d), Gp, self._m(ap, d))
        # constant terms sum_n Gp bp + Gn bn and their magnitudes, as matrix products (b has no spec dim)
        bias = babs = 0
        for Gs, b, sign in ((Gp, bp, 1.0), (Gn, bn, -1.0)):
            assert b.dim() == d - 1, "relaxation intercepts carry no specification dimension"
            if not bool(b.any()):
                continue
            bb = b.flatten(1)
            t = torch.matmul(Gs.flatten(2), torch.stack((bb, bb.abs()), -1))
            bias = bias + t[..., 0]
            babs = babs + sign * t[..., 1]
        coef = self._split_terms(ln, coef, upper)
        if pm is not None:
            Bb, m = coef.shape[:2]
            A2 = A.reshape(A.shape[0] * A.shape[1], *A.shape[2:])
            x_shape = self._in_shape(ln)
            coef = pm.Rt(coef.reshape(Bb * m, *coef.shape[2:])).reshape(Bb, m, *x_shape)
            coef = coef + pm.Pt(A2).reshape(A.shape[0], A.shape[1], *x_shape)
        return coef, bias, babs

    def _in_shape(self, ln):
        return self.by_name[ln.inputs[0]].shape

    def backward(self, start: str, A: torch.Tensor, upper: bool, alpha=None):
        """Bound ``A . node(start)`` over the input set: returns (bound (B, m), magnitude (B, m))."""
        pend = {start: A}
        bias = torch.zeros((), dtype=self.dtype, device=A.device)
        babs = torch.zeros((), dtype=self.dtype, device=A.device)
        A_in = None
        for ln in reversed(self.lnodes[: self.index[start] + 1]):
            Ac = pend.pop(ln.name, None)
            if Ac is None:
                continue
            if ln.kind == "input":
                A_in = Ac
                continue
            if ln.kind == "affine":
                An, b = AFFINE_HANDLERS[ln.node.op].backward(ln.node, Ac, self._in_shape(ln))
                if b is not None:
                    bias = bias + b
                    babs = babs + b.abs()
                outs = [An]
            elif ln.kind in ("add", "identity"):
                outs = [Ac] * len(ln.inputs)
            else:
                a = None if alpha is None else alpha.get(ln.name)
                An, b, bb = self._act_backward(ln, Ac, upper, a)
                bias, babs = bias + b, babs + bb
                outs = [An]
            for name, An in zip(ln.inputs, outs):
                pend[name] = An if name not in pend else pend[name] + An
        if A_in is None:
            val = torch.zeros((self.B, A.shape[1]), dtype=self.dtype, device=A.device)
            mag = val
        else:
            val, mag = self.set.concretize(A_in, lower=not upper)
        val = val + bias
        margin = 2 * self.fan * self.eps * (mag + babs).detach()
        val = val + margin if upper else val - margin
        return val.expand(self.B, -1) if val.shape[0] != self.B else val

    def crown_node(self, name: str, A0: torch.Tensor):
        """CROWN bounds of ``A0 . node(name)`` (``A0``: ``(1 or B, m, *shape)``), chunked over rows."""
        m = A0.shape[1]
        per_row = self.B * self.max_numel
        rows = max(1, self.chunk_elems // max(per_row, 1))
        lo, hi = [], []
        for s in range(0, m, rows):
            A = A0[:, s:s + rows]
            lo.append(self.backward(name, A, upper=False))
            hi.append(self.backward(name, A, upper=True))
        return torch.cat(lo, 1), torch.cat(hi, 1)

    # ------------------------------------------------------------------ forward sweep
    @staticmethod
    def _merge(ibp, crown, rows, intersect):
        """IBP bounds with the CROWN rows (flattened indices ``rows``) merged in."""
        (l, u), (cl, cu) = ibp, crown
        lf, uf = l.flatten(1).clone(), u.flatten(1).clone()
        if intersect:
            cl, cu = torch.maximum(lf[:, rows], cl), torch.minimum(uf[:, rows], cu)
        lf[:, rows], uf[:, rows] = cl, cu
        return lf.reshape(l.shape), uf.reshape(u.shape)

    def _rows(self, l, u, skip):
        """Rows that need CROWN: all, or (``skip``) those unstable (l < 0 < u) for some sample."""
        if not skip:
            return torch.arange(l[0].numel(), device=l.device)
        return ((l < 0) & (u > 0)).flatten(1).any(0).nonzero().squeeze(1)

    def _act_pre_bounds(self, ln: LNode, intermediate: str, intersect: bool):
        """Pre-activation bounds of act node ``ln`` (and CROWN bounds of its input node)."""
        dev = self.net.device
        x = ln.inputs[0]
        x_shape = self.by_name[x].shape
        if ln.name in self.fixed:  # assumed bounds (e.g. branch-and-bound splits): intersect, no CROWN
            fl, fu = self.fixed[ln.name]
            lx, ux = self.bounds[x]
            self.bounds[x] = (torch.maximum(lx, fl), torch.minimum(ux, fu))
            self.crowned.add(x)
            self.pre[ln.name] = self.bounds[x]
            return
        pl = pu = None
        if ln.pmap is not None:
            pl, pu = self._pre_ibp(ln)
        if intermediate != "ibp":
            lx, ux = self.bounds[x]
            n = _numel(x_shape)
            need_x = x not in self.crowned and x not in self.internal  # internal: not reported
            skip_x = self.skip_stable and ln.pmap is None and getattr(ln.phi, "piecewise_linear", False)
            rows_x = self._rows(lx, ux, skip_x) if need_x else torch.zeros(0, dtype=torch.long, device=dev)
            k = rows_x.numel()
            # the identity's rows e_i (i in rows_x) built one chunk at a time, never the whole identity
            # (28800 x 28800 for a CIFAR conv layer): same rows, same chunks as crown_node would cut
            step = max(1, self.chunk_elems // max(self.B * self.max_numel, 1))
            parts = []
            for s in range(0, k, step):
                r = rows_x[s:s + step]
                unit = torch.zeros(r.numel(), n, dtype=self.dtype, device=dev)
                unit[torch.arange(r.numel(), device=dev), r] = 1.0
                parts.append(self.crown_node(x, unit.reshape(1, -1, *x_shape)))
            if ln.pmap is not None:
                npre = _numel(ln.pmap.pre_shape)
                rows_p = self._rows(pl, pu, self.skip_stable)
                E = torch.eye(npre, dtype=self.dtype, device=dev)[rows_p].reshape(-1, *ln.pmap.pre_shape)
                if E.shape[0] > 0:
                    parts.append(self.crown_node(x, ln.pmap.Rt(E).unsqueeze(0)))
            if parts:
                clo, chi = torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1)
                if need_x:
                    self.bounds[x] = self._merge((lx, ux), (clo[:, :k], chi[:, :k]), rows_x, intersect)
                if ln.pmap is not None:
                    pl, pu = self._merge((pl, pu), (clo[:, k:], chi[:, k:]), rows_p, intersect)
            if need_x:
                self.crowned.add(x)
        self.pre[ln.name] = self.bounds[x] if ln.pmap is None else (pl, pu)

    def sweep(self, intermediate: str, intersect: bool = True):
        dev = self.net.device
        for ln in self.lnodes:
            if ln.kind == "input":
                lo, hi = self.set.box()
                self.bounds[ln.name] = (lo.to(self.dtype), hi.to(self.dtype))
                self.crowned.add(ln.name)
                continue
            if ln.kind == "act":
                self._act_pre_bounds(ln, intermediate, intersect)
            self.bounds[ln.name] = self._ibp_node(ln)


def _spec(C, B, out_shape, dtype, device):
    n_out = _numel(out_shape)
    if C is None:
        return torch.eye(n_out, dtype=dtype, device=device).reshape(1, n_out, *out_shape)
    C = torch.as_tensor(C, dtype=dtype, device=device)
    if C.dim() == 2:
        C = C.unsqueeze(0)
    if C.dim() < 3 or C.shape[0] not in (1, B) or _numel(C.shape[2:]) != n_out:
        raise ShapeMismatchError(
            f"C must have shape (B, m, {n_out}) (B = {B}) or (m, {n_out}), got {tuple(C.shape)}")
    if not torch.isfinite(C).all():
        raise InvalidArgumentError("C contains NaN or Inf")
    return C.reshape(C.shape[0], C.shape[1], *out_shape)


def compute_bounds(net: Network, input_set, method: str = "crown", C=None, *, alpha_iters: int = 20,
                   alpha_lr: float = 0.5, alpha_init: dict | None = None, intermediate_method: str | None = None,
                   dtype: torch.dtype | None = None, bound_lower: bool = True, bound_upper: bool = True,
                   chunk_elems: int = 2 ** 25, intersect_ibp: bool = True, skip_stable: bool = True,
                   fixed_preact: dict | None = None) -> BoundResult:
    """Sound bounds on ``C f(x)`` for all ``x`` in ``input_set`` (a :class:`Box` or :class:`Ball`).

    ``method``: ``"ibp"``, ``"crown"`` or ``"alpha-crown"``.  ``C``: ``(B, m, out_numel)`` (or
    ``(m, out_numel)`` shared by the batch); ``None`` = identity on the flattened output.
    ``intermediate_method``: how pre-activation bounds are computed (``"ibp"`` or ``"crown"``;
    default: ``"ibp"`` for IBP, ``"crown"`` otherwise).  ``dtype``: working dtype (default: the
    network's).  ``bound_lower``/``bound_upper``: skip one side of the final backward pass (that
    side is then IBP's).  ``intersect_ibp=False`` returns CROWN's own bounds (final and
    pre-activation) without intersecting them with IBP's (for testing CROWN alone).
    ``skip_stable``: CROWN pre-activation bounds are computed only for ReLU/LeakyReLU/sorting neurons
    that IBP finds unstable for some sample of the batch (their relaxation is exact otherwise); the
    other neurons keep their (sound, looser) IBP bounds in ``intermediate``.
    ``fixed_preact = {act_name: (lower, upper)}`` (each ``(B, *input shape of that activation)``, for
    ReLU/LeakyReLU/Tanh/Sigmoid nodes): assumed bounds on that activation's pre-activation, e.g.
    branch-and-bound splits (``lower = 0`` for an "active" split).  They are intersected with the IBP
    bounds and used instead of a CROWN pass for that node; every returned bound is then valid for the
    inputs of the set whose pre-activations satisfy them.  ``BoundResult.empty`` flags samples whose
    constraints are infeasible (some lower > upper): their bounds are vacuous.  alpha-CROWN: ``alpha_iters`` projected Adam steps with learning rate
    ``alpha_lr``, warm-started from ``alpha_init`` (a previous result's ``.alpha``).
    """
    if not isinstance(net, Network):
        raise InvalidArgumentError(f"net must be a models.Network, got {type(net).__name__}")
    key = str(method).strip().lower()
    if key not in METHODS:
        raise InvalidArgumentError(f"method {method!r} is not supported; use 'ibp', 'crown' or 'alpha-crown'")
    method = METHODS[key]
    inter = intermediate_method or ("ibp" if method == "ibp" else "crown")
    inter = METHODS.get(str(inter).lower(), None)
    if inter not in ("ibp", "crown"):
        raise InvalidArgumentError(f"intermediate_method {intermediate_method!r} must be 'ibp' or 'crown'")
    if int(alpha_iters) < 0 or not (alpha_lr > 0):
        raise InvalidArgumentError("alpha_iters must be >= 0 and alpha_lr > 0")
    dtype = dtype or net.dtype
    if dtype not in (torch.float32, torch.float64):
        raise InvalidArgumentError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    s = as_input_set(input_set)
    if s.shape != net.input_shape:
        raise ShapeMismatchError(f"input set has per-sample shape {s.shape}, network expects {net.input_shape}")
    s = s.to(dtype=dtype, device=net.device)
    if isinstance(s, Ball) and s.p == math.inf and s._clip is None:
        s = s.as_box()

    fixed = _check_fixed(net, fixed_preact, s.batch, dtype)
    with torch.no_grad():
        eng = _Engine(net, s, dtype, chunk_elems, skip_stable, fixed)
        eng.sweep(inter, intersect_ibp)
        out = eng.net.output
        out_shape = eng.by_name[out].shape
        Cs = _spec(C, eng.B, out_shape, dtype, net.device)
        ol, ou = eng.bounds[out]
        ibp_l, mag = box_support(Cs, ol, ou, lower=True)
        ibp_u, _ = box_support(Cs, ol, ou, lower=False)
        ibp_l = ibp_l - 2 * eng.fan * eng.eps * mag
        ibp_u = ibp_u + 2 * eng.fan * eng.eps * mag
        lo, hi = ibp_l, ibp_u
        if method != "ibp":
            if bound_lower:
                cl = eng.backward(out, Cs, upper=False)
                lo = torch.maximum(lo, cl) if intersect_ibp else cl
            if bound_upper:
                cu = eng.backward(out, Cs, upper=True)
                hi = torch.minimum(hi, cu) if intersect_ibp else cu
    alpha_out = None
    if method == "alpha-crown":
        lo, hi, alpha_out = _optimize_alpha(eng, out, Cs, lo, hi, int(alpha_iters), float(alpha_lr), alpha_init,
                                            bound_lower, bound_upper)
    lo, hi = _sanitize(lo.detach(), hi.detach())
    inter_b = {n.name: eng.bounds[n.name] for n in eng.net.nodes}
    empty = torch.zeros(eng.B, dtype=torch.bool, device=lo.device)
    for l_, u_ in list(eng.bounds.values()) + list(eng.pre.values()):
        empty |= (l_ > u_).flatten(1).any(1)
    return BoundResult(lo, hi, inter_b, method, alpha_out, dict(eng.pre), empty=empty)


def _check_fixed(net: Network, fixed, B, dtype):
    if not fixed:
        return {}
    out = {}
    for name, (fl, fu) in fixed.items():
        try:
            node = net[name]
        except KeyError:
            raise InvalidArgumentError(f"fixed_preact: the network has no node {name!r}") from None
        if node.op not in ("relu", "leaky_relu", "tanh", "sigmoid"):
            raise InvalidArgumentError(f"fixed_preact: node {node.describe()} is not an elementwise activation")
        shape = (B, *net[node.inputs[0]].shape)
        fl = torch.as_tensor(fl, dtype=dtype, device=net.device)
        fu = torch.as_tensor(fu, dtype=dtype, device=net.device)
        if tuple(fl.shape) != shape or tuple(fu.shape) != shape:
            raise ShapeMismatchError(f"fixed_preact[{name!r}]: bounds must have shape {shape}")
        if torch.isnan(fl).any() or torch.isnan(fu).any():
            raise InvalidArgumentError(f"fixed_preact[{name!r}]: bounds contain NaN")
        out[name] = (fl, fu)
    return out


def _optimize_alpha(eng: _Engine, out: str, Cs, lo, hi, iters, lr, alpha_init, do_lower, do_upper):
    m = Cs.shape[1]
    sides = [s for s, on in (("lower", do_lower), ("upper", do_upper)) if on]
    params: dict[str, dict[str, torch.Tensor]] = {s: {} for s in sides}
    ranges = {}
    for ln in eng.lnodes:
        if ln.kind != "act" or eng.index[ln.name] > eng.index[out]:
            continue
        l, u = eng.pre[ln.name]
        rng = ln.phi.alpha_bounds(l, u, ln.attrs)
        if rng is None or not ((l < 0) & (u > 0)).any():
            continue
        ranges[ln.name] = rng
        for s in sides:
            init = None
            if alpha_init is not None:
                init = alpha_init.get(s, {}).get(ln.name)
            shape = (eng.B, m, *l.shape[1:])
            if init is not None:
                init = torch.as_tensor(init, dtype=eng.dtype, device=l.device)
                if tuple(init.shape) != shape:
                    raise ShapeMismatchError(
                        f"alpha_init[{s!r}][{ln.name!r}] has shape {tuple(init.shape)}, expected {shape}")
                a = init.clone()
            else:
                a = ln.phi.default_alpha(l, u, ln.attrs).unsqueeze(1).expand(shape).clone()
            params[s][ln.name] = a.clamp(*rng).requires_grad_(True)
    flat = [p for s in sides for p in params[s].values()]
    best = {"lower": lo.clone(), "upper": hi.clone()}
    best_alpha = {s: {k: v.detach().clone() for k, v in params[s].items()} for s in sides}
    if not flat:
        return lo, hi, best_alpha
    opt = torch.optim.Adam(flat, lr=lr)
    for it in range(iters + 1):
        vals = {}
        for s in sides:
            vals[s] = eng.backward(out, Cs, upper=(s == "upper"), alpha=params[s])
        with torch.no_grad():
            for s in sides:
                v = vals[s].detach()
                better = v > best[s] if s == "lower" else v < best[s]
                best[s] = torch.where(better, v, best[s])
                for k, p in params[s].items():
                    mask = better.reshape(*better.shape, *([1] * (p.dim() - 2)))
                    best_alpha[s][k] = torch.where(mask, p.detach(), best_alpha[s][k])
        if it == iters:
            break
        loss = sum((-vals[s].sum() if s == "lower" else vals[s].sum()) for s in sides)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            for s in sides:
                for k, p in params[s].items():
                    p.clamp_(*ranges[k])
    return best["lower"], best["upper"], best_alpha
