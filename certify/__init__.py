"""nncertify.certify: certificates, controllers, reports and the ``certify`` command line.

This is the user-facing layer; it builds on ``models`` (networks and loaders), ``relax`` (bound
propagation, local Lipschitz constants) and ``sdp`` (LipSDP).  Lower layers never import it.
"""

if not __name__.startswith("nncertify."):  # the source folder imported as a top-level name
    raise ImportError(f"the certify/ folder is the package nncertify.certify: import it as nncertify.certify "
                      f"(found as {__name__!r} via {__file__})")

from .. import __version__  # one version, kept in nncertify/__init__.py
