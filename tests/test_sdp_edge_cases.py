"""Issue #19 items 5-7: extreme weight scales, zero layers, linear-algebra breakdowns, ``auto`` picking the
best verified value, and ``time_budget`` from a script without a ``__main__`` guard."""

import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from nncertify.models import GroupSort, HouseholderActivation, MaxMin, from_module
from nncertify.sdp import lipschitz_bound
from nncertify.sdp.baselines import fallback_bound

# default dtype float32 (as in a user's session): the old OverflowError came from a float32 log2 of the norm


def _relu_net(scale=1.0, zero=None, act=nn.ReLU, out=2, seed=0):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(3, 4), act(), nn.Linear(4, 4), act(), nn.Linear(4, out)).double()
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(scale)
        if zero is not None:
            m[zero].weight.zero_()
    return m, from_module(m, (3,))


def _secant(m, n=500, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    J = torch.func.vmap(torch.func.jacrev(lambda z: m(z[None])[0]))(x)
    _, _, Vh = torch.linalg.svd(J)
    d = 1e-6 * Vh[:, 0]
    with torch.no_grad():
        return float(((m(x + d) - m(x)).norm(dim=1) / d.norm(dim=1)).max())


CASES = [(m, s, n) for m in ("lifted", "lipsdp-neuron") for s in (None, "FIRST_ORDER") for n in (2, "inf")]


@pytest.mark.parametrize("scale", [1e39, 1e-200])
def test_extreme_weight_scales_no_overflow_error(scale):
    """pow2_normalize raised OverflowError (a float32 log2 of the norm); now exponents are integers."""
    m, net = _relu_net(scale)
    w = _secant(m)
    for method, solver, norm in CASES:
        c = None if norm == 2 else torch.tensor([1.0, -1.0], dtype=torch.float64)
        r = lipschitz_bound(net, norm, method, solver, c=c, first_order_iters=30)
        assert r.certified, (method, solver, norm, r.message)
        if norm == 2:
            assert r.certified_value >= w * (1 - 1e-7), (method, solver, r.certified_value, w)
        assert r.certified_value > 0  # (1e-200)^3 underflows: the bound rounds up to a subnormal, never 0


def test_bound_beyond_float64_is_failed_with_reason():
    _, net = _relu_net(1e200)
    r = lipschitz_bound(net, 2, "lifted")
    assert not r.certified and "overflow" in r.message
    assert not fallback_bound(net).certified


@pytest.mark.parametrize("zero", [0, 2, 4])
def test_zero_layer_is_certified_zero_everywhere(zero):
    """An all-zero layer made the first-order path raise IndexError (empty row space); L is exactly 0."""
    for act in (nn.ReLU, MaxMin):
        m, net = _relu_net(zero=zero, act=act)
        x = torch.randn(50, 3, dtype=torch.float64)
        with torch.no_grad():
            y = m(x)
            assert torch.equal(y, y[:1].expand_as(y))  # constant: the truth is 0
        for method, solver, norm in CASES + [("auto", "FIRST_ORDER", 2), ("nsr", None, 2)]:
            if method == "lipsdp-neuron" and act is MaxMin:
                continue
            c = None if norm == 2 else torch.tensor([1.0, -1.0], dtype=torch.float64)
            r = lipschitz_bound(net, norm, method, solver, c=c, first_order_iters=10)
            assert r.certified and r.certified_value == 0.0, (zero, act, method, solver, norm, r.message)
        assert fallback_bound(net).certified_value == 0.0


def test_linear_algebra_breakdown_is_a_failed_result_not_an_exception():
    """Entries 1e160 and 1e-160 in one matrix: torch.linalg.eigh (first-order) and numpy's eigvalsh do not
    converge; the answer is a failed certificate naming the reason (or a correct one), never a raise."""
    m, net = _relu_net()
    with torch.no_grad():
        m[2].weight[0, 0] = 1e160
        m[2].weight[1, 1] = 1e-160
    net = from_module(m, (3,))
    for method, solver, norm in CASES:
        c = None if norm == 2 else torch.tensor([1.0, -1.0], dtype=torch.float64)
        r = lipschitz_bound(net, norm, method, solver, c=c, first_order_iters=10)
        assert r.certified or r.message, (method, solver, norm)
        if r.certified and norm == 2:
            assert r.certified_value >= _secant(m) * (1 - 1e-7)
    fb = fallback_bound(net)
    assert fb.certified or fb.message


@pytest.mark.parametrize("kind", ["groupsort4_fo", "maxmin", "householder"])
def test_auto_returns_the_best_verified_candidate(kind):
    torch.manual_seed(2)
    solver = None
    if kind == "groupsort4_fo":
        act, solver = GroupSort(4), "FIRST_ORDER"
    elif kind == "maxmin":
        act = MaxMin()
    else:
        act = HouseholderActivation(8, 2, torch.randn(4, 2))
    m = nn.Sequential(nn.Linear(4, 8), act, nn.Linear(8, 8), act, nn.Linear(8, 3)).double()
    net = from_module(m, (4,))
    cands = [lipschitz_bound(net, 2, meth, solver, first_order_iters=50) for meth in ("lifted", "nsr")]
    best = min(c.certified_value for c in cands if c.certified)
    a = lipschitz_bound(net, 2, "auto", solver, first_order_iters=50)
    assert a.certified and a.certified_value <= best * (1 + 1e-12), (kind, a.certified_value, best)


SCRIPT = textwrap.dedent("""
    import torch
    from torch import nn
    from nncertify.models import from_module
    from nncertify.sdp import lipschitz_bound
    print("TOP-LEVEL RUN")
    torch.manual_seed(0)
    net = from_module(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double(), (3,))
    r = lipschitz_bound(net, 2, time_budget=120)
    print("RESULT", r.status, r.solver_status)
""")


def test_time_budget_in_a_script_without_main_guard(tmp_path):
    """sdp/budget.py starts its child through a fork server; the child re-imported the user's script (no
    ``if __name__ == "__main__":``), ran it again, and its nested budgeted solve failed."""
    script = tmp_path / "user_script.py"
    script.write_text(SCRIPT)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("TOP-LEVEL RUN") == 1, out.stdout       # the script body ran once, not in the child
    assert out.stdout.count("RESULT") == 1 and "RESULT certified" in out.stdout, out.stdout
