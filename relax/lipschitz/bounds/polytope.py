"""Forward pre-activation bounds of branch-and-bound domains over their *input polytope* (beta-CROWN style).

A domain of :mod:`.bab` fixes the sign of some switches (``sigma_j s_j(x) >= 0``; the switch is the
pre-activation ``z_j`` of a ReLU, ``z_a - z_b`` of a MaxMin pair, ``v^T z`` of a Householder group).  Interval
clamping uses a split only on the neuron itself; the other neurons' bounds still range over the
whole box.  Here every split becomes a half-space in input space that contains the domain:

* layer 0 (``z = W_0 x + b_0`` is affine): ``-s_j (W_0 x + b_0)_j <= 0`` -- exact;
* deeper layers: CROWN gives ``L_j x + c^L_j <= z_j(x) <= U_j x + c^U_j`` for every ``x`` of the
  domain, so ``z_j >= 0`` implies ``U_j x + c^U_j >= 0`` and ``z_j <= 0`` implies ``L_j x + c^L_j <= 0``.

With ``P = box  ∩  {G x <= h}`` (all these half-spaces), every linear bound ``a^T x + c`` of a neuron
is maximized over ``P`` instead of the box by Lagrangian (weak) duality:

    max_{x in P} a^T x + c  <=  U(beta) = c + beta^T h + sum_i max(r_i xl_i, r_i xu_i),   r = a - G^T beta,

valid for **every** ``beta >= 0`` (for x in P: ``a^T x = r^T x + beta^T G x <= r^T x + beta^T h``).  ``beta``
is improved by projected Adam steps on the convex function ``U`` (subgradient ``h - G x*(beta)``);
the last iterate is compared with ``beta = 0``, the plain box bound, so the result is never worse
than CROWN over the box.  Since any ``beta >= 0`` is sound, the steps run in float32 and may start
anywhere: a branch-and-bound child starts from its parent's multipliers (``warm``; the child's
polytope is the parent's plus one half-space, whose multiplier starts at 0); only the final ``U(beta)``
is evaluated in float64 with the rounding margin.  At the optimum this equals the LP ``max_{x in P} a^T x`` (strong duality), the
bound that beta-CROWN's split multipliers reach for layer 0.  An upper bound below the lower bound
proves the domain empty.

Layers are processed input side first; each layer's CROWN back-substitution uses the tightened
bounds of the layers below it (split neurons clamped to their side of zero, so their relaxation is
exact).  Rounding: everything is float64; the back-substitution adds ``2 (k + 2) (F + 2) eps``
times a magnitude bound of its partial sums (fan-in ``F``), and each concretization adds
``4 (n + m + 2) eps`` times the magnitude of its terms (``n`` inputs, ``m`` half-spaces).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .chain import clamp_switch, pack_true

EPS64 = float(torch.finfo(torch.float64).eps)


_FUSED_ADAM = getattr(torch, "_fused_adam_", None)  # the kernel behind torch.optim.Adam(fused=True)


class _Adam:
    """Adam (``beta1 = 0.9``, ``beta2 = 0.999``, descent) on one float32 tensor ``x``, updated in place:
    ``x -= lr m_hat / sqrt(v_hat)``.  ``fused``: one pass of torch's fused Adam kernel per step (the kernel
    behind ``torch.optim.Adam(fused=True)``; ~30% faster than the seven elementwise ops below on the polytope
    passes' small tensors); without it (or on a torch that lacks the kernel) the same update op by op.  Only
    where the steps lead changes with the kernel: the caller's bound is sound for any iterate."""

    B1, B2 = 0.9, 0.999

    def __init__(self, x: torch.Tensor, fused: bool = True):
        self.x, self.m1, self.m2 = x, torch.zeros_like(x), torch.zeros_like(x)
        self.fused = fused and _FUSED_ADAM is not None and x.device.type in ("cpu", "cuda")
        self.t = torch.zeros((), dtype=torch.float32, device=x.device)  # the kernel's step count
        self.n = 0

    def step(self, grad: torch.Tensor, lr: float) -> None:
        self.n += 1
        if self.fused:
            self.t += 1  # (the kernel reads the count; the caller advances it, as torch.optim.Adam does)
            _FUSED_ADAM([self.x], [grad], [self.m1], [self.m2], [], [self.t], lr=lr, beta1=self.B1, beta2=self.B2,
                        weight_decay=0.0, eps=1e-12, amsgrad=False, maximize=False)
            return
        b1, b2, t = self.B1, self.B2, self.n
        self.m1.lerp_(grad, 1 - b1)
        self.m2.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        step = lr / (1 - b1 ** t) * math.sqrt(1 - b2 ** t)
        # (+1e-24 under the root: m2 decays into float32 subnormals, whose square roots are ~4x slower)
        self.x.addcdiv_(self.m1, torch.add(self.m2, 1e-24).sqrt_(), value=-step)


