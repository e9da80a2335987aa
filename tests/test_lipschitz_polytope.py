"""Branch-and-bound domain bounding over the input polytope (relax/lipschitz/bounds/polytope.py) and the joint
domain LP (relax/lipschitz/search/split_lp.py).

Independent truths: HiGHS LPs written here (max of a linear function over box ∩ half-spaces),
rejection sampling of the domain (points of the box satisfying the splits), brute-force enumeration
of activation patterns with an LP feasibility check, and constructions whose infeasibility is
evident by hand."""

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.optimize import linprog
from torch import nn

from nncertify import models
from nncertify.relax.lipschitz.api import derivative_ranges
from nncertify.relax.lipschitz.bounds.backward import BackwardGraph
from nncertify.relax.lipschitz.bounds.chain import dense_chain, forward_bounds, interval_bounds
from nncertify.relax.lipschitz.bounds.polytope import polytope_forward_bounds, polytope_max
from nncertify.relax.lipschitz.search.split_lp import domain_lp_bound

DT = torch.float64


def lp_max(a, G, h, xl, xu):
    r = linprog(-a, A_ub=G, b_ub=h, bounds=list(zip(xl, xu)), method="highs")
    assert r.status == 0
    return -r.fun


@pytest.mark.parametrize("fused", [True, False])
def test_polytope_max_is_sound_and_closes_most_of_the_box_gap(fused):
    g = torch.Generator().manual_seed(0)
    D, r, m, n = 6, 8, 5, 4
    xl, xu = torch.full((n,), -0.3, dtype=DT), torch.full((n,), 0.5, dtype=DT)
    x0 = xl + (xu - xl) * torch.rand(D, n, generator=g, dtype=DT)
    G = torch.randn(D, m, n, generator=g, dtype=DT)
    h = (G @ x0[..., None])[..., 0] + 0.05 * torch.rand(D, m, generator=g, dtype=DT)  # x0 is feasible
    A = torch.randn(D, r, n, generator=g, dtype=DT)
    c = torch.randn(D, r, generator=g, dtype=DT)
    exact = np.array([[lp_max(A[d, i].numpy(), G[d].numpy(), h[d].numpy(), xl.numpy(), xu.numpy()) + float(c[d, i])
                       for i in range(r)] for d in range(D)])
    box = polytope_max(A, c, G, h, xl, xu, iters=0).numpy()
    box_direct = (c + A.clamp(min=0) @ xu + A.clamp(max=0) @ xl).numpy()
    assert box == pytest.approx(box_direct, rel=1e-9, abs=1e-12)
    for iters in (5, 60):
        ub = polytope_max(A, c, G, h, xl, xu, iters=iters, fused=fused).numpy()
        assert (ub >= exact).all()  # sound for any number of iterations
        assert (ub <= box + 1e-12).all()  # never worse than the box
    closed = 1 - (ub - exact).sum() / (box - exact).sum()
    assert closed > 0.9, closed


def test_fused_adam_kernel_takes_the_op_by_op_steps():
    """The dual steps by torch's fused Adam kernel and op by op (the fallback where torch lacks the kernel) are the
    same iteration: the iterates agree to float32 rounding over 30 steps with decaying rates, zero gradients
    included (an entry whose gradient stays 0 must not move: no 0/0 in either form)."""
    from nncertify.relax.lipschitz.bounds import polytope
    if polytope._FUSED_ADAM is None:
        pytest.skip("this torch has no fused Adam kernel (the op-by-op form is the one in use)")
    g = torch.Generator().manual_seed(5)
    x0 = torch.rand(4, 9, 7, generator=g)
    grads = [torch.randn(4, 9, 7, generator=g) * (torch.rand(4, 9, 7, generator=g) > 0.3) for _ in range(30)]
    for gr in grads:
        gr[0, 0] = 0.0
    xs = []
    for fused in (True, False):
        x = x0.clone()
        opt = polytope._Adam(x, fused)
        assert opt.fused == fused
        for t, gr in enumerate(grads, 1):
            opt.step(gr, 0.1 * (1 - 0.5 * t / 30))
            x.clamp_(min=0)
        assert torch.equal(x[0, 0], x0[0, 0])
        xs.append(x)
    assert torch.allclose(xs[0], xs[1], rtol=1e-5, atol=1e-6)
    assert not torch.equal(xs[0], x0)


