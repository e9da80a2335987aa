"""Optional cross-check of relax/ bounds against auto_LiRPA (only when a modern version imports).

auto_LiRPA is not a dependency: the PyPI release (0.3) does not import with torch 2.x and newer
versions are not on PyPI.  When ``import auto_LiRPA`` works (e.g. a source checkout on PYTHONPATH),
:func:`cross_check` bounds the same network (its ``to_module()`` view) on the same l_inf box with
auto_LiRPA and compares.  Both are sound, so neither side's lower bound may exceed the other side's
*sampled* value; the comparison reports the widths (CROWN implementations normally agree to
rounding on ReLU networks).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.errors import UnsupportedOperationError
from ..models.graph import Network

from .engine import compute_bounds
from .sets import Box

_METHOD = {"ibp": "IBP", "crown": "CROWN", "alpha-crown": "CROWN-Optimized"}


def available() -> bool:
    """True when a usable auto_LiRPA can be imported."""
    try:
        import auto_LiRPA  # noqa: F401
        from auto_LiRPA import BoundedModule, BoundedTensor  # noqa: F401
        from auto_LiRPA.perturbations import PerturbationLpNorm  # noqa: F401
    except Exception:
        return False
    return True


@dataclass
class CrossCheck:
    ours_lower: torch.Tensor
    ours_upper: torch.Tensor
    lirpa_lower: torch.Tensor
    lirpa_upper: torch.Tensor

    @property
    def max_abs_diff(self) -> float:
        return float(torch.maximum((self.ours_lower - self.lirpa_lower).abs(),
                                   (self.ours_upper - self.lirpa_upper).abs()).max())


def cross_check(net: Network, lower: torch.Tensor, upper: torch.Tensor, method: str = "crown", C=None) -> CrossCheck:
    """Bounds of ``C f(x)`` over the box ``[lower, upper]`` from relax/ and from auto_LiRPA."""
    if not available():
        raise UnsupportedOperationError("auto_LiRPA is not importable (optional cross-check only)")
    from auto_LiRPA import BoundedModule, BoundedTensor
    from auto_LiRPA.perturbations import PerturbationLpNorm

    ours = compute_bounds(net, Box(lower, upper), method=method, C=C, intersect_ibp=False, skip_stable=False)
    module = net.to_module().eval()
    center = (lower + upper) / 2
    bm = BoundedModule(module, torch.zeros_like(center[:1]), device=str(center.device))
    ptb = PerturbationLpNorm(norm=float("inf"), x_L=lower, x_U=upper)
    x = BoundedTensor(center, ptb)
    Ct = None
    if C is not None:
        Ct = torch.as_tensor(C, dtype=center.dtype, device=center.device)
        if Ct.dim() == 2:
            Ct = Ct.unsqueeze(0).expand(center.shape[0], *Ct.shape)
    lb, ub = bm.compute_bounds(x=(x,), C=Ct, method=_METHOD[ours.method])
    return CrossCheck(ours.lower, ours.upper, lb.detach(), ub.detach())
