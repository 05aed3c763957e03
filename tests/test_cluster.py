"""Running sweeps on a cluster: ``ray_cluster.yaml`` against Ray's own cluster-config validation,
and real sweeps against a real ``mlflow server`` and a real two-node Ray cluster with token
authentication (docs/cluster.md).

Everything listens on, or is reached through, 127.0.0.1 on free ports (Ray's own gRPC servers
bind every interface of the node whatever one asks: the cluster here has token auth on, and the
test checks that a wrong token is refused).

Cleanup never uses ``ray stop``: it kills every Ray process on the machine (it matches process
names, not a cluster or a temp dir), other people's included. Everything started here runs with a
unique marker in its environment and a Ray temp dir of its own, and teardown SIGKILLs exactly the
live processes whose environment or command line carries that marker or dir (Ray workers rename
themselves ``ray::...``, so the command line alone would miss them).
"""

from __future__ import annotations

import copy
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Iterator

import pytest
import yaml
from mlflow import MlflowClient

from sweeps.layout import CONFIG_TAG, ROLE_TAG, WORKER_TAG
from tests.sweep_helpers import live_pids

REPO = Path(__file__).resolve().parents[1]
CLUSTER_YAML = REPO / "ray_cluster.yaml"
STUDY = REPO / "search_spaces" / "quickstart.yaml"
BIN = Path(sys.executable).parent  # the venv's console scripts (lt-sweep, ray, mlflow)
MARKER_VAR = "LT_SWEEP_TEST_PROCESSES"

# Two trials (the study's two pruning rates, global scope only), levels 0..2, a second or so each.
SMALL_SWEEP = ["base.data.train_split=train[:2000]", "base.data.test_split=test[:500]",
               "base.train.length=1ep", "base.imp.levels=2", "space.pruning.scope.grid=[global]"]
LEVEL_STEPS = [0, 1, 2]

# Joins the cluster at argv[1] and prints the CPUs of its alive nodes (waiting up to 30 s for 2).
NODES_PROBE = """
import json, sys, time
import ray
ray.init(address=sys.argv[1], logging_level="ERROR")
deadline = time.monotonic() + 30
while len([n for n in ray.nodes() if n["Alive"]]) < 2 and time.monotonic() < deadline:
    time.sleep(0.5)
print(json.dumps([n["Resources"].get("CPU") for n in ray.nodes() if n["Alive"]]))
"""


# --------------------------------------------------------------------------- processes

def tool(name: str, module: str) -> list[str]:
    """The console script beside this interpreter, else ``python -m module``."""
    script = BIN / name
    return [str(script)] if script.exists() else [sys.executable, "-m", module]


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (``""``: on every interface, as Ray's GCS binds)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class Processes:
    """Processes started for one fixture or test, each in a new session, with a marker in their
    environment (inherited by everything they spawn) and optionally a Ray temp dir of their own."""

    def __init__(self, logs: Path, temp_dir: Path | None = None):
        self.marker = f"{MARKER_VAR}={secrets.token_hex(8)}"
        self.logs = logs
        self.temp_dir = temp_dir
        self.started: list[subprocess.Popen] = []
        logs.mkdir(parents=True, exist_ok=True)

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN",
                            "RAY_AUTH_TOKEN_PATH", "RAY_TMPDIR", "MLFLOW_TRACKING_URI")}
        key, value = self.marker.split("=")
        env.update({key: value, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"})
        if self.temp_dir is not None:
            env["RAY_TMPDIR"] = str(self.temp_dir)  # a Ray that `ray.init()` starts goes here
        env.update(extra)
        return env

    def start(self, args: list[str], env: dict[str, str], log: str,
              cwd: Path | None = None) -> subprocess.Popen:
        with open(self.logs / log, "wb") as out:
            process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env,
                                       cwd=cwd, stdin=subprocess.DEVNULL, start_new_session=True)
        self.started.append(process)
        return process

    def run(self, args: list[str], env: dict[str, str], log: str, timeout: float,
            cwd: Path | None = None) -> tuple[int, str]:
        """Run to completion (output to a file: daemons may inherit it); (exit code, output)."""
        process = self.start(args, env, log, cwd)
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_all()
            pytest.fail(f"{' '.join(args[:3])} ... still running after {timeout:.0f}s:\n"
                        f"{self.output(log)[-4000:]}")
        return code, self.output(log)

    def output(self, log: str) -> str:
        return (self.logs / log).read_text(errors="replace")

    def ours(self) -> list[int]:
        marker = self.marker.encode()
        temp = str(self.temp_dir).encode() if self.temp_dir else None
        return live_pids(lambda cmd, environ: marker in environ.split(b"\0")
                          or (temp is not None and temp in cmd))

    def kill_all(self, timeout: float = 20.0) -> None:
        """SIGKILL every live process of ours until none is left (what ``ray stop --force`` does,
        restricted to this fixture's processes)."""
        deadline = time.monotonic() + timeout
        while pids := self.ours():
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"processes {pids} survived SIGKILL")
            time.sleep(0.1)
        for process in self.started:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass


