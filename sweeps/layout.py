"""How a sweep lies in MLflow: every tag, param and metric name, and the metric steps.

Written by ``sweeps.tracking`` (the Tune driver), read by ``sweeps.report``.

- parent run per sweep: tags ``lt.sweep`` (the study name), ``lt.role=parent``; params include
  ``breakdown.tolerance`` and ``breakdown.metric``.
- child run per trial: tags ``lt.sweep``, ``lt.role=trial``, ``ray_trial_id``, ``lt.config``
  (the swept values but the seed: the seeds of one configuration share it),
  ``mlflow.parentRunId``; ``lt.refine_failed`` when an ``lt-sweep refine`` of it failed.
  - A grid level's measurements sit at ``step = level``, under their flat names
    (``lt_core.metrics``: ``density``, ``test_acc``, ``reinit_test_acc``, ...).
  - A refinement point's sit under ``refine/<name>`` at ``step = 1000 * level + sublevel``
    (level 7.25 -> step 7250).
  - The trial's breakdown, per network: ``breakdown_sparsity[_low|_high|_est]``,
    ``breakdown_censored``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from lt_core.levels import SUBLEVELS, LevelRecord
from lt_core.metrics import split_metric_name

SWEEP_TAG = "lt.sweep"
ROLE_TAG = "lt.role"  # "parent" or "trial"
CONFIG_TAG = "lt.config"
TRIAL_TAG = "ray_trial_id"
REFINE_FAILED_TAG = "lt.refine_failed"  # on a trial run: the Tune trial of a refinement that failed
PARENT_RUN_TAG = "mlflow.parentRunId"
TOLERANCE_PARAM = "breakdown.tolerance"
METRIC_PARAM = "breakdown.metric"
REFINE_PREFIX = "refine/"
_LEVEL_VALUES = ("density", "sparsity")


def is_point_value(name: str) -> bool:
    """A per-level value: the level's density or sparsity, or a network's measurement."""
    return name in _LEVEL_VALUES or split_metric_name(name) is not None


def point_key_step(name: str, level: int, sublevel: int = 0) -> tuple[str, int]:
    """The MLflow metric key and step of one value of one level or refinement point."""
    if sublevel:
        return REFINE_PREFIX + name, level * SUBLEVELS + sublevel
    return name, level


def point_of(key: str, step: int) -> tuple[str, int, int] | None:
    """(value name, level, sublevel) of a per-level metric key and step; None for others."""
    name = key.removeprefix(REFINE_PREFIX)
    if not is_point_value(name):
        return None
    if key.startswith(REFINE_PREFIX):
        level, sublevel = divmod(step, SUBLEVELS)
        return name, level, sublevel
    return name, step, 0


def point_entries(values: Mapping[str, float]) -> list[tuple[str, int, float]]:
    """(key, step, value) of the per-level values in a flat record (a Tune result)."""
    level, sublevel = int(values["level"]), int(values.get("sublevel", 0) or 0)
    return [(*point_key_step(name, level, sublevel), float(value))
            for name, value in values.items()
            if value is not None and is_point_value(name)]


def records_from_history(entries: Iterable[tuple[str, int, float]]) -> list[LevelRecord]:
    """Level records from (key, step, value) metric entries; points without a density are
    left out (a value logged without its level)."""
    points: dict[tuple[int, int], dict[str, float]] = {}
    for key, step, value in entries:
        found = point_of(key, step)
        if found is not None:
            name, level, sublevel = found
            points.setdefault((level, sublevel), {"level": level, "sublevel": sublevel})[name] = value
    return [LevelRecord.from_flat(values) for _, values in sorted(points.items())
            if "density" in values]
