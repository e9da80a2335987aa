"""Tasks behind the CLI: certified radii are themselves verified, bounds are ordered, demo artefacts."""

import math

import torch

from nncertify import relax
from nncertify.certify.tasks import certified_radii, resolve_data, resolve_model, task_global, task_lipschitz, task_robustness


def test_certified_radii_are_verified_and_not_beaten_by_attacks():
    lm = resolve_model("digits_relu_mlp")
    net = lm.network
    X, y = resolve_data(None, net, None, 24)
    r = certified_radii(net, X, y, "inf", (0.0, 1.0), iters=6, hi=0.02)
    assert (r >= 0).all() and (r > 0).sum() >= 15
    pos = r > 0
    C, _ = relax.margin_spec(y[pos], 10)
    b = relax.compute_bounds(net, relax.Ball(X[pos], r[pos].float(), p=math.inf, clip=(0.0, 1.0)), C=C)
    assert (b.lower > 0).all()  # an independent re-check at exactly the reported radius
    xa, _ = relax.verify.pgd_attack(net, X[pos], y[pos], r[pos].float(), math.inf, (torch.tensor(0.0), torch.tensor(1.0)),
                                 steps=30, restarts=2)
    assert ((xa - X[pos]).abs().amax(dim=1) <= r[pos][:, None].float().squeeze(1) + 1e-6).all()
    assert (net(xa).argmax(1) == y[pos]).all()


def test_robustness_task_is_consistent():
    lm = resolve_model("digits_maxmin_mlp")
    X, y = resolve_data(None, lm.network, None, 30)
    c = task_robustness(lm, X, y, eps=0.02, clip=(0.0, 1.0), radius_iters=4)
    r = c.result
    assert r.verified + r.falsified + r.unknown == 30 and c.status == "certified"
    for s in r.samples:
        if s.status == "verified":
            assert s.margin_lower > 0
        if s.status == "falsified":
            assert s.certified_radius < 0.02


def test_global_and_local_lipschitz_are_ordered():
    lm = resolve_model("digits_relu_mlp")
    X, _ = resolve_data(None, lm.network, None, 2)
    g = task_global(lm, norm="2", solver="FIRST_ORDER")
    assert g.status == "certified" and g.result.lower <= g.result.upper <= g.result.by_method["product of norms"]
    loc = task_lipschitz(lm, X[0], eps=0.01, norm="2")
    assert loc.status == "certified"
    assert loc.result.lower <= loc.result.upper <= g.result.upper * (1 + 1e-9)


def test_controller_certificate_names_the_jvp_engine():
    from nncertify.certify.tasks import demo_training_run
    cert = demo_training_run(steps=6, spike_at=3)
    assert cert.status == "certified"
    assert any(n.startswith("JVP engine: graph") for n in cert.notes), cert.notes  # the step's own autograd graph
    assert all(t["r_applied"] <= 1.0 for t in cert.result.trajectory)
