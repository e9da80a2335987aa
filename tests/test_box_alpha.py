"""alpha-CROWN over boxes (relax/bab/box_crown.py ``alpha_bound``, ``refine_intermediate``) and its use by
input splitting (relax/bab/input_split.ChainSplit with ``alpha_iters``/``refine_iters``): every bound against
exact minima (MILP with HiGHS, tests/milp_oracle.py) and sampled values; a box that only the new steps close;
verdicts of the search against the exact answer, sat and unsat."""

import math

import pytest
import torch

from nncertify.relax.bab.box_crown import AffineReluChain, BoxCrown
from nncertify.relax.bab.input_split import ChainSplit
from nncertify.relax.bab.search import branch_and_bound
from nncertify.relax.spec import Query, Specification, verify_query

from milp_oracle import spec_min
from patterns import conv_relu_network as _conv
from patterns import relu_network as _mlp


def _boxes(n_in, n, seed, frac=0.4):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(n, n_in, generator=g, dtype=torch.float64) * 2 - 1
    w = torch.rand(n, n_in, generator=g, dtype=torch.float64) * frac
    lo = (a - w).clamp(-1, 1)
    return lo, torch.maximum((a + w).clamp(-1, 1), lo)


def _pre_values(chain, x):
    """The exact pre-activations of every hidden layer at the points ``x (n, n_in)`` (float64)."""
    out, h = [], x
    for W, b in zip(chain.W[:-1], chain.b[:-1]):
        z = h @ W.T + b
        out.append(z)
        h = z.clamp(min=0)
    return out


