"""Each extension point is a registry: an entry added there (here with monkeypatch, in a
contribution a file plus one line) is a valid config value and flows through the engine, the
metric names and the breakdown with nothing else changed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from lt_core.breakdown import BreakdownRule, locate
from lt_core.config import ConfigError
from lt_core.controls import CONTROLS, ControlInputs, ControlStart
from lt_core.imp import ImpRun
from lt_core.levels import LevelRecord
from lt_core.metrics import split_metric_name
from lt_core.models import MODELS, ModelEntry, PrunableModel
from lt_core.retrain import RETRAIN_MODES
from lt_core.retrain.base import RetrainMode
from lt_core.rundir import final_file, level_dir, load_tensors


def negate(inputs: ControlInputs) -> ControlStart:
    """A made-up control: the ticket's masks with its starting weights negated."""
    return ControlStart({k: -v if v.is_floating_point() else v for k, v in inputs.ticket.items()},
                        inputs.masks)


def test_a_registered_control_is_trained_named_and_broken_down(
        tiny_config, tiny_data, tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(ConfigError, match="unknown control 'negate'"):
        tiny_config({"imp": {"controls": ["negate"]}})
    monkeypatch.setitem(CONTROLS, "negate", negate)
    config = tiny_config({"imp": {"levels": 2, "controls": ["reinit", "negate"]}})
    rows = ImpRun(config, tmp_path, data=tiny_data).run()
    assert set(rows[1]["controls"]) == {"reinit", "negate"}
    records = [LevelRecord.from_metrics(row) for row in rows]
    flat = records[2].flat()
    assert split_metric_name("negate_early_stop_acc") == ("negate", "early_stop_acc")
    assert LevelRecord.from_flat(flat).networks["negate"] == records[2].networks["negate"]
    assert locate(records, "negate", BreakdownRule(100.0)).censored


class Pair(PrunableModel):
    output_layer = "out"

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        channels, height, width = input_shape
        self.hidden = nn.Linear(channels * height * width, 32)
        self.out = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(torch.flatten(x, 1))))


def test_a_registered_model_brings_its_own_defaults(tiny_config, tiny_data, tmp_path: Path,
                                                    monkeypatch) -> None:
    defaults = {"train": {"optimizer": "sgd", "lr": 0.05, "batch_size": 30},
                "pruning": {"scope": "layerwise", "rate": 0.5, "layer_rates": {"output": 0.0}}}
    monkeypatch.setitem(MODELS, "pair", ModelEntry(Pair, defaults))
    config = tiny_config({"model": {"name": "pair"}, "imp": {"levels": 1}})
    assert (config.train.optimizer, config.train.lr) == ("sgd", 0.05)
    assert config.pruning.layer_rates == {"output": 0.0}
    rows = ImpRun(config, tmp_path, data=tiny_data).run()
    # hidden at 50%, the output layer left dense: (0.5 * 784 * 32 + 32 * 10) / (784 * 32 + 320)
    assert rows[1]["density"] == pytest.approx((0.5 * 784 * 32 + 320) / (784 * 32 + 320))


class KeepWeightsAtWarmLr(RetrainMode):
    """A made-up retrain mode: the pruned final weights at twice the schedule's LR."""

    rewinds_weights = False

    def lr_at(self, schedule, end):
        return lambda iteration: 2 * schedule(iteration)


def test_a_registered_retrain_mode_starts_from_the_final_weights(
        tiny_config, tiny_data, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(RETRAIN_MODES, "warm", KeepWeightsAtWarmLr())
    config = tiny_config({"imp": {"levels": 1, "retrain": "warm"}})
    run = ImpRun(config, tmp_path, data=tiny_data)
    run.run()
    final0 = load_tensors(final_file(level_dir(tmp_path, 0)))
    assert all(torch.equal(run._ticket_start(1)[k], final0[k]) for k in final0)


def test_a_registered_analysis_runs_on_the_networks_it_is_asked_for(
        tiny_config, tiny_data, tmp_path: Path, monkeypatch) -> None:
    from lt_core.analyses import ANALYSES, AnalysisInputs
    from lt_core.metrics import COPY_TEST_ACC

    with pytest.raises(ConfigError, match="unknown analysis 'copy_only'"):
        tiny_config({"imp": {"analyses": ["copy_only"]}})
    seen = []

    def copy_only(inputs: AnalysisInputs) -> dict:
        seen.append(inputs.network)
        return {COPY_TEST_ACC: inputs.train_copy(inputs.seed)[1].test_acc}

    monkeypatch.setitem(ANALYSES, "copy_only", copy_only)
    config = tiny_config({"imp": {"levels": 1, "controls": ["reinit", "shuffle"],
                                  "analyses": ["copy_only"], "analyses_on": ["reinit"]}})
    rows = ImpRun(config, tmp_path, data=tiny_data).run()
    assert seen == ["reinit"]
    assert COPY_TEST_ACC in rows[1]["controls"]["reinit"]
    assert COPY_TEST_ACC not in rows[1] and COPY_TEST_ACC not in rows[1]["controls"]["shuffle"]
    assert LevelRecord.from_metrics(rows[1]).flat()["reinit_copy_test_acc"] == \
        rows[1]["controls"]["reinit"][COPY_TEST_ACC]
