"""Certificate invariant of the safe-step controller (issue #16): every step recorded as certified has its
applied displacement inside the exact radius of the logits' linearization, checked against an
independent float64 JVP of the same network (``torch.func.jvp`` on a float64 copy at θ_old along the
displacement measured here).  Cases from the issue: tied embeddings, bf16/fp16 parameters (binary model at
δ = 0, where ``π/Δ_a`` is the exact radius, and multiclass), gradient accumulation over micro-batches, CPU
autocast with a GradScaler; and the failure paths: detached tangents (labelled estimate), replays that fail
(the step is clipped by the last certified radius or not taken, never left unchecked), inputs changed in
place, no batch.  Plus ``rho_a(mode="eval")``, ``step_report`` and ``certify steps`` on attention models."""

import copy
import math
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jvp

from nncertify.certify.controller import SafeStepController
from nncertify.certify.ghosts import rho_a, step_report


def exact_delta64(model, xs, old, new):
    """Float64 ``max_x Δ_a`` along ``new − old`` (all in float64) over the batches ``xs``; and ‖new − old‖."""
    m64 = copy.deepcopy(model).double()
    disp = {k: new[k].double() - old[k].double() for k in old}
    nrm = math.sqrt(sum(float((d ** 2).sum()) for d in disp.values()))
    unit = {k: d / nrm for k, d in disp.items()}
    bufs = {k: b.double() for k, b in m64.named_buffers()}
    da = 0.0
    for x in xs:
        x64 = x.double() if x.is_floating_point() else x
        f = lambda P: functional_call(m64, (P, {k: b.clone() for k, b in bufs.items()}), (x64,))  # noqa: E731
        _, a = jvp(f, ({k: v.double() for k, v in old.items()},), (unit,))
        da = max(da, float((a.amax(-1) - a.amin(-1)).max()))
    return da, nrm


def snap(m):
    return {k: p.detach().clone() for k, p in m.named_parameters()}


class TiedLM(nn.Module):
    def __init__(self, v=17, d=12):
        super().__init__()
        self.emb, self.ln, self.mix = nn.Embedding(v, d), nn.LayerNorm(d), nn.Linear(d, d)
        self.head = nn.Linear(d, v, bias=False)
        self.head.weight = self.emb.weight  # GPT-style tying

    def forward(self, ids):
        h = self.emb(ids)
        return self.head(self.ln(h + torch.tanh(self.mix(h))))


@pytest.mark.parametrize("seed", range(8))
def test_tied_embeddings_applied_r_at_most_one(seed):
    torch.manual_seed(seed)
    m = TiedLM()
    opt = torch.optim.Adam(m.parameters(), lr=0.3)
    ctrl = SafeStepController(m, opt)
    assert ctrl._names.count("emb.weight") == 1 and "head.weight" not in ctrl._names
    for _ in range(3):
        ids, y = torch.randint(0, 17, (4, 7)), torch.randint(0, 17, (4, 7))
        opt.zero_grad()
        F.cross_entropy(m(ids).reshape(-1, 17), y.reshape(-1)).backward()
        old = snap(m)
        opt.step()
        rec = ctrl.last
        assert rec.kind == "certified" and rec.engine == "graph"
        da, nrm = exact_delta64(m, [ids], old, snap(m))
        assert nrm * da / math.pi <= 1.0, (rec.status, nrm * da / math.pi)
        assert rec.rho_applied <= math.pi / da * (1 + 1e-7)
    assert any(r.status == "clipped" for r in ctrl.records)


def binary_bf16(seed):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 2))
    with torch.no_grad():  # δ = z1 − z2 = 0 for every input: π/Δ_a is the exact radius there
        m[2].weight[1] = m[2].weight[0]
        m[2].bias[1] = m[2].bias[0]
    return m.to(torch.bfloat16)


