"""MLflow logging of a sweep from the Tune driver: one parent run per sweep, one child run per
trial with every IMP level as a metric step, and end-of-trial and end-of-sweep summaries.

Trials never talk to MLflow: everything here runs in the driver. Every write is idempotent, so a
resumed sweep (a new driver, same study name and experiment) reuses its parent and trial runs and
never logs a level twice.

An MLflow that stops answering (a tracking server down or restarting) never stops the sweep. The
driver keeps, per trial, what its run is to hold (``TrialRun``: every reported value, its worker,
how it ended) beside what MLflow holds, and brings the run up to date at the next callback once
MLflow answers again (trying at most every ``RETRY_SECONDS``), at the latest at the sweep's end.
Whatever is still missing then is in the results directory, which ``lt-sweep sync``
(``sweeps.sync``) logs with the same functions.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import requests
import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run
from mlflow.exceptions import MlflowException
from mlflow.utils.validation import (MAX_METRICS_PER_BATCH, MAX_PARAM_VAL_LENGTH,
                                     MAX_PARAMS_TAGS_PER_BATCH, MAX_TAG_VAL_LENGTH)
from PIL import Image
from ray.tune import Callback

from lt_core.breakdown import BreakdownRule, dense_accuracy, locate, trial_summary
from lt_core.levels import LevelRecord, networks_in
from lt_core.metrics import TICKET, metric_name
from lt_core.rundir import analysis_curves, metrics_file, point_dirs
from sweeps.background import InBackground
from sweeps.layout import (CONFIG_TAG, DEVICE_RESULT, DEVICE_TAG, DIVERGED_TAG, METRIC_PARAM,
                           PARENT_RUN_TAG, REFINE_FAILED_TAG, ROLE_TAG, RUN_DIR_TAG,
                           RUN_NAME_TAG, SEED_RESULT, SWEEP_TAG, SYSTEM_PREFIX, TICKET_FROM_TAG,
                           TOLERANCE_PARAM, TRIAL_TAG, WORKER_TAG, configuration_slug,
                           divergence_tag, point_entries, point_of, records_from_history,
                           trial_label)
from sweeps.errors import ReportUnavailable
from sweeps.mlflow_view import ensure_view, link_lines
from sweeps.plots import accuracy_vs_density
from sweeps.report import (Report, breakdown_cell, breakdown_mark, build_report, metric_entries,
                           search_all_runs)
from sweeps.trainable import run_directory

logger = logging.getLogger(__name__)

# A trial's logged per-level values: {(metric key, step): value}.
Logged = dict[tuple[str, int], float]

# What an MLflow that cannot be reached raises: a tracking server down or restarting (connection
# refused, timeouts, 5xx after retries), a database that stays locked.
UNREACHABLE = (MlflowException, requests.RequestException, OSError)
# The driver's REST client gives up on a server that does not answer within seconds (MLflow's
# default retries for minutes, which would stall Tune's loop): what failed is kept and retried.
SHORT_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
RETRY_SECONDS = 2.0  # after a failed write, MLflow is left alone this long
END_WAIT_SECONDS = 10.0  # at the sweep's end, how long MLflow may take to answer again


def short_retries() -> None:
    """This process's MLflow REST calls fail within seconds when the server does not answer
    (unless the user set these variables)."""
    for name, value in SHORT_RETRIES.items():
        os.environ.setdefault(name, value)


def short_reason(error: BaseException) -> str:
    """The gist of an MLflow or connection error, for one line (``[Errno 111] Connection
    refused`` rather than a page of urllib3's wrapping)."""
    text = str(error)
    found = re.search(r"\[Errno -?\d+\][^'\")\]]*", text)
    reason = found.group(0) if found else text.splitlines()[0] if text else type(error).__name__
    return reason if len(reason) <= 120 else reason[:117] + "..."


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


def parent_run(client: MlflowClient, experiment_id: str, study) -> Run:
    """The sweep's parent run: found when the study was run before in this experiment, else
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
    return run


def ensure_parent_run(client: MlflowClient, experiment_id: str, study) -> str:
    """The sweep's parent run (``parent_run``), RUNNING."""
    run = parent_run(client, experiment_id, study)
    reopen(client, run)
    return run.info.run_id


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


def child_run(client: MlflowClient, experiment_id: str, parent_run_id: str, sweep: str,
              trial_id: str, swept: dict[str, Any],
              params: dict[str, Any] | Callable[[], dict[str, Any]],
              swept_keys: list[str] | None = None, tags: dict[str, str] | None = None) -> Run:
    """The trial's run, found by its Ray trial id and sweep (a resumed sweep reuses it), else
    created under the parent and named by its swept values and seed (``rate=0.4 scope=global
    seed=0``); params (the resolved experiment config, or a function making them) are logged
    once; ``tags``, more tags to create it with."""
    identity = {TRIAL_TAG: trial_id, SWEEP_TAG: sweep}
    run = find_run(client, experiment_id, identity)
    if run is None:
        name = unique_run_name(client, experiment_id, sweep, trial_label(swept, swept_keys))
        run = client.create_run(experiment_id, run_name=name, tags={
            **identity, PARENT_RUN_TAG: parent_run_id, ROLE_TAG: "trial",
            CONFIG_TAG: config_label(swept), **(tags or {})})
    if not run.data.params:
        log_params(client, run.info.run_id, params() if callable(params) else params)
    return run


def ensure_child_run(client: MlflowClient, experiment_id: str, parent_run_id: str, sweep: str,
                     trial_id: str, swept: dict[str, Any], params: dict[str, Any],
                     swept_keys: list[str] | None = None) -> str:
    """The trial's run (``child_run``), RUNNING."""
    run = child_run(client, experiment_id, parent_run_id, sweep, trial_id, swept, params,
                    swept_keys)
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


def log_entries(client: MlflowClient, run_id: str,
                entries: list[tuple[str, int, float]]) -> None:
    """Log (key, step, value) metric entries, in batches of MLflow's maximum size."""
    now = int(time.time() * 1000)
    metrics = [Metric(key, value, now, step) for key, step, value in entries]
    for start in range(0, len(metrics), MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metrics[start:start + MAX_METRICS_PER_BATCH])


def log_point(client: MlflowClient, run_id: str, result: dict[str, Any], logged: Logged) -> bool:
    """Log the per-level values of one reported point (a level, a control added to one, or a
    refinement point) that are not logged yet; ``logged`` is updated in place. True when
    anything was logged."""
    new = [(key, step, value) for key, step, value in point_entries(result)
           if (key, step) not in logged]
    log_entries(client, run_id, new)
    logged.update({(key, step): value for key, step, value in new})
    return bool(new)


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


def trial_title(sweep: str, trial_id: str, swept: Mapping[str, Any]) -> str:
    """A trial's plot title: sweep, Ray trial id and every swept value."""
    return f"{sweep} {trial_id}: " + ", ".join(f"{key}={swept[key]}" for key in sorted(swept))


def worker_label(result: Mapping[str, Any]) -> str | None:
    """Where a Tune result was measured (``WORKER_TAG``), from the fields Tune adds to it."""
    if "pid" not in result:
        return None
    return f"{result.get('hostname')} ({result.get('node_ip')}) pid {result['pid']}"


def log_analysis_curves(client: MlflowClient, run_id: str, run_dir: Path) -> None:
    """The analyses' curves of every finished point (instability: the error along the linear
    path) as artifacts, laid out as in the run directory (``level_03/analyses/instability/
    ticket/curve.json``); nothing when the run directory is not on this machine."""
    curves = [path for _, _, folder in point_dirs(run_dir) if metrics_file(folder).exists()
              for path in analysis_curves(folder)]
    if not curves:
        return
    with tempfile.TemporaryDirectory() as temp:
        for path in curves:
            target = Path(temp) / path.relative_to(run_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        client.log_artifacts(run_id, temp)


def finish_trial(client: MlflowClient, run_id: str, logged: Logged, rule: BreakdownRule,
                 title: str, run_dir: Path | None = None) -> None:
    """Log the trial's breakdown summary (each value once: a refined trial logs the values that
    changed), its plot, its analyses' curves (from ``run_dir``) and where it diverged
    (``DIVERGED_TAG``), then mark the run FINISHED."""
    records = records_of(logged)
    if diverged := divergence_tag(records):
        client.set_tag(run_id, DIVERGED_TAG, diverged)
    if records and records[0].point_id == (0, 0):
        existing = client.get_run(run_id).data.metrics
        summary = {key: value for key, value in trial_summary(records, rule).items()
                   if existing.get(key) != value}
        now, step = int(time.time() * 1000), max(r.level for r in records)
        client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in summary.items()])
        with tempfile.TemporaryDirectory() as temp:
            path = plot_trial(records, rule, title, Path(temp) / "accuracy_vs_density.png")
            client.log_artifact(run_id, str(path), "plots")
        if run_dir is not None:
            log_analysis_curves(client, run_id, run_dir)
    client.set_terminated(run_id, "FINISHED")


