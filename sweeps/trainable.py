"""The Tune trainables: build an lt_core IMP run from the trial's config, run it level by level,
report each level with a checkpoint.

``imp_trial`` trains the levels; then (``imp.control_levels: breakdown``) the controls at the levels
their bisection needs; then (``breakdown.refine: K``) refinement points inside the brackets. Every
point is reported once, as it is finished: a flat record of the point (``LevelRecord.flat``) and
the trial's breakdown so far. A trial whose ticket diverges (``diverged`` 1 in its result) ends
its levels there and finishes normally: the other trials go on. ``refine_trial`` runs the
refinement of one finished trial (``lt-sweep refine``).

The run directory lives under the sweep's storage (``<storage>/<name>/runs/<trial_id>``). Each
report's Tune checkpoint also carries what is needed to continue (config, init and rewind weights,
every finished point's metrics, the last level's mask and weights, the points already reported),
so a trial restarted on another node resumes from its last level. A point already reported is
never reported again.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from ray import tune

from lt_core.breakdown import BreakdownRule, levels_below, trial_summary
from lt_core.config import ExperimentConfig
from lt_core.data import TensorData, load_dataset
from lt_core.imp import ImpRun, describe_device, resolve_device, train_together
from lt_core.levels import LevelRecord
from lt_core.rundir import (atomic_write_json, level_dir, metrics_file, read_json,
                            run_records)
from sweeps.layout import DEVICE_RESULT, SEED_RESULT, SYSTEM_PREFIX
from sweeps.study import Study, trial_config

# Tune's live table shows the first four numeric keys of a result: these lead it.
RESULT_ORDER = ("level", "density", "test_acc", "breakdown_sparsity")
REPORTED_FILE = "reported.json"  # in a Tune checkpoint: the points reported so far
# In a point's folder of the run directory: the trial's resource use (SYSTEM_PREFIX values) when
# the point was first reported, as MLflow has it at its step (read back by `lt-sweep sync`).
SYSTEM_FILE = "system.json"
REFINE_KEY = "_refine"  # a refinement trial's config: {"trial_id": ..., "swept": {...}}


def run_directory(study: Study, trial_id: str) -> Path:
    return study.storage_path / study.name / "runs" / trial_id


def system_file(run_dir: Path, record: LevelRecord) -> Path:
    return level_dir(run_dir, record.level, record.sublevel) / SYSTEM_FILE


def system_sample(run_dir: Path, record: LevelRecord,
                  measure: Callable[[], dict[str, float]]) -> dict[str, float]:
    """The resources measured when a point was first reported, kept beside it: a point reported
    again (its trial restarted, or resumed) carries the same values, as ``lt-sweep sync`` logs
    them, whichever of the two reaches MLflow first."""
    path = system_file(run_dir, record)
    if path.exists():
        return read_json(path)
    sample = measure()
    atomic_write_json(sample, path)
    return sample


def point_values(run_dir: Path) -> list[dict[str, Any]]:
    """Every finished point of a run directory as the trial reports it: its flat values
    (``LevelRecord.flat``) and the resources measured when it was first reported."""
    values = []
    for record in run_records(run_dir):
        path = system_file(run_dir, record)
        values.append({**record.flat(), **(read_json(path) if path.exists() else {})})
    return values


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


def _write_resume_kit(run: ImpRun, folder: Path, reported: set[str], files: list[Path]) -> None:
    """What a restart on a node without the run directory needs (``ImpRun.files_to_continue``),
    the points reported so far, and the resources measured when each was (``system_sample``)."""
    for source in [*files, *sorted(run.out.rglob(SYSTEM_FILE))]:
        target = folder / source.relative_to(run.out)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    atomic_write_json({"reported": sorted(reported)}, folder / REPORTED_FILE)


def _networks_in(path: Path) -> set[str]:
    return set(LevelRecord.from_metrics(read_json(path)).networks)


def _restore_resume_kit(kit: Path, run_dir: Path) -> set[str]:
    """Copy what the run directory lacks from a checkpoint; returns the points reported. A
    point's metrics.json in the kit that knows more networks than the run directory's (a node
    that held this trial earlier and fell behind) replaces it."""
    for source in sorted(kit.rglob("*")):
        target = run_dir / source.relative_to(kit)
        if not source.is_file() or source.name == REPORTED_FILE:
            continue
        stale = (target.exists() and source.name == metrics_file(target.parent).name
                 and _networks_in(source) > _networks_in(target))
        if not target.exists() or stale:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    reported = read_json(kit / REPORTED_FILE)
    if "level" in reported:  # a checkpoint of an earlier version: levels 0..N, all networks
        return {f"{level}.000:*" for level in range(reported["level"] + 1)}
    return set(reported["reported"])


class ResourceMeter:
    """This process's use of the machine since the last sample: CPU (percent of one core),
    resident memory, and the GPU's when training on one."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu, self.wall = self._cpu_seconds(), time.monotonic()

    @staticmethod
    def _cpu_seconds() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    @staticmethod
    def _resident_megabytes() -> float:
        try:  # Linux: the current resident set
            pages = int(Path("/proc/self/statm").read_text().split()[1])
            return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
        except (OSError, ValueError, IndexError):  # elsewhere: the peak
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def sample(self) -> dict[str, float]:
        cpu, wall = self._cpu_seconds(), time.monotonic()
        values = {f"{SYSTEM_PREFIX}cpu_utilization_percentage":
                  100 * (cpu - self.cpu) / max(wall - self.wall, 1e-6),
                  f"{SYSTEM_PREFIX}process_memory_megabytes": self._resident_megabytes()}
        self.cpu, self.wall = cpu, wall
        if self.device.type == "cuda":
            values[f"{SYSTEM_PREFIX}gpu_0_memory_usage_megabytes"] = \
                torch.cuda.max_memory_allocated(self.device) / 2**20
            try:
                values[f"{SYSTEM_PREFIX}gpu_0_utilization_percentage"] = \
                    float(torch.cuda.utilization(self.device))
            except Exception:  # noqa: BLE001 - needs the optional pynvml: utilisation is left out
                pass
        return values


