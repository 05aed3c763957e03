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
import threading
import time
from pathlib import Path
from typing import Any, Callable

import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run
from mlflow.utils.validation import (MAX_METRICS_PER_BATCH, MAX_PARAM_VAL_LENGTH,
                                     MAX_PARAMS_TAGS_PER_BATCH, MAX_TAG_VAL_LENGTH)
from PIL import Image
from ray.tune import Callback

from lt_core.breakdown import BreakdownRule, dense_accuracy, locate, trial_summary
from lt_core.levels import LevelRecord, networks_in
from lt_core.metrics import TICKET, metric_name
from sweeps.layout import (CONFIG_TAG, METRIC_PARAM, PARENT_RUN_TAG, REFINE_FAILED_TAG, ROLE_TAG,
                           RUN_NAME_TAG, SWEEP_TAG, SYSTEM_PREFIX, TOLERANCE_PARAM, TRIAL_TAG,
                           WORKER_TAG, configuration_slug, point_entries, point_of,
                           records_from_history, trial_label)
from sweeps.mlflow_view import ensure_view, link_lines
from sweeps.plots import accuracy_vs_density
from sweeps.report import (Report, breakdown_cell, breakdown_mark, build_report, metric_entries,
                           search_all_runs)

logger = logging.getLogger(__name__)

# A trial's logged per-level values: {(metric key, step): value}.
Logged = dict[tuple[str, int], float]


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


def unique_run_name(client: MlflowClient, experiment_id: str, sweep: str, name: str) -> str:
    """``name``, or ``name #2``, ``#3``... when another trial of the sweep has it already."""
    candidate, number = name, 1
    while find_run(client, experiment_id, {SWEEP_TAG: sweep, RUN_NAME_TAG: candidate}):
        number += 1
        candidate = f"{name} #{number}"
    return candidate


def ensure_child_run(client: MlflowClient, experiment_id: str, parent_run_id: str, sweep: str,
                     trial_id: str, swept: dict[str, Any], params: dict[str, Any],
                     swept_keys: list[str] | None = None) -> str:
    """The trial's run, found by its Ray trial id and sweep (a resumed sweep reuses it), else
    created under the parent and named by its swept values and seed (``rate=0.4 scope=global
    seed=0``); params (the resolved experiment config) are logged once."""
    tags = {TRIAL_TAG: trial_id, SWEEP_TAG: sweep}
    run = find_run(client, experiment_id, tags)
    if run is None:
        name = unique_run_name(client, experiment_id, sweep, trial_label(swept, swept_keys))
        run = client.create_run(experiment_id, run_name=name, tags={
            **tags, PARENT_RUN_TAG: parent_run_id, ROLE_TAG: "trial",
            CONFIG_TAG: config_label(swept)})
    if not run.data.params:
        log_params(client, run.info.run_id, params)
    reopen(client, run)
    return run.info.run_id


def logged_points(client: MlflowClient, run_id: str) -> Logged:
    """Every per-level value already logged to a run (levels and refinement points), read back
    from its metric histories."""
    keys = [key for key in client.get_run(run_id).data.metrics
            if point_of(key, 0) is not None or key.startswith(SYSTEM_PREFIX)]
    return {(key, step): value for key, step, value in metric_entries(client, run_id, keys)}


def records_of(logged: Logged) -> list[LevelRecord]:
    return records_from_history((key, step, value) for (key, step), value in logged.items())


def log_point(client: MlflowClient, run_id: str, result: dict[str, Any], logged: Logged,
              pending: list | None = None) -> bool:
    """Log the per-level values of one reported point (a level, a control added to one, or a
    refinement point) that are not logged yet; ``logged`` is updated in place. True when
    anything was logged. With ``pending``, the write is asynchronous (the Tune driver answers the
    trial at once) and its future is appended there, to be waited for."""
    new = [(key, step, value) for key, step, value in point_entries(result)
           if (key, step) not in logged]
    if not new:
        return False
    now = int(time.time() * 1000)
    operations = client.log_batch(run_id, metrics=[Metric(key, value, now, step)
                                                   for key, step, value in new],
                                  synchronous=pending is None)
    if pending is not None and operations is not None:
        pending.append(operations)
    logged.update({(key, step): value for key, step, value in new})
    return True


