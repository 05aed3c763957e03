"""The breakdown on hand-made levels: bracket, interpolated estimate, censoring, the interval over
seeds, the control bisection and the refinement plan. Expected values are worked out by hand in
the comments."""

from __future__ import annotations

import math
import random

import pytest
from scipy import stats

from lt_core.breakdown import (AT_FIRST_LEVEL, BROKEN, NOT_REACHED, Breakdown, BreakdownRule,
                               Point, aggregate, bracket_candidates, dense_accuracy,
                               levels_below, levels_still_asked, locate, next_level_to_measure,
                               refinement_plan, refinement_sublevels, student_t_quantile,
                               trial_summary)
from lt_core.levels import LevelRecord
from lt_core.metrics import metric_name, split_metric_name

RULE = BreakdownRule(tolerance_pp=1.0, metric="test_acc")


def make_levels(accuracies: list[float], rate: float = 0.2, **controls: list[float]
                ) -> list[LevelRecord]:
    """Level 0 dense, then levels at density (1 - rate)^level; control accuracies from level 1
    (None: not measured there)."""
    records = []
    for level, acc in enumerate(accuracies):
        networks = {"ticket": {"test_acc": acc}}
        for name, values in controls.items():
            if level >= 1 and values[level - 1] is not None:
                networks[name] = {"test_acc": values[level - 1]}
        records.append(LevelRecord(level, (1 - rate) ** level, networks))
    return records


def test_broken_bracket_and_log_density_estimate():
    # threshold 0.97: level 2 (0.975) within, level 3 (0.960) below. The crossing is a third of
    # the way from level 2 to 3 in log-density: 0.64 * 0.8^(1/3) = 0.594123 remaining.
    found = locate(make_levels([0.98, 0.981, 0.975, 0.960, 0.950]), "ticket", RULE)
    assert found.status == BROKEN and not found.censored
    assert (found.low.position, found.high.position) == (2, 3)
    assert found.sparsity_low == pytest.approx(0.36)
    assert found.sparsity_high == pytest.approx(0.488)
    assert found.sparsity_est == pytest.approx(1 - 0.594123, abs=1e-6)
    assert found.sparsity_low < found.sparsity_est <= found.sparsity_high
    assert found.threshold == pytest.approx(0.97)


def test_not_reached_is_censored_at_the_deepest_level():
    found = locate(make_levels([0.98, 0.985, 0.979, 0.975]), "ticket", RULE)
    assert found.status == NOT_REACHED and found.censored
    assert found.high is None and found.sparsity_high is None
    assert found.sparsity_low == pytest.approx(1 - 0.8**3)
    assert found.sparsity_est == found.sparsity_low
    values = found.values()
    assert values["breakdown_censored"] == 1.0 and "breakdown_sparsity_high" not in values
    assert values["breakdown_sparsity"] == values["breakdown_sparsity_low"]


def test_at_first_level_brackets_from_the_dense_network():
    # Level 1 (0.96) is 2 pp below: halfway in accuracy from 0.98 to 0.96 is the 0.97 crossing,
    # so the estimate is halfway in log-density from 1 to 0.8: sqrt(0.8) = 0.894427 remaining.
    found = locate(make_levels([0.98, 0.96, 0.985]), "ticket", RULE)
    assert found.status == AT_FIRST_LEVEL
    assert (found.low.position, found.sparsity_low) == (0, 0.0)
    assert found.sparsity_high == pytest.approx(0.2)
    assert found.sparsity_est == pytest.approx(1 - 0.894427, abs=1e-6)


def test_noisy_non_monotone_curve_breaks_at_the_first_dip():
    # Levels 3 and 4 recover above the threshold; every denser level must be within, so the
    # bracket stays (1, 2).
    found = locate(make_levels([0.98, 0.981, 0.95, 0.98, 0.979]), "ticket", RULE)
    assert (found.low.position, found.high.position) == (1, 2)
    assert 0.2 < found.sparsity_est <= 0.36


def test_levels_are_walked_by_density_not_list_order():
    found = locate(list(reversed(make_levels([0.98, 0.98, 0.90, 0.98]))), "ticket", RULE)
    assert (found.low.position, found.high.position) == (1, 2)


def test_exactly_at_the_threshold_is_within():
    found = locate(make_levels([0.98, 0.97]), "ticket", RULE)
    assert found.status == NOT_REACHED and found.sparsity_low == pytest.approx(0.2)


