"""instability: is training from the rewind point stable to SGD noise? (Frankle et al. 2020,
"Linear Mode Connectivity and the Lottery Ticket Hypothesis".)

A second copy of the network is trained from the same start (the rewind point, the same masks)
to the same end with another data order (and augmentation order). Both final networks are then
evaluated at ``instability.points`` evenly spaced points on the straight line between them,
w(α) = (1 - α) w₁ + α w₂ (``torch.lerp``: exactly w₁ at α = 0 and w₂ at α = 1; pruned weights,
zero in both, stay zero on the whole line). The *error barrier* is the highest error on the line
minus the mean of the two endpoints' errors, in percentage points: ``instability`` on the test
split, ``instability_train`` on the first ``instability.train_examples`` training examples.

Networks with BatchNorm: interpolated weights do not come with matching running statistics, so
at every interior point the statistics are reset and recomputed (a cumulative average, no
momentum, in train mode, no augmentation) from the same training examples, in batches of
``train.batch_size``. The endpoints keep the statistics they were trained with: α = 0 and α = 1
are the two trained networks exactly.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from lt_core.analyses.base import AnalysisInputs
from lt_core.metrics import COPY_TEST_ACC, INSTABILITY, INSTABILITY_TRAIN, STATUS_DIVERGED
from lt_core.rundir import atomic_write_json, curve_file

# lt_core.data and lt_core.training import the config, which imports this registry: they are
# imported where used.


def interpolate(a: nn.Module, b: nn.Module, alpha: float, into: nn.Module) -> nn.Module:
    """Load ``(1 - alpha) * a + alpha * b`` into ``into`` (integer buffers are taken from a)."""
    first, second = a.state_dict(), b.state_dict()
    into.load_state_dict({
        name: torch.lerp(value, second[name], alpha) if value.is_floating_point() else value
        for name, value in first.items()})
    return into


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, x: torch.Tensor, batch_size: int) -> bool:
    """Reset every BatchNorm's running statistics and recompute them as the plain average over
    ``x`` in batches of ``batch_size``; False (nothing done) when the model has none."""
    layers = batchnorm_layers(model)
    if not layers:
        return False
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative moving average: every batch weighs the same
    was_training = model.training
    model.train()
    for start in range(0, len(x), batch_size):
        model(x[start:start + batch_size])
    for layer, momentum in zip(layers, momenta):
        layer.momentum = momentum
    model.train(was_training)
    return True


def barrier(errors: list[float]) -> float:
    """The error barrier of a curve: its maximum minus the mean of its two ends."""
    return max(errors) - (errors[0] + errors[-1]) / 2


def error_curve(a: nn.Module, b: nn.Module, test, train, points: int, batch_size: int) -> dict:
    """Test and train error (percent) on two ``lt_core.data.Split``s at ``points`` evenly
    spaced points from a to b."""
    from lt_core.training import evaluate

    model = copy.deepcopy(a)
    alphas = [i / (points - 1) for i in range(points)]
    curve = {"alpha": alphas, "test_error": [], "train_error": [], "batchnorm_recomputed": False}
    for alpha in alphas:
        interpolate(a, b, alpha, model)
        if 0 < alpha < 1:
            curve["batchnorm_recomputed"] |= recompute_batchnorm(model, train.x, batch_size)
        curve["test_error"].append(100 * (1 - evaluate(model, test)[0]))
        curve["train_error"].append(100 * (1 - evaluate(model, train)[0]))
    return curve


class Instability:
    trains_copy = True

    def __call__(self, inputs: AnalysisInputs) -> dict:
        from lt_core.data import Split

        if inputs.result.get("status") == STATUS_DIVERGED:
            return {}
        second, outcome = inputs.train_copy(inputs.seed)
        measured = {COPY_TEST_ACC: outcome.test_acc}
        if outcome.status == STATUS_DIVERGED:  # no line to walk: a copy that blew up
            atomic_write_json({"status": STATUS_DIVERGED}, curve_file(inputs.folder))
            return measured
        options = inputs.config.instability
        train = inputs.data.train
        subset = Split(train.x[:options.train_examples], train.y[:options.train_examples])
        curve = error_curve(inputs.final, second, inputs.data.test, subset, options.points,
                            inputs.config.train.batch_size)
        atomic_write_json(curve, curve_file(inputs.folder))
        return {**measured, INSTABILITY: barrier(curve["test_error"]),
                INSTABILITY_TRAIN: barrier(curve["train_error"])}
