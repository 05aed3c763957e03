"""MLflow logging of a sweep from the Tune driver: one parent run per sweep, one child run per
trial with every IMP level as a metric step, and end-of-trial and end-of-sweep summaries.

Trials never talk to MLflow: everything here runs in the driver. Every write is idempotent, so a
resumed sweep (a new driver, same study name and experiment) reuses its parent and trial runs and
never logs a level twice.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH
from ray.tune import Callback

from lt_core.metrics import (CONTROL_KEYS, CONTROL_NAMES, LEVEL_KEYS, breakdown_sparsity,
                             dense_accuracy, metric_key)
from sweeps.plots import accuracy_vs_density
from sweeps.report import (CONFIG_TAG, METRIC_PARAM, ROLE_TAG, SWEEP_TAG, TOLERANCE_PARAM,
                           TRIAL_TAG, Report, build_report, read_levels, search_all_runs)

logger = logging.getLogger(__name__)

PARENT_RUN_TAG = "mlflow.parentRunId"
# Every per-level metric a trial run gets, one step per level.
LEVEL_METRICS = LEVEL_KEYS + tuple(f"{c}_{k}" for c in CONTROL_NAMES for k in CONTROL_KEYS)


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {dotted.key: leaf}; lists stay leaves."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def param_text(value: Any) -> str:
    """An MLflow param value: JSON for containers, str otherwise, cut to MLflow's length limit."""
    text = json.dumps(value, default=str) if isinstance(value, (list, tuple, dict)) else str(value)
    return text[:MAX_PARAM_VAL_LENGTH]


def log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    """Log params in batches of MLflow's maximum size."""
    entries = [Param(key, param_text(value)) for key, value in params.items()]
    for start in range(0, len(entries), MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, params=entries[start:start + MAX_PARAMS_TAGS_PER_BATCH])


def artifact_location(tracking_uri: str) -> str | None:
    """Beside the database for a ``sqlite:///`` store (not in the working directory), else the
    server's default."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return (Path(tracking_uri[len("sqlite:///"):]).resolve().parent / "mlartifacts").as_uri()


def experiment_id_for(client: MlflowClient, name: str, tracking_uri: str) -> str:
    """The id of the named experiment, created (or restored from deletion) when needed."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name, artifact_location=artifact_location(tracking_uri))
    if experiment.lifecycle_stage != "active":
        client.restore_experiment(experiment.experiment_id)
    return experiment.experiment_id


def find_run(client: MlflowClient, experiment_id: str, tags: dict[str, str]) -> Run | None:
    """The oldest run carrying all these tags, if any."""
    runs = search_all_runs(client, experiment_id, tags)
    return runs[0] if runs else None


def reopen(client: MlflowClient, run: Run) -> None:
    """Mark a reused run RUNNING again (it may have been left FAILED or FINISHED)."""
    if run.info.status != "RUNNING":
        client.update_run(run.info.run_id, status="RUNNING")


def sweep_params(study) -> dict[str, Any]:
    """The study's resolved YAML as dotted params, plus its swept keys and the breakdown's
    tolerance and metric."""
    return {**flatten(study.raw), "swept_keys": ",".join(study.swept_keys),
            TOLERANCE_PARAM: study.breakdown.tolerance, METRIC_PARAM: study.breakdown.metric}


def ensure_parent_run(client: MlflowClient, experiment_id: str, study) -> str:
    """The sweep's parent run: reused when the study was run before in this experiment, else
    created with the study's params, its YAML file and ``study_resolved.yaml``."""
    tags = {SWEEP_TAG: study.name, ROLE_TAG: "parent"}
    run = find_run(client, experiment_id, tags)
    if run is None:
        run = client.create_run(experiment_id, tags=tags, run_name=study.name)
    run_id = run.info.run_id
    if not run.data.params:
        log_params(client, run_id, sweep_params(study))
        client.log_artifact(run_id, str(study.source_path))
        client.log_text(run_id, yaml.safe_dump(study.raw, sort_keys=False), "study_resolved.yaml")
    reopen(client, run)
    return run_id


def swept_values(trial_config: dict[str, Any]) -> dict[str, Any]:
    """The trial's swept {dotted key: value}, without Tune-internal keys (leading ``_``)."""
    return {key: value for key, value in trial_config.items() if not key.startswith("_")}