def test_polytope_max_is_sound_from_any_start_and_a_good_start_helps():
    """Any ``beta0 >= 0`` (garbage included; negative entries are projected) gives a sound bound; starting from
    the multipliers of a long run, a few steps close more of the LP gap than the same steps from zero."""
    g = torch.Generator().manual_seed(3)
    D, r, m, n = 5, 7, 6, 4
    xl, xu = torch.full((n,), -0.4, dtype=DT), torch.full((n,), 0.6, dtype=DT)
    x0 = xl + (xu - xl) * torch.rand(D, n, generator=g, dtype=DT)
    G = torch.randn(D, m, n, generator=g, dtype=DT)
    h = (G @ x0[..., None])[..., 0] + 0.05 * torch.rand(D, m, generator=g, dtype=DT)
    A = torch.randn(D, r, n, generator=g, dtype=DT)
    c = torch.randn(D, r, generator=g, dtype=DT)
    exact = torch.tensor([[lp_max(A[d, i].numpy(), G[d].numpy(), h[d].numpy(), xl.numpy(), xu.numpy()) + float(c[d, i])
                           for i in range(r)] for d in range(D)], dtype=DT)
    for beta0 in (100 * torch.rand(D, r, m, generator=g, dtype=DT), torch.randn(D, r, m, generator=g, dtype=DT)):
        for iters in (1, 5):
            ub, beta = polytope_max(A, c, G, h, xl, xu, iters=iters, beta0=beta0, return_beta=True)
            assert (ub >= exact).all() and (beta >= 0).all()
    _, good = polytope_max(A, c, G, h, xl, xu, iters=300, return_beta=True)
    warm = polytope_max(A, c, G, h, xl, xu, iters=3, beta0=good)
    cold = polytope_max(A, c, G, h, xl, xu, iters=3)
    assert (warm >= exact).all()
    assert (warm - exact).sum() < 0.5 * (cold - exact).sum()


def test_warm_started_child_domains_stay_sound_and_start_ahead():
    """The multipliers a domain keeps (``keep_warm``) start its children (one more split each): the children's
    bounds contain every sampled point of the child domain, and with the same few steps they are tighter in
    total than the children's cold bounds."""
    module = tiny_net([3, 9, 8, 2], 6)
    lo, hi = torch.full((1, 3), -0.5, dtype=DT), torch.full((1, 3), 0.6, dtype=DT)
    chain, xl, xu, ib, fixed = domain_setup(module, lo, hi, 10, 4)
    pb, empty, kept = polytope_forward_bounds(chain, xl, xu, ib, fixed, iters=40, keep_warm=True)
    assert not empty.any() and len(kept) == 10 and any(w[0] is not None for w in kept)
    # each child splits one more free unstable neuron, on the side of a sampled point of its parent's domain
    g = torch.Generator().manual_seed(9)
    X = xl + (xu - xl) * torch.rand(40000, 3, generator=g, dtype=DT)
    zs, _ = chain.forward_all(X)
    child = [f.clone() for f in fixed]
    inside_child = []
    for d in range(10):
        inside = torch.ones(X.shape[0], dtype=torch.bool)
        for z, f in zip(zs, fixed):
            s = f[d].to(DT)
            inside &= ((s * z >= 0) | (s == 0)).all(-1)
        x_i = int(inside.nonzero()[0])
        k = d % 2
        free = ((pb[k][0][d] < 0) & (pb[k][1][d] > 0) & (fixed[k][d] == 0)).nonzero()
        if len(free):
            j = int(free[0])
            child[k][d, j] = 1 if zs[k][x_i, j] >= 0 else -1
            inside &= child[k][d, j].to(DT) * zs[k][:, j] >= 0
        inside_child.append(inside)
    cb = ib  # from the interval bounds: the dual steps do the tightening
    warm, _ = polytope_forward_bounds(chain, xl, xu, cb, child, iters=4, warm=kept)
    cold, _ = polytope_forward_bounds(chain, xl, xu, cb, child, iters=4)
    for d in range(10):
        for k, z in enumerate(zs):
            zi = z[inside_child[d]]
            assert (zi >= warm[k][0][d] - 1e-12).all() and (zi <= warm[k][1][d] + 1e-12).all()
    width = lambda b: sum(float((u - l).sum()) for l, u in b)  # noqa: E731
    assert width(ib) - width(warm) > 1.1 * (width(ib) - width(cold))


