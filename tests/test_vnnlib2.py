"""VNN-LIB 2.0 reader (relax/vnnlib2.py): the standard's examples and small queries against hand-written
internal specifications (boxes over all declared inputs, rows over the used variables)."""

import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from nncertify.models.errors import SpecificationError
from nncertify.relax.vnnlib2 import parse_vnnlib2, read_vnnlib2, theories, to_query

EXAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "vnnlib2" / "syntax" / "test"
INF = math.inf


@pytest.fixture
def examples() -> Path:
    if not EXAMPLES.is_dir():
        pytest.skip(f"{EXAMPLES} is absent (it exists only next to the development checkout)")
    return EXAMPLES


def down(s: str) -> float:
    """Largest float64 <= the decimal s (written independently of the module: via nextafter)."""
    f = float(s)
    return math.nextafter(f, -INF) if Fraction(f) > Fraction(s) else f


def up(s: str) -> float:
    f = float(s)
    return math.nextafter(f, INF) if Fraction(f) < Fraction(s) else f


def check_spec(spec, lower, upper, C, d):
    assert spec.lower.tolist() == lower
    assert spec.upper.tolist() == upper
    assert spec.C.tolist() == C
    assert spec.d.tolist() == d
    assert spec.lower.dtype == spec.C.dtype == torch.float64


# ------------------------------------------------------------------------------- the standard's examples
def test_cartpole(examples):
    tr = to_query(read_vnnlib2(examples / "cartpole.vnnlib"))
    assert [v.name for v in tr.inputs] == ["X"] and tr.outputs == [("Y", 0), ("Y", 1)]
    (s,) = tr.query.specs
    check_spec(s, [down("-0.05549104989941913"), down("-0.43609394989941913"), down("-0.03762770689941913"),
                   down("0.4034858001005809")],
               [up("-0.04762885010058087"), up("-0.42823175010058084"), up("-0.029765507100580874"),
                up("0.41134799989941917")], [[-1.0, 1.0]], [0.0])


def test_drones_disjunction_and_scalar_output(examples):
    doc = read_vnnlib2(examples / "drones.vnnlib")
    assert doc.networks[0].outputs[0].shape == () and doc.networks[0].inputs[0].dtype == "real"
    tr = to_query(doc)
    assert tr.outputs == [("Y", 0)] and len(tr.query.specs) == 2
    lows = ["0.05277613699436187", "-0.2746464520692825", "0.2945697844028473", "-0.2143166571855545",
            "0.46280970573425295", "0.01749064922332763", "0.36719402074813845", "0.5235765814781189",
            "-0.8068316340446472", "-0.9422951698303222", "-0.03745382875204087", "0.693911337852478"]
    highs = ["0.25277613699436186", "-0.07464645206928253", "0.49456978440284727", "-0.014316657185554499",
             "0.6628097057342529", "0.21749064922332764", "0.5671940207481384", "0.7235765814781189",
             "-0.6068316340446472", "-0.7422951698303223", "0.16254617124795914", "0.893911337852478"]
    box = ([down(s) for s in lows], [up(s) for s in highs])
    check_spec(tr.query.specs[0], *box, [[-1.0]], [-down("20.507437306839908")])  # Y >= 20.5..  ->  -Y <= -20.5..
    check_spec(tr.query.specs[1], *box, [[1.0]], [up("-14.696421224076236")])


def test_dubinsrejoin(examples):
    tr = to_query(read_vnnlib2(examples / "dubinsrejoin.vnnlib"))
    assert tr.outputs == [("Y", j) for j in range(8)]
    (s,) = tr.query.specs
    rows = []
    for a, b in [(0, 1), (2, 1), (3, 1), (4, 5), (6, 5), (7, 5)]:  # Y[a] <= Y[b]
        r = [0.0] * 8
        r[a], r[b] = 1.0, -1.0
        rows.append(r)
    lo = ["-0.4054362064152494", "0.29488972541449876", "-0.10411888822562138", "-0.10411888822562138",
          "-1.0140416108275516", "-0.10411888822562138", "-0.5101792554827376", "0.11518102759385065"]
    hi = ["-0.19719842996400666", "0.5031275018657415", "0.10411888822562138", "0.10411888822562138",
          "-0.805803834376309", "0.10411888822562138", "-0.3019414790314948", "0.3234188040450934"]
    check_spec(s, [down(x) for x in lo], [up(x) for x in hi], rows, [0.0] * 6)


