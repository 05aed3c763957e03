"""Breakdown sparsity and levels-below counts on hand-made level lists."""

from __future__ import annotations

import math

import pytest

from lt_core.controls import CONTROLS
from lt_core.metrics import CONTROL_NAMES, breakdown_sparsity, dense_accuracy, levels_below


def make_levels(accuracies: list[float], rate: float = 0.2, **controls: list[float]) -> list[dict]:
    """Level 0 dense, then levels at density (1 - rate)^level; control accuracies from level 1."""
    levels = []
    for level, acc in enumerate(accuracies):
        density = (1 - rate) ** level
        row = {"level": level, "density": density, "sparsity": 1 - density, "test_acc": acc}
        for name, values in controls.items():
            if level >= 1:
                row[f"{name}_test_acc"] = values[level - 1]
        levels.append(row)
    return levels


def test_control_names_match_lt_core_controls():
    assert set(CONTROL_NAMES) == set(CONTROLS)


def test_all_levels_within_gives_the_sparsest_level():
    levels = make_levels([0.98, 0.985, 0.979, 0.975])
    assert breakdown_sparsity(levels, 1.0) == pytest.approx(1 - 0.8**3)


def test_breakdown_ends_at_the_last_level_within():
    levels = make_levels([0.98, 0.981, 0.975, 0.960, 0.950])
    assert breakdown_sparsity(levels, 1.0) == pytest.approx(1 - 0.8**2)


def test_dip_then_recovery_ends_the_breakdown_at_the_dip():
    levels = make_levels([0.98, 0.981, 0.95, 0.98, 0.979])
    assert breakdown_sparsity(levels, 1.0) == pytest.approx(0.2)


def test_first_pruned_level_below_gives_zero():
    levels = make_levels([0.98, 0.96, 0.985])
    assert breakdown_sparsity(levels, 1.0) == 0.0


def test_exactly_at_the_threshold_is_within():
    levels = make_levels([0.98, 0.97])
    assert breakdown_sparsity(levels, 1.0) == pytest.approx(0.2)


def test_tolerance_is_in_percentage_points():
    levels = make_levels([0.98, 0.975, 0.96])
    assert breakdown_sparsity(levels, 0.1) == 0.0
    assert breakdown_sparsity(levels, 1.0) == pytest.approx(0.2)
    assert breakdown_sparsity(levels, 3.0) == pytest.approx(1 - 0.8**2)


def test_levels_are_walked_by_sparsity_not_list_order():
    levels = list(reversed(make_levels([0.98, 0.98, 0.90, 0.98])))
    assert breakdown_sparsity(levels, 1.0) == pytest.approx(0.2)


def test_nan_accuracy_counts_as_below():
    levels = make_levels([0.98, 0.98, math.nan, 0.98])
    assert breakdown_sparsity(levels, 1.0) == pytest.approx(0.2)


def test_control_key_is_measured_against_the_ticket_dense_accuracy():
    levels = make_levels([0.98, 0.98, 0.98, 0.98], reinit=[0.975, 0.968, 0.99])
    assert breakdown_sparsity(levels, 1.0, control="reinit") == pytest.approx(0.2)
    assert breakdown_sparsity(levels, 1.0) == pytest.approx(1 - 0.8**3)


def test_levels_missing_the_key_are_skipped():
    levels = make_levels([0.98, 0.98, 0.98], reinit=[0.98, 0.98])
    del levels[1]["reinit_test_acc"]
    assert breakdown_sparsity(levels, 1.0, control="reinit") == pytest.approx(1 - 0.8**2)
    assert breakdown_sparsity(levels[:1], 1.0) == 0.0


def test_no_dense_level_is_an_error():
    with pytest.raises(ValueError, match="level 0"):
        dense_accuracy(make_levels([0.98, 0.97])[1:])


def test_levels_below_counts_the_trailing_run_of_failures():
    assert levels_below(make_levels([0.98, 0.98, 0.98]), 1.0) == 0
    assert levels_below(make_levels([0.98, 0.98, 0.90, 0.98, 0.90, 0.89]), 1.0) == 2
    assert levels_below(make_levels([0.98, 0.90, 0.89]), 1.0) == 2
    assert levels_below(make_levels([0.98]), 1.0) == 0


def test_the_metric_picks_which_accuracy_and_which_dense_value():
    # Final accuracy dips at level 2 while early-stop accuracy holds; the dense value compared
    # against is level 0's under the same metric.
    levels = make_levels([0.96, 0.97, 0.94, 0.97])
    for level, es in zip(levels, [0.975, 0.972, 0.970, 0.968]):
        level["early_stop_acc"] = es
    levels[1]["reinit_early_stop_acc"], levels[2]["reinit_early_stop_acc"] = 0.97, 0.95
    levels[3]["reinit_early_stop_acc"] = 0.97
    assert breakdown_sparsity(levels, 1.0) == pytest.approx(0.2)
    assert breakdown_sparsity(levels, 1.0, "early_stop_acc") == pytest.approx(1 - 0.8**3)
    assert breakdown_sparsity(levels, 1.0, "early_stop_acc", "reinit") == pytest.approx(0.2)
    assert dense_accuracy(levels, "early_stop_acc") == 0.975
    assert levels_below(levels[:3], 1.0) == 1
    assert levels_below(levels[:3], 1.0, "early_stop_acc") == 0
