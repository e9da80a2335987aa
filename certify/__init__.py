"""nncertify.certify: certificates, controllers, reports and the ``certify`` command line.

This is the user-facing layer; it builds on ``models`` (networks and loaders), ``relax`` (bound
propagation, local Lipschitz constants) and ``sdp`` (LipSDP).  Lower layers never import it.
"""

__version__ = "0.1.0"
