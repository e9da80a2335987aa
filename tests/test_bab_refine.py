"""relax/bab/refine.py: refined intermediate bounds by per-neuron beta-CROWN branch-and-bound.

Truths: exact MILP ranges of every pre-activation (tests/milp_oracle.py, HiGHS, independent of relax/) on
tiny nets, sampled values on the ERAN 6x100 net, and a network whose exact intermediate ranges are known
in closed form (hidden cancellation: CROWN sees unstable neurons that are constant)."""

import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from nncertify.models import from_module
from nncertify.models.errors import InvalidArgumentError
from nncertify.relax.bab.beta_crown import BetaCrown
from nncertify.relax.bab.refine import _prefix, refine_applies, refine_intermediate
from nncertify.relax.spec import robustness_query, verify_query

from milp_oracle import spec_min


def _net(seed, kind):
    torch.manual_seed(seed)
    if kind == "conv":  # a convolution before every activation
        m = nn.Sequential(nn.Conv2d(1, 2, 2), nn.ReLU(), nn.Conv2d(2, 2, 2), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 2))
        return from_module(m, (1, 4, 4)), (1, 4, 4)
    act = (lambda: nn.LeakyReLU(0.1)) if kind == "leaky" else nn.ReLU
    layers = []
    for a, b in zip((4, 7, 7, 7), (7, 7, 7, 2)):
        lin = nn.Linear(a, b)
        with torch.no_grad():
            lin.weight.mul_(1.5)
        layers += [lin, act()]
    return from_module(nn.Sequential(*layers[:-1]), (4,)), (4,)


def _alpha_and_refined(net, lo, hi, dt, budget):
    C = torch.zeros(1, *net.output_shape)
    C.view(-1)[0] = 1.0
    d = torch.zeros(1, dtype=torch.float64)
    bc = BetaCrown(net, lo, hi, C, d, dt)
    alpha = BetaCrown(net, lo, hi, C, d, dt, pre=bc.pre0, interm_iters=20, interm_lr=0.25).pre0
    ref, stats = refine_intermediate(bc, bc.pre0, deadline=time.monotonic() + budget)
    return bc, alpha, ref, stats


@pytest.mark.parametrize("kind,dt,seed", [("relu", torch.float32, 0), ("leaky", torch.float64, 1),
                                          ("conv", torch.float32, 2)])
def test_refined_bounds_contain_the_exact_milp_range_and_are_tighter(kind, dt, seed, single_thread):
    """Every refined bound of a neuron unstable after alpha-CROWN (the ones the refinement searches; the
    others keep alpha-CROWN's bounds, checked to be unchanged-or-tighter) contains the exact range (MILP,
    HiGHS); the refined bounds are never looser than alpha-CROWN's and strictly tighter somewhere."""
    net, shape = _net(seed, kind)
    if dt == torch.float64:
        net = net.to(dtype=torch.float64)
    lo, hi = -torch.ones(1, *shape, dtype=dt), torch.ones(1, *shape, dtype=dt)
    bc, alpha, ref, stats = _alpha_and_refined(net, lo, hi, dt, 1.5)
    gain, checked = 0.0, 0
    for ln in [n for n in bc.lnodes if n.kind == "act"][1:]:
        xname = ln.inputs[0]
        pnet = _prefix(net, xname)
        n = int(np.prod(pnet.output_shape))
        l, u = (t.reshape(-1).double() for t in ref[ln.name])
        la, ua = (t.reshape(-1).double() for t in alpha[ln.name])
        for j in ((la < 0) & (ua > 0)).nonzero().flatten().tolist():  # the neurons the refinement searches
            e = torch.zeros(1, n, dtype=torch.float64)
            e[0, j] = 1.0
            zmin = spec_min(pnet, lo[0], hi[0], e, torch.zeros(1, dtype=torch.float64))
            zmax = -spec_min(pnet, lo[0], hi[0], -e, torch.zeros(1, dtype=torch.float64))
            tol = 1e-6 * (1 + abs(zmin) + abs(zmax))
            assert float(l[j]) <= zmin + tol and float(u[j]) >= zmax - tol, (ln.name, j, float(l[j]), zmin,
                                                                               float(u[j]), zmax)
            checked += 1
        assert bool((l >= la - 1e-5 * (1 + la.abs())).all() and (u <= ua + 1e-5 * (1 + ua.abs())).all()), ln.name
        gain += float(((ua - la) - (u - l)).sum())
    assert checked >= 6 and gain > 1e-2, (checked, gain)
    assert stats.domains > 0


