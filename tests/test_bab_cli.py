"""`certify robustness --method bab`: verdicts in the certificate, how each sample was decided, the report."""

import os
import subprocess
import sys

from nncertify.certify.records import load_certificate
from nncertify.certify.report import write_report

ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}


def certify(*args):
    return subprocess.run([sys.executable, "-m", "nncertify", *map(str, args)], capture_output=True, text=True,
                          timeout=600, env=ENV)


def test_robustness_bab_certificate_and_report(tmp_path):
    r = certify("robustness", "digits_relu_mlp", "--eps", "0.05", "--method", "bab", "--timeout", "5", "--limit", "8",
                "--no-radius", "--json", tmp_path / "c.json")
    assert r.returncode == 0, r.stderr
    c = load_certificate(tmp_path / "c.json")
    assert c.method == "robustness/bab" and c.parameters["timeout_per_sample_s"] == 5
    res = c.result
    assert res.verified + res.falsified + res.unknown == 8
    for s in res.samples:
        assert s.decided_by in ("crown", "alpha-crown", "bab", "pgd", "bab-attack")
        if s.status == "verified":
            assert s.margin_lower is not None and s.margin_lower > 0
        if s.decided_by == "bab":
            assert s.time_s is not None and s.domains >= 1
        if s.status == "unknown":
            assert s.reason
    a = certify("robustness", "digits_relu_mlp", "--eps", "0.05", "--method", "alpha-crown", "--limit", "8",
                "--no-radius", "--json", tmp_path / "a.json")
    assert a.returncode == 0, a.stderr
    assert res.verified >= load_certificate(tmp_path / "a.json").result.verified  # never fewer than alpha-CROWN
    paths = write_report([c], tmp_path / "rep")
    md = paths["markdown"].read_text()
    assert "Complete verification (branch-and-bound)" in md and f"unknown {res.unknown}" in md
    html = paths["html"].read_text()
    assert "Complete verification (branch-and-bound)" in html


def test_robustness_bab_bad_options_exit_2():
    r = certify("robustness", "digits_relu_mlp", "--eps", "0.05", "--method", "bab", "--norm", "2", "--limit", "2")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "--norm inf" in r.stderr
    r = certify("robustness", "digits_relu_mlp", "--eps", "0.05", "--method", "bab", "--timeout", "-1", "--limit", "2")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "--timeout" in r.stderr
