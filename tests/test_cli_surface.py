"""The user surface of issue #20: headlines that say what was proven, exit codes with and without
--debug, one-line errors for bad plans / factories / shapes, --retries, progress only on a terminal,
start-up without torch."""

import json
import os
import select
import subprocess
import sys
import time

import pytest

from nncertify.certify.batch import expand_plan, read_done, run_batch
from nncertify.certify.records import (GameResult, LipschitzResult, RobustnessResult, SampleVerdict,
                                       make_certificate)
from nncertify.certify.verdict import exit_code, headline
from test_cli import assert_bad_input, certify_inproc

ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}


def _rob(verified, falsified, unknown, status="certified"):
    n = verified + falsified + unknown
    st = ["verified"] * verified + ["falsified"] * falsified + ["unknown"] * unknown
    return make_certificate(status=status, method="robustness/crown", result=RobustnessResult(
        norm="inf", eps=0.1, samples=[SampleVerdict(index=i, label=0, status=s) for i, s in enumerate(st)],
        verified=verified, falsified=falsified, unknown=unknown, verified_accuracy=verified / n))


# ------------------------------------------------------------------------------------------ verdicts
def test_exit_code_and_headline_follow_what_was_proven():
    none = _rob(0, 20, 0)
    assert exit_code(none) == 1
    h = headline(none)
    assert "verified 0/20" in h and "falsified 20" in h and "CERTIFIED" not in h.upper().replace("NOTHING", "")
    some = _rob(3, 16, 1)
    assert exit_code(some) == 0 and "verified 3/20" in headline(some) and "unknown 1" in headline(some)
    failed = make_certificate(status="failed", method="global/auto",
                              result=LipschitzResult(scope="global", norm="2", upper=None))
    assert exit_code(failed) == 1 and "no certified bound" in headline(failed)
    ok = make_certificate(status="certified", method="global/auto",
                          result=LipschitzResult(scope="global", norm="2", upper=3.5, lower=2.0))
    assert exit_code(ok) == 0 and "L ≤ 3.5 (certified)" in headline(ok) and "2 (estimate)" in headline(ok)
    refused = make_certificate(status="failed", method="SGN", result=GameResult(players=2, reason="gain >= 1"))
    assert exit_code(refused) == 1 and "not certified: gain >= 1" in headline(refused)
    est = make_certificate(status="estimate", method="SGN (estimate)", result=GameResult(players=2, margin=0.3))
    assert exit_code(est) == 0 and "(estimate)" in headline(est)


def test_nothing_verified_exits_1_with_and_without_debug(capsys):
    for extra in ([], ["--debug"]):
        r = certify_inproc(capsys, "robustness", "digits_relu_mlp", "--eps", "1e6", "--limit", "8", "--no-radius",
                           *extra)
        assert r.returncode == 1, (extra, r.stdout, r.stderr)
        assert "verified 0/8" in r.stdout and "falsified 8" in r.stdout and "CERTIFIED" not in r.stdout


def test_internal_error_is_4_with_and_without_debug(capsys, monkeypatch):
    import nncertify.certify.tasks as tasks

    def boom(*a, **k):
        raise RuntimeError("deliberate bug")

    monkeypatch.setattr(tasks, "task_global", boom)
    r = certify_inproc(capsys, "global", "digits_relu_mlp")
    assert r.returncode == 4 and "deliberate bug" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = certify_inproc(capsys, "global", "digits_relu_mlp", "--debug")
    assert r.returncode == 4 and "Traceback" in r.stderr and "deliberate bug" in r.stderr


def test_bad_input_is_2_with_debug_and_shows_the_traceback(capsys):
    r = certify_inproc(capsys, "--debug", "lipschitz", "digits_relu_mlp", "--eps", "-1")
    assert r.returncode == 2 and "Traceback" in r.stderr and "--eps" in r.stderr.strip().splitlines()[-1]
    r = certify_inproc(capsys, "global", "digits_relu_mlp", "--bogus", "--debug")
    assert r.returncode == 2 and "bogus" in r.stderr


def test_json_to_stdout(capsys):
    r = certify_inproc(capsys, "game", "toy", "--json", "-")
    assert r.returncode == 0
    assert json.loads(r.stdout)["result"]["kind"] == "game"


# ------------------------------------------------------------------------------------------ one-line errors
@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    import torch
    from torch import nn
    d = tmp_path_factory.mktemp("surface")
    torch.manual_seed(0)
    torch.save(nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)).state_dict(), d / "w.pt")
    (d / "arch.py").write_text("from torch import nn\ndef make():\n    return nn.Sequential(nn.Linear(64, 16), "
                               "nn.ReLU(), nn.Linear(16, 10))\n")
    bad = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)).eval()
    with torch.no_grad():
        bad[2].weight[1, 1] = float("nan")
    torch.export.save(torch.export.export(bad, (torch.zeros(2, 64),)), str(d / "nan.pt2"))
    (d / "games.py").write_text(
        "def raises():\n    raise ValueError('factory exploded')\n"
        "def number():\n    return 42\n")
    return d


