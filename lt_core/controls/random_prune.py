"""random_prune: random masks with the ticket's per-layer densities (in the same units: whole
filters under filter pruning), and the ticket's starting weights."""

from __future__ import annotations

import torch

from lt_core.controls.base import ControlInputs, ControlStart
from lt_core.masks import units


def random_prune(inputs: ControlInputs) -> ControlStart:
    random_masks = {}
    for name, mask in inputs.masks.items():
        alive = units(mask, name, inputs.plan).any(1)
        keep = torch.randperm(alive.numel(), generator=inputs.generator)[: int(alive.sum())]
        chosen = torch.zeros(alive.numel(), dtype=torch.bool)
        chosen[keep] = True
        full = units(torch.ones_like(mask), name, inputs.plan) & chosen.to(mask.device)[:, None]
        random_masks[name] = full.reshape(mask.shape)
    return ControlStart(dict(inputs.ticket), random_masks)
