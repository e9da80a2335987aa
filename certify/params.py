"""Parameter checks shared by the CLI, the tasks and batch plans (torch-free, so that they run before
anything heavy is imported and before any batch unit starts).

Every check raises :class:`InvalidArgumentError` with one line naming the parameter (``name``: the
CLI option, or ``tasks[i].field`` in a batch plan) and the bad value; it returns the normalized value.
"""

from __future__ import annotations

import math

from ..models.errors import InvalidArgumentError

NORMS = {"inf": "inf", "linf": "inf", "2": "2", "l2": "2", "1": "1", "l1": "1"}
ROBUSTNESS_METHODS = ("ibp", "crown", "alpha-crown", "bab")
GLOBAL_METHODS = ("auto", "lipsdp-neuron", "lipsdp-layer", "lifted", "nsr", "product")
SOLVERS = ("auto", "CLARABEL", "SCS", "MOSEK", "CVXOPT", "FIRST_ORDER")
BAB_KINDS = ("auto", "activation", "input")
# `certify global` (and global batch units / the demo) without --time-limit: seconds for the whole run.  The
# SDP of the zoo CNN takes about a minute to converge on a 2-core CPU; in 20 s the first-order solver's best
# iterate gives a verified bound between the converged value and the product of norms (README, "global").
DEFAULT_GLOBAL_TIME_LIMIT = 20.0


def parse_norm(norm, allowed=("inf", "2", "1"), name: str = "norm") -> str:
    key = str(norm).lower().replace("ℓ", "l")
    if key in ("infinity", "math.inf", "float('inf')"):
        key = "inf"
    if key not in NORMS or NORMS[key] not in allowed:
        raise InvalidArgumentError(f"{name} {norm!r}: use one of {', '.join(allowed)}")
    return NORMS[key]


def _as_float(v, name: str, what: str = "a number") -> float:
    """``v`` as a float (booleans refused), else one line naming the parameter."""
    if isinstance(v, bool):
        raise InvalidArgumentError(f"{name} must be {what}, got {v!r}")
    try:
        return float(v)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"{name} must be {what}, got {v!r}") from None


def check_eps(eps, name: str = "--eps") -> float:
    eps = _as_float(eps, name)
    if not math.isfinite(eps) or eps <= 0:
        raise InvalidArgumentError(f"{name} must be a positive finite number, got {eps}")
    return eps


def check_timeout(t, name: str, allow_zero: bool = False) -> float:
    """Seconds: a finite number > 0 (or >= 0 with ``allow_zero``)."""
    t = _as_float(t, name, "a number of seconds")
    if not math.isfinite(t) or t < 0 or (t == 0 and not allow_zero):
        raise InvalidArgumentError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} finite "
                                   f"number of seconds, got {t}")
    return t


def check_time_limit(time_limit, name: str = "--time-limit") -> float | None:
    """``None`` (no limit) or a positive finite number of seconds."""
    return None if time_limit is None else check_timeout(time_limit, name)


def check_int(v, name: str, lo: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != int(v) or int(v) < lo:
        raise InvalidArgumentError(f"{name} must be an integer >= {lo}, got {v!r}")
    return int(v)


def check_choice(v, choices, name: str, upper: bool = False) -> str:
    key = str(v).upper() if upper else str(v)
    allowed = [c.upper() if upper else c for c in choices]
    if not isinstance(v, str) or key not in allowed:
        raise InvalidArgumentError(f"{name} {v!r}: use one of {', '.join(choices)}")
    return key


def check_method(method, name: str = "--method") -> str:
    return check_choice(method, ROBUSTNESS_METHODS, name)


def check_refine(refine, name: str = "--refine") -> str:
    """The refinement of intermediate bounds before activation-split BaB (relax/bab/refine.py)."""
    from ..relax.bab.refine import REFINE_MODES
    return check_choice(refine, REFINE_MODES, name)


def make_folder(path, name: str):
    """Create the output folder ``path`` (and its parents) for option ``name``; a path that cannot be
    created is one line naming the option and the path, not an OSError."""
    from pathlib import Path
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidArgumentError(f"{name} {path}: cannot create the folder ({exc.strerror or exc})") from None
    return path


def parse_clip(clip, name: str = "--clip") -> tuple[float, float] | None:
    if clip is None or (isinstance(clip, str) and clip.lower() in ("none", "")):
        return None
    try:
        if isinstance(clip, str):
            lo, hi = (float(v) for v in clip.split(","))
        else:
            lo, hi = (float(v) for v in clip)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"{name} {clip!r}: expected lo,hi") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise InvalidArgumentError(f"{name}: need finite lo < hi, got {lo}, {hi}")
    return float(lo), float(hi)


def _bool(v, name: str) -> bool:
    if not isinstance(v, bool):
        raise InvalidArgumentError(f"{name} must be true or false, got {v!r}")
    return v


# Task parameters a batch plan may set, with their checks: the keyword arguments of certify.tasks.task_*.
TASK_PARAMS = {
    "robustness": {"eps": check_eps, "norm": parse_norm, "method": check_method, "clip": parse_clip,
                   "radius": _bool, "radius_iters": lambda v, n: check_int(v, n, 1),
                   "timeout": lambda v, n: check_timeout(v, n)},
    "lipschitz": {"eps": check_eps, "norm": parse_norm, "index": lambda v, n: check_int(v, n, 0),
                  "bab_timeout": lambda v, n: check_timeout(v, n, allow_zero=True),
                  "bab": lambda v, n: check_choice(v, BAB_KINDS, n),
                  "output": lambda v, n: None if v is None else check_int(v, n, 0), "clip": parse_clip,
                  "time_limit": lambda v, n: check_time_limit(v, n)},
    "global": {"norm": lambda v, n: parse_norm(v, ("2", "inf"), n),
               "solver": lambda v, n: check_choice(v, SOLVERS, n, upper=True),
               "method": lambda v, n: check_choice(v, GLOBAL_METHODS, n),
               "time_limit": lambda v, n: None if v is None else check_timeout(v, n),
               "lower_samples": lambda v, n: check_int(v, n, 1)},
    "steps": {},
}
TASK_REQUIRED = {"robustness": ("eps",), "lipschitz": (), "global": (), "steps": ()}
