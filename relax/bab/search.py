"""One branch-and-bound loop for every search of the toolkit (robustness, local Lipschitz, ...).

The search proves ``q(x) > threshold`` for all ``x`` of a root set, or finds a witness against it:

* a **domain** is a piece of the root set (an input box, an activation pattern, ...) carrying a
  certified lower bound ``key`` of ``q - threshold`` on it (see :mod:`.store`);
* a **branching policy** (:class:`BranchingPolicy`) splits a batch of domains into children that
  together cover their parents (``None`` for a domain it cannot split);
* a **bounding callback** ``bound(children) -> witness or None`` sets every child's ``key`` (a sound
  lower bound on the child; it may also prune by setting ``key = +inf`` for an infeasible child)
  and may return a *checked* witness (a point where the property fails), which ends the search.

Best-first: the ``batch`` domains with the smallest keys are popped, split and their children
bounded together (vectorized over domains); children with ``key > 0`` are closed.  Outcome:

* ``"proved"``: no open domain is left -- every piece has a certified bound ``> 0``;
* ``"witness"``: the callback returned a witness;
* ``"timeout"``: the time budget ran out; ``"unknown"``: the memory budget would be exceeded, a
  domain could not be split further, or ``max_domains`` was reached.

The anytime bound ``min(key)`` over open (and unsplittable) domains *and closed ones* is a certified
lower bound of ``q - threshold`` over the whole root set at every moment (children cover their
parents); it is reported through the ``progress`` callback after every batch and in
:class:`BaBOutcome` (when proved it is the smallest key of the closed domains, ``> 0``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from .store import DomainStore


class BranchingPolicy(Protocol):
    def split(self, domains: list) -> list:
        """For each domain, the list of its (unbounded) children, or ``None`` if it cannot be split."""


@dataclass
class BaBProgress:
    """Reported after every batch: what a progress bar draws."""
    domains_left: int
    best_bound: float       # certified lower bound of q - threshold over the root set (anytime)
    elapsed: float
    visited: int            # domains bounded so far (children included)
    batch: int              # domains popped in this batch


@dataclass
class BaBOutcome:
    status: str             # "proved" | "witness" | "timeout" | "unknown"
    best_bound: float       # certified anytime lower bound of q - threshold (> 0 when proved)
    visited: int
    elapsed: float
    reason: str = ""
    witness: Any = None
    open_domains: int = 0


def branch_and_bound(roots: list, policy: BranchingPolicy, bound: Callable[[list], Any], *, timeout: float,
                     batch: int = 64, memory_budget: float = 2e9, max_domains: int | None = None,
                     progress: Callable[[BaBProgress], None] | None = None,
                     between: Callable[[DomainStore], Any] | None = None, start: float | None = None) -> BaBOutcome:
    """Run the best-first search from ``roots`` (already bounded: their ``key`` is set).

    ``timeout``: seconds from ``start`` (default: now); each step pops at most the domains predicted (from
    the previous step's cost per domain) to be split and bounded before the deadline, and the search
    stops when not one is, so a run ends within the budget plus one step's misprediction.  ``batch``:
    domains popped per step (at most).
    ``memory_budget``: bytes the open domains may hold.  ``max_domains``: stop (``unknown``) after
    bounding this many.  ``between(store)``: called after every batch (e.g. an attack from the worst
    domains); a non-None return is a witness that ends the search.
    """
    t0 = time.monotonic() if start is None else start
    deadline = t0 + float(timeout)
    store = DomainStore(memory_budget)
    stuck: list = []  # open domains the policy cannot split: they keep the anytime bound down
    visited = len(roots)
    closed = [min([d.key for d in roots if d.key > 0], default=math.inf)]
    if not store.push([d for d in roots if not d.key > 0]):
        return BaBOutcome("unknown", min(d.key for d in roots), visited, time.monotonic() - t0,
                          "memory budget exceeded by the root domains", open_domains=len(roots))

    def best():
        return min([store.min_key(), closed[0]] + [d.key for d in stuck])

    def out(status, reason="", witness=None):
        return BaBOutcome(status, best(), visited, time.monotonic() - t0, reason, witness, len(store) + len(stuck))

    per_parent = None  # measured seconds per popped domain (split + bound + bookkeeping), last batch
    while len(store):
        now = time.monotonic()
        # the batch is sized to what is predicted to fit before the deadline (with a 20 % margin); when not
        # even one domain fits, stop now rather than overrun the budget by a whole batch
        fit = batch if per_parent is None else int((deadline - now) / (1.2 * per_parent))
        if now > deadline or fit < 1:
            return out("timeout", f"time budget of {timeout:g} s exhausted with {len(store) + len(stuck)} open domains")
        if max_domains is not None and visited >= max_domains:
            return out("unknown", f"domain limit {max_domains} reached")
        parents = store.pop(min(batch, fit))
        kids = policy.split(parents)
        children = []
        for p, ks in zip(parents, kids):
            if ks is None:
                stuck.append(p)
            else:
                children.extend(ks)
        if children:
            witness = bound(children)
            visited += len(children)
            if witness is not None:
                return out("witness", "counterexample found during the search", witness)
            open_kids = [c for c in children if not c.key > 0]
            closed[0] = min([closed[0]] + [c.key for c in children if c.key > 0])
            if not store.push(open_kids):
                store.push(parents)  # the parents' bounds stay valid: keep the anytime bound honest
                return out("unknown", f"memory budget of {memory_budget / 1e6:.0f} MB for open domains exceeded")
        per_parent = (time.monotonic() - now) / len(parents)
        if progress is not None:
            progress(BaBProgress(len(store) + len(stuck), best(), time.monotonic() - t0, visited, len(parents)))
        if between is not None and len(store):
            witness = between(store)
            if witness is not None:
                return out("witness", "counterexample found during the search", witness)
    if stuck:
        return out("unknown", f"{len(stuck)} open domains cannot be split further")
    return out("proved", "every domain closed")
