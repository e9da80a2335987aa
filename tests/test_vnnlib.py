"""VNN-LIB 1.0 reader (relax/vnnlib.py): semantics, disjunctions, malformed files, speed, the shipped files."""

import gzip
import math
import time
from fractions import Fraction

import numpy as np
import pytest
import torch

from nncertify.models.errors import ShapeMismatchError, SpecificationError
from nncertify.relax.vnnlib import parse_vnnlib, read_vnnlib, to_query

DECL = "".join(f"(declare-const X_{i} Real)\n" for i in range(2)) + \
       "".join(f"(declare-const Y_{j} Real)\n" for j in range(3))
DECL_1 = "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n"
BOX = "(assert (<= X_0 1.0))\n(assert (>= X_0 -1.0))\n(assert (<= X_1 0.5))\n(assert (>= X_1 0.25))\n"


def parse(body, decl=DECL):
    return parse_vnnlib(decl + body, "p.vnnlib")


def satisfies(dj, x, y):
    """Brute-force truth of one disjunct at a point (box and rows)."""
    return bool(np.all(dj.lower <= x) and np.all(x <= dj.upper) and np.all(dj.C @ y <= dj.d))


def test_box_and_rows_semantics():
    s = parse(BOX + "(assert (<= Y_0 Y_1))\n(assert (>= Y_2 3.5))\n")
    assert (s.n_inputs, s.n_outputs, len(s.disjuncts)) == (2, 3, 1)
    dj = s.disjuncts[0]
    np.testing.assert_array_equal(dj.lower, [-1.0, 0.25])
    np.testing.assert_array_equal(dj.upper, [1.0, 0.5])
    # Y_0 <= Y_1 -> e0 - e1 <= 0 ; Y_2 >= 3.5 -> -e2 <= -3.5
    np.testing.assert_array_equal(dj.C, [[1, -1, 0], [0, 0, -1]])
    np.testing.assert_array_equal(dj.d, [0, -3.5])
    # the rows mean what the file says, at random outputs
    rng = np.random.default_rng(0)
    for y in rng.normal(0, 3, size=(200, 3)):
        want = (y[0] <= y[1]) and (y[2] >= 3.5)
        assert satisfies(dj, np.array([0.0, 0.3]), y) == want


def test_linear_terms_scientific_notation_comments_whitespace():
    text = (";; header comment\n(declare-const X_0 Real) ; trailing comment\n"
            "(declare-const   Y_0\tReal)(declare-const Y_1 Real)\n"
            "(assert (<= X_0 5e-1))(assert (>= X_0 -2.5E-1))\n"
            "(assert\n  (<= (+ (* 2 Y_0) (- Y_1) 1.0e0)\n      (* 0.5 (- 4 Y_1))))\n"
            "(assert (<= (/ Y_0 4) .75))\n(check-sat)\n")
    s = parse_vnnlib(text, "t.vnnlib")
    dj = s.disjuncts[0]
    np.testing.assert_array_equal([dj.lower[0], dj.upper[0]], [-0.25, 0.5])
    # 2 Y0 - Y1 + 1 <= 2 - 0.5 Y1  ->  2 Y0 - 0.5 Y1 <= 1 ;  Y0 / 4 <= .75 -> 0.25 Y0 <= 0.75
    np.testing.assert_allclose(dj.C, [[2.0, -0.5], [0.25, 0.0]])
    np.testing.assert_allclose(dj.d, [1.0, 0.75])


def test_top_level_or_and_box_per_disjunct():
    s = parse("(assert (or (and (<= X_0 0) (>= X_0 -1) (<= X_1 1) (>= X_1 0))\n"
              "            (and (<= X_0 1) (>= X_0 0.5) (<= X_1 1) (>= X_1 0))))\n"
              "(assert (or (and (<= Y_1 Y_0)) (and (<= Y_2 Y_0))))\n")
    assert len(s.disjuncts) == 4  # 2 boxes x 2 output clauses
    boxes = {(tuple(d.lower), tuple(d.upper)) for d in s.disjuncts}
    assert boxes == {((-1.0, 0.0), (0.0, 1.0)), ((0.5, 0.0), (1.0, 1.0))}
    rows = sorted(tuple(d.C[0]) for d in s.disjuncts)
    assert rows == sorted([(-1.0, 1.0, 0.0), (-1.0, 0.0, 1.0)] * 2)