@pytest.mark.parametrize("args,words", [
    (["inspect", "{d}/w.pt", "--arch", "{d}/arch.py:make", "--input-shape", "3,5"], ["(3, 5)", "input-shape"]),
    (["inspect", "{d}/w.pt", "--arch", "{d}/arch.py:make", "--input-shape", "1,x,3"], ["1,x,3"]),
    (["inspect", "{d}/nan.pt2"], ["nan.pt2", "2.weight", "NaN"]),
    (["game", "{d}/games.py:raises"], ["raises", "ValueError", "factory exploded"]),
    (["game", "{d}/games.py:number"], ["number", "int", "not a game"]),
    (["robustness", "digits_relu_mlp", "--eps", "0.1", "--limit", "0"], ["--limit"]),
    (["batch", "{d}/plan.json", "--retries", "-1"], ["--retries"]),
    (["frobnicate"], ["frobnicate"]),
])
def test_point_7_inputs_get_one_line(hostile, args, words, capsys):
    (hostile / "plan.json").write_text(json.dumps({"models": ["digits_relu_mlp"], "tasks": [{"task": "steps"}]}))
    r = certify_inproc(capsys, *[a.format(d=hostile) for a in args])
    assert_bad_input(r, *words)


def test_input_shape_parsing():
    from nncertify.certify.cli import parse_shape
    from nncertify.models.errors import InvalidArgumentError
    assert parse_shape("1,28,28") == parse_shape("1x28x28") == (1, 28, 28)
    for bad in ("1,x,3", "", "0,3", "-1", "64,,", "a"):
        with pytest.raises(InvalidArgumentError):
            parse_shape(bad)


GOOD_TASK = {"task": "robustness", "eps": 0.01}


@pytest.mark.parametrize("plan,where", [
    ({"models": ["digits_relu_mpl"], "tasks": [GOOD_TASK]}, "models[0]"),
    ({"models": ["digits_relu_mlp"], "tasks": [GOOD_TASK, {"task": "dance"}]}, "tasks[1].task"),
    ({"models": ["digits_relu_mlp"], "tasks": [{"task": "robustness", "epsilon": 0.1}]}, "tasks[0].epsilon"),
    ({"models": ["digits_relu_mlp"], "tasks": [{"task": "robustness", "eps": -0.1}]}, "tasks[0].eps"),
    ({"models": ["digits_relu_mlp"], "tasks": [{"task": "robustness", "eps": [0.1, "x"]}]}, "tasks[0].eps[1]"),
    ({"models": ["digits_relu_mlp"], "tasks": [{"task": "robustness"}]}, "tasks[0].eps"),
    ({"models": ["digits_relu_mlp"], "tasks": [{"task": "global", "solver": "PIRATE"}]}, "tasks[0].solver"),
    ({"models": ["digits_relu_mlp"], "tasks": [{"task": "global", "time_limit": 0}]}, "tasks[0].time_limit"),
    ({"models": ["digits_relu_mlp"], "tasks": [{"task": "lipschitz", "bab": "up"}]}, "tasks[0].bab"),
    ({"models": ["digits_relu_mlp"], "tasks": [GOOD_TASK], "samplez": 3}, "samplez"),
    ({"models": ["digits_relu_mlp"], "tasks": [GOOD_TASK], "timeout": -1}, "timeout"),
    ({"models": ["digits_relu_mlp"], "tasks": [GOOD_TASK], "data": "nowhere.npy"}, "nowhere.npy"),
])
def test_batch_plan_is_validated_before_any_unit(tmp_path, capsys, plan, where):
    p = tmp_path / "plan.json"
    p.write_text(json.dumps(plan))
    out = tmp_path / "out" / "r.jsonl"
    r = certify_inproc(capsys, "batch", p, "--out", out)
    assert_bad_input(r, where)
    assert not out.exists() and not out.parent.exists()  # nothing started


def test_batch_model_files_are_loaded_before_any_unit(hostile, tmp_path, capsys):
    p = tmp_path / "plan.json"
    p.write_text(json.dumps({"models": ["digits_relu_mlp", str(hostile / "nan.pt2")], "tasks": [GOOD_TASK]}))
    r = certify_inproc(capsys, "batch", p, "--out", tmp_path / "r.jsonl")
    assert_bad_input(r, "models[1]", "NaN")
    assert not (tmp_path / "r.jsonl").exists()


