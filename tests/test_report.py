"""The breakdown report, read from a real SQLite MLflow store filled with MlflowClient directly:
two configurations x two seeds, four levels each, with a reinit control."""

from __future__ import annotations

import csv
import math

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from sweeps.report import build_report, report_command

EXPERIMENT = "lenet-report"
RATES = {"pruning.rate=0.2": 0.2, "pruning.rate=0.4": 0.4}
# (configuration, seed): ticket accuracies at levels 0-3, reinit accuracies at levels 1-3.
ACCURACIES = {
    ("pruning.rate=0.2", 0): ([0.98, 0.981, 0.975, 0.96], [0.975, 0.95, 0.94]),
    ("pruning.rate=0.2", 1): ([0.97, 0.965, 0.962, 0.961], [0.95, 0.94, 0.93]),
    ("pruning.rate=0.4", 0): ([0.98, 0.97, 0.95, 0.94], [0.96, 0.95, 0.94]),
    ("pruning.rate=0.4", 1): ([0.98, 0.98, 0.975, 0.971], [0.972, 0.90, 0.90]),
}


def write_trial_run(client: MlflowClient, experiment_id: str, label: str, seed: int,
                    sweep: str = "lenet", levels: int = 4, status: str = "FINISHED") -> None:
    tickets, reinits = ACCURACIES[(label, seed % 2)]
    run_id = client.create_run(experiment_id, run_name=f"{label} seed={seed}", tags={
        "lt.role": "trial", "lt.sweep": sweep, "lt.config": label,
        "ray_trial_id": f"{label}-{seed}"}).info.run_id
    metrics = []
    for level, acc in enumerate(tickets[:levels]):
        density = (1 - RATES[label]) ** level
        # The accuracy at early stop: the final one, except that level 1 dips 3 pp.
        early = acc - (0.03 if level == 1 else 0.0)
        values = {"density": density, "sparsity": 1 - density, "test_acc": acc,
                  "early_stop_acc": early}
        if level >= 1:
            values["reinit_test_acc"] = reinits[level - 1]
            values["reinit_early_stop_acc"] = reinits[level - 1]
        metrics += [Metric(key, value, 1000 + level, level) for key, value in values.items()]
    client.log_batch(run_id, metrics=metrics)
    client.set_terminated(run_id, status)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """The four trial runs, a failed one, and a parent run logging a tolerance of 2 pp."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment(
        EXPERIMENT, artifact_location=(tmp_path_factory.mktemp("artifacts")).as_uri())
    parent = client.create_run(experiment_id, tags={"lt.role": "parent", "lt.sweep": "lenet"})
    client.log_batch(parent.info.run_id, params=[Param("breakdown.tolerance", "2.0")])
    for label, seed in ACCURACIES:
        write_trial_run(client, experiment_id, label, seed)
    write_trial_run(client, experiment_id, "pruning.rate=0.2", 2, levels=2, status="FAILED")
    client.create_experiment("empty", artifact_location=(tmp_path_factory.mktemp("e")).as_uri())
    return uri


def test_breakdown_per_configuration(store):
    report = build_report(store, EXPERIMENT, tolerance_pp=1.0)
    assert report.controls == ["reinit"]
    low, high = report.configurations
    assert (low.label, low.n, high.label, high.n) == ("pruning.rate=0.2", 2, "pruning.rate=0.4", 2)
    assert low.dense_acc == pytest.approx((0.975, 0.00707107), abs=1e-6)
    assert low.breakdown() == pytest.approx((0.424, 0.09050967), abs=1e-6)
    assert low.breakdown("reinit") == pytest.approx((0.1, 0.14142136), abs=1e-6)
    assert high.breakdown() == pytest.approx(((0.4 + 0.784) / 2, 0.27152900), abs=1e-6)
    assert high.breakdown("reinit") == pytest.approx((0.2, 0.28284271), abs=1e-6)
    densities, means, stds = high.curve()
    assert densities == pytest.approx([1.0, 0.6, 0.36, 0.216])
    assert means[2] == pytest.approx(0.9625) and stds[0] == 0.0
    assert low.curve("reinit")[0] == pytest.approx([0.8, 0.64, 0.512])


# By hand, tolerance 1 pp (see ACCURACIES):
# rate 0.2 ticket: seed 0 breaks between levels 2 and 3 (its bracket's low end at density 0.64);
#   seed 1 stays within to level 3 (censored at density 0.512). A lower bound, from the low
#   ends: 1 - sqrt(0.64 * 0.512) = 42.76%.
# rate 0.2 reinit: seed 0 crosses at 0.8^1.2 = 0.765082, seed 1 (at first level) at 0.8^0.5 =
#   0.894427: mean 1 - sqrt(0.684310) = 17.28%; logs differ by 0.156200, sd 0.110450, half width
#   12.706205 * 0.110450 / sqrt(2) = 0.992350: density 0.827230 * e^(-/+0.99235) = [0.3067, 1].
# rate 0.4 ticket: seed 0's low end at 0.6 (level 1 sits on the threshold), seed 1 censored at
#   0.216: a lower bound of 1 - sqrt(0.6 * 0.216) = 64.00%.
# rate 0.4 reinit: seed 0 at 0.6^0.5 = 0.774597, seed 1 at 0.6^1.027778 = 0.591549: 32.31%,
#   interval [0.00, 87.79].
def test_table_shows_estimates_intervals_and_lower_bounds(store):
    table = build_report(store, EXPERIMENT, tolerance_pp=1.0).table()
    lines = table.splitlines()
    assert "where test_acc falls 1 pp below" in lines[0]
    assert lines[1].split() == ["configuration", "n", "dense", "acc", "%", "ticket", "breakdown",
                                "%", "reinit", "breakdown", "%"]
    assert lines[2].split() == ["pruning.rate=0.2", "2", "97.50", "±", "0.71", ">", "42.76",
                                "(1/2", "censored)", "17.28", "[0.00,", "69.33]"]
    assert lines[3].split() == ["pruning.rate=0.4", "2", "98.00", "±", "0.00", ">", "64.00",
                                "(1/2", "censored)", "32.31", "[0.00,", "87.79]"]
    assert len({len(line) for line in lines[1:4]}) == 1  # aligned columns
    assert "> x: some seeds never fell below (censored)" in table
    assert lines[-1] == "(1 failed or killed trial runs left out)"


def test_configuration_summaries(store):
    low, high = build_report(store, EXPERIMENT, tolerance_pp=1.0).configurations
    ticket = low.summary()
    assert (ticket.n, ticket.censored, ticket.lower_bound, ticket.ci) == (2, 1, True, None)
    assert ticket.sparsity_est == pytest.approx(1 - math.sqrt(0.64 * 0.512), abs=1e-9)
    assert ticket.sparsity_high is None
    reinit = low.summary("reinit")
    assert reinit.sparsity_est == pytest.approx(1 - 0.827230, abs=1e-6)
    assert reinit.ci == pytest.approx((0.0, 1 - 0.306657), abs=1e-5)
    # Bracket ends: geometric means of (0.8, 1.0) and (0.64, 0.8) remaining.
    assert reinit.sparsity_low == pytest.approx(1 - math.sqrt(0.8), abs=1e-9)
    assert reinit.sparsity_high == pytest.approx(1 - math.sqrt(0.64 * 0.8), abs=1e-9)
    assert high.summary("reinit").sparsity_est == pytest.approx(1 - 0.676914, abs=1e-5)


def test_tolerance_defaults_to_the_logged_parent_param(store):
    report = build_report(store, EXPERIMENT)
    assert report.tolerance_pp == 2.0
    assert report.configurations[0].breakdown() == pytest.approx((0.488, 0.0), abs=1e-9)


def test_csv_and_plot(store, tmp_path):
    report = build_report(store, EXPERIMENT, tolerance_pp=1.0)
    with report.write_csv(tmp_path / "breakdown.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["configuration"] for row in rows] == ["pruning.rate=0.2", "pruning.rate=0.4"]
    assert float(rows[0]["breakdown_sparsity_mean"]) == pytest.approx(0.424)
    assert float(rows[1]["reinit_breakdown_sparsity_std"]) == pytest.approx(0.28284271)
    assert float(rows[0]["tolerance_pp"]) == 1.0 and rows[0]["n"] == "2"
    # New columns, ticket unprefixed and each control prefixed; empty where a value cannot exist.
    first = rows[0]
    assert first["censored"] == "1" and first["reinit_censored"] == "0"
    assert float(first["breakdown_sparsity_est"]) == pytest.approx(0.427567, abs=1e-6)
    assert first["breakdown_sparsity_high"] == "" and first["breakdown_sparsity_ci_low"] == ""
    assert float(first["breakdown_sparsity_low"]) == pytest.approx(1 - math.sqrt(0.64 * 0.512))
    assert float(first["reinit_breakdown_sparsity_ci_high"]) == pytest.approx(0.693343, abs=1e-5)
    assert float(first["reinit_breakdown_sparsity_low"]) < \
        float(first["reinit_breakdown_sparsity_est"]) < float(first["reinit_breakdown_sparsity_high"])
    assert float(first["reinit_levels_measured"]) == 3.0
    png = report.plot(tmp_path / "breakdown.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report.overlay(tmp_path / "overlay.png").stat().st_size > 0
    panels = report.panels(tmp_path / "panels.png")
    assert panels.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_command_prints_and_writes(store, tmp_path, capsys):
    assert report_command(EXPERIMENT, store, 1.0, tmp_path / "out") == 0
    printed = capsys.readouterr().out
    assert "pruning.rate=0.4" in printed
    assert f"wrote {tmp_path / 'out' / 'breakdown.csv'}" in printed
    assert (tmp_path / "out" / "breakdown.png").is_file()
    assert (tmp_path / "out" / "breakdown_panels.png").is_file()


def test_sweep_filter(store):
    with pytest.raises(ValueError, match="no trial runs of sweep 'other'"):
        build_report(store, EXPERIMENT, 1.0, sweep="other")
    assert build_report(store, EXPERIMENT, 1.0, sweep="lenet").configurations[0].n == 2


def test_missing_database_is_an_error_and_is_not_created(tmp_path):
    uri = f"sqlite:///{tmp_path}/none.db"
    with pytest.raises(ValueError, match="no MLflow experiment 'x' in .*no such database file"):
        build_report(uri, "x")
    assert not (tmp_path / "none.db").exists()


def test_missing_experiment_or_runs_is_a_clear_error(store):
    with pytest.raises(ValueError, match=f"no MLflow experiment 'nope' in {store}"):
        report_command("nope", store, None, "unused")
    with pytest.raises(ValueError, match="'empty' .* has no trial runs"):
        report_command("empty", store, None, "unused")


def test_metric_chooses_the_accuracy(store, tmp_path, capsys):
    report = build_report(store, EXPERIMENT, metric="early_stop_acc")
    assert report.metric == "early_stop_acc"
    # Every ticket's level 1 is 3 pp lower at early stop: beyond the 2 pp tolerance.
    assert [c.breakdown() for c in report.configurations] == [(0.0, 0.0), (0.0, 0.0)]
    # reinit's early-stop accuracies equal its final ones: the same breakdown as under test_acc.
    assert report.configurations[0].breakdown("reinit") == pytest.approx((0.2, 0.0))
    assert build_report(store, EXPERIMENT).configurations[0].breakdown("reinit") == \
        pytest.approx((0.2, 0.0))
    assert report_command(EXPERIMENT, store, None, tmp_path, "early_stop_acc") == 0
    assert "where early_stop_acc falls 2 pp below" in capsys.readouterr().out
    with pytest.raises(ValueError, match="metric 'val_acc': not one of"):
        build_report(store, EXPERIMENT, metric="val_acc")
