"""The typed config of one IMP experiment, loaded from YAML with ``key.sub=value`` overrides.

Validated once here; everything downstream trusts it. Errors name the file and the field.
"""

from __future__ import annotations

import copy
from pathlib import Path
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import yaml
from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field,
                      ValidationError, field_validator, model_validator)

from lt_core.analyses import ANALYSES
from lt_core.controls import CONTROLS
from lt_core.errors import ConfigError
from lt_core.masks import STRUCTURES
from lt_core.metrics import TICKET
from lt_core.models import MODELS
from lt_core.pruning import CRITERIA
from lt_core.retrain import RETRAIN_MODES
from lt_core.stability import THRESHOLD_PP
from lt_core.steps import Step


def _check_step(text: str) -> str:
    Step.parse(text)
    return text


def _int_is_iterations(value: Any) -> Any:
    return f"{value}it" if isinstance(value, int) and not isinstance(value, bool) else value


StepText = Annotated[str, BeforeValidator(_int_is_iterations), AfterValidator(_check_step)]
Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]


def registered(registry: Mapping[str, Any], what: str) -> AfterValidator:
    """A name that must be a key of ``registry``: the registry is the list of allowed values."""
    def check(name: str) -> str:
        if name not in registry:
            raise ValueError(f"unknown {what} {name!r}; choose from {', '.join(registry)}")
        return name
    return AfterValidator(check)


