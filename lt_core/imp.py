"""Iterative pruning, one level at a time, resumable from the run directory.

Level 0 trains the dense network from ``init.pt`` and saves the weights at the rewind point k in
``rewind.pt``. Level l > 0 prunes by ``pruning.criterion`` (lt_core.pruning; magnitude is IMP)
in ``pruning.structure`` units, then trains. What it prunes depends on ``pruning.mode``:
  iterative  level l-1's final weights and masks, further
  one_shot   level 0's final weights, from dense
  at_init    the initial weights, from dense; the mask then trains once from init
It retrains iterations k..T by the ``retrain`` mode (lt_core.retrain):
  rewind     survivors back to ``rewind.pt``, LR schedule from k (k = 0: the original LTH)
  lr_rewind  keep the pruned final weights, replay the LR schedule from k
  finetune   keep the pruned final weights, train at the schedule's final LR
Controls are trained beside the ticket at every pruned level (``imp.control_levels: all``), or
afterwards only at the levels that locate their own breakdown (``breakdown``: bisection, see
``lt_core.breakdown.next_level_to_measure``).

Refinement points (``run_sublevel``) lie between grid levels a and a+1: pruned from level a's
final weights (level 0's in one-shot mode) at the fractional exponent a + s/1000, so that s = 0
would give level a's mask and s = 1000 level a+1's. Each is retrained exactly as a level.

A level is finished when its ``metrics.json`` exists; everything before it is skipped on restart,
and unfinished training resumes from its last evaluation checkpoint.

A network whose training loss becomes NaN/inf stops at once and its result says ``status:
diverged`` (lt_core.training). A diverged ticket ends the pruning: its level is the run's last
(deeper levels would prune by the magnitudes of weights that blew up), also on restart. A diverged
control only marks its own result.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch

from lt_core.breakdown import (BreakdownRule, bracket_candidates, dense_accuracy, levels_still_asked,
                               next_level_to_measure, refinement_plan)
from lt_core.config import ExperimentConfig, config_from_dict
from lt_core.analyses import ANALYSES, AnalysisInputs
from lt_core.controls import CONTROLS, ControlInputs, ControlStart
from lt_core.data import TensorData, load_dataset
from lt_core.errors import RunDirMismatch
from lt_core.group_training import TrainTask, fuse_chosen, train_tasks
from lt_core.levels import SUBLEVELS, LevelRecord
from lt_core.lr_schedule import lr_schedule
from lt_core.masks import Masks, apply_masks, dense_masks, density, pruning_plan
from lt_core.metrics import TICKET
from lt_core.models import build_model
from lt_core.optim import FusedOptimizer
from lt_core.pruning import ScoreContext, prune
from lt_core.retrain import RETRAIN_MODES
from lt_core.rundir import (analysis_curves, analysis_dir, analysis_result_file, atomic_save,
                            atomic_write_json, atomic_write_text, config_file, copy_files,
                            final_file, init_file, level_dir, load_tensors, mask_file,
                            metrics_file, NetworkFiles, network_files, point_dirs, read_json,
                            rewind_file, rewind_optimizer_file, run_records, transfer_file)
from lt_core.steps import Step
from lt_core.training import TrainOutcome, steps_per_epoch, total_iterations
from lt_core.transfer import transfer_levels, transferred_masks, transferred_state

# Called at every evaluation: (level, run name "ticket" or a control, iteration, end, record).
ProgressFn = Callable[[int, str, int, int, dict], None]


def derived_seed(seed: int, *parts: object) -> int:
    return zlib.crc32(repr((seed, *parts)).encode()) & 0x7FFFFFFF


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def describe_device(device: torch.device) -> str:
    """``cpu``, or ``cuda:0 (NVIDIA H100 80GB HBM3)``: what a run trains on, as recorded."""
    if device.type != "cuda":
        return device.type
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def grid_levels(config: ExperimentConfig) -> list[int]:
    """An experiment's grid levels: 0..imp.levels, or those of its transferred tickets."""
    if config.imp.ticket_from is not None:
        return transfer_levels(config)
    return list(range(config.imp.levels + 1))


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
        self._levels: list[int] | None = None
        self._fuses: bool | None = None
        self._claim_directory()

    # ---- set-up -------------------------------------------------------------------------------
    def _claim_directory(self) -> None:
        path = config_file(self.out)
        if path.exists():
            import yaml

            existing = config_from_dict(yaml.safe_load(path.read_text()), str(path))
            if existing != self.config:
                raise RunDirMismatch(f"{self.out}: holds a run with a different config; "
                                     f"use another --out or delete it")
        else:
            atomic_write_text(self.config.to_yaml(), path)

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

    def _masked_model(self, state: dict, masks: Masks) -> torch.nn.Module:
        """A network from ``state`` with ``masks`` applied: what a training starts from."""
        model = self._model_from(state)
        apply_masks(model, masks)
        return model

    def _load(self, path: Path):
        return load_tensors(path, self.device)

    # ---- levels -------------------------------------------------------------------------------
    @property
    def transfer(self) -> Path | None:
        """The run directory whose tickets this run trains (``imp.ticket_from``), or None."""
        source = self.config.imp.ticket_from
        return None if source is None else Path(source)

    @property
    def levels(self) -> list[int]:
        """The grid levels: 0..imp.levels, or those of the transferred tickets."""
        if self._levels is None:
            fixed = transfer_file(self.out)  # a transfer's levels, fixed when it began
            self._levels = (read_json(fixed)["levels"] if fixed.exists() and self.transfer
                            else grid_levels(self.config))
        return self._levels

    def _previous(self, level: int) -> int | None:
        """The grid level before ``level`` (None for the first)."""
        before = [lv for lv in self.levels if lv < level]
        return before[-1] if before else None

    def finished_levels(self) -> list[int]:
        return [lv for lv in self.levels if metrics_file(level_dir(self.out, lv)).exists()]

    def diverged_level(self) -> int | None:
        """The grid level whose ticket diverged (the run's last), or None."""
        for level in self.finished_levels():
            if LevelRecord.from_metrics(self.level_metrics(level)).diverged(TICKET):
                return level
        return None

    def level_metrics(self, level: int, sublevel: int = 0) -> dict:
        return read_json(metrics_file(level_dir(self.out, level, sublevel)))

    def records(self) -> list[LevelRecord]:
        """Every finished level and refinement point in the run directory, in level order."""
        return run_records(self.out)

    def run(self) -> list[dict]:
        return list(self.train_levels())

    def train_levels(self) -> Iterator[dict]:
        """Each grid level's metrics in turn (training those not finished); the last is the
        one whose ticket diverged, if one did."""
        for level in self.levels:
            metrics = self.run_level(level)
            yield metrics
            if LevelRecord.from_metrics(metrics).diverged(TICKET):
                return

    def run_level(self, level: int) -> dict:
        """Train one level's ticket (and its controls, with ``control_levels: all``) unless
        already finished; returns its metrics."""
        folder = level_dir(self.out, level)
        if metrics_file(folder).exists():
            return self.level_metrics(level)
        before = self._previous(level)
        if before is not None and not metrics_file(level_dir(self.out, before)).exists():
            raise RuntimeError(f"level {level} needs level {before} to be finished first")
        if before is not None and LevelRecord.from_metrics(
                self.level_metrics(before)).diverged(TICKET):
            raise RuntimeError(f"level {level}: the ticket diverged at level {before}, "
                               f"which ends the pruning")
        self.train_point_fused(level)
        masks = self._masks_for(level)
        ticket = self._trained(level, 0, TICKET, self._ticket_start(level), masks)
        metrics = {"level": level, "density": density(masks), "sparsity": 1 - density(masks),
                   **ticket, "controls": {}}
        if level > 0 and self.config.imp.control_levels == "all":
            for name in self.config.imp.controls:
                metrics["controls"][name] = self._train_control(level, 0, name, masks)
        atomic_write_json(metrics, metrics_file(folder))
        return metrics

    def add_control(self, level: int, name: str) -> dict:
        """Train control ``name`` at a finished pruned level (unless it has it); the level's
        updated metrics."""
        metrics = self.level_metrics(level)
        if name not in metrics["controls"]:
            masks = self._load(mask_file(level_dir(self.out, level)))
            metrics["controls"][name] = self._train_control(level, 0, name, masks)
            atomic_write_json(metrics, metrics_file(level_dir(self.out, level)))
        return metrics

    def measure_controls(self, rule: BreakdownRule) -> Iterator[dict]:
        """``control_levels: breakdown``: once the ticket's levels are trained, each control at
        the levels a bisection over its own breakdown needs; yields each level's metrics as a
        control is added to it."""
        finished = self.finished_levels()
        deepest = max(finished, default=0)
        for name in self.config.imp.controls:
            while (level := next_level_to_measure(self._measured(name, rule), deepest)) is not None:
                yield self.add_control(level, name)

    def _measured(self, network: str, rule: BreakdownRule) -> dict[int, bool]:
        """Grid level -> within tolerance, for the pruned levels where ``network`` was trained."""
        records = [r for r in self.records() if r.sublevel == 0]
        threshold = rule.threshold(dense_accuracy(records, rule.metric))
        return {r.level: rule.within(r.accuracy(network, rule.metric), threshold)
                for r in records if r.level >= 1 and network in r.networks}

    # ---- refinement ---------------------------------------------------------------------------
    def refine(self, rule: BreakdownRule, networks: Iterable[str], steps: int) -> Iterator[dict]:
        """Train the refinement points ``refinement_plan`` asks for; yields each one's metrics."""
        for task in refinement_plan(self.records(), networks, rule, steps):
            yield self.run_sublevel(task.level, task.sublevel, task.networks)

    def run_sublevel(self, level: int, sublevel: int, networks: Iterable[str]) -> dict:
        """Train the given networks at the refinement point ``sublevel``/1000 of a level past
        grid level ``level`` (which must be finished); returns the point's metrics."""
        if not 0 < sublevel < SUBLEVELS:
            raise ValueError(f"sublevel {sublevel} is not between 1 and {SUBLEVELS - 1}")
        if self.transfer is not None:
            raise ValueError("a transferred run has only its source's levels: nothing to refine")
        if not metrics_file(level_dir(self.out, level)).exists():
            raise RuntimeError(f"refining past level {level} needs level {level} finished first")
        folder = level_dir(self.out, level, sublevel)
        networks = list(networks)
        self.train_point_fused(level, sublevel, networks)
        masks = self._masks_for(level, sublevel)
        metrics = (read_json(metrics_file(folder)) if metrics_file(folder).exists() else
                   {"level": level, "sublevel": sublevel, "density": density(masks),
                    "sparsity": 1 - density(masks), "controls": {}})
        for network in networks:
            if network == TICKET and "test_acc" not in metrics:
                metrics.update(self._trained(level, sublevel, TICKET,
                                             self._ticket_start(level, sublevel), masks))
            elif network != TICKET and network not in metrics["controls"]:
                metrics["controls"][network] = self._train_control(level, sublevel, network, masks)
        # Keys in a stable order: the point, the ticket, then the controls.
        metrics = {**{k: v for k, v in metrics.items() if k != "controls"},
                   "controls": metrics["controls"]}
        atomic_write_json(metrics, metrics_file(folder))
        return metrics

    # ---- masks and starting weights ----------------------------------------------------------
    def _exponent(self, level: int, sublevel: int = 0) -> float:
        """Levels of pruning at ``rate`` a point is from dense (layer rates alike)."""
        position = level + sublevel / SUBLEVELS
        target = self.config.pruning.target_density
        if target is not None:
            return position * math.log(target) / math.log(1 - self.config.pruning.rate)
        return position

    def _source_level(self, level: int, sublevel: int) -> int:
        """The grid level a pruned point is pruned from (and, without rewinding, starts from)."""
        if self.config.pruning.mode != "iterative":
            return 0
        return level - 1 if sublevel == 0 else level

    def _pruning_files(self, level: int, sublevel: int) -> list[Path]:
        """What a pruned point's masks are made from: the weights that are scored, and (for
        iterative pruning) the masks pruned further; otherwise the masks start dense."""
        mode = self.config.pruning.mode
        if mode == "at_init":
            return [init_file(self.out)]
        source = level_dir(self.out, self._source_level(level, sublevel))
        if mode == "one_shot":
            return [final_file(source)]
        return [final_file(source), mask_file(source)]

    def _start_file(self, level: int, sublevel: int = 0) -> Path:
        """What a point's ticket starts from: init.pt (dense, or pruned at init), rewind.pt
        (weight rewinding) or its source level's final weights (lr_rewind, finetune)."""
        if (level == 0 and sublevel == 0) or self.config.pruning.mode == "at_init" or \
                self.transfer is not None:
            return init_file(self.out)
        if RETRAIN_MODES[self.config.imp.retrain].rewinds_weights:
            return rewind_file(self.out)
        return final_file(level_dir(self.out, self._source_level(level, sublevel)))

    def inputs(self, level: int, sublevel: int = 0) -> list[Path]:
        """Every run-directory file that training at a point reads (besides config.yaml): its
        stored masks, or what they are pruned from; and what its ticket starts from. The controls
        read nothing more. A restart elsewhere needs these to continue."""
        own = mask_file(level_dir(self.out, level, sublevel))
        if level == 0 and sublevel == 0:
            return [init_file(self.out)]
        masks = [own] if own.exists() else self._pruning_files(level, sublevel)
        return [*masks, self._start_file(level, sublevel)]

    def files_to_continue(self, rule: BreakdownRule,
                          refine: tuple[Iterable[str], int] | None = None) -> list[Path]:
        """Every file a restart of this run elsewhere needs to finish it as if uninterrupted:
        config, init and rewind weights, every point's metrics.json, and the inputs of whatever
        may still be trained. That is the next level; with ``control_levels: breakdown``, every
        level a control's bisection may still ask for; with ``refine`` (networks, steps), the
        refinement points' sources, and while a refined control's bisection is open the weights
        of every level that may become its bracket. The files that exist, each once."""
        files = [config_file(self.out), init_file(self.out), rewind_file(self.out),
                 rewind_optimizer_file(self.out), transfer_file(self.out)]
        if self.transfer is not None:  # every transferred mask (stored when the run began)
            files += [mask_file(level_dir(self.out, level)) for level in self.levels]
        for _, _, folder in point_dirs(self.out):
            if metrics_file(folder).exists():  # a finished point: its summary and curves
                files += [metrics_file(folder), *analysis_curves(folder)]
        last = max(self.finished_levels(), default=-1)
        following = [level for level in self.levels if level > last]
        if following and self.diverged_level() is None:
            files += self.inputs(following[0])
        bisecting = self.config.imp.control_levels == "breakdown" and last >= 1
        known = {name: self._measured(name, rule) for name in self.config.imp.controls
                 if bisecting}
        for name, measured in known.items():
            for level in sorted(levels_still_asked(measured, last)):
                files += self.inputs(level)
        if refine is not None and last >= 1:
            networks, steps = refine
            for task in refinement_plan(self.records(), networks, rule, steps):
                files += self.inputs(task.level, task.sublevel)
            for name in set(networks) & set(known):
                for level in sorted(bracket_candidates(known[name], last)):
                    folder = level_dir(self.out, level)
                    files += [final_file(folder), mask_file(folder)]
        return [path for path in dict.fromkeys(files) if path.exists()]

    def _masks_for(self, level: int, sublevel: int = 0) -> Masks:
        """The point's masks: stored, or made now by the criterion (and stored)."""
        stored = mask_file(level_dir(self.out, level, sublevel))
        if self.transfer is not None and not stored.exists():
            self._init_model()  # stores the transferred masks of every level
            if not stored.exists():
                raise RuntimeError(f"{self.out}: the transferred mask of level {level} is "
                                   f"missing ({stored.name} in {stored.parent.name})")
        if stored.exists():
            return self._load(stored)
        model = self._init_model()
        if level == 0 and sublevel == 0:
            masks = dense_masks(model)
        else:
            weights, *previous = self._pruning_files(level, sublevel)
            model.load_state_dict(self._load(weights))
            start = self._exponent(self._source_level(level, sublevel)) if previous else 0.0
            seed = derived_seed(self.config.seed, level, sublevel, "prune")
            pruning = self.config.pruning
            context = ScoreContext(model, self._load(previous[0]) if previous else
                                   dense_masks(model), self.data, self.config.train.batch_size,
                                   pruning.score_batches, torch.Generator().manual_seed(seed))
            masks = prune(pruning.criterion, context, self._plan(model), start,
                          self._exponent(level, sublevel), pruning.rounds)
        atomic_save(masks, stored)
        return masks

    def _plan(self, model: torch.nn.Module):
        return pruning_plan(model, self.config.pruning)

    def _init_model(self) -> torch.nn.Module:
        path = init_file(self.out)
        if path.exists():
            return self._model_from(self._load(path))
        model = self._fresh_model(self.config.seed)
        if self.transfer is not None:  # masks and levels first: init.pt marks the transfer made
            for level in self.levels:
                generator = torch.Generator().manual_seed(
                    derived_seed(self.config.seed, level, "transfer"))
                source = self._load(mask_file(level_dir(self.transfer, level)))
                atomic_save(transferred_masks(source, model, generator),
                            mask_file(level_dir(self.out, level)))
            atomic_write_json({"source": str(self.transfer), "levels": self.levels},
                              transfer_file(self.out))
            model.load_state_dict(transferred_state(self._load(rewind_file(self.transfer)),
                                                    model))
        atomic_save(model.state_dict(), path)
        return model

    def _ticket_start(self, level: int, sublevel: int = 0) -> dict:
        """The weights a point's ticket trains from (before masking)."""
        if level == 0 and sublevel == 0:
            return self._init_model().state_dict()
        return self._load(self._start_file(level, sublevel))

    # ---- training -----------------------------------------------------------------------------
    def _control_start(self, level: int, sublevel: int, name: str, masks: Masks) -> ControlStart:
        """What control ``name`` trains at a point: deterministic in (seed, point, name)."""
        seed = (derived_seed(self.config.seed, level, name) if sublevel == 0 else
                derived_seed(self.config.seed, level, sublevel, name))
        model = build_model(self.config.model.name, self.data.input_shape, self.data.num_classes)
        return CONTROLS[name](ControlInputs(
            self._ticket_start(level, sublevel), masks,
            lambda: self._fresh_model(seed).state_dict(), torch.Generator().manual_seed(seed),
            self._plan(model)))

    def _train_control(self, level: int, sublevel: int, name: str, masks: Masks) -> dict:
        start = self._control_start(level, sublevel, name, masks)
        result = self._trained(level, sublevel, name, start.state, start.masks)
        point = {"level": level, **({"sublevel": sublevel} if sublevel else {}),
                 "density": density(start.masks), "sparsity": 1 - density(start.masks)}
        return {**point, **result}

    def _trained(self, level: int, sublevel: int, name: str, state: dict, masks: Masks) -> dict:
        """Train one network of a point (or read its stored result), then run the study's
        analyses on it (``imp.analyses``, for the networks in ``imp.analyses_on``)."""
        result = self._train_network(level, sublevel, name, state, masks)
        if name in self.config.imp.analyses_on:
            for analysis in self.config.imp.analyses:
                result = {**result, **self._analyse(analysis, level, sublevel, name, masks,
                                                    result)}
        return result

    def _analyse(self, analysis: str, level: int, sublevel: int, name: str, masks: Masks,
                 result: dict) -> dict:
        """One analysis of one trained network, or its stored measurements."""
        folder = analysis_dir(level_dir(self.out, level, sublevel), analysis, name)
        if analysis_result_file(folder).exists():
            return read_json(analysis_result_file(folder))
        final = self._model_from(self._load(network_files(level_dir(self.out, level, sublevel),
                                                          name).final))

        def train_copy(seed: int) -> tuple[torch.nn.Module, TrainOutcome]:
            return self._train_copy(level, sublevel, name, masks, folder, seed)

        measured = ANALYSES[analysis](AnalysisInputs(
            self.config, self.data, name, masks, final, result, train_copy,
            self._analysis_seed(level, sublevel, name, analysis), folder))
        atomic_write_json(measured, analysis_result_file(folder))
        return measured

    def _analysis_seed(self, level: int, sublevel: int, name: str, analysis: str) -> int:
        """The seed an analysis of one network at one point gets (its copy's data order)."""
        return derived_seed(self.config.seed, level, sublevel, name, analysis)

    def _network_start(self, level: int, sublevel: int, name: str,
                       masks: Masks | None = None) -> tuple[dict, Masks]:
        """The weights a network of a point trains from and its masks: the ticket's, or a
        control's (made from the ticket's start and the point's ``masks``, read when not
        given)."""
        masks = self._masks_for(level, sublevel) if masks is None else masks
        if name == TICKET:
            return self._ticket_start(level, sublevel), masks
        start = self._control_start(level, sublevel, name, masks)
        return start.state, start.masks

    def _train_copy(self, level: int, sublevel: int, name: str, masks: Masks, folder: Path,
                    seed: int) -> tuple[torch.nn.Module, TrainOutcome]:
        """A second copy of a network from its start with the data order of ``seed``: from the
        rewind point with the point's masks (the dense level's copy from ``rewind.pt``); the
        stored copy when it is finished, resumed when interrupted."""
        files = copy_files(folder)
        if files.result.exists() and files.final.exists():
            model = self._model_from(self._load(files.final))
            history = read_json(files.history)
            return model, TrainOutcome(**read_json(files.result), history=history)
        dense = level == 0 and sublevel == 0
        state = (self._load(rewind_file(self.out)) if dense else
                 self._network_start(level, sublevel, name)[0])
        model = self._masked_model(state, masks)
        # The dense network went through the rewind point with its optimizer's state; its copy
        # continues from that state (pruned levels restart both copies with a fresh optimizer).
        saved = rewind_optimizer_file(self.out)
        optimizer_state = self._load(saved) if dense and saved.exists() else None
        outcome = self._train(level, sublevel, f"{name}/copy", model, masks, files.checkpoint,
                              seed=seed, from_rewind=True, optimizer_state=optimizer_state)
        self._store(files, model, outcome)
        return model, outcome

    def _train_network(self, level: int, sublevel: int, name: str, state: dict,
                       masks: Masks) -> dict:
        """Train one network of a point (ticket or control), or read its stored result."""
        files = network_files(level_dir(self.out, level, sublevel), name)
        if files.result.exists() and files.final.exists():
            return read_json(files.result)
        model = self._masked_model(state, masks)
        outcome = self._train(level, sublevel, name, model, masks, files.checkpoint)
        self._store(files, model, outcome)
        return outcome.metrics()

    def _train(self, level: int, sublevel: int, name: str, model: torch.nn.Module, masks: Masks,
               checkpoint: Path, seed: int | None = None, from_rewind: bool = False,
               optimizer_state: dict | None = None) -> TrainOutcome:
        """Train a network of a point to the end (``_task``)."""
        return self._task(level, sublevel, name, model, masks, checkpoint, seed, from_rewind,
                          optimizer_state).train_alone(self.data, self.config.train)

    def _task(self, level: int, sublevel: int, name: str, model: torch.nn.Module, masks: Masks,
              checkpoint: Path, seed: int | None = None, from_rewind: bool = False,
              optimizer_state: dict | None = None) -> TrainTask:
        """The training of a network of a point: pruned points (and, with ``from_rewind``, any
        point) from the rewind iteration, the dense level from 0; data order by ``seed`` (the
        experiment's by default)."""
        train_config = self.config.train
        spe = steps_per_epoch(self.data, train_config)
        schedule = lr_schedule(train_config, spe)
        end = total_iterations(self.data, train_config)
        rewind_iter = min(Step.parse(self.config.imp.rewind).iterations(spe), end)
        pruned = level > 0 or sublevel > 0
        start = rewind_iter if pruned or from_rewind else 0
        lr_at = schedule
        if pruned:
            lr_at = RETRAIN_MODES[self.config.imp.retrain].lr_at(schedule, end)
        snapshot = None
        if not pruned and not from_rewind and not rewind_file(self.out).exists():
            snapshot = self._save_rewind_point
        on_eval = None
        if self.progress:
            label = name if not sublevel else f"{name}@{level}.{sublevel:03d}"
            on_eval = lambda record: self.progress(level, label, record["iteration"], end,  # noqa
                                                   record)
        seed = self.config.seed if seed is None else seed
        return TrainTask(model, masks, seed, start, end, lr_at, checkpoint, rewind_iter,
                         snapshot, on_eval, optimizer_state)

    # ---- fused training -----------------------------------------------------------------------
    def fuses(self) -> bool:
        """Whether this run trains a point's networks fused (``train.fuse``, lt_core.fused)."""
        if self._fuses is None:
            model = build_model(self.config.model.name, self.data.input_shape,
                                self.data.num_classes)
            self._fuses = fuse_chosen(self.config.train.fuse, model, self.device)
        return self._fuses

    def point_tasks(self, level: int, sublevel: int = 0,
                    networks: Iterable[str] | None = None) -> list[TrainTask]:
        """The trainings a point still needs, ready to train together: each unfinished network
        (by default the ticket and, with ``control_levels: all``, the controls) and, at a pruned
        point, the copies its analyses train; none for a network the point's metrics record. A
        task stores its network's files when done."""
        if networks is None:
            networks = [TICKET]
            if (level or sublevel) and self.config.imp.control_levels == "all":
                networks += list(self.config.imp.controls)
        folder = level_dir(self.out, level, sublevel)
        recorded = (LevelRecord.from_metrics(read_json(metrics_file(folder))).networks
                    if metrics_file(folder).exists() else {})
        networks = [name for name in networks if name not in recorded]
        if not networks:  # all measured (a resume kit has only the point's metrics.json)
            return []
        masks = self._masks_for(level, sublevel)
        tasks = []
        for name in networks:
            files = network_files(folder, name)
            if not (files.result.exists() and files.final.exists()):
                start, net_masks = self._network_start(level, sublevel, name, masks)
                model = self._masked_model(start, net_masks)
                task = self._task(level, sublevel, name, model, net_masks, files.checkpoint)
                tasks.append(self._storing(task, files))
            if (level or sublevel) and name in self.config.imp.analyses_on:
                tasks += self._copy_tasks(level, sublevel, name)
        return tasks

    def _copy_tasks(self, level: int, sublevel: int, name: str) -> list[TrainTask]:
        """The unfinished copies the analyses of one network of a pruned point train."""
        tasks = []
        for analysis in self.config.imp.analyses:
            folder = analysis_dir(level_dir(self.out, level, sublevel), analysis, name)
            files = copy_files(folder)
            trains_copy = getattr(ANALYSES[analysis], "trains_copy", False)
            if not trains_copy or analysis_result_file(folder).exists() or (
                    files.result.exists() and files.final.exists()):
                continue
            start, masks = self._network_start(level, sublevel, name)
            model = self._masked_model(start, masks)
            seed = self._analysis_seed(level, sublevel, name, analysis)
            task = self._task(level, sublevel, f"{name}/copy", model, masks, files.checkpoint,
                              seed=seed, from_rewind=True)
            tasks.append(self._storing(task, files))
        return tasks

    def _storing(self, task: TrainTask, files: NetworkFiles) -> TrainTask:
        """``task``, storing its network's files when it finishes."""
        task.on_done = lambda outcome: self._store(files, task.model, outcome)  # noqa: E731
        return task

    def _store(self, files: NetworkFiles, model: torch.nn.Module, outcome: TrainOutcome) -> None:
        """A trained network's files; its checkpoint goes last."""
        atomic_save(model.state_dict(), files.final)
        atomic_write_json(outcome.history, files.history)
        atomic_write_json(outcome.metrics(), files.result)
        files.checkpoint.unlink(missing_ok=True)

    def train_point_fused(self, level: int, sublevel: int = 0,
                          networks: Iterable[str] | None = None) -> None:
        """Train a point's unfinished networks as one fused group (when ``train.fuse`` chooses
        it); ``run_level``/``run_sublevel`` then find them trained."""
        if self.fuses():
            train_tasks(self.point_tasks(level, sublevel, networks), self.data,
                        self.config.train)

    def _save_rewind_point(self, model: torch.nn.Module, optimizer: FusedOptimizer) -> None:
        """The weights at the rewind point (``rewind.pt``, written last); with analyses, the
        optimizer's state there too."""
        if self.config.imp.analyses:
            atomic_save(optimizer.state_dict(), rewind_optimizer_file(self.out))
        atomic_save(model.state_dict(), rewind_file(self.out))


def train_together(runs: list[ImpRun], keep_going: Callable[[ImpRun, dict], bool] = lambda r, m: True
                   ) -> Iterator[tuple[ImpRun, dict]]:
    """The grid levels of several runs of one configuration (its seeds: same config but the
    seed), level by level: at each level the networks of every run still going train as one
    fused group (when ``train.fuse`` chooses it), then each run records the level. Yields (run,
    the level's metrics) in run order. A run stops after the level where its ticket diverged,
    or where ``keep_going`` says no."""
    going = list(runs)
    for level in runs[0].levels:
        if not going:
            return
        if going[0].fuses():
            tasks = [task for run in going for task in run.point_tasks(level)]
            train_tasks(tasks, going[0].data, going[0].config.train)
        for run in list(going):
            metrics = run.run_level(level)
            yield run, metrics
            if LevelRecord.from_metrics(metrics).diverged(TICKET) or not keep_going(run,
                                                                                    metrics):
                going.remove(run)
