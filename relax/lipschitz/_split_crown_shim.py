"""SHIM (to be removed once the forward engine accepts per-domain split constraints / fixed
intermediate bounds): CROWN re-bounding of the *forward* graph of a dense ReLU/LeakyReLU chain
under branch-and-bound splits, batched over domains.

Why it exists: ``relax.compute_bounds`` bounds one input set per batch row but cannot take
"neuron i of layer k is >= 0 / <= 0" constraints or fixed intermediate bounds, and complete BaB
needs every split to tighten the other neurons' pre-activation bounds (interval arithmetic alone is
too weak on 16-32-32-10).  Request to the engine owner: ``compute_bounds(..., fixed_preact=
{act_name: (lower, upper)})`` (bounds replacing the engine's own for those activations, per batch row).

Math: for layer k, ``z_k = W_k a_{k-1} + b_k``; back-substitute ``[I; -I] z_k`` through the
relaxations ``alpha z <= phi(z) <= s_u z + t_u`` of earlier layers (bounds already clamped by the
splits: a split "on" neuron has ``l >= 0`` so ``phi(z) = z`` exactly, a split "off" neuron has
``u <= 0`` so ``phi(z) = slope_off * z``), then concretize over the input box.  Sound for every x
in the box that satisfies the splits (the relaxations are valid on the clamped intervals, which
contain every such x's pre-activations).  Results are intersected with the given bounds.
"""

from __future__ import annotations

import torch

from .chain import DenseChain, clamp_splits


def _relax(l, u, off_slope):
    """Upper chord (s_u, t_u) and adaptive lower slope of a ReLU/LeakyReLU on [l, u] (batch)."""
    on, off = l >= 0, u <= 0
    w = torch.where(on | off, torch.ones_like(u), u - l)
    s_u = (u - off_slope * l) / w
    t_u = l * (off_slope - s_u)
    s_u = torch.where(on, torch.ones_like(s_u), torch.where(off, off_slope.expand_as(s_u), s_u))
    t_u = torch.where(on | off, torch.zeros_like(t_u), t_u)
    s_l = torch.where(u > -l, torch.ones_like(u), off_slope.expand_as(u))
    s_l = torch.where(on, torch.ones_like(s_l), torch.where(off, off_slope.expand_as(s_l), s_l))
    return s_u, t_u, s_l


def split_crown_bounds(chain: DenseChain, xl, xu, fixed, fb):
    """Tighten ``fb`` (list of (l, u), each (D, n_k), already split-clamped) layer by layer."""
    D = fb[0][0].shape[0]
    xc, xr = (xl + xu) / 2, (xu - xl) / 2  # (D, n0)
    relax = []
    out = []
    for k, gate in enumerate(chain.gates):
        W, b = chain.weights[k], chain.biases[k]
        n = W.shape[0]
        if k == 0:
            out.append(fb[0])
        else:
            Lam = torch.cat((W, -W), 0).expand(D, 2 * n, W.shape[1])  # coefficients on a_{k-1}
            bias = (torch.cat((b, -b)))[None].expand(D, 2 * n).clone()
            for j in range(k - 1, -1, -1):
                s_u, t_u, s_l = relax[j]
                Lp, Ln = Lam.clamp(min=0), Lam.clamp(max=0)
                bias = bias + (Lp * t_u[:, None, :]).sum(-1)
                Lz = Lp * s_u[:, None, :] + Ln * s_l[:, None, :]  # coefficients on z_j
                bias = bias + Lz @ chain.biases[j]
                Lam = Lz @ chain.weights[j]
            up = torch.einsum("dmi,di->dm", Lam, xc) + torch.einsum("dmi,di->dm", Lam.abs(), xr) + bias
            up = up + 1e-12 * (1 + up.abs())  # rounding margin (float64)
            l0, u0 = fb[k]
            l, u = torch.maximum(l0, -up[:, n:]), torch.minimum(u0, up[:, :n])
            l, u = clamp_splits(gate, l, u, fixed[k])
            out.append((l, u))
        l, u = out[k]
        relax.append(_relax(l, torch.maximum(u, l), gate.d_off))
    return out
