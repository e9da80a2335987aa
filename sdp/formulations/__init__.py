"""SDP formulations (cvxpy problems), kept apart from solving (:mod:`sdp.solve`) and checking (:mod:`sdp.verify`).

Each builder returns a :class:`Built`: the cvxpy problem plus a function that reads the solver's
multipliers back as numpy arrays for :mod:`sdp.verify`.  The bound itself is never taken from here.
"""

__all__ = ["build_sector", "build_nsr"]


def __getattr__(name):  # lazy (PEP 562): importing .common (first-order path) must not import cvxpy
    if name == "build_sector":
        from .sector import build_sector
        return build_sector
    if name == "build_nsr":
        from .nsr import build_nsr
        return build_nsr
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
