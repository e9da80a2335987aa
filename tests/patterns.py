"""Helpers shared by several test files: every Clarke-Jacobian choice of an activation layer, written
independently of the package (exhaustive enumeration for tiny networks), and a small MLP factory."""

import itertools

import numpy as np


def relu_patterns(n: int) -> list[np.ndarray]:
    """diag(d) for every d in {0, 1}^n."""
    return [np.diag(p) for p in itertools.product([0.0, 1.0], repeat=n)]


def maxmin_patterns(n: int) -> list[np.ndarray]:
    """Every Jacobian of adjacent-pair MaxMin on n features: per pair the identity or the swap."""
    out = []
    for p in itertools.product([0, 1], repeat=n // 2):
        P = np.zeros((n, n))
        for j, s in enumerate(p):
            a, b = 2 * j, 2 * j + 1
            if s:
                P[a, a] = P[b, b] = 1
            else:
                P[a, b] = P[b, a] = 1
        out.append(P)
    return out


def mlp(widths, act=None, seed=0):
    """A float64 MLP ``widths[0] -> ... -> widths[-1]`` with ``act`` (default ReLU) after each hidden layer."""
    import torch
    from torch import nn
    act = act or nn.ReLU
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(widths[:-2], widths[1:-1]):
        layers += [nn.Linear(a, b), act()]
    layers.append(nn.Linear(widths[-2], widths[-1]))
    return nn.Sequential(*layers).double()


def relu_network(seed, widths):
    """A float32 ReLU MLP as a package ``Network`` (torch's default init after ``manual_seed(seed)``)."""
    import torch
    from torch import nn

    from nncertify.models import from_module
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return from_module(nn.Sequential(*layers[:-1]), (widths[0],))


def conv_relu_network(seed):
    """A float32 conv net with a convolution before every ReLU and odd shapes (1x3x3 input), as a ``Network``."""
    import torch
    from torch import nn

    from nncertify.models import from_module
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(1, 3, 2), nn.ReLU(), nn.Conv2d(3, 4, 2), nn.ReLU(), nn.Flatten(), nn.Linear(4, 3))
    return from_module(m, (1, 3, 3))
