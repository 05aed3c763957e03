"""Pruning criteria, structures and pruning at init, each checked against a computation made
here: SNIP against autograd on the same batch, SynFlow's conservation law, filter pruning against
per-filter L1 norms, pruning at init against the initial weights."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lt_core.config import ConfigError, PruningConfig, config_from_dict, deep_merge
from lt_core.controls import CONTROLS, ControlInputs
from lt_core.data import Split, TensorData
from lt_core.imp import ImpRun
from lt_core.masks import apply_masks, dense_masks, density, pruning_plan, select
from lt_core.models import build_model
from lt_core.pruning import CRITERIA, ScoreContext, prune
from lt_core.pruning.base import Criterion
from lt_core.rundir import final_file, init_file, level_dir, load_tensors, mask_file


def lenet(data: TensorData, seed: int = 0):
    torch.manual_seed(seed)
    return build_model("lenet_300_100", data.input_shape, data.num_classes)


def context(model, masks, data, batch_size=50, batches=1, seed=7) -> ScoreContext:
    return ScoreContext(model, masks, data, batch_size, batches, torch.Generator().manual_seed(seed))


def half_masks(model, seed: int = 3) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.rand(mask.shape, generator=generator) < 0.5
            for name, mask in dense_masks(model).items()}


# ---- SNIP -------------------------------------------------------------------------------------
def test_snip_scores_are_gradient_times_weight_on_the_batch(tiny_data: TensorData) -> None:
    model = lenet(tiny_data)
    masks = half_masks(model)
    apply_masks(model, masks)
    reference = copy.deepcopy(model)
    # One batch of the whole training split: the batch the criterion draws is then known.
    scores = CRITERIA["snip"].scores(context(model, masks, tiny_data,
                                             batch_size=len(tiny_data.train)))
    params = dict(reference.named_parameters())
    names = list(masks)
    loss = F.cross_entropy(reference(tiny_data.train.x), tiny_data.train.y)
    grads = dict(zip(names, torch.autograd.grad(loss, [params[n] for n in names])))
    for name in names:
        expected = (grads[name] * params[name]).abs()
        assert torch.allclose(scores[name], expected, rtol=1e-4, atol=1e-9), name
        assert bool((scores[name][~masks[name]] == 0).all())  # pruned weights score nothing
    assert any(bool(scores[n].max() > 0) for n in names)


def test_snip_uses_the_requested_number_of_batches(tiny_data: TensorData) -> None:
    model = lenet(tiny_data)
    masks = dense_masks(model)
    one = CRITERIA["snip"].scores(context(copy.deepcopy(model), masks, tiny_data, batches=1))
    three = CRITERIA["snip"].scores(context(copy.deepcopy(model), masks, tiny_data, batches=3))
    again = CRITERIA["snip"].scores(context(copy.deepcopy(model), masks, tiny_data, batches=3))
    name = "fc1.weight"
    assert not torch.equal(one[name], three[name])
    assert torch.equal(three[name], again[name])  # the batches are drawn from the seed


# ---- SynFlow ----------------------------------------------------------------------------------
@pytest.mark.parametrize("alpha", [3.7, 0.01])
def test_synflow_scores_are_conserved_under_layer_rescaling(tiny_data: TensorData,
                                                            alpha: float) -> None:
    """Tanaka et al.'s conservation: scaling a layer's weights and bias by alpha and the next
    layer's weights by 1/alpha leaves every synaptic saliency unchanged."""
    model = lenet(tiny_data).double()  # scaled exactly (SynFlow scores in double anyway)
    masks = half_masks(model)
    apply_masks(model, masks)
    scaled = copy.deepcopy(model)
    with torch.no_grad():
        scaled.fc1.weight.mul_(alpha)
        scaled.fc1.bias.mul_(alpha)
        scaled.fc2.weight.div_(alpha)
    base = CRITERIA["synflow"].scores(context(model, masks, tiny_data))
    rescaled = CRITERIA["synflow"].scores(context(scaled, masks, tiny_data))
    for name in masks:
        assert torch.allclose(base[name], rescaled[name], rtol=1e-9, atol=0), name
    # Magnitude, by contrast, is not conserved.
    magnitude = CRITERIA["magnitude"].scores(context(scaled, masks, tiny_data))
    assert not torch.allclose(magnitude["fc1.weight"], model.fc1.weight.abs())
    assert not torch.allclose(base["fc1.weight"], 2 * rescaled["fc1.weight"])  # not vacuous