def _cancel_net(n=20):
    """x in [-1, 1]^n; layer 1: p = relu(x), m = relu(-x), q = relu(x + 1.5) (= x + 1.5); layer 2:
    v = p - m - q + 1.4, which is exactly -0.1 for every x (p - m = x) but alpha-CROWN's range is about
    [-0.6, 0.4] (unstable); output f0 = 1 - sum relu(v) = 1 exactly, f1 = 0."""
    I = torch.eye(n)
    l1 = nn.Linear(n, 3 * n)
    l2 = nn.Linear(3 * n, n)
    l3 = nn.Linear(n, 2)
    with torch.no_grad():
        l1.weight.copy_(torch.cat([I, -I, I]))
        l1.bias.copy_(torch.cat([torch.zeros(2 * n), torch.full((n,), 1.5)]))
        l2.weight.copy_(torch.cat([I, -I, -I], 1))
        l2.bias.fill_(1.4)
        l3.weight.zero_()
        l3.weight[0].fill_(-1.0)
        l3.bias.copy_(torch.tensor([1.0, 0.0]))
    return from_module(nn.Sequential(l1, nn.ReLU(), l2, nn.ReLU(), l3), (n,))


def test_refined_bounds_find_the_hidden_constant():
    net = _cancel_net()
    lo, hi = -torch.ones(1, 20), torch.ones(1, 20)
    bc, alpha, ref, stats = _alpha_and_refined(net, lo, hi, torch.float32, 5.0)
    name = [n for n in bc.lnodes if n.kind == "act"][1].name
    la, ua = alpha[name]
    assert bool((ua > 0.3).all())  # alpha-CROWN: unstable
    l, u = ref[name]
    # refined: the exact value -0.1 is inside, and every neuron is proved inactive
    assert bool((u < 0).all() and (u >= -0.1 - 1e-6).all() and (l <= -0.1 + 1e-6).all()), (l, u)


def test_query_proved_with_refined_bounds_and_not_without(single_thread):
    """At the same 5 s budget: refined bounds prove f0 > f1 at the root; plain beta-CROWN BaB cannot (it
    would have to split both p_i and m_i of many inputs jointly: ~3^20 domains)."""
    net = _cancel_net()
    q = robustness_query(torch.zeros(20), 0, 1.0, 2)
    on = verify_query(net, q, timeout=5, refine="bab")
    off = verify_query(net, q, timeout=5, refine="off")
    assert on.status == "unsat", on.reason
    assert off.status == "timeout", off.reason
    auto = verify_query(net, q, timeout=5)  # auto: on for this convolution-free ReLU net (20 inputs > 16)
    assert auto.status == "unsat" and refine_applies(net)


def test_refine_respects_its_deadline(single_thread):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(30, 80), nn.ReLU(), nn.Linear(80, 80), nn.ReLU(), nn.Linear(80, 80), nn.ReLU(),
                      nn.Linear(80, 80), nn.ReLU(), nn.Linear(80, 5))
    for lin in m[::2]:
        with torch.no_grad():
            lin.weight.mul_(2.0)
    net = from_module(m, (30,))
    lo, hi = -torch.ones(1, 30), torch.ones(1, 30)
    C = torch.zeros(1, 5)
    C[0, 0] = 1
    bc = BetaCrown(net, lo, hi, C, torch.zeros(1, dtype=torch.float64), torch.float32)
    t = time.monotonic()
    ref, stats = refine_intermediate(bc, bc.pre0, deadline=t + 0.5)
    assert time.monotonic() - t < 0.5 + 1.0
    for name, (l, u) in ref.items():  # never looser than what it started from
        assert bool((l >= bc.pre0[name][0]).all() and (u <= bc.pre0[name][1]).all())
    # the whole query, refinement on with all the time after alpha-CROWN: still within its budget
    q = robustness_query(torch.zeros(30), int(net(torch.zeros(1, 30)).argmax()), 0.5, 5)
    t = time.monotonic()
    v = verify_query(net, q, timeout=2.0, refine="bab", refine_share=1.0)
    assert time.monotonic() - t < 2.0 + 1.0 and v.status in ("unsat", "sat", "timeout"), v.reason


@pytest.mark.parametrize("opts,word", [({"refine": "milp"}, "refine"), ({"refine_share": 1.5}, "refine_share"),
                                       ({"refine_batch": 0}, "refine_batch")])
def test_bad_refine_options_are_one_line_errors(opts, word):
    net = _cancel_net(4)
    q = robustness_query(torch.zeros(4), 0, 0.1, 2)
    with pytest.raises(InvalidArgumentError, match=word) as e:
        verify_query(net, q, timeout=1, **opts)
    assert "\n" not in str(e.value)


def _cli(capsys, *args):
    """The console entry point in-process: (exit code, stderr)."""
    from nncertify.certify.cli import main
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    return e.value.code, capsys.readouterr().err


