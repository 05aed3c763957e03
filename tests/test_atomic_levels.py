"""A kill while a run's files are being written never leaves a point that loads wrong: the
run is crashed at every single file write (after the new file's bytes are written to its
temporary name, before it replaces the old one: the worst moment of an atomic write), then
continued by a new process-like ImpRun on the same directory, and must end exactly as an
uninterrupted run. A real SIGKILL at several moments of `lt-sweep imp` is in test_resume.py."""

from __future__ import annotations

import pytest

import lt_core.rundir as rundir
from lt_core.breakdown import BreakdownRule
from lt_core.config import deep_merge
from lt_core.imp import ImpRun
from lt_core.levels import LevelRecord

RULE = BreakdownRule(50.0, "test_acc")


class Killed(BaseException):
    """Stands for SIGKILL: nothing catches it, no cleanup runs."""


def comparable(records: list[LevelRecord]) -> list[tuple]:
    return [(r.level, r.sublevel, r.density,
             {n: {k: v for k, v in m.items() if k != "train_seconds"}
              for n, m in sorted(r.networks.items())}) for r in records]


def finish(run: ImpRun) -> list[LevelRecord]:
    for level in run.levels:
        run.run_level(level)
    list(run.measure_controls(RULE))
    list(run.refine(RULE, ["ticket"], 1))
    return run.records()


@pytest.mark.slow
@pytest.mark.parametrize("changes", [
    {},  # iterative, rewind to init, controls at every level
    {"pruning": {"mode": "one_shot"}, "imp": {"retrain": "finetune",
                                              "control_levels": "breakdown"}},
], ids=["iterative", "one_shot-breakdown"])
def test_a_crash_at_any_write_is_redone_to_the_same_result(tiny_config, tiny_data, tmp_path,
                                                           monkeypatch, changes) -> None:
    config = tiny_config(deep_merge({"pruning": {"rate": 0.8},
                                     "imp": {"levels": 2, "controls": ["reinit"]},
                                     "train": {"length": "10it", "eval_every": "5it",
                                               "fuse": "off"}}, changes))
    reference = comparable(finish(ImpRun(config, tmp_path / "reference", data=tiny_data)))

    real = rundir._replace_from_temp
    writes = 0

    def counting(path, write):
        nonlocal writes
        writes += 1
        real(path, write)

    monkeypatch.setattr(rundir, "_replace_from_temp", counting)
    finish(ImpRun(config, tmp_path / "count", data=tiny_data))
    total = writes
    assert total > 15, f"only {total} writes: a weak test"

    for crash_at in range(1, total + 1):
        out = tmp_path / f"crash{crash_at}"
        seen = 0

        def crashing(path, write):
            nonlocal seen
            seen += 1
            if seen == crash_at:
                path.parent.mkdir(parents=True, exist_ok=True)
                write(path.with_name(f".{path.name}.tmp99999"))  # bytes written, not renamed
                raise Killed
            real(path, write)

        monkeypatch.setattr(rundir, "_replace_from_temp", crashing)
        with pytest.raises(Killed):
            finish(ImpRun(config, out, data=tiny_data))
        monkeypatch.setattr(rundir, "_replace_from_temp", real)
        assert comparable(finish(ImpRun(config, out, data=tiny_data))) == reference, crash_at
