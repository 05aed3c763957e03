"""A study file: a base IMP config, the swept space, the search, resources, tracking, breakdown.

Validated once, completely, before anything starts: the base config, every swept key and the
combinations of representative values must form valid experiments. Errors are one line naming the
file and the field.
"""

from __future__ import annotations

import copy
import itertools
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lt_core.config import (ConfigError, ExperimentConfig, apply_overrides, config_from_dict,
                            format_validation_error, parse_override, read_yaml, set_dotted)
from lt_core.breakdown import BreakdownRule
from lt_core.metrics import ACCURACY_METRICS, TICKET
from lt_core.paths import check_writable_dir
from lt_core.validate import check_experiment
from sweeps.layout import seed_member_id

MAX_CHECKED_COMBINATIONS = 2000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Dimension(_Strict):
    """One swept key: exactly one of Tune's primitives."""

    grid: list[Any] | None = None
    choice: list[Any] | None = None
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = None  # [low, high)

    @model_validator(mode="after")
    def _one_kind(self) -> "Dimension":
        given = [k for k in ("grid", "choice", "uniform", "loguniform", "randint")
                 if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of grid, choice, uniform, loguniform, randint")
        if self.values is not None and not self.values:
            raise ValueError(f"{self.kind} needs at least one value")
        low_high = self.uniform or self.loguniform or self.randint
        if low_high and not low_high[0] < low_high[1]:
            raise ValueError(f"{self.kind} needs [low, high] with low < high")
        if self.loguniform and self.loguniform[0] <= 0:
            raise ValueError("loguniform needs low > 0")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("grid", "choice", "uniform", "loguniform", "randint")
                    if getattr(self, k) is not None)

    @property
    def values(self) -> list[Any] | None:
        return self.grid if self.grid is not None else self.choice

    def representatives(self) -> list[Any]:
        """Values that stand for the whole dimension when validating."""
        if self.values is not None:
            return list(self.values)
        if self.randint:
            return [self.randint[0], self.randint[1] - 1]
        return list(self.uniform or self.loguniform)

    def to_tune(self):
        from ray import tune

        if self.grid is not None:
            return tune.grid_search(list(self.grid))
        if self.choice is not None:
            return tune.choice(list(self.choice))
        if self.uniform:
            return tune.uniform(*self.uniform)
        if self.loguniform:
            return tune.loguniform(*self.loguniform)
        return tune.randint(*self.randint)


class Search(_Strict):
    algorithm: Literal["grid", "random", "optuna"] = "grid"
    sampler: Literal["tpe", "gp", "nsga2"] = "tpe"  # optuna only
    num_samples: int = Field(1, ge=1)  # grid: repeats of the grid; random/optuna: trials
    # Maximised; a second objective (e.g. dense_test_acc) makes a two-objective search.
    objective: list[Literal["breakdown_sparsity", "breakdown_sparsity_est", "dense_test_acc",
                            "test_acc"]] = [
        "breakdown_sparsity"]
    max_concurrent: int | None = Field(None, ge=1)
    seed: int | None = None  # the searcher's own seed

    @model_validator(mode="before")
    @classmethod
    def _objective_list(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("objective"), str):
            data = {**data, "objective": [data["objective"]]}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> "Search":
        if not 1 <= len(self.objective) <= 2:
            raise ValueError("objective takes one or two metrics")
        if len(self.objective) == 2 and self.algorithm != "optuna":
            raise ValueError("a two-objective search needs algorithm 'optuna'")
        if len(self.objective) == 2 and self.sampler == "gp":
            raise ValueError("sampler 'gp' is single-objective; use 'nsga2' or 'tpe'")
        return self


class Resources(_Strict):
    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)  # fractional GPUs share one device between trials


class Tracking(_Strict):
    uri: str | None = None  # default: sqlite:///<absolute path>/mlflow.db in the working dir
    experiment: str | None = None  # default: the study name


