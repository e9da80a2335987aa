"""nncertify: certify neural networks.

One import root for the whole toolkit::

    import nncertify
    from nncertify import models, relax, sdp, certify
    lm = nncertify.models.load_model("net.pt2")

Subpackages (lower layers never import higher ones):

- :mod:`nncertify.models`  what a network is (the normalized description) and how it is loaded;
- :mod:`nncertify.relax`   sound bound propagation (IBP, CROWN, alpha-CROWN) and local Lipschitz
  constants (:mod:`nncertify.relax.lipschitz`);
- :mod:`nncertify.sdp`     global Lipschitz bounds by semidefinite programming (LipSDP family);
- :mod:`nncertify.certify` certificates, the safe-step controller, reports, batch runs and the CLI.

In the source tree the subpackages live in the top-level folders ``models/``, ``relax/``, ``sdp/``
and ``certify/``; the build maps them under ``nncertify`` (``package-dir`` in ``pyproject.toml``),
so an installed copy puts exactly one name, ``nncertify``, into site-packages.
Subpackages are imported lazily: ``import nncertify`` costs nothing until one is used.
"""

from __future__ import annotations

import importlib
import os as _os

__version__ = "0.2.0"
__all__ = ["models", "relax", "sdp", "certify", "__version__"]

# Running from a source checkout without an install (``PYTHONPATH=.``): the subpackages sit beside
# this folder.  Only a real checkout is added (its pyproject names this package), never an arbitrary
# parent such as site-packages.
_here = _os.path.dirname(_os.path.abspath(__file__))
_root = _os.path.dirname(_here)
if (not _os.path.isdir(_os.path.join(_here, "models"))
        and _os.path.isfile(_os.path.join(_root, "models", "graph.py"))
        and _os.path.isfile(_os.path.join(_root, "pyproject.toml"))):
    __path__.append(_root)  # type: ignore[name-defined]  # noqa: F821


def __getattr__(name: str):
    if name in ("models", "relax", "sdp", "certify"):
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'nncertify' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
