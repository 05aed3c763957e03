"""Several networks of one architecture trained together as one fused network (lt_core.fused).

Each network is a ``TrainTask``: what ``lt_core.training.train`` takes for it alone (its own
weights, masks, data order, optimizer state, schedule, checkpoint and callbacks). ``train_tasks``
trains them all and gives each the outcome, files and callbacks it would get alone: its
evaluation checkpoints are ``train``'s, so either can resume the other's.

Networks at the same iteration (and optimizer step count) train as one group: one forward and
backward for all, one optimizer call (one per network when their learning rates differ). When
every network of a group has the same data seed the batch is built once and shared; otherwise
each network's own batch sits side by side. A network that diverges, or reaches its end, leaves
the group and the rest go on; networks resumed at different iterations catch up one group at a
time. Each network's ``train_seconds`` is its share of the group's wall time.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lt_core.batches import batch, epoch_plan
from lt_core.config import TrainConfig
from lt_core.data import Split, TensorData
from lt_core.fused import fuse_models, has_convolutions, network_state, unfusable
from lt_core.masks import Masks
from lt_core.metrics import STATUS_DIVERGED, STATUS_KEY
from lt_core.optim import make_optimizer
from lt_core.rundir import atomic_save, load_tensors
from lt_core.steps import Step
from lt_core.training import (EVAL_CHUNK, TrainOutcome, checkpoint_state, evaluation,
                              evaluation_record, outcome, steps_per_epoch, train)


@dataclass
class TrainTask:
    """One network's training, as ``lt_core.training.train`` takes it. ``model`` holds the
    weights it starts from (masked) and, afterwards, its trained weights."""

    model: nn.Module
    masks: Masks
    seed: int
    start: int
    end: int
    lr_at: Callable[[int], float]
    checkpoint: Path | None = None
    snapshot_at: int | None = None
    on_snapshot: Callable | None = None
    on_eval: Callable[[dict], None] | None = None
    optimizer_state: dict | None = None
    on_done: Callable[[TrainOutcome], None] | None = None  # called with the outcome, at once

    def train_alone(self, data: TensorData, config: TrainConfig) -> TrainOutcome:
        result = train(self.model, self.masks, data, config, seed=self.seed, start=self.start,
                     end=self.end, lr_at=self.lr_at, checkpoint=self.checkpoint,
                     snapshot_at=self.snapshot_at, on_snapshot=self.on_snapshot,
                     on_eval=self.on_eval, optimizer_state=self.optimizer_state)
        if self.on_done:
            self.on_done(result)
        return result


def fuse_chosen(setting: str, model: nn.Module, device: torch.device) -> bool:
    """Whether ``train.fuse`` trains a point's networks fused. ``auto``: on a GPU always; on a CPU
    for networks without convolutions, where it pays (benchmarks/fused_speed.py: LeNet-300-100
    ×3 at 1.3× separate training on 2 cores; convolutions run slower grouped on a CPU)."""
    if setting == "off" or unfusable(model) is not None:
        return False
    return device.type == "cuda" or not has_convolutions(model)


def train_tasks(tasks: list[TrainTask], data: TensorData, config: TrainConfig,
                fuse: bool = True) -> list[TrainOutcome]:
    """Train every task to its end (fused unless ``fuse`` is False, or there is one task);
    outcomes in task order."""
    if not fuse or len(tasks) < 2 or any(task.start >= task.end for task in tasks):
        return [task.train_alone(data, config) for task in tasks]
    members = [_Member.start(task, data) for task in tasks]
    for member in members:
        member.snapshot_if_due()
    while pending := [m for m in members if m.outcome is None]:
        first = min(pending, key=lambda m: m.iteration)
        group = [m for m in pending
                 if m.iteration == first.iteration and m.phase() == first.phase()]
        later = [m.iteration for m in pending if m.iteration > first.iteration]
        _Group(group, data, config).train(stop=min(later, default=None))
    return [member.outcome for member in members]


@dataclass
class _Member:
    """One task's progress between groups: its weights live in ``task.model``."""

    task: TrainTask
    iteration: int
    history: list[dict]
    seconds: float
    optimizer_state: dict
    loss_sum: float = 0.0
    loss_count: int = 0
    outcome: TrainOutcome | None = field(default=None)

    @classmethod
    def start(cls, task: TrainTask, data: TensorData) -> "_Member":
        if task.checkpoint is not None and task.checkpoint.exists():
            state = load_tensors(task.checkpoint, data.train.x.device)
            task.model.load_state_dict(state["model"])
            return cls(task, state["iteration"], state["history"], state["seconds"],
                       state["optimizer"])
        return cls(task, task.start, [], 0.0, task.optimizer_state or {"state": {}})

    def phase(self) -> tuple:
        """What the optimizer state of networks trained together must share: whether it
        exists (SGD's first momentum step) and Adam's step count."""
        state = self.optimizer_state["state"]
        if not state:
            return ()
        return tuple(sorted((key, float(value)) if key == "step" else (key, None)
                            for key, value in state[0].items()))

    def snapshot_if_due(self) -> None:
        task = self.task
        if task.on_snapshot is not None and self.iteration == task.snapshot_at:
            task.on_snapshot(task.model, _SavedOptimizer(self.optimizer_state))

    def report(self) -> None:
        if self.task.on_eval:
            self.task.on_eval(self.history[-1])

    def finish(self, samples: int) -> None:
        """The network is done (its weights already in ``task.model``)."""
        self.outcome = outcome(self.history, self.seconds, samples)
        if self.task.on_done:
            self.task.on_done(self.outcome)


