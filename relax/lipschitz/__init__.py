"""relax.lipschitz: local Lipschitz constants via Clarke-Jacobian bound propagation, with complete BaB.

Public API
----------
``local_lipschitz(net, input_set, norm="inf", c=None, method="crown", forward="auto", bab_timeout=0.0,
attack=True, attack_options=None, bab_options=None, sdp_solver="CLARABEL", bab="activation") -> LipschitzResult``
    certified upper bound (``.upper``, label "certified") and attack lower bound (``.lower``, label
    "attack" = estimate); ``method`` in "crown" | "recurjac" | "ibp" | "naive" | "lipsdp" (l2 only);
    ``bab_timeout > 0`` runs the complete branch-and-bound (piecewise-linear networks: ReLU, LeakyReLU,
    MaxMin, GroupSort, Householder; residual ones via :mod:`.bounds.lifted`; l_inf / l1 inputs; bias-free nets
    around 0 via :mod:`.search.apex`);
    ``bab="input"`` (or ``"auto"``) runs input-space branch-and-bound instead (every activation,
    residual nets, l_inf boxes and l2 / l1 balls; effective for few inputs).
``jacobian_bounds(net, input_set, c=None, method="crown") -> JacobianBounds``
    certified element-wise bounds of every Clarke Jacobian entry over the region.
``monotonicity(net, input_set, pairs=None, c=None) -> MonotonicityResult``
    certified sign of d f_i / d x_j (+1 increasing, -1 decreasing, 0 unknown).
``exact_local_lipschitz(net, input_set, c=None, norm="inf", time_limit=60.0) -> ExactResult``
    MILP oracle (HiGHS) for tiny ReLU chains.

Layout (by role; a module imports only its own role and the ones before it in this list)
------------------------------------------------------------------------------------------
``result``, ``norms``
    result types (certified upper bounds vs estimates) and the input norms, their dual norms on
    gradient rows and the operator norms: shared by every role, import nothing of the package.
``bounds/``
    certified upper bounds: gates (Clarke derivatives per activation), chain (dense view + forward
    interval bounds), lifted (residual piecewise-linear nets as a chain), relaxations (chords),
    backward (CROWN on the backward graph), polytope (forward bounds over a domain's input polytope),
    graph_jacobian (residual / general graph networks), implicit (dense-free, conv nets), naive
    (product of norms), lipsdp_local (l2 local LipSDP), common (certified rounding, seeds, input box).
``lower_bounds/``
    attack (gradient-norm maximization and sampling: estimates), exact (MILP oracle).
``search/``
    complete branch-and-bound on the shared loop of ``relax.bab``: bab (activation splitting), bab_input
    (input splitting), apex (shells around a bias-free net's apex), feasibility (LP domain / leaf checks),
    split_lp (joint LP bound of one domain).
``api``
    the public entry points above; ``__init__`` re-exports them.
"""

from .api import jacobian_bounds, local_lipschitz, monotonicity
from .lower_bounds.exact import ExactResult, exact_local_lipschitz
from .result import JacobianBounds, LipschitzResult, MonotonicityResult

__all__ = ["local_lipschitz", "jacobian_bounds", "monotonicity", "exact_local_lipschitz", "LipschitzResult",
           "JacobianBounds", "MonotonicityResult", "ExactResult"]
