"""The Tune trainable: build an lt_core IMP run from the trial's config, run it level by level,
report each level with a checkpoint.

The run directory lives under the sweep's storage (``<storage>/<name>/runs/<trial_id>``). Each
level's Tune checkpoint also carries what is needed to continue (config, init and rewind weights,
every finished level's metrics, the last level's mask and weights), so a trial restarted on another
node resumes from its last level. A level already reported is never reported again.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from ray import tune

from lt_core.imp import ImpRun
from lt_core.metrics import CONTROL_KEYS, breakdown_sparsity, levels_below
from lt_core.rundir import atomic_write_json, level_dir, read_json
from sweeps.study import Study, trial_config

# Tune's live table shows the first four numeric keys of a result: these lead it.
RESULT_ORDER = ("level", "density", "test_acc", "breakdown_sparsity")


def run_directory(study: Study, trial_id: str) -> Path:
    return study.storage_path / study.name / "runs" / trial_id


def flat_levels(levels: list[dict]) -> list[dict]:
    """Per-level dicts with control results flattened to ``<control>_<key>``."""
    rows = []
    for metrics in levels:
        row = {k: v for k, v in metrics.items() if k != "controls"}
        for name, control in metrics.get("controls", {}).items():
            row.update({f"{name}_{key}": control[key] for key in CONTROL_KEYS})
        rows.append(row)
    return rows


def level_result(levels: list[dict], tolerance: float, metric: str, run_dir: Path) -> dict:
    """The Tune result for the newest level: ticket metrics first (they lead Tune's table)."""
    rows = flat_levels(levels)
    summary = {**rows[-1], "breakdown_sparsity": breakdown_sparsity(rows, tolerance, metric),
               "dense_test_acc": rows[0]["test_acc"], "run_dir": str(run_dir)}
    return {key: summary[key] for key in RESULT_ORDER} | {
        key: value for key, value in summary.items() if key not in RESULT_ORDER}


def _write_resume_kit(run: ImpRun, level: int, folder: Path) -> None:
    for name in ("config.yaml", "init.pt", "rewind.pt"):
        if (run.out / name).exists():
            shutil.copy2(run.out / name, folder / name)
    for lv in range(level + 1):
        target = level_dir(folder, lv)
        target.mkdir(parents=True)
        shutil.copy2(level_dir(run.out, lv) / "metrics.json", target / "metrics.json")
    for name in ("mask.pt", "final.pt"):
        shutil.copy2(level_dir(run.out, level) / name, level_dir(folder, level) / name)
    atomic_write_json({"level": level}, folder / "reported.json")


def _restore_resume_kit(kit: Path, run_dir: Path) -> int:
    """Copy what the run directory lacks from a checkpoint; returns the last reported level."""
    for source in sorted(kit.rglob("*")):
        target = run_dir / source.relative_to(kit)
        if source.is_file() and source.name != "reported.json" and not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return read_json(kit / "reported.json")["level"]


def imp_trial(params: dict, study: Study) -> None:
    config = trial_config(study, params)
    run_dir = run_directory(study, tune.get_context().get_trial_id())
    last_reported = -1
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as kit:
            last_reported = _restore_resume_kit(Path(kit), run_dir)
    run = ImpRun(config, run_dir)
    levels: list[dict] = []
    tolerance, metric = study.breakdown.tolerance, study.breakdown.metric
    for level in run.levels:
        levels.append(run.run_level(level))
        if level > last_reported:
            with tempfile.TemporaryDirectory() as folder:
                _write_resume_kit(run, level, Path(folder))
                tune.report(level_result(levels, tolerance, metric, run_dir),
                            checkpoint=tune.Checkpoint.from_directory(folder))
        # levels_below reads only the ticket's accuracy, a top-level key of each level's metrics.
        if (study.breakdown.early_stop
                and levels_below(levels, tolerance, metric) >= study.breakdown.patience):
            break
