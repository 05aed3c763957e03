"""A quickstart-sized sweep end to end: real local Ray, real MLflow (SQLite), the real CLI; what
it prints, what it leaves in MLflow for the UI, and the report."""

from __future__ import annotations

import base64
import csv
import json
import re
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from mlflow import MlflowClient

from sweeps.layout import configuration_slug
from tests.sweep_helpers import (free_port, metric_steps, quickstart_sweep, run_cli,
                                 small_sweep_args, sweep_runs, wait_for_http)

pytestmark = pytest.mark.slow  # each test runs `lt-sweep` end to end, or reads such a run

LEVEL_METRICS = ("density", "sparsity", "test_acc", "best_test_acc", "test_loss", "train_loss",
                 "early_stop_iter", "reinit_test_acc")


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory, npz_path: Path):
    tmp = tmp_path_factory.mktemp("sweep")
    return tmp, quickstart_sweep(tmp, *small_sweep_args(npz_path, tmp))


def test_sweep_logs_every_level_of_every_trial(finished_sweep) -> None:
    tmp, _ = finished_sweep
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    parents, trials = sweep_runs(uri, "quickstart")
    assert len(parents) == 1 and len(trials) == 4
    parent_id = parents[0].info.run_id
    labels = set()
    for run in trials:
        assert run.data.tags["mlflow.parentRunId"] == parent_id
        assert run.info.status == "FINISHED"
        for key in LEVEL_METRICS:
            assert metric_steps(uri, run.info.run_id, key) == ([0, 1, 2, 3] if not
                                                               key.startswith("reinit") else
                                                               [1, 2, 3]), key
        breakdown = run.data.metrics["breakdown_sparsity"]
        assert 0.0 <= breakdown <= 1.0
        assert run.data.params["pruning.rate"] in {"0.4", "0.6"}
        assert run.data.params["imp.levels"] == "3"
        labels.add(run.data.tags["lt.config"])
    assert len(labels) == 4
    # A level's density is what 3 levels at the trial's rate give (LeNet: output layer at 10%).
    densities = {}
    for run in trials:
        densities[run.data.params["pruning.rate"]] = run.data.metrics["density"]
    assert densities["0.4"] == pytest.approx(0.6 ** 3, abs=0.005)
    assert densities["0.6"] == pytest.approx(0.4 ** 3, abs=0.005)


def test_run_ends_with_the_breakdown_table(finished_sweep) -> None:
    _, done = finished_sweep
    table = done.stdout[done.stdout.index("breakdown sparsity"):]
    assert "pruning.rate=0.4, pruning.scope=global" in table
    assert "pruning.rate=0.6, pruning.scope=layerwise" in table


def test_the_console_shows_the_sweep_in_few_lines(finished_sweep) -> None:
    """Captured (not a terminal): plain progress lines, one per finished trial, the table and the
    link; none of Ray's, Tune's or MLflow's own chatter."""
    tmp, done = finished_sweep
    lines = (done.stdout + done.stderr).splitlines()
    assert len(lines) <= 60, "\n".join(lines)
    assert done.stderr == ""
    finished = [line for line in lines if line.startswith("done    ")]
    assert sorted(finished)[0].startswith("done    rate=0.4 scope=global: 4 levels")
    assert len(finished) == 4
    assert re.search(r"^\[\d+:\d\d\] 4 trials: 4 done; levels 16/16$", done.stdout, re.M)
    for noise in ("Checkpoint successfully", "TensorBoard", "WARNING", "INFO", "Trial status",
                  "Configuration for experiment", "\x1b["):
        assert noise not in done.stdout, noise
    link = lines[-2]
    assert re.fullmatch(r"MLflow: http://127\.0\.0\.1:5000/#/experiments/\d+/runs\?"
                        r"viewStateShareKey=lt-sweep-quickstart&compareRunsMode=CHART&"
                        r"workflowType=machine_learning", link), link
    assert lines[-1] == (f"  (start the UI first: mlflow ui --backend-store-uri "
                         f"sqlite:///{tmp / 'mlflow.db'}   (serves http://127.0.0.1:5000))")


def _saved_view(client: MlflowClient, experiment_id: str, key: str) -> dict:
    envelope = json.loads(client.get_experiment(experiment_id).tags[f"mlflow.sharedViewState.{key}"])
    state = envelope["state"]
    assert state.startswith("deflate;")
    return json.loads(zlib.decompress(base64.b64decode(state.removeprefix("deflate;"))))


