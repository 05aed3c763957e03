"""LeNet-300-100: the fully connected MNIST network of Frankle & Carbin (2019)."""

from __future__ import annotations

import torch
from torch import nn

from lt_core.models.base import PrunableModel

# Frankle & Carbin 2019: Adam 1.2e-3, batch 60, 50K iterations, hidden 20% / output 10% per level.
DEFAULTS = {
    "data": {"name": "mnist"},
    "train": {"optimizer": "adam", "lr": 1.2e-3, "batch_size": 60, "length": "50000it"},
    "pruning": {"scope": "layerwise", "rate": 0.2, "layer_rates": {"output": 0.1}},
}


class LeNet300100(PrunableModel):
    """Flatten, then Linear C*H*W -> 300 -> 100 -> num_classes with ReLU between."""

    output_layer = "fc3"

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        channels, height, width = input_shape
        self.fc1 = nn.Linear(channels * height * width, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


def lenet_300_100(input_shape: tuple[int, int, int], num_classes: int) -> LeNet300100:
    """LeNet-300-100 for inputs of shape (C, H, W)."""
    return LeNet300100(input_shape, num_classes)
