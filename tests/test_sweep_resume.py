"""A trial's worker process SIGKILLed mid-level is restarted by Tune from its last finished level;
the sweep, then interrupted (Ctrl-C) and left as a SIGKILLed driver can leave it, is finished by
`lt-sweep resume` with the same child runs and every level logged exactly once, values an
earlier driver never wrote to MLflow included.

A driver SIGKILLed itself is not reproducible on demand: Tune saves the experiment's state every
few seconds but deletes checkpoints beyond `num_to_keep` at once, so a kill in between leaves a
state naming checkpoints that are gone (seen with levels of about a second on busy cores). The
test makes that state from the interrupted sweep's (`as_a_killed_driver_leaves_it`)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from lt_core.rundir import point_dirs, read_json
from sweeps.trainable import SYSTEM_FILE
from tests.sweep_helpers import (MARKER, QUICKSTART, marked_pids, metric_steps, run_cli,
                                 small_sweep_args, sweep_runs)

pytestmark = pytest.mark.slow  # each test runs `lt-sweep` end to end, or reads such a run

LEVELS = 4


def checkpoints(results: Path) -> dict[str, int]:
    """Each trial directory's highest Tune checkpoint index (one checkpoint per level)."""
    found: dict[str, int] = {}
    for path in results.glob("*/checkpoint_*"):
        match = re.fullmatch(r"checkpoint_(\d+)", path.name)
        if match:
            found[path.parent.name] = max(found.get(path.parent.name, -1), int(match[1]))
    return found


def kill_all(marker: str, timeout: float = 30) -> None:
    """SIGKILL every process of the sweep (Ray's included) until none is left (cleanup)."""
    deadline = time.monotonic() + timeout
    while left := marked_pids(marker):
        assert time.monotonic() < deadline, f"processes {left} survived SIGKILL"
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)


def as_a_killed_driver_leaves_it(results: Path, trial_ids: list[str]) -> int:
    """Each of these trials' checkpoints that Tune's saved state names deleted, two newer ones
    in their place (copies of the last): what `num_to_keep` leaves when the driver dies before
    its next save of the state. Returns how many trials were changed."""
    changed = 0
    for trial_id in trial_ids:
        trial_dir = next(results.glob(f"imp_trial_{trial_id}_*"))
        named = sorted(trial_dir.glob("checkpoint_*"))
        if not named:
            continue
        last = checkpoints(results)[trial_dir.name]
        for index in (last + 1, last + 2):
            shutil.copytree(named[-1], trial_dir / f"checkpoint_{index:06d}")
        for folder in named:
            shutil.rmtree(folder)
        changed += 1
    return changed


def as_a_driver_dead_before_writing_leaves_it(database: Path, run_id: str, step: int) -> None:
    """The run's values at ``step`` taken out of the MLflow store (a SQLite file): what a driver
    killed while holding them unwritten (a write in flight, an MLflow outage) leaves, although the
    trial's checkpoints count the point as reported. Not the run's last step (MLflow keeps that
    one again in ``latest_metrics``)."""
    with sqlite3.connect(database) as store:
        assert store.execute("DELETE FROM metrics WHERE run_uuid = ? AND step = ?",
                             (run_id, step)).rowcount