@pytest.mark.parametrize("block", range(4))
def test_bf16_binary_radius_never_above_exact(block):
    for seed in range(10 * block, 10 * block + 10):  # 40 seeds in all
        m = binary_bf16(seed)
        x = torch.randn(16, 6).to(torch.bfloat16)
        y = torch.randint(0, 2, (16,))
        opt = torch.optim.SGD(m.parameters(), lr=2.0)
        ctrl = SafeStepController(m, opt)
        z = m(x)
        assert torch.equal(z[:, 0], z[:, 1])
        F.cross_entropy(z.float(), y).backward()
        old = snap(m)
        opt.step()
        rec = ctrl.last
        assert rec.kind == "certified"
        da, nrm = exact_delta64(m, [x], old, snap(m))
        exact = math.pi / da  # binary radius √(δ² + π²)/Δ_a at δ = 0
        assert rec.rho_applied <= exact, (seed, rec.rho_applied, exact)
        assert nrm / exact <= 1.0 and rec.r_applied <= 1.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_multiclass_rho_below_float64_and_r_at_most_one(dtype):
    for seed in range(12):
        torch.manual_seed(seed)
        m = nn.Sequential(nn.Linear(8, 24), nn.GELU(), nn.Linear(24, 24), nn.Tanh(), nn.Linear(24, 7)).to(dtype)
        opt = torch.optim.SGD(m.parameters(), lr=1.0 + 20.0 * (seed % 3), momentum=0.5)
        ctrl = SafeStepController(m, opt)
        for _ in range(2):
            x, y = torch.randn(20, 8).to(dtype), torch.randint(0, 7, (20,))
            opt.zero_grad()
            F.cross_entropy(m(x).float(), y).backward()
            old = snap(m)
            opt.step()
            rec = ctrl.last
            assert rec.kind == "certified" and rec.status in ("ok", "clipped")
            da, nrm = exact_delta64(m, [x], old, snap(m))
            assert rec.rho_applied <= math.pi / da, (seed, rec.rho_applied, math.pi / da)
            assert nrm * da / math.pi <= 1.0


@pytest.mark.parametrize("autocast", [False, True])
def test_gradient_accumulation_radius_covers_every_micro_batch(autocast):
    torch.manual_seed(5)
    m = nn.Sequential(nn.Linear(8, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 6))
    opt = torch.optim.Adam(m.parameters(), lr=0.5)
    scaler = torch.amp.GradScaler("cpu", enabled=autocast)
    ctrl = SafeStepController(m, opt)
    g = torch.Generator().manual_seed(6)
    for _ in range(3):
        xs = [torch.randn(10, 8, generator=g) for i in range(4)]
        ys = [torch.randint(0, 6, (10,), generator=g) for _ in range(4)]
        opt.zero_grad()
        for x, y in zip(xs, ys):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                loss = F.cross_entropy(m(x).float(), y) / 4
            scaler.scale(loss).backward()
        old = snap(m)
        scaler.step(opt)
        scaler.update()
        rec = ctrl.last
        assert rec.n_forwards == 4 and rec.n_samples == 40 and rec.kind == "certified"
        da, nrm = exact_delta64(m.train(), xs, old, snap(m))
        assert nrm * da / math.pi <= 1.0
        assert rec.rho_applied <= math.pi / da * (1 + 1e-6)
        # the bottleneck is the micro-batch with the largest spread, whichever it is
        per = [exact_delta64(m, [x], old, snap(m))[0] for x in xs]
        assert rec.bottleneck[0] == max(range(4), key=per.__getitem__) and max(per) == pytest.approx(da)
    assert any(r.status == "clipped" for r in ctrl.records)


