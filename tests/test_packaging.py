"""Packaging: one import root (``nncertify``), nothing else in site-packages, and an installed wheel that
works from anywhere — including from a user's project that has its own ``models.py``, ``relax.py`` and
``certify/`` package (the names the source folders carry)."""

from __future__ import annotations

import ast
import configparser
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import nncertify

ROOT = Path(__file__).resolve().parents[1]
SOURCE_PACKAGES = ("models", "relax", "sdp", "certify")
OLD_NAMES = set(SOURCE_PACKAGES)


def _setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return cfg


def _lines(value: str) -> list[str]:
    return [v.strip() for v in value.strip().splitlines() if v.strip()]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(extra)
    return env


# ---------------------------------------------------------------------------------- the declared layout
def test_every_package_folder_and_data_file_is_declared():
    cfg = _setup_cfg()
    declared = set(_lines(cfg["options"]["packages"]))
    mapping = dict(line.split("=") for line in _lines(cfg["options"]["package_dir"]))
    mapping = {k.strip(): v.strip() for k, v in mapping.items()}
    assert mapping == {"nncertify": "nncertify", **{f"nncertify.{p}": p for p in SOURCE_PACKAGES}}
    found = {"nncertify"}
    for top in SOURCE_PACKAGES:
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT).parts
            found.add(".".join(("nncertify", *rel)))
    assert declared == found, f"setup.cfg packages differ from the folders: {declared ^ found}"
    # every non-Python file inside a package folder is package data of the deepest package holding it
    patterns = {k: [p.strip() for p in v.split(",")] for k, v in cfg["options.package_data"].items()}
    pkg_dirs = {pkg: ROOT / mapping[".".join(pkg.split(".")[:2])] / Path(*pkg.split(".")[2:]) for pkg in declared}
    for top in SOURCE_PACKAGES:
        for f in (ROOT / top).rglob("*"):
            if f.is_dir() or f.suffix in (".py", ".pyc") or "__pycache__" in f.parts:
                continue
            pkg = max((p for p, d in pkg_dirs.items() if d in f.parents), key=lambda p: len(pkg_dirs[p].parts))
            rel = f.relative_to(pkg_dirs[pkg]).as_posix()
            assert any(fnmatch.fnmatch(rel, pat) for pat in patterns.get(pkg, [])), \
                f"{f.relative_to(ROOT)} is not declared as package data of {pkg} in setup.cfg"


def _imports_of(source: str, where: str) -> list[tuple[str, int]]:
    tree = ast.parse(source, filename=where)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.module, node.lineno))
    return out


def _python_sources():
    skip = {".venv", ".git", "build", "dist", "reports", "node_modules"}
    for f in sorted(ROOT.rglob("*.py")):
        if not skip.intersection(f.relative_to(ROOT).parts):
            yield str(f.relative_to(ROOT)), f.read_text()
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        yield str(nb.relative_to(ROOT)), "\n".join(l for l in code.splitlines() if not l.lstrip().startswith(("!", "%")))
    for block in re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S):
        yield "README.md", block


def test_nothing_imports_the_old_top_level_names():
    offenders = [f"{where}:{line}: import {mod}" for where, src in _python_sources()
                 for mod, line in _imports_of(src, where) if mod.split(".")[0] in OLD_NAMES]
    assert not offenders, "old top-level imports (use nncertify.*):\n" + "\n".join(offenders)


def test_source_folders_refuse_to_be_imported_as_top_level_names(tmp_path):
    r = subprocess.run([sys.executable, "-c", "import models"], cwd=ROOT, capture_output=True, text=True,
                       env=_env())
    assert r.returncode != 0 and "import it as nncertify.models" in r.stderr


def test_version_everywhere():
    from nncertify.certify import __version__ as cv
    cfg_version = _setup_cfg()["metadata"]["version"]
    assert cfg_version == "attr: nncertify.__version__" and cv == nncertify.__version__
    r = subprocess.run([sys.executable, "-m", "nncertify", "--version"], capture_output=True, text=True, env=_env())
    assert r.returncode == 0 and r.stdout.strip() == f"nncertify {nncertify.__version__}"


def test_lazy_root_import():
    r = subprocess.run([sys.executable, "-c", "import sys, nncertify; print(sorted(m for m in sys.modules "
                        "if m.startswith('nncertify.') or m == 'torch'))"], capture_output=True, text=True, env=_env())
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


# ---------------------------------------------------------------------------------- a user's project
_USER_FILES = {
    "models.py": "WHO = 'user models.py'\n",
    "relax.py": "WHO = 'user relax.py'\n",
    "sdp.py": "WHO = 'user sdp.py'\n",
    "certify/__init__.py": "WHO = 'user certify package'\n",
}