def test_lunarlander(examples):
    tr = to_query(read_vnnlib2(examples / "lunarlander.vnnlib"))
    assert tr.outputs == [("Y", 2), ("Y", 3)]
    (s,) = tr.query.specs
    assert s.C.tolist() == [[-1.0, 1.0]] and s.d.tolist() == [0.0]  # Y[3] <= Y[2]
    assert s.lower[6].item() == down("0.9666002363057666") and s.upper[0].item() == up("-0.6522424763057666")


def test_mnist_tensor_indexing_row_major(examples):
    tr = to_query(read_vnnlib2(examples / "mnist.vnnlib"))
    assert tr.n_inputs == 784 and tr.outputs == [("Y", 0), ("Y", 1), ("Y", 7), ("Y", 8), ("Y", 9)]
    (s,) = tr.query.specs
    lower = [-INF] * 784
    upper = [INF] * 784
    lower[0], upper[0] = 0.0, 1.0            # X[0,0]
    lower[783], upper[783] = 0.0, 1.0        # X[27,27] = 27 * 28 + 27
    check_spec(s, lower, upper, [[1.0, 0, 0, 0, -1.0], [0, 1.0, 0, 0, -1.0], [0, 0, 1.0, 0, -1.0],
                                 [0, 0, 0, 1.0, -1.0]], [0.0] * 4)


def test_multiple_networks(examples):
    doc = read_vnnlib2(examples / "multiple_networks.vnnlib")
    assert [(n.name, n.equal_to, n.isomorphic_to) for n in doc.networks] == \
        [("AcasXu", None, None), ("AcasYu", "AcasXu", None), ("AcasZu", None, "AcasXu")]
    assert theories(doc)["multiple-network"] == "MINET"
    tr = to_query(doc)
    assert [v.name for v in tr.inputs] == ["A", "C", "E"] and tr.n_inputs == 15
    assert tr.outputs == [("B", j) for j in range(5)] + [("D", 0)]
    assert len(tr.query.specs) == 3
    lower = [-INF] * 15
    upper = [INF] * 15
    for k, lo, hi in [(0, "0.6", "0.679857769"), (2, "-0.5", "0.5"), (4, "-0.5", "-0.45"),  # A[0], A[2], A[4]
                      (6, "-0.5", "0.5"), (8, "0.45", "0.5")]:                            # C[1], C[3]
        lower[k], upper[k] = down(lo), up(hi)
    d_row = [0, 0, 0, 0, 0, -1.0]                      # D[0] >= 3.99..  ->  -D[0] <= -3.99..
    for k, s in enumerate(tr.query.specs):             # (B[k+2] <= B[0]) and (B[k+2] <= B[1])
        r0, r1 = [0.0] * 6, [0.0] * 6
        r0[k + 2], r0[0] = 1.0, -1.0
        r1[k + 2], r1[1] = 1.0, -1.0
        check_spec(s, lower, upper, [d_row, r0, r1], [-down("3.991125645861615"), 0.0, 0.0])


@pytest.mark.parametrize("name, what", [("acc", "TypeMismatch"), ("intermediate_nodes", "TypeMismatch"),
                                        ("single_network", "TypeMismatch"), ("test_linearise", "TypeMismatch"),
                                        ("initialized", "syntax error")])
def test_examples_vnnlib_1_0_2_rejects(examples, name, what):
    """The package lags the standard on these (README of the reference): one line naming file, line and report."""
    with pytest.raises(SpecificationError) as e:
        read_vnnlib2(examples / f"{name}.vnnlib")
    msg = str(e.value)
    assert "\n" not in msg and f"{name}.vnnlib" in msg and what in msg