def test_synflow_is_data_free_and_leaves_the_model_alone(tiny_data: TensorData) -> None:
    model = lenet(tiny_data)
    before = copy.deepcopy(model.state_dict())
    other = TensorData(Split(torch.randn_like(tiny_data.train.x), tiny_data.train.y),
                       tiny_data.test, None, 10, tiny_data.input_shape, False, tiny_data.pad_value)
    masks = dense_masks(model)
    a = CRITERIA["synflow"].scores(context(model, masks, tiny_data))
    b = CRITERIA["synflow"].scores(context(model, masks, other, seed=99))
    assert all(torch.equal(a[n], b[n]) for n in masks)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) and after[k].dtype == before[k].dtype
               for k in before)


class Spy(Criterion):
    """Magnitude scores, recording the density of the masks it is asked to score."""

    def __init__(self, rounds: int) -> None:
        self.rounds, self.seen = rounds, []

    def scores(self, context: ScoreContext):
        self.seen.append(density(context.masks))
        return CRITERIA["magnitude"].scores(context)


def test_rounds_follow_an_exponential_schedule(tiny_data: TensorData, monkeypatch) -> None:
    spy = Spy(rounds=4)
    monkeypatch.setitem(CRITERIA, "spy", spy)
    model = lenet(tiny_data)
    plan = pruning_plan(model, PruningConfig(scope="global", rate=0.5))
    masks = prune("spy", context(model, dense_masks(model), tiny_data), plan, 0.0, 2.0)
    # Density 0.25 reached in 4 rounds: 0.25^(r/4) before round r+1.
    assert spy.seen == pytest.approx([1.0, 0.25**0.25, 0.25**0.5, 0.25**0.75], abs=2e-5)
    assert density(masks) == pytest.approx(0.25, abs=2e-5)
    assert CRITERIA["synflow"].rounds == 100 and CRITERIA["magnitude"].rounds == 1


def test_synflow_does_not_collapse_a_layer_that_magnitude_empties(tiny_data: TensorData) -> None:
    """Tanaka et al.'s layer collapse: at 1% density, global magnitude pruning empties the
    smallest-weight layer; iterative SynFlow keeps every layer connected."""
    model = lenet(tiny_data)
    with torch.no_grad():
        model.fc2.weight.mul_(1e-3)  # a layer of tiny weights
    plan = pruning_plan(model, PruningConfig(scope="global", rate=0.9))
    end = math.log(0.01) / math.log(0.1)
    by_magnitude = prune("magnitude", context(copy.deepcopy(model), dense_masks(model),
                                              tiny_data), plan, 0.0, end)
    by_synflow = prune("synflow", context(copy.deepcopy(model), dense_masks(model), tiny_data),
                       plan, 0.0, end)
    assert int(by_magnitude["fc2.weight"].sum()) == 0
    assert all(int(mask.sum()) > 0 for mask in by_synflow.values())
    assert density(by_synflow) == pytest.approx(0.01, abs=1e-5)


# ---- random -----------------------------------------------------------------------------------
def test_random_scores_prune_random_survivors_reproducibly(tiny_data: TensorData) -> None:
    model = lenet(tiny_data)
    plan = pruning_plan(model, PruningConfig(scope="layerwise", rate=0.5))

    def masks_for(seed: int) -> dict:
        return prune("random", context(copy.deepcopy(model), dense_masks(model), tiny_data,
                                       seed=seed), plan, 0.0, 1.0)

    first, again, other = masks_for(1), masks_for(1), masks_for(2)
    for name, mask in first.items():
        assert int(mask.sum()) == round(mask.numel() * 0.5)
        assert torch.equal(mask, again[name])
    assert not torch.equal(first["fc1.weight"], other["fc1.weight"])
    # Unrelated to magnitude: about half the largest weights are gone.
    big = model.fc1.weight.abs() > model.fc1.weight.abs().median()
    assert 0.4 < float(first["fc1.weight"][big].float().mean()) < 0.6


# ---- filters ----------------------------------------------------------------------------------
def conv_model():
    torch.manual_seed(0)
    return build_model("conv2", (3, 8, 8), 10)


@pytest.mark.parametrize("exponent", [1.0, 2.0, 1.5])
def test_filter_pruning_keeps_whole_filters_with_the_largest_l1_norms(exponent: float) -> None:
    model = conv_model()
    plan = pruning_plan(model, PruningConfig(scope="layerwise", rate=0.5, structure="filter"))
    weights = {n: p.detach() for n, p in model.named_parameters()}
    masks = select({n: weights[n].abs() for n in plan.own_rates}, dense_masks(model), plan,
                   exponent)
    for name, mask in masks.items():
        filters = mask.shape[0]
        if name == "fc3.weight":  # the output layer: classes, pruned weight by weight
            assert int(mask.sum()) == round(mask.numel() * 0.5**exponent)
            continue
        rows = mask.reshape(filters, -1)
        alive = rows.all(1)
        assert bool((rows.all(1) | ~rows.any(1)).all()), name  # whole filters only
        assert int(alive.sum()) == round(filters * 0.5**exponent), name
        norms = weights[name].reshape(filters, -1).abs().sum(1)  # Li et al.'s L1 norm
        assert norms[alive].min() > norms[~alive].max(), name


