"""The breakdown report of a sweep, read from MLflow alone.

A *configuration* is the set of runs sharing the ``lt.config`` tag, one per seed. For each
configuration the report gives the dense accuracy and, for the ticket and each control, the
breakdown: bracket, estimate, mean and 95% t-interval over seeds, and censoring (see
``lt_core.breakdown``). Everything is recomputed from the per-level metric histories, refinement
points included, at any tolerance and under any of the accuracy metrics.

FAILED and KILLED trial runs are left out, because their levels stop early and would bias the
breakdown low; they are counted. Runs still running count with the levels they have so far.

A network that diverged (training loss NaN/inf) before it broke down, in any seed, has no
breakdown: the configuration shows where it diverged instead (``diverged at level 3 (density
51.20%)``), in the table, the CSV (``diverged_level``, ``diverged_density``, ``diverged_seeds``)
and the parent run's answer. A trial whose ticket diverged is FINISHED, not FAILED: it counts.
"""

from __future__ import annotations

import csv
import re
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Run

from lt_core.breakdown import (Breakdown, BreakdownRule, SeedAggregate, aggregate, divergence,
                               locate)
from lt_core.levels import LevelRecord, networks_in
from lt_core.metrics import (ACCURACY_METRICS, DIVERGED, INSTABILITY, TICKET, metric_name,
                             split_metric_name)
from lt_core.rundir import run_records
from lt_core.stability import THRESHOLD_PP, Onset, instability_onset
from sweeps.errors import ReportUnavailable
from sweeps.layout import (CONFIG_TAG, METRIC_PARAM, REFINE_PREFIX, ROLE_TAG, SWEEP_TAG,
                           TICKET_FROM_TAG, TOLERANCE_PARAM, records_from_history, tag_filter)
from sweeps.plots import (Mark, Series, configuration_panels, configurations_with_controls,
                          instability_panels, sweep_overlay)

DEFAULT_TOLERANCE_PP = 1.0
DEFAULT_METRIC = "test_acc"
LEFT_OUT_STATUSES = ("FAILED", "KILLED")
THRESHOLD_PARAM = "instability.threshold"  # a trial run's param (its resolved config)


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


def metric_entries(client: MlflowClient, run_id: str,
                   keys: list[str]) -> list[tuple[str, int, float]]:
    """(key, step, value) of every logged value of these metrics, oldest first."""
    entries = []
    for key in keys:
        history = sorted(client.get_metric_history(run_id, key), key=lambda m: m.timestamp)
        entries.extend((key, m.step, m.value) for m in history)
    return entries


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0.0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def breakdown_mark(found: Breakdown | None) -> Mark | None:
    """The plot mark of one experiment's breakdown."""
    if found is None:
        return None
    return Mark(found.threshold, found.density_est, found.low.density,
                None if found.high is None else found.high.density, found.low.accuracy)


@dataclass(frozen=True)
class Divergence:
    """The seeds of a configuration whose network diverged before it broke down."""
    seeds: int  # how many
    n: int  # of how many seeds
    level: float  # the densest point where one diverged (7.25 for a refinement point)
    density: float


def divergence_cell(found: Divergence) -> str:
    """``diverged at level 3 (density 51.20%)``, with ``, 1/3 seeds`` when not every seed did."""
    text = f"diverged at level {found.level:g} (density {100 * found.density:.2f}%)"
    return text if found.seeds == found.n else f"{text}, {found.seeds}/{found.n} seeds"


@dataclass
class TrialLevels:
    """One trial run: its configuration label and its levels and refinement points."""
    run_id: str
    label: str
    records: list[LevelRecord]
    threshold_pp: float = THRESHOLD_PP  # instability above this is unstable
    source: str | None = None  # a transfer's source run directory (imp.ticket_from)

    @property
    def levels(self) -> list[dict]:
        """The grid levels as flat dicts (``level``, ``density``, ``test_acc``, ...)."""
        return [r.flat() for r in self.records if not r.refined]


