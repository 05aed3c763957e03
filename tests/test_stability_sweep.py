"""A transfer study with the instability analysis, end to end: `lt-sweep run` (real local Ray,
SQLite MLflow), then `lt-sweep report`; and a transfer source named by its MLflow run id."""

from __future__ import annotations

import csv
import json

import pytest
import yaml

from lt_core.breakdown import BreakdownRule, aggregate, locate
from lt_core.imp import ImpRun
from lt_core.metrics import INSTABILITY, TICKET
from lt_core.rundir import run_records
from sweeps.report import breakdown_cell
from sweeps.transfer import resolve_ticket_source
from tests.sweep_helpers import metric_steps, run_cli, sweep_runs


@pytest.fixture(scope="module")
def source_run(tmp_path_factory, tiny_config, tiny_data):
    out = tmp_path_factory.mktemp("source") / "run"
    config = tiny_config({"train": {"optimizer": "adam", "lr": 1.2e-3},
                          "pruning": {"rate": 0.6}, "imp": {"levels": 2}})
    ImpRun(config, out, data=tiny_data).run()
    return out


@pytest.mark.slow
def test_a_transfer_study_with_instability_lands_in_mlflow_and_the_report(
        source_run, npz_path, tmp_path) -> None:
    study = tmp_path / "transfer.yaml"
    study.write_text(yaml.safe_dump({
        "name": "transfer_stability",
        "base": {"model": {"name": "lenet_300_100"},
                 "data": {"name": "npz", "path": str(npz_path), "train_split": "train[1200:2400]",
                          "test_split": "test[:300]"},
                 "train": {"length": "40it", "eval_every": "20it"},
                 "imp": {"ticket_from": str(source_run), "controls": ["reinit"],
                         "analyses": ["instability"], "analyses_on": ["ticket", "reinit"]},
                 "instability": {"points": 5, "threshold": 2.0}},
        "space": {"seed": {"grid": [0, 1]}},
        "resources": {"cpu": 1},
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        "run": {"storage_path": str(tmp_path / "lt_results")},
        "breakdown": {"tolerance": 50.0, "early_stop": False}}))
    ran = run_cli(["run", str(study)], cwd=tmp_path)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parents, trials = sweep_runs(uri, "transfer_stability")
    assert len(trials) == 2
    import mlflow

    from sweeps.mlflow_view import view_key

    from tests.test_sweep import _saved_view

    client = mlflow.MlflowClient(uri)
    view = _saved_view(client, client.get_experiment_by_name("transfer_stability").experiment_id,
                       view_key("transfer_stability"))
    charted = {card["metricKey"] for card in view["compareRunCharts"] if not card["deleted"]}
    assert charted == {"test_acc", "reinit_test_acc", "instability", "reinit_instability"}
    answer = next(v for k, v in parents[0].data.tags.items() if k.startswith("lt.breakdown/"))
    assert "ticket unstable " in answer and "reinit unstable " in answer
    import mlflow

    client = mlflow.MlflowClient(uri)
    for run in trials:
        assert run.data.tags["lt.ticket_from"] == str(source_run)
        run_dir = run.data.tags["lt.run_dir"]
        assert [r.density for r in run_records(run_dir)] == pytest.approx(
            [r.density for r in run_records(source_run)])
        for key in (INSTABILITY, "reinit_instability", "copy_test_acc", "instability_train"):
            assert metric_steps(uri, run.info.run_id, key) == ([0, 1, 2] if "reinit" not in key
                                                               else [1, 2]), key
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id,
                                                            "level_01/analyses/instability")}
        assert artifacts == {"level_01/analyses/instability/reinit",
                             "level_01/analyses/instability/ticket"}
        curve = client.download_artifacts(
            run.info.run_id, "level_02/analyses/instability/ticket/curve.json", str(tmp_path))
        assert len(json.loads(open(curve).read())["alpha"]) == 5

    out = tmp_path / "report"
    reported = run_cli(["report", "transfer_stability", "--tracking-uri", uri, "--out", str(out),
                        "--html"], cwd=tmp_path)
    assert reported.returncode == 0, reported.stdout + reported.stderr
    header = reported.stdout.splitlines()[1]
    assert "ticket unstable %" in header and "reinit unstable %" in header
    assert "source ticket breakdown %" in header
    source = breakdown_cell(aggregate([locate(run_records(source_run), TICKET,
                                              BreakdownRule(50.0, "test_acc"))]))
    assert reported.stdout.splitlines()[2].rstrip().endswith(source)
    assert (out / "instability.png").stat().st_size > 10_000
    page = (out / "breakdown.html").read_text()
    assert "<h2>Instability</h2>" in page and "source ticket breakdown %" in page
    rows = list(csv.DictReader((out / "instability.csv").open()))
    assert {(r["network"], r["level"]) for r in rows} == {
        ("ticket", "0"), ("ticket", "1"), ("ticket", "2"), ("reinit", "1"), ("reinit", "2")}
    assert all(r["seeds"] == "2" for r in rows)
    summary = next(csv.DictReader((out / "breakdown.csv").open()))
    assert summary["source"] == str(source_run)
    assert int(summary["analysed_seeds"]) == 2 and "reinit_unstable_seeds" in summary


def test_a_source_named_by_its_mlflow_run_id_is_its_run_directory(tmp_path, source_run) -> None:
    import mlflow

    from lt_core.errors import ConfigError

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("found")
    trial = client.create_run(experiment, tags={"lt.run_dir": str(source_run)})
    plain = client.create_run(experiment)
    assert resolve_ticket_source(trial.info.run_id, uri, "f") == str(source_run)
    assert resolve_ticket_source(str(source_run), uri, "f") == str(source_run)
    with pytest.raises(ConfigError, match="is not an lt-sweep trial run"):
        resolve_ticket_source(plain.info.run_id, uri, "f")
    with pytest.raises(ConfigError, match="f: no MLflow run 0{32} in"):
        resolve_ticket_source("0" * 32, uri, "f")


def test_swept_sources_are_resolved_on_the_driver(source_run, npz_path, tmp_path,
                                                  monkeypatch) -> None:
    """A relative source in the space is made absolute where the study is read (trials run in
    other working directories), and a transfer study refuses refinement."""
    from lt_core.errors import ConfigError
    from sweeps.study import load_study

    monkeypatch.chdir(source_run.parent)
    study = tmp_path / "swept.yaml"
    study.write_text(yaml.safe_dump({
        "name": "swept_sources",
        "base": {"model": {"name": "lenet_300_100"},
                 "data": {"name": "npz", "path": str(npz_path)},
                 "train": {"length": "40it"}},
        "space": {"imp.ticket_from": {"grid": [source_run.name]}},
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        "run": {"storage_path": str(tmp_path / "results")}}))
    loaded = load_study(study)
    assert loaded.space["imp.ticket_from"].grid == [str(source_run)]
    assert loaded.transfers
    with pytest.raises(ConfigError, match="breakdown.refine: a transfer study"):
        load_study(study, ["breakdown.refine=2"])
