"""Layout of ``relax/lipschitz`` by role (issue #15), checked on the source by parsing every import (ast).

Places: ``__init__``, ``api`` (public entry points), ``result`` (result types) and ``norms`` (input norms and
their duals, used by every role) at the top; every other module in one of the role folders ``bounds/``,
``lower_bounds/``, ``search/`` (each with an ``__init__.py`` whose docstring names its modules).

Import direction (lazy imports inside functions included), by rank:

    result, norms (0)  <  bounds (1)  <  lower_bounds (2)  <  search (3)  <  api (4)  <  package __init__ (5)

a module imports only modules of its own or a lower rank: bounds and lower_bounds never import search or
api, search imports bounds, lower_bounds and ``relax.bab`` but not api.  No import cycle between modules
of the package, and nothing under ``relax/`` imports ``certify``.  The checker itself is tested on a copy of
the folder with violations planted, so a checker that finds nothing cannot pass.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RELAX = ROOT / "relax"
LIP = RELAX / "lipschitz"
PKG = "nncertify.relax.lipschitz"
TOP = {"__init__": 5, "api": 4, "result": 0, "norms": 0}
ROLES = {"bounds": 1, "lower_bounds": 2, "search": 3}


def _module_name(path: Path, base: Path, base_name: str) -> tuple[str, bool]:
    """Dotted name of the file ``path`` under the package folder ``base`` (named ``base_name``); is it a package."""
    parts = list(path.relative_to(base).with_suffix("").parts)
    is_pkg = parts[-1] == "__init__"
    if is_pkg:
        parts = parts[:-1]
    return ".".join([base_name] + parts), is_pkg


def _is_module(lip: Path, dotted: str) -> bool:
    """Is ``dotted`` (inside PKG) a module or package of the folder ``lip``?"""
    rest = dotted[len(PKG):].lstrip(".").split(".") if dotted != PKG else []
    p = lip.joinpath(*rest) if rest else lip
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def _imports(path: Path, modname: str, is_pkg: bool, lip: Path) -> list[tuple[str, int]]:
    """Absolute names of the modules ``path`` imports (every import statement, also inside functions)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module
            else:
                pkg = modname.split(".") if is_pkg else modname.split(".")[:-1]
                if node.level - 1 >= len(pkg):
                    raise AssertionError(f"{path}:{node.lineno}: relative import beyond the top package")
                pkg = pkg[:len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([node.module] if node.module else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                inside = sub == PKG or sub.startswith(PKG + ".")
                if inside and _is_module(lip, sub):
                    out.append((sub, node.lineno))
                elif not inside and sub.startswith(("nncertify.certify", "nncertify.relax.lipschitz")):
                    out.append((sub, node.lineno))  # e.g. ``from nncertify import certify``
                else:
                    out.append((base, node.lineno))
    return out


def _rank(dotted: str) -> tuple[str, int] | None:
    """(place, rank) of a module of PKG; None for a module outside the agreed places."""
    if dotted == PKG:
        return "__init__", TOP["__init__"]
    first = dotted[len(PKG) + 1:].split(".")[0]
    if first in ROLES:
        return first, ROLES[first]
    if first in TOP and "." not in dotted[len(PKG) + 1:]:
        return first, TOP[first]
    return None


def layout_violations(lip: Path) -> list[str]:
    """Every violation of the layout rules in the folder ``lip`` (a copy of relax/lipschitz or the real one)."""
    bad = []
    modules = {}
    for f in sorted(lip.rglob("*.py")):
        if "__pycache__" in f.parts:
            continue
        rel = f.relative_to(lip)
        name, is_pkg = _module_name(f, lip, PKG)
        placed = (len(rel.parts) == 1 and rel.stem in TOP) or (len(rel.parts) == 2 and rel.parts[0] in ROLES)
        if not placed:
            bad.append(f"{rel}: outside the agreed places (top: {sorted(TOP)}; folders: {sorted(ROLES)})")
            continue
        modules[name] = (f, is_pkg)
    for d in sorted(p for p in lip.iterdir() if p.is_dir() and p.name != "__pycache__"):
        if d.name not in ROLES:
            bad.append(f"{d.name}/: not a role folder ({sorted(ROLES)})")
        elif not (d / "__init__.py").is_file():
            bad.append(f"{d.name}/: no __init__.py")
        else:
            doc = ast.get_docstring(ast.parse((d / "__init__.py").read_text())) or ""
            for m in sorted(p.stem for p in d.glob("*.py") if p.stem != "__init__"):
                if f"``{m}``" not in doc:
                    bad.append(f"{d.name}/__init__.py: the docstring does not list the module ``{m}``")
    graph = {}
    for name, (f, is_pkg) in modules.items():
        place, rank = _rank(name)
        graph[name] = set()
        for target, line in _imports(f, name, is_pkg, lip):
            where = f"{f.relative_to(lip)}:{line}"
            if target.startswith("nncertify.certify") or target == "nncertify.certify":
                bad.append(f"{where}: imports {target} (relax/ never imports certify/)")
            if target != PKG and not target.startswith(PKG + "."):
                continue
            t = _rank(target)
            if t is None:
                bad.append(f"{where}: imports {target}, outside the agreed places")
                continue
            if t[1] > rank:
                bad.append(f"{where}: {place} (rank {rank}) imports {target} ({t[0]}, rank {t[1]})")
            if target in modules and target != name:
                graph[name].add(target)
    bad += [f"import cycle: {' -> '.join(c)}" for c in _cycles(graph)]
    return bad


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp) + [sorted(comp)[0]])

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_relax_lipschitz_follows_the_layout():
    bad = layout_violations(LIP)
    assert not bad, "relax/lipschitz layout violations:\n" + "\n".join(bad)


