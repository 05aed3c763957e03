"""The breakdown report of a sweep, read from MLflow alone: per configuration (runs sharing the
``lt.config`` tag, one per seed), the dense accuracy and the breakdown sparsity of the ticket and
of each control, recomputed from the per-level metric histories at any tolerance and under any
of the accuracy metrics (final, at early stop, best; ``lt_core.metrics.ACCURACY_METRICS``).

FAILED and KILLED trial runs are left out (their levels stop early, which would bias the
breakdown low) and counted; running runs count with the levels they have so far.
"""

from __future__ import annotations

import csv
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Run

from lt_core.metrics import ACCURACY_METRICS, CONTROL_NAMES, breakdown_sparsity, metric_key
from sweeps.plots import Series, configurations_with_controls, sweep_overlay

# The MLflow layout of a sweep, written by sweeps.tracking: tags on runs and the parent's param.
SWEEP_TAG = "lt.sweep"  # the study name, on the parent and on every trial run
ROLE_TAG = "lt.role"  # "parent" or "trial"
CONFIG_TAG = "lt.config"  # the trial's swept values except the seed: seeds of one configuration
TRIAL_TAG = "ray_trial_id"
TOLERANCE_PARAM = "breakdown.tolerance"
METRIC_PARAM = "breakdown.metric"
DEFAULT_TOLERANCE_PP = 1.0
DEFAULT_METRIC = "test_acc"
LEFT_OUT_STATUSES = ("FAILED", "KILLED")


class ReportUnavailable(ValueError):
    """The experiment or its trial runs are not in the tracking store."""


def tag_filter(tags: dict[str, str]) -> str:
    """An MLflow search filter matching every tag exactly."""
    def quoted(value: str) -> str:
        return f'"{value}"' if "'" in value else f"'{value}'"
    return " and ".join(f"tags.`{key}` = {quoted(str(value))}" for key, value in tags.items())


