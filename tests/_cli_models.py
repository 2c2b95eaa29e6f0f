"""Small architectures for the CLI tests, importable as ``_cli_models:<factory>``."""

import torch
from torch import nn


def small_cnn(num_classes: int = 5) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes),
    )


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
