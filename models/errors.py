"""Error types shared by every layer of nncertify.

Every error the toolkit raises on bad input derives from :class:`NNCertifyError` and carries a
one-line message that names the file, layer (module path) or field at fault.  The CLI turns these
into a single line on stderr and a non-zero exit code; it never shows a traceback for them.
"""

from __future__ import annotations


class NNCertifyError(Exception):
    """Base class: a problem with the user's input or request, explained in one line."""

    exit_code = 2


class ModelLoadError(NNCertifyError):
    """A model file could not be read (missing, truncated, wrong format, bad weights)."""


class UntrustedPickleError(ModelLoadError):
    """A file holds a pickled Python object and the caller did not opt in to unpickling it."""


class UnsupportedOperationError(NNCertifyError):
    """A network contains an operation outside the normalized description."""


class ShapeMismatchError(NNCertifyError):
    """Weights, inputs or data have shapes that do not fit together."""


class InvalidArgumentError(NNCertifyError):
    """An argument (epsilon, norm, solver, ...) is out of its allowed range."""


class DataLoadError(NNCertifyError):
    """A data file could not be read or has the wrong shape, dtype or values."""


class SpecificationError(NNCertifyError):
    """A property file (VNN-LIB) could not be read: the message names the file and the line."""