ModelName = Annotated[str, registered(MODELS, "model")]
CriterionName = Annotated[str, registered(CRITERIA, "pruning criterion")]
StructureName = Annotated[str, registered(STRUCTURES, "pruning structure")]
ControlName = Annotated[str, registered(CONTROLS, "control")]
RetrainName = Annotated[str, registered(RETRAIN_MODES, "retrain mode")]
AnalysisName = Annotated[str, registered(ANALYSES, "analysis")]
NetworkName = Annotated[str, registered({TICKET: None, **CONTROLS}, "network")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class ModelConfig(_Strict):
    name: ModelName


def _absolute(path: str | None) -> str | None:
    # Ray runs trials in other working directories: user paths are fixed where they are read.
    return None if path is None else str(Path(path).expanduser().resolve())


AbsolutePath = Annotated[str, AfterValidator(_absolute)]


class DataConfig(_Strict):
    name: Literal["mnist", "fashion_mnist", "cifar10", "cifar100", "npz"]
    root: AbsolutePath = "~/.cache/lt_sweep/data"  # torchvision datasets live/download here
    path: AbsolutePath | None = None  # the .npz file when name == "npz"
    download: bool = True
    train_split: str = "train"  # e.g. "train[:5000]"
    test_split: str = "test"
    val_size: int = Field(0, ge=0)  # examples held out from the end of the train split
    augment: bool | None = None  # None: random crop + flip for CIFAR, none otherwise

    @model_validator(mode="after")
    def _npz_needs_path(self) -> "DataConfig":
        if self.name == "npz" and not self.path:
            raise ValueError("data.path is required when data.name is 'npz'")
        return self


class TrainConfig(_Strict):
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.1, gt=0.0)
    momentum: float = Field(0.0, ge=0.0, lt=1.0)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0.0)
    batch_size: int = Field(128, ge=1)
    length: StepText = "40ep"
    schedule: Literal["constant", "multistep", "cosine"] = "constant"
    milestones: list[StepText] = []
    gamma: float = Field(0.1, gt=0.0)
    warmup: StepText = "0it"
    eval_every: StepText = "1ep"
    # auto: a point's networks (ticket, controls, analysis copies) train as one fused network
    # where that pays (lt_core.group_training.fuse_chosen); off: one after another.
    fuse: Literal["auto", "off"] = "auto"

    @field_validator("fuse", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        """YAML reads a bare ``off`` (and ``no``, ``false``) as False, ``on`` as True."""
        if isinstance(value, bool):
            return "auto" if value else "off"
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "TrainConfig":
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise ValueError("nesterov needs optimizer 'sgd' with momentum > 0")
        if Step.parse(self.eval_every) == Step(0, 0):
            raise ValueError("eval_every must be positive")
        if Step.parse(self.length) == Step(0, 0):
            raise ValueError("length must be positive")
        return self


class PruningConfig(_Strict):
    criterion: CriterionName = "magnitude"  # lt_core.pruning.CRITERIA: what scores the weights
    structure: StructureName = "unstructured"  # lt_core.masks.STRUCTURES: weights or filters
    scope: Literal["global", "layerwise"] = "global"
    rate: Fraction = 0.2  # fraction of the surviving weights (or filters) removed per level
    # Per-layer rates: a prunable parameter name, or "output", "conv", "linear" (most specific wins).
    # A rate of 0 leaves the layer dense. In global scope these layers are pruned on their own.
    layer_rates: dict[str, Annotated[float, Field(ge=0.0, lt=1.0)]] = {}
    min_layer_density: float = Field(0.0, ge=0.0, le=1.0)  # guard against layer collapse
    # iterative: IMP (prune the previous level's trained weights); one_shot: prune the dense
    # trained weights (level 0) to each level's density; at_init: prune the initial weights to
    # each level's density and train each mask once from init (SNIP, SynFlow, ...).
    mode: Literal["iterative", "one_shot", "at_init"] = "iterative"
    target_density: Fraction | None = None  # one_shot / at_init: prune straight to this density
    rounds: int | None = Field(None, ge=1)  # re-scorings per level (default: the criterion's)
    score_batches: int = Field(1, ge=1)  # batches a data-driven criterion (snip) scores on

    @model_validator(mode="after")
    def _consistent(self) -> "PruningConfig":
        if self.structure == "filter" and self.scope == "global":
            raise ValueError("structure 'filter' needs scope 'layerwise': filters of different "
                             "layers have different sizes, so one threshold over their summed "
                             "scores would favour the big ones")
        return self


class ImpConfig(_Strict):
    levels: int = Field(10, ge=0)  # pruned levels after the dense level 0
    rewind: StepText = "0it"  # k: rewind point (0it = reset to init, the original LTH)
    retrain: RetrainName = "rewind"  # lt_core.retrain.RETRAIN_MODES
    controls: list[ControlName] = []  # lt_core.controls.CONTROLS
    # Where controls are trained: every pruned level, or (after the ticket's levels) only the
    # levels a bisection over each control's own breakdown needs (lt_core.breakdown).
    control_levels: Literal["all", "breakdown"] = "all"
    # Analyses (lt_core.analyses.ANALYSES) of the networks in ``analyses_on`` at every point.
    analyses: list[AnalysisName] = []
    analyses_on: list[NetworkName] = [TICKET]
    # Ticket transfer: train another run's tickets (its masks and rewind weights) on this
    # config's data, optimizer and schedule, at its grid levels ``ticket_levels`` (default: every
    # finished one). The output layer is re-initialised when the number of classes differs.
    # ``imp.levels`` and ``pruning`` then play no part.
    ticket_from: AbsolutePath | None = None
    ticket_levels: list[Annotated[int, Field(ge=0)]] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "ImpConfig":
        missing = [n for n in self.analyses_on if n != TICKET and n not in self.controls]
        if missing:
            raise ValueError(f"analyses_on: {missing[0]!r} is not in imp.controls")
        if self.ticket_levels is not None and self.ticket_from is None:
            raise ValueError("ticket_levels needs ticket_from")
        if self.ticket_from is not None:
            if self.retrain != "rewind" or Step.parse(self.rewind) != Step(0, 0):
                raise ValueError("ticket_from trains each transferred ticket from its rewind "
                                 "weights with this config's whole schedule: it needs retrain "
                                 "'rewind' and rewind 0it")
            if self.ticket_levels is not None and len(set(self.ticket_levels)) != len(
                    self.ticket_levels):
                raise ValueError("ticket_levels lists a level twice")
            if self.ticket_levels is not None and self.control_levels == "breakdown":
                raise ValueError("control_levels 'breakdown' bisects over every level: leave "
                                 "ticket_levels unset")
        return self


class InstabilityConfig(_Strict):
    """Options of the instability analysis (lt_core.analyses.instability)."""
    points: int = Field(30, ge=3)  # evaluated points on the line between the copies, ends included
    threshold: float = Field(THRESHOLD_PP, gt=0.0)  # barrier (pp) above which it is unstable
    train_examples: int = Field(5000, ge=1)  # train error and BatchNorm statistics on these


class ExperimentConfig(_Strict):
    model: ModelConfig
    data: DataConfig
    train: TrainConfig = TrainConfig()
    pruning: PruningConfig = PruningConfig()
    imp: ImpConfig = ImpConfig()
    instability: InstabilityConfig = InstabilityConfig()
    seed: int = 0
    # "auto" = cuda if available, else cpu
    device: str = Field("auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")
    threads: int | None = Field(None, ge=1)  # torch intra-op threads (None: torch's default)

    @model_validator(mode="after")
    def _consistent(self) -> "ExperimentConfig":
        if self.pruning.target_density is not None:
            if self.pruning.mode == "iterative":
                raise ValueError("pruning.target_density needs pruning.mode 'one_shot' or "
                                 "'at_init'")
            if self.imp.levels != 1:
                raise ValueError("pruning.target_density prunes in one level: set imp.levels to 1")
        if self.pruning.mode == "at_init":
            if self.imp.retrain != "rewind" or Step.parse(self.imp.rewind) != Step(0, 0):
                raise ValueError("pruning.mode 'at_init' trains each mask from init: it needs "
                                 "imp.retrain 'rewind' and imp.rewind 0it")
        if len(set(self.imp.controls)) != len(self.imp.controls):
            raise ValueError("imp.controls lists a control twice")
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def deep_merge(base: dict, top: dict) -> dict:
    """``top`` over ``base``, recursively for nested dicts; neither input is modified. An empty
    dict in ``top`` replaces (merging one would change nothing, so writing it means "clear")."""
    merged = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and value and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def parse_override(item: str, source: str = "--set") -> tuple[str, Any]:
    """``key.sub=value`` -> (key, value), the value parsed as YAML (scalar, list or mapping)."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{source}: {item!r} is not key.sub=value")
    try:
        return key.strip(), yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: {key}: cannot parse value {text!r}") from err


def set_dotted(tree: dict, key: str, value: Any, source: str = "--set") -> None:
    """Set ``tree[a][b][c] = value`` for ``key == "a.b.c"``, creating sections, in place."""
    node, parts, walked = tree, key.split("."), []
    while len(parts) > 1:
        # A key may itself contain dots (a study's swept "pruning.rate"): longest match first.
        take = next((i for i in range(len(parts) - 1, 0, -1) if ".".join(parts[:i]) in node), 1)
        name, parts = ".".join(parts[:take]), parts[take:]
        walked.append(name)
        child = node.setdefault(name, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: {'.'.join(walked)} is not a section")
        node = child
    node[parts[0]] = value


def apply_overrides(raw: dict, overrides: list[str], source: str = "--set") -> dict:
    """Apply ``key.sub=value`` strings to a copy of a nested dict."""
    result = copy.deepcopy(raw)
    for item in overrides:
        set_dotted(result, *parse_override(item, source), source=source)
    return result


def format_validation_error(err: ValidationError, source: str) -> str:
    parts = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(top level)"
        message = "unknown field" if e["type"] == "extra_forbidden" else e["msg"]
        parts.append(f"{field}: {message.removeprefix('Value error, ')}")
    return f"{source}: " + "; ".join(parts)


def config_from_dict(raw: Any, source: str = "config") -> ExperimentConfig:
    """Validate a raw dict on top of its model's defaults."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    model = raw.get("model")
    name = model.get("name") if isinstance(model, dict) else None
    defaults = MODELS[name].defaults if isinstance(name, str) and name in MODELS else {}
    merged = deep_merge(defaults, raw)
    try:
        return ExperimentConfig.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


def read_yaml(path: str | Path) -> Any:
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None


def load_config(path: str | Path, overrides: list[str] = ()) -> ExperimentConfig:
    raw = read_yaml(path)
    if isinstance(raw, dict):
        raw = apply_overrides(raw, list(overrides))
    return config_from_dict(raw, source=str(path))
