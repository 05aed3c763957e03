"""SGD and Adam as one fused ATen kernel call per step, without torch.optim's per-step bookkeeping.

The arithmetic is torch.optim.SGD/Adam(fused=True)'s: the same kernels (``torch._fused_sgd_``,
``torch._fused_adam_``) get the same arguments, so the weights are bit-identical (tests check this
against torch.optim). What is left out is the Python around the kernel (hooks, profiler records,
per-parameter state lookups, grouping by device, a kernel per step to bump one step counter per
parameter): about 75 us per step on LeNet-300-100, 5% of a CPU training step, and sweeps run
millions of steps. Adam's weight decay is torch.optim.Adam's (L2 added to the gradient).

Every parameter must receive a gradient at every step (true of every model in the registry);
one that does not is a model bug and raises.

``state_dict`` uses torch.optim's layout (``{"state": {index: {"step" | "exp_avg" | "exp_avg_sq" |
"momentum_buffer": tensor}}}``), so checkpoints written by either load into both.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lt_core.config import TrainConfig


class FusedOptimizer:
    """The parameters, gradient reset, and state in torch.optim's state-dict layout."""

    state_keys: tuple[str, ...] = ()

    def __init__(self, model: nn.Module) -> None:
        named = list(model.named_parameters())
        self.names = [name for name, _ in named]
        self.params = [p for _, p in named]
        kinds = {(str(p.device), str(p.dtype)) for p in self.params}
        if len(kinds) > 1:
            raise ValueError(f"fused optimizer needs one device and dtype, got {sorted(kinds)}")
        self.buffers: dict[str, list[torch.Tensor]] = {}  # state key -> one tensor per parameter

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def _grads(self) -> list[torch.Tensor]:
        grads = [p.grad for p in self.params]
        if any(g is None for g in grads):
            missing = [n for n, g in zip(self.names, grads) if g is None]
            raise RuntimeError(f"parameters without a gradient: {', '.join(missing)}")
        return grads

    def state_dict(self) -> dict:
        if not self.buffers:
            return {"state": {}}
        return {"state": {i: {key: (values[i].clone() if key == "step" else values[i])
                              for key, values in self.buffers.items()}
                          for i in range(len(self.params))}}

    def load_state_dict(self, state_dict: dict) -> None:
        state = state_dict["state"]
        if not state or any(state[0].get(key) is None for key in self.state_keys):
            self.buffers = {}  # no step taken yet, or SGD without momentum
            return
        self.buffers = {key: [state[i][key].to(p.device) for i, p in enumerate(self.params)]
                        for key in self.state_keys}


class FusedSGD(FusedOptimizer):
    """SGD with optional momentum (heavy-ball or Nesterov) and L2 weight decay."""

    state_keys = ("momentum_buffer",)

    def __init__(self, model: nn.Module, momentum: float, nesterov: bool,
                 weight_decay: float) -> None:
        super().__init__(model)
        self.momentum, self.nesterov, self.weight_decay = momentum, nesterov, weight_decay

    def step(self, lr: float | Sequence[float]) -> None:
        grads = self._grads()
        first = self.momentum != 0 and not self.buffers
        if first:  # the kernel fills the buffers with the first gradients
            self.buffers = {"momentum_buffer": [torch.empty_like(p) for p in self.params]}
        buffers = self.buffers.get("momentum_buffer", [])
        for params, grads_, momenta, rate in _per_rate(lr, self.params, grads, buffers):
            torch._fused_sgd_(params, grads_, momenta, weight_decay=self.weight_decay,
                              momentum=self.momentum, lr=rate, dampening=0.0,
                              nesterov=self.nesterov, maximize=False, is_first_step=first)


class FusedAdam(FusedOptimizer):
    """Adam with torch's defaults (betas 0.9, 0.999; eps 1e-8) and L2 weight decay."""

    state_keys = ("step", "exp_avg", "exp_avg_sq")
    beta1, beta2, eps = 0.9, 0.999, 1e-8

    def __init__(self, model: nn.Module, weight_decay: float) -> None:
        super().__init__(model)
        self.weight_decay = weight_decay

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        if self.buffers:  # every parameter steps together: share one counter
            steps = self.buffers["step"]
            if any(not torch.equal(s, steps[0]) for s in steps):
                raise ValueError("optimizer state has parameters at different step counts")
            self.buffers["step"] = [steps[0].to(torch.float32)] * len(steps)

    def step(self, lr: float | Sequence[float]) -> None:
        grads = self._grads()
        if not self.buffers:
            # torch.optim keeps one float32 step counter per parameter, all equal; the kernel
            # only reads them, so one shared counter costs one add per step instead of N.
            counter = torch.zeros((), dtype=torch.float32, device=self.params[0].device)
            self.buffers = {"step": [counter] * len(self.params),
                            "exp_avg": [torch.zeros_like(p) for p in self.params],
                            "exp_avg_sq": [torch.zeros_like(p) for p in self.params]}
        steps = self.buffers["step"]
        steps[0].add_(1)
        for params, grads_, (averages, squares), rate in _per_rate(
                lr, self.params, grads, self.buffers["exp_avg"], self.buffers["exp_avg_sq"]):
            torch._fused_adam_(params, grads_, averages, squares, [], steps, lr=rate,
                               beta1=self.beta1, beta2=self.beta2,
                               weight_decay=self.weight_decay, eps=self.eps, amsgrad=False,
                               maximize=False)


def _per_rate(lr: float | Sequence[float], params: list[torch.Tensor],
              grads: list[torch.Tensor], *buffers: list[torch.Tensor]):
    """The kernel calls of one step: one with every tensor at a single learning rate; with one
    rate per network (parameters of fused networks, lt_core.fused: leading network dimension),
    one call per distinct network, on its slices. Yields (params, grads, buffers, lr), where
    buffers is the one list given, or a tuple of them."""
    pack = (lambda lists: lists[0]) if len(buffers) == 1 else tuple
    if not isinstance(lr, (int, float)) and len(set(lr)) == 1:
        lr = lr[0]
    if isinstance(lr, (int, float)):
        yield params, grads, pack(list(buffers)), lr
        return
    for index, rate in enumerate(lr):
        yield ([p.data[index] for p in params], [g[index] for g in grads],
               pack([[b[index] for b in values] for values in buffers]), rate)


def make_optimizer(model: nn.Module, config: TrainConfig) -> FusedOptimizer:
    if config.optimizer == "adam":
        return FusedAdam(model, config.weight_decay)
    return FusedSGD(model, config.momentum, config.nesterov, config.weight_decay)
