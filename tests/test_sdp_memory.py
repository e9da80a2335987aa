"""Issue #19 item 4: the SDP solvers' memory is estimated from the problem's real size before they start;
a solve that would not fit is refused (explicit solver) or routed to the first-order path (auto)."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from nncertify.models import MaxMin, from_module
from nncertify.sdp import api
from nncertify.sdp import solve as S

CHILD = textwrap.dedent(r"""
    import resource, sys
    import torch
    from torch import nn
    from nncertify.models import from_module
    from nncertify.sdp import lipschitz_bound
    from nncertify.sdp import solve as S
    with open("/proc/self/status") as f:
        vm = [int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize:")][0]
    limit = vm + int(sys.argv[1]) * 2 ** 20
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    assert S.available_bytes() <= limit - vm
    torch.manual_seed(0)
    w = 48
    net = from_module(nn.Sequential(nn.Linear(w, w), nn.ReLU(), nn.Linear(w, w), nn.ReLU(),
                                    nn.Linear(w, 1)).double(), (w,))
    try:
        r = lipschitz_bound(net, "inf", "lipsdp-neuron", solver="CLARABEL")
        print("SOLVED", r.status)
    except S.SolverMemoryError as exc:
        print("REFUSED", exc)
""")


def test_clarabel_refused_under_address_space_limit_instead_of_dying():
    """A 48-wide l_inf LipSDP in CLARABEL needs ~2.1 GiB (measured, bench/results/solver_memory.md); under a
    1 GiB RLIMIT_AS the old guard (largest cone's KKT block only, 4 GiB cap) let it start and die."""
    env = dict(os.environ)
    out = subprocess.run([sys.executable, "-c", CHILD, "1024"], capture_output=True, text=True, timeout=300,
                         env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "REFUSED" in out.stdout, out.stdout + out.stderr[-2000:]
    line = out.stdout.strip().splitlines()[-1]
    assert "CLARABEL" in line and "GiB" in line and "FIRST_ORDER" in line


def test_estimate_grows_with_the_cones_and_covers_the_measurements():
    small, big = S.estimate_solver_bytes("CLARABEL", [16, 16, 9]), S.estimate_solver_bytes("CLARABEL", [96, 96, 49])
    assert big > 10 * small
    # measured peaks over the pre-call RSS (bench/results/solver_memory.md): 2130 MiB and 1020 MiB
    assert big >= 2130 * 2 ** 20
    assert S.estimate_solver_bytes("CLARABEL", [80, 80, 41]) >= 1020 * 2 ** 20
    assert S.estimate_solver_bytes("SCS", [96, 96, 49]) < big


def _maxmin_chain(w=12):
    torch.manual_seed(0)
    return from_module(nn.Sequential(nn.Linear(4, w), MaxMin(), nn.Linear(w, w), MaxMin(), nn.Linear(w, 2)).double(),
                       (4,))


def test_auto_routes_to_first_order_when_no_solver_fits(monkeypatch):
    net = _maxmin_chain()
    ref = api.lipschitz_bound(net, 2, "lifted")
    monkeypatch.setattr(S, "available_bytes", lambda: 2 ** 20)      # 1 MiB: no cvxpy solve fits
    for method in ("lifted", "nsr"):
        r = api.lipschitz_bound(net, 2, method, first_order_iters=200)
        assert r.certified and r.solver in ("FIRST_ORDER", "CLOSED_FORM"), (method, r.solver)
        assert r.certified_value >= ref.certified_value * (1 - 1e-6)
    with pytest.raises(S.SolverMemoryError, match="CLARABEL"):
        api.lipschitz_bound(net, 2, "lifted", solver="CLARABEL")
    with pytest.raises(S.SolverMemoryError, match="SCS"):
        api.lipschitz_bound(net, 2, "nsr", solver="SCS")


LOCAL_CHILD = textwrap.dedent(r"""
    import resource, sys
    import torch
    from torch import nn
    from nncertify.models import from_module
    from nncertify.relax.lipschitz import local_lipschitz
    from nncertify.sdp import solve as S
    with open("/proc/self/status") as f:
        vm = [int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize:")][0]
    resource.setrlimit(resource.RLIMIT_AS, (vm + int(sys.argv[1]) * 2 ** 20, resource.getrlimit(resource.RLIMIT_AS)[1]))
    torch.manual_seed(0)
    w = 40
    net = from_module(nn.Sequential(nn.Linear(w, w), nn.ReLU(), nn.Linear(w, w), nn.ReLU(),
                                    nn.Linear(w, 2)).double(), (w,))
    x = torch.zeros(1, w, dtype=torch.float64)
    try:
        r = local_lipschitz(net, (x - 0.1, x + 0.1), norm="2", method="lipsdp", attack=False)
        print("SOLVED", r.upper)
    except S.SolverMemoryError as exc:
        print("REFUSED", exc)
""")


def test_local_lipsdp_goes_through_the_same_memory_guard_in_a_subprocess():
    """relax/lipschitz/bounds/lipsdp_local.py called CLARABEL without the guard.  One 120-wide cone (40 inputs + 2 x 40
    neurons) needs ~10 GiB in CLARABEL by the model of sdp.solve; under a 1 GiB RLIMIT_AS it must be refused
    before anything is built (the process then exits normally), naming the solver and what to use instead."""
    out = subprocess.run([sys.executable, "-c", LOCAL_CHILD, "1024"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    line = out.stdout.strip().splitlines()[-1]
    assert line.startswith("REFUSED") and "CLARABEL" in line and "GiB" in line and "crown" in line, out.stdout


def test_local_lipsdp_refusal_uses_the_solver_memory_model(monkeypatch):
    """In process: the need the guard compares is sdp.solve's estimate for the one cone plus the dense
    coefficient array; with the memory available just above it the solve runs, just below it is refused."""
    from nncertify.relax.lipschitz import local_lipschitz
    torch.manual_seed(0)
    net = from_module(nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2)).double(), (3,))
    x = torch.zeros(1, 3, dtype=torch.float64)
    N, nh = 3 + 5, 5
    need = S.estimate_solver_bytes("CLARABEL", [N]) + 2 * 8 * N * N * (1 + nh)
    monkeypatch.setattr(S, "available_bytes", lambda: int(need / S.MEMORY_FRACTION) - 1024)
    with pytest.raises(S.SolverMemoryError, match="CLARABEL.*crown"):
        local_lipschitz(net, (x - 0.1, x + 0.1), norm="2", method="lipsdp", attack=False)
    monkeypatch.setattr(S, "available_bytes", lambda: int(need / S.MEMORY_FRACTION) + 1024)
    r = local_lipschitz(net, (x - 0.1, x + 0.1), norm="2", method="lipsdp", attack=False)
    assert r.upper > 0 and r.upper < float("inf")
