"""Pruning criteria: each scores the prunable weights (``lt_core.pruning.base.Criterion``).
Adding one is a file in this package and a line in ``CRITERIA``; its name is then a valid
``pruning.criterion``."""

from __future__ import annotations

from lt_core.masks import Masks, PrunePlan, apply_masks, select
from lt_core.pruning.base import Criterion, ScoreContext
from lt_core.pruning.magnitude import Magnitude
from lt_core.pruning.random_scores import RandomScores
from lt_core.pruning.snip import Snip
from lt_core.pruning.synflow import SynFlow

CRITERIA: dict[str, Criterion] = {
    "magnitude": Magnitude(),
    "random": RandomScores(),
    "snip": Snip(),
    "synflow": SynFlow(),
}


def prune(criterion: str, context: ScoreContext, plan: PrunePlan, start: float, end: float,
          rounds: int | None = None) -> Masks:
    """Prune ``context.masks`` from exponent ``start`` (their density) to ``end`` by the
    criterion: ``rounds`` times (the criterion's own default when None), re-scoring the
    surviving weights each time, the exponent moving evenly from start to end (an exponential
    schedule of densities). ``context.model`` is pruned in place."""
    chosen = CRITERIA[criterion]
    rounds = rounds or chosen.rounds
    masks = context.masks
    for round_ in range(1, rounds + 1):
        apply_masks(context.model, masks)
        context.masks = masks
        scores = chosen.scores(context)
        masks = select(scores, masks, plan, start + (end - start) * round_ / rounds)
    return masks


__all__ = ["CRITERIA", "Criterion", "ScoreContext", "prune"]
