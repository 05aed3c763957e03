"""``lt-sweep imp CONFIG.yaml --out DIR [--set k=v ...]``: one IMP experiment on this machine."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from lt_core.breakdown import BreakdownRule, divergence, locate
from lt_core.errors import USER_ERRORS, ConfigError
from lt_core.levels import LevelRecord, networks_in
from lt_core.metrics import (ACCURACY_METRICS, INSTABILITY, STATUS_DIVERGED, STATUS_KEY,
                             TICKET)


class ProgressBar:
    """One self-rewriting line on stderr: level, network, iteration and the last accuracy."""

    def __init__(self, levels: int, stream=sys.stderr, width: int = 24):
        self.levels, self.stream, self.width = levels, stream, width

    def __call__(self, level: int, name: str, iteration: int, end: int, record: dict) -> None:
        done = int(self.width * iteration / max(end, 1))
        line = (f"\rlevel {level:2d}/{self.levels} {name:<12} [{'#' * done}{'.' * (self.width - done)}]"
                f" it {iteration}/{end}  test acc {100 * record['test_acc']:.2f}%")
        self.stream.write(line)
        if iteration >= end or record.get(STATUS_KEY) == STATUS_DIVERGED:
            self.stream.write(" diverged\n" if iteration < end else "\n")
        self.stream.flush()


def level_table(records: list[LevelRecord], controls: list[str],
                metric: str = "test_acc") -> str:
    """Per level and refinement point (e.g. 7.250), each network's accuracy under ``metric``
    (``diverged`` where its training loss became NaN/inf), then the error barrier (pp) of each
    network the instability analysis measured."""
    analysed = [name for name in [TICKET, *controls]
                if any(r.value(name, INSTABILITY) is not None for r in records)]
    header = ["level", "density", TICKET] + controls + [f"{n} barrier" for n in analysed]
    lines = ["  ".join(f"{h:>12}" for h in header)]
    for record in records:
        position = f"{record.level}" + (f".{record.sublevel:03d}" if record.sublevel else "")
        cells = [f"{position:>12}", f"{100 * record.density:>11.2f}%"]
        for name in [TICKET, *controls]:
            value = record.value(name, metric)
            if record.diverged(name):
                cells.append(f"{STATUS_DIVERGED:>12}")
            else:
                cells.append(f"{100 * value:>11.2f}%" if value is not None else f"{'-':>12}")
        for name in analysed:
            barrier = record.value(name, INSTABILITY)
            cells.append(f"{barrier:>9.2f} pp" if barrier is not None else f"{'-':>12}")
        lines.append("  ".join(cells))
    return "\n".join(lines)


def breakdown_line(records: list[LevelRecord], rule: BreakdownRule) -> str:
    """Each network's breakdown sparsity: the estimate (bracket), or a lower bound; or where it
    diverged before it broke down."""
    parts = []
    for name in networks_in(records):
        found, diverged = locate(records, name, rule), divergence(records, name, rule)
        if diverged is not None:
            parts.append(f"{name} diverged at level {diverged.position:g} (density "
                         f"{100 * diverged.density:.2f}%)")
            continue
        if found is None:
            continue
        if found.censored:
            parts.append(f"{name} > {100 * found.sparsity_low:.2f}% (not reached)")
        else:
            parts.append(f"{name} {100 * found.sparsity_est:.2f}% ({100 * found.sparsity_low:.2f}"
                         f"-{100 * found.sparsity_high:.2f})")
    return (f"breakdown sparsity ({rule.metric}, {rule.tolerance_pp:g} pp): "
            + ("; ".join(parts) or "no pruned level yet"))


def add_imp_command(subparsers) -> None:
    parser = subparsers.add_parser("imp", help="run one IMP experiment locally")
    parser.add_argument("config", help="experiment YAML")
    parser.add_argument("--out", required=True, help="run directory (resumed if it exists)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config field, e.g. train.lr=0.01")
    parser.add_argument("--tolerance", type=float, default=1.0,
                        help="breakdown: percentage points below dense accuracy (default 1)")
    parser.add_argument("--metric", choices=ACCURACY_METRICS, default="test_acc",
                        help="breakdown: which accuracy (default test_acc)")
    parser.set_defaults(handler=run_imp_command)


def run_imp_command(args: argparse.Namespace) -> int:
    from lt_core.config import load_config
    from lt_core.imp import ImpRun, grid_levels
    from lt_core.paths import check_writable_dir
    from lt_core.validate import check_device, check_experiment

    config = load_config(args.config, args.overrides)
    check_experiment(config, args.config)
    if args.tolerance < 0:
        raise ConfigError(f"--tolerance: {args.tolerance:g} is negative")
    rule = BreakdownRule(args.tolerance, args.metric)
    out = Path(args.out).expanduser().resolve()
    check_writable_dir(out, "--out")
    check_device(config.device, f"{args.config}: device")
    run = ImpRun(config, out, progress=ProgressBar(max(grid_levels(config))))
    started = time.perf_counter()
    for _ in run.train_levels():
        pass
    if config.imp.control_levels == "breakdown":
        for _ in run.measure_controls(rule):
            pass
    records = run.records()
    print(level_table(records, list(config.imp.controls), rule.metric))
    print(breakdown_line(records, rule))
    print(f"run directory: {out}  ({time.perf_counter() - started:.1f} s)")
    return 0


def dispatch(parser: argparse.ArgumentParser, argv: list[str] | None,
             user_errors: tuple[type[Exception], ...] = USER_ERRORS) -> int:
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except user_errors as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lt-sweep", description=__doc__)
    subparsers = parser.add_subparsers(required=True, metavar="COMMAND")
    add_imp_command(subparsers)
    return dispatch(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