def polytope_max(A: torch.Tensor, c: torch.Tensor, G: torch.Tensor | None, h: torch.Tensor | None,
                 xl: torch.Tensor, xu: torch.Tensor, iters: int = 20, lr: float = 0.1,
                 beta0: torch.Tensor | None = None, return_beta: bool = False, fused: bool = True):
    """Upper bounds of ``max_{x in P} A_r x + c_r`` for ``P = [xl, xu] ∩ {G x <= h}``.

    ``A``: (D, r, n), ``c``: (D, r), ``G``: (D, m, n), ``h``: (D, m) (padding rows: ``G = 0, h = 0``),
    ``xl, xu``: (n,).  Sound for any number of iterations and any start (see the module docstring): the
    returned value is ``min(U(beta_last), U(0))`` (the last Adam iterate -- its steps decay -- and the box
    bound), each evaluated in float64 with the rounding margin.  ``beta0``: (D, r, m) start of the steps
    (None: 0; negative entries are projected to 0); ``return_beta``: also return the last iterate (float32;
    None when no step ran); ``fused``: the steps by torch's fused Adam kernel where available (:class:`_Adam`).
    """
    mid, rad = (xl + xu) / 2, (xu - xl) / 2
    xmag = torch.maximum(xl.abs(), xu.abs())

    def certified_value(beta):
        R = A if beta is None else A - torch.bmm(beta, G)
        v = c + (R @ mid) + (R.abs() @ rad)
        mag = c.abs() + R.abs() @ xmag
        if beta is not None:
            v = v + torch.bmm(beta, h[..., None])[..., 0]
            mag = mag + torch.bmm(beta, h.abs()[..., None])[..., 0] + torch.bmm(beta, G.abs()) @ xmag
        n = A.shape[-1] + (0 if G is None else G.shape[1])
        return v + 4 * (n + 2) * EPS64 * mag

    if G is None or G.shape[1] == 0 or iters <= 0:
        v = certified_value(None)
        return (v, None) if return_beta else v
    D, r, n = A.shape
    # the dual steps run in float32 (any beta >= 0 is sound: only the final value needs float64)
    A32, G32, h32, xl32, xu32 = A.float(), G.float(), h.float(), xl.float(), xu.float()
    gn = G32.abs().sum(-1)  # (D, m) row norms; padding rows (zero) do not count
    gmean = gn.sum(-1) / (gn > 0).sum(-1).clamp(min=1)
    scale = (A32.abs().sum(-1, keepdim=True) / gmean.clamp(min=1e-30)[:, None, None]).clamp(min=1e-12)
    # Adam on gamma = beta / scale (per row): Adam's step is invariant to a per-coordinate scaling of the gradient,
    # so this is Adam on beta with the step scaled by ``scale``; and with A' = A / scale the residual
    # R' = A' - gamma G = R / scale has the signs of R.  The box maximizer of r^T x is mid + rad sign(r), so the
    # subgradient h - G x* is (h - G mid) - sign(R') (G diag(rad))^T: one batched product
    As = A32 / scale
    gamma = torch.zeros(D, r, G.shape[1], dtype=A32.dtype, device=A.device) if beta0 is None else \
        (beta0.to(A32) / scale).clamp(min=0)
    hm = (h32 - G32 @ ((xl32 + xu32) / 2))[:, None, :]
    Grt = (G32 * ((xu32 - xl32) / 2)).transpose(1, 2)
    adam = _Adam(gamma, fused)
    for t in range(1, iters + 1):
        Rs = torch.baddbmm(As, gamma, G32, alpha=-1)
        grad = torch.baddbmm(hm, Rs.sign_(), Grt, alpha=-1)  # subgradient dU/dbeta = h - G x*
        adam.step(grad, lr * (1 - 0.5 * t / iters))
        gamma.clamp_(min=0)
    beta = gamma * scale
    # the last iterate (steps decay); beta = 0 (the box bound) is the fallback
    v = torch.minimum(certified_value(beta.to(A.dtype)), certified_value(None))
    return (v, beta) if return_beta else v


