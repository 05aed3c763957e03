"""``lt-sweep imp CONFIG.yaml --out DIR [--set k=v ...]``: one IMP experiment on this machine."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from lt_core.config import ConfigError, load_config
from lt_core.data import DataUnavailable
from lt_core.imp import ImpRun, RunDirMismatch
from lt_core.validate import check_experiment

USER_ERRORS = (ConfigError, DataUnavailable, RunDirMismatch)


class ProgressBar:
    """One self-rewriting line on stderr: level, network, iteration and the last accuracy."""

    def __init__(self, levels: int, stream=sys.stderr, width: int = 24):
        self.levels, self.stream, self.width = levels, stream, width

    def __call__(self, level: int, name: str, iteration: int, end: int, record: dict) -> None:
        done = int(self.width * iteration / max(end, 1))
        line = (f"\rlevel {level:2d}/{self.levels} {name:<12} [{'#' * done}{'.' * (self.width - done)}]"
                f" it {iteration}/{end}  test acc {100 * record['test_acc']:.2f}%")
        self.stream.write(line)
        if iteration >= end:
            self.stream.write("\n")
        self.stream.flush()


def level_table(rows: list[dict], controls: list[str]) -> str:
    header = ["level", "density", "ticket"] + controls
    lines = ["  ".join(f"{h:>12}" for h in header)]
    for row in rows:
        cells = [f"{row['level']:>12d}", f"{100 * row['density']:>11.2f}%",
                 f"{100 * row['test_acc']:>11.2f}%"]
        for name in controls:
            control = row["controls"].get(name)
            cells.append(f"{100 * control['test_acc']:>11.2f}%" if control else f"{'-':>12}")
        lines.append("  ".join(cells))
    return "\n".join(lines)


def add_imp_command(subparsers) -> None:
    parser = subparsers.add_parser("imp", help="run one IMP experiment locally")
    parser.add_argument("config", help="experiment YAML")
    parser.add_argument("--out", required=True, help="run directory (resumed if it exists)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config field, e.g. train.lr=0.01")
    parser.set_defaults(handler=run_imp_command)


def run_imp_command(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    check_experiment(config, args.config)
    out = Path(args.out).expanduser().resolve()
    run = ImpRun(config, out, progress=ProgressBar(config.imp.levels))
    started = time.perf_counter()
    rows = [run.run_level(level) for level in run.levels]
    print(level_table(rows, list(config.imp.controls)))
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
