"""Shapes, prunable-weight names and parameter counts of every registered model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lt_core.models import MODELS, PrunableModel, build_model

MNIST_SHAPE = (1, 28, 28)
CIFAR_SHAPE = (3, 32, 32)
CASES = [("lenet_300_100", MNIST_SHAPE, 10)] + [
    (name, CIFAR_SHAPE, classes)
    for name in MODELS
    if name != "lenet_300_100"
    for classes in (10, 100)
]


def natural_shape(name: str) -> tuple[int, int, int]:
    """The input shape each model is meant for."""
    return MNIST_SHAPE if name.startswith("lenet") else CIFAR_SHAPE


def prunable_count(model: PrunableModel) -> int:
    """Number of entries in the model's prunable weights."""
    params = dict(model.named_parameters())
    return sum(params[name].numel() for name in model.prunable_names())


def total_count(model: PrunableModel) -> int:
    """Number of entries in all the model's parameters."""
    return sum(param.numel() for param in model.parameters())


def test_every_model_has_a_case() -> None:
    assert {name for name, _, _ in CASES} == set(MODELS)


@pytest.mark.parametrize(("name", "input_shape", "num_classes"), CASES)
def test_forward_output_shape(
    name: str, input_shape: tuple[int, int, int], num_classes: int
) -> None:
    model = build_model(name, input_shape, num_classes)
    with torch.no_grad():
        logits = model(torch.randn(2, *input_shape))
    assert logits.shape == (2, num_classes)


@pytest.mark.parametrize("name", list(MODELS))
def test_prunable_names_are_conv_and_linear_weights(name: str) -> None:
    model = build_model(name, natural_shape(name), 10)
    param_names = {param_name for param_name, _ in model.named_parameters()}
    prunable = model.prunable_names()
    assert prunable and len(prunable) == len(set(prunable))
    for weight_name in prunable:
        assert weight_name.endswith(".weight") and weight_name in param_names
        module = model.get_submodule(weight_name.removesuffix(".weight"))
        assert isinstance(module, (nn.Conv2d, nn.Linear))
    expected = {
        f"{module_name}.weight"
        for module_name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear))
    }
    assert set(prunable) == expected


@pytest.mark.parametrize("name", list(MODELS))
def test_output_weight_is_last_linear(name: str) -> None:
    model = build_model(name, natural_shape(name), 10)
    linear_names = [
        module_name
        for module_name, module in model.named_modules()
        if isinstance(module, nn.Linear)
    ]
    assert model.output_weight_name() in model.prunable_names()
    assert model.output_weight_name() == f"{linear_names[-1]}.weight"
    assert model.get_submodule(model.output_layer).out_features == 10


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("lenet_300_100", 784 * 300 + 300 * 100 + 100 * 10),
        # 3*64*9 + 64*64*9 convs, then 16*16*64 -> 256 -> 256 -> 10.
        ("conv2", 1_728 + 36_864 + 16_384 * 256 + 256 * 256 + 256 * 10),
        ("conv4", 1_728 + 36_864 + 73_728 + 147_456 + 8_192 * 256 + 256 * 256 + 256 * 10),
    ],
)
def test_prunable_weight_counts(name: str, expected: int) -> None:
    assert prunable_count(build_model(name, natural_shape(name), 10)) == expected


def test_known_totals() -> None:
    assert prunable_count(build_model("lenet_300_100", MNIST_SHAPE, 10)) == 266_200
    assert prunable_count(build_model("conv2", CIFAR_SHAPE, 10)) == 4_300_992
    assert 260_000 < total_count(build_model("resnet20", CIFAR_SHAPE, 10)) < 280_000
    assert 840_000 < total_count(build_model("resnet56", CIFAR_SHAPE, 10)) < 870_000


def test_unknown_model_names_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown model 'nope'.*resnet20"):
        build_model("nope", CIFAR_SHAPE, 10)
