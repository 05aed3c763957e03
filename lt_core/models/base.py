"""What every model in the registry provides: its prunable weights and its output layer."""

from __future__ import annotations

from torch import nn

# open_lth's CIFAR recipe, shared by the ResNets and VGGs (../shared/lth-reference.md).
CIFAR_SGD = {
    "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "batch_size": 128,
    "length": "160ep", "schedule": "multistep", "milestones": ["80ep", "120ep"], "gamma": 0.1,
}


class PrunableModel(nn.Module):
    """A network whose conv and linear weights can be pruned.

    Subclasses set ``output_layer`` to the qualified name of the final classifier module
    (e.g. ``"fc3"``); its weight is ``f"{output_layer}.weight"``. Biases and BatchNorm parameters
    are never prunable.
    """

    output_layer: str = ""

    def prunable_names(self) -> list[str]:
        """Names (as in ``named_parameters``) of every conv/linear weight, in definition order."""
        return [
            f"{name}.weight"
            for name, module in self.named_modules()
            if isinstance(module, (nn.Conv2d, nn.Linear))
        ]

    def output_weight_name(self) -> str:
        return f"{self.output_layer}.weight"
