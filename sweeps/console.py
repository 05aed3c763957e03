"""What a sweep prints while it runs, from the Tune driver.

On a terminal, a compact table is redrawn in place at most every ``refresh`` seconds. Each
trial's row shows:
- its swept values and seed;
- its state;
- its level out of its levels;
- density;
- the ticket's and each control's accuracy, under the study's breakdown metric;
- its breakdown so far (``diverged at level L`` when its ticket diverged before it broke down).
A footer gives the counts, the elapsed time and an estimate of the time left.

Elsewhere (CI, a pipe, ``| tee``) it prints plain lines: one when a trial finishes, and a
progress line at most every ``every`` seconds. A trial that fails prints one line with the
error and where its full log is, either way.

Ray's and MLflow's own chatter is turned off by ``quiet_libraries`` (``--verbose`` keeps it).
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ray.tune import Callback

from lt_core.imp import grid_levels
from lt_core.metrics import DIVERGED, TICKET, metric_name
from sweeps.layout import SEED_RESULT, trial_label
from sweeps.study import trial_config

_LIBRARY_LOGGERS = ("ray", "mlflow", "alembic", "sqlalchemy", "urllib3", "filelock", "optuna")


def quiet_libraries() -> None:
    """Silence the libraries' INFO and WARNING logging (Ray's trial errors too: the console
    prints its own line per failed trial) and their deprecation warnings."""
    for name in _LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL if name == "ray" else logging.ERROR)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", module="sqlalchemy")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Tune's newer console output prints an experiment banner even at verbosity 0; its older
    # reporter is silent there (the console above replaces both).
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


@dataclass
class Row:
    name: str
    levels: int  # the deepest grid level
    points: int  # how many grid levels it trains
    state: str = "pending"
    level: str = "-"
    reported: int = 0  # grid levels reported
    density: float | None = None
    accuracy: dict[str, float] = field(default_factory=dict)
    breakdown: str = ""
    diverged: dict[str, str] = field(default_factory=dict)  # network -> the level it diverged at


class SweepConsole(Callback):
    """Tune callback (driver only) that shows the sweep; see the module's docstring."""

    def __init__(self, study, networks: list[str], metric: str, refresh: float = 2.0,
                 every: float = 15.0, stream: TextIO | None = None,
                 interactive: bool | None = None):
        self.study, self.networks, self.metric = study, networks, metric
        self.refresh, self.every = refresh, every
        self._stream, self._interactive = stream, interactive
        self._forget()

    def _forget(self) -> None:
        self.rows: dict[str, Row] = {}
        self.started = time.monotonic()
        self._last_draw = 0.0
        self._drawn_lines = 0

    # Tune pickles its callbacks with the experiment (for `lt-sweep resume`): settings only.
    def __getstate__(self) -> dict[str, Any]:
        keep = ("study", "networks", "metric", "refresh", "every", "_interactive")
        return {key: self.__dict__[key] for key in keep}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._stream = None
        self._forget()

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stdout

    @property
    def interactive(self) -> bool:
        if self._interactive is None:
            return bool(getattr(self.stream, "isatty", lambda: False)())
        return self._interactive

    # ---- rows -----------------------------------------------------------------------------------
    def _row(self, trial, seed: int | None = None) -> Row:
        """A trial's row (with ``base.seeds``, one per seed: the first seed's until a result
        names one)."""
        target = trial.config.get("_refine")
        swept = dict(target["swept"]) if target else {
            k: v for k, v in trial.config.items() if not k.startswith("_")}
        member_id, swept = self.study.member(trial.trial_id, swept, seed)
        if member_id not in self.rows:
            levels = grid_levels(trial_config(self.study, swept))
            name = trial_label(swept, self.study.swept_keys + (["seed"] if self.study.seeds
                                                                else []))
            self.rows[member_id] = Row(name + (" (refine)" if target else ""), max(levels),
                                       len(levels))
        return self.rows[member_id]

    def _print(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()

    def setup(self, **info) -> None:
        self.started = time.monotonic()

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        for seed in self.study.seeds or [None]:
            self._row(trial, seed).state = "running"

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if "level" not in result:
            return
        row = self._row(trial, result.get(SEED_RESULT))
        row.state = "running"
        level, sublevel = int(result["level"]), int(result.get("sublevel", 0) or 0)
        row.level = f"{level}.{sublevel:03d}" if sublevel else str(level)
        if not sublevel:
            row.reported = max(row.reported, level + 1)
        row.density = result.get("density", row.density)
        for network in self.networks:
            value = result.get(metric_name(self.metric, network))
            if value is not None:
                row.accuracy[network] = value
            if result.get(metric_name(DIVERGED, network)):
                row.diverged.setdefault(network, row.level)
        row.breakdown = self._breakdown(result)
        if TICKET in row.diverged and (not row.breakdown or result.get("breakdown_diverged")):
            row.breakdown = f"diverged at level {row.diverged[TICKET]}"
        self._maybe_draw()

    @staticmethod
    def _breakdown(result: dict) -> str:
        if "breakdown_sparsity_low" not in result:
            return ""
        if result.get("breakdown_censored"):
            return f"> {100 * result['breakdown_sparsity_low']:.2f}%"
        return f"{100 * result['breakdown_sparsity_est']:.2f}%"

    def _rows(self, trial) -> list[Row]:
        """A trial's rows: one, or one per seed."""
        return [self._row(trial, seed) for seed in self.study.seeds or [None]]

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        for row in self._rows(trial):
            row.state = "done"
            if self.interactive:
                continue
            first = row.breakdown.startswith(DIVERGED)  # the ticket diverged, unbroken
            breakdown = (f"ticket {row.breakdown}" if first else
                         f"ticket breakdown {row.breakdown or '-'}")
            diverged = "".join(f"; {network} diverged at level {level}"
                               for network, level in row.diverged.items()
                               if not (first and network == TICKET))
            self._print(f"done    {row.name}: {row.reported} levels, {breakdown}{diverged}")
        self._maybe_draw(force=True)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._clear()
        for row in self._rows(trial):
            row.state = "failed"
            self._print(f"failed  {row.name} at level {row.level}: {self._error(trial)}")
        self._maybe_draw(force=True)

    @staticmethod
    def _error(trial) -> str:
        """The error's last line, and where its whole traceback is: the trial's folder in the
        sweep's storage (Tune writes it in the driver's staging folder first, then syncs it)."""
        name = trial.run_metadata.error_filename
        kept = Path(trial.path, name) if name else Path(trial.path)
        staged = Path(trial.error_file) if name and not kept.is_file() else None  # not synced yet
        written = kept if kept.is_file() else staged
        lines = ([line for line in written.read_text().splitlines() if line.strip()]
                 if written is not None and written.is_file() else [])
        return f"{lines[-1].strip() if lines else 'the trial failed'} (full log: {kept})"

    def on_step_end(self, iteration, trials, **info) -> None:
        for trial in trials:
            self._rows(trial)
        self._maybe_draw()

    def on_experiment_end(self, trials, **info) -> None:
        if self.interactive:
            self._draw()
        else:
            self._print(self._footer())

    # ---- drawing --------------------------------------------------------------------------------
    def _footer(self) -> str:
        states = [row.state for row in self.rows.values()]
        done = sum(row.reported for row in self.rows.values())
        total = sum(row.points for row in self.rows.values())
        elapsed = time.monotonic() - self.started
        eta = ""
        if 0 < done < total and any(s == "running" for s in states):
            eta = f", about {_duration(elapsed * (total - done) / done)} left"
        counts = ", ".join(f"{states.count(s)} {s}" for s in ("running", "done", "failed",
                                                               "pending") if states.count(s))
        return (f"[{_duration(elapsed)}] {len(states)} trials: {counts}; levels {done}/{total}"
                f"{eta}")

    def _table(self) -> list[str]:
        header = ["trial", "state", "level", "density", *self.networks, "breakdown"]
        rows = [header]
        for row in self.rows.values():
            accuracy = [f"{100 * row.accuracy[n]:.2f}%" if n in row.accuracy else "-"
                        for n in self.networks]
            density = f"{100 * row.density:.2f}%" if row.density is not None else "-"
            rows.append([row.name, row.state, f"{row.level}/{row.levels}", density, *accuracy,
                         row.breakdown or "-"])
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        return ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                          for i, (cell, w) in enumerate(zip(r, widths))) for r in rows]

    def _clear(self) -> None:
        if self.interactive and self._drawn_lines:
            self.stream.write(f"\x1b[{self._drawn_lines}F\x1b[J")
            self._drawn_lines = 0

    def _draw(self) -> None:
        lines = [*self._table(), self._footer()]
        self._clear()
        self.stream.write("\n".join(lines) + "\n")
        self.stream.flush()
        self._drawn_lines = len(lines)
        self._last_draw = time.monotonic()

    def _maybe_draw(self, force: bool = False) -> None:
        since = time.monotonic() - self._last_draw
        if self.interactive:
            if force or since >= self.refresh:
                self._draw()
        elif since >= self.every:
            self._print(self._footer())
            self._last_draw = time.monotonic()
