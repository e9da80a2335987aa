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
