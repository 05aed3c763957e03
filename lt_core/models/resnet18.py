"""torchvision ResNet-18 adapted to 32x32 inputs (3x3 stride-1 stem, no max-pool)."""

from __future__ import annotations

import torch
from torch import nn

from lt_core.models.base import CIFAR_SGD, PrunableModel

DEFAULTS = {"data": {"name": "cifar10"}, "train": CIFAR_SGD,
            "pruning": {"scope": "global", "rate": 0.2}, "imp": {"rewind": "500it"}}


class ResNet18(PrunableModel):
    """torchvision ResNet-18 held as ``net``, with a CIFAR-sized stem."""

    output_layer = "net.fc"

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int) -> None:
        import torchvision  # here, not at the top: every other model (and sweep) starts 1 s faster

        super().__init__()
        self.net = torchvision.models.resnet18(num_classes=num_classes)
        self.net.conv1 = nn.Conv2d(input_shape[0], 64, 3, stride=1, padding=1, bias=False)
        self.net.maxpool = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def resnet18(input_shape: tuple[int, int, int], num_classes: int) -> ResNet18:
    """ResNet-18 for 32x32 inputs."""
    return ResNet18(input_shape, num_classes)
