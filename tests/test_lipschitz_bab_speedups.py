"""Issue #15: the faster / tighter activation branch-and-bound of relax/lipschitz stays sound.

What changed, and the independent truth each test checks it against:

* the backward-graph and polytope back-substitutions pick the upper/lower relaxation line by
  ``clamp`` + ``addcmul`` and sum intercepts by ``bmm`` (was ``torch.where`` + ``sum``), and take the
  first, batch-shared product unbatched: compared with the ``torch.where`` formulation written out here,
  and the polytope bounds with sampled points;
* children start from their parent's re-bounded switch bounds: every stored domain's bounds contain the
  switch values of sampled box points that satisfy the domain's splits (rejection sampling, numpy-free
  forward of the dense chain), and a child's bounds lie inside its parent's;
* alpha-CROWN intermediate bounds (``forward="alpha-crown"``, and ``"auto"`` before a BaB): never looser
  than CROWN, strictly tighter on these nets, and they contain sampled pre-activations;
* the BaB with all of it still reaches the exact constant: HiGHS MILP (ReLU MLP and conv net),
  enumeration of activation regions with an LP check (LeakyReLU).
"""

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.optimize import linprog
from torch import nn

from nncertify import models
from nncertify.models.layers import MaxMin
from nncertify.relax.lipschitz import local_lipschitz
from nncertify.relax.lipschitz.search import bab as bab_mod
from nncertify.relax.lipschitz.bounds.backward import BackwardGraph
from nncertify.relax.lipschitz.bounds.common import derivative_ranges
from nncertify.relax.lipschitz.bounds.chain import dense_chain, forward_bounds
from nncertify.relax.lipschitz.lower_bounds.exact import exact_local_lipschitz
from nncertify.relax.lipschitz.bounds.polytope import _backsub, _relax_lines, EPS64

DEFAULT_DTYPE = torch.float64
DT = torch.float64
FAST_ATTACK = {"n_samples": 64, "n_starts": 4, "steps": 10}
pytestmark = pytest.mark.usefixtures("single_thread")

ACTS = {"relu": nn.ReLU, "leaky": lambda: nn.LeakyReLU(0.15), "maxmin": MaxMin}


def mlp(widths, seed, act="relu"):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(widths[:-2], widths[1:-1]):
        layers += [nn.Linear(a, b), ACTS[act]()]
    layers.append(nn.Linear(widths[-2], widths[-1]))
    return nn.Sequential(*layers).double()


def conv_net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(16, 3)).double()


# ------------------------------------------------------------------ backward graph: line selection
def reference_upper(bg, Lam, pos):
    """The torch.where formulation of BackwardGraph.upper (before issue #15)."""
    bias = torch.zeros(Lam.shape[:2], dtype=Lam.dtype)
    for i in range(pos - 1, -1, -1):
        kind, k = bg.items[i]
        if kind == "lin":
            Lam = Lam @ bg.chain.weights[k].T
        else:
            gate = bg.chain.gates[k]
            au, bu, al, bl = bg.lines[k]
            P = Lam if gate.F_p is None else Lam @ gate.F_p
            pos_ = P > 0
            coef = P * torch.where(pos_, au[:, None, :], al[:, None, :])
            bias = bias + (P * torch.where(pos_, bu[:, None, :], bl[:, None, :])).sum(-1)
            Lq = coef if gate.E is None else coef @ gate.E
            Lam = Lq if gate.F_g is None else Lam @ gate.F_g + Lq
    return torch.einsum("bmo,bo->bm", Lam, bg.seeds) + bias


