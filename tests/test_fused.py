"""Fused training (lt_core.fused, lt_core.group_training) against training each network alone.

Tolerance: fused and separate training do the same arithmetic in a different order (one grouped
convolution or batched matmul instead of K), so they agree up to floating-point reassociation.
In float64 every model's weights and BatchNorm statistics agree to 1e-9 after 12 steps (measured:
at most 1e-12). In float32 the reassociated last bits grow over a run (Adam rescales tiny
gradients, ReLUs flip at zero): accuracies agree to within one test image."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

from lt_core.config import TrainConfig
from lt_core.data import Split, TensorData
from lt_core.fused import fuse_models, network_state, unfusable
from lt_core.group_training import TrainTask, fuse_chosen, train_tasks
from lt_core.imp import ImpRun
from lt_core.masks import apply_masks, dense_masks
from lt_core.metrics import STATUS_DIVERGED
from lt_core.models import MODELS, build_model
from lt_core.rundir import load_tensors, point_dirs

TOLERANCE = 1e-9  # float64
STEPS = 12
# float32 on real data: the last bits differ, Adam and ReLU boundaries amplify that over a run
# (a dense LeNet-300-100, Adam, 40 steps: weights up to 1e-2 apart, 1e-14 in float64), so an
# accuracy may move by one test image of the tiny split's 200.
ONE_IMAGE = 1 / 200 + 1e-9


def generated_data(shape: tuple[int, int, int], augment: bool, n: int = 96) -> TensorData:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, *shape, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 10, (n,), generator=generator)
    test, val = n * 5 // 12, n * 5 // 24
    return TensorData(Split(x, y), Split(x[:test], y[:test]), Split(x[test:test + val],
                      y[test:test + val]), 10, shape, augment,
                      torch.zeros(shape[0], dtype=torch.float64))


def tasks_for(name: str, shape, seeds: list[int], lrs: list[float] | None = None,
              checkpoints: list[Path] | None = None, steps: int = STEPS) -> list[TrainTask]:
    tasks = []
    for index, seed in enumerate(seeds):
        torch.manual_seed(100 + index)
        model = build_model(name, shape, 10).to(torch.float64)
        generator = torch.Generator().manual_seed(200 + index)
        masks = {key: torch.rand(mask.shape, generator=generator) < 0.6
                 for key, mask in dense_masks(model).items()}
        apply_masks(model, masks)
        rate = 0.02 if lrs is None else lrs[index]
        tasks.append(TrainTask(model, masks, seed, 0, steps, lambda i, r=rate: r * (1 - i / 20),
                               None if checkpoints is None else checkpoints[index]))
    return tasks


def assert_same_networks(alone: list[TrainTask], fused: list[TrainTask], outcomes_a,
                         outcomes_b, tolerance: float = TOLERANCE) -> None:
    for a, b, oa, ob in zip(alone, fused, outcomes_a, outcomes_b):
        sa, sb = a.model.state_dict(), b.model.state_dict()
        assert sa.keys() == sb.keys()
        for key in sa:
            assert torch.allclose(sa[key].double(), sb[key].double(), rtol=tolerance,
                                  atol=tolerance, equal_nan=True), key  # NaN: a diverged one
        for key, mask in b.masks.items():  # (a diverged network's NaN gradients: NaN * 0)
            assert ob.status == STATUS_DIVERGED or (sb[key][~mask] == 0).all(), \
                f"{key}: a pruned weight moved"
        assert oa.test_acc == ob.test_acc and oa.status == ob.status
        assert [r["iteration"] for r in oa.history] == [r["iteration"] for r in ob.history]
        for ra, rb in zip(oa.history, ob.history):
            assert ra["val_acc"] == rb["val_acc"]
            if ra["train_loss"] is None:  # the diverged step
                assert rb["train_loss"] is None
            else:
                assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-9)


CONFIGS = {
    "sgd_momentum_wd": dict(optimizer="sgd", lr=0.02, momentum=0.9, weight_decay=1e-3),
    "adam_wd": dict(optimizer="adam", lr=1e-3, weight_decay=1e-3),
}


# Small inputs keep float64 convolutions fast (VGG's five poolings need 32x32).
SHAPES = {"lenet_300_100": (1, 28, 28), "vgg16": (3, 32, 32), "vgg19": (3, 32, 32)}
HEAVY = ("vgg16", "vgg19", "resnet18", "resnet56")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_trains_fused_as_alone(name: str) -> None:
    """Every model of the zoo, masked; BatchNorm ones included (statistics compared too). The
    networks share a data order (ticket and controls) in one case and have their own in the
    other; SGD with momentum and weight decay, and Adam with weight decay (the four big models:
    the SGD case, on fewer and smaller batches)."""
    shape = SHAPES.get(name, (3, 16, 16))
    heavy = name in HEAVY
    steps, size = (3, 2) if heavy else (STEPS, 8)
    data = generated_data(shape, augment=shape[0] == 3, n=12 if heavy else 96)
    cases = (("sgd_momentum_wd", [0, 0, 1]), ("adam_wd", [2, 3]))
    for kind, seeds in cases[:1] if heavy else cases:
        config = TrainConfig(**CONFIGS[kind], batch_size=size, length=f"{steps}it",
                             eval_every=f"{steps // 2 + 1}it")
        alone = tasks_for(name, shape, seeds, steps=steps)
        fused = tasks_for(name, shape, seeds, steps=steps)
        outcomes_a = train_tasks(alone, data, config, fuse=False)
        outcomes_b = train_tasks(fused, data, config, fuse=True)
        assert_same_networks(alone, fused, outcomes_a, outcomes_b)


def test_own_learning_rate_per_network() -> None:
    shape = (1, 28, 28)
    data = generated_data(shape, augment=False)
    config = TrainConfig(**CONFIGS["sgd_momentum_wd"], batch_size=8, length=f"{STEPS}it",
                         eval_every="6it")
    lrs = [0.05, 0.01, 0.002]
    alone, fused = tasks_for("lenet_300_100", shape, [0] * 3, lrs), \
        tasks_for("lenet_300_100", shape, [0] * 3, lrs)
    outcomes_a = train_tasks(alone, data, config, fuse=False)
    outcomes_b = train_tasks(fused, data, config, fuse=True)
    assert_same_networks(alone, fused, outcomes_a, outcomes_b)
    finals = [t.model.fc1.weight for t in fused]
    assert not torch.allclose(finals[0], finals[1])  # the rates did differ


@pytest.mark.parametrize("name,shape", [("lenet_300_100", (1, 28, 28)),
                                        ("resnet20", (3, 16, 16))])
def test_a_diverging_network_leaves_the_group_and_the_others_go_on(name, shape) -> None:
    """The others' weights, BatchNorm statistics (not moved twice by the step that diverged)
    and records are those of training alone."""
    data = generated_data(shape, augment=False)
    config = TrainConfig(optimizer="sgd", lr=0.02, batch_size=8, length=f"{STEPS}it",
                         eval_every="4it")
    # The middle network trains 4 steps, then its rate turns infinite: its weights are NaN after
    # step 5 whatever the order of the arithmetic (a huge finite rate overflows at a step that
    # depends on rounding, which differs between fused and alone and between torch builds).
    alone, fused = tasks_for(name, shape, [0, 0, 1]), tasks_for(name, shape, [0, 0, 1])
    for tasks in (alone, fused):
        tasks[1].lr_at = lambda i: 0.02 if i < 4 else math.inf
    outcomes_a = train_tasks(alone, data, config, fuse=False)
    outcomes_b = train_tasks(fused, data, config, fuse=True)
    assert outcomes_a[1].status == STATUS_DIVERGED
    assert outcomes_b[1].train_samples == outcomes_a[1].train_samples < STEPS * 8
    assert_same_networks(alone, fused, outcomes_a, outcomes_b)


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("lose_one", [False, True])
def test_a_fused_group_resumes_from_its_checkpoints(tmp_path: Path, lose_one: bool) -> None:
    """Killed after a mid-level evaluation, the group resumes from its checkpoints to the result
    of an uninterrupted run (exactly: same arithmetic). With one network's checkpoint lost, that
    network restarts and catches up alone, then rejoins."""
    shape = (3, 16, 16)
    data = generated_data(shape, augment=True)
    config = TrainConfig(**CONFIGS["adam_wd"], batch_size=8, length=f"{STEPS}it",
                         eval_every="4it")
    reference = tasks_for("resnet20", shape, [0, 0, 5])
    expected = train_tasks(reference, data, config)
    checkpoints = [tmp_path / f"checkpoint_{index}.pt" for index in range(3)]
    first = tasks_for("resnet20", shape, [0, 0, 5], checkpoints=checkpoints)
    calls = []

    def stop_at_eight(record: dict) -> None:
        calls.append(record["iteration"])
        if record["iteration"] == 8:
            raise Interrupted

    first[2].on_eval = stop_at_eight
    with pytest.raises(Interrupted):
        train_tasks(first, data, config)
    assert all(load_tensors(path)["iteration"] == 8 for path in checkpoints)
    if lose_one:
        checkpoints[1].unlink()
    resumed = tasks_for("resnet20", shape, [0, 0, 5], checkpoints=checkpoints)
    outcomes = train_tasks(resumed, data, config)
    tolerance = TOLERANCE if lose_one else 0.0
    assert_same_networks(reference, resumed, expected, outcomes, tolerance)


def test_fused_state_round_trip_and_unfusable_models() -> None:
    models = [build_model("resnet20", (3, 32, 32), 10) for _ in range(3)]
    fused = fuse_models(models)
    for index, model in enumerate(models):
        state = network_state(fused, index)
        assert state.keys() == model.state_dict().keys()
        assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    grouped = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, groups=2))
    assert unfusable(grouped) == "layer 0 is a grouped convolution"
    cumulative = torch.nn.Sequential(torch.nn.BatchNorm2d(4, momentum=None))
    assert "momentum None" in unfusable(cumulative)

    odd = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    assert unfusable(odd) == "layer 1 (LayerNorm) has no fused form"
    with pytest.raises(ValueError, match="cannot fuse Sequential: layer 1 "):
        fuse_models([odd, copy.deepcopy(odd)])
    assert not fuse_chosen("auto", odd, torch.device("cpu"))


def test_auto_fuses_where_it_pays() -> None:
    lenet = build_model("lenet_300_100", (1, 28, 28), 10)
    conv = build_model("conv2", (3, 32, 32), 10)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert fuse_chosen("auto", lenet, cpu) and not fuse_chosen("off", lenet, cpu)
    assert not fuse_chosen("auto", conv, cpu) and fuse_chosen("auto", conv, cuda)
    assert not fuse_chosen("off", conv, cuda)


def _metrics_table(out: Path) -> list[dict]:
    from lt_core.levels import LevelRecord
    from lt_core.rundir import metrics_file, read_json

    return [LevelRecord.from_metrics(read_json(metrics_file(folder))).flat()
            for _, _, folder in point_dirs(out)]


def test_an_imp_run_fused_gives_the_table_of_one_trained_network_at_a_time(
        tiny_config, tiny_data: TensorData, tmp_path: Path) -> None:
    """Ticket, three controls and the instability copies of two of them, two pruned levels:
    the same accuracies, and losses within float32 reassociation."""
    changes = {"train": {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9},
               "imp": {"levels": 2, "controls": ["reinit", "random_prune", "shuffle"],
                       "analyses": ["instability"], "analyses_on": ["ticket", "reinit"]},
               "instability": {"points": 5, "train_examples": 200}}
    tables = {}
    for fuse in ("off", "auto"):
        config = tiny_config({**changes, "train": {**changes["train"], "fuse": fuse}})
        run = ImpRun(config, tmp_path / fuse, data=tiny_data)
        assert run.fuses() == (fuse == "auto")
        run.run()
        tables[fuse] = _metrics_table(tmp_path / fuse)
    assert len(tables["off"]) == 3
    for off, auto in zip(tables["off"], tables["auto"]):
        assert off.keys() == auto.keys()
        for key, value in off.items():
            if "seconds" in key:
                continue
            if key in ("level", "density", "sparsity"):
                assert auto[key] == value, key
            elif "acc" in key:
                assert auto[key] == pytest.approx(value, abs=ONE_IMAGE), key
            elif isinstance(value, float):
                assert auto[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


def test_a_fused_point_trains_only_what_is_unfinished(tiny_config, tiny_data: TensorData,
                                                      tmp_path: Path) -> None:
    config = tiny_config({"imp": {"levels": 1, "controls": ["reinit", "shuffle"]}})
    run = ImpRun(config, tmp_path, data=tiny_data)
    run.run_level(0)
    assert [t.model is not None for t in run.point_tasks(1)] == [True, True, True]
    run.run_level(1)
    assert run.point_tasks(1) == []


def test_the_seeds_of_a_configuration_train_together_as_each_alone(
        tiny_config, tiny_data: TensorData, tmp_path: Path) -> None:
    """``train_together``: two seeds, ticket and a control each, their levels fused into one
    group of four networks; each seed's table is the one it has trained alone."""
    from lt_core.imp import train_together

    changes = {"imp": {"levels": 2, "controls": ["reinit"]}, "pruning": {"rate": 0.5}}
    alone = {}
    for seed in (0, 1):
        config = tiny_config({**changes, "seed": seed, "train": {"fuse": "off"}})
        ImpRun(config, tmp_path / f"alone{seed}", data=tiny_data).run()
        alone[seed] = _metrics_table(tmp_path / f"alone{seed}")
    runs = [ImpRun(tiny_config({**changes, "seed": seed}), tmp_path / f"together{seed}",
                   data=tiny_data) for seed in (0, 1)]
    order = [(runs.index(run), metrics["level"]) for run, metrics in train_together(runs)]
    assert order == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)]
    for seed in (0, 1):
        table = _metrics_table(tmp_path / f"together{seed}")
        assert len(table) == 3
        for off, auto in zip(alone[seed], table):
            for key, value in off.items():
                if "acc" in key:
                    assert auto[key] == pytest.approx(value, abs=ONE_IMAGE), (seed, key)
    assert alone[0] != alone[1]

    # A run that keep_going stops leaves the group; the other goes on.
    runs = [ImpRun(tiny_config({**changes, "seed": seed}), tmp_path / f"stop{seed}",
                   data=tiny_data) for seed in (0, 1)]
    order = [(runs.index(run), metrics["level"]) for run, metrics in
             train_together(runs, lambda run, metrics: run is runs[1] or metrics["level"] < 1)]
    assert order == [(0, 0), (1, 0), (0, 1), (1, 1), (1, 2)]


