"""The controller's step bookkeeping (issue #6): θ_old and p = θ_new − θ_old live in preallocated flat
buffers (per-tensor buffers when dtypes/devices are mixed), ‖p‖ is accumulated in float64, and the
training forward is only observed through hooks (never re-routed).

Truth: norms and displacements recomputed here in float64 from parameter snapshots taken by the test."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nncertify.certify.controller import SafeStepController


class Mixed(nn.Module):
    """One float64 layer between float32 ones: the controller cannot use one flat buffer."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(6, 8), nn.Linear(8, 8).double(), nn.Linear(8, 4)

    def forward(self, x):
        return self.c(torch.tanh(self.b(torch.tanh(self.a(x)).double())).float())


def _norm64(tensors):
    return math.sqrt(sum(float((t.double() ** 2).sum()) for t in tensors))


@pytest.mark.parametrize("model", ["flat", "mixed"])
@pytest.mark.parametrize("lr", [1e-3, 5.0])
def test_step_norms_and_applied_displacement_match_float64(model, lr):
    torch.manual_seed(40)
    m = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.GELU(), nn.Linear(8, 4)) if model == "flat" else Mixed()
    x, y = torch.randn(16, 6), torch.randint(0, 4, (16,))
    opt = torch.optim.Adam(m.parameters(), lr=lr)
    ctrl = SafeStepController(m, opt)
    for _ in range(3):
        old = [p.detach().clone() for p in m.parameters()]
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        opt.step()  # an unclipped step applies the proposal itself, so both norms must equal the displacement
        rec = ctrl.last
        applied = _norm64([p.detach() - o for p, o in zip(m.parameters(), old)])
        assert rec.engine == "graph" and rec.kind == "certified"
        assert rec.applied_norm == pytest.approx(applied, rel=1e-12, abs=0)
        assert rec.r_applied <= 1.0 and applied <= rec.rho_applied
        if rec.status == "ok":
            assert rec.step_norm == pytest.approx(applied, rel=1e-12, abs=0)
        else:
            assert rec.status == "clipped" and rec.scale < 1
            assert applied == pytest.approx(rec.scale * rec.step_norm, rel=1e-5)
        # θ_old snapshot buffers hold this step's starting point
        assert all(torch.equal(o, s) for o, s in zip(old, ctrl._old))
    assert (ctrl._old_flat is not None) == (model == "flat")
    if lr == 5.0:
        assert any(r.status == "clipped" for r in ctrl.records)


def test_forward_is_observed_by_hooks_only():
    torch.manual_seed(41)
    m = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
    x, y = torch.randn(16, 6), torch.randint(0, 4, (16,))
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    ctrl = SafeStepController(m, opt)
    assert "forward" not in m.__dict__ and len(m._forward_hooks) == 1 and len(m._forward_pre_hooks) == 1
    opt.zero_grad()
    z = m(x)
    (rec,) = ctrl._forwards
    assert rec.args[0] is not x and torch.equal(rec.args[0], x) and not rec.args[0].requires_grad
    assert torch.equal(rec.z_fp, z.detach().reshape(-1).double())
    F.cross_entropy(z, y).backward()
    opt.step()
    assert ctrl.last.engine == "graph" and ctrl.last.n_forwards == 1 and not ctrl._forwards
    with torch.no_grad():  # forwards without autograd (evaluation) are not recorded
        m(x)
    assert not ctrl._forwards
    ctrl.detach()
    assert "forward" not in m.__dict__ and not m._forward_hooks and not m._forward_pre_hooks