def test_chord_pair_intercepts_are_opposite_and_interval_mode_keeps_its_own_lines():
    """BackwardGraph.upper's crown form charges ``|P| max(bu, -bl)`` for the intercepts: equal to the line choice's
    ``P bu [P > 0] + P bl [P < 0]`` because a gated product's chord pair has ``bl = -bu`` (here up to rounding, on
    random ranges incl. fixed derivatives, one-signed and zero-width inputs); the interval ("recurjac") lines do not
    have that form, so that mode keeps the line-choice evaluation."""
    from nncertify.relax.lipschitz.bounds.relaxations import gated_product_lower, gated_product_upper
    g = torch.Generator().manual_seed(4)
    a = torch.rand(5000, generator=g, dtype=DT) - 0.3
    b = a + torch.rand(5000, generator=g, dtype=DT) * (torch.rand(5000, generator=g, dtype=DT) > 0.2)
    l = torch.randn(5000, generator=g, dtype=DT)
    u = l + torch.rand(5000, generator=g, dtype=DT) * (torch.rand(5000, generator=g, dtype=DT) > 0.1)
    _, bu = gated_product_upper(a, b, l, u)
    _, bl = gated_product_lower(a, b, l, u)
    assert (bu >= -1e-15).all() and (bu > 1e-3).any()
    assert ((bu + bl).abs() <= 1e-12 * (bu.abs() + 1e-3)).all()
    _, iu = gated_product_upper(a, b, l, u, interval=True)
    _, il = gated_product_lower(a, b, l, u, interval=True)
    assert ((iu + il).abs() > 1e-3).any()
    bg = BackwardGraph(dense_chain(models.from_module(mlp([3, 4, 2], 0)).to(dtype=DT)), torch.eye(2, dtype=DT),
                       [(torch.zeros(2, 4, dtype=DT), torch.ones(2, 4, dtype=DT))], mode="recurjac")
    bg.run()
    assert not bg.sym_lines and bg.lines


