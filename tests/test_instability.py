"""The instability analysis (linear mode connectivity): the path between two networks, its error
barrier, BatchNorm statistics on the path, and a run that is interrupted inside the analysis."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import lt_core.group_training as group_training
import lt_core.rundir as rundir
from lt_core.analyses.instability import (barrier, error_curve, interpolate,
                                          recompute_batchnorm)
from lt_core.config import config_from_dict
from lt_core.data import Split
from lt_core.imp import ImpRun
from lt_core.masks import apply_masks, dense_masks
from lt_core.metrics import COPY_TEST_ACC, INSTABILITY, INSTABILITY_TRAIN
from lt_core.models import build_model
from lt_core.rundir import (analysis_dir, copy_files, curve_file, level_dir, read_json)


def random_lenet(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("lenet_300_100", (1, 28, 28), 10)


def test_the_ends_of_the_path_are_the_two_networks_exactly() -> None:
    a, b, into = random_lenet(0), random_lenet(1), random_lenet(2)
    for alpha, expected in ((0.0, a), (1.0, b)):
        state = interpolate(a, b, alpha, into).state_dict()
        for name, value in expected.state_dict().items():
            assert torch.equal(state[name], value), (alpha, name)
    middle = interpolate(a, b, 0.5, into).state_dict()["fc1.weight"]
    assert torch.allclose(middle, (a.fc1.weight + b.fc1.weight) / 2)


def test_pruned_weights_stay_zero_on_the_whole_path() -> None:
    a, b, into = random_lenet(0), random_lenet(1), random_lenet(2)
    generator = torch.Generator().manual_seed(0)
    masks = {name: torch.rand(mask.shape, generator=generator) < 0.3
             for name, mask in dense_masks(a).items()}
    apply_masks(a, masks)
    apply_masks(b, masks)
    for alpha in np.linspace(0, 1, 13):
        state = interpolate(a, b, float(alpha), into).state_dict()
        for name, mask in masks.items():
            assert not state[name][~mask].any(), (alpha, name)
            assert state[name][mask].any()


def two_unit_pair() -> tuple[nn.Module, nn.Module, Split]:
    """f(x) = W2 relu(W1 x) on inputs (1,0) -> class 0 and (0,1) -> class 1. Network b is a with
    its two hidden units swapped: the same function, so both ends classify everything right, but
    at the midpoint both logits are equal for every input and argmax answers class 0: exactly
    half the examples are wrong there, and only there."""
    def net(w1, w2) -> nn.Module:
        model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 2, bias=False))
        with torch.no_grad():
            model[0].weight.copy_(torch.tensor(w1))
            model[2].weight.copy_(torch.tensor(w2))
        return model

    identity, swap = [[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).repeat(50, 1)
    y = torch.tensor([0, 1]).repeat(50)
    return net(identity, identity), net(swap, swap), Split(x, y)


def test_the_barrier_of_a_known_bump() -> None:
    a, b, data = two_unit_pair()
    curve = error_curve(a, b, data, data, points=3, batch_size=10)
    assert curve["alpha"] == [0.0, 0.5, 1.0]
    assert curve["test_error"] == pytest.approx([0.0, 50.0, 0.0])
    assert barrier(curve["test_error"]) == pytest.approx(50.0)
    # With 4 points the midpoint is not on the grid: the path is flat there.
    assert barrier(error_curve(a, b, data, data, points=4, batch_size=10)["test_error"]) == 0.0
    assert barrier([2.0, 3.0, 10.0, 4.0]) == pytest.approx(7.0)
    assert curve["batchnorm_recomputed"] is False


def test_two_copies_with_the_same_data_order_have_no_barrier(tiny_config, tiny_data,
                                                             tmp_path) -> None:
    config = tiny_config({"imp": {"levels": 1, "analyses": ["instability"]},
                          "instability": {"points": 5}, "train": {"fuse": "off"}})
    run = ImpRun(config, tmp_path / "run", data=tiny_data)
    run.run_level(0)
    level = run.run_level(1)
    # The copy at level 1, trained again with the experiment's own data order, is the ticket.
    folder = tmp_path / "same-order"
    same, _ = run._train_copy(1, 0, "ticket", run._load(rundir.mask_file(
        level_dir(run.out, 1))), folder, seed=config.seed)
    ticket = run._model_from(run._load(rundir.final_file(level_dir(run.out, 1))))
    for name, value in ticket.state_dict().items():
        assert torch.equal(same.state_dict()[name], value), name
    curve = error_curve(ticket, same, tiny_data.test, tiny_data.train, 5, 60)
    assert barrier(curve["test_error"]) == 0.0
    assert barrier(curve["train_error"]) == 0.0
    # The analysis itself trained its copy with another data order: other weights.
    other = run._load(copy_files(analysis_dir(level_dir(run.out, 1), "instability",
                                              "ticket")).final)
    assert not torch.equal(other["fc1.weight"], ticket.fc1.weight)
    assert level[INSTABILITY] >= 0 and level[INSTABILITY_TRAIN] >= 0
    stored = read_json(curve_file(analysis_dir(level_dir(run.out, 1), "instability", "ticket")))
    assert len(stored["alpha"]) == 5
    assert barrier(stored["test_error"]) == pytest.approx(level[INSTABILITY])
    assert stored["test_error"][0] == pytest.approx(100 * (1 - level["test_acc"]))
    assert stored["test_error"][-1] == pytest.approx(100 * (1 - level[COPY_TEST_ACC]))


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_every_networks_copy_starts_where_the_network_started(tiny_config, tiny_data, tmp_path,
                                                              optimizer) -> None:
    """Trained with the network's own data order, each copy is the network exactly: the same
    start weights, masks and optimizer state (the dense level's from the rewind point on)."""
    config = tiny_config({
        "train": {"optimizer": optimizer, "lr": 1e-3 if optimizer == "adam" else 0.05,
                  "momentum": 0.0 if optimizer == "adam" else 0.9, "weight_decay": 1e-4,
                  "fuse": "off"},  # compared bit for bit with copies trained alone
        "imp": {"levels": 1, "rewind": "7it", "controls": ["reinit", "random_prune", "shuffle"],
                "analyses": ["instability"],
                "analyses_on": ["ticket", "reinit", "random_prune", "shuffle"]},
        "instability": {"points": 3}})
    run = ImpRun(config, tmp_path / "run", data=tiny_data)
    for level in run.levels:
        run.run_level(level)
    for level, network in [(0, "ticket"), (1, "ticket"), (1, "reinit"), (1, "random_prune"),
                           (1, "shuffle")]:
        folder = level_dir(run.out, level)
        files = rundir.network_files(folder, network)
        masks = run._load(rundir.mask_file(folder))  # the ticket's; reinit trains with them too
        if network in ("random_prune", "shuffle"):  # their own masks: those they trained with
            masks = run._control_start(level, 0, network, masks).masks
        same, _ = run._train_copy(level, 0, network, masks, tmp_path / f"same-{level}-{network}",
                                  seed=config.seed)
        trained = run._load(files.final)
        for name, value in trained.items():
            assert torch.equal(same.state_dict()[name], value), (level, network, name)


def test_batchnorm_statistics_are_recomputed_on_the_path() -> None:
    torch.manual_seed(0)
    a = build_model("resnet20", (3, 16, 16), 10)
    b = build_model("resnet20", (3, 16, 16), 10)
    x = torch.randn(64, 3, 16, 16)
    for model in (a, b):  # give each end its own trained-looking statistics
        model.train()
        with torch.no_grad():
            model(x * (2.0 if model is a else 0.5))
        model.eval()
    into = build_model("resnet20", (3, 16, 16), 10)
    interpolate(a, b, 0.5, into)
    lerped = into.bn.running_mean.clone()
    assert recompute_batchnorm(into, x, batch_size=16)
    with torch.no_grad():
        first = into.conv(x)  # the first BatchNorm's input, for the whole subset at once
    assert torch.allclose(into.bn.running_mean, first.mean((0, 2, 3)), atol=1e-5)
    assert not torch.allclose(into.bn.running_mean, lerped, atol=1e-3)
    assert into.bn.momentum == 0.1  # restored
    assert not recompute_batchnorm(random_lenet(0), torch.randn(4, 1, 28, 28), 2)


def cifar_shaped_npz(path, train: int = 64, test: int = 32):
    generator = np.random.default_rng(0)
    np.savez(path, x_train=generator.integers(0, 256, (train, 32, 32, 3), dtype=np.uint8),
             y_train=np.arange(train, dtype=np.uint8) % 10,
             x_test=generator.integers(0, 256, (test, 32, 32, 3), dtype=np.uint8),
             y_test=np.arange(test, dtype=np.uint8) % 10)
    return path


def test_a_conv_net_with_batchnorm_gets_its_statistics_recomputed(tmp_path) -> None:
    config = config_from_dict({
        "model": {"name": "resnet20"},
        "data": {"name": "npz", "path": str(cifar_shaped_npz(tmp_path / "c.npz")),
                 "augment": True},
        "train": {"length": "2it", "eval_every": "2it", "batch_size": 32},
        "imp": {"levels": 0, "rewind": "0it", "analyses": ["instability"]},
        "instability": {"points": 3, "train_examples": 32}, "device": "cpu"}, "test")
    run = ImpRun(config, tmp_path / "run")
    metrics = run.run_level(0)
    curve = read_json(curve_file(analysis_dir(level_dir(run.out, 0), "instability", "ticket")))
    assert curve["batchnorm_recomputed"] is True
    assert INSTABILITY in metrics and COPY_TEST_ACC in metrics


class Killed(BaseException):
    """Stands for SIGKILL."""


def test_a_run_killed_inside_the_analysis_continues_without_retraining(
        tiny_config, tiny_data, tmp_path, monkeypatch) -> None:
    config = tiny_config({"imp": {"levels": 1, "controls": ["reinit"],
                                  "analyses": ["instability"],
                                  "analyses_on": ["ticket", "reinit"]},
                          "instability": {"points": 4}, "train": {"fuse": "off"}})
    reference = ImpRun(config, tmp_path / "reference", data=tiny_data)
    expected = [reference.run_level(level) for level in reference.levels]

    trainings: list[tuple[int, bool]] = []
    real_train = group_training.train

    def recorded(model, masks, data, train_config, *, checkpoint=None, **kwargs):
        trainings.append((kwargs["start"], checkpoint is not None and checkpoint.exists()))
        return real_train(model, masks, data, train_config, checkpoint=checkpoint, **kwargs)

    monkeypatch.setattr(group_training, "train", recorded)
    real_replace = rundir._replace_from_temp

    def kill_at(name: str, folder_part: str):
        def crashing(path, write):
            if path.name == name and folder_part in str(path):
                raise Killed
            real_replace(path, write)
        return crashing

    out = tmp_path / "run"
    # Killed in the middle of the reinit control's copy at level 1: after its evaluation at
    # iteration 20 (checkpoint written), as its final weights are written.
    monkeypatch.setattr(rundir, "_replace_from_temp", kill_at("copy_final.pt", "reinit"))
    run = ImpRun(config, out, data=tiny_data)
    run.run_level(0)
    with pytest.raises(Killed):
        run.run_level(1)
    assert copy_files(analysis_dir(level_dir(out, 1), "instability", "reinit")).checkpoint.exists()
    trainings.clear()
    monkeypatch.setattr(rundir, "_replace_from_temp", real_replace)
    finished = [ImpRun(config, out, data=tiny_data).run_level(level) for level in (0, 1)]
    # Only the interrupted copy trains again, from its checkpoint; the ticket, the reinit control
    # and the ticket's copy at level 1 (finished before the kill) are read back.
    assert trainings == [(0, True)]
    strip = lambda m: {k: v for k, v in m.items() if k != "train_seconds"}  # noqa: E731
    assert [strip(m) for m in finished][0] == strip(expected[0])
    for key in (INSTABILITY, INSTABILITY_TRAIN, COPY_TEST_ACC, "test_acc"):
        assert finished[1][key] == expected[1][key]
        assert finished[1]["controls"]["reinit"][key] == expected[1]["controls"]["reinit"][key]


def test_a_finished_copy_is_never_trained_again(tiny_config, tiny_data, tmp_path,
                                                monkeypatch) -> None:
    config = tiny_config({"imp": {"levels": 0, "analyses": ["instability"]},
                          "instability": {"points": 3}})
    real_replace = rundir._replace_from_temp

    def crashing(path, write):
        if path.name == "curve.json":
            raise Killed
        real_replace(path, write)

    monkeypatch.setattr(rundir, "_replace_from_temp", crashing)
    with pytest.raises(Killed):
        ImpRun(config, tmp_path / "run", data=tiny_data).run_level(0)
    monkeypatch.setattr(rundir, "_replace_from_temp", real_replace)
    calls = []
    monkeypatch.setattr(group_training, "train", lambda *a, **k: calls.append(k))
    metrics = ImpRun(config, tmp_path / "run", data=tiny_data).run_level(0)
    assert calls == []
    assert metrics[INSTABILITY] >= 0


def test_analyses_on_names_trained_networks(tiny_config) -> None:
    from lt_core.errors import ConfigError

    with pytest.raises(ConfigError, match="analyses_on: 'reinit' is not in imp.controls"):
        tiny_config({"imp": {"analyses": ["instability"], "analyses_on": ["reinit"]}})
    with pytest.raises(ConfigError, match="unknown analysis 'barrier'; choose from instability"):
        tiny_config({"imp": {"analyses": ["barrier"]}})


def test_the_onset_of_instability_is_the_first_level_above_the_threshold() -> None:
    from lt_core.levels import LevelRecord
    from lt_core.stability import instability_onset

    def level(number: int, barrier: float | None, sublevel: int = 0) -> LevelRecord:
        values = {"test_acc": 0.9, **({INSTABILITY: barrier} if barrier is not None else {})}
        return LevelRecord(number, 0.5 ** (number + sublevel / 1000), {"ticket": values},
                           sublevel)

    records = [level(0, 0.1), level(1, 1.9), level(2, None), level(2, 9.0, 500), level(3, 2.5),
               level(4, 0.5)]
    onset = instability_onset(records, "ticket", 2.0)
    assert (onset.level, onset.density, onset.stable_density) == (3, 0.125, 0.5)
    assert onset.deepest == 0.0625 and onset.unstable
    stable = instability_onset(records, "ticket", 3.0)
    assert not stable.unstable and stable.stable_density == stable.deepest == 0.0625
    assert instability_onset([level(0, 4.0)], "ticket", 2.0).stable_density is None
    assert instability_onset(records, "reinit", 2.0) is None


def test_the_imp_command_prints_the_barriers(npz_path, tmp_path, capsys) -> None:
    import yaml

    from sweeps.cli import main

    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"name": "lenet_300_100"},
        "data": {"name": "npz", "path": str(npz_path), "train_split": "train[:600]",
                 "test_split": "test[:100]"},
        "train": {"length": "20it", "eval_every": "20it"},
        "imp": {"levels": 1, "controls": ["reinit"], "analyses": ["instability"],
                "analyses_on": ["ticket", "reinit"]},
        "instability": {"points": 3}}))
    assert main(["imp", str(config), "--out", str(tmp_path / "run")]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["level", "density", "ticket", "reinit", "ticket", "barrier",
                                "reinit", "barrier"]
    assert table[1].split()[-2:] == ["pp", "-"]  # level 0: the ticket only
    assert table[2].split().count("pp") == 2  # level 1: the ticket and reinit