MAX_REFINE_STEPS = 99


class Breakdown(_Strict):
    tolerance: float = Field(1.0, ge=0)  # percentage points below dense accuracy
    # Which accuracy locates the breakdown (lt_core.metrics.ACCURACY_METRICS): final test
    # accuracy, test accuracy at the early-stop iteration (Frankle & Carbin), or the best.
    metric: Literal[ACCURACY_METRICS] = "test_acc"
    early_stop: bool = False  # end a trial once `patience` consecutive levels fall below
    patience: int = Field(2, ge=1)
    # After a trial's levels: K refinement points inside each listed network's bracket (0: none).
    refine: int = Field(0, ge=0, le=MAX_REFINE_STEPS)
    refine_networks: list[str] = [TICKET]

    @property
    def rule(self) -> BreakdownRule:
        return BreakdownRule(self.tolerance, self.metric)


class RunSettings(_Strict):
    storage_path: str = "lt_results"
    max_failures: int = Field(2, ge=0)  # a failed trial restarts from its last finished level


class StudyFile(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    base: dict[str, Any]
    space: dict[str, Dimension] = {}
    search: Search = Search()
    resources: Resources = Resources()
    tracking: Tracking = Tracking()
    breakdown: Breakdown = Breakdown()
    run: RunSettings = RunSettings()


class Study:
    """A validated study with every path made absolute (on the driver, where it was read)."""

    def __init__(self, spec: StudyFile, source_path: Path, raw: dict):
        self.spec = spec
        self.source_path = source_path
        self.raw = raw
        self.name = spec.name
        self.seeds = _seeds(spec.base, f"{source_path}: base.seeds")
        self.base = _absolute_data_paths({k: v for k, v in spec.base.items() if k != SEEDS})
        self.space = spec.space
        self.search = spec.search
        self.resources = spec.resources
        self.breakdown = spec.breakdown
        self.storage_path = Path(spec.run.storage_path).expanduser().resolve()
        self.tracking_uri = spec.tracking.uri or f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"
        self.experiment = spec.tracking.experiment or spec.name
        self.base = _absolute_ticket_source(self.base, self.tracking_uri,
                                            f"{source_path}: base.imp.ticket_from")
        swept_source = self.space.get(TICKET_FROM)
        if swept_source is not None and swept_source.values is not None:
            field = f"{source_path}: space.{TICKET_FROM}"
            resolved = [_absolute_source(v, self.tracking_uri, field) if isinstance(v, str) else v
                        for v in swept_source.values]
            self.space = {**self.space, TICKET_FROM: swept_source.model_copy(
                update={swept_source.kind: resolved})}

    @property
    def transfers(self) -> bool:
        """Its trials train transferred tickets (``imp.ticket_from`` in the base or swept)."""
        return TICKET_FROM in self.space or (
            isinstance(self.base.get("imp"), dict) and
            self.base["imp"].get("ticket_from") is not None)

    def members(self, trial_id: str, swept: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        """The runs a Tune trial trains, as (id, swept values): itself; with ``base.seeds``, one
        per seed (``seed_member_id``), the seed among its swept values."""
        if not self.seeds:
            return [(trial_id, swept)]
        return [(seed_member_id(trial_id, seed), {**swept, "seed": seed}) for seed in self.seeds]

    def member(self, trial_id: str, swept: dict[str, Any],
               seed: int | None = None) -> tuple[str, dict[str, Any]]:
        """The run of a trial a result with ``seed`` is about (``members``; the first when no
        seed is named)."""
        members = self.members(trial_id, swept)
        return next((m for m in members if seed is not None and m[1].get("seed") == seed),
                    members[0])

    @property
    def swept_keys(self) -> list[str]:
        return sorted(self.space)

    def param_space(self) -> dict[str, Any]:
        return {key: dim.to_tune() for key, dim in self.space.items()}

    def count_trials(self) -> int:
        grid = math.prod(len(d.grid) for d in self.space.values() if d.grid is not None)
        return grid * self.search.num_samples

    def base_config(self) -> ExperimentConfig:
        return trial_config(self, {})


TICKET_FROM = "imp.ticket_from"
SEEDS = "seeds"  # in a study's base: the seeds one trial trains, fused (lt_core.group_training)


def _seeds(base: dict, field: str) -> list[int]:
    """``base.seeds``: distinct non-negative integers, instead of a ``seed``; [] when absent."""
    if SEEDS not in base:
        return []
    seeds = base[SEEDS]
    if not isinstance(seeds, list) or not seeds or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ConfigError(f"{field}: expected a non-empty list of non-negative integers, "
                          f"got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{field}: {seeds} repeats a seed")
    if "seed" in base:
        raise ConfigError(f"{field}: give either base.seed or base.seeds, not both")
    return list(seeds)


def _absolute_source(value: str, tracking_uri: str, field: str) -> str:
    """A transfer's source as an absolute path on the driver (an MLflow run id: its run
    directory), before trials move to other working directories."""
    from sweeps.transfer import resolve_ticket_source

    return str(Path(resolve_ticket_source(value, tracking_uri, field)).expanduser().resolve())


def _absolute_ticket_source(base: dict, tracking_uri: str, field: str) -> dict:
    imp = base.get("imp")
    source = imp.get("ticket_from") if isinstance(imp, dict) else None
    if not isinstance(source, str):
        return base
    return {**base, "imp": {**imp, "ticket_from": _absolute_source(source, tracking_uri, field)}}


def _absolute_data_paths(base: dict) -> dict:
    """Fix data paths to this (the driver's) working directory before trials move elsewhere."""
    data = base.get("data")
    if not isinstance(data, dict):
        return base
    fixed = {k: str(Path(v).expanduser().resolve()) if k in ("path", "root") and
             isinstance(v, str) else v for k, v in data.items()}
    return {**base, "data": fixed}


def trial_config(study: Study, params: dict[str, Any]) -> ExperimentConfig:
    """The experiment of one trial: the base config with the trial's swept values applied."""
    raw = copy.deepcopy(study.base)
    for key, value in params.items():
        if not key.startswith("_"):
            set_dotted(raw, key, value, source=str(study.source_path))
    raw.setdefault("threads", max(1, int(study.resources.cpu)))
    return config_from_dict(raw, source=str(study.source_path))


def load_study(path: str | Path, overrides: list[str] = ()) -> Study:
    """Read, override (``key.sub=value`` on the study file) and validate a study completely."""
    path = Path(path)
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    raw = _apply_study_overrides(raw, list(overrides), f"{path}: --set")
    try:
        spec = StudyFile.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, str(path))) from None
    study = Study(spec, path.resolve(), raw)
    _check_experiments(study)
    _check_destinations(study)
    return study


