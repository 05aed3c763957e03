"""The training loop: masked SGD/Adam over tensor batches, evaluation and epoch checkpoints.

Pruned weights stay exactly zero: their gradients are zeroed before every step, so momentum, Adam
moments and (coupled) weight decay all see zero and never revive them.

A network whose training loss becomes NaN or infinite has diverged: training stops at that step
(before its update), the weights are evaluated as they are, and the outcome's status says so.
Every recorded loss that is not finite is None (JSON null).
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
from lt_core.masks import Masks
from lt_core.metrics import STATUS_DIVERGED, STATUS_KEY, STATUS_OK
from lt_core.optim import FusedOptimizer, make_optimizer
from lt_core.rundir import atomic_save, load_tensors
from lt_core.steps import Step, iterations_per_epoch

EVAL_CHUNK = 2000


@dataclass
class TrainOutcome:
    test_acc: float
    best_test_acc: float
    test_loss: float | None  # None when not finite
    train_loss: float | None  # None when not finite (always, once diverged)
    early_stop_iter: int
    early_stop_acc: float
    train_seconds: float
    train_samples: int  # samples trained on: fewer than the schedule's when it diverged
    status: str = STATUS_OK  # STATUS_DIVERGED: the training loss became NaN/inf
    history: list[dict] = field(default_factory=list)

    def metrics(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "history"}


def steps_per_epoch(data: TensorData, config: TrainConfig) -> int:
    return iterations_per_epoch(len(data.train), config.batch_size)


def total_iterations(data: TensorData, config: TrainConfig) -> int:
    return Step.parse(config.length).iterations(steps_per_epoch(data, config))


@torch.no_grad()
def evaluate(model: nn.Module, split: Split) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) over a whole split."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=split.x.device)
    correct = torch.zeros((), device=split.x.device, dtype=torch.int64)
    for start in range(0, len(split), EVAL_CHUNK):
        logits = model(split.x[start:start + EVAL_CHUNK])
        labels = split.y[start:start + EVAL_CHUNK]
        loss_sum += F.cross_entropy(logits, labels, reduction="sum")
        correct += (logits.argmax(1) == labels).sum()
    model.train(was_training)
    return correct.item() / len(split), loss_sum.item() / len(split)


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def evaluation_record(iteration: int, train_loss: float, test: tuple[float, float],
                      val: tuple[float, float] | None) -> dict:
    """One history record from (accuracy, loss) on the test and validation splits; losses that
    are not finite are None."""
    record = {"iteration": iteration, "train_loss": _finite_or_none(train_loss),
              "test_acc": test[0], "test_loss": _finite_or_none(test[1])}
    if val is not None:
        record["val_acc"], record["val_loss"] = val[0], _finite_or_none(val[1])
    return record


def evaluation(model: nn.Module, data: TensorData, iteration: int, train_loss: float) -> dict:
    val = None if data.val is None else evaluate(model, data.val)
    return evaluation_record(iteration, train_loss, evaluate(model, data.test), val)


def train(
    model: nn.Module,
    masks: Masks,
    data: TensorData,
    config: TrainConfig,
    *,
    seed: int,
    start: int,
    end: int,
    lr_at: Callable[[int], float],
    checkpoint: Path | None = None,
    snapshot_at: int | None = None,
    on_snapshot: Callable[[nn.Module, FusedOptimizer], None] | None = None,
    on_eval: Callable[[dict], None] | None = None,
    optimizer_state: dict | None = None,
) -> TrainOutcome:
    """Train iterations [start, end) with the data order of an uninterrupted run from 0.

    Evaluates at every multiple of ``eval_every`` and at ``end``; saves ``checkpoint`` at each
    evaluation and resumes from it when it exists. ``on_snapshot`` sees the model and its
    optimizer when the iteration counter reaches ``snapshot_at`` (used to save the rewind
    point). ``optimizer_state`` starts the optimizer from a saved state (momentum, Adam's
    moments) instead of fresh, unless a checkpoint is resumed. A step whose
    loss is not finite ends training at once, unapplied: the last record then has
    ``status: diverged`` and ``train_loss`` None.
    """
    spe = steps_per_epoch(data, config)
    eval_every = Step.parse(config.eval_every).iterations(spe)
    optimizer = make_optimizer(model, config)
    params = dict(model.named_parameters())
    masked_params = [params[name] for name in masks]
    mask_values = [mask.to(params[name].dtype) for name, mask in masks.items()]
    iteration, history, seconds = start, [], 0.0
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    if checkpoint is not None and checkpoint.exists():
        state = load_tensors(checkpoint)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        iteration, history, seconds = state["iteration"], state["history"], state["seconds"]
    model.train()
    loss_sum, loss_count, plan, plan_epoch = 0.0, 0, None, -1
    clock = time.perf_counter()
    if iteration == snapshot_at and on_snapshot:
        on_snapshot(model, optimizer)
    while iteration < end:
        epoch, position = divmod(iteration, spe)
        if epoch != plan_epoch:
            plan = epoch_plan(len(data.train), seed, epoch, data.augment, data.train.x.device)
            plan_epoch = epoch
        x, y = batch(data.train, plan, position, config.batch_size, data.augment, data.pad_value)
        loss = F.cross_entropy(model(x), y)
        loss_value = loss.item()  # a sync per step: free on a CPU (on a GPU, waits for it)
        if not math.isfinite(loss_value):  # diverged: stop before this step's update
            seconds += time.perf_counter() - clock
            record = evaluation(model, data, iteration, math.nan)
            history.append({**record, STATUS_KEY: STATUS_DIVERGED})
            if on_eval:
                on_eval(history[-1])
            return outcome(history, seconds, (iteration - start) * config.batch_size)
        optimizer.zero_grad()
        loss.backward()
        if masked_params:
            torch._foreach_mul_([p.grad for p in masked_params], mask_values)
        optimizer.step(lr_at(iteration))
        loss_sum += loss_value
        loss_count += 1
        iteration += 1
        if iteration == snapshot_at and on_snapshot:
            on_snapshot(model, optimizer)
        if iteration % eval_every == 0 or iteration == end:
            seconds += time.perf_counter() - clock
            record = evaluation(model, data, iteration, loss_sum / loss_count)
            history.append(record)
            if checkpoint is not None and iteration < end:
                atomic_save(checkpoint_state(model.state_dict(), optimizer.state_dict(),
                                             iteration, history, seconds), checkpoint)
            if on_eval:
                on_eval(record)
            loss_sum, loss_count = 0.0, 0
            clock = time.perf_counter()
    return outcome(history, seconds, (end - start) * config.batch_size)


def checkpoint_state(model_state: dict, optimizer_state: dict, iteration: int,
                     history: list[dict], seconds: float) -> dict:
    """What an evaluation checkpoint holds (also written for networks trained fused)."""
    return {"model": model_state, "optimizer": optimizer_state, "iteration": iteration,
            "history": history, "seconds": seconds}


def outcome(history: list[dict], seconds: float, samples: int) -> TrainOutcome:
    if not history:
        raise ValueError("training ran no evaluation: the run has zero iterations")
    final = history[-1]
    stop_key = "val_loss" if "val_loss" in final else "test_loss"
    measured = [r for r in history if r[stop_key] is not None]
    early = min(measured, key=lambda r: r[stop_key]) if measured else final
    return TrainOutcome(
        test_acc=final["test_acc"],
        best_test_acc=max(r["test_acc"] for r in history),
        test_loss=final["test_loss"],
        train_loss=final["train_loss"],
        early_stop_iter=early["iteration"],
        early_stop_acc=early["test_acc"],
        train_seconds=seconds,
        train_samples=samples,
        status=final.get(STATUS_KEY, STATUS_OK),
        history=history,
    )
