"""Ctrl-C or SIGTERM on `lt-sweep run` stops the trials, leaves a sweep `lt-sweep resume`
finishes with every level logged once, and leaves no process of the sweep behind (Ray's
cluster processes and trial workers included: every process the sweep starts inherits a marker
in its environment, and none may survive)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.sweep_helpers import (MARKER, QUICKSTART, marked_pids, metric_steps,
                                 small_sweep_args, sweep_runs)

LEVELS = 4


def levels_logged(db: Path) -> int:
    """How many per-level test_acc values the sweep has logged so far (read-only)."""
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as connection:
            return connection.execute(
                "select count(*) from metrics where key = 'test_acc'").fetchone()[0]
    except sqlite3.Error:  # tables not created yet, or locked for a moment
        return 0


def start_sweep(tmp: Path, npz: Path, marker: str, ray_temp: Path) -> subprocess.Popen:
    env = {**os.environ, MARKER: marker, "RAY_TMPDIR": str(ray_temp)}
    return subprocess.Popen(
        [sys.executable, "-m", "sweeps.cli", "run", str(QUICKSTART),
         *small_sweep_args(npz, tmp, levels=LEVELS)],
        cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_gone(marker: str, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := marked_pids(marker)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_signal_stops_the_sweep_cleanly_and_resume_finishes_it(tmp_path, npz_path, signum,
                                                                 ray_temp_dir) -> None:
    marker = uuid.uuid4().hex
    sweep = start_sweep(tmp_path, npz_path, marker, ray_temp_dir)
    deadline = time.monotonic() + 180
    while levels_logged(tmp_path / "mlflow.db") < 3:  # trials are running
        assert sweep.poll() is None, sweep.communicate()
        assert time.monotonic() < deadline, "the sweep never logged a level"
        time.sleep(0.3)
    sweep.send_signal(signum)
    out, err = sweep.communicate(timeout=90)
    assert sweep.returncode == 130, (out, err)
    results = tmp_path / "lt_results" / "quickstart"
    assert f"`lt-sweep resume {results}` continues the sweep" in out, out
    assert "Traceback" not in err, err
    assert wait_gone(marker, timeout=20) == [], "processes of the sweep outlived it"

    if signum == signal.SIGINT:
        return  # the resume after SIGTERM shows the state is whole; once is enough
    done = subprocess.run([sys.executable, "-m", "sweeps.cli", "resume", str(results)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, MARKER: marker})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # The driver had written everything before it stopped: resume's catch-up finds nothing.
    assert "MLflow lacked" not in done.stdout and "lt-sweep sync" not in done.stdout, done.stdout
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _, trials = sweep_runs(uri, "quickstart")
    assert len(trials) == 4
    for run in trials:
        assert run.info.status == "FINISHED"
        assert metric_steps(uri, run.info.run_id, "test_acc") == list(range(LEVELS + 1))
    assert wait_gone(marker, timeout=20) == []
