"""nncertify.models: what a network is (the normalized description) and how it is loaded."""

if not __name__.startswith("nncertify."):  # the source folder imported as a top-level name
    raise ImportError(f"the models/ folder is the package nncertify.models: import it as nncertify.models "
                      f"(found as {__name__!r} via {__file__})")

from .errors import (DataLoadError, InvalidArgumentError, ModelLoadError, NNCertifyError, ShapeMismatchError,
                     UnsupportedOperationError, UntrustedPickleError)
from .graph import AFFINE_OPS, Network, Node, Stage, affine_matrix, chain_stages
from .layers import GroupSort, HouseholderActivation, MaxMin, Normalize, Residual
from .ops import ACTIVATIONS, OPS
from .trace import from_module
from .load import LoadedModel, check_equivalent, load, load_model
from . import zoo

__all__ = [
    "Network", "Node", "load", "load_model", "LoadedModel", "check_equivalent", "Stage", "affine_matrix", "chain_stages", "AFFINE_OPS", "OPS", "ACTIVATIONS", "from_module",
    "MaxMin", "GroupSort", "HouseholderActivation", "Normalize", "Residual",
    "NNCertifyError", "ModelLoadError", "UntrustedPickleError", "UnsupportedOperationError", "ShapeMismatchError",
    "InvalidArgumentError", "DataLoadError",
]
