"""relax.lipschitz.lower_bounds: values the local Lipschitz constant is at least (and the exact oracle).

Role: true gradient norms at points of the region -- **estimates** of the constant, never certificates
of an upper bound -- and the exact MILP value of tiny ReLU chains used as a reference.  Imports
:mod:`..bounds` (dense chain, backward graph, pre-activation bounds for the big-M constants); never
``..search`` or ``..api``.

Modules:

- ``attack``: gradient-norm maximization by sampling, vertices and smoothed projected ascent
  (autograd gradients at differentiable points only);
- ``exact``: LipMIP-style mixed-integer program (HiGHS) for the exact constant of small ReLU chains.
"""