class _SavedOptimizer:
    """An optimizer's state as ``on_snapshot`` callers read it."""

    def __init__(self, state: dict) -> None:
        self._state = state

    def state_dict(self) -> dict:
        return self._state


class _Group:
    """Networks at one iteration trained as one fused network until one leaves."""

    def __init__(self, members: list[_Member], data: TensorData, config: TrainConfig) -> None:
        self.members, self.data, self.config = members, data, config
        self.fused = fuse_models([m.task.model for m in members])
        self.fused.train()
        self.optimizer = make_optimizer(self.fused, config)
        if self.optimizer.names != [n for n, _ in members[0].task.model.named_parameters()]:
            raise ValueError("fused parameters are not in the model's order")
        self.optimizer.load_state_dict(_stack_optimizer_states(
            [m.optimizer_state for m in members], len(self.optimizer.params)))
        params = dict(self.fused.named_parameters())
        names = list(members[0].task.masks)
        if any(list(m.task.masks) != names for m in members):
            raise ValueError("networks trained together must mask the same parameters")
        self.masked = [params[name] for name in names]
        self.mask_values = [torch.stack([m.task.masks[name] for m in members]).to(p.dtype)
                            for name, p in zip(names, self.masked)]
        self.seeds = [m.task.seed for m in members]
        # BatchNorm's running statistics move in every training forward: kept from before each
        # step, so that networks going on after another diverged redo that step from them.
        self.buffers = [b for b in self.fused.buffers() if b.is_floating_point()]
        self.counters = [b for b in self.fused.buffers() if not b.is_floating_point()]
        self.saved = [torch.empty_like(b) for b in self.buffers + self.counters]
        self.spe = steps_per_epoch(data, config)
        self.eval_every = Step.parse(config.eval_every).iterations(self.spe)
        self._plans: dict[int, object] = {}
        self._plan_epoch = -1

    # ---- one step -----------------------------------------------------------------------------
    def _batch(self, iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The group's inputs (one shared batch, or each network's side by side in the channel
        dimension) and the labels of every network, network after network."""
        epoch, position = divmod(iteration, self.spe)
        if epoch != self._plan_epoch:
            device = self.data.train.x.device
            self._plans = {seed: epoch_plan(len(self.data.train), seed, epoch, self.data.augment,
                                            device) for seed in dict.fromkeys(self.seeds)}
            self._plan_epoch = epoch
        batches = {seed: batch(self.data.train, plan, position, self.config.batch_size,
                               self.data.augment, self.data.pad_value)
                   for seed, plan in self._plans.items()}
        if len(batches) == 1:
            x, y = next(iter(batches.values()))
            return x, y.repeat(len(self.members))
        return (torch.cat([batches[seed][0] for seed in self.seeds], 1),
                torch.cat([batches[seed][1] for seed in self.seeds]))

    def train(self, stop: int | None) -> None:
        """Train until a member finishes or diverges, or the group reaches ``stop`` (where
        other networks wait to join); then hand every member its weights and optimizer state."""
        members, k = self.members, len(self.members)
        iteration = members[0].iteration
        clock = time.perf_counter()
        while stop is None or iteration < stop:
            x, y = self._batch(iteration)
            if self.saved:
                torch._foreach_copy_(self.saved, self.buffers + self.counters)
            logits = self.fused(x)
            losses = F.cross_entropy(logits.flatten(0, 1), y, reduction="none").view(k, -1)
            losses = losses.mean(1)
            values = losses.tolist()  # one sync per step for all networks
            if not all(math.isfinite(v) for v in values):
                going = [k for k, v in enumerate(values) if math.isfinite(v)]
                if self.saved and going:  # the diverged keep the step's statistics, as alone
                    index = torch.tensor(going, device=self.saved[0].device)
                    for buffer, saved in zip(self.buffers + self.counters, self.saved):
                        buffer[index] = saved[index]
                self._share_time(clock)
                self._diverged([m for m, v in zip(members, values) if not math.isfinite(v)])
                return
            self.optimizer.zero_grad()
            losses.sum().backward()
            if self.masked:
                torch._foreach_mul_([p.grad for p in self.masked], self.mask_values)
            self.optimizer.step([m.task.lr_at(iteration) for m in members])
            iteration += 1
            for member, value in zip(members, values):
                member.iteration = iteration
                member.loss_sum += value
                member.loss_count += 1
            if any(m.task.on_snapshot and iteration == m.task.snapshot_at for m in members):
                self._hand_back()
                for member in members:
                    member.snapshot_if_due()
            due = [m for m in members if iteration % self.eval_every == 0 or
                   iteration == m.task.end]
            if due:
                self._share_time(clock)
                self._evaluate(due, iteration)
                clock = time.perf_counter()
                if any(m.outcome is not None for m in members):
                    break
        self._share_time(clock)
        self._hand_back()

    # ---- the members' records -----------------------------------------------------------------
    def _share_time(self, clock: float) -> None:
        elapsed = (time.perf_counter() - clock) / len(self.members)
        for member in self.members:
            member.seconds += elapsed

    def _hand_back(self) -> None:
        """Each member's weights into its own model, its optimizer state into its record."""
        state = self.optimizer.state_dict()
        for index, member in enumerate(self.members):
            member.task.model.load_state_dict(network_state(self.fused, index))
            member.optimizer_state = _network_optimizer_state(state, index)

    def _evaluate(self, due: list[_Member], iteration: int) -> None:
        test = evaluate_fused(self.fused, self.data.test, len(self.members))
        val = (None if self.data.val is None else
               evaluate_fused(self.fused, self.data.val, len(self.members)))
        optimizer = self.optimizer.state_dict()
        for member in due:
            index = self.members.index(member)
            member.history.append(evaluation_record(
                iteration, member.loss_sum / member.loss_count, test[index],
                None if val is None else val[index]))
            member.loss_sum, member.loss_count = 0.0, 0
            task = member.task
            if iteration == task.end:  # as alone: the last record reported, then the network done
                task.model.load_state_dict(network_state(self.fused, index))
                member.report()
                member.finish((task.end - task.start) * self.config.batch_size)
                continue
            if task.checkpoint is not None:
                atomic_save(checkpoint_state(network_state(self.fused, index),
                                             _network_optimizer_state(optimizer, index),
                                             iteration, member.history, member.seconds),
                            task.checkpoint)
            member.report()

    def _diverged(self, diverged: list[_Member]) -> None:
        """Networks whose loss is not finite stop before this step's update, as alone."""
        self._hand_back()
        for member in diverged:
            record = evaluation(member.task.model, self.data, member.iteration, math.nan)
            member.history.append({**record, STATUS_KEY: STATUS_DIVERGED})
            member.report()
            member.finish((member.iteration - member.task.start) * self.config.batch_size)


