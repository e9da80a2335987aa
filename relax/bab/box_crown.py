"""CROWN bounds of affine-ReLU chains over a batch of input boxes: the bounding step of input splitting.

The network ``f(x) = W_L relu(... relu(W_1 x + b_1) ...) + b_L`` (every affine node between two ReLUs
composed into one dense ``W_k``, ``b_k`` in float64; a specification ``C f(x) - d`` folded into the last
layer) is bounded over ``N`` boxes ``[lo_n, hi_n]`` at once; every tensor carries the box index as its
leading dimension, so one call is a handful of batched matrix products whatever ``N`` is.

Math
----
* Layer 1: ``z_1 = W_1 x + b_1`` has the exact interval ``W_1 c + b_1 -+ |W_1| r`` (``c``/``r``: box centre/radius).
* Later pre-activations (``intermediate="backward"``, CROWN): the bound of ``a . z_k`` starts from
  ``A = a W_k`` on ``relu(z_{k-1})`` and walks back; at ReLU ``j`` with bounds ``l < 0 < u`` the lower
  bound uses ``relu(z) >= alpha z`` (``alpha = 1`` if ``u >= -l`` else 0) where ``A_j >= 0`` and the chord
  ``relu(z) <= u (z - l) / (u - l)`` where ``A_j < 0``; stable neurons are exact (slope 1 or 0).  At the input
  ``min_box A x = A c - |A| r``.  Upper bounds are ``-`` the lower bounds of ``-a``.
* ``intermediate="forward"`` (symbolic intervals, cheaper: ``n_in + 1`` columns instead of ``n_k`` rows):
  linear functions ``L_k(x) <= z_k <= U_k(x)`` are pushed forward -- ``relu(z) >= alpha L(x)``,
  ``relu(z) <= s (U(x) - l)`` with ``s = u/(u - l)``, then ``L_{k+1} = W^+ L + W^- U + b`` -- and concretised
  on the box.  Looser than backward CROWN, about ``n_k / (n_in + 1)`` times cheaper.
* The final rows ``C f - d`` are always bounded by the backward pass (few rows), on the intermediate
  bounds of either mode; their coefficient on the input, ``A (N, m, n_in)``, is returned for branching.
* alpha-CROWN (:meth:`BoxCrown.alpha_bound`, :meth:`BoxCrown.refine_intermediate`): the lower slopes of the
  unstable ReLUs are free in ``[0, 1]`` (every choice is a valid relaxation) and optimized per box by Adam,
  for the final rows (intermediate bounds fixed) or for the intermediate bounds themselves, layer by layer.

Guarantee and floating point
----------------------------
Every returned row bound is a lower bound of ``C_k f(x) - d_k`` over the whole box, for the real-arithmetic
network.  Rounding: each concretised value is widened by ``gamma * magnitude`` with
``gamma = 2 (fan_in + 2) L eps`` (``L`` layers; ``magnitude``: the sum of the absolute values of the terms
summed), the forward functions absorb their own rounding into the constant term after every layer, and
the layer-1 interval likewise; the same standard worst-case dot-product model as relax/engine.py, with an
extra factor ``L`` for the chain.  Non-finite bounds become ``-inf`` (never a certified value).  Use the
generic engine (relax/engine.py) for anything that is not an affine-ReLU chain: :meth:`AffineReluChain.from_network`
returns ``None`` then.
"""

from __future__ import annotations

import math
import time

import torch

from ...models.graph import AFFINE_OPS, Network, chain_stages
from .adam import Adam


