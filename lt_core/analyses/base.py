"""What an analysis receives and returns. An analysis looks at one network (the ticket or a
control) trained at one point, may train more networks from the same start (through
``train_copy``, which resumes and never retrains a finished copy) and returns measurements by the
names of ``lt_core.metrics.NETWORK_KEYS``. Its files live in ``folder``; the engine records the
measurements in the level's ``metrics.json`` and skips the analysis once ``result`` exists."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol

from torch import nn

from lt_core.masks import Masks

if TYPE_CHECKING:  # the config lists the registry's names: it imports this package
    from lt_core.config import ExperimentConfig
    from lt_core.data import TensorData
    from lt_core.training import TrainOutcome

@dataclass
class AnalysisInputs:
    config: "ExperimentConfig"
    data: "TensorData"
    network: str  # "ticket" or a control
    masks: Masks
    final: nn.Module  # the network after training (do not modify)
    result: dict  # its measurements (lt_core.training.TrainOutcome.metrics)
    # Train a copy of the network from its start (the rewind point, its masks) with the data
    # order of ``seed``, to the same end; a finished copy is loaded, an interrupted one resumes.
    train_copy: Callable[[int], tuple[nn.Module, "TrainOutcome"]]
    seed: int  # derived for this network, point and analysis
    folder: Path  # this analysis's files for this network at this point


class Analysis(Protocol):
    # Whether it calls ``train_copy(inputs.seed)``: the engine may then train the copy
    # beforehand, fused with the point's networks (lt_core.group_training).
    trains_copy: bool

    def __call__(self, inputs: AnalysisInputs) -> dict: ...
