"""Input-space branch-and-bound for local Lipschitz constants (relax/lipschitz/search/bab_input.py).

Independent truths, none computed by the code under test:
* autograd Jacobians of the original ``nn.Module`` at many sampled points (lower estimates);
* for tiny ReLU / MaxMin nets with 2-D inputs, the exact constant: every linear region meeting the
  box is found by a depth-first enumeration of switch signs with an LP (scipy HiGHS) that maximizes
  the margin of all sign constraints; the gradient is taken by autograd *at the LP's interior point*,
  and the oracle checks there that the module's actual switch signs are the enumerated ones.
"""

import math

import numpy as np
import pytest
import torch
from scipy.optimize import linprog
from torch import nn

from nncertify import models
from nncertify import relax
from nncertify.models.errors import InvalidArgumentError
from nncertify.models.layers import GroupSort, HouseholderActivation, MaxMin, Residual
from nncertify.relax.lipschitz import local_lipschitz

DEFAULT_DTYPE = torch.float64
pytestmark = pytest.mark.usefixtures("single_thread")  # many small tensor ops: one thread is faster here
FAST_ATTACK = {"n_samples": 64, "n_starts": 4, "steps": 10}


def make_net(act, widths, seed):
    torch.manual_seed(seed)
    new = {"maxmin": lambda n: MaxMin(), "groupsort": lambda n: GroupSort(2, descending=False),
           "householder": lambda n: HouseholderActivation(n, 2, v=torch.randn(n // 2, 2)),
           "tanh": lambda n: nn.Tanh(), "relu": lambda n: nn.ReLU(), "sigmoid": lambda n: nn.Sigmoid(),
           "leaky_relu": lambda n: nn.LeakyReLU(0.1)}
    if act.startswith("residual_"):
        a = act[len("residual_"):]
        w = widths[1]
        body = nn.Sequential(nn.Linear(w, w), new[a](w), nn.Linear(w, w))
        return nn.Sequential(nn.Linear(widths[0], w), new[a](w), Residual(body), new[a](w),
                             nn.Linear(w, widths[-1])).double()
    layers = []
    for i, (p, q) in enumerate(zip(widths[:-2], widths[1:-1])):
        layers += [nn.Linear(p, q), new[act](q)]
    layers.append(nn.Linear(widths[-2], widths[-1]))
    return nn.Sequential(*layers).double()


def jacobians(module, X):
    """(N, out, in) autograd Jacobians of the module at the rows of X (one backward pass per output)."""
    X = X.detach().clone().requires_grad_(True)
    Y = module(X)
    rows = [torch.autograd.grad(Y[:, j].sum(), X, retain_graph=True)[0] for j in range(Y.shape[1])]
    return torch.stack(rows, 1).detach()


def sampled_truth(module, lo, hi, n=3000, seed=1):
    """max over samples (uniform, vertices, and a 2-D grid when d = 2) of max_j ||grad f_j||_1."""
    g = torch.Generator().manual_seed(seed)
    d = lo.numel()
    X = lo + (hi - lo) * torch.rand(n, d, generator=g)
    V = lo + (hi - lo) * (torch.rand(n // 4, d, generator=g) > 0.5).double()
    pts = [X, V]
    if d == 2:
        t = torch.linspace(0, 1, 121)
        pts.append(lo + (hi - lo) * torch.cartesian_prod(t, t))
    J = jacobians(module, torch.cat(pts))
    return float(J.abs().sum(-1).amax(-1).max())


# ------------------------------------------------------------------------------------ exact oracle
def exact_by_regions(module, lo, hi, c=None):
    """max over full-dimensional linear regions meeting [lo, hi] of ||c^T J||_1 (c None: max over rows)."""
    lins = [m for m in module if isinstance(m, nn.Linear)]
    acts = [m for m in module if not isinstance(m, nn.Linear)]
    Ws = [m.weight.detach().numpy() for m in lins]
    bs = [m.bias.detach().numpy() if m.bias is not None else np.zeros(m.out_features) for m in lins]
    lo, hi = lo.numpy(), hi.numpy()
    d = lo.size
    best = [-math.inf]

    def switch_rows(k, M, v):
        """Rows (A, a) of the layer-k switches s = A x + a, given z_k = M x + v."""
        if isinstance(acts[k], nn.ReLU):
            return M, v
        if isinstance(acts[k], HouseholderActivation):
            V = _householder_v(acts[k])  # s_j = v_j^T z_(group j)
            g = V.shape[1]
            return (np.stack([V[j] @ M[j * g:(j + 1) * g] for j in range(len(V))]),
                    np.array([V[j] @ v[j * g:(j + 1) * g] for j in range(len(V))]))
        return M[0::2] - M[1::2], v[0::2] - v[1::2]  # MaxMin / GroupSort(2) pairs: s = z_{2j} - z_{2j+1}

    def layer_matrix(k, signs):
        n = Ws[k].shape[0]
        if isinstance(acts[k], nn.ReLU):
            return np.diag((np.array(signs) > 0).astype(float))
        P = np.zeros((n, n))
        if isinstance(acts[k], HouseholderActivation):
            V = _householder_v(acts[k])
            g = V.shape[1]
            for j, s in enumerate(signs):  # v^T z > 0 keeps z, otherwise reflects it
                blk = slice(j * g, (j + 1) * g)
                P[blk, blk] = np.eye(g) if s > 0 else np.eye(g) - 2.0 * np.outer(V[j], V[j])
            return P
        ascending = isinstance(acts[k], GroupSort) and not acts[k].descending
        for j, s in enumerate(signs):
            a, b = 2 * j, 2 * j + 1
            if (s > 0) != ascending:
                P[a, a] = P[b, b] = 1.0  # MaxMin with z_a >= z_b: (max, min) = (z_a, z_b)
            else:
                P[a, b] = P[b, a] = 1.0
        return P

    def interior(A_ub, b_ub):
        """max t s.t. A x + b >= t (rows normalized), x in box: (t, x)."""
        if not A_ub:
            return 1.0, (lo + hi) / 2
        A, a = np.array(A_ub), np.array(b_ub)
        nrm = np.linalg.norm(A, axis=1, keepdims=True).clip(1e-300)
        A, a = A / nrm, a / nrm[:, 0]
        # variables (x, t): maximize t  <=>  minimize -t ;  -A x + t <= a
        res = linprog(np.r_[np.zeros(d), -1.0], A_ub=np.c_[-A, np.ones(len(A))], b_ub=a,
                      bounds=list(zip(lo, hi)) + [(None, 1.0)], method="highs")
        return (-res.fun, res.x[:d]) if res.status == 0 else (-math.inf, None)

    def dfs(k, M, v, signs, A_ub, b_ub, x=None):
        if k == len(acts):
            xt = torch.tensor(x)[None]
            # self-check: the module's own switch signs at x are the enumerated ones
            for actual, want in zip(region_check(module, xt), signs):
                assert np.array_equal(actual, np.array(want))
            J = jacobians(module, xt)[0].detach().numpy()
            val = np.abs(J).sum(1).max() if c is None else np.abs(c @ J).sum()
            best[0] = max(best[0], val)
            return
        A, a = switch_rows(k, M, v)
        i = len(signs[-1]) if signs and len(signs) == k + 1 else 0
        if i == 0:
            signs = signs + [[]]
        if i == A.shape[0]:
            P = layer_matrix(k, signs[k])
            nM, nv = Ws[k + 1] @ P @ M, Ws[k + 1] @ P @ v + bs[k + 1]
            dfs(k + 1, nM, nv, signs, A_ub, b_ub, x)
            return
        for s in (1.0, -1.0):
            rows, rhs = A_ub + [s * A[i]], b_ub + [s * a[i]]
            t, xs = interior(rows, rhs)
            if t > 1e-9:  # the region has an interior point xs (a differentiable point)
                dfs(k, M, v, signs[:-1] + [signs[-1] + [s]], rows, rhs, xs)

    dfs(0, Ws[0], bs[0], [], [], [])
    return best[0]


def _householder_v(layer):
    """The layer's unit reflection vectors (groups, g) as numpy (the module normalizes v on use)."""
    return layer.unit_v().detach().numpy()


def region_check(module, x):
    """The module's own switch signs at x, per activation layer (used by the oracle's self-test)."""
    out, h = [], x
    for m in module:
        if not isinstance(m, nn.Linear):
            z = h[0].detach().numpy()
            if isinstance(m, HouseholderActivation):
                V = _householder_v(m)
                out.append(np.sign([V[j] @ z[j * V.shape[1]:(j + 1) * V.shape[1]] for j in range(len(V))]))
            else:
                out.append(np.sign(z if isinstance(m, nn.ReLU) else z[0::2] - z[1::2]))
        h = m(h)
    return out


def test_exact_oracle_agrees_with_a_dense_grid():
    """The oracle is >= every gridded gradient norm and within reach of the best grid value."""
    module = make_net("maxmin", (2, 6, 6, 2), 3)
    lo, hi = torch.full((2,), -1.0), torch.full((2,), 1.0)
    ex = exact_by_regions(module, lo, hi)
    t = torch.linspace(-1, 1, 301)
    grid = float(jacobians(module, torch.cartesian_prod(t, t)).abs().sum(-1).amax(-1).max())
    assert grid <= ex + 1e-12 and ex <= grid * 1.05


# ------------------------------------------------------------------------------------ tests
def run(module, lo, hi, T=0.5, **kw):
    opts = kw.pop("bab_options", {})
    return local_lipschitz(models.from_module(module), (lo[None], hi[None]), bab="input", bab_timeout=T,
                           attack_options=FAST_ATTACK, bab_options=opts, **kw)


@pytest.mark.parametrize("act,widths", [("maxmin", (3, 6, 6, 2)), ("groupsort", (2, 6, 6, 2)),
                                        ("householder", (4, 6, 6, 2)), ("tanh", (3, 6, 6, 2)),
                                        ("residual_maxmin", (2, 6, 6, 2)), ("residual_tanh", (3, 4, 4, 2)),
                                        ("leaky_relu", (2, 6, 6, 2))])
def test_sound_and_anytime_for_every_activation(act, widths):
    module = make_net(act, widths, seed=len(act))
    lo, hi = torch.full((widths[0],), -0.8), torch.full((widths[0],), 0.6)
    truth = sampled_truth(module, lo, hi)
    r = run(module, lo, hi, T=0.4)
    assert r.method.endswith("bab-input") and r.upper_kind == "certified"
    assert truth <= r.upper * (1 + 1e-12), (act, truth, r.upper)
    w = torch.tensor(r.stats["witness"])  # the lower bound is a true gradient norm at a point of the box
    assert ((w >= lo) & (w <= hi)).all()
    assert r.lower == pytest.approx(float(jacobians(module, w[None])[0].abs().sum(-1).max()), rel=1e-12)
    assert r.upper <= r.stats["root_upper"]
    ups = [h[1] for h in r.history]
    lows = [h[2] for h in r.history]
    assert all(b <= a for a, b in zip(ups, ups[1:])) and all(b >= a for a, b in zip(lows, lows[1:]))
    assert all(u >= t * (1 - 1e-12) for u, t in zip(
        r.per_output_upper, jacobians(module, lo + (hi - lo) * torch.rand(500, widths[0])).abs().sum(-1).amax(0)))


@pytest.mark.parametrize("act,seed", [("maxmin", 0), ("relu", 1)])
def test_converges_to_the_exact_constant(act, seed):
    module = make_net(act, (2, 6, 6, 2), seed)
    lo, hi = torch.full((2,), -1.0), torch.full((2,), 1.0)
    exact = exact_by_regions(module, lo, hi)
    r = run(module, lo, hi, T=10.0, bab_options={"rel_tol": 1e-6})
    assert r.status in ("converged", "exact")
    assert r.lower <= exact * (1 + 1e-9) and exact <= r.upper
    assert r.upper <= exact * (1 + 1e-5)
    c = torch.tensor([1.0, -1.0])
    exact_c = exact_by_regions(module, lo, hi, c.numpy())
    rc = run(module, lo, hi, T=10.0, c=c, bab_options={"rel_tol": 1e-6})
    assert exact_c <= rc.upper <= exact_c * (1 + 1e-5)


def test_residual_relu_converges_to_sampled_max():
    module = make_net("residual_relu", (2, 6, 6, 2), 5)
    lo, hi = torch.full((2,), -1.0), torch.full((2,), 1.0)
    r = run(module, lo, hi, T=10.0, bab_options={"rel_tol": 1e-6})
    truth = sampled_truth(module, lo, hi, n=20000)
    assert r.method == "graph-crown+bab-input"
    assert truth <= r.upper <= max(truth, r.lower) * (1 + 1e-5)


def test_more_domains_never_loosen_the_bound():
    module = make_net("maxmin", (3, 8, 8, 2), 7)
    lo, hi = torch.full((3,), -1.0), torch.full((3,), 1.0)
    ups = [run(module, lo, hi, T=60.0, bab_options={"max_domains": n, "batch": 8}).upper for n in (30, 150, 600)]
    assert ups[0] >= ups[1] >= ups[2]


def test_time_budget_and_domain_cap_are_honoured():
    module = make_net("tanh", (3, 8, 8, 2), 2)
    lo, hi = torch.full((3,), -1.0), torch.full((3,), 1.0)
    T = 1.5
    r = run(module, lo, hi, T=T, bab_options={"rel_tol": 0.0})
    assert r.status == "timeout" and r.timings["bab"] <= 1.1 * T + 0.1
    capped = run(module, lo, hi, T=60.0, bab_options={"max_domains": 70, "rel_tol": 0.0})
    assert capped.status == "domain_limit" and capped.stats["domains_bounded"] <= 70


@pytest.mark.parametrize("p,norm", [(2, "2"), (1, "1"), (2, "inf")])
def test_ball_regions_and_operator_norms(p, norm):
    module = make_net("maxmin", (2, 6, 6, 2), 0)
    net = models.from_module(module)
    ball = relax.Ball(torch.zeros(1, 2), 1.0, p=p)
    r = local_lipschitz(net, ball, norm=norm, bab="input", bab_timeout=1.0, attack_options=FAST_ATTACK)
    t = torch.linspace(-1, 1, 201)
    X = torch.cartesian_prod(t, t)
    X = X[X.norm(p=p, dim=1) <= 1]
    J = jacobians(module, X)
    truth = float(torch.linalg.matrix_norm(J, ord={"inf": math.inf, "1": 1, "2": 2}[norm]).max())
    assert truth <= r.upper * (1 + 1e-12)
    plain = local_lipschitz(net, ball, norm=norm, attack=False)
    assert r.upper <= plain.upper * (1 + 1e-12)
    w = torch.tensor(r.stats["witness"])
    assert float(w.norm(p=p)) <= 1.0  # the lower bound comes from a point of the ball
    Jw = jacobians(module, w[None])[0]
    assert r.lower == pytest.approx(float(torch.linalg.matrix_norm(Jw, ord={"inf": math.inf, "1": 1, "2": 2}[norm])))


def test_auto_picks_the_engine_and_bad_input_names_the_field():
    lo, hi = torch.full((1, 10), -0.1), torch.full((1, 10), 0.1)
    relu10 = models.from_module(make_net("relu", (10, 8, 2), 0))
    r = local_lipschitz(relu10, (lo, hi), bab="auto", bab_timeout=0.3, attack_options=FAST_ATTACK)
    assert r.method == "crown+bab"
    mm = models.from_module(make_net("maxmin", (10, 8, 2), 0))
    r = local_lipschitz(mm, (lo, hi), bab="auto", bab_timeout=0.3, attack_options=FAST_ATTACK)
    assert r.method == "crown+bab"  # piecewise-linear chain: complete activation splitting
    for kind, want in (("tanh", "crown+bab-input"), ("residual_tanh", "graph-crown+bab-input"),
                       ("residual_maxmin", "crown+bab")):  # smooth: input splitting; residual PL: lifted chain
        r = local_lipschitz(models.from_module(make_net(kind, (10, 8, 8, 2), 0)), (lo, hi), bab="auto",
                            bab_timeout=0.3, attack_options=FAST_ATTACK)
        assert r.method == want, kind
    r = local_lipschitz(mm, (lo, hi), norm="2", bab="auto", bab_timeout=0.3, attack_options=FAST_ATTACK)
    assert r.method == "crown+bab-input"  # l2: input splitting
    relu2 = models.from_module(make_net("relu", (2, 8, 2), 0))
    r = local_lipschitz(relu2, (lo[:, :2], hi[:, :2]), bab="auto", bab_timeout=0.3, attack_options=FAST_ATTACK)
    assert r.method == "crown+bab-input"
    with pytest.raises(InvalidArgumentError, match="bab must be"):
        local_lipschitz(mm, (lo, hi), bab="inputs", bab_timeout=1)
    with pytest.raises(InvalidArgumentError, match="bab_timeout"):
        local_lipschitz(mm, (lo, hi), bab="input")
    with pytest.raises(InvalidArgumentError, match="method"):
        local_lipschitz(mm, (lo, hi), bab="input", bab_timeout=1, method="naive")
    with pytest.raises(InvalidArgumentError, match="branching"):
        local_lipschitz(mm, (lo, hi), bab="input", bab_timeout=1, bab_options={"branching": "best"})
    with pytest.raises(InvalidArgumentError, match="max_domain"):
        local_lipschitz(mm, (lo, hi), bab="input", bab_timeout=1, bab_options={"max_domain": 5})
    with pytest.raises(InvalidArgumentError, match="forward"):
        local_lipschitz(mm, (lo, hi), bab="input", bab_timeout=1, forward="lp")


@pytest.mark.parametrize("act", ["maxmin", "tanh", "householder"])
def test_graph_crown_equals_chain_crown_and_is_exact_at_a_point(act):
    """The residual-graph CROWN (graph_jacobian.py) reproduces the chain CROWN (backward.py) on a chain,
    and on a residual net with a zero-width box it returns the autograd gradient."""
    from nncertify.relax.lipschitz.bounds.backward import BackwardGraph
    from nncertify.relax.lipschitz.bounds.chain import dense_chain, forward_bounds
    from nncertify.relax.lipschitz.bounds.graph_jacobian import GraphJacobian
    net = models.from_module(make_net(act, (3, 6, 6, 2), 4))
    ch, gj = dense_chain(net), GraphJacobian(net)
    XL = torch.rand(4, 3, generator=torch.Generator().manual_seed(0)) - 1
    XU = XL + 0.5
    fb, _ = forward_bounds(ch, XL, XU, "auto")
    seeds = torch.eye(2).repeat(4, 1)
    dr = [tuple(t.repeat_interleave(2, 0) for t in g.derivative_range(*f)) for g, f in zip(ch.gates, fb)]
    bb = BackwardGraph(ch, seeds, dr, "crown").run()
    gl, gu, l1 = gj.crown(seeds, dr)
    assert torch.allclose(gl, bb.grad_lower, rtol=1e-12, atol=1e-14)
    assert torch.allclose(gu, bb.grad_upper, rtol=1e-12, atol=1e-14)
    assert torch.allclose(l1, bb.l1_upper, rtol=1e-12, atol=1e-14)
    module = make_net("residual_" + act, (3, 6, 6, 2), 4)
    x = torch.tensor([0.31, -0.22, 0.13])
    r = local_lipschitz(models.from_module(module), (x[None], x[None]), bab="input", bab_timeout=1.0,
                        attack=False)
    J = jacobians(module, x[None])[0]
    assert r.per_output_upper == pytest.approx(J.abs().sum(1).tolist(), rel=1e-7)