class AffineReluChain:
    """Dense layers ``(W_k, b_k)`` (float64) of an affine-ReLU chain ``f = W_L relu(...) + b_L``."""

    def __init__(self, weights: list[torch.Tensor], biases: list[torch.Tensor]):
        self.W = [w.to(torch.float64) for w in weights]
        self.b = [b.to(torch.float64) for b in biases]
        self.n_in = self.W[0].shape[1]

    @staticmethod
    def from_network(net: Network) -> "AffineReluChain | None":
        """The chain of ``net`` (models.graph.chain_stages on its float64 copy: consecutive affine nodes
        composed into one dense map), or ``None`` when ``net`` is not a chain of affine nodes and ReLUs."""
        if not net.is_chain() or net.output != net.nodes[-1].name:
            return None
        if any(n.op not in AFFINE_OPS and n.op != "relu" for n in net.nodes[1:]):
            return None
        stages = chain_stages(net.to(dtype=torch.float64))
        Ws = [st.W for st in stages if st.kind == "affine"]
        bs = [st.b for st in stages if st.kind == "affine"]
        return AffineReluChain(Ws, bs)

    @property
    def depth(self) -> int:
        return len(self.W)


def _relu_lines(l, u):
    """Per neuron: lower slope ``aL`` (intercept 0) and upper line ``aU z + bU`` of ReLU on ``[l, u]``."""
    unstable = (l < 0) & (u > 0)
    active = (l >= 0).to(l.dtype)
    den = torch.where(unstable, u - l, torch.ones_like(u))
    aU = torch.where(unstable, u / den, active)
    # the chord through (l, 0) and (u, u); of the two rounded intercepts the larger, as relax/activations.py
    bU = torch.where(unstable, torch.maximum(-aU * l, u - aU * u), torch.zeros_like(l))
    aL = torch.where(unstable, (u >= -l).to(l.dtype), active)
    return aL, aU, bU


