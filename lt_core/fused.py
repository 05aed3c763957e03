"""K networks of one architecture as one wide network: the layers that hold weights are replaced by
fused layers whose parameters carry a leading network dimension (``fc1.weight`` of shape
(K, 300, 784)); the model's own ``forward`` runs unchanged.

Activations between layers keep every network's features side by side:
  convolutions and BatchNorm  (B, K*C, H, W): network k owns channels k*C..(k+1)*C; a convolution
                              is one grouped convolution, BatchNorm one call over K*C channels
                              (so statistics are per network and channel, as alone)
  linear layers               in (B, F) shared by all networks, (B, K*F) side by side (after a
                              flatten), or (K, B, F); out (K, B, O), a batched matmul
An input shared by every network (the same batch) enters the first layer once: the first linear
layer is one matmul with all K weight matrices stacked, the first convolution one convolution
with K*O filters. Pooling, ReLU, flatten and residual sums act per channel or element, so they
need no change. Logits come out as (K, B, classes).

Adding a layer type is a class here and a line in ``FUSED_LAYERS``; a model with a layer that
holds parameters or buffers and is not in it cannot be fused (``unfusable``).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


def _stacked(modules: list[nn.Module], name: str) -> torch.Tensor | None:
    values = [getattr(module, name) for module in modules]
    if values[0] is None:
        return None
    return torch.stack([value.detach() for value in values])


class FusedLinear(nn.Module):
    def __init__(self, layers: list[nn.Linear]) -> None:
        super().__init__()
        self.networks = len(layers)
        self.out_features, self.in_features = layers[0].weight.shape
        self.weight = nn.Parameter(_stacked(layers, "weight"))
        bias = _stacked(layers, "bias")
        self.bias = None if bias is None else nn.Parameter(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, o, f = self.networks, self.out_features, self.in_features
        if x.dim() == 2 and x.shape[1] == f:  # one input for all networks: one matmul
            out = F.linear(x, self.weight.view(k * o, f),
                           None if self.bias is None else self.bias.view(k * o))
            return out.view(x.shape[0], k, o).transpose(0, 1)
        if x.dim() == 2 and x.shape[1] == k * f:  # side by side, e.g. after a flatten
            x = x.view(x.shape[0], k, f).transpose(0, 1)
        elif x.dim() != 3 or x.shape[0] != k or x.shape[2] != f:
            raise ValueError(f"fused linear layer of {k} networks with {f} inputs got input "
                             f"of shape {tuple(x.shape)}")
        weight = self.weight.transpose(1, 2)
        if self.bias is None:
            return torch.bmm(x, weight)
        return torch.baddbmm(self.bias.unsqueeze(1), x, weight)


class FusedConv2d(nn.Module):
    def __init__(self, layers: list[nn.Conv2d]) -> None:
        super().__init__()
        first = layers[0]
        if first.padding_mode != "zeros" or isinstance(first.padding, str):
            raise ValueError("fused convolutions need numeric zero padding")
        if first.groups != 1:
            raise ValueError("fused convolutions of grouped convolutions are not supported")
        self.networks, self.in_channels = len(layers), first.in_channels
        self.stride, self.padding = first.stride, first.padding
        self.dilation = first.dilation
        self.weight = nn.Parameter(_stacked(layers, "weight"))
        bias = _stacked(layers, "bias")
        self.bias = None if bias is None else nn.Parameter(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == self.in_channels:  # one input for all networks: K*O filters over it
            groups = 1
        elif x.shape[1] == self.networks * self.in_channels:  # side by side: one group each
            groups = self.networks
        else:
            raise ValueError(f"fused convolution of {self.networks} networks with "
                             f"{self.in_channels} input channels got {x.shape[1]} channels")
        weight = self.weight.view(-1, *self.weight.shape[2:])
        bias = None if self.bias is None else self.bias.view(-1)
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, groups)


class FusedBatchNorm2d(nn.Module):
    def __init__(self, layers: list[nn.BatchNorm2d]) -> None:
        super().__init__()
        first = layers[0]
        if not (first.affine and first.track_running_stats) or first.momentum is None:
            raise ValueError("fused BatchNorm needs affine=True, track_running_stats=True and a "
                             "momentum")
        self.networks, self.num_features = len(layers), first.num_features
        self.momentum, self.eps = first.momentum, first.eps
        self.weight = nn.Parameter(_stacked(layers, "weight"))
        self.bias = nn.Parameter(_stacked(layers, "bias"))
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            self.register_buffer(name, _stacked(layers, name))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.networks * self.num_features:
            raise ValueError(f"fused BatchNorm of {self.networks} networks with "
                             f"{self.num_features} channels got {x.shape[1]} channels")
        if self.training:
            self.num_batches_tracked.add_(1)
        return F.batch_norm(x, self.running_mean.view(-1), self.running_var.view(-1),
                            self.weight.view(-1), self.bias.view(-1), self.training,
                            self.momentum, self.eps)


# layer type -> its fused form (built from the K networks' layers at one place in the model)
FUSED_LAYERS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Linear: FusedLinear,
    nn.Conv2d: FusedConv2d,
    nn.BatchNorm2d: FusedBatchNorm2d,
}


def _fusable_type(module: nn.Module) -> type[nn.Module] | None:
    return FUSED_LAYERS.get(type(module))


def unfusable(model: nn.Module) -> str | None:
    """Why ``model`` cannot be fused (a layer with state that has no fused form, or a setting
    the fused form does not compute), or None."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.groups != 1:
            return f"layer {name} is a grouped convolution"
        if isinstance(module, nn.BatchNorm2d) and module.momentum is None:
            return f"layer {name} averages its statistics cumulatively (momentum None)"
        if _fusable_type(module) is not None:
            continue
        own = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        if own:
            return f"layer {name or '(root)'} ({type(module).__name__}) has no fused form"
    return None


def has_convolutions(model: nn.Module) -> bool:
    return any(isinstance(module, nn.Conv2d) for module in model.modules())


def fuse_models(models: list[nn.Module]) -> nn.Module:
    """One module computing all ``models`` (same architecture) side by side, from their current
    weights and buffers; its state-dict names are the models' own, with a leading network
    dimension."""
    reason = unfusable(models[0])
    if reason:
        raise ValueError(f"cannot fuse {type(models[0]).__name__}: {reason}")
    fused = copy.deepcopy(models[0])
    for name, module in list(fused.named_modules()):
        kind = _fusable_type(module)
        if kind is None:
            continue
        layer = kind([model.get_submodule(name) for model in models])
        parent_name, _, attribute = name.rpartition(".")
        setattr(fused.get_submodule(parent_name), attribute, layer)
    return fused


def network_state(fused: nn.Module, index: int) -> dict[str, torch.Tensor]:
    """Network ``index``'s state dict (copies, not views of the fused tensors)."""
    return {name: value[index].clone() for name, value in fused.state_dict().items()}
