"""Exact decimals to float64, rounded in the direction that keeps a property's region *enlarged*.

A specification file writes decimals (``0.1``, ``3.991125645861615``); almost none of them is a
float64.  Both VNN-LIB readers (1.0: :mod:`relax.vnnlib`, 2.0: :mod:`relax.vnnlib2`) read every
numeral exactly as a :class:`fractions.Fraction`, do the linear algebra over the rationals, and only
then round, with one rule (so both give the same :class:`~relax.spec.Query` bit for bit):

* a bound ``x <= b`` is rounded *up* (:func:`round_up`), ``x >= b`` *down* (:func:`round_down`): the
  float box contains the exact box;
* a row ``sum_k c_k v_k <= r`` whose coefficients are not all float64 numbers is multiplied by the
  least common multiple of their denominators (the same set; integers are exact below 2**53), and
  ``r`` is then rounded up (:func:`float_row`): ``{v : C v <= d}`` contains the exact set.

So the region the engine searches contains the one the file describes, and ``unsat`` stays a proof.
The *inward* roundings (``round_up`` of a lower bound, ``round_down`` of an upper bound) give the box
where a witness must lie to satisfy the file exactly.
"""

from __future__ import annotations

import math
import sys
from decimal import Decimal, InvalidOperation
from fractions import Fraction

from ..models.errors import SpecificationError


def round_down(x: Fraction) -> float:
    """The largest float64 <= x (``-inf`` below the float range)."""
    try:
        f = float(x)
    except OverflowError:
        f = math.inf if x > 0 else -math.inf
    if f == math.inf:
        return sys.float_info.max
    if f == -math.inf:
        return f
    n, d = f.as_integer_ratio()  # f > x, compared exactly in integers (faster than building a Fraction)
    return math.nextafter(f, -math.inf) if n * x.denominator > x.numerator * d else f


def round_up(x: Fraction) -> float:
    """The smallest float64 >= x (``+inf`` above the float range)."""
    return -round_down(-x)


def is_exact(c: Fraction) -> bool:
    """``c`` is a (finite) float64 number."""
    try:
        f = float(c)
    except OverflowError:
        return False
    return math.isfinite(f) and f.as_integer_ratio() == (c.numerator, c.denominator)


def float_row(coeffs: dict, rhs: Fraction, where: str = "") -> tuple[dict, float]:
    """``sum coeffs[k] v_k <= rhs`` (exact) as float coefficients and a float right-hand side whose set
    contains the exact one: coefficients made integral by the lcm of their denominators when one of
    them is not a float64 number, the right-hand side rounded up.  Raises :class:`SpecificationError`
    (naming ``where``) when even the scaled coefficients do not fit float64 exactly."""
    if not all(is_exact(c) for c in coeffs.values()):
        scale = 1
        for c in coeffs.values():
            scale = scale * c.denominator // math.gcd(scale, c.denominator)
        coeffs = {k: c * scale for k, c in coeffs.items()}
        rhs = rhs * scale
        if not all(is_exact(c) for c in coeffs.values()):
            raise SpecificationError(f"{where}: coefficients too precise to hold exactly in float64 even after "
                                     f"scaling to integers")
    return {k: float(c) for k, c in coeffs.items()}, round_up(rhs)


_NUMBERS: dict[str, Fraction | int] = {}


def exact_number(lexeme: str) -> Fraction | int:
    """The exact value of a numeral (``0.1`` is 1/10, not the float nearest to it): an ``int`` when it is
    one (ints mix with Fractions exactly and cost far less), else a :class:`~fractions.Fraction`.
    Both readers' numerals (1.0 and 2.0) go through here; values are cached per lexeme."""
    v = _NUMBERS.get(lexeme)
    if v is None:
        if len(_NUMBERS) > 100_000:
            _NUMBERS.clear()
        try:
            n, d = Decimal(lexeme).as_integer_ratio()  # exact, and much faster than Fraction(str)
        except (InvalidOperation, ValueError, OverflowError) as exc:  # not a finite numeral
            raise ValueError(f"not a finite numeral: {lexeme!r}") from exc
        v = _NUMBERS[lexeme] = n if d == 1 else Fraction(n, d)
    return v