@dataclass
class Member:
    """One run a trial trains: its points reported so far, where its resume kit lies in the
    trial's checkpoints ("" for a trial of one run), and its seed in a trial of several."""

    run: ImpRun
    reported: set[str]
    kit: str = ""
    seed: int | None = None


class Reporter:
    """Reports each finished point of a trial's runs once, with a checkpoint to continue every
    one of them from."""

    def __init__(self, members: list[Member], rule: BreakdownRule,
                 refine: tuple[list[str], int] | None = None):
        self.members, self.rule, self.refine = members, rule, refine
        self.meter = ResourceMeter(members[0].run.device)

    @property
    def run(self) -> ImpRun:
        return self.members[0].run

    def member(self, run: ImpRun) -> Member:
        return next(member for member in self.members if member.run is run)

    def __call__(self, metrics: dict, run: ImpRun | None = None) -> None:
        self.record(LevelRecord.from_metrics(metrics), run)

    def record(self, record: LevelRecord, run: ImpRun | None = None) -> None:
        member = self.member(run or self.run)
        key = report_id(record)
        if key in member.reported or f"{record.level}.{record.sublevel:03d}:*" in member.reported:
            return
        member.reported.add(key)
        with tempfile.TemporaryDirectory() as folder:
            for each in self.members:
                _write_resume_kit(each.run, Path(folder) / each.kit, each.reported,
                                  each.run.files_to_continue(self.rule, self.refine))
            run = member.run
            result = point_result(record, run.records(), self.rule, run.out)
            if member.seed is not None:
                result[SEED_RESULT] = member.seed
            result[DEVICE_RESULT] = describe_device(run.device)
            sample = system_sample(run.out, record, self.meter.sample)
            tune.report({**result, **sample},
                        checkpoint=tune.Checkpoint.from_directory(folder))

    def each(self, points: Iterable[dict], run: ImpRun | None = None) -> None:
        for metrics in points:
            self(metrics, run)

    def unreported(self) -> None:
        """Report every finished point not reported yet: one finished just before a crash, or
        before a restart that found it done."""
        for member in self.members:
            for record in member.run.records():
                self.record(record, member.run)


_DATASETS: dict[str, TensorData] = {}  # this worker's last dataset: reused actors reuse it


def _dataset(config: ExperimentConfig) -> TensorData:
    """The experiment's data, loaded once per worker process (Tune reuses actors between trials;
    training never modifies the tensors)."""
    key = f"{config.data.model_dump_json()} {config.device}"
    if key not in _DATASETS:
        _DATASETS.clear()
        _DATASETS[key] = load_dataset(config.data, resolve_device(config.device))
    return _DATASETS[key]


def _start(study: Study, swept: dict, trial_id: str,
           refine: tuple[list[str], int] | None) -> Reporter:
    """The trial's runs (one, or one per seed of ``base.seeds``), each continued from its part
    of the trial's last checkpoint, and their reporter."""
    checkpoint = tune.get_checkpoint()
    members = []
    several = bool(study.seeds)  # then one kit part and one seed per run, even for one seed
    with (checkpoint.as_directory() if checkpoint is not None
          else contextlib.nullcontext(None)) as kit:
        for member_id, values in study.members(trial_id, swept):
            run_dir = run_directory(study, member_id)
            part = member_id if several else ""
            reported: set[str] = set()
            if kit is not None and (Path(kit) / part / REPORTED_FILE).exists():
                reported = _restore_resume_kit(Path(kit) / part, run_dir)
            config = trial_config(study, values)
            run = ImpRun(config, run_dir, data=_dataset(config))
            members.append(Member(run, reported, part, values["seed"] if several else None))
    return Reporter(members, study.breakdown.rule, refine)


def imp_trial(params: dict, study: Study) -> None:
    breakdown = study.breakdown
    refine = (breakdown.refine_networks, breakdown.refine) if breakdown.refine else None
    report = _start(study, params, tune.get_context().get_trial_id(), refine)

    def keep_going(run: ImpRun, metrics: dict) -> bool:
        done = [r for r in run.records() if r.level <= metrics["level"]]
        return not (breakdown.early_stop and
                    levels_below(done, breakdown.rule) >= breakdown.patience)

    # Ends a run early at a level whose ticket diverged; the seeds of a trial train fused.
    for run, metrics in train_together([m.run for m in report.members], keep_going):
        report(metrics, run)
    for member in report.members:
        run = member.run
        if run.config.imp.control_levels == "breakdown":
            report.each(run.measure_controls(breakdown.rule), run)
        if refine is not None:
            report.each(run.refine(breakdown.rule, *refine), run)
    report.unreported()


def refine_trial(params: dict, study: Study, steps: int, networks: list[str]) -> None:
    """Refine one finished trial of a sweep (its id and swept values in ``params["_refine"]``)."""
    target = params[REFINE_KEY]
    report = _start(study, target["swept"], target["trial_id"], (networks, steps))
    report.each(report.run.refine(study.breakdown.rule, networks, steps))
    report.unreported()
