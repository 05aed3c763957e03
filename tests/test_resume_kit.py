"""A trial restarted on a node without its run directory continues from its Tune checkpoint's
resume kit alone, in every phase: the levels, the controls' bisection and the refinement points.
Here the "node" changes after every single point, and the result must be that of an
uninterrupted run."""

from __future__ import annotations

from pathlib import Path

import pytest

from lt_core.breakdown import BreakdownRule
from lt_core.config import deep_merge
from lt_core.imp import ImpRun
from lt_core.levels import LevelRecord
from sweeps.trainable import _restore_resume_kit, _write_resume_kit, report_id, system_sample

RULE = BreakdownRule(10.0, "test_acc")
REFINE = (["ticket", "reinit"], 2)


ANALYSED = {"imp": {"levels": 3, "rewind": "10it", "analyses": ["instability"],
                    "analyses_on": ["ticket"]},
            "train": {"optimizer": "adam", "lr": 1e-3}, "instability": {"points": 3}}


def _config(tiny_config, retrain: str, mode: str, extra: dict | None = None):
    return tiny_config(deep_merge({"pruning": {"rate": 0.75, "mode": mode},
                                   "imp": {"levels": 4, "controls": ["reinit", "random_prune"],
                                           "control_levels": "breakdown", "retrain": retrain},
                                   "train": {"length": "60it"}}, extra or {}))


def _comparable(records: list[LevelRecord]) -> list[tuple]:
    return [(r.level, r.sublevel, r.density,
             {n: {k: v for k, v in m.items() if k != "train_seconds"}
              for n, m in sorted(r.networks.items())}) for r in records]


@pytest.mark.parametrize("retrain, mode, extra", [
    ("rewind", "iterative", None), ("lr_rewind", "iterative", None), ("finetune", "one_shot", None),
    ("rewind", "one_shot", None), ("rewind", "at_init", None),
    ("rewind", "iterative", ANALYSED)], ids=["rewind-iterative", "lr_rewind-iterative",
                                             "finetune-one_shot", "rewind-one_shot",
                                             "rewind-at_init", "instability"])
def test_every_phase_continues_on_a_new_node_from_the_kit(tiny_config, tiny_data, tmp_path: Path,
                                                          retrain: str, mode: str,
                                                          extra: dict | None) -> None:
    config = _config(tiny_config, retrain, mode, extra)
    reference = ImpRun(config, tmp_path / "reference", data=tiny_data)
    reference.run()
    list(reference.measure_controls(RULE))
    list(reference.refine(RULE, *REFINE))
    assert any(r.refined for r in reference.records()), "nothing was refined: a weak test"

    reported: set[str] = set()

    def move(run: ImpRun, metrics: dict) -> ImpRun:
        """Report the point, then continue on a new node that has only the kit."""
        reported.add(report_id(LevelRecord.from_metrics(metrics)))
        kit = tmp_path / f"kit{len(reported)}"
        _write_resume_kit(run, kit, reported, run.files_to_continue(RULE, REFINE))
        node = tmp_path / f"node{len(reported)}"
        assert _restore_resume_kit(kit, node) == reported
        return ImpRun(config, node, data=tiny_data)

    run = ImpRun(config, tmp_path / "node0", data=tiny_data)
    for level in run.levels:
        run = move(run, run.run_level(level))
    for phase in (lambda: run.measure_controls(RULE), lambda: run.refine(RULE, *REFINE)):
        while (metrics := next(phase(), None)) is not None:
            run = move(run, metrics)
    assert next(run.measure_controls(RULE), None) is None
    assert next(run.refine(RULE, *REFINE), None) is None
    assert _comparable(run.records()) == _comparable(reference.records())
    # At the end nothing is left to train: the kit carries only the config, the init and
    # rewind weights and the points' metrics, not every level's weights.
    kit = tmp_path / f"kit{len(reported)}"
    assert not list(kit.rglob("final.pt")) and not list(kit.rglob("mask.pt"))


def test_a_stale_run_directory_takes_the_kits_newer_level_metrics(tiny_config, tiny_data,
                                                                  tmp_path: Path) -> None:
    config = _config(tiny_config, "rewind", "iterative")
    run = ImpRun(config, tmp_path / "a", data=tiny_data)
    run.run()
    stale = tmp_path / "stale"
    _write_resume_kit(run, tmp_path / "old", set(), run.files_to_continue(RULE))
    _restore_resume_kit(tmp_path / "old", stale)  # node A's copy, before the controls
    list(run.measure_controls(RULE))  # ... which node B then trained
    _write_resume_kit(run, tmp_path / "new", {"x"}, run.files_to_continue(RULE))
    _restore_resume_kit(tmp_path / "new", stale)  # back on node A
    assert _comparable(ImpRun(config, stale, data=tiny_data).records()) == \
        _comparable(run.records())


def test_the_kit_carries_the_resources_measured_at_each_points_report(tiny_config, tiny_data,
                                                                       tmp_path: Path) -> None:
    config = _config(tiny_config, "rewind", "iterative")
    run = ImpRun(config, tmp_path / "a", data=tiny_data)
    record = LevelRecord.from_metrics(run.run_level(run.levels[0]))
    kept = system_sample(run.out, record, lambda: {"system/cpu_utilization_percentage": 51.5})
    _write_resume_kit(run, tmp_path / "kit", {report_id(record)}, run.files_to_continue(RULE))
    _restore_resume_kit(tmp_path / "kit", tmp_path / "b")  # a node without the run directory

    def measure_again() -> dict:
        raise AssertionError("the point's resources were measured again")

    assert system_sample(tmp_path / "b", record, measure_again) == kept
