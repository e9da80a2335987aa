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

# names imported lazily (PEP 562), so that a light submodule (``sdp.budget``, ``sdp.certificate``) can be
# imported without torch / cvxpy: the CLI starts the solver's fork server before it loads anything heavy
_LAZY = {"METHODS": "api", "lipschitz_bound": "api", "margin_lipschitz": "api", "sampled_lower_bound": "api",
         "certified_mp": "baselines", "implicit_lipschitz_bound": "implicit", "LipschitzEstimate": "certificate",
         "SDPCertificate": "certificate", "mosek_licensed": "solve", "extract": "structure", "lift": "structure"}

__all__ = ["lipschitz_bound", "implicit_lipschitz_bound", "margin_lipschitz", "sampled_lower_bound", "SDPCertificate", "LipschitzEstimate",
           "METHODS", "mosek_licensed", "extract", "lift", "certified_mp"]


def __getattr__(name):
    if name in _LAZY:
        import importlib
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