@dataclass
class Configuration:
    """The seeds of one configuration and their breakdowns under one rule."""
    label: str
    rule: BreakdownRule
    controls: list[str]
    trials: list[TrialLevels] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.trials)

    @property
    def dense_acc(self) -> tuple[float, float]:
        return mean_std([t.records[0].value(TICKET, self.rule.metric) for t in self.trials])

    def breakdowns(self, network: str = TICKET) -> list[Breakdown | None]:
        return [locate(t.records, network, self.rule) for t in self.trials]

    def divergence(self, network: str = TICKET) -> Divergence | None:
        """Where the network diverged before breaking down, in any seed; None if in none."""
        found = [point for t in self.trials
                 if (point := divergence(t.records, network, self.rule)) is not None]
        if not found:
            return None
        first = max(found, key=lambda point: (point.density, -point.position))
        return Divergence(len(found), self.n, first.position, first.density)

    def summary(self, network: str = TICKET) -> SeedAggregate | None:
        """The seeds' breakdown; None when there is none, or when the network diverged first."""
        if self.divergence(network) is not None:
            return None
        return aggregate(self.breakdowns(network))

    def cell(self, network: str = TICKET) -> str:
        """The table's cell: the breakdown (``breakdown_cell``), or where it diverged."""
        found = self.divergence(network)
        return divergence_cell(found) if found is not None else breakdown_cell(
            self.summary(network))

    def breakdown(self, network: str = TICKET) -> tuple[float, float]:
        """Mean ± std over seeds of the bracket's low end (the report's original figure)."""
        found = [b.sparsity_low for b in self.breakdowns(network) if b is not None]
        return mean_std(found) if found else (0.0, 0.0)

    def levels_measured(self, network: str) -> float:
        """Pruned grid levels where the network was trained, mean over seeds."""
        return statistics.fmean(
            sum(1 for r in t.records if not r.refined and r.level >= 1 and network in r.networks)
            for t in self.trials)

    def by_level(self, network: str, key: str) -> dict[int, list[LevelRecord]]:
        """Grid level -> the seeds' records there in which the network measured ``key``."""
        found: dict[int, list[LevelRecord]] = {}
        for trial in self.trials:
            for record in trial.records:
                if not record.refined and record.value(network, key) is not None:
                    found.setdefault(record.level, []).append(record)
        return dict(sorted(found.items()))

    def curve(self, network: str = TICKET, key: str | None = None) -> Series:
        """Per pruned grid level (and the dense level, for the ticket): mean density, mean and
        std of the network's accuracy (or ``key``) over the seeds that measured it there."""
        key = key or self.rule.metric
        densities, means, stds = [], [], []
        for records in self.by_level(network, key).values():
            densities.append(statistics.fmean(r.density for r in records))
            mean, std = mean_std([r.value(network, key) for r in records])
            means.append(mean)
            stds.append(std)
        return densities, means, stds

    def onsets(self, network: str = TICKET) -> list[Onset]:
        """Each seed's onset of instability (for the seeds whose network was analysed)."""
        return [onset for t in self.trials
                if (onset := instability_onset(t.records, network, t.threshold_pp)) is not None]

    def unstable_density(self, network: str = TICKET) -> float | None:
        """Geometric mean over the seeds that became unstable of the first unstable density."""
        found = [o.density for o in self.onsets(network) if o.unstable]
        return statistics.geometric_mean(found) if found else None

    def onset_cell(self, network: str = TICKET) -> str:
        """``79.03 (2/2)``: sparsity (%) at which the network became unstable, mean over the
        seeds that did (how many of those analysed); ``> 98.20 (stable)`` when none did."""
        onsets = self.onsets(network)
        if not onsets:
            return "-"
        unstable = [o for o in onsets if o.unstable]
        if not unstable:
            return f"> {100 * (1 - min(o.deepest for o in onsets)):.2f} (stable)"
        return f"{100 * (1 - self.unstable_density(network)):.2f} ({len(unstable)}/{len(onsets)})"

    @property
    def sources(self) -> list[str]:
        """The transfer sources of this configuration's seeds (none: not a transfer)."""
        return sorted({t.source for t in self.trials if t.source})

    def source_summary(self) -> SeedAggregate | None:
        """The ticket breakdown of the source runs, read from their run directories."""
        found = [locate(run_records(Path(source)), TICKET, self.rule)
                 for source in self.sources if Path(source).is_dir()]
        return aggregate(found) if found else None

    def source_cell(self) -> str:
        if not self.sources:
            return "-"
        if not any(Path(source).is_dir() for source in self.sources):
            return "(source not here)"
        return breakdown_cell(self.source_summary())

    def mark(self, network: str = TICKET) -> Mark | None:
        """The plot mark of the seeds' breakdown: the mean estimate on the mean threshold line,
        the mean bracket and the 95% interval; censored, the deepest mean point with an arrow."""
        summary = self.summary(network)
        if summary is None:
            return None
        densities, means, _ = self.curve(network)
        threshold = self.rule.threshold(self.dense_acc[0])
        interval = None if summary.ci is None else (1 - summary.ci[0], 1 - summary.ci[1])
        if summary.lower_bound:
            return Mark(threshold, 1 - summary.sparsity_est, densities[-1], None, means[-1])
        return Mark(threshold, 1 - summary.sparsity_est, 1 - summary.sparsity_low,
                    1 - summary.sparsity_high, None, interval)


