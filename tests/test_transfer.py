"""Ticket transfer: another run's masks and rewind weights trained on this experiment's data,
optimizer and schedule (imp.ticket_from)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from lt_core.config import deep_merge
from lt_core.imp import ImpRun
from lt_core.masks import density
from lt_core.rundir import init_file, level_dir, load_tensors, mask_file, rewind_file

OUTPUT = "fc3.weight"


@pytest.fixture(scope="module")
def source(tmp_path_factory, tiny_data, tiny_config):
    """A finished 2-level run: Adam, late resetting to iteration 5."""
    out = tmp_path_factory.mktemp("source")
    config = tiny_config({"train": {"optimizer": "adam", "lr": 1.2e-3},
                          "pruning": {"rate": 0.5}, "imp": {"levels": 2, "rewind": "5it"}})
    ImpRun(config, out, data=tiny_data).run()
    return out


def digits_below_five(npz_arrays, path):
    """The shared MNIST split restricted to digits 0-4: the same images, 5 classes."""
    arrays = {}
    for part in ("train", "test"):
        keep = npz_arrays[f"y_{part}"] < 5
        arrays[f"x_{part}"] = npz_arrays[f"x_{part}"][keep][:600]
        arrays[f"y_{part}"] = npz_arrays[f"y_{part}"][keep][:600]
    np.savez(path, **arrays)
    return path


def test_masks_and_rewind_weights_are_carried_exactly(source, tiny_config, tiny_data,
                                                      tmp_path) -> None:
    config = tiny_config({"train": {"optimizer": "sgd", "lr": 0.05},
                          "imp": {"ticket_from": str(source), "controls": ["random_prune"]}})
    run = ImpRun(config, tmp_path / "to_sgd", data=tiny_data)
    assert run.levels == [0, 1, 2]
    rows = run.run()
    start, rewind = load_tensors(init_file(run.out)), load_tensors(rewind_file(source))
    assert start.keys() == rewind.keys()
    assert all(torch.equal(start[name], rewind[name]) for name in rewind)
    for level, row in zip(run.levels, rows):
        theirs = load_tensors(mask_file(level_dir(source, level)))
        ours = load_tensors(mask_file(level_dir(run.out, level)))
        assert all(torch.equal(ours[name], theirs[name]) for name in theirs)
        assert row["density"] == pytest.approx(density(theirs))
        if level:
            control = load_tensors(mask_file(level_dir(run.out, level)))  # same per-layer counts
            assert row["controls"]["random_prune"]["density"] == pytest.approx(density(control))
    assert rows[2]["density"] == pytest.approx(0.25, abs=0.01)


def test_ticket_levels_choose_the_transferred_levels(source, tiny_config, tiny_data,
                                                     tmp_path) -> None:
    config = tiny_config({"imp": {"ticket_from": str(source), "ticket_levels": [2]}})
    run = ImpRun(config, tmp_path / "deep", data=tiny_data)
    assert [row["level"] for row in run.run()] == [0, 2]
    assert not level_dir(run.out, 1).exists()


def test_another_class_count_reinitialises_the_output_layer(source, tiny_config, npz_arrays,
                                                            tmp_path) -> None:
    path = digits_below_five(npz_arrays, tmp_path / "five.npz")
    config = tiny_config({"data": {"path": str(path), "train_split": "train",
                                   "test_split": "test"},
                          "imp": {"ticket_from": str(source)}})
    run = ImpRun(config, tmp_path / "five")
    rows = run.run()
    assert run.data.num_classes == 5
    start, rewind = load_tensors(init_file(run.out)), load_tensors(rewind_file(source))
    assert start[OUTPUT].shape == (5, 100) and rewind[OUTPUT].shape == (10, 100)
    assert start["fc3.bias"].shape == (5,)
    for name in rewind:
        if not name.startswith("fc3."):
            assert torch.equal(start[name], rewind[name]), name
    for level in run.levels:
        theirs = load_tensors(mask_file(level_dir(source, level)))
        ours = load_tensors(mask_file(level_dir(run.out, level)))
        for name in theirs:
            if name != OUTPUT:
                assert torch.equal(ours[name], theirs[name])
        assert ours[OUTPUT].float().mean().item() == pytest.approx(
            theirs[OUTPUT].float().mean().item(), abs=1 / 500)
    assert rows[-1]["test_acc"] > 0.3  # trains: 5 classes, chance is 0.2


def cifar_shaped(path):
    generator = np.random.default_rng(0)
    np.savez(path, x_train=generator.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8),
             y_train=np.arange(40, dtype=np.uint8) % 10,
             x_test=generator.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8),
             y_test=np.arange(20, dtype=np.uint8) % 10)
    return path


def test_an_input_shape_the_architecture_cannot_take_is_refused(source, tmp_path) -> None:
    data = cifar_shaped(tmp_path / "cifar.npz")
    config = tmp_path / "transfer.yaml"
    config.write_text(f"model: {{name: lenet_300_100}}\n"
                      f"data: {{name: npz, path: {data}}}\n"
                      f"imp: {{ticket_from: {source}}}\n")
    out = tmp_path / "never"
    result = subprocess.run([sys.executable, "-m", "sweeps.cli", "imp", str(config), "--out",
                             str(out)], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"error: {config}: imp.ticket_from: the source's fc1.weight is 300x784, but "
        f"lenet_300_100 on this data needs 300x3072: the architecture cannot take this input "
        f"shape with these tickets"]
    assert not out.exists()


@pytest.mark.parametrize("changes, message", [
    ({"model": {"name": "conv2"}}, "holds lenet_300_100 tickets; this experiment trains conv2"),
    ({"imp": {"ticket_levels": [3]}}, "imp.ticket_levels: level 3 is not finished in"),
])
def test_a_source_that_does_not_fit_is_refused(source, tiny_config, changes, message) -> None:
    from lt_core.errors import ConfigError
    from lt_core.validate import check_experiment

    config = tiny_config(deep_merge({"imp": {"ticket_from": str(source)}}, changes))
    with pytest.raises(ConfigError, match=message):
        check_experiment(config, "study")


def test_a_folder_that_is_not_a_run_is_refused(tiny_config, tmp_path) -> None:
    from lt_core.errors import ConfigError
    from lt_core.validate import check_experiment

    with pytest.raises(ConfigError, match="imp.ticket_from: .* is not a run directory"):
        check_experiment(tiny_config({"imp": {"ticket_from": str(tmp_path)}}), "study")


def test_a_started_transfer_needs_its_source_no_more(source, tiny_config, tiny_data,
                                                     tmp_path) -> None:
    """Once a transfer run has begun, its levels and masks are its own: a restart elsewhere from
    what it keeps to continue (the resume kit) finishes it without the source, as if
    uninterrupted, and a source that gains levels later changes nothing."""
    import shutil

    from lt_core.breakdown import BreakdownRule

    copied = tmp_path / "source"
    shutil.copytree(source, copied)
    config = tiny_config({"imp": {"ticket_from": str(copied), "ticket_levels": [0, 2]}})
    expected = ImpRun(config, tmp_path / "whole", data=tiny_data).run()
    first = ImpRun(config, tmp_path / "first", data=tiny_data)
    first.run_level(0)
    elsewhere = tmp_path / "elsewhere"
    for path in first.files_to_continue(BreakdownRule(1.0, "test_acc")):
        target = elsewhere / path.relative_to(first.out)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    shutil.rmtree(copied)
    rows = ImpRun(config, elsewhere, data=tiny_data).run()
    strip = lambda row: {k: v for k, v in row.items() if k != "train_seconds"}  # noqa: E731
    assert [strip(r) for r in rows] == [strip(r) for r in expected]
    assert [r["level"] for r in rows] == [0, 2]