def test_a_run_continued_from_its_resume_kit_retrains_nothing_finished(
        tiny_config, tiny_data: TensorData, tmp_path: Path) -> None:
    """A node that gets only a finished level's metrics.json (a resume kit) trains no network
    of it again: the group at each level holds only what is unfinished."""
    from lt_core.imp import train_together
    from lt_core.rundir import final_file, level_dir, network_files

    config = tiny_config({"imp": {"levels": 2, "controls": ["reinit"]}})
    run = ImpRun(config, tmp_path, data=tiny_data)
    run.run_level(0), run.run_level(1)
    for level in (0, 1):  # what a kit does not carry of a finished level
        network_files(level_dir(tmp_path, level), "ticket").result.unlink()
        network_files(level_dir(tmp_path, level), "reinit").result.unlink(missing_ok=True)
    final_1 = final_file(level_dir(tmp_path, 1)).stat().st_mtime_ns
    continued = ImpRun(config, tmp_path, data=tiny_data)
    assert continued.point_tasks(0) == [] and continued.point_tasks(1) == []
    rows = [metrics for _, metrics in train_together([continued])]
    assert [row["level"] for row in rows] == [0, 1, 2]
    assert final_file(level_dir(tmp_path, 1)).stat().st_mtime_ns == final_1


def test_fuse_off_reads_from_yaml(tiny_config) -> None:
    import yaml

    assert tiny_config(yaml.safe_load("train: {fuse: off}")).train.fuse == "off"
    assert tiny_config(yaml.safe_load("train: {fuse: auto}")).train.fuse == "auto"