def _relax_lines(l, u, s):
    """ReLU / LeakyReLU (negative slope ``s``) relaxation on [l, u]: (upper slope, upper intercept, lower slope)."""
    on, off = l >= 0, u <= 0
    w = (u - l).clamp(min=1e-300)
    su = torch.where(on, torch.ones_like(l), torch.where(off, torch.full_like(l, s), (u - s * l) / w))
    tu = torch.where(on | off, torch.zeros_like(l), s * l - su * l)
    sl = torch.where(on, torch.ones_like(l), torch.where(off, torch.full_like(l, s),
                                                          torch.where(u >= -l, torch.ones_like(l), torch.full_like(l, s))))
    return su, tu, sl


def _backsub(chain, k, sb, slopes, rows, xmag, both: bool = False):
    """CROWN upper linear bound of ``rows @ s_k`` in x: (A (D, r, n0), c (D, r)) for the domain's switch bounds ``sb``;
    ``both``: also of ``-rows @ s_k`` (i.e. the lower bound of ``rows @ s_k``), as ``((A, c), (A_neg, c_neg))``.
    ``rows``: (r, n_q) or (D, r, n_q), or (for ``k >= 1``) a pair ``(idx, valid)`` ((D, r) switch indices and flags):
    the one-hot rows ``e_idx`` (0 where not valid), whose first step is a pick of rows of ``S_k W_k`` instead of a product.

    ``s_k = S_k z_k`` are the switches of activation ``k`` (``z_k`` itself for ReLU/LeakyReLU).  Through
    a ReLU-type activation the chord/lower line of ``phi(z)`` on ``[l, u]`` is used; through a
    switch-matrix activation (MaxMin, GroupSort(2), Householder) the forward map
    ``y = P z + Q relu(S z)`` (:mod:`.gates`) is relaxed in its one nonlinearity, ``relu`` of the switch.
    ``c`` includes a rounding margin: the same back-substitution on magnitudes (``|Lam|``, ``|W|``,
    ``|P|, |Q|, |S|``, ``|b|``, slopes and intercepts) bounds every partial sum, and each of the at most
    ``4 (depth + 1)`` matrix products of fan-in ``<= F`` errs by at most ``F eps`` times its magnitude,
    so adding ``4 (depth + 2) (F + 2) eps (|A| |x| + bias magnitude)`` covers the float64 evaluation.
    The magnitudes of ``rows`` and ``-rows`` are the same: with ``both`` they (and the relaxation lines) are
    computed once for the two.
    """
    D = sb[0][0].shape[0]
    S = chain.gates[k].switch_matrix
    fan = max(max(w.shape) for w in chain.weights[: k + 1]) + 2
    picked = isinstance(rows, tuple)
    if picked:  # one-hot rows: the first step (onto y_{k-1}) picks rows of S W_k and S b_k, no product
        assert k > 0, "one-hot rows (idx, valid) need a layer below them (k >= 1)"
        idx, valid = rows
        v = valid.to(chain.weights[k].dtype)
        W, b = chain.weights[k], chain.biases[k]
        ZW, mZW = (W, W.abs()) if S is None else (S @ W, S.abs() @ W.abs())
        Zb, mZb = (b, b.abs()) if S is None else (S @ b, S.abs() @ b.abs())
        Lam = ZW[idx] * v[..., None]
        Lams = [Lam, -Lam] if both else [Lam]
        mLam = mZW[idx] * v[..., None]
        biases = [Zb[idx] * v, -Zb[idx] * v] if both else [Zb[idx] * v]
        mbias = mZb[idx] * v
        shared = False
    else:
        signed = [rows, -rows] if both else [rows]
        Lams = [r if S is None else r @ S for r in signed]  # coefficients on z_k
        mLam = rows.abs() if S is None else rows.abs() @ S.abs()
        biases = [Lam @ chain.biases[k] for Lam in Lams]
        mbias = mLam @ chain.biases[k].abs()
        shared = mLam.dim() == 2  # rows shared by the batch: the first (linear) step is one unbatched product
    for j in range(k - 1, -1, -1):
        if not picked or j < k - 1:
            W = chain.weights[j + 1]
            Lams = [Lam @ W for Lam in Lams]  # coefficients on y_j
            mLam = mLam @ W.abs()
        if shared:
            Lams = [Lam.expand(D, *Lam.shape) for Lam in Lams]
            mLam, shared = mLam.expand(D, *mLam.shape), False
        l, u = sb[j]
        gate = chain.gates[j]
        if gate.Q is None:  # y = phi(z) per coordinate, the switch is z
            su, tu, sl = _relax_lines(l, u, slopes[j])
            for i, Lam in enumerate(Lams):
                Lp = Lam.clamp(min=0)  # positive coefficients: upper line; negative: lower line (exact 0 split)
                biases[i] = biases[i] + torch.bmm(Lp, tu[:, :, None])[..., 0]
                Lams[i] = torch.addcmul((Lam - Lp) * sl[:, None, :], Lp, su[:, None, :])
            mbias = mbias + torch.bmm(mLam, tu.abs()[:, :, None])[..., 0]
            mLam = mLam * torch.maximum(su.abs(), sl.abs())[:, None, :]
        else:  # y = P z + Q relu(s), s = S z
            su, tu, sl = _relax_lines(l, u, 0.0)
            Sj = gate.switch_matrix
            for i, Lam in enumerate(Lams):
                R = Lam @ gate.Q  # coefficients on relu(s)
                biases[i] = biases[i] + (R.clamp(min=0) * tu[:, None, :]).sum(-1)
                R = torch.where(R > 0, R * su[:, None, :], R * sl[:, None, :])
                Lams[i] = Lam @ gate.P + R @ Sj
            mR = mLam @ gate.Q.abs()
            mbias = mbias + (mR * tu.abs()[:, None, :]).sum(-1)
            mR = mR * torch.maximum(su.abs(), sl.abs())[:, None, :]
            mLam = mLam @ gate.P.abs() + mR @ Sj.abs()
        biases = [bias + Lam @ chain.biases[j] for bias, Lam in zip(biases, Lams)]
        mbias = mbias + mLam @ chain.biases[j].abs()
    mA = mLam @ chain.weights[0].abs()
    margin = 4 * (k + 2) * fan * EPS64 * (mbias + mA @ xmag)
    out = []
    for Lam, bias in zip(Lams, biases):
        bias = bias + margin
        out.append((Lam @ chain.weights[0], bias.expand(D, -1) if bias.shape[0] != D else bias))
    return tuple(out) if both else out[0]