def test_cli_rejects_a_bad_refine_value(tmp_path, capsys):
    for cmd in (["robustness", "digits_relu_mlp", "--eps", "0.05", "--method", "bab", "--refine", "milp"],
                ["vnnlib", tmp_path / "net.onnx", tmp_path / "p.vnnlib", "--timeout", "5", "--refine", "milp"]):
        code, err = _cli(capsys, *cmd)
        assert code == 2, (cmd, err)
        assert "--refine" in err and "Traceback" not in err
        assert len([ln for ln in err.splitlines() if ln.strip()]) == 1, err


def test_cli_threads_refine_into_the_certificate(tmp_path, capsys):
    from nncertify.certify.records import load_certificate
    code, err = _cli(capsys, "robustness", "digits_relu_mlp", "--eps", "0.05", "--method", "bab", "--refine", "off",
                     "--timeout", "2", "--limit", "2", "--no-radius", "--json", tmp_path / "c.json")
    assert code == 0, err
    assert load_certificate(tmp_path / "c.json").parameters["refine"] == "off"


def test_refined_bounds_hold_on_samples_of_eran_6x100(shared_data, single_thread):
    """ERAN 6x100, image 0, eps 0.026: 4,000 points of the box (uniform and random vertices) stay inside the
    refined bounds of every layer; the refinement tightens alpha-CROWN's bounds."""
    bench = Path(__file__).resolve().parents[1] / "bench"
    sys.path.insert(0, str(bench))
    try:
        from complete_verification import eran_net
    finally:
        sys.path.remove(str(bench))
    net = eran_net("6x100")
    X = torch.as_tensor(np.load(shared_data / "mnist" / "X_eran.npy")).float()
    lo, hi = (X[0] - 0.026).clamp(0, 1), (X[0] + 0.026).clamp(0, 1)
    bc, alpha, ref, stats = _alpha_and_refined(net, lo.unsqueeze(0), hi.unsqueeze(0), torch.float32, 4.0)
    g = torch.Generator().manual_seed(0)
    u = torch.rand(2000, *lo.shape, generator=g)
    v = (torch.rand(2000, *lo.shape, generator=g) < 0.5).float()
    xs = torch.cat([lo + u * (hi - lo), lo + v * (hi - lo)]).double()
    vals = net.to(dtype=torch.float64).intermediates(xs)
    gain = 0.0
    for ln in [n for n in bc.lnodes if n.kind == "act"]:
        z = vals[ln.inputs[0]].reshape(len(xs), -1)
        l, u_ = (t.reshape(-1).double() for t in ref[ln.name])
        assert bool((z >= l - 1e-5).all() and (z <= u_ + 1e-5).all()), ln.name
        la, ua = (t.reshape(-1).double() for t in alpha[ln.name])
        gain += float(((ua - la) - (u_ - l)).sum())
    assert gain > 1.0 and stats.domains > 100


class _Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.o = nn.Linear(20, 30), nn.Linear(30, 30), nn.Linear(30, 30), nn.Linear(30, 3)

    def forward(self, x):
        h = torch.relu(self.a(x))
        g = torch.relu(self.b(h)) + h  # a skip connection: the prefix networks are not chains
        return self.o(torch.relu(self.c(g)) + g)


def test_refined_bounds_hold_on_samples_of_a_residual_net(single_thread):
    torch.manual_seed(0)
    m = _Residual()
    for p in m.parameters():
        p.data.mul_(2)
    net = from_module(m, (20,))
    x0 = torch.rand(20, generator=torch.Generator().manual_seed(0))
    lo, hi = (x0 - 0.2).unsqueeze(0), (x0 + 0.2).unsqueeze(0)
    bc, alpha, ref, stats = _alpha_and_refined(net, lo, hi, torch.float32, 1.0)
    g = torch.Generator().manual_seed(1)
    u = torch.rand(3000, 20, generator=g)
    v = (torch.rand(3000, 20, generator=g) < 0.5).float()
    xs = torch.cat([lo + u * (hi - lo), lo + v * (hi - lo)]).double()
    vals = net.to(dtype=torch.float64).intermediates(xs)
    gain = 0.0
    for ln in [n for n in bc.lnodes if n.kind == "act"]:
        z = vals[ln.inputs[0]].reshape(len(xs), -1)
        l, u_ = (t.reshape(-1).double() for t in ref[ln.name])
        assert bool((z >= l - 1e-5).all() and (z <= u_ + 1e-5).all()), ln.name
        la, ua = (t.reshape(-1).double() for t in alpha[ln.name])
        gain += float(((ua - la) - (u_ - l)).sum())
    assert gain > 1.0 and stats.domains > 0, (gain, stats.summary())