def plot_trial(records: list[LevelRecord], rule: BreakdownRule, title: str, path: Path) -> Path:
    """Accuracy (under the rule's metric) vs density of the ticket and each control of one
    trial, refinement points included, each curve with its breakdown mark."""
    series, marks = {}, {}
    for network in networks_in(records):
        found = locate(records, network, rule)
        points = [p for p in (found.points if found else ()) if p.position > 0 or
                  network == TICKET]
        if points:
            series[network] = ([p.density for p in points], [p.accuracy for p in points], None)
            marks[network] = breakdown_mark(found)
    return accuracy_vs_density(series, dense_accuracy(records, rule.metric), rule.tolerance_pp,
                               title, path, rule.metric, marks)


def finish_trial(client: MlflowClient, run_id: str, logged: Logged, rule: BreakdownRule,
                 title: str) -> None:
    """Log the trial's breakdown summary (each value once: a refined trial logs the values that
    changed) and its plot, then mark the run FINISHED."""
    records = records_of(logged)
    if records and records[0].point_id == (0, 0):
        existing = client.get_run(run_id).data.metrics
        summary = {key: value for key, value in trial_summary(records, rule).items()
                   if existing.get(key) != value}
        now, step = int(time.time() * 1000), max(r.level for r in records)
        client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in summary.items()])
        with tempfile.TemporaryDirectory() as temp:
            path = plot_trial(records, rule, title, Path(temp) / "accuracy_vs_density.png")
            client.log_artifact(run_id, str(path), "plots")
    client.set_terminated(run_id, "FINISHED")


def sweep_answer(report: Report) -> tuple[dict[str, float], dict[str, str]]:
    """The sweep's answer as parent-run metrics and tags. Per configuration and network, the
    breakdown metrics ``breakdown_sparsity_est/<configuration>`` (``_low``, ``_high``,
    ``_ci_low``, ``_ci_high``, ``censored``; a control's prefixed ``reinit_``...) and a tag
    ``lt.breakdown/<configuration>`` with the table's cells. Then ``best_breakdown_sparsity_est``
    and the tag ``lt.best_configuration``: the configuration whose ticket breaks down sparsest
    (lower bounds count as their bound)."""
    metrics: dict[str, float] = {}
    tags: dict[str, str] = {}
    best: tuple[float, str] | None = None
    for config in report.configurations:
        slug = configuration_slug(config.label)
        cells = []
        for network in report.networks:
            summary = config.summary(network)
            if summary is None:
                continue
            values = {"breakdown_sparsity_est": summary.sparsity_est,
                      "breakdown_sparsity_low": summary.sparsity_low,
                      "breakdown_sparsity_high": summary.sparsity_high,
                      "breakdown_sparsity_ci_low": summary.ci and summary.ci[0],
                      "breakdown_sparsity_ci_high": summary.ci and summary.ci[1],
                      "censored": float(summary.censored)}
            metrics.update({f"{metric_name(key, network)}/{slug}": value
                            for key, value in values.items() if value is not None})
            cells.append(f"{network} {breakdown_cell(summary)}")
            if network == TICKET and (best is None or summary.sparsity_est > best[0]):
                best = (summary.sparsity_est, config.label)
        tags[f"lt.breakdown/{slug}"] = "; ".join(cells)
    if best is not None:
        metrics["best_breakdown_sparsity_est"] = best[0]
        tags["lt.best_configuration"] = best[1]
    return metrics, tags


