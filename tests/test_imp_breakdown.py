"""The engine's side of the breakdown, without Ray: refinement points between two levels, and
controls trained only where a bisection over their breakdown needs them."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from lt_core.breakdown import BreakdownRule, locate
from lt_core.imp import ImpRun
from lt_core.rundir import level_dir, load_tensors, mask_file, network_files, run_records



def without_time(measured: dict) -> dict:
    return {k: v for k, v in measured.items() if k != "train_seconds"}


def kept(masks: dict) -> dict[str, int]:
    return {name: int(mask.sum()) for name, mask in masks.items()}


@pytest.mark.parametrize("scope", ["layerwise", "global"])
def test_a_refinement_point_lies_between_its_two_levels(tiny_config, tiny_data, tmp_path: Path,
                                                        scope: str) -> None:
    config = tiny_config({"pruning": {"rate": 0.5, "scope": scope}, "imp": {"levels": 2}})
    run = ImpRun(config, tmp_path, data=tiny_data)
    run.run()
    metrics = run.run_sublevel(1, 500, ["ticket"])
    level1 = load_tensors(mask_file(level_dir(tmp_path, 1)))
    level2 = load_tensors(mask_file(level_dir(tmp_path, 2)))
    point = load_tensors(mask_file(level_dir(tmp_path, 1, 500)))
    for name in point:
        # Pruned from level 1's final weights by magnitude, like level 2 but keeping more.
        assert bool((point[name] <= level1[name]).all()), name
        assert bool((level2[name] <= point[name]).all()), name
    assert kept(level2) != kept(point) != kept(level1)
    records = run_records(tmp_path)
    assert [(r.level, r.sublevel) for r in records] == [(0, 0), (1, 0), (1, 500), (2, 0)]
    assert records[1].density > metrics["density"] > records[3].density
    if scope == "layerwise":
        # Each layer keeps round(n * (1 - rate)^1.5) of its n weights; LeNet's output layer is
        # pruned at its own 10% per level.
        for name, mask in point.items():
            rate = 0.1 if name == "fc3.weight" else 0.5
            assert int(mask.sum()) == round(mask.numel() * (1 - rate) ** 1.5), name
    else:
        total = sum(m.numel() for n, m in point.items() if n != "fc3.weight")
        assert sum(int(m.sum()) for n, m in point.items() if n != "fc3.weight") == \
            round(total * 0.5**1.5)


def test_a_refinement_point_is_trained_once_and_takes_more_networks_later(
        tiny_config, tiny_data, tmp_path: Path) -> None:
    config = tiny_config({"pruning": {"rate": 0.5}, "imp": {"levels": 1, "controls": ["reinit"]}})
    run = ImpRun(config, tmp_path, data=tiny_data)
    run.run()
    first = run.run_sublevel(0, 500, ["ticket"])
    assert "test_acc" in first and first["controls"] == {}
    ticket_file = network_files(level_dir(tmp_path, 0, 500), "ticket").final
    stamp = ticket_file.stat().st_mtime_ns
    again = ImpRun(config, tmp_path, data=tiny_data).run_sublevel(0, 500, ["ticket", "reinit"])
    assert ticket_file.stat().st_mtime_ns == stamp  # not retrained
    assert again["test_acc"] == first["test_acc"]
    assert set(again["controls"]) == {"reinit"}
    assert again["controls"]["reinit"]["sublevel"] == 500
    # The point's reinit trains from its own fresh init: another network than level 1's.
    level1 = load_tensors(network_files(level_dir(tmp_path, 1), "reinit").final)
    point = load_tensors(network_files(level_dir(tmp_path, 0, 500), "reinit").final)
    assert not all(bool((level1[k] == point[k]).all()) for k in level1)


def test_one_shot_refinement_prunes_the_dense_weights(tiny_config, tiny_data,
                                                      tmp_path: Path) -> None:
    config = tiny_config({"pruning": {"rate": 0.5, "mode": "one_shot"}, "imp": {"levels": 2}})
    run = ImpRun(config, tmp_path, data=tiny_data)
    run.run()
    run.run_sublevel(1, 250, ["ticket"])
    point = load_tensors(mask_file(level_dir(tmp_path, 1, 250)))
    level1 = load_tensors(mask_file(level_dir(tmp_path, 1)))
    level2 = load_tensors(mask_file(level_dir(tmp_path, 2)))
    for name in point:  # every one-shot mask ranks the same dense weights
        assert bool((level2[name] <= point[name]).all()) and bool((point[name] <= level1[name]).all())
        rate = 0.1 if name == "fc3.weight" else 0.5
        assert int(point[name].sum()) == round(point[name].numel() * (1 - rate) ** 1.25), name


def test_refinement_points_must_be_inside_a_finished_level(tiny_config, tiny_data,
                                                           tmp_path: Path) -> None:
    run = ImpRun(tiny_config({"imp": {"levels": 1}}), tmp_path, data=tiny_data)
    with pytest.raises(RuntimeError, match="needs level 0 finished"):
        run.run_sublevel(0, 500, ["ticket"])
    run.run_level(0)
    for bad in (0, 1000):
        with pytest.raises(ValueError, match="not between 1 and 999"):
            run.run_sublevel(0, bad, ["ticket"])


def _bisection_config(tiny_config, control_levels: str):
    # 75% per level: the controls fall apart within a few of the 5 levels.
    return tiny_config({"pruning": {"rate": 0.75},
                        "imp": {"levels": 5, "controls": ["reinit", "random_prune"],
                                "control_levels": control_levels},
                        "train": {"length": "60it", "fuse": "off"}})


def test_controls_by_bisection_match_every_level_and_resume(tiny_config, tiny_data,
                                                            tmp_path: Path) -> None:
    # At 10 pp both controls hold at level 1 and fail at level 2 (by 3-4 of the 200 test images
    # on either side): the bisection asks for 3, 1, 2 and its bracket is (1, 2).
    rule = BreakdownRule(10.0, "test_acc")
    every = ImpRun(_bisection_config(tiny_config, "all"), tmp_path / "all", data=tiny_data)
    every.run()
    config = _bisection_config(tiny_config, "breakdown")
    bisect = ImpRun(config, tmp_path / "bisect", data=tiny_data)
    bisect.run()
    assert all(r.networks.keys() == {"ticket"} for r in bisect.records())
    # Interrupted after two controls, then continued by a new process.
    points = bisect.measure_controls(rule)
    next(points), next(points)
    resumed = list(ImpRun(config, tmp_path / "bisect", data=tiny_data).measure_controls(rule))
    assert len(resumed) == 4
    for name in ("reinit", "random_prune"):
        trained = [r.level for r in run_records(tmp_path / "bisect") if name in r.networks]
        assert trained == [1, 2, 3], (name, trained)
        full = locate(every.records(), name, rule)
        found = locate(bisect.records(), name, rule)
        assert (full.low.position, full.high.position) == (1, 2), [p.accuracy for p in full.points]
        assert (found.low.position, found.high.position) == (1, 2)
        assert found.density_est == full.density_est
        # The same networks: a control at a level is the same training either way.
        for record in bisect.records():
            if name in record.networks:
                twin = next(r for r in every.records() if r.level == record.level)
                assert without_time(record.networks[name]) == without_time(twin.networks[name])
    assert list(ImpRun(config, tmp_path / "bisect", data=tiny_data).measure_controls(rule)) == []
    assert math.isclose(bisect.records()[0].density, 1.0)


def test_imp_command_measures_controls_by_bisection(tiny_config, tmp_path: Path, capsys) -> None:
    import yaml

    from sweeps.cli import main

    config = _bisection_config(tiny_config, "breakdown").model_dump(mode="json")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert main(["imp", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "out"),
                 "--tolerance", "10"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines()
            if line.strip() and line.split()[0].isdigit()}
    assert sorted(rows) == ["0", "1", "2", "3", "4", "5"]
    assert rows["4"][3:] == ["-", "-"] and rows["5"][3:] == ["-", "-"]  # never needed
    assert rows["2"][3] != "-" and rows["1"][4] != "-"
    assert "breakdown sparsity (test_acc, 10 pp): ticket" in out
    assert "reinit" in out.split("breakdown sparsity")[1]
    assert main(["imp", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "out"),
                 "--tolerance", "-1"]) == 2
    assert "--tolerance: -1 is negative" in capsys.readouterr().err