@pytest.mark.parametrize("act", sorted(ACTS))
def test_backward_line_selection_equals_the_where_formulation(act):
    module = mlp([5, 8, 8, 3], 2, act)
    chain = dense_chain(models.from_module(module).to(dtype=DT))
    xl, xu = torch.full((5,), -0.6), torch.full((5,), 0.7)
    fb, _ = forward_bounds(chain, xl[None], xu[None])
    seeds = torch.eye(3).repeat(2, 1)
    bg = BackwardGraph(chain, seeds, derivative_ranges(chain, fb, seeds.shape[0]))
    bb = bg.run()
    assert any(((a < b).any()) for a, b in bg.d_ranges)  # unstable neurons: the lines matter
    g = torch.Generator().manual_seed(0)
    end = len(bg.items)
    for pos in range(1, end + 1):
        kind, k = bg.items[pos - 1]  # v_pos = W_k^T v_{pos-1} (lin) or the gate's output h_k
        dim = chain.weights[k].shape[1] if kind == "lin" else chain.gates[k].n
        Lam = torch.randn(seeds.shape[0], 7, dim, generator=g)
        Lam[:, :, 0] = 0.0  # exact zeros take either line
        new, ref = bg.upper(Lam.clone(), pos), reference_upper(bg, Lam, pos)
        assert torch.allclose(new, ref, rtol=1e-12, atol=1e-12)
    # the gradient bounds (identity rows, first product unbatched) equal the batched reference
    n0 = chain.in_dim
    eye = torch.eye(n0)
    ref = reference_upper(bg, torch.cat((eye, -eye)).expand(seeds.shape[0], 2 * n0, n0), end)
    assert torch.allclose(bb.grad_upper, ref[:, :n0], rtol=1e-12, atol=1e-12)
    assert torch.allclose(bb.grad_lower, -ref[:, n0:], rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ polytope back-substitution
def reference_backsub(chain, k, sb, slopes, rows):
    """CROWN upper linear bound of rows @ z_k (ReLU-type chain), torch.where form, no rounding margin."""
    D = sb[0][0].shape[0]
    Lam = rows.expand(D, *rows.shape)
    bias = Lam @ chain.biases[k]
    for j in range(k - 1, -1, -1):
        Lam = Lam @ chain.weights[j + 1]
        su, tu, sl = _relax_lines(*sb[j], slopes[j])
        pos = Lam > 0
        bias = bias + (Lam.clamp(min=0) * tu[:, None, :]).sum(-1)
        Lam = torch.where(pos, Lam * su[:, None, :], Lam * sl[:, None, :])
        bias = bias + Lam @ chain.biases[j]
    return Lam @ chain.weights[0], bias


@pytest.mark.parametrize("act", ["relu", "leaky"])
def test_polytope_backsub_equals_the_reference_and_bounds_sampled_points(act):
    module = mlp([4, 9, 7, 6, 2], 5, act)
    chain = dense_chain(models.from_module(module).to(dtype=DT))
    xl, xu = torch.full((4,), -0.5), torch.full((4,), 0.5)
    fb, _ = forward_bounds(chain, xl[None], xu[None])
    sb = [(l.expand(3, -1), u.expand(3, -1)) for l, u in fb]
    slopes = [float(g.d_off[0]) for g in chain.gates]
    X = xl + (xu - xl) * torch.rand(5000, 4, generator=torch.Generator().manual_seed(1))
    zs, _ = chain.forward_all(X)
    xmag = torch.maximum(xl.abs(), xu.abs())
    for k in range(1, chain.depth):
        n = chain.gates[k].n
        for sgn in (1.0, -1.0):
            rows = sgn * torch.eye(n)
            A, c = _backsub(chain, k, sb, slopes, rows, xmag)
            Ar, cr = reference_backsub(chain, k, sb, slopes, rows)
            assert torch.allclose(A, Ar, rtol=1e-12, atol=1e-13)
            assert (c >= cr).all() and torch.allclose(c, cr, rtol=1e-9, atol=1e-12)  # + rounding margin only
            assert (c - cr <= 1e-6 * (cr.abs() + 1)).all()
            val = sgn * zs[k]  # rows @ z_k(x) <= A x + c for every sampled x
            assert (val[None] <= (X @ A[0].T + c[0])[None] + 1e-12).all()
            # both signs in one call (shared magnitudes and lines): the same two results
            (Ap, cp), (An, cn) = _backsub(chain, k, sb, slopes, rows, xmag, both=True)
            _check_picked_rows(chain, k, sb, slopes, xmag, n)
            A2, c2 = _backsub(chain, k, sb, slopes, -rows, xmag)
            assert torch.equal(Ap, A) and torch.equal(cp, c) and torch.equal(An, A2) and torch.equal(cn, c2)


def _check_picked_rows(chain, k, sb, slopes, xmag, n_q):
    """The one-hot form ``(idx, valid)`` of ``_backsub``'s rows (first step a pick of rows of ``S W_k``) gives the dense
    rows' results to rounding (the first product is evaluated in another order, covered by the same margin); padded
    rows (valid False) give A = 0."""
    D = sb[0][0].shape[0]
    g = torch.Generator().manual_seed(k)
    idx = torch.stack([torch.randperm(n_q, generator=g)[:n_q - 1] for _ in range(D)])
    valid = torch.rand(idx.shape, generator=g) > 0.3
    rows = torch.eye(n_q, dtype=DT)[idx] * valid[..., None].to(DT)
    for (A, c), (Ad, cd) in zip(_backsub(chain, k, sb, slopes, (idx, valid), xmag, both=True),
                                _backsub(chain, k, sb, slopes, rows, xmag, both=True)):
        assert torch.allclose(A, Ad, rtol=1e-12, atol=1e-14) and torch.allclose(c, cd, rtol=1e-12, atol=1e-14)
        assert (A[~valid] == 0).all()


def test_polytope_backsub_of_both_signs_on_a_maxmin_chain_bounds_sampled_switches():
    """Switch-matrix gates (MaxMin): ``both=True`` gives the two single calls' results, and both linear bounds
    hold at sampled points (``-rows s_k(x) <= A_neg x + c_neg``, ``rows s_k(x) <= A x + c``)."""
    module = mlp([4, 8, 6, 2], 7, "maxmin")
    chain = dense_chain(models.from_module(module).to(dtype=DT))
    xl, xu = torch.full((4,), -0.5, dtype=DT), torch.full((4,), 0.5, dtype=DT)
    fb, _ = forward_bounds(chain, xl[None], xu[None])
    sb = [g.switch_bounds(l.expand(3, -1), u.expand(3, -1)) for g, (l, u) in zip(chain.gates, fb)]
    slopes = [0.0] * chain.depth
    X = xl + (xu - xl) * torch.rand(4000, 4, generator=torch.Generator().manual_seed(2), dtype=DT)
    zs, _ = chain.forward_all(X)
    xmag = torch.maximum(xl.abs(), xu.abs())
    k = 1
    S = chain.gates[k].switch_matrix
    rows = torch.eye(S.shape[0], dtype=DT)
    (Ap, cp), (An, cn) = _backsub(chain, k, sb, slopes, rows, xmag, both=True)
    _check_picked_rows(chain, k, sb, slopes, xmag, S.shape[0])
    A1, c1 = _backsub(chain, k, sb, slopes, rows, xmag)
    A2, c2 = _backsub(chain, k, sb, slopes, -rows, xmag)
    assert torch.equal(Ap, A1) and torch.equal(cp, c1) and torch.equal(An, A2) and torch.equal(cn, c2)
    s = zs[k] @ S.T  # switches at the sampled points
    assert (s <= X @ Ap[0].T + cp[0] + 1e-12).all() and (-s <= X @ An[0].T + cn[0] + 1e-12).all()
    assert ((X @ Ap[0].T + cp[0]) - s).min() < 0.5  # a bound, not a vacuous one


# ------------------------------------------------------------------ inherited switch bounds
@pytest.mark.parametrize("act", sorted(ACTS))
def test_inherited_switch_bounds_contain_every_sampled_point_of_the_domain(act, monkeypatch):
    module = mlp([3, 8, 8, 2], 4, act)
    net = models.from_module(module)
    chain = dense_chain(net.to(dtype=DT))
    lo, hi = torch.full((1, 3), -0.6), torch.full((1, 3), 0.6)
    seen = []
    orig = bab_mod._ActivationSearch.bound

    def recording(self, children):
        out = orig(self, children)
        for d in children:
            if d.sb is not None:
                seen.append((d.fixed.copy(), d.sb.copy(), d.key))
        return out

    monkeypatch.setattr(bab_mod._ActivationSearch, "bound", recording)
    r = local_lipschitz(net, (lo, hi), c=torch.tensor([1.0, -1.0]), bab_timeout=20,
                        bab_options={"max_domains": 120, "batch": 4}, attack_options=FAST_ATTACK)
    assert r.lower <= r.upper
    deep = [s for s in seen if (s[0] != 0).sum() >= 2]
    assert len(deep) >= 5, len(seen)
    X = lo[0] + (hi[0] - lo[0]) * torch.rand(40000, 3, generator=torch.Generator().manual_seed(2))
    zs, _ = chain.forward_all(X)
    S = torch.cat([g.switch_values(z) for g, z in zip(chain.gates, zs)], 1)  # (N, sum n_q) switch values
    by_fixed = {f.tobytes(): sb for f, sb, _ in seen}
    checked = nested = 0
    for f, sb, key in seen:
        fx = torch.from_numpy(f).to(DT)
        inside = ((fx * S >= 0) | (fx == 0)).all(-1)
        if not bool(inside.any()):
            continue
        Si = S[inside]
        assert (Si >= torch.from_numpy(sb[0]) - 1e-9).all() and (Si <= torch.from_numpy(sb[1]) + 1e-9).all()
        checked += 1
        for j in np.flatnonzero(f):  # the parent: the same splits but one
            pf = f.copy()
            pf[j] = 0
            psb = by_fixed.get(pf.tobytes())
            if psb is not None:
                assert (sb[0] >= psb[0]).all() and (sb[1] <= psb[1]).all()
                nested += 1
    assert checked >= 5 and nested >= 3, (checked, nested)


# ------------------------------------------------------------------ alpha-CROWN intermediate bounds
CASES_ALPHA = [("relu", lambda: mlp([8, 24, 24, 24, 3], 0, "relu"), (8,)),
               ("leaky", lambda: mlp([8, 24, 24, 24, 3], 0, "leaky"), (8,)),
               ("conv", lambda: conv_net(0), (1, 6, 6))]


@pytest.mark.parametrize("name,make,shape", CASES_ALPHA, ids=[c[0] for c in CASES_ALPHA])
def test_alpha_intermediate_bounds_are_tighter_and_contain_sampled_preactivations(name, make, shape):
    module = make()
    net = models.from_module(module, input_shape=shape) if len(shape) > 1 else models.from_module(module)
    chain = dense_chain(net.to(dtype=DT))
    x0 = torch.rand(1, int(np.prod(shape)), generator=torch.Generator().manual_seed(3))
    lo, hi = x0 - 0.3, x0 + 0.3
    fc, used_c = forward_bounds(chain, lo, hi, "auto")
    fa, used_a = forward_bounds(chain, lo, hi, "alpha-crown")
    fr, used_r = forward_bounds(chain, lo, hi, "auto", refine=True)
    assert (used_c, used_a, used_r) == ("crown", "alpha-crown", "alpha-crown")
    gain = 0.0
    for (lc, uc), (la, ua), (lr, ur) in zip(fc, fa, fr):
        assert (la >= lc).all() and (ua <= uc).all()  # intersected with CROWN: never looser
        assert torch.equal(la, lr) and torch.equal(ua, ur)
        gain += float(((uc - lc) - (ua - la)).sum())
    assert gain > 0.1, gain  # strictly tighter on these nets
    unst = lambda fb: sum(int(((l < 0) & (u > 0)).sum()) for l, u in fb)  # noqa: E731
    assert unst(fa) <= unst(fc)
    g = torch.Generator().manual_seed(4)
    X = lo + (hi - lo) * torch.rand(20000, lo.shape[1], generator=g)
    corners = torch.where(torch.rand(2000, lo.shape[1], generator=g) < 0.5, lo, hi)
    zs, _ = chain.forward_all(torch.cat((X, corners)))
    for z, (l, u) in zip(zs, fa):
        assert (z >= l - 1e-9).all() and (z <= u + 1e-9).all()


def test_alpha_crown_forward_gives_a_sound_tighter_lipschitz_bound():
    module = mlp([8, 24, 24, 24, 3], 0, "relu")
    net = models.from_module(module)
    lo, hi = torch.full((1, 8), 0.0), torch.full((1, 8), 0.6)
    crown = local_lipschitz(net, (lo, hi), attack_options=FAST_ATTACK)
    alpha = local_lipschitz(net, (lo, hi), forward="alpha-crown", attack_options=FAST_ATTACK)
    assert alpha.forward_method == "alpha-crown" and crown.forward_method == "crown"
    assert alpha.lower <= alpha.upper < crown.upper
    X = lo + (hi - lo) * torch.rand(3000, 8, generator=torch.Generator().manual_seed(0), dtype=DT)
    X.requires_grad_(True)
    J = torch.stack([torch.autograd.grad(module(X)[:, j].sum(), X, retain_graph=True)[0] for j in range(3)], 1)
    assert float(J.abs().sum(-1).max()) <= alpha.upper


# ------------------------------------------------------------------ exactness of the complete search
def enumerate_leaky(module, lo, hi, c, slope):
    """max over closed activation regions meeting the box of ||c^T J||_1 (LeakyReLU: slope off the region)."""
    lins = [m for m in module if isinstance(m, nn.Linear)]
    Ws = [m.weight.detach().numpy() for m in lins]
    bs = [m.bias.detach().numpy() for m in lins]
    hidden = [W.shape[0] for W in Ws[:-1]]
    best = -math.inf
    for pattern in itertools.product([0.0, 1.0], repeat=sum(hidden)):
        pat = np.array(pattern)
        A_ub, b_ub = [], []
        M, v = np.eye(lo.size), np.zeros(lo.size)
        off = 0
        for W, b, n in zip(Ws[:-1], bs[:-1], hidden):
            Az, cz = W @ M, W @ v + b
            on = pat[off:off + n]
            s = np.where(on > 0, 1.0, -1.0)
            A_ub.append(-s[:, None] * Az)
            b_ub.append(s * cz)
            d = np.where(on > 0, 1.0, slope)
            M, v = d[:, None] * Az, d * cz
            off += n
        val = np.abs(c @ Ws[-1] @ M).sum()
        if val <= best:
            continue
        r = linprog(np.zeros(lo.size), A_ub=np.vstack(A_ub), b_ub=np.concatenate(b_ub),
                    bounds=list(zip(lo, hi)), method="highs")
        if r.status == 0:
            best = val
    return best


def test_complete_bab_is_exact_on_a_leaky_relu_net():
    module = mlp([3, 5, 5, 2], 1, "leaky")
    net = models.from_module(module)
    lo, hi = torch.full((1, 3), -0.5), torch.full((1, 3), 0.4)
    c = torch.tensor([1.0, -1.0])
    truth = enumerate_leaky(module, lo[0].numpy(), hi[0].numpy(), c.numpy(), 0.15)
    r = local_lipschitz(net, (lo, hi), c=c, bab_timeout=30, attack_options=FAST_ATTACK)
    assert r.exact and r.upper >= truth and r.upper == pytest.approx(truth, rel=1e-6)
    assert r.forward_method == "alpha-crown"


@pytest.mark.parametrize("which", ["mlp", "conv"])
def test_complete_bab_matches_the_milp(which):
    if which == "mlp":
        module, shape = mlp([4, 7, 6, 3], 3, "relu"), (4,)
        net = models.from_module(module)
    else:
        torch.manual_seed(1)
        module = nn.Sequential(nn.Conv2d(1, 2, 2), nn.ReLU(), nn.Conv2d(2, 2, 2), nn.ReLU(), nn.Flatten(),
                               nn.Linear(2, 2)).double()
        shape = (1, 3, 3)
        net = models.from_module(module, input_shape=shape)
    n0 = int(np.prod(shape))
    x0 = torch.rand(1, *shape, generator=torch.Generator().manual_seed(2), dtype=DT)
    lo, hi = x0 - 0.35, x0 + 0.35
    c = torch.zeros(3 if which == "mlp" else 2)
    c[0], c[-1] = 1.0, -1.0
    ex = exact_local_lipschitz(net, (lo, hi), c=c, time_limit=60)
    assert ex.optimal
    r = local_lipschitz(net, (lo, hi), c=c, bab_timeout=30, attack_options=FAST_ATTACK)
    # HiGHS's optimum carries its feasibility tolerance (1e-7 on big-M rows): it may exceed the true
    # maximum by ~1e-9; the BaB's own lower bound is a gradient norm at a point of the box (autograd here)
    assert r.exact and r.upper >= ex.value - 1e-8 and r.upper == pytest.approx(ex.value, rel=1e-6, abs=1e-8)
    w = torch.tensor(next(iter(r.stats["witness"].values())), dtype=DT).reshape(1, *shape)
    assert ((w >= lo - 1e-12) & (w <= hi + 1e-12)).all()
    w.requires_grad_(True)
    g = torch.autograd.grad((module(w)[0] * c).sum(), w)[0]
    assert float(g.abs().sum()) == pytest.approx(r.lower, rel=1e-9) and r.lower <= r.upper
    assert r.upper == pytest.approx(r.lower, rel=1e-7) and n0 == lo[0].numel()


def test_alpha_refinement_stops_at_its_deadline_with_sound_bounds():
    import time
    module = mlp([8, 24, 24, 24, 3], 0, "relu")
    chain = dense_chain(models.from_module(module).to(dtype=DT))
    lo, hi = torch.full((1, 8), 0.0), torch.full((1, 8), 0.6)
    fc, _ = forward_bounds(chain, lo, hi, "auto")
    t = time.perf_counter()
    fd, _ = forward_bounds(chain, lo, hi, "auto", refine=True, deadline=t - 1.0)  # already past: no refinement
    for (lc, uc), (ld, ud) in zip(fc, fd):
        assert torch.equal(lc, ld) and torch.equal(uc, ud)


def test_stored_switch_bounds_round_outward_to_float32():
    g = torch.Generator().manual_seed(0)
    mag = 10.0 ** torch.randint(-40, 40, (3, 2000), generator=g).to(DT)
    lo = torch.randn(3, 2000, generator=g) * mag
    hi = lo + torch.rand(3, 2000, generator=g) * mag
    lo[0, :6] = torch.tensor([-math.inf, 1e300, -1e-320, 0.0, 0.5, -3.0e38 * 2])
    hi[0, :6] = torch.tensor([math.inf, 1e300, 1e-320, 0.0, 0.5, 4.0e38])
    out = bab_mod._outward32(lo, hi)
    assert out.dtype == np.float32 and out.shape == (3, 2, 2000)
    o = torch.from_numpy(out).to(DT)
    assert (o[:, 0] <= lo).all() and (o[:, 1] >= hi).all()  # contains [lo, hi]
    assert o[0, 0, 4] == 0.5 and o[0, 1, 4] == 0.5  # exact float32 values are kept (nesting)
    assert torch.equal(torch.from_numpy(bab_mod._outward32(o[:, 0], o[:, 1])).to(DT), o)
    normal = (lo.abs() > 1e-30) & (lo.abs() < 1e38)  # inside float32's normal range: one float32 step at most
    rel = ((o[:, 0] - lo).abs() / lo.abs()).where(normal, torch.zeros_like(lo))
    assert float(rel.max()) < 3e-7
