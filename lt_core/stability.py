"""Where a network becomes unstable to SGD noise: the first level (densest first) whose error
barrier (``instability``, lt_core.analyses.instability) exceeds a threshold, 2 percentage points
by default as in Frankle et al. (2020). Refinement points are not analysed here: grid levels
only."""

from __future__ import annotations

from dataclasses import dataclass

from lt_core.levels import LevelRecord, sort_records
from lt_core.metrics import INSTABILITY

THRESHOLD_PP = 2.0  # the default of instability.threshold (lt_core.config.InstabilityConfig)


@dataclass(frozen=True)
class Onset:
    """The first unstable level of one run, with the level before it; ``level`` None: stable at
    every analysed level (down to ``deepest``)."""
    level: int | None
    density: float | None  # the first unstable level's
    stable_density: float | None  # the analysed level before it (None: unstable when dense)
    deepest: float  # the deepest analysed level's density

    @property
    def unstable(self) -> bool:
        return self.level is not None


def instability_onset(records: list[LevelRecord], network: str,
                      threshold: float) -> Onset | None:
    """The network's onset of instability, or None when it was never analysed."""
    measured = [r for r in sort_records(records)
                if not r.refined and r.value(network, INSTABILITY) is not None]
    if not measured:
        return None
    previous = None
    for record in measured:
        if record.value(network, INSTABILITY) > threshold:
            return Onset(record.level, record.density,
                         previous.density if previous else None, measured[-1].density)
        previous = record
    return Onset(None, None, measured[-1].density, measured[-1].density)