def _first_layer(chain, xmag):
    """Exact-up-to-rounding linear maps of the layer-0 switches: (A, c_upper, c_lower) with
    ``A x + c_lower <= s_0(x) <= A x + c_upper``.  For ReLU-type gates ``s_0 = W_0 x + b_0`` is used as
    is (margin 0, as before: the half-spaces are the splits themselves); for a switch matrix ``S`` the
    products ``S W_0``, ``S b_0`` (fan-in ``n``) get a ``2 (n + 2) eps`` magnitude margin."""
    W, b = chain.weights[0], chain.biases[0]
    S = chain.gates[0].switch_matrix
    if S is None:
        return W, b, b
    A, c = S @ W, S @ b
    err = 2 * (S.shape[1] + 2) * EPS64 * ((S.abs() @ W.abs()) @ xmag + S.abs() @ b.abs())
    return A, c + err, c - err


def _warm_dense(warm, k, D, n, cols, dev):
    """The stored multipliers of layer ``k`` of each domain (``warm[d][k]``: (flat positions ``row * cols + switch``,
    upper-row values, lower-row values) or None) as one dense float32 (D, 2 n, cols) tensor (rows: upper bounds of the
    ``n`` switches, then lower bounds), zero where nothing is stored.  One scatter for the whole batch."""
    full = np.zeros((D, 2, n * cols), dtype=np.float32)
    ws = [(d, w[k]) for d, w in enumerate(warm) if w is not None and w[k] is not None]
    if ws:
        sizes = np.fromiter((t[0].size for _, t in ws), dtype=np.int64, count=len(ws))
        base = np.repeat(np.fromiter((d for d, _ in ws), dtype=np.int64, count=len(ws)) * (2 * n * cols), sizes)
        pos = np.concatenate([t[0] for _, t in ws]).astype(np.int64) + base
        flat = full.reshape(-1)
        flat[pos] = np.concatenate([t[1] for _, t in ws])
        flat[pos + n * cols] = np.concatenate([t[2] for _, t in ws])
    return torch.from_numpy(full.reshape(D, 2 * n, cols)).to(dev)


