"""What a control experiment receives and returns. A control takes the ticket's starting
weights and masks at a level and returns the weights and masks to train instead; it is trained
exactly like the ticket."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from lt_core.masks import Masks, PrunePlan

State = dict[str, torch.Tensor]


@dataclass
class ControlInputs:
    ticket: State  # the ticket's starting weights at this level (before masking)
    masks: Masks  # the ticket's masks
    fresh: Callable[[], State]  # weights of a freshly initialised network (seeded per control)
    generator: torch.Generator  # seeded per control and level
    plan: PrunePlan  # which layers were pruned in whole filters (``lt_core.masks.units``)


@dataclass
class ControlStart:
    state: State
    masks: Masks


Control = Callable[[ControlInputs], ControlStart]
