"""Running the real `lt-sweep` CLI in a subprocess (its own local Ray) and reading MLflow back."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "search_spaces" / "quickstart.yaml"


def cli(*args: str, cwd: Path) -> list[str]:
    return [sys.executable, "-m", "sweeps.cli", *args]


def small_sweep_args(npz: Path, tmp: Path, levels: int = 3, length: str = "1ep",
                     train_split: str = "train[:2000]") -> list[str]:
    """quickstart.yaml cut to seconds: 2 rates x 2 scopes, ``levels`` levels."""
    return [
        "--set", f"base.data.path={npz}",
        "--set", f"base.data.train_split={train_split}",
        "--set", "base.data.test_split=test[:500]",
        "--set", f"base.train.length={length}",
        "--set", f"base.imp.levels={levels}",
        "--set", f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}",
        "--set", f"run.storage_path={tmp / 'lt_results'}",
    ]


def run_cli(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sweeps.cli", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=timeout)


def quickstart_sweep(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    """`lt-sweep run` of the quickstart study with ``args`` in ``tmp``; it must succeed."""
    done = run_cli(["run", str(QUICKSTART), *args], cwd=tmp)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def sweep_runs(tracking_uri: str, experiment: str) -> tuple[list, list]:
    """(parent runs, trial runs) of an experiment."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment!r}"
    runs = client.search_runs([found.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("lt.role") == "parent"]
    trials = [r for r in runs if r.data.tags.get("lt.role") == "trial"]
    return parents, trials


def metric_steps(tracking_uri: str, run_id: str, key: str) -> list[int]:
    import mlflow

    return sorted(m.step for m in mlflow.MlflowClient(tracking_uri).get_metric_history(run_id,
                                                                                         key))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, timeout: float) -> None:
    """Until ``url`` answers 200 (a server starting), or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer within {timeout:g} s")
        time.sleep(0.3)


def live_pids(match: Callable[[bytes, bytes], bool]) -> list[int]:
    """Live (not zombie) processes for which match(cmdline, environ) holds."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
            if state in (b"Z", b"X"):
                continue
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                environ = f.read()
        except (OSError, IndexError):
            continue  # gone, or not ours to read
        if match(cmdline, environ):
            found.append(int(entry.name))
    return found


MARKER = "LT_TEST_MARKER"  # in the environment of a test's sweep, inherited by all it starts


def marked_pids(marker: str, cmdline_prefix: bytes = b"") -> list[int]:
    """Live processes whose environment holds ``MARKER=marker`` (and whose command line starts
    with ``cmdline_prefix``)."""
    tag = f"{MARKER}={marker}".encode()
    return live_pids(lambda cmdline, environ: tag in environ
                     and cmdline.startswith(cmdline_prefix))