def test_or_inside_and_multiplies_out():
    # (Y0 <= 1 or Y1 <= 2) and (Y2 <= 3 or Y0 >= 4): 4 clauses of two rows each
    s = parse(BOX + "(assert (and (or (<= Y_0 1) (<= Y_1 2)) (or (<= Y_2 3) (>= Y_0 4))))\n")
    assert len(s.disjuncts) == 4 and all(d.C.shape == (2, 3) for d in s.disjuncts)
    rng = np.random.default_rng(1)
    for y in rng.uniform(-1, 6, size=(500, 3)):
        want = (y[0] <= 1 or y[1] <= 2) and (y[2] <= 3 or y[0] >= 4)
        got = any(satisfies(d, np.array([0.0, 0.3]), y) for d in s.disjuncts)
        assert got == want


def test_chained_comparison_equality_and_strict_read_as_closed():
    s = parse(BOX + "(assert (<= 0 Y_0 Y_1))\n(assert (= Y_2 1))\n(assert (< Y_0 7))\n")
    dj = s.disjuncts[0]
    got = {(tuple(r), float(c)) for r, c in zip(dj.C, dj.d)}
    assert got == {((-1.0, 0.0, 0.0), 0.0), ((1.0, -1.0, 0.0), 0.0), ((0.0, 0.0, 1.0), 1.0),
                   ((0.0, 0.0, -1.0), -1.0), ((1.0, 0.0, 0.0), 7.0)}


def test_empty_disjuncts_dropped_and_inexact_bounds_rounded_outward():
    s = parse("(assert (or (and (<= X_0 -1) (>= X_0 1) (<= X_1 1) (>= X_1 0))\n"
              "            (and (<= (* 3 X_0) 1) (>= (* 3 X_0) -1) (<= X_1 1) (>= X_1 0))))\n(assert (<= Y_0 0))\n")
    assert s.dropped_empty == 1 and len(s.disjuncts) == 1
    lo, hi = s.disjuncts[0].lower[0], s.disjuncts[0].upper[0]
    # the box contains every real x with 3x <= 1 / 3x >= -1 although 1/3 is not a float
    assert hi >= 1 / 3 and 3 * hi >= 1 and lo <= -1 / 3 and 3 * lo <= -1
    assert hi - 1 / 3 < 1e-15
    # all clauses empty: an empty query (unsat without running anything)
    s2 = parse("(assert (<= X_0 -1))(assert (>= X_0 1))(assert (<= X_1 1))(assert (>= X_1 0))(assert (<= Y_0 0))")
    assert s2.disjuncts == [] and s2.dropped_empty == 1
    assert to_query(s2, (2,), 3).specs == []


def test_to_query_reshapes_in_c_order_and_checks_sizes():
    decl = "".join(f"(declare-const X_{i} Real)\n" for i in range(6)) + "(declare-const Y_0 Real)\n"
    box = "".join(f"(assert (<= X_{i} {i + 0.5}))(assert (>= X_{i} {i}))\n" for i in range(6))
    s = parse_vnnlib(decl + box + "(assert (>= Y_0 1))", "q.vnnlib")
    q = to_query(s, (1, 2, 3), 1)
    spec = q.specs[0]
    assert spec.lower.shape == (1, 2, 3) and spec.lower.dtype == torch.float64
    assert spec.lower[0, 1, 2].item() == 5.0 and spec.upper[0, 0, 1].item() == 1.5
    with pytest.raises(ShapeMismatchError, match=r"q.vnnlib: declares 6 inputs.*takes 5"):
        to_query(s, (5,), 1)
    with pytest.raises(ShapeMismatchError, match=r"q.vnnlib: declares 1 outputs.*has 10"):
        to_query(s, (6,), 10)


