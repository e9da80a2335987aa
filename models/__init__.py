"""nncertify.models: what a network is (the normalized description) and how it is loaded.

The names below are imported lazily (on first use), so that ``nncertify.models.errors`` and
``nncertify.models.zoo.available()`` cost no torch import (the CLI's ``--help`` and ``zoo``).
"""

if not __name__.startswith("nncertify."):  # the source folder imported as a top-level name
    raise ImportError(f"the models/ folder is the package nncertify.models: import it as nncertify.models "
                      f"(found as {__name__!r} via {__file__})")

import importlib as _importlib

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
