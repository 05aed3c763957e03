"""A tracking server that goes down during a sweep: a real ``mlflow server`` on 127.0.0.1 (SQLite
backend) stopped while a real ``lt-sweep run`` (local Ray) logs to it, then started again on the
same port and database. The sweep never fails and nothing is lost: what could not be logged is
logged once the server answers, or by ``lt-sweep sync`` from the results directory, which changes
nothing when run again and rebuilds the same runs in an empty store."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from sweeps.cli import main
from sweeps.layout import PARENT_RUN_TAG, SYSTEM_PREFIX, point_of
from sweeps.runner import load_results
from sweeps.sync import sync_sweep
from sweeps.tracking import SHORT_RETRIES
from tests.sweep_helpers import QUICKSTART, free_port, sweep_runs, wait_for_http

pytestmark = pytest.mark.slow



class MlflowServer:
    """``mlflow server`` on a free 127.0.0.1 port, stopped and started again on the same port
    and SQLite database (each start in a session of its own: stopping it stops its workers)."""

    def __init__(self, root: Path):
        self.root = root
        self.url = f"http://127.0.0.1:{free_port()}"
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        args = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
                "--port", self.url.rsplit(":", 1)[1], "--workers", "1",
                "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
                "--artifacts-destination", str(self.root / "artifacts")]
        # The job runner (for GenAI jobs) is not needed and costs seconds to start.
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with open(self.root / f"server_{self.starts}.log", "wb") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        wait_for_http(f"{self.url}/health", 90)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=15)
        deadline = time.monotonic() + 15
        while self.answers():  # its workers are gone too
            assert time.monotonic() < deadline, f"{self.url} still answers after stop()"
            time.sleep(0.2)

    def answers(self) -> bool:
        try:
            wait_for_http(f"{self.url}/health", 0)
        except OSError:
            return False
        return True

    def ensure_up(self) -> None:
        if self.process is None or self.process.poll() is not None:
            self.start()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow_server"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def short_retries(monkeypatch) -> None:
    """What the commands set for themselves, kept to this test when they run in-process."""
    for name, value in SHORT_RETRIES.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MLFLOW_LOGGING_LEVEL", "ERROR")


class Sweep:
    """``lt-sweep run`` of two trials (the quickstart's rates, global scope), ``levels`` levels of
    ``length`` (an epoch of 2000 images: a second or so), in the background."""

    def __init__(self, npz: Path, tmp: Path, name: str, tracking_uri: str, levels: int,
                 length: str = "1ep"):
        self.levels = levels
        self.results = tmp / "lt_results" / name
        self.log = tmp / f"{name}.log"
        sets = [f"name={name}", f"base.data.path={npz}", "base.data.train_split=train[:2000]",
                "base.data.test_split=test[:500]", f"base.train.length={length}",
                f"base.imp.levels={levels}", "space.pruning.scope.grid=[global]",
                f"tracking.uri={tracking_uri}", f"run.storage_path={tmp / 'lt_results'}"]
        env = {k: v for k, v in os.environ.items()
               if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "sweeps.cli", "run", str(QUICKSTART),
                 *[arg for item in sets for arg in ("--set", item)]],
                cwd=tmp, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**env, "RAY_USAGE_STATS_ENABLED": "0"}, start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float = 300) -> str:
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the sweep still ran after {timeout:.0f} s:\n{self.output()[-4000:]}")
        assert self.process.returncode == 0, self.output()[-4000:]
        return self.output()

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def wait_for_a_level(self, url: str, experiment: str, timeout: float = 180) -> None:
        """Until a trial run of the sweep has its dense level in MLflow."""
        client = MlflowClient(url)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"the sweep ended early:\n{self.output()[-4000:]}")
            found = client.get_experiment_by_name(experiment)
            if found is not None and any("test_acc" in run.data.metrics for run in
                                         client.search_runs([found.experiment_id])):
                return
            time.sleep(0.3)
        self.kill()
        pytest.fail(f"no level in MLflow after {timeout:.0f} s:\n{self.output()[-4000:]}")


def per_level_keys(client: MlflowClient, run_id: str) -> list[str]:
    return [key for key in client.get_run(run_id).data.metrics
            if point_of(key, 0) is not None or key.startswith(SYSTEM_PREFIX)]


def assert_complete(url: str, experiment: str, levels: int) -> None:
    """One parent and two trial runs, FINISHED; every per-level value of every level exactly
    once; each trial's summary and plot; the sweep's summary."""
    steps = list(range(levels + 1))
    client = MlflowClient(url)
    parents, trials = sweep_runs(url, experiment)
    assert len(parents) == 1 and len(trials) == 2, [r.info.run_name for r in parents + trials]
    assert parents[0].info.status == "FINISHED"
    assert "breakdown.csv" in {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert any(key.startswith("breakdown_sparsity_est/") for key in parents[0].data.metrics)
    for run in trials:
        assert run.info.status == "FINISHED", run.info
        keys = per_level_keys(client, run.info.run_id)
        assert {"density", "test_acc", "reinit_test_acc",
                f"{SYSTEM_PREFIX}process_memory_megabytes"} <= set(keys), keys
        for key in keys:
            logged = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
            assert logged == (steps[1:] if key.startswith("reinit") else steps), (key, logged)
        assert "breakdown_sparsity" in run.data.metrics
        assert [a.path for a in client.list_artifacts(run.info.run_id, "plots")] == \
            ["plots/accuracy_vs_density.png"]


def snapshot(url: str, experiment: str) -> dict:
    """Everything of the experiment's runs that a write would change: params, tags, status and
    end time, every metric history with its timestamps, the artifacts; and the experiment's
    tags."""
    client = MlflowClient(url)
    found = client.get_experiment_by_name(experiment)
    runs = {}
    for run in client.search_runs([found.experiment_id], max_results=1000):
        run_id = run.info.run_id
        runs[run_id] = {
            "params": run.data.params, "tags": run.data.tags, "status": run.info.status,
            "end": run.info.end_time,
            "metrics": {key: sorted((m.step, m.value, m.timestamp)
                                    for m in client.get_metric_history(run_id, key))
                        for key in run.data.metrics},
            "artifacts": sorted(a.path for folder in ("", "plots", "images")
                                for a in client.list_artifacts(run_id, folder or None))}
    return {"experiment_tags": found.tags, "runs": runs}


def by_name(url: str, experiment: str) -> dict[str, dict]:
    """Runs by name: params, tags but the parent's id, status, metric histories (step, value)."""
    snap = snapshot(url, experiment)["runs"].values()
    return {run["tags"]["mlflow.runName"]: {
        "params": run["params"], "status": run["status"],
        "tags": {k: v for k, v in run["tags"].items() if k != PARENT_RUN_TAG},
        "metrics": {key: [(step, value) for step, value, _ in history]
                    for key, history in run["metrics"].items()}} for run in snap}


def test_server_restarted_during_a_sweep_misses_nothing(server, npz_path, tmp_path,
                                                        short_retries) -> None:
    """Stopped once the first level is logged and started again at once (it answers 10 to 15 s
    later on two busy cores) while the trials go on: the sweep ends normally (exit 0, its table
    and link) with every level of every trial in MLflow exactly once. A sync of its results
    directory into an empty store then gives the same runs, tags, params and metric histories.
    (Whether the driver catches up before the trials end or in its wait at the end depends on
    the machine's speed; tests/test_tracking.py checks the first deterministically.)"""
    sweep = Sweep(npz_path, tmp_path, "outage", server.url, levels=8, length="2ep")
    try:
        sweep.wait_for_a_level(server.url, "outage")
        server.stop()
        server.start()
        out = sweep.wait()
    finally:
        sweep.kill()
        server.ensure_up()
    assert "MLflow stopped answering 1 time(s) during the sweep" in out, out[-3000:]
    assert "did not answer" not in out and "breakdown sparsity (%) of outage" in out, out[-3000:]
    assert_complete(server.url, "outage", sweep.levels)

    fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
    synced = sync_sweep(load_results(sweep.results, [f"tracking.uri={fresh}"]), sweep.results)
    assert (synced.trials, synced.created) == (2, 2) and synced.summary == "logged"
    live, rebuilt = by_name(server.url, "outage"), by_name(fresh, "outage")
    assert live.keys() == rebuilt.keys()
    for name, run in live.items():
        if run["tags"].get("lt.role") == "trial":
            assert rebuilt[name] == run, name
        else:  # the parent: the same answer (its params come from the saved, resolved study)
            assert rebuilt[name]["metrics"] == run["metrics"]
            assert rebuilt[name]["tags"] == run["tags"]


def test_server_down_until_the_end_then_sync(server, npz_path, tmp_path, short_retries,
                                             capsys) -> None:
    """Stopped once the first level is logged and left down: the sweep still ends with exit 0,
    saying in one line what MLflow lacks and which `lt-sweep sync` logs it. Once the server is
    back, that sync completes the records; a second sync changes nothing."""
    sweep = Sweep(npz_path, tmp_path, "down", server.url, levels=3)
    try:
        sweep.wait_for_a_level(server.url, "down")
        server.stop()
        out = sweep.wait()
    finally:
        sweep.kill()
        server.ensure_up()
    lines = [line for line in out.splitlines() if "did not answer" in line]
    assert len(lines) == 1, out[-3000:]
    assert re.fullmatch(
        rf"MLflow at {re.escape(server.url)} did not answer \(.*Connection refused\): 2 trial "
        rf"runs and the sweep's summary not logged; all is in {re.escape(str(sweep.results))}: "
        rf"`lt-sweep sync {re.escape(str(sweep.results))}` logs it", lines[0]), lines[0]
    _, trials = sweep_runs(server.url, "down")
    assert {run.info.status for run in trials} == {"RUNNING"}  # what the driver left

    capsys.readouterr()
    assert main(["sync", str(sweep.results)]) == 0
    first = capsys.readouterr().out
    assert re.search(rf"synced {re.escape(str(sweep.results))} to {re.escape(server.url)}: 2 "
                     rf"trial runs \(\d created, 2 brought up to date\), sweep summary logged",
                     first), first
    assert_complete(server.url, "down", sweep.levels)
    before = snapshot(server.url, "down")

    assert main(["sync", str(sweep.results)]) == 0
    again = capsys.readouterr().out
    assert "already holds everything" in again and "nothing logged" in again, again
    assert snapshot(server.url, "down") == before
