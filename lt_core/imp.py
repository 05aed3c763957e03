"""Iterative Magnitude Pruning, one level at a time, resumable from the run directory.

Level 0 trains the dense network from ``init.pt`` and saves the weights at the rewind point k in
``rewind.pt``. Level l > 0 prunes (from level l-1's final weights, or level 0's in one-shot mode)
and retrains iterations k..T by the ``retrain`` mode:
  rewind     survivors back to ``rewind.pt``, LR schedule from k (k = 0: the original LTH)
  lr_rewind  keep the pruned final weights, replay the LR schedule from k
  finetune   keep the pruned final weights, train at the schedule's final LR
Controls are trained beside the ticket at every pruned level. A level is finished when its
``metrics.json`` exists; everything before it is skipped on restart, and unfinished training
resumes from its last evaluation checkpoint.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path
from typing import Callable

import torch

from lt_core.config import ExperimentConfig, config_from_dict
from lt_core.controls import CONTROLS
from lt_core.data import TensorData, load_dataset
from lt_core.lr_schedule import lr_schedule
from lt_core.masks import Masks, apply_masks, dense_masks, density, prune, pruning_plan
from lt_core.models import build_model
from lt_core.rundir import (atomic_save, atomic_write_json, atomic_write_text, level_dir,
                            load_tensors, read_json)
from lt_core.steps import Step
from lt_core.training import TrainOutcome, steps_per_epoch, total_iterations, train

# Called at every evaluation: (level, run name "ticket" or a control, iteration, end, record).
ProgressFn = Callable[[int, str, int, int, dict], None]


class RunDirMismatch(ValueError):
    """The output directory holds a run with a different config."""


def derived_seed(seed: int, *parts: object) -> int:
    return zlib.crc32(repr((seed, *parts)).encode()) & 0x7FFFFFFF


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class ImpRun:
    """One IMP experiment bound to its run directory."""

    def __init__(self, config: ExperimentConfig, out: str | Path,
                 progress: ProgressFn | None = None, data: TensorData | None = None):
        self.config = config
        self.out = Path(out).expanduser().resolve()
        self.progress = progress
        self.device = resolve_device(config.device)
        if config.threads:
            torch.set_num_threads(config.threads)
        self._data = data
        self._claim_directory()

    # ---- set-up -------------------------------------------------------------------------------
    def _claim_directory(self) -> None:
        config_file = self.out / "config.yaml"
        if config_file.exists():
            import yaml

            existing = config_from_dict(yaml.safe_load(config_file.read_text()), str(config_file))
            if existing != self.config:
                raise RunDirMismatch(f"{self.out}: holds a run with a different config; "
                                     f"use another --out or delete it")
        else:
            atomic_write_text(self.config.to_yaml(), config_file)

    @property
    def data(self) -> TensorData:
        if self._data is None:
            self._data = load_dataset(self.config.data, self.device)
        return self._data

    def _fresh_model(self, seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        model = build_model(self.config.model.name, self.data.input_shape, self.data.num_classes)
        return model.to(self.device)

    def _model_from(self, state: dict) -> torch.nn.Module:
        model = build_model(self.config.model.name, self.data.input_shape, self.data.num_classes)
        model.load_state_dict(state)
        return model.to(self.device)

    def _load(self, path: Path):
        return load_tensors(path, self.device)

    # ---- levels -------------------------------------------------------------------------------
    @property
    def levels(self) -> range:
        return range(self.config.imp.levels + 1)

    def finished_levels(self) -> list[int]:
        return [lv for lv in self.levels if (level_dir(self.out, lv) / "metrics.json").exists()]

    def level_metrics(self, level: int) -> dict:
        return read_json(level_dir(self.out, level) / "metrics.json")

    def run(self) -> list[dict]:
        return [self.run_level(level) for level in self.levels]

    def run_level(self, level: int) -> dict:
        """Train one level (and its controls) unless already finished; returns its metrics."""
        folder = level_dir(self.out, level)
        if (folder / "metrics.json").exists():
            return self.level_metrics(level)
        if level > 0 and not (level_dir(self.out, level - 1) / "metrics.json").exists():
            raise RuntimeError(f"level {level} needs level {level - 1} to be finished first")
        masks = self._masks_for(level)
        atomic_save(masks, folder / "mask.pt")
        ticket = self._train_once(level, "ticket", folder, self._ticket_start(level), masks)
        metrics = {"level": level, "density": density(masks), "sparsity": 1 - density(masks),
                   **ticket}
        controls = {}
        if level > 0:
            for index, name in enumerate(self.config.imp.controls):
                seed = derived_seed(self.config.seed, level, name)
                generator = torch.Generator().manual_seed(seed)
                start = CONTROLS[name](self._ticket_start(level), masks,
                                       lambda: self._fresh_model(seed).state_dict(), generator)
                result = self._train_once(level, name, folder / "controls" / name, start.state,
                                          start.masks)
                controls[name] = {"level": level, "density": density(start.masks),
                                  "sparsity": 1 - density(start.masks), **result}
        metrics["controls"] = controls
        atomic_write_json(metrics, folder / "metrics.json")
        return metrics

    def _masks_for(self, level: int) -> Masks:
        if level == 0:
            return dense_masks(self._init_model())
        stored = level_dir(self.out, level) / "mask.pt"
        if stored.exists():
            return self._load(stored)
        model = self._init_model()
        plan = pruning_plan(model, self.config.pruning)
        if self.config.pruning.mode == "one_shot":
            weights = self._load(level_dir(self.out, 0) / "final.pt")
            rate = self.config.pruning.rate
            target = self.config.pruning.target_density
            exponent = math.log(target) / math.log(1 - rate) if target else level
            return prune(weights, dense_masks(model), plan, exponent)
        previous = level_dir(self.out, level - 1)
        return prune(self._load(previous / "final.pt"), self._load(previous / "mask.pt"), plan,
                     level)

    def _init_model(self) -> torch.nn.Module:
        init_file = self.out / "init.pt"
        if init_file.exists():
            return self._model_from(self._load(init_file))
        model = self._fresh_model(self.config.seed)
        atomic_save(model.state_dict(), init_file)
        return model

    def _ticket_start(self, level: int) -> dict:
        """The weights a level's ticket trains from (before masking)."""
        if level == 0:
            return self._init_model().state_dict()
        if self.config.imp.retrain == "rewind":
            return self._load(self.out / "rewind.pt")
        source = 0 if self.config.pruning.mode == "one_shot" else level - 1
        return self._load(level_dir(self.out, source) / "final.pt")

    def _train_once(self, level: int, name: str, folder: Path, state: dict,
                    masks: Masks) -> dict:
        """Train one network of a level (ticket or control), or read its stored result."""
        result_file = folder / ("ticket.json" if name == "ticket" else "metrics.json")
        if result_file.exists() and (folder / "final.pt").exists():
            return read_json(result_file)
        model = self._model_from(state)
        apply_masks(model, masks)
        suffix = "_ticket" if name == "ticket" else ""
        checkpoint = folder / f"checkpoint{suffix}.pt"
        outcome = self._train(level, name, model, masks, checkpoint)
        atomic_save(model.state_dict(), folder / "final.pt")
        atomic_write_json(outcome.history, folder / f"history{suffix}.json")
        atomic_write_json(outcome.metrics(), result_file)
        checkpoint.unlink(missing_ok=True)
        return outcome.metrics()

    def _train(self, level: int, name: str, model: torch.nn.Module, masks: Masks,
               checkpoint: Path) -> TrainOutcome:
        train_config = self.config.train
        spe = steps_per_epoch(self.data, train_config)
        schedule = lr_schedule(train_config, spe)
        end = total_iterations(self.data, train_config)
        rewind_iter = min(Step.parse(self.config.imp.rewind).iterations(spe), end)
        start = 0 if level == 0 else rewind_iter
        lr_at = schedule
        if level > 0 and self.config.imp.retrain == "finetune":
            final_lr = schedule(end - 1)
            lr_at = lambda _it: final_lr  # noqa: E731
        snapshot = None
        if level == 0 and not (self.out / "rewind.pt").exists():
            snapshot = lambda m: atomic_save(m.state_dict(), self.out / "rewind.pt")  # noqa: E731
        on_eval = None
        if self.progress:
            on_eval = lambda record: self.progress(level, name, record["iteration"], end,  # noqa
                                                   record)
        return train(model, masks, self.data, train_config, seed=self.config.seed, start=start,
                     end=end, lr_at=lr_at, checkpoint=checkpoint, snapshot_at=rewind_iter,
                     on_snapshot=snapshot, on_eval=on_eval)
