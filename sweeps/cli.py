"""``lt-sweep``: one IMP experiment (``imp``) or a Ray Tune sweep of them (``validate``, ``run``,
``resume``, ``refine``, ``report``, ``sync``)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from lt_core.cli import USER_ERRORS, add_imp_command, dispatch
from lt_core.metrics import ACCURACY_METRICS
from sweeps.errors import ReportUnavailable, TrackingUnavailable


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
    base = study.base_config()
    levels = f"levels 0..{base.imp.levels}"
    if base.imp.ticket_from is not None:
        from lt_core.imp import grid_levels

        levels = (f"levels {', '.join(map(str, grid_levels(base)))} of the tickets in "
                  f"{base.imp.ticket_from}")
    print(f"  each trial: {r.cpu:g} CPU, {r.gpu:g} GPU; {levels}")
    print(f"  swept: {', '.join(study.swept_keys) or '(nothing)'}")
    print(f"  MLflow: {study.tracking_uri} experiment {study.experiment!r}")
    print(f"  results: {study.storage_path / study.name}")
    return 0


def ray_environment(address: str | None) -> None:
    """Before Ray is imported (it reads these at import): a local Ray's gRPC ports listen on
    every interface (Ray has no bind address for them), so the local cluster a sweep starts
    requires a token, fresh per sweep unless the user set one; its processes inherit it. Joining
    a cluster (``--address``, ``$RAY_ADDRESS``) uses the user's own settings."""
    if address or os.environ.get("RAY_ADDRESS") or os.environ.get("RAY_AUTH_MODE"):
        return
    import secrets

    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))


def _quiet_unless(verbose: bool) -> None:
    """Before MLflow is imported: its INFO logging off unless --verbose (Ray's is turned off
    where Ray is started, as it resets its own at import)."""
    if not verbose:
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")
        # its "View run ... at: http://..." line on each run's end (with a tracking server)
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def _finish(study, results, logger=None) -> int:
    """A sweep command's end: the breakdown table (the driver's, or read from MLflow) and the
    link that opens the MLflow UI on the sweep; or, when MLflow does not answer, what it lacks
    and how to log it later."""
    from sweeps import runner
    from sweeps.tracking import UNREACHABLE, short_reason

    if logger is not None:
        # The trials are done: Ray shuts down while the logger writes the sweep's summary.
        runner.stop_ray()
        logger.finish_summary()
    results_dir = study.storage_path / study.name
    unlogged, error = (logger.unlogged(), logger.error) if logger is not None else (None, None)
    report = None
    if not unlogged:
        try:
            report, lines = _report_and_link(study, logger)
        except UNREACHABLE as failure:
            unlogged, error = "the sweep's summary", failure
        except ReportUnavailable:  # interrupted before any trial reported a level
            pass
    print()
    if report is None and not unlogged:
        print("no trial finished a level yet")
    elif unlogged:
        reason = f" ({short_reason(error)})" if error is not None else ""
        print(f"MLflow at {study.tracking_uri} did not answer{reason}: {unlogged} not logged; "
              f"all is in {results_dir}: `lt-sweep sync {results_dir}` logs it")
    else:
        print(report.table())
        print("\n".join(lines))
        if logger is not None and logger.outages:
            print(f"(MLflow stopped answering {logger.outages} time(s) during the sweep: what it "
                  f"missed was logged once it answered again)")
    from sweeps.signals import INTERRUPTED

    if INTERRUPTED.is_set():  # Ctrl-C or SIGTERM: Tune saved the experiment's state
        print(f"interrupted: `lt-sweep resume {results_dir}` continues the sweep")
        return 130
    failed = len(results.errors)
    if failed:
        print(f"{failed} trial{'s' if failed > 1 else ''} failed (see the lines above); "
              f"`lt-sweep resume {results_dir}` retries them")
    return 1 if failed else 0


def _report_and_link(study, logger=None):
    """The sweep's report and MLflow link: the logger's, else read from MLflow."""
    from sweeps.mlflow_view import link_lines

    report, lines = (logger.report, logger.link_lines) if logger is not None else (None, [])
    if report is None or not lines:
        from mlflow import MlflowClient

        from sweeps.mlflow_view import ensure_view
        from sweeps.report import build_report
        from sweeps.tracking import sweep_analysed, sweep_networks

        if report is None:
            report = build_report(study.tracking_uri, study.experiment,
                                  study.breakdown.tolerance, sweep=study.name,
                                  metric=study.breakdown.metric)
        client = MlflowClient(study.tracking_uri)
        experiment_id = client.get_experiment_by_name(study.experiment).experiment_id
        key = ensure_view(client, experiment_id, sweep_networks(study), study.breakdown.metric,
                          study.name, sweep_analysed(study))
        lines = link_lines(study.tracking_uri, experiment_id, key)
    return report, lines


def run_command(args: argparse.Namespace) -> int:
    _quiet_unless(args.verbose)
    ray_environment(args.address)
    from sweeps.runner import run_sweep
    from sweeps.study import load_study

    study = load_study(args.space, args.overrides)
    results, logger = run_sweep(study, args.address, args.verbose, args.wait_for_resources)
    return _finish(study, results, logger)