def config_label(swept: dict[str, Any]) -> str:
    """``k=v, ...`` of the swept values except the seed, sorted by key: shared by the seeds of one
    configuration."""
    return ", ".join(f"{key}={swept[key]}" for key in sorted(swept) if key != "seed")


def ensure_child_run(client: MlflowClient, experiment_id: str, parent_run_id: str, sweep: str,
                     trial_id: str, swept: dict[str, Any], params: dict[str, Any]) -> str:
    """The trial's run, found by its Ray trial id and sweep (a resumed sweep reuses it), else
    created under the parent; params (the resolved experiment config) are logged once."""
    tags = {TRIAL_TAG: trial_id, SWEEP_TAG: sweep}
    run = find_run(client, experiment_id, tags)
    if run is None:
        run = client.create_run(experiment_id, run_name=trial_id, tags={
            **tags, PARENT_RUN_TAG: parent_run_id, ROLE_TAG: "trial",
            CONFIG_TAG: config_label(swept)})
    if not run.data.params:
        log_params(client, run.info.run_id, params)
    reopen(client, run)
    return run.info.run_id


def logged_levels(client: MlflowClient, run_id: str) -> dict[int, dict]:
    """{level: metrics} already logged to a run, rebuilt from its metric histories."""
    keys = [key for key in client.get_run(run_id).data.metrics if key in LEVEL_METRICS]
    return {row["level"]: row for row in read_levels(client, run_id, keys)}


def level_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The per-level metrics present in a Tune result (ticket and controls)."""
    return {key: float(result[key]) for key in LEVEL_METRICS if result.get(key) is not None}


def log_level(client: MlflowClient, run_id: str, result: dict[str, Any],
              logged: dict[int, dict]) -> bool:
    """Log one level's metrics at step=level unless a level at least as high is already logged
    (``logged``, updated in place); True when logged."""
    level = int(result["level"])
    if logged and level <= max(logged):
        return False
    metrics = level_metrics(result)
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(key, value, now, level)
                                      for key, value in metrics.items()])
    logged[level] = {"level": level, **metrics}
    return True


def trial_summary(levels: list[dict], tolerance_pp: float,
                  metric: str = "test_acc") -> dict[str, float]:
    """Dense accuracy and breakdown sparsity (under ``metric``) of the ticket and of each control
    present."""
    summary = {"dense_test_acc": dense_accuracy(levels),
               "breakdown_sparsity": breakdown_sparsity(levels, tolerance_pp, metric)}
    for name in CONTROL_NAMES:
        if any(metric_key(metric, name) in level for level in levels):
            summary[f"{name}_breakdown_sparsity"] = breakdown_sparsity(levels, tolerance_pp,
                                                                       metric, name)
    return summary


def plot_trial(levels: list[dict], tolerance_pp: float, metric: str, title: str,
               path: Path) -> Path:
    """Accuracy (under ``metric``) vs density of the ticket and each control of one trial."""
    series = {}
    for name in (None, *CONTROL_NAMES):
        key = metric_key(metric, name)
        rows = [lv for lv in levels if key in lv]
        if rows:
            series[name or "ticket"] = ([lv["density"] for lv in rows], [lv[key] for lv in rows],
                                        None)
    return accuracy_vs_density(series, dense_accuracy(levels, metric), tolerance_pp, title, path,
                               metric)


def finish_trial(client: MlflowClient, run_id: str, levels: dict[int, dict], tolerance_pp: float,
                 title: str, metric: str = "test_acc") -> None:
    """Log the trial's summary metrics (each once) and its plot, then mark the run FINISHED."""
    ordered = [levels[level] for level in sorted(levels)]
    if ordered and ordered[0]["level"] == 0:
        existing = client.get_run(run_id).data.metrics
        summary = {key: value for key, value in trial_summary(ordered, tolerance_pp, metric).items()
                   if existing.get(key) != value}
        now, step = int(time.time() * 1000), ordered[-1]["level"]
        client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in summary.items()])
        with tempfile.TemporaryDirectory() as temp:
            path = plot_trial(ordered, tolerance_pp, metric, title,
                              Path(temp) / "accuracy_vs_density.png")
            client.log_artifact(run_id, str(path), "plots")
    client.set_terminated(run_id, "FINISHED")


