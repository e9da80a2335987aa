"""relax/bab/box_crown.py + input_split.ChainSplit: batched CROWN over boxes and input-space branch-and-bound,
against exact answers (MILP with HiGHS, tests/milp_oracle.py), sampling, the published ACAS Xu truth and
onnxruntime; the time budget of verify_query honoured."""

import math
import time

import numpy as np
import pytest
import torch
from torch import nn

from nncertify.models import Network, Node, from_module
from nncertify.relax.bab.box_crown import AffineReluChain, BoxCrown
from nncertify.relax.engine import compute_bounds
from nncertify.relax.sets import Box
from nncertify.relax.spec import Query, Specification, verify_query

from milp_oracle import spec_min


def _mlp(seed, widths, act=nn.ReLU, scale=1.0):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        lin = nn.Linear(a, b)
        with torch.no_grad():
            lin.weight.mul_(scale)
        layers += [lin, act()]
    return from_module(nn.Sequential(*layers[:-1]), (widths[0],))


def _conv_net(seed):
    """conv before every activation, odd shapes, a normalisation (scale_shift) in front."""
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(1, 3, 2), nn.ReLU(), nn.Conv2d(3, 2, 2), nn.ReLU(), nn.Flatten(), nn.Linear(2, 3))
    net = from_module(m, (1, 3, 3))
    nodes = [Node("x", "input", attrs={"shape": (1, 3, 3)}),
             Node("norm", "scale_shift", ("x",), {"scale": torch.full((1, 3, 3), 1.7), "shift": torch.full((1, 3, 3), -0.2)},
                  shape=(1, 3, 3))]
    first = net.nodes[1]
    for n in net.nodes[1:]:
        inputs = ("norm",) if n is first else n.inputs
        nodes.append(Node(n.name, n.op, inputs, n.params, n.attrs, n.path, n.shape))
    return Network(nodes)


def _boxes(lo0, hi0, n, seed, frac=0.3):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(n, lo0.numel(), generator=g, dtype=torch.float64)
    b = torch.rand(n, lo0.numel(), generator=g, dtype=torch.float64) * frac
    lo = lo0.reshape(1, -1) + (hi0 - lo0).reshape(1, -1) * a * (1 - b)
    return lo, lo + (hi0 - lo0).reshape(1, -1) * b


