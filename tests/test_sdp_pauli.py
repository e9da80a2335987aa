"""The released Pauli et al. (ICLR'24) nets: the paper's constraint reproduces Table 1, ours is tighter.

Skipped when ../shared/data is absent.  Independent truths: the published NSR value 17,432 (18x32),
the reference re-run values (2fc_16: NSR 22.594, lifted 22.074) and sampled gradient norms."""

from pathlib import Path

import pytest

from nncertify import sdp
from nncertify.models.matlab import load_pauli_mat
from nncertify.sdp import solve as S

DATA = Path(__file__).parents[1].parent / "shared" / "data" / "pauli2024_maxmin"
needs_data = pytest.mark.skipif(not DATA.exists(), reason=f"shared data folder {DATA} is absent")


@needs_data
def test_2fc_16_nsr_and_lifted():
    net = load_pauli_mat(DATA / "weights_l2_2fc_16.mat")
    nsr = sdp.lipschitz_bound(net, method="nsr", solver="CLARABEL")
    lif = sdp.lipschitz_bound(net, method="lifted", solver="CLARABEL")
    lb = sdp.sampled_lower_bound(net, n=1000).value
    assert nsr.certified and abs(nsr.certified_value / 22.594 - 1) < 1e-3
    assert lif.certified and abs(lif.certified_value / 22.074 - 1) < 1e-3
    assert lb <= lif.certified_value <= nsr.certified_value <= nsr.naive_product


@needs_data
@pytest.mark.slow
def test_18fc_32_reproduces_published_nsr_and_lifted_beats_it():
    net = load_pauli_mat(DATA / "weights_l2_18fc_32.mat")
    nsr = sdp.lipschitz_bound(net, method="nsr", solver="CLARABEL")
    assert nsr.certified and abs(nsr.certified_value / 17432 - 1) < 0.01
    lif = sdp.lipschitz_bound(net, method="lifted", solver="FIRST_ORDER", first_order_iters=100)
    assert lif.certified and lif.certified_value < 0.8 * nsr.certified_value


def test_mosek_only_with_licence(monkeypatch, tmp_path):
    monkeypatch.setenv("MOSEKLM_LICENSE_FILE", str(tmp_path / "missing.lic"))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert not S.mosek_licensed()
    assert S.choose_solver(None, [10]) == "CLARABEL"
    assert S.choose_solver("auto", [500]) == "SCS"
    from nncertify.models.errors import InvalidArgumentError
    with pytest.raises(InvalidArgumentError, match="licence"):
        S.choose_solver("MOSEK", [10])
