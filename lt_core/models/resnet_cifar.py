"""He et al. (2016) CIFAR ResNets: 3 stages of 16/32/64 channels, n BasicBlocks each."""

from __future__ import annotations

import torch
from torch import nn

from lt_core.models.base import CIFAR_SGD, PrunableModel

# open_lth defaults for CIFAR ResNets; rewinding to 500it, as deep nets need (Frankle et al.).
DEFAULTS = {"data": {"name": "cifar10"}, "train": CIFAR_SGD,
            "pruning": {"scope": "global", "rate": 0.2}, "imp": {"rewind": "500it"}}


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual; 1x1 conv + BN shortcut when the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(PrunableModel):
    """conv3x3(16)-BN-ReLU, three stages of ``blocks_per_stage`` blocks, average pool, Linear."""

    output_layer = "fc"

    def __init__(
        self, blocks_per_stage: int, input_shape: tuple[int, int, int], num_classes: int
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(input_shape[0], 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        blocks: list[nn.Module] = []
        in_channels = 16
        for stage, out_channels in enumerate([16, 32, 64]):
            for index in range(blocks_per_stage):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(BasicBlock(in_channels, out_channels, stride))
                in_channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        x = torch.flatten(self.pool(self.blocks(x)), 1)
        return self.fc(x)


def resnet20(input_shape: tuple[int, int, int], num_classes: int) -> CifarResNet:
    """ResNet-20 (n=3)."""
    return CifarResNet(3, input_shape, num_classes)


def resnet56(input_shape: tuple[int, int, int], num_classes: int) -> CifarResNet:
    """ResNet-56 (n=9)."""
    return CifarResNet(9, input_shape, num_classes)