def log_sweep_summary(client: MlflowClient, run_id: str, report: Report) -> None:
    """The sweep's answer on its parent run: breakdown metrics and tags per configuration
    (``sweep_answer``); the table (CSV and text) and plots as artifacts; the panels figure also
    as an image the runs page shows."""
    metrics, tags = sweep_answer(report)
    now = int(time.time() * 1000)
    entries = [Metric(key, value, now, 0) for key, value in metrics.items()]
    for start in range(0, len(entries), MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=entries[start:start + MAX_METRICS_PER_BATCH])
    for key, value in tags.items():
        client.set_tag(run_id, key, value[:MAX_TAG_VAL_LENGTH])
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        report.write_csv(folder / "breakdown.csv")
        (folder / "breakdown.txt").write_text(report.table() + "\n")
        report.overlay(folder / "plots" / "sweep_overlay.png")
        report.plot(folder / "plots" / "breakdown.png")
        panels = report.panels(folder / "plots" / "breakdown_panels.png")
        client.log_artifacts(run_id, temp)
        with Image.open(panels) as image:
            client.log_image(run_id, image.convert("RGB"), key="sweep", step=0)


def _study_trial_config(study, params: dict[str, Any]):
    from sweeps.study import trial_config  # the lead's module; imported when first needed

    return trial_config(study, params)


def sweep_networks(study) -> list[str]:
    """The ticket and every control the study trains (its base config's, and any it sweeps)."""
    controls = list(study.base_config().imp.controls)
    swept = study.space.get("imp.controls")
    for value in (swept.values or []) if swept is not None else []:
        controls += [name for name in value if name not in controls]
    return [TICKET, *dict.fromkeys(controls)]


def trial_identity(trial) -> tuple[str, dict[str, Any]]:
    """The Ray trial id and swept values a Tune trial's results belong to: its own, or for a
    refinement trial (``lt-sweep refine``) those of the sweep's trial it refines."""
    target = trial.config.get("_refine")
    if target:
        return target["trial_id"], dict(target["swept"])
    return trial.trial_id, swept_values(trial.config)