def resume_command(args: argparse.Namespace) -> int:
    _quiet_unless(args.verbose)
    ray_environment(args.address)
    from sweeps.runner import catch_up_tracking, resume_sweep
    from sweeps.signals import INTERRUPTED

    results_dir = Path(args.results_dir).expanduser().resolve()
    study, results = resume_sweep(results_dir, args.address, args.verbose,
                                  args.wait_for_resources)
    if not INTERRUPTED.is_set() and (line := catch_up_tracking(study, results_dir)):
        print(line)
    return _finish(study, results)


def refine_command(args: argparse.Namespace) -> int:
    _quiet_unless(args.verbose)
    ray_environment(args.address)
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
    results, logger = refine_sweep(study, results_dir, {t: trials[t] for t in plan.todo}, steps,
                                   networks, args.address, args.verbose,
                                   args.wait_for_resources)
    return _finish(study, results, logger)


def report_command(args: argparse.Namespace) -> int:
    from lt_core.errors import ConfigError
    from lt_core.paths import check_writable_dir
    from sweeps.preflight import check_tracking_uri

    out = Path(args.out).expanduser().resolve()
    check_writable_dir(out, "--out")
    if args.tracking_uri is not None:
        check_tracking_uri(args.tracking_uri, "--tracking-uri", must_exist=True)
    if args.tolerance is not None and not args.tolerance >= 0:
        raise ConfigError(f"--tolerance: {args.tolerance:g} is not a non-negative number of "
                          f"percentage points")
    _quiet_unless(False)
    from sweeps.report import report_command as write_report

    return write_report(args.experiment, args.tracking_uri, args.tolerance, out, args.metric,
                        args.html)


def sync_command(args: argparse.Namespace) -> int:
    _quiet_unless(False)
    from sweeps.console import quiet_libraries
    from sweeps.runner import load_results
    from sweeps.sync import sync_sweep

    quiet_libraries()
    results_dir = Path(args.results_dir).expanduser().resolve()
    study = load_results(results_dir, [f"tracking.uri={args.tracking_uri}"]
                         if args.tracking_uri else [])  # which must answer
    outcome = sync_sweep(study, results_dir)
    print(outcome.line())
    print("\n".join(outcome.link_lines))
    return 0


def _add_verbose(parser: argparse.ArgumentParser) -> None:
    """Options of the commands that start trials (run, resume, refine)."""
    parser.add_argument("--verbose", action="store_true",
                        help="show Ray's, Tune's and MLflow's own output too")
    parser.add_argument("--wait-for-resources", action="store_true",
                        help="start even when no node has a trial's CPUs/GPUs yet (a cluster "
                             "that autoscales to larger nodes)")


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
    _add_verbose(run)
    run.set_defaults(handler=run_command)

    resume = subparsers.add_parser("resume", help="continue an interrupted sweep")
    resume.add_argument("results_dir", help="the sweep's results directory (STORAGE/NAME)")
    resume.add_argument("--address", help="join this Ray cluster")
    _add_verbose(resume)
    resume.set_defaults(handler=resume_command)

    refine = subparsers.add_parser(
        "refine", help="train points inside the breakdown brackets of a finished sweep")
    refine.add_argument("results_dir", help="the sweep's results directory (STORAGE/NAME)")
    refine.add_argument("--steps", default="3",
                        help="refinement points per bracket, 1-99 (default 3: a quarter of it)")
    refine.add_argument("--networks", default="ticket",
                        help="comma-separated: ticket and/or the sweep's controls (default ticket)")
    refine.add_argument("--address", help="join this Ray cluster")
    _add_verbose(refine)
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
    report.add_argument("--html", action="store_true",
                        help="also write breakdown.html: table, figures and study in one "
                             "self-contained page")
    report.set_defaults(handler=report_command)

    sync = subparsers.add_parser(
        "sync", help="log to MLflow what it lacks of a sweep, from its results directory")
    sync.add_argument("results_dir", help="the sweep's results directory (STORAGE/NAME)")
    sync.add_argument("--tracking-uri", default=None,
                      help="default: the sweep's (its tracking.uri)")
    sync.set_defaults(handler=sync_command)
    return dispatch(parser, argv, USER_ERRORS + (ReportUnavailable, TrackingUnavailable))


def entry() -> None:
    """The `lt-sweep` executable: ``main``, then, where a sweep ran, Ray shut down (its local
    cluster's processes with it) and the process left at once: the interpreter's teardown after
    a sweep (threads, Ray's and MLflow's exit hooks) took seconds, and the output and MLflow
    writes are flushed by now. Ctrl-C or SIGTERM ends it the same way, exit 130."""
    from sweeps.signals import stop_on_signals

    stop_on_signals()
    try:
        code = main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    runner = sys.modules.get("sweeps.runner")
    if runner is not None and runner.RAY_STARTED.is_set():
        runner.stop_ray()  # done already after a finished sweep; else a half-started local Ray
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
