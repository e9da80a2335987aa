"""Choosing torch's intra-op thread count during a search from measured throughput.

A branch-and-bound bounds many batches of domains.  Whether intra-op threads pay depends on the tensor sizes
and on what else runs on the machine, and it can change during a run:

* on an idle 2-core machine the Lipschitz BaB of random 16-64-64-10 bounds ~1.7x more domains per second
  with 2 threads than with 1 (with the gradient-sign search: larger tensors per domain);
* with a second busy process on the same 2 cores, 2 threads bound ~10x *fewer* domains per second than 1
  (the threads of one op wait for each other while the other process holds a core).

:class:`ThreadTuner` compares the two candidate thread counts on the search's own batches: every
``probe_every`` seconds (and at most ~10% of the time) one batch runs with the other count and its seconds per
work unit are compared with the batch just before it; the faster count is used, and a change of load is
noticed at the next probe.  Thread counts only change
speed, never results: the bounds are the same (up to floating-point summation order, which every bound in
the package covers by its rounding margin).
"""

from __future__ import annotations

import math
import time

import torch


class ThreadTuner:
    """Pick the faster of 1 and ``max_threads`` intra-op threads from *paired* throughput measurements.

    The cost per work unit drifts during a search (deeper domains cost more), so rates measured at different
    times are not comparable.  Every probe batch (run with the other count) is compared with the batch just
    before it (run with the current count): ``log(rate_probe / rate_before)`` updates an exponential moving
    average of the log speed ratio of the two counts, whose sign decides the count.

    Use: ``t = tuner.choose()`` before a batch (sets torch's thread count; returns it), then
    ``tuner.record(t, units, seconds)``; :attr:`probing` says whether the batch about to run is a probe, and
    :attr:`cautious` whether it is a probe of a count never measured or measured > 2x slower (the caller
    should make that batch small: it may be ~10x slower; other probes run full-size, since smaller batches
    cost more per unit and would bias the comparison).  The caller restores its own thread count afterwards.
    """

    def __init__(self, max_threads: int | None = None, probe_every: float = 3.0, smoothing: float = 0.5):
        top = torch.get_num_threads() if max_threads is None else int(max_threads)
        self.options = [1] if top <= 1 else [1, top]
        self.probe_every, self.smoothing = float(probe_every), float(smoothing)
        self.current = self._best = 1
        self.log_ratio: float | None = None  # EMA of log(rate of the other count / rate of the best count)
        self._last_rate: float | None = None  # seconds per unit of the last batch run with the best count
        self.probing = self.cautious = False
        self._last_probe = time.perf_counter()
        self._probe_cost = 0.0  # seconds of the last probe batch
        self.switches = self.probes = 0

    def best(self) -> int:
        return self._best

    def _other(self) -> int:
        return [o for o in self.options if o != self._best][0]

    def choose(self) -> int:
        """The thread count for the next batch (set in torch): a probe of the other count after the first
        measured batch and then every ``max(probe_every, 9 x last probe's duration)`` seconds (probes take at
        most ~10% of the time), else the best count."""
        t = self._best
        self.probing = self.cautious = False
        if len(self.options) > 1 and self._last_rate is not None:
            now = time.perf_counter()
            if self.log_ratio is None or now - self._last_probe >= max(self.probe_every, 9.0 * self._probe_cost):
                t, self.probing, self._last_probe = self._other(), True, now
                self.cautious = self.log_ratio is None or self.log_ratio > math.log(2.0)
        if t != self.current:
            self.switches += 1
        self.current = t
        torch.set_num_threads(t)
        return t

    def record(self, threads: int, units: int, seconds: float) -> None:
        if units <= 0 or threads not in self.options:
            return
        r = max(seconds, 1e-9) / units
        if not self.probing or threads == self._best:
            if threads == self._best:
                self._last_rate = r
            return
        self.probes += 1
        self._probe_cost = seconds
        q = math.log(r / self._last_rate)  # > 0: the probed count is slower than the best one
        self.log_ratio = q if self.log_ratio is None else self.smoothing * self.log_ratio + (1 - self.smoothing) * q
        if self.log_ratio < 0:  # the probed count is faster: it becomes the best, the ratio flips
            self._best, self.log_ratio, self._last_rate = threads, -self.log_ratio, r

    def summary(self) -> dict:
        ratio = None if self.log_ratio is None else math.exp(self.log_ratio)
        return {"threads": self._best, "options": self.options, "switches": self.switches, "probes": self.probes,
                "other_slower_by": ratio}