def wait_until(condition: Callable[[], bool], timeout: float, what: str,
               process: subprocess.Popen, log: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"{what}: exited with {process.returncode}:\n{log()[-4000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not ready after {timeout:.0f}s:\n{log()[-4000:]}")
        time.sleep(0.25)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory) -> Iterator[SimpleNamespace]:
    """``mlflow server`` on 127.0.0.1: SQLite backend, artifacts proxied into a local folder."""
    root = tmp_path_factory.mktemp("mlflow_server")
    processes = Processes(root / "logs")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    artifacts = root / "artifacts"
    args = [*tool("mlflow", "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination", str(artifacts)]
    # The job runner (huey consumers, for GenAI jobs) is not needed and costs seconds to start.
    env = processes.env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    try:
        server = processes.start(args, env, "mlflow_server.log")
        wait_until(lambda: http_ok(f"{url}/health"), 90, f"mlflow server at {url}", server,
                   lambda: processes.output("mlflow_server.log"))
        yield SimpleNamespace(url=url, artifacts=artifacts)
    finally:
        processes.kill_all()


@pytest.fixture
def ray_cluster(tmp_path, ray_temp_dir) -> Iterator[SimpleNamespace]:
    """A two-node Ray cluster on this machine (head and worker, 1 CPU each, each node with its own
    temp dir), token authentication on with a fresh token (nothing read or written in ~/.ray)."""
    processes = Processes(tmp_path / "ray_logs", temp_dir=ray_temp_dir)
    token = secrets.token_hex(32)
    env = processes.env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    port = free_port("")
    address = f"127.0.0.1:{port}"
    node_dirs = {"head": ray_temp_dir / "head", "worker": ray_temp_dir / "worker"}
    common = ["--num-cpus=1", "--object-store-memory=100000000", "--disable-usage-stats"]
    try:
        code, out = processes.run(
            [*tool("ray", "ray.scripts.scripts"), "start", "--head", f"--port={port}",
             "--include-dashboard=false", f"--temp-dir={node_dirs['head']}", *common],
            env, "ray_start_head.log", timeout=120)
        assert code == 0, f"ray start --head failed:\n{out[-4000:]}"
        code, out = processes.run(
            [*tool("ray", "ray.scripts.scripts"), "start", f"--address={address}",
             f"--temp-dir={node_dirs['worker']}", *common],
            env, "ray_start_worker.log", timeout=120)
        assert code == 0, f"ray start (worker) failed:\n{out[-4000:]}"
        yield SimpleNamespace(address=address, env=env, processes=processes,
                              node_dirs=node_dirs)
    finally:
        processes.kill_all()


# --------------------------------------------------------------------------- helpers

def sweep_args(npz_path: Path, *sets: str) -> list[str]:
    overrides = [f"base.data.path={npz_path}", *SMALL_SWEEP, *sets]
    return [*tool("lt-sweep", "sweeps.cli"), "run", str(STUDY),
            *[arg for item in overrides for arg in ("--set", item)]]


def sweep_runs(client: MlflowClient, experiment_name: str):
    """(parent run, trial runs) of an experiment, checking the roles and the parent link."""
    experiment = client.get_experiment_by_name(experiment_name)
    assert experiment is not None, f"no MLflow experiment {experiment_name!r}"
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get(ROLE_TAG) == "parent"]
    trials = [r for r in runs if r.data.tags.get(ROLE_TAG) == "trial"]
    assert len(parents) == 1 and len(trials) == 2 and len(runs) == 3, \
        [(r.info.run_name, r.data.tags.get(ROLE_TAG)) for r in runs]
    parent = parents[0]
    for trial in trials:
        assert trial.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert trial.info.status == "FINISHED", trial.info
        steps = sorted(m.step for m in client.get_metric_history(trial.info.run_id, "test_acc"))
        assert steps == LEVEL_STEPS, f"test_acc logged at steps {steps}"
        assert "breakdown_sparsity" in trial.data.metrics
    return parent, trials