class MlflowLevelLogger(Callback):
    """Tune callback (driver only): a parent run per sweep, a child run per trial, every level
    and refinement point logged once, summaries at trial and sweep end."""

    def __init__(self, study, tracking_uri: str, experiment_name: str, *,
                 resolve_config: Callable[[Any, dict], Any] | None = None,
                 rule: BreakdownRule | None = None):
        self.study = study
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self.resolve_config = resolve_config or _study_trial_config
        self.rule = rule or BreakdownRule(study.breakdown.tolerance, study.breakdown.metric)
        self._forget_connection()

    def _forget_connection(self) -> None:
        self._client: MlflowClient | None = None
        self._experiment_id: str | None = None
        self._parent_run_id: str | None = None
        self._run_ids: dict[str, str] = {}  # Ray trial id -> MLflow run id
        self._logged: dict[str, Logged] = {}  # Ray trial id -> values logged
        self._pending: dict[str, list] = {}  # Ray trial id -> asynchronous writes in flight
        self._workers: dict[str, str] = {}  # Ray trial id -> where it runs (WORKER_TAG)
        self.report: Report | None = None  # the sweep's report, once the experiment ended
        self.background_summary = False  # set by a caller that waits in finish_summary()
        self._summary: threading.Thread | None = None
        self.link_lines: list[str] = []  # the MLflow UI on this sweep, once connected

    # Tune pickles its RunConfig (with the callbacks): only the settings travel.
    def __getstate__(self) -> dict[str, Any]:
        keep = ("study", "tracking_uri", "experiment_name", "resolve_config", "rule")
        return {key: self.__dict__[key] for key in keep}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._forget_connection()

    def _open(self) -> None:
        client = MlflowClient(self.tracking_uri)
        self._experiment_id = experiment_id_for(client, self.experiment_name, self.tracking_uri)
        self._parent_run_id = ensure_parent_run(client, self._experiment_id, self.study)
        key = ensure_view(client, self._experiment_id, sweep_networks(self.study),
                          self.rule.metric, self.study.name)
        self.link_lines = link_lines(self.tracking_uri, self._experiment_id, key)
        self._client = client

    def connect(self) -> MlflowClient:
        """The MLflow client; on first use also the experiment and the sweep's parent run."""
        if self._client is None:
            self._open()
        return self._client

    def flush(self, trial_id: str | None = None) -> None:
        """Wait for the asynchronous writes of one trial (or of all)."""
        for key in [trial_id] if trial_id is not None else list(self._pending):
            for operations in self._pending.pop(key, []):
                operations.wait()

    @property
    def parent_run_id(self) -> str:
        """The sweep's parent run id (connecting on first use)."""
        self.connect()
        return self._parent_run_id

    def trial_run_id(self, trial, reopen_run: bool = False) -> str:
        """The trial's run id, found or created on first use (or when reopening a started trial);
        what it has logged is then read back from MLflow."""
        trial_id, swept = trial_identity(trial)
        if reopen_run or trial_id not in self._run_ids:
            params = flatten(self.resolve_config(self.study, swept).model_dump(mode="json"))
            run_id = ensure_child_run(self.connect(), self._experiment_id, self.parent_run_id,
                                      self.study.name, trial_id, swept, params,
                                      self.study.swept_keys)
            self._run_ids[trial_id] = run_id
            self._logged[trial_id] = logged_points(self.connect(), run_id)
        return self._run_ids[trial_id]

    def trial_levels(self, trial) -> list[LevelRecord]:
        """The trial's levels and refinement points logged so far, in level order."""
        self.trial_run_id(trial)
        return records_of(self._logged[trial_identity(trial)[0]])

    def setup(self, **info) -> None:
        self.connect()

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.trial_run_id(trial, reopen_run=True)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if "level" not in result:
            return
        run_id = self.trial_run_id(trial)
        trial_id = trial_identity(trial)[0]
        log_point(self.connect(), run_id, result, self._logged[trial_id],
                  self._pending.setdefault(trial_id, []))
        if "pid" in result:  # Tune adds where the trial runs to every result
            worker = f"{result.get('hostname')} ({result.get('node_ip')}) pid {result['pid']}"
            if self._workers.get(trial_id) != worker:
                self.connect().set_tag(run_id, WORKER_TAG, worker)
                self._workers[trial_id] = worker

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        run_id = self.trial_run_id(trial)
        trial_id, swept = trial_identity(trial)
        self.flush(trial_id)
        title = f"{self.study.name} {trial_id}: " + ", ".join(
            f"{key}={swept[key]}" for key in sorted(swept))
        finish_trial(self.connect(), run_id, self._logged[trial_id], self.rule, title)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        run_id = self.trial_run_id(trial)
        self.flush(trial_identity(trial)[0])
        if trial.config.get("_refine"):
            # The sweep's trial itself finished: a failed refinement leaves its run in the report
            # (FINISHED, with what was refined) and says so in a tag.
            self.connect().set_tag(run_id, REFINE_FAILED_TAG, trial.trial_id)
            self.connect().set_terminated(run_id, "FINISHED")
            return
        self.connect().set_terminated(run_id, "FAILED")

    def on_experiment_end(self, trials, **info) -> None:
        if self.background_summary:
            # The caller shuts Ray down meanwhile, then waits in finish_summary().
            self._summary = threading.Thread(target=self._summarise, name="mlflow-summary")
            self._summary.start()
        else:
            self._summarise()

    def finish_summary(self) -> None:
        """Wait for a summary started in the background."""
        if self._summary is not None:
            self._summary.join()
            self._summary = None

    def _summarise(self) -> None:
        """The sweep's report, logged to the parent run, which is then FINISHED."""
        client = self.connect()
        self.flush()
        try:
            report = build_report(self.tracking_uri, self.experiment_name,
                                  self.rule.tolerance_pp, sweep=self.study.name,
                                  metric=self.rule.metric)
        except ValueError as error:  # no trial finished its dense level: nothing to summarise
            logger.warning("no sweep summary: %s", error)
        else:
            log_sweep_summary(client, self.parent_run_id, report)
            self.report = report
        client.set_terminated(self.parent_run_id, "FINISHED")
