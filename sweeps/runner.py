"""Ray Tune wiring: start or join Ray, declare the Tuner for a study, run or restore it."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from sweeps.study import Study, load_study
from sweeps.trainable import imp_trial

STUDY_FILE = "lt_study.yaml"  # the resolved study, kept with the results for `lt-sweep resume`


def experiment_dir(study: Study) -> Path:
    return study.storage_path / study.name


def start_ray(address: str | None) -> None:
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:
        ray.init(include_dashboard=False)


def make_searcher(study: Study):
    search = study.search
    if search.algorithm != "optuna":
        from ray.tune.search import BasicVariantGenerator

        return BasicVariantGenerator(random_state=search.seed,
                                     max_concurrent=search.max_concurrent or 0)
    import optuna
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    samplers = {"tpe": optuna.samplers.TPESampler, "gp": optuna.samplers.GPSampler,
                "nsga2": optuna.samplers.NSGAIISampler}
    objectives = list(search.objective)
    metric = objectives if len(objectives) > 1 else objectives[0]
    mode = ["max"] * len(objectives) if len(objectives) > 1 else "max"
    searcher = OptunaSearch(metric=metric, mode=mode, sampler=samplers[search.sampler](
        seed=search.seed))
    if search.max_concurrent:
        searcher = ConcurrencyLimiter(searcher, max_concurrent=search.max_concurrent)
    return searcher


def trainable_for(study: Study):
    from ray import tune

    resources = {"cpu": study.resources.cpu, "gpu": study.resources.gpu}
    return tune.with_resources(tune.with_parameters(imp_trial, study=study), resources)


def build_tuner(study: Study):
    from ray import tune

    from sweeps.tracking import MlflowLevelLogger

    tune_config = tune.TuneConfig(search_alg=make_searcher(study),
                                  num_samples=study.search.num_samples)
    run_config = tune.RunConfig(
        name=study.name,
        storage_path=str(study.storage_path),
        failure_config=tune.FailureConfig(max_failures=study.spec.run.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        callbacks=[MlflowLevelLogger(study, study.tracking_uri, study.experiment)],
    )
    return tune.Tuner(trainable_for(study), param_space=study.param_space(),
                      tune_config=tune_config, run_config=run_config)


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


def run_sweep(study: Study, address: str | None = None):
    start_ray(address)
    save_resolved_study(study)
    return build_tuner(study).fit()


def resume_sweep(results_dir: Path, address: str | None = None):
    from ray import tune

    from lt_core.config import ConfigError

    study_file = results_dir / STUDY_FILE
    if not tune.Tuner.can_restore(str(results_dir)) or not study_file.exists():
        raise ConfigError(f"{results_dir}: not an lt-sweep results directory "
                          f"(no {STUDY_FILE} and Tune state)")
    study = load_study(study_file)
    start_ray(address)
    tuner = tune.Tuner.restore(str(results_dir), trainable=trainable_for(study),
                               resume_unfinished=True, resume_errored=True,
                               param_space=study.param_space())
    return study, tuner.fit()
