"""A network whose training loss becomes NaN/inf: it stops at once, its level says ``diverged``
(no NaN in any JSON file), a diverged ticket ends the pruning (also on resume), a diverged
control does not; the breakdown counts a diverged level as below tolerance, and the report, the
console and MLflow say "diverged", not "breakdown". Real training on the tiny MNIST split, a real
SQLite MLflow store, and one small real sweep."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from ray.tune.experiment import Trial

from lt_core.breakdown import (BROKEN, DIVERGED, BreakdownRule, divergence, levels_below, locate,
                               trial_summary)
from lt_core.controls import CONTROLS, ControlInputs, ControlStart
from lt_core.imp import ImpRun
from lt_core.levels import LevelRecord
from lt_core.retrain import RETRAIN_MODES
from lt_core.retrain.base import RetrainMode
from lt_core.rundir import (atomic_write_json, level_dir, metrics_file, network_files,
                            read_json, run_records)
from sweeps.console import SweepConsole
from sweeps.html_report import html_page
from sweeps.layout import divergence_tag
from sweeps.report import build_report
from sweeps.study import load_study
from sweeps.tracking import sweep_answer
from tests.sweep_helpers import QUICKSTART, run_cli, small_sweep_args, sweep_runs

RULE = BreakdownRule(tolerance_pp=1.0, metric="test_acc")
ABSURD_LR = 1e12  # Adam moves every weight by about the LR: logits overflow after one step
ITERATIONS = 40  # tiny_config's train.length


def strict_json(path: Path):
    """Parse as strict JSON: NaN, Infinity and -Infinity are errors."""
    def refuse(constant: str):
        raise ValueError(f"{path}: {constant} is not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


def every_json_is_strict(root: Path, skip: tuple[str, ...] = ()) -> int:
    files = sorted(path for path in root.rglob("*.json") if not path.name.startswith(skip))
    for path in files:
        strict_json(path)
    return len(files)


def blow_up(inputs: ControlInputs) -> ControlStart:
    """A control that starts from the ticket's weights times 1e30: its logits overflow, so its
    very first loss is not finite."""
    return ControlStart({k: v * 1e30 if v.is_floating_point() else v
                         for k, v in inputs.ticket.items()}, inputs.masks)


class AbsurdLrWhenPruned(RetrainMode):
    """Rewinding, at an absurd learning rate: the dense level trains, pruned levels diverge."""

    def lr_at(self, schedule, end):
        return lambda iteration: ABSURD_LR


# ---- the engine ----------------------------------------------------------------------------------
def test_a_diverging_network_stops_at_once_and_writes_strict_json(tiny_config, tiny_data,
                                                                  tmp_path: Path) -> None:
    config = tiny_config({"train": {"lr": ABSURD_LR}, "imp": {"levels": 2}})
    run = ImpRun(config, tmp_path, data=tiny_data)
    rows = run.run()
    assert [row["level"] for row in rows] == [0]  # the dense ticket diverged: no pruning
    dense = strict_json(metrics_file(level_dir(tmp_path, 0)))
    assert dense["status"] == "diverged"
    assert dense["train_loss"] is None
    assert 0 < dense["train_samples"] < ITERATIONS * config.train.batch_size  # stopped at once
    history = strict_json(network_files(level_dir(tmp_path, 0), "ticket").history)
    assert history[-1]["status"] == "diverged"
    assert history[-1]["iteration"] == dense["train_samples"] // config.train.batch_size
    assert 0 <= dense["test_acc"] <= 1  # measured on the weights it stopped with
    assert every_json_is_strict(tmp_path) == 3  # metrics, ticket and history
    assert not level_dir(tmp_path, 1).exists()
    with pytest.raises(RuntimeError, match="the ticket diverged at level 0"):
        run.run_level(1)
    assert locate(run.records(), "ticket", RULE) is None  # no dense accuracy to break from
    assert divergence(run.records(), "ticket", RULE).position == 0


def test_a_diverged_ticket_level_is_the_last_also_on_resume(tiny_config, tiny_data, tmp_path,
                                                            monkeypatch) -> None:
    monkeypatch.setitem(RETRAIN_MODES, "absurd", AbsurdLrWhenPruned())
    config = tiny_config({"imp": {"levels": 3, "retrain": "absurd", "controls": ["reinit"]}})
    rows = ImpRun(config, tmp_path, data=tiny_data).run()
    assert [row["level"] for row in rows] == [0, 1]
    assert rows[0]["status"] == "ok" and rows[1]["status"] == "diverged"
    assert rows[1]["controls"]["reinit"]["status"] == "diverged"
    assert rows[0]["train_samples"] == ITERATIONS * config.train.batch_size
    assert rows[1]["train_samples"] < ITERATIONS * config.train.batch_size
    every_json_is_strict(tmp_path)

    # Resumed: nothing is trained again, nothing is pruned further.
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    resumed = ImpRun(config, tmp_path, data=tiny_data)
    assert resumed.run() == rows
    assert resumed.diverged_level() == 1
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before
    assert not any("level_02" in str(path) for path in resumed.files_to_continue(RULE))
    records = run_records(tmp_path)
    assert records[1].diverged("ticket") and not records[0].diverged("ticket")
    assert locate(records, "ticket", RULE).status == DIVERGED


def test_a_diverging_control_does_not_stop_the_ticket(tiny_config, tiny_data, tmp_path: Path,
                                                      monkeypatch) -> None:
    monkeypatch.setitem(CONTROLS, "blow_up", blow_up)
    config = tiny_config({"imp": {"levels": 2, "controls": ["blow_up"]}})
    rows = ImpRun(config, tmp_path, data=tiny_data).run()
    assert [row["level"] for row in rows] == [0, 1, 2]
    for row in rows[1:]:
        assert row["status"] == "ok"
        control = row["controls"]["blow_up"]
        assert control["status"] == "diverged" and control["train_samples"] == 0
        assert control["train_loss"] is None
    every_json_is_strict(tmp_path)
    records = run_records(tmp_path)
    assert divergence(records, "blow_up", RULE).position == 1
    assert locate(records, "blow_up", RULE).status == DIVERGED
    assert divergence(records, "ticket", RULE) is None
    assert divergence_tag(records) == "blow_up at levels 1, 2"


def test_no_nan_can_slip_into_a_json_file(tmp_path: Path) -> None:
    for value in (math.nan, math.inf):
        with pytest.raises(ValueError, match="not JSON compliant"):
            atomic_write_json({"test_loss": value}, tmp_path / "metrics.json")
    assert not (tmp_path / "metrics.json").exists()


# ---- the breakdown on hand-made levels ---------------------------------------------------------
def levels(accuracies: list[float], diverged: set[int] = frozenset(), rate: float = 0.2
           ) -> list[LevelRecord]:
    return [LevelRecord(level, (1 - rate) ** level,
                        {"ticket": {"test_acc": acc, "diverged": float(level in diverged)}})
            for level, acc in enumerate(accuracies)]


def test_a_diverged_level_is_below_tolerance_whatever_it_measured() -> None:
    # Level 2 measured 0.99 (above the 0.97 threshold) but diverged: the walk stops there.
    records = levels([0.98, 0.98, 0.99, 0.98], diverged={2})
    found = locate(records, "ticket", RULE)
    assert found.status == DIVERGED and (found.low.position, found.high.position) == (1, 2)
    assert math.isnan(found.high.accuracy) and found.high.diverged
    assert divergence(records, "ticket", RULE) == found.high
    assert levels_below(records[:3], RULE) == 1
    summary = trial_summary(records, RULE)
    assert summary["breakdown_diverged"] == 1.0 and summary["breakdown_censored"] == 0.0
    assert summary["dense_test_acc"] == 0.98
    # Broken at level 2 first, diverged at level 3 after: a breakdown, not a divergence.
    later = levels([0.98, 0.98, 0.90, 0.98], diverged={3})
    assert locate(later, "ticket", RULE).status == BROKEN
    assert divergence(later, "ticket", RULE) is None
    assert trial_summary(later, RULE)["breakdown_diverged"] == 0.0
    # A diverged dense network: no breakdown, diverged at level 0.
    dense = levels([0.98, 0.98], diverged={0})
    assert locate(dense, "ticket", RULE) is None
    assert divergence(dense, "ticket", RULE).position == 0


def test_status_becomes_a_flat_value_that_round_trips() -> None:
    metrics = {"level": 2, "density": 0.64, "sparsity": 0.36, "test_acc": 0.1, "test_loss": None,
               "status": "diverged",
               "controls": {"reinit": {"level": 2, "density": 0.64, "test_acc": 0.9,
                                       "status": "ok"}}}
    record = LevelRecord.from_metrics(metrics)
    assert record.networks == {"ticket": {"test_acc": 0.1, "diverged": 1.0},
                               "reinit": {"test_acc": 0.9, "diverged": 0.0}}
    flat = record.flat()
    assert flat["diverged"] == 1.0 and flat["reinit_diverged"] == 0.0
    assert LevelRecord.from_flat(flat) == record
    assert record.diverged("ticket") and not record.diverged("reinit")
    assert math.isnan(record.accuracy("ticket", "test_acc"))
    assert record.accuracy("reinit", "test_acc") == 0.9


# ---- the report, from a real MLflow store ------------------------------------------------------
# configuration -> (ticket accuracy per level, levels where the ticket diverged), two seeds each
TRIALS = {
    "train.lr=0.0012": [([0.98, 0.98, 0.975, 0.95], set()), ([0.97, 0.97, 0.965, 0.96], set())],
    "train.lr=0.01": [([0.98, 0.98, 0.99], {2}), ([0.98, 0.98, 0.975, 0.95], set())],
    "train.lr=1e12": [([0.11], {0}), ([0.10], {0})],
}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment(
        "diverging", artifact_location=tmp_path_factory.mktemp("artifacts").as_uri())
    parent = client.create_run(experiment_id, tags={"lt.role": "parent", "lt.sweep": "lr"})
    client.log_batch(parent.info.run_id, params=[Param("breakdown.tolerance", "1.0")])
    now = int(time.time() * 1000)
    for label, seeds in TRIALS.items():
        for seed, (accuracies, diverged) in enumerate(seeds):
            run_id = client.create_run(experiment_id, tags={
                "lt.role": "trial", "lt.sweep": "lr", "lt.config": label}).info.run_id
            metrics = []
            for record in levels(accuracies, diverged):
                metrics += [Metric(key, value, now, record.level)
                            for key, value in record.flat().items()
                            if key not in ("level", "sublevel")]
            client.log_batch(run_id, metrics=metrics)
            client.set_terminated(run_id, "FINISHED")
    return uri


def test_the_report_shows_a_diverged_configuration_not_a_breakdown(store, tmp_path) -> None:
    report = build_report(store, "diverging")
    normal, one_seed, absurd = report.configurations
    assert normal.divergence() is None and normal.summary() is not None
    assert one_seed.summary() is None and absurd.summary() is None
    lines = report.table().splitlines()
    assert lines[2].startswith("train.lr=0.0012") and "diverged" not in lines[2]
    assert lines[3].endswith("diverged at level 2 (density 64.00%), 1/2 seeds")
    assert lines[4].endswith("diverged at level 0 (density 100.00%)")
    assert "diverged at level L: the training loss became NaN/inf" in report.table()
    with report.write_csv(tmp_path / "breakdown.csv").open() as handle:
        rows = {row["configuration"]: row for row in csv.DictReader(handle)}
    assert rows["train.lr=1e12"]["diverged_level"] == "0.0"
    assert rows["train.lr=1e12"]["diverged_seeds"] == "2"
    assert rows["train.lr=1e12"]["breakdown_sparsity_est"] == ""
    assert float(rows["train.lr=0.01"]["diverged_density"]) == pytest.approx(0.64)
    assert rows["train.lr=0.01"]["breakdown_sparsity_mean"] == ""
    assert rows["train.lr=0.0012"]["diverged_seeds"] == "0"
    assert rows["train.lr=0.0012"]["diverged_level"] == ""
    assert float(rows["train.lr=0.0012"]["breakdown_sparsity_est"]) > 0
    metrics, tags = sweep_answer(report)
    assert tags["lt.breakdown/lr_1e12"] == "ticket diverged at level 0 (density 100.00%)"
    assert "breakdown_sparsity_est/lr_1e12" not in metrics
    assert tags["lt.best_configuration"] == "train.lr=0.0012"
    assert "<td>diverged at level 0 (density 100.00%)</td>" in html_page(report, {})
    for figure in (report.plot, report.panels, report.overlay):  # a diverged curve draws too
        assert figure(tmp_path / f"{figure.__name__}.png").read_bytes()[:4] == b"\x89PNG"


def test_the_console_says_diverged(npz_path) -> None:
    study = load_study(QUICKSTART, [f"base.data.path={npz_path}"])
    out = io.StringIO()
    view = SweepConsole(study, ["ticket", "reinit"], "test_acc", every=1e9, stream=out,
                        interactive=False)
    dense, pruned = (Trial("imp", config={"pruning.rate": rate, "pruning.scope": "global"},
                           trial_id=f"t_{i}", stub=True) for i, rate in enumerate((0.4, 0.6)))
    view.on_trial_result(0, [dense], dense, {"level": 0, "density": 1.0, "test_acc": 0.1,
                                             "diverged": 1.0})
    view.on_trial_complete(0, [dense], dense)
    for level, values in enumerate([{"diverged": 0.0},
                                    {"diverged": 0.0, "reinit_diverged": 1.0,
                                     "breakdown_sparsity_low": 0.4, "breakdown_sparsity_est": 0.5,
                                     "breakdown_censored": 1.0, "breakdown_diverged": 0.0},
                                    {"diverged": 1.0, "reinit_diverged": 1.0,
                                     "breakdown_sparsity_low": 0.4, "breakdown_sparsity_est": 0.5,
                                     "breakdown_sparsity_high": 0.64,
                                     "breakdown_censored": 0.0, "breakdown_diverged": 1.0}]):
        view.on_trial_result(0, [pruned], pruned, {"level": level, "density": 0.6 ** level,
                                                   "test_acc": 0.97, **values})
    view.on_trial_complete(0, [pruned], pruned)
    assert out.getvalue().splitlines() == [
        "done    rate=0.4 scope=global: 1 levels, ticket diverged at level 0",
        "done    rate=0.6 scope=global: 3 levels, ticket diverged at level 2; reinit diverged "
        "at level 1"]


# ---- a real sweep --------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_sweep_with_a_diverging_trial_finishes_the_others(tmp_path: Path, npz_path: Path
                                                            ) -> None:
    args = ["run", str(QUICKSTART), *small_sweep_args(npz_path, tmp_path, levels=2),
            "--set", f"space={{train.lr: {{grid: [0.0012, {ABSURD_LR:g}]}}}}"]
    done = run_cli(args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _, trials = sweep_runs(uri, "quickstart")
    client = MlflowClient(uri)
    by_lr = {run.data.params["train.lr"]: run for run in trials}
    assert sorted(by_lr) == ["0.0012", "1000000000000.0"]
    diverged, normal = by_lr["1000000000000.0"], by_lr["0.0012"]
    assert {diverged.info.status, normal.info.status} == {"FINISHED"}
    assert diverged.data.tags["lt.diverged"] == "ticket at level 0"
    assert "lt.diverged" not in normal.data.tags

    def history(run, key):
        return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))

    assert history(diverged, "diverged") == [(0, 1.0)]
    assert [step for step, _ in history(diverged, "test_acc")] == [0]  # no level after it
    assert history(normal, "diverged") == [(0, 0.0), (1, 0.0), (2, 0.0)]
    assert history(normal, "reinit_diverged") == [(1, 0.0), (2, 0.0)]

    lines = done.stdout.splitlines()
    (row,) = [line for line in lines if line.startswith("train.lr=1e+12 ")]
    assert re.search(r" diverged at level 0 \(density 100\.00%\) +-$", row)  # reinit: none
    finished = sorted(line for line in lines if line.startswith("done    "))
    assert finished[0].startswith("done    lr=0.0012: 3 levels, ticket breakdown")
    assert finished[1] == "done    lr=1e+12: 1 levels, ticket diverged at level 0"
    # Every JSON file of the run directories and Tune checkpoints is strict JSON (Tune's own
    # search state is a pickle under a .json name).
    assert every_json_is_strict(tmp_path / "lt_results",
                                skip=("basic-variant-state", "experiment_state")) > 10
    dense = [read_json(metrics_file(level_dir(path, 0)))
             for path in (tmp_path / "lt_results" / "quickstart" / "runs").iterdir()]
    assert sorted(m["status"] for m in dense) == ["diverged", "ok"]
