"""MaxMin, GroupSort and Householder: 1-Lipschitz, sum/norm preservation, gradients, conventions."""

import pytest
import torch

from nncertify.models import GroupSort, HouseholderActivation, MaxMin


def layers(n=12):
    torch.manual_seed(0)
    return [MaxMin(), MaxMin("halves"), GroupSort(2), GroupSort(3), GroupSort(4, descending=False), GroupSort(n),
            HouseholderActivation(n, 2), HouseholderActivation(n, 3), HouseholderActivation(n, 4, torch.randn(n // 4, 4))]


@pytest.mark.parametrize("layer", layers(), ids=lambda l: repr(l))
def test_one_lipschitz_by_sampling(layer):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(20000, 12, generator=g, dtype=torch.float64)
    y = x + 0.3 * torch.randn(20000, 12, generator=g, dtype=torch.float64)
    layer = layer.double()
    ratio = (layer(x) - layer(y)).norm(dim=1) / (x - y).norm(dim=1)
    assert ratio.max() <= 1 + 1e-12
    assert ratio.max() > 0.99  # and tight: some pairs are (almost) isometric


@pytest.mark.parametrize("layer", [MaxMin(), MaxMin("halves"), GroupSort(3), GroupSort(4, descending=False)])
def test_sum_preserved_per_group(layer):
    x = torch.randn(500, 12, dtype=torch.float64)
    y = layer.double()(x)
    g = 2 if isinstance(layer, MaxMin) else layer.group_size
    if isinstance(layer, MaxMin) and layer.layout == "halves":
        torch.testing.assert_close(y[:, :6] + y[:, 6:], x[:, :6] + x[:, 6:])
    else:
        torch.testing.assert_close(y.reshape(500, -1, g).sum(-1), x.reshape(500, -1, g).sum(-1))
    # sorting is a permutation of each group
    assert torch.allclose(torch.sort(y, 1).values.sum(1), torch.sort(x, 1).values.sum(1))


def test_householder_preserves_norm_and_projection():
    torch.manual_seed(0)
    layer = HouseholderActivation(8, 4, torch.randn(2, 4)).double()
    x = torch.randn(1000, 8, dtype=torch.float64)
    y = layer(x)
    torch.testing.assert_close(y.reshape(1000, 2, 4).norm(dim=-1), x.reshape(1000, 2, 4).norm(dim=-1))
    v = layer.unit_v()
    # (I - v v^T) sigma_v(z) = (I - v v^T) z  (property (ii') of the reference)
    P = torch.eye(4, dtype=torch.float64) - v[0][:, None] * v[0][None, :]
    torch.testing.assert_close(y[:, :4] @ P, x[:, :4] @ P)
    # explicit definition: z if v^T z > 0 else (I - 2 v v^T) z
    z = x[:, 4:]
    s = z @ v[1]
    expect = torch.where(s[:, None] > 0, z, z - 2 * s[:, None] * v[1])
    torch.testing.assert_close(y[:, 4:], expect)


def test_maxmin_conventions():
    x = torch.tensor([[1.0, 3.0, -2.0, -5.0]])
    assert MaxMin()(x).tolist() == [[3.0, 1.0, -2.0, -5.0]]
    assert MaxMin("halves")(x).tolist() == [[1.0, 3.0, -2.0, -5.0]]
    assert GroupSort(2)(x).tolist() == MaxMin()(x).tolist()
    assert GroupSort(4, descending=False)(x).tolist() == [[-5.0, -2.0, 1.0, 3.0]]
    # default Householder (v = (1,-1)/sqrt 2) is MaxMin
    torch.testing.assert_close(HouseholderActivation(4)(x), MaxMin()(x))


@pytest.mark.parametrize("layer", layers(12)[:-1], ids=lambda l: repr(l))
def test_gradients_match_finite_differences(layer):
    torch.manual_seed(3)
    x = torch.randn(3, 12, dtype=torch.float64, requires_grad=True)  # generic points: away from ties
    assert torch.autograd.gradcheck(layer.double(), (x,), eps=1e-7, atol=1e-6)


def test_bad_group_sizes_are_clear_errors():
    from nncertify.models import ShapeMismatchError
    with pytest.raises(ShapeMismatchError, match="groups of 4"):
        GroupSort(4)(torch.randn(2, 6))
    with pytest.raises(ShapeMismatchError):
        HouseholderActivation(6, 4)