def tiny_net(widths, seed, act=nn.ReLU):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(widths[:-2], widths[1:-1]):
        layers += [nn.Linear(a, b), act()]
    layers.append(nn.Linear(widths[-2], widths[-1]))
    return nn.Sequential(*layers).double()


def domain_setup(module, lo, hi, n_dom, seed):
    """Random domains whose splits agree with a random box point (so they are not empty)."""
    chain = dense_chain(models.from_module(module).to(dtype=DT))
    xl, xu = lo[0], hi[0]
    fb, _ = forward_bounds(chain, xl[None], xu[None])
    g = torch.Generator().manual_seed(seed)
    anchors = xl + (xu - xl) * torch.rand(n_dom, xl.numel(), generator=g, dtype=DT)
    zs, _ = chain.forward_all(anchors)
    fixed = []
    for z, (l, u) in zip(zs, fb):
        unst = (l < 0) & (u > 0)
        pick = (torch.rand(z.shape, generator=g) < 0.4) & unst
        fixed.append(torch.where(pick, torch.where(z >= 0, 1, -1), 0).to(torch.int8))
    base = [(l.expand(n_dom, -1), u.expand(n_dom, -1)) for l, u in fb]
    ib = interval_bounds(chain, xl.expand(n_dom, -1), xu.expand(n_dom, -1), base=base, fixed=fixed)
    return chain, xl, xu, ib, fixed


@pytest.mark.parametrize("act", [nn.ReLU, lambda: nn.LeakyReLU(0.2)])
def test_polytope_forward_bounds_contain_every_point_of_the_domain(act):
    module = tiny_net([3, 7, 6, 2], 3, act)
    lo, hi = torch.full((1, 3), -0.5, dtype=DT), torch.full((1, 3), 0.6, dtype=DT)
    chain, xl, xu, ib, fixed = domain_setup(module, lo, hi, 8, 1)
    pb, empty = polytope_forward_bounds(chain, xl, xu, ib, fixed, iters=40)
    assert not empty.any()  # every domain contains its anchor point
    g = torch.Generator().manual_seed(5)
    X = xl + (xu - xl) * torch.rand(20000, 3, generator=g, dtype=DT)
    zs, _ = chain.forward_all(X)
    tighter = 0
    for d in range(len(fixed[0])):
        inside = torch.ones(X.shape[0], dtype=torch.bool)
        for z, f in zip(zs, fixed):
            s = f[d].to(DT)
            inside &= ((s * z >= 0) | (s == 0)).all(-1)
        assert inside.sum() > 0
        for k, z in enumerate(zs):
            l, u = pb[k][0][d], pb[k][1][d]
            zi = z[inside]
            assert (zi >= l - 1e-12).all() and (zi <= u + 1e-12).all()
            assert (l >= ib[k][0][d] - 1e-15).all() and (u <= ib[k][1][d] + 1e-15).all()
            tighter += int(((u - l) < (ib[k][1][d] - ib[k][0][d]) - 1e-9).sum())
    assert tighter > 0  # the half-spaces of the splits do tighten other neurons


