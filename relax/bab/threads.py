"""Choosing torch's intra-op thread count during a search from measured throughput.

A branch-and-bound bounds many batches of domains.  Whether intra-op threads pay depends on the tensor sizes
and on what else runs on the machine, and it can change during a run:

* on an idle 2-core machine the Lipschitz BaB of random 16-64-64-10 bounds ~1.7x more domains per second
  with 2 threads than with 1 (with the gradient-sign search: larger tensors per domain);
* with a second busy process on the same 2 cores, 2 threads bound ~10x *fewer* domains per second than 1
  (the threads of one op wait for each other while the other process holds a core).

:class:`ThreadTuner` keeps an exponential moving average of the seconds per work unit for each candidate
thread count, measured on the search's own batches, and uses the fastest; every ``probe_every`` seconds one
(smaller) batch is run with another candidate, so a change of load is noticed.  Thread counts only change
speed, never results: the bounds are the same (up to floating-point summation order, which every bound in
the package covers by its rounding margin).
"""

from __future__ import annotations

import time

import torch


class ThreadTuner:
    """Pick the faster of 1 and ``max_threads`` intra-op threads from measured seconds per work unit.

    Use: ``t = tuner.choose()`` before a batch (sets torch's thread count; returns it), then
    ``tuner.record(t, units, seconds)``; :attr:`probing` says whether the batch about to run is a probe, and
    :attr:`cautious` whether it is a probe of a count never measured or last measured > 2x slower (the caller
    should make that batch small: it may be ~10x slower; other probes run full-size, since smaller batches
    cost more per unit and would bias the comparison).  ``restore()`` sets the thread count found at
    construction.
    """

    def __init__(self, max_threads: int | None = None, probe_every: float = 3.0, smoothing: float = 0.5):
        self.initial = torch.get_num_threads()
        top = self.initial if max_threads is None else int(max_threads)
        self.options = [1] if top <= 1 else [1, top]
        self.rate: dict[int, float | None] = {t: None for t in self.options}
        self.probe_every, self.smoothing = float(probe_every), float(smoothing)
        self.current = 1
        self.probing = self.cautious = False
        self._last_probe = time.perf_counter()
        self.switches = 0

    def best(self) -> int:
        known = [t for t in self.options if self.rate[t] is not None]
        return min(known, key=lambda t: self.rate[t]) if known else 1

    def choose(self) -> int:
        """The thread count for the next batch (set in torch): an unmeasured candidate first (after one
        measured batch), a probe of the other candidate every ``probe_every`` seconds, else the fastest."""
        best = self.best()
        t = best
        self.probing = self.cautious = False
        if len(self.options) > 1:
            other = [o for o in self.options if o != best][0]
            now = time.perf_counter()
            if self.rate[best] is not None and (self.rate[other] is None or now - self._last_probe >= self.probe_every):
                t, self.probing, self._last_probe = other, True, now
                self.cautious = self.rate[other] is None or self.rate[other] > 2 * self.rate[best]
        if t != self.current:
            self.switches += 1
        self.current = t
        torch.set_num_threads(t)
        return t

    def record(self, threads: int, units: int, seconds: float) -> None:
        if units <= 0 or threads not in self.rate:
            return
        r = seconds / units
        old = self.rate[threads]
        self.rate[threads] = r if old is None else self.smoothing * old + (1 - self.smoothing) * r

    def summary(self) -> dict:
        return {"threads": self.best(), "options": self.options, "switches": self.switches,
                "sec_per_unit": {t: v for t, v in self.rate.items()}}

    def restore(self) -> None:
        torch.set_num_threads(self.initial)
