"""Config loading: per-model defaults, ``--set`` overrides and one-line, field-named errors."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from lt_core.cli import main as lt_core_main
from lt_core.config import (ConfigError, ExperimentConfig, apply_overrides, config_from_dict,
                            load_config)
from lt_core.models import MODELS
from lt_core.validate import check_experiment

NPZ_DATA = {"name": "npz", "path": "/nonexistent/data.npz"}  # config does not read the file


def base(**changes) -> dict:
    raw = {"model": {"name": "lenet_300_100"}, "data": dict(NPZ_DATA)}
    raw.update(changes)
    return raw


def write_yaml(tmp_path: Path, raw: dict | str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw))
    return path


# ---- defaults -------------------------------------------------------------------------------
def test_lenet_defaults() -> None:
    config = config_from_dict({"model": {"name": "lenet_300_100"}})
    assert config.data.name == "mnist"
    assert config.train.optimizer == "adam"
    assert config.train.lr == pytest.approx(1.2e-3)
    assert config.train.batch_size == 60
    assert config.train.length == "50000it"
    assert config.pruning.scope == "layerwise"
    assert config.pruning.rate == pytest.approx(0.2)
    assert config.pruning.layer_rates == {"output": 0.1}


def test_resnet20_defaults() -> None:
    config = config_from_dict({"model": {"name": "resnet20"}})
    assert config.data.name == "cifar10"
    assert (config.train.optimizer, config.train.lr, config.train.momentum) == ("sgd", 0.1, 0.9)
    assert config.train.schedule == "multistep"
    assert config.train.milestones == ["80ep", "120ep"]
    assert config.pruning.scope == "global"
    assert config.imp.rewind == "500it"


def test_user_values_override_defaults_and_keep_the_rest() -> None:
    before = copy.deepcopy({n: e.defaults for n, e in MODELS.items()})
    raw = base(train={"lr": 0.01, "length": "3ep"},
               pruning={"layer_rates": {"fc1.weight": 0.3}})
    frozen_raw = copy.deepcopy(raw)
    config = config_from_dict(raw)
    assert config.train.lr == 0.01 and config.train.length == "3ep"
    assert config.train.optimizer == "adam" and config.train.batch_size == 60  # defaults kept
    assert config.data.name == "npz"  # the user's data section wins over the default mnist
    assert config.pruning.layer_rates == {"output": 0.1, "fc1.weight": 0.3}  # merged, not replaced
    assert raw == frozen_raw  # input not modified
    assert {n: e.defaults for n, e in MODELS.items()} == before  # defaults not modified


def test_empty_mapping_clears_a_default(tmp_path: Path) -> None:
    before = copy.deepcopy({n: e.defaults for n, e in MODELS.items()})
    assert config_from_dict(base(pruning={"layer_rates": {}})).pruning.layer_rates == {}
    path = write_yaml(tmp_path, base(model={"name": "conv4"}))
    assert load_config(path).pruning.layer_rates == {"conv": 0.1, "output": 0.1}
    assert load_config(path, ["pruning.layer_rates={}"]).pruning.layer_rates == {}
    assert {n: e.defaults for n, e in MODELS.items()} == before


def test_defaults_follow_the_model() -> None:
    config = config_from_dict(base(model={"name": "conv6"}))
    assert config.pruning.layer_rates == {"conv": 0.15, "output": 0.1}
    assert config.train.lr == pytest.approx(3e-4)


def test_yaml_round_trip(tmp_path: Path) -> None:
    config = config_from_dict(base(imp={"controls": ["reinit"], "rewind": "2ep10it"}))
    again = config_from_dict(yaml.safe_load(config.to_yaml()))
    assert again == config
    assert isinstance(again, ExperimentConfig)


# ---- --set overrides ------------------------------------------------------------------------
def test_set_overrides(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, base(train={"lr": 0.5}))
    config = load_config(path, overrides=["train.lr=0.01", "imp.controls=[reinit, shuffle]",
                                          "pruning.layer_rates.output=0.2", "imp.levels=3",
                                          "train.nesterov=false", "seed=7"])
    assert config.train.lr == 0.01
    assert config.imp.controls == ["reinit", "shuffle"]
    assert config.pruning.layer_rates == {"output": 0.2}
    assert config.imp.levels == 3
    assert config.seed == 7


def test_apply_overrides_creates_nested_sections_without_touching_input() -> None:
    raw = {"model": {"name": "conv2"}}
    result = apply_overrides(raw, ["pruning.layer_rates.conv=0.3", "data.path=/a=b.npz"])
    assert result["pruning"] == {"layer_rates": {"conv": 0.3}}
    assert result["data"] == {"path": "/a=b.npz"}  # split at the first "=" only
    assert raw == {"model": {"name": "conv2"}}


def test_override_model_changes_the_defaults(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, base())
    config = load_config(path, overrides=["model.name=resnet20"])
    assert config.train.optimizer == "sgd" and config.imp.rewind == "500it"


@pytest.mark.parametrize("override, fragment", [
    ("train.lr", "not key.sub=value"),
    ("=3", "not key.sub=value"),
    ("train.lr.x=1", "train.lr is not a section"),
    ("train.lr=[1,", "cannot parse"),
])
def test_bad_overrides(tmp_path: Path, override: str, fragment: str) -> None:
    path = write_yaml(tmp_path, base(train={"lr": 0.5}))
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides=[override])
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


# ---- malformed configs ----------------------------------------------------------------------
MALFORMED = [
    (base(train={"lrr": 0.1}), ["train.lrr", "unknown field"]),
    (base(train={"batch_size": "abc"}), ["train.batch_size"]),
    (base(train={"batch_size": 0}), ["train.batch_size"]),
    (base(imp={"rewind": "5 epochs"}), ["imp.rewind", "5 epochs"]),
    (base(train={"milestones": ["1ep", "x"]}), ["train.milestones.1"]),
    (base(model={"name": "lenet_5"}), ["model", "unknown model 'lenet_5'"]),
    (base(data={"name": "npz"}), ["data.path"]),
    (base(data={"name": "imagenet"}), ["data.name"]),
    (base(pruning={"rate": 1.5}), ["pruning.rate"]),
    (base(pruning={"scope": "local"}), ["pruning.scope"]),
    (base(imp={"controls": ["reinit", "bogus"]}),
     ["imp.controls.1", "unknown control 'bogus'; choose from reinit, random_prune, shuffle"]),
    (base(imp={"retrain": "rewnd"}),
     ["imp.retrain", "unknown retrain mode 'rewnd'; choose from rewind, lr_rewind, finetune"]),
    (base(pruning={"criterion": "grasp"}),
     ["pruning.criterion", "unknown pruning criterion 'grasp'; choose from magnitude, random, "
                           "snip, synflow"]),
    (base(pruning={"structure": "channel"}),
     ["pruning.structure", "choose from unstructured, filter"]),
    (base(pruning={"structure": "filter", "scope": "global"}),
     ["pruning", "structure 'filter' needs scope 'layerwise'"]),
    (base(pruning={"mode": "at_init"}, imp={"retrain": "lr_rewind"}),
     ["pruning.mode 'at_init' trains each mask from init", "imp.retrain 'rewind'"]),
    (base(pruning={"mode": "at_init"}, imp={"rewind": "100it"}), ["imp.rewind 0it"]),
    (base(pruning={"rounds": 0}), ["pruning.rounds"]),
    (base(pruning={"score_batches": 0}), ["pruning.score_batches"]),
    (base(imp={"controls": ["reinit", "reinit"]}), ["imp.controls", "twice"]),
    (base(train={"optimizer": "adam", "momentum": 0.9, "nesterov": True}), ["nesterov"]),
    (base(train={"length": "0it"}), ["length must be positive"]),
    (base(pruning={"target_density": 0.1}), ["pruning.target_density", "one_shot"]),
    (base(pruning={"target_density": 0.1, "mode": "at_init"}), ["imp.levels to 1"]),
    (base(colour="red"), ["colour", "unknown field"]),
    (base(model={"name": ["lenet_300_100"]}), ["model.name"]),
    (base(model={"name": {"a": 1}}), ["model.name"]),
    ({"data": dict(NPZ_DATA)}, ["model", "Field required"]),
]


@pytest.mark.parametrize("raw, fragments", MALFORMED,
                         ids=[", ".join(f) for _, f in MALFORMED])
def test_malformed_config_gives_one_line_field_named_error(raw: dict, fragments: list[str],
                                                           tmp_path: Path) -> None:
    path = write_yaml(tmp_path, raw)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    for fragment in fragments:
        assert fragment in message
    assert "\n" not in message


def test_several_errors_on_one_line() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(base(train={"lrr": 1, "batch_size": "abc"}), source="x.yaml")
    message = str(info.value)
    assert message.startswith("x.yaml: ")
    assert "train.lrr: unknown field" in message and "train.batch_size" in message
    assert "\n" not in message


@pytest.mark.parametrize("text, fragment", [
    ("model: {name: lenet_300_100\ndata: [", "not valid YAML"),
    ("- just\n- a list\n", "expected a mapping"),
    ("", "expected a mapping"),
    ("model: resnet20\n", "model"),
])
def test_bad_yaml_files(tmp_path: Path, text: str, fragment: str) -> None:
    path = write_yaml(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(str(path)) and fragment in message
    assert "\n" not in message


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message and "cannot read" in message
    assert "\n" not in message


def test_config_is_frozen() -> None:
    config = config_from_dict(base())
    with pytest.raises(Exception):
        config.train.lr = 1.0  # type: ignore[misc]


# ---- checks that need the data's size, at the CLI edge --------------------------------------
@pytest.mark.parametrize("set_args, fragment", [
    # 1200 training images at batch 60: 20 iterations per epoch, 2ep = 40 iterations
    (["imp.rewind=40it"], "imp.rewind: '40it' (40 iterations) leaves pruned levels nothing"),
    (["imp.rewind=2ep"], "imp.rewind: '2ep' (40 iterations)"),
    (["data.val_size=1200"], "data.val_size: 1200 leaves no training examples"),
    (["data.test_split=test[5:5]"], "data.test_split: 'test[5:5]' selects no examples"),
])
def test_imp_cli_rejects_data_dependent_errors_before_writing(set_args, fragment, npz_path,
                                                              tmp_path, capsys) -> None:
    config = write_yaml(tmp_path, base(data={"name": "npz", "path": str(npz_path),
                                             "train_split": "train[:1200]"},
                                       train={"length": "2ep"}, imp={"levels": 1}))
    out = tmp_path / "run"
    argv = ["imp", str(config), "--out", str(out)]
    for item in set_args:
        argv += ["--set", item]
    assert lt_core_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(config) in err and fragment in err, err
    assert not out.exists()


def test_rewind_before_the_end_is_accepted(npz_path, tmp_path) -> None:
    raw = base(data={"name": "npz", "path": str(npz_path), "train_split": "train[:1200]"},
               train={"length": "2ep"}, imp={"levels": 1, "rewind": "39it"})
    check_experiment(config_from_dict(raw))
    raw["imp"] = {"levels": 0, "rewind": "3ep"}  # no pruned level retrains: nothing to check
    check_experiment(config_from_dict(raw))