@pytest.mark.parametrize("body,line,words", [
    ("(assert (<= X_0 1.0)\n(assert (>= X_0 -1.0))\n", 6, ["unbalanced '('"]),
    (BOX + "(assert (<= Y_0 1)))\n", 10, ["unbalanced ')'"]),
    (BOX + "\n(assert (<= Y_7 1))\n", 11, ["undeclared variable Y_7"]),
    (BOX + "(assert (<= (* Y_0 Y_1) 1))\n", 10, ["non-linear"]),
    (BOX + "(assert (<= (/ 1 Y_1) 1))\n", 10, ["non-linear"]),
    (BOX + "(assert (<= (exp Y_0) 1))\n", 10, ["unsupported function", "exp"]),
    (BOX + "(define-fun f () Real 1.0)\n", 10, ["unknown command", "define-fun"]),
    (BOX + "(assert (not (<= Y_0 1)))\n", 10, ["not"]),
    (BOX + "(assert (<= Y_0 Z))\n", 10, ["unknown symbol", "Z"]),
    (BOX + "(assert (<= Y_0 nan))\n", 10, ["unknown symbol", "nan"]),
    (BOX + "(assert (<= (+ X_0 Y_0) 1))\n", 10, ["mixing inputs X and outputs Y"]),
    (BOX + "(assert (<= (+ X_0 X_1) 1))\n", 10, ["several inputs", "X_0, X_1"]),
    ("(assert (<= X_0 1.0))\n(assert (<= X_1 1))(assert (>= X_1 0))(assert (<= Y_0 1))\n", 6, ["X_0 has no lower bound"]),
    ("(declare-const X_0 Real)\n", 6, ["declared twice"]),
    ("(declare-const X_9 Int)\n", 6, ["declare-const NAME Real"]),
    ("(declare-const alpha Real)\n", 6, ["only inputs X_i and outputs Y_j"]),
    (BOX + "stray\n", 10, ["outside parentheses"]),
    (BOX + "(assert (<= Y_0 1) (<= Y_1 1))\n", 10, ["takes one formula"]),
    (BOX + "(assert (<= Y_0))\n", 10, ["needs two arguments"]),
])
def test_malformed_files_one_line_error_naming_the_line(body, line, words):
    with pytest.raises(SpecificationError) as ei:
        parse(body)
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith(f"p.vnnlib:{line}: "), msg
    for w in words:
        assert w in msg, msg


def test_declaration_gaps_and_missing_asserts():
    with pytest.raises(SpecificationError, match="X_1 is not declared although X_2 is"):
        parse_vnnlib("(declare-const X_0 Real)(declare-const X_2 Real)(declare-const Y_0 Real)(assert (<= Y_0 1))")
    with pytest.raises(SpecificationError, match="no Y_i variable declared"):
        parse_vnnlib("(declare-const X_0 Real)(assert (<= X_0 1))")
    with pytest.raises(SpecificationError, match="no assert"):
        parse_vnnlib(DECL)


def test_files_missing_binary_gzip(tmp_path):
    with pytest.raises(SpecificationError, match="nope.vnnlib: no such file"):
        read_vnnlib(tmp_path / "nope.vnnlib")
    (tmp_path / "bin.vnnlib").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(SpecificationError, match="bin.vnnlib: not a text file"):
        read_vnnlib(tmp_path / "bin.vnnlib")
    text = DECL + BOX + "(assert (<= Y_0 Y_1))"
    (tmp_path / "p.vnnlib.gz").write_bytes(gzip.compress(text.encode()))
    assert read_vnnlib(tmp_path / "p.vnnlib.gz").disjuncts[0].C.shape == (1, 3)


def big_property(n_in=4000, n_out=10, label=3):
    """A MNIST-FC-like property with n_in inputs: 2 n_in + n_in + ... lines (> 12,000 for 4000)."""
    lines = ["; big"] + [f"(declare-const X_{i} Real)" for i in range(n_in)]
    lines += [f"(declare-const Y_{j} Real)" for j in range(n_out)]
    for i in range(n_in):
        lines += [f"(assert (<= X_{i} {0.5 + i * 1e-5!r}))", f"(assert (>= X_{i} {-0.5 - i * 1e-5!r}))", ""]
    lines.append("(assert (or")
    lines += [f"    (and (>= Y_{j} Y_{label}))" for j in range(n_out) if j != label]
    lines.append("))")
    return "\n".join(lines)


def test_large_file_is_parsed_fast():
    text = big_property()
    assert text.count("\n") > 16_000
    t = time.perf_counter()
    s = parse_vnnlib(text, "big.vnnlib")
    dt = time.perf_counter() - t
    assert len(s.disjuncts) == 9 and s.n_inputs == 4000
    v = 0.5 + 3999 * 1e-5  # written as repr(v), a decimal that is not v: the upper bound is the float just above it
    assert s.disjuncts[4].upper[3999] == (v if Fraction(repr(v)) <= Fraction(v) else math.nextafter(v, math.inf))
    assert dt < 5.0, f"16k lines took {dt:.2f} s"  # about 0.3 s on an idle core