class BoxCrown:
    """Bounds of the rows ``C f(x) - d`` of an :class:`AffineReluChain` over batches of boxes.

    ``C (m, n_out)``, ``d (m,)`` in float64; ``dtype``: working dtype of the batched products
    (float64 default; float32 halves the cost, with a proportionally larger rounding margin)."""

    def __init__(self, chain: AffineReluChain, C: torch.Tensor, d: torch.Tensor, dtype=torch.float64,
                 intermediate: str = "backward"):
        if intermediate not in ("backward", "forward"):
            raise ValueError(f"intermediate must be 'backward' or 'forward', got {intermediate!r}")
        self.chain, self.dtype, self.intermediate = chain, dtype, intermediate
        C64, d64 = C.to(torch.float64), d.to(torch.float64).reshape(-1)
        Ws = list(chain.W[:-1]) + [C64 @ chain.W[-1]]
        bs = list(chain.b[:-1]) + [C64 @ chain.b[-1] - d64]
        self.W = [w.to(dtype) for w in Ws]
        self.Wabs = [w.abs() for w in self.W]
        self.b = [b.to(dtype) for b in bs]
        self.babs = [b.abs() for b in self.b]
        self.m = C64.shape[0]
        fan = max(w.shape[1] for w in Ws) + 2
        self.gamma = 2.0 * fan * len(Ws) * torch.finfo(dtype).eps
        if dtype != torch.float64:  # the float64 composition C W_L and C b_L - d rounded to dtype
            self.gamma += 4 * torch.finfo(dtype).eps

    # ---------------------------------------------------------------- pieces
    def _concretize(self, A, const, c, r, cabs):
        """``min over the box`` of ``A x + const`` (``A (N, R, n_in)``, ``const (N, R)``) minus the margin."""
        Aabs = A.abs()
        val = torch.einsum("nri,ni->nr", A, c) - torch.einsum("nri,ni->nr", Aabs, r) + const
        mag = torch.einsum("nri,ni->nr", Aabs, cabs + r)
        return val, mag

    def _backward_rows(self, k, idx, rows, relax, c, r, cabs):
        """:meth:`_backward` for coefficient rows of single boxes: ``rows (P, R, n_{k-1})`` belongs to box
        ``idx[p]`` (only the boxes and neurons that need it are computed)."""
        sub = [(aL[idx], aU[idx], bU[idx]) for aL, aU, bU in relax[:k]]
        return self._backward(k, rows, sub, c[idx], r[idx], cabs[idx])

    def _backward(self, k, A, relax, c, r, cabs):
        """Lower bound of ``A . relu(z_{k-1})`` through the layers before it: ``A (1 or N, R, n_{k-1})`` is the
        coefficient on the post-activation of 0-based layer ``k - 1``; ``relax[j] = (aL, aU, bU)`` the ReLU
        lines of layer ``j`` per box.  Returns (lower bound (N, R) with its rounding margin subtracted,
        input coefficient (N, R, n_in))."""
        N = c.shape[0]
        const = torch.zeros(N, A.shape[1], dtype=self.dtype, device=c.device)
        mag = torch.zeros_like(const)
        for j in range(k - 1, -1, -1):
            aL, aU, bU = relax[j]
            Ap = A.clamp(min=0)
            An = A - Ap
            A = Ap * (aL if aL.dim() == 3 else aL.unsqueeze(1)) + An * aU.unsqueeze(1)
            t = torch.einsum("nrj,nj->nr", An, bU)
            const = const + t
            mag = mag - t
            const = const + A @ self.b[j]
            mag = mag + A.abs() @ self.babs[j]
            A = A @ self.W[j]
        val, m2 = self._concretize(A, const, c, r, cabs)
        self.last_margin = self.gamma * (mag + m2)
        return val - self.last_margin, A

    def _ibp(self, k, l, u):
        """Interval bounds of ``z_k = W_k relu(z_{k-1}) + b_k`` from those of ``z_{k-1}`` (widened for rounding)."""
        pl, pu = l.clamp(min=0), u.clamp(min=0)
        c, r = (pl + pu) / 2, (pu - pl) / 2
        mid = c @ self.W[k].T + self.b[k]
        rad = r @ self.Wabs[k].T
        e = self.gamma * (c.abs() @ self.Wabs[k].T + rad + self.babs[k]) + 4 * torch.finfo(self.dtype).eps * rad
        return mid - rad - e, mid + rad + e

    def _forward_layers(self, c, r, cabs, l1, u1):
        """Symbolic-interval bounds of pre-activations 2..L-1 given layer 1's interval; list of (l, u)."""
        N, n_in = c.shape
        W0 = self.W[0]
        # z_1 = W_1 x + b_1 exactly as a linear function: coefficient (N, n1, n_in + 1), last column constant
        base = torch.cat([W0, self.b[0].unsqueeze(1)], 1).unsqueeze(0).expand(N, -1, -1)
        Lf, Uf = base, base
        pre = [(l1, u1)]
        xabs = torch.cat([cabs + r, torch.ones(N, 1, dtype=self.dtype, device=c.device)], 1)  # (N, n_in + 1)
        for k in range(1, len(self.W) - 1):
            l, u = pre[-1]
            aL, aU, bU = _relu_lines(l, u)
            Lr = Lf * aL.unsqueeze(2)
            Ur = Uf * aU.unsqueeze(2)
            Ur = torch.cat([Ur[..., :-1], (Ur[..., -1] + bU).unsqueeze(2)], 2)
            W = self.W[k]
            Wp = W.clamp(min=0)
            Wn = W - Wp
            Ln = Wp @ Lr + Wn @ Ur
            Un = Wp @ Ur + Wn @ Lr
            # rounding of this layer (and of the relaxation products) absorbed into the constants
            ML = torch.einsum("nji,ni->nj", Lr.abs(), xabs)
            MU = torch.einsum("nji,ni->nj", Ur.abs(), xabs)
            err = self.gamma * (self.Wabs[k] @ (ML + MU).unsqueeze(2)).squeeze(2) + self.gamma * self.babs[k]
            Lc = Ln[..., -1] + self.b[k] - err
            Uc = Un[..., -1] + self.b[k] + err
            Lf = torch.cat([Ln[..., :-1], Lc.unsqueeze(2)], 2)
            Uf = torch.cat([Un[..., :-1], Uc.unsqueeze(2)], 2)
            lo_v, lo_m = self._concretize(Lf[..., :-1], Lf[..., -1], c, r, cabs)
            hi_v, hi_m = self._concretize(-Uf[..., :-1], -Uf[..., -1], c, r, cabs)
            il, iu = self._ibp(k, *pre[-1])
            pre.append((torch.maximum(lo_v - self.gamma * lo_m, il), torch.minimum(-(hi_v - self.gamma * hi_m), iu)))
        return pre

    def _box(self, lo, hi):
        """Centre ``c``, radius ``r`` and ``|c|`` in the working dtype of boxes ``lo/hi (N, n_in)`` (any float
        dtype), rounded so that ``[c - r, c + r]`` contains every box."""
        lo_w, hi_w = lo.to(self.dtype), hi.to(self.dtype)
        if self.dtype != lo.dtype:
            lo_w = torch.where(lo_w.to(lo.dtype) > lo, torch.nextafter(lo_w, lo_w.new_tensor(-math.inf)), lo_w)
            hi_w = torch.where(hi_w.to(hi.dtype) < hi, torch.nextafter(hi_w, hi_w.new_tensor(math.inf)), hi_w)
        c = (lo_w + hi_w) / 2
        r = (hi_w - lo_w) / 2
        # c and r are rounded: widen r so that [c - r, c + r] still contains the box
        r = torch.maximum(r, torch.maximum(hi_w - c, c - lo_w)) * (1 + 2 * torch.finfo(self.dtype).eps)
        return c, r, c.abs()

    # ---------------------------------------------------------------- the bound
    def bound(self, lo: torch.Tensor, hi: torch.Tensor, parent: list | None = None):
        """Certified lower bounds of ``C f(x) - d`` over the boxes ``lo/hi (N, n_in)`` (any float dtype; rounded
        outward to the working dtype).  Returns ``(low (N, m) float64, A (N, m, n_in), pre)``: ``A`` the rows'
        coefficients on the input (for branching), ``pre`` the pre-activation bounds ``[(l, u) (N, n_k)]`` of
        the hidden layers.  ``parent``: such bounds valid on boxes containing these (e.g. the parents' of
        split children): they are intersected in, and CROWN is run only for neurons still unstable."""
        c, r, cabs = self._box(lo, hi)
        W0 = self.W[0]
        N = c.shape[0]
        L = len(self.W)
        if L == 1:
            A = W0.unsqueeze(0).expand(N, -1, -1)
            val, m2 = self._concretize(A, self.b[0].expand(N, -1), c, r, cabs)
            low = val - self.gamma * (m2 + self.babs[0])
            self.margin = (self.gamma * (m2 + self.babs[0])).to(torch.float64)
            return self._finite(low), A, []
        mid = c @ W0.T + self.b[0]
        rad = r @ self.Wabs[0].T
        e = self.gamma * (cabs @ self.Wabs[0].T + rad + self.babs[0])
        pre = [(mid - rad - e, mid + rad + e)]
        if parent is not None:
            pre[0] = (torch.maximum(pre[0][0], parent[0][0]), torch.minimum(pre[0][1], parent[0][1]))
        if self.intermediate == "forward":
            pre = self._forward_layers(c, r, cabs, *pre[0])
            if parent is not None:
                pre = [(torch.maximum(l, pl), torch.minimum(u, pu)) for (l, u), (pl, pu) in zip(pre, parent)]
        relax = [_relu_lines(*pre[0])]
        for k in range(1, L - 1):
            if self.intermediate == "forward":
                relax.append(_relu_lines(*pre[k]))
                continue
            il, iu = self._ibp(k, *pre[-1])
            if parent is not None:
                il, iu = torch.maximum(il, parent[k][0]), torch.minimum(iu, parent[k][1])
            n_idx, j_idx = ((il < 0) & (iu > 0)).nonzero(as_tuple=True)
            if n_idx.numel():  # CROWN only for the neurons still unstable, box by box
                w = self.W[k][j_idx]
                v, _ = self._backward_rows(k, n_idx, torch.stack([w, -w], 1), relax, c, r, cabs)
                bk, ek = self.b[k][j_idx], self.gamma * self.babs[k][j_idx]
                il = il.index_put((n_idx, j_idx), torch.maximum(il[n_idx, j_idx], v[:, 0] + bk - ek))
                iu = iu.index_put((n_idx, j_idx), torch.minimum(iu[n_idx, j_idx], -v[:, 1] + bk + ek))
            pre.append((il, iu))
            relax.append(_relu_lines(il, iu))
        low, A = self._backward(L - 1, self.W[-1].unsqueeze(0), relax, c, r, cabs)
        low = low + self.b[-1] - self.gamma * self.babs[-1]
        # the rounding margin subtracted from each final row (N, m): what a float64 pass could win back
        self.margin = (self.last_margin + self.gamma * self.babs[-1]).to(torch.float64)
        return self._finite(low), A, pre

    def alpha_bound(self, lo: torch.Tensor, hi: torch.Tensor, pre: list, iters: int = 10, lr: float = 0.2,
                    alpha: list | None = None, deadline: float = math.inf):
        """alpha-CROWN on the final rows: certified lower bounds of ``C f(x) - d`` over the boxes ``lo/hi (N, n_in)``
        with the pre-activation bounds ``pre`` (valid on the boxes, e.g. :meth:`bound`'s) held fixed.

        Math: on ``[l, u]`` with ``l < 0 < u``, ``relu(z) >= a z`` for **every** ``a in [0, 1]``, so the backward
        pass of :meth:`_backward` with any such slopes (CROWN picks ``a = 1[u >= -l]``) is a valid lower bound; the
        slopes (per box, row and neuron) are optimized by projected Adam on ``-sum`` of the bounds (Xu et al.
        2021, alpha-CROWN; with fixed intermediate bounds its optimum is the LP relaxation's).  Every iterate is
        a certified bound (the rounding margin of :meth:`bound` subtracted), the best per (box, row) is returned.
        ``alpha``: slopes ``[(N, m, n_k)]`` to start from (e.g. the parent box's), default CROWN's; ``iters = 0``:
        just evaluate them; ``deadline`` (``time.monotonic()``): no further iteration after it.  Returns ``(low (N, m) float64, alpha, margin (N, m) float64)``: the best bounds,
        the slopes reaching them (clipped to ``[0, 1]``) and the rounding margin subtracted from them."""
        c, r, cabs = self._box(lo, hi)
        N, L, dev = c.shape[0], len(self.W), c.device
        if L == 1 or not len(pre):
            raise ValueError("alpha_bound needs a chain with at least one hidden layer")
        lines = [_relu_lines(l.to(self.dtype), u.to(self.dtype)) for l, u in pre]
        unst = [((l < 0) & (u > 0)).unsqueeze(1) for l, u in pre]
        if alpha is None:
            alpha = [aL.unsqueeze(1).expand(-1, self.m, -1) for aL, _, _ in lines]
        alpha = [a.to(self.dtype).clone().clamp_(0, 1).requires_grad_(iters > 0) for a in alpha]
        opt = Adam([(a, lr) for a in alpha]) if iters > 0 else None
        best = torch.full((N, self.m), -math.inf, dtype=torch.float64, device=dev)
        best_alpha = [a.detach().clone() for a in alpha]
        best_margin = torch.zeros_like(best)
        extra = self.gamma * self.babs[-1]
        for it in range(iters + 1):
            relax = [(torch.where(us, a, aL.unsqueeze(1)), aU, bU) for a, us, (aL, aU, bU) in zip(alpha, unst, lines)]
            with torch.set_grad_enabled(it < iters):
                low, _ = self._backward(L - 1, self.W[-1].unsqueeze(0), relax, c, r, cabs)
                low = low + self.b[-1] - extra
            lowd = self._finite(low.detach())
            better = lowd > best
            best = torch.where(better, lowd, best)
            best_margin = torch.where(better, (self.last_margin.detach() + extra).to(torch.float64), best_margin)
            for b_, a in zip(best_alpha, alpha):
                b_.copy_(torch.where(better.unsqueeze(2), a.detach(), b_))
            if it == iters or time.monotonic() > deadline:
                break
            loss = -torch.where(torch.isfinite(low), low, torch.zeros_like(low)).sum()
            opt.step(torch.autograd.grad(loss, alpha, allow_unused=True))
            with torch.no_grad():
                for a in alpha:
                    a.clamp_(0, 1)
        self.margin = best_margin
        return best, best_alpha, best_margin

    def combo_bound(self, lo: torch.Tensor, hi: torch.Tensor, pre: list, owner: torch.Tensor, *, iters: int = 10,
                    lr: float = 0.5, lam: torch.Tensor | None = None, alpha: list | None = None, opt_alpha: bool = False,
                    deadline: float = math.inf):
        """Refutation of AND clauses by a convex combination of their rows: certified lower bounds of
        ``lam_s . (C_s f(x) - d_s)`` over the boxes ``lo/hi (N, n_in)``, per box and specification ``s``
        (``owner (m,)``: the specification of each row, ``0..S-1``), with ``pre`` (valid on the boxes) fixed.

        Math: if ``lam >= 0`` (not all zero) and ``min_box lam . (C f - d) > 0``, no point of the box satisfies
        every row ``C_k f <= d_k`` of the clause, although possibly no single row is ``> 0`` on the whole box
        (near a point where two rows tie).  ``lam . (C f - d)`` is one more row: its bound is the backward
        pass of :meth:`_backward` from ``lam @ (C W_L)`` (sign-adaptive ReLU relaxation, slopes CROWN's or
        ``alpha``), so for fixed slopes it is concave in ``lam`` (a minimum of functions linear in ``lam``).
        ``lam = softmax(theta)`` over the clause's rows is optimised by Adam (``iters`` steps, ``lr``), jointly
        with the lower slopes in ``[0, 1]`` per box/clause/neuron when ``opt_alpha``; warm starts ``lam (N, S, m)``
        (zero off the clause) and ``alpha [(N, S, n_k)]`` (e.g. the parent box's).

        Guarantee: every iterate is evaluated as a certified bound -- :meth:`_backward`'s rounding margin, the
        margin of ``b_L``, plus the rounding of forming the combined row in the working dtype,
        ``2 (m + 4) eps (lam . |C W_L| relu(u_{L-1}) + lam . |C b_L - d|)`` (``|h| <= relu(u)`` for the last
        hidden layer's outputs ``h``) -- and the best per (box, clause) is kept with the ``lam`` (exactly the
        weights used, ``>= 0``) and slopes reaching it.  Clauses of one row get ``-inf`` (nothing to combine).
        Returns ``(low (N, S) float64, lam (N, S, m), alpha or None, margin (N, S) float64, A_in (N, S, n_in))``."""
        c, r, cabs = self._box(lo, hi)
        N, L, dev, m = c.shape[0], len(self.W), c.device, self.m
        owner = owner.to(dev)
        S = int(owner.max()) + 1
        mask = owner.unsqueeze(0) == torch.arange(S, device=dev).unsqueeze(1)  # (S, m)
        multi = mask.sum(1) >= 2
        best = torch.full((N, S), -math.inf, dtype=torch.float64, device=dev)
        best_margin = torch.zeros_like(best)
        best_A = torch.zeros(N, S, c.shape[1], dtype=self.dtype, device=dev)
        if L == 1 or not len(pre) or not bool(multi.any()):
            z = torch.zeros(N, S, m, dtype=self.dtype, device=dev)
            return best, z, None, best_margin, best_A
        lines = [_relu_lines(l.to(self.dtype), u.to(self.dtype)) for l, u in pre]
        hmax = pre[-1][1].to(self.dtype).clamp(min=0)  # (N, n_{L-1}): |relu(z_{L-1})| <= relu(u)
        eps_c = 2.0 * (m + 4) * torch.finfo(self.dtype).eps
        if lam is None:
            theta = torch.zeros(N, S, m, dtype=self.dtype, device=dev)
        else:
            theta = lam.to(self.dtype).clamp(min=1e-6).log()
        theta = theta.masked_fill(~mask.unsqueeze(0), -math.inf).requires_grad_(iters > 0)
        params = [theta]
        unst = [((l < 0) & (u > 0)).unsqueeze(1) for l, u in pre]
        if opt_alpha:
            if alpha is None:
                alpha = [aL.unsqueeze(1).expand(-1, S, -1) for aL, _, _ in lines]
            alpha = [a.to(self.dtype).clone().clamp_(0, 1).requires_grad_(iters > 0) for a in alpha]
            params = params + alpha
        opt = Adam([(p, lr) for p in params]) if iters > 0 else None
        best_lam = torch.zeros(N, S, m, dtype=self.dtype, device=dev)
        best_alpha = [a.detach().clone() for a in alpha] if opt_alpha else None
        W, b, Wabs, babs = self.W[-1], self.b[-1], self.Wabs[-1], self.babs[-1]
        keep = multi.unsqueeze(0)
        for it in range(iters + 1):
            with torch.set_grad_enabled(it < iters):
                lam_t = torch.softmax(theta, dim=2)  # (N, S, m), exactly 0 off the clause
                lam_d = lam_t.detach()
                if opt_alpha:
                    relax = [(torch.where(us, a, aL.unsqueeze(1)), aU, bU)
                             for a, us, (aL, aU, bU) in zip(alpha, unst, lines)]
                else:
                    relax = lines
                val, A_in = self._backward(L - 1, lam_t @ W, relax, c, r, cabs)
                extra = (self.gamma * (lam_d @ babs)
                         + eps_c * (torch.einsum("nsj,nj->ns", lam_d @ Wabs, hmax) + lam_d @ babs))
                low = val + lam_t @ b - extra
            lowd = torch.where(keep, self._finite(low.detach()), torch.full_like(best, -math.inf))
            better = lowd > best
            best = torch.where(better, lowd, best)
            best_margin = torch.where(better, (self.last_margin.detach() + extra).to(torch.float64), best_margin)
            best_lam = torch.where(better.unsqueeze(2), lam_d, best_lam)
            best_A = torch.where(better.unsqueeze(2), A_in.detach(), best_A)
            if opt_alpha:
                for b_, a in zip(best_alpha, alpha):
                    b_.copy_(torch.where(better.unsqueeze(2), a.detach(), b_))
            if it == iters or time.monotonic() > deadline:
                break
            loss = -torch.where(torch.isfinite(low) & keep, low, torch.zeros_like(low)).sum()
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            grads = [None if g is None else torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0) for g in grads]
            opt.step(grads)
            with torch.no_grad():
                if opt_alpha:
                    for a in alpha:
                        a.clamp_(0, 1)
        self.margin = best_margin
        return best, best_lam, best_alpha, best_margin, best_A

    def refine_intermediate(self, lo: torch.Tensor, hi: torch.Tensor, pre: list, iters: int = 10, lr: float = 0.2,
                            deadline: float = math.inf):
        """Tighter pre-activation bounds of hidden layers ``2..L-1`` over the boxes ``lo/hi (N, n_in)``: alpha-CROWN
        per unstable neuron, layer by layer (each layer's bounds use the tightened bounds of the layers before).

        For every box and every neuron ``j`` of layer ``k`` with ``l < 0 < u`` in ``pre``, the rows ``+-W_k[j]``
        are bounded by :meth:`_backward` with the lower ReLU slopes of the unstable neurons of layers ``< k``
        optimized (per box, neuron and sign) by projected Adam; any slopes in ``[0, 1]`` give valid bounds (the
        rounding margin subtracted), so every iterate is certified and the best is intersected with ``pre``.
        Fewer unstable neurons and tighter relaxations follow; measured on ACAS Xu 3_3 P2 boxes where the
        final-layer LP is loose: LP-tight intermediate bounds turned the LP bound from -0.007 to +0.0011.
        ``deadline`` (``time.monotonic()``): no further iteration or layer after it.
        Returns the new ``[(l, u)]`` (working dtype), each contained in ``pre``'s."""
        c, r, cabs = self._box(lo, hi)
        L = len(self.W)
        pre = [(l.to(self.dtype).clone(), u.to(self.dtype).clone()) for l, u in pre]
        for k in range(1, L - 1):
            if time.monotonic() > deadline:
                break
            lk, uk = pre[k]
            n_idx, j_idx = ((lk < 0) & (uk > 0)).nonzero(as_tuple=True)
            P = n_idx.numel()
            if P == 0:
                continue
            w = self.W[k][j_idx]
            rows = torch.stack([w, -w], 1)  # (P, 2, n_{k-1})
            lines = [_relu_lines(*pre[j]) for j in range(k)]
            sub = [(aL[n_idx], aU[n_idx], bU[n_idx]) for aL, aU, bU in lines]
            unst = [((pre[j][0] < 0) & (pre[j][1] > 0))[n_idx].unsqueeze(1) for j in range(k)]
            alpha = [aL.unsqueeze(1).expand(-1, 2, -1).clone().requires_grad_(iters > 0) for aL, _, _ in sub]
            opt = Adam([(a, lr) for a in alpha]) if iters > 0 else None
            ci, ri, cai = c[n_idx], r[n_idx], cabs[n_idx]
            best = torch.full((P, 2), -math.inf, dtype=self.dtype, device=c.device)
            for it in range(iters + 1):
                relax = [(torch.where(us, a, aL.unsqueeze(1)), aU, bU) for a, us, (aL, aU, bU) in zip(alpha, unst, sub)]
                with torch.set_grad_enabled(it < iters):
                    v, _ = self._backward(k, rows, relax, ci, ri, cai)
                fin = torch.isfinite(v)
                best = torch.maximum(best, torch.where(fin, v.detach(), torch.full_like(best, -math.inf)))
                if it == iters or time.monotonic() > deadline:
                    break
                loss = -torch.where(fin, v, torch.zeros_like(v)).sum()
                opt.step(torch.autograd.grad(loss, alpha, allow_unused=True))
                with torch.no_grad():
                    for a in alpha:
                        a.clamp_(0, 1)
            bk, ek = self.b[k][j_idx], self.gamma * self.babs[k][j_idx]
            pre[k] = (lk.index_put((n_idx, j_idx), torch.maximum(lk[n_idx, j_idx], best[:, 0] + bk - ek)),
                      uk.index_put((n_idx, j_idx), torch.minimum(uk[n_idx, j_idx], -best[:, 1] + bk + ek)))
            if k + 1 < L - 1:  # interval propagation of the tightened layer into the next one
                il, iu = self._ibp(k + 1, *pre[k])
                pre[k + 1] = (torch.maximum(pre[k + 1][0], il), torch.minimum(pre[k + 1][1], iu))
        return pre

    @staticmethod
    def _finite(low):
        low = low.to(torch.float64)
        return torch.where(torch.isfinite(low), low, torch.full_like(low, -math.inf))
