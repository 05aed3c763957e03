"""Summaries of an IMP experiment's levels: breakdown sparsity and trailing levels below tolerance.

A level is a flat dict with ``level``, ``density``, ``sparsity``, the accuracies of ``LEVEL_KEYS``
and, for each control C trained at that level, ``C_<key>`` for the keys of ``CONTROL_KEYS``.
Level 0 is the dense network; accuracies are fractions in [0, 1]; tolerances are in percentage
points.

Which accuracy a breakdown is measured by is a choice (``ACCURACY_METRICS``):
  test_acc        at the end of training (open_lth's convention)
  early_stop_acc  at the early-stop iteration, the evaluation of minimum validation loss (Frankle &
                  Carbin 2019; with no validation holdout the minimum test loss stands in)
  best_test_acc   the best evaluation of the run (optimistic: selected on the test set)
"""

from __future__ import annotations

import math

LEVEL_KEYS = ("density", "sparsity", "test_acc", "best_test_acc", "early_stop_acc", "test_loss",
              "train_loss", "early_stop_iter")
CONTROL_KEYS = ("test_acc", "best_test_acc", "early_stop_acc", "test_loss", "train_loss",
                "early_stop_iter")
CONTROL_NAMES = ("reinit", "random_prune", "shuffle")  # the keys of lt_core.controls.CONTROLS
ACCURACY_METRICS = ("test_acc", "early_stop_acc", "best_test_acc")

# Accuracies are ratios of counts: a level exactly at the threshold must not fail by rounding.
_EPSILON = 1e-9


def metric_key(metric: str = "test_acc", control: str | None = None) -> str:
    """The level key of an accuracy metric for the ticket (control None) or a control."""
    return f"{control}_{metric}" if control else metric


def dense_accuracy(levels: list[dict], metric: str = "test_acc") -> float:
    """Level 0's accuracy under ``metric``: the accuracy every tolerance is measured from."""
    for level in levels:
        if level["level"] == 0:
            return float(level[metric])
    raise ValueError("no level 0 (dense network) among the levels")


def _threshold(levels: list[dict], tolerance_pp: float, metric: str) -> float:
    return dense_accuracy(levels, metric) - tolerance_pp / 100 - _EPSILON


def _within(value: float, threshold: float) -> bool:
    return not math.isnan(value) and value >= threshold  # NaN (a diverged run) is below


def breakdown_sparsity(levels: list[dict], tolerance_pp: float, metric: str = "test_acc",
                       control: str | None = None) -> float:
    """Highest sparsity whose accuracy under ``metric`` (of the ticket, or of ``control``), and
    that of every denser pruned level, stays within ``tolerance_pp`` of the dense network's
    accuracy under the same metric; 0.0 when the first pruned level is below."""
    threshold = _threshold(levels, tolerance_pp, metric)
    key = metric_key(metric, control)
    pruned = [lv for lv in levels if lv["level"] >= 1 and lv.get(key) is not None]
    sparsity = 0.0
    for level in sorted(pruned, key=lambda lv: lv["sparsity"]):
        if not _within(float(level[key]), threshold):
            break
        sparsity = float(level["sparsity"])
    return sparsity


def levels_below(levels: list[dict], tolerance_pp: float, metric: str = "test_acc") -> int:
    """Number of consecutive most recent pruned levels whose ticket accuracy under ``metric`` is
    below tolerance."""
    threshold = _threshold(levels, tolerance_pp, metric)
    count = 0
    for level in sorted((lv for lv in levels if lv["level"] >= 1), key=lambda lv: -lv["level"]):
        if _within(float(level[metric]), threshold):
            break
        count += 1
    return count
