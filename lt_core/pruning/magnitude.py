"""Magnitude: |w|. Frankle & Carbin's IMP (and, per filter, Li et al.'s L1-norm filter pruning)."""

from __future__ import annotations

from lt_core.pruning.base import Criterion, ScoreContext, Scores


class Magnitude(Criterion):
    def scores(self, context: ScoreContext) -> Scores:
        params = dict(context.model.named_parameters())
        return {name: params[name].detach().abs() for name in context.masks}
