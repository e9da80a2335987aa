"""Plain Adam (Kingma & Ba) for the few slope / multiplier tensors of alpha- and beta-CROWN.

Not ``torch.optim.Adam``: its first use costs about a second of imports, and the bounding passes need
nothing but the update ``p <- p - lr * m_hat / (sqrt(v_hat) + eps)`` on tensors with their own
learning rates.  Soundness never rests on it: every iterate is re-evaluated as a certified bound.
"""

from __future__ import annotations

import torch


class Adam:
    """Adam on ``params``, a list of ``(tensor, lr)`` pairs; :meth:`step` takes the gradients of a loss to
    minimize, in the same order (``None`` for a tensor the loss does not reach: it is left as it is)."""

    def __init__(self, params, b1=0.9, b2=0.999, eps=1e-8):
        self.params = params
        self.m = [torch.zeros_like(p) for p, _ in params]
        self.v = [torch.zeros_like(p) for p, _ in params]
        self.b1, self.b2, self.eps, self.t = b1, b2, eps, 0

    @torch.no_grad()
    def step(self, grads):
        self.t += 1
        c1, c2 = 1 - self.b1 ** self.t, 1 - self.b2 ** self.t
        for (p, lr), g, m, v in zip(self.params, grads, self.m, self.v):
            if g is None:
                continue
            m.mul_(self.b1).add_(g, alpha=1 - self.b1)
            v.mul_(self.b2).addcmul_(g, g, value=1 - self.b2)
            p.addcdiv_(m, (v / c2).sqrt_().add_(self.eps), value=-lr / c1)
