"""An independent oracle for the instability analysis (linear mode connectivity).

A small IMP run (LeNet-300-100, one pruned level, the reinit control, instability on the ticket
and on reinit) is trained once; then, for every analysed network, the error curve between the
network's saved final weights and its copy's is recomputed here in plain PyTorch (own
interpolation, own evaluation loop) and compared with what the run recorded: curve.json, the
barriers ``instability`` / ``instability_train`` and ``copy_test_acc``. Nothing is imported from
``lt_core.analyses``: the formulas are written out again on purpose.

A second test documents why networks with BatchNorm need their running statistics recomputed on
the path: a naive interpolation of two ResNets carries statistics that do not describe the
interpolated network's activations.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from lt_core.imp import ImpRun
from lt_core.models import build_model
from lt_core.rundir import (analysis_dir, copy_files, curve_file, level_dir, load_tensors,
                            mask_file, network_files, read_json)

POINTS = 7
TRAIN_EXAMPLES = 300
TOL = 1e-9
# (level, network) pairs analysed by the run: controls exist only at pruned levels.
ANALYSED = [(0, "ticket"), (1, "ticket"), (1, "reinit")]


# ---- the oracle: written out independently of lt_core.analyses ------------------------------
def oracle_interpolate(first: dict, second: dict, alpha: float) -> dict:
    """(1 - alpha) * first + alpha * second for floating tensors; other tensors from first. The
    ends are taken verbatim so that alpha = 0 and 1 are the two networks exactly."""
    if alpha == 0.0:
        return {name: value.clone() for name, value in first.items()}
    if alpha == 1.0:
        return {name: value.clone() for name, value in second.items()}
    return {name: ((1.0 - alpha) * value + alpha * second[name])
            if value.is_floating_point() else value.clone()
            for name, value in first.items()}


def oracle_error(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 97) -> float:
    """Percentage of misclassified examples, evaluated in eval mode without gradients."""
    model.eval()
    wrong = 0
    with torch.no_grad():
        for start in range(0, len(y), chunk):
            logits = model(x[start:start + chunk])
            wrong += int((logits.argmax(dim=1) != y[start:start + chunk]).sum().item())
    correct = len(y) - wrong
    return 100 * (1 - correct / len(y))


def oracle_barrier(errors: list[float]) -> float:
    """Highest error on the path minus the mean of the two ends' errors."""
    return max(errors) - (errors[0] + errors[-1]) / 2


def model_with(state: dict, input_shape, num_classes: int) -> nn.Module:
    model = build_model("lenet_300_100", input_shape, num_classes)
    model.load_state_dict(state)
    return model


# ---- the run, trained once for the module --------------------------------------------------
@pytest.fixture(scope="module")
def trained_run(tiny_config, tiny_data, tmp_path_factory) -> tuple[Path, dict[int, dict]]:
    config = tiny_config({
        # Evaluations every 5 iterations: a copy's best accuracy then differs from its final one,
        # so copy_test_acc is checked to be the final weights' accuracy, not the best seen.
        "train": {"eval_every": "5it"},
        "imp": {"levels": 1, "controls": ["reinit"], "analyses": ["instability"],
                "analyses_on": ["ticket", "reinit"]},
        "instability": {"points": POINTS, "train_examples": TRAIN_EXAMPLES},
    })
    assert config.model.name == "lenet_300_100"
    run = ImpRun(config, tmp_path_factory.mktemp("oracle") / "run", data=tiny_data)
    metrics = {level: run.run_level(level) for level in (0, 1)}
    return run.out, metrics


def network_metrics(metrics: dict, network: str) -> dict:
    return metrics if network == "ticket" else metrics["controls"][network]


def recompute(out: Path, level: int, network: str, data) -> dict:
    """The oracle's curve (and the two end states) for one analysed network."""
    folder = level_dir(out, level)
    first = load_tensors(network_files(folder, network).final)
    second = load_tensors(copy_files(analysis_dir(folder, "instability", network)).final)
    train_x, train_y = data.train.x[:TRAIN_EXAMPLES], data.train.y[:TRAIN_EXAMPLES]
    model = build_model("lenet_300_100", data.input_shape, data.num_classes)
    alphas = [i / (POINTS - 1) for i in range(POINTS)]
    test_error, train_error = [], []
    for alpha in alphas:
        model.load_state_dict(oracle_interpolate(first, second, alpha))
        test_error.append(oracle_error(model, data.test.x, data.test.y))
        train_error.append(oracle_error(model, train_x, train_y))
    return {"alpha": alphas, "test_error": test_error, "train_error": train_error,
            "first": first, "second": second}


