"""``lt-sweep sync RESULTS_DIR``: a sweep's MLflow records rebuilt from its results directory.

Everything the Tune driver logs is in the results directory too: the study (``lt_study.yaml``),
Tune's state of the trials (config, status, where each last ran) and each trial's run directory
(every finished level and refinement point, and the resources measured when it was reported).
``sync`` logs what MLflow lacks with the driver's own functions (``sweeps.tracking``), so the
runs, their names, tags and metrics are those a live sweep logs; a second sync changes nothing.
For a sweep whose tracking server was down at its end, or to copy a sweep into another store.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient

from lt_core.rundir import config_file
from sweeps.errors import ReportUnavailable, TrackingUnavailable
from sweeps.layout import DEVICE_RESULT, ROLE_TAG, SWEEP_TAG, TRIAL_TAG
from sweeps.mlflow_view import VIEW_TAG_PREFIX, ensure_view, link_lines, view_key
from sweeps.report import build_report, search_all_runs
from sweeps.runner import REFINE_DIR, sweep_trials
from sweeps.study import Study, trial_config
from sweeps.tracking import (UNREACHABLE, TrialRun, experiment_id_for, flatten,
                             log_sweep_summary, parent_run, short_reason, short_retries,
                             sweep_analysed, sweep_networks, swept_values, worker_label,
                             write_trial_run)
from sweeps.trainable import REFINE_KEY, point_values, run_directory

# A Tune trial's final status -> its MLflow run's (others: still to run, left as they are).
RUN_STATUS = {"TERMINATED": "FINISHED", "ERROR": "FAILED"}


def failed_refinements(results_dir: Path) -> dict[str, str]:
    """Sweep trial id -> the Tune trial of the last ``lt-sweep refine`` that failed on it."""
    folder = results_dir / REFINE_DIR
    if not folder.is_dir():
        return {}
    return {trial.config[REFINE_KEY]["trial_id"]: trial.trial_id
            for trial in sweep_trials(folder)
            if trial.status == "ERROR" and trial.config.get(REFINE_KEY)}


def trial_runs(study: Study, results_dir: Path) -> tuple[list[TrialRun], bool]:
    """What the run of every trial that started is to hold, in trial order; and whether every
    trial of the sweep has ended."""
    trials = sweep_trials(results_dir)
    refine_failed = failed_refinements(results_dir)
    runs = []
    for trial in sorted(trials, key=lambda t: t.trial_id):
        for member_id, swept in study.members(trial.trial_id, swept_values(trial.config)):
            run_dir = run_directory(study, member_id)
            if trial.status == "PENDING" and not config_file(run_dir).exists():
                continue  # never started: the driver made no run for it
            state = TrialRun(member_id, swept)
            for values in point_values(run_dir):
                state.add(values)
            state.worker = worker_label(trial.last_result or {})
            state.device = (trial.last_result or {}).get(DEVICE_RESULT)
            state.status = RUN_STATUS.get(trial.status)
            state.refine_failed = refine_failed.get(trial.trial_id)
            runs.append(state)
    return runs, bool(trials) and all(t.status in RUN_STATUS for t in trials)


@dataclass
class SyncOutcome:
    results_dir: Path
    tracking_uri: str
    trials: int  # trial runs the sweep has
    created: int  # of which created by this sync
    updated: int  # of which changed by it (values, tags, summary or status)
    summary: str  # the sweep summary: "logged", "unchanged" or why not
    link_lines: list[str]

    def line(self) -> str:
        if not self.created and not self.updated and self.summary == "unchanged":
            return (f"{self.tracking_uri} already holds everything in {self.results_dir} "
                    f"({self.trials} trial runs and the sweep summary): nothing logged")
        return (f"synced {self.results_dir} to {self.tracking_uri}: {self.trials} trial runs "
                f"({self.created} created, {self.updated} brought up to date), sweep summary "
                f"{self.summary}")


def sync_sweep(study: Study, results_dir: Path) -> SyncOutcome:
    """Log to the study's MLflow (``study.tracking_uri``) what it lacks of the sweep in
    ``results_dir``: its parent run, a run per trial that started with every level and
    refinement point, tags, trial summaries and statuses, and once every trial ended, the
    sweep's summary (the parent FINISHED)."""
    short_retries()
    try:
        return _sync(study, results_dir, study.tracking_uri)
    except UNREACHABLE as error:
        raise TrackingUnavailable(
            f"MLflow at {study.tracking_uri} did not answer ({short_reason(error)}); what was "
            f"logged stays: run `lt-sweep sync {results_dir}` again once it answers") from error


def _sync(study: Study, results_dir: Path, tracking_uri: str) -> SyncOutcome:
    client = MlflowClient(tracking_uri)
    experiment_id = experiment_id_for(client, study.experiment, tracking_uri)
    key = view_key(study.name)
    if VIEW_TAG_PREFIX + key not in client.get_experiment(experiment_id).tags:
        ensure_view(client, experiment_id, sweep_networks(study), study.breakdown.metric,
                    study.name, sweep_analysed(study))
    parent = parent_run(client, experiment_id, study)
    states, ended = trial_runs(study, results_dir)
    existing = {run.data.tags.get(TRIAL_TAG) for run in search_all_runs(
        client, experiment_id, {SWEEP_TAG: study.name, ROLE_TAG: "trial"})}
    updated = 0
    for state in states:
        def params(swept=state.swept) -> dict:
            return flatten(trial_config(study, swept).model_dump(mode="json"))

        updated += write_trial_run(client, experiment_id, parent.info.run_id, study, state,
                                   study.breakdown.rule, params) > 0
    created = sum(1 for state in states if state.trial_id not in existing)
    summary = f"not yet (trials unfinished: `lt-sweep resume {results_dir}`)"
    if ended:
        try:
            report = build_report(tracking_uri, study.experiment, study.breakdown.tolerance,
                                  sweep=study.name, metric=study.breakdown.metric)
        except ReportUnavailable as error:  # no trial finished its dense level
            summary = f"none ({error})"
        else:
            logged = log_sweep_summary(client, parent.info.run_id, report)
            summary = "logged" if logged else "unchanged"
        if parent.info.status != "FINISHED":
            client.set_terminated(parent.info.run_id, "FINISHED")
            summary = "logged" if summary == "unchanged" else summary
    return SyncOutcome(results_dir, tracking_uri, len(states), created, updated, summary,
                       link_lines(tracking_uri, experiment_id, key))
