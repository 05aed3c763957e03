"""Ticket transfer (Morcos et al. 2019, "One ticket to win them all"): another run's tickets, its
masks at each level and its rewind weights, trained on this experiment's data, optimizer and
schedule (``imp.ticket_from``, ``imp.ticket_levels``).

The source is a run directory (lt_core.rundir) of the same model. Every layer must have the
shape the source's has, except the output layer: with another number of classes it is
re-initialised (this experiment's seed) and given a random mask at the density the source's output
layer had at that level. An input shape the architecture turns into other layer shapes (LeNet's
first layer on 32x32x3 images) is refused before anything starts.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lt_core.config import ExperimentConfig, config_from_dict, read_yaml
from lt_core.errors import ConfigError
from lt_core.masks import Masks
from lt_core.models import PrunableModel
from lt_core.rundir import (config_file, level_dir, load_tensors, mask_file, metrics_file,
                            rewind_file)

FIELD = "imp.ticket_from"


def source_config(source: Path) -> ExperimentConfig:
    path = config_file(source)
    if not source.is_dir():
        raise ConfigError(f"{FIELD}: {source} is not a run directory")
    if not path.is_file():
        raise ConfigError(f"{FIELD}: {source} is not a run directory (no {path.name})")
    return config_from_dict(read_yaml(path), str(path))


def source_levels(source: Path) -> list[int]:
    """The source's finished grid levels that have their mask (0, 1, ... in order)."""
    levels, level = [], 0
    while metrics_file(level_dir(source, level)).exists():
        if mask_file(level_dir(source, level)).exists():
            levels.append(level)
        level += 1
    return levels


def transfer_levels(config: ExperimentConfig) -> list[int]:
    """The grid levels a transfer experiment trains: the dense level 0 (its reference), then
    the source's levels in ``ticket_levels`` (every finished one by default)."""
    available = source_levels(Path(config.imp.ticket_from))
    if not available:
        raise ConfigError(f"{FIELD}: {config.imp.ticket_from} has no finished level (is it "
                          f"reachable from here?)")
    wanted = config.imp.ticket_levels
    return sorted({0, *(level for level in available if wanted is None or level in wanted)})


def check_source(config: ExperimentConfig, model: PrunableModel) -> None:
    """ConfigError (one line, ``imp.ticket_from: ...``) unless the source can be transferred to
    ``model`` (this experiment's architecture on its data; may live on the meta device)."""
    source = Path(config.imp.ticket_from)
    origin = source_config(source)
    if origin.model.name != config.model.name:
        raise ConfigError(f"{FIELD}: {source} holds {origin.model.name} tickets; this experiment "
                          f"trains {config.model.name}")
    if not rewind_file(source).is_file():
        raise ConfigError(f"{FIELD}: {source} has no rewind weights ({rewind_file(source).name})")
    available = source_levels(source)
    if not available:
        raise ConfigError(f"{FIELD}: {source} has no finished level")
    missing = sorted(set(config.imp.ticket_levels or ()) - set(available))
    if missing:
        raise ConfigError(f"imp.ticket_levels: level {missing[0]} is not finished in {source} "
                          f"(finished: {', '.join(map(str, available))})")
    masks = load_tensors(mask_file(level_dir(source, 0)))
    params = dict(model.named_parameters())
    output = model.output_weight_name()
    for name, mask in masks.items():
        shape = params[name].shape if name in params else None
        if name != output and shape != mask.shape:
            needs = "no such layer" if shape is None else "x".join(map(str, shape))
            raise ConfigError(
                f"{FIELD}: the source's {name} is {'x'.join(map(str, mask.shape))}, but "
                f"{config.model.name} on this data needs {needs}: the architecture cannot take "
                f"this input shape with these tickets")


def transferred_state(source_state: dict[str, torch.Tensor], fresh: PrunableModel) -> dict:
    """The source's rewind weights in ``fresh`` (this experiment's freshly initialised model):
    every tensor taken over, the output layer's kept fresh when its shape differs."""
    state = fresh.state_dict()
    output = fresh.output_layer + "."
    for name, value in source_state.items():
        if value.shape == state[name].shape:
            state[name] = value.to(state[name].device)
        elif not name.startswith(output):
            raise ConfigError(f"{FIELD}: {name} has shape {tuple(value.shape)} in the source, "
                              f"{tuple(state[name].shape)} here")
    return state


def transferred_masks(source_masks: Masks, model: PrunableModel,
                      generator: torch.Generator) -> Masks:
    """The source's masks; an output layer of another shape gets a random mask at the density
    the source's output layer had."""
    name = model.output_weight_name()
    weight = dict(model.named_parameters())[name]
    masks = dict(source_masks)
    if masks[name].shape != weight.shape:
        keep = round(masks[name].float().mean().item() * weight.numel())
        chosen = torch.zeros(weight.numel(), dtype=torch.bool)
        chosen[torch.randperm(weight.numel(), generator=generator)[:keep]] = True
        masks[name] = chosen.reshape(weight.shape).to(masks[name].device)
    return masks
