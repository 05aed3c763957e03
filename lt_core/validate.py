"""Checks that need the model or the data's shape and size, run before anything is started or
written."""

from __future__ import annotations

import torch

from lt_core.config import ConfigError, ExperimentConfig
from lt_core.data import dataset_info
from lt_core.masks import pruning_plan
from lt_core.models import build_model
from lt_core.steps import Step, iterations_per_epoch
from lt_core.transfer import check_source


def check_experiment(config: ExperimentConfig, source: str = "config") -> None:
    """Raise ConfigError (one line, field named) for what pydantic alone cannot see."""
    try:
        info = dataset_info(config.data)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    _check_schedule(config, info.train_examples, source)
    with torch.device("meta"):
        model = build_model(config.model.name, info.input_shape, info.num_classes)
    try:
        pruning_plan(model, config.pruning)
        if config.imp.ticket_from is not None:
            check_source(config, model)
    except (ValueError, ConfigError) as err:
        raise ConfigError(f"{source}: {err}") from None


def _check_schedule(config: ExperimentConfig, train_examples: int, source: str) -> None:
    """Pruned levels train from the rewind point to the end: it must come before the end."""
    per_epoch = iterations_per_epoch(train_examples, config.train.batch_size)
    length = Step.parse(config.train.length).iterations(per_epoch)
    rewind = Step.parse(config.imp.rewind).iterations(per_epoch)
    if (config.imp.levels > 0 or config.imp.analyses) and rewind >= length:
        raise ConfigError(
            f"{source}: imp.rewind: {config.imp.rewind!r} ({rewind} iterations) leaves "
            f"{'pruned levels' if config.imp.levels else 'analysis copies'} nothing to train: "
            f"train.length {config.train.length!r} is {length} "
            f"iterations ({per_epoch} per epoch)")


def check_device(device: str, field: str) -> None:
    """The device a run trains on exists on this machine (``auto`` always does)."""
    if device.startswith("cuda"):
        index = int(device.partition(":")[2] or 0)
        count = torch.cuda.device_count()
        if index >= count:
            raise ConfigError(f"{field}: {device!r} but this machine has "
                              f"{count or 'no'} CUDA device{'s' if count != 1 else ''}")
    elif device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{field}: 'mps' but this machine has no MPS device")
