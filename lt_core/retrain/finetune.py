"""finetune: keep the pruned final weights, train at the schedule's final learning rate."""

from __future__ import annotations

from lt_core.retrain.base import RetrainMode, Schedule


class Finetune(RetrainMode):
    rewinds_weights = False

    def lr_at(self, schedule: Schedule, end: int) -> Schedule:
        final = schedule(end - 1)
        return lambda _iteration: final
