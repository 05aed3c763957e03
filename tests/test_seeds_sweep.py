"""``base.seeds``: the seeds of a configuration as one Tune trial, their networks fused, each seed
with its own MLflow run, run directory and resume kit; against the same seeds trained alone."""

from __future__ import annotations

import csv
from pathlib import Path

import mlflow
import pytest

from lt_core.imp import ImpRun
from lt_core.levels import LevelRecord
from lt_core.rundir import read_json
from sweeps.study import load_study, trial_config
from sweeps.trainable import REPORTED_FILE, _restore_resume_kit
from tests.sweep_helpers import (QUICKSTART, metric_steps, quickstart_sweep, run_cli,
                                 small_sweep_args, sweep_runs)

pytestmark = pytest.mark.slow  # each test runs `lt-sweep` end to end, or reads such a run

LEVELS = 2
ONE_IMAGE = 1 / 500 + 1e-9  # the sweep's test split: 500 images


def seeds_args(npz: Path, tmp: Path) -> list[str]:
    return [*small_sweep_args(npz, tmp, levels=LEVELS),
            "--set", "space.pruning.rate.grid=[0.5]", "--set", "space.pruning.scope.grid=[global]",
            "--set", "base.seeds=[0, 1]"]


@pytest.fixture(scope="module")
def seeds_sweep(tmp_path_factory, npz_path: Path):
    tmp = tmp_path_factory.mktemp("seeds")
    return tmp, quickstart_sweep(tmp, *seeds_args(npz_path, tmp))


def test_one_trial_trains_every_seed_each_in_its_own_run(seeds_sweep, npz_path: Path) -> None:
    tmp, done = seeds_sweep
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    _, trials = sweep_runs(uri, "quickstart")
    assert sorted(r.info.run_name for r in trials) == ["rate=0.5 scope=global seed=0",
                                                       "rate=0.5 scope=global seed=1"]
    tune_trials = {r.data.tags["ray_trial_id"].rsplit("_seed", 1)[0] for r in trials}
    assert len(tune_trials) == 1, "both seeds ran in one Tune trial"
    trial_id = tune_trials.pop()
    study = load_study(QUICKSTART, seeds_args(npz_path, tmp)[1::2])
    for run in trials:
        assert run.info.status == "FINISHED"
        assert run.data.tags["lt.device"] == "cpu"
        seed = int(run.data.params["seed"])
        run_dir = Path(run.data.tags["lt.run_dir"])
        assert run_dir.name == run.data.tags["ray_trial_id"] == f"{trial_id}_seed{seed}"
        assert metric_steps(uri, run.info.run_id, "test_acc") == list(range(LEVELS + 1))
        assert metric_steps(uri, run.info.run_id, "reinit_test_acc") == list(range(1, LEVELS + 1))
        # The same seed trained alone, one network at a time: the same table (up to one test
        # image: fused float32 arithmetic differs in its last bits).
        config = trial_config(study, {"pruning.rate": 0.5, "pruning.scope": "global",
                                      "seed": seed})
        config = config.model_copy(update={"train": config.train.model_copy(
            update={"fuse": "off"})})
        alone = ImpRun(config, tmp / f"alone{seed}").run()
        history = {m.step: m.value for m in
                   mlflow.MlflowClient(uri).get_metric_history(run.info.run_id, "test_acc")}
        for metrics in alone:
            assert history[metrics["level"]] == pytest.approx(metrics["test_acc"], abs=ONE_IMAGE)
    assert "seed=0" in done.stdout and "seed=1" in done.stdout


def test_the_report_counts_the_seeds_of_the_configuration(seeds_sweep) -> None:
    tmp, _ = seeds_sweep
    out = tmp / "report"
    done = run_cli(["report", "quickstart", "--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}",
                    "--out", str(out)], cwd=tmp)
    assert done.returncode == 0, done.stderr[-2000:]
    with (out / "breakdown.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1 and rows[0]["n"] == "2", rows


def test_the_trials_checkpoint_resumes_every_seed(seeds_sweep, tmp_path: Path) -> None:
    """The last Tune checkpoint holds each seed's resume kit: restored into empty run
    directories, every level is there, reported."""
    tmp, _ = seeds_sweep
    kits = sorted((tmp / "lt_results" / "quickstart").rglob(f"*_seed*/{REPORTED_FILE}"))
    latest = {}
    for path in kits:  # each checkpoint holds both seeds' kits: keep the newest checkpoint
        latest[path.parent.name] = path.parent
    assert sorted(name.rsplit("_seed", 1)[1] for name in latest) == ["0", "1"]
    for name, kit in latest.items():
        reported = _restore_resume_kit(kit, tmp_path / name)
        assert len(reported) == LEVELS + 1
        records = [LevelRecord.from_metrics(read_json(path)) for path in
                   sorted((tmp_path / name).glob("level_*/metrics.json"))]
        assert [r.level for r in records] == list(range(LEVELS + 1))
