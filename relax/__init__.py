"""nncertify.relax: sound bound propagation (IBP, CROWN, alpha-CROWN) on ``models.Network``.

API (stable)
------------
``Box(lower, upper)``
    per-sample boxes, each ``(B, *input_shape)``.
``Ball(center, eps, p=inf, clip=None)``
    ``{x : ||x - center||_p <= eps}`` with ``eps`` a float or ``(B,)``, ``p in (inf, 2, 1)``,
    optionally intersected with the data domain ``clip = (lo, hi)``; ``Ball(p=inf, clip=...)``
    is turned into a ``Box``.
``compute_bounds(net, input_set, method="crown", C=None, *, alpha_iters=20, alpha_lr=0.5,
alpha_init=None, intermediate_method=None, dtype=None, bound_lower=True, bound_upper=True,
chunk_elems=2**25, intersect_ibp=True, skip_stable=True, fixed_preact=None) -> BoundResult``
    ``method`` in ``"ibp"``, ``"crown"``, ``"alpha-crown"``.  ``C``: ``(B, m, out_numel)`` or
    ``(m, out_numel)``: bounds on ``C @ f(x)``; ``None`` = identity on the flattened output.
    ``dtype``: working dtype (float32 default = the network's; float64 option).
    ``fixed_preact={act_name: (l, u)}``: assumed pre-activation bounds (branch-and-bound splits).
    See :func:`relax.engine.compute_bounds` for every option.
``BoundResult``
    ``.lower``, ``.upper`` ``(B, m)``; ``.intermediate[name] = (lower, upper)`` each
    ``(B, *node.shape)`` for *every* node (the pre-activation bounds of an activation node ``n``
    are ``intermediate[n.inputs[0]]``); ``.preact[act]``: bounds on the ReLU argument of each
    lowered activation (MaxMin/GroupSort differences, Householder ``-v.z``); ``.alpha``: optimized
    slopes ``{"lower"|"upper": {act_name: (B, m, *pre_shape)}}`` for warm starts; ``.method``;
    ``.empty`` ``(B,)``: infeasible ``fixed_preact`` constraints (vacuous bounds).
``Box.sample(n)``, ``Ball.sample(n)``: points of the set (interior and boundary/vertices) for tests.
``verify_robustness(net, x, labels, eps, norm="inf", method="crown", clip=None, pgd_steps=20, ...)``
    per-sample ``"verified" | "falsified" | "unknown"`` with the margins' lower bounds (relax.verify).
    ``method="bab"``: complete verification (CROWN -> alpha-CROWN -> beta-CROWN branch-and-bound per
    sample still unknown, ``timeout`` seconds each; l_inf).
``Specification(lower, upper, C, d)``, ``Query(specs, source)``, ``Verdict`` (relax.spec)
    a VNN-LIB-style query: is there ``x`` in the box with ``C f(x) <= d``?  (a Query is a disjunction).
``verify_query(net, query, *, timeout, device=None, **opts) -> Verdict``
    ``"sat"`` (counterexample re-checked in float64) / ``"unsat"`` (proof) / ``"unknown"`` / ``"timeout"``:
    PGD -> CROWN -> alpha-CROWN -> branch-and-bound (relax/bab: input splitting for <= 16 inputs,
    beta-CROWN activation splitting otherwise).
``relax.auto_lirpa_adapter.cross_check(net, lower, upper, method)``: optional comparison with auto_LiRPA.

Modules: sets.py (input sets), affine.py / activations.py / piecewise.py (one handler table per
relaxation family), lowering.py (Network -> lowered nodes), engine.py (the traversal), verify.py,
spec.py (queries and verdicts), bab/ (the branch-and-bound framework and the searches on it).

Every bound is sound for all inputs in the set (see relax/engine.py for the floating-point policy:
IBP in float64 rounded outward, CROWN widened by a rounding margin, CROWN intersected with IBP).
"""

if not __name__.startswith("nncertify."):  # the source folder imported as a top-level name
    raise ImportError(f"the relax/ folder is the package nncertify.relax: import it as nncertify.relax "
                      f"(found as {__name__!r} via {__file__})")

from .engine import BoundResult, compute_bounds
from .sets import Ball, Box

__all__ = ["Box", "Ball", "compute_bounds", "BoundResult", "verify_robustness", "VerificationResult",
           "margin_spec", "Specification", "Query", "Verdict", "verify_query"]


def __getattr__(name):  # lazy: verify imports the attack code
    if name in ("verify_robustness", "VerificationResult", "margin_spec"):
        from . import verify
        return getattr(verify, name)
    if name in ("Specification", "Query", "Verdict", "verify_query"):
        from . import spec
        return getattr(spec, name)
    raise AttributeError(name)