@pytest.mark.parametrize(("level", "network"), ANALYSED,
                         ids=[f"level{lv}-{name}" for lv, name in ANALYSED])
def test_recorded_instability_matches_an_independent_recomputation(trained_run, tiny_data,
                                                                   level, network) -> None:
    out, all_metrics = trained_run
    metrics = network_metrics(all_metrics[level], network)
    folder = level_dir(out, level)
    analysis = analysis_dir(folder, "instability", network)
    stored = read_json(curve_file(analysis))
    mine = recompute(out, level, network, tiny_data)

    # LeNet has no BatchNorm: a plain interpolation is the whole story, nothing to recompute.
    probe = model_with(mine["first"], tiny_data.input_shape, tiny_data.num_classes)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in probe.modules())
    assert stored.get("batchnorm_recomputed") in (None, False)

    # (a) the stored curve is the oracle's, point by point.
    assert len(stored["alpha"]) == POINTS
    assert len(stored["test_error"]) == POINTS and len(stored["train_error"]) == POINTS
    for i in range(POINTS):
        assert abs(stored["alpha"][i] - mine["alpha"][i]) <= TOL, (i, stored["alpha"])
        assert abs(stored["test_error"][i] - mine["test_error"][i]) <= TOL, \
            (i, stored["test_error"], mine["test_error"])
        assert abs(stored["train_error"][i] - mine["train_error"][i]) <= TOL, \
            (i, stored["train_error"], mine["train_error"])

    # The ends are the two trained networks: the network's own final test accuracy at alpha 0.
    assert abs(mine["test_error"][0] - 100 * (1 - metrics["test_acc"])) <= TOL

    # (b) the barriers: max on the path minus the ends' mean, in percentage points.
    test_barrier = oracle_barrier(mine["test_error"])
    train_barrier = oracle_barrier(mine["train_error"])
    assert abs(metrics["instability"] - test_barrier) <= TOL, (metrics["instability"],
                                                               mine["test_error"])
    assert abs(metrics["instability_train"] - train_barrier) <= TOL, (
        metrics["instability_train"], mine["train_error"])
    # The recorded value is in the level's metrics.json and the analysis's result.json alike.
    on_disk = network_metrics(read_json(folder / "metrics.json"), network)
    assert abs(on_disk["instability"] - test_barrier) <= TOL
    result = read_json(analysis / "result.json")
    assert abs(result["instability"] - test_barrier) <= TOL
    assert abs(result["instability_train"] - train_barrier) <= TOL
    # A barrier never falls below zero (the max includes the ends) and these assertions tell the
    # right formula from a wrong one: the ends' mean is not zero, so "max without subtracting the
    # ends" would not pass; "min instead of max" is ruled out wherever the curve is not flat
    # (checked across the curves in the next test).
    assert test_barrier >= 0 and train_barrier >= 0
    ends = (mine["test_error"][0] + mine["test_error"][-1]) / 2
    assert ends > 1.0
    assert abs(metrics["instability"] - max(mine["test_error"])) > 1.0

    # (c) the copy's own test accuracy.
    copy_model = model_with(mine["second"], tiny_data.input_shape, tiny_data.num_classes)
    copy_acc = 1 - oracle_error(copy_model, tiny_data.test.x, tiny_data.test.y) / 100
    assert abs(metrics["copy_test_acc"] - copy_acc) <= TOL
    assert abs(mine["test_error"][-1] - 100 * (1 - metrics["copy_test_acc"])) <= TOL

    # (d) another data order gives other weights, but the same pruned weights are zero in both.
    masks = load_tensors(mask_file(folder))
    assert set(masks) and set(masks) <= set(mine["second"])
    for name, value in mine["first"].items():
        if value.is_floating_point():
            assert not torch.equal(value, mine["second"][name]), (level, network, name)
    for name, keep in masks.items():
        assert keep.dtype == torch.bool
        assert torch.all(mine["second"][name][~keep] == 0), (level, network, name)
        assert torch.all(mine["first"][name][~keep] == 0), (level, network, name)
        # Zero stays zero on the whole line.
        middle = oracle_interpolate(mine["first"], mine["second"], 0.5)[name]
        assert torch.all(middle[~keep] == 0), (level, network, name)
    pruned = sum(int((~keep).sum()) for keep in masks.values())
    if level == 0:
        assert pruned == 0
    else:
        assert pruned > 0  # level 1 really prunes: the zero check above is not vacuous


