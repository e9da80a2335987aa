"""The normalized description: traced networks equal their modules; refusals name the layer."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nncertify.models import (GroupSort, HouseholderActivation, MaxMin, ModelLoadError, Normalize, Residual, ShapeMismatchError,
                    UnsupportedOperationError, affine_matrix, chain_stages, from_module)


class UserBlock(nn.Module):
    """A user module with functional ops, a view with x.size(0) and a residual add."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 4 * 4, 16)
        self.fc2 = nn.Linear(16, 16)
        self.out = nn.Linear(16, 5)

    def forward(self, x):
        x = (x - 0.5) / 0.25
        x = F.relu(self.bn(self.conv(x)))
        x = F.avg_pool2d(x, 2) if False else nn.functional.relu(x)
        x = x.view(x.size(0), -1)
        h = torch.tanh(self.fc(x))
        h = h + torch.sigmoid(self.fc2(h))
        return self.out(F.leaky_relu(h, 0.1))


def cases():
    torch.manual_seed(0)
    yield "mlp", nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)), (6,)
    yield "cnn", nn.Sequential(nn.Conv2d(1, 3, 3, stride=2, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
                               nn.AvgPool2d(2), nn.Flatten(), nn.Linear(12, 4)), (1, 8, 8)
    yield "lipschitz", nn.Sequential(Normalize(0.1, 2.0), nn.Linear(8, 8), MaxMin(), nn.Linear(8, 8), GroupSort(4),
                                     nn.Linear(8, 8), HouseholderActivation(8), nn.Linear(8, 2)), (8,)
    yield "residual", nn.Sequential(nn.Linear(6, 8), Residual(nn.Sequential(nn.Linear(8, 8), MaxMin())),
                                    Residual(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))),
                                    nn.Linear(8, 2)), (6,)
    yield "user", UserBlock(), (2, 4, 4)
    yield "bn1d-unfoldable", nn.Sequential(nn.BatchNorm1d(5), nn.Linear(5, 3), nn.LeakyReLU(0.2), nn.Sigmoid()), (5,)


@pytest.mark.parametrize("name,module,shape", list(cases()), ids=[c[0] for c in cases()])
def test_network_equals_module(name, module, shape):
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
    module.eval()
    net = from_module(module, shape)
    x = torch.randn(64, *shape)
    torch.testing.assert_close(net(x), module(x), rtol=1e-5, atol=1e-5)
    net64 = from_module(module.double(), shape)
    torch.testing.assert_close(net64(x.double()), module(x.double()), rtol=1e-10, atol=1e-10)


def test_batchnorm_is_folded_into_the_preceding_layer():
    m = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.ReLU()).eval()
    m[1].running_mean.uniform_()
    net = from_module(m)
    assert net.op_counts() == {"linear": 1, "relu": 1}


def test_parametrizations_are_materialized():
    torch.manual_seed(0)
    lin = nn.utils.parametrizations.orthogonal(nn.Linear(6, 6))
    sn = nn.utils.parametrizations.spectral_norm(nn.Linear(6, 4))
    old = nn.utils.spectral_norm(nn.Linear(4, 3))
    m = nn.Sequential(lin, MaxMin(), sn, nn.ReLU(), old).eval()
    net = from_module(m)
    x = torch.randn(10, 6)
    torch.testing.assert_close(net(x), m(x))
    W = net.nodes[1].params["weight"]
    torch.testing.assert_close(W @ W.T, torch.eye(6), atol=1e-5, rtol=0)
    assert torch.linalg.matrix_norm(net.nodes[3].params["weight"], 2) <= 1 + 1e-4


def test_unsupported_module_names_path_and_lists_supported():
    m = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.ReLU(), nn.MaxPool1d(2)))
    with pytest.raises(UnsupportedOperationError) as e:
        from_module(m, (1, 4))
    assert "MaxPool1d" in str(e.value) and "'1.1'" in str(e.value) and "supported:" in str(e.value)


def test_unsupported_function_is_reported():
    class M(nn.Module):
        def forward(self, x):
            return torch.exp(x)
    with pytest.raises(UnsupportedOperationError, match="exp"):
        from_module(M(), (3,))


def test_product_of_tensors_is_refused():
    class M(nn.Module):
        def forward(self, x):
            return x * x
    with pytest.raises(UnsupportedOperationError, match="only residual"):
        from_module(M(), (3,))


def test_shape_errors_are_clear():
    with pytest.raises(ShapeMismatchError, match="shape"):
        from_module(nn.Sequential(nn.Linear(4, 3)), (5,))
    with pytest.raises(ShapeMismatchError, match="input_shape"):
        from_module(nn.Sequential(nn.Conv2d(1, 1, 3)))
    net = from_module(nn.Sequential(nn.Linear(4, 3)))
    with pytest.raises(ShapeMismatchError, match="expects"):
        net(torch.zeros(2, 5))


def test_chain_stages_and_affine_matrix_reproduce_the_network():
    torch.manual_seed(0)
    m = nn.Sequential(Normalize(0.5, 0.2), nn.Conv2d(1, 2, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(8, 5),
                      nn.ReLU(), nn.ReLU(), nn.Linear(5, 3)).eval()
    net = from_module(m, (1, 5, 5))
    stages = chain_stages(net)
    assert [s.kind for s in stages] == ["affine", "relu", "affine", "relu", "affine", "relu", "affine"]
    x = torch.randn(20, 1, 5, 5)
    h = x.reshape(20, -1)
    for s in stages:
        h = h @ s.W.T + s.b if s.kind == "affine" else torch.relu(h)
    torch.testing.assert_close(h, m(x), rtol=1e-5, atol=1e-5)
    W, b = affine_matrix(net.nodes[2], (1, 5, 5))
    assert W.shape == (2 * 2 * 2, 25)


def test_residual_network_has_no_chain_stages():
    m = nn.Sequential(nn.Linear(4, 4), Residual(nn.Sequential(nn.Linear(4, 4), nn.ReLU())))
    with pytest.raises(UnsupportedOperationError, match="residual"):
        chain_stages(from_module(m))


def test_fingerprint_and_finite_check():
    m = nn.Sequential(nn.Linear(4, 3))
    a, b = from_module(m), from_module(m)
    assert a.fingerprint() == b.fingerprint()
    with torch.no_grad():
        m[0].weight[0, 0] += 1e-3
    assert from_module(m).fingerprint() != a.fingerprint()
    with torch.no_grad():
        m[0].bias[1] = float("nan")
    with pytest.raises(ModelLoadError, match="bias"):
        from_module(m).check_finite()


def test_network_module_is_differentiable_in_its_parameters():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2))
    mod = from_module(m).to_module()
    x = torch.randn(5, 4)
    mod(x).sum().backward()
    m(x).sum().backward()
    grads = [p.grad for p in mod.parameters()]
    assert all(g is not None for g in grads)
    torch.testing.assert_close(grads[0], m[0].weight.grad)
