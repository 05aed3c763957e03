"""Random: uniform scores, so random survivors are removed (a baseline for every criterion)."""

from __future__ import annotations

import torch

from lt_core.pruning.base import Criterion, ScoreContext, Scores


class RandomScores(Criterion):
    def scores(self, context: ScoreContext) -> Scores:
        return {name: torch.rand(mask.shape, generator=context.generator).to(mask.device)
                for name, mask in context.masks.items()}