def test_nothing_under_relax_imports_certify():
    bad = []
    for f in sorted(RELAX.rglob("*.py")):
        name, is_pkg = _module_name(f, RELAX, "nncertify.relax")
        bad += [f"{f.relative_to(ROOT)}:{line}: imports {t}" for t, line in _imports(f, name, is_pkg, LIP)
                if t.split(".")[:2] == ["nncertify", "certify"]]
    assert not bad, "relax/ imports certify/:\n" + "\n".join(bad)


def test_package_docstring_names_every_role_folder():
    import nncertify.relax.lipschitz as lip
    for role in ROLES:
        assert f"{role}/" in lip.__doc__, f"relax/lipschitz/__init__.py docstring does not describe {role}/"


@pytest.mark.parametrize("plant, expect", [
    (lambda d: (d / "bounds" / "chain.py").open("a").write("\nfrom ..search.bab import run_bab\n"),
     "bounds (rank 1) imports nncertify.relax.lipschitz.search.bab"),
    (lambda d: (d / "lower_bounds" / "attack.py").open("a").write("\ndef f():\n    from .. import api\n"),
     "lower_bounds (rank 2) imports nncertify.relax.lipschitz.api"),
    (lambda d: (d / "search" / "bab.py").open("a").write("\ndef f():\n    from ..api import local_lipschitz\n"),
     "search (rank 3) imports nncertify.relax.lipschitz.api"),
    (lambda d: (d / "norms.py").open("a").write("\nfrom .bounds.chain import DenseChain\n"),
     "norms (rank 0) imports nncertify.relax.lipschitz.bounds.chain"),
    (lambda d: (d / "bounds" / "gates.py").open("a").write("\nfrom ....certify import tasks\n"),
     "imports nncertify.certify.tasks"),
    (lambda d: (d / "stray.py").write_text("x = 1\n"), "stray.py: outside the agreed places"),
    (lambda d: (d / "misc").mkdir() or (d / "misc" / "__init__.py").write_text(""), "misc/: not a role folder"),
    (lambda d: (d / "search" / "newsearch.py").write_text("x = 1\n"), "does not list the module ``newsearch``"),
    (lambda d: (d / "bounds" / "gates.py").open("a").write("\ndef f():\n    from .lifted import lifted_chain\n"),
     "import cycle: "),
])
def test_the_checker_catches_planted_violations(tmp_path, plant, expect):
    copy = tmp_path / "lipschitz"
    shutil.copytree(LIP, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert layout_violations(copy) == []
    plant(copy)
    bad = layout_violations(copy)
    assert any(expect in b for b in bad), bad


def _stale_reference(parts: list[str]) -> bool:
    """Is ``relax.lipschitz.<parts>`` neither a module path (plus attributes) nor a public name of the package?"""
    import importlib
    d = LIP
    for i, p in enumerate(parts):
        if (d / p / "__init__.py").is_file():
            d = d / p
        elif (d / f"{p}.py").is_file():
            return False
        else:
            pkg = importlib.import_module(".".join([PKG] + parts[:i]))
            return not hasattr(pkg, p)
    return False


def test_references_to_relax_lipschitz_modules_resolve():
    """Every ``relax.lipschitz.X`` / ``relax/lipschitz/X.py`` written in the code, tests, benchmarks, notebooks and
    README names a module that exists (catches imports, monkeypatch strings and prose left at an old place);
    bench/results is skipped (measured outputs, rewritten by the benchmarks)."""
    import re
    import subprocess
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not files:
        pytest.skip("not a git checkout: no file list")
    dotted = re.compile(r"relax\.lipschitz((?:\.\w+)+)")
    slashed = re.compile(r"relax/lipschitz/([\w/]+)\.py\b")
    bad = []
    for f in files:
        if (not f.endswith((".py", ".md", ".ipynb", ".cfg", ".toml")) or f.startswith("bench/results/")
                or f == "tests/test_lipschitz_layout.py"):
            continue
        text = (ROOT / f).read_text(errors="replace")
        for m in dotted.finditer(text):
            if _stale_reference(m.group(1).lstrip(".").split(".")):
                bad.append(f"{f}: relax.lipschitz{m.group(1)}")
        for m in slashed.finditer(text):
            if not (LIP / f"{m.group(1)}.py").is_file():
                bad.append(f"{f}: relax/lipschitz/{m.group(1)}.py")
    assert not bad, "references to relax/lipschitz modules that do not exist:\n" + "\n".join(sorted(set(bad)))