def polytope_forward_bounds(chain, xl: torch.Tensor, xu: torch.Tensor, sb, fixed, iters: int = 20, lr: float = 0.1,
                            warm=None, keep_warm: bool = False):
    """Tighten the domain's switch bounds ``sb`` (list of (D, n_q) pairs, split-clamped) over its input polytope.

    ``fixed[k]``: (D, n_q) int8 split signs of the switches ``s_k`` (``z_k`` for ReLU-type gates).
    Returns (new bounds, empty flags (D,)).  Every returned interval contains ``s_k(x)`` for every
    ``x`` of the box that satisfies the splits.  Only the unstable switches of each domain are
    re-bounded; half-spaces and rows are packed per domain.

    ``warm``: None or, per domain, the multipliers kept by an earlier call (e.g. on its parent; any
    ``beta >= 0`` is sound, so they only change where the dual steps start); ``keep_warm``: also return
    this call's multipliers in that form: a list over domains of per-layer ``(flat positions row * cols + switch,
    upper-row values, lower-row values)`` (``cols`` = the switches of layers ``<= k``; None where a layer had no
    step), as a third result.
    """
    D = fixed[0].shape[0]
    dt, dev = xl.dtype, xl.device
    slopes = [float(g.d_off[0]) if g.Q is None and g.d_off is not None and g.d_off.numel() else 0.0
              for g in chain.gates]
    out = [(l.clone(), u.clone()) for l, u in sb]
    xmag = torch.maximum(xl.abs(), xu.abs())
    empty = torch.zeros(D, dtype=torch.bool, device=dev)
    Gs, hs, ms = [], [], []  # half-spaces so far: (D, n_j, n0), (D, n_j), masks (D, n_j)
    kept = [[None] * chain.depth for _ in range(D)] if keep_warm else None
    for k in range(chain.depth):
        n = chain.gates[k].n_q
        # the half-space columns so far (switches of layers <= k): warm multipliers sit at row * cols + switch
        cols = sum(g.n_q for g in chain.gates[:k + 1])
        if k == 0:
            A0, c0u, c0l = _first_layer(chain, xmag)
            Au, Al = A0.expand(D, n, -1), A0.expand(D, n, -1)
            cu, cl = c0u.expand(D, n), c0l.expand(D, n)
        else:
            # only the rows of the domain's unstable or split switches are used (packed per domain)
            l0, u0 = out[k]
            idx, val = pack_true(((l0 < 0) & (u0 > 0)) | (fixed[k] != 0))
            (Ap, cp), (An, cn) = _backsub(chain, k, out, slopes, (idx, val), xmag, both=True)
            n0 = Ap.shape[-1]
            # (scatter / gather along one dimension: indexing by two index tensors is several times slower)
            ie = idx[..., None].expand(-1, -1, n0)
            Au = torch.zeros(D, n, n0, dtype=dt, device=dev).scatter_(1, ie, Ap)
            Al = torch.zeros(D, n, n0, dtype=dt, device=dev).scatter_(1, ie, -An)
            cu = torch.zeros(D, n, dtype=dt, device=dev).scatter_(1, idx, cp)
            cl = torch.zeros(D, n, dtype=dt, device=dev).scatter_(1, idx, -cn)
        f = fixed[k]
        pos, neg = (f > 0).to(dt)[..., None], (f < 0).to(dt)[..., None]
        Gs.append(-pos * Au + neg * Al)  # z >= 0: -(Au x + cu) <= 0 ;  z <= 0: Al x + cl <= 0
        hs.append(pos[..., 0] * cu - neg[..., 0] * cl)
        ms.append(f != 0)
        l0, u0 = out[k]
        unst = (l0 < 0) & (u0 > 0)
        if not bool(unst.any()):
            continue
        mask = torch.cat(ms, 1)
        if bool(mask.any()):
            gi, gv = pack_true(mask)
            G = torch.gather(torch.cat(Gs, 1), 1, gi[..., None].expand(-1, -1, Au.shape[-1])) * gv[..., None].to(dt)
            h = torch.gather(torch.cat(hs, 1), 1, gi) * gv.to(dt)
        else:
            G = h = None
        ri, rv = pack_true(unst)
        re = ri[..., None].expand(-1, -1, Au.shape[-1])
        A2 = torch.cat((torch.gather(Au, 1, re), -torch.gather(Al, 1, re)), 1)
        c2 = torch.cat((torch.gather(cu, 1, ri), -torch.gather(cl, 1, ri)), 1)
        M = ri.shape[1]
        beta0 = None
        if warm is not None and G is not None:
            full = _warm_dense(warm, k, D, n, cols, dev).reshape(D, -1)
            rid = torch.cat((ri, ri + n), 1)
            flat = (rid[:, :, None] * cols + gi[:, None, :]).reshape(D, -1)  # one gather (advanced indexing: ~20x slower)
            beta0 = full.gather(1, flat).reshape(D, 2 * M, -1)
            beta0 = beta0 * (torch.cat((rv, rv), 1)[..., None] & gv[:, None, :])
        ub, beta = polytope_max(A2, c2, G, h, xl, xu, iters, lr, beta0=beta0, return_beta=True)
        if keep_warm and beta is not None:
            # pack_true left-packs: the valid rows / half-spaces of a domain are a prefix of its packed ones
            cM, cm = rv.sum(1).tolist(), gv.sum(1).tolist()
            # flat positions row * cols + switch, int16 where they fit (flatten: own copies)
            fi = (ri[:, :, None] * cols + gi[:, None, :]).cpu().numpy().astype(np.int16 if n * cols < 32768 else np.int32)
            bn = beta.cpu().numpy()
            for d in range(D):
                a, b = cM[d], cm[d]
                if a and b:
                    kept[d][k] = (fi[d, :a, :b].flatten(), bn[d, :a, :b].flatten(), bn[d, M:M + a, :b].flatten())
        inf = torch.full_like(ub[:, :M], float("inf"))
        u_new = torch.where(rv, ub[:, :M], inf)
        l_new = torch.where(rv, -ub[:, M:], -inf)
        l1, u1 = l0.clone(), u0.clone()
        l1.scatter_reduce_(1, ri, l_new, reduce="amax")
        u1.scatter_reduce_(1, ri, u_new, reduce="amin")
        l1, u1 = clamp_switch(l1, u1, f)
        empty |= (l1 > u1).any(-1)
        out[k] = (l1, torch.maximum(u1, l1))
    return (out, empty, kept) if keep_warm else (out, empty)
