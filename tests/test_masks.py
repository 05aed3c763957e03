"""Magnitude pruning: torch.nn.utils.prune as the oracle, density accounting, per-layer rates,
the layer-collapse guard, one-shot pruning and mask monotonicity."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from lt_core.config import PruningConfig
from lt_core.masks import apply_masks, dense_masks, density, layer_densities, pruning_plan, select
from lt_core.models.base import PrunableModel
from lt_core.pruning import CRITERIA, ScoreContext


class Tiny(PrunableModel):
    """Prunable weights of 500, 800, 600 and 300 entries: sizes for which torch's per-level
    rounding and lt_core's target rounding agree for four levels at p=0.2 (asserted below)."""

    output_layer = "fc3"

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 10, 5)  # 500
        self.fc1 = nn.Linear(40, 20)  # 800
        self.fc2 = nn.Linear(20, 30)  # 600
        self.fc3 = nn.Linear(30, 10)  # 300


class Small(PrunableModel):
    """Small layers (100, 4, 9, 27 and 35 weights), where per-level rounding drifts or stalls."""

    output_layer = "out"

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(10, 10)
        self.b = nn.Linear(2, 2)
        self.c = nn.Linear(3, 3)
        self.conv = nn.Conv2d(1, 3, 3)
        self.out = nn.Linear(7, 5)


def prune(weights: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], plan,
          exponent: float) -> dict[str, torch.Tensor]:
    """Magnitude pruning as the engine does it: the registered criterion's scores of these
    weights (held by a module, as the engine's are), then the selection."""
    holder, names = nn.Module(), {}
    for index, (name, weight) in enumerate(weights.items()):
        holder.register_parameter(f"w{index}", nn.Parameter(weight.clone()))
        names[f"w{index}"] = name
    context = ScoreContext(holder, {key: masks[name] for key, name in names.items()}, data=None,
                           batch_size=0, batches=0, generator=torch.Generator())
    scores = CRITERIA["magnitude"].scores(context)
    return select({name: scores[key] for key, name in names.items()}, masks, plan, exponent)


def make(cls: type[PrunableModel], seed: int = 0) -> PrunableModel:
    torch.manual_seed(seed)
    model = cls()
    with torch.no_grad():  # continuous random weights: no magnitude ties
        for p in model.parameters():
            p.normal_()
    return model


def weights_of(model: nn.Module) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    return {name: params[name].detach().clone() for name in model.prunable_names()}


def kept(masks: dict[str, torch.Tensor]) -> dict[str, int]:
    return {name: int(m.sum()) for name, m in masks.items()}


def torch_kept(n: int, rate: float, levels: int) -> int:
    """Survivors after ``levels`` rounds of torch's rule: prune round(rate * survivors) each."""
    survivors = n
    for _ in range(levels):
        survivors -= round(rate * survivors)
    return survivors


def target_kept(n: int, rate: float, level: float) -> int:
    """lt_core's rule: keep round(n * (1 - rate) ** level) of the original n."""
    return round(n * (1 - rate) ** level)


def module_of(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name.rsplit(".", 1)[0])


# ---- oracle: torch.nn.utils.prune ------------------------------------------------------------
@pytest.mark.parametrize("scope", ["layerwise", "global"])
def test_matches_torch_prune_over_four_levels(scope: str) -> None:
    rate, levels = 0.2, 4
    ours_model = make(Tiny)
    oracle = copy.deepcopy(ours_model)
    names = ours_model.prunable_names()
    sizes = {name: dict(ours_model.named_parameters())[name].numel() for name in names}

    # Precondition: both counting rules give the same survivor counts at every level, so the
    # masks must be identical if both select the smallest-magnitude survivors.
    groups = [[name] for name in names] if scope == "layerwise" else [names]
    for group in groups:
        n = sum(sizes[name] for name in group)
        for level in range(1, levels + 1):
            assert torch_kept(n, rate, level) == target_kept(n, rate, level), (group, level)

    plan = pruning_plan(ours_model, PruningConfig(scope=scope, rate=rate))
    weights = weights_of(ours_model)
    masks = dense_masks(ours_model)
    noise = torch.Generator().manual_seed(1)
    for level in range(1, levels + 1):
        # Both sides see the same current (unmasked) weights. torch scores ``module.weight``
        # (= weight_orig * weight_mask), which its forward pre-hook refreshes; do that by hand.
        with torch.no_grad():
            for name in names:
                module = module_of(oracle, name)
                if level == 1:
                    module.weight.copy_(weights[name])
                else:
                    module.weight_orig.copy_(weights[name])
                    module.weight = module.weight_orig * module.weight_mask
        if scope == "layerwise":
            for name in names:
                torch_prune.l1_unstructured(module_of(oracle, name), "weight", amount=rate)
        else:
            torch_prune.global_unstructured([(module_of(oracle, name), "weight") for name in names],
                                            pruning_method=torch_prune.L1Unstructured,
                                            amount=rate)
        masks = prune(weights, masks, plan, level)
        for name in names:
            expected = module_of(oracle, name).weight_mask.bool()
            assert torch.equal(masks[name], expected), (scope, level, name)
        # "Training": fresh magnitudes among the survivors (and the pruned, which must not matter).
        for name in names:
            weights[name] = weights[name] + 0.7 * torch.randn(weights[name].shape, generator=noise)
    assert density(masks) == pytest.approx((1 - rate) ** levels, abs=1e-3)