def test_a_diverged_level_is_below_and_the_estimate_is_the_bracket_middle():
    # NaN at level 2: bracket (1, 2); no accuracy to interpolate, so the geometric middle of
    # densities 0.8 and 0.64: 0.8^1.5 = 0.715542 remaining.
    found = locate(make_levels([0.98, 0.98, math.nan, 0.98]), "ticket", RULE)
    assert (found.low.position, found.high.position) == (1, 2)
    assert found.sparsity_est == pytest.approx(1 - 0.715542, abs=1e-6)


def test_tolerance_in_percentage_points_and_metric_choice():
    levels = make_levels([0.98, 0.975, 0.96])
    assert locate(levels, "ticket", BreakdownRule(0.1)).status == AT_FIRST_LEVEL
    assert locate(levels, "ticket", BreakdownRule(1.0)).sparsity_low == pytest.approx(0.2)
    assert locate(levels, "ticket", BreakdownRule(3.0)).status == NOT_REACHED
    # Under early_stop_acc the dense value is level 0's early-stop accuracy.
    for record, early in zip(levels, [0.99, 0.985, 0.984]):
        record.networks["ticket"]["early_stop_acc"] = early
    assert dense_accuracy(levels, "early_stop_acc") == 0.99
    assert locate(levels, "ticket", BreakdownRule(1.0, "early_stop_acc")).censored
    with pytest.raises(ValueError, match="metric 'val_acc': not one of"):
        BreakdownRule(1.0, "val_acc")


def test_controls_start_from_the_dense_ticket_and_skip_unmeasured_levels():
    levels = make_levels([0.98, 0.98, 0.98, 0.98], reinit=[0.975, None, 0.965])
    found = locate(levels, "reinit", RULE)
    # reinit is measured at levels 1 and 3 only: within at 1, below at 3.
    assert (found.low.position, found.high.position) == (1, 3)
    assert [p.position for p in found.points] == [0, 1, 3]
    assert found.points[0].accuracy == 0.98  # the dense ticket
    assert locate(make_levels([0.98, 0.98]), "reinit", RULE) is None  # never measured


def test_refinement_points_narrow_the_bracket():
    levels = make_levels([0.98, 0.981, 0.975, 0.960])
    # Points between level 2 (density 0.64) and 3 (0.512) at 2.25, 2.5, 2.75.
    for sublevel, acc in ((250, 0.974), (500, 0.971), (750, 0.965)):
        levels.append(LevelRecord(2, 0.8 ** (2 + sublevel / 1000), {"ticket": {"test_acc": acc}},
                                  sublevel))
    found = locate(levels, "ticket", RULE)
    assert (found.low.position, found.high.position) == (2.5, 2.75)
    assert 0.8 ** 2.75 < found.density_est < 0.8 ** 2.5


def test_no_dense_level_is_an_error():
    with pytest.raises(ValueError, match="level 0"):
        locate(make_levels([0.98, 0.97])[1:], "ticket", RULE)


def test_levels_below_counts_the_trailing_run_of_failures():
    assert levels_below(make_levels([0.98, 0.98, 0.98]), RULE) == 0
    assert levels_below(make_levels([0.98, 0.98, 0.90, 0.98, 0.90, 0.89]), RULE) == 2
    assert levels_below(make_levels([0.98, 0.90, 0.89]), RULE) == 2
    assert levels_below(make_levels([0.98]), RULE) == 0


def test_trial_summary_names_each_network():
    summary = trial_summary(make_levels([0.98, 0.98, 0.95], reinit=[0.96, 0.95]), RULE)
    assert summary["dense_test_acc"] == 0.98
    assert summary["breakdown_sparsity_high"] == pytest.approx(0.36)
    assert summary["reinit_breakdown_sparsity_low"] == 0.0
    assert summary["reinit_breakdown_censored"] == 0.0


# ---- over seeds --------------------------------------------------------------------------------
def seed(density_est: float, censored: bool = False) -> Breakdown:
    low = Point(1, min(1.0, density_est * 1.1), 0.98)
    high = None if censored else Point(2, density_est / 1.1, 0.90)
    return Breakdown("ticket", NOT_REACHED if censored else BROKEN, 0.97, low, high,
                     low.density if censored else density_est, ())


def test_mean_and_t_interval_on_log_density():
    # Densities 0.10, 0.12, 0.144: geometric mean 0.12; the logs' sd is ln 1.2 = 0.182322, so
    # the half width is t(0.975, 2) * 0.182322 / sqrt(3) = 4.302653 * 0.105264 = 0.452913 and
    # the interval 0.12 * e^(-/+ 0.452913) = [0.076293, 0.188748] remaining.
    summary = aggregate([seed(0.10), seed(0.12), seed(0.144)])
    assert (summary.n, summary.censored, summary.lower_bound) == (3, 0, False)
    assert summary.sparsity_est == pytest.approx(0.88)
    assert summary.ci == pytest.approx((1 - 0.188748, 1 - 0.076293), abs=1e-5)
    assert summary.sparsity_low < summary.sparsity_est < summary.sparsity_high


