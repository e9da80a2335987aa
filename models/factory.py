"""Resolve a user reference ``"package.module:name"`` or ``"path/to/file.py:name"`` to a callable.

Used wherever the user names code to run (a model architecture factory, a game factory).  Importing
user code runs it: this is only done for references the user passes explicitly.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Callable

from .errors import ModelLoadError, NNCertifyError


def import_callable(ref: str, what: str = "reference", error: type[NNCertifyError] = ModelLoadError) -> Callable:
    """The callable named by ``ref``; every failure raises ``error`` with one line naming ``ref``."""
    if not isinstance(ref, str) or ":" not in ref:
        raise error(f"{what} {ref!r}: expected 'package.module:name' or 'file.py:name'")
    mod_name, fn_name = ref.rsplit(":", 1)
    try:
        if mod_name.endswith(".py"):
            if not Path(mod_name).exists():
                raise error(f"{what} {ref!r}: no such file {mod_name}")
            spec = importlib.util.spec_from_file_location(Path(mod_name).stem, mod_name)
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
        else:
            mod = importlib.import_module(mod_name)
    except NNCertifyError:
        raise
    except Exception as exc:
        raise error(f"{what} {ref!r}: cannot import {mod_name} ({type(exc).__name__}: {exc})") from None
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        raise error(f"{what} {ref!r}: {mod_name} has no callable {fn_name!r}")
    return fn