def test_rejected_examples_with_lowercase_real(examples):
    """The same files with the lowercase 'real' the package knows: hand-written expectations."""
    text = (examples / "single_network.vnnlib").read_text().replace(" Real ", " real ")
    tr = to_query(parse_vnnlib2(text, "single_network(real)"))
    assert tr.outputs == [("X", 1), ("X", 2)] + [("Y", j) for j in range(4)]
    # (and (or Y2<=Y0 Y2<=Y1) (or Y3<=Y0 Y3<=Y1) (or Y3<=Y0 Y3<=Y1)) -> 8 clauses
    assert len(tr.query.specs) == 8
    s = tr.query.specs[0]
    check_spec(s, [0.0, -50.0, 0.0], [50.0, 50.0, 150.0],
               [[1.5, -1.0, 0, 0, 0, 0],      # 1.5 X1 - X2 <= -5
                [0, 0, -1.0, 0, 0, 0],        # -Y0 <= 0
                [0, 0, 1.0, 0, 0, 0],         # Y0 <= 1
                [0, 0, -1.0, 0, 1.0, 0],      # Y2 - Y0 <= 0
                [0, 0, -1.0, 0, 0, 1.0],      # Y3 - Y0 <= 0
                [0, 0, -1.0, 0, 0, 1.0]],
               [-5.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    # Y0 in [0, 1] is not an input bound: its two atoms come first as rows in the file order
    assert len(tr.clauses[0]) == 6 + 1 + 2 + 3

    text = (examples / "test_linearise.vnnlib").read_text().replace(" Real ", " real ")
    doc = parse_vnnlib2(text, "test_linearise(real)")
    assert len(doc.clauses) == 2  # the final (or (<= Y -5) (>= Y 5))
    atoms = {a.line: a for a in doc.clauses[0]}
    F = Fraction
    expect = {  # line: ({(name, flat): coefficient}, rhs) of  sum c v <= rhs, from the file's comments
        14: ({("X", 0): F(1)}, F(5)),           # X0 + 5 <= 10
        17: ({("X", 0): F(-1)}, F(0)),
        20: ({("X", 0): F(1)}, F(5)),           # X0 - 5 <= 0
        23: ({("X", 0): F(-1)}, F(-5)),         # 5 - X0 <= 0
        26: ({("X", 0): F("3.5")}, F(7)),
        29: ({("X", 0): F(-2)}, F(0)),
        34: ({("X", 0): F(2)}, F(5)),           # X0 + 5 + X0 <= 10
        37: ({}, F(0)),                         # X0 - X0 <= 0
        40: ({("X", 0): F(1), ("X", 1): F(-1)}, F(-3)),
        43: ({("X", 0): F(1), ("X", 1): F(-1), ("X", 2): F(-1)}, F(0)),
        48: ({("X", 0): F(-1), ("X", 1): F(-1)}, F(-5)),
        53: ({}, F(0)),                         # 0 * X0 <= 0
        56: ({("X", 0): F(1)}, F(5)),
        59: ({("X", 0): F(1)}, F(5)),
        64: ({}, F(5)),                         # 15 <= 20
        67: ({}, F(2)),                         # 8 <= 10
        72: ({("X", 0): F(-1), ("X", 1): F(1)}, F(-3)),
        75: ({("X", 0): F(6)}, F(18)),
        78: ({("X", 0): F(1), ("X", 1): F(1), ("X", 2): F(-1)}, F(10)),  # 10 - X1 + X2 - X0 >= 0
    }
    for line, (terms, rhs) in expect.items():
        a = atoms[line]
        assert dict(a.terms) == terms and a.rhs == rhs and not a.strict, line


# ------------------------------------------------------------------------------- small queries (no ../shared)
HEAD = "(vnnlib-version <2.0>)\n"


def q(body: str, decl: str = "(declare-network f (declare-input X real [1,3]) (declare-output Y real [1,2]))"):
    return parse_vnnlib2(HEAD + decl + "\n" + body, "t.vnnlib")


def test_outward_rounding_and_exact_rows():
    tr = to_query(q("(assert (>= X[0,0] 0.1)) (assert (<= X[0,0] 0.3)) (assert (== X[0,1] 0.2))"
                    "(assert (<= X[0,2] 1.0)) (assert (>= X[0,2] -1.0))"
                    "(assert (<= (* 0.1 Y[0,0]) 0.3)) (assert (<= (- Y[0,1] (* 0.5 Y[0,0])) 0.1))"))
    (s,) = tr.query.specs
    assert Fraction(s.lower[0].item()) <= Fraction("0.1") < Fraction(math.nextafter(s.lower[0].item(), INF))
    assert Fraction(s.upper[0].item()) >= Fraction("0.3") > Fraction(math.nextafter(s.upper[0].item(), -INF))
    assert s.lower[1].item() == down("0.2") and s.upper[1].item() == up("0.2")
    # 0.1 Y0 <= 0.3 is not exact in float64: scaled by 10 -> Y0 <= 3 exactly; 1.5 is exact: kept
    assert s.C.tolist() == [[1.0, 0.0], [-0.5, 1.0]]
    assert s.d.tolist() == [3.0, up("0.1")]


def test_strict_equal_not_equal_and_constants():
    tr = to_query(q("(assert (and (<= X[0,0] 1.0) (>= X[0,0] 0.0) (<= X[0,1] 1.0) (>= X[0,1] 0.0)"
                    " (<= X[0,2] 1.0) (>= X[0,2] 0.0)))"
                    "(assert (!= Y[0,0] 2.0)) (assert (== Y[0,1] Y[0,0])) (assert (< (- X[0,0] X[0,0]) 1.0))"))
    assert len(tr.query.specs) == 2  # != splits into < and >
    s0, s1 = tr.query.specs
    assert s0.C.tolist() == [[1.0, 0.0], [-1.0, 1.0], [1.0, -1.0]] and s0.d.tolist() == [2.0, 0.0, 0.0]
    assert s1.C.tolist() == [[-1.0, 0.0], [-1.0, 1.0], [1.0, -1.0]] and s1.d.tolist() == [-2.0, 0.0, 0.0]
    assert [a.strict for a in tr.clauses[0] if a.terms == ((("Y", 0), 1),)] == [True]
    # a false constant atom empties the clause; an empty box too
    assert to_query(q("(assert (> (- X[0,0] X[0,0]) 1.0))")).query.specs == []
    tr = to_query(q("(assert (or (and (<= X[0,0] 0.0) (>= X[0,0] 1.0)) (<= Y[0,0] 0.0)))"))
    assert len(tr.query.specs) == 1 and tr.dropped == 1


def test_coupled_inputs_hidden_and_several_networks_layout():
    decl = ("(declare-network f (declare-input A real [1,2]) (declare-input B real [1,1])"
            " (declare-hidden H real [1,3] \"relu_1\") (declare-output Y real [1,2]))"
            "(declare-network g (equal-to f) (declare-input C real [1,2]) (declare-input D real [1,1])"
            " (declare-output Z real [1,2]))")
    doc = q("(assert (<= (+ A[0,1] B[0,0]) 1.0)) (assert (>= H[0,2] 0.5)) (assert (<= Z[0,1] Y[0,0]))"
            "(assert (<= D[0,0] 2.0))", decl)
    assert doc.networks[0].hidden[0].onnx_name == "relu_1"
    th = theories(doc)
    assert th == {"hidden-node": "H", "multiple-input-output": "MIO", "multiple-network": "MENET",
                  "multiple-node-comparison": "MNC", "arithmetic-complexity": "LIN"}
    tr = to_query(doc)
    assert [v.name for v in tr.inputs] == ["A", "B", "C", "D"] and tr.n_inputs == 6
    assert tr.outputs == [("A", 1), ("B", 0), ("H", 2), ("Y", 0), ("Z", 1)]
    (s,) = tr.query.specs
    assert s.upper.tolist() == [INF, INF, INF, INF, INF, 2.0]
    assert s.C.tolist() == [[1, 1, 0, 0, 0], [0, 0, -1, 0, 0], [0, 0, 0, -1, 1]]
    assert s.d.tolist() == [1.0, -0.5, 0.0]


def test_theories_bnd_cout():
    assert theories(q("(assert (<= Y[0,0] 1.0))"))["arithmetic-complexity"] == "BND"
    assert theories(q("(assert (<= Y[0,0] Y[0,1]))"))["arithmetic-complexity"] == "COUT"
    assert theories(q("(assert (<= (* 2.0 Y[0,0]) Y[0,1]))"))["arithmetic-complexity"] == "LIN"


def test_non_linear_refused_by_theory_name():
    with pytest.raises(SpecificationError, match="POLY"):
        q("(assert (<= (* X[0,0] X[0,1]) 1.0))")


@pytest.mark.parametrize("body, what", [
    ("(assert (<= X[0,5] 1.0))", "IndexOutOfBounds"),
    ("(assert (<= W[0,0] 1.0))", "UndeclaredVariable"),
    ("(assert (<= X[0,0] 1))", "TypeMismatch"),      # an integer constant is not a real constant
    ("(assert (<= X[0,0] 1.0)", "syntax error"),
])
def test_package_errors_are_one_line(body, what):
    with pytest.raises(SpecificationError) as e:
        q(body)
    assert "\n" not in str(e.value) and what in str(e.value) and str(e.value).startswith("t.vnnlib")


def test_unknown_element_type_and_dnf_cap(monkeypatch):
    with pytest.raises(SpecificationError, match="Foo"):
        q("(assert (<= X[0,0] 1.0))", "(declare-network f (declare-input X Foo [1,3]) (declare-output Y real [1,2]))")
    import nncertify.relax.vnnlib2 as m
    monkeypatch.setattr(m, "MAX_CLAUSES", 10)
    ors = " ".join("(assert (or (<= Y[0,0] 1.0) (<= Y[0,1] 1.0)))" for _ in range(4))
    with pytest.raises(SpecificationError, match="disjunctive normal form"):
        q(ors)


# ------------------------------------------------------------------------------- VNN-COMP 2021 in 2.0 vs 1.0
def _same_query(q1, tr, shape, n_out, q1_inner=None):
    """The 2.0 translation equals the 1.0 reader's Query exactly: the same clauses in the same order, the
    same boxes bit for bit (both readers round every decimal outward, relax/outward.py), the same rows
    once the 2.0 columns (the outputs the rows use) are placed at their output index (the other columns
    zero), the same right-hand sides bit for bit; and the same inward boxes (where witnesses must lie)."""
    assert len(q1.specs) == len(tr.query.specs) == len(tr.inner)
    assert all(name == "Y" for name, _ in tr.outputs)
    for k, (s1, s2) in enumerate(zip(q1.specs, tr.query.specs)):
        assert torch.equal(s1.lower.reshape(-1), s2.lower) and torch.equal(s1.upper.reshape(-1), s2.upper)
        C = torch.zeros(s2.C.shape[0], n_out, dtype=torch.float64)
        for j, (_, flat) in enumerate(tr.outputs):
            C[:, flat] = s2.C[:, j]
        assert torch.equal(C, s1.C) and torch.equal(s1.d, s2.d)
        if q1_inner is not None:
            assert torch.equal(q1_inner.specs[k].lower.reshape(-1), tr.inner[k][0])
            assert torch.equal(q1_inner.specs[k].upper.reshape(-1), tr.inner[k][1])


def vnncomp2021_properties(base):
    """The 40 VNN-COMP 2021 properties: ACAS Xu prop_1..prop_10 and MNIST-FC's 30."""
    props = [(p, (1, 1, 1, 5), 5) for p in sorted((base / "acasxu").glob("prop_*.vnnlib"))]
    props += [(p, (1, 784, 1), 10) for p in sorted((base / "mnistfc").glob("prop_*.vnnlib"))]
    return props


def test_vnncomp2021_properties_translate_exactly_like_vnnlib_1(shared_data):
    """Every one of the 40 VNN-COMP 2021 properties rewritten in 2.0 (tests/vnnlib2_convert.py) gives
    exactly the 1.0 reader's Query (boxes, rows, right-hand sides, disjunction structure), so both paths
    hand the engine the same problem and their verdicts agree by construction (bench/vnnlib2_vnncomp2021.py
    and tests/test_solver_subprocess.py run both)."""
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from vnnlib2_convert import convert_file
    from nncertify.relax.vnnlib import read_vnnlib
    from nncertify.relax.vnnlib import to_query as to_query_1

    props = vnncomp2021_properties(shared_data / "vnncomp2021")
    assert len(props) == 40 and sum(n == 5 for _, _, n in props) == 10
    n_clauses = 0
    for path, shape, n_out in props:
        spec = read_vnnlib(path)
        q1 = to_query_1(spec, shape[1:], n_out)
        q1_in = to_query_1(spec, shape[1:], n_out, inner=True)
        tr = to_query(parse_vnnlib2(convert_file(path, shape, n_out), path.name))
        assert tr.n_inputs == int(np.prod(shape)) and tr.dropped == spec.dropped_empty, path.name
        _same_query(q1, tr, shape, n_out, q1_in)
        n_clauses += len(q1.specs)
    assert n_clauses > 40  # ACAS Xu's disjunctive properties and MNIST-FC's 9 clauses each are compared


def test_inner_box_is_inside_the_exact_box():
    tr = to_query(q("(assert (>= X[0,0] 0.1)) (assert (<= X[0,0] 0.3)) (assert (== X[0,1] 0.5))"
                    "(assert (<= X[0,2] 1.0)) (assert (<= Y[0,0] 0.0))"))
    lo, hi = tr.inner[0]
    assert lo[0].item() == up("0.1") and hi[0].item() == down("0.3")      # inward
    assert lo[1].item() == hi[1].item() == 0.5                              # exact: the same
    assert lo[2].item() == -INF and hi[2].item() == 1.0
    s = tr.query.specs[0]
    assert s.lower[0].item() == down("0.1") and s.upper[0].item() == up("0.3")  # the engine's box: outward