def test_a_censored_seed_makes_a_lower_bound_without_interval():
    summary = aggregate([seed(0.10), seed(0.05, censored=True), None])
    assert (summary.n, summary.censored, summary.lower_bound) == (2, 1, True)
    assert summary.ci is None and summary.sparsity_high is None
    # Every seed counts at its bracket's low end: the censored one at its deepest point
    # (0.055), the broken one at its last level within (0.11), not at its estimate (0.10), which
    # could overshoot: at least 1 - sqrt(0.11 * 0.055) = 92.22% sparsity.
    assert summary.sparsity_est == summary.sparsity_low == pytest.approx(1 - math.sqrt(0.11 * 0.055))


def test_one_seed_has_no_interval_and_nothing_has_none():
    assert aggregate([seed(0.2)]).ci is None
    assert aggregate([None, None]) is None


def test_a_level_with_no_weights_left_has_no_log():
    # Level 2 keeps nothing (density 0, 10% accuracy): the crossing is taken linearly in density,
    # (0.98 - 0.97) / (0.98 - 0.10) of the way from 0.5 to 0.
    levels = make_levels([0.98, 0.98, 0.10], rate=0.5)
    levels[2] = LevelRecord(2, 0.0, levels[2].networks)
    found = locate(levels, "ticket", RULE)
    assert found.density_est == pytest.approx(0.5 * (1 - 0.01 / 0.88))
    assert aggregate([found, found]).sparsity_high == 1.0


def test_a_dense_network_without_accuracy_has_no_breakdown():
    assert locate(make_levels([math.nan, 0.98, 0.97]), "ticket", RULE) is None


def test_interval_is_clipped_at_the_dense_network():
    summary = aggregate([seed(0.1), seed(0.9)])  # a wide spread over two seeds
    assert summary.ci[0] == 0.0 and 0 < summary.ci[1] < 1


@pytest.mark.parametrize("df", [1, 2, 3, 4, 5, 9, 29, 100, 10_000])
@pytest.mark.parametrize("p", [0.6, 0.9, 0.975, 0.995])
def test_student_t_quantile_matches_scipy(p, df):
    assert student_t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-9, abs=1e-9)
    assert student_t_quantile(1 - p, df) == pytest.approx(-stats.t.ppf(p, df), rel=1e-9)


def test_student_t_textbook_values():
    table = {1: 12.706, 2: 4.303, 4: 2.776, 10: 2.228, 30: 2.042}
    for df, value in table.items():
        assert student_t_quantile(0.975, df) == pytest.approx(value, abs=5e-4)


# ---- controls where they inform ------------------------------------------------------------------
def bisection(within_at, deepest: int) -> tuple[list[int], dict[int, bool]]:
    """The levels next_level_to_measure asks for, in order, given the truth ``within_at``."""
    known: dict[int, bool] = {}
    asked = []
    while (level := next_level_to_measure(known, deepest)) is not None:
        assert level not in known
        asked.append(level)
        known[level] = within_at(level)
    return asked, known


def test_bisection_then_both_neighbours_on_a_monotone_control():
    # Within down to level 12 of 20. (0, 21) -> 10 within; (10, 21) -> 15 below; -> 12 within;
    # -> 13 below; the bracket (12, 13) is confirmed at 11 and 14.
    asked, known = bisection(lambda level: level <= 12, 20)
    assert asked == [10, 15, 12, 13, 11, 14]
    levels = make_levels([0.98] + [0.98 if lv <= 12 else 0.9 for lv in range(1, 21)])
    for record in levels[1:]:
        if record.level not in known:
            del record.networks["ticket"]  # only the measured levels
    found = locate(levels, "ticket", RULE)
    assert (found.low.position, found.high.position) == (12, 13)


def test_a_neighbour_that_contradicts_monotonicity_moves_the_bracket():
    # A dip at level 11: the confirmation finds it and the bracket becomes (10, 11), as the rule
    # on every level would give; 9 then confirms its dense side.
    asked, known = bisection(lambda level: level <= 12 and level != 11, 20)
    assert asked == [10, 15, 12, 13, 11, 9]
    levels = make_levels([0.98] + [0.98 if known.get(lv) else 0.9 for lv in range(1, 21)])
    for record in levels[1:]:
        if record.level not in known:
            del record.networks["ticket"]
    found = locate(levels, "ticket", RULE)
    assert (found.low.position, found.high.position) == (10, 11)


