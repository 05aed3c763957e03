"""lt_core's fused optimizers against torch.optim: bit-identical weights and state over several
steps with a changing LR, and state dicts that load in both directions."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lt_core.config import TrainConfig
from lt_core.optim import make_optimizer

CASES = {
    "sgd": dict(optimizer="sgd", lr=0.1),
    "sgd_momentum_wd": dict(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4),
    "sgd_nesterov_wd": dict(optimizer="sgd", lr=0.05, momentum=0.9, nesterov=True,
                            weight_decay=5e-4),
    "adam": dict(optimizer="adam", lr=1.2e-3),
    "adam_wd": dict(optimizer="adam", lr=1e-3, weight_decay=5e-4),
}
LRS = [1.0, 0.5, 0.5, 0.1, 0.7, 0.3]  # multiples of the base LR, one per step


def reference(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr,
                                weight_decay=config.weight_decay, fused=True)
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                           nesterov=config.nesterov, weight_decay=config.weight_decay, fused=True)


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 5))


def backward(model: nn.Module, step: int) -> None:
    generator = torch.Generator().manual_seed(step)
    x = torch.randn(16, 20, generator=generator)
    y = torch.randint(0, 5, (16,), generator=generator)
    for p in model.parameters():
        p.grad = None
    nn.functional.cross_entropy(model(x), y).backward()


def ours_step(model: nn.Module, optimizer, config: TrainConfig, step: int) -> None:
    backward(model, step)
    optimizer.step(config.lr * LRS[step])


def torch_step(model: nn.Module, optimizer, config: TrainConfig, step: int) -> None:
    backward(model, step)
    for group in optimizer.param_groups:
        group["lr"] = config.lr * LRS[step]
    optimizer.step()


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("case", list(CASES))
def test_bit_identical_to_torch_optim(case: str) -> None:
    config = TrainConfig(**CASES[case])
    ours_model, torch_model = net(), net()
    ours, theirs = make_optimizer(ours_model, config), reference(torch_model, config)
    for step in range(len(LRS)):
        ours_step(ours_model, ours, config, step)
        torch_step(torch_model, theirs, config, step)
        assert_same_weights(ours_model, torch_model)
    assert not torch.equal(ours_model[0].weight, net()[0].weight)  # it moved


@pytest.mark.parametrize("case", list(CASES))
def test_state_dict_round_trips_through_torch_optim(case: str) -> None:
    """Three steps, then save; resuming in ours from torch's state and in torch from ours both
    give the uninterrupted weights."""
    config = TrainConfig(**CASES[case])
    model = net()
    ours = make_optimizer(model, config)
    for step in range(3):
        ours_step(model, ours, config, step)
    torch_model = net()
    theirs = reference(torch_model, config)
    for step in range(3):
        torch_step(torch_model, theirs, config, step)

    # ours -> torch: a torch.optim resumed from our state continues exactly like ours
    resumed_torch_model = copy.deepcopy(model)
    resumed_torch = reference(resumed_torch_model, config)
    resumed_torch.load_state_dict({"state": copy.deepcopy(ours.state_dict()["state"]),
                                   "param_groups": theirs.state_dict()["param_groups"]})
    # torch -> ours
    resumed_model = copy.deepcopy(torch_model)
    resumed = make_optimizer(resumed_model, config)
    resumed.load_state_dict(copy.deepcopy(theirs.state_dict()))
    for step in range(3, len(LRS)):
        ours_step(model, ours, config, step)
        torch_step(resumed_torch_model, resumed_torch, config, step)
        ours_step(resumed_model, resumed, config, step)
    assert_same_weights(resumed_torch_model, model)
    assert_same_weights(resumed_model, model)


def test_saved_step_counters_are_per_parameter_copies() -> None:
    config = TrainConfig(optimizer="adam", lr=1e-3)
    model = net()
    optimizer = make_optimizer(model, config)
    ours_step(model, optimizer, config, 0)
    state = optimizer.state_dict()["state"]
    assert [float(s["step"]) for s in state.values()] == [1.0] * 4
    state[0]["step"] += 1  # a consumer editing one counter must not move the others
    assert [float(s["step"]) for s in state.values()] == [2.0, 1.0, 1.0, 1.0]
    ours_step(model, optimizer, config, 1)
    assert [float(s["step"]) for s in optimizer.state_dict()["state"].values()] == [2.0] * 4


def test_parameter_without_gradient_is_named() -> None:
    model = net()
    optimizer = make_optimizer(model, TrainConfig(optimizer="sgd", lr=0.1))
    backward(model, 0)
    model[2].bias.grad = None
    with pytest.raises(RuntimeError, match=r"parameters without a gradient: 2\.bias"):
        optimizer.step(0.1)
