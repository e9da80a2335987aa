"""The README's Python example runs as written (so the first thing a user copies never rots)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs():
    text = README.read_text()
    block = re.search(r"### From Python\s+```python\n(.*?)```", text, re.S).group(1)
    block = block.replace("bab_timeout=10", "bab_timeout=2")
    ns: dict = {}
    exec(compile(block, "README.md", "exec"), ns)
    assert ns["g"].certified and ns["L"].lower <= ns["L"].upper
    assert sum(ns["v"].counts().values()) == 100
