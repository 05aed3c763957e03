"""A run killed mid-level and started again ends exactly like an uninterrupted run."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from lt_core.rundir import (final_file, level_dir, load_tensors, metrics_file, network_files,
                            read_json)

CONFIG = {
    "model": {"name": "lenet_300_100"},
    "data": {"name": "npz", "train_split": "train[:3000]",
             "test_split": "test[:500]"},
    "train": {"length": "6ep", "eval_every": "1ep", "fuse": "off"},  # one network at a time
    "imp": {"levels": 2, "controls": ["reinit"]},
    "threads": 1,
}


def _command(config_file: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "lt_core.cli", "imp", str(config_file), "--out", str(out)]


def _kill_when(config_file: Path, out: Path, marker: Path) -> None:
    process = subprocess.Popen(_command(config_file, out), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert process.poll() is None, f"run ended before {marker} appeared"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()


def _results(out: Path) -> list[dict]:
    rows = []
    for level in range(3):
        metrics = read_json(metrics_file(level_dir(out, level)))
        metrics.pop("train_seconds")
        for control in metrics["controls"].values():
            control.pop("train_seconds")
        rows.append(metrics)
    return rows


@pytest.mark.slow
def test_killed_run_resumes_to_identical_metrics(tmp_path: Path, npz_path: Path) -> None:
    config_file = tmp_path / "experiment.yaml"
    config = {**CONFIG, "data": {**CONFIG["data"], "path": str(npz_path)}}
    config_file.write_text(yaml.safe_dump(config))
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    subprocess.run(_command(config_file, reference), check=True, capture_output=True)

    # Killed inside level 1's ticket training, then inside level 2's reinit control.
    _kill_when(config_file, resumed, network_files(level_dir(resumed, 1), "ticket").checkpoint)
    assert not metrics_file(level_dir(resumed, 1)).exists()
    _kill_when(config_file, resumed, network_files(level_dir(resumed, 2), "reinit").checkpoint)
    assert not metrics_file(level_dir(resumed, 2)).exists()
    level0_written = metrics_file(level_dir(resumed, 0)).stat().st_mtime_ns
    finished = subprocess.run(_command(config_file, resumed), check=True, capture_output=True,
                              text=True)
    # The rerun skipped finished work and continued the reinit control from its checkpoint:
    # its first progress record is level 2's reinit past the first evaluation (iteration 50).
    progress = [line for line in finished.stderr.replace("\r", "\n").splitlines() if line]
    assert progress[0].startswith("level  2/2 reinit"), progress[0]
    assert int(progress[0].split(" it ")[1].split("/")[0]) > 50, progress[0]
    assert metrics_file(level_dir(resumed, 0)).stat().st_mtime_ns == level0_written

    assert _results(resumed) == _results(reference)
    for level in range(3):
        a = load_tensors(final_file(level_dir(reference, level)))
        b = load_tensors(final_file(level_dir(resumed, level)))
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list(resumed.rglob("checkpoint*.pt")), "checkpoints of finished work remain"
    assert not list(resumed.rglob(".*.tmp*")), "temporary files remain"
