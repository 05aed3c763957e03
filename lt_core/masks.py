"""Masks over prunable weights, and the selection of the highest-scoring surviving units.

A mask set is ``{param_name: bool tensor}`` for every prunable parameter. A pruning criterion
(``lt_core.pruning``) scores every weight; ``select`` keeps the best-scoring *surviving* units.
A unit is one weight (``unstructured``) or one whole filter: a conv output channel or a row of a
linear layer (``filter``, not for the output layer, whose rows are classes). A filter scores the
sum of its weights' scores; with magnitude scores that is Li et al.'s L1-norm filter pruning.

With magnitude scores and unstructured units, ``select`` picks exactly the weights that
``torch.nn.utils.prune`` (``L1Unstructured``, ``global_unstructured``) selects. The number kept is
counted from the target density ``round(n * (1 - p) ** exponent)`` of the layer's n units, not
re-rounded from the survivors at every level. So after L levels each layer is within one unit of
(1-p)^L; torch's per-level rounding drifts by several weights on small layers and stalls on tiny
ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from lt_core.config import PruningConfig

Masks = dict[str, torch.Tensor]


@dataclass(frozen=True)
class PrunePlan:
    """Which layers share one global threshold and which are pruned on their own, at what rate,
    and in which units."""

    global_rate: float
    global_names: tuple[str, ...]  # one threshold over these (empty in layerwise scope)
    own_rates: dict[str, float]  # layers pruned alone at their own rate (0 = never pruned)
    min_layer_density: float
    filters: frozenset[str] = frozenset()  # layers pruned in whole filters (rows)


# ---- structures: what a unit is ----------------------------------------------------------------
def unstructured(model: nn.Module, names: list[str]) -> frozenset[str]:
    """Every weight is a unit."""
    return frozenset()


def filter_structure(model: nn.Module, names: list[str]) -> frozenset[str]:
    """Whole conv output channels and whole linear rows, except the output layer's (classes)."""
    return frozenset(name for name in names if name != model.output_weight_name())


# name -> the layers whose units are filters; adding a structure is a function and a line here.
STRUCTURES = {"unstructured": unstructured, "filter": filter_structure}


def units(tensor: torch.Tensor, name: str, plan: PrunePlan) -> torch.Tensor:
    """A layer's tensor viewed as (units, weights per unit)."""
    return tensor.reshape(tensor.shape[0], -1) if name in plan.filters else tensor.reshape(-1, 1)


def layer_kind(model: nn.Module, name: str) -> str:
    module = model.get_submodule(name.rsplit(".", 1)[0])
    return "conv" if isinstance(module, nn.Conv2d) else "linear"


def pruning_plan(model: nn.Module, config: PruningConfig) -> PrunePlan:
    """Resolve scope, per-layer overrides (name > "output" > "conv"/"linear") and structure."""
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
    return PrunePlan(config.rate, tuple(shared), own, config.min_layer_density,
                     STRUCTURES[config.structure](model, names))


def dense_masks(model: nn.Module) -> Masks:
    params = dict(model.named_parameters())
    return {name: torch.ones_like(params[name], dtype=torch.bool) for name in model.prunable_names()}


def density(masks: Masks) -> float:
    kept = sum(int(m.sum()) for m in masks.values())
    return kept / sum(m.numel() for m in masks.values())


def layer_densities(masks: Masks) -> dict[str, float]:
    return {name: int(m.sum()) / m.numel() for name, m in masks.items()}


def _keep_best(scores: torch.Tensor, alive: torch.Tensor, keep: int) -> torch.Tensor:
    """New flat alive vector: drop the lowest-scoring survivors until ``keep`` survive."""
    survivors = alive.nonzero().squeeze(1)
    n_prune = survivors.numel() - keep
    new_alive = alive.clone()
    if n_prune > 0:
        lowest = torch.topk(scores[survivors], k=n_prune, largest=False).indices
        new_alive[survivors[lowest]] = False
    return new_alive


def _floor(n: int, min_density: float) -> int:
    return math.ceil(min_density * n)


def _unit_view(scores: dict[str, torch.Tensor], masks: Masks, name: str,
               plan: PrunePlan) -> tuple[torch.Tensor, torch.Tensor]:
    """(score, alive) per unit of one layer: a filter scores its weights' sum and is alive while
    any of its weights is."""
    return (units(scores[name], name, plan).sum(1),
            units(masks[name], name, plan).any(1))


def _expand(alive: torch.Tensor, mask: torch.Tensor, name: str, plan: PrunePlan) -> torch.Tensor:
    return units(mask, name, plan).logical_and(alive.unsqueeze(1)).reshape(mask.shape)


def _select_global(scores: dict[str, torch.Tensor], masks: Masks, names: list[str], keep: int,
                   plan: PrunePlan) -> Masks:
    """One threshold over ``names``; a layer that would fall below its floor keeps its best
    ``floor`` survivors and the rest of the budget is shared by the others."""
    result: Masks = {}
    names = list(names)
    while names:
        views = {n: _unit_view(scores, masks, n, plan) for n in names}
        joint = _keep_best(torch.cat([views[n][0] for n in names]),
                           torch.cat([views[n][1] for n in names]), max(keep, 0))
        split = dict(zip(names, joint.split([views[n][1].numel() for n in names])))
        floors = {n: min(_floor(views[n][1].numel(), plan.min_layer_density),
                         int(views[n][1].sum())) for n in names}
        starved = [n for n in names if int(split[n].sum()) < floors[n]]
        if not starved:
            result.update({n: _expand(split[n], masks[n], n, plan) for n in names})
            break
        for n in starved:
            result[n] = _expand(_keep_best(*views[n], floors[n]), masks[n], n, plan)
            keep -= floors[n]
            names.remove(n)
    return result


def select(scores: dict[str, torch.Tensor], masks: Masks, plan: PrunePlan,
           exponent: float) -> Masks:
    """Masks at density (1 - rate) ** exponent of each layer's units, keeping the
    highest-scoring survivors; pruned units stay pruned.

    Iterative IMP passes the level as ``exponent`` and the previous level's masks; one-shot and
    pruning at init pass dense masks (and for a target density, log(target)/log(1-rate)).
    """
    new_masks: Masks = {}
    for name, rate in plan.own_rates.items():
        score, alive = _unit_view(scores, masks, name, plan)
        n = alive.numel()
        keep = max(round(n * (1 - rate) ** exponent), _floor(n, plan.min_layer_density))
        new_masks[name] = _expand(_keep_best(score, alive, min(keep, int(alive.sum()))),
                                  masks[name], name, plan)
    if plan.global_names:
        total = sum(units(masks[n], n, plan).shape[0] for n in plan.global_names)
        keep = round(total * (1 - plan.global_rate) ** exponent)
        new_masks.update(_select_global(scores, masks, list(plan.global_names), keep, plan))
    return {name: new_masks[name] for name in masks}


def apply_masks(model: nn.Module, masks: Masks) -> None:
    """Zero the pruned weights in place."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask)
