"""nncertify.sdp: global Lipschitz upper bounds by semidefinite programming (LipSDP family).

Formulations (:mod:`sdp.formulations`), solving (:mod:`sdp.solve`) and float64 verification
(:mod:`sdp.verify`) are kept apart; :func:`lipschitz_bound` glues them and returns an
:class:`SDPCertificate` whose ``certified_value`` is proven, never a raw solver value.
norm="inf" with solver="FIRST_ORDER" uses the exact l_inf -> l2-chain reduction of :mod:`sdp.linf`.
LipSDP-Network is not provided (unsound for ReLU).
"""

if not __name__.startswith("nncertify."):  # the source folder imported as a top-level name
    raise ImportError(f"the sdp/ folder is the package nncertify.sdp: import it as nncertify.sdp "
                      f"(found as {__name__!r} via {__file__})")

from .api import METHODS, lipschitz_bound, margin_lipschitz, sampled_lower_bound
from .baselines import certified_mp
from .implicit import implicit_lipschitz_bound
from .certificate import LipschitzEstimate, SDPCertificate
from .solve import mosek_licensed
from .structure import extract, lift

__all__ = ["lipschitz_bound", "implicit_lipschitz_bound", "margin_lipschitz", "sampled_lower_bound", "SDPCertificate", "LipschitzEstimate",
           "METHODS", "mosek_licensed", "extract", "lift", "certified_mp"]