def test_mlflow_holds_the_view_the_names_and_the_answer(finished_sweep) -> None:
    tmp, _ = finished_sweep
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("quickstart")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    view = _saved_view(client, experiment.experiment_id, "lt-sweep-quickstart")
    charts = {c["metricKey"]: c for c in view["compareRunCharts"] if not c["deleted"]}
    assert set(charts) == {"test_acc", "reinit_test_acc"}
    assert all(c["xAxisKey"] == "metric" and c["selectedXAxisMetricKey"] == "density"
               for c in charts.values())
    assert view["runsHiddenMode"] == "SHOW_ALL"
    assert view["searchFilter"] == "tags.`lt.role` = 'trial' and tags.`lt.sweep` = 'quickstart'"
    assert view["orderByKey"] != "attributes.start_time"  # children not nested under the parent

    parents, trials = sweep_runs(uri, "quickstart")
    names = sorted(run.info.run_name for run in trials)
    assert names == ["rate=0.4 scope=global", "rate=0.4 scope=layerwise",
                     "rate=0.6 scope=global", "rate=0.6 scope=layerwise"]
    for run in trials:
        assert re.fullmatch(r"[0-9a-f]+_\d{5}", run.data.tags["ray_trial_id"])
        cpu = client.get_metric_history(run.info.run_id, "system/cpu_utilization_percentage")
        memory = client.get_metric_history(run.info.run_id, "system/process_memory_megabytes")
        assert sorted(m.step for m in cpu) == [0, 1, 2, 3]
        assert all(0 < m.value < 400 for m in cpu) and all(50 < m.value for m in memory)

    (parent,) = parents
    metrics, tags = parent.data.metrics, parent.data.tags
    for slug in ("rate_0.4 scope_global", "rate_0.6 scope_layerwise"):
        assert 0 <= metrics[f"breakdown_sparsity_est/{slug}"] <= 1
        assert 0 <= metrics[f"reinit_breakdown_sparsity_low/{slug}"] <= 1
        assert tags[f"lt.breakdown/{slug}"].startswith("ticket ")
    best = max(v for k, v in metrics.items() if k.startswith("breakdown_sparsity_est/"))
    assert metrics["best_breakdown_sparsity_est"] == best
    best_slug = configuration_slug(tags["lt.best_configuration"])
    assert metrics[f"breakdown_sparsity_est/{best_slug}"] == best  # ties: any of them
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"breakdown.csv", "breakdown.txt", "plots", "images"} <= artifacts


def test_report_prints_the_table_and_writes_csv(finished_sweep) -> None:
    tmp, _ = finished_sweep
    out = tmp / "report"
    done = run_cli(["report", "quickstart", "--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}",
                    "--out", str(out)], cwd=tmp)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "pruning.rate=0.4, pruning.scope=global" in done.stdout
    rows = list(csv.DictReader((out / "breakdown.csv").open()))
    assert len(rows) == 4
    assert (out / "breakdown.png").stat().st_size > 1000


def test_report_html_stands_alone(finished_sweep) -> None:
    tmp, _ = finished_sweep
    out = tmp / "html"
    done = run_cli(["report", "quickstart", "--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}",
                    "--out", str(out), "--html"], cwd=tmp)
    assert done.returncode == 0, done.stderr[-2000:]
    page = (out / "breakdown.html").read_text()
    assert "<table>" in page and "pruning.rate=0.4, pruning.scope=global" in page
    images = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 2
    assert all(base64.b64decode(image)[:8] == b"\x89PNG\r\n\x1a\n" for image in images)
    assert "name: quickstart" in page  # the study, as the sweep recorded it
    # Nothing is fetched when the page opens: no script, stylesheet or remote resource.
    assert not re.search(r"<script|<link|@import|(src|href)\s*=\s*[\"']?(https?:)?//|url\(",
                         page, re.I)
    assert "MLflow: http://127.0.0.1:5000/#/experiments/" in done.stdout  # the report's link


def test_report_on_a_missing_experiment_exits_2(finished_sweep) -> None:
    tmp, _ = finished_sweep
    done = run_cli(["report", "no_such_experiment", "--tracking-uri",
                    f"sqlite:///{tmp / 'mlflow.db'}", "--out", str(tmp / "r2")], cwd=tmp)
    assert done.returncode == 2
    assert "no_such_experiment" in done.stderr
    assert not (tmp / "r2" / "breakdown.csv").exists()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine: apt-get install "
                                             "chromium (.ci/run installs it)")
def test_the_printed_link_opens_the_sweep_in_a_real_browser(finished_sweep, tmp_path) -> None:
    """`mlflow ui` on 127.0.0.1, headless Chromium on the link the sweep printed: the runs page
    lists every trial by its swept values and charts accuracy against density."""
    tmp, done = finished_sweep
    link = next(line for line in done.stdout.splitlines() if line.startswith("MLflow: "))
    port = free_port()
    url = link.removeprefix("MLflow: ").replace("127.0.0.1:5000", f"127.0.0.1:{port}")
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "ui", "--backend-store-uri",
         f"sqlite:///{tmp / 'mlflow.db'}", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health", timeout=120)
        page = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
             "--window-size=1600,1000", "--virtual-time-budget=120000", "--dump-dom", url],
            capture_output=True, text=True, timeout=240).stdout
    finally:
        server.terminate()
        server.wait(timeout=30)
    for name in ("rate=0.4 scope=global", "rate=0.4 scope=layerwise", "rate=0.6 scope=global",
                 "rate=0.6 scope=layerwise"):
        assert name in page, name
    # the four trials, each a row of its own (not collapsed under the parent)
    assert re.search(r"<strong>4</strong>\s*matching runs", page)
    titles = re.findall(r'class="[^"]*xtitle[^"]*"[^>]*>([^<]*)<', page)
    # The accuracy charts (ticket, reinit) against density; MLflow's system-metric charts
    # (CPU, memory) keep their time axis.
    assert titles.count("density") == 2 and set(titles) <= {"density", "Time", ""}, titles
    assert "reinit_test_acc" in page and "Model training" in page
