"""relax.lipschitz.search: complete branch-and-bound searches for the local Lipschitz constant.

Role: refine the bounds of :mod:`..bounds` by splitting the region (on the shared loop
:func:`relax.bab.search.branch_and_bound`) until the certified upper bound meets a lower bound.  Every
search keeps an anytime *certified* upper bound (its open and closed domains cover the region).
Imports :mod:`..bounds`, :mod:`..lower_bounds` (attained gradients at witness points), ``relax.bab``;
never ``..api``.

Modules:

- ``bab``: activation-splitting branch-and-bound (ReLU / LeakyReLU / switch gates; lifted residual nets);
- ``bab_input``: input-space branch-and-bound over sub-boxes (every activation, balls, residual nets);
- ``apex``: shells of a box around the apex of a bias-free (positively homogeneous) network;
- ``feasibility``: LP feasibility of domains (pruning) and exact leaf checks with an interior point;
- ``split_lp``: joint LP bound of one domain (a per-domain oracle, not used by default).
"""
