"""The `certify` command: each subcommand on shipped examples; bad input gives one line and exit 2."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from nncertify.certify.records import load_certificate

ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}


def certify(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "nncertify", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=ENV)


class _Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def certify_inproc(capsys, *args):
    """``certify ARGS`` through the same ``certify.cli.main`` entry point, in this process (no
    interpreter start-up): same exit code and the same lines on stdout/stderr as the console script."""
    import warnings
    from nncertify.certify.cli import main
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            main([str(a) for a in args])
            rc = 0
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out = capsys.readouterr()
    return _Result(rc, out.out, out.err)


def assert_bad_input(r, *words):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout
    lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1, r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


def test_help_reads_well():
    r = certify("--help")
    assert r.returncode == 0
    for cmd in ("demo", "lipschitz", "global", "robustness", "steps", "game", "report", "batch", "zoo", "inspect"):
        assert cmd in r.stdout


def test_zoo_and_inspect():
    r = certify("zoo")
    assert r.returncode == 0 and "digits_relu_cnn" in r.stdout
    r = certify("inspect", "digits_residual_maxmin")
    assert r.returncode == 0 and "maxmin" in r.stdout and "add" in r.stdout


def test_global_writes_a_valid_certificate(tmp_path):
    r = certify("global", "digits_relu_mlp", "--norm", "2", "--solver", "FIRST_ORDER", "--json", tmp_path / "g.json")
    assert r.returncode == 0, r.stderr
    c = load_certificate(tmp_path / "g.json")
    assert c.status == "certified" and c.result.scope == "global"
    assert c.result.lower <= c.result.upper <= c.result.by_method["product of norms"]
    assert c.model.sha256 and c.model.fingerprint


def test_steps_and_game(tmp_path):
    r = certify("steps", "digits_relu_cnn", "--limit", "64", "--json", tmp_path / "s.json")
    assert r.returncode == 0, r.stderr
    c = load_certificate(tmp_path / "s.json")
    assert c.result.radius > 0 and c.result.safe_lr_sgd > 0
    r = certify("game", "toy", "--json", tmp_path / "g.json")
    assert r.returncode == 0, r.stderr
    g = load_certificate(tmp_path / "g.json")
    assert abs(g.result.margin - 0.2929) < 1e-3 and g.status == "certified"


def test_refused_game_exits_1(tmp_path):
    (tmp_path / "games.py").write_text(
        "from nncertify.certify.games import QuadraticGame\n"
        "def unstable():\n    return QuadraticGame([[1.0, 3.0], [3.0, 1.0]], dims=[1, 1])\n")
    r = certify("game", f"{tmp_path / 'games.py'}:unstable")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "not certified" in r.stdout


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)).eval()
    torch.save(m.state_dict(), d / "w.pt")
    (d / "arch.py").write_text("from torch import nn\ndef make():\n    return nn.Sequential(nn.Linear(64, 16), "
                               "nn.ReLU(), nn.Linear(16, 10))\n")
    bad = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    with torch.no_grad():
        bad[0].weight[0, 0] = float("nan")
    torch.save(bad.state_dict(), d / "nan.pt")
    torch.onnx.export(nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16, 10)),
                      (torch.zeros(1, 64),), str(d / "pool.onnx"), dynamo=False)
    (d / "random.pt").write_bytes(os.urandom(4096))
    torch.save(m, d / "full.pt")
    np.save(d / "wrong_shape.npy", np.zeros((5, 10), np.float32))
    np.save(d / "nan.npy", np.full((5, 64), np.nan, np.float32))
    np.save(d / "empty.npy", np.zeros((0, 64), np.float32))
    return d


@pytest.mark.parametrize("args,words", [
    (["global", "missing.pt"], ["missing.pt", "no such file"]),
    (["global", "{d}/random.pt"], ["random.pt"]),
    (["global", "{d}/full.pt"], ["full.pt", "trust-pickle"]),
    (["global", "{d}/w.pt"], ["w.pt", "architecture"]),
    (["global", "{d}/nan.pt", "--arch", "{d}/arch.py:make"], ["NaN or Inf"]),
    (["global", "{d}/pool.onnx"], ["MaxPool"]),
    (["global", "digits_relu_mlp", "--norm", "7"], ["norm"]),
    (["global", "digits_relu_mlp", "--solver", "NONSENSE"], ["NONSENSE"]),
    (["lipschitz", "digits_relu_mlp", "--eps", "-1"], ["--eps", "positive"]),
    (["lipschitz", "digits_relu_mlp", "--eps", "0"], ["--eps"]),
    (["robustness", "digits_relu_mlp", "--eps", "0.1", "--data", "{d}/wrong_shape.npy"], ["wrong_shape.npy", "expects"]),
    (["robustness", "digits_relu_mlp", "--eps", "0.1", "--data", "{d}/nan.npy"], ["NaN"]),
    (["robustness", "digits_relu_mlp", "--eps", "0.1", "--data", "{d}/empty.npy"], ["no samples"]),
    (["steps", "digits_relu_mlp", "--data", "{d}/wrong_shape.npy"], ["expects"]),
    (["robustness", "digits_relu_mlp", "--eps", "0.1", "--norm", "3"], ["norm"]),
    (["report", "{d}/w.pt"], ["w.pt", "certificate"]),
    (["game", "nomodule_xyz:f"], ["cannot import"]),
    (["batch", "{d}/nothing.json"], ["no such file"]),
])
def test_bad_input_one_line_exit_2(files, args, words, capsys):
    r = certify_inproc(capsys, *[a.format(d=files) for a in args])
    assert_bad_input(r, *words)


@pytest.mark.parametrize("args,words", [
    (["global", "{d}/full.pt"], ["full.pt", "trust-pickle"]),
    (["robustness", "digits_relu_mlp", "--eps", "0.1", "--data", "{d}/nan.npy"], ["NaN"]),
])
def test_bad_input_one_line_exit_2_console_process(files, args, words):
    """The same through a real interpreter (what a user's shell runs)."""
    r = certify(*[a.format(d=files) for a in args])
    assert_bad_input(r, *words)


def test_unknown_option_is_a_usage_error():
    r = certify("global", "digits_relu_mlp", "--bogus")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "bogus" in r.stderr


def test_state_dict_with_arch_and_robustness(files, tmp_path):
    r = certify("robustness", files / "w.pt", "--arch", f"{files / 'arch.py'}:make", "--eps", "0.01", "--limit",
                "20", "--json", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    c = load_certificate(tmp_path / "r.json")
    assert c.result.verified + c.result.falsified + c.result.unknown == 20
    for s in c.result.samples:
        if s.status == "verified":
            assert s.margin_lower > 0 and s.certified_radius >= 0


def test_shipped_examples_run(tmp_path):
    from pathlib import Path
    ex = Path(__file__).resolve().parents[1] / "examples"
    r = certify("game", f"{ex / 'games.py'}:lq", "--json", tmp_path / "lq.json")
    assert r.returncode == 0, r.stderr
    assert load_certificate(tmp_path / "lq.json").result.players == 2
    r = certify("game", f"{ex / 'games.py'}:unstable")
    assert r.returncode == 1
    import json as _json
    from nncertify.certify.batch import expand_plan
    units = expand_plan(_json.loads((ex / "batch_plan.json").read_text()))
    assert len(units) == 2 * (2 * 2 + 1)


def test_report_from_batch_results_and_certificates(tmp_path):
    from nncertify.certify.records import make_certificate, LipschitzResult
    c = make_certificate(status="certified", method="x", result=LipschitzResult(scope="global", norm="2", upper=3.0,
                                                                                 by_method={"product of norms": 3.0}))
    c.save(tmp_path / "c.json")
    rec = {"id": "u1", "unit": {}, "status": "certified", "elapsed_s": 0.1, "certificate": json.loads(c.to_json())}
    (tmp_path / "b.jsonl").write_text(json.dumps(rec) + "\n")
    r = certify("report", tmp_path / "c.json", tmp_path / "b.jsonl", "--out", tmp_path / "rep")
    assert r.returncode == 0, r.stderr
    assert "3" in (tmp_path / "rep" / "report.md").read_text()