def test_retries_rerun_a_timed_out_unit_and_record_every_reason(tmp_path):
    units = expand_plan({"models": ["digits_relu_mlp"], "timeout": 0.5,  # 10^8 sampled gradients: minutes
                         "tasks": [{"task": "global", "method": "product", "lower_samples": 10 ** 8}]})
    counts = run_batch(units, tmp_path / "r.jsonl", workers=1, progress=False, retries=1)
    assert counts == {"timeout": 1, "proven": 0}
    rec = next(iter(read_done(tmp_path / "r.jsonl").values()))
    assert rec["attempts"] == 2 and len(rec["retried"]) == 1 and rec["retried"][0].startswith("timeout")
    assert "timed out" in rec["error"]


# ------------------------------------------------------------------------------------------ progress
def _run_tty(args, timeout=300):
    """Run ``args`` with stdin/stdout/stderr on a pseudo-terminal (120 columns); returns (rc, output)."""
    import fcntl
    import struct
    import termios
    m, s = os.openpty()
    fcntl.ioctl(s, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    p = subprocess.Popen(args, stdin=s, stdout=s, stderr=s, env=ENV, close_fds=True)
    os.close(s)
    out, t0 = b"", time.time()
    while time.time() - t0 < timeout:
        r, _, _ = select.select([m], [], [], 0.5)
        if r:
            try:
                chunk = os.read(m, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        elif p.poll() is not None:
            break
    p.wait(timeout=30)
    os.close(m)
    return p.returncode, out.decode(errors="replace")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pseudo-terminal test (Linux)")
def test_progress_on_a_terminal_only():
    cmd = [sys.executable, "-m", "nncertify", "robustness", "digits_relu_mlp", "--eps", "0.02", "--limit", "20"]
    rc, out = _run_tty(cmd)
    assert rc == 0 and "certified radii" in out and "sample" in out and "verified" in out
    rc, out = _run_tty(cmd + ["--quiet"])
    assert rc == 0 and "certified radii" not in out and "verified" in out
    r = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)  # not a terminal
    assert r.returncode == 0 and "certified radii" not in r.stderr + r.stdout
    rc, out = _run_tty([sys.executable, "-m", "nncertify", "game", "toy", "--json", "-"])
    assert rc == 0 and json.loads(out)["result"]["kind"] == "game"  # JSON mode: nothing but the JSON


def test_bab_progress_shows_the_anytime_gap():
    rc, out = _run_tty([sys.executable, "-m", "nncertify", "lipschitz", "digits_relu_mlp", "--eps", "0.05",
                        "--bab-timeout", "2"])
    assert rc == 0 and "branch-and-bound" in out and "gap" in out and "upper" in out


# ------------------------------------------------------------------------------------------ start-up
def _imported(args):
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "nncertify", *args], capture_output=True,
                       text=True, env=ENV, timeout=300)
    mods = {line.split("|")[-1].strip().split(".")[0] for line in r.stderr.splitlines()
            if line.startswith("import time:") and "|" in line}
    return r, mods


HEAVY = {"torch", "cvxpy", "clarabel", "scs", "matplotlib", "jinja2", "dask", "distributed", "scipy", "sklearn",
         "onnx"}


@pytest.mark.parametrize("args", [["--help"], ["zoo"], ["batch", "--help"]])
def test_start_up_imports_nothing_heavy(args):
    r, mods = _imported(args)
    assert r.returncode == 0, r.stderr[-2000:]
    assert not mods & HEAVY, sorted(mods & HEAVY)


def test_report_imports_no_torch_or_solvers(tmp_path):
    c = make_certificate(status="certified", method="global/auto",
                         result=LipschitzResult(scope="global", norm="2", upper=3.0,
                                                by_method={"product of norms": 3.0}))
    c.save(tmp_path / "c.json")
    r, mods = _imported(["report", str(tmp_path / "c.json"), "--out", str(tmp_path / "rep")])
    assert r.returncode == 0, r.stderr[-2000:]
    assert not mods & {"torch", "cvxpy", "clarabel", "scs", "dask", "distributed", "onnx"}
    assert {"matplotlib", "jinja2"} <= mods


def test_lazy_models_package_keeps_its_names():
    """``nncertify.models`` imports lazily (start-up without torch) but its names stay what they were:
    ``models.load`` is the loader function even after the submodule ``models/load.py`` was imported."""
    import nncertify.models.load  # noqa: F401  (the submodule)
    from nncertify import models
    assert callable(models.load) and models.load.__name__ == "load"
    assert models.load_model.__name__ == "load_model" and models.Network.__name__ == "Network"
    assert "digits_relu_mlp" in models.zoo.available()