def wait_until(condition, what: str, driver: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert driver.poll() is None, f"the sweep ended before {what}"
        assert time.monotonic() < deadline, f"no {what} after {timeout:.0f} s"
        time.sleep(0.1)


def test_a_killed_worker_restarts_and_an_interrupted_sweep_resumes_without_duplicates(
        tmp_path: Path, npz_path: Path, ray_temp_dir: Path) -> None:
    marker = uuid.uuid4().hex
    env = {**os.environ, MARKER: marker, "RAY_TMPDIR": str(ray_temp_dir)}
    args = ["run", str(QUICKSTART),
            *small_sweep_args(npz_path, tmp_path, levels=LEVELS, length="2ep",
                              train_split="train[:4000]")]
    results = tmp_path / "lt_results" / "quickstart"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    driver = subprocess.Popen([sys.executable, "-m", "sweeps.cli", *args], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # A trial's worker killed: Tune restarts the trial from its last finished level.
        wait_until(lambda: any(index >= 1 for index in checkpoints(results).values()),
                   "trial at level 1", driver)
        at_kill = {name: index for name, index in checkpoints(results).items() if index >= 1}
        workers = marked_pids(marker, cmdline_prefix=b"ray::ImplicitFunc")  # Tune's trial actors
        assert workers, "no trial worker process found"
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: any(checkpoints(results).get(name, -1) > index
                               for name, index in at_kill.items()),
                   "level of a killed trial's restart", driver)

        driver.send_signal(signal.SIGINT)  # Ctrl-C: Tune saves its state and stops
        assert driver.wait(timeout=120) == 130
    finally:
        kill_all(marker)

    _, trials = sweep_runs(uri, "quickstart")
    logged_before = {r.data.tags["ray_trial_id"]: metric_steps(uri, r.info.run_id, "test_acc")
                     for r in trials}
    unfinished = [trial_id for trial_id, steps in logged_before.items()
                  if steps != list(range(LEVELS + 1))]
    assert unfinished, "nothing was left to resume: the interruption came too late"

    # An interrupted sweep cannot be refined yet: one line, exit 2, nothing written.
    files = sorted(results.rglob("*"))
    refused = run_cli(["refine", str(results)], cwd=tmp_path)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "not a finished sweep" in refused.stderr and "lt-sweep resume" in refused.stderr
    assert refused.stderr.count("\n") == 1, refused.stderr
    assert sorted(results.rglob("*")) == files

    # Values that never reached MLflow. Of points no trial reports again: those of the trial
    # furthest along, finished or left with the checkpoints Ctrl-C left, which count them as
    # reported. And of points reported again, with the resources measured the first time: those
    # of another unfinished trial, left as a killed driver leaves it (its checkpoints remade).
    def steps_before(run) -> list[int]:
        return logged_before[run.data.tags["ray_trial_id"]]

    furthest = max(trials, key=lambda r: len(steps_before(r)))
    assert len(steps_before(furthest)) >= 3, logged_before
    again = max((r for r in trials if r.data.tags["ray_trial_id"] in unfinished
                 and r is not furthest), key=lambda r: len(steps_before(r)))
    assert len(steps_before(again)) >= 2, logged_before
    remade = [trial_id for trial_id in unfinished if trial_id != furthest.data.tags["ray_trial_id"]]
    assert as_a_killed_driver_leaves_it(results, remade), "no unfinished trial had a checkpoint"
    as_a_driver_dead_before_writing_leaves_it(tmp_path / "mlflow.db", furthest.info.run_id, 1)
    as_a_driver_dead_before_writing_leaves_it(tmp_path / "mlflow.db", again.info.run_id, 0)
    assert 1 not in metric_steps(uri, furthest.info.run_id, "test_acc")
    done = run_cli(["resume", str(results)], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]

    from mlflow import MlflowClient

    client = MlflowClient(uri)
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
        # Each point's resources are those measured when it was first reported, as kept beside
        # it (a point reported again, or logged by resume's catch-up, carries the same).
        trial_id = run.data.tags["ray_trial_id"]
        for step, sublevel, folder in point_dirs(results / "runs" / trial_id):
            assert sublevel == 0  # no refinement points in this sweep: step = level
            if not (folder / SYSTEM_FILE).exists():
                continue
            for key, value in read_json(folder / SYSTEM_FILE).items():
                logged = [m.value for m in client.get_metric_history(run.info.run_id, key)
                          if m.step == step]
                assert logged == [pytest.approx(value)], (trial_id, step, key)
    assert "breakdown sparsity" in done.stdout
    assert "what MLflow lacked of 1 trial run" in done.stdout, done.stdout