_USER_SCRIPT = """
import models, relax, sdp, certify                     # the user's own modules
import torch
import nncertify
from nncertify import models as nm, relax as nr
from nncertify.relax.lipschitz import local_lipschitz
assert (models.WHO, relax.WHO, sdp.WHO, certify.WHO) == ('user models.py', 'user relax.py', 'user sdp.py',
                                                         'user certify package')
lm = nm.zoo.load_zoo("digits_relu_mlp")
x, y = nm.zoo.digits("test")
b = nr.compute_bounds(lm.network, nr.Ball(x[:2], eps=0.01, clip=(0.0, 1.0)), method="crown")
assert (b.lower <= b.upper).all()
L = local_lipschitz(lm.network, nr.Ball(x[:1].double(), 0.01), norm="inf")
assert 0 < L.lower <= L.upper
g = nncertify.sdp.lipschitz_bound(lm.network, norm=2, solver="FIRST_ORDER")
assert g.certified_value > 0
print("OK", nncertify.__file__)
"""


def _user_project(tmp_path: Path) -> Path:
    proj = tmp_path / "userproj"
    for name, text in _USER_FILES.items():
        (proj / name).parent.mkdir(parents=True, exist_ok=True)
        (proj / name).write_text(text)
    (proj / "train.py").write_text(_USER_SCRIPT)
    return proj


@pytest.mark.slow
def test_api_and_cli_from_a_project_with_its_own_models_relax_certify(tmp_path):
    proj = _user_project(tmp_path)
    # the user's folder first on the path, as in `python train.py` there (and for the console script)
    env = _env(PYTHONPATH=str(proj))
    r = subprocess.run([sys.executable, "train.py"], cwd=proj, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and r.stdout.startswith("OK"), r.stdout + r.stderr
    script = Path(sys.executable).with_name("certify")
    commands = [[sys.executable, "-m", "nncertify"], [str(script)] if script.exists() else None]
    for cmd in filter(None, commands):
        z = subprocess.run([*cmd, "zoo"], cwd=proj, capture_output=True, text=True, env=env, timeout=300)
        assert z.returncode == 0 and "digits_relu_mlp" in z.stdout, z.stdout + z.stderr
    r = subprocess.run([sys.executable, "-m", "nncertify", "lipschitz", "digits_relu_mlp", "--eps", "0.01"],
                       cwd=proj, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and "(certified" in r.stdout, r.stdout + r.stderr


# ---------------------------------------------------------------------------------- the built wheel
def _copy_source(dst: Path) -> Path:
    for name in ("nncertify", *SOURCE_PACKAGES):
        shutil.copytree(ROOT / name, dst / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dst / name)
    return dst


@pytest.mark.slow
def test_built_wheel_installs_and_runs_the_demo_from_anywhere(tmp_path):
    """``python -m build`` → a wheel with one top-level name → installed (not editable) into a fresh
    virtualenv → ``certify demo`` from an unrelated folder that holds a ``models.py`` of its own.

    The fresh venv gets the wheel by ``pip install --no-deps``; its dependencies (torch, cvxpy, ...) are
    those of the test environment, made visible by a plain path line (not this checkout: the editable
    install's finder is a ``.pth`` hook that a path line does not run), so the test needs no network."""
    src = _copy_source(tmp_path / "src")
    r = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path / "dist")],
                       cwd=src, capture_output=True, text=True, timeout=600, env=_env())
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("nncertify-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"nncertify", f"nncertify-{nncertify.__version__}.dist-info"}, tops
    for needed in ("nncertify/models/zoo/digits_relu_mlp.json", "nncertify/models/zoo/digits_relu_mlp.safetensors",
                   "nncertify/certify/templates/report.html.j2", "nncertify/certify/templates/report.md.j2",
                   "nncertify/certify/schemas/certificate.schema.json", "nncertify/__main__.py"):
        assert needed in names, needed

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    vpy = venv / "bin" / "python"
    vsite = Path(subprocess.run([str(vpy), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                capture_output=True, text=True, check=True).stdout.strip())
    (vsite / "_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    r = subprocess.run([str(vpy), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
                       capture_output=True, text=True, timeout=300, env=_env())
    assert r.returncode == 0, r.stdout + r.stderr

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "models.py").write_text("raise ImportError('the user models.py must not be imported')\n")
    where = subprocess.run([str(vpy), "-c", "import nncertify, nncertify.models; print(nncertify.models.__file__)"],
                           cwd=elsewhere, capture_output=True, text=True, env=_env())
    assert where.returncode == 0 and Path(where.stdout.strip()).is_relative_to(vsite), where.stdout + where.stderr
    version = subprocess.run([str(venv / "bin" / "certify"), "--version"], cwd=elsewhere, capture_output=True,
                             text=True, env=_env())
    assert version.stdout.strip() == f"nncertify {nncertify.__version__}"
    demo = subprocess.run([str(venv / "bin" / "certify"), "demo", "--out", "out", "--samples", "10"], cwd=elsewhere,
                          capture_output=True, text=True, timeout=900, env=_env(PYTHONPATH=str(elsewhere)))
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert (elsewhere / "out" / "report.html").stat().st_size > 0 and (elsewhere / "out" / "report.md").exists()
