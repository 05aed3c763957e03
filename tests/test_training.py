"""The training loop and the IMP engine on real (tiny) MNIST: pruned weights and optimizer state
stay exactly zero, rewinding/retraining start where they should, LR schedules, step notation,
resumption, seeding and CIFAR-style augmentation."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from lt_core.batches import PAD, augment_batch, epoch_plan
from lt_core.config import DataConfig, PruningConfig, TrainConfig
from lt_core.data import TensorData, load_dataset
from lt_core.imp import ImpRun
from lt_core.lr_schedule import lr_schedule
from lt_core.masks import apply_masks, dense_masks, pruning_plan, select
from lt_core.models import build_model
from lt_core.rundir import (final_file, init_file, level_dir, mask_file, metrics_file,
                            network_files, read_json, rewind_file)
from lt_core.steps import Step
from lt_core.training import steps_per_epoch, total_iterations, train


def prune(weights: dict, masks: dict, plan, exponent: float) -> dict:
    """Magnitude pruning: keep the largest |w| (the selection under the engine's criterion)."""
    return select({name: weights[name].abs() for name in masks}, masks, plan, exponent)


def load_pt(path: Path):
    return torch.load(path, map_location="cpu", weights_only=True)


def lenet(data: TensorData, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("lenet_300_100", data.input_shape, data.num_classes)


def assert_states_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ---- pruned weights stay exactly zero -------------------------------------------------------
OPTIMIZERS = {
    "sgd_nesterov_wd": (dict(optimizer="sgd", lr=0.05, momentum=0.9, nesterov=True,
                             weight_decay=5e-4), ("momentum_buffer",)),
    "adam_wd": (dict(optimizer="adam", lr=1e-3, weight_decay=5e-4), ("exp_avg", "exp_avg_sq")),
}


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
def test_pruned_weights_and_optimizer_state_stay_zero(kind: str, tiny_data: TensorData,
                                                      tmp_path: Path) -> None:
    settings, state_keys = OPTIMIZERS[kind]
    config = TrainConfig(batch_size=60, length="30it", eval_every="10it", **settings)
    model = lenet(tiny_data)
    masks = prune({n: p.detach() for n, p in model.named_parameters()}, dense_masks(model),
                  pruning_plan(model, PruningConfig(scope="layerwise", rate=0.5)), 1)
    apply_masks(model, masks)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    checkpoint = tmp_path / "checkpoint.pt"
    train(model, masks, tiny_data, config, seed=0, start=0, end=30,
          lr_at=lr_schedule(config, steps_per_epoch(tiny_data, config)), checkpoint=checkpoint)

    params = dict(model.named_parameters())
    for name, mask in masks.items():
        assert (params[name][~mask] == 0).all(), name
        assert not torch.equal(params[name][mask], start[name][mask]), name  # it did train

    # The checkpoint of the last evaluation before the end (iteration 20) holds the optimizer.
    saved = load_pt(checkpoint)
    assert saved["iteration"] == 20
    state = saved["optimizer"]["state"]
    index = {name: i for i, (name, _) in enumerate(model.named_parameters())}
    for name, mask in masks.items():
        for key in state_keys:
            buffer = state[index[name]][key]
            assert (buffer[~mask] == 0).all(), (name, key)
            assert (buffer[mask] != 0).any(), (name, key)  # the state is really populated
        assert (saved["model"][name][~mask] == 0).all()


def test_resume_from_checkpoint_matches_uninterrupted(tiny_data: TensorData,
                                                      tmp_path: Path) -> None:
    """A run killed after its iteration-30 checkpoint and resumed gives bit-identical weights."""
    config = TrainConfig(optimizer="sgd", lr=0.05, momentum=0.9, batch_size=60, length="50it",
                         eval_every="15it", schedule="cosine")
    schedule = lr_schedule(config, steps_per_epoch(tiny_data, config))
    model = lenet(tiny_data)
    masks = dense_masks(model)
    checkpoint = tmp_path / "checkpoint.pt"
    full = train(model, masks, tiny_data, config, seed=3, start=0, end=50, lr_at=schedule,
                 checkpoint=checkpoint)
    assert load_pt(checkpoint)["iteration"] == 45  # left behind by the last mid-run evaluation

    resumed_model = lenet(tiny_data, seed=99)  # different weights: must be replaced on resume
    resumed = train(resumed_model, masks, tiny_data, config, seed=3, start=0, end=50,
                    lr_at=schedule, checkpoint=checkpoint)
    assert_states_equal(model.state_dict(), resumed_model.state_dict())
    assert [r["iteration"] for r in resumed.history] == [15, 30, 45, 50]
    assert resumed.history == full.history



def test_early_stop_is_the_evaluation_of_minimum_validation_loss(npz_path: Path) -> None:
    """early_stop_iter and early_stop_acc come from the evaluation with the lowest val_loss (not
    the lowest test loss), and early_stop_acc is the test accuracy there."""
    data = load_dataset(DataConfig(name="npz", path=str(npz_path), train_split="train[:1500]",
                                   test_split="test[:300]", val_size=300), "cpu")
    config = TrainConfig(optimizer="adam", lr=3e-3, batch_size=60, length="300it",
                         eval_every="20it")
    model = lenet(data)
    outcome = train(model, dense_masks(model), data, config, seed=0, start=0, end=300,
                    lr_at=lambda _: 3e-3)
    history = outcome.history
    assert all("val_loss" in record for record in history)
    best_val = min(history, key=lambda r: r["val_loss"])
    assert outcome.early_stop_iter == best_val["iteration"]
    assert outcome.early_stop_acc == best_val["test_acc"]
    assert outcome.test_acc == history[-1]["test_acc"]
    # In this run the two losses have their minima at different evaluations (iterations 80 and
    # 160, each lower than the runner-up by more than 5%), so the key matters.
    assert min(history, key=lambda r: r["test_loss"]) is not best_val

# ---- rewinding and retraining ---------------------------------------------------------------
@pytest.mark.parametrize("retrain", ["rewind", "lr_rewind", "finetune"])
def test_level_one_starts_from_the_right_weights(retrain: str, tiny_config, tiny_data: TensorData,
                                                 tmp_path: Path) -> None:
    config = tiny_config({"train": {"schedule": "cosine"},
                          "imp": {"levels": 1, "rewind": "20it", "retrain": retrain}})
    out = tmp_path / "run"
    run = ImpRun(config, out, data=tiny_data)
    run.run()
    assert run.finished_levels() == [0, 1]
    spe = steps_per_epoch(tiny_data, config.train)
    schedule = lr_schedule(config.train, spe)
    end = total_iterations(tiny_data, config.train)
    assert (spe, end) == (20, 40)

    init, rewind = load_pt(init_file(out)), load_pt(rewind_file(out))
    final0 = load_pt(final_file(level_dir(out, 0)))
    mask = load_pt(mask_file(level_dir(out, 1)))

    # rewind.pt is the level-0 network after exactly 20 iterations from init.pt.
    assert any(not torch.equal(init[k], rewind[k]) for k in init)
    replay = lenet(tiny_data)
    replay.load_state_dict(init)
    train(replay, dense_masks(replay), tiny_data, config.train, seed=config.seed, start=0, end=20,
          lr_at=schedule)
    assert_states_equal(replay.state_dict(), rewind)

    # The level-1 mask prunes level 0's *final* weights (not init, not rewind).
    plan = pruning_plan(replay, config.pruning)
    assert_states_equal(mask, prune(final0, dense_masks(replay), plan, 1))

    expected_start = rewind if retrain == "rewind" else final0
    assert_states_equal(run._ticket_start(1), expected_start)

    # Starting values on the surviving positions, zero elsewhere.
    ticket = build_model("lenet_300_100", tiny_data.input_shape, tiny_data.num_classes)
    ticket.load_state_dict(run._ticket_start(1))
    apply_masks(ticket, mask)
    params = dict(ticket.named_parameters())
    for name, m in mask.items():
        assert torch.equal(params[name][m], expected_start[name][m])
        assert (params[name][~m] == 0).all()

    # Level 1 trained iterations 20..40 from there, with the schedule of its mode.
    if retrain == "finetune":
        final_lr = schedule(end - 1)
        assert final_lr < schedule(20)  # cosine: the final LR really is different
        lr_at = lambda _it: final_lr  # noqa: E731
    else:
        lr_at = schedule
    train(ticket, mask, tiny_data, config.train, seed=config.seed, start=20, end=40, lr_at=lr_at)
    assert_states_equal(ticket.state_dict(), load_pt(final_file(level_dir(out, 1))))


# ---- LR schedules ---------------------------------------------------------------------------
def test_multistep_schedule() -> None:
    config = TrainConfig(lr=0.1, length="5ep", schedule="multistep", milestones=["3ep", "20it"],
                         gamma=0.1)
    lr_at = lr_schedule(config, steps_per_epoch=10)  # milestones at iterations 30 and 20
    assert lr_at(0) == pytest.approx(0.1)
    assert lr_at(19) == pytest.approx(0.1)
    assert lr_at(20) == pytest.approx(0.01)
    assert lr_at(29) == pytest.approx(0.01)
    assert lr_at(30) == pytest.approx(0.001)
    assert lr_at(49) == pytest.approx(0.001)


def test_cosine_schedule() -> None:
    config = TrainConfig(lr=0.2, length="2ep", schedule="cosine")
    lr_at = lr_schedule(config, steps_per_epoch=50)  # 100 iterations
    assert lr_at(0) == pytest.approx(0.2)
    assert lr_at(25) == pytest.approx(0.1 * (1 + math.cos(math.pi / 4)))
    assert lr_at(50) == pytest.approx(0.1)
    assert lr_at(99) == pytest.approx(0.1 * (1 + math.cos(math.pi * 0.99)))
    assert lr_at(100) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(150) == pytest.approx(0.0, abs=1e-12)


def test_constant_schedule_with_linear_warmup() -> None:
    config = TrainConfig(lr=0.1, length="100it", warmup="10it")
    lr_at = lr_schedule(config, steps_per_epoch=7)
    assert lr_at(0) == pytest.approx(0.01)
    assert lr_at(4) == pytest.approx(0.05)
    assert lr_at(9) == pytest.approx(0.1)
    assert lr_at(10) == pytest.approx(0.1)
    assert lr_at(99) == pytest.approx(0.1)


def test_warmup_multiplies_the_multistep_schedule() -> None:
    config = TrainConfig(lr=0.1, length="3ep", warmup="1ep", schedule="multistep",
                         milestones=["5it"], gamma=0.5)
    lr_at = lr_schedule(config, steps_per_epoch=10)
    assert lr_at(2) == pytest.approx(0.1 * 3 / 10)
    assert lr_at(7) == pytest.approx(0.05 * 8 / 10)
    assert lr_at(10) == pytest.approx(0.05)


# ---- step notation --------------------------------------------------------------------------
@pytest.mark.parametrize("text, step, iterations", [
    ("40ep", Step(40, 0), 40 * 391),
    ("500it", Step(0, 500), 500),
    ("2ep100it", Step(2, 100), 2 * 391 + 100),
    (" 3ep ", Step(3, 0), 3 * 391),
    ("0it", Step(0, 0), 0),
    (7, Step(0, 7), 7),
])
def test_step_parse(text, step: Step, iterations: int) -> None:
    parsed = Step.parse(text)
    assert parsed == step
    assert parsed.iterations(391) == iterations
    if isinstance(text, str) and text.strip() != "0it":
        assert str(parsed) == text.strip()


@pytest.mark.parametrize("text", ["", "   ", "40", "ep", "it", "5 epochs", "100it2ep", "2ep 3it",
                                  "-5it", "1.5ep", "40EP", -1, True])
def test_step_parse_rejects(text) -> None:
    with pytest.raises(ValueError):
        Step.parse(text)


# ---- seeding --------------------------------------------------------------------------------
def _strip_seconds(value):
    if isinstance(value, dict):
        return {k: _strip_seconds(v) for k, v in value.items() if k != "train_seconds"}
    return value


def test_same_seed_same_run_different_seed_different_run(tiny_config, tiny_data: TensorData,
                                                         tmp_path: Path) -> None:
    changes = {"imp": {"levels": 2, "controls": ["reinit", "random_prune", "shuffle"]}}
    runs = {}
    for label, seed in (("a", 5), ("b", 5), ("c", 6)):
        config = tiny_config({**changes, "seed": seed})
        ImpRun(config, tmp_path / label, data=tiny_data).run()
        runs[label] = [_strip_seconds(read_json(metrics_file(level_dir(tmp_path / label, lv))))
                       for lv in range(3)]
    assert runs["a"] == runs["b"]
    assert set(runs["a"][2]["controls"]) == {"reinit", "random_prune", "shuffle"}
    for lv in range(3):
        a, b = level_dir(tmp_path / "a", lv), level_dir(tmp_path / "b", lv)
        assert_states_equal(load_pt(mask_file(a)), load_pt(mask_file(b)))
        assert_states_equal(load_pt(final_file(a)), load_pt(final_file(b)))
        for control in ("reinit", "random_prune", "shuffle") if lv else ():
            assert_states_equal(load_pt(network_files(a, control).final),
                                load_pt(network_files(b, control).final))
    assert runs["a"][0]["test_loss"] != runs["c"][0]["test_loss"]
    assert runs["a"][2]["controls"] != runs["c"][2]["controls"]
    init_a, init_c = load_pt(init_file(tmp_path / "a")), load_pt(init_file(tmp_path / "c"))
    assert not torch.equal(init_a["fc1.weight"], init_c["fc1.weight"])


# ---- augmentation ---------------------------------------------------------------------------
def reference_augment(image: torch.Tensor, crop: tuple[int, int], flip: bool,
                      pad_value: torch.Tensor) -> torch.Tensor:
    """One sample, by plain slicing: pad by PAD with the per-channel pad value, crop, flip."""
    c, h, w = image.shape
    padded = torch.empty(c, h + 2 * PAD, w + 2 * PAD)
    for channel in range(c):
        padded[channel] = pad_value[channel]
    padded[:, PAD:PAD + h, PAD:PAD + w] = image
    out = padded[:, crop[0]:crop[0] + h, crop[1]:crop[1] + w]
    return out.flip(-1) if flip else out


def test_augment_batch_matches_per_sample_reference() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(12, 3, 9, 7, generator=generator)  # non-square, to catch row/column mix-ups
    pad_value = torch.tensor([-1.5, 0.25, 2.0])
    crops = torch.tensor([[0, 0], [8, 8], [0, 8], [8, 0], [4, 4], [1, 7],
                          [3, 2], [8, 5], [2, 0], [5, 6], [7, 3], [6, 1]])
    flips = torch.tensor([False, True, False, True, False, True,
                          True, False, True, False, True, True])
    out = augment_batch(x, crops, flips, pad_value)
    assert out.shape == x.shape
    for i in range(len(x)):
        expected = reference_augment(x[i], (int(crops[i, 0]), int(crops[i, 1])), bool(flips[i]),
                                     pad_value)
        assert torch.equal(out[i], expected), i
    # Centre crop without flip is the identity.
    assert torch.equal(out[4], x[4])


def test_epoch_plan_depends_only_on_seed_and_epoch() -> None:
    a = epoch_plan(100, seed=1, epoch=3, augment=True, device=torch.device("cpu"))
    b = epoch_plan(100, seed=1, epoch=3, augment=True, device=torch.device("cpu"))
    c = epoch_plan(100, seed=1, epoch=4, augment=True, device=torch.device("cpu"))
    assert torch.equal(a.order, b.order) and torch.equal(a.crops, b.crops)
    assert torch.equal(a.flips, b.flips)
    assert not torch.equal(a.order, c.order)
    assert sorted(a.order.tolist()) == list(range(100))
    assert int(a.crops.min()) >= 0 and int(a.crops.max()) <= 2 * PAD