def test_filter_pruning_is_iterative_and_guards_collapse_in_filters() -> None:
    model = conv_model()
    config = PruningConfig(scope="layerwise", rate=0.9, structure="filter",
                           min_layer_density=0.1)
    plan = pruning_plan(model, config)
    weights = {n: p.detach() for n, p in model.named_parameters()}
    masks = dense_masks(model)
    for level in range(1, 4):
        new = select({n: weights[n].abs() for n in plan.own_rates}, masks, plan, level)
        assert all(not bool((new[n] & ~masks[n]).any()) for n in masks)  # never revived
        masks = new
    conv = masks["features.0.weight"].reshape(64, -1).all(1)
    assert int(conv.sum()) == math.ceil(0.1 * 64)  # the floor, in filters


def test_controls_keep_whole_filters(tiny_data: TensorData) -> None:
    model = conv_model()
    plan = pruning_plan(model, PruningConfig(scope="layerwise", rate=0.5, structure="filter"))
    weights = {n: p.detach() for n, p in model.named_parameters()}
    masks = select({n: weights[n].abs() for n in plan.own_rates}, dense_masks(model), plan, 1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    inputs = ControlInputs(state, masks, lambda: state, torch.Generator().manual_seed(0), plan)
    randomised = CONTROLS["random_prune"](inputs).masks
    shuffled = CONTROLS["shuffle"](inputs)
    for name in plan.filters:
        filters = masks[name].shape[0]
        for new in (randomised[name], shuffled.masks[name]):
            rows = new.reshape(filters, -1)
            assert bool((rows.all(1) | ~rows.any(1)).all()), name
            assert int(rows.all(1).sum()) == int(masks[name].reshape(filters, -1).all(1).sum())
        assert not torch.equal(randomised[name], masks[name])
        # A shuffled filter carries a surviving filter's values, whole.
        kept = weights[name].reshape(filters, -1)[masks[name].reshape(filters, -1).all(1)]
        moved = shuffled.state[name].reshape(filters, -1)[
            shuffled.masks[name].reshape(filters, -1).all(1)]
        assert sorted(map(tuple, kept.tolist())) == sorted(map(tuple, moved.tolist()))


# ---- pruning at init, through the engine -----------------------------------------------------
def at_init_config(tiny_config, criterion: str, **pruning):
    return tiny_config(deep_merge({"pruning": {"mode": "at_init", "criterion": criterion,
                                               "rate": 0.5, **pruning},
                                   "imp": {"levels": 2, "controls": ["shuffle"]}}, {}))


def test_at_init_masks_prune_the_initial_weights_and_train_from_init(
        tiny_config, tiny_data: TensorData, tmp_path: Path) -> None:
    config = at_init_config(tiny_config, "magnitude")
    run = ImpRun(config, tmp_path, data=tiny_data)
    rows = run.run()
    init = load_tensors(init_file(tmp_path))
    model = build_model("lenet_300_100", tiny_data.input_shape, tiny_data.num_classes)
    plan = pruning_plan(model, config.pruning)
    for level in (1, 2):
        expected = select({n: init[n].abs() for n in plan.own_rates}, dense_masks(model), plan,
                          level)
        stored = load_tensors(mask_file(level_dir(tmp_path, level)))
        assert all(torch.equal(stored[n], expected[n]) for n in stored), level
        ticket = run._ticket_start(level, 0)
        assert all(torch.equal(ticket[k], init[k]) for k in init)  # trained from init
    # Trained over the whole schedule (from iteration 0), not from a rewind point.
    assert rows[1]["train_samples"] == rows[0]["train_samples"]
    assert rows[2]["controls"]["shuffle"]["density"] == pytest.approx(rows[2]["density"])


@pytest.mark.parametrize("criterion", ["snip", "synflow", "random"])
def test_at_init_to_a_target_density(criterion: str, tiny_config, tiny_data: TensorData,
                                     tmp_path: Path) -> None:
    config = tiny_config({"pruning": {"mode": "at_init", "criterion": criterion,
                                      "target_density": 0.05, "rate": 0.2, "rounds": 10},
                          "imp": {"levels": 1}})
    rows = ImpRun(config, tmp_path, data=tiny_data).run()
    # Hidden layers at 5%; LeNet's output layer at its own 10% per level to the same exponent.
    exponent = math.log(0.05) / math.log(0.8)
    sizes = {"fc1.weight": 784 * 300, "fc2.weight": 300 * 100, "fc3.weight": 100 * 10}
    expected = (round(sizes["fc1.weight"] * 0.8**exponent) + round(sizes["fc2.weight"] * 0.8**exponent)
                + round(sizes["fc3.weight"] * 0.9**exponent)) / sum(sizes.values())
    assert rows[1]["density"] == pytest.approx(expected, abs=1e-9)


def test_a_criterion_registered_in_one_line_is_a_valid_config_value(
        tiny_config, tiny_data: TensorData, tmp_path: Path, monkeypatch) -> None:
    class Smallest(Criterion):
        def scores(self, context: ScoreContext):
            params = dict(context.model.named_parameters())
            return {n: -params[n].detach().abs() for n in context.masks}

    with pytest.raises(ConfigError, match="unknown pruning criterion .smallest."):
        tiny_config({"pruning": {"criterion": "smallest"}})
    monkeypatch.setitem(CRITERIA, "smallest", Smallest())
    config = tiny_config({"pruning": {"criterion": "smallest", "rate": 0.5,
                                      "scope": "layerwise"}})
    run = ImpRun(config, tmp_path, data=tiny_data)
    run.run()
    final = load_tensors(final_file(level_dir(tmp_path, 0)))
    mask = load_tensors(mask_file(level_dir(tmp_path, 1)))["fc1.weight"]
    weights = final["fc1.weight"].abs()
    assert weights[mask].max() < weights[~mask].min()  # the smallest weights were kept


def test_config_round_trips_the_new_fields(tiny_config) -> None:
    config = tiny_config({"pruning": {"criterion": "snip", "structure": "filter",
                                      "scope": "layerwise", "score_batches": 3,
                                      "mode": "at_init"}})
    again = config_from_dict(config.model_dump(mode="json"))
    assert again == config and again.pruning.criterion == "snip"


@pytest.mark.parametrize("mode", ["iterative", "one_shot", "at_init"])
@pytest.mark.parametrize("structure, scope", [("unstructured", "layerwise"),
                                              ("unstructured", "global"),
                                              ("filter", "layerwise")])
@pytest.mark.parametrize("criterion", ["magnitude", "random", "snip", "synflow"])
def test_every_criterion_structure_scope_and_mode_through_the_engine(
        criterion: str, structure: str, scope: str, mode: str, tiny_config,
        tiny_data: TensorData, tmp_path: Path) -> None:
    """Each combination prunes to the planned counts (LeNet's output layer on its own at 10% per
    level, a collapse guard; in global scope one budget for the hidden layers), in whole filters
    where asked, with controls of the same shape."""
    config = tiny_config({"pruning": {"criterion": criterion, "structure": structure,
                                      "mode": mode, "scope": scope, "rate": 0.6,
                                      "min_layer_density": 0.1, "rounds": 3},
                          "imp": {"levels": 3, "controls": ["reinit", "random_prune",
                                                            "shuffle"]},
                          "train": {"length": "20it", "eval_every": "20it"}})
    run = ImpRun(config, tmp_path, data=tiny_data)
    rows = run.run()
    previous = None
    for level in (1, 2, 3):
        masks = load_tensors(mask_file(level_dir(tmp_path, level)))
        shared = 0
        for name, mask in masks.items():
            output = name == "fc3.weight"
            units = mask.reshape(mask.shape[0], -1) if structure == "filter" and not output \
                else mask.reshape(-1, 1)
            assert bool((units.all(1) | ~units.any(1)).all()), (name, level)
            floor = math.ceil(0.1 * units.shape[0])
            kept = int(units.all(1).sum())
            assert kept >= floor, (name, level)
            if scope == "global" and not output:
                shared += kept
                continue
            rate = 0.1 if output else 0.6
            assert kept == max(round(units.shape[0] * (1 - rate) ** level), floor), (name, level)
            if mode == "iterative" and previous is not None:
                assert not bool((mask & ~previous[name]).any())  # pruned stays pruned
        if scope == "global":
            # One budget for fc1 and fc2; once it is below their floors (level 3 here), the
            # guard holds both at their floors.
            floors = math.ceil(0.1 * 784 * 300) + math.ceil(0.1 * 300 * 100)
            assert shared == max(round((784 * 300 + 300 * 100) * 0.4**level), floors), level
        previous = masks
        for control in ("reinit", "random_prune", "shuffle"):
            assert rows[level]["controls"][control]["density"] == \
                pytest.approx(rows[level]["density"])
    assert all(math.isfinite(row["test_acc"]) for row in rows)
