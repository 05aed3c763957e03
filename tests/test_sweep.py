"""A quickstart-sized sweep end to end: real local Ray, real MLflow (SQLite), the real CLI."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tests.sweep_helpers import QUICKSTART, metric_steps, run_cli, small_sweep_args, sweep_runs

LEVEL_METRICS = ("density", "sparsity", "test_acc", "best_test_acc", "test_loss", "train_loss",
                 "early_stop_iter", "reinit_test_acc")


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory, npz_path: Path):
    tmp = tmp_path_factory.mktemp("sweep")
    done = run_cli(["run", str(QUICKSTART), *small_sweep_args(npz_path, tmp)], cwd=tmp)
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp, done


def test_sweep_logs_every_level_of_every_trial(finished_sweep) -> None:
    tmp, _ = finished_sweep
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    parents, trials = sweep_runs(uri, "quickstart")
    assert len(parents) == 1 and len(trials) == 4
    parent_id = parents[0].info.run_id
    labels = set()
    for run in trials:
        assert run.data.tags["mlflow.parentRunId"] == parent_id
        assert run.info.status == "FINISHED"
        for key in LEVEL_METRICS:
            assert metric_steps(uri, run.info.run_id, key) == ([0, 1, 2, 3] if not
                                                               key.startswith("reinit") else
                                                               [1, 2, 3]), key
        breakdown = run.data.metrics["breakdown_sparsity"]
        assert 0.0 <= breakdown <= 1.0
        assert run.data.params["pruning.rate"] in {"0.4", "0.6"}
        assert run.data.params["imp.levels"] == "3"
        labels.add(run.data.tags["lt.config"])
    assert len(labels) == 4
    # A level's density is what 3 levels at the trial's rate give (LeNet: output layer at 10%).
    densities = {}
    for run in trials:
        densities[run.data.params["pruning.rate"]] = run.data.metrics["density"]
    assert densities["0.4"] == pytest.approx(0.6 ** 3, abs=0.005)
    assert densities["0.6"] == pytest.approx(0.4 ** 3, abs=0.005)


def test_run_ends_with_the_breakdown_table(finished_sweep) -> None:
    _, done = finished_sweep
    table = done.stdout[done.stdout.index("breakdown sparsity"):]
    assert "pruning.rate=0.4, pruning.scope=global" in table
    assert "pruning.rate=0.6, pruning.scope=layerwise" in table


def test_report_prints_the_table_and_writes_csv(finished_sweep) -> None:
    tmp, _ = finished_sweep
    out = tmp / "report"
    done = run_cli(["report", "quickstart", "--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}",
                    "--out", str(out)], cwd=tmp)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "pruning.rate=0.4, pruning.scope=global" in done.stdout
    rows = list(csv.DictReader((out / "breakdown.csv").open()))
    assert len(rows) == 4
    assert (out / "breakdown.png").stat().st_size > 1000


def test_report_on_a_missing_experiment_exits_2(finished_sweep) -> None:
    tmp, _ = finished_sweep
    done = run_cli(["report", "no_such_experiment", "--tracking-uri",
                    f"sqlite:///{tmp / 'mlflow.db'}", "--out", str(tmp / "r2")], cwd=tmp)
    assert done.returncode == 2
    assert "no_such_experiment" in done.stderr
    assert not (tmp / "r2" / "breakdown.csv").exists()
