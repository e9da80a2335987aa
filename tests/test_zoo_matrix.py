"""Issue #19: every zoo model through every command, with small settings.

Each run must end with exit 0, or with exit 1 / 2 and its reason on one line -- never exit 4 (an
internal error) and never a traceback.  Runs go through ``certify.cli.main`` in this process (the
console script's entry point) to keep the matrix fast.  ``global`` runs with its DEFAULT method
(``auto``: the SDP form and solver chosen by problem size, under the time limit) as well as
``--method product``; small settings only through flags (``--time-limit``, ``--limit``, ``--samples``).
``demo`` (a global SDP, certified radii, local Lipschitz, a training run, a report) runs on every model.
"""

import pytest

from nncertify.models import zoo

from test_cli import certify_inproc

MODELS = zoo.available()

COMMANDS = {
    "inspect": [],
    "lipschitz": ["--eps", "0.02", "--time-limit", "2"],
    "lipschitz-l2-clip": ["--eps", "0.05", "--norm", "2", "--clip", "0,1", "--time-limit", "2"],
    "global": ["--time-limit", "4"],                       # the default method (auto)
    "global-inf": ["--norm", "inf", "--time-limit", "4"],  # the default method, one SDP per output
    "global-product": ["--method", "product", "--norm", "inf"],
    "robustness": ["--eps", "0.02", "--limit", "3", "--no-radius"],
    "steps": ["--limit", "8"],
}


def check_outcome(r, what):
    text = r.stdout + r.stderr
    assert "Traceback" not in text, (what, text)
    assert r.returncode in (0, 1, 2), (what, r.returncode, text)
    if r.returncode == 2:  # bad input / refusal: exactly one line on stderr, with the reason
        lines = [l for l in r.stderr.splitlines() if l.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and len(lines[0]) > len("error: ") + 10, (what, r.stderr)
    elif r.returncode == 1:  # ran, nothing certified: the headline says FAILED and a note says why
        assert "FAILED" in r.stdout and "note:" in r.stdout, (what, r.stdout)
    else:
        assert r.stdout.strip(), what


def test_zoo_lists_every_model(capsys):
    r = certify_inproc(capsys, "zoo")
    assert r.returncode == 0
    listed = [l.split()[0] for l in r.stdout.splitlines() if l.strip()]
    assert listed == MODELS and len(MODELS) >= 6


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("model", MODELS)
def test_every_zoo_model_through_every_command(model, command, capsys):
    name = command.split("-")[0]
    r = certify_inproc(capsys, name, model, *COMMANDS[command])
    check_outcome(r, f"certify {name} {model} {' '.join(COMMANDS[command])}")
    # every zoo model is supported by every one of these commands: all of them must certify
    assert r.returncode == 0, (model, command, r.stdout, r.stderr)
    if name in ("lipschitz", "global"):
        assert "(certified" in r.stdout and "L ≤" in r.stdout, r.stdout


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_demo_on_every_zoo_model(model, tmp_path, capsys):
    r = certify_inproc(capsys, "demo", "--model", model, "--samples", "1", "--time-limit", "2", "--out", tmp_path)
    check_outcome(r, f"demo {model}")
    assert r.returncode == 0
    assert (tmp_path / "report.html").is_file() and (tmp_path / "report.md").is_file()
    assert len(list((tmp_path / "certificates").glob("*.json"))) == 8
    assert "local Lipschitz" in r.stdout and "global Lipschitz" in r.stdout


def test_demo_bad_time_limit_is_one_line(tmp_path, capsys):
    r = certify_inproc(capsys, "demo", "--model", "digits_relu_cnn", "--time-limit", "-1", "--out", tmp_path)
    assert r.returncode == 2
    check_outcome(r, "demo --time-limit -1")
