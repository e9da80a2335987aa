"""The README's Python example runs as written (so the first thing a user copies never rots)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs():
    text = README.read_text()
    block = re.search(r"### From Python\n.*?```python\n(.*?)```", text, re.S).group(1)
    block = block.replace("bab_timeout=10", "bab_timeout=2")
    ns: dict = {}
    exec(compile(block, "README.md", "exec"), ns)
    assert ns["g"].certified and ns["L"].lower <= ns["L"].upper
    assert sum(ns["v"].counts().values()) == 100


def test_readme_solver_supports_table_matches_the_solver():
    """The `supports` answers shown in the README are the solver's (certify/solver_cli.py)."""
    from nncertify.certify.solver_cli import _capabilities

    text = README.read_text()
    table = re.search(r"The `supports` answers.*?\n\n(\|.*?)\n\n", text, re.S).group(1)
    shown = {}
    for line in table.splitlines()[2:]:
        cap, ans = [c.strip() for c in line.strip("|").split("|")]
        shown[cap.strip("`").lstrip("-")] = ans
    caps = _capabilities()
    assert set(shown) == set(caps)
    for cap, answer in caps.items():
        if cap == "onnx-operators":
            ops = [a.split()[0] for a in answer]
            assert shown[cap] == ", ".join(ops) + ", each `float32`"
            assert all(a.split()[1:] == ["float32"] for a in answer)
        else:
            assert re.findall(r"`([^`]*)`", shown[cap]) == answer, cap


def readme_commands() -> list[str]:
    """Every `certify ...` line of the README's bash blocks (comments cut off)."""
    text = README.read_text()
    cmds = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = line.split("#")[0].strip()
            if line.startswith("certify "):
                cmds.append(line)
    return cmds


# Smaller settings, only through flags the README line itself shows.
SMALLER = {"--limit 100": "--limit 20", "--limit 256": "--limit 64", "--bab-timeout 10": "--bab-timeout 2",
           "--time-limit 30": "--time-limit 10", "--time-limit 60": "--time-limit 10"}


def test_readme_commands_run_as_shown(tmp_path):
    """Each command of the README, in order, in a fresh folder (where `examples/` is the repository's):
    exit code 0, and the files the README says they write exist.  The batch example runs unchanged."""
    import os
    import shlex
    import subprocess
    import sys
    cmds = readme_commands()
    assert len(cmds) >= 11 and any(c.startswith("certify batch examples/batch_plan.json") for c in cmds)
    (tmp_path / "examples").symlink_to(README.parent / "examples")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    for cmd in cmds:
        for big, small in SMALLER.items():
            cmd = cmd.replace(big, small)
        args = shlex.split(cmd)[1:]
        r = subprocess.run([sys.executable, "-m", "nncertify", *args], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=600)
        assert r.returncode == 0, (cmd, r.stdout[-1500:], r.stderr[-1500:])
        assert "Traceback" not in r.stderr, cmd
    for f in ("cert.json", "reports/batch.jsonl", "reports/mine/report.html", "reports/mine/report.md"):
        assert (tmp_path / f).is_file(), f
