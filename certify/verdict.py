"""What a certificate proves, in one line, and the CLI exit code it earns.

One place for both so that the CLI headline, the demo's lines and the report's summary rows say the
same thing.  The headline states the proven result itself ("verified 0/20, falsified 20",
"L <= 3.2 (certified)"), never a bare status word: a robustness run that verified nothing is not a
success.

Exit codes (the README's): 0 something was certified (or the user asked for an estimate and got
one); 1 the command ran but nothing could be certified (status ``failed``, or a robustness run
with no verified sample); 2 bad input; 4 internal error.
"""

from __future__ import annotations

EXIT_OK, EXIT_NOT_CERTIFIED, EXIT_BAD_INPUT, EXIT_INTERNAL = 0, 1, 2, 4


def fmt(x, digits: int = 4) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


def describe(c) -> tuple[str, str]:
    """``(what, result)``: the quantity and what was established about it (certified vs estimate)."""
    r = c.result
    failed = c.status == "failed"
    if r.kind == "lipschitz":
        what = f"{r.scope} Lipschitz (ℓ{r.norm} input)"
        if r.upper is not None and not failed:
            res = f"L ≤ {fmt(r.upper)} (certified{', exact' if getattr(r, 'exact', False) else ''})"
        else:
            res = "no certified bound"
        if r.lower is not None:
            res += f"; L ≥ {fmt(r.lower)} (estimate)"
        return what, res
    if r.kind == "robustness":
        n = len(r.samples)
        return (f"robustness ℓ{r.norm} ε={fmt(r.eps)}",
                f"verified {r.verified}/{n} ({100 * r.verified / max(n, 1):.1f}%), falsified {r.falsified}, "
                f"unknown {r.unknown}")
    if r.kind == "step_radius":
        if r.trajectory:
            rs = [t.get("r_applied") for t in r.trajectory if t.get("r_applied") is not None]
            clipped = sum(1 for t in r.trajectory if (t.get("scale") or 1.0) < 1.0)
            return "controlled training run", (f"{len(r.trajectory)} steps, {clipped} clipped to ρ_a, "
                                               f"max applied r = {fmt(max(rs) if rs else None)}")
        if failed or r.radius is None:
            return "safe step radius", "no certified radius"
        return "safe step radius", f"ρ_a = {fmt(r.radius)} (certified); safe SGD lr ≤ {fmt(r.safe_lr_sgd)}"
    if r.kind == "game":
        what = f"SGN game certificate ({r.players} players)"
        if r.margin is not None and not failed:
            kind = "certified" if c.status == "certified" else "estimate"
            return what, f"contraction margin {fmt(r.margin)} ({kind}), rate {fmt(r.rate)}, Euler h ≤ {fmt(r.euler_step)}"
        return what, f"not certified: {r.reason or 'no contraction'}"
    return r.kind, c.status


def proven_something(c) -> bool:
    """Whether the certificate establishes anything (the exit-code rule)."""
    if c.status == "failed":
        return False
    if c.result.kind == "robustness":
        return c.result.verified > 0
    return True


def exit_code(c) -> int:
    return EXIT_OK if proven_something(c) else EXIT_NOT_CERTIFIED


def headline(c) -> str:
    """The one line the CLI prints: quantity, what was proven, method and time."""
    what, res = describe(c)
    tag = "  (nothing verified)" if c.result.kind == "robustness" and not proven_something(c) else ""
    if c.result.kind == "robustness" or c.status in ("certified", "failed"):
        return f"{what}: {res}{tag}  [{c.method}, {c.timing.total_s:.2f} s]"
    return f"{what}: {res}  [{c.status}; {c.method}, {c.timing.total_s:.2f} s]"
