"""Conv-2/4/6: the CIFAR-10 convolutional networks of Frankle & Carbin (2019)."""

from __future__ import annotations

import torch
from torch import nn

from lt_core.models.base import PrunableModel


def frankle_defaults(lr: float, length: str, conv_rate: float) -> dict:
    """Frankle & Carbin 2019: Adam, batch 60; conv layers at conv_rate, fc 20%, output 10%."""
    return {
        "data": {"name": "cifar10"},
        "train": {"optimizer": "adam", "lr": lr, "batch_size": 60, "length": length},
        "pruning": {"scope": "layerwise", "rate": 0.2,
                    "layer_rates": {"conv": conv_rate, "output": 0.1}},
    }


CONV2_DEFAULTS = frankle_defaults(2e-4, "20000it", 0.1)
CONV4_DEFAULTS = frankle_defaults(3e-4, "25000it", 0.1)
CONV6_DEFAULTS = frankle_defaults(3e-4, "30000it", 0.15)


class ConvNet(PrunableModel):
    """Pairs of 3x3 convs (each pair followed by 2x2 max-pool), then FC 256, 256, num_classes."""

    output_layer = "fc3"

    def __init__(
        self, channel_plan: list[int], input_shape: tuple[int, int, int], num_classes: int
    ) -> None:
        super().__init__()
        channels, height, width = input_shape
        layers: list[nn.Module] = []
        for index, out_channels in enumerate(channel_plan):
            layers += [nn.Conv2d(channels, out_channels, 3, padding=1), nn.ReLU()]
            channels = out_channels
            if index % 2 == 1:
                layers.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
        self.features = nn.Sequential(*layers)
        self.fc1 = nn.Linear(channels * height * width, 256)
        self.fc2 = nn.Linear(256, 256)
        self.fc3 = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.features(x), 1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


def conv2(input_shape: tuple[int, int, int], num_classes: int) -> ConvNet:
    """Conv-2: 64, 64, pool."""
    return ConvNet([64, 64], input_shape, num_classes)


def conv4(input_shape: tuple[int, int, int], num_classes: int) -> ConvNet:
    """Conv-4: 64, 64, pool, 128, 128, pool."""
    return ConvNet([64, 64, 128, 128], input_shape, num_classes)


def conv6(input_shape: tuple[int, int, int], num_classes: int) -> ConvNet:
    """Conv-6: 64, 64, pool, 128, 128, pool, 256, 256, pool."""
    return ConvNet([64, 64, 128, 128, 256, 256], input_shape, num_classes)
