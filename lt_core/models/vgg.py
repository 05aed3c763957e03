"""CIFAR VGG-16/19 with BatchNorm and a single linear classifier (open_lth style)."""

from __future__ import annotations

import torch
from torch import nn

from lt_core.models.base import CIFAR_SGD, PrunableModel

# Frankle & Carbin 2019: VGG-19 with SGD 0.1 needs warmup (10K iterations) to find tickets.
DEFAULTS = {"data": {"name": "cifar10"}, "train": {**CIFAR_SGD, "warmup": "10000it"},
            "pruning": {"scope": "global", "rate": 0.2}}

POOL = "M"
# fmt: off
VGG16_PLAN: list[int | str] = [
    64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL, 512, 512, 512, POOL, 512, 512, 512, POOL,
]
VGG19_PLAN: list[int | str] = [
    64, 64, POOL, 128, 128, POOL, 256, 256, 256, 256, POOL,
    512, 512, 512, 512, POOL, 512, 512, 512, 512, POOL,
]
# fmt: on


class VGG(PrunableModel):
    """conv3x3 -> BN -> ReLU blocks with max-pools per the plan, global average pool, Linear."""

    output_layer = "fc"

    def __init__(
        self, plan: list[int | str], input_shape: tuple[int, int, int], num_classes: int
    ) -> None:
        super().__init__()
        channels = input_shape[0]
        layers: list[nn.Module] = []
        for entry in plan:
            if entry == POOL:
                layers.append(nn.MaxPool2d(2))
                continue
            assert isinstance(entry, int)
            layers += [
                nn.Conv2d(channels, entry, 3, padding=1),
                nn.BatchNorm2d(entry),
                nn.ReLU(),
            ]
            channels = entry
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.pool(self.features(x)), 1)
        return self.fc(x)


def vgg16(input_shape: tuple[int, int, int], num_classes: int) -> VGG:
    """VGG-16 with BatchNorm for 32x32 inputs."""
    return VGG(VGG16_PLAN, input_shape, num_classes)


def vgg19(input_shape: tuple[int, int, int], num_classes: int) -> VGG:
    """VGG-19 with BatchNorm for 32x32 inputs."""
    return VGG(VGG19_PLAN, input_shape, num_classes)
