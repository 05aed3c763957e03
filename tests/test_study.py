"""Study files: every shipped search space validates; malformed ones fail with exit 2 and a
field-named one-line error, starting nothing and writing nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sweeps.cli import main
from sweeps.study import load_study, trial_config
from tests.sweep_helpers import REPO

SHIPPED = sorted((REPO / "search_spaces").glob("*.yaml"))


def test_the_required_studies_ship() -> None:
    names = {p.stem for p in SHIPPED}
    assert {"quickstart", "lenet_mnist", "conv4_cifar10", "resnet20_cifar10",
            "vgg19_cifar10", "lenet_mnist_repro", "pruning_methods_mnist"} <= names


def transfer_source(tmp_path: Path) -> Path:
    """The shipped example's source run (examples/lenet_mnist_tickets_half_a.yaml), cut to two
    levels of 2 iterations."""
    from lt_core.config import load_config
    from lt_core.imp import ImpRun

    config = load_config(REPO / "examples" / "lenet_mnist_tickets_half_a.yaml",
                         ["imp.levels=2", "train.length=2it", "train.eval_every=2it"])
    ImpRun(config, tmp_path / "tickets").run()
    return tmp_path / "tickets"


@pytest.mark.parametrize("space", SHIPPED, ids=lambda p: p.stem)
def test_shipped_space_validates(space: Path, capsys, monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(REPO)
    # A transfer study needs its source run made first (its header says how): a small one.
    sets = ([f"base.imp.ticket_from={transfer_source(tmp_path)}"]
            if "ticket_from" in space.read_text() else [])
    assert main(["validate", str(space), *(f"--set={s}" for s in sets)]) == 0
    out = capsys.readouterr().out
    study = load_study(space, sets)
    assert f"trials: {study.count_trials()}" in out
    assert f"{study.resources.cpu:g} CPU, {study.resources.gpu:g} GPU" in out


def test_trial_counts_and_configs() -> None:
    study = load_study(REPO / "search_spaces" / "lenet_mnist.yaml")
    assert study.count_trials() == 3 * 2 * 2 * 2 * 3
    config = trial_config(study, {"pruning.rate": 0.4, "imp.rewind": "1000it", "seed": 2})
    assert config.pruning.rate == 0.4 and config.imp.rewind == "1000it" and config.seed == 2
    assert config.pruning.layer_rates == {"output": 0.1}
    assert Path(study.tracking_uri.removeprefix("sqlite:///")).is_absolute()
    assert study.storage_path.is_absolute()


def _write(tmp_path: Path, study: dict) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


GOOD = {
    "name": "t",
    "base": {"model": {"name": "lenet_300_100"}, "data": {"name": "mnist"}},
    "space": {"pruning.rate": {"grid": [0.2, 0.5]}},
}


@pytest.mark.parametrize("change, field", [
    ({"spaec": {}}, "spaec: unknown field"),
    ({"space": {"pruning.rate": {"grid": [0.2, 1.5]}}}, "space.pruning.rate=1.5"),
    ({"space": {"train.lrr": {"grid": [0.1]}}}, "space.train.lrr"),
    ({"space": {"train.lr": {"uniform": [0.1, 0.01]}}}, "space.train.lr"),
    ({"space": {"train.lr": {"loguniform": [0, 0.1]}}}, "space.train.lr"),
    ({"space": {"train.lr": {"grid": [0.1], "choice": [0.2]}}}, "space.train.lr"),
    ({"search": {"algorithm": "optuna"}}, "space.pruning.rate"),
    ({"search": {"algorithm": "bayes"}}, "search.algorithm"),
    ({"search": {"objective": ["breakdown_sparsity", "dense_test_acc"]}}, "search"),
    ({"resources": {"cpu": 0}}, "resources.cpu"),
    ({"base": {"model": {"name": "lenet_300_100"}, "data": {"name": "mnist"},
               "train": {"lr": "fast"}}}, "base.train.lr"),
    ({"base": {"model": {"name": "lenet_300_100"}, "data": {"name": "npz",
                                                           "path": "/nope.npz"}}},
     "base.data.path"),
    ({"base": {"model": {"name": "lenet_300_100"}, "data": {"name": "mnist"},
               "pruning": {"layer_rates": {"fc9.weight": 0.1}}}}, "base.pruning.layer_rates"),
    ({"base": {"model": {"name": "lenet_300_100"}, "data": {"name": "mnist"},
               "train": {"length": "2ep"}, "imp": {"rewind": "2ep"}}}, "base.imp.rewind"),
    ({"space": {"imp.rewind": {"grid": ["0it", "2000ep"]}}}, "space.imp.rewind='2000ep'"),
    ({"base": {"model": {"name": "lenet_300_100"},
               "data": {"name": "mnist", "train_split": "train[:100]", "val_size": 100}}},
     "base.data.val_size"),
    ({"base": {"model": {"name": "lenet_300_100"},
               "data": {"name": "cifar10", "test_split": "test[10000:]"}}},
     "base.data.test_split"),
    ({"name": "has space"}, "name"),
    ({"breakdown": {"refine": 100}}, "breakdown.refine"),
    ({"breakdown": {"refine": -1}}, "breakdown.refine"),
    ({"breakdown": {"refine": 3, "refine_networks": ["reinit"]}},
     "breakdown.refine_networks: 'reinit' is not one of ticket (the ticket and the controls"),
    ({"breakdown": {"refine_networks": ["ticket", "ticket"]}},
     "breakdown.refine_networks: a network is listed twice"),
    ({"base": {"model": {"name": "lenet_300_100"}, "data": {"name": "mnist"},
               "imp": {"control_levels": "some"}}}, "base.imp.control_levels"),
    ({"search": {"objective": "breakdown_sparsity_mid"}}, "search.objective"),
    ({"search": {"algorithm": "optuna", "objective": "test_acc"},
      "space": {"pruning.rate": {"uniform": [0.2, 0.5]}}, "breakdown": {"refine": 2}},
     "search.objective: 'test_acc' is read from a trial's last result"),
])
def test_malformed_study_exits_2_naming_the_field(change, field, tmp_path, capsys,
                                                  monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path, {**GOOD, **change})
    for command in ("validate", "run"):
        assert main([command, str(path), "--set", f"run.storage_path={tmp_path / 'res'}"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0, err
        assert str(path) in err and field in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"], "something was written"


def test_breakdown_settings_of_a_study() -> None:
    study = load_study(REPO / "search_spaces" / "quickstart.yaml", [
        "breakdown={tolerance: 2.0, metric: early_stop_acc, refine: 3, "
        "refine_networks: [ticket, reinit]}", "base.imp.control_levels=breakdown",
        "search.objective=breakdown_sparsity_est"])
    assert study.breakdown.rule.tolerance_pp == 2.0
    assert study.breakdown.rule.metric == "early_stop_acc"
    assert (study.breakdown.refine, study.breakdown.refine_networks) == (3, ["ticket", "reinit"])
    assert study.base_config().imp.control_levels == "breakdown"
    assert study.search.objective == ["breakdown_sparsity_est"]


def test_set_overrides_reach_the_study(capsys, monkeypatch) -> None:
    monkeypatch.chdir(REPO)
    space = str(REPO / "search_spaces" / "quickstart.yaml")
    assert main(["validate", space, "--set", "space.seed.grid=[0,1,2]"]) == 0
    assert "trials: 12" in capsys.readouterr().out
    assert main(["validate", space, "--set", "space.pruning.rate.grid=[0.2]"]) == 0
    assert "trials: 2" in capsys.readouterr().out
