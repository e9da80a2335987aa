"""Safe-step controller (certify/controller.py): the applied step never exceeds the ghost radius in clip
mode (checked with an independent float64 finite-difference radius), set mode hits its target, harmless
steps are left bit-for-bit alone, NaN steps are rejected, BatchNorm statistics are not disturbed, and
the Lightning / Hugging Face adapters run a real Trainer loop each (the test set-up installs both)."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nncertify.certify.controller import SafeStepController, hf_callback, lightning_callback
from nncertify.models.errors import InvalidArgumentError


def make_net(seed=0, bn=True):
    torch.manual_seed(seed)
    mid = nn.BatchNorm1d(32) if bn else nn.LayerNorm(32)
    return nn.Sequential(nn.Linear(10, 32), mid, nn.GELU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 5))


def data(seed=0, n=64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 10, generator=g), torch.randint(0, 5, (n,), generator=g)


def indep_rho64(model, x, theta_old, disp, train):
    """Independent radius: float64 copy of the model, central finite differences along disp/|disp|."""
    m = make_net(bn=isinstance(model[1], nn.BatchNorm1d)).double()
    m.load_state_dict(model.state_dict())
    m.train(train)
    nrm = math.sqrt(sum(float((t.double() ** 2).sum()) for t in disp))
    h = 1e-6

    def at(s):
        with torch.no_grad():
            for p, o, dd in zip(m.parameters(), theta_old, disp):
                p.copy_(o.double() + s * dd.double() / nrm)
            return m(x.double())

    a = (at(h) - at(-h)) / (2 * h)
    return math.pi / float((a.max(1).values - a.min(1).values).max()), nrm


@pytest.mark.parametrize("method,opt_name", [("jvp", "adam"), ("fd", "adam"), ("jvp", "sgdm"), ("jvp", "adamw")])
def test_clip_mode_never_exceeds_radius(method, opt_name, tmp_path):
    m = make_net(1)
    x, y = data(1)
    if opt_name == "adam":
        opt = torch.optim.Adam(m.parameters(), lr=5.0)
    elif opt_name == "sgdm":
        opt = torch.optim.SGD(m.parameters(), lr=20.0, momentum=0.9, weight_decay=1e-3)
    else:
        opt = torch.optim.AdamW([{"params": list(m[0].parameters()), "lr": 3.0},
                                 {"params": [p for mod in list(m)[1:] for p in mod.parameters()], "lr": 0.5}])
    log = tmp_path / "steps.jsonl"
    ctrl = SafeStepController(m, opt, mode="clip", method=method, jsonl=log)
    clipped = 0
    for _ in range(6):
        old = [p.detach().clone() for p in m.parameters()]
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        opt.step()
        disp = [p.detach() - o for p, o in zip(m.parameters(), old)]
        rho_ind, moved = indep_rho64(m, x, old, disp, train=True)
        rec = ctrl.last
        assert rec.r_applied <= 1.0
        tol = 1e-4 if method == "jvp" else 3e-2  # fd is an estimate of rho_a
        assert moved <= rho_ind * (1 + tol)
        assert rec.applied_norm == pytest.approx(moved, rel=1e-9)
        assert rec.kind == ("certified" if method == "jvp" else "estimate")
        assert rec.engine == ("graph" if method == "jvp" else "fd")  # exact path: the step's own autograd graph
        clipped += rec.status == "clipped"
    assert clipped >= 3  # the huge learning rates really were clipped
    lines = [json.loads(s) for s in log.read_text().splitlines()]
    assert len(lines) == 6 and all(r["r_applied"] <= 1.0 for r in lines)
    assert ctrl.summary()["max_r_applied"] <= 1.0


def test_harmless_step_untouched_and_clipped_step_is_scaled_copy():
    x, y = data(2)
    m1, m2 = make_net(3), make_net(3)
    o1, o2 = torch.optim.Adam(m1.parameters(), lr=1e-5), torch.optim.Adam(m2.parameters(), lr=1e-5)
    ctrl = SafeStepController(m1, o1)
    for mm, oo in ((m1, o1), (m2, o2)):
        oo.zero_grad()
        F.cross_entropy(mm(x), y).backward()
        oo.step()
    assert ctrl.last.status == "ok" and ctrl.last.scale == 1.0
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p1, p2)
    for b1, b2 in zip(m1.buffers(), m2.buffers()):  # BatchNorm statistics exactly as without the controller
        assert torch.equal(b1, b2)
    # a clipped step: same direction as the plain optimizer's step, scaled by s
    for g in o1.param_groups + o2.param_groups:
        g["lr"] = 10.0
    old = [p.detach().clone() for p in m1.parameters()]
    for mm, oo in ((m1, o1), (m2, o2)):
        oo.zero_grad()
        F.cross_entropy(mm(x), y).backward()
        oo.step()
    s = ctrl.last.scale
    assert ctrl.last.status == "clipped" and 0 < s < 1
    for p1, p2, o in zip(m1.parameters(), m2.parameters(), old):
        assert torch.allclose(p1 - o, s * (p2 - o), rtol=1e-4, atol=1e-7)
    for b1, b2 in zip(m1.buffers(), m2.buffers()):
        assert torch.equal(b1, b2)


@pytest.mark.parametrize("r_target", [0.5, 2.0])
def test_set_mode_hits_target(r_target):
    m = make_net(4, bn=False)
    x, y = data(4)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    ctrl = SafeStepController(m, opt, mode="set", r_target=r_target)
    for _ in range(3):
        old = [p.detach().clone() for p in m.parameters()]
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        opt.step()
        disp = [p.detach() - o for p, o in zip(m.parameters(), old)]
        rho_ind, moved = indep_rho64(m, x, old, disp, train=True)
        assert moved == pytest.approx(r_target * rho_ind, rel=1e-3)
        assert ctrl.last.r_applied == pytest.approx(r_target, rel=1e-5)


def test_nonfinite_step_rejected():
    m = make_net(5)
    x, y = data(5)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    ctrl = SafeStepController(m, opt)
    opt.zero_grad()
    F.cross_entropy(m(x), y).backward()
    m[0].weight.grad[0, 0] = float("nan")
    old = [p.detach().clone() for p in m.parameters()]
    opt.step()
    assert ctrl.last.status == "rejected_nonfinite" and ctrl.last.kind == "estimate"
    for p, o in zip(m.parameters(), old):
        assert torch.equal(p, o)
    assert ctrl.last.to_dict()["r_proposed"] is None  # JSON-safe


def test_manual_observe_and_missing_batch():
    m = make_net(6, bn=False)
    x, y = data(6)
    opt = torch.optim.Adam(m.parameters(), lr=1.0)
    ctrl = SafeStepController(m, opt, capture="manual", method="fd")
    loss = F.cross_entropy(m(x), y)
    loss.backward()
    with pytest.raises(InvalidArgumentError):
        opt.step()
    ctrl.observe(x)
    opt.zero_grad()
    F.cross_entropy(m(x), y).backward()
    opt.step()
    assert ctrl.last.r_applied <= 1.0
    ctrl.detach()
    with pytest.raises(InvalidArgumentError):
        SafeStepController(m, opt, mode="bounce")
    with pytest.raises(InvalidArgumentError):
        SafeStepController(m, torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1))


def test_lightning_adapter():
    import lightning.pytorch as pl  # installed by the test set-up (the [test] extra): this test never skips
    x, y = data(7, n=96)

    class Lit(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = make_net(7, bn=True)

        def forward(self, xb):
            return self.net(xb)

        def training_step(self, batch, idx):
            xb, yb = batch
            return F.cross_entropy(self(xb), yb)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=5.0)

    cb = lightning_callback()
    trainer = pl.Trainer(max_steps=4, callbacks=[cb], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
    trainer.fit(Lit(), loader)
    recs = cb.controller.records
    assert len(recs) == 4
    assert all(r.r_applied <= 1.0 for r in recs) and any(r.status == "clipped" for r in recs)
    # the forward runs inside optimizer.step(closure): the capture is still θ_old's
    assert all(r.kind == "certified" and r.engine == "graph" for r in recs)
    assert all(r.n_samples == 32 for r in recs)


def test_hf_adapter_with_trainer(tmp_path):
    import transformers  # installed by the test set-up (the [test] extra, with accelerate): never skips

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = make_net(8, bn=False)

        def forward(self, x, labels=None):
            z = self.body(x)
            out = {"logits": z}
            if labels is not None:
                out["loss"] = F.cross_entropy(z, labels)
            return out

    x, y = data(8, n=64)

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return 64

        def __getitem__(self, i):
            return {"x": x[i], "labels": y[i]}

    cb = hf_callback()
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=16,
                                          learning_rate=5.0, report_to=[], save_strategy="no", use_cpu=True,
                                          logging_strategy="no", disable_tqdm=True, lr_scheduler_type="constant")
    trainer = transformers.Trainer(model=Net(), args=args, train_dataset=DS(), callbacks=[cb])
    trainer.train()
    recs = cb.controller.records
    assert len(recs) == 3 and all(r.r_applied <= 1.0 for r in recs) and all(r.n_samples == 16 for r in recs)
    assert all(r.kind == "certified" and r.engine == "graph" for r in recs)
    assert any(r.status == "clipped" for r in recs)


def test_sequence_logits_and_temperature():
    torch.manual_seed(9)
    x = torch.randn(6, 7, 4)
    y = torch.randint(0, 9, (6, 7))

    def make():
        torch.manual_seed(10)
        return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 9))  # (B, T, V) logits

    rhos = {}
    for T in (1.0, 2.0):
        m = make()
        opt = torch.optim.SGD(m.parameters(), lr=50.0)
        ctrl = SafeStepController(m, opt, temperature=T)
        opt.zero_grad()
        F.cross_entropy(m(x).flatten(0, 1) / 1.0, y.flatten()).backward()
        opt.step()
        rec = ctrl.last
        assert len(rec.bottleneck) == 2 and rec.r_applied <= 1.0 and rec.status == "clipped"
        rhos[T] = rec.rho_a
    assert rhos[2.0] == pytest.approx(2 * rhos[1.0], rel=1e-6)  # rho_a(T) = pi T / Delta_a
