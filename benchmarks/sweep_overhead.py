"""What a sweep's driver costs: the quickstart study through `lt-sweep run` against the same trials
run with `lt-sweep imp`, one after another and side by side.

Each trial's config is the one the sweep resolves (threads = the trial's CPUs), written to YAML
and run by `lt-sweep imp` in its own process. Everything counts: process start, imports, data
loading. The sweep also counts Ray's start, Tune's bookkeeping, and the driver's MLflow logging
and plots.

Three figures:
- alone: the trials one after another.
- side by side: the trials as plain processes, as many at once as the sweep runs them (the
  machine's CPUs over the trial's), with no Ray and no driver. This is the ceiling the machine
  allows. On a 2-vCPU VM two busy processes slow each other down (shared cache and memory
  bandwidth), so the ceiling is below the nominal 2x.
- the sweep.
The speed-up is alone / sweep. The driver's cost is sweep / side by side.

Run:  python benchmarks/sweep_overhead.py [--study search_spaces/quickstart.yaml] [--repeat N]
          [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
NPZ = REPO.parent / "shared" / "data" / "mnist-t10k-split.npz"


def lt_sweep(*args: str, cwd: Path) -> float:
    """Seconds for one `lt-sweep` command (it must succeed)."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sweeps.cli", *args], cwd=cwd, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def side_by_side(paths: list[Path], at_once: int, cwd: Path) -> float:
    """Seconds to run these configs with `lt-sweep imp`, ``at_once`` processes at a time."""
    started, pending, running = time.perf_counter(), list(paths), []
    while pending or running:
        while pending and len(running) < at_once:
            path = pending.pop(0)
            running.append(subprocess.Popen(
                [sys.executable, "-m", "sweeps.cli", "imp", str(path), "--out",
                 str(cwd / f"pair_{path.stem}_{time.monotonic_ns()}")],
                cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(0.05)
        for process in [p for p in running if p.poll() is not None]:
            if process.returncode:
                raise RuntimeError("a side-by-side trial failed")
            running.remove(process)
    return time.perf_counter() - started


def trial_configs(study_path: Path, overrides: list[str]) -> list[dict]:
    """The experiment configs of the study's grid, as the sweep resolves them."""
    from sweeps.study import load_study, trial_config

    study = load_study(study_path, overrides)
    keys = sorted(study.space)
    grids = [study.space[key].grid or [] for key in keys]
    return [trial_config(study, dict(zip(keys, values))).model_dump(mode="json")
            for values in itertools.product(*grids)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", type=Path, default=REPO / "search_spaces" / "quickstart.yaml")
    parser.add_argument("--repeat", type=int, default=1, help="repeat each measurement (best)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a study value, as `lt-sweep run` "
                        "does (e.g. base.train.length=12ep for longer trials)")
    args = parser.parse_args()
    overrides = [f"base.data.path={NPZ}", *args.overrides]
    from sweeps.study import load_study

    cpus = load_study(args.study, overrides).resources.cpu
    at_once = max(1, int((os.cpu_count() or 1) // cpus))
    with tempfile.TemporaryDirectory() as temp:
        work = Path(temp)
        paths = []
        for index, config in enumerate(trial_configs(args.study, overrides)):
            paths.append(work / f"trial{index}.yaml")
            paths[-1].write_text(yaml.safe_dump(config))
        alone, pairs, sweeps = [], [], []
        for round_ in range(args.repeat):
            alone.append([lt_sweep("imp", str(p), "--out", str(work / f"alone{round_}_{p.stem}"),
                                   cwd=work) for p in paths])
            pairs.append(side_by_side(paths, at_once, work))
            sweeps.append(lt_sweep(
                "run", str(args.study), *(f"--set={o}" for o in overrides),
                f"--set=tracking.uri=sqlite:///{work / f'mlflow{round_}.db'}",
                f"--set=run.storage_path={work / f'lt_results{round_}'}", cwd=work))
            print(f"round {round_ + 1}: alone {sum(alone[-1]):.1f} s "
                  f"({' + '.join(f'{a:.1f}' for a in alone[-1])}), side by side "
                  f"{pairs[-1]:.1f} s, sweep {sweeps[-1]:.1f} s: speed-up "
                  f"{sum(alone[-1]) / sweeps[-1]:.2f}x (ceiling {sum(alone[-1]) / pairs[-1]:.2f}x)",
                  flush=True)
        best_alone, best_pair, best_sweep = (min(sum(a) for a in alone), min(pairs), min(sweeps))
        print(f"{len(paths)} trials of {args.study.stem}, {at_once} at a time (best of "
              f"{args.repeat}):")
        print(f"  alone, one after another: {best_alone:.1f} s")
        print(f"  side by side without Ray: {best_pair:.1f} s: the machine's ceiling is "
              f"{best_alone / best_pair:.2f}x (nominal {at_once}x)")
        print(f"  lt-sweep run:             {best_sweep:.1f} s: speed-up "
              f"{best_alone / best_sweep:.2f}x; the sweep takes {best_sweep / best_pair:.2f}x "
              f"the ceiling's time")


if __name__ == "__main__":
    main()
