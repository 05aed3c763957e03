"""Learning rate as a pure function of the iteration, so any run can start or resume anywhere."""

from __future__ import annotations

import math
from typing import Callable

from lt_core.config import TrainConfig
from lt_core.steps import Step


def lr_schedule(config: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    total = Step.parse(config.length).iterations(steps_per_epoch)
    warmup = Step.parse(config.warmup).iterations(steps_per_epoch)
    milestones = sorted(Step.parse(m).iterations(steps_per_epoch) for m in config.milestones)

    def lr_at(iteration: int) -> float:
        if config.schedule == "multistep":
            factor = config.gamma ** sum(iteration >= m for m in milestones)
        elif config.schedule == "cosine":
            factor = 0.5 * (1 + math.cos(math.pi * min(iteration, total) / total))
        else:
            factor = 1.0
        if iteration < warmup:
            factor *= (iteration + 1) / warmup
        return config.lr * factor

    return lr_at