def test_the_oracle_discriminates_the_barrier_formula(trained_run, tiny_data) -> None:
    """Across the analysed networks, the recorded barriers agree with max - mean(ends) and not
    with the plausible wrong formulas (min instead of max; no subtraction of the ends)."""
    out, all_metrics = trained_run
    distinguishes_min = False
    for level, network in ANALYSED:
        metrics = network_metrics(all_metrics[level], network)
        mine = recompute(out, level, network, tiny_data)
        for key, errors in (("instability", mine["test_error"]),
                            ("instability_train", mine["train_error"])):
            right = oracle_barrier(errors)
            with_min = min(errors) - (errors[0] + errors[-1]) / 2
            no_ends = max(errors)
            assert abs(metrics[key] - right) <= TOL
            assert abs(metrics[key] - no_ends) > 1e-6, (level, network, key, errors)
            if abs(right - with_min) > 1e-6:
                distinguishes_min = True
                assert abs(metrics[key] - with_min) > 1e-6
    # At least one curve is not flat: a "min" barrier would have been caught.
    assert distinguishes_min


def test_copy_test_acc_is_the_final_weights_accuracy_not_the_best(trained_run, tiny_data) -> None:
    """copy_test_acc is the accuracy of the copy's saved final weights; in this run at least one
    copy had a better evaluation earlier, so recording the best one would be caught."""
    out, all_metrics = trained_run
    earlier_better = False
    for level, network in ANALYSED:
        metrics = network_metrics(all_metrics[level], network)
        folder = analysis_dir(level_dir(out, level), "instability", network)
        copy_model = model_with(load_tensors(copy_files(folder).final), tiny_data.input_shape,
                                tiny_data.num_classes)
        final_acc = 1 - oracle_error(copy_model, tiny_data.test.x, tiny_data.test.y) / 100
        assert abs(metrics["copy_test_acc"] - final_acc) <= TOL
        best = max(record["test_acc"] for record in read_json(copy_files(folder).history))
        earlier_better |= best > final_acc + 1e-6
    assert earlier_better


# ---- BatchNorm: why the statistics must be recomputed on the path ---------------------------
def test_naive_interpolation_of_batchnorm_statistics_is_stale() -> None:
    shape, classes = (3, 16, 16), 10
    torch.manual_seed(11)
    a = build_model("resnet20", shape, classes)
    torch.manual_seed(12)
    b = build_model("resnet20", shape, classes)
    generator = torch.Generator().manual_seed(13)
    # Different running statistics: one train-mode pass each, on different random inputs.
    with torch.no_grad():
        a.train()
        a(torch.randn(8, *shape, generator=generator) + 1.0)
        b.train()
        b(torch.randn(8, *shape, generator=generator) - 1.0)
    assert not torch.equal(a.bn.running_mean, b.bn.running_mean)
    assert not torch.equal(a.conv.weight, b.conv.weight)

    # Naive interpolation at alpha = 0.5: every floating tensor averaged, statistics included.
    first, second = a.state_dict(), b.state_dict()
    naive = build_model("resnet20", shape, classes)
    naive.load_state_dict({name: 0.5 * value + 0.5 * second[name]
                           if value.is_floating_point() else value
                           for name, value in first.items()})
    first_bn = next(m for m in naive.modules() if isinstance(m, nn.BatchNorm2d))
    assert first_bn is naive.bn  # the BatchNorm right after the first conv

    # What the interpolated network's first BatchNorm actually sees on some data.
    x = torch.randn(64, *shape, generator=generator) + 0.5
    with torch.no_grad():
        conv_out = naive.conv(x)
    actual_mean = conv_out.mean(dim=(0, 2, 3))
    stale = (first_bn.running_mean - actual_mean).abs().max().item()
    assert stale > 0.05, stale  # the naive statistics do not describe these activations

    # Recomputing (reset, cumulative average, one train-mode pass over the data) fixes it.
    fixed = copy.deepcopy(naive)
    for layer in fixed.modules():
        if isinstance(layer, nn.BatchNorm2d):
            layer.reset_running_stats()
            layer.momentum = None
    with torch.no_grad():
        fixed.train()
        fixed(x)
    assert torch.allclose(fixed.bn.running_mean, actual_mean, atol=1e-5)
    # And the network computes something else with stale statistics than with recomputed ones.
    naive.eval()
    fixed.eval()
    with torch.no_grad():
        assert not torch.allclose(naive(x), fixed(x), atol=1e-3)