@pytest.mark.parametrize("kind", ["mlp", "conv"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_alpha_bound_sound_against_milp_and_never_below_crown(kind, dtype, single_thread):
    net = _mlp(5, (3, 10, 10, 8, 3)) if kind == "mlp" else _conv(6)
    n_in, n_out = int(math.prod(net.input_shape)), int(math.prod(net.output_shape))
    chain = AffineReluChain.from_network(net)
    C = torch.randn(2, n_out, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    d = torch.tensor([0.05, -0.1], dtype=torch.float64)
    bc = BoxCrown(chain, C, d, dtype=dtype)
    lo, hi = _boxes(n_in, 5, 3, frac=0.5 if kind == "mlp" else 0.3)
    low, _, pre = bc.bound(lo, hi)
    la, alpha, margin = bc.alpha_bound(lo, hi, pre, iters=20, lr=0.2)
    assert la.shape == low.shape and bool((margin >= 0).all())
    assert all(bool(((a >= 0) & (a <= 1)).all()) for a in alpha)
    assert bool((la >= low - 1e-12).all())          # the first iterate is CROWN itself
    assert float((la - low).clamp(min=0).sum()) > 1e-4  # and the slopes do win somewhere
    for i in range(lo.shape[0]):
        for k in range(2):
            exact = spec_min(net, lo[i].reshape(net.input_shape), hi[i].reshape(net.input_shape), C[k:k + 1], d[k:k + 1])
            assert la[i, k] <= exact + 1e-9, (i, k, float(la[i, k]), exact)
    # the slopes found, evaluated again (iters = 0, the float64 re-bound's use), give the same certified bound
    la0, _, _ = bc.alpha_bound(lo, hi, pre, iters=0, alpha=alpha)
    assert torch.allclose(la0, la, rtol=0, atol=1e-9 if dtype == torch.float64 else 1e-5)


def test_refine_intermediate_contains_the_true_preactivations_and_tightens(single_thread):
    net = _mlp(8, (3, 12, 12, 12, 2))
    chain = AffineReluChain.from_network(net)
    bc = BoxCrown(chain, torch.tensor([[1.0, -1.0]], dtype=torch.float64), torch.zeros(1, dtype=torch.float64),
                  dtype=torch.float32)
    lo, hi = _boxes(3, 6, 4, frac=0.6)
    _, _, pre = bc.bound(lo, hi)
    ref = bc.refine_intermediate(lo, hi, pre, iters=10)
    g = torch.Generator().manual_seed(0)
    x = lo.unsqueeze(1) + (hi - lo).unsqueeze(1) * torch.rand(6, 400, 3, generator=g, dtype=torch.float64)
    x = torch.cat([x, lo.unsqueeze(1), hi.unsqueeze(1)], 1)  # corners of the box too
    z = _pre_values(chain, x.reshape(-1, 3))
    width0 = width1 = 0.0
    for (l0, u0), (l1, u1), zk in zip(pre, ref, z):
        zk = zk.reshape(6, -1, zk.shape[-1])
        assert bool((l1.double().unsqueeze(1) <= zk + 1e-9).all()) and bool((zk <= u1.double().unsqueeze(1) + 1e-9).all())
        assert bool((l1 >= l0).all()) and bool((u1 <= u0).all())  # contained in the given bounds
        width0 += float((u0 - l0).sum())
        width1 += float((u1 - l1).sum())
    assert width1 < width0 - 1e-3


def test_a_box_only_alpha_crown_closes(single_thread):
    """A threshold between the CROWN and the alpha-CROWN bound of one box: the plain search needs splits, the
    new steps close the root box; the exact minimum (MILP) is above the threshold (so unsat is right)."""
    net = _mlp(5, (3, 10, 10, 8, 3))
    chain = AffineReluChain.from_network(net)
    C = torch.tensor([[1.0, -1.0, 0.0]], dtype=torch.float64)
    lo, hi = -0.5 * torch.ones(3, dtype=torch.float64), 0.5 * torch.ones(3, dtype=torch.float64)
    bc = BoxCrown(chain, C, torch.zeros(1, dtype=torch.float64))
    low, _, pre = bc.bound(lo.unsqueeze(0), hi.unsqueeze(0))
    ref = bc.refine_intermediate(lo.unsqueeze(0), hi.unsqueeze(0), pre, iters=10)
    la, _, _ = bc.alpha_bound(lo.unsqueeze(0), hi.unsqueeze(0), ref, iters=20)
    c0, a0 = float(low[0, 0]), float(la[0, 0])
    assert a0 > c0 + 1e-3, (c0, a0)
    d = torch.tensor([(c0 + a0) / 2], dtype=torch.float64)
    exact = spec_min(net, lo, hi, C, d)
    assert exact > 0, exact
    own = torch.zeros(1, dtype=torch.long)
    plain = ChainSplit(chain, net.to(dtype=torch.float64), lo, hi, C, d, own, dtype=torch.float64, lookahead="off")
    assert not float(plain.root().key) > 0
    new = ChainSplit(chain, net.to(dtype=torch.float64), lo, hi, C, d, own, dtype=torch.float64, lookahead="off",
                     alpha_iters=20, refine_iters=10, refine_gain=math.inf)
    root = new.root()
    assert float(root.key) > 0 and root.key <= exact + 1e-9
    # float32 bounding: the closing bound is still certified (rounding margin, float64 re-bound with the slopes)
    new32 = ChainSplit(chain, net.to(dtype=torch.float64), lo, hi, C, d, own, dtype=torch.float32, lookahead="off",
                       alpha_iters=20, refine_iters=10, refine_gain=math.inf)
    k32 = float(new32.root().key)
    assert k32 <= exact + 1e-9


@pytest.mark.parametrize("seed", range(3))
def test_chain_split_with_alpha_verdicts_match_milp(seed, single_thread):
    """Search with the new steps (warm-started slopes, refinement) on random nets, thresholds just below/above
    the exact minimum (a two-row AND clause for seed 2): proved iff the MILP minimum is positive, and a
    witness really violates the property."""
    net = _mlp(20 + seed, (3, 12, 12, 3))
    chain = AffineReluChain.from_network(net)
    net64 = net.to(dtype=torch.float64)
    lo = torch.tensor([-1.0, -0.5, 0.0], dtype=torch.float64)
    hi = torch.tensor([1.0, 0.5, 0.0 if seed == 1 else 0.5], dtype=torch.float64)  # a zero-width coordinate
    g = torch.Generator().manual_seed(seed)
    C = torch.randn(2 if seed == 2 else 1, 3, generator=g, dtype=torch.float64)
    zero = torch.zeros(C.shape[0], dtype=torch.float64)
    if C.shape[0] == 1:
        base = spec_min(net, lo, hi, C, zero)
    else:  # min over the box of max_k C_k f: bisection on a common shift of both rows, by MILP
        a, b = -20.0, 20.0
        for _ in range(30):
            mid = (a + b) / 2
            (a, b) = (mid, b) if spec_min(net, lo, hi, C, zero + mid) > 0 else (a, mid)
        base = (a + b) / 2
    for delta in (-0.03, 0.03):
        d = zero + base + delta
        truth = spec_min(net, lo, hi, C, d)
        cs = ChainSplit(chain, net64, lo, hi, C, d, torch.zeros(C.shape[0], dtype=torch.long), dtype=torch.float32,
                        lookahead="off", alpha_iters=5, refine_iters=3, chunk=16)
        root = cs.root()
        out = branch_and_bound([root], cs, cs.bound, timeout=60, batch=4)
        if delta < 0:
            assert truth > 0 and out.status == "proved", (truth, out)
            assert out.best_bound <= truth + 1e-9
        else:
            assert truth <= 0
            assert out.status == "witness" or cs.witness is not None, out
            s, x, y = cs.witness
            assert bool(((C @ net64(x.unsqueeze(0))[0]) <= d).all())
            assert bool(((x >= lo) & (x <= hi)).all())


def test_verify_query_portfolio_member_options(single_thread):
    """The fourth portfolio member is on by default, can be switched off or run alone ("alpha"); all agree with
    the MILP truth."""
    net = _mlp(31, (3, 10, 10, 2))
    lo, hi = -torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    C = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    m = spec_min(net, lo, hi, C, torch.zeros(1, dtype=torch.float64))
    for d, want in ((m - 0.02, "unsat"), (m + 0.02, "sat")):
        q = Query([Specification(lo, hi, C, torch.tensor([d], dtype=torch.float64))])
        for opts in ({"input_alpha_iters": 10}, {"input_alpha_iters": 0}, {"input_lookahead": "alpha"},
                     {"input_alpha_lookahead": "off", "input_alpha_weight": 2}, {"input_alpha_lookahead": "two"},
                     {"input_combo_iters": 5}):
            v = verify_query(net, q, timeout=60, input_split=True, pgd_restarts=0, pgd_steps=0, **opts)
            assert v.status == want, (opts, v.reason)


@pytest.mark.parametrize("opts", [{"input_alpha_lookahead": "none"}, {"input_alpha_weight": 0},
                                  {"input_alpha_weight": float("inf")}, {"input_alpha_weight": True}])
def test_verify_query_rejects_bad_alpha_member_options(opts):
    from nncertify.models.errors import InvalidArgumentError
    net = _mlp(31, (3, 10, 10, 2))
    lo, hi = -torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    q = Query([Specification(lo, hi, torch.tensor([[1.0, -1.0]], dtype=torch.float64), torch.zeros(1, dtype=torch.float64))])
    with pytest.raises(InvalidArgumentError, match=next(iter(opts))):
        verify_query(net, q, timeout=10, input_split=True, **opts)