def natural_order(label: str) -> list:
    """Sort key for configuration labels: numbers by value (``rewind=50it`` before ``500it``,
    ``rate=0.45`` before ``0.5``), the rest as text."""
    parts = re.split(r"(\d+(?:\.\d+)?)", label)
    return [(0, float(part), "") if index % 2 else (1, 0.0, part)
            for index, part in enumerate(parts)]


def _optional(value: float | None) -> float | str:
    return "" if value is None else value


def breakdown_cell(summary: SeedAggregate | None) -> str:
    """``97.12 [96.50, 97.70]`` (estimate [95% interval]), ``> 98.81 (3/3 censored)``, or for
    one seed ``97.12 (96.00-97.60)`` (estimate (bracket)); percent sparsity."""
    if summary is None:
        return "-"
    if summary.lower_bound:
        return f"> {100 * summary.sparsity_est:.2f} ({summary.censored}/{summary.n} censored)"
    if summary.ci is not None:
        return (f"{100 * summary.sparsity_est:.2f} [{100 * summary.ci[0]:.2f}, "
                f"{100 * summary.ci[1]:.2f}]")
    return (f"{100 * summary.sparsity_est:.2f} ({100 * summary.sparsity_low:.2f}-"
            f"{100 * summary.sparsity_high:.2f})")