def _check_destinations(study: Study) -> None:
    """Where the sweep will write: its results folder and its MLflow store (a server must
    answer)."""
    from sweeps.preflight import check_tracking_uri

    source = str(study.source_path)
    check_writable_dir(study.storage_path, f"{source}: run.storage_path")
    default = "" if study.spec.tracking.uri else " (default)"
    check_tracking_uri(study.tracking_uri, f"{source}: tracking.uri{default}")


DIMENSION_KINDS = ("grid", "choice", "uniform", "loguniform", "randint")


def _apply_study_overrides(raw: dict, overrides: list[str], source: str) -> dict:
    """``--set`` on a study. Swept keys contain dots, so ``space.<key>[.<kind>]=value`` names
    the dimension ``<key>`` whole (a kind suffix sets that kind, replacing the dimension)."""
    general, space = [], {}
    for item in overrides:
        if not item.startswith("space."):
            general.append(item)
            continue
        key, value = parse_override(item, source)
        swept = key.removeprefix("space.")
        kind = swept.rsplit(".", 1)[-1]
        if kind in DIMENSION_KINDS:
            space[swept.rsplit(".", 1)[0]] = {kind: value}
        else:
            space[swept] = value
    raw = apply_overrides(raw, general, source=source)
    if space:
        raw["space"] = {**(raw.get("space") or {}), **space}
    return raw


