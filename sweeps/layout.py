"""How a sweep lies in MLflow: every tag, param and metric name, and the metric steps.

Written by ``sweeps.tracking`` (the Tune driver), read by ``sweeps.report``.

- parent run per sweep: tags ``lt.sweep`` (the study name), ``lt.role=parent``; params include
  ``breakdown.tolerance`` and ``breakdown.metric``.
- child run per trial (with ``base.seeds``, per seed of a trial: ``ray_trial_id`` is then
  ``<trial id>_seed<seed>``, ``seed_member_id``, and so is its run directory's name): tags ``lt.sweep``, ``lt.role=trial``, ``ray_trial_id``, ``lt.config``
  (the swept values but the seed: the seeds of one configuration share it),
  ``mlflow.parentRunId``, ``lt.run_dir`` (its run directory), ``lt.ticket_from`` (a transfer
  study's source run directory); ``lt.refine_failed`` when an ``lt-sweep refine`` of it failed;
  ``lt.device`` (what it trained on); ``lt.diverged`` when a network's training loss became NaN/inf (``ticket at level 3``).
  - A grid level's measurements sit at ``step = level``, under their flat names
    (``lt_core.metrics``: ``density``, ``test_acc``, ``reinit_test_acc``, ...).
  - A refinement point's sit under ``refine/<name>`` at ``step = 1000 * level + sublevel``
    (level 7.25 -> step 7250).
  - Per level, ``diverged`` (and ``<control>_diverged``): 1.0 where that network diverged.
  - The trial's breakdown, per network: ``breakdown_sparsity[_low|_high|_est]``,
    ``breakdown_censored``, ``breakdown_diverged``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from lt_core.levels import SUBLEVELS, LevelRecord
from lt_core.metrics import TICKET, split_metric_name

SWEEP_TAG = "lt.sweep"
RUN_NAME_TAG = "mlflow.runName"
ROLE_TAG = "lt.role"  # "parent" or "trial"
CONFIG_TAG = "lt.config"
TRIAL_TAG = "ray_trial_id"
REFINE_FAILED_TAG = "lt.refine_failed"  # on a trial run: the Tune trial of a refinement that failed
DIVERGED_TAG = "lt.diverged"  # on a trial run: where networks diverged (``divergence_tag``)
PARENT_RUN_TAG = "mlflow.parentRunId"
RUN_DIR_TAG = "lt.run_dir"  # on a trial run: its run directory (lt_core.rundir), on the driver's disk
# On a trial run of a transfer study: the run directory whose tickets it trains (imp.ticket_from).
TICKET_FROM_TAG = "lt.ticket_from"
WORKER_TAG = "lt.worker"  # on a trial run: where it last ran, "HOST (NODE_IP) pid PID"
DEVICE_TAG = "lt.device"  # on a trial run: what it trained on, "cpu" or "cuda:0 (NVIDIA H100)"
DEVICE_RESULT = "device"  # in a Tune result: the same
# In a Tune result of a trial that trains several seeds (``base.seeds``): the seed it is about.
SEED_RESULT = "seed"


def seed_member_id(trial_id: str, seed: int) -> str:
    """The id of one seed of a trial that trains several (``base.seeds``): its MLflow run's
    ``ray_trial_id`` and its run directory's name."""
    return f"{trial_id}_seed{seed}"
TOLERANCE_PARAM = "breakdown.tolerance"
METRIC_PARAM = "breakdown.metric"
REFINE_PREFIX = "refine/"
# The trial process's resources at each reported point, under the prefix of MLflow's own system
# metrics (the UI's "System metrics" section): cpu_utilization_percentage (of one core),
# process_memory_megabytes, and with a GPU gpu_0_memory_usage_megabytes and
# gpu_0_utilization_percentage.
SYSTEM_PREFIX = "system/"
_LEVEL_VALUES = ("density", "sparsity")


def is_point_value(name: str) -> bool:
    """A per-level value: the level's density or sparsity, or a network's measurement."""
    return name in _LEVEL_VALUES or split_metric_name(name) is not None


def point_key_step(name: str, level: int, sublevel: int = 0) -> tuple[str, int]:
    """The MLflow metric key and step of one value of one level or refinement point."""
    if sublevel:
        return REFINE_PREFIX + name, level * SUBLEVELS + sublevel
    return name, level