def test_layer0_bounds_match_the_lp_over_the_split_polytope():
    """Layer 0 is affine: with its splits as half-spaces the bound is an LP, which the dual reaches."""
    module = tiny_net([4, 10, 3, 2], 8)
    lo, hi = torch.full((1, 4), -0.4, dtype=DT), torch.full((1, 4), 0.4, dtype=DT)
    chain, xl, xu, ib, fixed = domain_setup(module, lo, hi, 6, 2)
    fixed = [fixed[0], torch.zeros_like(fixed[1])]  # only layer-0 splits: the polytope is exact
    pb, _ = polytope_forward_bounds(chain, xl, xu, ib, fixed, iters=100)
    W, b = chain.weights[0].numpy(), chain.biases[0].numpy()
    gap_box = gap_dual = 0.0
    for d in range(6):
        s = fixed[0][d].numpy().astype(float)
        rows = s != 0
        G, h = -s[rows, None] * W[rows], s[rows] * b[rows]
        for i in range(W.shape[0]):
            if s[i] != 0 or not (ib[0][0][d, i] < 0 < ib[0][1][d, i]):
                continue
            up = lp_max(W[i], G, h, xl.numpy(), xu.numpy()) + b[i]
            dn = -lp_max(-W[i], G, h, xl.numpy(), xu.numpy()) + b[i]
            u, l = float(pb[0][1][d, i]), float(pb[0][0][d, i])
            assert u >= up and l <= dn  # sound
            gap_box += float(ib[0][1][d, i]) - up + dn - float(ib[0][0][d, i])
            gap_dual += u - up + dn - l
    assert gap_box > 0 and gap_dual < 0.1 * gap_box, (gap_dual, gap_box)


def test_contradictory_splits_are_proven_empty():
    # z_a = w.x - 0.5 and z_b = -w.x - 0.5: z_a + z_b = -1, so z_a >= 0 and z_b >= 0 is impossible,
    # although each interval alone allows it (the dual certificate grows along beta_a = beta_b).
    w = torch.tensor([1.0, -2.0, 0.5], dtype=DT)
    lin0 = nn.Linear(3, 3).double()
    with torch.no_grad():
        lin0.weight[:] = torch.stack((w, -w, torch.tensor([0.3, 0.3, 0.3], dtype=DT)))
        lin0.bias[:] = torch.tensor([-0.5, -0.5, 0.0], dtype=DT)
    module = nn.Sequential(lin0, nn.ReLU(), nn.Linear(3, 2).double())
    chain = dense_chain(models.from_module(module).to(dtype=DT))
    xl, xu = torch.full((3,), -1.0, dtype=DT), torch.full((3,), 1.0, dtype=DT)
    fixed = [torch.tensor([[1, 1, 0], [1, -1, 0]], dtype=torch.int8)]
    ib = interval_bounds(chain, xl.expand(2, -1), xu.expand(2, -1), fixed=fixed)
    assert (ib[0][0] <= ib[0][1]).all()  # intervals alone do not see it
    _, empty = polytope_forward_bounds(chain, xl, xu, ib, fixed, iters=200)
    assert empty.tolist() == [True, False]


def enumerate_domain(module, xl, xu, seed_vec, fixed):
    """max ||grad(seed^T f)||_1 over feasible closed activation regions that agree with the splits."""
    lins = [m for m in module if isinstance(m, nn.Linear)]
    Ws = [m.weight.detach().numpy() for m in lins]
    bs = [m.bias.detach().numpy() for m in lins]
    hidden = [W.shape[0] for W in Ws[:-1]]
    best = -math.inf
    for pattern in itertools.product([0.0, 1.0], repeat=sum(hidden)):
        pat = np.array(pattern)
        off, ok = 0, True
        for f, n in zip(fixed, hidden):
            fs = f.numpy()
            p = pat[off:off + n]
            ok &= bool(((fs == 0) | ((fs > 0) & (p > 0)) | ((fs < 0) & (p == 0))).all())
            off += n
        if not ok:
            continue
        A_ub, b_ub, M, v, off = [], [], np.eye(xl.size), np.zeros(xl.size), 0
        for W, b, n in zip(Ws[:-1], bs[:-1], hidden):
            Az, cz = W @ M, W @ v + b
            d = pat[off:off + n]
            s = np.where(d > 0, 1.0, -1.0)
            A_ub.append(-s[:, None] * Az)
            b_ub.append(s * cz)
            M, v = d[:, None] * Az, d * cz
            off += n
        val = np.abs(seed_vec @ Ws[-1] @ M).sum()
        if val <= best:
            continue
        r = linprog(np.zeros(xl.size), A_ub=np.vstack(A_ub), b_ub=np.concatenate(b_ub),
                    bounds=list(zip(xl, xu)), method="highs")
        if r.status == 0:
            best = val
    return best


