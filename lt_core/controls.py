"""Control experiments that tell a winning ticket from any sparse network of the same shape.

Each control takes the ticket's starting state and mask at a level and returns the state and mask to
train instead; it is trained exactly like the ticket.

- ``reinit``: the ticket's mask, fresh random initialisation.
- ``random_prune``: a random mask with the ticket's per-layer densities, the ticket's weights.
- ``shuffle``: the ticket's surviving connections (mask and starting values together) moved to
  random positions within each layer: same per-layer value distribution, no structure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from lt_core.masks import Masks

State = dict[str, torch.Tensor]


@dataclass
class ControlStart:
    state: State
    masks: Masks


def reinit(ticket: State, masks: Masks, fresh: Callable[[], State],
           generator: torch.Generator) -> ControlStart:
    return ControlStart(fresh(), masks)


def random_prune(ticket: State, masks: Masks, fresh: Callable[[], State],
                 generator: torch.Generator) -> ControlStart:
    random_masks = {}
    for name, mask in masks.items():
        keep = torch.randperm(mask.numel(), generator=generator)[: int(mask.sum())]
        flat = torch.zeros(mask.numel(), dtype=torch.bool)
        flat[keep] = True
        random_masks[name] = flat.view_as(mask).to(mask.device)
    return ControlStart(dict(ticket), random_masks)


def shuffle(ticket: State, masks: Masks, fresh: Callable[[], State],
            generator: torch.Generator) -> ControlStart:
    state, shuffled = dict(ticket), {}
    for name, mask in masks.items():
        perm = torch.randperm(mask.numel(), generator=generator).to(mask.device)
        shuffled[name] = mask.reshape(-1)[perm].view_as(mask)
        state[name] = (ticket[name].reshape(-1)[perm] * shuffled[name].reshape(-1)).view_as(mask)
    return ControlStart(state, shuffled)


CONTROLS: dict[str, Callable[..., ControlStart]] = {
    "reinit": reinit,
    "random_prune": random_prune,
    "shuffle": shuffle,
}