def search_all_runs(client: MlflowClient, experiment_id: str, tags: dict[str, str]) -> list[Run]:
    """Every active run of the experiment carrying these tags, oldest first."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], tag_filter(tags), max_results=1000,
                                  order_by=["attributes.start_time ASC"], page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def read_levels(client: MlflowClient, run_id: str, keys: list[str]) -> list[dict]:
    """Per-level dicts ``{"level": step, key: value, ...}`` from the metric histories of a run."""
    by_level: dict[int, dict] = {}
    for key in keys:
        for metric in sorted(client.get_metric_history(run_id, key), key=lambda m: m.timestamp):
            by_level.setdefault(metric.step, {"level": metric.step})[key] = metric.value
    return [by_level[level] for level in sorted(by_level)]


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0.0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


@dataclass
class TrialLevels:
    """One trial run: its configuration label and its levels (density, sparsity, accuracies)."""
    run_id: str
    label: str
    levels: list[dict]


@dataclass
class Configuration:
    """The seeds of one configuration and their summaries at one tolerance and metric."""
    label: str
    tolerance_pp: float
    metric: str
    controls: list[str]
    trials: list[TrialLevels] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.trials)

    @property
    def dense_acc(self) -> tuple[float, float]:
        return mean_std([t.levels[0][self.metric] for t in self.trials])

    def breakdown(self, control: str | None = None) -> tuple[float, float]:
        """Mean ± std over seeds of the ticket's (or one control's) breakdown sparsity."""
        return mean_std([breakdown_sparsity(t.levels, self.tolerance_pp, self.metric, control)
                         for t in self.trials])

    def curve(self, control: str | None = None) -> Series:
        """Per level: mean density, mean and std of the ticket's (or a control's) accuracy."""
        key = metric_key(self.metric, control)
        levels = sorted({lv["level"] for t in self.trials for lv in t.levels if key in lv})
        densities, means, stds = [], [], []
        for level in levels:
            rows = [lv for t in self.trials for lv in t.levels
                    if lv["level"] == level and key in lv]
            densities.append(statistics.fmean(lv["density"] for lv in rows))
            mean, std = mean_std([lv[key] for lv in rows])
            means.append(mean)
            stds.append(std)
        return densities, means, stds


@dataclass
class Report:
    """Breakdown sparsity per configuration of the trial runs of one experiment (or sweep)."""
    experiment: str
    tracking_uri: str
    tolerance_pp: float
    metric: str
    controls: list[str]
    configurations: list[Configuration]
    left_out: int = 0  # FAILED or KILLED trial runs

    def rows(self) -> list[dict[str, float | int | str]]:
        """One flat record per configuration; accuracies and sparsities as fractions."""
        records = []
        for config in self.configurations:
            record = {"configuration": config.label, "n": config.n,
                      "tolerance_pp": self.tolerance_pp, "metric": self.metric}
            record["dense_acc_mean"], record["dense_acc_std"] = config.dense_acc
            for name in [None, *self.controls]:
                prefix = f"{name}_" if name else ""
                mean, std = config.breakdown(name)
                record[f"{prefix}breakdown_sparsity_mean"] = mean
                record[f"{prefix}breakdown_sparsity_std"] = std
            records.append(record)
        return records

    def table(self) -> str:
        """Aligned text table, accuracies and sparsities in percent (mean ± std over seeds)."""
        header = ["configuration", "n", "dense acc %", "ticket breakdown %"]
        header += [f"{name} breakdown %" for name in self.controls]
        lines = [header]
        for record in self.rows():
            cells = [str(record["configuration"]), str(record["n"]),
                     _pm(record["dense_acc_mean"], record["dense_acc_std"])]
            for name in [None, *self.controls]:
                prefix = f"{name}_" if name else ""
                cells.append(_pm(record[f"{prefix}breakdown_sparsity_mean"],
                                 record[f"{prefix}breakdown_sparsity_std"]))
            lines.append(cells)
        widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
        text = [f"breakdown sparsity: highest sparsity with every level within "
                f"{self.tolerance_pp:g} pp of the dense accuracy, accuracy = {self.metric} "
                f"({self.experiment})"]
        for row in lines:
            cells = [row[0].ljust(widths[0])]
            cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:])]
            text.append("  ".join(cells))
        if self.left_out:
            text.append(f"({self.left_out} failed or killed trial runs left out)")
        return "\n".join(text)

    def write_csv(self, path: Path) -> Path:
        """The table as CSV, fractions not percents."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        records = self.rows()
        fields = list(records[0]) if records else ["configuration"]
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(records)
        return path

    def plot(self, path: Path) -> Path:
        """Accuracy vs density: per configuration the ticket mean ± std, controls dashed."""
        configs = {}
        for config in self.configurations:
            series = {"ticket": config.curve()}
            for name in self.controls:
                curve = config.curve(name)
                if curve[0]:
                    series[name] = curve
            configs[config.label] = series
        dense = {config.label: config.dense_acc[0] for config in self.configurations}
        title = f"{self.experiment}: {self.metric} (mean ± std over seeds)"
        return configurations_with_controls(configs, path, title, dense, self.metric)

    def overlay(self, path: Path) -> Path:
        """One ticket line (mean over seeds) per configuration."""
        configs = {c.label: c.curve()[:2] for c in self.configurations}
        return sweep_overlay(configs, path, f"{self.experiment}: ticket {self.metric}",
                             self.metric)


def _pm(mean: float, std: float) -> str:
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def _logged_param(client: MlflowClient, experiment_id: str, sweep: str | None, param: str,
                  default: str) -> str:
    """A parent run param when the parents agree on one value, else ``default``."""
    tags = {ROLE_TAG: "parent", **({SWEEP_TAG: sweep} if sweep else {})}
    parents = search_all_runs(client, experiment_id, tags)
    values = {run.data.params.get(param) for run in parents}
    values.discard(None)
    return values.pop() if len(values) == 1 else default


def _trial_levels(client: MlflowClient, run: Run, label: str, metric: str) -> TrialLevels | None:
    """The run's levels, or None when it has no finished dense level."""
    wanted = {"density", "sparsity", *(metric_key(metric, name) for name in (None, *CONTROL_NAMES))}
    keys = [k for k in run.data.metrics if k in wanted]
    levels = [lv for lv in read_levels(client, run.info.run_id, keys)
              if {"density", "sparsity", metric} <= lv.keys()]
    if not levels or levels[0]["level"] != 0:
        return None
    return TrialLevels(run.info.run_id, label, levels)