@torch.no_grad()
def evaluate_fused(fused: nn.Module, split: Split, networks: int) -> list[tuple[float, float]]:
    """(accuracy, mean cross-entropy) of each fused network over a whole split."""
    was_training = fused.training
    fused.eval()
    device = split.x.device
    loss_sum = torch.zeros(networks, device=device)
    correct = torch.zeros(networks, device=device, dtype=torch.int64)
    for start in range(0, len(split), EVAL_CHUNK):
        logits = fused(split.x[start:start + EVAL_CHUNK])  # (K, B, classes)
        labels = split.y[start:start + EVAL_CHUNK]
        losses = F.cross_entropy(logits.flatten(0, 1), labels.repeat(networks),
                                 reduction="none")
        loss_sum += losses.view(networks, -1).sum(1)
        correct += (logits.argmax(2) == labels).sum(1)
    fused.train(was_training)
    n = len(split)
    return [(c / n, s / n) for c, s in zip(correct.tolist(), loss_sum.tolist())]


def _stack_optimizer_states(states: list[dict], params: int) -> dict:
    """Networks' optimizer states (torch.optim layout, same phase) as one fused state."""
    if not states[0]["state"]:
        return {"state": {}}
    stacked = {}
    for index in range(params):
        entries = [state["state"][index] for state in states]
        stacked[index] = {key: (value if key == "step" else
                                torch.stack([entry[key] for entry in entries]))
                          for key, value in entries[0].items()}
    return {"state": stacked}


def _network_optimizer_state(state: dict, index: int) -> dict:
    """One network's slice of a fused optimizer state (copies)."""
    return {"state": {i: {key: (value.clone() if key == "step" else value[index].clone())
                          for key, value in entry.items()}
                      for i, entry in state["state"].items()}}
