"""Model registry: every builder takes (input_shape as (C, H, W), num_classes); each model's
default hyperparameters live beside it (../shared/lth-reference.md). Adding a model is a file in
this package and a line in ``MODELS``; its name is then a valid ``model.name``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lt_core.models import conv, lenet, resnet18, resnet_cifar, vgg
from lt_core.models.base import PrunableModel


@dataclass(frozen=True)
class ModelEntry:
    build: Callable[[tuple[int, int, int], int], PrunableModel]
    defaults: dict  # config defaults, merged under the user's config


MODELS: dict[str, ModelEntry] = {
    "lenet_300_100": ModelEntry(lenet.lenet_300_100, lenet.DEFAULTS),
    "conv2": ModelEntry(conv.conv2, conv.CONV2_DEFAULTS),
    "conv4": ModelEntry(conv.conv4, conv.CONV4_DEFAULTS),
    "conv6": ModelEntry(conv.conv6, conv.CONV6_DEFAULTS),
    "vgg16": ModelEntry(vgg.vgg16, vgg.DEFAULTS),
    "vgg19": ModelEntry(vgg.vgg19, vgg.DEFAULTS),
    "resnet20": ModelEntry(resnet_cifar.resnet20, resnet_cifar.DEFAULTS),
    "resnet56": ModelEntry(resnet_cifar.resnet56, resnet_cifar.DEFAULTS),
    "resnet18": ModelEntry(resnet18.resnet18, resnet18.DEFAULTS),
}


def build_model(name: str, input_shape: tuple[int, int, int], num_classes: int) -> PrunableModel:
    """Build the registered model ``name`` for inputs of ``input_shape`` and ``num_classes``."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(sorted(MODELS))}")
    return MODELS[name].build(input_shape, num_classes)


__all__ = ["MODELS", "ModelEntry", "PrunableModel", "build_model"]
