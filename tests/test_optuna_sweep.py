"""Optuna search through Ray Tune's OptunaSearch, and breakdown-aware stopping, in one real sweep."""

from __future__ import annotations

import pickle
from pathlib import Path

import optuna
import pytest
from ray import cloudpickle

from lt_core.rundir import level_dir
from sweeps.runner import make_searcher
from sweeps.study import load_study
from tests.sweep_helpers import QUICKSTART, metric_steps, run_cli, small_sweep_args, sweep_runs


@pytest.mark.parametrize("sampler, objective, expected", [
    ("tpe", "breakdown_sparsity", optuna.samplers.TPESampler),
    ("gp", "breakdown_sparsity", optuna.samplers.GPSampler),
    ("nsga2", "[breakdown_sparsity, dense_test_acc]", optuna.samplers.NSGAIISampler),
    ("tpe", "[breakdown_sparsity, dense_test_acc]", optuna.samplers.TPESampler),
])
def test_searcher_uses_the_chosen_sampler(sampler, objective, expected) -> None:
    study = load_study(QUICKSTART, [
        "search.algorithm=optuna", f"search.sampler={sampler}", f"search.objective={objective}",
        "space.pruning.rate={uniform: [0.2, 0.5]}", "space.pruning.scope={choice: [global]}"])
    searcher = make_searcher(study)
    assert isinstance(searcher._sampler, expected)
    objectives = objective.strip("[]").split(", ")
    assert searcher.metric == (objectives if len(objectives) > 1 else objectives[0])
    # Tune pickles the searcher (sampler and all) with the Tuner and in its state snapshots,
    # which resume loads (Optuna 5.1's NSGA-II sampler holds a lock, which does not pickle).
    sampler = pickle.loads(cloudpickle.dumps(searcher))._sampler
    assert isinstance(sampler, expected)
    trials = optuna.create_study(sampler=sampler, directions=["maximize"] * len(objectives))
    trials.optimize(lambda trial: [trial.suggest_float("x", 0, 1)] * len(objectives), n_trials=3)
    assert len(trials.trials) == 3


@pytest.mark.slow
def test_two_objective_optuna_sweep_with_breakdown_stopping_and_refinement(
        tmp_path: Path, npz_path) -> None:
    """Optuna picks the rates; each trial stops pruning two levels after its ticket broke down
    and then (breakdown.refine: 2) trains two points inside its bracket."""
    levels = 6
    args = ["run", str(QUICKSTART), *small_sweep_args(npz_path, tmp_path, levels=levels),
            "--set", "search={algorithm: optuna, sampler: nsga2, num_samples: 3, seed: 0, "
                     "objective: [breakdown_sparsity, dense_test_acc]}",
            # 85-90% of the weights per level: the ticket breaks down within a few levels.
            "--set", "space={pruning.rate: {uniform: [0.85, 0.9]}, "
                     "pruning.scope: {choice: [global, layerwise]}}",
            "--set", "breakdown={tolerance: 1.0, early_stop: true, patience: 2, refine: 2}"]
    done = run_cli(args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _, trials = sweep_runs(uri, "quickstart")
    assert len(trials) == 3
    rates = {float(r.data.params["pruning.rate"]) for r in trials}
    assert len(rates) == 3 and all(0.85 <= r <= 0.9 for r in rates)
    for run in trials:
        history = sorted(metric_steps(uri, run.info.run_id, "test_acc"))
        accs = {m.step: m.value for m in __import__("mlflow").MlflowClient(uri)
                .get_metric_history(run.info.run_id, "test_acc")}
        dense = accs[0]
        below = [lv for lv in history[1:] if accs[lv] < dense - 0.01]
        # Stopped as soon as two consecutive levels fell below, so deeper levels never ran.
        assert len(history) < levels + 1, history
        assert below[-2:] == history[-2:], (history, accs)
        assert run.data.metrics["breakdown_sparsity"] < 0.99
        # The bracket is (first level below - 1, first level below); its two refinement points
        # sit a third and two thirds of the way, each logged once.
        bracket = below[0] - 1
        refined = metric_steps(uri, run.info.run_id, "refine/test_acc")
        assert refined == [1000 * bracket + 333, 1000 * bracket + 667], (refined, history)
        low, high = (run.data.metrics[f"breakdown_sparsity_{end}"] for end in ("low", "high"))
        sparsity = {m.step: m.value for m in __import__("mlflow").MlflowClient(uri)
                    .get_metric_history(run.info.run_id, "sparsity")}
        assert sparsity[bracket] <= low < high <= sparsity[bracket + 1]
        run_dir = tmp_path / "lt_results" / "quickstart" / "runs" / run.data.tags["ray_trial_id"]
        assert level_dir(run_dir, bracket, 333).is_dir()
