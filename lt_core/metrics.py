"""Summaries of an IMP experiment's levels: breakdown sparsity and trailing levels below tolerance.

A level is a flat dict with ``level``, ``density``, ``sparsity``, ``test_acc`` and, for each
control C trained at that level, ``C_test_acc`` (and the other ``C_`` keys). Level 0 is the dense
network; accuracies are fractions in [0, 1]; tolerances are in percentage points.
"""

from __future__ import annotations

import math

LEVEL_KEYS = ("density", "sparsity", "test_acc", "best_test_acc", "test_loss", "train_loss",
              "early_stop_iter")
CONTROL_KEYS = ("test_acc", "best_test_acc", "test_loss", "train_loss", "early_stop_iter")
CONTROL_NAMES = ("reinit", "random_prune", "shuffle")  # the keys of lt_core.controls.CONTROLS

# Accuracies are ratios of counts: a level exactly at the threshold must not fail by rounding.
_EPSILON = 1e-9


def dense_accuracy(levels: list[dict]) -> float:
    """Level 0's ``test_acc``: the accuracy every tolerance is measured from."""
    for level in levels:
        if level["level"] == 0:
            return float(level["test_acc"])
    raise ValueError("no level 0 (dense network) among the levels")


def _threshold(levels: list[dict], tolerance_pp: float) -> float:
    return dense_accuracy(levels) - tolerance_pp / 100 - _EPSILON


def _within(value: float, threshold: float) -> bool:
    return not math.isnan(value) and value >= threshold  # NaN (a diverged run) is below


def breakdown_sparsity(levels: list[dict], tolerance_pp: float, key: str = "test_acc") -> float:
    """Highest sparsity whose accuracy under ``key``, and that of every denser pruned level, stays
    within ``tolerance_pp`` of the dense accuracy; 0.0 when the first pruned level is below."""
    threshold = _threshold(levels, tolerance_pp)
    pruned = [lv for lv in levels if lv["level"] >= 1 and lv.get(key) is not None]
    sparsity = 0.0
    for level in sorted(pruned, key=lambda lv: lv["sparsity"]):
        if not _within(float(level[key]), threshold):
            break
        sparsity = float(level["sparsity"])
    return sparsity


def levels_below(levels: list[dict], tolerance_pp: float) -> int:
    """Number of consecutive most recent pruned levels whose ticket ``test_acc`` is below
    tolerance."""
    threshold = _threshold(levels, tolerance_pp)
    count = 0
    for level in sorted((lv for lv in levels if lv["level"] >= 1), key=lambda lv: -lv["level"]):
        if _within(float(level["test_acc"]), threshold):
            break
        count += 1
    return count
