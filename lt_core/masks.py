"""Masks over prunable weights and magnitude pruning of the surviving weights.

A mask set is ``{param_name: bool tensor}`` for every prunable parameter. Pruning removes the
smallest-magnitude *surviving* weights, exactly as ``torch.nn.utils.prune`` (``L1Unstructured``,
``global_unstructured``) selects them, but the number kept is counted from the target density
``round(n * (1 - p) ** level)`` rather than re-rounded from the survivors at every level, so after
L levels each layer is within one weight of (1-p)^L (torch's per-level rounding drifts by several
weights on small layers and stalls on tiny ones).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from lt_core.config import PruningConfig

Masks = dict[str, torch.Tensor]


@dataclass(frozen=True)
class PrunePlan:
    """Which layers share one global threshold and which are pruned on their own, at what rate."""

    global_rate: float
    global_names: tuple[str, ...]  # one threshold over these (empty in layerwise scope)
    own_rates: dict[str, float]  # layers pruned alone at their own rate (0 = never pruned)
    min_layer_density: float


def layer_kind(model: nn.Module, name: str) -> str:
    module = model.get_submodule(name.rsplit(".", 1)[0])
    return "conv" if isinstance(module, nn.Conv2d) else "linear"


def pruning_plan(model: nn.Module, config: PruningConfig) -> PrunePlan:
    """Resolve scope and per-layer overrides (name > "output" > "conv"/"linear") for a model."""
    names = model.prunable_names()
    output = model.output_weight_name()
    overrides = config.layer_rates
    unknown = set(overrides) - set(names) - {"output", "conv", "linear"}
    if unknown:
        raise ValueError(
            f"pruning.layer_rates: unknown layer {sorted(unknown)[0]!r}; use 'output', 'conv', "
            f"'linear' or one of {names}"
        )
    own, shared = {}, []
    for name in names:
        selectors = [name, "output" if name == output else None, layer_kind(model, name)]
        rate = next((overrides[s] for s in selectors if s in overrides), None)
        if rate is not None:
            own[name] = rate
        elif config.scope == "layerwise":
            own[name] = config.rate
        else:
            shared.append(name)
    return PrunePlan(config.rate, tuple(shared), own, config.min_layer_density)


def dense_masks(model: nn.Module) -> Masks:
    params = dict(model.named_parameters())
    return {name: torch.ones_like(params[name], dtype=torch.bool) for name in model.prunable_names()}


def density(masks: Masks) -> float:
    kept = sum(int(m.sum()) for m in masks.values())
    return kept / sum(m.numel() for m in masks.values())


def layer_densities(masks: Masks) -> dict[str, float]:
    return {name: int(m.sum()) / m.numel() for name, m in masks.items()}


def _prune_smallest(scores: torch.Tensor, mask: torch.Tensor, keep: int) -> torch.Tensor:
    """New flat mask: drop the smallest surviving scores until ``keep`` survive."""
    flat_mask = mask.reshape(-1)
    survivors = flat_mask.nonzero().squeeze(1)
    n_prune = survivors.numel() - keep
    new_mask = flat_mask.clone()
    if n_prune > 0:
        smallest = torch.topk(scores.reshape(-1)[survivors], k=n_prune, largest=False).indices
        new_mask[survivors[smallest]] = False
    return new_mask


def _floor(n: int, min_density: float) -> int:
    return math.ceil(min_density * n)


def _prune_global(weights: dict[str, torch.Tensor], masks: Masks, names: list[str], keep: int,
                  min_density: float) -> Masks:
    """One magnitude threshold over ``names``; a layer that would fall below its floor keeps its
    largest ``floor`` survivors and the rest of the budget is shared by the others."""
    result: Masks = {}
    names = list(names)
    while names:
        scores = torch.cat([weights[n].detach().abs().reshape(-1) for n in names])
        joint = torch.cat([masks[n].reshape(-1) for n in names])
        new_joint = _prune_smallest(scores, joint, max(keep, 0))
        sizes = [masks[n].numel() for n in names]
        split = dict(zip(names, new_joint.split(sizes)))
        starved = [n for n in names
                   if int(split[n].sum()) < min(_floor(masks[n].numel(), min_density),
                                                int(masks[n].sum()))]
        if not starved:
            result.update({n: split[n].reshape(masks[n].shape) for n in names})
            break
        for n in starved:
            floor = min(_floor(masks[n].numel(), min_density), int(masks[n].sum()))
            result[n] = _prune_smallest(weights[n].detach().abs(), masks[n], floor).reshape(
                masks[n].shape)
            keep -= floor
            names.remove(n)
    return result


def prune(weights: dict[str, torch.Tensor], masks: Masks, plan: PrunePlan,
          exponent: float) -> Masks:
    """Masks at density (1 - rate) ** exponent of each layer's size, pruning only survivors.

    Iterative IMP passes the level as ``exponent`` and the previous level's masks; one-shot passes
    dense masks and log(target)/log(1-rate).
    """
    new_masks: Masks = {}
    for name, rate in plan.own_rates.items():
        n = masks[name].numel()
        keep = max(round(n * (1 - rate) ** exponent), _floor(n, plan.min_layer_density))
        keep = min(keep, int(masks[name].sum()))
        new_masks[name] = _prune_smallest(weights[name].detach().abs(), masks[name], keep).reshape(
            masks[name].shape)
    if plan.global_names:
        total = sum(masks[n].numel() for n in plan.global_names)
        keep = round(total * (1 - plan.global_rate) ** exponent)
        new_masks.update(_prune_global(weights, masks, list(plan.global_names), keep,
                                       plan.min_layer_density))
    return {name: new_masks[name] for name in masks}


def apply_masks(model: nn.Module, masks: Masks) -> None:
    """Zero the pruned weights in place."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask)
