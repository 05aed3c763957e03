"""An interrupted sweep resumed with `lt-sweep resume` ends with the same child runs and every
level logged exactly once."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.sweep_helpers import QUICKSTART, metric_steps, run_cli, small_sweep_args, sweep_runs

pytestmark = pytest.mark.slow  # each test runs `lt-sweep` end to end, or reads such a run

LEVELS = 4


def _interrupt_after_first_checkpoints(args: list[str], cwd: Path, results: Path) -> None:
    driver = subprocess.Popen([sys.executable, "-m", "sweeps.cli", *args], cwd=cwd,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while len(list(results.glob("*/checkpoint_000001"))) < 1:
        assert driver.poll() is None, "the sweep ended before it could be interrupted"
        assert time.monotonic() < deadline, "no trial reached level 1"
        time.sleep(0.1)
    driver.send_signal(signal.SIGINT)  # what Ctrl-C does: Tune saves its state and stops
    driver.wait(timeout=120)


def test_interrupted_sweep_resumes_without_duplicates(tmp_path: Path, npz_path: Path) -> None:
    args = ["run", str(QUICKSTART),
            *small_sweep_args(npz_path, tmp_path, levels=LEVELS, length="2ep",
                              train_split="train[:4000]")]
    results = tmp_path / "lt_results" / "quickstart"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _interrupt_after_first_checkpoints(args, tmp_path, results)

    _, trials = sweep_runs(uri, "quickstart")
    logged_before = {r.data.tags["ray_trial_id"]: metric_steps(uri, r.info.run_id, "test_acc")
                     for r in trials}
    complete = [steps for steps in logged_before.values() if steps == list(range(LEVELS + 1))]
    assert len(complete) < 4, "nothing was left to resume: the interruption came too late"

    # An interrupted sweep cannot be refined yet: one line, exit 2, nothing written.
    files = sorted(results.rglob("*"))
    refused = run_cli(["refine", str(results)], cwd=tmp_path)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "not a finished sweep" in refused.stderr and "lt-sweep resume" in refused.stderr
    assert refused.stderr.count("\n") == 1, refused.stderr
    assert sorted(results.rglob("*")) == files

    done = run_cli(["resume", str(results)], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]

    parents, trials = sweep_runs(uri, "quickstart")
    assert len(parents) == 1
    assert len(trials) == 4
    trial_ids = [r.data.tags["ray_trial_id"] for r in trials]
    assert len(set(trial_ids)) == 4
    assert set(logged_before) <= set(trial_ids), "a resumed trial got a new MLflow run"
    for run in trials:
        for key in ("test_acc", "density", "train_loss"):
            assert metric_steps(uri, run.info.run_id, key) == list(range(LEVELS + 1)), key
        assert run.info.status == "FINISHED"
        assert "breakdown_sparsity" in run.data.metrics
    assert "breakdown sparsity" in done.stdout