def test_domain_lp_bound_is_sound_and_exact_on_leaves():
    module = tiny_net([3, 5, 4, 2], 4)
    net = models.from_module(module)
    chain = dense_chain(net.to(dtype=DT))
    lo, hi = torch.full((3,), -0.5, dtype=DT), torch.full((3,), 0.5, dtype=DT)
    fb, _ = forward_bounds(chain, lo[None], hi[None])
    seed = torch.tensor([[1.0, -1.0]], dtype=DT)
    g = torch.Generator().manual_seed(3)
    for trial in range(6):
        x = lo + (hi - lo) * torch.rand(3, generator=g, dtype=DT)
        zs, _ = chain.forward_all(x[None])
        leaf = trial >= 3  # the last trials fix every neuron (a single activation region)
        fixed = []
        for z, (l, u) in zip(zs, fb):
            pick = torch.ones_like(z, dtype=torch.bool) if leaf else (torch.rand(z.shape, generator=g) < 0.5)
            fixed.append(torch.where(pick, torch.where(z >= 0, 1, -1), 0).to(torch.int8))
        ib = interval_bounds(chain, lo[None], hi[None], base=fb, fixed=fixed)
        pb, empty = polytope_forward_bounds(chain, lo, hi, ib, fixed, iters=30)
        assert not empty.any()
        dr = derivative_ranges(chain, pb, 1, fixed)
        bb = BackwardGraph(chain, seed, dr, "crown").run()
        crown = float(bb.l1_upper[0])
        delta = [((a[0] - g_.d_off) / (g_.d_on - g_.d_off)).numpy() for (a, _), g_ in zip(dr, chain.gates)]
        delta_hi = [((b[0] - g_.d_off) / (g_.d_on - g_.d_off)).numpy() for (_, b), g_ in zip(dr, chain.gates)]
        v = domain_lp_bound(chain, lo.numpy(), hi.numpy(), seed[0].numpy(),
                            [(l[0].numpy(), u[0].numpy()) for l, u in pb], list(zip(delta, delta_hi)),
                            [(l[0].numpy(), u[0].numpy()) for l, u in bb.q_bounds],
                            (bb.grad_lower[0].numpy(), bb.grad_upper[0].numpy()))
        truth = enumerate_domain(module, lo.numpy(), hi.numpy(), seed[0].numpy(), [f[0] for f in fixed])
        assert truth <= v <= crown * (1 + 1e-7) + 1e-9
        if leaf:
            assert v == pytest.approx(truth, rel=1e-6, abs=1e-9)


def test_chunked_polytope_rebounding_equals_the_single_pass(monkeypatch):
    from nncertify.relax.lipschitz.search import bab
    from nncertify.relax.lipschitz.bounds import polytope
    # op by op Adam: torch's fused kernel rounds an element differently depending on where it falls in its
    # vector loop (the tail), i.e. on the packed tensors' shapes -- sound either way, but not bit-equal
    monkeypatch.setattr(polytope, "_FUSED_ADAM", None)
    module = tiny_net([3, 7, 6, 2], 3)
    lo, hi = torch.full((1, 3), -0.5, dtype=DT), torch.full((1, 3), 0.6, dtype=DT)
    chain, xl, xu, ib, fixed = domain_setup(module, lo, hi, 9, 4)
    root, _ = forward_bounds(chain, xl[None], xu[None])
    one, e1 = bab.split_forward_bounds(chain, xl, xu, root, fixed, poly_iters=15)
    monkeypatch.setattr(bab, "POLY_CHUNK_ELEMS", 1)  # one domain per chunk
    many, e2 = bab.split_forward_bounds(chain, xl, xu, root, fixed, poly_iters=15)
    assert torch.equal(e1, e2)
    for (l1, u1), (l2, u2) in zip(one, many):
        assert torch.allclose(l1, l2, rtol=0, atol=1e-12) and torch.allclose(u1, u2, rtol=0, atol=1e-12)
