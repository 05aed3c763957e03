"""How a pruned level retrains from the rewind point k: where its weights start, and the
learning rate at each iteration."""

from __future__ import annotations

from typing import Callable

Schedule = Callable[[int], float]


class RetrainMode:
    rewinds_weights = True  # survivors back to rewind.pt; else keep the pruned final weights

    def lr_at(self, schedule: Schedule, end: int) -> Schedule:
        """The learning rate at each iteration k..end, given the training schedule."""
        return schedule
