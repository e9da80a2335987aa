"""relax.lipschitz: local Lipschitz constants via Clarke-Jacobian bound propagation, with complete BaB.

Public API
----------
``local_lipschitz(net, input_set, norm="inf", c=None, method="crown", forward="auto", bab_timeout=0.0,
attack=True, attack_options=None, bab_options=None, sdp_solver="CLARABEL", bab="activation") -> LipschitzResult``
    certified upper bound (``.upper``, label "certified") and attack lower bound (``.lower``, label
    "attack" = estimate); ``method`` in "crown" | "recurjac" | "ibp" | "naive" | "lipsdp" (l2 only);
    ``bab_timeout > 0`` runs the complete branch-and-bound (piecewise-linear networks: ReLU, LeakyReLU,
    MaxMin, GroupSort, Householder; residual ones via :mod:`.lifted`; l_inf / l1 inputs; bias-free nets
    around 0 via :mod:`.apex`);
    ``bab="input"`` (or ``"auto"``) runs input-space branch-and-bound instead (every activation,
    residual nets, l_inf boxes and l2 / l1 balls; effective for few inputs).
``jacobian_bounds(net, input_set, c=None, method="crown") -> JacobianBounds``
    certified element-wise bounds of every Clarke Jacobian entry over the region.
``monotonicity(net, input_set, pairs=None, c=None) -> MonotonicityResult``
    certified sign of d f_i / d x_j (+1 increasing, -1 decreasing, 0 unknown).
``exact_local_lipschitz(net, input_set, c=None, norm="inf", time_limit=60.0) -> ExactResult``
    MILP oracle (HiGHS) for tiny ReLU chains.

Modules: gates (Clarke derivatives per activation), chain (dense view + forward interval bounds),
relaxations (chords), backward (CROWN on the backward graph), norms, attack, naive, bab, polytope
(domain bounds over the input polytope), apex (shells of a box around a bias-free net's apex), lifted
(residual piecewise-linear nets as a chain), feasibility (LPs), exact (MILP), lipsdp_local (l2 local LipSDP), bab_input (input-space BaB),
graph_jacobian (Clarke-Jacobian bounds of residual / general graph networks).
"""

from .api import jacobian_bounds, local_lipschitz, monotonicity
from .lower_bounds.exact import ExactResult, exact_local_lipschitz
from .result import JacobianBounds, LipschitzResult, MonotonicityResult

__all__ = ["local_lipschitz", "jacobian_bounds", "monotonicity", "exact_local_lipschitz", "LipschitzResult",
           "JacobianBounds", "MonotonicityResult", "ExactResult"]
