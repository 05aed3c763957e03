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
The speed-up is alone / sweep. The driver's cost is sweep / side by side. The sweep's time is
also split, from its trials' run directories: its start (until the first trial's run directory
is made: imports, validation, Ray's start, the first trial workers' start), the trials, and its
end (after the last trial's last file: the sweep's summary, Ray's shutdown).

Beside them, Ray's floor (benchmarks/ray_floor.py): the least any Ray sweep's start plus end can
be here (torch imported for validation, Ray started and stopped as lt-sweep does, one actor per
trial run at once started and importing torch), with no lt-sweep code run. It bounds the speed-up
any sweep on Ray could reach on this machine: alone / (floor + trials), with the sweep's own trials
and with trials trained as fast as side by side (each wave of trials their mean training there).

On Linux it also counts CPU seconds (user + system): of the side-by-side processes, and of the
sweep's process tree split into the driver, Ray's own processes (GCS, raylet, dashboard, monitors,
agents) and Ray's worker processes (the trials, their imports included). On a machine whose cores
the trials fill, every extra CPU second of the sweep is wall time the trials lose.
From them a second bound: no schedule runs the sweep's CPU seconds in less than CPU seconds /
cores, and a speed-up of TARGET leaves the sweep cores x alone / TARGET CPU seconds, of which the
trials (as side by side) take most; the rest is set against what the driver cannot do without
(benchmarks/driver_floor.py: torch, Ray Tune, MLflow and a new SQLite store, matplotlib).

Run:  python benchmarks/sweep_overhead.py [--study search_spaces/quickstart.yaml] [--repeat N]
          [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
NPZ = REPO.parent / "shared" / "data" / "mnist-t10k-split.npz"


TARGET = 1.8  # the speed-up the sweep's driver is held to (issue 10)
PROC = Path("/proc")
TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")


def children_cpu() -> float:
    """CPU seconds of this process's finished (waited-for) children so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class TreeCpu:
    """CPU seconds of a process and its descendants, by kind, read from /proc every 0.2 s while
    it runs (the last reading of each process counts: up to 0.2 s of each is missed; the reading
    itself costs about 1% of one core)."""

    def __init__(self, root: int):
        self.root, self.seen = root, {}  # pid -> (kind, cpu seconds)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        totals = {"driver": 0.0, "Ray's own processes": 0.0, "Ray workers (trials)": 0.0}
        for kind, cpu in self.seen.values():
            totals[kind] += cpu
        return totals

    def _watch(self) -> None:
        while not self._stop.wait(0.2):
            stats = {}
            for entry in PROC.iterdir():
                if entry.name.isdigit():
                    try:
                        raw = (entry / "stat").read_text()
                    except OSError:
                        continue
                    fields = raw[raw.rindex(")") + 2:].split()  # after the command's name
                    stats[int(entry.name)] = (int(fields[1]),
                                              (int(fields[11]) + int(fields[12])) / TICKS)
            tree, grew = {self.root}, True
            while grew:
                found = {pid for pid, (ppid, _) in stats.items() if ppid in tree} - tree
                grew, tree = bool(found), tree | found
            for pid in tree & stats.keys():
                self.seen[pid] = (self._kind(pid), stats[pid][1])

    def _kind(self, pid: int) -> str:
        if pid == self.root:
            return "driver"
        # A worker starts as a plain `python default_worker.py` and only then names itself
        # `ray::...`: a process not yet seen as a worker is looked at again.
        if pid in self.seen and self.seen[pid][0] != "Ray's own processes":
            return self.seen[pid][0]
        try:
            command = (PROC / str(pid) / "cmdline").read_bytes().split(b"\0")[0].decode()
        except OSError:
            return "Ray's own processes"
        if command.startswith("ray::") and not command.startswith(AGENTS):
            return "Ray workers (trials)"
        return "Ray's own processes"


def lt_sweep(*args: str, cwd: Path, count_cpu: bool = False) -> tuple[float, dict[str, float]]:
    """Seconds for one `lt-sweep` command (it must succeed), and with ``count_cpu`` its CPU
    seconds by kind (none where there is no /proc)."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "sweeps.cli", *args], cwd=cwd,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tree = TreeCpu(process.pid) if count_cpu and PROC.is_dir() else None
    if process.wait():
        raise RuntimeError(f"lt-sweep {args[0]} failed")
    return time.perf_counter() - started, tree.stop() if tree else {}


def last_file(folder: Path) -> float:
    """When the last file under ``folder`` was written."""
    return max(path.stat().st_mtime for path in folder.rglob("*") if path.is_file())


def phases(launched: float, ended: float, runs: Path) -> tuple[float, float, float]:
    """(start, trials, end) seconds of a sweep launched and ended at these wall-clock times, whose
    trials' run directories are under ``runs``."""
    first = min(path.stat().st_mtime for path in runs.glob("*/config.yaml"))
    last = last_file(runs)
    return first - launched, last - first, ended - last


def training(run_dirs: list[Path]) -> float:
    """Mean seconds of these run directories' training: from the run's config.yaml (written
    once the process has started and loaded its data) to its last file."""
    spans = [last_file(run) - (run / "config.yaml").stat().st_mtime for run in run_dirs]
    return sum(spans) / len(spans)


def side_by_side(paths: list[Path], at_once: int, cwd: Path, prefix: str) -> float:
    """Seconds to run these configs with `lt-sweep imp`, ``at_once`` processes at a time."""
    started, pending, running = time.perf_counter(), list(paths), []
    while pending or running:
        while pending and len(running) < at_once:
            path = pending.pop(0)
            running.append(subprocess.Popen(
                [sys.executable, "-m", "sweeps.cli", "imp", str(path), "--out",
                 str(cwd / f"{prefix}_{path.stem}")],
                cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(0.05)
        for process in [p for p in running if p.poll() is not None]:
            if process.returncode:
                raise RuntimeError("a side-by-side trial failed")
            running.remove(process)
    return time.perf_counter() - started


def floor(script: str, cwd: Path, *args: str) -> dict[str, float]:
    """What benchmarks/<script> prints (one JSON line), run in a fresh process."""
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args],
                         cwd=cwd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def cpu_bound(alone: float, pair_cpu: float, sweep_cpu: dict[str, float],
              driver: dict[str, float]) -> None:
    """The speed-up the sweep's CPU seconds allow: on a machine its processes fill, no schedule
    runs them in less than CPU seconds / cores. And what TARGET would allow: the CPU seconds the
    sweep may use beyond the side-by-side trials' own, against what the driver cannot do without
    (benchmarks/driver_floor.py) and what the sweep used."""
    cores, total = os.cpu_count() or 1, sum(sweep_cpu.values())
    budget = cores * alone / TARGET  # CPU seconds that fit in alone / TARGET seconds
    print(f"  CPU bound: {total:.1f} CPU s on {cores} cores take at least {total / cores:.1f} s: "
          f"at most {alone / (total / cores):.2f}x. {TARGET}x needs at most "
          f"{budget:.1f} CPU s in all, {budget - pair_cpu:.1f} beyond the side-by-side "
          f"trials' {pair_cpu:.1f}; this sweep used {total - pair_cpu:.1f} beyond them, and its "
          f"driver's libraries and new MLflow store alone take {driver['total']:.1f} ("
          + ", ".join(f"{k} {v:.1f}" for k, v in driver.items() if k != "total") + ")",
          flush=True)


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

    study = load_study(args.study, overrides)
    cpus, study_name = study.resources.cpu, study.name
    at_once = max(1, int((os.cpu_count() or 1) // cpus))
    with tempfile.TemporaryDirectory() as temp:
        work = Path(temp)
        paths = []
        for index, config in enumerate(trial_configs(args.study, overrides)):
            paths.append(work / f"trial{index}.yaml")
            paths[-1].write_text(yaml.safe_dump(config))
        alone, pairs, sweeps, bounds = [], [], [], []
        for round_ in range(args.repeat):
            alone.append([lt_sweep("imp", str(p), "--out", str(work / f"alone{round_}_{p.stem}"),
                                   cwd=work)[0] for p in paths])
            cpu_before = children_cpu()
            pairs.append(side_by_side(paths, at_once, work, f"pair{round_}"))
            pair_cpu = children_cpu() - cpu_before
            launched = time.time()
            seconds, sweep_cpu = lt_sweep(
                "run", str(args.study), *(f"--set={o}" for o in overrides),
                f"--set=tracking.uri=sqlite:///{work / f'mlflow{round_}.db'}",
                f"--set=run.storage_path={work / f'lt_results{round_}'}", cwd=work,
                count_cpu=True)
            sweeps.append(seconds)
            runs = work / f"lt_results{round_}" / study_name / "runs"
            start, trials, end = phases(launched, time.time(), runs)
            print(f"round {round_ + 1}: alone {sum(alone[-1]):.1f} s "
                  f"({' + '.join(f'{a:.1f}' for a in alone[-1])}), side by side "
                  f"{pairs[-1]:.1f} s, sweep {sweeps[-1]:.1f} s: speed-up "
                  f"{sum(alone[-1]) / sweeps[-1]:.2f}x (ceiling {sum(alone[-1]) / pairs[-1]:.2f}x)",
                  flush=True)
            print(f"  sweep: start {start:.1f} s (until the first trial's run directory), "
                  f"trials {trials:.1f} s, end {end:.1f} s (after the last trial's last file)",
                  flush=True)
            pair_training = training(list(work.glob(f"pair{round_}_*")))
            print(f"  one trial's training (its run directory's first to last file), mean: "
                  f"alone {training(list(work.glob(f'alone{round_}_*'))):.1f} s, side by side "
                  f"{pair_training:.1f} s, sweep "
                  f"{training(list(runs.glob('*'))):.1f} s",
                  flush=True)
            ray_ = floor("ray_floor.py", work, "--actors", str(at_once), "--cpus", str(cpus))
            # Trials as fast as side by side: each wave of trials takes their mean training.
            ideal = -(-len(paths) // at_once) * pair_training
            bounds.append(sum(alone[-1]) / (ray_["total"] + ideal))
            print(f"  Ray's floor {ray_['total']:.1f} s ("
                  + ", ".join(f"{k} {v:.1f}" for k, v in ray_.items() if k != "total")
                  + f"): no Ray sweep beats {sum(alone[-1]) / (ray_['total'] + trials):.2f}x "
                  f"with this sweep's trials, {bounds[-1]:.2f}x with trials trained as fast as "
                  f"side by side", flush=True)
            if sweep_cpu:
                print(f"  CPU seconds: side by side {pair_cpu:.1f}; sweep "
                      f"{sum(sweep_cpu.values()):.1f} = "
                      + " + ".join(f"{kind} {cpu:.1f}" for kind, cpu in sweep_cpu.items()),
                      flush=True)
                cpu_bound(sum(alone[-1]), pair_cpu, sweep_cpu, floor("driver_floor.py", work))
        best_alone, best_pair, best_sweep = (min(sum(a) for a in alone), min(pairs), min(sweeps))
        print(f"{len(paths)} trials of {args.study.stem}, {at_once} at a time (best of "
              f"{args.repeat}):")
        print(f"  alone, one after another: {best_alone:.1f} s")
        print(f"  side by side without Ray: {best_pair:.1f} s: the machine's ceiling is "
              f"{best_alone / best_pair:.2f}x (nominal {at_once}x)")
        print(f"  lt-sweep run:             {best_sweep:.1f} s: speed-up "
              f"{best_alone / best_sweep:.2f}x; the sweep takes {best_sweep / best_pair:.2f}x "
              f"the ceiling's time")
        print(f"  any sweep on Ray:         at most {max(bounds):.2f}x (Ray's own start and stop, "
              f"trials trained as fast as side by side)")


if __name__ == "__main__":
    main()