@dataclass
class Report:
    """Breakdown per configuration of the trial runs of one experiment (or sweep)."""
    experiment: str
    tracking_uri: str
    rule: BreakdownRule
    controls: list[str]
    configurations: list[Configuration]
    left_out: int = 0  # FAILED or KILLED trial runs

    @property
    def tolerance_pp(self) -> float:
        return self.rule.tolerance_pp

    @property
    def metric(self) -> str:
        return self.rule.metric

    @property
    def networks(self) -> list[str]:
        return [TICKET, *self.controls]

    @property
    def analysed(self) -> list[str]:
        """The networks whose instability was measured in some configuration."""
        return [n for n in self.networks if any(c.onsets(n) for c in self.configurations)]

    @property
    def transfer(self) -> bool:
        return any(c.sources for c in self.configurations)

    @property
    def threshold_pp(self) -> float:
        found = {t.threshold_pp for c in self.configurations for t in c.trials}
        return found.pop() if len(found) == 1 else THRESHOLD_PP

    def rows(self) -> list[dict[str, float | int | str]]:
        """One flat record per configuration; accuracies and sparsities as fractions, empty
        where a value does not exist (no upper bracket or interval when censored)."""
        records = []
        for config in self.configurations:
            record = {"configuration": config.label, "n": config.n,
                      "tolerance_pp": self.tolerance_pp, "metric": self.metric}
            record["dense_acc_mean"], record["dense_acc_std"] = config.dense_acc
            for network in self.networks:
                def name(key: str) -> str:
                    return metric_name(key, network)
                diverged = config.divergence(network)
                record[name("breakdown_sparsity_mean")], record[name("breakdown_sparsity_std")] \
                    = config.breakdown(network) if diverged is None else ("", "")
                summary = config.summary(network)
                ci = summary.ci if summary is not None else None
                record[name("breakdown_sparsity_low")] = _optional(
                    summary and summary.sparsity_low)
                record[name("breakdown_sparsity_high")] = _optional(
                    summary and summary.sparsity_high)
                record[name("breakdown_sparsity_est")] = _optional(
                    summary and summary.sparsity_est)
                record[name("breakdown_sparsity_ci_low")] = _optional(ci and ci[0])
                record[name("breakdown_sparsity_ci_high")] = _optional(ci and ci[1])
                record[name("censored")] = summary.censored if summary is not None else ""
                record[name("diverged_seeds")] = diverged.seeds if diverged is not None else 0
                record[name("diverged_level")] = _optional(diverged and diverged.level)
                record[name("diverged_density")] = _optional(diverged and diverged.density)
                if network != TICKET:
                    record[name("levels_measured")] = config.levels_measured(network)
                if network in self.analysed:
                    onsets = config.onsets(network)
                    record[name("unstable_density")] = _optional(config.unstable_density(network))
                    record[name("unstable_seeds")] = sum(o.unstable for o in onsets)
                    record[name("analysed_seeds")] = len(onsets)
            if self.transfer:
                source = config.source_summary()
                record["source"] = ";".join(config.sources)
                record["source_breakdown_sparsity_est"] = _optional(
                    source and source.sparsity_est)
                record["source_breakdown_sparsity_low"] = _optional(
                    source and source.sparsity_low)
                record["source_breakdown_sparsity_high"] = _optional(
                    source and source.sparsity_high)
            records.append(record)
        return records

    def header(self) -> list[str]:
        """The table's columns (text and HTML)."""
        header = ["configuration", "n", "dense acc %"]
        header += [f"{name} breakdown %" for name in self.networks]
        header += [f"{name} unstable %" for name in self.analysed]
        return header + (["source ticket breakdown %"] if self.transfer else [])

    def cells(self, config: Configuration) -> list[str]:
        """One configuration's row of the table, as text."""
        cells = [config.label, str(config.n), "{:.2f} ± {:.2f}".format(
            *(100 * v for v in config.dense_acc))]
        cells += [config.cell(network) for network in self.networks]
        cells += [config.onset_cell(network) for network in self.analysed]
        return cells + ([config.source_cell()] if self.transfer else [])

    def table(self) -> str:
        """Aligned text table, accuracies and sparsities in percent."""
        header = self.header()
        lines = [header, *(self.cells(config) for config in self.configurations)]
        widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
        text = [f"breakdown sparsity (%) of {self.experiment}: where {self.metric} falls "
                f"{self.tolerance_pp:g} pp below the dense network's"]
        for row in lines:
            cells = [row[0].ljust(widths[0])]
            cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:])]
            text.append("  ".join(cells))
        text.append("estimate [95% CI]: crossing interpolated in log-density between the "
                    "bracketing levels, geometric mean over seeds with its t-interval; "
                    "> x: some seeds never fell below (censored), x is a lower bound")
        if self.analysed:
            text.append(f"unstable %: sparsity of the first level where the error barrier "
                        f"between two copies trained from the rewind point with different data "
                        f"orders exceeds {self.threshold_pp:g} pp (instability analysis; mean over "
                        f"the seeds that became unstable, k/n of them); > x: stable down to x")
        if self.transfer:
            text.append("source ticket breakdown %: the same breakdown of the runs the tickets "
                        "were transferred from (imp.ticket_from), on their own data")
        if any(c.divergence(n) is not None for c in self.configurations for n in self.networks):
            text.append("diverged at level L: the training loss became NaN/inf there before "
                        "the network fell below (no breakdown)")
        partial = self._partial_controls()
        if partial:
            text.append(partial)
        if self.left_out:
            text.append(f"({self.left_out} failed or killed trial runs left out)")
        return "\n".join(text)

    def _partial_controls(self) -> str:
        """A note on controls measured at only some levels (control_levels: breakdown)."""
        notes = []
        for name in self.controls:
            partial = []
            for config in self.configurations:
                levels = statistics.fmean(max(r.level for r in t.records if not r.refined)
                                          for t in config.trials)
                if config.levels_measured(name) < levels:
                    partial.append((config.levels_measured(name), levels))
            if partial:
                notes.append(f"{name} at {statistics.fmean(m for m, _ in partial):.1f} of "
                             f"{statistics.fmean(lv for _, lv in partial):.1f} levels per trial "
                             f"in {len(partial)} of {len(self.configurations)} configurations")
        return ("controls trained only where they locate their breakdown "
                "(imp.control_levels: breakdown): " + "; ".join(notes)) if notes else ""

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
        """Accuracy vs density: per configuration the ticket mean ± std, controls dashed, each
        with its breakdown mark (estimate, bracket, 95% CI; censored: open end and arrow)."""
        configs, marks = {}, {}
        for config in self.configurations:
            series = {TICKET: config.curve()}
            for name in self.controls:
                curve = config.curve(name)
                if curve[0]:
                    series[name] = curve
            configs[config.label] = series
            marks[config.label] = {name: mark for name in series
                                   if (mark := config.mark(name)) is not None}
        dense = {config.label: config.dense_acc[0] for config in self.configurations}
        title = f"{self.experiment}: {self.metric} (mean ± std over seeds)"
        return configurations_with_controls(configs, path, title, dense, self.metric, marks)

    def panels(self, path: Path) -> Path:
        """One panel per configuration: ticket and controls with their breakdown marks."""
        configs, marks = {}, {}
        for config in self.configurations:
            configs[config.label] = {name: curve for name in self.networks
                                     if (curve := config.curve(name))[0]}
            marks[config.label] = {name: mark for name in configs[config.label]
                                   if (mark := config.mark(name)) is not None}
        dense = {config.label: config.dense_acc[0] for config in self.configurations}
        title = (f"{self.experiment}: {self.metric} (mean ± std over seeds), tolerance "
                 f"{self.tolerance_pp:g} pp")
        return configuration_panels(configs, dense, self.tolerance_pp, path, title, self.metric,
                                    marks)

    def instability_plot(self, path: Path) -> Path | None:
        """Per configuration: accuracy and error barrier against density for every analysed
        network (None when no network was analysed)."""
        if not self.analysed:
            return None
        accuracy, barriers, onsets = {}, {}, {}
        for config in self.configurations:
            accuracy[config.label] = {n: curve for n in self.analysed
                                      if (curve := config.curve(n))[0]}
            barriers[config.label] = {n: curve for n in self.analysed
                                      if (curve := config.curve(n, INSTABILITY))[0]}
            onsets[config.label] = {n: density for n in self.analysed
                                    if (density := config.unstable_density(n)) is not None}
        title = (f"{self.experiment}: {self.metric} and instability (mean ± std over seeds)")
        return instability_panels(accuracy, barriers, self.threshold_pp, path, title, self.metric,
                                  onsets)

    def write_instability_csv(self, path: Path) -> Path | None:
        """Per configuration, analysed network and grid level: mean density, mean and std of
        the error barrier (pp) and of the accuracy over seeds."""
        if not self.analysed:
            return None
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["configuration", "network", "level", "density", "seeds",
                             "instability_mean_pp", "instability_std_pp", f"{self.metric}_mean",
                             f"{self.metric}_std"])
            for config in self.configurations:
                for network in self.analysed:
                    for level, found in config.by_level(network, INSTABILITY).items():
                        barrier = mean_std([r.value(network, INSTABILITY) for r in found])
                        accuracy = mean_std([r.value(network, self.metric) for r in found])
                        writer.writerow([config.label, network, level,
                                         statistics.fmean(r.density for r in found), len(found),
                                         *barrier, *accuracy])
        return path

    def overlay(self, path: Path) -> Path:
        """One ticket line (mean over seeds) per configuration, with its breakdown mark."""
        configs = {c.label: c.curve()[:2] for c in self.configurations}
        marks = {c.label: mark for c in self.configurations if (mark := c.mark()) is not None}
        return sweep_overlay(configs, path, f"{self.experiment}: ticket {self.metric}",
                             self.metric, marks)


