"""What a pruning criterion sees, and what it returns: a score for every prunable weight."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from lt_core.masks import Masks

if TYPE_CHECKING:
    from lt_core.data import TensorData

Scores = dict[str, torch.Tensor]


@dataclass
class ScoreContext:
    model: nn.Module  # the weights being pruned, pruned weights already zero (a scratch copy)
    masks: Masks  # the surviving weights
    data: TensorData  # the experiment's data (data-driven criteria draw batches from train)
    batch_size: int
    batches: int  # batches a data-driven criterion scores on (pruning.score_batches)
    generator: torch.Generator  # seeded per level: random scores, which batches are drawn


class Criterion:
    """Scores the prunable weights; ``lt_core.masks.select`` keeps the highest-scoring
    survivors. ``rounds``: how often it is re-scored while pruning one level (SynFlow: 100),
    each round pruning further along an exponential schedule of densities."""

    rounds = 1

    def scores(self, context: ScoreContext) -> Scores:
        raise NotImplementedError