# ---- density accounting ---------------------------------------------------------------------
@pytest.mark.parametrize("rate", [0.2, 0.5])
@pytest.mark.parametrize("scope", ["layerwise", "global"])
def test_density_tracks_target_within_one_weight(scope: str, rate: float) -> None:
    model = make(Small)
    plan = pruning_plan(model, PruningConfig(scope=scope, rate=rate))
    weights = weights_of(model)
    sizes = {name: w.numel() for name, w in weights.items()}
    masks = dense_masks(model)
    noise = torch.Generator().manual_seed(2)
    for level in range(1, 11):
        masks = prune(weights, masks, plan, level)
        counts = kept(masks)
        if scope == "layerwise":
            for name, n in sizes.items():
                assert abs(counts[name] - n * (1 - rate) ** level) <= 1, (name, level, counts)
        else:
            total = sum(sizes.values())
            assert abs(sum(counts.values()) - total * (1 - rate) ** level) <= 1, (level, counts)
        for name in weights:
            weights[name] = weights[name] + torch.randn(weights[name].shape, generator=noise)


def test_torch_counting_would_stall_on_tiny_layers() -> None:
    """Why lt_core counts from the original size: torch's rule stalls a 4-weight layer at 2
    (it prunes round(0.2 * 2) = 0 forever), 1.5 weights above (1-p)^10 of it; ours stays within 1."""
    assert torch_kept(4, 0.2, 10) == 2
    assert abs(torch_kept(4, 0.2, 10) - 4 * 0.8 ** 10) > 1
    model = make(Small)
    plan = pruning_plan(model, PruningConfig(scope="layerwise", rate=0.2))
    masks = dense_masks(model)
    for level in range(1, 11):
        masks = prune(weights_of(model), masks, plan, level)
    assert kept(masks)["b.weight"] == target_kept(4, 0.2, 10) == 0


# ---- per-layer rates ------------------------------------------------------------------------
def run_levels(model: PrunableModel, config: PruningConfig, levels: int):
    """Yield (level, masks) for iterative pruning with fixed weights."""
    plan = pruning_plan(model, config)
    weights = weights_of(model)
    masks = dense_masks(model)
    for level in range(1, levels + 1):
        masks = prune(weights, masks, plan, level)
        yield level, masks


def sizes_of(model: PrunableModel) -> dict[str, int]:
    params = dict(model.named_parameters())
    return {name: params[name].numel() for name in model.prunable_names()}


def test_layerwise_output_rate() -> None:
    model = make(Tiny)
    sizes = sizes_of(model)
    config = PruningConfig(scope="layerwise", rate=0.2, layer_rates={"output": 0.1})
    for level, masks in run_levels(model, config, 5):
        counts = kept(masks)
        assert counts["fc3.weight"] == target_kept(300, 0.1, level)
        for name in ("conv.weight", "fc1.weight", "fc2.weight"):
            assert counts[name] == target_kept(sizes[name], 0.2, level), (name, level)


def test_conv_selector_and_name_beats_output() -> None:
    model = make(Tiny)
    sizes = sizes_of(model)
    config = PruningConfig(scope="layerwise", rate=0.2,
                           layer_rates={"conv": 0.5, "output": 0.1, "fc3.weight": 0.3})
    plan = pruning_plan(model, config)
    assert plan.own_rates == {"conv.weight": 0.5, "fc1.weight": 0.2, "fc2.weight": 0.2,
                              "fc3.weight": 0.3}
    for level, masks in run_levels(model, config, 4):
        counts = kept(masks)
        assert counts["conv.weight"] == target_kept(sizes["conv.weight"], 0.5, level)
        assert counts["fc3.weight"] == target_kept(300, 0.3, level)  # the name, not "output"
        assert counts["fc1.weight"] == target_kept(800, 0.2, level)


def test_linear_selector_and_name_beats_kind() -> None:
    model = make(Tiny)
    config = PruningConfig(scope="layerwise", rate=0.2,
                           layer_rates={"linear": 0.5, "fc1.weight": 0.0})
    plan = pruning_plan(model, config)
    assert plan.own_rates == {"conv.weight": 0.2, "fc1.weight": 0.0, "fc2.weight": 0.5,
                              "fc3.weight": 0.5}
    # "output" is more specific than the layer kind.
    plan = pruning_plan(model, PruningConfig(scope="global", rate=0.2,
                                             layer_rates={"linear": 0.5, "output": 0.1}))
    assert plan.own_rates == {"fc1.weight": 0.5, "fc2.weight": 0.5, "fc3.weight": 0.1}
    assert plan.global_names == ("conv.weight",)