def test_bisection_not_reached_and_at_first_level():
    assert bisection(lambda level: True, 5)[0] == [3, 4, 5]
    assert bisection(lambda level: False, 5)[0] == [3, 1, 2]
    assert bisection(lambda level: True, 0)[0] == []


def test_levels_a_bisection_may_still_ask_for():
    assert levels_still_asked({}, 5) == {1, 2, 3, 4, 5}
    # Below at 15: nothing past 16 (the neighbour that confirms) can be asked any more.
    assert levels_still_asked({10: True, 15: False}, 20) == set(range(1, 17)) - {10, 15}
    assert levels_still_asked({1: True, 2: False}, 5) == {3}
    assert levels_still_asked({1: True, 2: False, 3: False}, 3) == set()
    assert bracket_candidates({10: True, 15: False}, 20) == set(range(0, 15))
    assert bracket_candidates({1: True, 2: False, 3: False}, 3) == set()


def test_every_later_ask_is_among_the_levels_still_asked():
    """Along many bisections (monotone, with dips, random answers), whatever is asked after any
    point was among levels_still_asked there (what a resume kit must carry)."""
    rng = random.Random(0)
    truths = [lambda lv: lv <= 11, lambda lv: lv <= 12 and lv != 11, lambda lv: True,
              lambda lv: False] + [
        (lambda answers: lambda lv: answers[lv])({lv: rng.random() < 0.6 for lv in range(1, 21)})
        for _ in range(50)]
    for truth in truths:
        asked, _ = bisection(truth, 20)
        for step in range(len(asked) + 1):
            known = {lv: truth(lv) for lv in asked[:step]}
            assert set(asked[step:]) <= levels_still_asked(known, 20), (asked, step)


def test_resumed_bisection_continues_from_what_is_known():
    assert next_level_to_measure({10: True, 15: False}, 20) == 12
    assert next_level_to_measure({1: True, 2: False, 3: False}, 3) is None


# ---- refinement ----------------------------------------------------------------------------------
def test_refinement_sublevels_split_a_level_evenly():
    assert refinement_sublevels(1) == [500]
    assert refinement_sublevels(3) == [250, 500, 750]
    assert refinement_sublevels(6) == [143, 286, 429, 571, 714, 857]


def test_refinement_plan_targets_each_broken_network_and_skips_what_exists():
    levels = make_levels([0.98, 0.981, 0.975, 0.960, 0.950], reinit=[0.975, 0.95, 0.94, 0.93])
    plan = refinement_plan(levels, ["ticket", "reinit"], RULE, 3)
    assert [(t.level, t.sublevel, t.networks) for t in plan] == [
        (1, 250, ("reinit",)), (1, 500, ("reinit",)), (1, 750, ("reinit",)),
        (2, 250, ("ticket",)), (2, 500, ("ticket",)), (2, 750, ("ticket",))]
    levels.append(LevelRecord(2, 0.8 ** 2.5, {"ticket": {"test_acc": 0.971}}, 500))
    assert [(t.level, t.sublevel) for t in refinement_plan(levels, ["ticket"], RULE, 3)] == [
        (2, 250), (2, 750)]
    censored = make_levels([0.98, 0.98, 0.98])
    assert refinement_plan(censored, ["ticket"], RULE, 3) == []


# ---- one representation --------------------------------------------------------------------------
def test_level_record_round_trips_through_metrics_json_and_flat_names():
    metrics = {"level": 3, "density": 0.512, "sparsity": 0.488, "test_acc": 0.97,
               "early_stop_iter": 40, "train_samples": 2400,
               "controls": {"random_prune": {"level": 3, "density": 0.512, "test_acc": 0.9,
                                             "best_test_acc": 0.91}}}
    record = LevelRecord.from_metrics(metrics)
    assert record.networks == {"ticket": {"test_acc": 0.97, "early_stop_iter": 40.0},
                               "random_prune": {"test_acc": 0.9, "best_test_acc": 0.91}}
    flat = record.flat()
    assert flat["random_prune_best_test_acc"] == 0.91 and flat["sparsity"] == pytest.approx(0.488)
    assert LevelRecord.from_flat({**flat, "dense_test_acc": 0.98, "run_dir": "/x"}) == record


def test_flat_names():
    assert metric_name("test_acc") == "test_acc"
    assert metric_name("test_acc", "reinit") == "reinit_test_acc"
    assert split_metric_name("reinit_best_test_acc") == ("reinit", "best_test_acc")
    assert split_metric_name("random_prune_early_stop_acc") == ("random_prune", "early_stop_acc")
    assert split_metric_name("best_test_acc") == ("ticket", "best_test_acc")
    assert split_metric_name("dense_test_acc") is None  # no network called "dense"
    assert split_metric_name("breakdown_sparsity") is None