def _logged_param(client: MlflowClient, experiment_id: str, sweep: str | None, param: str,
                  default: str) -> str:
    """A parent run param when the parents agree on one value, else ``default``."""
    tags = {ROLE_TAG: "parent", **({SWEEP_TAG: sweep} if sweep else {})}
    parents = search_all_runs(client, experiment_id, tags)
    values = {run.data.params.get(param) for run in parents}
    values.discard(None)
    return values.pop() if len(values) == 1 else default


def _trial_levels(client: MlflowClient, run: Run, label: str, metric: str) -> TrialLevels | None:
    """The run's levels and refinement points, or None when it has no finished dense level."""
    def wanted(key: str) -> bool:
        name = key.removeprefix(REFINE_PREFIX)
        split = split_metric_name(name)
        return name in ("density", "sparsity") or (split is not None
                                                   and split[1] in (metric, DIVERGED, INSTABILITY))

    keys = [key for key in run.data.metrics if wanted(key)]
    records = records_from_history(metric_entries(client, run.info.run_id, keys))
    if not records or records[0].point_id != (0, 0) or \
            records[0].value(TICKET, metric) is None:
        return None
    threshold = float(run.data.params.get(THRESHOLD_PARAM, THRESHOLD_PP))
    return TrialLevels(run.info.run_id, label, records, threshold,
                       run.data.tags.get(TICKET_FROM_TAG))


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
        raise ReportUnavailable(f"MLflow experiment {experiment_name!r} in {tracking_uri} has "
                                f"no trial runs{which} (tag {ROLE_TAG}=trial)")
    if tolerance_pp is None:
        tolerance_pp = float(_logged_param(client, experiment.experiment_id, sweep,
                                           TOLERANCE_PARAM, str(DEFAULT_TOLERANCE_PP)))
    if metric is None:
        metric = _logged_param(client, experiment.experiment_id, sweep, METRIC_PARAM,
                               DEFAULT_METRIC)
    rule = BreakdownRule(tolerance_pp, metric)
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
                                f"{tracking_uri} has finished its dense level (level 0) without "
                                f"failing")
    controls = [name for name in networks_in([r for t in trials for r in t.records])
                if name != TICKET]
    configurations: dict[str, Configuration] = {}
    for trial in trials:
        configurations.setdefault(trial.label, Configuration(trial.label, rule, controls))
        configurations[trial.label].trials.append(trial)
    ordered = [configurations[label] for label in sorted(configurations, key=natural_order)]
    return Report(experiment_name, tracking_uri, rule, controls, ordered,
                  left_out=len(runs) - len(usable))


