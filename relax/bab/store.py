"""The domain store of branch-and-bound: open domains ordered by their bound, with a memory budget.

A domain is any object with a float attribute ``key`` (the certified bound of the quantity the
search must prove positive on it -- smaller = more urgent, popped first) and an ``nbytes`` attribute
(an estimate of the memory it holds).  The store is a binary heap keyed by ``key`` (ties by insertion
order), so :meth:`pop` returns the ``k`` worst domains: best-first search on the bound, which makes
the anytime bound ``min key over open domains`` rise as fast as possible.  When the memory held would
exceed ``memory_budget`` bytes, :meth:`push` first *spills*: every held domain that has a ``shed()``
method is asked to drop what it does not need for soundness (e.g. optimizer warm starts; ``shed()``
returns the bytes freed), and only if the domains still do not fit does it refuse (returns False):
the search then ends with ``unknown`` instead of growing without limit.
"""

from __future__ import annotations

import heapq
import itertools
import math


class DomainStore:
    """Open domains, popped in batches by ascending ``key``; memory accounted from ``domain.nbytes``."""

    def __init__(self, memory_budget: float = 2e9):
        if not (memory_budget > 0):
            raise ValueError(f"memory_budget must be > 0 bytes, got {memory_budget!r}")
        self.memory_budget = float(memory_budget)
        self._heap: list = []
        self._tie = itertools.count()
        self.nbytes = 0
        self.pushed = 0
        self.spilled = 0  # bytes freed by spilling so far

    def __len__(self) -> int:
        return len(self._heap)

    def fits(self, domains) -> bool:
        """Whether ``domains`` can be added without exceeding the memory budget."""
        return self.nbytes + sum(int(getattr(d, "nbytes", 0)) for d in domains) <= self.memory_budget

    def push(self, domains) -> bool:
        """Add ``domains`` (all or none); False (nothing added) when the budget would be exceeded even
        after spilling (:meth:`spill`)."""
        domains = list(domains)
        if not self.fits(domains):
            self.spill()
            for d in domains:
                if hasattr(d, "shed"):
                    self.spilled += int(d.shed())
            if not self.fits(domains):
                return False
        for d in domains:
            k = float(d.key)
            heapq.heappush(self._heap, (k if not math.isnan(k) else -math.inf, next(self._tie), d))
            self.nbytes += int(getattr(d, "nbytes", 0))
        self.pushed += len(domains)
        return True

    def spill(self) -> int:
        """Ask every held domain with a ``shed()`` method to drop its optional data; bytes freed."""
        freed = 0
        for _, _, d in self._heap:
            if hasattr(d, "shed"):
                freed += int(d.shed())
        self.nbytes -= freed
        self.spilled += freed
        return freed

    def pop(self, k: int) -> list:
        """The (at most) ``k`` domains with the smallest keys, removed from the store."""
        out = []
        while self._heap and len(out) < k:
            _, _, d = heapq.heappop(self._heap)
            self.nbytes -= int(getattr(d, "nbytes", 0))
            out.append(d)
        return out

    def min_key(self) -> float:
        """The smallest key held (``+inf`` when empty): the anytime bound over the open domains."""
        return self._heap[0][0] if self._heap else math.inf

    def domains(self):
        return [d for _, _, d in self._heap]
