"""One thread for torch and for BLAS / LAPACK while a block of small dense linear algebra runs.

Measured on the shared 2-core machine under load (about 12 runnable processes): the SVDs of the zoo CNN's
256 x 512 matrix took 13 s with torch's two threads (which wait on each other) and a fraction of a second
with one; the product of norms of the same network 10 s vs 0.16 s.  The matrices of this package's SDP
setup, verification and norm products are at most a few thousand wide, where a second thread gains little
even on an idle machine.  Restores the previous settings on exit (also on an exception).
"""

from __future__ import annotations


class single_thread:
    def __enter__(self):
        import torch
        self._n = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            from threadpoolctl import threadpool_limits
            self._blas = threadpool_limits(limits=1)
        except ImportError:  # pragma: no cover - threadpoolctl is a dependency
            self._blas = None
        return self

    def __exit__(self, *exc):
        import torch
        if self._blas is not None:
            self._blas.restore_original_limits()
        torch.set_num_threads(self._n)
        return False
