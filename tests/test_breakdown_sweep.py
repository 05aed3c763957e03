"""The breakdown through the whole system: real local Ray, real MLflow (SQLite), the real CLI.

- A sweep where tickets break: LeNet at 75% per level on 2,000 MNIST images, 5 levels (down to
  0.1% of the hidden weights), the reinit control, two seeds, with ``imp.control_levels`` swept
  over ``all`` and ``breakdown``. Then ``lt-sweep refine`` on it, twice.
- A sweep whose tickets cannot break: a tolerance of 100 percentage points.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from lt_core.breakdown import BreakdownRule, locate
from lt_core.rundir import config_file, run_records
from sweeps.cli import main
from sweeps.report import build_report
from tests.sweep_helpers import quickstart_sweep, run_cli, small_sweep_args, sweep_runs

pytestmark = pytest.mark.slow  # each test runs `lt-sweep` end to end, or reads such a run

LEVELS = 5


def _results(tmp: Path) -> Path:
    return tmp / "lt_results" / "quickstart"


def _uri(tmp: Path) -> str:
    return f"sqlite:///{tmp / 'mlflow.db'}"


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _histories(uri: str) -> dict[tuple[str, str], list[tuple[int, float]]]:
    """(run id, metric key) -> every logged (step, value), for every trial run."""
    client = MlflowClient(uri)
    _, trials = sweep_runs(uri, "quickstart")
    return {(run.info.run_id, key): sorted((m.step, m.value)
                                           for m in client.get_metric_history(run.info.run_id, key))
            for run in trials for key in client.get_run(run.info.run_id).data.metrics}


def _trial_dirs(tmp: Path) -> dict[tuple[str, int], Path]:
    """(control_levels, seed) -> run directory."""
    found = {}
    for run_dir in (_results(tmp) / "runs").iterdir():
        config = yaml.safe_load(config_file(run_dir).read_text())
        found[(config["imp"]["control_levels"], config["seed"])] = run_dir
    return found


@pytest.fixture(scope="module")
def breaking_sweep(tmp_path_factory, npz_path: Path) -> Path:
    tmp = tmp_path_factory.mktemp("breaking")
    done = quickstart_sweep(tmp, *small_sweep_args(npz_path, tmp, levels=LEVELS),
                            "--set", "space={pruning.rate: {grid: [0.75]}, seed: {grid: [0, 1]}, "
                                     "imp.control_levels: {grid: [all, breakdown]}}")
    assert "[" in done.stdout.split("breakdown sparsity (%)")[1]  # estimates with intervals
    return tmp


def test_a_broken_sweep_reports_brackets_estimates_and_intervals(breaking_sweep: Path) -> None:
    report = build_report(_uri(breaking_sweep), "quickstart")
    assert [c.n for c in report.configurations] == [2, 2]
    for config in report.configurations:
        for network in ("ticket", "reinit"):
            summary = config.summary(network)
            assert summary.censored == 0 and summary.ci is not None, (config.label, network)
            assert summary.sparsity_low < summary.sparsity_est <= summary.sparsity_high
            assert summary.ci[0] <= summary.sparsity_est <= summary.ci[1]
            for found in config.breakdowns(network):
                assert found.sparsity_low < found.sparsity_est <= found.sparsity_high
    assert ">" not in report.table().splitlines()[2]
    _, trials = sweep_runs(_uri(breaking_sweep), "quickstart")
    for run in trials:
        metrics = run.data.metrics
        assert metrics["breakdown_censored"] == 0.0
        assert metrics["breakdown_sparsity_low"] < metrics["breakdown_sparsity_est"] <= \
            metrics["breakdown_sparsity_high"]
        assert metrics["breakdown_sparsity"] == metrics["breakdown_sparsity_low"]
        assert "reinit_breakdown_sparsity_est" in metrics


def test_control_levels_breakdown_trains_fewer_controls_and_finds_the_same_bracket(
        breaking_sweep: Path) -> None:
    rule = BreakdownRule(1.0, "test_acc")
    trials = _trial_dirs(breaking_sweep)
    uri = _uri(breaking_sweep)
    client = MlflowClient(uri)
    _, runs = sweep_runs(uri, "quickstart")
    by_mode_seed = {(r.data.params["imp.control_levels"], int(r.data.params["seed"])): r
                    for r in runs}
    for seed in (0, 1):
        every = run_records(trials[("all", seed)])
        bisected = run_records(trials[("breakdown", seed)])
        trained = {mode: sorted(r.level for r in records if "reinit" in r.networks)
                   for mode, records in (("all", every), ("breakdown", bisected))}
        assert trained["all"] == list(range(1, LEVELS + 1))
        assert len(trained["breakdown"]) < LEVELS, trained
        found = {mode: locate(records, "reinit", rule)
                 for mode, records in (("all", every), ("breakdown", bisected))}
        assert (found["all"].low.position, found["all"].high.position) == \
            (found["breakdown"].low.position, found["breakdown"].high.position)
        assert found["all"].density_est == found["breakdown"].density_est
        # Both phases' controls reached MLflow, each at its own level.
        logged = client.get_metric_history(by_mode_seed[("breakdown", seed)].info.run_id,
                                           "reinit_test_acc")
        assert sorted(m.step for m in logged) == trained["breakdown"]


def test_refine_narrows_the_brackets_logs_each_point_once_and_is_idempotent(
        breaking_sweep: Path) -> None:
    uri = _uri(breaking_sweep)
    rule = BreakdownRule(1.0, "test_acc")
    before = {key: {net: locate(run_records(d), net, rule) for net in ("ticket", "reinit")}
              for key, d in _trial_dirs(breaking_sweep).items()}

    done = run_cli(["refine", str(_results(breaking_sweep)), "--steps", "3",
                    "--networks", "ticket,reinit"], cwd=breaking_sweep)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "refining 4 of 4 trials: 24 networks to train" in done.stdout
    assert "breakdown sparsity (%)" in done.stdout

    histories = _histories(uri)
    for key, run_dir in _trial_dirs(breaking_sweep).items():
        records = run_records(run_dir)
        for network in ("ticket", "reinit"):
            old, new = before[key][network], locate(records, network, rule)
            refined = [r for r in records if r.refined and network in r.networks]
            assert [r.sublevel for r in refined] == [250, 500, 750]
            assert {r.level for r in refined} == {int(old.low.position)}
            # The new bracket lies inside the old one and is narrower (log-density).
            assert old.low.density >= new.low.density > new.high.density >= old.high.density
            assert math.log(new.low.density / new.high.density) < \
                0.6 * math.log(old.low.density / old.high.density)
    refine_keys = {k: v for k, v in histories.items() if k[1].startswith("refine/")}
    assert refine_keys, "no refinement point reached MLflow"
    for (run_id, key), entries in refine_keys.items():
        steps = [step for step, _ in entries]
        assert len(steps) == len(set(steps)), (key, steps)  # each point logged once
        assert all(step % 1000 in (250, 500, 750) for step in steps)
    assert sum(len(v) for (_, k), v in refine_keys.items() if k == "refine/test_acc") == 12
    assert sum(len(v) for (_, k), v in refine_keys.items() if k == "refine/reinit_test_acc") == 12

    files = _listing(_results(breaking_sweep) / "runs")
    again = run_cli(["refine", str(_results(breaking_sweep)), "--steps", "3",
                     "--networks", "ticket,reinit"], cwd=breaking_sweep)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "nothing to refine: all 8 brackets of ticket or reinit already have their 3 " \
           "refinement points" in again.stdout
    assert _histories(uri) == histories
    assert _listing(_results(breaking_sweep) / "runs") == files


def test_refine_refuses_bad_input_and_writes_nothing(breaking_sweep: Path, tmp_path: Path,
                                                     capsys) -> None:
    results = _results(breaking_sweep)
    files, histories = _listing(results), _histories(_uri(breaking_sweep))
    cases = [
        ([str(tmp_path)], "not an lt-sweep results directory"),
        ([str(results), "--steps", "0"], "--steps: '0' is not a whole number from 1 to 99"),
        ([str(results), "--steps", "three"], "--steps: 'three' is not a whole number"),
        ([str(results), "--steps", "100"], "--steps: '100' is not a whole number from 1 to 99"),
        ([str(results), "--networks", "ticket,shuffle"],
         "--networks: 'shuffle' is not one of ticket, reinit"),
        ([str(results), "--networks", ","], "--networks: name at least one network"),
    ]
    for args, message in cases:
        assert main(["refine", *args]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert _listing(results) == files
    assert _histories(_uri(breaking_sweep)) == histories
    assert list(tmp_path.iterdir()) == []
    # A trial whose run directory is gone (results moved without it, or deleted).
    run_dir = next((results / "runs").iterdir())
    moved = run_dir.with_name(run_dir.name + ".moved")
    run_dir.rename(moved)
    try:
        assert main(["refine", str(results)]) == 2
        err = capsys.readouterr().err
        assert f"{run_dir}: trial {run_dir.name} has no finished dense level here" in err
        assert err.count("\n") == 1
    finally:
        moved.rename(run_dir)


@pytest.fixture(scope="module")
def unbreakable_sweep(tmp_path_factory, npz_path: Path) -> Path:
    """Two levels at 50% (a quarter of the hidden weights left) cannot cost 20 points of
    accuracy: every seed stays within tolerance."""
    tmp = tmp_path_factory.mktemp("unbreakable")
    quickstart_sweep(tmp, *small_sweep_args(npz_path, tmp, levels=2),
                     "--set", "space={pruning.rate: {grid: [0.5]}, seed: {grid: [0, 1]}}",
                     "--set", "breakdown.tolerance=20")
    return tmp


def test_a_sweep_that_cannot_break_reports_lower_bounds(unbreakable_sweep: Path,
                                                        capsys) -> None:
    report = build_report(_uri(unbreakable_sweep), "quickstart")
    (config,) = report.configurations
    for network in ("ticket", "reinit"):
        summary = config.summary(network)
        assert (summary.n, summary.censored, summary.ci, summary.sparsity_high) == \
            (2, 2, None, None)
        # The lower bound is the deepest sparsity trained: two levels at 50%.
        assert summary.sparsity_est == pytest.approx(config.trials[0].records[-1].sparsity)
    row = report.table().splitlines()[2]
    assert row.count("> ") == 2 and "(2/2 censored)" in row
    for trial in config.trials:  # a real curve, well inside the band, not a trivial threshold
        dense = trial.records[0].value("ticket", "test_acc")
        assert all(dense - 0.2 < r.value("ticket", "test_acc") for r in trial.records)
        assert dense > 0.5
    (record,) = report.rows()
    assert record["censored"] == 2 and record["breakdown_sparsity_high"] == ""
    assert record["breakdown_sparsity_ci_low"] == "" and record["reinit_censored"] == 2

    files = _listing(_results(unbreakable_sweep))
    assert main(["refine", str(_results(unbreakable_sweep))]) == 0
    out = capsys.readouterr().out
    assert "nothing to refine: no ticket of the 2 trials broke down within its levels" in out
    assert _listing(_results(unbreakable_sweep)) == files