@pytest.mark.parametrize("kind", ["mlp", "conv"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_box_crown_sound_against_milp_and_close_to_engine(kind, dtype, single_thread):
    net = _mlp(3, (3, 12, 12, 10, 4)) if kind == "mlp" else _conv_net(4)
    n_in, n_out = int(math.prod(net.input_shape)), int(math.prod(net.output_shape))
    chain = AffineReluChain.from_network(net)
    assert chain is not None and chain.depth == 4 - (kind == "conv")
    C = torch.randn(2, n_out, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    d = torch.tensor([0.1, -0.2], dtype=torch.float64)
    bc = BoxCrown(chain, C, d, dtype=dtype)
    lo, hi = _boxes(-torch.ones(n_in, dtype=torch.float64), torch.ones(n_in, dtype=torch.float64), 6, 0, 0.5)
    low, A, pre = bc.bound(lo, hi)
    assert low.shape == (6, 2) and A.shape == (6, 2, n_in) and len(pre) == chain.depth - 1
    eng = compute_bounds(net.to(dtype=torch.float64), Box(lo.reshape(6, *net.input_shape), hi.reshape(6, *net.input_shape)),
                         method="crown", C=C, bound_upper=False).lower - d
    for i in range(6):
        for k in range(2):
            exact = spec_min(net, lo[i].reshape(net.input_shape), hi[i].reshape(net.input_shape), C[k:k + 1], d[k:k + 1])
            assert low[i, k] <= exact + 1e-9, (i, k, float(low[i, k]), exact)
    # as tight as the generic engine's CROWN up to the neurons it leaves to IBP (no looser than 10% of the gap)
    assert bool((low >= eng - 0.1 * eng.abs() - 1e-6).all()), (low, eng)
    # sub-boxes with the parent's bounds intersected in: still below the sampled values, never looser
    mid = (lo + hi) / 2
    low2, _, _ = bc.bound(lo, mid, pre)
    x = lo.unsqueeze(1) + (mid - lo).unsqueeze(1) * torch.rand(6, 500, n_in, dtype=torch.float64)
    y = net.to(dtype=torch.float64)(x.reshape(-1, *net.input_shape)).reshape(6, 500, -1)
    assert bool((low2.unsqueeze(1) <= y @ C.T - d + 1e-9).all())


def test_chain_extraction_refuses_what_it_does_not_handle():
    assert AffineReluChain.from_network(_mlp(0, (3, 4, 2), lambda: nn.LeakyReLU(0.1))) is None
    nodes = [Node("x", "input", attrs={"shape": (3,)}),
             Node("a", "linear", ("x",), {"weight": torch.eye(3), "bias": torch.zeros(3)}, shape=(3,)),
             Node("r", "relu", ("a",), shape=(3,)), Node("s", "add", ("r", "x"), shape=(3,))]
    assert AffineReluChain.from_network(Network(nodes)) is None  # residual


def _agree(net, q, v, truths):
    if v.status == "unsat":
        assert min(truths) > 0, truths
        assert bool((v.spec_bounds <= torch.tensor(truths, dtype=torch.float64) + 1e-6).all())
    else:
        assert v.status == "sat", v.reason
        s = q.specs[v.spec_index]
        x = v.counterexample
        assert bool(((x >= s.lower) & (x <= s.upper)).all())
        y = net.to(dtype=torch.float64)(x[None])[0]
        assert bool((s.C @ y.flatten() <= s.d).all())
        assert truths[v.spec_index] <= 1e-9


@pytest.mark.parametrize("seed", range(4))
def test_input_split_verdicts_match_milp(seed, single_thread):
    """Random 3-input nets; thresholds just beyond/below the exact minimum: sat and unsat both occur; one
    query is a disjunction of two specifications on one box with a zero-width input coordinate."""
    net = _mlp(seed, (3, 10, 10, 3))
    g = torch.Generator().manual_seed(seed)
    lo = torch.tensor([-1.0, -0.5, 0.25], dtype=torch.float64)
    hi = torch.tensor([1.0, 0.5, 0.25 if seed % 2 else 0.75], dtype=torch.float64)
    C = torch.randn(2, 3, generator=g, dtype=torch.float64)
    exact = [spec_min(net, lo, hi, C[k:k + 1], torch.zeros(1, dtype=torch.float64)) for k in range(2)]
    for delta in (0.02, -0.02):  # d = exact + delta: sat for delta > 0 ... unsat when the min is above d
        d = torch.tensor(exact, dtype=torch.float64) + delta * torch.tensor([1.0, 1.0], dtype=torch.float64)
        specs = [Specification(lo.clone(), hi.clone(), C[k:k + 1], d[k:k + 1]) for k in range(2)]
        q = Query(specs)
        truths = [spec_min(net, lo, hi, C[k:k + 1], d[k:k + 1]) for k in range(2)]
        v = verify_query(net, q, timeout=60, input_split=True, pgd_restarts=0, pgd_steps=0)
        _agree(net, q, v, truths)
        assert v.status == ("sat" if delta > 0 else "unsat")
        assert v.reason in ("bab-input", "crown") or "counterexample" in v.reason


def test_input_split_multirow_clause_against_milp(single_thread):
    """A two-row AND clause (refuted on a box when either row's bound is positive) near its exact value."""
    net = _mlp(7, (2, 16, 16, 3))
    lo, hi = -torch.ones(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    C = torch.tensor([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0]], dtype=torch.float64)
    for shift in (0.05, -0.05):
        t0 = spec_min(net, lo, hi, C, torch.zeros(2, dtype=torch.float64))
        d = torch.full((2,), t0 + shift, dtype=torch.float64)
        truth = spec_min(net, lo, hi, C, d)
        q = Query([Specification(lo, hi, C, d)])
        v = verify_query(net, q, timeout=60, input_split=True, pgd_restarts=0, pgd_steps=0)
        _agree(net, q, v, [truth])


def _hard_query():
    net = _mlp(11, (5, 64, 64, 64, 64, 2), scale=1.5)
    lo, hi = -torch.ones(5, dtype=torch.float64), torch.ones(5, dtype=torch.float64)
    C = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    x = torch.rand(4000, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ymin = float((net.to(dtype=torch.float64)(x) @ C.T).min())
    return net, Query([Specification(lo, hi, C, torch.tensor([ymin - 0.5], dtype=torch.float64))])


@pytest.mark.parametrize("budget", [1.0, 3.0])
def test_verify_query_honours_its_timeout(budget, single_thread):
    net, q = _hard_query()
    t = time.monotonic()
    v = verify_query(net, q, timeout=budget, input_split=True)
    el = time.monotonic() - t
    assert v.status in ("timeout", "unsat", "sat")
    if v.status == "timeout":
        assert el <= budget + 0.75, el  # one bounding piece of ~0.4 s past the deadline at most, under load
        assert not bool((v.spec_bounds > 0).all())


# ---------------------------------------------------------------------- ACAS Xu (VNN-COMP 2021)
def _acas(shared_data, net_id, prop):
    from nncertify.models.onnx_import import load_onnx
    from nncertify.relax.vnnlib import load_vnnlib
    d = shared_data / "vnncomp2021" / "acasxu"
    if not d.is_dir():
        pytest.skip(f"{d} is absent")
    onnx = d / f"ACASXU_run2a_{net_id}_batch_2000.onnx"
    net = load_onnx(onnx)
    return onnx, net, load_vnnlib(d / f"prop_{prop}.vnnlib", net.input_shape, 5)


def test_acasxu_prop1_unsat_matches_published_truth(shared_data, single_thread):
    """1_1 / P1 holds (VNN-COMP 2021: every tool); the old per-domain search needed ~7 s, this one < 1 s."""
    _, net, q = _acas(shared_data, "1_1", 1)
    v = verify_query(net, q, timeout=30)
    assert v.status == "unsat" and v.reason == "bab-input" and bool((v.spec_bounds > 0).all())
    # sampled outputs never contradict it (Y_0 < 3.99 on the box)
    x = q.specs[0].lower + (q.specs[0].upper - q.specs[0].lower) * torch.rand(20000, *net.input_shape, dtype=torch.float64)
    y = net.to(dtype=torch.float64)(x)
    assert bool((q.specs[0].C @ y.T <= q.specs[0].d.unsqueeze(1)).any(0).logical_not().all())


@pytest.mark.parametrize("net_id,prop", [("1_9", 7), ("2_9", 8)])
def test_acasxu_sat_witness_rechecked_by_onnxruntime(shared_data, net_id, prop, single_thread):
    """P7 and P8 are violated (published truth); the witness lies in a box of the property and violates it in
    onnxruntime too."""
    from nncertify.certify.vnn import OnnxRuntimeModel
    onnx, net, q = _acas(shared_data, net_id, prop)
    v = verify_query(net, q, timeout=60)
    assert v.status == "sat", v.reason
    s = q.specs[v.spec_index]
    x = v.counterexample
    assert bool(((x >= s.lower) & (x <= s.upper)).all())
    y = OnnxRuntimeModel(onnx)(x.to(torch.float32).double().clamp(s.lower, s.upper).reshape(-1).numpy())
    assert bool((s.C.numpy() @ y <= s.d.numpy() + 1e-4).all())
    assert float(np.max(s.C.numpy() @ y - s.d.numpy())) <= 1e-4