def _check_experiments(study: Study) -> None:
    source = str(study.source_path)
    if study.seeds and "seed" in study.space:
        raise ConfigError(f"{source}: space.seed: the study trains base.seeds in every trial; "
                          f"sweep seed or give base.seeds, not both")
    if study.seeds and study.search.algorithm == "optuna":
        raise ConfigError(f"{source}: base.seeds: search 'optuna' takes one objective value "
                          f"per trial; sweep seed instead")
    if study.search.algorithm == "optuna":
        grids = [k for k, d in study.space.items() if d.grid is not None]
        if grids:
            raise ConfigError(f"{source}: space.{grids[0]}: search 'optuna' cannot sweep a grid; "
                              f"use choice")
    try:
        base = study.base_config()
        check_experiment(base, source)
    except ConfigError as err:
        raise ConfigError(str(err).replace(f"{source}: ", f"{source}: base.", 1)) from None
    check_networks(study.breakdown.refine_networks, base.imp.controls,
                   f"{source}: breakdown.refine_networks")
    if study.breakdown.refine:
        refuse_refining_transfer(study, f"{source}: breakdown.refine")
    if base.device.startswith("cuda") and study.resources.gpu == 0:
        raise ConfigError(f"{source}: base.device: {base.device!r} but resources.gpu is 0: the "
                          f"trials would get no GPU (set resources.gpu, or device auto/cpu)")
    if "test_acc" in study.search.objective and (
            study.breakdown.refine or base.imp.control_levels == "breakdown"):
        raise ConfigError(f"{source}: search.objective: 'test_acc' is read from a trial's last "
                          f"result, which with breakdown.refine or imp.control_levels "
                          f"'breakdown' is a refinement or control point; use "
                          f"breakdown_sparsity_est or dense_test_acc")
    keys = list(study.space)
    for key in keys:  # each key on its own first, so the error names the swept field
        for value in study.space[key].representatives():
            _check_one(study, {key: value}, f"space.{key}")
    choices = [study.space[k].representatives() for k in keys]
    if math.prod(len(c) for c in choices) <= MAX_CHECKED_COMBINATIONS:
        for combo in itertools.product(*choices):
            _check_one(study, dict(zip(keys, combo)), "space")


def refuse_refining_transfer(study: Study, field: str) -> None:
    """A transfer study trains only its source's levels: refining it is an error."""
    if study.transfers:
        raise ConfigError(f"{field}: a transfer study (imp.ticket_from) trains only its "
                          f"source's levels; there is nothing between them to refine")


def check_networks(names: list[str], controls: list[str], source: str) -> None:
    """Each name is the ticket or one of the experiment's controls, and listed once."""
    known = [TICKET, *controls]
    for name in names:
        if name not in known:
            raise ConfigError(f"{source}: {name!r} is not one of {', '.join(known)} (the ticket "
                              f"and the controls in imp.controls)")
    if len(set(names)) != len(names):
        raise ConfigError(f"{source}: a network is listed twice")


def _check_one(study: Study, params: dict[str, Any], field: str) -> None:
    source = str(study.source_path)
    try:
        check_experiment(trial_config(study, params), source)
    except ConfigError as err:
        detail = str(err).removeprefix(f"{source}: ")
        raise ConfigError(f"{source}: {field}={_describe(params)}: {detail}") from None


def _describe(params: dict[str, Any]) -> str:
    if len(params) == 1:
        return repr(next(iter(params.values())))
    return "{" + ", ".join(f"{k}={v!r}" for k, v in params.items()) + "}"
