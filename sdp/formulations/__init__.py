"""SDP formulations (cvxpy problems), kept apart from solving (:mod:`sdp.solve`) and checking (:mod:`sdp.verify`).

Each builder returns a :class:`Built`: the cvxpy problem plus a function that reads the solver's
multipliers back as numpy arrays for :mod:`sdp.verify`.  The bound itself is never taken from here.
"""

from .sector import build_sector
from .nsr import build_nsr

__all__ = ["build_sector", "build_nsr"]
