"""Shared building blocks of the local-Lipschitz bounds: certified rounding, the input box, seeds,
the dense/lifted chain, derivative ranges and the backward-graph bounds.

They live below every search (api.py, bab.py, bab_input.py, apex.py, exact.py import them from here),
so no module of relax.lipschitz needs to import the public entry points of api.py: the former import
circle api -> bab -> apex / bab_input -> api is gone.

Soundness: all bounding arithmetic runs in float64 on the network's device; the final certified
numbers are inflated by ``SAFETY_REL`` (relative) plus ``SAFETY_ABS`` (absolute) (see api.py).
"""

from __future__ import annotations

import math

import torch

from ....models.errors import InvalidArgumentError, ShapeMismatchError
from ....models.graph import Network

from .backward import MODES, BackwardGraph
from .chain import DenseChain, dense_chain, forward_bounds


SAFETY_REL = 1e-9
SAFETY_ABS = 1e-12


def certified(x: torch.Tensor) -> torch.Tensor:
    """Outward-rounded upper bound; NaN/Inf -> +inf (never certified)."""
    x = torch.as_tensor(x, dtype=torch.float64)
    out = x + x.abs() * SAFETY_REL + SAFETY_ABS
    return torch.where(torch.isfinite(out), out, torch.full_like(out, math.inf))


def certified_lower(x: torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(x, dtype=torch.float64)
    out = x - x.abs() * SAFETY_REL - SAFETY_ABS
    return torch.where(torch.isfinite(out), out, torch.full_like(out, -math.inf))


def input_box(net: Network, input_set) -> tuple[torch.Tensor, torch.Tensor]:
    """The region as a flat float64 box ``(n_0,), (n_0,)``.

    Accepts ``relax.sets.Box``/``Ball`` (a ball is replaced by its bounding box: bounds stay sound
    for the ball, and the attack samples the box), an object with ``lower``/``upper``, or a pair.
    """
    if hasattr(input_set, "box"):
        lo, hi = input_set.box()
    elif hasattr(input_set, "lower") and hasattr(input_set, "upper"):
        lo, hi = input_set.lower, input_set.upper
    elif isinstance(input_set, (tuple, list)) and len(input_set) == 2:
        lo, hi = input_set
    else:
        raise InvalidArgumentError("input_set must be a relax.sets.Box/Ball or a (lower, upper) pair")
    lo = torch.as_tensor(lo, dtype=torch.float64, device=net.device)
    hi = torch.as_tensor(hi, dtype=torch.float64, device=net.device)
    n0 = math.prod(net.input_shape)
    if lo.numel() == n0 * lo.shape[0] and lo.dim() == len(net.input_shape) + 1:
        if lo.shape[0] != 1:
            raise ShapeMismatchError(f"input_set holds {lo.shape[0]} boxes; local_lipschitz takes one region")
    lo, hi = lo.reshape(-1), hi.reshape(-1)
    if lo.numel() != n0 or hi.numel() != n0:
        raise ShapeMismatchError(f"input_set has {lo.numel()} coordinates, network {net.name!r} takes {n0}")
    if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()) or (lo > hi).any():
        raise InvalidArgumentError("input_set must be a finite, non-empty box (lower <= upper)")
    return lo, hi


def _seeds(chain: DenseChain, c) -> torch.Tensor:
    W = chain.weights[-1]
    if c is None:
        return torch.eye(chain.out_dim, dtype=W.dtype, device=W.device)
    c = torch.as_tensor(c, dtype=W.dtype, device=W.device)
    if c.dim() == 1:
        c = c[None]
    if c.dim() != 2 or c.shape[1] != chain.out_dim:
        raise ShapeMismatchError(f"c must have {chain.out_dim} entries per row (one per output), got {tuple(c.shape)}")
    if not torch.isfinite(c).all():
        raise InvalidArgumentError("c contains NaN or Inf")
    return c


def chain_of(net: Network) -> DenseChain:
    """The dense chain of a chain network, or the lifted chain (:mod:`.lifted`) of a residual
    piecewise-linear one (raises, naming the node, for anything else)."""
    if net.is_chain():
        return dense_chain(net)
    from .lifted import lifted_chain
    return lifted_chain(net)


def derivative_ranges(chain: DenseChain, fb, batch: int, fixed=None):
    out = []
    for k, gate in enumerate(chain.gates):
        zl, zu = fb[k]
        a, b = gate.derivative_range(zl, zu, None if fixed is None else fixed[k])
        out.append((a.expand(batch, -1), b.expand(batch, -1)))
    return out


def backward_bounds(chain: DenseChain, xl, xu, seeds, method="crown", forward="auto", refine: bool = False,
                    deadline: float | None = None):
    """Forward masks + backward-graph bounds for every seed row.  Returns (BackwardBounds, fb, forward_used).
    ``refine``: alpha-CROWN intermediate bounds also for ``forward="auto"``, until ``deadline``
    (:func:`.chain.forward_bounds`)."""
    if method not in MODES:
        raise InvalidArgumentError(f"method must be one of {MODES} (or 'naive'), got {method!r}")
    fb, used = forward_bounds(chain, xl[None], xu[None], forward, refine=refine, deadline=deadline)
    if forward != "ibp" and any(g.switch_matrix is not None for g in chain.gates):
        # MaxMin / GroupSort / Householder: bound the switches S z themselves by CROWN (the polytope pass
        # without splits) instead of by interval arithmetic on z, which forgets that z_a, z_b move together
        from .polytope import polytope_forward_bounds
        sb = [g.switch_bounds(l, u) for g, (l, u) in zip(chain.gates, fb)]
        sb, _ = polytope_forward_bounds(chain, xl, xu, sb, [torch.zeros(1, g.n_q, dtype=torch.int8, device=xl.device)
                                                            for g in chain.gates], iters=0)
        dr = [g.switch_derivative_range(l, u) for g, (l, u) in zip(chain.gates, sb)]
        dr = [(a.expand(seeds.shape[0], -1), b.expand(seeds.shape[0], -1)) for a, b in dr]
    else:
        dr = derivative_ranges(chain, fb, seeds.shape[0])
    bb = BackwardGraph(chain, seeds, dr, method).run()
    return bb, fb, used
