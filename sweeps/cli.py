"""``lt-sweep``: one IMP experiment (``imp``) or a Ray Tune sweep of them (``validate``, ``run``,
``resume``, ``refine``, ``report``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lt_core.cli import USER_ERRORS, add_imp_command, dispatch
from lt_core.metrics import ACCURACY_METRICS


def _add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE",
                        help="override a study field, e.g. base.train.length=2ep")


def validate_command(args: argparse.Namespace) -> int:
    from sweeps.study import load_study

    study = load_study(args.space, args.overrides)
    r = study.resources
    print(f"{args.space}: valid")
    print(f"  trials: {study.count_trials()} ({study.search.algorithm} search"
          f"{', sampler ' + study.search.sampler if study.search.algorithm == 'optuna' else ''})")
    print(f"  each trial: {r.cpu:g} CPU, {r.gpu:g} GPU; levels 0..{study.base_config().imp.levels}")
    print(f"  swept: {', '.join(study.swept_keys) or '(nothing)'}")
    print(f"  MLflow: {study.tracking_uri} experiment {study.experiment!r}")
    print(f"  results: {study.storage_path / study.name}")
    return 0


def _print_breakdown(study) -> None:
    from sweeps.report import build_report

    report = build_report(study.tracking_uri, study.experiment, study.breakdown.tolerance,
                          sweep=study.name, metric=study.breakdown.metric)
    print(report.table())


def run_command(args: argparse.Namespace) -> int:
    from sweeps.runner import run_sweep
    from sweeps.study import load_study

    study = load_study(args.space, args.overrides)
    results = run_sweep(study, args.address)
    _print_breakdown(study)
    return 1 if results.errors else 0


def resume_command(args: argparse.Namespace) -> int:
    from sweeps.runner import resume_sweep

    study, results = resume_sweep(Path(args.results_dir).expanduser().resolve(), args.address)
    _print_breakdown(study)
    return 1 if results.errors else 0


def refine_command(args: argparse.Namespace) -> int:
    from sweeps.runner import (finished_trials, load_results, parse_refine_args, plan_refinement,
                               refine_sweep)

    results_dir = Path(args.results_dir).expanduser().resolve()
    study = load_results(results_dir)
    steps, networks = parse_refine_args(study, args.steps, args.networks)
    trials = finished_trials(results_dir)
    plan = plan_refinement(study, trials, steps, networks)
    which = " or ".join(networks)
    if not plan.brackets:
        print(f"nothing to refine: no {which} of the {len(trials)} trials broke down within "
              f"its levels (tolerance {study.breakdown.tolerance:g} pp, "
              f"{study.breakdown.metric}); each breakdown is a lower bound (see lt-sweep report)")
        return 0
    if not plan.todo:
        print(f"nothing to refine: all {plan.brackets} brackets of {which} already have their "
              f"{steps} refinement points")
        return 0
    print(f"refining {len(plan.todo)} of {len(trials)} trials: {sum(plan.todo.values())} "
          f"networks to train ({steps} points in each bracket of {which})")
    results = refine_sweep(study, results_dir, {t: trials[t] for t in plan.todo}, steps,
                           networks, args.address)
    _print_breakdown(study)
    return 1 if results.errors else 0


def report_command(args: argparse.Namespace) -> int:
    from sweeps.report import report_command as write_report

    return write_report(args.experiment, args.tracking_uri, args.tolerance,
                        Path(args.out).expanduser().resolve(), args.metric)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lt-sweep", description=__doc__)
    subparsers = parser.add_subparsers(required=True, metavar="COMMAND")
    add_imp_command(subparsers)

    validate = subparsers.add_parser("validate", help="check a study file; starts nothing")
    validate.add_argument("space", help="search space YAML")
    _add_overrides(validate)
    validate.set_defaults(handler=validate_command)

    run = subparsers.add_parser("run", help="run a sweep with Ray Tune, logging to MLflow")
    run.add_argument("space", help="search space YAML")
    _add_overrides(run)
    run.add_argument("--address", help="join this Ray cluster (default: $RAY_ADDRESS or local)")
    run.set_defaults(handler=run_command)

    resume = subparsers.add_parser("resume", help="continue an interrupted sweep")
    resume.add_argument("results_dir", help="the sweep's results directory (STORAGE/NAME)")
    resume.add_argument("--address", help="join this Ray cluster")
    resume.set_defaults(handler=resume_command)

    refine = subparsers.add_parser(
        "refine", help="train points inside the breakdown brackets of a finished sweep")
    refine.add_argument("results_dir", help="the sweep's results directory (STORAGE/NAME)")
    refine.add_argument("--steps", default="3",
                        help="refinement points per bracket, 1-99 (default 3: a quarter of it)")
    refine.add_argument("--networks", default="ticket",
                        help="comma-separated: ticket and/or the sweep's controls (default ticket)")
    refine.add_argument("--address", help="join this Ray cluster")
    refine.set_defaults(handler=refine_command)

    report = subparsers.add_parser("report", help="breakdown table from MLflow")
    report.add_argument("experiment", help="MLflow experiment name")
    report.add_argument("--tracking-uri", default=None,
                        help="default: sqlite:///<cwd>/mlflow.db")
    report.add_argument("--tolerance", type=float, default=None,
                        help="percentage points below dense accuracy (default: the sweep's)")
    report.add_argument("--metric", choices=ACCURACY_METRICS, default=None,
                        help="which accuracy locates the breakdown (default: the sweep's)")
    report.add_argument("--out", default=".", help="where breakdown.csv and breakdown.png go")
    report.set_defaults(handler=report_command)
    from sweeps.report import ReportUnavailable

    return dispatch(parser, argv, USER_ERRORS + (ReportUnavailable,))


if __name__ == "__main__":
    sys.exit(main())
