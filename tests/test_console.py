"""The sweep's console view, driven with real Tune trials and results as the Tune driver would:
plain lines when the output is not a terminal, a redrawn table when it is, one line per failed
trial with where its full log is."""

from __future__ import annotations

import io
import pickle
import re
import sys
from pathlib import Path

import pytest
from ray.tune.experiment import Trial

from sweeps.console import SweepConsole
from sweeps.study import load_study
from tests.sweep_helpers import QUICKSTART

LEVELS = 10  # the quickstart's


@pytest.fixture
def study(npz_path):
    return load_study(QUICKSTART, [f"base.data.path={npz_path}"])


def trial(trial_id: str, rate: float, scope: str, storage=None) -> Trial:
    return Trial("imp", config={"pruning.rate": rate, "pruning.scope": scope},
                 trial_id=trial_id, stub=True, storage=storage)


def result(level: int, acc: float, reinit: float | None = None, censored: bool = False) -> dict:
    values = {"level": level, "sublevel": 0, "density": 0.6**level, "test_acc": acc,
              "breakdown_sparsity_low": 1 - 0.6**level, "breakdown_sparsity_est": 0.5,
              "breakdown_censored": float(censored)}
    if reinit is not None:
        values["reinit_test_acc"] = reinit
    return values


def console(study, stream: io.StringIO, interactive: bool, every: float = 1e9) -> SweepConsole:
    return SweepConsole(study, ["ticket", "reinit"], "test_acc", refresh=0.0, every=every,
                        stream=stream, interactive=interactive)


def test_plain_lines_when_not_a_terminal(study) -> None:
    out = io.StringIO()
    view = console(study, out, interactive=False, every=0.0)
    first, second = trial("a_00000", 0.4, "global"), trial("a_00001", 0.6, "layerwise")
    view.setup()
    view.on_step_end(0, [first, second])
    view.on_trial_start(0, [first, second], first)
    view.on_trial_result(0, [first, second], first, result(0, 0.97))
    view.on_trial_result(0, [first, second], first, result(1, 0.975, 0.96, censored=True))
    view.on_trial_complete(0, [first, second], first)
    view.on_experiment_end([first, second])
    lines = out.getvalue().splitlines()
    assert "\x1b" not in out.getvalue()  # no redraws
    assert "done    rate=0.4 scope=global: 2 levels, ticket breakdown > 40.00%" in lines
    assert re.fullmatch(r"\[0:00\] 2 trials: 1 done, 1 pending; levels 2/22", lines[-1])


def test_a_failed_trial_is_one_line_with_its_log(study, tmp_path) -> None:
    from ray.train._internal.storage import StorageContext

    out = io.StringIO()
    view = console(study, out, interactive=False)
    storage = StorageContext(storage_path=str(tmp_path), experiment_dir_name="exp",
                             trial_dir_name="trial_b")
    failing = trial("b_00000", 0.4, "global", storage)
    error = Path(failing.path) / "error.txt"  # where a trial's traceback is kept
    error.parent.mkdir(parents=True, exist_ok=True)
    error.write_text("Traceback (most recent call last):\n  File \"x.py\", line 1\n"
                     "RuntimeError: CUDA out of memory\n")
    failing.run_metadata.error_filename = error.name
    view.on_trial_result(0, [failing], failing, result(3, 0.9))
    view.on_trial_error(0, [failing], failing)
    (line,) = out.getvalue().splitlines()
    assert line == (f"failed  rate=0.4 scope=global at level 3: RuntimeError: CUDA out of "
                    f"memory (full log: {error})")


def test_a_terminal_gets_one_table_redrawn_in_place(study) -> None:
    out = io.StringIO()
    view = console(study, out, interactive=True)
    first = trial("c_00000", 0.4, "global")
    view.setup()
    view.on_trial_start(0, [first], first)
    view.on_trial_result(0, [first], first, result(0, 0.97))
    drawn = out.getvalue()
    view.on_trial_result(0, [first], first, result(2, 0.965, 0.95))
    redraw = out.getvalue()[len(drawn):]
    table = drawn.splitlines()
    assert table[0].split() == ["trial", "state", "level", "density", "ticket", "reinit",
                                "breakdown"]
    assert table[1].split()[:4] == ["rate=0.4", "scope=global", "running", "0/10"]
    assert redraw.startswith(f"\x1b[{len(table)}F\x1b[J")  # up over the old table, cleared
    row = redraw.splitlines()[1]
    assert row.split() == ["rate=0.4", "scope=global", "running", "2/10", "36.00%", "96.50%",
                           "95.00%", "50.00%"]


def test_it_travels_with_the_experiment_without_its_stream(study) -> None:
    view = console(study, io.StringIO(), interactive=None)
    again = pickle.loads(pickle.dumps(view))
    assert again.stream is sys.stdout and again.rows == {}
    assert (again.networks, again.metric) == (["ticket", "reinit"], "test_acc")
