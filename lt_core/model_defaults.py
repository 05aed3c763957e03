"""Per-model default hyperparameters, from ../shared/lth-reference.md (papers and open_lth).

A user's YAML is merged on top of these, so a config only needs to name what it changes.
"""

from __future__ import annotations

_CIFAR_SGD = {
    "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "batch_size": 128,
    "length": "160ep", "schedule": "multistep", "milestones": ["80ep", "120ep"], "gamma": 0.1,
}


def _frankle_conv(lr: float, length: str, conv_rate: float) -> dict:
    # Frankle & Carbin 2019: Adam, batch 60; conv layers at conv_rate, fc 20%, output 10% per level.
    return {
        "data": {"name": "cifar10"},
        "train": {"optimizer": "adam", "lr": lr, "batch_size": 60, "length": length},
        "pruning": {"scope": "layerwise", "rate": 0.2,
                    "layer_rates": {"conv": conv_rate, "output": 0.1}},
    }


MODEL_DEFAULTS: dict[str, dict] = {
    # Frankle & Carbin 2019: Adam 1.2e-3, batch 60, 50K iterations, hidden 20% / output 10%.
    "lenet_300_100": {
        "data": {"name": "mnist"},
        "train": {"optimizer": "adam", "lr": 1.2e-3, "batch_size": 60, "length": "50000it"},
        "pruning": {"scope": "layerwise", "rate": 0.2, "layer_rates": {"output": 0.1}},
    },
    "conv2": _frankle_conv(2e-4, "20000it", 0.1),
    "conv4": _frankle_conv(3e-4, "25000it", 0.1),
    "conv6": _frankle_conv(3e-4, "30000it", 0.15),
    # open_lth defaults for CIFAR ResNets; rewinding to 500it, as deep nets need (Frankle et al.).
    "resnet20": {"data": {"name": "cifar10"}, "train": _CIFAR_SGD,
                 "pruning": {"scope": "global", "rate": 0.2}, "imp": {"rewind": "500it"}},
    "resnet56": {"data": {"name": "cifar10"}, "train": _CIFAR_SGD,
                 "pruning": {"scope": "global", "rate": 0.2}, "imp": {"rewind": "500it"}},
    "resnet18": {"data": {"name": "cifar10"}, "train": _CIFAR_SGD,
                 "pruning": {"scope": "global", "rate": 0.2}, "imp": {"rewind": "500it"}},
    # Frankle & Carbin 2019: VGG-19 with SGD 0.1 needs warmup (10K iterations) to find tickets.
    "vgg16": {"data": {"name": "cifar10"}, "train": {**_CIFAR_SGD, "warmup": "10000it"},
              "pruning": {"scope": "global", "rate": 0.2}},
    "vgg19": {"data": {"name": "cifar10"}, "train": {**_CIFAR_SGD, "warmup": "10000it"},
              "pruning": {"scope": "global", "rate": 0.2}},
}