def test_global_scope_with_dense_output() -> None:
    model = make(Tiny)
    sizes = sizes_of(model)
    config = PruningConfig(scope="global", rate=0.2, layer_rates={"output": 0.0})
    plan = pruning_plan(model, config)
    assert plan.global_names == ("conv.weight", "fc1.weight", "fc2.weight")
    assert plan.own_rates == {"fc3.weight": 0.0}
    rest = sizes["conv.weight"] + sizes["fc1.weight"] + sizes["fc2.weight"]
    for level, masks in run_levels(model, config, 6):
        counts = kept(masks)
        assert counts["fc3.weight"] == 300  # dense
        assert counts["conv.weight"] + counts["fc1.weight"] + counts["fc2.weight"] == target_kept(
            rest, 0.2, level)
        # One threshold: every kept weight in the group outweighs every pruned one.
        weights = weights_of(model)
        group = ("conv.weight", "fc1.weight", "fc2.weight")
        kept_min = min(weights[n].abs()[masks[n]].min() for n in group)
        pruned_max = max(weights[n].abs()[~masks[n]].max() for n in group)
        assert kept_min > pruned_max


def test_unknown_layer_rate_names_the_layer() -> None:
    model = make(Tiny)
    with pytest.raises(ValueError, match="fc9.weight"):
        pruning_plan(model, PruningConfig(layer_rates={"fc9.weight": 0.1}))


# ---- collapse guard -------------------------------------------------------------------------
class TwoLayer(PrunableModel):
    output_layer = "b"

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(20, 50)  # 1000
        self.b = nn.Linear(50, 10)  # 500, made tiny below


def tiny_layer_model() -> PrunableModel:
    model = make(TwoLayer)
    with torch.no_grad():
        model.b.weight.mul_(1e-3)
    return model


def test_global_pruning_collapses_a_tiny_layer_without_guard() -> None:
    model = tiny_layer_model()
    densities = {level: layer_densities(m)["b.weight"]
                 for level, m in run_levels(model, PruningConfig(scope="global", rate=0.2), 4)}
    assert densities[1] == pytest.approx(200 / 500)  # all 300 pruned weights came from b
    assert densities[2] == 0.0 and densities[4] == 0.0


def test_min_layer_density_guard() -> None:
    model = tiny_layer_model()
    weights = weights_of(model)
    config = PruningConfig(scope="global", rate=0.2, min_layer_density=0.05)
    floor = math.ceil(0.05 * 500)
    for level, masks in run_levels(model, config, 8):
        counts = kept(masks)
        assert counts["b.weight"] >= floor, level
        assert counts["a.weight"] + counts["b.weight"] == target_kept(1500, 0.2, level), level
        # The guarded layer keeps its largest survivors.
        b = weights["b.weight"].abs()
        if counts["b.weight"] < 500:
            assert b[masks["b.weight"]].min() > b[~masks["b.weight"]].max()
    assert counts["b.weight"] == floor  # at level 8 the floor is what holds b up


# ---- one-shot and monotonicity --------------------------------------------------------------
@pytest.mark.parametrize("scope", ["layerwise", "global"])
def test_one_shot_to_target_density(scope: str) -> None:
    model = make(Tiny)
    weights = weights_of(model)
    plan = pruning_plan(model, PruningConfig(scope=scope, rate=0.2))
    exponent = math.log(0.1) / math.log(0.8)
    masks = prune(weights, dense_masks(model), plan, exponent)
    total = sum(m.numel() for m in masks.values())
    assert abs(sum(kept(masks).values()) - 0.1 * total) <= len(masks)
    assert density(masks) == pytest.approx(0.1, abs=0.002)
    groups = [[n] for n in masks] if scope == "layerwise" else [list(masks)]
    for group in groups:  # the largest magnitudes of each group are the ones kept
        assert (min(weights[n].abs()[masks[n]].min() for n in group)
                > max(weights[n].abs()[~masks[n]].max() for n in group))


@pytest.mark.parametrize("scope", ["layerwise", "global"])
def test_masks_are_monotone_and_pruned_weights_never_return(scope: str) -> None:
    model = make(Tiny)
    plan = pruning_plan(model, PruningConfig(scope=scope, rate=0.3))
    weights = weights_of(model)
    masks = dense_masks(model)
    noise = torch.Generator().manual_seed(3)
    for level in range(1, 7):
        new = prune(weights, masks, plan, level)
        for name in masks:
            assert not (new[name] & ~masks[name]).any(), (level, name)  # never revived
            assert new[name].shape == masks[name].shape and new[name].dtype == torch.bool
        masks = new
        for name in weights:  # pruned positions get the largest magnitudes of all: still pruned
            fresh = weights[name] + torch.randn(weights[name].shape, generator=noise)
            weights[name] = torch.where(masks[name], fresh, torch.full_like(fresh, 1e6))
    assert density(masks) == pytest.approx(0.7 ** 6, abs=0.002)


def test_apply_masks_zeroes_only_pruned_weights() -> None:
    model = make(Tiny)
    before = weights_of(model)
    masks = prune(before, dense_masks(model), pruning_plan(model, PruningConfig()), 2)
    apply_masks(model, masks)
    after = weights_of(model)
    for name, mask in masks.items():
        assert (after[name][~mask] == 0).all()
        assert torch.equal(after[name][mask], before[name][mask])