def point_of(key: str, step: int) -> tuple[str, int, int] | None:
    """(value name, level, sublevel) of a per-level metric key and step; None for others."""
    name = key.removeprefix(REFINE_PREFIX)
    if not is_point_value(name):
        return None
    if key.startswith(REFINE_PREFIX):
        level, sublevel = divmod(step, SUBLEVELS)
        return name, level, sublevel
    return name, step, 0


def point_entries(values: Mapping[str, float]) -> list[tuple[str, int, float]]:
    """(key, step, value) of the per-level values in a flat record (a Tune result), and of the
    trial's system metrics, at the point's step."""
    level, sublevel = int(values["level"]), int(values.get("sublevel", 0) or 0)
    entries = [(*point_key_step(name, level, sublevel), float(value))
               for name, value in values.items()
               if value is not None and is_point_value(name)]
    step = point_key_step("", level, sublevel)[1]
    entries += [(name, step, float(value)) for name, value in values.items()
                if name.startswith(SYSTEM_PREFIX) and value is not None]
    return entries


def records_from_history(entries: Iterable[tuple[str, int, float]]) -> list[LevelRecord]:
    """Level records from (key, step, value) metric entries; points without a density are
    left out (a value logged without its level)."""
    points: dict[tuple[int, int], dict[str, float]] = {}
    for key, step, value in entries:
        found = point_of(key, step)
        if found is not None:
            name, level, sublevel = found
            points.setdefault((level, sublevel), {"level": level, "sublevel": sublevel})[name] = value
    return [LevelRecord.from_flat(values) for _, values in sorted(points.items())
            if "density" in values]


def divergence_tag(records: Iterable[LevelRecord]) -> str:
    """Where a trial's networks diverged, the ticket first: ``ticket at level 3; reinit at levels
    1, 2.25``; empty when none did."""
    where: dict[str, list[str]] = {}
    for record in records:
        for network in record.networks:
            if record.diverged(network):
                where.setdefault(network, []).append(f"{record.position:g}")
    return "; ".join(f"{network} at level{'s' if len(levels) > 1 else ''} {', '.join(levels)}"
                     for network, levels in sorted(where.items(), key=lambda i: i[0] != TICKET))


def _compact(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_compact(v) for v in value) + "]"
    return str(value)


def short_keys(keys: Iterable[str]) -> dict[str, str]:
    """Each swept key by its last dotted part (``pruning.rate`` -> ``rate``), or whole where two
    keys would share it."""
    keys = list(keys)
    last = [key.rsplit(".", 1)[-1] for key in keys]
    return {key: short if last.count(short) == 1 else key for key, short in zip(keys, last)}


def trial_label(swept: Mapping[str, object], keys: Iterable[str] | None = None) -> str:
    """A trial by its swept values, the seed last: ``rate=0.4 scope=global seed=0`` (the MLflow
    run name and the console's row). ``keys``: every key the study sweeps, so that names stay
    unambiguous."""
    names = short_keys(sorted(keys if keys is not None else swept))
    ordered = sorted((k for k in swept if k in names and k != "seed"), key=names.get)
    parts = [f"{names[key]}={_compact(swept[key])}" for key in ordered]
    if "seed" in swept:
        parts.append(f"seed={_compact(swept['seed'])}")
    return " ".join(parts) or "default"


def configuration_slug(label: str) -> str:
    """A configuration label as the last part of an MLflow metric name, which allows letters,
    digits and ``_ - . / : `` and spaces: ``pruning.rate=0.4, pruning.scope=global`` ->
    ``rate_0.4 scope_global``."""
    parts = [part.strip() for part in label.split(",") if part.strip()]
    short = []
    for part in parts:
        key, _, value = part.partition("=")
        short.append(f"{key.rsplit('.', 1)[-1]}_{value}" if value else key)
    return re.sub(r"[^\w.\- ]", "_", " ".join(short)) or "default"


def tag_filter(tags: Mapping[str, str]) -> str:
    """An MLflow search filter matching every tag exactly."""
    def quoted(value: str) -> str:
        return f'"{value}"' if "'" in value else f"'{value}'"
    return " and ".join(f"tags.`{key}` = {quoted(str(value))}" for key, value in tags.items())
