"""shuffle: the ticket's surviving connections, mask and starting values together, moved to
random positions within each layer (whole filters move under filter pruning). Same per-layer
value distribution, no structure: Frankle et al. (2021)'s test of masks found at init."""

from __future__ import annotations

import torch

from lt_core.controls.base import ControlInputs, ControlStart
from lt_core.masks import units


def shuffle(inputs: ControlInputs) -> ControlStart:
    state, shuffled = dict(inputs.ticket), {}
    for name, mask in inputs.masks.items():
        rows = units(mask, name, inputs.plan)
        perm = torch.randperm(rows.shape[0], generator=inputs.generator).to(mask.device)
        shuffled[name] = rows[perm].reshape(mask.shape)
        values = units(inputs.ticket[name], name, inputs.plan)[perm].reshape(mask.shape)
        state[name] = values * shuffled[name]
    return ControlStart(state, shuffled)