def test_shipped_vnncomp_properties(shared_data):
    root = shared_data / "vnncomp2021"
    # ACAS Xu P1: one clause, Y_0 >= 3.99...; P6: two boxes x four rows; P4: X_2 pinned to 0
    p1 = read_vnnlib(root / "acasxu" / "prop_1.vnnlib")
    assert len(p1.disjuncts) == 1 and p1.disjuncts[0].C.tolist() == [[-1.0, 0, 0, 0, 0]]
    d, exact = float(p1.disjuncts[0].d[0]), Fraction("-3.991125645861615")  # -Y_0 <= -3.991125645861615 rounded up
    assert Fraction(d) >= exact and Fraction(math.nextafter(d, -math.inf)) < exact and d != -3.991125645861615
    p6 = read_vnnlib(root / "acasxu" / "prop_6.vnnlib")
    assert len(p6.disjuncts) == 8 and len({tuple(d.lower) for d in p6.disjuncts}) == 2
    p4 = read_vnnlib(root / "acasxu" / "prop_4.vnnlib")
    assert p4.disjuncts[0].lower[2] == p4.disjuncts[0].upper[2] == 0.0
    # MNIST-FC: 784 inputs in [0, 1], 9 one-row clauses Y_j >= Y_label on one box
    t = time.perf_counter()
    m = read_vnnlib(root / "mnistfc" / "prop_0_0.03.vnnlib")
    dt = time.perf_counter() - t
    assert m.lines > 3000 and dt < 2.0
    assert m.n_inputs == 784 and len(m.disjuncts) == 9
    assert all(d.C.shape == (1, 10) and d.C[0, 8] == 1 and d.C.sum() == 0 for d in m.disjuncts)
    assert (m.disjuncts[0].lower >= 0).all() and (m.disjuncts[0].upper <= 1).all()
    widths = m.disjuncts[0].upper - m.disjuncts[0].lower
    assert math.isclose(widths.max(), 0.06, abs_tol=1e-6)
    for f in sorted((root / "mnistfc").glob("*.vnnlib")) + sorted((root / "acasxu").glob("*.vnnlib")):
        assert read_vnnlib(f).disjuncts


def test_decimals_are_rounded_outward_not_to_nearest():
    """0.3 and 0.9 are not floats: float(0.3) < 0.3, so round-to-nearest would cut x = 0.3 off the box and
    3 y >= 0.9 would become 3 y >= float(0.9) > 0.9.  The float box / row must contain the exact sets."""
    s = parse("(assert (>= X_0 0.1)) (assert (<= X_0 0.3)) (assert (>= (* 3 Y_0) 0.9))"
              "(assert (<= (* 0.1 Y_0) 7.0))", DECL_1)
    dj = s.disjuncts[0]
    lo, hi = float(dj.lower[0]), float(dj.upper[0])
    assert Fraction(lo) <= Fraction("0.1") and Fraction(math.nextafter(lo, math.inf)) > Fraction("0.1")
    assert Fraction(hi) >= Fraction("0.3") and Fraction(math.nextafter(hi, -math.inf)) < Fraction("0.3")
    assert hi != 0.3  # 0.3 (nearest) is below the decimal 0.3
    rows = {tuple(r): float(c) for r, c in zip(dj.C, dj.d)}
    # -3 y <= -0.9: the float rhs is >= -0.9 (nearest is -0.9000000000000000222, inside the set: wrong)
    assert Fraction(rows[(-3.0,)]) >= Fraction("-0.9") and rows[(-3.0,)] != -0.9
    # 0.1 y <= 7 is not exact in float64: scaled to the integer row y <= 70
    assert rows[(1.0,)] == 70.0
    # the inward box holds only points of the exact box
    assert Fraction(float(dj.lower_in[0])) >= Fraction("0.1") and Fraction(float(dj.upper_in[0])) <= Fraction("0.3")
    # Disjunct.holds is exact: at x = float(0.3) < 0.3, y = x gives 3y < 0.9
    assert not dj.holds([0.3], [0.3]) and dj.holds([0.2], [0.31])


def test_exactly_empty_box_within_one_ulp_is_dropped():
    """x >= 0.30000000000000000001 and x <= 0.3 is empty although both bounds round to the same float(s)."""
    s = parse("(assert (or (and (>= X_0 0.30000000000000000001) (<= X_0 0.3))"
              " (and (>= X_0 0.3) (<= X_0 0.3))))(assert (<= Y_0 0.0))", DECL_1)
    assert s.dropped_empty == 1 and len(s.disjuncts) == 1
    dj = s.disjuncts[0]
    assert Fraction(float(dj.lower[0])) < Fraction("0.3") < Fraction(float(dj.upper[0]))
