"""Checks that need the model or the data's shape, run before anything is started or written."""

from __future__ import annotations

import torch

from lt_core.config import ConfigError, ExperimentConfig
from lt_core.data import dataset_shape, parse_split
from lt_core.masks import pruning_plan
from lt_core.models import build_model


def check_experiment(config: ExperimentConfig, source: str = "config") -> None:
    """Raise ConfigError (one line, field named) for what pydantic alone cannot see."""
    try:
        parse_split(config.data.train_split, "train_split")
        parse_split(config.data.test_split, "test_split")
        input_shape, num_classes = dataset_shape(config.data)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    with torch.device("meta"):
        model = build_model(config.model.name, input_shape, num_classes)
    try:
        pruning_plan(model, config.pruning)
    except ValueError as err:
        raise ConfigError(f"{source}: {err}") from None
