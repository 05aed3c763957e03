"""Ray Tune wiring: start or join Ray, declare the Tuner for a study, run or restore it."""

from __future__ import annotations

import logging
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

import yaml

from lt_core.breakdown import grid_breakdown, refinement_plan
from lt_core.config import ConfigError
from lt_core.rundir import atomic_write_json, run_records
from sweeps.background import InBackground
from sweeps.signals import stop_on_signals, tune_run_over
from sweeps.study import (MAX_REFINE_STEPS, Study, check_networks, load_study,
                          refuse_refining_transfer)
from sweeps.trainable import REFINE_KEY, REPORTED_FILE, imp_trial, refine_trial, run_directory

STUDY_FILE = "lt_study.yaml"  # the resolved study, kept with the results for `lt-sweep resume`
REFINE_DIR = "refine"  # Tune's own state of the last `lt-sweep refine`, inside the results dir
# Set once this process started or joined Ray: the command then leaves without the interpreter's
# teardown (``sweeps.cli.entry``).
RAY_STARTED = threading.Event()


def experiment_dir(study: Study) -> Path:
    return study.storage_path / study.name


def start_ray(address: str | None, verbose: bool = False) -> None:
    """Start a local Ray, or join ``address`` / ``$RAY_ADDRESS``. Unless ``verbose``, the trials'
    own output stays in Ray's log files (the console shows one line per failed trial)."""
    # Tune's own CSV/JSON/TensorBoard loggers: every level is in MLflow and the run directory.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    import ray

    if not verbose:
        from sweeps.console import quiet_libraries

        quiet_libraries()
    if ray.is_initialized():  # joined already, to check the cluster's resources
        return
    options = {"log_to_driver": verbose, "logging_level": "INFO" if verbose else "ERROR"}
    address = address or os.environ.get("RAY_ADDRESS")
    RAY_STARTED.set()
    if address:
        ray.init(address=address, **options)
    else:
        # A new local Ray ("local": not a cluster `ray start` left running on this machine).
        # No idle workers prestarted: Tune's trial actors (with their own runtime_env) never use
        # them, and on a small machine their start slows Ray's and the trials'.
        ray.init(address="local", include_dashboard=False, **options,  # token: ray_environment
                 _system_config={"enable_worker_prestart": False,
                                 "prestart_worker_first_driver": False})
    stop_on_signals()  # again: Ray's core replaced SIGTERM's with one that aborts the driver


