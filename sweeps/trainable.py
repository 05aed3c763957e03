"""The Tune trainables: build an lt_core IMP run from the trial's config, run it level by level,
report each level with a checkpoint.

``imp_trial`` trains the levels; then (``imp.control_levels: breakdown``) the controls at the levels
their bisection needs; then (``breakdown.refine: K``) refinement points inside the brackets. Every
point is reported once, as it is finished: a flat record of the point (``LevelRecord.flat``) and
the trial's breakdown so far. ``refine_trial`` runs the refinement of one finished trial
(``lt-sweep refine``).

The run directory lives under the sweep's storage (``<storage>/<name>/runs/<trial_id>``). Each
report's Tune checkpoint also carries what is needed to continue (config, init and rewind weights,
every finished point's metrics, the last level's mask and weights, the points already reported),
so a trial restarted on another node resumes from its last level. A point already reported is
never reported again.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable

from ray import tune

from lt_core.breakdown import BreakdownRule, levels_below, trial_summary
from lt_core.imp import ImpRun
from lt_core.levels import LevelRecord
from lt_core.rundir import (atomic_write_json, config_file, final_file, init_file, level_dir,
                            mask_file, metrics_file, point_dirs, read_json, rewind_file)
from sweeps.study import Study, trial_config

# Tune's live table shows the first four numeric keys of a result: these lead it.
RESULT_ORDER = ("level", "density", "test_acc", "breakdown_sparsity")
REPORTED_FILE = "reported.json"  # in a Tune checkpoint: the points reported so far
REFINE_KEY = "_refine"  # a refinement trial's config: {"trial_id": ..., "swept": {...}}


def run_directory(study: Study, trial_id: str) -> Path:
    return study.storage_path / study.name / "runs" / trial_id


def report_id(record: LevelRecord) -> str:
    """A point and the networks it carries: reported once each."""
    return f"{record.level}.{record.sublevel:03d}:{','.join(sorted(record.networks))}"


def point_result(record: LevelRecord, records: list[LevelRecord], rule: BreakdownRule,
                 run_dir: Path) -> dict[str, Any]:
    """The Tune result of one point: the point's values, then the trial's breakdown so far."""
    summary = {"breakdown_sparsity": 0.0, "breakdown_sparsity_est": 0.0,
               **trial_summary(records, rule)}
    values = {**record.flat(), **summary, "run_dir": str(run_dir)}
    return {key: values[key] for key in RESULT_ORDER if key in values} | {
        key: value for key, value in values.items() if key not in RESULT_ORDER}


def _write_resume_kit(run: ImpRun, folder: Path, reported: set[str]) -> None:
    for path in (config_file(run.out), init_file(run.out), rewind_file(run.out)):
        if path.exists():
            shutil.copy2(path, folder / path.name)
    for level, sublevel, source in point_dirs(run.out):
        if metrics_file(source).exists():
            target = level_dir(folder, level, sublevel)
            target.mkdir(parents=True)
            shutil.copy2(metrics_file(source), metrics_file(target))
    last = max(run.finished_levels())
    for path in (mask_file(level_dir(run.out, last)), final_file(level_dir(run.out, last))):
        shutil.copy2(path, level_dir(folder, last) / path.name)
    atomic_write_json({"reported": sorted(reported)}, folder / REPORTED_FILE)


def _restore_resume_kit(kit: Path, run_dir: Path) -> set[str]:
    """Copy what the run directory lacks from a checkpoint; returns the points reported."""
    for source in sorted(kit.rglob("*")):
        target = run_dir / source.relative_to(kit)
        if source.is_file() and source.name != REPORTED_FILE and not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    reported = read_json(kit / REPORTED_FILE)
    if "level" in reported:  # a checkpoint of an earlier version: levels 0..N, all networks
        return {f"{level}.000:*" for level in range(reported["level"] + 1)}
    return set(reported["reported"])


class Reporter:
    """Reports each finished point of a run once, with a checkpoint to continue from."""

    def __init__(self, run: ImpRun, rule: BreakdownRule, reported: set[str]):
        self.run, self.rule, self.reported = run, rule, reported

    def __call__(self, metrics: dict) -> None:
        record = LevelRecord.from_metrics(metrics)
        key = report_id(record)
        if key in self.reported or f"{record.level}.{record.sublevel:03d}:*" in self.reported:
            return
        self.reported.add(key)
        with tempfile.TemporaryDirectory() as folder:
            _write_resume_kit(self.run, Path(folder), self.reported)
            tune.report(point_result(record, self.run.records(), self.rule, self.run.out),
                        checkpoint=tune.Checkpoint.from_directory(folder))

    def each(self, points: Iterable[dict]) -> None:
        for metrics in points:
            self(metrics)


def _start(study: Study, swept: dict, trial_id: str) -> tuple[ImpRun, Reporter]:
    run_dir = run_directory(study, trial_id)
    reported: set[str] = set()
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as kit:
            reported = _restore_resume_kit(Path(kit), run_dir)
    run = ImpRun(trial_config(study, swept), run_dir)
    return run, Reporter(run, study.breakdown.rule, reported)


def imp_trial(params: dict, study: Study) -> None:
    run, report = _start(study, params, tune.get_context().get_trial_id())
    breakdown = study.breakdown
    for level in run.levels:
        report(run.run_level(level))
        if (breakdown.early_stop
                and levels_below(run.records(), breakdown.rule) >= breakdown.patience):
            break
    if run.config.imp.control_levels == "breakdown":
        report.each(run.measure_controls(breakdown.rule))
    if breakdown.refine:
        report.each(run.refine(breakdown.rule, breakdown.refine_networks, breakdown.refine))


def refine_trial(params: dict, study: Study, steps: int, networks: list[str],
                 rule: BreakdownRule) -> None:
    """Refine one finished trial of a sweep (its id and swept values in ``params["_refine"]``)."""
    target = params[REFINE_KEY]
    run, report = _start(study, target["swept"], target["trial_id"])
    report.rule = rule
    report.each(run.refine(rule, networks, steps))