def log_sweep_summary(client: MlflowClient, run_id: str, report: Report) -> None:
    """The breakdown table (CSV and text) and the overlay plots, as parent run artifacts."""
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        report.write_csv(folder / "breakdown.csv")
        (folder / "breakdown.txt").write_text(report.table() + "\n")
        report.overlay(folder / "plots" / "sweep_overlay.png")
        report.plot(folder / "plots" / "breakdown.png")
        client.log_artifacts(run_id, temp)


def _study_trial_config(study, params: dict[str, Any]):
    from sweeps.study import trial_config  # the lead's module; imported when first needed

    return trial_config(study, params)


class MlflowLevelLogger(Callback):
    """Tune callback (driver only): a parent run per sweep, a child run per trial, one metric
    step per IMP level, summaries at trial and sweep end."""

    def __init__(self, study, tracking_uri: str, experiment_name: str, *,
                 resolve_config: Callable[[Any, dict], Any] | None = None):
        self.study = study
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self.resolve_config = resolve_config or _study_trial_config
        self._forget_connection()

    def _forget_connection(self) -> None:
        self._client: MlflowClient | None = None
        self._experiment_id: str | None = None
        self._parent_run_id: str | None = None
        self._run_ids: dict[str, str] = {}  # trial id -> MLflow run id
        self._levels: dict[str, dict[int, dict]] = {}  # trial id -> {level: metrics}

    # Tune pickles its RunConfig (with the callbacks): only the settings travel.
    def __getstate__(self) -> dict[str, Any]:
        keep = ("study", "tracking_uri", "experiment_name", "resolve_config")
        return {key: self.__dict__[key] for key in keep}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._forget_connection()

    def connect(self) -> MlflowClient:
        """The MLflow client; on first use also the experiment and the sweep's parent run."""
        if self._client is None:
            client = MlflowClient(self.tracking_uri)
            self._experiment_id = experiment_id_for(client, self.experiment_name, self.tracking_uri)
            self._parent_run_id = ensure_parent_run(client, self._experiment_id, self.study)
            self._client = client
        return self._client

    @property
    def parent_run_id(self) -> str:
        """The sweep's parent run id (connecting on first use)."""
        self.connect()
        return self._parent_run_id

    def trial_run_id(self, trial, reopen_run: bool = False) -> str:
        """The trial's run id, found or created on first use (or when reopening a started trial);
        its logged levels are then read back from MLflow."""
        if reopen_run or trial.trial_id not in self._run_ids:
            swept = swept_values(trial.config)
            params = flatten(self.resolve_config(self.study, swept).model_dump(mode="json"))
            run_id = ensure_child_run(self.connect(), self._experiment_id, self.parent_run_id,
                                      self.study.name, trial.trial_id, swept, params)
            self._run_ids[trial.trial_id] = run_id
            self._levels[trial.trial_id] = logged_levels(self.connect(), run_id)
        return self._run_ids[trial.trial_id]

    def trial_levels(self, trial) -> list[dict]:
        """The trial's levels logged so far, in level order."""
        self.trial_run_id(trial)
        levels = self._levels[trial.trial_id]
        return [levels[level] for level in sorted(levels)]

    def setup(self, **info) -> None:
        self.connect()

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.trial_run_id(trial, reopen_run=True)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if "level" not in result:
            return
        run_id = self.trial_run_id(trial)
        log_level(self.connect(), run_id, result, self._levels[trial.trial_id])

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        run_id = self.trial_run_id(trial)
        swept = swept_values(trial.config)
        title = f"{self.study.name} {trial.trial_id}: " + ", ".join(
            f"{key}={swept[key]}" for key in sorted(swept))
        finish_trial(self.connect(), run_id, self._levels[trial.trial_id],
                     self.study.breakdown.tolerance, title, self.study.breakdown.metric)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        run_id = self.trial_run_id(trial)
        self.connect().set_terminated(run_id, "FAILED")

    def on_experiment_end(self, trials, **info) -> None:
        client = self.connect()
        try:
            report = build_report(self.tracking_uri, self.experiment_name,
                                  self.study.breakdown.tolerance, sweep=self.study.name,
                                  metric=self.study.breakdown.metric)
        except ValueError as error:  # no trial finished its dense level: nothing to summarise
            logger.warning("no sweep summary: %s", error)
        else:
            log_sweep_summary(client, self.parent_run_id, report)
        client.set_terminated(self.parent_run_id, "FINISHED")
