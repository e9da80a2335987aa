"""sdp.verify: the float64 positive-definiteness proof and the multiplier repair never certify wrongly."""

import numpy as np
import pytest

from nncertify.sdp import verify as V


def _with_eigs(eigs, seed=0):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((len(eigs), len(eigs))))
    return (Q * np.asarray(eigs)) @ Q.T


def test_prove_pd_accepts_clearly_pd_and_rejects_indefinite():
    assert V.prove_pd(_with_eigs(np.linspace(1e-3, 10, 40)))
    assert not V.prove_pd(_with_eigs(np.r_[-1e-9, np.linspace(1, 10, 39)]))
    assert not V.prove_pd(_with_eigs(np.r_[0.0, np.linspace(1, 10, 39)]))   # singular: not proven
    A = np.eye(3)
    A[0, 1] = np.nan
    assert not V.prove_pd(A)
    assert not V.prove_pd(np.eye(3) * np.inf)


def test_prove_pd_respects_formation_error():
    A = _with_eigs(np.linspace(1e-6, 1, 20))
    assert V.prove_pd(A)
    assert not V.prove_pd(A, err=1e-5)     # the exact matrix could be indefinite


def test_certify_lmax_is_an_upper_bound():
    for s in range(5):
        Q = _with_eigs(np.random.default_rng(s).uniform(-1, 5, 30), seed=s)
        rho = V.certify_lmax(Q)
        assert rho >= np.linalg.eigvalsh(Q)[-1]
        assert rho <= np.linalg.eigvalsh(Q)[-1] * (1 + 1e-8) + 1e-12


def test_sqrt_up_and_round_up():
    for x in [2.0, 1e-300, 3.3, 1e300]:
        assert V.sqrt_up(x) ** 2 >= x or V.sqrt_up(x) > np.sqrt(x)
        assert V.round_up(x) > x


def test_clarabel_refused_before_it_can_exhaust_memory():
    """Issue 9 resource limits: Clarabel's KKT block is dense in each PSD cone; a 352-wide LMI was
    OOM-killed on a 24 GB machine. Asking for it on such a problem is a clear error, not a crash."""
    import pytest as _pytest
    from nncertify.models.errors import InvalidArgumentError
    from nncertify.sdp import solve as S
    assert S.choose_solver("CLARABEL", [64]) == "CLARABEL"
    with _pytest.raises(InvalidArgumentError, match="GiB"):
        S.choose_solver("CLARABEL", [352])
    assert S.choose_solver(None, [352]) == "SCS"
