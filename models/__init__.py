"""nncertify.models: what a network is (the normalized description) and how it is loaded.

The names below are imported lazily (on first use), so that ``nncertify.models.errors`` and
``nncertify.models.zoo.available()`` cost no torch import (the CLI's ``--help`` and ``zoo``).
"""

if not __name__.startswith("nncertify."):  # the source folder imported as a top-level name
    raise ImportError(f"the models/ folder is the package nncertify.models: import it as nncertify.models "
                      f"(found as {__name__!r} via {__file__})")

import importlib as _importlib
import sys as _sys
import types as _types

from .errors import (DataLoadError, InvalidArgumentError, ModelLoadError, NNCertifyError, ShapeMismatchError,
                     UnsupportedOperationError, UntrustedPickleError)

_LAZY = {
    "Network": "graph", "Node": "graph", "Stage": "graph", "AFFINE_OPS": "graph", "affine_matrix": "graph",
    "chain_stages": "graph",
    "GroupSort": "layers", "HouseholderActivation": "layers", "MaxMin": "layers", "Normalize": "layers",
    "Residual": "layers",
    "ACTIVATIONS": "ops", "OPS": "ops",
    "from_module": "trace",
    "LoadedModel": "load", "check_equivalent": "load", "load": "load", "load_model": "load",
}

__all__ = [
    "Network", "Node", "load", "load_model", "LoadedModel", "check_equivalent", "Stage", "affine_matrix", "chain_stages", "AFFINE_OPS", "OPS", "ACTIVATIONS", "from_module",
    "MaxMin", "GroupSort", "HouseholderActivation", "Normalize", "Residual",
    "NNCertifyError", "ModelLoadError", "UntrustedPickleError", "UnsupportedOperationError", "ShapeMismatchError",
    "InvalidArgumentError", "DataLoadError",
]


class _Package(_types.ModuleType):
    """``nncertify.models.load`` is the *function* (as it always was), although ``load.py`` is also a
    submodule: the import system's ``setattr(package, "load", <submodule>)`` is ignored."""

    def __setattr__(self, name, value):
        if name == "load" and isinstance(value, _types.ModuleType):
            return
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(_importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    try:  # a submodule: nncertify.models.zoo, .trace, ...
        return _importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(__all__) | set(globals()))