def trial_pids(client: MlflowClient, experiment: str) -> list[int]:
    """The worker process of each trial, from the trial runs' ``lt.worker`` tags."""
    _, trials = sweep_runs(client, experiment)
    return [int(run.data.tags[WORKER_TAG].rsplit(" pid ", 1)[1]) for run in trials]


def node_of(pid: int, node_dirs: dict[str, Path]) -> list[str]:
    """The nodes whose Ray logs name a worker process with this pid (worker-...-PID.out and the
    like, in that node's own temp dir)."""
    pattern = re.compile(rf"[-_]{pid}\.(out|err|log)$")
    return [node for node, folder in node_dirs.items()
            if any(pattern.search(path.name) for path in folder.rglob("*"))]


# --------------------------------------------------------------------------- tests

def test_cluster_yaml_passes_ray_validation() -> None:
    """The AWS config as written, and with its commented on-prem (`local` provider) block swapped
    in, pass what `ray up` runs before contacting any machine: defaults merged, JSON schema."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    text = CLUSTER_YAML.read_text()
    config = yaml.safe_load(text)
    validate_config(prepare_config(copy.deepcopy(config)))

    assert config["provider"]["type"] == "aws"
    nodes = config["available_node_types"]
    head = nodes[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}  # trials never run on the head
    workers = [n for name, n in nodes.items() if name != config["head_node_type"]]
    assert [w["node_config"]["InstanceType"] for w in workers] == ["g5.xlarge"]
    assert 0 <= workers[0]["min_workers"] <= workers[0]["max_workers"] <= config["max_workers"]

    # Token auth on every node; dashboard and MLflow on the head's loopback only.
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config[key] if "ray start" in c]
        assert starts and all("RAY_AUTH_MODE=token" in c for c in starts), key
    assert "~/.ray/auth_token" in config["file_mounts"]
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "mlflow server --host 127.0.0.1" in head_start
    assert "0.0.0.0" not in yaml.safe_dump(config)

    # What the nodes install from: every mounted local path exists, and together they hold
    # every package pyproject.toml installs and its readme.
    mounted = {}
    for remote, local in config["file_mounts"].items():
        if remote.startswith("~/lt-sweep/"):
            assert (REPO / local).exists(), local
            mounted[remote.removeprefix("~/lt-sweep/")] = local
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = None
    if tomllib is not None:
        project = tomllib.loads((REPO / "pyproject.toml").read_text())
        assert {"pyproject.toml", project["project"]["readme"]} <= set(mounted)
        for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]:
            assert pattern.rstrip("*") in mounted, f"package {pattern} not mounted"

    # The on-prem block between the markers, uncommented, replacing provider/auth/node types.
    block = text.split("# >>> on-prem alternative")[1].split("# <<< on-prem alternative")[0]
    lines = block.splitlines()
    local = yaml.safe_load("\n".join(line[2:] for line in lines[lines.index("# provider:"):]))
    assert local["provider"]["type"] == "local" and local["provider"]["worker_ips"]
    on_prem = {k: v for k, v in config.items()
               if k not in ("available_node_types", "head_node_type")}
    on_prem.update(local)
    prepared = prepare_config(on_prem)
    validate_config(prepared)
    assert len(prepared["available_node_types"]) == 1


@pytest.mark.slow
def test_sweep_logs_to_mlflow_server(mlflow_server, npz_path: Path, tmp_path: Path,
                                    ray_temp_dir: Path) -> None:
    """A local-Ray sweep logs over HTTP to a tracking server: one parent and two trial runs, each
    level once, summaries, and plots stored by the server's artifact proxy; `lt-sweep report`
    reads the server back."""
    processes = Processes(tmp_path / "logs", temp_dir=ray_temp_dir)
    env = processes.env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    try:
        code, out = processes.run(
            sweep_args(npz_path, f"tracking.uri={mlflow_server.url}",
                       f"run.storage_path={tmp_path / 'results'}"),
            env, "sweep.log", timeout=240, cwd=tmp_path)
        assert code == 0, out[-6000:]
        code, report = processes.run(
            [*tool("lt-sweep", "sweeps.cli"), "report", "quickstart", "--tracking-uri",
             mlflow_server.url, "--out", str(tmp_path / "report")],
            env, "report.log", timeout=120, cwd=tmp_path)
        assert code == 0, report[-4000:]
    finally:
        processes.kill_all()

    client = MlflowClient(mlflow_server.url)
    parent, trials = sweep_runs(client, "quickstart")
    for trial in trials:
        assert trial.info.artifact_uri.startswith("mlflow-artifacts:"), trial.info.artifact_uri
        listed = [a.path for a in client.list_artifacts(trial.info.run_id, "plots")]
        assert listed == ["plots/accuracy_vs_density.png"], listed
        png = client.download_artifacts(trial.info.run_id, listed[0], str(tmp_path / "dl"))
        assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "breakdown.csv" in [a.path for a in client.list_artifacts(parent.info.run_id)]
    # Stored by the server, in its --artifacts-destination.
    assert len(list(mlflow_server.artifacts.rglob("accuracy_vs_density.png"))) == 2

    csv_rows = (tmp_path / "report" / "breakdown.csv").read_text().strip().splitlines()
    assert csv_rows[0].startswith("configuration,") and len(csv_rows) == 3, csv_rows
    for trial in trials:  # one table row per configuration, labelled as the trial runs are
        assert trial.data.tags[CONFIG_TAG] in report, report


@pytest.mark.slow
def test_sweep_on_two_node_ray_cluster(ray_cluster, mlflow_server, npz_path: Path,
                                       tmp_path: Path) -> None:
    """`lt-sweep run --address` joins a token-authenticated two-node cluster; the two trials run
    one on each node (1 CPU per node and per trial) and log every level to the MLflow server."""
    processes, env = ray_cluster.processes, ray_cluster.env

    # A wrong token is refused.
    code, out = processes.run(
        [*tool("ray", "ray.scripts.scripts"), "status", f"--address={ray_cluster.address}"],
        {**env, "RAY_AUTH_TOKEN": "0" * 64}, "ray_status_bad_token.log", timeout=60)
    assert code != 0 and re.search(r"InvalidAuthToken|[Aa]uthentication", out), out[-2000:]

    # Both nodes alive, 1 CPU each (as seen by a client holding the token).
    code, out = processes.run([sys.executable, "-c", NODES_PROBE, ray_cluster.address], env,
                              "nodes.log", timeout=90)
    assert code == 0, out[-4000:]
    assert json.loads(out.strip().splitlines()[-1]) == [1.0, 1.0], out[-2000:]

    # A trial asking for more CPUs than any node has is refused before anything starts, with
    # how to wait for an autoscaler instead.
    results = tmp_path / "results"
    code, out = processes.run(
        [*sweep_args(npz_path, "name=too_big", "resources.cpu=2",
                     f"tracking.uri={mlflow_server.url}", f"run.storage_path={results}"),
         "--address", ray_cluster.address], env, "too_big.log", timeout=120, cwd=tmp_path)
    assert code == 2, out[-3000:]
    assert re.search(r"error: .*: resources\.cpu: each trial asks for 2 CPUs, but the largest "
                     r"node of the Ray cluster at .* has 1; .*--wait-for-resources", out), out
    assert not results.exists()
    assert MlflowClient(mlflow_server.url).get_experiment_by_name("too_big") is None

    # 6 epochs: a trial outlasts the start of a worker process on the other node even on busy
    # cores. With 1 epoch (8 s for the sweep with 4 busy loops beside it) the head's trial ended
    # before the worker node's process was up, and Tune gave its actor to the other trial.
    code, out = processes.run(
        [*sweep_args(npz_path, "name=quickstart_cluster", "base.train.length=6ep",
                     f"tracking.uri={mlflow_server.url}",
                     f"run.storage_path={results}"), "--address", ray_cluster.address],
        env, "sweep.log", timeout=240, cwd=tmp_path)
    assert code == 0, out[-6000:]

    pids = trial_pids(MlflowClient(mlflow_server.url), "quickstart_cluster")
    assert len(pids) == 2, pids
    nodes = [node_of(pid, ray_cluster.node_dirs) for pid in pids]
    assert sorted(nodes) == [["head"], ["worker"]], f"trial pids {pids} ran on {nodes}"