def default_tracking_uri() -> str:
    """``mlflow.db`` in the working directory, as for a study without ``tracking.uri``."""
    return f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


def _missing_database(tracking_uri: str) -> bool:
    """A ``sqlite:///`` store whose file does not exist (opening it would create it)."""
    prefix = "sqlite:///"
    return tracking_uri.startswith(prefix) and not Path(tracking_uri[len(prefix):]).is_file()


def build_report(tracking_uri: str | None, experiment_name: str,
                 tolerance_pp: float | None = None, sweep: str | None = None,
                 metric: str | None = None) -> Report:
    """Read the trial runs of an experiment (optionally of one sweep) and summarise them; the
    tolerance and metric default to those the sweep logged."""
    if metric is not None and metric not in ACCURACY_METRICS:
        raise ReportUnavailable(f"metric {metric!r}: not one of {', '.join(ACCURACY_METRICS)}")
    tracking_uri = tracking_uri or default_tracking_uri()
    if _missing_database(tracking_uri):
        raise ReportUnavailable(f"no MLflow experiment {experiment_name!r} in {tracking_uri} "
                         f"(no such database file)")
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None or experiment.lifecycle_stage != "active":
        raise ReportUnavailable(f"no MLflow experiment {experiment_name!r} in {tracking_uri}")
    tags = {ROLE_TAG: "trial", **({SWEEP_TAG: sweep} if sweep else {})}
    runs = search_all_runs(client, experiment.experiment_id, tags)
    if not runs:
        which = f" of sweep {sweep!r}" if sweep else ""
        raise ReportUnavailable(f"MLflow experiment {experiment_name!r} in {tracking_uri} has no trial "
                         f"runs{which} (tag {ROLE_TAG}=trial)")
    if tolerance_pp is None:
        tolerance_pp = float(_logged_param(client, experiment.experiment_id, sweep,
                                           TOLERANCE_PARAM, str(DEFAULT_TOLERANCE_PP)))
    if metric is None:
        metric = _logged_param(client, experiment.experiment_id, sweep, METRIC_PARAM,
                               DEFAULT_METRIC)
    several_sweeps = len({run.data.tags.get(SWEEP_TAG) for run in runs}) > 1
    usable = [run for run in runs if run.info.status not in LEFT_OUT_STATUSES]
    trials = []
    for run in usable:
        label = run.data.tags.get(CONFIG_TAG) or "(default)"
        if several_sweeps:
            label = f"{run.data.tags.get(SWEEP_TAG)}: {label}"
        trial = _trial_levels(client, run, label, metric)
        if trial is not None:
            trials.append(trial)
    if not trials:
        raise ReportUnavailable(f"no trial run in MLflow experiment {experiment_name!r} in "
                         f"{tracking_uri} has finished its dense level (level 0) without failing")
    controls = [name for name in CONTROL_NAMES
                if any(metric_key(metric, name) in lv for t in trials for lv in t.levels)]
    configurations: dict[str, Configuration] = {}
    for trial in trials:
        configurations.setdefault(trial.label,
                                  Configuration(trial.label, tolerance_pp, metric, controls))
        configurations[trial.label].trials.append(trial)
    ordered = [configurations[label] for label in sorted(configurations)]
    return Report(experiment_name, tracking_uri, tolerance_pp, metric, controls, ordered,
                  left_out=len(runs) - len(usable))


def report_command(experiment: str, tracking_uri: str | None, tolerance: float | None,
                   out_dir: Path, metric: str | None = None) -> int:
    """Print the breakdown table and write ``breakdown.csv`` and ``breakdown.png`` to out_dir."""
    report = build_report(tracking_uri, experiment, tolerance, metric=metric)
    print(report.table())
    out_dir = Path(out_dir)
    print(f"wrote {report.write_csv(out_dir / 'breakdown.csv')}")
    print(f"wrote {report.plot(out_dir / 'breakdown.png')}")
    return 0