def sweep_answer(report: Report) -> tuple[dict[str, float], dict[str, str]]:
    """The sweep's answer as parent-run metrics and tags. Per configuration and network, the
    breakdown metrics ``breakdown_sparsity_est/<configuration>`` (``_low``, ``_high``,
    ``_ci_low``, ``_ci_high``, ``censored``; a control's prefixed ``reinit_``...) and a tag
    ``lt.breakdown/<configuration>`` with the table's cells; with the instability analysis,
    ``unstable_sparsity/<configuration>`` per analysed network that became unstable. Then ``best_breakdown_sparsity_est``
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
                if config.divergence(network) is not None:  # no breakdown: where it diverged
                    cells.append(f"{network} {config.cell(network)}")
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
        for network in report.analysed:  # where it became unstable, beside its breakdown
            unstable = config.unstable_density(network)
            if unstable is not None:
                metrics[f"{metric_name('unstable_sparsity', network)}/{slug}"] = 1 - unstable
            cells.append(f"{network} unstable {config.onset_cell(network)}")
        tags[f"lt.breakdown/{slug}"] = "; ".join(cells)
    if best is not None:
        metrics["best_breakdown_sparsity_est"] = best[0]
        tags["lt.best_configuration"] = best[1]
    return metrics, tags


def log_sweep_summary(client: MlflowClient, run_id: str, report: Report) -> bool:
    """The sweep's answer on its parent run: breakdown metrics and tags per configuration
    (``sweep_answer``); the table (CSV and text) and plots as artifacts; the panels figure also
    as an image the runs page shows. Only what changed is logged: nothing (False) when the run
    has this answer and its table already."""
    metrics, tags = sweep_answer(report)
    run = client.get_run(run_id)
    metrics = {key: value for key, value in metrics.items() if run.data.metrics.get(key) != value}
    tags = {key: value[:MAX_TAG_VAL_LENGTH] for key, value in tags.items()
            if run.data.tags.get(key) != value[:MAX_TAG_VAL_LENGTH]}
    if not metrics and not tags and "breakdown.csv" in {
            artifact.path for artifact in client.list_artifacts(run_id)}:
        return False
    log_entries(client, run_id, [(key, 0, value) for key, value in metrics.items()])
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
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
    return True


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


def sweep_analysed(study) -> list[str]:
    """The networks whose instability the study measures (its base config's analyses)."""
    imp = study.base_config().imp
    return list(imp.analyses_on) if imp.analyses else []


def trial_identity(trial) -> tuple[str, dict[str, Any]]:
    """The Ray trial id and swept values a Tune trial's results belong to: its own, or for a
    refinement trial (``lt-sweep refine``) those of the sweep's trial it refines."""
    target = trial.config.get("_refine")
    if target:
        return target["trial_id"], dict(target["swept"])
    return trial.trial_id, swept_values(trial.config)


@dataclass
class TrialRun:
    """One trial's MLflow run: what it is to hold (as the driver saw the trial, or as its run
    directory and Tune's state have it) beside what MLflow holds so far."""
    trial_id: str  # the Ray trial id (a refinement trial's: the sweep trial it refines)
    swept: dict[str, Any]
    points: Logged = field(default_factory=dict)  # every per-level value (the first of each)
    worker: str | None = None  # WORKER_TAG
    device: str | None = None  # DEVICE_TAG
    status: str | None = None  # FINISHED or FAILED once the trial ended
    summarise: bool = True  # when FINISHED: its breakdown summary and plot
    refine_failed: str | None = None  # REFINE_FAILED_TAG
    # In MLflow: nothing is known until the run is found or created (run_id None).
    run_id: str | None = None
    run_status: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    logged: Logged | None = None  # the values it holds, or has on their way (None: to read)
    pending: list[Future] = field(default_factory=list)  # asynchronous writes in flight

    def add(self, values: Mapping[str, Any]) -> None:
        """The per-level values of one reported point (a Tune result or a level's flat record);
        a (key, step) keeps its first value, as MLflow does."""
        for key, step, value in point_entries(values):
            self.points.setdefault((key, step), value)

    def missing(self) -> list[tuple[str, int, float]]:
        """(key, step, value) of the values MLflow lacks (all, while unknown)."""
        logged = self.logged or {}
        return [(key, step, value) for (key, step), value in self.points.items()
                if (key, step) not in logged]

    def tags_due(self) -> dict[str, str]:
        wanted = {WORKER_TAG: self.worker, DEVICE_TAG: self.device,
                  REFINE_FAILED_TAG: self.refine_failed}
        return {key: value for key, value in wanted.items()
                if value is not None and self.tags.get(key) != value}

    @property
    def behind(self) -> bool:
        """MLflow may lack something of this trial."""
        return (self.run_id is None or self.logged is None or bool(self.missing())
                or bool(self.tags_due()) or (self.status is not None
                                             and self.run_status != self.status))

    def restart(self) -> None:
        """The trial (re)starts: its run is found again and reopened, and read back."""
        self.status, self.summarise, self.refine_failed = None, True, None
        self.run_id, self.logged = None, None


def trial_tags(study, trial_id: str, params: Mapping[str, Any]) -> dict[str, str]:
    """Tags a trial run is created with: its run directory, and a transfer's source (from its
    params, the flattened resolved config)."""
    tags = {RUN_DIR_TAG: str(run_directory(study, trial_id))}
    if params.get("imp.ticket_from"):
        tags[TICKET_FROM_TAG] = str(params["imp.ticket_from"])
    return tags


def write_trial_run(client: MlflowClient, experiment_id: str, parent_run_id: str, study,
                    state: TrialRun, rule: BreakdownRule,
                    params: Callable[[], dict[str, Any]], reopen_run: bool = False) -> int:
    """Bring a trial's run up to date with ``state``: found (by Ray trial id and sweep) or
    created, and with ``reopen_run`` marked RUNNING; every value it lacks logged; its tags; once
    the trial ended, its summary and plot (when FINISHED) and its status, again whenever values
    were added. Idempotent: a run that holds everything is left as it is. Returns how many
    writes it took (0: the run was up to date)."""
    if state.run_id is None:
        values = params()
        run = child_run(client, experiment_id, parent_run_id, study.name, state.trial_id,
                        state.swept, values, study.swept_keys,
                        trial_tags(study, state.trial_id, values))
        state.run_id, state.tags = run.info.run_id, dict(run.data.tags)
        state.run_status, state.logged = run.info.status, None
        if reopen_run:
            reopen(client, run)
            state.run_status = "RUNNING"
    if state.logged is None:
        state.logged = logged_points(client, state.run_id)
    new = state.missing()
    log_entries(client, state.run_id, new)
    state.logged.update({(key, step): value for key, step, value in new})
    tags = state.tags_due()
    for key, value in tags.items():
        client.set_tag(state.run_id, key, value)
        state.tags[key] = value
    ended = state.status is not None and (state.run_status != state.status or bool(new))
    if ended:
        if state.status == "FINISHED" and state.summarise:
            finish_trial(client, state.run_id, state.logged, rule,
                         trial_title(study.name, state.trial_id, state.swept),
                         run_directory(study, state.trial_id))
        else:
            client.set_terminated(state.run_id, state.status)
        state.run_status = state.status
    return len(new) + len(tags) + ended


class MlflowUnreachable(ConnectionError):
    """A write skipped: MLflow did not answer a moment ago."""


_WRITER: ThreadPoolExecutor | None = None


def writer() -> ThreadPoolExecutor:
    """The one thread that writes per-level values asynchronously, in order, for every logger of
    this process (a new driver's logger reads back what an earlier one wrote)."""
    global _WRITER
    if _WRITER is None:
        _WRITER = ThreadPoolExecutor(1, thread_name_prefix="mlflow-writer")
    return _WRITER


def written(futures: list[Future], wait: bool) -> tuple[list[Future], bool]:
    """(the writes still in flight, whether any finished write failed); with ``wait``, none is
    left in flight."""
    failed = False
    for future in futures:
        if wait or future.done():
            failed = failed or future.exception() is not None
    return ([] if wait else [f for f in futures if not f.done()]), failed


class MlflowLevelLogger(Callback):
    """Tune callback (driver only): a parent run per sweep, a child run per trial, every level
    and refinement point logged once, summaries at trial and sweep end; what MLflow could not
    take is kept and logged once it answers again."""

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
        self._trials: dict[str, TrialRun] = {}  # Ray trial id -> its run
        self._retry_at = 0.0  # MLflow is left alone until then (monotonic clock)
        self._failed_at = -math.inf  # when a write last failed (monotonic clock)
        self._next_step_check = 0.0
        self.error: BaseException | None = None  # the last failure, while unresolved
        self.outages = 0  # times MLflow stopped answering
        self._summary_due = False  # the experiment ended; its summary is not logged yet
        self.report: Report | None = None  # the sweep's report, once the experiment ended
        self.background_summary = False  # set by a caller that waits in finish_summary()
        self._summary: InBackground | None = None
        self.link_lines: list[str] = []  # the MLflow UI on this sweep, once connected
        self._opening: InBackground | None = None  # open_in_background's connection

    # Tune pickles its RunConfig (with the callbacks): only the settings travel.
    def __getstate__(self) -> dict[str, Any]:
        keep = ("study", "tracking_uri", "experiment_name", "resolve_config", "rule")
        return {key: self.__dict__[key] for key in keep}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._forget_connection()

    # ---- MLflow, when it answers -----------------------------------------------------------
    def _open(self) -> None:
        started = time.monotonic()
        short_retries()
        client = MlflowClient(self.tracking_uri)
        self._experiment_id = experiment_id_for(client, self.experiment_name, self.tracking_uri)
        self._parent_run_id = ensure_parent_run(client, self._experiment_id, self.study)
        key = ensure_view(client, self._experiment_id, sweep_networks(self.study),
                          self.rule.metric, self.study.name, sweep_analysed(self.study))
        self.link_lines = link_lines(self.tracking_uri, self._experiment_id, key)
        self._client = client
        self._answered(started)

    def connect(self) -> MlflowClient:
        """The MLflow client; on first use also the experiment and the sweep's parent run."""
        self._opened(wait=True)
        if self._client is None:
            self._open()
        return self._client

    def open_in_background(self) -> None:
        """Connect in a thread (a new SQLite store takes seconds to create) while Tune starts
        the trials: until it is done the hooks keep what trials report and write nothing (the
        next turn of Tune's loop catches up). MLflow not answering is an outage like any other;
        anything else connecting raised is raised by the next hook."""
        self._opening = InBackground(lambda: self._try(self._open, now=True),
                                     name="mlflow-connect")

    def _opened(self, wait: bool) -> bool:
        """Whether no background connection is under way (waiting for it with ``wait``)."""
        opening = self._opening
        if opening is None:
            return True
        if not opening.done(None if wait else 0.0):
            return False
        self._opening = None
        opening.result()  # raises what connecting raised (MLflow not answering: an outage)
        return True

    @property
    def parent_run_id(self) -> str:
        """The sweep's parent run id (connecting on first use)."""
        self.connect()
        return self._parent_run_id

    def _failed(self, error: BaseException) -> None:
        """MLflow did not answer: leave it alone for RETRY_SECONDS (any thread)."""
        if self.error is None:
            self.outages += 1
        self.error = error
        self._failed_at = time.monotonic()
        self._retry_at = self._failed_at + RETRY_SECONDS

    def _try(self, write: Callable[[], None], now: bool = False) -> bool:
        """Run MLflow writes unless MLflow failed less than RETRY_SECONDS ago (or ``now``); a
        failure is remembered, the writes' state says what is still to do."""
        if not now and time.monotonic() < self._retry_at:
            return False
        try:
            write()
        except UNREACHABLE as error:
            self._failed(error)
            return False
        return True

    def _answered(self, started: float) -> None:
        """MLflow took a write begun at ``started``: a later failure is a new outage. Unless the
        write was begun before the last failure: a server going down still answers the requests
        it already had (in the writer thread while this one failed), which says nothing of
        whether it answers now."""
        if started > self._failed_at:
            self.error = None

    def _params(self, swept: dict[str, Any]) -> Callable[[], dict[str, Any]]:
        return lambda: flatten(self.resolve_config(self.study, swept).model_dump(mode="json"))

    def _settle(self, state: TrialRun, wait: bool) -> None:
        """Collect the trial's finished asynchronous writes; a failed one means MLflow's values
        are read back again."""
        state.pending, failed = written(state.pending, wait)
        if failed:
            state.logged = None

    def _write(self, state: TrialRun) -> None:
        """Bring one trial's run up to date, synchronously (``write_trial_run``)."""
        started = time.monotonic()
        client = self.connect()
        if state.logged is None or state.status is not None:
            self._settle(state, wait=True)  # what is read back or summarised has landed
        if state.logged is None:  # ... and every earlier write (an earlier driver's too)
            writer().submit(lambda: None).result()
        write_trial_run(client, self._experiment_id, self._parent_run_id, self.study, state,
                        self.rule, self._params(state.swept), reopen_run=True)
        self._answered(started)

    def _log_async(self, run_id: str, entries: list[tuple[str, int, float]]) -> None:
        """In the writer thread: skipped while MLflow is left alone."""
        started = time.monotonic()
        if started < self._retry_at:
            raise MlflowUnreachable("MLflow did not answer a moment ago")
        try:
            log_entries(self._client, run_id, entries)
        except UNREACHABLE as error:
            self._failed(error)
            raise
        self._answered(started)

    def _submit(self, state: TrialRun) -> None:
        """Log the trial's new values asynchronously (the driver answers the trial at once)."""
        new = state.missing()
        if new:
            state.pending.append(writer().submit(self._log_async, state.run_id, new))
            state.logged.update({(key, step): value for key, step, value in new})

    def _catch_up(self, current: TrialRun | None = None) -> None:
        """Every trial's run up to date, the current trial's new values asynchronously when its
        run is known; nothing while MLflow is left alone."""
        for state in self._trials.values():
            self._settle(state, wait=False)
        if not self._opened(wait=False):
            return

        def write() -> None:
            self.connect()
            for state in self._trials.values():
                if state is current and state.run_id is not None and state.logged is not None:
                    self._submit(state)
                if state.behind:
                    self._write(state)

        self._try(write)

    def _state(self, member_id: str, swept: dict[str, Any]) -> TrialRun:
        if member_id not in self._trials:
            self._trials[member_id] = TrialRun(member_id, swept)
        return self._trials[member_id]

    def _trial(self, trial, seed: int | None = None) -> TrialRun:
        """The run of a trial (of one of its seeds, with ``base.seeds``)."""
        return self._state(*self.study.member(*trial_identity(trial), seed))

    def _trial_runs(self, trial) -> list[TrialRun]:
        """Every run of a trial: one, or one per seed."""
        return [self._state(*member) for member in self.study.members(*trial_identity(trial))]

    # ---- what tests and callers read -------------------------------------------------------
    def trial_run_id(self, trial, seed: int | None = None) -> str:
        """The trial's run id (of one of its seeds), found or created (MLflow must answer)."""
        state = self._trial(trial, seed)
        if state.behind:
            self._write(state)
        return state.run_id

    def trial_levels(self, trial, seed: int | None = None) -> list[LevelRecord]:
        """The trial's levels and refinement points logged so far, in level order."""
        state = self._trial(trial, seed)
        self.trial_run_id(trial, seed)
        self._settle(state, wait=True)
        return records_of(state.logged or {})

    def unlogged(self) -> str | None:
        """What MLflow still lacks, in words (None: it holds everything), once the writes in
        flight have landed or failed."""
        for state in self._trials.values():
            self._settle(state, wait=True)
        behind = sum(1 for state in self._trials.values() if state.behind)
        parts = [f"{behind} trial run{'s' if behind != 1 else ''}"] if behind else []
        if self._summary_due:
            parts.append("the sweep's summary")
        return " and ".join(parts) or None

    # ---- Tune's hooks ----------------------------------------------------------------------
    def setup(self, **info) -> None:
        if self._opened(wait=False):
            self._try(self.connect)

    def on_step_end(self, iteration, trials, **info) -> None:
        now = time.monotonic()
        if now >= self._next_step_check:  # Tune's loop turns often: once a second is enough
            self._next_step_check = now + 1.0
            if any(state.behind for state in self._trials.values()):
                self._catch_up()

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        for state in self._trial_runs(trial):
            self._settle(state, wait=True)  # a restarted trial's earlier writes land first
            state.restart()
        self._catch_up()

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if "level" not in result:
            return
        state = self._trial(trial, result.get(SEED_RESULT))
        state.add(result)
        state.worker = worker_label(result) or state.worker  # Tune adds where the trial runs
        state.device = result.get(DEVICE_RESULT) or state.device
        self._catch_up(current=state)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        for state in self._trial_runs(trial):
            state.status = "FINISHED"
        self._catch_up()

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        for state in self._trial_runs(trial):
            if trial.config.get("_refine"):
                # The sweep's trial itself finished: a failed refinement leaves its run in the
                # report (FINISHED, with what was refined) and says so in a tag.
                state.status, state.summarise = "FINISHED", False
                state.refine_failed = trial.trial_id
            else:
                state.status = "FAILED"
        self._catch_up()

    def on_experiment_end(self, trials, **info) -> None:
        self._summary_due = True
        if self.background_summary:
            # The caller shuts Ray down meanwhile, then waits in finish_summary().
            self._summary = InBackground(self._summarise, name="mlflow-summary")
        else:
            self._summarise()

    def finish_summary(self) -> None:
        """Wait for a summary started in the background; what it raised (e.g. what connecting
        raised) is kept as the logger's error, which the command prints."""
        summary, self._summary = self._summary, None
        if summary is not None:
            try:
                summary.result()
            except Exception as error:  # noqa: BLE001
                self.error = error

    def _summarise(self) -> None:
        """Every trial's run up to date, then the sweep's report logged to the parent run, which
        is then FINISHED; MLflow may take END_WAIT_SECONDS to answer again."""
        deadline = time.monotonic() + END_WAIT_SECONDS
        while not self._try(self._finish_all, now=True) and time.monotonic() < deadline:
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))

    def _finish_all(self) -> None:
        started = time.monotonic()
        self.connect()
        for state in self._trials.values():
            self._settle(state, wait=True)
            if state.behind:
                self._write(state)
        if not self._summary_due:
            return
        try:
            report = build_report(self.tracking_uri, self.experiment_name,
                                  self.rule.tolerance_pp, sweep=self.study.name,
                                  metric=self.rule.metric)
        except ReportUnavailable as error:  # no trial finished its dense level: no summary
            logger.warning("no sweep summary: %s", error)
        else:
            log_sweep_summary(self._client, self._parent_run_id, report)
            self.report = report
        self._client.set_terminated(self._parent_run_id, "FINISHED")
        self._summary_due = False
        self._answered(started)