def stop_ray() -> None:
    """``ray.shutdown()``, without its one-second wait on a local Ray's autoscaler monitor: Ray
    stops the GCS first, then the monitor, whose SIGTERM handler reports to the GCS that is gone
    and hangs until Ray kills it a second later (Ray 2.60). The monitor is killed first here
    (it holds no state a finished sweep needs). Joined to a cluster, this process started none of
    these and only disconnects."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)  # this process's local Ray
    for info in (getattr(node, "all_processes", None) or {}).get("monitor", []):
        if info.process.poll() is None:
            info.process.kill()
            info.process.wait()
    ray.shutdown()


def ensure_resources(study: Study, address: str | None, verbose: bool = False,
                     wait: bool = False) -> None:
    """Before anything is started or written: each trial's CPUs and GPUs fit on a node of the
    cluster (joined here) or of this machine, unless ``wait`` (an autoscaling cluster)."""
    from sweeps.preflight import check_resources, cluster_nodes, local_node

    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        start_ray(address, verbose)  # joining a cluster starts nothing
        nodes, where = cluster_nodes(), f"the Ray cluster at {address}"
    else:
        nodes, where = [local_node()], "this machine (a local Ray)"
    if not wait:
        check_resources(study.resources.cpu, study.resources.gpu, nodes, where,
                        str(study.source_path), cluster=bool(address))


def make_searcher(study: Study):
    search = study.search
    if search.algorithm != "optuna":
        from ray.tune.search import BasicVariantGenerator

        return BasicVariantGenerator(random_state=search.seed,
                                     max_concurrent=search.max_concurrent or 0)
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from sweeps.samplers import SAMPLERS
    objectives = list(search.objective)
    metric = objectives if len(objectives) > 1 else objectives[0]
    mode = ["max"] * len(objectives) if len(objectives) > 1 else "max"
    searcher = OptunaSearch(metric=metric, mode=mode, sampler=SAMPLERS[search.sampler](
        seed=search.seed))
    if search.max_concurrent:
        searcher = ConcurrencyLimiter(searcher, max_concurrent=search.max_concurrent)
    return searcher


def trainable_for(study: Study, function=imp_trial, **parameters):
    from ray import tune

    resources = {"cpu": study.resources.cpu, "gpu": study.resources.gpu}
    return tune.with_resources(tune.with_parameters(function, study=study, **parameters),
                               resources)


def mlflow_logger(study: Study):
    """The driver's MLflow logger, connecting to the store, the experiment and the sweep's
    parent run in the background; it logs the sweep's summary in the background for a command
    that waits for it."""
    from sweeps.tracking import MlflowLevelLogger  # imports MLflow

    logger = MlflowLevelLogger(study, study.tracking_uri, study.experiment)
    logger.open_in_background()
    logger.background_summary = True  # the command waits for it (finish_summary)
    return logger


def console_for(study: Study):
    """The console view of a sweep (``sweeps.console``)."""
    from sweeps.console import SweepConsole
    from sweeps.tracking import sweep_networks

    return SweepConsole(study, sweep_networks(study), study.breakdown.metric)


def _run_config(study: Study, name: str, storage_path: Path, callbacks: list,
                verbose: bool = False):
    from ray import tune

    return tune.RunConfig(
        name=name,
        storage_path=str(storage_path),
        failure_config=tune.FailureConfig(max_failures=study.spec.run.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        callbacks=callbacks,
        verbose=1 if verbose else 0,  # Tune's own status table only with --verbose
    )


def build_tuner(study: Study, callbacks: list, verbose: bool = False):
    from ray import tune

    # reuse_actors: the second wave of trials runs in the first wave's warm worker processes.
    tune_config = tune.TuneConfig(search_alg=make_searcher(study),
                                  num_samples=study.search.num_samples, reuse_actors=True)
    return tune.Tuner(trainable_for(study), param_space=study.param_space(),
                      tune_config=tune_config,
                      run_config=_run_config(study, study.name, study.storage_path, callbacks,
                                             verbose))


def fit(tuner):
    """Run the Tuner; Ctrl-C or SIGTERM ends it with its state saved (``sweeps.signals``)."""
    try:
        return tuner.fit()
    finally:
        tune_run_over()


def save_resolved_study(study: Study) -> Path:
    """Write the study with every default and path resolved, for `lt-sweep resume`."""
    resolved = {
        **study.raw,
        "base": study.base,
        "tracking": {"uri": study.tracking_uri, "experiment": study.experiment},
        "run": {**study.raw.get("run", {}), "storage_path": str(study.storage_path)},
    }
    path = experiment_dir(study) / STUDY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(resolved, sort_keys=False))
    return path


def run_sweep(study: Study, address: str | None = None, verbose: bool = False,
              wait_for_resources: bool = False):
    """Run a study; returns (Tune's results, the MLflow logger with the sweep's report)."""
    ensure_resources(study, address, verbose, wait_for_resources)
    opening = InBackground(lambda: mlflow_logger(study))
    start_ray(address, verbose)
    save_resolved_study(study)
    logger = opening.result()
    tuner = build_tuner(study, [logger, console_for(study)], verbose)
    return fit(tuner), logger


def load_results(results_dir: Path, overrides: list[str] = ()) -> Study:
    """The study of an lt-sweep results directory (``STORAGE/NAME``), with ``key=value``
    overrides (``tracking.uri=...``)."""
    from ray import tune

    study_file = results_dir / STUDY_FILE
    if not tune.Tuner.can_restore(str(results_dir)) or not study_file.exists():
        raise ConfigError(f"{results_dir}: not an lt-sweep results directory "
                          f"(no {STUDY_FILE} and Tune state)")
    return load_study(study_file, overrides)


def _last_written(folder: Path) -> float:
    return max((path.stat().st_mtime for path in folder.rglob("*")), default=0.0)


def remake_missing_checkpoints(results_dir: Path) -> None:
    """Tune saves the experiment's state every few seconds, but deletes a trial's checkpoints
    beyond the last two (``num_to_keep``) as soon as a newer one arrives. A driver killed in
    between leaves a state that names checkpoints already deleted: restoring that trial fails
    ("Could not recover from checkpoint as it does not exist on storage anymore"), and so would
    deleting them later. Each such folder of an unfinished trial is made again: a copy of the
    trial's checkpoint written last but one, which is whole (the last may have been cut off by
    the kill; by time, not number: a resumed trial writes again over numbers its earlier run
    left), with its points reported emptied. The driver may not have received that checkpoint's
    last points before it died, so the trial reports every finished point again, and MLflow
    keeps each value once. A folder appears whole or not at all (made under a temporary name)."""
    for trial in sweep_trials(results_dir):
        if trial.status == "TERMINATED":
            continue
        manager = trial.run_metadata.checkpoint_manager
        named = [result for result in (*manager.best_checkpoint_results,
                                       manager.latest_checkpoint_result) if result is not None]
        trial_dir = results_dir / Path(trial.path).name  # where the results directory is now
        on_disk = sorted(trial_dir.glob("checkpoint_*"), key=_last_written)
        whole = on_disk[-2:-1]
        for folder in sorted({trial_dir / Path(result.checkpoint.path).name
                              for result in named} - set(on_disk)):
            temporary = folder.with_name(f".remade-{folder.name}")
            shutil.rmtree(temporary, ignore_errors=True)  # left by an interrupted resume
            if whole:
                shutil.copytree(whole[0], temporary)
            temporary.mkdir(parents=True, exist_ok=True)
            for reported in temporary.rglob(REPORTED_FILE):
                atomic_write_json({"reported": []}, reported)
            temporary.rename(folder)


def resume_sweep(results_dir: Path, address: str | None = None, verbose: bool = False,
                 wait_for_resources: bool = False):
    from ray import tune

    study = load_results(results_dir)
    ensure_resources(study, address, verbose, wait_for_resources)
    remake_missing_checkpoints(results_dir)
    start_ray(address, verbose)
    tuner = tune.Tuner.restore(str(results_dir), trainable=trainable_for(study),
                               resume_unfinished=True, resume_errored=True,
                               param_space=study.param_space())
    return study, fit(tuner)


def catch_up_tracking(study: Study, results_dir: Path) -> str | None:
    """After ``resume``: what MLflow still lacks of the sweep, logged from its results directory
    (``lt-sweep sync``). A driver killed earlier may have died holding values it never wrote (a
    write in flight, or during an MLflow outage) of points its trials' surviving checkpoints count
    as reported, and of trials that had finished: no trial reports those again. Returns the line
    to print: what was logged, or why nothing could be and the command that logs it; None when
    MLflow held everything."""
    from sweeps.errors import TrackingUnavailable
    from sweeps.sync import sync_sweep
    from sweeps.tracking import END_WAIT_SECONDS, short_reason, writer

    later = f"`lt-sweep sync {results_dir}` logs what MLflow lacks"
    try:  # this driver's own writes first: sync reads what MLflow holds
        writer().submit(lambda: None).result(timeout=END_WAIT_SECONDS)
    except TimeoutError:
        return f"MLflow has not taken this driver's last values yet: {later}"
    try:
        outcome = sync_sweep(study, results_dir)
    except TrackingUnavailable as error:
        return str(error)
    except Exception as error:  # noqa: BLE001 - the sweep is done: its table must still show
        return f"MLflow not brought up to date from {results_dir} ({short_reason(error)}): {later}"
    if outcome.updated:  # created runs included
        return (f"logged from {results_dir} what MLflow lacked of {outcome.updated} trial "
                f"run{'s' if outcome.updated > 1 else ''}")
    return None


# ---- lt-sweep refine ---------------------------------------------------------------------------
def sweep_trials(results_dir: Path) -> list:
    """Every Tune trial of the experiment in ``results_dir`` (finished or not), as Tune's saved
    state has them: id, config, status, last result."""
    from ray.tune import ExperimentAnalysis

    # Only the trials' states are read: its warnings about unfinished trials' missing results
    # would bury the one-line answer.
    analysis_log = logging.getLogger("ray.tune.analysis.experiment_analysis")
    level = analysis_log.level
    analysis_log.setLevel(logging.ERROR)
    try:
        return ExperimentAnalysis(str(results_dir)).trials
    finally:
        analysis_log.setLevel(level)


def finished_trials(results_dir: Path) -> dict[str, dict]:
    """Ray trial id -> swept values of every trial of a finished sweep."""
    from sweeps.tracking import swept_values

    trials = sweep_trials(results_dir)
    unfinished = [t for t in trials if t.status != "TERMINATED"]
    if unfinished or not trials:
        states = ", ".join(sorted({t.status for t in unfinished})) or "none"
        raise ConfigError(f"{results_dir}: not a finished sweep ({len(unfinished)} of "
                          f"{len(trials)} trials unfinished: {states}); finish it first with "
                          f"`lt-sweep resume {results_dir}`")
    return {t.trial_id: swept_values(t.config) for t in trials}


def parse_refine_args(study: Study, steps: str, networks: str) -> tuple[int, list[str]]:
    try:
        count = int(steps)
    except ValueError:
        count = 0
    if not 1 <= count <= MAX_REFINE_STEPS or str(count) != steps.strip():
        raise ConfigError(f"--steps: {steps!r} is not a whole number from 1 to "
                          f"{MAX_REFINE_STEPS} (refinement points per bracket)")
    refuse_refining_transfer(study, f"{study.source_path}: lt-sweep refine")
    if study.seeds:
        raise ConfigError(f"{study.source_path}: lt-sweep refine: the sweep trains base.seeds "
                          f"in each trial; refine it in the sweep instead (breakdown.refine)")
    names = [name.strip() for name in networks.split(",") if name.strip()]
    check_networks(names, study.base_config().imp.controls, "--networks")
    if not names:
        raise ConfigError("--networks: name at least one network, e.g. ticket,reinit")
    return count, names


@dataclass
class RefinePlan:
    todo: dict[str, int]  # trial id -> networks x points still to train (trials with any)
    brackets: int  # (trial, network) pairs that broke down between two levels


def plan_refinement(study: Study, trials: dict[str, dict], steps: int,
                    networks: list[str]) -> RefinePlan:
    """What ``lt-sweep refine`` would train, from the trials' run directories."""
    plan = RefinePlan({}, 0)
    rule = study.breakdown.rule
    for trial_id in trials:
        run_dir = run_directory(study, trial_id)
        records = run_records(run_dir)
        if not records or records[0].point_id != (0, 0):
            raise ConfigError(f"{run_dir}: trial {trial_id} has no finished dense level here (was "
                              f"the run directory moved or deleted? storage is "
                              f"{study.storage_path})")
        plan.brackets += sum(1 for network in networks
                             if (found := grid_breakdown(records, network, rule)) is not None
                             and not found.censored)
        tasks = refinement_plan(records, networks, rule, steps)
        if tasks:
            plan.todo[trial_id] = sum(len(task.networks) for task in tasks)
    return plan


def refine_sweep(study: Study, results_dir: Path, trials: dict[str, dict], steps: int,
                 networks: list[str], address: str | None = None, verbose: bool = False,
                 wait_for_resources: bool = False):
    """Train the refinement points of the given trials of a finished sweep as Tune trials (one
    per sweep trial), logging them to the sweep's trial runs; returns (Tune's results, the MLflow
    logger with the sweep's report)."""
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    ensure_resources(study, address, verbose, wait_for_resources)
    opening = InBackground(lambda: mlflow_logger(study))
    start_ray(address, verbose)
    shutil.rmtree(results_dir / REFINE_DIR, ignore_errors=True)  # the previous refine's state
    logger = opening.result()
    targets = [{"trial_id": trial_id, "swept": swept} for trial_id, swept in trials.items()]
    tuner = tune.Tuner(
        trainable_for(study, refine_trial, steps=steps, networks=networks),
        param_space={REFINE_KEY: tune.grid_search(targets)},
        tune_config=tune.TuneConfig(search_alg=BasicVariantGenerator(
            max_concurrent=study.search.max_concurrent or 0)),
        run_config=_run_config(study, REFINE_DIR, results_dir, [logger, console_for(study)],
                               verbose))
    return fit(tuner), logger