def recorded_studies(tracking_uri: str | None, experiment_name: str,
                     sweep: str | None = None) -> dict[str, str]:
    """Sweep name -> the resolved study YAML its parent run keeps (``study_resolved.yaml``)."""
    client = MlflowClient(tracking_uri or default_tracking_uri())
    experiment = client.get_experiment_by_name(experiment_name)
    studies = {}
    tags = {ROLE_TAG: "parent", **({SWEEP_TAG: sweep} if sweep else {})}
    for run in search_all_runs(client, experiment.experiment_id, tags):
        with tempfile.TemporaryDirectory() as temp:
            try:
                path = client.download_artifacts(run.info.run_id, "study_resolved.yaml", temp)
            except Exception:  # noqa: BLE001 - a parent without its study: the page says so
                continue
            studies[run.data.tags.get(SWEEP_TAG, run.info.run_id)] = Path(path).read_text()
    return studies


def report_command(experiment: str, tracking_uri: str | None, tolerance: float | None,
                   out_dir: Path, metric: str | None = None, html: bool = False) -> int:
    """Print the breakdown table and write ``breakdown.csv``, ``breakdown.png`` and
    ``breakdown_panels.png`` (and with ``html`` a self-contained ``breakdown.html``) to out_dir;
    end with the link that opens the MLflow UI on the experiment's trial runs."""
    from sweeps.mlflow_view import ensure_view, link_lines

    report = build_report(tracking_uri, experiment, tolerance, metric=metric)
    print(report.table())
    out_dir = Path(out_dir)
    print(f"wrote {report.write_csv(out_dir / 'breakdown.csv')}")
    print(f"wrote {report.plot(out_dir / 'breakdown.png')}")
    print(f"wrote {report.panels(out_dir / 'breakdown_panels.png')}")
    for written in (report.instability_plot(out_dir / "instability.png"),
                    report.write_instability_csv(out_dir / "instability.csv")):
        if written is not None:
            print(f"wrote {written}")
    if html:
        from sweeps.html_report import write_html

        studies = recorded_studies(report.tracking_uri, experiment)
        print(f"wrote {write_html(report, studies, out_dir / 'breakdown.html')}")
    client = MlflowClient(report.tracking_uri)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    key = ensure_view(client, experiment_id, report.networks, report.metric,
                      analysed=report.analysed)
    print("\n".join(link_lines(report.tracking_uri, experiment_id, key)))
    return 0
