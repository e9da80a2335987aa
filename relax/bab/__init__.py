"""nncertify.relax.bab: one branch-and-bound framework and the searches built on it.

* :mod:`.store` -- the domain store (best-first heap, memory budget);
* :mod:`.search` -- the search loop (:func:`branch_and_bound`: branching policy + bounding callback,
  time/memory budgets, anytime bound, progress callback);
* :mod:`.beta_crown` -- β-CROWN bounds on activation-split domains and BaBSR branching;
* :mod:`.box_crown` -- CROWN of affine-ReLU chains over a batch of input boxes (the bounding of input splitting);
* :mod:`.refine` -- refined intermediate bounds before activation-split BaB (per-neuron β-CROWN BaB, anytime, sound);
* :mod:`.input_split` -- input-space branching (low-dimensional inputs): box chunks on chains, or the generic engine;
* :mod:`.attack` -- counterexample search (PGD with restarts) and its float64 re-check.
"""

from .search import BaBOutcome, BaBProgress, BranchingPolicy, branch_and_bound
from .store import DomainStore

__all__ = ["branch_and_bound", "BaBOutcome", "BaBProgress", "BranchingPolicy", "DomainStore"]
