"""User-code factory used by tests of ``package.module:factory`` references."""
from torch import nn


def tiny_net(hidden: int = 4) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, hidden), nn.ReLU(),
                         nn.Linear(hidden, 2))
