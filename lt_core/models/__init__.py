"""Model registry: every builder takes (input_shape as (C, H, W), num_classes)."""

from __future__ import annotations

from collections.abc import Callable

from lt_core.models.base import PrunableModel
from lt_core.models.conv import conv2, conv4, conv6
from lt_core.models.lenet import lenet_300_100
from lt_core.models.resnet18 import resnet18
from lt_core.models.resnet_cifar import resnet20, resnet56
from lt_core.models.vgg import vgg16, vgg19

MODELS: dict[str, Callable[[tuple[int, int, int], int], PrunableModel]] = {
    "lenet_300_100": lenet_300_100,
    "conv2": conv2,
    "conv4": conv4,
    "conv6": conv6,
    "vgg16": vgg16,
    "vgg19": vgg19,
    "resnet20": resnet20,
    "resnet56": resnet56,
    "resnet18": resnet18,
}


def build_model(name: str, input_shape: tuple[int, int, int], num_classes: int) -> PrunableModel:
    """Build the registered model ``name`` for inputs of ``input_shape`` and ``num_classes``."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(sorted(MODELS))}")
    return MODELS[name](input_shape, num_classes)


__all__ = ["MODELS", "PrunableModel", "build_model"]