class Detaching(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.a, self.b, self.how = nn.Linear(6, 8), nn.Linear(8, 3), how

    def forward(self, x):
        h = torch.tanh(self.a(x))
        h = h.detach() if self.how == "detach" else h.data
        return self.b(h + x[:, :8].tanh().repeat(1, 2)[:, :8])


@pytest.mark.parametrize("how", ["detach", "data"])
def test_detached_tangent_is_an_estimate_with_its_reason(how):
    torch.manual_seed(0)
    m = Detaching(how)
    opt = torch.optim.SGD(m.parameters(), lr=0.5, weight_decay=0.1)  # weight decay moves the detached layer
    ctrl = SafeStepController(m, opt)
    F.cross_entropy(m(torch.randn(8, 6)), torch.randint(0, 3, (8,))).backward()
    opt.step()
    rec = ctrl.last
    assert rec.kind == "estimate" and rec.engine == "fd" and "detaches" in rec.fallback_reason


FAIL = {"on": False}


class FragileReplay(nn.Module):
    """A forward that fails whenever it does not see its own parameters (any functional replay)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x):
        if FAIL["on"] and not isinstance(self.a.weight, nn.Parameter):
            raise RuntimeError("boom")
        return self.b(torch.relu(self.a(x)))


def test_internal_failure_clips_by_last_radius_or_rejects():
    torch.manual_seed(1)
    m = FragileReplay()
    opt = torch.optim.SGD(m.parameters(), lr=5.0)
    ctrl = SafeStepController(m, opt, engine="forward_ad")  # the replay engines (the graph engine runs no forward)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    FAIL["on"] = True
    try:
        # no certified radius yet: the step is not taken
        F.cross_entropy(m(x), y).backward()
        old = snap(m)
        with pytest.warns(RuntimeWarning, match="boom"):
            opt.step()
        assert ctrl.last.status == "rejected_error" and ctrl.last.kind == "estimate"
        assert all(torch.equal(p, old[k]) for k, p in m.named_parameters())
        FAIL["on"] = False
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        opt.step()
        last_rho = ctrl.last.rho_a
        assert ctrl.last.kind == "certified"
        # a later failure: clipped by the last certified radius, labelled as such
        FAIL["on"] = True
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        old = snap(m)
        with pytest.warns(RuntimeWarning):
            opt.step()
        rec = ctrl.last
        assert rec.status == "clipped_last_radius" and rec.kind == "estimate" and rec.engine == "last_radius"
        moved = math.sqrt(sum(float(((p - old[k]).double() ** 2).sum()) for k, p in m.named_parameters()))
        assert moved <= last_rho and rec.applied_norm == pytest.approx(moved, rel=1e-12)
    finally:
        FAIL["on"] = False


def test_input_changed_in_place_and_missing_batch():
    torch.manual_seed(2)
    m = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    ctrl = SafeStepController(m, opt)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    F.cross_entropy(m(x), y).backward()
    x.add_(1.0)  # the recorded batch is gone
    old = snap(m)
    with pytest.warns(RuntimeWarning, match="modified in place"):
        opt.step()
    assert ctrl.last.status == "rejected_error" and all(torch.equal(p, old[k]) for k, p in m.named_parameters())
    from nncertify.models.errors import InvalidArgumentError
    opt.zero_grad()
    with torch.no_grad():
        m(x)
    m[0].weight.grad = torch.ones_like(m[0].weight)
    old = snap(m)
    with pytest.raises(InvalidArgumentError, match="not taken"):
        opt.step()
    assert all(torch.equal(p, old[k]) for k, p in m.named_parameters())


def test_observe_with_dropout_is_not_certified():
    torch.manual_seed(3)
    m = nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.5), nn.Linear(8, 3))
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    ctrl = SafeStepController(m, opt, capture="manual")
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    F.cross_entropy(m(x), y).backward()
    ctrl.observe(x)
    opt.step()
    assert ctrl.last.kind == "estimate" and "observe()" in ctrl.last.fallback_reason
    m.eval()  # deterministic forward: the observed batch gives an exact radius
    opt.zero_grad()
    F.cross_entropy(m(x), y).backward()
    ctrl.observe(x)
    opt.step()
    assert ctrl.last.kind == "certified"


class Attn(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.att = nn.MultiheadAttention(16, 4, batch_first=True)
        self.enc = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.1, batch_first=True)
        self.out = nn.Linear(16, 10)

    def forward(self, x):
        h = self.inp(x.reshape(x.shape[0], 8, 8))
        h = self.enc(h + self.att(h, h, h, need_weights=False)[0])
        return self.out(h.mean(1))


def test_eval_mode_radius_and_step_report_on_attention():
    torch.manual_seed(4)
    m = Attn().eval()
    x, y = torch.randn(6, 64), torch.randint(0, 10, (6,))
    d = {k: torch.randn_like(p) for k, p in m.named_parameters()}
    res = rho_a(m, x, d, mode="eval")
    assert res.kind == "certified" and 0 < res.rho_a < math.inf
    # independent: torch.func.jvp of the float64 copy in eval mode (composite attention path)
    m64 = copy.deepcopy(m).double()
    nrm = math.sqrt(sum(float((t.double() ** 2).sum()) for t in d.values()))
    from torch.nn.attention import SDPBackend, sdpa_kernel
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            _, a = jvp(lambda P: functional_call(m64, P, (x.double(),)),
                       ({k: p.detach() for k, p in m64.named_parameters()},),
                       ({k: t.double() / nrm for k, t in d.items()},))
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
    da = float((a.amax(-1) - a.amin(-1)).max())
    assert res.rho_a <= math.pi / da and res.rho_a == pytest.approx(math.pi / da, rel=1e-3)
    rep = step_report(m, x, y)
    assert rep["kind"] == "certified" and rep["rho_a"] > 0 and rep["lr_max_sgd"] > 0


def test_certify_steps_cli_on_attention_model(tmp_path, capsys):
    from test_cli import certify_inproc
    (tmp_path / "attn_arch.py").write_text(
        "import torch\nfrom torch import nn\n"
        "class Attn(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.inp = nn.Linear(8, 16)\n"
        "        self.att = nn.MultiheadAttention(16, 4, batch_first=True)\n"
        "        self.out = nn.Linear(16, 10)\n"
        "    def forward(self, x):\n"
        "        h = self.inp(x.reshape(x.shape[0], 8, 8))\n"
        "        return self.out((h + self.att(h, h, h, need_weights=False)[0]).mean(1))\n"
        "def build():\n    torch.manual_seed(0)\n    return Attn()\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import attn_arch
        torch.save(attn_arch.build().state_dict(), tmp_path / "attn.pt")
    finally:
        sys.path.remove(str(tmp_path))
    args = ["steps", tmp_path / "attn.pt", "--arch", f"{tmp_path / 'attn_arch.py'}:build", "--limit", "32"]
    r = certify_inproc(capsys, *args, "--input-shape", "64", "--json", tmp_path / "s.json")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "(certified" in r.stdout, r.stdout
    import json
    cert = json.loads((tmp_path / "s.json").read_text())
    assert cert["status"] == "certified" and cert["result"]["radius"] > 0
    bad = certify_inproc(capsys, *args, "--input-shape", "63")
    assert bad.returncode == 2 and "does not accept inputs of shape (63,)" in bad.stderr


def test_fuzz_controller_family_has_no_violations():
    """A seeded slice of bench/soundness_fuzz.py's controller family (random architectures, optimizers,
    learning rates, dtypes and micro-batch counts; truth: an independent JVP along the applied step)."""
    import numpy as np
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    try:
        import soundness_fuzz
    finally:
        sys.path.pop(0)
    t = soundness_fuzz.Tally()
    rng = np.random.default_rng(16)
    for _ in range(8):
        soundness_fuzz.check_controller(t, rng)
    d = t.data["controller"]
    assert d["violations"] == 0, d["examples"]
    assert d["pairs"] >= 8, d


@pytest.mark.parametrize("name", ["sgd_nesterov", "adam", "adamw", "rmsprop", "adagrad", "nadam"])
def test_any_optimizer_step_is_inside_the_exact_radius(name):
    torch.manual_seed(6)
    m = nn.Sequential(nn.Linear(8, 24), nn.LayerNorm(24), nn.GELU(), nn.Linear(24, 5))
    ps = m.parameters()
    opt = {"sgd_nesterov": lambda: torch.optim.SGD(ps, lr=3.0, momentum=0.9, nesterov=True, weight_decay=1e-2),
           "adam": lambda: torch.optim.Adam(ps, lr=0.5), "adamw": lambda: torch.optim.AdamW(ps, lr=0.5),
           "rmsprop": lambda: torch.optim.RMSprop(ps, lr=0.3), "adagrad": lambda: torch.optim.Adagrad(ps, lr=2.0),
           "nadam": lambda: torch.optim.NAdam(ps, lr=0.5)}[name]()
    ctrl = SafeStepController(m, opt)
    for _ in range(3):
        x, y = torch.randn(16, 8), torch.randint(0, 5, (16,))
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        old = snap(m)
        opt.step()
        assert ctrl.last.kind == "certified"
        da, nrm = exact_delta64(m, [x], old, snap(m))
        assert nrm * da / math.pi <= 1.0 and ctrl.last.rho_applied <= math.pi / da * (1 + 1e-6)
    assert any(r.status == "clipped" for r in ctrl.records)


def test_recording_failure_never_reaches_the_training_forward(monkeypatch):
    torch.manual_seed(7)
    m = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    ctrl = SafeStepController(m, opt)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    F.cross_entropy(m(x), y).backward()  # micro-batch 1: recorded
    import nncertify.certify.controller as C

    def broken(*a, **k):
        raise RuntimeError("no RNG today")
    monkeypatch.setattr(C.RngState, "capture", broken)
    z = m(x * 2)  # micro-batch 2: its recording fails, the forward itself does not
    monkeypatch.undo()
    F.cross_entropy(z, y).backward()
    opt.step()
    rec = ctrl.last
    assert rec.kind == "estimate" and "no RNG today" in rec.fallback_reason and rec.n_forwards == 1


def test_controller_eval_mode_radius_on_attention_matches_rho_a():
    torch.manual_seed(8)
    m = Attn().train()  # dropout in the training forward; the radius asked for in eval mode
    opt = torch.optim.Adam(m.parameters(), lr=0.05)
    ctrl = SafeStepController(m, opt, model_mode="eval")
    x, y = torch.randn(6, 64), torch.randint(0, 10, (6,))
    F.cross_entropy(m(x), y).backward()
    old = snap(m)
    opt.step()
    rec = ctrl.last
    assert rec.kind == "certified" and rec.engine == "forward_ad"
    disp = {k: p.detach() - old[k] for k, p in m.named_parameters()}
    ref = rho_a(m, x, disp, mode="eval", params=old)
    assert rec.rho_applied == pytest.approx(ref.rho_a, rel=1e-5)
    assert m.training  # the module's mode is left as the training loop set it


def test_unverified_rescaled_step_is_an_estimate():
    torch.manual_seed(9)
    m = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    opt = torch.optim.SGD(m.parameters(), lr=50.0)
    ctrl = SafeStepController(m, opt, verify_applied=False)
    F.cross_entropy(m(torch.randn(8, 6)), torch.randint(0, 3, (8,))).backward()
    opt.step()
    assert ctrl.last.status == "clipped" and ctrl.last.kind == "estimate"
    assert "verify_applied=False" in ctrl.last.fallback_reason
