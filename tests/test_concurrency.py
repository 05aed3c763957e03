"""8 tiny trials at once (a quarter of a CPU each) against the default SQLite MLflow store: no lock
error, every level of every trial logged exactly once (the driver is the only writer; its
asynchronous logging must not race itself)."""

from __future__ import annotations

import pytest

from tests.sweep_helpers import QUICKSTART, metric_steps, run_cli, sweep_runs

TRIALS, LEVELS = 8, 1


@pytest.mark.slow
def test_eight_concurrent_trials_log_every_level_once(tmp_path, npz_path) -> None:
    sets = [f"base.data.path={npz_path}", "base.data.train_split=train[:600]",
            "base.data.test_split=test[:200]", "base.train.length=10it",
            "base.train.eval_every=10it", f"base.imp.levels={LEVELS}",
            "base.imp.controls=[reinit]", f"resources.cpu={2 / TRIALS}",
            f"space.seed.grid={list(range(TRIALS // 4))}",
            f"run.storage_path={tmp_path / 'results'}"]
    done = run_cli(["run", str(QUICKSTART), *(f"--set={s}" for s in sets)], cwd=tmp_path,
                   timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    for failure in ("database is locked", "OperationalError", "Traceback"):
        assert failure not in output, output[-4000:]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # the default store, in the working directory
    _, trials = sweep_runs(uri, "quickstart")
    assert len(trials) == TRIALS
    for run in trials:
        assert run.info.status == "FINISHED"
        for key in ("test_acc", "density", "reinit_test_acc", "system/cpu_utilization_percentage"):
            expected = list(range(LEVELS + 1)) if not key.startswith("reinit") else \
                list(range(1, LEVELS + 1))
            assert metric_steps(uri, run.info.run_id, key) == expected, (run.info.run_name, key)
