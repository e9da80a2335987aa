"""Clarke-Jacobian bounds of chain networks *without dense matrices* (convolutional networks).

:func:`.chain.dense_chain` turns every affine stage into a dense ``out x in`` matrix.  For a CNN on
CIFAR-shaped inputs that is ``28800 x 3072`` and ``25088 x 28800`` float64 entries (0.7 GB and 5.8 GB):
it does not fit.  This module bounds the same quantity with each affine op applied *as the op*
(a convolution as ``conv2d`` / its transpose), so memory is ``O(seeds x neurons)``:

* **Forward (interval arithmetic).**  For an affine op ``T(x) = M x + b`` and a box ``[l, u]`` with centre
  ``c`` and radius ``r``: ``T`` maps it into ``[M c + b - |M| r, M c + b + |M| r]``; ``|M| r`` is the op
  evaluated with ``|weight|`` (offset zeroed).  Monotone activations (ReLU, LeakyReLU) map
  ``[l, u]`` to ``[phi(l), phi(u)]``.
* **Backward graph (interval arithmetic).**  For the seed rows ``c_s`` the Clarke Jacobian satisfies
  ``c_s^T J(x) in { M_1^T D_1 M_2^T ... D_{L-1} M_L^T c_s : D_k = diag(d_k), d_k in [a_k, b_k] }`` with
  ``[a_k, b_k]`` the Clarke-derivative range of activation ``k`` over its pre-activation bounds (ReLU:
  ``[1, 1]`` stable on, ``[0, 0]`` stable off, ``[0, 1]`` unstable; LeakyReLU: ``s`` in place of 0).
  Interval arithmetic carries ``[g_l, g_u]`` backward: an affine op by ``M^T`` (the vector-Jacobian
  product of the op: ``conv_transpose2d`` for a convolution) on the centre and ``|M|^T`` on the
  radius, a derivative range by the interval product ``[a, b] * [g_l, g_u]`` (min / max of the four
  end products).  Every Clarke-Jacobian row lies in the final box, so ``sup ||c_s^T J||_q <=``
  ``||max(|g_l|, |g_u|)||_q`` (for the l_inf input norm, ``q = 1``).  This is the ``ibp`` method of
  :func:`.api.local_lipschitz` (same value as on the dense chain, up to rounding), not its CROWN.
* **Product of norms (global).**  ``||c_s^T J||_1 <= ||M_L^T c_s||_1 prod_k s_k ||M_k||_{inf->inf}``
  with ``||M||_{inf->inf} = max(|M| 1)`` (the op with ``|weight|`` on the all-ones input) and ``s_k`` the
  largest Clarke derivative (1 for ReLU / LeakyReLU with ``|slope| <= 1``).

Rounding: everything runs in float64; each affine step widens the radius by :func:`rounding_rel` (``1e-12``,
or ``4 (fan_in + 2) 2^-53`` for a fan-in above ~1100, e.g. 2.8e-12 for the 25088 inputs of a CIFAR CNN's
dense layer) times the magnitude ``|M| (|c| + r) + |b|``, which dominates the worst-case error ``gamma_n`` of a
float64 sum of ``n <= fan_in`` terms; each interval product rounds outward by ``1e-12`` relative, and the
final value goes through :func:`.bounds.certified`.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from ....models.errors import UnsupportedOperationError
from ....models.graph import AFFINE_OPS, Network
from ....models.ops import OPS

from ..norms import row_dual_upper
from ..result import LipschitzResult

IMPLICIT_ACTS = ("relu", "leaky_relu")
CROWN_CHUNK = 2 ** 23  # elements per back-substitution chunk of the engine's CROWN (~64 MB of float64)
REL = 1e-12  # relative rounding margin per step (see the module docstring)
_OFFSETS = ("bias", "shift")


def dense_bytes(net: Network) -> int:
    """Bytes :func:`.chain.dense_chain` would hold for ``net`` in float64 (its largest composed stage
    matrix counted twice: building it pushes an identity of the stage's input size through the ops)."""
    total, prev = 0, int(math.prod(net.input_shape))
    for n in net.nodes[1:]:
        out = int(math.prod(n.shape)) if n.shape else prev
        if n.op in AFFINE_OPS:
            total += 8 * (out * prev + prev * prev)  # the op's matrix and the identity pushed through it
        prev = out
    return total


def rounding_rel(net: Network) -> float:
    """Relative rounding margin of one affine step of ``net``: ``max(REL, 4 (fan_in + 2) 2^-53)`` with
    ``fan_in`` the largest number of terms of one output sum (a weight's row, or a pooling window), which
    dominates ``gamma_n = n u / (1 - n u)`` of a float64 sum of ``n`` terms (``REL`` alone covers n < ~1100)."""
    fan = 1
    for n in net.nodes[1:]:
        w = n.params.get("weight")
        if w is not None and w.dim() >= 2:
            fan = max(fan, int(math.prod(w.shape[1:])), int(w.shape[0]))
        elif n.op == "avgpool2d":
            k = n.attrs.get("kernel_size", (1, 1))
            fan = max(fan, int(math.prod(k)) if isinstance(k, (tuple, list)) else int(k) ** 2)
    return max(REL, 4 * (fan + 2) * 2.0 ** -53)


def _check(net: Network) -> None:
    if not net.is_chain():
        raise UnsupportedOperationError(
            f"network {net.name!r} has residual connections: the dense-free bounds take chain networks only")
    for n in net.nodes[1:]:
        if n.op not in AFFINE_OPS and n.op not in IMPLICIT_ACTS:
            raise UnsupportedOperationError(
                f"node {n.describe()}: dense-free Jacobian bounds support {', '.join(IMPLICIT_ACTS)} activations "
                f"and the affine ops {', '.join(AFFINE_OPS)} only")


def _linear_part(node, absolute: bool):
    """The node with its offset zeroed (and ``|weights|`` when ``absolute``)."""
    params = {}
    for k, v in node.params.items():
        if k in _OFFSETS:
            params[k] = torch.zeros_like(v)
        elif absolute and v.is_floating_point():
            params[k] = v.abs()
        else:
            params[k] = v
    return replace(node, params=params)


def _apply(node, x: torch.Tensor) -> torch.Tensor:
    return OPS[node.op].evaluate(node, x)


def _slopes(node) -> tuple[float, float]:
    """Clarke-derivative values (off, on) of a ReLU-type node."""
    return (float(node.attrs["negative_slope"]), 1.0) if node.op == "leaky_relu" else (0.0, 1.0)


def forward_intervals(net: Network, xl: torch.Tensor, xu: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Interval bounds (batch 1, node shape) of every node's output over the box ``[xl, xu]`` (flat, float64)."""
    shape = (1, *net.input_shape)
    lo, hi = xl.reshape(shape), xu.reshape(shape)
    out = {net.nodes[0].name: (lo, hi)}
    rel = rounding_rel(net)
    for n in net.nodes[1:]:
        if n.op in AFFINE_OPS:
            c, r = (lo + hi) / 2, (hi - lo) / 2
            yc = _apply(n, c)
            yr = _apply(_linear_part(n, True), r)
            mag = _apply(_linear_part(n, True), c.abs() + r) + (_apply(n, torch.zeros_like(c)).abs())
            yr = yr + rel * mag + 1e-300
            lo, hi = yc - yr, yc + yr
        else:
            s_off, _ = _slopes(n)
            lo, hi = torch.where(lo >= 0, lo, s_off * lo), torch.where(hi >= 0, hi, s_off * hi)
        out[n.name] = (lo, hi)
    return out


def _vjp(node, g: torch.Tensor, in_shape) -> torch.Tensor:
    """``M^T g`` for the linear part ``M`` of ``node`` (``g``: (S, *out_shape)) -> (S, *in_shape)."""
    x = torch.zeros((g.shape[0], *in_shape), dtype=g.dtype, device=g.device, requires_grad=True)
    with torch.enable_grad():
        y = _apply(node, x)
        (gx,) = torch.autograd.grad(y, x, grad_outputs=g)
    return gx


def _interval_mul(a, b, gl, gu):
    """``[a, b] * [gl, gu]`` element-wise (``a <= b``), rounded outward."""
    p = torch.stack((a * gl, a * gu, b * gl, b * gu))
    lo, hi = p.amin(0), p.amax(0)
    m = torch.maximum(lo.abs(), hi.abs())
    return lo - REL * m, hi + REL * m


def forward_bounds_implicit(net: Network, xl: torch.Tensor, xu: torch.Tensor, forward: str = "crown"):
    """Pre-activation bounds of every node (batch 1, node shape): interval arithmetic, intersected for
    ``forward="crown"`` with the bound engine's CROWN bounds (``relax.compute_bounds``, which applies
    convolutions as ops and chunks its back-substitution) of every activation's input."""
    fb = forward_intervals(net, xl, xu)
    if forward == "crown":
        from ....relax import Box, compute_bounds  # the forward bound engine (layer below relax.lipschitz)
        shape = (1, *net.input_shape)
        res = compute_bounds(net, Box(xl.reshape(shape), xu.reshape(shape)), "crown", dtype=torch.float64,
                             bound_lower=False, bound_upper=False, chunk_elems=CROWN_CHUNK)
        for n in net.nodes[1:]:
            if n.op in IMPLICIT_ACTS and n.inputs[0] in res.intermediate:
                l0, u0 = fb[n.inputs[0]]
                cl, cu = res.intermediate[n.inputs[0]]
                fb[n.inputs[0]] = (torch.maximum(l0, cl.reshape(l0.shape).to(l0)),
                                   torch.minimum(u0, cu.reshape(u0.shape).to(u0)))
    elif forward != "ibp":
        raise UnsupportedOperationError(f"forward={forward!r}: the dense-free bounds take 'ibp' or 'crown'")
    return fb


def jacobian_intervals(net: Network, xl: torch.Tensor, xu: torch.Tensor, seeds: torch.Tensor, forward: str = "ibp"):
    """Element-wise bounds ``(gl, gu)`` ``(S, n_0)`` of ``c_s^T J(x)`` over the box, every Clarke Jacobian included.

    ``net``: a float64 chain (affine ops and ReLU / LeakyReLU); ``seeds``: (S, n_out) float64;
    ``forward``: pre-activation bounds, :func:`forward_bounds_implicit`."""
    _check(net)
    fb = forward_bounds_implicit(net, xl, xu, forward)
    nodes = net.nodes
    shape_of = {nodes[0].name: tuple(net.input_shape)}
    for n in nodes[1:]:
        shape_of[n.name] = tuple(n.shape)
    S = seeds.shape[0]
    rel = rounding_rel(net)
    gl = gu = seeds.reshape(S, *shape_of[nodes[-1].name])
    for n in reversed(nodes[1:]):
        in_name = n.inputs[0]
        if n.op in AFFINE_OPS:
            c, r = (gl + gu) / 2, (gu - gl) / 2
            gc = _vjp(_linear_part(n, False), c, shape_of[in_name])
            absn = _linear_part(n, True)
            gr = _vjp(absn, r, shape_of[in_name])
            mag = _vjp(absn, c.abs() + r, shape_of[in_name])
            gr = gr + rel * mag + 1e-300
            gl, gu = gc - gr, gc + gr
        else:
            zl, zu = fb[in_name]
            s_off, s_on = _slopes(n)
            a = torch.where(zl >= 0, s_on, s_off).to(gl)  # derivative range [min(d), max(d)] on [zl, zu]
            b = torch.where(zu <= 0, s_off, s_on).to(gl)
            a, b = torch.minimum(a, b), torch.maximum(a, b)
            gl, gu = _interval_mul(a, b, gl, gu)
    return gl.reshape(S, -1), gu.reshape(S, -1)


def implicit_ibp_rows(net: Network, xl: torch.Tensor, xu: torch.Tensor, seeds: torch.Tensor, norm: str = "inf",
                      forward: str = "ibp"):
    """Per-row bounds (not yet certified) of ``sup ||c_s^T J||_q`` by :func:`jacobian_intervals`."""
    gl, gu = jacobian_intervals(net, xl, xu, seeds, forward)
    l1 = torch.maximum(gl.abs(), gu.abs()).sum(-1)
    return row_dual_upper(norm, gl, gu, l1)


def implicit_naive_rows(net: Network, seeds: torch.Tensor) -> torch.Tensor:
    """Product-of-norms bound (l_inf input) per seed: ``||M_L^T c_s||_1 * prod s_k ||M_k||_{inf->inf}``,
    ``M_L`` the composition of the affine ops after the last activation (not yet certified)."""
    _check(net)
    nodes = net.nodes
    shape_of = {nodes[0].name: tuple(net.input_shape)}
    for n in nodes[1:]:
        shape_of[n.name] = tuple(n.shape)
    S = seeds.shape[0]
    g = seeds.reshape(S, *shape_of[nodes[-1].name])
    i = len(nodes) - 1
    while i > 0 and nodes[i].op in AFFINE_OPS:  # the last affine block, exactly (its vjp on the seeds)
        g = _vjp(_linear_part(nodes[i], False), g, shape_of[nodes[i].inputs[0]])
        i -= 1
    rel = rounding_rel(net)
    value = g.reshape(S, -1).abs().sum(-1) * (1 + rel)
    blk = None
    for n in nodes[1:i + 1]:
        if n.op in AFFINE_OPS:  # ||M||_inf of the block's composition <= product over its ops
            ones = torch.ones((1, *shape_of[n.inputs[0]]), dtype=seeds.dtype, device=seeds.device)
            nrm = float(_apply(_linear_part(n, True), ones).max()) * (1 + rel)
            blk = nrm if blk is None else blk * nrm
        else:
            value = value * (blk if blk is not None else 1.0) * max(abs(v) for v in _slopes(n))
            blk = None
    return value


def implicit_lipschitz(net: Network, xl: torch.Tensor, xu: torch.Tensor, seeds: torch.Tensor, norm: str = "inf",
                       method: str = "ibp", operator: bool = False, forward: str = "crown") -> LipschitzResult:
    """Certified bound (``method`` "ibp" or "naive") on a chain net without dense matrices; ``upper`` is the max
    over the seed rows, or for ``operator`` the ``p -> p`` bound combined from them.  CROWN / RecurJac:
    :func:`.implicit_crown.implicit_crown_lipschitz`."""
    net = net.to(dtype=torch.float64)
    seeds = seeds.to(torch.float64)
    if method == "naive":
        if norm != "inf":
            raise UnsupportedOperationError("the dense-free product of norms supports the l_inf input norm only")
        rows = implicit_naive_rows(net, seeds)
    elif method == "ibp":
        rows = implicit_ibp_rows(net, xl.to(torch.float64), xu.to(torch.float64), seeds, norm, forward)
    else:
        raise UnsupportedOperationError(
            f"method={method!r} has no dense-free form for {net.name!r} (~{dense_bytes(net) / 1e9:.1f} GB of dense "
            "matrices); use method='crown', 'recurjac', 'ibp' or 'naive' (dense-free)")
    return implicit_result(rows, norm, method, operator, forward if method == "ibp" else "")


def implicit_result(rows: torch.Tensor, norm: str, method: str, operator: bool, forward: str,
                    stats: dict | None = None) -> LipschitzResult:
    """The certified result from per-seed row bounds (not yet certified): max over rows, or for ``operator``
    and ``norm != "inf"``: ``sqrt(sum rows^2)`` (l2) / ``sum rows`` (l1); labelled ``method + "-implicit"``."""
    from .common import certified
    rows_c = certified(rows)
    if operator and norm != "inf":
        up = float(certified(rows.pow(2).sum().sqrt())) if norm == "2" else float(certified(rows.sum()))
    else:
        up = float(rows_c.max())
    return LipschitzResult(up, 0.0, norm, method + "-implicit", per_output_upper=[float(v) for v in rows_c],
                           forward_method=forward, stats=dict(stats or {}))
