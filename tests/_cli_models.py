"""Small architectures for the CLI tests, importable as ``_cli_models:<factory>``."""

import torch
from torch import nn


def small_cnn(num_classes: int = 5, width: int = 8) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes),
    )


def mlp() -> nn.Module:
    """No BatchNorm (for --reset-bn)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.ReLU(), nn.Linear(16, 5))


def failing() -> nn.Module:
    raise RuntimeError("no GPU here")


class _DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:  # neither torch.fx nor torch.export can trace this
            return self.fc(x)
        return x


def untraceable() -> nn.Module:
    return _DataDependent()


def not_a_module():
    return torch.zeros(3)
