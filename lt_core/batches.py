"""Epoch plans: the data order and augmentation of one epoch, derived from (seed, epoch) alone.

Because an epoch's randomness depends only on its seed and index, a run resumed from any
checkpoint (or rewound to any iteration) sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lt_core.data import Split

PAD = 4


@dataclass
class EpochPlan:
    order: torch.Tensor  # (N,) permutation of the training examples
    crops: torch.Tensor | None  # (N, 2) crop offsets in [0, 2*PAD]
    flips: torch.Tensor | None  # (N,) bool


def epoch_plan(n: int, seed: int, epoch: int, augment: bool, device: torch.device) -> EpochPlan:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=generator)
    crops = flips = None
    if augment:
        crops = torch.randint(0, 2 * PAD + 1, (n, 2), generator=generator).to(device)
        flips = (torch.rand(n, generator=generator) < 0.5).to(device)
    return EpochPlan(order.to(device), crops, flips)


def augment_batch(x: torch.Tensor, crops: torch.Tensor, flips: torch.Tensor,
                  pad_value: torch.Tensor) -> torch.Tensor:
    """Random crop with zero-pixel padding, then horizontal flip, for a whole batch at once."""
    b, c, h, w = x.shape
    padded = pad_value.view(1, c, 1, 1).expand(b, c, h + 2 * PAD, w + 2 * PAD).clone()
    padded[:, :, PAD:PAD + h, PAD:PAD + w] = x
    rows = crops[:, 0:1] + torch.arange(h, device=x.device)  # (B, H)
    cols = crops[:, 1:2] + torch.arange(w, device=x.device)  # (B, W)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    batch_index = torch.arange(b, device=x.device)[:, None, None, None]
    channel_index = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch_index, channel_index, rows[:, None, :, None], cols[:, None, None, :]]


def batch(split: Split, plan: EpochPlan, position: int, size: int, augment: bool,
          pad_value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch at ``position`` (batch index within the epoch); the last partial batch is dropped
    by the caller's steps-per-epoch."""
    index = plan.order[position * size:(position + 1) * size]
    x, y = split.x.index_select(0, index), split.y.index_select(0, index)
    if augment:
        window = slice(position * size, (position + 1) * size)
        x = augment_batch(x, plan.crops[window], plan.flips[window], pad_value)
    return x, y
